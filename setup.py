"""Build of the ``longlive_kernels._C`` CUDA extension (optional).

Environment flags:
    LONGLIVE_SKIP_CUDA_BUILD=1     pure-Python install (Triton + torch backends only)
    LONGLIVE_CUDA_ARCHS=90a        semicolon-separated archs; 100a/120a are added only when nvcc
                                   supports them (guarded sm_100 paths, never run on Hopper)
    MAX_JOBS=N                     parallel nvcc jobs (torch.utils.cpp_extension / ninja)

The extension is built only when torch has CUDA and nvcc is found; otherwise the package installs
without it and ``backend="cuda"`` raises a clear error. Install with
``pip install --no-build-isolation -e .`` so the build sees the installed torch.
"""

import glob
import os

from setuptools import setup


def _extensions():
    if os.environ.get("LONGLIVE_SKIP_CUDA_BUILD", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return [], {}
    archs = os.environ.get("LONGLIVE_CUDA_ARCHS", "90a").split(";")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
    sources = sorted(glob.glob("csrc/*/*.cu")) + ["csrc/bindings.cpp"]
    ext = CUDAExtension(
        name="longlive_kernels._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc/include")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", *gencode],
        },
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
