"""Compile every registered Triton kernel for sm_90a without a GPU (CI), and check that matrix
kernels use wgmma (HGMMA/QGMMA in SASS).

Usage: python tools/aot_compile.py [--arch 90] [--verbose]
Exit code 1 if any kernel fails to compile or a kernel that must use wgmma does not.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time


def _import_all(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        if info.name.endswith("._C"):
            continue
        importlib.import_module(info.name)


def _cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_compile: unset TRITON_INTERPRET (the interpreter replaces triton.jit)", file=sys.stderr)
        return 2

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _import_all("longlive_kernels")
    from longlive_kernels._aot import AOT_SPECS

    target = GPUTarget("cuda", args.arch, 32)
    failures = 0
    for spec in AOT_SPECS:
        t0 = time.time()
        options = {"num_warps": 4, **spec.options}
        try:
            src = ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs)
            compiled = triton.compile(src, target=target, options=options)
        except Exception as exc:  # noqa: BLE001 - report every failure, keep going
            failures += 1
            print(f"FAIL {spec.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        status = "ok"
        if spec.expect_wgmma:
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True).stdout
            if not re.search(r"\b[HQ]GMMA\b|[HQ]GMMA\.", sass):
                failures += 1
                status = "FAIL (no HGMMA/QGMMA in SASS)"
            else:
                status = "ok (wgmma)"
        meta = compiled.metadata
        print(f"{status:24s} {spec.name} regs={getattr(meta, 'num_regs', '?')} "
              f"smem={meta.shared} spills={getattr(meta, 'num_spills', '?')} ({time.time() - t0:.1f}s)")
    print(f"aot_compile: {len(AOT_SPECS) - failures}/{len(AOT_SPECS)} kernels built for sm_{args.arch}a")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
