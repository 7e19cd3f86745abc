"""Fused RoPE and adaLN (forward + backward), the FP4 KV cache and attention that reads it."""

from .adaln import adaln_modulate, gated_residual, gated_residual_adaln, gated_residual_layernorm  # noqa: E402
from .rope import apply_rope_3d  # noqa: E402
from .fp4_kv_attention import fp4_kv_attention  # noqa: E402
from .kv_cache import FP4KVCache  # noqa: E402
