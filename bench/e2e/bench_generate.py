"""End-to-end streaming generation with the 5B model (issue 8 benchmark).

Setting: ``wan2.2-ti2v-5b`` on random weights, 704x1280, chunks of 8 latent frames (7040 tokens,
32 video frames; 29 for chunk 0), 4 UniPC steps + the t=0 re-run per chunk, LongLive's cache policy
(global sink + shot sink + window of 4 chunks = 28,160 keys), one prompt (hash text features,
512 x 4096), 12 chunks = 381 frames = 15.9 s at 24 fps ("16 s of video"); chunks 0-1 are warm-up.

Per mode (linear precision x KV storage):

- DiT-loop FPS: output frames / denoising time of chunks 2.. (decode off; every chunk's forwards
  are device-synchronised at its end). This is what LongLive's "FPS" measures.
- E2E FPS: the same loop with the Wan2.2 VAE (random weights, bf16; ``--vae lightvae``: its decoder
  channel-pruned as Matrix-Game-3.0's MG-LightVAE, which LongLive-2.0's streaming decode uses) decoding each finished chunk
  on a second CUDA stream (or ``--vae-device cuda:1``) while the next chunk denoises, frames
  encoded into an H.264 mp4 on a CPU thread; the steady rate at which frames reach the mp4:
  frames of chunks 2..N-2 / time from chunk 1's frames written to chunk N-2's (the last chunk's
  decode runs alone after the loop, so it is left out), capped by the DiT-loop FPS of the same run
  (frames cannot reach the mp4 faster than the loop makes them; the window alone reads high when
  chunk 1's decode waited for a CUDA-graph capture). "16 s E2E" = wall time of all 12 chunks including warm-up (Table 3's
  metric; model loading excluded).
- peak GPU memory (``max_memory_allocated`` over the E2E run: weights + KV cache + activations +
  VAE on the same GPU; text encoder excluded, it is a stand-in).
- achieved BF16-equivalent TFLOP/s of the DiT (spec §2.9 count, the same for every mode).

Reference rows: LongLive-2.0 Table 3 (GB200, +1 GPU for async decode) and LongLive's code on one
H100 SXM as measured in NVlabs/LongLive#103 (BF16 18.6 FPS loop / 14.1 FPS E2E; FP8 15.5 / 12.3).

Run:
    python bench/e2e/bench_generate.py                          # H100: 6 modes, loop + E2E (~8 min)
    python bench/e2e/bench_generate.py --chunks 4 --modes nvfp4:fp4   # quick check
    python bench/e2e/bench_generate.py --modes fp8:fp4,nvfp4:fp4 --attention-compute fp8
    torchrun --nproc-per-node 2 bench/e2e/bench_generate.py --modes nvfp4:fp4 --decode none --compare-single
                                                                # 2xH200: SP=2 vs one GPU, same run
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import torch

REFERENCE = [  # (label, hardware, DiT FPS, E2E FPS or None, 16 s E2E seconds or None, memory GB or None)
    ("LongLive-2.0 BF16", "GB200 (Table 3)", 24.8, None, 26.6, 36.4),
    ("LongLive-2.0 NVFP4 W4A4", "GB200 (Table 3)", 32.0, None, 22.9, 29.7),
    ("LongLive-2.0 + NVFP4 KV", "GB200 (Table 3)", 29.7, None, 23.8, 19.4),
    ("LongLive-2.0 + async decode (+1 GPU)", "GB200 (Table 3)", 29.7, None, 15.9, 19.4),
    ("LongLive-2.0 BF16 (its code)", "H100 SXM (#103)", 18.6, 14.1, None, None),
    ("LongLive-2.0 FP8 W8A8 + compile", "H100 SXM (#103)", 15.5, 12.3, None, None),
]
# decoder TFLOP at 704x1280 for latent 0 and every later latent (FlopCounterMode on meta tensors)
VAE_TFLOP = {"wan2.2": (20.6, 66.4), "lightvae": (1.30, 4.19)}
ALL_MODES = "bf16:bf16,bf16:fp4,nvfp4:bf16,nvfp4:fp4,fp8:bf16,fp8:fp4"
TARGETS = (
    "targets on one H100: DiT loop >= 32 FPS fastest mode (goal 40), E2E >= 24 FPS, nvfp4+fp4 peak <= 16 GB; "
    "SP=2 on 2xH200 >= 1.7x one GPU"
)


def _chunk_flops(model, chunks: int, steps: int, policy) -> float:
    """DiT FLOPs of ``chunks`` chunks: (steps + 1) forwards each over its attended keys (spec §2.9)."""
    from longlive.inference import plan_chunks

    t = model.config.chunk_tokens
    plans = plan_chunks(policy, [(False, False)] * chunks, frames_per_chunk=model.config.ar.chunk_frames)
    return [(steps + 1) * model.chunk_flops(t, (len(p.context) + 1) * t)["total"] for p in plans]


def _build_model(cfg, precision: str, device, *, ops="kernels"):
    from longlive.inference.pipeline import _default_dtype
    from longlive.model import CausalDiT

    torch.manual_seed(0)
    with torch.device(device), _default_dtype(torch.bfloat16):
        model = CausalDiT(cfg, ops=ops, zero_init_head=False)
    return model.quantize_(precision).eval().requires_grad_(False)


def _profiled(fn, enabled: bool, label: str):
    """Run ``fn`` (one chunk), under torch.profiler when ``enabled``: prints the chunk's wall time
    against the summed GPU kernel time (their gap is host-bound or waiting time) and the top ops."""
    if not enabled:
        return fn()
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernels = sum(e.self_device_time_total for e in events) / 1e3
    print(
        f"# profile {label}: chunk wall {wall * 1e3:.0f} ms (profiled), GPU kernels {kernels:.0f} ms",
        flush=True,
    )
    print(events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60), flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=60), flush=True)
    return out


def run_mode(
    pipe, *, chunks: int, steps: int, warmup: int, decode: str, out_dir: str | None, profile: bool = False
) -> dict:
    """One video through the public session + decoder API; timings per chunk."""
    from longlive.inference import ChunkDecoder, Mp4Writer

    dev = pipe.model.device
    main = pipe.sp is None or pipe.sp.is_main
    writer = None
    written = []  # (frames, time) as each chunk's frames reach the mp4
    if decode != "none" and main:
        path = os.path.join(out_dir, "bench.mp4") if out_dir else None

        if path is not None:
            writer = Mp4Writer(path, fps=pipe.fps)

        def sink(index, frames):
            if writer is not None:
                writer.write(frames)
            written.append((frames.shape[0], time.perf_counter()))

        decoder = ChunkDecoder(pipe.vae, mode=decode, sink=sink)
    else:
        decoder = None
    session = pipe.session(steps=steps, seed=0)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    starts, secs, frames = [], [], []
    last = None
    t_all = time.perf_counter()
    with torch.inference_mode():
        for n in range(chunks):
            starts.append(time.perf_counter())
            out = _profiled(
                lambda: session.next_chunk(pipe.default_prompt),
                profile and main and n == chunks - 1,
                f"chunk {n}, decode={decode}",
            )
            if not (profile and n == chunks - 1):  # the profiled chunk runs slower: not timed
                secs.append(out.seconds)
                frames.append(out.num_frames)
            if decoder is not None:
                decoder.submit(n, out.latents)
            last = out.latents
    if decoder is not None:
        decoder.close()
        if writer is not None:
            writer.close()
    if cuda:
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t_all
    res = {
        "dit_fps": sum(frames[warmup:]) / sum(secs[warmup:]),
        "chunk_ms": 1e3 * sum(secs[warmup:]) / len(secs[warmup:]),
        "frames": sum(frames),
        "wall_s": wall,
        "peak_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if cuda else float("nan"),
        "kv_gb": getattr(session.cache.cache, "nbytes", float("nan")) / 1e9,
        "secs": secs,
        "last_latents": last.float().cpu(),
        "graphs": session.graphs.num_graphs,
        "graphs_off": session.graphs.disabled_reason,
    }
    if written:
        # rate at which frames appear in the output after the warm-up chunks were written; the last
        # chunk is left out when there are others: its decode runs alone after the DiT loop has
        # ended, which would flatter the steady rate whenever the decode shares the GPU
        steady = written[warmup:-1] if len(written) - warmup >= 2 else written[warmup:]
        t0 = written[warmup - 1][1] if warmup >= 1 else starts[0]
        # frames cannot reach the mp4 faster than the loop makes them: the window rate alone is
        # flattered when chunk 1's decode waited for a CUDA-graph capture (the two exclude each other)
        res["e2e_window_fps"] = sum(f for f, _ in steady) / (steady[-1][1] - t0)
        res["e2e_fps"] = min(res["e2e_window_fps"], res["dit_fps"])
        res["e2e_total_fps"] = sum(f for f, _ in written) / (written[-1][1] - t_all)
        res["decode_s_per_chunk"] = decoder.decode_seconds / max(1, decoder.chunks_decoded)
    return res


def _fmt(v, spec="{:.1f}"):
    return "-" if v is None else spec.format(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TARGETS,
    )
    ap.add_argument("--chunks", type=int, default=12, help="chunks per video (12 = 381 frames = 15.9 s)")
    ap.add_argument("--warmup", type=int, default=2, help="leading chunks excluded from FPS")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument(
        "--modes", default=ALL_MODES, help="comma list of precision:kv (precision bf16|nvfp4|w4a16|fp8|fp8_tensor)"
    )
    ap.add_argument(
        "--decode",
        choices=("both", "none", "async", "sync"),
        default="both",
        help="both = a DiT-only run and an async-decode run per mode",
    )
    ap.add_argument("--vae-device", default=None, help="decode GPU (default: the DiT's, second stream)")
    ap.add_argument(
        "--vae",
        choices=tuple(VAE_TFLOP),
        default="wan2.2",
        help="decoder: the full Wan2.2 VAE, or LightVAE (its decoder channel-pruned 0.75, as MG-LightVAE, "
        "the decoder of LongLive-2.0's streaming E2E; ~1/16 of the decode FLOPs)",
    )
    ap.add_argument("--attention-compute", choices=("bf16", "fp8"), default="bf16")
    ap.add_argument("--kv-comm", choices=("bf16", "nvfp4", "fp8"), default="nvfp4", help="SP K/V wire format")
    ap.add_argument("--kv-scaling", choices=("current", "delayed"), default="current",
                    help="NVFP4 K/V tensor scale on the SP wire (SPGroup.kv_scaling)")
    ap.add_argument(
        "--sp-transport", choices=("nccl", "peer"), default="nccl", help="SP exchanges: NCCL or peer stores"
    )
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile the FFN and cross-attention of every block"
    )
    ap.add_argument("--layers", type=int, default=None, help="fewer DiT blocks (debugging only)")
    ap.add_argument("--no-mp4", action="store_true", help="decode but do not encode an mp4")
    ap.add_argument(
        "--vae-channels-last",
        action="store_true",
        help="channels-last-3d VAE conv weights (slower on Hopper: bench_vae_decode.py)",
    )
    ap.add_argument("--no-vae-channels-last", action="store_true", help=argparse.SUPPRESS)  # the default now
    ap.add_argument(
        "--compare-single", action="store_true", help="under torchrun: also time one GPU (rank 0 alone)"
    )
    ap.add_argument(
        "--graphs",
        choices=("on", "off", "both"),
        default="on",
        help="CUDA graphs of the chunk forward (both: off, then on, and compare the latents)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="torch.profiler on the last chunk (rank 0; excluded from FPS)"
    )
    a = ap.parse_args(argv)
    if a.chunks <= a.warmup:
        ap.error(f"--chunks ({a.chunks}) must exceed --warmup ({a.warmup})")
    if not torch.cuda.is_available():
        print("bench_generate needs a CUDA GPU", file=sys.stderr)
        return 2

    from longlive.config import ModelConfig
    from longlive.inference import CachePolicy, Pipeline, check_sp_size
    from longlive.inference.loading import PRECISIONS
    from longlive.inference.pipeline import _default_dtype
    from longlive.inference.sp import init_from_env
    from longlive.model import HashTextEncoder, load_vae
    from longlive_kernels.testing import device_header

    torch.backends.cudnn.benchmark = True  # fixed conv shapes per chunk: let cuDNN pick its fastest conv3d

    modes = [tuple(m.split(":")) for m in a.modes.split(",") if m]
    for prec, kv in modes:
        if prec not in PRECISIONS or kv not in ("bf16", "fp4"):
            ap.error(f"bad mode {prec}:{kv}")
    cfg = ModelConfig.from_name("wan2.2-ti2v-5b")
    if a.layers:
        cfg = cfg.replace(num_layers=a.layers)
    sp, dev = init_from_env()
    if sp is not None:
        check_sp_size(cfg, sp.world_size)
        sp.kv_comm, sp.transport, sp.kv_scaling = a.kv_comm, a.sp_transport, a.kv_scaling
    else:
        dev = torch.device("cuda")
    main_rank = sp is None or sp.is_main
    vdev = torch.device(a.vae_device) if a.vae_device else dev
    with torch.device(vdev), _default_dtype(torch.bfloat16):
        vae = load_vae(a.vae).eval().requires_grad_(False)
    text = HashTextEncoder(cfg.text_dim, cfg.text_len, device=dev)
    prompt = "A corgi surfs a wave at sunset, cinematic lighting, slow motion."
    decodes = {"both": ["none", "async"], "none": ["none"], "async": ["async"], "sync": ["sync"]}[a.decode]
    rows = []
    tmp = tempfile.TemporaryDirectory() if not a.no_mp4 else None
    if main_rank:
        world = sp.world_size if sp is not None else 1
        print(
            f"# {device_header()} | SP={world} | {cfg.name}{f' ({a.layers} layers)' if a.layers else ''} | "
            f"{a.chunks} chunks x {cfg.ar.chunk_frames} latents, {a.steps} steps, warm-up {a.warmup} | "
            f"VAE {a.vae}",
            flush=True,
        )
    for prec, kv in modes:
        model = _build_model(cfg, prec, dev)
        policy = CachePolicy.from_config(cfg, storage=kv)
        flops = _chunk_flops(model, a.chunks, a.steps, policy)
        variants = (
            [("single", None)]
            if sp is None
            else (([("single", None)] if a.compare_single else []) + [(f"SP={sp.world_size}", sp)])
        )
        graph_modes = {"on": [True], "off": [False], "both": [False, True]}[a.graphs]
        variants = [(f"{lab}{'+graphs' if g else ''}", grp, g) for lab, grp in variants for g in graph_modes]
        reference = {}
        for label, group, graphs in variants:
            if group is None and sp is not None and not sp.is_main:
                sp.barrier()  # rank 0 times one GPU alone
                continue
            pipe = Pipeline(
                model,
                vae,
                text,
                policy=policy,
                sp=group,
                attention_compute=a.attention_compute,
                default_prompt=prompt,
                compile=a.compile,
                vae_channels_last=a.vae_channels_last,
                cuda_graphs=graphs,
            )
            for dmode in decodes:
                r = run_mode(
                    pipe,
                    chunks=a.chunks,
                    steps=a.steps,
                    warmup=a.warmup,
                    decode=dmode,
                    out_dir=tmp.name if tmp else None,
                    profile=a.profile,
                )
                timed = len(r["secs"])  # the profiled last chunk is not timed
                r["tflops"] = sum(flops[a.warmup : timed]) / sum(r["secs"][a.warmup :]) / 1e12
                r.update(mode=f"{prec} / KV {kv}", variant=label, decode=dmode)
                rows.append(r)
                ref_key = (group is None, dmode)
                if ref_key in reference:  # same seed, same kernels: graphs must not change the latents
                    r["graph_diff"] = (r["last_latents"] - reference[ref_key]).abs().max().item()
                else:
                    reference[ref_key] = r["last_latents"]
                if main_rank:
                    dec = ""
                    if "decode_s_per_chunk" in r:
                        ms = 1e3 * r["decode_s_per_chunk"]
                        first, per_latent = VAE_TFLOP[a.vae]
                        tf = (first + per_latent * (cfg.ar.chunk_frames * a.chunks - 1)) / a.chunks
                        dec = (f"  decode {ms:.0f} ms/chunk ({tf / ms * 1e3:.0f} TFLOP/s)  "
                               f"E2E window {r['e2e_window_fps']:.1f} FPS")
                    print(
                        f"{r['mode']:>18} {label:>7} decode={dmode:<5} DiT {r['dit_fps']:6.1f} FPS "
                        f"({r['chunk_ms']:.0f} ms/chunk, {r['tflops']:.0f} TFLOP/s)  E2E {_fmt(r.get('e2e_fps'))} FPS  "
                        f"16s-E2E {r['wall_s']:.1f} s  peak {r['peak_gb']:.1f} GB (KV {r['kv_gb']:.2f}){dec}  "
                        f"graphs {r['graphs']}{' OFF: ' + r['graphs_off'] if r['graphs_off'] else ''}"
                        + (f"  max|latents - eager| {r['graph_diff']:.3g}" if "graph_diff" in r else ""),
                        flush=True,
                    )
            if group is None and sp is not None:
                sp.barrier()
            del pipe
        del model
        gc.collect()
        torch.cuda.empty_cache()
    if main_rank:
        print(_table(rows, a))
    if sp is not None:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def _table(rows, a) -> str:
    out = [
        "",
        f"| mode | run | DiT-loop FPS | E2E FPS | {a.chunks}-chunk E2E s | peak GB | DiT TFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {}
    for r in rows:
        by.setdefault((r["mode"], r["variant"]), {})[r["decode"]] = r
    for (mode, variant), d in by.items():
        loop = d.get("none") or next(iter(d.values()))
        e2e = d.get("async") or d.get("sync")
        out.append(
            f"| {mode} | {variant} | {loop['dit_fps']:.1f} | {_fmt(e2e and e2e.get('e2e_fps'))} | "
            f"{_fmt(e2e and e2e['wall_s'])} | {(e2e or loop)['peak_gb']:.1f} | {loop['tflops']:.0f} |"
        )
    for label, hw, fps, e2e, e2e_s, mem in REFERENCE:
        out.append(f"| {label} | {hw} | {fps:.1f} | {_fmt(e2e)} | {_fmt(e2e_s)} | {_fmt(mem)} | - |")
    singles = {(m, v): d["none"]["dit_fps"] for (m, v), d in by.items() if v.startswith("single") and "none" in d}
    for (m, v), d in by.items():
        for (m1, v1), fps1 in singles.items():
            if v.startswith("SP=") and "none" in d and m1 == m:
                out.append(f"\n{m}: {v} speed-up over one GPU ({v1}): {d['none']['dit_fps'] / fps1:.2f}x")
    out.append(f"\n{TARGETS}")
    return "\n".join(out)


# ---- pytest-benchmark entry (GPU only): a 2-block slice, 3 chunks, so CI on a GPU box stays short ----
def test_bench_generate_slice(benchmark=None):
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    argv = [
        "--layers",
        "2",
        "--chunks",
        "3",
        "--warmup",
        "1",
        "--modes",
        "bf16:fp4",
        "--decode",
        "async",
        "--no-mp4",
    ]
    if benchmark is not None:
        benchmark.pedantic(main, args=(argv,), rounds=1, iterations=1)
    else:
        assert main(argv) == 0


if __name__ == "__main__":
    sys.exit(main())
