"""Wan2.2 VAE streaming decode speed: the end-to-end bottleneck of issue 8.

One chunk = 8 latent frames (32 video frames) at 704x1280, decoded by ``WanVAE.stream_decoder()``
after a first chunk (so the causal caches are warm), random weights, bf16. The decoder costs
66.4 TFLOP per latent frame (FlopCounterMode on meta tensors; 531 TFLOP per chunk), so a 24 FPS
stream needs the decode of a chunk in <= 1.33 s: >= 400 TFLOP/s on its own GPU.

Variants: ``decode_latents_per_step`` (latent frames per decoder call; 1 is the official code's
choice, smallest memory) and NCDHW vs channels-last-3d conv weights. Time per chunk: CUDA events,
median of ``--iters`` chunks; ratios against the default (1 latent per step, NCDHW) timed in the
same run.

    python bench/e2e/bench_vae_decode.py                 # H100/H200: ~2 min
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from bench_generate import VAE_TFLOP  # (latent 0, every later latent) decoder TFLOP at 704x1280


def _to_memory_format(vae, channels_last: bool) -> None:
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    for p in vae.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=fmt)


def time_decode(vae, latents_per_step: int, *, chunk_latents: int, iters: int, height: int, width: int):
    """Median seconds to decode one (non-first) chunk, and the peak memory of the run (GB)."""
    dev = next(vae.parameters()).device
    vae.decode_latents_per_step = latents_per_step
    h, w = height // vae.spatial_stride, width // vae.spatial_stride
    g = torch.Generator(device=dev).manual_seed(0)
    make = lambda n: torch.randn(1, vae.latent_channels, n, h, w, device=dev, generator=g)
    decoder = vae.stream_decoder()
    torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode():
        decoder.decode_chunk(make(chunk_latents))  # first chunk: latent 0 alone, caches filled
        decoder.decode_chunk(make(chunk_latents))  # warm-up (cuDNN autotuning of the steady shapes)
        times = []
        for _ in range(iters):
            z = make(chunk_latents)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            decoder.decode_chunk(z)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), torch.cuda.max_memory_allocated(dev) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="decode_latents_per_step values"
    )
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--vae", choices=tuple(VAE_TFLOP), default="wan2.2",
                    help="full Wan2.2 decoder or the LightVAE one (channel-pruned 0.75)")
    ap.add_argument("--layouts", choices=("both", "ncdhw"), default="both",
                    help="conv weight layouts timed (channels-last-3d is the slower one on Hopper)")
    ap.add_argument("--chunk-latents", type=int, default=8)
    ap.add_argument("--height", type=int, default=704)
    ap.add_argument("--width", type=int, default=1280)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_vae_decode needs a CUDA GPU", file=sys.stderr)
        return 2
    from longlive.model import load_vae
    from longlive_kernels.testing import device_header

    torch.backends.cudnn.benchmark = True
    with torch.device("cuda"):
        vae = load_vae(a.vae).to(torch.bfloat16).eval().requires_grad_(False)
    tflop = VAE_TFLOP[a.vae][1] * a.chunk_latents * (a.height * a.width) / (704 * 1280)
    frames = 4 * a.chunk_latents
    print(
        f"# {device_header()} | {a.vae} VAE decode, {a.height}x{a.width}, {a.chunk_latents}-latent chunks "
        f"({frames} frames, {tflop:.0f} TFLOP)"
    )
    rows, base = [], None
    for channels_last in (False, True) if a.layouts == "both" else (False,):
        _to_memory_format(vae, channels_last)
        for n in a.steps:
            sec, peak = time_decode(
                vae, n, chunk_latents=a.chunk_latents, iters=a.iters, height=a.height, width=a.width
            )
            base = base or sec
            rows.append((n, channels_last, sec, peak))
            print(
                f"latents/step {n} {'channels-last' if channels_last else 'NCDHW'}: {sec * 1e3:.0f} ms/chunk, "
                f"{tflop / sec:.0f} TFLOP/s, {frames / sec:.1f} frames/s, peak {peak:.1f} GB",
                flush=True,
            )
    print("\n| latents per step | weights | ms / chunk | TFLOP/s | decoded frames/s | peak GB | speed-up |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n, cl, sec, peak in rows:
        print(
            f"| {n} | {'channels-last-3d' if cl else 'NCDHW'} | {sec * 1e3:.0f} | {tflop / sec:.0f} | "
            f"{frames / sec:.1f} | {peak:.1f} | {base / sec:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
