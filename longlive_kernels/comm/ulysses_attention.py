"""``UlyssesAttention``: sequence-parallel attention that only moves data.

q, k, v [B, S/P, H, D] (local tokens, all heads) → all-to-all seq→head → [B, S, H/P, D] (all
tokens, local heads; k and v optionally quantized on the wire) → a pluggable local attention →
all-to-all head→seq → [B, S/P, H, D]. Spec: ``longlive-spec.md`` §5.1/§5.4.

Token order: the attention sees the ranks' local sequences concatenated in rank order. With
Balanced SP (local sequence = [clean_local ; noisy_local], spec §5.2) that is the rank-interleaved
``[r0_clean, r0_noisy, r1_clean, r1_noisy, ...]``; masks and RoPE positions given to the local
attention must be expressed in that order. UlyssesAttention never permutes tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import _checks
from .quantized_all_to_all import DelayedScaling, quantized_all_to_all
from .ulysses import (
    all_to_all_buffer,
    check_ranks_agree,
    gather_from_buffer,
    group_size,
    scatter_to_buffer,
    tensor_signature,
    ulysses_all_to_all,
)

CHECK_RANKS = ("first", "always", "never")


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, head_slice: slice | None = None, **kwargs
) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` on the [B, S, H, D] layout.

    Keyword arguments (``attn_mask``, ``is_causal``, ``scale``, ``enable_gqa``) are passed on;
    the output is a [B, S, H, Dv] view of SDPA's [B, H, S, Dv] result. ``head_slice`` (given by
    ``UlyssesAttention(head_chunks>1)``) is not needed: the heads are those of q, k, v.
    """
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kwargs)
    return o.transpose(1, 2)


class UlyssesAttention(nn.Module):
    """Ulysses sequence-parallel wrapper around a local attention.

    Parameters
    ----------
    attn : callable or nn.Module, optional
        ``attn(q, k, v, **kwargs) -> o`` on head-sharded tensors: q [B, S, H/P, D] and k, v
        [B, S_kv, H_kv/P, D] (dense tensors, or :class:`NVFP4Tensor` / FP8 ``(codes, scale)``
        pairs when ``kv_output`` asks for them), o [B, S, H/P, Dv]. Default: :func:`sdpa_attention`.
        The FP4-KV attention plugs in as
        ``lambda q, k, v: fp4_kv_attention(q, cache, layer, current_k=k, current_v=v)``.
        A module is registered as a submodule.
    group : torch.distributed.ProcessGroup, optional
        The sequence-parallel group (default: the default group). With one rank (or no process
        group) no collective runs; k/v are still quantized when ``kv_format`` is set, so the
        numerics do not depend on P.
    kv_format : {None, "nvfp4", "fp8"}
        Quantize k and v on the wire (one buffer, one collective for both). None = exact.
    kv_output : {"dequantized", "nvfp4", "fp8"}
        What the local attention receives for k and v when ``kv_format`` is set.
    tensor_scale, scale_rule, backend
        Passed to :func:`~longlive_kernels.comm.quantized_all_to_all`. ``tensor_scale="delayed"``
        (NVFP4 k/v): one :class:`~longlive_kernels.comm.DelayedScaling` per value of the ``layer``
        keyword the module is called with (one per cache layer), so after the first call of a
        layer its k/v all-to-all has no amax pass and no all-reduce.
    check_ranks : {"first", "always", "never"}
        Verify that q/k/v shapes and dtypes agree across ranks (one tiny all-gather + host sync)
        on the first call, every call, or never. Every rank raises the same ``ValueError``.
    head_chunks : int
        G > 1 pipelines the layer over G groups of each rank's H/P heads (inference only): group
        g attends while the q/k/v all-to-alls of the later groups and the output all-to-all of the
        earlier ones are on the wire, so only group 0's inbound and group G−1's outbound transfer
        stay exposed. ``attn`` is then called G times, with the keyword ``head_slice`` =
        ``slice(g·h, (g+1)·h)``, h = H/(P·G): which of the rank's local heads it gets (e.g. to
        address its KV-cache shard). Needs (H/P) % G == 0, q and k/v with the same head count,
        dense k/v for ``attn`` (``kv_output="dequantized"``) and no autograd. With quantized k/v
        the per-source tensor scale is taken per group.
    transport : {"nccl", "peer"}
        ``"peer"``: the exchanges are stores into the peers' symmetric-memory buffers
        (:class:`~longlive_kernels.comm.peer_exchange.PeerExchange`: GPUs of one node, CUDA,
        inference only, exact k/v, ``head_chunks=1``, q/k/v of one shape); the default sends
        through the process group's all-to-all (NCCL or gloo).

    Notes
    -----
    Needs heads % P == 0 (q, k, v) and equal local token counts on every rank (tokens % P == 0
    globally). Shape errors are raised before any collective, on every rank; rank-dependent
    shapes are caught by the ``check_ranks`` all-gather. Autograd works on the unquantized path
    (backward = inverse all-to-alls); the quantized path is inference-only.

    Overlap: q's all-to-all is issued asynchronously first. With the default per-source NVFP4
    scale (dense ``kv_output``) the k/v amax and pack kernels run on the compute stream while q is
    on the wire; ``tensor_scale="group"`` (forced by ``kv_output="nvfp4"``) adds a 4-byte
    all-reduce that queues behind q's transfer on the communicator's stream.
    """

    def __init__(
        self,
        attn: Callable[..., torch.Tensor] | nn.Module | None = None,
        group: dist.ProcessGroup | None = None,
        *,
        kv_format: str | None = None,
        kv_output: str = "dequantized",
        tensor_scale: str = "auto",
        scale_rule: str = "static6",
        backend: str = "auto",
        check_ranks: str = "first",
        head_chunks: int = 1,
        transport: str = "nccl",
    ):
        super().__init__()
        if attn is not None and not callable(attn):
            raise TypeError(f"attn must be callable, got {type(attn).__name__}")
        _checks.check_choice("kv_format", kv_format, (None, "nvfp4", "fp8"))
        _checks.check_choice("kv_output", kv_output, ("dequantized", "nvfp4", "fp8"))
        _checks.check_choice("check_ranks", check_ranks, CHECK_RANKS)
        if kv_format is not None and kv_output not in ("dequantized", kv_format):
            raise ValueError(f"kv_output={kv_output!r} needs kv_format={kv_output!r}, got {kv_format!r}")
        if kv_format is None and kv_output != "dequantized":
            raise ValueError(f"kv_output={kv_output!r} needs kv_format={kv_output!r}")
        if not isinstance(head_chunks, int) or isinstance(head_chunks, bool) or head_chunks < 1:
            raise ValueError(f"head_chunks must be an int >= 1, got {head_chunks!r}")
        if head_chunks > 1 and kv_output != "dequantized":
            raise ValueError(
                f"head_chunks={head_chunks} needs kv_output='dequantized' (dense k/v per head "
                f"group), got kv_output={kv_output!r}"
            )
        if tensor_scale == "delayed" and (kv_format != "nvfp4" or head_chunks != 1):
            raise ValueError(f"tensor_scale='delayed' needs kv_format='nvfp4' and head_chunks=1, got "
                             f"kv_format={kv_format!r}, head_chunks={head_chunks}")
        _checks.check_choice("transport", transport, ("nccl", "peer"))
        if transport == "peer" and (kv_format is not None or head_chunks != 1):
            raise ValueError(f"transport='peer' sends exact k/v in one exchange: needs kv_format=None and "
                             f"head_chunks=1, got kv_format={kv_format!r}, head_chunks={head_chunks}")
        if attn is None and kv_output != "dequantized":
            raise ValueError(
                "the default SDPA attention needs dense k/v: pass an attention that reads "
                f"{kv_output} (e.g. fp4_kv_attention) or use kv_output='dequantized'"
            )
        self.attn = attn if attn is not None else sdpa_attention
        self.group = group
        self.kv_format = kv_format
        self.kv_output = kv_output
        self.tensor_scale = tensor_scale
        self.scale_rule = scale_rule
        self.backend = backend
        self.check_ranks = check_ranks
        self.head_chunks = head_chunks
        self.transport = transport
        self._checked = False
        self._delayed: dict = {}  # tensor_scale="delayed": the scaling state of each call site (layer)

    @property
    def world_size(self) -> int:
        return group_size(self.group)

    def _validate(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: int) -> None:
        for name, t in (("q", q), ("k", k), ("v", v)):
            _checks.check_dtype(name, t)
            _checks.check_ndim(name, t, 4)
            _checks.check_nonempty(name, t)
            if t.shape[2] % p != 0:
                raise ValueError(
                    f"{name} has {t.shape[2]} heads, not divisible by the SP group size {p} "
                    f"(Ulysses needs heads % P == 0); shape {tuple(t.shape)}"
                )
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"k and v must agree on [B, S, H], got {tuple(k.shape)} and {tuple(v.shape)}")
        if q.shape[0] != k.shape[0]:
            raise ValueError(f"q and k must have the same batch, got {tuple(q.shape)} and {tuple(k.shape)}")
        if self.kv_format is not None and k.shape != v.shape:
            raise ValueError(
                f"quantized k/v share one buffer and must have one shape, got {tuple(k.shape)} "
                f"and {tuple(v.shape)}"
            )
        g = self.head_chunks
        if g > 1:
            if (q.shape[2] // p) % g != 0 or q.shape[2] != k.shape[2]:
                raise ValueError(
                    f"head_chunks={g} needs q and k/v with the same heads and (heads / P) % "
                    f"head_chunks == 0; got q {tuple(q.shape)}, k {tuple(k.shape)}, P = {p}"
                )
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                raise ValueError(
                    f"head_chunks={g} is inference-only: run under torch.no_grad() or use "
                    "head_chunks=1 to train"
                )

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kv_out=None,
                out: torch.Tensor | None = None, **attn_kwargs) -> torch.Tensor:
        """q, k, v [B, S/P, H, D] local tokens → o [B, S/P, H, Dv]; ``attn_kwargs`` go to ``attn``.

        Parameters
        ----------
        kv_out : (torch.Tensor, torch.Tensor), optional
            [B, S, H_kv/P, D] / [B, S, H_kv/P, Dv] tensors of k's dtype that receive the gathered k
            and v (e.g. the current chunk's slot of a BF16 KV cache whose whole window ``attn``
            reads); ``attn`` then gets them as k and v. With ``transport="peer"`` they must be views
            of :func:`~longlive_kernels.comm.symmetric_empty` tensors of the group
            (the same views on every rank) and the peers' stores land there directly; otherwise (and
            at P = 1) the received k, v are copied in. Dense k/v only (``kv_output="dequantized"``,
            ``head_chunks=1``), no autograd.
        out : torch.Tensor, optional
            [B, S/P, H, Dv] tensor for the output, under the same rules (``transport="peer"``: a
            ``symmetric_empty`` view the peers store into, no copy out of the exchange buffer).

        Raises
        ------
        ValueError
            As the class notes say, and for ``kv_out`` / ``out`` of the wrong shape, dtype or device,
            or (peer transport) not in symmetric memory.
        """
        p = self.world_size
        self._validate(q, k, v, p)
        self._validate_outputs(q, k, v, p, kv_out, out)
        if p > 1 and (self.check_ranks == "always" or (self.check_ranks == "first" and not self._checked)):
            sig = tensor_signature(q) + tensor_signature(k) + tensor_signature(v)
            check_ranks_agree(self.group, q.device, sig, "UlyssesAttention")
            self._checked = True
        if self.head_chunks > 1:
            return self._forward_head_chunks(q, k, v, p, attn_kwargs)
        if self.transport == "peer" and p > 1:
            ex = self._peer_exchange(q, k, v)
            q_h, k_h, v_h = ex.seq_to_head(q, k, v, out=(None, *(kv_out or (None, None))))
            return ex.head_to_seq(self._attend(q_h, k_h, v_h, attn_kwargs), out=out)

        hq = ulysses_all_to_all(q, self.group, scatter_dim=2, gather_dim=1, async_op=True)
        if self.kv_format is None:
            hk = ulysses_all_to_all(k, self.group, scatter_dim=2, gather_dim=1, async_op=True)
            hv = ulysses_all_to_all(v, self.group, scatter_dim=2, gather_dim=1, async_op=True)
            k_h, v_h = hk.wait(), hv.wait()
        else:
            k_h, v_h = self._send_kv(k, v, site=attn_kwargs.get("layer"))
        if kv_out is not None:
            k_h, v_h = kv_out[0].copy_(k_h), kv_out[1].copy_(v_h)
        o_h = self._attend(hq.wait(), k_h, v_h, attn_kwargs)
        o = ulysses_all_to_all(o_h, self.group, scatter_dim=1, gather_dim=2)
        return o if out is None else out.copy_(o)

    def _validate_outputs(self, q, k, v, p: int, kv_out, out) -> None:
        """Shape/dtype/device of ``kv_out`` and ``out`` (symmetric memory is checked by the exchange)."""
        if kv_out is not None:
            if (not isinstance(kv_out, (tuple, list)) or len(kv_out) != 2
                    or not all(isinstance(t, torch.Tensor) for t in kv_out)):
                raise TypeError(f"kv_out must be a pair of tensors (k, v), got {type(kv_out).__name__}")
            if self.head_chunks > 1 or self.kv_output != "dequantized":
                raise ValueError(f"kv_out needs dense k/v in one exchange: head_chunks=1 and kv_output='dequantized', "
                                 f"got head_chunks={self.head_chunks}, kv_output={self.kv_output!r}")
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                raise ValueError("kv_out is inference-only: run under torch.no_grad()")
            for name, src, dst in (("kv_out[0]", k, kv_out[0]), ("kv_out[1]", v, kv_out[1])):
                want = (src.shape[0], src.shape[1] * p, src.shape[2] // p, src.shape[3])
                if tuple(dst.shape) != want or dst.dtype != src.dtype or dst.device != src.device:
                    raise ValueError(f"{name} must be a {src.dtype} tensor {list(want)} on {src.device} (the "
                                     f"gathered shape), got {dst.dtype} {list(dst.shape)} on {dst.device}")
        if out is not None:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"out must be a tensor, got {type(out).__name__}")
            if self.head_chunks > 1 or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
                raise ValueError("out needs head_chunks=1 and no autograd (run under torch.no_grad())")
            want = (*q.shape[:3], v.shape[3])
            if tuple(out.shape) != want or out.dtype != q.dtype or out.device != q.device:
                raise ValueError(f"out must be a {q.dtype} tensor {list(want)} on {q.device}, got {out.dtype} "
                                 f"{list(out.shape)} on {out.device}")

    def _inbound(self, q, k, v, p: int, g: int):
        """Start the seq→head transfer of head group ``g``: returns a function giving its q, k, v."""
        chunks = self.head_chunks

        def group_of(t):  # [B, S/P, H, D] → the heads r·H/P + g·h + [0, h) for every destination r
            return t.unflatten(2, (p, chunks, -1)).select(3, g)  # [B, S/P, P, h, D]

        def send(t):
            if p == 1:
                return lambda: group_of(t).flatten(2, 3)
            buf = group_of(t).movedim(2, 0).contiguous()  # [P, B, S/P, h, D]
            recv = torch.empty_like(buf)
            work = all_to_all_buffer(buf, recv, self.group, async_op=True)

            def finish():
                work.wait()
                return gather_from_buffer(recv, 1)  # [B, S, h, D]

            return finish

        fq = send(q)
        if self.kv_format is None:
            fk, fv = send(k), send(v)
            return lambda: (fq(), fk(), fv())
        handle = self._send_kv(*(group_of(t).flatten(2, 3) for t in (k, v)), async_op=True)
        return lambda: (fq(), *handle.wait())

    def _peer_exchange(self, q, k, v):
        """The :class:`PeerExchange` for q's shape (built collectively on first use or a new shape)."""
        from .peer_exchange import PeerExchange

        if k.shape != q.shape or v.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
            raise ValueError(f"transport='peer' needs q, k, v of one shape and dtype, got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(v.shape)}")
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise ValueError("transport='peer' is inference-only: run under torch.no_grad()")
        b, t, h, d = q.shape
        return PeerExchange.shared(self.group, batch=b, tokens=t, heads=h, head_dim=d, dtype=q.dtype,
                                   device=q.device, backend=self.backend)

    def _send_kv(self, k, v, *, async_op: bool = False, site=None):
        """k and v seq→head through one quantized all-to-all with this module's wire options
        (``site``: the call site whose delayed-scaling state to use)."""
        delayed = None
        if self.tensor_scale == "delayed":
            delayed = self._delayed.get(site)
            if delayed is None:
                delayed = self._delayed[site] = DelayedScaling()
        return quantized_all_to_all(
            (k, v),
            self.group,
            scatter_dim=2,
            gather_dim=1,
            format=self.kv_format,
            output=self.kv_output,
            tensor_scale="auto" if delayed is not None else self.tensor_scale,
            scale_rule=self.scale_rule,
            backend=self.backend,
            async_op=async_op,
            delayed=delayed,
        )

    def _forward_head_chunks(self, q, k, v, p: int, attn_kwargs) -> torch.Tensor:
        chunks = self.head_chunks
        h = q.shape[2] // (p * chunks)
        # every inbound transfer is queued first: the communicator runs them in order while the
        # compute stream attends group by group, each waiting only for its own data
        inbound = [self._inbound(q, k, v, p, g) for g in range(chunks)]
        outbound = []
        out = None
        for g, start in enumerate(inbound):
            o_h = self._attend(*start(), {**attn_kwargs, "head_slice": slice(g * h, (g + 1) * h)})
            if out is None:
                out = o_h.new_empty(q.shape[0], q.shape[1], q.shape[2], o_h.shape[-1])
            if p == 1:  # as if received from the one rank: [1, B, S, h, Dv]
                outbound.append((None, o_h.unsqueeze(0)))
                continue
            buf = scatter_to_buffer(o_h, p, 1)  # [P, B, S/P, h, Dv]
            recv = torch.empty_like(buf)
            outbound.append((all_to_all_buffer(buf, recv, self.group, async_op=True), recv))
        # heads of the output: (source rank r, group g, i) ↔ r·H/P + g·h + i
        dst = out.unflatten(2, (p, chunks, h))
        for g, (work, recv) in enumerate(outbound):
            if work is not None:
                work.wait()
            dst.select(3, g).copy_(recv.movedim(0, 2))
        return out

    def _attend(self, q, k, v, attn_kwargs) -> torch.Tensor:
        o = self.attn(q, k, v, **attn_kwargs)
        if not isinstance(o, torch.Tensor) or o.dim() != 4 or o.shape[:3] != q.shape[:3]:
            got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
            raise ValueError(f"attn must return a [B, S, H/P, Dv] tensor like q {tuple(q.shape)}, got {got}")
        return o

    def extra_repr(self) -> str:
        return (
            f"world_size={self.world_size}, kv_format={self.kv_format}, kv_output={self.kv_output}, "
            f"head_chunks={self.head_chunks}, transport={self.transport}"
        )


__all__ = ["UlyssesAttention", "sdpa_attention"]
