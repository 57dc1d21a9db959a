"""The `kdcvg` command line: `serve`, the knowledge-base and motion-prior commands (through the Python SDK),
and `demo`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# numpy's BLAS threads spin-wait for cores the encoder and the event loop are using; the server's matrix
# work is small, one thread does it fastest.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

app = typer.Typer(help="kdcvg: knowledge-driven creative ad video generation over gRPC.", no_args_is_help=True)
kb_app = typer.Typer(help="Knowledge-base commands, against a running server.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
prior_app = typer.Typer(help="Motion-prior (LoRA) commands, against a running server.", no_args_is_help=True)
app.add_typer(prior_app, name="prior")
console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 160  # piped into a log or CI: rich would cut tables at 80 columns

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLE_QUERIES = [
    ["spins to show every angle", "ice-cold refreshment"],
    ["slides in from the right", "new season sneakers"],
    ["bounces with energy", "50% off today"],
    ["zooms in on the details"],
    ["floats gently in the air", "light as a feather"],
    ["circles around the screen", "limited edition watch"],
]

Target = Annotated[str, typer.Option(envvar="KDCVG_TARGET", help="server address host:port")]
ApiKey = Annotated[str, typer.Option(envvar="KDCVG_API_KEY", help="API key (sent as a Bearer token)")]


@contextlib.contextmanager
def _client(target: str, api_key: str) -> Iterator:
    """An SDK client; a failed call prints its status and message and exits 1, without a traceback."""
    from kdcvg_client import KdcvgClient, KdcvgError

    try:
        with KdcvgClient(target, api_key=api_key) as client:
            yield client
    except KdcvgError as exc:
        console.print(f"[red]error[/]: {exc.code.name}: {exc.message}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address [KDCVG_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port [KDCVG_PORT]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data directory [KDCVG_DATA_DIR]")] = None,
) -> None:
    """Run the server until SIGTERM/SIGINT, then drain in-flight calls."""
    from kdcvg import logs
    from kdcvg.app import serve as run
    from kdcvg.config import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "data_dir": data_dir}.items() if v is not None}
    settings = Settings(**overrides)
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(run(settings))


def _manifest(directory: Path) -> list[dict]:
    path = directory / "manifest.jsonl"
    if not path.is_file():
        raise typer.BadParameter(f"{directory} has no manifest.jsonl (one JSON object per clip)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ingest_directory(client, directory: Path) -> tuple[int, int]:  # noqa: ANN001
    """Ingests every clip of a manifest directory with a progress bar; returns (created, existing)."""
    rows = _manifest(directory)
    created = existing = 0
    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("ingest", total=len(rows))
        for row in rows:
            reply = client.ingest(
                directory / row["file"],
                category=row["category"],
                caption=row["caption"],
                selling_points=row["selling_points"],
                motion=row.get("motion", ""),
                product=row.get("product", ""),
            )
            existing += reply.already_existed
            created += not reply.already_existed
            progress.advance(task)
    return created, existing


@kb_app.command("ingest")
def kb_ingest(
    directory: Annotated[Path, typer.Argument(help="a directory with manifest.jsonl and the videos it names")],
    target: Target = "localhost:50051",
    api_key: ApiKey = "kdcvg-dev-key",
) -> None:
    """Ingest every clip listed in DIRECTORY/manifest.jsonl."""
    with _client(target, api_key) as client:
        created, existing = ingest_directory(client, directory)
    console.print(f"ingested {created} new clips, {existing} already present")


@kb_app.command("ingest-sample")
def kb_ingest_sample(target: Target = "localhost:50051", api_key: ApiKey = "kdcvg-dev-key") -> None:
    """Ingest the bundled sample knowledge base."""
    kb_ingest(SAMPLE_DIR, target, api_key)


def print_search(reply, title: str) -> None:  # noqa: ANN001
    table = Table(title=title, title_justify="left")
    table.add_column("#")
    table.add_column("motion", no_wrap=True)
    table.add_column("caption", no_wrap=True, overflow="ellipsis", max_width=44)
    for column in ("score", "total", "mot", "atr", "sim'"):
        table.add_column(column, justify="right")
    for ref in reply.references:
        s = ref.score
        table.add_row(
            str(ref.rank),
            ref.entry.motion,
            ref.entry.caption,
            f"{s.score:.3f}",
            f"{s.total_similarity:.3f}",
            f"{s.motion_similarity:.3f}",
            f"{s.actor_similarity:.3f}",
            f"{s.unit_similarity:.3f}",
        )
    console.print(table)


@kb_app.command("search")
def kb_search(
    selling_points: Annotated[list[str], typer.Argument(help="selling points, one argument each")],
    category: Annotated[str | None, typer.Option(help="restrict to one category")] = None,
    limit: int = 5,
    cosine: Annotated[bool, typer.Option(help="plain cosine ranking instead of Search-T2V")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
    target: Target = "localhost:50051",
    api_key: ApiKey = "kdcvg-dev-key",
) -> None:
    """Find reference creatives for selling points."""
    from google.protobuf.json_format import MessageToJson

    with _client(target, api_key) as client:
        reply = client.search(
            selling_points, category=category, limit=limit, ranking="cosine" if cosine else "search_t2v"
        )
    if as_json:
        print(MessageToJson(reply))
    else:
        print_search(reply, " / ".join(selling_points))


def _category_option(category: str | None) -> str | None:
    """Checks a --category value before any call; None for "all"."""
    from kdcvg_client import parse_category

    if category is None:
        return None
    try:
        parse_category(category)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--category") from None
    return category


def _category_name(value: int) -> str:
    from kdcvg import categories

    return categories.BY_ENUM.get(value, "unspecified")


@kb_app.command("list")
def kb_list(
    category: Annotated[str | None, typer.Option(help="list only this category")] = None,
    target: Target = "localhost:50051",
    api_key: ApiKey = "kdcvg-dev-key",
) -> None:
    """List the entries of your knowledge base."""
    category = _category_option(category)
    with _client(target, api_key) as client:
        entries = list(client.iter_entries(category))
    if not entries:
        where = f" in category {category}" if category else ""
        console.print(f"no entries{where}; add some with `kdcvg kb ingest DIRECTORY`")
        return
    table = Table(title=f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("category", no_wrap=True)
    table.add_column("motion", no_wrap=True)
    table.add_column("product", no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column("has prior")
    table.add_column("caption", no_wrap=True, overflow="ellipsis", max_width=50)
    for e in entries:
        table.add_row(
            e.id[:12],
            _category_name(e.category),
            e.motion,
            e.product,
            "yes" if e.has_prior else "no",
            e.caption,
        )
    console.print(table)


@kb_app.command("get")
def kb_get(entry_id: str, target: Target = "localhost:50051", api_key: ApiKey = "kdcvg-dev-key") -> None:
    """Print one entry as JSON."""
    from google.protobuf.json_format import MessageToJson

    with _client(target, api_key) as client:
        print(MessageToJson(client.get(entry_id).entry))


@kb_app.command("delete")
def kb_delete(entry_id: str, target: Target = "localhost:50051", api_key: ApiKey = "kdcvg-dev-key") -> None:
    """Delete one entry and its video."""
    with _client(target, api_key) as client:
        client.delete(entry_id)
    console.print(f"deleted {entry_id}")


@kb_app.command("feedback")
def kb_feedback(
    retrieval_id: str,
    entry_id: str,
    reward: float,
    note: str = "",
    target: Target = "localhost:50051",
    api_key: ApiKey = "kdcvg-dev-key",
) -> None:
    """Record a reward in [-1, 1] for one reference of a retrieval."""
    with _client(target, api_key) as client:
        reply = client.feedback(retrieval_id, entry_id, reward, note=note)
    console.print(f"stored feedback event {reply.event_id}")


# -- motion priors -------------------------------------------------------------------------------------

Rank = Annotated[int, typer.Option(help="LoRA rank; 0: the server default (capped at the layer width)")]
Steps = Annotated[int, typer.Option(help="Adam steps; 0: the server default")]
LearningRate = Annotated[float, typer.Option(help="learning rate; 0: the server default")]
Seed = Annotated[int, typer.Option(help="random seed; 0 picks one")]
DistillTimeout = Annotated[
    float | None, typer.Option(help="deadline of one distillation in seconds; default the SDK's long timeout")
]


def _tier(tier: int) -> str:
    from kdcvg_client import prior_tier_name

    return prior_tier_name(tier)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _describe(prior) -> str:  # noqa: ANN001
    return f"rank {prior.rank}, {_size(prior.size_bytes)}, final loss {prior.final_loss:.4f}, tier {_tier(prior.tier)}"


def _progress() -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console)


def distill_with_progress(client, progress: Progress, task, entry_id: str, **options):  # noqa: ANN001, ANN201
    """One DistillPrior call to the end, its steps and loss on ``task``; returns the stored Prior."""

    def on_event(event) -> None:  # noqa: ANN001
        progress.update(task, total=event.total_steps, completed=event.step, info=f"loss {event.loss:.4f}")

    return client.distill_prior_wait(entry_id, on_event=on_event, **options)


@prior_app.command("list")
def prior_list(target: Target = "localhost:50051", api_key: ApiKey = "kdcvg-dev-key") -> None:
    """List the motion priors of your knowledge base and the cache tier each is in."""
    with _client(target, api_key) as client:
        priors = list(client.iter_priors())
    if not priors:
        console.print("no motion priors; distil one with `kdcvg prior distill ENTRY_ID`")
        return
    table = Table(title=f"{len(priors)} motion prior(s)", title_justify="left")
    table.add_column("id", no_wrap=True, overflow="fold")
    table.add_column("rank", justify="right")
    table.add_column("tier")
    table.add_column("size", justify="right")
    table.add_column("final loss", justify="right")
    for p in priors:
        table.add_row(p.id, str(p.rank), _tier(p.tier), _size(p.size_bytes), f"{p.final_loss:.4f}")
    console.print(table)


@prior_app.command("load")
def prior_load(prior_id: str, target: Target = "localhost:50051", api_key: ApiKey = "kdcvg-dev-key") -> None:
    """Bring a prior into the device tier ahead of use."""
    with _client(target, api_key) as client:
        reply = client.load_prior(prior_id)
    console.print(
        f"prior {reply.prior.id}: tier {_tier(reply.prior.tier)} "
        f"(loaded from {_tier(reply.loaded_from)} in {reply.load_millis:.1f} ms)"
    )


@prior_app.command("unload")
def prior_unload(prior_id: str, target: Target = "localhost:50051", api_key: ApiKey = "kdcvg-dev-key") -> None:
    """Drop a prior from the device and host tiers; its file stays on disk."""
    with _client(target, api_key) as client:
        t0 = time.perf_counter()
        reply = client.unload_prior(prior_id)
        millis = (time.perf_counter() - t0) * 1000
    console.print(f"prior {reply.prior.id}: tier {_tier(reply.prior.tier)} (unloaded in {millis:.1f} ms)")


@prior_app.command("distill")
def prior_distill(
    entry_id: Annotated[str, typer.Argument(help="the knowledge-base entry to distil a motion prior from")],
    rank: Rank = 0,
    steps: Steps = 0,
    learning_rate: LearningRate = 0.0,
    seed: Seed = 0,
    timeout: DistillTimeout = None,
    target: Target = "localhost:50051",
    api_key: ApiKey = "kdcvg-dev-key",
) -> None:
    """Distil a motion prior (LoRA) from one entry, showing steps and loss."""
    options = {"rank": rank, "steps": steps, "learning_rate": learning_rate, "seed": seed, "timeout": timeout}
    with _client(target, api_key) as client, _progress() as progress:
        task = progress.add_task(f"distil {entry_id[:12]}", total=steps or None, info="")
        prior = distill_with_progress(client, progress, task, entry_id, **options)
    console.print(f"prior {prior.id}: {_describe(prior)}")


def _manifest_ids(directory: Path) -> list[str]:
    """Entry ids of a `kb ingest` directory: an entry's id is the sha256 of its video bytes."""
    return [hashlib.sha256((directory / row["file"]).read_bytes()).hexdigest() for row in _manifest(directory)]


def discover_entries(client) -> list[str]:  # noqa: ANN001
    """Ids of every entry of the caller's knowledge base, walking every page of ListEntries."""
    return [entry.id for entry in client.iter_entries()]


@prior_app.command("distill-all")
def prior_distill_all(
    entry_ids: Annotated[
        list[str] | None, typer.Argument(help="entries to distil; default: every entry of your knowledge base")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="a `kb ingest` directory: distil the entries of the clips it lists")
    ] = None,
    rank: Rank = 0,
    steps: Steps = 0,
    learning_rate: LearningRate = 0.0,
    seed: Seed = 0,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing/--no-skip-existing", help="leave entries that already have a prior")
    ] = True,
    timeout: DistillTimeout = None,
    target: Target = "localhost:50051",
    api_key: ApiKey = "kdcvg-dev-key",
) -> None:
    """Distil a motion prior for every entry of your knowledge base, one after another.

    Without ENTRY_IDS or --manifest: every entry of your knowledge base (those `kdcvg kb list` shows).

    Exits 1 if any distillation failed.
    """
    from kdcvg_client import KdcvgError

    options = {"rank": rank, "steps": steps, "learning_rate": learning_rate, "seed": seed, "timeout": timeout}
    distilled, skipped, failed = [], [], []
    with _client(target, api_key) as client:
        ids = [i.strip().lower() for i in entry_ids or []]
        if manifest is not None:
            ids += _manifest_ids(manifest)
        if not ids:
            ids = discover_entries(client)
        ids = list(dict.fromkeys(ids))
        existing = {p.id for p in client.iter_priors()} if skip_existing else set()
        if not ids:
            console.print("no entries to distil")
            return
        with _progress() as progress:
            overall = progress.add_task("entries", total=len(ids), info="")
            steps_task = progress.add_task("", total=steps or None, info="", visible=False)
            for entry_id in ids:
                if entry_id in existing:
                    skipped.append(entry_id)
                else:
                    progress.reset(
                        steps_task, total=steps or None, description=f"distil {entry_id[:12]}", info="", visible=True
                    )
                    try:
                        prior = distill_with_progress(client, progress, steps_task, entry_id, **options)
                        distilled.append(prior)
                    except KdcvgError as exc:
                        failed.append((entry_id, f"{exc.code.name}: {exc.message}"))
                        progress.console.print(f"[red]failed[/] {entry_id}: {exc.code.name}: {exc.message}")
                info = f"{len(distilled)} distilled, {len(skipped)} skipped, {len(failed)} failed"
                progress.update(overall, advance=1, info=info)
    console.print(f"distilled {len(distilled)}, skipped {len(skipped)} (already had a prior), failed {len(failed)}")
    for prior in distilled:
        console.print(f"  distilled {prior.id}: {_describe(prior)}")
    for entry_id, reason in failed:
        console.print(f"  [red]failed[/] {entry_id}: {reason}")
    if failed:
        raise typer.Exit(1)


def _summary_rows(summary) -> tuple[list, list]:  # noqa: ANN001
    metrics = [(m.name, m.value, dict(m.components)) for m in summary.metrics]
    return metrics, [(u.name, u.reason) for u in summary.unavailable]


def print_scores(summary, title: str = "scores") -> None:  # noqa: ANN001
    """A table of a ScoreSummary: each metric, its components, and what could not be computed."""
    table = Table(title=f"{title} ({summary.frames} frames)")
    for col in ("metric", "value", "components"):
        table.add_column(col)
    for m in summary.metrics:
        parts = ", ".join(f"{k} {v:.3g}" for k, v in sorted(m.components.items()))
        table.add_row(m.name, f"{m.value:.3f}", parts)
    for u in summary.unavailable:
        table.add_row(u.name, "[yellow]n/a[/]", u.reason)
    console.print(table)


def write_score_sheet(frames, summary, path: Path, caption: str = "") -> Path:  # noqa: ANN001
    """A PNG with the clip's contact sheet above a score card."""
    import numpy as np

    from kdcvg.media.contact_sheet import contact_sheet, write_png
    from kdcvg.media.score_card import score_card

    sheet = contact_sheet(frames, columns=8, scale=3, captions=[caption] if caption else None)
    card = score_card(*_summary_rows(summary), width=sheet.shape[1])
    return write_png(np.concatenate([sheet, card]), path)


@app.command()
def score(
    video: Annotated[Path, typer.Argument(help="the video file to score (MP4, MOV, WebM, AVI)", exists=True)],
    prompt: Annotated[str, typer.Option(help="product and selling points the video should show")] = "",
    product_image: Annotated[
        Path | None, typer.Option(help="PNG or JPEG of the product, for ProductScore", exists=True)
    ] = None,
    metric: Annotated[list[str] | None, typer.Option(help="a metric to compute (repeat); default all")] = None,
    png: Annotated[Path | None, typer.Option(help="write the frames and a score card to this PNG")] = None,
    target: Target = "localhost:50051",
    api_key: ApiKey = "kdcvg-dev-key",
) -> None:
    """Scores a video over ScoreStream: frames are decoded here and streamed, partial scores print as they come."""
    from kdcvg.media.video import VideoDecodeError, decode_video

    try:
        decoded = decode_video(video.read_bytes())
    except VideoDecodeError as exc:
        console.print(f"[red]error[/]: {video}: {exc}")
        raise typer.Exit(1) from None
    summary = None
    t0 = time.perf_counter()
    with _client(target, api_key) as client:
        stream = client.score_frames(
            iter(decoded.frames),
            metrics=metric or (),
            prompt=prompt,
            product_image=product_image,
            fps=decoded.fps or 0.0,
        )
        for event in stream:
            ms = (time.perf_counter() - t0) * 1000
            if event.HasField("partial"):
                p = event.partial
                console.print(f"[dim]{ms:7.0f} ms[/]  partial {p.name:<8} {p.value:.3f}  ({p.frames} frames)")
            else:
                summary = event.summary
    if summary is None:
        console.print("[red]error[/]: the stream ended without a summary")
        raise typer.Exit(1)
    print_scores(summary, str(video))
    if png is not None:
        console.print(f"score sheet: {write_score_sheet(decoded.frames, summary, png, prompt)}")


@contextlib.contextmanager
def background_server(settings, kb=None, generation: bool = True) -> Iterator:  # noqa: ANN001
    """Runs the server on its own event loop in a thread, for commands that also act as a client."""
    from kdcvg.app import start

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start(settings, kb, generation), loop).result()
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(settings.shutdown_grace_s), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


GENERATE_SAMPLE = ("sparkling water", ["spins to show every angle", "ice-cold refreshment"])


def save_generation(video, out_dir: Path, stem: str) -> tuple[Path, Path]:  # noqa: ANN001
    """Writes the MP4 and a contact sheet of its frames; returns their paths."""
    from kdcvg.media.contact_sheet import contact_sheet, write_png
    from kdcvg.media.video import decode_video

    out_dir.mkdir(parents=True, exist_ok=True)
    mp4 = video.save(out_dir / f"{stem}.mp4")
    frames = decode_video(video.mp4).frames
    png = write_png(contact_sheet(frames, columns=8, scale=3), out_dir / f"{stem}.png")
    return mp4, png


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="where the demo keeps its knowledge base")] = Path("data/demo"),
    out_dir: Annotated[Path, typer.Option(help="where the generated MP4 and contact sheet go")] = Path("out"),
    steps: Annotated[int, typer.Option(help="sampler steps")] = 30,
) -> None:
    """The main job on the embedded default: serve, ingest the sample knowledge base, retrieve, generate."""
    from kdcvg import logs
    from kdcvg.config import Settings
    from kdcvg.media.video import decode_video

    settings = Settings(data_dir=data_dir, port=0, metrics_port=0, log_format="text", log_level="WARNING")
    logs.configure(settings.log_level, settings.log_format)
    key = next(iter(settings.tenants_by_key()))
    started = time.perf_counter()
    console.print(f"[bold]kdcvg demo[/]: starting the server (data in {data_dir}; first run exports the encoder)")
    with background_server(settings) as running:
        console.print(f"serving on 127.0.0.1:{running.port} in {time.perf_counter() - started:.1f} s")
        with _client(f"127.0.0.1:{running.port}", key) as client:
            created, existing = ingest_directory(client, SAMPLE_DIR)
            console.print(f"sample knowledge base: {created} clips ingested, {existing} already present")
            for points in SAMPLE_QUERIES:
                t0 = time.perf_counter()
                reply = client.search(points, limit=3)
                ms = (time.perf_counter() - t0) * 1000
                print_search(reply, f"{' / '.join(points)}   ({ms:.1f} ms)")
            if running.generation is None:
                console.print("[yellow]no video model is bundled in this build; skipping generation[/]")
                return
            product, points = GENERATE_SAMPLE
            console.print(f"generating an ad for {product!r}: {' / '.join(points)} ({steps} steps, semantic prior)")
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("sample", total=steps)

                def on_event(event) -> None:  # noqa: ANN001
                    if event.HasField("references"):
                        progress.console.print(f"reference: {event.references.caption}")
                    elif event.HasField("progress") and event.progress.stage == "sample":
                        progress.update(task, completed=event.progress.step)

                video = client.generate_video(
                    product,
                    points,
                    category="food_beverages",
                    options={"steps": steps, "knowledge_mode": "semantic", "seed": 1, "score": True},
                    on_event=on_event,
                )
            mp4, png = save_generation(video, out_dir, "demo")
            if video.scores is not None:
                print_scores(video.scores, "scores of the generated video")
                frames = decode_video(video.mp4).frames
                sheet = write_score_sheet(frames, video.scores, out_dir / "demo-scores.png", " / ".join(points))
                console.print(f"score sheet: {sheet}")
            millis = dict(video.summary.stage_millis)
            timings = ", ".join(f"{k} {v:.0f} ms" for k, v in millis.items())
            console.print(f"video: {mp4}\ncontact sheet: {png}\nseed {video.summary.seed}; {timings}")
    console.print("[bold green]done[/]")


if __name__ == "__main__":
    app()
