"""FP8 attention on Hopper through cuDNN's FP8 flash attention (the ``nvidia-cudnn-frontend`` package).

``fp4_kv_attention(..., compute="fp8")`` on an H100/H200 decodes the FP4 window straight into an FP8
E4M3 workspace (one per-tensor scale for K and one for V, derived from the cache's FP32 tile scales),
quantizes q per tensor, and runs cuDNN's FP8 SDPA forward: Q·Kᵀ and P·V on the FP8 tensor cores, the
softmax in FP32, P rounded to E4M3 with the scale 448 (P ≤ 1 uses the whole E4M3 range).

Measured on an H100 (2026-11-22, ``tools/probe_fp8_sdpa.py``, Lq 7040, Lk 28160, 24 heads × 128):
cuDNN FP8 SDPA 2.35 ms = 1036 TFLOP/s, 1.67× cuDNN BF16 (3.92 ms) on the kernel alone. On Hopper
cuDNN writes O only in FP8 (BF16 output is Blackwell-only in cuDNN 9.19), so O is stored as E4M3
with the scale ``1 / descale_v`` (|O| ≤ max|V| because O is a convex combination of V rows) and
converted back to bf16 here.

Error: every one of Q, K, V, P and O is rounded to E4M3 (3 mantissa bits): the relative error of O
is ~6 % (Frobenius) on random N(0, 1) inputs with near-uniform P, 10 % with peaked P (logit std 3),
against ~0.5 % for the BF16 path. That is the price of the FP8 tensor cores; it is opt-in
(``attention_compute="fp8"``), as the FP8 linears are.
"""

from __future__ import annotations

import functools

import torch
import triton

from ..fp4.format import E2M1_MAX, E4M3_MAX

__all__ = ["amax_bits", "cudnn_fp8_sdpa_available", "fp8_descales", "fp8_sdpa", "heads_major", "scale_cast"]


@functools.cache
def _cudnn():
    try:
        import cudnn  # nvidia-cudnn-frontend
    except (ImportError, OSError):
        return None
    return cudnn


def cudnn_fp8_sdpa_available(device: torch.device) -> bool:
    """True on a Hopper GPU (sm_90) with the ``nvidia-cudnn-frontend`` package importable."""
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
            and _cudnn() is not None)


# launch shapes (tile rows, tile columns, warps[, programs per SM]) from `tools/probe_fp8_path.py
# --cast-sweep` on an H100 (q [1, 7040, 24, 128], L2 flushed): the amax 21.6 → 18.2 µs (a few
# programs per SM instead of an atomic per tile; the tile shape within 0.5 µs), the bf16 → E4M3 cast
# 24.0 → 22.3 µs (0.96× copy), the E4M3 → bf16 cast 22.3 → 20.6 µs (1.04×)
AMAX_LAUNCH = (32, 256, 4, 8)
CAST_LAUNCH = {True: (64, 128, 8), False: (128, 128, 4)}  # by ``divide``


def amax_bits(x: torch.Tensor, out: torch.Tensor, *, launch: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """``out`` (a zeroed or running [1] int32 device tensor) = max(out, bits of fp32 max |x|), in place.

    x : [B, L, H, D] with D contiguous (any batch, token and head strides). Non-negative fp32 bit
    patterns order like int32, so ``out.view(torch.float32)`` is the amax; a NaN in x gives NaN. CUDA:
    one Triton pass, a few programs per SM striding over the tiles with one atomic each (torch's
    reduction measured 28.6 µs on the 43 MB q of the 5B chunk on an H100, ~1.5 TB/s); elsewhere torch
    ops. ``launch`` = (tile rows, tile columns, warps, programs per SM), default ``AMAX_LAUNCH``."""
    if x.is_cuda and x.stride(3) == 1 and x.dtype in (torch.bfloat16, torch.float16, torch.float32):
        from .fp8_sdpa_triton import _amax_bits_kernel

        bl, bc, warps, per_sm = launch or AMAX_LAUNCH
        b, seq, h, d = x.shape
        tiles = b * triton.cdiv(seq, bl) * triton.cdiv(h * d, bc)
        programs = min(tiles, per_sm * torch.cuda.get_device_properties(x.device).multi_processor_count)
        _amax_bits_kernel[(programs,)](x, out, b, seq, h * d, x.stride(0), x.stride(1), x.stride(2), D=d, BL=bl,
                                       BC=bc, num_warps=warps)
        return out
    m = torch.linalg.vector_norm(x, float("inf")).float().reshape(1).view(torch.int32)
    return torch.maximum(out, m, out=out)


def fp8_descales(gs: torch.Tensor, amax_bits: torch.Tensor, has_current: bool) -> torch.Tensor:
    """The per-tensor scales of one FP8 attention call over an FP4 KV layer, as one [6] fp32 tensor:
    ``descale_k, descale_v, 1/descale_k, 1/descale_v, descale_q, 1/descale_v``.

    gs : [2, ...] fp32, contiguous: the layer's FP32 tile scales of K (``gs[0]``) and V (``gs[1]``).
    amax_bits : [3] int32, the bits of amax(q), amax(current K), amax(current V) (the last two read only
    with ``has_current``), e.g. from :func:`amax_bits`.

    descale_{k,v} = max(E2M1_MAX · max tile scale, amax(current)/448): an NVFP4 value is at most
    6 · 448 · its tile scale, so every decoded code fits E4M3; descale_q = amax(q)/448. Divisions are
    correctly rounded, scales clamped to the smallest normal fp32 (an all-zero tensor). CUDA: one
    Triton launch; elsewhere the same formula in torch ops."""
    if gs.is_cuda:
        from .fp8_sdpa_triton import _fp8_descales_kernel

        out = torch.empty(6, dtype=torch.float32, device=gs.device)
        n = gs[0].numel()  # one pass of loads where it fits: a loop of dependent loads took 10.6 µs
        _fp8_descales_kernel[(1,)](gs, n, amax_bits, out, HAS_CURRENT=has_current,
                                   BLOCK=min(8192, triton.next_power_of_2(n)), num_warps=8)
        return out
    tiny = torch.finfo(torch.float32).tiny
    am = amax_bits.view(torch.float32)
    e4m3 = torch.full((), E4M3_MAX, device=gs.device)
    d = gs.flatten(1).amax(1) * E2M1_MAX
    if has_current:
        d = torch.maximum(d, am[1:3] / e4m3)
    d = d.clamp_min(tiny)
    inv = 1.0 / d  # a Python-float numerator: true division (unlike a Python-float divisor)
    return torch.cat([d, inv, (am[0:1] / e4m3).clamp_min(tiny), inv[1:2]])


def scale_cast(x: torch.Tensor, scale: torch.Tensor, out: torch.Tensor, *, divide: bool,
               launch: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``out = (x / scale if divide else x · scale)`` rounded to ``out``'s dtype (RNE), in one pass.

    x, out : [B, L, H, D] of one shape, D contiguous in both (any batch, token and head strides: e.g.
    token-major q into the head-major FP8 workspace); scale : [1] fp32 device tensor. CUDA: a Triton
    kernel (``launch`` = tile rows, tile columns, warps; default ``CAST_LAUNCH[divide]``); elsewhere torch
    ops."""
    if x.is_cuda and x.stride(3) == 1 and out.stride(3) == 1:
        from .fp8_sdpa_triton import _scale_cast_kernel

        bl, bc, warps = launch or CAST_LAUNCH[divide]
        b, seq, h, d = x.shape
        c = h * d
        grid = (triton.cdiv(seq, bl), triton.cdiv(c, bc), b)
        _scale_cast_kernel[grid](x, out, scale, seq, c, x.stride(0), x.stride(1), x.stride(2), out.stride(0),
                                 out.stride(1), out.stride(2), INVERT=divide, D=d, BL=bl, BC=bc, num_warps=warps)
        return out
    y = x.float() / scale if divide else x.float() * scale
    out.copy_(y.to(out.dtype))
    return out


def heads_major(shape: tuple[int, int, int, int], dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised [B, L, H, D] view whose memory is [B, H, L, D] (each head's tokens contiguous):
    the layout in which cuDNN's FP8 SDPA runs fastest on Hopper (``tools/probe_fp8_sdpa.py --layouts``)."""
    b, seq, h, d = shape
    return torch.empty((b, h, seq, d), dtype=dtype, device=device).transpose(1, 2)


_GRAPHS: dict[tuple, tuple] = {}


def _graph(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, o8: torch.Tensor, softmax_scale: float):
    """Build (once per shape, strides, scale and device) the cuDNN FP8 SDPA graph on [B, L, H, D] views."""
    key = (tuple(q8.shape), q8.stride(), tuple(k8.shape), k8.stride(), v8.stride(), o8.stride(), softmax_scale,
           q8.device)
    hit = _GRAPHS.get(key)
    if hit is not None:
        return hit
    cudnn = _cudnn()
    handle = cudnn.create_handle()
    g = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    tq, tk, tv = (g.tensor_like(t.transpose(1, 2)) for t in (q8, k8, v8))  # cuDNN's [B, H, L, D] dims
    scalar = torch.ones(1, 1, 1, 1, dtype=torch.float32, device=q8.device)
    dq, dk, dv, ds, ss, so = (g.tensor_like(scalar) for _ in range(6))
    o, _, amax_s, amax_o = g.sdpa_fp8(q=tq, k=tk, v=tv, descale_q=dq, descale_k=dk, descale_v=dv, descale_s=ds,
                                      scale_s=ss, scale_o=so, is_inference=True, attn_scale=softmax_scale,
                                      use_causal_mask=False)
    b, lq, h, d = q8.shape
    o.set_output(True).set_dim([b, h, lq, d]).set_stride(list(o8.transpose(1, 2).stride())).set_data_type(
        cudnn.data_type.FP8_E4M3)
    for t in (amax_s, amax_o):
        t.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    workspace = torch.empty(g.get_workspace_size(), dtype=torch.uint8, device=q8.device)
    consts = {  # P ∈ [0, 1] → the whole E4M3 range
        "descale_s": torch.full((1, 1, 1, 1), 1.0 / E4M3_MAX, device=q8.device),
        "scale_s": torch.full((1, 1, 1, 1), E4M3_MAX, device=q8.device),
        "amax_s": torch.zeros(1, 1, 1, 1, device=q8.device),
        "amax_o": torch.zeros(1, 1, 1, 1, device=q8.device),
    }
    hit = _GRAPHS[key] = (g, handle, workspace, (tq, tk, tv, dq, dk, dv, ds, ss, so, o, amax_s, amax_o), consts)
    return hit


def fp8_sdpa(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, descale_q: torch.Tensor,
             descale_k: torch.Tensor, descale_v: torch.Tensor, softmax_scale: float,
             out_dtype: torch.dtype = torch.bfloat16, scale_o: torch.Tensor | None = None,
             out_fp8: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention (no mask) of FP8 E4M3 q over k, v with per-tensor descales, by cuDNN.

    Parameters
    ----------
    q8 : torch.Tensor
        [B, Lq, H, D] float8_e4m3fn (any strides, last dim contiguous): q ≈ q8 · descale_q.
    k8, v8 : torch.Tensor
        [B, Lk, H, D] float8_e4m3fn; |v8| ≤ 448 (O is written as E4M3 with the scale 1/descale_v).
    descale_q, descale_k, descale_v : torch.Tensor
        [1] (or one-element) fp32 on the device.
    softmax_scale : float
    out_dtype : torch.dtype
        bf16 or fp16.
    scale_o : torch.Tensor, optional
        [1] fp32 ``1 / descale_v`` when the caller has it (saves a launch).
    out_fp8 : bool
        Return cuDNN's E4M3 output as it is, ``(o8, descale_v)``, instead of converting it.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        [B, Lq, H, D] in ``out_dtype`` = ``o8 · descale_v`` rounded once; with ``out_fp8`` the
        float8_e4m3fn [B, Lq, H, D] codes (contiguous) and the [1] fp32 scale.

    Raises
    ------
    RuntimeError
        No cuDNN frontend or not a Hopper GPU (check :func:`cudnn_fp8_sdpa_available` first).
    TypeError / ValueError
        Inputs not float8_e4m3fn, or shapes that disagree.
    """
    if not cudnn_fp8_sdpa_available(q8.device):
        raise RuntimeError("fp8_sdpa needs a Hopper GPU and the nvidia-cudnn-frontend package")
    for name, t in (("q8", q8), ("k8", k8), ("v8", v8)):
        if t.dtype != torch.float8_e4m3fn:
            raise TypeError(f"{name} must be float8_e4m3fn, got {t.dtype}")
        if t.dim() != 4 or t.stride(-1) != 1:
            raise ValueError(f"{name} must be [B, L, H, D] with a contiguous last dim, got {list(t.shape)} "
                             f"strides {t.stride()}")
    if k8.shape != v8.shape or k8.shape[0] != q8.shape[0] or k8.shape[2:] != q8.shape[2:]:
        raise ValueError(f"q8 {list(q8.shape)}, k8 {list(k8.shape)}, v8 {list(v8.shape)} disagree on B, H, D")
    # token-major O whatever q8's layout: the output projection reads [B·Lq, H·D] rows, and cuDNN's
    # kernel is as fast with head-major q/K/V and token-major O (2263-2327 µs against 2269-2303 all
    # token-major, tools/probe_fp8_path.py, H100, 28th-29th sessions)
    o8 = torch.empty(q8.shape, dtype=q8.dtype, device=q8.device)
    g, handle, workspace, (tq, tk, tv, dq, dk, dv, ds, ss, so, o, amax_s, amax_o), c = _graph(
        q8, k8, v8, o8, float(softmax_scale))
    _cudnn().set_stream(handle=handle, stream=torch.cuda.current_stream(q8.device).cuda_stream)  # graphs, side streams
    scale_o = (1.0 / descale_v.float() if scale_o is None else scale_o).reshape(1, 1, 1, 1)
    g.execute({tq: q8.transpose(1, 2), tk: k8.transpose(1, 2), tv: v8.transpose(1, 2),
               dq: descale_q.reshape(1, 1, 1, 1), dk: descale_k.reshape(1, 1, 1, 1),
               dv: descale_v.reshape(1, 1, 1, 1), ds: c["descale_s"], ss: c["scale_s"], so: scale_o,
               o: o8.transpose(1, 2), amax_s: c["amax_s"], amax_o: c["amax_o"]}, workspace, handle=handle)
    if out_fp8:
        return o8, descale_v.float().reshape(1)
    return scale_cast(o8, descale_v.float().reshape(1), torch.empty(q8.shape, dtype=out_dtype, device=q8.device),
                      divide=False)
