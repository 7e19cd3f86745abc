"""Teacher-forcing training iteration time: no SP vs naive SP vs Balanced SP vs Balanced SP + NVFP4
(the paper's Table 1), on 2×/4×H200 with torchrun.

What one iteration is: ``Trainer.train_step`` of ``longlive.train`` — the SP root reads a sample of
random latents and sends each rank its frames, prompts are encoded (hashed test double at the
model's text width), ε and per-chunk timesteps are drawn, the DiT runs teacher forcing over
[clean ; noisy] with Ulysses all-to-alls around the tile-level §5.2 FlexAttention mask, backward
with activation checkpointing, FSDP2 bf16 mixed precision (fp32 master weights, fp32 reduce), grad
clip, AdamW, EMA. Batch 1 per SP group. ``--vae`` also times the VAE encode stage of the same clip
(random-weight Wan2.2 VAE, bf16, 704×1280): naive SP = every rank encodes the whole clip (the root
broadcasts the raw frames; ``--naive-vae halo``: the halo window of the rank's 2F/P latents instead),
Balanced SP = each rank encodes the §5.3 halo window of its F/P latents (raw windows sent P2P from
the root); no SP = every GPU encodes its own whole clip.

Where the difference comes from: with Ulysses the attention is head-parallel over the *global*
sequence, so both layouts do the same attention and linear work per rank; the DiT step differs only
in the head/loss (on half the ranks for naive). Balanced SP's structural gain is that a rank needs
the latents of F/P frames instead of 2F/P (or all F), which the encode stage turns into time.

Modes (world = W GPUs): ``nosp`` (P = 1, DP = W: each GPU its own sample; the iteration latency of
one sample on one GPU), ``naive`` (P = W, the [clean ; noisy] sequence cut in W pieces: clean context
on the first W/2 ranks, all loss-bearing frames on the last W/2), ``balanced`` (P = W, every rank
both copies of F/W frames), ``balanced_nvfp4`` (+ NVFP4 QAT linears, ``NVFP4Linear(trainable=True)``
with the paper's Four-Over-Six recipe; on Hopper the FP4 GEMMs decode to BF16/FP8 tensor cores).

Clips (5B geometry, 704×1280, 24 fps, spec §5.2/§6.1): 16 s = 96 latent frames (381 raw frames),
168,960 tokens with both copies; 32 s = 192 latents (765 raw), 337,920 tokens.

Paper, Table 1 (AR training iteration time in s, 5B, hardware not stated): 16 s: w/o SP 75.3, SP
52.2, Balanced SP 45.8, NVFP4 Balanced SP 40.1; 32 s: 202.7, 162.7, 136.8, 119.3 → Balanced/naive
1.14× (16 s) and 1.19× (32 s).

Run:
    torchrun --nproc-per-node 2 bench/train/bench_train.py --quick          # < 3 min
    torchrun --nproc-per-node 2 bench/train/bench_train.py --cpu-smoke      # (CPU, gloo) script check only
    torchrun --nproc-per-node 2 bench/train/bench_train.py                  # small-1.3b, 16 s + 32 s
    torchrun --nproc-per-node 4 bench/train/bench_train.py --model wan2.2-ti2v-5b --seconds 16 --vae
    torchrun --nproc-per-node 2 bench/train/bench_train.py --json out.json --append-results bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import pytest
import torch
import torch.distributed as dist

PAPER = {
    16: {"nosp": 75.3, "naive": 52.2, "balanced": 45.8, "balanced_nvfp4": 40.1},
    32: {"nosp": 202.7, "naive": 162.7, "balanced": 136.8, "balanced_nvfp4": 119.3},
}
LATENTS_PER_SECOND = 6  # 5B geometry: 96 latent frames per 16 s (381 raw frames at 24 fps)
MODES = ("nosp", "naive", "balanced", "balanced_nvfp4")
_VAE: dict = {}
# --cpu-smoke: the same code path on gloo with a 2-block 64-wide model (checks the script, not speed)
SMOKE = {"on": False}
SMOKE_MODEL = {
    "preset": "tiny",
    "num_layers": 2,
    "dim": 64,
    "num_heads": 4,
    "ffn_dim": 128,
    "latent_size": [4, 4],
    "text_len": 8,
    "ar": {"chunk_frames": 8},
}


def _cuda() -> bool:
    return not SMOKE["on"]


def _run_config(model: str, layers: int | None, frames: int, mode: str, world: int, ops: str, tmp: str):
    from longlive.train.config import RunConfig

    mdl: dict = dict(SMOKE_MODEL) if SMOKE["on"] else {"preset": model}
    if layers:
        mdl["num_layers"] = layers
    sp = 1 if mode == "nosp" else world
    smoke = {"device": "cpu", "precision": "fp32", "attention": "sdpa", "ops": "torch"} if SMOKE["on"] else {}
    return RunConfig.from_dict(
        {
            "model": mdl,
            "train": {
                "steps": 10**6,
                "batch_size": 1,
                "precision": "bf16",
                "linear": "nvfp4" if mode.endswith("nvfp4") else "bf16",
                "activation_checkpointing": True,
                "ops": ops,
                "attention": "flex",
                "seed": 0,
                **smoke,
            },
            "optim": {"lr": 1e-5, "betas": [0.0, 0.999], "grad_clip": 10.0},
            "ema": {"decay": 0.99, "start_step": 0},
            "parallel": {"sp_size": sp, "layout": "naive" if mode == "naive" else "balanced", "fsdp": "true"},
            "data": {"kind": "random", "num_chunks": frames // 8, "num_workers": 0 if SMOKE["on"] else 2},
            "text": {"name": "hash"},
            "checkpoint": {"dir": tmp, "resume": "never", "every": 0},
        }
    )


def _max_over_ranks(x: float) -> float:
    t = torch.tensor([x], device="cuda" if _cuda() else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def time_train_step(
    model: str, layers: int | None, frames: int, mode: str, *, warmup: int, iters: int, ops: str
) -> dict:
    """Median iteration time (max over ranks) and peak memory of one mode."""
    from longlive.train.trainer import Trainer

    world = dist.get_world_size()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(_run_config(model, layers, frames, mode, world, ops, tmp), log=None)
        try:
            for _ in range(warmup):
                loss, _ = trainer.train_step()
                loss.item()
            if _cuda():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(iters):
                dist.barrier()
                t0 = time.perf_counter()
                loss, _ = trainer.train_step()
                loss.item()
                times.append(_max_over_ranks(time.perf_counter() - t0))
            peak = _max_over_ranks(torch.cuda.max_memory_allocated() / 2**30 if _cuda() else 0.0)
            tokens = 2 * frames * trainer.cfg.model.tokens_per_frame
            return {
                "iter_s": statistics.median(times),
                "peak_gb": peak,
                "tokens": tokens,
                "sp": trainer.pctx.sp_size,
                "dp": trainer.pctx.dp_size,
                "loss": float(loss),
            }
        finally:
            trainer.close()
            del trainer
            gc.collect()
            if _cuda():
                torch.cuda.empty_cache()


def time_vae_encode(frames: int, mode: str, *, iters: int, halo: int = 28, naive_vae: str = "full") -> float:
    """Encode time (max over ranks) of one clip with a random-weight Wan2.2 VAE (bf16, 704×1280).

    ``naive_vae="halo"`` gives the naive layout the §5.3 trick too: rank r needs latents
    [(r mod P/2)·2F/P, +2F/P), so it encodes the halo window of that 2F/P-frame slice."""
    import dataclasses

    from longlive.model.vae import WanVAE
    from longlive.train.sp import ParallelContext, encode_halo_window, plan_halo_windows, scatter_raw_windows

    world, rank = dist.get_world_size(), dist.get_rank()
    dev = torch.device("cuda", torch.cuda.current_device())
    if "vae" not in _VAE:
        _VAE["vae"] = WanVAE().to(dev, torch.bfloat16).eval().requires_grad_(False)
    vae = _VAE["vae"]
    raw = 1 + 4 * (frames - 1)
    ctx = ParallelContext(
        world_size=world,
        rank=rank,
        sp_size=world,
        sp_rank=rank,
        dp_size=1,
        dp_rank=0,
        sp_group=dist.group.WORLD,
    )
    own = rank == 0 or mode == "nosp"  # no SP: every GPU encodes its own sample
    video = torch.randn(1, 3, raw, 704, 1280, device=dev, dtype=torch.bfloat16) if own else None
    times = []
    with torch.no_grad():
        for i in range(iters + 1):
            dist.barrier()
            t0 = time.perf_counter()
            if mode == "balanced" or (mode == "naive" and naive_vae == "halo"):
                if mode == "balanced":
                    windows = plan_halo_windows(frames, world, halo=halo, temporal_stride=4)
                else:
                    half = plan_halo_windows(frames, max(1, world // 2), halo=halo, temporal_stride=4)
                    windows = [dataclasses.replace(half[r % len(half)], rank=r) for r in range(world)]
                win = scatter_raw_windows(video, windows, ctx, device=dev)
                encode_halo_window(vae, win, windows[rank])
            elif mode == "naive":
                buf = (
                    video
                    if rank == 0
                    else torch.empty(1, 3, raw, 704, 1280, device=dev, dtype=torch.bfloat16)
                )
                dist.broadcast(buf, src=0)
                vae.encode(buf)
            else:  # no SP: every GPU encodes its own whole clip
                vae.encode(video)
            torch.cuda.synchronize()
            if i:  # the first call is warm-up
                times.append(_max_over_ranks(time.perf_counter() - t0))
    del video
    gc.collect()
    torch.cuda.empty_cache()
    return statistics.median(times)


def _fmt_table(rows: list[dict], world: int, header: str) -> str:
    out = [
        header,
        "",
        (
            "| model | layers | clip | latents | tokens | mode | SP×DP | iter (s) | +VAE (s) | samples/s/GPU | peak GB "
            "| naive / mode | paper naive / mode |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    naive = {(r["model"], r["seconds"]): r for r in rows if r["mode"] == "naive" and "iter_s" in r}
    for r in rows:
        if "error" in r:
            out.append(
                f"| {r['model']} | {r['layers']} | {r['seconds']} s | {r['frames']} | | {r['mode']} | | "
                f"{r['error']} | | | | | |"
            )
            continue
        base = naive.get((r["model"], r["seconds"]))
        ratio = f"{base['iter_s'] / r['iter_s']:.2f}×" if base else ""
        e2e = ""
        if "vae_s" in r:
            e2e = f"{r['iter_s'] + r['vae_s']:.2f}"
            if base and "vae_s" in base:
                ratio += f" (+VAE {(base['iter_s'] + base['vae_s']) / (r['iter_s'] + r['vae_s']):.2f}×)"
        paper = PAPER.get(r["seconds"], {}) if r["frames"] == r["seconds"] * LATENTS_PER_SECOND else {}
        pr = f"{paper['naive'] / paper[r['mode']]:.2f}×" if paper else ""
        sps = 1.0 / r["iter_s"] / r["sp"]
        out.append(
            f"| {r['model']} | {r['layers']} | {r['seconds']} s | {r['frames']} | {r['tokens']:,} | {r['mode']} "
            f"| {r['sp']}×{r['dp']} | {r['iter_s']:.3f} | {e2e} | {sps:.4f} | {r['peak_gb']:.1f} | {ratio} | {pr} |"
        )
    return "\n".join(out)


def run(args) -> list[dict]:
    world = dist.get_world_size()
    rows = []
    for model in args.model:
        layers = args.layers
        for seconds in args.seconds:
            frames = args.frames or seconds * LATENTS_PER_SECOND
            for mode in args.modes:
                row = {
                    "model": model,
                    "layers": layers or "all",
                    "seconds": seconds,
                    "frames": frames,
                    "mode": mode,
                }
                if mode != "nosp" and (frames % (world * 8) or (mode == "naive" and world % 2)):
                    row["error"] = f"n/a: {frames} latents not divisible by P·8 = {world * 8}"
                    rows.append(row)
                    continue
                try:
                    row.update(
                        time_train_step(
                            model, layers, frames, mode, warmup=args.warmup, iters=args.iters, ops=args.ops
                        )
                    )
                    if args.vae:
                        row["vae_s"] = time_vae_encode(
                            frames,
                            mode.removesuffix("_nvfp4"),
                            iters=max(1, args.iters // 2),
                            naive_vae=args.naive_vae,
                        )
                except (
                    torch.OutOfMemoryError
                ):  # every rank runs the same shapes, so all ranks hit it together
                    row["error"] = "OOM"
                    gc.collect()
                    torch.cuda.empty_cache()
                rows.append(row)
                if dist.get_rank() == 0:
                    print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", nargs="+", default=["small-1.3b"], help="model presets (small-1.3b, wan2.2-ti2v-5b)"
    )
    p.add_argument(
        "--seconds", nargs="+", type=int, default=[16, 32], help="clip lengths (6 latents per second)"
    )
    p.add_argument("--frames", type=int, help="override latent frames (multiple of 8·P)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--layers", type=int, help="use only the first N blocks (quick runs)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--ops", default="kernels", choices=("kernels", "torch"))
    p.add_argument(
        "--vae", action="store_true", help="also time the VAE encode stage (random Wan2.2 VAE, 704x1280)"
    )
    p.add_argument(
        "--naive-vae",
        default="full",
        choices=("full", "halo"),
        help="naive-SP encode: every rank the whole clip (default) or the halo window of its 2F/P latents",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="< 3 min (mostly compilation): small-1.3b, 2 blocks, 32 latent frames, 1 warm-up + 3 iterations",
    )
    p.add_argument(
        "--cpu-smoke", action="store_true", help="gloo + a 64-wide 2-block model on CPU (script check)"
    )
    p.add_argument("--json", help="write the rows as JSON")
    p.add_argument("--append-results", help="append the markdown table to this file (e.g. bench/RESULTS.md)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.seconds, args.layers, args.warmup, args.iters = (
            ["small-1.3b"],
            [16],
            args.layers or 2,
            1,
            3,
        )
        args.frames = args.frames or 32  # 2·32·880 = 56,320 tokens; divisible by 8·P for P = 2 and 4
    if args.cpu_smoke:
        SMOKE["on"] = True
        args.seconds, args.frames, args.warmup, args.iters, args.vae = [16], 32, 1, 1, False
    if "WORLD_SIZE" not in os.environ:
        print(
            "run with torchrun, e.g. `torchrun --nproc-per-node 2 bench/train/bench_train.py --quick`",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if SMOKE["on"]:
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=20))
    try:
        t0 = time.perf_counter()
        rows = run(args)
        if dist.get_rank() == 0:
            from longlive_kernels.testing import device_header

            if SMOKE["on"]:
                device_header = lambda: "CPU smoke run (gloo): not a measurement"

            cmd = "torchrun --nproc-per-node {} bench/train/bench_train.py {}".format(
                dist.get_world_size(), " ".join(argv if argv is not None else sys.argv[1:])
            )
            header = (
                f"### Teacher-forcing training iteration ({dist.get_world_size()} GPUs, "
                f"{datetime.date.today()})\n\n{device_header()}\n\n`{cmd}` ({time.perf_counter() - t0:.0f} s)"
            )
            table = _fmt_table(rows, dist.get_world_size(), header)
            print(table)
            if args.json:
                with open(args.json, "w", encoding="utf-8") as fh:
                    json.dump(rows, fh, indent=2)
            if args.append_results:
                with open(args.append_results, "a", encoding="utf-8") as fh:
                    fh.write("\n" + table + "\n")
    finally:
        dist.destroy_process_group()
    return 0


@pytest.mark.gpu
def test_bench_train_step_single_gpu():
    """One bf16 training step of a 2-block small-1.3b on 24 latent frames (one GPU, one-rank group)."""
    from longlive.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _run_config("small-1.3b", 2, 24, "balanced", 1, "kernels", tmp)
        t = Trainer(cfg, log=None)
        try:
            losses = [float(t.train_step()[0]) for _ in range(2)]
        finally:
            t.close()
    assert all(torch.isfinite(torch.tensor(losses)))


if __name__ == "__main__":
    sys.exit(main())
