"""Plain-PyTorch specification of every op in ``longlive_kernels.attention`` (fp32/fp64 math,
readable, slow). Semantics: ``shared/docs/longlive-spec.md`` §1.1 (block, RoPE, adaLN) and
§2.2–2.5 (KV cache, sink, window, shot sink)."""

from __future__ import annotations

import torch

# ---------------------------------------------------------------------------------------------
# RoPE / adaLN / qk-RMSNorm / gated residual  (owner: rope.py, adaln.py)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# FP4 KV cache / attention over the cache  (owner: kv_cache.py, fp4_kv_attention.py)
# ---------------------------------------------------------------------------------------------
