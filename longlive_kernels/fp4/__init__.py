"""NVFP4 format, quantize/dequantize, the random Hadamard transform, E2M1 block-scaled GEMM and
NVFP4Linear."""

from .dequantize import dequantize_nvfp4
from .format import BLOCK_SIZE, SCALE_RULES, NVFP4Tensor, from_blocked, to_blocked
from .hadamard import random_hadamard_transform
from .quantize import quantize_nvfp4

__all__ = [
    "BLOCK_SIZE",
    "SCALE_RULES",
    "NVFP4Tensor",
    "dequantize_nvfp4",
    "from_blocked",
    "quantize_nvfp4",
    "random_hadamard_transform",
    "to_blocked",
]
