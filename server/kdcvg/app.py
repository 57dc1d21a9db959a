"""Builds the server from Settings and runs it: components, services, health, reflection, metrics, shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kdcvg.auth import ApiKeys
from kdcvg.config import Settings
from kdcvg.generation.pipeline import GenerationPipeline
from kdcvg.interceptors import ServerInterceptor
from kdcvg.knowledge.base import KnowledgeBase, Limits
from kdcvg.knowledge.blobs import BlobStore
from kdcvg.knowledge.events import EventLog
from kdcvg.knowledge.index import HnswParams, open_index
from kdcvg.metrics import ServerMetrics
from kdcvg.scoring.crscore import CRScoreClient, CRScoreConfig
from kdcvg.scoring.engine import Scorer
from kdcvg.services.generation import GenerationServicer
from kdcvg.services.knowledge import KnowledgeServicer
from kdcvg.services.priors import PriorServicer
from kdcvg.services.scoring import ScoringServicer
from kdcvg.services.unimplemented import GenerationServicer as UnimplementedGeneration
from kdcvg.services.unimplemented import PriorServicer as UnimplementedPriors
from kdcvg.text.atomizer import Atomizer
from kdcvg.text.batcher import MicroBatcher
from kdcvg.text.encoder import TextEncoder
from kdcvg.v1 import (
    generation_pb2,
    generation_pb2_grpc,
    knowledge_pb2,
    knowledge_pb2_grpc,
    prior_pb2,
    prior_pb2_grpc,
    scoring_pb2,
    scoring_pb2_grpc,
)

log = logging.getLogger("kdcvg.server")

SERVICE_NAMES = (
    knowledge_pb2.DESCRIPTOR.services_by_name["KnowledgeService"].full_name,
    generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
    scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].full_name,
    prior_pb2.DESCRIPTOR.services_by_name["PriorService"].full_name,
)


def solo_encoder(settings: Settings, encoder: TextEncoder) -> TextEncoder | None:
    """The encoder with ``encoder_solo_threads`` for a Search alone on the CPU (see MicroBatcher), or None
    when that is off or the encoder is not on the CPU alone. Blocking: opens an ONNX Runtime session."""
    threads = settings.encoder_threads
    if getattr(encoder, "providers", None) != ["CPUExecutionProvider"] or threads is None:
        return None
    if settings.encoder_solo_threads <= threads:
        return None
    return encoder.with_threads(settings.encoder_solo_threads, spin=False)


def build_knowledge_base(
    settings: Settings, encoder: TextEncoder | None = None, atomizer: Atomizer | None = None
) -> KnowledgeBase:
    """The knowledge base with the backend the settings pick. Blocking: loads models and opens the index."""
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    encoder = encoder or TextEncoder.load(
        settings.models_dir,
        precision=settings.encoder_precision,
        providers=settings.encoder_providers,
        threads=settings.encoder_threads,
        spin=settings.encoder_spin,
    )
    index = open_index(
        settings.index_backend,
        path=data / "index",
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
        collection=settings.qdrant_collection,
        dim=encoder.dim,
        hnsw=HnswParams(m=settings.hnsw_m, ef_construct=settings.hnsw_ef_construct, ef=settings.hnsw_ef),
    )
    solo = solo_encoder(settings, encoder)
    limits = Limits(
        max_text_chars=settings.max_text_chars,
        max_caption_chars=settings.max_caption_chars,
        max_selling_points=settings.max_selling_points,
        max_video_frames=settings.max_video_frames,
        max_video_pixels=settings.max_video_pixels,
        max_search_limit=settings.max_search_limit,
        search_candidates=settings.search_candidates,
        phrase_cache_size=settings.phrase_cache_size,
    )
    return KnowledgeBase(
        index=index,
        blobs=BlobStore(data / "videos"),
        events=EventLog(data / "events.sqlite3"),
        encoder=encoder,
        batcher=MicroBatcher(
            encoder, max_batch=settings.batch_max_size, max_wait_ms=settings.batch_max_wait_ms, solo=solo
        ),
        atomizer=atomizer or Atomizer(),
        limits=limits,
    )


BUNDLED_MODEL = Path(__file__).parent / "weights" / "kdcvg-tiny"


def build_generation(settings: Settings, kb: KnowledgeBase) -> GenerationPipeline | None:
    """The video generation pipeline, or None when no model is configured or bundled. Blocking."""
    import torch

    from kdcvg.models.video_model import VideoModel

    model_dir = settings.model_dir or BUNDLED_MODEL
    if settings.model_dir is None and not (BUNDLED_MODEL / "config.json").exists():
        log.warning("no video model bundled; GenerationService answers UNIMPLEMENTED")
        return None
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    model = VideoModel.load(model_dir).eval()
    encoder = kb.encoder
    if getattr(encoder, "precision", None) != settings.generation_encoder_precision:
        encoder = TextEncoder.load(
            settings.models_dir,
            precision=settings.generation_encoder_precision,
            providers=settings.encoder_providers,
            threads=settings.encoder_threads,
            spin=settings.encoder_spin,
        )
    return assemble_generation(settings, kb, model, encoder)


def assemble_generation(settings: Settings, kb: KnowledgeBase, model, encoder: TextEncoder) -> GenerationPipeline:  # noqa: ANN001
    """Wires a loaded model into the sampler, the motion-prior cache and the distiller. Blocking."""
    import torch

    from kdcvg.generation.sampler import BatchedSampler
    from kdcvg.kernels import dispatch
    from kdcvg.priors.cache import PriorCache
    from kdcvg.priors.distill import DistillConfig
    from kdcvg.priors.jobs import Distiller
    from kdcvg.priors.lora import attach

    dispatch.set_default(settings.kernels == "triton")
    model.requires_grad_(False)  # distillation trains LoRAs only; the base weights never take gradients
    attach(model.dit)
    if torch.device(model.device).type == "cuda":
        from kdcvg.kernels.lora import install

        install()  # the SGMV Triton kernels for the per-row LoRA update; CPU keeps the PyTorch reference
    priors = PriorCache(
        settings.data_dir / "priors",
        model.dit,
        device_slots=settings.prior_device_slots,
        host_bytes=settings.prior_host_cache_mb << 20,
        rank=settings.prior_rank,
        device=model.device,
    )
    kb.prior_exists = priors.exists
    kb.on_delete.append(priors.delete)
    sampler = BatchedSampler(
        model, max_rows=settings.sampler_max_rows, max_jobs=settings.max_generations, slots=priors.slots
    )
    sampler.calibrate()
    pipeline = GenerationPipeline(kb=kb, text_encoder=encoder, model=model, sampler=sampler, priors=priors)
    pipeline.distiller = Distiller(
        kb=kb,
        encoder=encoder,
        model=model,
        cache=priors,
        defaults=DistillConfig(
            rank=settings.prior_rank,
            steps=settings.prior_steps,
            learning_rate=settings.prior_learning_rate,
            loss=settings.prior_loss,
        ),
        max_running=settings.max_distillations,
    )
    return pipeline


def build_scorer(settings: Settings, encoder: TextEncoder | None) -> Scorer:
    """The scoring engine; its OCR and reward model load on first use."""
    crscore = None
    if settings.crscore_url:
        crscore = CRScoreClient(
            CRScoreConfig(
                url=settings.crscore_url,
                model=settings.crscore_model,
                api_key=settings.crscore_api_key,
                timeout_s=settings.crscore_timeout_s,
                runs=settings.crscore_runs,
                frames=settings.crscore_frames,
            )
        )
    return Scorer(
        encode_text=encoder.encode if encoder is not None else None,
        reward_model_dir=settings.reward_model_dir,
        crscore=crscore,
        threads=settings.scoring_threads,
        max_frames=settings.max_video_frames,
        max_pixels=settings.max_video_pixels,
        max_sessions=settings.max_scorings,
    )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    health: health.aio.HealthServicer
    kb: KnowledgeBase
    metrics: ServerMetrics
    generation: GenerationPipeline | None = None
    scorer: Scorer | None = None

    async def stop(self, grace: float) -> None:
        """Stops taking calls, lets in-flight calls finish within `grace` seconds, then closes storage."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.generation is not None:
            await self.generation.sampler.close()
        if self.scorer is not None:
            await self.scorer.close()
        await self.kb.batcher.close()
        self.kb.close()
        self.metrics.stop_http()


async def start(
    settings: Settings,
    kb: KnowledgeBase | None = None,
    generation: GenerationPipeline | None | bool = True,
) -> RunningServer:
    """Starts serving and returns once the port is bound and every service reports SERVING.

    `generation`: a pipeline to serve, True to build the configured one, False for none (UNIMPLEMENTED)."""
    keys = ApiKeys(settings.tenants_by_key())
    metrics = ServerMetrics()
    if kb is None:
        kb = await asyncio.to_thread(build_knowledge_base, settings)
    if generation is True:
        generation = await asyncio.to_thread(build_generation, settings, kb)
    elif generation is False:
        generation = None
    server = grpc.aio.server(
        interceptors=[ServerInterceptor(keys, metrics)],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # The SDK pings every 60 s during calls; accept that instead of answering GOAWAY.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
        ],
    )
    knowledge_pb2_grpc.add_KnowledgeServiceServicer_to_server(
        KnowledgeServicer(kb, max_video_bytes=settings.max_video_bytes, metrics=metrics), server
    )
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(
        GenerationServicer(generation) if generation is not None else UnimplementedGeneration(), server
    )
    scorer = build_scorer(settings, generation.text_encoder if generation is not None else kb.encoder)
    if generation is not None:
        generation.scorer = scorer
    scoring_pb2_grpc.add_ScoringServiceServicer_to_server(
        ScoringServicer(scorer, max_video_bytes=settings.max_video_bytes), server
    )
    distiller = getattr(generation, "distiller", None)
    prior_pb2_grpc.add_PriorServiceServicer_to_server(
        PriorServicer(generation.priors, distiller)
        if generation is not None and generation.priors is not None and distiller is not None
        else UnimplementedPriors(),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    metrics.watch(
        kb.batcher,
        generation.sampler if generation is not None else None,
        generation.priors if generation is not None else None,
        distiller,
        scorer,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    await server.start()
    metrics_port = metrics.serve_http(settings.metrics_port, settings.host) if settings.metrics_port else None
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={
            "address": f"{settings.host}:{port}",
            "metrics_port": metrics_port,
            "index_backend": settings.index_backend,
            "entries": kb.count(),
        },
    )
    return RunningServer(server, port, metrics_port, health_servicer, kb, metrics, generation, scorer)


def settle_heap() -> None:
    """Moves everything alive now (models, tables, caches: the server's lifetime state) out of the garbage
    collector's sight. A full collection otherwise walks all of it: 240 ms at 400k objects, a pause that
    lands in whichever request is running. Call once, after start-up."""
    gc.collect()
    gc.freeze()


async def serve(settings: Settings) -> None:
    """Runs until SIGTERM or SIGINT, then drains in-flight calls for `shutdown_grace_s`."""
    running = await start(settings)
    await asyncio.to_thread(running.kb.units.loaded.wait, 60.0)  # the unit table: 1-2 s at 100k entries
    await asyncio.to_thread(running.kb.warm_up)
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"grace_s": settings.shutdown_grace_s})
    await running.stop(settings.shutdown_grace_s)
    log.info("stopped")
