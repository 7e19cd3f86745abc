"""Ulysses sequence parallelism: all-to-all, quantized (NVFP4/FP8) all-to-all, UlyssesAttention."""

from .peer_exchange import symmetric_empty
from .quantized_all_to_all import DelayedScaling, quantized_all_to_all
from .ulysses import AllToAllHandle, ulysses_all_to_all
from .ulysses_attention import UlyssesAttention, sdpa_attention

__all__ = [
    "AllToAllHandle",
    "DelayedScaling",
    "UlyssesAttention",
    "quantized_all_to_all",
    "sdpa_attention",
    "symmetric_empty",
    "ulysses_all_to_all",
]
