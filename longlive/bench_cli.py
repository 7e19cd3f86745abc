"""``longlive bench``: run the benchmarks of ``bench/`` by name.

``longlive bench <name> [options]`` runs ``bench/<area>/bench_<op>.py`` as if it were started as a
script (its own ``--help`` lists the options); ``longlive bench kernels`` runs the kernel
benchmarks one after the other with ``--quick``. The scripts live in the source checkout (an
editable install, ``pip install -e .``); ``LONGLIVE_BENCH_DIR`` points at another ``bench/`` folder.

Benchmarks that time CUDA kernels stop with a clear message on a machine without a GPU; the few
that have a CPU mode say so in the table printed by ``longlive bench --help``.
"""

from __future__ import annotations

import os
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BENCHMARKS", "KERNEL_BENCHMARKS", "bench_dir", "main"]


@dataclass(frozen=True)
class Benchmark:
    script: str  # path under bench/
    what: str
    cpu_flags: tuple[str, ...] | None = ()  # flags that make it run without CUDA; None: runs anywhere


BENCHMARKS = {
    "quality": Benchmark("quality/bench_quality.py", "demo-model quality per precision mode (issue 10)", None),
    "gemm": Benchmark("fp4/bench_gemm.py", "NVFP4 / FP8 GEMMs vs cuBLAS BF16"),
    "linear-train": Benchmark("fp4/bench_linear_train.py", "NVFP4Linear training step vs BF16"),
    "quantize": Benchmark("fp4/bench_quantize.py", "NVFP4 quantize/dequantize bandwidth vs a copy"),
    "rope-adaln": Benchmark("attention/bench_rope_adaln.py", "fused adaLN / RoPE fwd+bwd vs eager and compile"),
    "kv-cache": Benchmark("attention/bench_kv_cache.py", "FP4 KV cache + attention over it", ("--granularity",)),
    "all-to-all": Benchmark("comm/bench_all_to_all.py", "(quantized) Ulysses all-to-all", None),
    "dit": Benchmark("model/bench_dit.py", "one 5B DiT chunk forward per mode", ("--device cpu",)),
    "e2e": Benchmark("e2e/bench_generate.py", "streaming generation FPS and memory (5B, random weights)"),
    "train": Benchmark("train/bench_train.py", "Balanced-SP training step", ("--cpu-smoke",)),
}
KERNEL_BENCHMARKS = ("quantize", "gemm", "rope-adaln", "kv-cache", "all-to-all")


def bench_dir() -> Path:
    """The ``bench/`` folder: ``$LONGLIVE_BENCH_DIR``, else the one next to the ``longlive`` package."""
    env = os.environ.get("LONGLIVE_BENCH_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "bench"


def _usage() -> str:
    rows = [f"  {name:<13} {b.what}" + ("" if b.cpu_flags == () else
                                       " [CPU: any]" if b.cpu_flags is None else f" [CPU: {' '.join(b.cpu_flags)}]")
            for name, b in BENCHMARKS.items()]
    return (
        "usage: longlive bench <name> [options]   (longlive bench <name> --help for its options)\n\n"
        + "\n".join(rows)
        + f"\n  {'kernels':<13} {', '.join(KERNEL_BENCHMARKS)} with --quick\n\n"
        "Results and exact commands: bench/RESULTS.md. Without a GPU only the entries marked [CPU] run."
    )


def _has_flag(argv: list[str], flag: str) -> bool:
    """``flag`` ("--x" or "--x value") given in ``argv`` (also as ``--x=value``)."""
    words = flag.split()
    if len(words) == 1:
        return words[0] in argv
    return any(argv[i : i + 2] == words for i in range(len(argv))) or "=".join(words) in argv


def _needs_cuda(b: Benchmark, argv: list[str]) -> bool:
    if b.cpu_flags is None or any(a in ("-h", "--help") for a in argv):
        return False
    return not any(_has_flag(argv, f) for f in b.cpu_flags)


def run_script(path: Path, argv: list[str]) -> int:
    """Run a benchmark script as ``__main__`` with ``argv``; returns its exit status."""
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    finally:
        sys.argv = old_argv
        sys.path[:] = old_path
    return 0


def _run(name: str, argv: list[str]) -> int:
    b = BENCHMARKS[name]
    path = bench_dir() / b.script
    if not path.is_file():
        print(
            f"longlive bench {name}: {path} not found. The benchmarks live in the source checkout's bench/ "
            "folder: run from a git clone installed with `pip install -e .`, or set LONGLIVE_BENCH_DIR",
            file=sys.stderr,
        )
        return 2
    if _needs_cuda(b, argv):
        import torch

        if not torch.cuda.is_available():
            hint = f" (on CPU: {' '.join(b.cpu_flags)})" if b.cpu_flags else ""
            print(
                f"longlive bench {name}: needs a CUDA GPU and none is available (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False){hint}",
                file=sys.stderr,
            )
            return 2
    return run_script(path, argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``longlive bench`` (``argv`` without the program name)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "kernels":
        status = 0
        for k in KERNEL_BENCHMARKS:
            print(f"\n## longlive bench {k} --quick {' '.join(rest)}".rstrip(), flush=True)
            rc = _run(k, ["--quick", *rest])
            status = status or rc
            if rc == 2 and k == KERNEL_BENCHMARKS[0]:
                return rc  # no GPU (or no bench/): the rest would fail the same way
        return status
    if name not in BENCHMARKS:
        print(f"longlive bench: unknown benchmark {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return _run(name, rest)


if __name__ == "__main__":
    sys.exit(main())
