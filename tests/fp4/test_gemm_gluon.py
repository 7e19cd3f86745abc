"""The Gluon kernels (Hopper wgmma GEMM, small-M GEMV): compiled for sm_90a here (no spills, wgmma
asynchronous, no register-operand hazard), the GEMV's K permutation and fallback, run on the GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from longlive_kernels.fp4 import gemm as gemm_mod
from longlive_kernels.fp4 import gemm_ops, nvfp4_gemm, quantize_nvfp4
from longlive_kernels.testing import assert_bitwise_equal, rel_err

from ._gemm_helpers import FP32_TOL, _rand, _report_in_fresh_process, wgmma_register_a_hazards

# --- the Gluon Hopper kernel: compiled for sm_90a here, run on the GPU --------------------------------


@pytest.mark.parametrize("bt,out,tail", [(256, "bfloat16", False), (128, "bfloat16", False), (128, "float32", False),
                                         (256, "bfloat16", True), (128, "float32", True)],
                         ids=["256-bf16", "128-bf16", "128-fp32", "256-bf16-tailsplit", "128-fp32-tailsplit"])
@pytest.mark.parametrize("x_kind", ["bfloat16", "float16", "nvfp4"], ids=["w4a16", "w4a16fp16", "w4a4"])
def test_hopper_kernel_compiles_for_sm90a(x_kind, bt, out, tail):
    """wgmma in SASS, no spills, fits in shared memory, ptxas keeps the wgmma asynchronous (no C7515
    'wgmma.mma_async instructions are serialized' warning), and no wgmma register operand can be
    overwritten while the wgmma runs (operands come from shared memory; the SASS walk finds no
    hazard). Compiled in a fresh process: Triton's CPU interpreter (used by the other tests)
    patches triton.language process-wide."""

    x_nvfp4 = x_kind == "nvfp4"
    x_dtype = "bfloat16" if x_nvfp4 else x_kind
    report = _report_in_fresh_process(f"_hopper_compile_report({x_nvfp4}, {bt}, {out!r}, {x_dtype!r}, {tail})")
    assert "0 bytes spill stores" in report["ptxas"], report["ptxas"]
    assert "serialized" not in report["ptxas"], report["ptxas"]
    assert report["wgmma"]
    assert report["smem"] <= 227 * 1024
    assert report["register_a"] == 0, "wgmma takes A from registers (RS): see gemm_hopper's docstring"
    assert report["hazards"] == [], report["hazards"]


@given(tiles=st.integers(1, 5000), k_tiles=st.integers(1, 400), slots=st.integers(1, 300),
       cap=st.integers(1, 8))
def test_tail_split_plan_covers_every_tile_and_k_tile_once(tiles, k_tiles, slots, cap):
    """The Hopper kernel's tail split (``gemm_hopper.tail_split``): the whole tiles are the full
    waves; the tail tiles' split programs fit in one wave, each split holds ≥ MIN_SPLIT_K_TILES
    k-tiles except a shorter last one, and the splits cover K exactly once."""
    from longlive_kernels.fp4 import gemm_hopper as gh

    n_whole, split, per = gh.tail_split(tiles, k_tiles, slots, cap)
    assert 1 <= split <= cap or split == 1
    if split == 1:
        assert n_whole == tiles and per == k_tiles
        return
    tail = tiles - n_whole
    assert n_whole % slots == 0 and 0 < tail < slots and tail * split <= slots
    assert per >= gh.MIN_SPLIT_K_TILES and (split - 1) * per < k_tiles <= split * per
    starts = [s * per for s in range(split)]
    counts = [min(per, k_tiles - s0) for s0 in starts]  # the kernel's n_k of each split
    assert min(counts) >= 1 and sum(counts) == k_tiles


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["nvfp4", "bf16", "fp16"])
@pytest.mark.parametrize("m,k,n", [(129, 3072, 3072), (300, 96, 1000), (1760, 3072, 9216), (7040, 14336, 3072),
                                   (2048, 3072, 14336), (600, 1056, 1000), (513, 160, 264)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_gpu_hopper_kernel(kind, m, k, n, has_bias, monkeypatch):
    """The Gluon kernel (called directly, no fallback) against the exact dequantize path, bit-identical
    over repeated calls; where the last wave's tiles are split along K (129 × 3072², 7040 × 14336 →
    3072, and 600 × 1056 → 1000 with a shorter last split), the split-K counters are left zeroed and
    the result is within one rounding of the unsplit kernel's. (M ≤ 256 is not the default path's
    kernel: split-K sums in another order.)"""
    from longlive_kernels.fp4 import gemm_hopper as gh

    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda") / k**0.5
    b = quantize_nvfp4(w)
    bias = torch.randn(n, device="cuda") if has_bias else None
    if kind == "nvfp4":
        a = quantize_nvfp4(x)
        args = (a.data, a.scale, a.global_scale.reshape(1).float(), True)
    else:
        a = x.to(torch.bfloat16 if kind == "bf16" else torch.float16)
        args = (a, None, None, False)
    out_dtype = torch.float32 if m == 2048 else (torch.bfloat16 if kind != "fp16" else torch.float16)
    assert gh.supported(args[0], args[3], b.data, out_dtype)

    def direct():
        return gh.gemm(args[0], args[1], args[2], b.data, b.scale, b.global_scale.reshape(1).float(), bias,
                       out_dtype, args[3])

    out = direct()
    expect = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, algorithm="dequantize")
    assert rel_err(out, expect) <= 2.0**-8
    for _ in range(3):  # a race shows up as run-to-run differences
        assert_bitwise_equal(direct(), out, "repeated Hopper kernel call")
    split = gh.launch_plan(m, n, k, 128 if out_dtype == torch.float32 else 256, x.device)[2]
    assert (split > 1) == ((m, k, n) in ((129, 3072, 3072), (7040, 14336, 3072), (600, 1056, 1000)))
    if split > 1:
        for _, sem in gh._WORKSPACE.values():
            assert int(sem.abs().sum()) == 0
        whole = gh.gemm(args[0], args[1], args[2], b.data, b.scale, b.global_scale.reshape(1).float(), bias,
                        out_dtype, args[3], max_split=1)
        assert rel_err(out.float(), whole.float()) <= 2.0**-8
    if m > gemm_mod.SPLIT_K_MAX_M:  # the default path takes the same kernel when it is enabled
        monkeypatch.setattr(gemm_ops, "_HOPPER_ENABLED", True)  # read by gemm_ops._try_hopper
        algo = "fused" if kind == "nvfp4" else "auto"  # (auto W4A4 is predecode on Hopper)
        assert_bitwise_equal(nvfp4_gemm(a, b, bias=bias, out_dtype=out_dtype, algorithm=algo), out,
                             "default path vs direct Hopper kernel")
        if kind == "nvfp4":
            pre = nvfp4_gemm(a, b, bias=bias, out_dtype=out_dtype, algorithm="predecode")
            assert rel_err(pre, expect) <= 2.0**-8


# --- the Gluon small-M (GEMV) kernel: compiled for sm_90a here, run on the GPU ---------------------


@pytest.mark.parametrize("cfg", [
    (False, 8, 1, 32, 1, "bf16", True), (False, 16, 2, 32, 4, "bf16", True), (False, 32, 2, 32, 1, "fp16", True),
    (False, 64, 2, 16, 2, "bf16", True), (True, 16, 1, 32, 3, "bf16", True), (True, 64, 1, 16, 1, "bf16", False),
    (False, 8, 1, 32, 2, "bf16", False)],
    ids=["w4a16-m8", "w4a16-m16-split", "w4a16-m32-fp16", "w4a16-m64", "w4a4-m16", "w4a4-m64-raggedk",
         "w4a16-raggedk"])
def test_gemv_kernel_compiles_for_sm90a(cfg):
    """The small-M kernel builds for sm_90a with no spills or local memory; its main loop is
    registers only (the reshape/permute of the loaded words reach the mma.sync operand layouts without
    shared memory: ``assert_trivial`` conversions compile), issues mma.sync (HMMA: RT·(BM/8)·(KT/4) per
    warp and k-step) and, with 16-divisible strides, loads weights with 16-byte (KT=32) vectors."""

    x_nvfp4, bm, rt, kt, split, op, even_k = cfg
    report = _report_in_fresh_process(
        f"_gemv_compile_report({x_nvfp4}, {bm}, {rt}, {kt}, {split}, {op!r}, {even_k})")
    assert "0 bytes spill stores" in report["ptxas"], report["ptxas"]
    assert not report["local"]
    assert report["hmma_in_loop"] == rt * (bm // 8) * (kt // 4), report
    assert report["shared_in_loop"] == 0, report
    if even_k and kt == 32:
        assert report["ldg128"] >= 2 * rt, report


def test_gemv_algorithm_falls_back_where_the_kernel_cannot_run():
    """algorithm='gemv' where the Gluon kernel cannot run (the CPU interpreter, M > 64, fp8 ``a``)
    gives the portable kernel's result."""
    w = quantize_nvfp4(_rand(41, 24, 64), backend="torch")
    for x in (_rand(42, 5, 64).bfloat16(), _rand(43, 70, 64).bfloat16()):
        assert_bitwise_equal(nvfp4_gemm(x, w, algorithm="gemv", backend="triton"),
                             nvfp4_gemm(x, w, algorithm="portable", backend="triton"), "gemv fallback")


@pytest.mark.parametrize("kt", [16, 32])
def test_gemv_k_permutation_is_shared_by_both_operands(kt):
    """The small-M kernel's reshape/permute chains (replayed with torch on element-index tensors, same
    row-major semantics as Gluon's) give the weights and the activations the same K permutation, the
    documented one (MMA k = 16s + 8j + 2q + e ↔ element KT·q + 4s + 2j + e), a bijection of the step."""
    from longlive_kernels.fp4 import gemm_gemv as gv

    nb = kt // 4
    # weights: decoded words [R, NB, 2 words, 8 elements], element 16·nb + 8w + t
    w_idx = torch.arange(4 * kt).reshape(1, nb, 2, 8)
    if kt == 32:
        w_mma = w_idx.reshape(1, 4, 2, 2, 2, 2, 2).permute(gv._W_PERM_KT32.value).reshape(1, 4 * kt)[0]
    else:
        w_mma = w_idx.reshape(1, 4, 2, 2, 2, 2).permute(gv._W_PERM_KT16.value).reshape(1, 4 * kt)[0]
    # activations: 32-bit pairs [BM, 2·KT] as halves [BM, 2·KT, 2], element 2·word + e
    x_idx = torch.arange(4 * kt).reshape(1, 2 * kt, 2)
    x_mma = x_idx.reshape(1, 4, nb, 2, 2).permute(gv._X_PERM.value).reshape(4 * kt, 1)[:, 0]
    assert torch.equal(w_mma, x_mma)
    kk = torch.arange(4 * kt)
    s, j, q, e = kk // 16, (kk // 8) % 2, (kk // 2) % 4, kk % 2
    assert torch.equal(w_mma, kt * q + 4 * s + 2 * j + e)
    assert torch.equal(torch.sort(w_mma).values, kk)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["nvfp4", "bf16", "fp16"])
@pytest.mark.parametrize("m", [1, 7, 16, 33, 64])
@pytest.mark.parametrize("k,n", [(3072, 3072), (96, 1000), (14336, 3072), (3072, 14336), (3088, 72)])
def test_gpu_gemv_kernel(kind, m, k, n):
    """The small-M Gluon kernel (called directly, no fallback) against the exact dequantize path (fp32
    output: FP32 summation order only), its low-precision outputs one rounding away, bit-identical over
    repeated calls, split-K counters left zeroed; ``algorithm="gemv"`` takes the same kernel."""
    from longlive_kernels.fp4 import gemm_gemv as gv
    from longlive_kernels.fp4 import gemm_hopper as gh

    g = torch.Generator(device="cuda").manual_seed(m * 7 + k + n)
    x = torch.randn(m, k, device="cuda", generator=g)
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    b = quantize_nvfp4(w)
    bias = torch.randn(n, device="cuda", generator=g)
    if kind == "nvfp4":
        a = quantize_nvfp4(x)
        args = (a.data, a.scale, a.global_scale.reshape(1).float(), True)
    else:
        a = x.to(torch.bfloat16 if kind == "bf16" else torch.float16)
        args = (a, None, None, False)
    assert gv.supported(args[0], args[3], b.data, torch.float32)

    def direct(out_dtype):
        return gv.gemm(args[0], args[1], args[2], b.data, b.scale, b.global_scale.reshape(1).float(), bias,
                       out_dtype, args[3])

    out = direct(torch.float32)
    expect = nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, algorithm="dequantize")
    assert rel_err(out, expect) <= FP32_TOL
    for _ in range(2):
        assert_bitwise_equal(direct(torch.float32), out, "repeated small-M kernel call")
    for _, sem in gh._WORKSPACE.values():
        assert int(sem.abs().sum()) == 0
    low = torch.bfloat16 if kind != "fp16" else torch.float16
    assert rel_err(direct(low), out) <= 2.0**-8
    assert_bitwise_equal(nvfp4_gemm(a, b, bias=bias, out_dtype=torch.float32, algorithm="gemv"), out,
                         "algorithm='gemv' vs direct call")


# --- wgmma register-operand hazard (SASS walk) ----------------------------------------------------


_RS_LOOP = """
        /*0100*/                   LDS.U8 R152, [R20+0x100] ;
        /*0110*/                   WARPGROUP.ARRIVE ;
        /*0120*/                   HGMMA.64x256x16.F32.BF16 R24, R152, gdesc[UR4], R24, gsb0 ;
        /*0130*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;
        /*0140*/               @P0 BRA 0x100 ;
        /*0150*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0160*/                   EXIT ;
"""


def test_sass_hazard_walk_finds_the_register_a_race():
    """The checker flags the pattern of the first Gluon kernel (A registers of wgmma i reloaded in
    the next iteration before the wait that retires it), and accepts a wait(0) before the reload or
    an SS wgmma."""
    assert len(wgmma_register_a_hazards(_RS_LOOP)) == 1
    assert wgmma_register_a_hazards(_RS_LOOP.replace("gsb0, 0x1", "gsb0, 0x0")) == []
    assert wgmma_register_a_hazards(_RS_LOOP.replace("R24, R152, gdesc[UR4]", "R24, gdesc[UR4]")) == []
    two = _RS_LOOP.replace("/*0130*/", "/*0128*/").replace(
        "        /*0140*/", "        /*0138*/                   HGMMA.64x256x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;\n"
        "        /*013c*/                   WARPGROUP.DEPBAR.LE gsb0, 0x1 ;\n        /*0140*/")
    assert wgmma_register_a_hazards(two) == []  # a later group and wait(≤1) retire it before the reload
