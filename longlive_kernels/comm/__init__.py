"""Ulysses sequence parallelism: all-to-all, quantized (NVFP4/FP8) all-to-all, UlyssesAttention."""
