"""The inline-PTX NVFP4 decoders: emulated instruction by instruction on the CPU for every byte, and run
on the GPU for every (code, scale) pair; both exact."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from longlive_kernels.fp4 import gemm_dequant
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.fp4.gemm_dequant import dequant_nvfp4_tile
from longlive_kernels.testing import assert_bitwise_equal

_M32 = 0xFFFFFFFF


def _run_ptx(asm: str, operands: list[int]) -> list[int]:
    """Interpret the straight-line PTX of a decode routine (and, shl, shr, prmt, lop3, mad.lo, mul.lo,
    mul.rn.{bf16,f16}x2, cvt.rn.f16x2.e4m3x2, mov.b32 {h, h}) on 32-bit operands ``$i``."""
    import re

    import ml_dtypes
    import numpy as np

    def to_f(bits, dt):
        return float(np.array([bits], dtype=np.uint16).view(dt)[0])

    def from_f(x, dt):
        return int(np.array([x], dtype=dt).view(np.uint16)[0])

    regs = {f"${i}": v for i, v in enumerate(operands)}
    for stmt in asm.replace("{\n", "").split(";"):
        stmt = stmt.strip().strip("{}").strip()
        if not stmt or stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        args = [a.strip() for a in re.findall(r"\{[^}]*\}|[^,]+", rest)]

        def val(a):
            return regs[a] if a in regs else int(a, 0) & _M32

        if op == "mov.b32":
            lo, hi = (x.strip() for x in args[0].strip("{}").split(","))
            regs[lo], regs[hi] = val(args[1]) & 0xFFFF, val(args[1]) >> 16
            continue
        src = [val(a) for a in args[1:]]
        if op == "and.b32":
            r = src[0] & src[1]
        elif op == "shr.u32":
            r = src[0] >> src[1]
        elif op == "shl.b32":
            r = (src[0] << src[1]) & _M32
        elif op == "mad.lo.u32":
            r = (src[0] * src[1] + src[2]) & _M32
        elif op == "mul.lo.u32":
            r = (src[0] * src[1]) & _M32
        elif op == "prmt.b32":
            pool = [(src[0] >> 8 * i) & 0xFF for i in range(4)] + [(src[1] >> 8 * i) & 0xFF for i in range(4)]
            r = 0
            for i in range(4):
                sel = (src[2] >> 4 * i) & 0xF
                byte = pool[sel & 7]
                r |= ((0xFF if byte & 0x80 else 0) if sel & 8 else byte) << 8 * i
        elif op == "lop3.b32":
            r = sum(((src[3] >> ((((src[0] >> p) & 1) << 2) | (((src[1] >> p) & 1) << 1) | ((src[2] >> p) & 1))) & 1)
                    << p for p in range(32))
        elif op in ("mul.rn.bf16x2", "mul.rn.f16x2"):
            dt = ml_dtypes.bfloat16 if "bf16" in op else np.float16
            r = sum(from_f(to_f((src[0] >> 16 * h) & 0xFFFF, dt) * to_f((src[1] >> 16 * h) & 0xFFFF, dt), dt) << 16 * h
                    for h in range(2))
        elif op == "cvt.rn.f16x2.e4m3x2":
            e4 = [float(np.array([(src[0] >> 8 * h) & 0xFF], dtype=np.uint8).view(ml_dtypes.float8_e4m3fn)[0])
                  for h in range(2)]
            r = from_f(e4[0], np.float16) | from_f(e4[1], np.float16) << 16
        else:
            raise NotImplementedError(op)
        regs[args[0]] = r
    return [regs[f"${i}"] for i in range(len(operands))]


def _decode_cases():
    from longlive_kernels.fp4 import gemm_gemv, gemm_hopper

    return [
        ("dequant-bf16", gemm_dequant._ASM_BF16.value, torch.bfloat16, 2.0**118, -8, False),
        ("dequant-fp16", gemm_dequant._ASM_FP16.value, torch.float16, 64.0, -8, False),
        ("hopper-bf16", gemm_hopper._DECODE_BF16.value, torch.bfloat16, 2.0**118, -gemm_hopper.BF16_OPERAND_EXP, True),
        ("hopper-fp16", gemm_hopper._DECODE_FP16.value, torch.float16, 64.0, -gemm_hopper.FP16_OPERAND_EXP, True),
        ("gemv-bf16", gemm_gemv._WORD_BF16.value, torch.bfloat16, 2.0**118, -8, "word"),
        ("gemv-fp16", gemm_gemv._WORD_FP16.value, torch.float16, 64.0, 0, "word"),
    ]


@pytest.mark.parametrize("case", range(6), ids=["dequant-bf16", "dequant-fp16", "hopper-bf16", "hopper-fp16",
                                                 "gemv-bf16", "gemv-fp16"])
def test_inline_ptx_decoders_are_exact(case):
    """Every byte with random E4M3 scale codes (all finite codes, both signs, subnormals): the GPU
    decode routines give e2m1 · s · 2^exp exactly (interpreted instruction by instruction)."""
    name, asm, dtype, mult, exp, pairs = _decode_cases()[case]
    g = torch.Generator().manual_seed(case)
    codes = torch.arange(256, dtype=torch.int32)
    codes = codes[(codes & 0x7F) != 0x7F]
    lut = ref.e2m1_values()
    for start in range(0, 256, 4):
        byte = list(range(start, start + 4))
        sc = codes[torch.randint(0, codes.numel(), (4,), generator=g)].tolist()
        if pairs == "word":  # one scale for the whole 32-bit word
            sc = sc[:1] * 4
        s = torch.tensor(sc, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
        sbits = (s.double() * mult).to(dtype).view(torch.int16).int().tolist()
        sbits = [b & 0xFFFF for b in sbits]
        packed = byte[0] | byte[1] << 8 | byte[2] << 16 | byte[3] << 24
        if pairs == "word":  # $4..$11: copies of the word, $12..$19: copies of the scale pair
            out = _run_ptx(asm, [0, 0, 0, 0] + [packed] * 8 + [sbits[0] | sbits[0] << 16] * 8)
            lo = [o & 0xFFFF for o in out[:4]]
            hi = [o >> 16 for o in out[:4]]
        elif pairs:
            out = _run_ptx(asm, [0, 0, 0, 0, packed] + [b | b << 16 for b in sbits])
            lo = [o & 0xFFFF for o in out[:4]]
            hi = [o >> 16 for o in out[:4]]
        else:
            out = _run_ptx(asm, [0, 0, 0, 0, packed, sbits[0] | sbits[1] << 16, sbits[2] | sbits[3] << 16])
            lo = [out[0] & 0xFFFF, out[0] >> 16, out[1] & 0xFFFF, out[1] >> 16]
            hi = [out[2] & 0xFFFF, out[2] >> 16, out[3] & 0xFFFF, out[3] >> 16]
        got = torch.tensor(lo + hi, dtype=torch.int32).to(torch.int16).view(dtype).double()
        nib = torch.tensor([b & 0xF for b in byte] + [b >> 4 for b in byte])
        expect = lut[nib].double() * torch.cat([s, s]).double() * 2.0**exp
        assert torch.equal(got, expect), f"{name}: bytes {byte}, scales {sc}: {got.tolist()} != {expect.tolist()}"


# --- GPU: the inline-PTX decode ----------------------------------------------------------------------


@triton.jit
def _decode_kernel(d_ptr, s_ptr, o_ptr, R: tl.constexpr, BK: tl.constexpr, DTYPE: tl.constexpr,
                   FAST: tl.constexpr):
    r = tl.arange(0, R)
    p = tl.load(d_ptr + r[:, None] * (BK // 2) + tl.arange(0, BK // 2)[None, :])
    s = tl.load(s_ptr + r[:, None] * (BK // 16) + tl.arange(0, BK // 16)[None, :])
    v = dequant_nvfp4_tile(p, s, R, BK, DTYPE, FAST)
    tl.store(o_ptr + r[:, None] * BK + tl.arange(0, BK)[None, :], v)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_inline_ptx_decode_is_exact(dtype):
    """Every (code, scale) pair: the inline-PTX decode equals e2m1 · s · 2^-8 bit for bit."""
    data = (torch.arange(64 * 128, device="cuda") % 256).to(torch.uint8).reshape(64, 128)  # all bytes
    sc = (torch.arange(64 * 16, device="cuda") * 7 % 256).to(torch.uint8).reshape(64, 16)  # all codes
    sc = torch.where((sc & 0x7F) == 0x7F, sc - 1, sc)  # no NaN scales here
    tl_dtype = tl.bfloat16 if dtype == torch.bfloat16 else tl.float16
    outs = []
    for fast in (True, False):
        o = torch.empty(64, 256, dtype=dtype, device="cuda")
        _decode_kernel[(1,)](data, sc, o, R=64, BK=256, DTYPE=tl_dtype, FAST=fast)
        outs.append(o)
    expect = ref.dequantize(data, sc.view(torch.float8_e4m3fn), torch.ones((), device="cuda"),
                            dtype=torch.float32) * 2.0**-8
    assert_bitwise_equal(outs[0], outs[1], "fast vs portable decode")
    assert_bitwise_equal(outs[0].float(), expect, "decode vs reference")
