"""Services whose issue has not landed yet: every RPC answers UNIMPLEMENTED and says so."""

from __future__ import annotations

from typing import Any

import grpc

from kdcvg.v1 import generation_pb2_grpc, prior_pb2_grpc


async def _unimplemented(context: grpc.aio.ServicerContext, rpc: str, capability: str) -> None:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{rpc} is not available yet in this kdcvg build: {capability} lands in a later release",
    )


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    async def Generate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "GenerationService.Generate", "the embedded video model")
        yield  # pragma: no cover - makes this an async generator, as a server stream must be


class PriorServicer(prior_pb2_grpc.PriorServiceServicer):
    async def ListPriors(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "PriorService.ListPriors", "motion priors")

    async def LoadPrior(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "PriorService.LoadPrior", "motion priors")

    async def UnloadPrior(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "PriorService.UnloadPrior", "motion priors")

    async def DistillPrior(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "PriorService.DistillPrior", "motion priors")
        yield  # pragma: no cover
