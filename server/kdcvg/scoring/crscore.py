"""CRScore (InnoAds-Bench Eq. 8): an MLLM judges creativity and rationality of 8 frames, N times, 1-5.

The judge is any OpenAI-compatible chat-completions endpoint that accepts images (vLLM, TGI, OpenAI, ...),
configured by URL. Without one the metric is off and the response says so; nothing stands in for it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

import cv2
import httpx
import numpy as np

from kdcvg.scoring.base import MetricResult, MetricUnavailableError, check_clip

NAME = "crscore"
MIN_FRAMES = 1

PROMPT = (
    "You are judging a short advertising video, shown as {n} frames in time order. {subject}"
    "Rate its creative rationality on a scale of 1 to 5: is it visually creative enough to catch a viewer's "
    "attention (motion, effects, composition) while staying coherent and plausible (the product stays "
    "recognisable, nothing breaks or contradicts itself)? 1 = dull or incoherent, 3 = acceptable, "
    "5 = striking and fully coherent. Answer with the score only, a single digit."
)
_DIGIT = re.compile(r"\b([1-5])\b")


@dataclass(frozen=True)
class CRScoreConfig:
    """Where the judge is and how it is asked (paper: 8 frames, N = 3)."""

    url: str
    model: str = "gpt-4o"
    api_key: str | None = None
    timeout_s: float = 60.0
    runs: int = 3
    frames: int = 8


def sample_frames(frames: np.ndarray, k: int) -> np.ndarray:
    """``k`` frames uniformly over the clip (all of them when it has fewer)."""
    n = frames.shape[0]
    if n <= k:
        return frames
    return frames[np.linspace(0, n - 1, k).round().astype(int)]


def _data_url(frame: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB image
        raise ValueError("could not encode a frame as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def build_messages(frames: np.ndarray, prompt: str) -> list[dict]:
    """The chat messages of one judgement: the instruction, then the frames as PNG data URLs."""
    subject = f'It advertises: "{prompt}". ' if prompt else ""
    content: list[dict] = [{"type": "text", "text": PROMPT.format(n=len(frames), subject=subject)}]
    content += [{"type": "image_url", "image_url": {"url": _data_url(f)}} for f in frames]
    return [{"role": "user", "content": content}]


def parse_score(text: str) -> int:
    """The 1-5 score in a judge's answer; ``ValueError`` when it gave none."""
    m = _DIGIT.search(text or "")
    if m is None:
        raise ValueError(f"the judge answered {text[:80]!r}, not a score from 1 to 5")
    return int(m.group(1))


class CRScoreClient:
    """Asks the configured judge ``runs`` times with different seeds and averages (Eq. 8)."""

    def __init__(self, config: CRScoreConfig) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=config.url.rstrip("/") + "/", headers=headers, timeout=config.timeout_s
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _judge(self, messages: list[dict], seed: int) -> int:
        body = {"model": self.config.model, "messages": messages, "temperature": 0.7, "seed": seed, "max_tokens": 8}
        try:
            reply = await self._client.post("chat/completions", json=body)
        except httpx.HTTPError as e:
            raise MetricUnavailableError(NAME, f"the CRScore judge at {self.config.url} did not answer: {e}") from e
        if reply.status_code != 200:
            raise MetricUnavailableError(
                NAME, f"the CRScore judge at {self.config.url} answered HTTP {reply.status_code}: {reply.text[:200]}"
            )
        try:
            text = reply.json()["choices"][0]["message"]["content"]
            return parse_score(text if isinstance(text, str) else str(text))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise MetricUnavailableError(NAME, f"the CRScore judge's answer could not be read: {e}") from e

    async def score(self, frames: np.ndarray, prompt: str) -> MetricResult:
        """CRScore of a clip: mean judgement in 1-5, reported as ``(mean - 1) / 4`` in [0, 1]."""
        frames = check_clip(frames)
        shown = sample_frames(frames, self.config.frames)
        messages = build_messages(shown, prompt)
        runs = [await self._judge(messages, seed) for seed in range(self.config.runs)]
        mean = sum(runs) / len(runs)
        components = {"mean_1_to_5": mean, **{f"run_{i + 1}": float(s) for i, s in enumerate(runs)}}
        return MetricResult(NAME, (mean - 1) / 4, components, int(frames.shape[0]))
