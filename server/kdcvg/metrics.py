"""Prometheus metrics, served on their own HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


class ServerMetrics:
    """All series the server exports. One registry per server so tests can run several servers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kdcvg_grpc_requests",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kdcvg_grpc_latency_seconds",
            "RPC latency from handler start to end, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("kdcvg_grpc_in_flight", "RPCs being handled", ["method"], registry=self.registry)
        self.stage_latency = Histogram(
            "kdcvg_stage_latency_seconds",
            "Time in one stage of a request (encode, parse, index, rank, decode, ...)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.kb_entries_ingested = Counter(
            "kdcvg_kb_ingested",
            "Ingests, by outcome (created, existing)",
            ["outcome"],
            registry=self.registry,
        )
        self.encoder_batches = Gauge("kdcvg_encoder_batches", "Encoder batches run so far", registry=self.registry)
        self.encoder_items = Gauge("kdcvg_encoder_items", "Texts encoded by the batcher so far", registry=self.registry)
        self.sampler_in_flight = Gauge("kdcvg_sampler_in_flight", "Generations being sampled", registry=self.registry)
        self.sampler_steps = Gauge("kdcvg_sampler_steps", "Sampler forward passes so far", registry=self.registry)
        self.sampler_rows = Gauge(
            "kdcvg_sampler_rows", "Rows sampled so far (2 per guided request)", registry=self.registry
        )
        self.prior_loads = Gauge(
            "kdcvg_prior_loads",
            "Motion-prior lookups so far, by the tier they were served from (device = a hit)",
            ["tier"],
            registry=self.registry,
        )
        self.prior_evictions = Gauge(
            "kdcvg_prior_evictions", "Motion priors evicted so far, by tier", ["tier"], registry=self.registry
        )
        self.prior_slot_installs = Gauge(
            "kdcvg_prior_slot_installs", "LoRAs copied into device slots so far", registry=self.registry
        )
        self.distillations = Gauge(
            "kdcvg_distillations",
            "DistillPrior jobs by state (running now, completed, cancelled)",
            ["state"],
            registry=self.registry,
        )
        self.scoring_sessions = Gauge(
            "kdcvg_scoring_sessions",
            "videos being scored now (ScoreStream, Score, Generate scores)",
            registry=self.registry,
        )
        self.scoring_partials = Gauge(
            "kdcvg_scoring_partials", "partial scores sent on ScoreStream since start", registry=self.registry
        )

    def watch(
        self,
        batcher: object | None = None,
        sampler: object | None = None,
        priors: object | None = None,
        distiller: object | None = None,
        scorer: object | None = None,
    ) -> None:
        """Reads the batcher's, sampler's, prior cache's and distiller's own counters at scrape time."""
        if batcher is not None:
            self.encoder_batches.set_function(lambda: batcher.batches_run)
            self.encoder_items.set_function(lambda: batcher.items)
        if sampler is not None:
            self.sampler_in_flight.set_function(lambda: sampler.in_flight)
            self.sampler_steps.set_function(lambda: sampler.steps_run)
            self.sampler_rows.set_function(lambda: sampler.rows_run)
        if priors is not None:
            for tier in ("disk", "host", "device"):
                self.prior_loads.labels(tier).set_function(lambda t=tier: priors.loads[t])
            self.prior_evictions.labels("host").set_function(lambda: priors.evictions["host"])
            self.prior_evictions.labels("device").set_function(lambda: priors.slots.replaced)
            self.prior_slot_installs.set_function(lambda: priors.slots.installs)
        if distiller is not None:
            self.distillations.labels("running").set_function(lambda: distiller.running)
            self.distillations.labels("completed").set_function(lambda: distiller.completed)
            self.distillations.labels("cancelled").set_function(lambda: distiller.cancelled)
        if scorer is not None:
            self.scoring_sessions.set_function(lambda: scorer.sessions)
            self.scoring_partials.set_function(lambda: scorer.partials_sent)

    def serve_http(self, port: int, host: str = "0.0.0.0") -> int:
        """Starts the /metrics endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http_server = server
        return server.server_port

    def stop_http(self) -> None:
        server = getattr(self, "_http_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
            self._http_server = None
