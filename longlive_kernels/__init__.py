"""longlive_kernels: hand-written NVFP4, attention and communication kernels for long, real-time
autoregressive video diffusion (LongLive-2.0 on Hopper).

Areas: :mod:`longlive_kernels.fp4`, :mod:`longlive_kernels.attention`, :mod:`longlive_kernels.comm`.
Every op takes ``backend="auto" | "triton" | "cuda" | "torch"``.
"""

__version__ = "0.1.0"
