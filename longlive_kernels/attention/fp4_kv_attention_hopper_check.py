"""Checks of the Hopper FP4-KV attention kernel (``fp4_kv_attention_hopper.py``) that need no
caller state: the run-once probe in a child process (a hang or a crash cannot take the caller
down), cached on disk, and the sm_90a compile report the CPU tests read (registers, spills,
wgmma count, setmaxnreg regions).

Usage::

    python -m longlive_kernels.attention.fp4_kv_attention_hopper_check --probe   # on a GPU
    python -m longlive_kernels.attention.fp4_kv_attention_hopper_check --report  # anywhere

(runpy warns that the package imported the module first; harmless.)
"""

from __future__ import annotations

import os

import torch
import triton
from triton.experimental.gluon import language as gl


def _kernel():
    """The kernel module (imported on use: it re-exports this module's functions)."""
    from . import fp4_kv_attention_hopper

    return fp4_kv_attention_hopper


# ---------------------------------------------------------------------------------------------
# Probe: run the kernel once in a child process (a hang or a crash cannot take the caller down)
# ---------------------------------------------------------------------------------------------

PROBE_TIMEOUT_S = 300


def _probe_key(device_index: int) -> str:
    import hashlib

    from . import fp4_kv_attention_hopper_operands

    h = hashlib.sha1()
    for path in (_kernel().__file__, fp4_kv_attention_hopper_operands.__file__, __file__):
        with open(path, "rb") as f:
            h.update(f.read())
    src = h.hexdigest()[:16]
    return f"{src}|triton {triton.__version__}|torch {torch.__version__}|{torch.cuda.get_device_name(device_index)}"


def _probe_cache_path() -> str:
    root = os.environ.get("LONGLIVE_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "longlive_kernels"))
    return os.path.join(root, "fp4_kv_gluon_probe.json")


def run_probe(device_index: int, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Compile and run the kernel on small problems in a fresh process, compare with the portable
    kernel; (ok, message). A hang is killed after ``timeout`` seconds."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = str(device_index) if "CUDA_VISIBLE_DEVICES" not in os.environ else \
        os.environ["CUDA_VISIBLE_DEVICES"].split(",")[device_index]
    # -c rather than -m: the package imports this module before runpy would run it as __main__
    code = "from longlive_kernels.attention.fp4_kv_attention_hopper_check import _probe_main; " \
        "raise SystemExit(_probe_main())"
    cmd = [sys.executable, "-c", code]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"probe timed out after {timeout:.0f} s (kernel hang?)"
    tail = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0 or "PROBE OK" not in proc.stdout:
        return False, f"probe failed (exit {proc.returncode}):\n{tail}"
    return True, proc.stdout.strip().splitlines()[-1]


_PROBED: dict[int, tuple[bool, str]] = {}


def probe_ok(device: torch.device) -> bool:
    """Result of :func:`run_probe` for this device (run once per process; cached on disk by kernel
    source, Triton/torch versions and GPU name). False while a CUDA graph is being captured and the
    probe has not run yet."""
    import json
    import warnings

    idx = _kernel()._device_index(device)
    if idx in _PROBED:
        return _PROBED[idx][0]
    if torch.cuda.is_current_stream_capturing():
        return False
    key = _probe_key(idx)
    path = _probe_cache_path()
    cache = {}
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        pass
    if key in cache:
        _PROBED[idx] = (bool(cache[key][0]), str(cache[key][1]))
    else:
        _PROBED[idx] = run_probe(idx)
        cache[key] = list(_PROBED[idx])
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(cache, f, indent=1)
        except OSError:
            pass
    if not _PROBED[idx][0]:
        warnings.warn(f"fp4_kv_attention: Hopper Gluon kernel disabled: {_PROBED[idx][1]}", RuntimeWarning,
                      stacklevel=3)
    return _PROBED[idx][0]


def _probe_cases():
    """(name, chunk_tokens, n_chunks, Lq, Lc or None, heads, batch): tiles per chunk 1 and 3, odd and
    even tile counts, a partial query tile, with and without a BF16 current chunk, zero tiles."""
    return [
        ("ctx3+cur", 384, 4, 200, 256, 2, 1),
        ("ctx3+slot", 384, 4, 128, None, 3, 1),
        ("t128,b2", 128, 3, 300, 128, 2, 2),
        ("t128,slot", 128, 2, 64, None, 1, 1),
        ("first-chunk+cur", 256, 1, 130, 384, 1, 1),
    ]


def _probe_main() -> int:
    import time

    from . import fp4_kv_attention_triton as portable
    from .kv_cache import FP4KVCache

    torch.manual_seed(0)
    dev = torch.device("cuda", 0)
    worst = 0.0
    t0 = time.time()
    for name, t, n, lq, lc, h, b in _probe_cases():
        cache = FP4KVCache(num_layers=1, num_heads=h, head_dim=128, chunk_tokens=t, max_chunks=4, batch_size=b,
                           device=dev)
        for c in range(n):
            cache.start_chunk(c)
            scale = torch.exp2(torch.randint(-3, 4, (1, 1, h, 1), device=dev).float())
            k = (torch.randn(b, t, h, 128, device=dev) * scale).bfloat16()
            v = (torch.randn(b, t, h, 128, device=dev) * scale).bfloat16()
            if c == 1:
                v[:, :128] = 0  # an all-zero V tile (tile scale 0)
            cache.update(0, k, v)
        q = torch.randn(b, lq, h, 128, device=dev).bfloat16()
        cur = {}
        if lc is not None:
            cur = {"current_k": torch.randn(b, lc, h, 128, device=dev).bfloat16() * 3,
                   "current_v": torch.randn(b, lc, h, 128, device=dev).bfloat16()}
        view = cache.layer_view(0)
        ck, cv = cur.get("current_k"), cur.get("current_v")
        assert _kernel().supported(q, view, ck, cv, "bf16"), name
        got = _kernel().attention(q, view, ck, cv, 128**-0.5)
        want = portable.attention(q, view, ck, cv, 128**-0.5, "bf16")
        torch.cuda.synchronize()
        err = ((got.double() - want.double()).norm() / want.double().norm()).item()
        worst = max(worst, err)
        print(f"{name}: rel. err vs portable kernel {err:.2e}", flush=True)
        if not err <= 5e-3:
            print(f"PROBE MISMATCH {name}: {err:.3e}")
            return 1
    print(f"PROBE OK: worst rel. err vs portable {worst:.2e} ({time.time() - t0:.1f} s)")
    return 0


# ---------------------------------------------------------------------------------------------
# sm_90a compile report (CPU machines: tests; no GPU needed)
# ---------------------------------------------------------------------------------------------


def setmaxnreg_regions(sass: str) -> list[tuple[str, int, int]]:
    """[(address, register limit, highest register used + 1)] for the code after each
    ``USETMAXREG`` in program order, up to the next one (a partition's body after its setmaxnreg)."""
    import re

    out, limit, used, start = [], None, 0, None
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if not m:
            continue
        text = m.group(2)
        if "USETMAXREG" in text:
            if limit is not None:
                out.append((start, limit, used))
            limit, used, start = int(text.split()[-1], 0), 0, m.group(1)
            continue
        for r in re.findall(r"\bR(\d+)\b", text):
            used = max(used, int(r) + 1)
    if limit is not None:
        out.append((start, limit, used))
    return out


def compile_report(has_current: bool = True, ablate: int = 0) -> dict:
    """Compile the kernel for sm_90a (as a launch at the model shape would), run ptxas -v and
    cuobjdump: registers, spills, shared memory, wgmma count and SASS instruction histogram of the
    consumer loop. Must run in a process without TRITON_INTERPRET."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from triton.runtime.jit import mangle_type

    k = _kernel()
    block_n, num_warps = k.BLOCK_N, k.NUM_WARPS
    u8 = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8)

    def desc(shape, dtype, block, layout):
        return mangle_type(TensorDescriptor.from_tensor(torch.empty(shape, dtype=dtype), block, layout))

    rows = 4 * 24 * 7040
    sig = {"q_ptr": "*bf16", "o_ptr": "*bf16",
           "kd_desc": desc((rows, 64), torch.uint8, [block_n, 64], u8),
           "ks_desc": desc((rows // 2, 16), torch.uint8, [block_n // 2, 16], u8),
           "vd_desc": desc((rows, 64), torch.uint8, [block_n, 64], u8),
           "vs_desc": desc((rows // 2, 16), torch.uint8, [block_n // 2, 16], u8),
           "ck_desc": desc((7040, 24 * 128), torch.bfloat16, [block_n, 128], k._bf16_tile_layout()),
           "cv_desc": desc((7040, 24 * 128), torch.bfloat16, [block_n, 128], k._bf16_tile_layout()),
           "kg_ptr": "*fp32", "vg_ptr": "*fp32", "cg_ptr": "*fp32", "table_ptr": "*i32", "qk_scale": "fp32"}
    for n in ("Lq", "Lc", "T", "H", "B", "NTC"):
        sig[n] = "i32"
    for n in ("stride_qb", "stride_qt", "stride_qh", "stride_ob", "stride_ot", "stride_oh"):
        sig[n] = "i64"
    fn = k._fp4_kv_attention_hopper_kernel
    names = list(fn.arg_names)
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a, v in sig.items()
             if (isinstance(v, str) and v.startswith("*")) or a in ("stride_qt", "stride_qh", "stride_ot",
                                                                     "stride_oh", "T", "Lc")}
    constexprs = {"HAS_CURRENT": has_current, "ABLATE": ablate, "num_warps": num_warps}
    for c in constexprs:
        sig[c] = "constexpr"
    src = GluonASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "k.ptx"), "w") as f:
            f.write(compiled.asm["ptx"])
        ptxas = subprocess.run([os.path.join(bindir, "ptxas"), "-arch=sm_90a", "-v", os.path.join(tmp, "k.ptx"),
                                "-o", os.path.join(tmp, "k.o")], capture_output=True, text=True, check=False).stderr
        with open(os.path.join(tmp, "k.cubin"), "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True, check=False).stdout
    ptx = compiled.asm["ptx"]
    regs = re.search(r"Used (\d+) registers", ptxas)
    return {
        "sass": sass,
        "regions": setmaxnreg_regions(sass),
        "ptxas": ptxas,
        "registers": int(regs.group(1)) if regs else None,
        "spills": "0 bytes spill stores, 0 bytes spill loads" not in ptxas,
        "serialized": "serialized" in ptxas,
        "smem": compiled.metadata.shared,
        "hgmma": len(re.findall(r"\bHGMMA\.64x128x16\.F32\b", sass)),
        "setmaxnreg": re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx),
        "sass_instructions": len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, flags=re.MULTILINE)),
        "mufu_ex2": len(re.findall(r"MUFU\.EX2", sass)),
        "hmul2": len(re.findall(r"\bHMUL2\b", sass)),
    }


if __name__ == "__main__":
    import sys

    if "--probe" in sys.argv:
        sys.exit(_probe_main())
    if "--report" in sys.argv:
        import json

        for cur in (True, False):
            rep = compile_report(cur)
            rep.pop("ptxas")
            print(json.dumps({"has_current": cur, **rep}))
