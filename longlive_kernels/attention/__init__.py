"""Fused RoPE and adaLN (forward + backward), the FP4 KV cache and attention that reads it."""

from .adaln import (
    adaln_modulate,
    gated_residual,
    gated_residual_adaln,
    gated_residual_layernorm,
)
from .fp4_kv_attention import fp4_kv_attention
from .kv_cache import FP4KVCache
from .layernorm_fp8_scale import layernorm_fp8_scale
from .rope import apply_rope_3d

__all__ = [
    "FP4KVCache",
    "adaln_modulate",
    "apply_rope_3d",
    "fp4_kv_attention",
    "gated_residual",
    "gated_residual_adaln",
    "gated_residual_layernorm",
    "layernorm_fp8_scale",
]
