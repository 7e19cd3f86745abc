"""The ``longlive`` command: ``generate`` (streaming inference), ``train`` and ``bench``.

``longlive generate`` with no arguments runs the bundled demo model (tiny config, PatchVAE,
MiniLM text encoder; weights in ``longlive/assets/demo/``) on a default prompt and writes
``longlive_demo.mp4``. Every input is checked before the model is loaded: unknown configs,
prompt files with bad entries (file:line in the message), impossible lengths, bad SP sizes.
Ctrl-C stops after the current chunk's forwards are abandoned, decodes and writes every finished
chunk, closes the mp4 (playable) and exits with status 130.

Under ``torchrun --nproc-per-node P longlive generate ...`` the chunk's tokens are split over the
P ranks (Ulysses SP, :mod:`longlive.inference.sp`); rank 0 decodes and writes the video.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading

__all__ = ["build_generate_parser", "main"]

DEMO_OUT = "longlive_demo.mp4"


class CLIError(Exception):
    """A user error: printed as ``longlive generate: error: ...`` with exit status 2."""


def build_generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longlive generate",
        description="Generate a long video chunk by chunk (LongLive-2.0 causal inference) and write it to an mp4 "
        "as it is produced. With no arguments: the bundled demo model on a default prompt.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("prompts")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--prompt", help="one prompt for the whole video")
    x.add_argument(
        "--prompts",
        metavar="FILE",
        help="prompt schedule (.yaml/.jsonl): entries {chunk|second, prompt, "
        "scene_cut}; see longlive.data.prompts",
    )
    x.add_argument(
        "--interactive",
        action="store_true",
        help="read prompts from stdin while generating: a line "
        "switches the prompt from the next chunk on, '/cut TEXT' starts a new shot, '/quit' stops",
    )
    g.add_argument("--negative-prompt", default=None, help="negative prompt (with --guidance-scale != 1)")
    m = p.add_argument_group("model")
    m.add_argument(
        "--config",
        help="preset (tiny, wan2.2-ti2v-5b, small-1.3b) or model YAML; default from the checkpoint",
    )
    m.add_argument("--checkpoint", help="DiT weights (file or directory); default: the bundled demo model")
    m.add_argument("--vae", help="Wan2.2_VAE.pth or a LightVAE checkpoint (default: next to the checkpoint); "
                   "with --random-weights, 'lightvae' = the random-weight pruned decoder")
    m.add_argument(
        "--text-encoder", help="all-minilm-l6-v2 | hash | umT5 directory (default from the config)"
    )
    m.add_argument(
        "--precision",
        choices=("bf16", "nvfp4", "w4a16", "fp8", "fp8_tensor"),
        default="bf16",
        help="linear layers of the DiT blocks (fp8: row-wise scales; fp8_tensor: per-tensor scales for "
        "the linears behind a LayerNorm, faster only at <= 2048 tokens per GPU, e.g. 5B at SP=4)",
    )
    m.add_argument(
        "--kv-cache", choices=("bf16", "fp4"), default=None, help="KV-cache storage (default: config)"
    )
    m.add_argument(
        "--attention-compute",
        choices=("bf16", "fp8"),
        default="bf16",
        help="MMA precision of the attention over the FP4 KV cache; fp8 on Hopper with "
        "nvidia-cudnn-frontend (pip install longlive[fp8-attention]) runs cuDNN FP8 attention: "
        "DiT loop 35.8 vs 29.4 FPS on an H100, attention rel. error ~0.1 (bench/RESULTS.md); "
        "without that package it falls back to bf16 there, with a warning",
    )
    m.add_argument(
        "--random-weights",
        action="store_true",
        help="smoke test: random DiT weights (and random Wan VAE / hash text encoder where needed); "
        "the video is noise. Default config: tiny",
    )
    s = p.add_argument_group("length and sampling")
    ln = s.add_mutually_exclusive_group()
    ln.add_argument("--frames", type=int, help="video frames (must be a whole number of chunks)")
    ln.add_argument(
        "--seconds", type=float, help="video length in seconds (rounded up to whole chunks; default 5)"
    )
    ln.add_argument("--chunks", type=int, help="number of chunks")
    s.add_argument("--steps", type=int, default=None,
                   help="denoising steps per chunk (1-8; default 4, or the demo model's own default)")
    s.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance (1 = off; default 1, or the demo model's own default)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fps", type=float, default=None, help="output frame rate (default 24 for the Wan VAE)")
    c = p.add_argument_group("cache policy")
    c.add_argument(
        "--no-recache", action="store_true", help="no KV re-cache on a prompt switch (LongLive-2.0)"
    )
    c.add_argument("--no-shot-sink", action="store_true", help="no multi-shot sink")
    c.add_argument("--rope-shot-offset", type=int, default=None, help="RoPE positions inserted per scene cut")
    r = p.add_argument_group("runtime")
    r.add_argument(
        "--out", default=None, help=f"output mp4 (default {DEMO_OUT} for the demo, else longlive.mp4)"
    )
    r.add_argument("--device", default=None, help="DiT device (default cuda if available)")
    r.add_argument("--vae-device", default=None, help="decode device, e.g. cuda:1 (default: the DiT's)")
    r.add_argument("--decode", choices=("async", "sync"), default="async", help="streaming decode mode")
    r.add_argument(
        "--kv-comm",
        choices=("bf16", "nvfp4", "fp8"),
        default="nvfp4",
        help="wire format of K/V in the SP all-to-all (torchrun only)",
    )
    r.add_argument(
        "--kv-scaling",
        choices=("current", "delayed"),
        default="current",
        help="NVFP4 K/V tensor scale on the SP wire: the group amax of each call, or delayed scaling from the "
        "amaxes earlier calls observed (no amax pass or all-reduce; torchrun only)",
    )
    r.add_argument(
        "--sp-transport",
        choices=("nccl", "peer"),
        default="nccl",
        help="SP exchanges through NCCL, or as stores into the peers' symmetric memory (one node; needs "
        "--kv-comm bf16)",
    )
    r.add_argument(
        "--ops", choices=("kernels", "torch"), default="kernels", help="fused kernels or plain torch"
    )
    r.add_argument(
        "--compile", action="store_true", help="torch.compile each block's FFN and cross-attention (CUDA)"
    )
    r.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="run every chunk forward eagerly (default: replay CUDA graphs on CUDA)",
    )
    r.add_argument("-v", "--verbose", action="store_true", help="one log line per chunk")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _check_args(a: argparse.Namespace) -> None:
    if a.steps is not None and not 1 <= a.steps <= 8:
        raise CLIError(f"--steps must be in 1..8, got {a.steps}")
    for name in ("frames", "chunks"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise CLIError(f"--{name} must be >= 1, got {v}")
    if a.seconds is not None and not a.seconds > 0:
        raise CLIError(f"--seconds must be > 0, got {a.seconds}")
    if a.guidance_scale is not None and a.guidance_scale < 0:
        raise CLIError(f"--guidance-scale must be >= 0, got {a.guidance_scale}")
    if a.fps is not None and not a.fps > 0:
        raise CLIError(f"--fps must be > 0, got {a.fps}")
    if a.prompt is not None and not a.prompt.strip():
        raise CLIError("--prompt must not be empty")
    if a.prompts is not None and not os.path.isfile(a.prompts):
        raise CLIError(f"--prompts file {a.prompts!r} does not exist")
    if a.checkpoint is not None and a.random_weights:
        raise CLIError("--checkpoint and --random-weights exclude each other")
    if a.rope_shot_offset is not None and a.rope_shot_offset < 0:
        raise CLIError(f"--rope-shot-offset must be >= 0, got {a.rope_shot_offset}")
    if a.out is not None:
        parent = os.path.dirname(os.path.abspath(a.out))
        if not os.path.isdir(parent):
            raise CLIError(f"--out directory {parent!r} does not exist")


def _resolve_model_source(a: argparse.Namespace):
    """(checkpoint, config or None, demo?) without loading any weight."""
    from longlive.inference.pipeline import DEMO_DIR, _resolve_config, peek_config

    if a.checkpoint is None and not a.random_weights:
        weights = DEMO_DIR / "model.safetensors"
        if not weights.is_file():
            raise CLIError(
                f"no --checkpoint given and the bundled demo weights are not installed ({weights} is "
                "missing). Pass --checkpoint PATH, or --random-weights for a smoke test "
                "(random weights: the video is noise)"
            )
        return str(weights), _resolve_config(a.config) or peek_config(weights), True
    cfg = _resolve_config(a.config if a.config is not None else ("tiny" if a.random_weights else None))
    if cfg is None and a.checkpoint is not None:
        if not os.path.exists(a.checkpoint):
            raise CLIError(f"--checkpoint {a.checkpoint!r} does not exist")
        cfg = peek_config(a.checkpoint)
    return a.checkpoint, cfg, False


def _interactive_source(first_prompt: str, *, fps: float, first_frames: int, chunk_frames: int):
    """Prompt source reading stdin on a thread: the latest line applies from the next chunk.

    Generation is paced to playback (at most one chunk ahead of real time at ``fps``), so a new
    prompt shows up within about two chunks instead of after a buffer of pre-generated video."""
    import time

    state = {"prompt": first_prompt, "cut": False, "stop": False}
    lock = threading.Lock()
    start = []

    def reader():
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            with lock:
                if line in ("/quit", "/q"):
                    state["stop"] = True
                    return
                if line.startswith("/cut"):
                    state["prompt"], state["cut"] = line[4:].strip() or state["prompt"], True
                else:
                    state["prompt"] = line
        # end of input (Ctrl-D, or a pipe that closed): keep going with the last prompt until the length cap

    threading.Thread(target=reader, name="longlive-stdin", daemon=True).start()

    def source(i: int):
        from longlive.data.prompts import SCENE_CUT_PREFIX

        if not start:
            start.append(time.perf_counter())
        ahead = (first_frames + (i - 2) * chunk_frames) / fps if i >= 2 else 0.0  # playback time of chunk i-1
        wait = start[0] + ahead - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        with lock:
            if state["stop"]:
                return None
            text, cut = state["prompt"], state["cut"] and i > 0
            state["cut"] = False
        return SCENE_CUT_PREFIX + text if cut else text

    return source


def generate_main(argv: list[str]) -> int:
    parser = build_generate_parser()
    a = parser.parse_args(argv)
    try:
        return _generate(a)
    except CLIError as exc:
        print(f"longlive generate: error: {exc}", file=sys.stderr)
        return 2


def _generate(a: argparse.Namespace) -> int:
    _check_args(a)
    import torch

    from longlive.data.prompts import PromptScheduleError, chunk_frame_counts, load_prompt_schedule
    from longlive.inference.cache_policy import CachePolicy
    from longlive.inference.pipeline import DEFAULT_PROMPT, Pipeline, read_demo_meta, resolve_length
    from longlive.inference.sp import check_sp_size, init_from_env
    from longlive.model import CheckpointMismatchError

    try:
        checkpoint, cfg, demo = _resolve_model_source(a)
        meta = read_demo_meta() if demo else {}
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg is not None:
            if world > 1:
                check_sp_size(cfg, world)
            fps = a.fps or meta.get("fps") or (24.0 if cfg.vae == "wan2.2" else 8.0)
            length = {"num_chunks": a.chunks, "num_frames": a.frames, "seconds": a.seconds}
            stride = cfg.vae_stride[0]
            first, later = chunk_frame_counts(cfg.ar.chunk_frames, stride)
            schedule = None
            if a.prompts is not None:
                kw = {"fps": fps, "first_chunk_frames": first, "chunk_frames": later}
                if all(v is None for v in length.values()):  # default: 5 s or up to the last entry
                    last = len(load_prompt_schedule(a.prompts, **kw))
                    length["num_chunks"] = max(
                        last,
                        resolve_length(
                            chunk_latents=cfg.ar.chunk_frames, temporal_stride=stride, fps=fps, seconds=5.0
                        ),
                    )
                n = resolve_length(
                    chunk_latents=cfg.ar.chunk_frames, temporal_stride=stride, fps=fps, **length
                )
                schedule = load_prompt_schedule(a.prompts, num_chunks=n, **kw)
            elif all(v is None for v in length.values()):
                n = resolve_length(
                    chunk_latents=cfg.ar.chunk_frames,
                    temporal_stride=stride,
                    fps=fps,
                    seconds=600.0 if a.interactive else 5.0,
                )
            else:
                n = resolve_length(
                    chunk_latents=cfg.ar.chunk_frames, temporal_stride=stride, fps=fps, **length
                )
        overrides = {}
        if a.no_shot_sink:
            overrides["shot_sink"] = False
        if a.no_recache:
            overrides["recache_on_switch"] = False
        if a.rope_shot_offset is not None:
            overrides["rope_shot_offset"] = a.rope_shot_offset
        policy = None
        if cfg is not None:
            policy = CachePolicy.from_config(cfg, storage=a.kv_cache, **overrides)
        sp = None
        if world > 1:
            sp, dev = init_from_env(device=a.device)
            sp.kv_comm, sp.transport, sp.kv_scaling = a.kv_comm, a.sp_transport, a.kv_scaling
            a.device = str(dev)
        kwargs = {
            "policy": policy,
            "config": cfg,
            "precision": a.precision,
            "kv_cache": a.kv_cache,
            "device": a.device,
            "vae_device": a.vae_device,
            "text_encoder": a.text_encoder,
            "sp": sp,
            "ops": a.ops,
            "fps": a.fps,
            "attention_compute": a.attention_compute,
            "compile": a.compile,
            "cuda_graphs": a.cuda_graphs,
        }
        if demo:
            pipe = Pipeline.demo(**kwargs)
        else:
            pipe = Pipeline.from_pretrained(checkpoint, vae=a.vae, random_weights=a.random_weights, **kwargs)
        if policy is None and overrides:
            pipe.policy = pipe.policy.replace(**overrides)
        if cfg is None:  # official checkpoint: the config came with the weights
            cfg = pipe.model.config
            n = pipe.num_chunks(
                num_chunks=a.chunks,
                num_frames=a.frames,
                seconds=a.seconds if (a.chunks or a.frames or a.seconds) else 5.0,
            )
            schedule = None
            if a.prompts is not None:
                first, later = chunk_frame_counts(cfg.ar.chunk_frames, pipe.vae.temporal_stride)
                schedule = load_prompt_schedule(
                    a.prompts, num_chunks=n, fps=pipe.fps, first_chunk_frames=first, chunk_frames=later
                )
    except (PromptScheduleError, CheckpointMismatchError, ValueError, FileNotFoundError, TypeError) as exc:
        raise CLIError(str(exc)) from None

    prompt = a.prompt or (meta.get("prompt") if demo else None) or pipe.default_prompt or DEFAULT_PROMPT
    prompts = schedule if schedule is not None else prompt
    if a.interactive:
        first, later = chunk_frame_counts(pipe.model.config.ar.chunk_frames, pipe.vae.temporal_stride)
        prompts = _interactive_source(prompt, fps=pipe.fps, first_frames=first, chunk_frames=later)
        print(
            "interactive: type a prompt (applies from the next chunk), '/cut TEXT' for a new shot, '/quit' to stop",
            file=sys.stderr,
        )
    out = a.out or (DEMO_OUT if demo else "longlive.mp4")
    main_rank = sp is None or sp.is_main

    def log(chunk):
        if a.verbose and main_rank:
            p = chunk.plan
            extra = (" scene cut" if p.scene_cut else "") + (
                f" re-cached {list(p.recache)}" if p.recache else ""
            )
            print(
                f"chunk {chunk.index + 1}/{n} done: shot {p.shot}, {chunk.num_frames} frames, "
                f"{chunk.seconds:.3f} s{extra}",
                flush=True,
            )

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed VAE conv shapes per chunk
    with torch.inference_mode():
        result = pipe.generate(
            prompts,
            num_chunks=n,
            out=out,
            decode=a.decode,
            progress=not a.quiet,
            steps=a.steps,
            seed=a.seed,
            guidance_scale=a.guidance_scale,
            negative_prompt=a.negative_prompt,
            on_chunk=log,
        )
    if main_rank:
        warm = 1 if result.chunks_done > 2 else 0
        head = "interrupted: " if result.interrupted else ""
        print(
            f"{head}wrote {result.chunks_written} chunks ({result.frames_written} frames) to {out}; "
            f"DiT {result.dit_fps(warm):.1f} fps, end-to-end {result.e2e_fps:.1f} fps"
            + (f", peak {result.peak_memory_gb:.1f} GB" if result.peak_memory_gb is not None else ""),
            flush=True,
        )
    if sp is not None:
        import torch.distributed as dist

        if not result.interrupted:
            sp.barrier()
        dist.destroy_process_group()
    return 130 if result.interrupted else 0


def _delegate(command: str, module: str, argv: list[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            print(f"longlive {command}: not available in this install ({module} is missing)", file=sys.stderr)
            return 2
        raise
    rc = mod.main(argv)
    return int(rc or 0)


USAGE = """usage: longlive {generate,train,bench} [options]

  generate   stream a long video to an mp4 (no options: the bundled demo model)
  train      train / distil a model (longlive.train.cli)
  bench      benchmarks (longlive.bench_cli)

`longlive <command> --help` for the options of a command."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``longlive`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "generate":
        return generate_main(rest)
    if cmd == "train":
        return _delegate("train", "longlive.train.cli", rest)
    if cmd == "bench":
        return _delegate("bench", "longlive.bench_cli", rest)
    if cmd in ("--version", "-V"):
        from longlive import __version__

        print(f"longlive {__version__}")
        return 0
    print(f"longlive: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
