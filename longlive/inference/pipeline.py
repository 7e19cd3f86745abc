"""``longlive.Pipeline``: load a causal DiT + VAE + text encoder and generate long videos chunk by chunk.

The per-chunk loop is spec §2.8: for chunk n, (re-cache the window with the new prompt on a
prompt switch, v1 semantics), draw noise, run ``steps`` UniPC steps (every call writes the
chunk's K/V into its cache slot), then re-run the model at t = 0 on the clean latents so the
slot holds clean K/V, pin the chunk at a scene cut, and hand the clean latents to the
streaming decoder. The loop is :class:`~longlive.inference.session.StreamSession`, the
per-chunk prompts and the video's length are in :mod:`longlive.inference.prompt_schedule`,
building the model, VAE and text encoder in :mod:`longlive.inference.loading`; everything
about the cache is in :mod:`longlive.inference.cache_policy`, decoding in
:mod:`longlive.inference.decode`, sequence parallelism in :mod:`longlive.inference.sp`.

Interactive use: :meth:`Pipeline.session` returns a :class:`StreamSession` whose
:meth:`~StreamSession.next_chunk` takes the prompt of the next chunk — a user can switch
prompts or cut to a new shot between any two chunks while the video plays.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from longlive.data.prompts import ChunkPrompt

from .cache_policy import CachePolicy
from .loading import (
    PRECISIONS,
    _build_text_encoder,
    _build_vae,
    _check_kv_storage,
    _default_device,
    _default_dtype,
    _fp4_cache_available,  # noqa: F401 (was defined here: still importable from here)
    _resolve_config,
    _text_encoder_spec,
    _vae_path,
    peek_config,
)
from .prompt_schedule import resolve_length, schedule_prompts
from .results import ChunkOutput, GenerationResult
from .session import StreamSession
from .sp import SPGroup, check_sp_size

__all__ = [
    "DEMO_DIR",
    "PRECISIONS",
    "ChunkOutput",
    "GenerationResult",
    "Pipeline",
    "StreamSession",
    "peek_config",
    "read_demo_meta",
    "resolve_length",
]

# Read here at call time (Pipeline.demo, read_demo_meta): tests and the quality bench point it
# elsewhere with monkeypatch.setattr("longlive.inference.pipeline.DEMO_DIR", ...).
DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEFAULT_PROMPT = (
    "Dark background with one bright red ball that travels right."  # in the demo set's vocabulary
)


def _usable_attention_compute(compute: str, device: torch.device) -> str:
    """``compute``, or "bf16" (with a warning) where "fp8" would run slower than BF16: on Hopper
    without cuDNN's FP8 attention (see :class:`Pipeline`, ``attention_compute``)."""
    if compute != "fp8" or device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return compute
    try:
        from longlive_kernels.attention.fp8_sdpa import cudnn_fp8_sdpa_available
    except ImportError:
        return compute
    if cudnn_fp8_sdpa_available(device):
        return compute
    warnings.warn("attention_compute='fp8' needs the nvidia-cudnn-frontend package on Hopper (pip install "
                  "longlive[fp8-attention]); without it the FP8 attention kernel is 2.4x slower than BF16, so "
                  "attention runs in BF16 (dequantize + cuDNN SDPA)", RuntimeWarning, stacklevel=3)
    return "bf16"


class Pipeline:
    """Streaming text-to-video generation with a causal DiT (LongLive-2.0 inference).

    Parameters
    ----------
    model : CausalDiT
        In eval mode on its device (quantized or not).
    vae : VideoVAE
        Decoder for the model's latents (``WanVAE`` for the 5B, ``PatchVAE`` for the tiny model);
        its device is the decode device (``vae_device``).
    text_encoder : TextEncoder
        ``encode([prompt]) -> (emb [1, Lt, text_dim], mask)``.
    policy : CachePolicy, optional
        Default from ``model.config.ar``.
    fps : float, optional
        Output frame rate (default 24 for the Wan VAE, 8 otherwise).
    sp : SPGroup, optional
        Sequence-parallel group (under torchrun).
    attention_compute : {"bf16", "fp8"}
        Math of the FP4-KV attention kernel. ``"fp8"`` on a Hopper GPU without the
        ``nvidia-cudnn-frontend`` package falls back to ``"bf16"`` with a warning: the remaining FP8
        kernel (Triton, tiles decoded in registers) takes 8.7 ms per 5B attention call on an H100
        against ~3.6 ms for dequantize + cuDNN BF16 SDPA (DiT loop 19.1 against 41 FPS, bench/RESULTS.md).
    compile : bool
        ``torch.compile`` (in place, names unchanged) the shape-static per-token parts of every
        block — the FFN (GEMM + tanh-GELU + GEMM) and the cross-attention — on CUDA. Off by
        default: at 7040-token chunks the GPU is saturated and launch overhead is hidden, so it
        pays only where inductor fuses epilogues (measure with ``bench/e2e/bench_generate.py
        --compile``). Self-attention (cache update, RoPE offsets that move every chunk) stays eager.
    vae_channels_last : bool
        Store a CUDA VAE's 5-D conv weights channels-last (NDHWC). Off by default: on Hopper with
        torch 2.11 / cuDNN the Wan2.2 decoder runs its conv3d at 408-429 TFLOP/s with NCDHW weights
        and 256-272 TFLOP/s channels-last (H200, ``bench/e2e/bench_vae_decode.py``). The decoder
        costs ≈ 66 TFLOP per latent frame at 704×1280 (≈ 530 TFLOP per 32-frame chunk, 0.8× the
        DiT's 4-step chunk), so its conv throughput bounds the end-to-end FPS.
    cuda_graphs : bool
        Replay each denoising forward of the current chunk as a CUDA graph (one graph per context
        length, :class:`~longlive.inference.graphs.ChunkGraphs`) on CUDA with the fused ops and
        ``FP4KVCache`` (either storage); elsewhere, and if a capture fails, forwards run eagerly.
        Results are the same either way; graphs remove the per-kernel host cost, which bounds
        Ulysses SP generation (bench/RESULTS.md).

    Examples
    --------
    >>> pipe = Pipeline.from_pretrained("ckpt/", precision="nvfp4")
    >>> pipe.generate("A corgi surfs a wave at sunset.", seconds=16, out="corgi.mp4")
    >>> s = pipe.session()                               # interactive
    >>> a = s.next_chunk("A corgi surfs.")
    >>> b = s.next_chunk("A corgi surfs and jumps.")      # prompt switch: KV re-cache
    >>> c = s.next_chunk("A cat sleeps.", scene_cut=True) # new shot
    """

    def __init__(
        self,
        model,
        vae,
        text_encoder,
        *,
        policy: CachePolicy | None = None,
        fps: float | None = None,
        sp: SPGroup | None = None,
        attention_compute: str = "bf16",
        default_prompt: str = DEFAULT_PROMPT,
        compile: bool = False,
        vae_channels_last: bool = False,
        cuda_graphs: bool = True,
    ):
        cfg = model.config
        if vae.latent_channels != cfg.in_channels:
            raise ValueError(
                f"the VAE has {vae.latent_channels} latent channels, config {cfg.name!r} expects "
                f"in_channels={cfg.in_channels}"
            )
        if getattr(text_encoder, "dim", cfg.text_dim) != cfg.text_dim:
            raise ValueError(
                f"the text encoder is {text_encoder.dim} wide, config {cfg.name!r} expects "
                f"text_dim={cfg.text_dim}"
            )
        if attention_compute not in ("bf16", "fp8"):
            raise ValueError(f"attention_compute must be 'bf16' or 'fp8', got {attention_compute!r}")
        attention_compute = _usable_attention_compute(attention_compute, model.device)
        if sp is not None:
            check_sp_size(cfg, sp.world_size)
        self.model = model.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.policy = policy or CachePolicy.from_config(cfg)
        self.fps = float(fps) if fps else (24.0 if cfg.vae == "wan2.2" else 8.0)
        self.sp = sp
        self.attention_compute = attention_compute
        self.default_prompt = default_prompt or DEFAULT_PROMPT
        # Sampling defaults a checkpoint can carry (the demo's pipeline.yaml: ``steps``, ``shift``);
        # explicit session/generate arguments win.
        self.sampling_defaults: dict = {}
        _check_kv_storage(self.policy.storage, model)
        vae_param = next(iter(vae.parameters()), None)
        if vae_channels_last and vae_param is not None and vae_param.device.type == "cuda":
            # Module.to(memory_format=...) rejects the VAE's non-5-D parameters: convert the conv weights only.
            for param in self.vae.parameters():
                if param.dim() == 5:
                    param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
        self.cuda_graphs = bool(cuda_graphs)
        self.compiled = False
        if compile and model.device.type == "cuda":
            for block in model.blocks:
                block.ffn.compile(dynamic=False)
                block.cross_attn.compile(dynamic=False)
            self.compiled = True

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike | None = None,
        *,
        config=None,
        precision: str = "bf16",
        kv_cache: str | None = None,
        device=None,
        dtype: torch.dtype | None = None,
        vae: str | os.PathLike | None = None,
        vae_device=None,
        vae_dtype: torch.dtype | None = None,
        text_encoder: str | os.PathLike | None = None,
        random_weights: bool = False,
        seed: int = 0,
        sp: SPGroup | None = None,
        ops: str = "kernels",
        fps: float | None = None,
        policy: CachePolicy | None = None,
        attention_compute: str = "bf16",
        vae_options: dict | None = None,
        default_prompt: str = DEFAULT_PROMPT,
        compile: bool = False,
        cuda_graphs: bool = True,
    ) -> Pipeline:
        """Build a pipeline from a checkpoint (or random weights for smoke tests and benchmarks).

        Parameters
        ----------
        checkpoint : path, optional
            DiT weights: a LongLive/Wan checkpoint file or directory (see
            :func:`longlive.model.load_pretrained`). Required unless ``random_weights``.
        config : str, path or ModelConfig, optional
            Preset name or YAML; default from the checkpoint (required with ``random_weights``).
        precision : {"bf16", "nvfp4", "w4a16", "fp8", "fp8_tensor"}
            Linear layers of the 30 blocks (spec §3.2 keeps embeddings and head in BF16); see
            :meth:`longlive.model.CausalDiT.quantize_`.
        kv_cache : {"fp4", "bf16"}, optional
            KV-cache storage (default ``config.ar.kv_storage``).
        device, dtype :
            DiT device (default CUDA when available) and dtype (bf16 on CUDA, fp32 on CPU).
        vae : path, optional
            ``Wan2.2_VAE.pth`` (or a directory holding it; default: the checkpoint directory), or a
            LightVAE checkpoint in the same key layout (decoder widths read from the file). With
            ``random_weights``, ``"lightvae"`` gives the random-weight LightVAE decoder (channel-pruned
            0.75: ~1/16 of the Wan2.2 decode FLOPs; spec §1.2, §7).
        vae_device, vae_dtype :
            Decode device (default the DiT's; ``"cuda:1"`` decodes on a second GPU) and dtype.
        text_encoder : str or path, optional
            ``"all-minilm-l6-v2"``, ``"hash"`` or a umT5 directory; default from the config (for
            umT5: the checkpoint directory). With ``random_weights`` and no umT5 path, a
            ``HashTextEncoder`` of the config's width stands in (no semantics).
        random_weights : bool
            Random DiT (and Wan VAE) weights: a smoke-test / benchmark option, the video is noise.
        sp : SPGroup, optional
            Sequence parallelism (``torchrun``); the model is replicated on every rank.
        cuda_graphs : bool
            See :class:`Pipeline`.

        Raises
        ------
        ValueError, FileNotFoundError, CheckpointMismatchError
            Before any GPU memory is touched: unknown config or precision, missing checkpoint,
            checkpoint of another architecture, VAE/text-encoder geometry mismatches, bad SP size.
        """
        from longlive.model import CausalDiT, load_pretrained

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if kv_cache not in (None, "fp4", "bf16"):
            raise ValueError(f"kv_cache must be 'fp4' or 'bf16', got {kv_cache!r}")
        cfg = _resolve_config(config)
        dev = _default_device(device)
        vdev = _default_device(vae_device) if vae_device is not None else dev
        dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        if checkpoint is None and not random_weights:
            raise ValueError(
                "no checkpoint given: pass checkpoint=PATH (--checkpoint), or random_weights=True "
                "(--random-weights) for a smoke test with random weights"
            )
        if checkpoint is not None and not os.path.exists(checkpoint):
            raise FileNotFoundError(f"checkpoint {os.fspath(checkpoint)!r} does not exist")
        if random_weights and cfg is None:
            raise ValueError("random_weights needs a config (--config tiny | wan2.2-ti2v-5b | FILE.yaml)")
        if checkpoint is not None and cfg is None:
            cfg = peek_config(checkpoint)
        if (
            cfg is None
        ):  # an official checkpoint without our metadata: the DiT's shapes decide (CPU work only)
            model = load_pretrained(checkpoint, None, device=dev, dtype=dtype, mode=precision, ops=ops)
            cfg = model.config
        else:
            model = None
        if sp is not None:
            check_sp_size(cfg, sp.world_size)
        pol = policy or CachePolicy.from_config(cfg, storage=kv_cache)
        if kv_cache is not None and pol.storage != kv_cache:
            pol = pol.replace(storage=kv_cache)
        _check_kv_storage(pol.storage, None, ops=ops)
        ckpt_dir = (
            None
            if checkpoint is None
            else (Path(checkpoint) if os.path.isdir(checkpoint) else Path(checkpoint).parent)
        )
        text_spec = _text_encoder_spec(cfg, text_encoder, ckpt_dir, random_weights)
        vae_path = _vae_path(cfg, vae, ckpt_dir, random_weights)
        if model is None and checkpoint is not None:  # raises CheckpointMismatchError before touching the GPU
            model = load_pretrained(checkpoint, cfg, device=dev, dtype=dtype, mode=precision, ops=ops)
        elif model is None:
            torch.manual_seed(seed)
            with torch.device(dev), _default_dtype(dtype):
                model = CausalDiT(cfg, ops=ops, zero_init_head=False)
            model.quantize_(precision)
        text = _build_text_encoder(cfg, text_spec, dev)
        if sp is not None and not sp.is_main:  # only rank 0 decodes: a weightless stand-in elsewhere
            vae_path, vdev = None, torch.device("meta")
        vae_model = _build_vae(cfg, vae_path, vdev, vae_dtype or dtype, vae_options or {})
        return cls(
            model.eval(),
            vae_model,
            text,
            policy=pol,
            fps=fps,
            sp=sp,
            attention_compute=attention_compute,
            default_prompt=default_prompt,
            compile=compile,
            cuda_graphs=cuda_graphs,
        )

    @classmethod
    def demo(cls, **kwargs) -> Pipeline:
        """The bundled demo model (tiny config, PatchVAE, MiniLM) from ``longlive/assets/demo/``.

        Raises
        ------
        FileNotFoundError
            The demo weights are not installed (``longlive/assets/demo/model.safetensors``).
        """
        weights = DEMO_DIR / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"the bundled demo weights are not installed ({weights} is missing). Train them with "
                "`longlive train --demo` or pass --checkpoint PATH; `longlive generate --random-weights "
                "--config tiny` runs the same pipeline with random weights (a smoke test, the video is noise)"
            )
        meta = read_demo_meta()
        for key, meta_key in (
            ("fps", "fps"),
            ("vae_options", "vae"),
            ("default_prompt", "prompt"),
            ("text_encoder", "text_encoder"),
        ):
            if kwargs.get(key) is None and meta.get(meta_key) is not None:
                kwargs[key] = meta[meta_key]
        pipe = cls.from_pretrained(weights, **kwargs)
        pipe.sampling_defaults = {
            k: meta[k] for k in ("steps", "shift", "guidance_scale") if meta.get(k) is not None
        }
        return pipe

    # ---- generation ------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Text features [1, Lt, text_dim] on the model's device and dtype (LRU-cached by the encoder)."""
        emb, _ = self.text_encoder.encode([text])
        return emb.to(self.model.device, self.model.dtype)

    def session(self, **kwargs) -> StreamSession:
        """A fresh :class:`StreamSession` (``steps``, ``seed``, ``guidance_scale``, ``negative_prompt``, ``policy``).

        ``steps``/``shift``/``guidance_scale`` left as ``None`` come from :attr:`sampling_defaults`
        (else 4 / 5.0 / 1.0: no guidance)."""
        for key, value in self.sampling_defaults.items():
            if kwargs.get(key) is None:
                kwargs[key] = value
        return StreamSession(self, **{k: v for k, v in kwargs.items() if v is not None})

    def schedule(self, prompts, num_chunks: int) -> list[ChunkPrompt]:
        """Per-chunk prompts from a str (whole video), a list of per-chunk strings or ChunkPrompts."""
        return schedule_prompts(prompts, num_chunks)

    def stream(self, prompts, *, num_chunks: int, **session_kwargs) -> Iterator[ChunkOutput]:
        """Yield :class:`ChunkOutput` chunk by chunk (see :meth:`schedule` for ``prompts``)."""
        sched = self.schedule(prompts, num_chunks)
        session = self.session(**session_kwargs)
        for p in sched:
            yield session.next_chunk(p)

    def num_chunks(self, *, num_chunks=None, num_frames=None, seconds=None) -> int:
        """Chunks for a requested length (see :func:`resolve_length`)."""
        return resolve_length(
            chunk_latents=self.model.config.ar.chunk_frames,
            temporal_stride=self.vae.temporal_stride,
            fps=self.fps,
            num_chunks=num_chunks,
            num_frames=num_frames,
            seconds=seconds,
        )

    def generate(
        self,
        prompts=None,
        *,
        num_chunks: int | None = None,
        num_frames: int | None = None,
        seconds: float | None = None,
        out: str | os.PathLike | None = "longlive.mp4",
        decode: str = "async",
        progress: bool = True,
        on_chunk=None,
        **session_kwargs,
    ) -> GenerationResult:
        """Generate a video and write it to ``out`` as it is produced.

        Parameters
        ----------
        prompts : str, list or callable, optional
            See :meth:`schedule` (default: the pipeline's default prompt). A callable
            ``prompts(chunk_index) -> str | ChunkPrompt | None`` is asked before every chunk
            (interactive front-ends; a ``None`` ends the video early).
        num_chunks, num_frames, seconds :
            Length (exactly one; default 5 seconds).
        out : path or None
            mp4 path (rank 0 writes it); None decodes nothing (DiT-only run).
        decode : {"async", "sync"}
            Streaming decode overlapped with the next chunk's denoising, or inline.
        progress : bool
            tqdm bar with live DiT and end-to-end FPS (stderr).
        on_chunk : callable(ChunkOutput), optional
            Called after every chunk.
        **session_kwargs :
            ``steps``, ``seed``, ``guidance_scale``, ``negative_prompt``, ``policy``.

        Returns
        -------
        GenerationResult
            Also on Ctrl-C (``interrupted=True``): every finished chunk is decoded and written and
            the file closed before returning.
        """
        from tqdm.auto import tqdm

        from .decode import ChunkDecoder, Mp4Writer

        if num_chunks is None and num_frames is None and seconds is None:
            seconds = 5.0
        n_chunks = self.num_chunks(num_chunks=num_chunks, num_frames=num_frames, seconds=seconds)
        if callable(prompts):
            source = prompts
        else:
            source = self.schedule(
                prompts if prompts is not None else self.default_prompt, n_chunks
            ).__getitem__
        main = self.sp is None or self.sp.is_main
        result = GenerationResult(out=os.fspath(out) if out is not None else None, num_chunks=n_chunks)
        session = self.session(**session_kwargs)
        decoder = None
        if out is not None and main:
            decoder = ChunkDecoder(self.vae, mode=decode, sink=Mp4Writer(out, fps=self.fps))
        dev = self.model.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        bar = tqdm(total=n_chunks, unit="chunk", disable=not (progress and main), dynamic_ncols=True)
        t_start = time.perf_counter()
        try:
            for i in range(n_chunks):
                p = source(i)
                if p is None:
                    break
                chunk = session.next_chunk(p)
                result.chunks_done += 1
                result.frames_done += chunk.num_frames
                result.chunk_seconds.append(chunk.seconds)
                result.chunk_frames.append(chunk.num_frames)
                if decoder is not None:
                    decoder.submit(chunk.index, chunk.latents)
                if on_chunk is not None:
                    on_chunk(chunk)
                wall = time.perf_counter() - t_start
                written = decoder.frames_decoded if decoder is not None else 0
                bar.set_postfix_str(
                    f"dit {result.dit_fps(1 if result.chunks_done > 1 else 0):.1f} fps, "
                    f"e2e {written / wall:.1f} fps, shot {chunk.plan.shot}",
                    refresh=False,
                )
                bar.update(1)
        except KeyboardInterrupt:
            result.interrupted = True
        finally:
            bar.close()
            if decoder is not None:
                with _keyboard_interrupt_deferred(result):
                    decoder.close(drain=True)
                result.chunks_written = decoder.writer.chunks_written
                result.frames_written = decoder.writer.frames_written
            result.wall_seconds = time.perf_counter() - t_start
            result.dit_seconds = sum(result.chunk_seconds)
            if dev.type == "cuda":
                result.peak_memory_gb = torch.cuda.max_memory_allocated(dev) / 1e9
        return result


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _keyboard_interrupt_deferred(result: GenerationResult):
    """Let a second Ctrl-C during the final drain stop it (the fragmented mp4 stays playable)."""
    try:
        yield
    except KeyboardInterrupt:
        result.interrupted = True


def read_demo_meta() -> dict:
    path = DEMO_DIR / "pipeline.yaml"
    if not path.is_file():
        return {}
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise TypeError(
            f"{path}: expected a mapping (fps, prompt, vae, text_encoder), got {type(data).__name__}"
        )
    return data
