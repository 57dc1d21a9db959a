"""Server configuration: environment variables (KDCVG_*), an optional TOML file, and embedded defaults.

The embedded default needs no configuration at all. Precedence: init arguments, environment, the TOML
file named by KDCVG_CONFIG_FILE, then defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the server reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="KDCVG_", env_nested_delimiter="__", extra="forbid")

    # Network
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = Field(9464, description="Prometheus /metrics HTTP port; 0 disables it")
    max_message_bytes: int = 64 * MiB
    shutdown_grace_s: float = 10.0
    max_concurrent_rpcs: int = 256

    # Auth: API key -> tenant. The embedded default has one development key.
    api_keys: dict[str, str] = Field(default_factory=lambda: {"kdcvg-dev-key": "default"})
    api_keys_file: Path | None = Field(None, description="TOML/JSON-free text file: one `key tenant` per line")

    # Storage
    data_dir: Path = Path("data")

    # Knowledge base index
    index_backend: Literal["edge", "qdrant"] = "edge"
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "kdcvg"
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    hnsw_ef: int = 48

    # Text encoder
    encoder_precision: Literal["int8", "fp32"] = "int8"
    encoder_providers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    encoder_threads: int | None = Field(
        1,
        description="ONNX Runtime threads per encoder call (None: one per core). Queries are short and "
        "concurrent ones are batched; on a few shared cores a pool of two made Search's p99 1.5x longer",
    )
    encoder_spin: bool = Field(True, description="let ONNX Runtime's idle threads spin (its default)")
    encoder_solo_threads: int = Field(
        2,
        ge=0,
        description="ONNX Runtime threads (not spinning) for a Search that has the CPU encoder to itself: no "
        "other search in flight and its phrases parsed before. 0 or no more than encoder_threads: off",
    )
    encoder_cache_dir: Path | None = None
    batch_max_size: int = 32
    batch_max_wait_ms: float = Field(
        0.0, description="extra wait for a batch to fill; 0 batches what queues while the encoder is busy"
    )

    # Video model
    model_dir: Path | None = Field(None, description="video model directory; default the bundled kdcvg-tiny")
    generation_encoder_precision: Literal["int8", "fp32"] = "fp32"
    max_generations: int = Field(16, description="generations in flight; beyond it Generate is RESOURCE_EXHAUSTED")
    sampler_max_rows: int = Field(16, description="rows of one sampler forward pass (2 per guided request)")
    torch_threads: int | None = None
    kernels: Literal["triton", "torch"] = Field(
        "triton", description="the sampler's Triton kernels on CUDA, or `torch` for its PyTorch references"
    )

    # Motion priors (LoRAs)
    prior_device_slots: int = Field(8, description="LoRAs resident for the sampler at once (distinct per step)")
    prior_host_cache_mb: int = Field(256, description="host-memory LRU of loaded LoRAs, in MiB")
    prior_rank: int = Field(128, description="default LoRA rank of DistillPrior (capped at the layer width)")
    prior_steps: int = Field(400, description="default Adam steps of DistillPrior")
    prior_learning_rate: float = Field(3e-3, description="default learning rate of DistillPrior")
    prior_loss: Literal["paper", "code", "x0"] = Field(
        "code", description="motion loss of DistillPrior (see bench/RESULTS.md for why code)"
    )
    max_distillations: int = Field(1, description="DistillPrior calls running at once; beyond it RESOURCE_EXHAUSTED")

    # Scoring
    scoring_threads: int = Field(2, description="worker threads of ScoringService (off the event loop)")
    max_scorings: int = Field(16, description="scoring streams in flight; beyond it RESOURCE_EXHAUSTED")
    reward_model_dir: Path | None = Field(None, description="reward model directory; default the bundled one")
    crscore_url: str | None = Field(
        None, description="OpenAI-compatible base URL (e.g. http://vllm:8000/v1) of the CRScore judge; unset = off"
    )
    crscore_model: str = Field("gpt-4o", description="model name sent to the CRScore endpoint")
    crscore_api_key: str | None = None
    crscore_timeout_s: float = 60.0
    crscore_runs: int = Field(3, description="N of CRScore: repeated judgements averaged (paper: 3)")
    crscore_frames: int = Field(8, description="frames shown to the CRScore judge (paper: 8)")

    # Limits on requests
    max_video_bytes: int = 48 * MiB
    # Decoded frames are held in memory: 256 frames of 1280x720 RGB are 700 MB at most.
    max_video_frames: int = 256
    max_video_pixels: int = 1280 * 720
    max_text_chars: int = 200
    max_caption_chars: int = 1000
    max_selling_points: int = 8
    max_search_limit: int = 100
    search_candidates: int = Field(
        48,
        description="vector-index candidates handed to the Search-T2V filters; 48 ranks as well as 100 "
        "(bench/retrieval_quality.py at 5k and 100k entries) in half the index and ranking time",
    )
    phrase_cache_size: int = Field(
        16384,
        ge=0,
        description="query phrases (selling points, products) whose vectors Search keeps, 1.5 KB each; a search "
        "whose phrases are all kept runs no encoder; 0 keeps none",
    )

    # Logs
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("encoder_providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("KDCVG_CONFIG_FILE")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"KDCVG_CONFIG_FILE={config_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def tenants_by_key(self) -> dict[str, str]:
        """API key -> tenant, from `api_keys` and `api_keys_file`."""
        keys = dict(self.api_keys)
        if self.api_keys_file is not None:
            for n, line in enumerate(self.api_keys_file.read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"{self.api_keys_file}:{n}: expected `<api-key> <tenant>`")
                keys[parts[0]] = parts[1]
        return keys

    @property
    def models_dir(self) -> Path:
        return self.encoder_cache_dir or self.data_dir / "models"
