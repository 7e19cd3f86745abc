"""Sequence-parallel (Ulysses) streaming inference: ``torchrun --nproc-per-node P longlive generate``.

Each chunk's latent frames are split over the P ranks of the group (rank r holds frames
``[r·F/P, (r+1)·F/P)`` of the chunk, i.e. ``chunk_tokens / P`` tokens, with their own RoPE
positions), so every linear layer, adaLN and cross-attention runs on 1/P of the tokens. In
self-attention, ``UlyssesAttention`` exchanges q/k/v seq→head: each rank attends all tokens of
the chunk with H/P heads against its **head-sharded** KV cache (all cached tokens, H/P heads),
then o goes back head→seq (spec §5.4). With ``kv_comm="nvfp4"`` k and v cross the wire as NVFP4
(3.56× fewer bytes than BF16) and land in an FP4 cache without a second quantization
(``FP4KVCache.update_quantized``); LongLive-2.0 only simulated this (``QK_QUANT_SIM``).

The sampler update is elementwise, so every rank keeps only its frames through the denoising
steps; the clean chunk is all-gathered once per chunk (for the decoder on rank 0). Every rank
draws the same full-chunk noise from the same seed, so a P-rank run reproduces the 1-rank run
up to float rounding (exactly the same math with ``kv_comm="bf16"``).

Constraints (checked before any GPU work): heads % P == 0 and (latent frames per chunk) % P == 0
(LongLive 5B: 24 heads, 8 frames → P ∈ {1, 2, 4, 8}).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longlive.model.attention import AttentionBackend

from .cache_policy import attend_with_cache

__all__ = ["KV_COMMS", "SPCacheAttention", "SPGroup", "check_sp_size", "init_from_env"]

KV_COMMS = ("bf16", "nvfp4", "fp8")
TRANSPORTS = ("nccl", "peer")
KV_SCALINGS = ("current", "delayed")


def check_sp_size(config, world_size: int) -> None:
    """Raise ``ValueError`` unless ``world_size`` ranks can split ``config``'s heads and chunk frames."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"sequence-parallel size must be a positive int, got {world_size!r}")
    frames = config.ar.chunk_frames // config.patch_size[0]
    bad = []
    if config.num_heads % world_size:
        bad.append(f"{config.num_heads} attention heads")
    if frames % world_size:
        bad.append(f"{frames} latent frames per chunk")
    if bad:
        ok = [
            p
            for p in range(1, max(config.num_heads, frames) + 1)
            if config.num_heads % p == 0 and frames % p == 0
        ]
        raise ValueError(
            f"sequence-parallel size {world_size} does not divide the {' and the '.join(bad)} of config "
            f"{config.name!r}; valid sizes: {ok}"
        )


@dataclass
class SPGroup:
    """A sequence-parallel process group and this process's place in it.

    Parameters
    ----------
    group : ProcessGroup or None
        The SP group (None = the default group).
    kv_comm : {"bf16", "nvfp4", "fp8"}
        Wire format of k and v in the seq→head all-to-all (q and o always travel in BF16).
    transport : {"nccl", "peer"}
        How the exchanges travel: the process group's all-to-all, or stores into the peers'
        symmetric memory (GPUs of one node; bf16 k/v only), see ``UlyssesAttention(transport=)``.
    kv_scaling : {"current", "delayed"}
        NVFP4 k/v tensor scale: the group amax of each call (an amax pass and a 4-byte all-reduce
        per layer call), or delayed scaling per layer from the amaxes earlier calls observed
        (``DelayedScaling``: no amax pass, no extra collective; a jump of the amax beyond 2× the
        recent one clips for a few calls).
    """

    group: object = None
    kv_comm: str = "bf16"
    transport: str = "nccl"
    kv_scaling: str = "current"

    def __post_init__(self):
        if self.kv_comm not in KV_COMMS:
            raise ValueError(f"kv_comm must be one of {KV_COMMS}, got {self.kv_comm!r}")
        if self.kv_scaling not in KV_SCALINGS:
            raise ValueError(f"kv_scaling must be one of {KV_SCALINGS}, got {self.kv_scaling!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group) if dist.is_initialized() else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """This rank's share of ``x`` along ``dim`` (latent frames)."""
        return x.chunk(self.world_size, dim=dim)[self.rank]

    def gather(self, x: torch.Tensor, dim: int = 2) -> torch.Tensor:
        """Concatenate every rank's ``x`` along ``dim`` in rank order (all ranks get the result)."""
        p = self.world_size
        if p == 1:
            return x
        x = x.contiguous()
        out = torch.empty((p * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, x, group=self.group)
        return torch.cat(out.chunk(p, dim=0), dim=dim)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)


def init_from_env(
    *, device: str | None = None, timeout_s: float = 600.0
) -> tuple[SPGroup | None, torch.device | None]:
    """Initialise the default process group from torchrun's environment (``WORLD_SIZE`` > 1).

    Returns ``(SPGroup, device)`` with NCCL and ``cuda:LOCAL_RANK`` when CUDA is available, gloo and
    CPU otherwise; ``(None, None)`` outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None, None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        for k, v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}.items():
            os.environ.setdefault(k, v)
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": dev} if use_cuda else {}),
        )
    return SPGroup(), dev


class SPCacheAttention(AttentionBackend):
    """Ulysses self-attention over a head-sharded KV cache for one forward.

    q, k, v [B, L/P, H, D] (this rank's tokens) → all-to-all seq→head → the cache update for the
    chunk (``chunk=None``: the current one) and attention over [context | chunk] with H/P heads →
    all-to-all head→seq. ``context`` restricts the attended cached chunks (re-cache forwards).
    """

    name = "sp_kv_cache"

    def __init__(self, sp: SPGroup, cache, *, chunk: int | None = None, context=None, compute: str = "bf16"):
        from longlive_kernels.comm import UlyssesAttention

        self.sp, self.cache, self.chunk, self.compute = sp, cache, chunk, compute
        self.context = None if context is None else [c for c in context if chunk is None or c < chunk]
        if sp.transport == "peer" and sp.kv_comm != "bf16":
            raise ValueError(f"SP transport 'peer' sends bf16 k/v: set kv_comm='bf16', got {sp.kv_comm!r}")
        quantized = sp.kv_comm != "bf16"
        to_cache = (
            quantized
            and sp.kv_comm == "nvfp4"
            and getattr(cache, "storage", "bf16") == "fp4"
            and hasattr(cache, "update_quantized")
        )
        self._packed = to_cache
        self.ulysses = UlyssesAttention(
            self._attend,
            sp.group,
            kv_format=sp.kv_comm if quantized else None,
            kv_output="nvfp4" if to_cache else "dequantized",
            tensor_scale="delayed" if sp.kv_scaling == "delayed" and sp.kv_comm == "nvfp4" else "auto",
            check_ranks="never",
            transport=sp.transport,
        )

    def _attend(self, q, k, v, *, layer):
        cache = self.cache
        if self._packed:  # NVFP4 codes go into the FP4 cache as they came off the wire
            cache.update_quantized(layer, k, v, chunk_id=self.chunk)
            backend = "torch" if q.device.type == "cpu" else "auto"
            k, v = k.dequantize(q.dtype, backend=backend), v.dequantize(q.dtype, backend=backend)
        else:
            cache.update(layer, k, v, chunk_id=self.chunk)
        return attend_with_cache(q, k, v, cache, layer, self.context, compute=self.compute)

    def __call__(self, q, k, v, *, layer):
        return self.ulysses(q, k, v, layer=layer)
