"""RPCs whose issue has not landed answer UNIMPLEMENTED with a message that says so, after auth."""

from __future__ import annotations

import grpc
import pytest
from conftest import auth

from kdcvg.v1 import (
    generation_pb2,
    generation_pb2_grpc,
    prior_pb2,
    prior_pb2_grpc,
)


async def _status(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        result = await call if not hasattr(call, "__aiter__") else [m async for m in call]
        del result
    return info.value


async def test_unlanded_rpcs_say_unimplemented(channel):
    gen = generation_pb2_grpc.GenerationServiceStub(channel)
    prior = prior_pb2_grpc.PriorServiceStub(channel)
    calls = {
        "Generate": lambda md: gen.Generate(generation_pb2.GenerateRequest(product="x"), metadata=md),
        "ListPriors": lambda md: prior.ListPriors(prior_pb2.ListPriorsRequest(), metadata=md),
        "LoadPrior": lambda md: prior.LoadPrior(prior_pb2.LoadPriorRequest(id="x"), metadata=md),
        "UnloadPrior": lambda md: prior.UnloadPrior(prior_pb2.UnloadPriorRequest(id="x"), metadata=md),
        "DistillPrior": lambda md: prior.DistillPrior(prior_pb2.DistillPriorRequest(entry_id="x"), metadata=md),
    }
    for name, make in calls.items():
        err = await _status(make(auth()))
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED, name
        assert name in err.details() and "not available yet" in err.details()
        err = await _status(make(None))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, name
