"""PriorService over real gRPC, and Generate with knowledge mode FULL: distil, list, load, unload, the
tiers, bad inputs, faults (unknown id, corrupt or mismatched files, cancelled distillation, a full cache),
tenancy, and a prior actually changing what the sampler computes.

Mechanics run on a small randomly initialised VideoModel (what it draws does not matter here); what a prior
does to the shipped model is measured by bench/motion_prior.py."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from conftest import auth
from test_generation import collect, request
from test_knowledge_service import clip, expect_status, ingest

from kdcvg.v1 import generation_pb2, generation_pb2_grpc, knowledge_pb2, knowledge_pb2_grpc, prior_pb2, prior_pb2_grpc

OTHER_KEY = "key-beta"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from kdcvg.models.autoencoder import AutoencoderConfig
    from kdcvg.models.stdit import STDiTConfig
    from kdcvg.models.video_model import VideoModel

    torch.manual_seed(0)
    model = VideoModel(AutoencoderConfig(), STDiTConfig(hidden=32, depth=1, heads=2))
    # The output layer starts at zero (adaLN-zero); give it weights so the attention, and a LoRA, show.
    torch.nn.init.normal_(model.dit.final_layer.linear.weight, std=0.2)
    return model.save(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
async def prior_server(settings, encoder, atomizer, tiny_model_dir):
    from kdcvg.app import assemble_generation, build_knowledge_base, start
    from kdcvg.models.video_model import VideoModel

    settings = settings.model_copy(update={"prior_device_slots": 2, "prior_steps": 3})
    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    pipeline = assemble_generation(settings, kb, VideoModel.load(tiny_model_dir).eval(), kb.encoder)
    running = await start(settings, kb, generation=pipeline)
    yield running
    await running.stop(0.5)


@pytest.fixture
async def stubs(prior_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{prior_server.port}") as ch:
        yield (
            prior_pb2_grpc.PriorServiceStub(ch),
            knowledge_pb2_grpc.KnowledgeServiceStub(ch),
            generation_pb2_grpc.GenerationServiceStub(ch),
        )


async def add_entry(kstub, seed: int = 3, motion: str = "rotate", key: str = "key-alpha") -> str:
    video, creative = clip(seed, motions=[motion])
    return (await ingest(kstub, video, creative, key=key)).entry.id


async def distil(pstub, entry_id: str, key: str = "key-alpha", **kw) -> list[prior_pb2.DistillPriorResponse]:
    call = pstub.DistillPrior(prior_pb2.DistillPriorRequest(entry_id=entry_id, **kw), metadata=auth(key))
    return [e async for e in call]


def fake_prior(server, tenant: str, prior_id: str, seed: int = 0):
    """A stored prior without the wait of a distillation (random B, so it changes the output)."""
    import torch

    from kdcvg.priors.lora import LoRAWeights

    w = LoRAWeights.init(server.generation.model.dit, 4, generator=torch.Generator().manual_seed(seed))
    for v in w.b.values():
        torch.nn.init.normal_(v.detach(), std=0.5)
    w.meta["final_loss"] = "0.5"
    return server.generation.priors.store(tenant, prior_id, w)


async def test_distil_streams_progress_and_stores_the_prior(stubs, prior_server):
    pstub, kstub, _ = stubs
    entry_id = await add_entry(kstub)
    events = await distil(pstub, entry_id, steps=4, rank=8, seed=5)
    assert [(e.step, e.total_steps) for e in events[:-1]] == [(i, 4) for i in range(1, 5)]
    assert all(e.loss >= 0 for e in events)
    final = events[-1]
    assert final.HasField("prior") and final.prior.id == entry_id and final.prior.rank == 8
    assert final.prior.tier == prior_pb2.PRIOR_TIER_DISK and final.prior.size_bytes > 0
    listed = await pstub.ListPriors(prior_pb2.ListPriorsRequest(), metadata=auth())
    assert [p.id for p in listed.priors] == [entry_id]
    entry = await kstub.Get(knowledge_pb2.GetRequest(id=entry_id), metadata=auth())
    assert entry.entry.has_prior


async def test_rank_is_capped_at_the_layer_width(stubs):
    pstub, kstub, _ = stubs
    entry_id = await add_entry(kstub)
    events = await distil(pstub, entry_id, steps=1, rank=4096)
    assert events[-1].prior.rank == 32  # the tiny model's hidden width


async def test_load_moves_through_the_tiers(stubs, prior_server):
    pstub, _, _ = stubs
    fake_prior(prior_server, "alpha", "p1")
    first = await pstub.LoadPrior(prior_pb2.LoadPriorRequest(id="p1"), metadata=auth())
    assert first.loaded_from == prior_pb2.PRIOR_TIER_DISK and first.prior.tier == prior_pb2.PRIOR_TIER_DEVICE
    again = await pstub.LoadPrior(prior_pb2.LoadPriorRequest(id="p1"), metadata=auth())
    assert again.loaded_from == prior_pb2.PRIOR_TIER_DEVICE and again.load_millis >= 0
    unloaded = await pstub.UnloadPrior(prior_pb2.UnloadPriorRequest(id="p1"), metadata=auth())
    assert unloaded.prior.tier == prior_pb2.PRIOR_TIER_DISK
    assert prior_server.generation.priors.loads["disk"] >= 1 and prior_server.generation.priors.loads["device"] >= 1


async def test_a_full_cache_evicts_and_never_fails(stubs, prior_server):
    pstub, _, _ = stubs
    for i in range(5):  # two device slots
        fake_prior(prior_server, "alpha", f"p{i}", seed=i)
        reply = await pstub.LoadPrior(prior_pb2.LoadPriorRequest(id=f"p{i}"), metadata=auth())
        assert reply.prior.tier == prior_pb2.PRIOR_TIER_DEVICE
    tiers = {p.id: p.tier for p in (await pstub.ListPriors(prior_pb2.ListPriorsRequest(), metadata=auth())).priors}
    assert sum(t == prior_pb2.PRIOR_TIER_DEVICE for t in tiers.values()) == 2
    assert tiers["p4"] == prior_pb2.PRIOR_TIER_DEVICE and tiers["p0"] == prior_pb2.PRIOR_TIER_HOST


async def test_list_pages(stubs, prior_server):
    pstub, _, _ = stubs
    for i in range(5):
        fake_prior(prior_server, "alpha", f"p{i}")
    seen, token = [], ""
    while True:
        page = await pstub.ListPriors(prior_pb2.ListPriorsRequest(page_size=2, page_token=token), metadata=auth())
        seen += [p.id for p in page.priors]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"p{i}" for i in range(5)]


async def test_full_mode_attaches_the_reference_prior(stubs, prior_server):
    pstub, kstub, gstub = stubs
    entry_id = await add_entry(kstub)
    mode = generation_pb2.KNOWLEDGE_MODE_FULL
    # No prior yet: FULL refuses, and says what to do.
    await expect_status(
        collect(gstub.Generate(request(mode=mode), metadata=auth())), grpc.StatusCode.FAILED_PRECONDITION, "distil"
    )
    # The default mode falls back to SEMANTIC when the reference has no prior.
    plain = await collect(gstub.Generate(request(mode=generation_pb2.KNOWLEDGE_MODE_UNSPECIFIED), metadata=auth()))
    assert plain[0].references.entry_id == entry_id and plain[0].references.prior_id == ""
    semantic = await collect(gstub.Generate(request(mode=generation_pb2.KNOWLEDGE_MODE_SEMANTIC), metadata=auth()))
    assert semantic[-1].summary.sha256 == plain[-1].summary.sha256
    fake_prior(prior_server, "alpha", entry_id)
    full = await collect(gstub.Generate(request(mode=mode), metadata=auth()))
    assert full[0].references.entry_id == entry_id and full[0].references.prior_id == entry_id
    assert full[-1].HasField("summary") and full[-1].summary.sha256 != semantic[-1].summary.sha256
    # The default mode now uses the prior too; prior_scale changes the result.
    auto = await collect(gstub.Generate(request(mode=generation_pb2.KNOWLEDGE_MODE_UNSPECIFIED), metadata=auth()))
    assert auto[-1].summary.sha256 == full[-1].summary.sha256
    scaled = await collect(gstub.Generate(request(mode=mode, prior_scale=0.25), metadata=auth()))
    assert scaled[-1].summary.sha256 != full[-1].summary.sha256


async def test_rows_with_different_priors_share_a_step(stubs, prior_server):
    """Two FULL requests with different references and an OFF one, in the same sampler steps: each gets
    exactly the video it gets alone."""
    _, kstub, gstub = stubs
    sampler = prior_server.generation.sampler
    a = await add_entry(kstub, 3, "rotate")
    fake_prior(prior_server, "alpha", a, seed=1)
    b = await add_entry(kstub, 8, "slide_left")
    fake_prior(prior_server, "alpha", b, seed=2)

    def req(points, mode=generation_pb2.KNOWLEDGE_MODE_FULL):
        r = request(mode=mode, steps=5)
        del r.selling_points[:]
        r.selling_points.extend(points)
        return r

    reqs = [req(["spins to show every angle"]), req(["glides smoothly to the left"]), req(["cold"], 1)]
    alone = [await collect(gstub.Generate(r, metadata=auth())) for r in reqs]
    assert alone[0][0].references.prior_id == a and alone[1][0].references.prior_id == b
    steps_before = sampler.steps_run
    together = await asyncio.gather(*(collect(gstub.Generate(r, metadata=auth())) for r in reqs))
    assert sampler.steps_run - steps_before < 3 * 5
    for x, y in zip(alone, together, strict=True):
        assert x[-1].summary.sha256 == y[-1].summary.sha256


async def test_distil_cancelled_leaves_no_prior(stubs, prior_server):
    pstub, kstub, _ = stubs
    entry_id = await add_entry(kstub)
    call = pstub.DistillPrior(prior_pb2.DistillPriorRequest(entry_id=entry_id, steps=2000), metadata=auth())
    first = await call.read()
    assert first.step == 1
    call.cancel()
    distiller = prior_server.generation.distiller
    for _ in range(200):
        if distiller.running == 0:
            break
        await asyncio.sleep(0.05)
    assert distiller.running == 0 and distiller.cancelled == 1
    assert not prior_server.generation.priors.exists("alpha", entry_id)
    assert not list(prior_server.generation.priors.root.rglob("*.safetensors*"))
    listed = await pstub.ListPriors(prior_pb2.ListPriorsRequest(), metadata=auth())
    assert list(listed.priors) == []


async def test_one_distillation_at_a_time(stubs, prior_server):
    pstub, kstub, _ = stubs
    entry_id = await add_entry(kstub)
    call = pstub.DistillPrior(prior_pb2.DistillPriorRequest(entry_id=entry_id, steps=2000), metadata=auth())
    await call.read()
    await expect_status(distil(pstub, entry_id, steps=2), grpc.StatusCode.RESOURCE_EXHAUSTED, "retry")
    call.cancel()


async def test_corrupt_and_mismatched_files_are_refused(stubs, prior_server):
    import torch

    from kdcvg.priors.lora import LoRAWeights

    pstub, kstub, gstub = stubs
    cache = prior_server.generation.priors
    fake_prior(prior_server, "alpha", "bad")
    cache.path("alpha", "bad").write_bytes(b"\x00garbage" * 10)
    await expect_status(
        pstub.LoadPrior(prior_pb2.LoadPriorRequest(id="bad"), metadata=auth()),
        grpc.StatusCode.FAILED_PRECONDITION,
        "distil it again",
    )
    # A LoRA of other shapes (as if made for another model) under a real entry's id.
    entry_id = await add_entry(kstub)
    w = LoRAWeights(4, {k: torch.zeros(4, 64) for k in cache.slots.a}, {k: torch.zeros(64, 4) for k in cache.slots.a})
    w.save(cache.path("alpha", entry_id))
    details = await expect_status(
        pstub.LoadPrior(prior_pb2.LoadPriorRequest(id=entry_id), metadata=auth()), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "the model needs" in details
    await expect_status(
        collect(gstub.Generate(request(mode=generation_pb2.KNOWLEDGE_MODE_FULL), metadata=auth())),
        grpc.StatusCode.FAILED_PRECONDITION,
        "distil it again",
    )


async def test_deleting_an_entry_deletes_its_prior(stubs, prior_server):
    pstub, kstub, _ = stubs
    entry_id = await add_entry(kstub)
    fake_prior(prior_server, "alpha", entry_id)
    await pstub.LoadPrior(prior_pb2.LoadPriorRequest(id=entry_id), metadata=auth())
    await kstub.Delete(knowledge_pb2.DeleteRequest(id=entry_id), metadata=auth())
    assert not prior_server.generation.priors.exists("alpha", entry_id)
    await expect_status(
        pstub.LoadPrior(prior_pb2.LoadPriorRequest(id=entry_id), metadata=auth()), grpc.StatusCode.NOT_FOUND
    )


async def test_tenants_do_not_see_each_others_priors(stubs, prior_server):
    pstub, kstub, _ = stubs
    entry_id = await add_entry(kstub)
    fake_prior(prior_server, "alpha", entry_id)
    listed = await pstub.ListPriors(prior_pb2.ListPriorsRequest(), metadata=auth(OTHER_KEY))
    assert list(listed.priors) == []
    await expect_status(
        pstub.LoadPrior(prior_pb2.LoadPriorRequest(id=entry_id), metadata=auth(OTHER_KEY)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(distil(pstub, entry_id, key=OTHER_KEY), grpc.StatusCode.NOT_FOUND, "no entry")


@pytest.mark.parametrize(
    ("call", "code", "fragment"),
    [
        (("LoadPrior", prior_pb2.LoadPriorRequest(id="")), grpc.StatusCode.INVALID_ARGUMENT, "id is empty"),
        (("LoadPrior", prior_pb2.LoadPriorRequest(id="nope")), grpc.StatusCode.NOT_FOUND, "distil it first"),
        (("LoadPrior", prior_pb2.LoadPriorRequest(id="../x")), grpc.StatusCode.NOT_FOUND, "not found"),
        (("UnloadPrior", prior_pb2.UnloadPriorRequest(id="nope")), grpc.StatusCode.NOT_FOUND, "not found"),
        (("ListPriors", prior_pb2.ListPriorsRequest(page_size=5000)), grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        (("ListPriors", prior_pb2.ListPriorsRequest(page_token="%%%")), grpc.StatusCode.INVALID_ARGUMENT, "token"),
    ],
)
async def test_bad_unary_requests(stubs, call, code, fragment):
    pstub, _, _ = stubs
    method, req = call
    await expect_status(getattr(pstub, method)(req, metadata=auth()), code, fragment)


@pytest.mark.parametrize(
    ("fields", "code", "fragment"),
    [
        ({"entry_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "entry_id is empty"),
        ({"entry_id": "abc"}, grpc.StatusCode.INVALID_ARGUMENT, "not an entry id"),
        ({"entry_id": "a" * 64}, grpc.StatusCode.NOT_FOUND, "no entry"),
        ({"entry_id": "a" * 64, "steps": 99999}, grpc.StatusCode.INVALID_ARGUMENT, "steps"),
        ({"entry_id": "a" * 64, "rank": -1}, grpc.StatusCode.INVALID_ARGUMENT, "rank"),
        ({"entry_id": "a" * 64, "learning_rate": 5.0}, grpc.StatusCode.INVALID_ARGUMENT, "learning_rate"),
    ],
)
async def test_bad_distil_requests(stubs, fields, code, fragment):
    pstub, _, _ = stubs
    call = pstub.DistillPrior(prior_pb2.DistillPriorRequest(**fields), metadata=auth())
    await expect_status(collect(call), code, fragment)


async def test_priors_need_an_api_key(stubs):
    pstub, _, _ = stubs
    await expect_status(pstub.ListPriors(prior_pb2.ListPriorsRequest()), grpc.StatusCode.UNAUTHENTICATED)


async def test_loads_racing_generation_never_change_its_result(stubs, prior_server):
    """A thread keeps loading other priors into the (two) device slots while a FULL generation samples:
    every step still sees exactly its own LoRA, so the video equals the one made without the churn."""
    import threading

    _, kstub, gstub = stubs
    cache = prior_server.generation.priors
    entry_id = await add_entry(kstub)
    fake_prior(prior_server, "alpha", entry_id, seed=9)
    for i in range(4):
        fake_prior(prior_server, "alpha", f"churn{i}", seed=20 + i)
    req = request(mode=generation_pb2.KNOWLEDGE_MODE_FULL, steps=12)
    quiet = await collect(gstub.Generate(req, metadata=auth()))
    stop = threading.Event()
    loads = 0

    def churn() -> None:
        nonlocal loads
        while not stop.is_set():
            cache.load("alpha", f"churn{loads % 4}")
            loads += 1

    installs = cache.slots.installs
    worker = threading.Thread(target=churn)
    worker.start()
    try:
        busy = await collect(gstub.Generate(req, metadata=auth()))
    finally:
        stop.set()
        worker.join()
    assert loads > 4 and cache.slots.installs - installs > 4  # the slots really were rewritten meanwhile
    assert busy[-1].summary.sha256 == quiet[-1].summary.sha256
