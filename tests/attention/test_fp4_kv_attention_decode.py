"""fp4_kv_attention's decode routines: the portable kernel's FP4 decode PTX and the Gluon kernel's
decode / current-chunk convert PTX, executed by a small emulator on every byte and every E4M3 scale;
the Gluon current-chunk scales kernel; on the GPU, the inline-PTX decode vs the portable one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from longlive_kernels.fp4 import reference as fp4_ref

from ._fp4_kv_attention_helpers import _rand, attn_mod, hopper, hopper_operands

# ---- the decode PTX, executed by a small emulator on every byte and every E4M3 scale ---------------------


def _run_ptx(asm: str, inputs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Execute the straight-line b32 PTX of the decode routine on uint32 numpy arrays."""
    regs: dict[str, np.ndarray] = {f"${i}": v.astype(np.uint32) for i, v in inputs.items()}

    def val(tok):
        tok = tok.strip()
        return np.uint32(int(tok, 0)) if tok[0].isdigit() else regs[tok]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [x.strip() for x in args.split(",")]
        if op == "shl.b32":
            r = val(a[1]) << np.uint32(int(a[2]))
        elif op == "shr.b32":
            r = val(a[1]) >> np.uint32(int(a[2]))
        elif op == "and.b32":
            r = val(a[1]) & val(a[2])
        elif op == "or.b32":
            r = val(a[1]) | val(a[2])
        elif op == "prmt.b32":
            src = np.stack([(val(x) >> np.uint32(8 * i)) & np.uint32(0xFF) for x in a[1:3] for i in range(4)])
            sel = int(a[3], 0)
            r = sum(src[(sel >> (4 * i)) & 7].astype(np.uint32) << np.uint32(8 * i) for i in range(4))
        elif op == "mov.b32":
            r = val(a[1])
        elif op == "mul.rn.f32":
            r = (val(a[1]).view(np.float32) * val(a[2]).view(np.float32)).astype(np.float32).view(np.uint32)
        elif op == "cvt.rn.f16x2.f32":  # d = {a -> upper half, b -> lower half}, each one RNE
            hi = val(a[1]).view(np.float32).astype(np.float16).view(np.uint16).astype(np.uint32)
            lo = val(a[2]).view(np.float32).astype(np.float16).view(np.uint16).astype(np.uint32)
            r = (hi << np.uint32(16)) | lo
        elif op == "mul.rn.f16x2":
            x, y = val(a[1]), val(a[2])
            halves = []
            for sh in (0, 16):
                hx = ((x >> np.uint32(sh)) & np.uint32(0xFFFF)).astype(np.uint16).view(np.float16)
                hy = ((y >> np.uint32(sh)) & np.uint32(0xFFFF)).astype(np.uint16).view(np.float16)
                prod = (hx.astype(np.float64) * hy.astype(np.float64)).astype(np.float16)  # one RNE
                halves.append(prod.view(np.uint16).astype(np.uint32) << np.uint32(sh))
            r = halves[0] | halves[1]
        else:
            raise AssertionError(f"emulator does not know {op}")
        regs[a[0]] = np.asarray(r, dtype=np.uint32)
    return {int(k[1:]): v for k, v in regs.items() if k.startswith("$")}


def test_decode_ptx_is_exact_for_every_byte_and_scale():
    """fp16 bits out of ``_E2M1_F16_ASM`` == e2m1 · s · 2^-7 for all 2^32 byte words' nibbles (every
    byte value in every lane) and every finite E4M3 scale."""
    asm = attn_mod._E2M1_F16_ASM.value
    codes = np.arange(127, dtype=np.uint32)  # E4M3 codes 0..126 (0x7F is NaN)
    s = torch.from_numpy(codes.astype(np.uint8)).view(torch.float8_e4m3fn).float().numpy()
    s16 = (s * 128.0).astype(np.float16).view(np.uint16).astype(np.uint32)
    pair = s16 | (s16 << np.uint32(16))
    byte = np.arange(256, dtype=np.uint32)
    word = (
        byte[None, :]
        | ((255 - byte[None, :]) << 8)
        | (((byte[None, :] * 7) % 256) << 16)
        | (((byte[None, :] * 13 + 5) % 256) << 24)
    )
    word = np.broadcast_to(word, (127, 256)).ravel()
    pairs = np.broadcast_to(pair[:, None], (127, 256)).ravel()
    out = _run_ptx(asm, {4: word, 5: pairs, 6: pairs, 7: pairs, 8: pairs})
    lut = fp4_ref.e2m1_values().numpy()
    sv = np.broadcast_to(s[:, None], (127, 256)).ravel()
    for j in range(4):
        bj = (word >> np.uint32(8 * j)) & np.uint32(0xFF)
        for half, nib in ((0, bj & np.uint32(0xF)), (16, bj >> np.uint32(4))):
            want = (lut[nib] * sv * 2.0**-7).astype(np.float16)  # exact: no rounding happens
            assert (lut[nib] * sv * 2.0**-7 == want.astype(np.float64)).all()
            got = ((out[j] >> np.uint32(half)) & np.uint32(0xFFFF)).astype(np.uint16)
            assert np.array_equal(got, want.view(np.uint16)), f"byte lane {j}, half {half}"


def _words_every_byte():
    byte = np.arange(256, dtype=np.uint32)
    return (byte | ((255 - byte) << 8) | (((byte * 7) % 256) << 16) | (((byte * 13 + 5) % 256) << 24)).astype(np.uint32)


def test_gluon_decode_ptx_is_exact_in_sigma_order():
    """Gluon decode: output k of a 4-byte word = (element k, element k+4) · s · 2^-14 as f16x2, exact,
    for every byte value in every lane and every finite E4M3 scale; σ = the column order it implies."""
    asm = hopper_operands._DECODE_ASM.value
    codes = np.arange(127, dtype=np.uint32)
    s = torch.from_numpy(codes.astype(np.uint8)).view(torch.float8_e4m3fn).float().numpy()
    s16 = s.astype(np.float16).view(np.uint16).astype(np.uint32)
    pair = np.broadcast_to((s16 | (s16 << np.uint32(16)))[:, None], (127, 256)).ravel()
    word = np.broadcast_to(_words_every_byte()[None, :], (127, 256)).ravel()
    out = _run_ptx(asm, {4: word, 5: pair, 6: pair, 7: pair, 8: pair})
    lut = fp4_ref.e2m1_values().numpy()
    sv = np.broadcast_to(s[:, None], (127, 256)).ravel()
    nib = [(word >> np.uint32(4 * e)) & np.uint32(0xF) for e in range(8)]  # element e = nibble e
    for k in range(4):
        for half, e in ((0, k), (16, k + 4)):
            exact = lut[nib[e]] * sv * 2.0**-14
            want = exact.astype(np.float16)
            assert (want.astype(np.float64) == exact).all()  # representable: no rounding happens
            got = ((out[k] >> np.uint32(half)) & np.uint32(0xFFFF)).astype(np.uint16)
            assert np.array_equal(got, want.view(np.uint16)), f"output {k}, half {half}"
    # column c of a decoded group of 8 holds element sigma[c]
    sigma = [e for k in range(4) for e in (k, k + 4)]
    assert hopper.sigma_permutation(128)[:8].tolist() == sigma
    assert hopper.sigma_permutation(128).sort().values.tolist() == list(range(128))


def test_gluon_convert_ptx_reorders_and_scales_bf16():
    """Current-chunk conversion: 4 bf16x2 words × a power of two → σ-ordered f16x2, one RNE each."""
    rng = np.random.default_rng(0)
    n = 20000
    vals = (rng.standard_normal((n, 8)) * np.exp2(rng.integers(-6, 7, (n, 1)))).astype(np.float32)
    vals[:50] = 0.0
    vals[50:100] *= -1
    bf = torch.from_numpy(vals).bfloat16()
    bits = bf.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32)
    words = [bits[:, 2 * i] | (bits[:, 2 * i + 1] << np.uint32(16)) for i in range(4)]
    e = rng.integers(-24, 7, n)  # down to fp16 subnormal outputs; no overflow (the kernel keeps |x| < 2^15)
    mult = np.exp2(e).astype(np.float32)
    m = mult.view(np.uint32)
    out = _run_ptx(hopper_operands._CONVERT_ASM.value, {4: words[0], 5: words[1], 6: words[2], 7: words[3],
                                               8: m, 9: m, 10: m, 11: m})
    x = bf.float().numpy() * mult[:, None]
    for k in range(4):
        for half, el in ((0, k), (16, k + 4)):
            want = x[:, el].astype(np.float16).view(np.uint16)
            got = ((out[k] >> np.uint32(half)) & np.uint32(0xFFFF)).astype(np.uint16)
            assert np.array_equal(got, want), f"output {k}, half {half}"


def test_current_scales_kernel(triton_device):
    """2^(⌊log2 amax⌋ - 14) per 128-token tile of K and V; 0 for an all-zero tile; finite for NaN."""
    k = _rand(1, 2, 256, 2, 64, spread=3.0, device=triton_device)
    v = _rand(2, 2, 256, 2, 64, spread=3.0, device=triton_device)
    v[1, 128:, 0] = 0
    k[0, 5, 1, 3] = float("nan")
    got = hopper.current_scales(k, v).cpu()
    assert got.shape == (2, 2, 2, 2)
    for kv, x in enumerate((k.cpu(), v.cpu())):
        a = x.float().abs().view(2, 2, 128, 2, 64).amax(dim=(2, 4)).transpose(1, 2)  # [B, H, tiles]
        want = torch.where(a > 0, torch.exp2(torch.floor(torch.log2(a)) - 14), torch.zeros_like(a))
        want = torch.where(a.isnan(), torch.full_like(a, 2.0**113), want)
        assert torch.equal(got[kv], want), kv


# ---- GPU: the inline-PTX decode vs the portable decode --------------------------------------------------


@triton.jit
def _decode_kernel(
    data_ptr,
    scale_ptr,
    out_ptr,
    BN: tl.constexpr,
    D: tl.constexpr,
    USE_ASM: tl.constexpr,
    OUT_FP8: tl.constexpr,
):
    row = tl.arange(0, BN).to(tl.int64)
    x = attn_mod._fp4_tile(data_ptr, scale_ptr, row, row >= 0, D, BN, False, USE_ASM, OUT_FP8, False)
    tl.store(out_ptr + row[:, None] * D + tl.arange(0, D)[None, :], x.to(tl.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("out_fp8", [False, True])
def test_gpu_asm_decode_equals_portable_decode(out_fp8):
    """Every byte value with every finite E4M3 scale: the inline-PTX decode == the portable one."""
    data = torch.arange(256, dtype=torch.uint8).view(4, 64).repeat(128, 1).cuda()  # every byte, per 4 rows
    code = (torch.arange(512) // 4).clamp(max=127).to(torch.uint8)  # E4M3 codes 0..126, then 0x7F -> 0
    code[code == 127] = 0
    scale = code[:, None].expand(512, 8).contiguous().cuda()
    outs = []
    for use_asm in (True, False):
        out = torch.empty(512, 128, device="cuda")
        _decode_kernel[(1,)](data, scale, out, BN=512, D=128, USE_ASM=use_asm, OUT_FP8=out_fp8)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    lut = fp4_ref.e2m1_values("cuda")
    codes4 = torch.stack([data & 15, data >> 4], -1).view(512, 128).long()
    want = lut[codes4] * scale.view(torch.float8_e4m3fn).float().repeat_interleave(16, -1) / 128
    if out_fp8:
        want = (want * 16).to(torch.float8_e4m3fn).float()
    assert torch.equal(outs[0], want)
