"""Fused RoPE and adaLN (forward + backward), the FP4 KV cache and attention that reads it."""
