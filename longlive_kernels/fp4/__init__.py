"""NVFP4 format, quantize/dequantize, the random Hadamard transform, E2M1 block-scaled GEMM and
NVFP4Linear."""

from .dequantize import dequantize_nvfp4
from .format import BLOCK_SIZE, SCALE_RULES, NVFP4Tensor, from_blocked, to_blocked
from .fp8 import fp8_gemm, quantize_fp8_rowwise
from .fp8_tensorwise import quantize_fp8_tensorwise
from .gemm import nvfp4_gemm
from .hadamard import random_hadamard_transform
from .linear import NVFP4Linear, NVFP4Recipe, quantize_model
from .quantize import quantize_nvfp4

__all__ = [
    "BLOCK_SIZE",
    "SCALE_RULES",
    "NVFP4Linear",
    "NVFP4Recipe",
    "NVFP4Tensor",
    "dequantize_nvfp4",
    "fp8_gemm",
    "from_blocked",
    "nvfp4_gemm",
    "quantize_fp8_rowwise",
    "quantize_fp8_tensorwise",
    "quantize_model",
    "quantize_nvfp4",
    "random_hadamard_transform",
    "to_blocked",
]
