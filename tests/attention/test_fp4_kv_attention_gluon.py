"""fp4_kv_attention's Gluon Hopper kernel: compiled for sm_90a (no spills, asynchronous wgmma), the
probe, vs the portable kernel and fp64 on the GPU, the current chunk as strided QKV slices, and the
calls it does not take falling back to the portable kernel."""

from __future__ import annotations

import os

import pytest
import torch

from longlive_kernels.attention import FP4KVCache, fp4_kv_attention
from longlive_kernels.testing import rel_err

from ._fp4_kv_attention_helpers import _check_against_reference, _rand, attn_mod, hopper, hopper_check


def _compile_in_child(code: str) -> list[dict]:
    """Run ``code`` (which prints one JSON object per line) in a fresh process without
    TRITON_INTERPRET (the interpreter patches triton.language) and return the parsed lines."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                          check=False, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.strip().splitlines() if line.startswith("{")]


def test_gluon_kernel_compiles_for_sm90a():
    """Compiled for sm_90a here: no spills,
    wgmma asynchronous (no ptxas 'serialized' warning), 32 HGMMA.64x128x16 (QKᵀ and PV, 8 k-steps
    each: prologue S, loop S + PV, epilogue PV), shared memory within 227 KB, the producer within its
    setmaxnreg budget, the PV wait after the softmax (ptxas hoists it to the top of its basic block:
    the kernel gives the softmax a block of its own), and no register operand of an in-flight wgmma
    rewritten (the SASS walk of tests/fp4/test_gemm.py)."""
    reports = _compile_in_child(
        "import json, re\n"
        "from longlive_kernels.attention import fp4_kv_attention_hopper as h\n"
        "from tests.fp4._gemm_helpers import wgmma_register_a_hazards\n"
        "for cur in (True, False):\n"
        "    r = h.compile_report(cur); sass = r.pop('sass')\n"
        "    r['hazards'] = wgmma_register_a_hazards(sass)\n"
        "    ins = [l for l in sass.splitlines() if re.match(r'\\s+/\\*[0-9a-f]{4,}\\*/', l)]\n"
        "    pv = [i for i, l in enumerate(ins) if 'HGMMA' in l and 'tnspB' in l and 'gsb0' in l]\n"
        "    w0 = next(i for i in range(pv[0], len(ins)) if 'DEPBAR.LE gsb0, 0x0' in ins[i])\n"
        "    r['ex2_before_pv_wait'] = sum('MUFU.EX2' in l for l in ins[pv[0]:w0])\n"
        "    print(json.dumps(r))\n")
    assert len(reports) == 2
    for rep in reports:
        assert not rep["spills"] and not rep["serialized"], rep["ptxas"]
        assert rep["registers"] <= 168, rep["ptxas"]
        assert rep["hgmma"] == 32
        assert rep["smem"] <= 227 * 1024
        assert str(hopper.PRODUCER_REGS) in rep["setmaxnreg"]
        for _, limit, used in rep["regions"]:
            assert used <= limit, rep["regions"]
        assert rep["hazards"] == [], rep["hazards"]
        assert rep["ex2_before_pv_wait"] >= 64, rep["ex2_before_pv_wait"]  # the softmax overlaps PV


def test_gluon_timing_ablations_remove_what_they_name():
    """bench_kv_cache.py --gluon-ablations times the kernel without parts of its work: ablation 1 must
    compile without the decode's HMUL2, 2 without the loop's MUFU.EX2 (the prologue tile keeps 64),
    4 with half the HMUL2 (half of every tile decoded), and the default (0) must keep both."""
    (rep,) = _compile_in_child(
        "import json\n"
        "from longlive_kernels.attention import fp4_kv_attention_hopper as h\n"
        "print(json.dumps({a: [h.compile_report(False, ablate=a)[n] for n in ('hmul2', 'mufu_ex2', 'spills')]\n"
        "                  for a in (0, 1, 2, 4)}))\n")
    (h0, e0, s0), (h1, e1, _), (h2, e2, _), (h4, e4, _) = rep["0"], rep["1"], rep["2"], rep["4"]
    assert h0 > 0 and h1 == 0 and h2 == h0 and 2 * h4 == h0 and e4 == e0, rep
    assert e1 == e0 and 64 <= e2 < e0, rep
    assert not s0, rep


def _gluon_or_skip():
    """Skip without an sm_90 GPU; fail (without running the kernel in this process) when the probe,
    a child process killed after 300 s, did not pass: a hang cannot take the test session down."""
    if not hopper.supported(torch.empty(1, 1, 1, 128, dtype=torch.bfloat16, device="cuda"),
                            FP4KVCache(num_layers=1, num_heads=1, head_dim=128, chunk_tokens=128,
                                       device="cuda").layer_view(0), None, None, "bf16"):
        pytest.skip("the Gluon kernel needs an sm_90 GPU")
    dev = torch.device("cuda", torch.cuda.current_device())
    if not hopper.probe_ok(dev):
        pytest.fail(f"Gluon kernel probe failed: {hopper_check._PROBED[dev.index][1]}")


@pytest.mark.gpu
def test_gpu_gluon_probe():
    """The probe (a child process, killed after 300 s) compiles the Gluon kernel and matches the
    portable one on small problems: cache-only, + BF16 current chunk, 1 and 3 tiles per chunk,
    batch 2, a partial query tile, an all-zero V tile."""
    if not hopper.supported(torch.empty(1, 1, 1, 128, dtype=torch.bfloat16, device="cuda"),
                            FP4KVCache(num_layers=1, num_heads=1, head_dim=128, chunk_tokens=128,
                                       device="cuda").layer_view(0), None, None, "bf16"):
        pytest.skip("the Gluon kernel needs an sm_90 GPU")
    ok, msg = hopper.run_probe(torch.cuda.current_device())
    assert ok, msg


def _gluon_case(seed, t, n_chunks, lq, lc, h, b):
    cache = FP4KVCache(num_layers=1, num_heads=h, head_dim=128, chunk_tokens=t, max_chunks=4, batch_size=b,
                       device="cuda")
    for n in range(n_chunks):
        cache.start_chunk(n)
        k = _rand(seed + 2 * n, b, t, h, 128, spread=2.0, device="cuda")
        v = _rand(seed + 2 * n + 1, b, t, h, 128, spread=2.0, device="cuda")
        cache.update(0, k, v)
    q = _rand(seed + 99, b, lq, h, 128, device="cuda")
    cur = None
    if lc:
        cur = (_rand(seed + 50, b, lc, h, 128, spread=2.0, device="cuda"),
               _rand(seed + 51, b, lc, h, 128, spread=2.0, device="cuda"))
    return cache, q, cur


@pytest.mark.gpu
@pytest.mark.parametrize("t,n_chunks,lq,lc,h,b", [(7040, 4, 1000, 7040, 2, 1), (7040, 4, 700, None, 2, 1),
                                                  (256, 4, 333, 384, 3, 2), (128, 1, 128, 128, 1, 1)])
def test_gpu_gluon_matches_portable_and_fp64(t, n_chunks, lq, lc, h, b):
    """The Gluon kernel (called directly) vs the portable kernel (≤ 5e-3 rel.: the same math; P is
    fp16 instead of bf16 on the current chunk) and vs fp64 (FlashAttention rule); the public function
    with backend="triton" takes it (bitwise equal) once the probe passed."""
    _gluon_or_skip()
    cache, q, cur = _gluon_case(7, t, n_chunks, lq, lc, h, b)
    view = cache.layer_view(0)
    ck, cv = cur if cur else (None, None)
    assert hopper.supported(q, view, ck, cv, "bf16")
    got = hopper.attention(q, view, ck, cv, 128**-0.5)
    want = attn_mod.attention(q, view, ck, cv, 128**-0.5, "bf16")
    assert rel_err(got, want) <= 5e-3
    for _ in range(2):  # a race shows up as run-to-run differences
        assert torch.equal(hopper.attention(q, view, ck, cv, 128**-0.5), got)
    n_q = min(lq, 512)
    kk, vv = cache.dequantize(0, include_current=cur is None, dtype=torch.float32)  # exact values
    if cur:
        kk, vv = torch.cat([kk, ck.float()], 1), torch.cat([vv, cv.float()], 1)
    _check_against_reference(got[:, :n_q], q[:, :n_q], kk, vv)
    kw = {"current_k": ck, "current_v": cv} if cur else {}
    assert torch.equal(fp4_kv_attention(q, cache, 0, backend="triton", **kw), got)  # the fused backend takes it


@pytest.mark.gpu
def test_gpu_gluon_current_chunk_sliced_from_fused_qkv():
    """The current K/V as slices of a fused [B, Lc, 3, H, D] QKV tensor (strided token rows, as the
    model passes them): the Gluon kernel takes them (TMA over the strided 2-D view)."""
    _gluon_or_skip()
    cache, q, (ck, cv) = _gluon_case(5, 256, 3, 300, 256, 2, 2)
    qkv = torch.stack([q[:, :256], ck, cv], dim=2)  # [B, Lc, 3, H, D]
    k_view, v_view = qkv[:, :, 1], qkv[:, :, 2]
    view = cache.layer_view(0)
    assert not k_view.is_contiguous() and hopper.supported(q, view, k_view, v_view, "bf16")
    got = fp4_kv_attention(q, cache, 0, current_k=k_view, current_v=v_view, backend="triton")
    assert torch.equal(got, hopper.attention(q, view, ck, cv, 128**-0.5))  # same as contiguous copies
    want = attn_mod.attention(q, view, ck, cv, 128**-0.5, "bf16")
    assert rel_err(got, want) <= 5e-3


@pytest.mark.gpu
def test_gpu_gluon_unsupported_calls_fall_back():
    """Lc not a multiple of 128, fp16 q, fp8 compute, a non-contiguous current chunk: the portable
    kernel runs (same result as calling it directly)."""
    _gluon_or_skip()
    cache, q, (ck, cv) = _gluon_case(3, 256, 3, 200, 256, 2, 1)
    view = cache.layer_view(0)
    cases = [(q, ck[:, :100], cv[:, :100], "bf16"), (q.half(), ck.half(), cv.half(), "bf16"),
             (q, ck, cv, "fp8"),
             (q, ck.transpose(1, 2).contiguous().transpose(1, 2), cv.transpose(1, 2).contiguous().transpose(1, 2),
              "bf16")]
    for qq, k, v, compute in cases:
        assert not hopper.supported(qq, view, k, v, compute)
        got = fp4_kv_attention(qq, cache, 0, current_k=k, current_v=v, compute=compute, backend="triton")
        want = attn_mod.attention(qq, view, k, v, 128**-0.5, compute)
        assert torch.equal(got, want)
