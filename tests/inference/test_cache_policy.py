"""Cache policy: the runtime bookkeeping (CacheManager over FP4KVCache / BF16KVCache) equals the
declarative plain-Python model over 50 chunks with random scene cuts and prompt switches; hand-checked
steady states; policy validation."""

import random

import pytest
import torch

from longlive.inference.cache_policy import CacheManager, CachePolicy, ChunkPlan, plan_chunks

from ._helpers import micro_config, micro_model


def _flags(n, seed, p_cut=0.2, p_switch=0.25):
    rng = random.Random(seed)
    out = []
    for c in range(n):
        cut = c > 0 and rng.random() < p_cut
        switch = c > 0 and (cut or rng.random() < p_switch)
        out.append((cut, switch))
    return out


POLICIES = [
    CachePolicy(storage="bf16"),
    CachePolicy(storage="bf16", shot_sink=False),
    CachePolicy(storage="bf16", max_chunks=6, sink_chunks=2, rope_shot_offset=3),
    CachePolicy(storage="bf16", sink_chunks=0, shot_sink=True, recache_sinks=True),
    CachePolicy(storage="bf16", max_chunks=2, sink_chunks=0, shot_sink=False, recache_on_switch=False),
    CachePolicy(storage="fp4", max_chunks=5, sink_chunks=1),
]


@pytest.mark.parametrize("ops", ["kernels", "torch"])
@pytest.mark.parametrize("pi", range(len(POLICIES)))
def test_runtime_equals_plain_python_model_50_chunks(ops, pi):
    policy = POLICIES[pi]
    if ops == "torch" and policy.storage == "fp4":
        pytest.skip("the plain-torch cache is BF16 only")
    model = micro_model(ops=ops)
    mgr = CacheManager(model, policy)
    flags = _flags(50, seed=pi + 1)
    fpc = model.config.ar.chunk_frames
    expected = plan_chunks(policy, flags, frames_per_chunk=fpc)
    for n, (cut, switch) in enumerate(flags):
        plan = mgr.begin_chunk(scene_cut=cut, switch=switch)
        assert plan == expected[n], f"chunk {n}"
        assert tuple(mgr.cache.context_chunks()) == plan.context
        for c in plan.recache:  # what the pipeline re-runs must still be held
            assert c in mgr.clean and mgr.offsets[c] == expected[c].frame_offset
        mgr.end_chunk(plan, torch.full((1,), float(n)))
        if plan.pin:
            assert mgr.cache.shot_sink == n
    assert sum(p.scene_cut for p in expected) >= 3
    assert sum(bool(p.recache) for p in expected) >= 3 or not policy.recache_on_switch


def test_steady_state_and_shots_by_hand():
    pol = CachePolicy(storage="bf16", rope_shot_offset=8)
    F = 8
    flags = (
        [(False, False)] * 5
        + [(True, True)]
        + [(False, False)] * 3
        + [(False, True)]
        + [(True, True)]
        + [(False, False)]
    )
    plans = plan_chunks(pol, flags, frames_per_chunk=F)
    assert [p.context for p in plans[:5]] == [(), (0,), (0, 1), (0, 1, 2), (0, 2, 3)]  # [sink | n-2, n-1]
    cut = plans[5]
    assert cut.scene_cut and cut.pin and cut.shot == 1 and cut.frame_offset == 5 * F + 8 and cut.recache == ()
    assert plans[6].context == (0, 4, 5)  # global sink, window, shot sink (pinned chunk 5)
    assert plans[7].context == (0, 5, 6) and plans[8].context == (0, 5, 7)  # shot sink never evicted
    sw = plans[9]
    assert sw.switch and not sw.scene_cut and sw.context == (0, 5, 8) and sw.recache == (8,)  # sinks kept
    assert plans[10].shot == 2 and plans[10].frame_offset == 10 * F + 16
    assert plans[11].context == (0, 9, 10)  # old shot sink 5 evictable again, new one pinned
    allsinks = plan_chunks(pol.replace(recache_sinks=True), flags, frames_per_chunk=F)
    assert allsinks[9].recache == (0, 5, 8)
    off = plan_chunks(pol.replace(recache_on_switch=False), flags, frames_per_chunk=F)
    assert all(p.recache == () for p in off)
    noshot = plan_chunks(pol.replace(shot_sink=False), flags, frames_per_chunk=F)
    assert noshot[7].context == (0, 5, 6) and noshot[8].context == (0, 6, 7) and not noshot[5].pin
    assert noshot[10].frame_offset == 10 * F + 16  # the RoPE gap does not need the shot sink


def test_chunk_prompt_flags_accepted():
    from longlive.data.prompts import schedule_from_chunk_prompts

    sched = schedule_from_chunk_prompts(["a", "a", "b", "The scene transitions. c", "c"])
    plans = plan_chunks(CachePolicy(storage="bf16"), sched, frames_per_chunk=2)
    assert [p.switch for p in plans] == [False, False, True, True, False]
    assert [p.scene_cut for p in plans] == [False, False, False, True, False]
    assert plans[2].recache == (1,) and plans[3].recache == ()


def test_from_config():
    cfg = micro_config()
    p = CachePolicy.from_config(cfg)
    assert (p.max_chunks, p.sink_chunks, p.rope_shot_offset, p.storage, p.shot_sink) == (
        4,
        1,
        4,
        "bf16",
        True,
    )
    assert CachePolicy.from_config(cfg, storage="fp4").storage == "fp4"
    five = CachePolicy.from_config(
        __import__("longlive.config", fromlist=["x"]).ModelConfig.from_name("wan2.2-ti2v-5b")
    )
    assert (five.max_chunks, five.sink_chunks, five.rope_shot_offset, five.storage) == (4, 1, 8, "fp4")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_chunks": 1}, "max_chunks must be >= 2"),
        ({"sink_chunks": 4}, r"sink_chunks must be in \[0, max_chunks=4\)"),
        ({"max_chunks": 3, "sink_chunks": 2}, "shot sink needs sink_chunks \\+ 2 <= max_chunks"),
        ({"rope_shot_offset": -1}, "rope_shot_offset must be >= 0"),
        ({"storage": "fp8"}, "storage must be 'fp4' or 'bf16'"),
    ],
)
def test_policy_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CachePolicy(**kwargs)
    with pytest.raises(TypeError, match="max_chunks must be an int"):
        CachePolicy(max_chunks=2.5)


def test_manager_needs_end_chunk_for_recache():
    mgr = CacheManager(micro_model(), CachePolicy(storage="bf16"))
    for n in range(3):
        mgr.begin_chunk()  # never end_chunk: no clean latents kept
    with pytest.raises(RuntimeError, match="clean latents of chunks"):
        mgr.begin_chunk(switch=True)


def test_plan_is_frozen():
    p = ChunkPlan(0, 0, 0, ())
    with pytest.raises(AttributeError):
        p.chunk = 1
