"""PriorService: list, load, unload and distil motion priors (LoRAs) of the caller's knowledge base."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import grpc

from kdcvg.errors import FailedPrecondition, InvalidInput, NotFound
from kdcvg.interceptors import current_tenant
from kdcvg.priors.cache import DEVICE, DISK, HOST, PriorCache, PriorInfo
from kdcvg.priors.jobs import DistillDone, Distiller
from kdcvg.priors.lora import PriorFileError
from kdcvg.services.errors import grpc_errors
from kdcvg.v1 import prior_pb2, prior_pb2_grpc

TIERS = {DISK: prior_pb2.PRIOR_TIER_DISK, HOST: prior_pb2.PRIOR_TIER_HOST, DEVICE: prior_pb2.PRIOR_TIER_DEVICE}


def prior_to_proto(info: PriorInfo) -> prior_pb2.Prior:
    return prior_pb2.Prior(
        id=info.id, rank=info.rank, tier=TIERS[info.tier], size_bytes=info.size_bytes, final_loss=info.final_loss
    )


def _prior_id(value: str) -> str:
    pid = value.strip().lower()
    if not pid:
        raise InvalidInput("id is empty: name a prior (its id is the knowledge-base entry id it was distilled from)")
    return pid


def _page_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("page_token is not one this server issued; pass next_page_token unchanged") from None


class PriorServicer(prior_pb2_grpc.PriorServiceServicer):
    def __init__(self, cache: PriorCache, distiller: Distiller) -> None:
        self.cache = cache
        self.distiller = distiller

    @grpc_errors
    async def ListPriors(  # noqa: N802
        self, request: prior_pb2.ListPriorsRequest, context: grpc.aio.ServicerContext
    ) -> prior_pb2.ListPriorsResponse:
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            raise InvalidInput(f"page_size {request.page_size} is out of range 1-1000 (0: 100)")
        after = _page_token(request.page_token)
        priors = await asyncio.to_thread(self.cache.list, current_tenant())
        rest = [p for p in priors if p.id > after]
        page = rest[:size]
        token = base64.urlsafe_b64encode(page[-1].id.encode()).decode() if len(rest) > size else ""
        return prior_pb2.ListPriorsResponse(priors=[prior_to_proto(p) for p in page], next_page_token=token)

    @grpc_errors
    async def LoadPrior(  # noqa: N802
        self, request: prior_pb2.LoadPriorRequest, context: grpc.aio.ServicerContext
    ) -> prior_pb2.LoadPriorResponse:
        try:
            info, tier, millis = await asyncio.to_thread(self.cache.load, current_tenant(), _prior_id(request.id))
        except PriorFileError as exc:
            raise FailedPrecondition(f"prior {request.id} cannot be loaded: {exc}; distil it again") from None
        return prior_pb2.LoadPriorResponse(prior=prior_to_proto(info), loaded_from=TIERS[tier], load_millis=millis)

    @grpc_errors
    async def UnloadPrior(  # noqa: N802
        self, request: prior_pb2.UnloadPriorRequest, context: grpc.aio.ServicerContext
    ) -> prior_pb2.UnloadPriorResponse:
        try:
            info = await asyncio.to_thread(self.cache.unload, current_tenant(), _prior_id(request.id))
        except PriorFileError as exc:
            raise FailedPrecondition(f"prior {request.id} is unreadable ({exc}); distil it again") from None
        return prior_pb2.UnloadPriorResponse(prior=prior_to_proto(info))

    @grpc_errors
    async def DistillPrior(  # noqa: N802
        self, request: prior_pb2.DistillPriorRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[prior_pb2.DistillPriorResponse]:
        if not request.entry_id.strip():
            raise InvalidInput("entry_id is empty: name the knowledge-base entry to distil a motion prior from")
        cfg = self.distiller.config(request.rank, request.steps, request.learning_rate, request.seed)
        try:
            async for event in self.distiller.run(current_tenant(), request.entry_id.strip().lower(), cfg):
                if isinstance(event, DistillDone):
                    yield prior_pb2.DistillPriorResponse(
                        step=cfg.steps,
                        total_steps=cfg.steps,
                        loss=event.prior.final_loss,
                        prior=prior_to_proto(event.prior),
                    )
                else:
                    yield prior_pb2.DistillPriorResponse(step=event.step, total_steps=event.total, loss=event.loss)
        except NotFound as exc:
            raise NotFound(
                f"{exc}: distil priors from entries of your own knowledge base (KnowledgeService.Get)"
            ) from None
