"""The teacher-forcing training loop (``shared/docs/longlive-spec.md`` §5–6).

One step on every rank of an SP group (P ranks, one sample per DP rank and batch slot)::

    SP root reads the items ─ prompts/masks broadcast ─┬─ balanced: raw halo windows sent P2P (§5.3),
                                                       │  each rank VAE-encodes only its window
                                                       └─ naive / P = 1: the full clip, sliced
    ε and one timestep per chunk for the whole video (generator of (seed, step, DP rank)) → local slice
    x_t = (1−σ)z + σε → CausalDiT teacher forcing over [clean ; noisy] with Ulysses all-to-alls
    around the §5.2 mask → per-frame MSE · w(t) / (global valid frames) → backward
    → grads: FSDP2 reduce-scatter (or an all-reduce) → clip → AdamW → EMA

Precision: ``bf16`` wraps the DiT with FSDP2 ``fully_shard`` per block + root
(``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``; fp32 master weights and AdamW
state), also in a single process (a one-rank group); ``fp32`` runs plain fp32 (the reference). NVFP4
QAT swaps the block linears to ``NVFP4Linear(trainable=True)`` (spec §3.6) before sharding.
Activation checkpointing recomputes each block in backward.

Loss normalisation: each rank divides its frames' weighted MSE by the number of valid frames of
the whole sample batch, so the SP group's local losses sum to the single-process loss and the
summed gradients equal its gradients (tested with 2 gloo ranks against one process).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from longlive.model.attention import SequenceParallelAttention
from longlive.model.dit import CausalDiT
from longlive.train.batches import SPBatchMixin
from longlive.train.builders import build_text_encoder, build_vae, resolve_device
from longlive.train.checkpoint import (
    collect_rng_states,
    find_latest_checkpoint,
    gather_full_state,
    read_checkpoint,
    restore_full_state,
    restore_rng_states,
    write_checkpoint,
)
from longlive.train.config import RunConfig
from longlive.train.data import LatentCache
from longlive.train.objective import (
    FlowMatchSchedule,
    add_noise,
    draw_targets,
    frame_mse,
    step_generator,
    weighted_frame_loss,
)
from longlive.train.sp import (
    ParallelContext,
    TeacherForcingAttention,
    init_parallel,
    rank_slice,
    release_parallel_contexts,
)

__all__ = ["Trainer", "build_text_encoder", "build_vae", "resolve_device"]


class Trainer(SPBatchMixin):
    """Teacher-forcing trainer for :class:`~longlive.model.CausalDiT` (single process or torchrun SP × DP).

    Parameters
    ----------
    cfg : RunConfig
        The run (``RunConfig.from_yaml``).
    vae, text_encoder : optional
        Override the modules built from the config (tests).
    log : callable, optional
        Receives each log line (rank 0); default ``print``.

    Attributes
    ----------
    step : int
        Optimizer steps done (restored on resume).
    history : list of dict
        Metrics of every log step.
    """

    def __init__(self, cfg: RunConfig, *, vae=None, text_encoder=None, log=print):
        self.cfg, self._log = cfg, log
        tc, pc = cfg.train, cfg.parallel
        self.device = resolve_device(tc.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        multi = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        fsdp = str(pc.fsdp).lower()
        self.fsdp = (multi or tc.precision == "bf16") if fsdp == "auto" else fsdp == "true"
        self._own_group = False
        if self.fsdp and not (dist.is_available() and dist.is_initialized()):
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self._own_group = True
        self.pctx: ParallelContext = init_parallel(pc.sp_size, device_type=self.device.type)
        self.num_frames = cfg.num_frames
        self.slice = rank_slice(
            pc.layout,
            self.num_frames,
            cfg.model.ar.chunk_frames,
            pc.sp_size,
            self.pctx.sp_rank,
            num_heads=cfg.model.num_heads,
        )
        self.is_logger = self.pctx.rank == 0

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        if self.device.type == "cuda":
            torch.cuda.manual_seed(tc.seed)
        with torch.device(self.device):  # initialise in place (the 5B model takes minutes on a CPU)
            model = CausalDiT(cfg.model, ops=tc.ops)
        model.gradient_checkpointing = tc.activation_checkpointing
        if tc.init:
            from longlive.model.checkpoint import load_checkpoint

            load_checkpoint(model, tc.init)
            log(f"initialised from {tc.init}")
        if tc.linear != "bf16":
            from longlive_kernels.fp4 import NVFP4Recipe

            recipe = NVFP4Recipe.four_over_six() if tc.nvfp4_recipe == "four_over_six" else NVFP4Recipe()
            model.quantize_(tc.linear, trainable=True, recipe=recipe)
        if not self.fsdp and self.pctx.distributed:
            for p in model.parameters():
                dist.broadcast(p.data, src=0)
        if self.fsdp:
            self._shard(model)
        self.model = model
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self.named_params],
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.ema = (
            {n: self._local(p).detach().float().clone() for n, p in self.named_params}
            if cfg.ema.enabled
            else None
        )
        self.schedule = FlowMatchSchedule(1000, shift=tc.timestep_shift, weighting=tc.weighting)
        self._vae = vae  # built on first use (random-latent runs never need it)
        self.text = text_encoder if text_encoder is not None else build_text_encoder(cfg, self.device)
        self.cache = LatentCache(cfg.data.latent_cache) if cfg.data.latent_cache else None
        self.step = 0
        self.history: list[dict] = []
        self.skipped_files: set[str] = set()
        self._attn_cache: dict[int, object] = {}
        self.run_dir = Path(cfg.checkpoint.dir)
        ckpt = self._resume_source()
        if ckpt is not None:
            restore_full_state(self.model, self.optimizer, ckpt, self.ema)
            self.step = ckpt.step
        self._loader_iter = self._make_loader() if self.pctx.sp_rank == 0 else None
        if ckpt is not None:  # last: nothing after this may consume the global generators
            ok = restore_rng_states(
                ckpt.rng,
                self.device,
                rank=self.pctx.rank,
                world_size=self.pctx.world_size,
                saved_world_size=int(ckpt.state.get("world_size", 1)),
            )
            if not ok and self.is_logger:
                warnings.warn(
                    "resumed with another world size: RNG streams not restored (stochastic rounding "
                    "differs from the original run)",
                    stacklevel=2,
                )
            self._print(f"resumed from {ckpt.path} at step {self.step}")
        self._tb = None

    # ---- setup ----------------------------------------------------------------------------------
    @property
    def vae(self):
        if self._vae is None:
            self._vae = build_vae(self.cfg, self.device)
        return self._vae

    def _shard(self, model: CausalDiT) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        # blocks and the DiT return reshaped views; nothing downstream modifies them in place
        warnings.filterwarnings(
            "ignore", message=r"FSDP2-wrapped module \(FSDP(CausalDiT|DiTBlock)\) returned a view tensor"
        )

        param_dtype = torch.bfloat16 if self.cfg.train.precision == "bf16" else None
        # cast_forward_inputs=False: timesteps must reach the sinusoidal embedding in fp32 (bf16 rounds t=999 to 1000)
        mp = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
        mesh = self.pctx.world_mesh
        if mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.device.type, (1,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        register_fsdp_forward_method(model, "forward_teacher_forcing")

    @staticmethod
    def _local(p: torch.Tensor) -> torch.Tensor:
        return p.to_local() if hasattr(p, "to_local") else p

    def _resume_source(self):
        res = self.cfg.checkpoint.resume
        if res == "never":
            return None
        path = find_latest_checkpoint(self.run_dir) if res == "auto" else Path(res)
        if path is None:
            return None
        return read_checkpoint(
            path, expect_model_config=self.cfg.model.to_dict(), expect_linear=self.cfg.train.linear
        )

    def _print(self, msg: str) -> None:
        if self.is_logger and self._log is not None:
            self._log(msg)

    # ---- one step -------------------------------------------------------------------------------
    def _attention(self, frame_len: int):
        """The attention backend for ``frame_len`` tokens per frame, kept across steps: its BlockMask
        is built once, and the compiled FlexAttention sees the same mask_mod (no recompiles)."""
        if frame_len not in self._attn_cache:
            s = self.slice
            inner = TeacherForcingAttention(s.attention_layout(frame_len), impl=self.cfg.train.attention)
            self._attn_cache[frame_len] = (
                SequenceParallelAttention(inner, self.pctx.sp_group) if self.pctx.sp_size > 1 else inner
            )
        return self._attn_cache[frame_len]

    def loss_on(
        self, z: torch.Tensor, ctx: torch.Tensor, frame_mask: torch.Tensor | None, valid: int, step: int
    ) -> torch.Tensor:
        """This rank's share of the teacher-forcing loss for local latents ``z`` (differentiable)."""
        s, cf = self.slice, self.cfg.model.ar.chunk_frames
        b, c, _, h, w = z.shape
        gen = step_generator(self.cfg.train.seed, step, self.pctx.dp_rank, device=self.device)
        tg = draw_targets(self.schedule, (b, c, self.num_frames, h, w), cf, generator=gen, device=self.device)
        noise, sigma, t, wgt = (
            x[:, :, s.frames] if x.dim() == 5 else x[:, s.frames]
            for x in (tg.noise, tg.sigma, tg.timesteps, tg.weight)
        )
        fmask = frame_mask[:, s.frames] if frame_mask is not None else None
        ph, pw = self.cfg.model.patch_size[1:]
        self._frame_tokens = (h // ph) * (w // pw)
        attn = self._attention(self._frame_tokens)
        if "clean" in s.sides and "noisy" in s.sides:
            x_t = add_noise(z, noise, sigma)
            pred = self.model.forward_teacher_forcing(
                z, x_t, t, ctx, chunk_frames=cf, frame_offset=s.start, attention=attn
            )
        elif s.sides == (
            "clean",
        ):  # naive SP: clean context only; joins the backward through the all-to-alls
            out = self.model(z, torch.zeros_like(t), ctx, frame_offset=s.start, attention=attn)
            return out.float().sum() * 0.0
        else:
            pred = self.model(add_noise(z, noise, sigma), t, ctx, frame_offset=s.start, attention=attn)
        per_frame = frame_mse(pred, noise - z)
        return weighted_frame_loss(per_frame, wgt, mask=fmask, normalizer=float(max(valid, 1)))

    def _lr(self, step: int) -> float:
        o = self.cfg.optim
        base = o.lr * min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else o.lr
        if o.schedule == "cosine" and step >= o.warmup_steps:
            frac = (step - o.warmup_steps) / max(1, self.cfg.train.steps - o.warmup_steps)
            base = o.lr * (
                o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            )
        return base

    def forward_backward(self) -> torch.Tensor:
        """Read the next batch, compute the loss and leave the synchronised gradients in ``.grad``
        (DP-averaged, SP-summed: the gradient of the global mean loss). Returns the global loss."""
        z, ctx, fmask, valid = self._next_batch()
        loss = self.loss_on(z, ctx, fmask, valid, self.step)
        # FSDP averages gradients over all world ranks; SP ranks hold parts of one sample's gradient (a sum)
        scale = self.pctx.sp_size if self.fsdp else 1.0
        (loss * scale).backward()
        if not self.fsdp and self.pctx.distributed:
            self._all_reduce_grads()
        gloss = loss.detach().float().clone()
        if self.pctx.distributed:
            dist.all_reduce(gloss)
            gloss /= self.pctx.dp_size
        return gloss

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (global loss, grad norm) as device tensors (no host sync)."""
        gloss = self.forward_backward()
        params = [p for _, p in self.named_params]
        clip = self.cfg.optim.grad_clip
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
        if hasattr(gnorm, "full_tensor"):
            gnorm = gnorm.full_tensor()
        lr = self._lr(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema(self.step + 1)
        self.step += 1
        return gloss, gnorm.detach()

    def _all_reduce_grads(self) -> None:
        grads = [p.grad for _, p in self.named_params if p.grad is not None]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.pctx.dp_size
        off = 0
        for g in grads:
            g.copy_(flat[off : off + g.numel()].view_as(g))
            off += g.numel()

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        if self.ema is None:
            return
        locals_ = [self._local(p).detach() for _, p in self.named_params]
        emas = [self.ema[n] for n, _ in self.named_params]
        if step <= self.cfg.ema.start_step:
            torch._foreach_copy_(emas, [t.float() for t in locals_])
        else:
            torch._foreach_lerp_(emas, [t.float() for t in locals_], 1.0 - self.cfg.ema.decay)

    # ---- loop -----------------------------------------------------------------------------------
    def train(self, steps: int | None = None) -> list[float]:
        """Run until ``steps`` (default ``train.steps``) optimizer steps are done; returns the losses of
        the steps run here (global, averaged over DP)."""
        total = steps if steps is not None else self.cfg.train.steps
        losses: list[torch.Tensor] = []
        window: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        t0, steps0 = time.perf_counter(), self.step
        if self.is_logger:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "config.json", "w", encoding="utf-8") as fh:
                json.dump(self.cfg.to_dict(), fh, indent=2)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start, limit = time.perf_counter(), self.cfg.train.time_limit_minutes
        while self.step < total:
            loss, gnorm = self.train_step()
            losses.append(loss)
            window.append(loss)
            norms.append(gnorm)
            every = self.cfg.checkpoint.every
            if self.step % self.cfg.log.every == 0 or self.step == total:
                self._log_metrics(window, norms, time.perf_counter() - t0, self.step - steps0)
                window, norms, t0, steps0 = [], [], time.perf_counter(), self.step
                if limit is not None and self._out_of_time(time.perf_counter() - start, limit):
                    self._print(f"time limit of {limit} min reached at step {self.step}")
                    total = self.step
            if (every and self.step % every == 0) or self.step == total:
                self.save_checkpoint()
        return [float(x) for x in losses]

    def _out_of_time(self, seconds: float, limit_minutes: float) -> bool:
        flag = torch.tensor([1.0 if seconds > 60.0 * limit_minutes else 0.0], device=self.device)
        if self.pctx.distributed:  # every rank must stop at the same step
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _log_metrics(self, losses, norms, seconds: float, nsteps: int) -> None:
        loss = torch.stack(losses).mean().item()
        gnorm = torch.stack(norms).float().mean().item()
        tc = self.cfg.train
        tokens = 2 * self.num_frames * self._frame_tokens * tc.batch_size * self.pctx.dp_size * nsteps
        rec = {
            "step": self.step,
            "loss": loss,
            "grad_norm": gnorm,
            "lr": self._lr(self.step - 1),
            "it_per_s": nsteps / max(seconds, 1e-9),
            "tokens_per_s": tokens / max(seconds, 1e-9),
            "samples_per_s": tc.batch_size * self.pctx.dp_size * nsteps / max(seconds, 1e-9),
            "skipped_videos": len(self.skipped_files),
        }
        if self.device.type == "cuda":
            rec["mem_alloc_gb"] = torch.cuda.memory_allocated(self.device) / 2**30
            rec["mem_peak_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        self.history.append(rec)
        if not self.is_logger:
            return
        mem = f" mem {rec['mem_alloc_gb']:.1f}/{rec['mem_peak_gb']:.1f} GB" if "mem_peak_gb" in rec else ""
        skip = f" skipped videos {rec['skipped_videos']}" if rec["skipped_videos"] else ""
        self._print(
            f"step {self.step:>7d} loss {loss:.4f} gnorm {gnorm:.3f} lr {rec['lr']:.2e} "
            f"{rec['it_per_s']:.2f} it/s {rec['tokens_per_s']:,.0f} tok/s{mem}{skip}"
        )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.cfg.log.tensorboard:
            self._tensorboard(rec)

    def _tensorboard(self, rec: dict) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn(
                    "log.tensorboard is on but tensorboard is not installed; metrics.jsonl only", stacklevel=2
                )
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self._tb:
            for k, v in rec.items():
                if k != "step":
                    self._tb.add_scalar(f"train/{k}", v, rec["step"])

    # ---- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Gather the full state (collective) and write ``<checkpoint.dir>/step_<N>`` on rank 0."""
        model_sd, optim_sd, ema_sd = gather_full_state(self.model, self.optimizer, self.ema)
        rng = collect_rng_states(self.device)
        path = None
        if self.is_logger:
            state = {
                "model_config": self.cfg.model.to_dict(),
                "linear": self.cfg.train.linear,
                "world_size": self.pctx.world_size,
                "sp_size": self.pctx.sp_size,
                "dp_size": self.pctx.dp_size,
                "run_config": self.cfg.to_dict(),
            }
            path = write_checkpoint(
                self.run_dir,
                self.step,
                model_sd=model_sd,
                optim_sd=optim_sd,
                ema_sd=ema_sd,
                rng=rng,
                state=state,
                keep=self.cfg.checkpoint.keep,
            )
            self._print(f"saved {path}")
        if self.pctx.distributed:
            dist.barrier()
        return path

    def close(self) -> None:
        """Release the one-rank process group this trainer created (if any) and TensorBoard."""
        if self._tb:
            self._tb.close()
        if self._own_group and dist.is_initialized():
            release_parallel_contexts()
            dist.destroy_process_group()
            self._own_group = False
