"""Training data: datasets behind one item format, a resumable step sampler, and a latent cache.

Items (dicts) carry ``prompts`` (one per AR chunk, scene-cut prefix on a shot's first chunk),
``loss_mask`` bool [chunks], ``index`` int, and either ``video`` float32 [3, T, H, W] in [−1, 1]
(raw frames, encoded by the trainer with the SP-aware halo encode) or ``latents`` float [C, F, H', W']
(from the latent cache or random data). The video-folder set reports the clips it skipped
(unreadable or without caption) in ``skipped``, so the trainer can count them across workers.

:class:`StepSampler` makes the data order a pure function of (seed, step, DP rank): a resumed run
reads exactly the samples the uninterrupted run would have read.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from longlive.data import ProceduralConfig, ProceduralVideoDataset, VideoFolderDataset
from longlive.data.prompts import chunk_frame_counts

__all__ = [
    "LatentCache",
    "RandomLatentDataset",
    "StepSampler",
    "TrainDataset",
    "build_dataset",
    "collate_items",
]


class StepSampler(torch.utils.data.Sampler):
    """Batches of dataset indices from step ``start_step`` on (endless).

    Step k, data-parallel rank d, slot i reads global position p = (k·dp + d)·B + i; with
    ``shuffle`` the index is ``perm_e[p mod n]`` with e = p // n and perm_e a permutation seeded by
    (seed, e), otherwise ``p mod n``.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
    ):
        self.n, self.batch_size, self.dp_rank, self.dp_size = num_samples, batch_size, dp_rank, dp_size
        self.seed, self.start_step, self.shuffle = seed, start_step, shuffle
        self._perms: dict[int, torch.Tensor] = {}

    def _index(self, pos: int) -> int:
        epoch, off = divmod(pos, self.n)
        if not self.shuffle:
            return off
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return int(self._perms[epoch][off])

    def indices(self, step: int) -> list[int]:
        base = (step * self.dp_size + self.dp_rank) * self.batch_size
        return [self._index(base + i) for i in range(self.batch_size)]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.indices(step)
            step += 1

    def __len__(self) -> int:  # endless; DataLoader only needs it for warnings
        return 2**62


class LatentCache:
    """One ``<index>.safetensors`` per sample: ``latents`` [C, F, H', W'] + prompts/loss mask in the metadata.

    Files are written atomically (temp file + rename), so concurrent readers never see a partial file.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.root / f"{index:09d}.safetensors"

    def load(self, index: int) -> dict | None:
        p = self.path(index)
        if not p.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            lat = fh.get_tensor("latents")
        return {
            "latents": lat,
            "prompts": json.loads(meta["prompts"]),
            "loss_mask": torch.tensor(json.loads(meta["loss_mask"]), dtype=torch.bool),
            "index": index,
        }

    def store(self, index: int, latents: torch.Tensor, prompts: list[str], loss_mask: torch.Tensor) -> None:
        from safetensors.torch import save_file

        p = self.path(index)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        save_file(
            {"latents": latents.detach().cpu().contiguous()},
            str(tmp),
            metadata={"prompts": json.dumps(list(prompts)), "loss_mask": json.dumps(loss_mask.tolist())},
        )
        os.replace(tmp, p)


class RandomLatentDataset(torch.utils.data.Dataset):
    """Random unit-variance latents and per-chunk placeholder prompts (timing runs, smoke tests)."""

    def __init__(self, num_samples: int, shape: tuple[int, int, int, int], num_chunks: int, *, seed: int = 0):
        self.num_samples, self.shape, self.num_chunks, self.seed = num_samples, tuple(shape), num_chunks, seed

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return {
            "latents": torch.randn(self.shape, generator=g),
            "prompts": [
                f"a random scene, chunk {c}" for c in range(self.num_chunks)
            ],  # cached by the encoder
            "loss_mask": torch.ones(self.num_chunks, dtype=torch.bool),
            "index": index,
        }


class TrainDataset(torch.utils.data.Dataset):
    """Wraps a procedural / video-folder set: latent-cache lookup, skipped-clip reporting, and
    samples that yield no chunk replaced by the next index (with a warning naming the sample)."""

    def __init__(self, base, *, cache: LatentCache | None = None, max_retries: int = 16):
        self.base, self.cache, self.max_retries = base, cache, max_retries

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        if self.cache is not None:
            hit = self.cache.load(index)
            if hit is not None:
                return hit
        skipped_before = set(getattr(self.base, "skipped", {}))
        item, last_err = None, None
        for k in range(self.max_retries):
            j = (index + k) % len(self.base)
            try:
                item = dict(self.base[j])
                break
            except (RuntimeError, ValueError) as exc:  # a sample without any readable, captioned chunk
                warnings.warn(f"training data: skipping sample {j}: {exc}", RuntimeWarning, stacklevel=2)
                last_err = exc
        if item is None:
            raise RuntimeError(
                f"training data: {self.max_retries} consecutive samples from index {index} are "
                f"unusable; last error: {last_err}"
            )
        item.pop("truth", None)
        item["index"] = index
        item["skipped"] = sorted(set(getattr(self.base, "skipped", {})) - skipped_before)
        return item


def collate_items(batch: list[dict]) -> list[dict]:
    """Keep items separate: the trainer encodes/scatters them one by one."""
    return batch


def build_dataset(cfg, vae, *, model_cfg) -> torch.utils.data.Dataset:
    """The dataset of ``cfg`` (a :class:`~longlive.train.config.RunConfig`) for ``vae``'s geometry
    (``vae`` may be None for random latents)."""
    d = cfg.data
    cf = model_cfg.ar.chunk_frames
    res_h, res_w = d.height or model_cfg.resolution[0], d.width or model_cfg.resolution[1]
    cache = LatentCache(d.latent_cache) if d.latent_cache else None
    if d.kind == "random":
        lh, lw = model_cfg.latent_size
        return RandomLatentDataset(
            d.num_samples,
            (model_cfg.in_channels, d.num_chunks * cf, lh, lw),
            d.num_chunks,
            seed=cfg.train.seed,
        )
    first, later = chunk_frame_counts(cf, vae.temporal_stride)
    if d.kind == "procedural":
        pcfg = ProceduralConfig(
            height=res_h,
            width=res_w,
            fps=d.fps or 8.0,
            num_chunks=d.num_chunks,
            first_chunk_frames=first,
            chunk_frames=later,
        )
        base = ProceduralVideoDataset(d.num_samples, pcfg, base_seed=cfg.train.seed * 1_000_003)
    else:
        base = VideoFolderDataset(
            d.root,
            height=res_h,
            width=res_w,
            target_fps=d.fps or 24.0,
            first_chunk_frames=first,
            chunk_frames=later,
            num_chunks=d.num_chunks,
            max_chunks_per_shot=d.max_chunks_per_shot,
            allow_padding=d.allow_padding,
            random_start=d.random_start,
            seed=cfg.train.seed,
        )
    return TrainDataset(base, cache=cache)
