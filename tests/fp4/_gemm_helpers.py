"""Shared by the nvfp4_gemm / FP8 path tests (``test_gemm*.py``): tolerances, operands, and the sm_90a
compile reports of the Gluon kernels (ptxas -v, cuobjdump SASS, the wgmma register-operand hazard walk),
which the compile tests run in a fresh process."""

from __future__ import annotations

import torch

from longlive_kernels.fp4 import quantize_fp8_rowwise, quantize_nvfp4
from longlive_kernels.testing import triton_device

DEV = triton_device()  # "cpu" under the interpreter, "cuda" on a GPU machine
FP32_TOL = 1e-5
BF16_TOL = 2.0**-7
# FP8 tensor cores (Hopper) add products with ~13 mantissa bits, truncating (DeepSeek-V3 §3.5.2), and
# the FP8 GEMM promotes to fp32 every fp8.FP8_PROMOTE_EVERY = 128 products: at most 128/32 + 1
# truncations of 2^-13 relative per promoted partial sum. The interpreter multiplies in fp32.
FP8_MMA_TOL = FP32_TOL if DEV == "cpu" else (128 // 32 + 1) * 2.0**-13


def _rand(seed: int, *shape: int, spread: float = 3.0) -> torch.Tensor:
    """Gaussian values times 2^U(-spread, spread): several binades, never all zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.exp2(torch.empty(*shape).uniform_(-spread, spread, generator=g))
    return x.to(DEV)


def _make_a(kind: str, x: torch.Tensor, seed: int):
    """(a, a_scale) for an operand kind."""
    if kind == "nvfp4":
        return quantize_nvfp4(x, backend="torch"), None
    if kind == "bf16":
        return x.bfloat16(), None
    if kind == "fp16":
        return x.half(), None
    q, s = quantize_fp8_rowwise(x, backend="torch")
    if kind == "fp8_row":
        return q, s
    return q, torch.tensor(0.75, device=x.device)  # fp8 with a per-tensor scale


# --- the Gluon kernels compiled for sm_90a (run in a fresh process) --------------------------------


def _compile_hopper_kernel(x_nvfp4: bool, bt: int, out=torch.bfloat16, x_dtype=torch.bfloat16,
                           tail_split: bool = False):
    """AOT-compile gemm_hopper's kernel for sm_90a (as a JIT launch with aligned operands would);
    ``x_dtype`` is the dense activation dtype of W4A16 (bf16 or fp16); ``tail_split`` compiles the
    variant whose last-wave tiles are split along K."""
    import os

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    from longlive_kernels.fp4 import gemm_hopper as gh

    m, n, k = 512, 256, 256

    def desc(shape, dtype, block, layout):
        return mangle_type(TensorDescriptor.from_tensor(torch.empty(shape, dtype=dtype), block, layout))

    u8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)
    x_gl = gh._gl_dtype(x_dtype)
    x_desc = desc((m, k // 2), torch.uint8, [bt, gh.BK // 2], u8) if x_nvfp4 else desc(
        (m, k), x_dtype, [bt, gh.BK], gl.NVMMASharedLayout.get_default_for([bt, gh.BK], x_gl))
    sig = {"w_desc": desc((n, k // 2), torch.uint8, [gh.BW, gh.BK // 2], u8), "x_desc": x_desc,
           "out_desc": desc((m, n), out, [bt, gh.BW], gl.NVMMASharedLayout.get_default_for([bt, gh.BW], gh._gl_dtype(out))),
           "w_scale_ptr": "*u8", "x_scale_ptr": "*u8", "bias_ptr": "*bf16", "w_gs_ptr": "*fp32", "x_gs_ptr": "*fp32",
           "M": "i32", "N": "i32", "K": "i32", "stride_ws": "i32", "stride_xs": "i32", "ws_ptr": "*fp32",
           "sem_ptr": "*i32", "n_whole": "i32", "split": "i32", "kt_per_split": "i32"}
    constexprs = {"X_NVFP4": x_nvfp4, "X_GS": False, "EVEN_K": True, "HAS_BIAS": True,
                  "OP_DTYPE": gl.float16 if x_nvfp4 else x_gl,
                  "STAGES": gh.STAGES_W4A4 if x_nvfp4 else gh.STAGES_W4A16,
                  "ABLATE": 0,
                  "GROUP": gh.GROUP, "TAIL_SPLIT": tail_split, "SPLIT_LOADS": 4 if tail_split else 1,
                  "num_warps": gh.NUM_WARPS}
    names = list(gh._hopper_gemm_kernel.arg_names)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a, t in sig.items()
             if t.startswith("*") or a in ("stride_ws", "stride_xs")}
    for c in constexprs:
        sig[c] = "constexpr"
    src = GluonASTSource(fn=gh._hopper_gemm_kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": gh.NUM_WARPS})
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return compiled, bindir


def _ptxas_and_sass(compiled, bindir: str) -> tuple[str, str]:
    """(``ptxas -v`` report for sm_90a, ``cuobjdump -sass`` text) of a compiled Triton/Gluon kernel."""
    import os
    import subprocess
    import tempfile

    import triton

    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "k.ptx"), "w") as f:
            f.write(compiled.asm["ptx"])
        # the ptxas Triton compiled with (TRITON_PTXAS_PATH may name another one)
        info = subprocess.run([triton.knobs.nvidia.ptxas.path, "-arch=sm_90a", "-v", os.path.join(d, "k.ptx"), "-o",
                               os.path.join(d, "k.o")], capture_output=True, text=True, check=False).stderr
        with open(os.path.join(d, "k.cubin"), "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", os.path.join(d, "k.cubin")],
                              capture_output=True, text=True, check=False).stdout
    return info, sass


def _report_in_fresh_process(call: str) -> dict:
    """``tests.fp4._gemm_helpers.<call>`` run in a new interpreter without TRITON_INTERPRET (the CPU
    interpreter patches triton.language process-wide); its JSON result."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = f"import json, tests.fp4._gemm_helpers as t; print(json.dumps(t.{call}))"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hopper_compile_report(x_nvfp4: bool, bt: int, out: str, x_dtype: str = "bfloat16",
                           tail_split: bool = False) -> dict:
    """Compile, run ptxas -v and cuobjdump; returns what the test checks (run in a subprocess)."""

    compiled, bindir = _compile_hopper_kernel(x_nvfp4, bt, getattr(torch, out), getattr(torch, x_dtype),
                                              tail_split)
    info, sass = _ptxas_and_sass(compiled, bindir)
    hgmma = [i for i in _sass_instructions(sass) if i[1].startswith("HGMMA")]
    return {"ptxas": info, "wgmma": f"HGMMA.64x{bt}x16.F32" in sass, "smem": compiled.metadata.shared,
            "register_a": sum(1 for _, _, args in hgmma if len(args) > 1 and args[1].startswith("R")),
            "hazards": wgmma_register_a_hazards(sass)}


def _gemv_compile_report(x_nvfp4: bool, bm: int, rt: int, kt: int, split: int, op: str, even_k: bool) -> dict:
    """Compile gemm_gemv's kernel for sm_90a (as a launch with 16-divisible strides would) and report
    what the test checks (run in a subprocess)."""
    import os
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from longlive_kernels.fp4 import gemm_gemv as gv

    sig = {"w_ptr": "*i32", "w_scale_ptr": "*u8", "w_gs_ptr": "*fp32", "x_ptr": "*i32", "x_scale_ptr": "*u8",
           "x_gs_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": "*bf16", "ws_ptr": "*fp32", "sem_ptr": "*i32",
           "M": "i32", "N": "i32", "K": "i32", "stride_wn": "i32", "stride_wsn": "i32", "stride_xm": "i32",
           "stride_xsm": "i32", "stride_om": "i32", "k_per_split": "i32"}
    constexprs = {"X_NVFP4": x_nvfp4, "HAS_BIAS": True, "EVEN_K": even_k,
                  "OP_DTYPE": gl.float16 if op == "fp16" else gl.bfloat16, "BM": bm, "RT": rt, "KT": kt,
                  "SPLIT_K": split, "num_warps": gv.NUM_WARPS}
    names = list(gv._gemv_kernel.arg_names)
    div = [a for a, t in sig.items() if t.startswith("*")] + (["stride_wn", "stride_xm", "k_per_split"] if even_k
                                                             else [])
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in div}
    for c in constexprs:
        sig[c] = "constexpr"
    src = GluonASTSource(fn=gv._gemv_kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": gv.NUM_WARPS})
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    info, sass = _ptxas_and_sass(compiled, bindir)
    ins = _sass_instructions(sass)
    loop = []
    for addr, op_, args in ins:  # the main loop: from the target of the first backward branch to it
        if op_ == "BRA" and int(args[-1], 0) < addr:
            loop = [o for a, o, _ in ins if int(args[-1], 0) <= a <= addr]
            break
    return {"ptxas": info, "hmma_in_loop": sum(o.startswith("HMMA") for o in loop),
            "shared_in_loop": sum(o.startswith(("STS", "LDS", "BAR")) for o in loop),
            "ldg128": sum(o.startswith("LDG.E.128") for o in loop), "loop_len": len(loop),
            "local": bool(re.search(r"\b(LDL|STL)\b", sass))}


# --- wgmma register-operand hazard (SASS walk) ----------------------------------------------------


_NO_DEST = ("ST", "RED", "BAR", "BRA", "EXIT", "NOP", "MEMBAR", "FENCE", "DEPBAR", "WARPGROUP", "SYNCS", "UTMA",
            "ERRBAR", "CCTL", "WARPSYNC", "CALL", "RET", "YIELD", "BSYNC", "BSSY", "HGMMA")


def _sass_instructions(sass: str) -> list[tuple[int, str, list[str]]]:
    """[(address, opcode, operands)] of a ``cuobjdump -sass`` listing in program order (predicates
    dropped)."""
    import re

    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if not m:
            continue
        text = re.sub(r"^@!?U?P[T0-9]+\s+", "", m.group(2).strip())
        op, _, rest = text.partition(" ")
        out.append((int(m.group(1), 16), op, [a.strip() for a in rest.split(",")] if rest.strip() else []))
    return out


def _written_registers(op: str, args: list[str]) -> set[int]:
    """General registers an instruction writes: its first operand, widened for .64/.128/.WIDE forms."""
    import re

    if not args or op.startswith(_NO_DEST):
        return set()
    m = re.match(r"R(\d+)", args[0])
    if not m:
        return set()
    width = 4 if ".128" in op else 2 if (".64" in op or ".WIDE" in op) else 1
    return {int(m.group(1)) + j for j in range(width)}


def wgmma_register_a_hazards(sass: str) -> list[str]:
    """HGMMAs taking A from registers (wgmma RS) whose registers some instruction rewrites before a
    ``WARPGROUP.DEPBAR.LE gsb0, n`` has retired that HGMMA's group (PTX: undefined behaviour). Walks
    program order from each HGMMA, counting the groups committed after its own (an HGMMA marked
    ``gsb0`` closes a group), follows backward branches (the main loop) once, falls through forward
    ones."""
    ins = _sass_instructions(sass)
    index = {addr: i for i, (addr, _, _) in enumerate(ins)}
    hazards = []
    for h, (addr, op, args) in enumerate(ins):
        if not op.startswith("HGMMA") or len(args) < 2 or not args[1].startswith("R"):
            continue
        first = int(args[1][1:].split(".")[0])
        regs = {first + j for j in range(4)}
        committed = "gsb0" in args
        later = 0
        i, followed = h + 1, set()
        while i < len(ins):
            a2, op2, args2 = ins[i]
            if op2 == "EXIT":
                break
            if op2.startswith("WARPGROUP.DEPBAR") and committed and later >= int(args2[-1], 0):
                break
            if op2.startswith("HGMMA") and "gsb0" in args2:
                later, committed = (later + 1, True) if committed else (later, True)
            if regs & _written_registers(op2, args2):
                hazards.append(f"HGMMA at {addr:#x} reads R{first}..R{first + 3}; {op2} at {a2:#x} writes "
                               f"{args2[0]} before a wait retires it")
                break
            if op2 == "BRA" and int(args2[-1], 0) <= a2 and a2 not in followed:
                followed.add(a2)
                i = index[int(args2[-1], 0)]
                continue
            i += 1
    return hazards
