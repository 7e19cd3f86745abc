"""Where a training step's batch comes from (``shared/docs/longlive-spec.md`` §5.3).

The SP root of each group reads the items (step-indexed :class:`~longlive.train.data.StepSampler`)
and broadcasts their prompts and loss masks; then every rank gets the latents of its own frames:
cached or random latents are sliced and sent by the root, raw clips are cut into halo windows
that each rank VAE-encodes (balanced layout) or broadcast whole and encoded on every rank (naive
layout, the baseline). Prompts are encoded on every rank for its share of the sequence.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longlive.train.data import StepSampler, build_dataset, collate_items
from longlive.train.objective import drop_captions, step_generator
from longlive.train.sp import encode_halo_window, plan_halo_windows, rank_slice, scatter_raw_windows

__all__ = ["SPBatchMixin"]


class SPBatchMixin:
    """The data path of :class:`~longlive.train.trainer.Trainer`: loader, SP distribution, text encoding.

    Notes
    -----
    The host class provides ``cfg``, ``device``, ``pctx``, ``slice``, ``num_frames``, ``vae``,
    ``text``, ``cache``, ``step``, ``skipped_files`` and ``_loader_iter`` (the iterator of
    :meth:`_make_loader`, on SP root ranks only).
    """

    def _make_loader(self):
        cfg = self.cfg
        ds = build_dataset(cfg, None if cfg.data.kind == "random" else self.vae, model_cfg=cfg.model)
        sampler = StepSampler(
            len(ds),
            cfg.train.batch_size,
            dp_rank=self.pctx.dp_rank,
            dp_size=self.pctx.dp_size,
            seed=cfg.train.seed,
            start_step=self.step,
            shuffle=cfg.data.kind == "video_folder",
        )
        nw = cfg.data.num_workers
        loader = torch.utils.data.DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=nw,
            collate_fn=collate_items,
            pin_memory=self.device.type == "cuda",
            persistent_workers=nw > 0,
            prefetch_factor=4 if nw > 0 else None,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        return iter(loader)

    def _sp_broadcast(self, obj):
        if self.pctx.sp_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=self.pctx.sp_root, group=self.pctx.sp_group)
        return box[0]

    def _comm_device(self):
        return self.device if dist.get_backend(self.pctx.sp_group) == "nccl" else torch.device("cpu")

    def _local_latents(self, item: dict | None, meta: dict) -> torch.Tensor:
        """Latents [1, C, F_local, H', W'] of this rank's frames for one sample."""
        ctx, s, p = self.pctx, self.slice, self.pctx.sp_size
        root = ctx.sp_rank == 0
        if meta["kind"] == "latents":
            if p == 1:
                return item["latents"][None].to(self.device, torch.float32)
            if root:
                z = item["latents"][None].float()
                for r in range(1, p):
                    rs = rank_slice(s.layout, s.num_frames, s.chunk_frames, p, r)
                    dist.send(
                        z[:, :, rs.frames].to(self._comm_device()).contiguous(),
                        dst=ctx.sp_global_rank(r),
                        group=ctx.sp_group,
                    )
                return z[:, :, s.frames].to(self.device)
            buf = torch.empty(
                meta["latent_shape"][:2] + [s.num_local] + meta["latent_shape"][3:],
                device=self._comm_device(),
            )
            dist.recv(buf, src=ctx.sp_root, group=ctx.sp_group)
            return buf.to(self.device)
        vae_dtype = self._vae_dtype()
        with torch.no_grad():
            if s.layout == "balanced" and p > 1:
                windows = plan_halo_windows(
                    s.num_frames, p, halo=self.cfg.vae.halo_latents, temporal_stride=self.vae.temporal_stride
                )
                video = item["video"][None] if root else None
                win = scatter_raw_windows(video, windows, ctx, device=self.device)
                z = encode_halo_window(self.vae, win.to(vae_dtype), windows[ctx.sp_rank]).float()
                if root and self.cache is not None:
                    parts = [torch.empty_like(z) for _ in range(p)]
                    dist.gather(z, parts, dst=ctx.sp_root, group=ctx.sp_group)
                    self.cache.store(
                        meta["index"],
                        torch.cat(parts, 2)[0],
                        meta["prompts"],
                        torch.tensor(meta["loss_mask"]),
                    )
                elif self.cache is not None:
                    dist.gather(z, None, dst=ctx.sp_root, group=ctx.sp_group)
                return z
            video = item["video"] if root else None
            if p > 1:  # the baseline: every rank gets and encodes the whole clip
                shape = meta["video_shape"]
                buf = (
                    video.to(self._comm_device()).contiguous()
                    if root
                    else torch.empty(shape, device=self._comm_device())
                )
                dist.broadcast(buf, src=ctx.sp_root, group=ctx.sp_group)
                video = buf
            z = self.vae.encode(video[None].to(self.device, vae_dtype)).float()
            if root and self.cache is not None:
                self.cache.store(meta["index"], z[0], meta["prompts"], torch.tensor(meta["loss_mask"]))
            return z[:, :, s.frames]

    def _vae_dtype(self) -> torch.dtype:
        p = next(iter(self.vae.parameters()), None)
        return p.dtype if p is not None else torch.float32

    def _next_batch(self):
        """(z_local [B, C, F_l, H', W'], context [B, S_l, Lt, D], frame mask [B, F] or None, valid frames)."""
        items = next(self._loader_iter) if self.pctx.sp_rank == 0 else None
        metas = None
        if items is not None:
            metas = []
            for it in items:
                self.skipped_files.update(it.get("skipped", []))
                m = {
                    "kind": "latents" if "latents" in it else "video",
                    "prompts": list(it["prompts"]),
                    "loss_mask": [bool(x) for x in it["loss_mask"]],
                    "index": int(it["index"]),
                }
                m["latent_shape" if "latents" in it else "video_shape"] = list(
                    (it["latents"] if "latents" in it else it["video"]).shape
                )
                if m["kind"] == "latents":
                    m["latent_shape"] = [1] + m["latent_shape"]
                metas.append(m)
        metas = self._sp_broadcast(metas)
        zs = [self._local_latents(items[i] if items is not None else None, m) for i, m in enumerate(metas)]
        z = torch.cat(zs, 0)
        if z.shape[2] != self.slice.num_local:
            raise ValueError(
                f"sample has {z.shape[2]} latent frames on this rank, expected {self.slice.num_local} "
                f"(F={self.num_frames}, layout {self.slice.layout}, P={self.pctx.sp_size})"
            )
        cf, b = self.cfg.model.ar.chunk_frames, len(metas)
        nprompts = len(metas[0]["prompts"])
        ps = self.slice.prompt_slice(nprompts)
        per_sample = [m["prompts"][ps] for m in metas]
        if self.cfg.train.caption_dropout > 0:
            gen = step_generator(self.cfg.train.seed + 1, self.step, self.pctx.dp_rank)
            per_sample = drop_captions(per_sample, self.cfg.train.caption_dropout, gen)
        prompts = [pr for sample in per_sample for pr in sample]
        emb, _ = self.text.encode(prompts)
        ctx = emb.to(self.device).view(b, ps.stop - ps.start, *emb.shape[1:])
        mask = torch.tensor([m["loss_mask"] for m in metas], dtype=torch.bool, device=self.device)
        if mask.all():
            return z, ctx, None, b * self.num_frames
        if mask.shape[1] != self.num_frames // cf:
            raise ValueError(f"loss_mask has {mask.shape[1]} chunks, expected {self.num_frames // cf}")
        frame_mask = mask.repeat_interleave(cf, dim=1)
        return z, ctx, frame_mask, int(frame_mask.sum().item())
