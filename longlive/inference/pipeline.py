"""``longlive.Pipeline``: load a causal DiT + VAE + text encoder and generate long videos chunk by chunk.

The per-chunk loop is spec §2.8: for chunk n, (re-cache the window with the new prompt on a
prompt switch, v1 semantics), draw noise, run ``steps`` UniPC steps (every call writes the
chunk's K/V into its cache slot), then re-run the model at t = 0 on the clean latents so the
slot holds clean K/V, pin the chunk at a scene cut, and hand the clean latents to the
streaming decoder. Everything about the cache is in :mod:`longlive.inference.cache_policy`,
decoding in :mod:`longlive.inference.decode`, sequence parallelism in
:mod:`longlive.inference.sp`.

Interactive use: :meth:`Pipeline.session` returns a :class:`StreamSession` whose
:meth:`~StreamSession.next_chunk` takes the prompt of the next chunk — a user can switch
prompts or cut to a new shot between any two chunks while the video plays.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longlive.config import ModelConfig
from longlive.data.prompts import (
    SCENE_CUT_PREFIX,
    ChunkPrompt,
    chunk_frame_counts,
    num_frames_for_chunks,
    schedule_from_chunk_prompts,
    strip_scene_cut_prefix,
)

from .cache_policy import CacheAttention, CacheManager, CachePolicy, ChunkPlan, ForwardHandle
from .scheduler import FlowUniPCScheduler, _check_steps
from .sp import SPCacheAttention, SPGroup, check_sp_size

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

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
PRECISIONS = ("bf16", "nvfp4", "w4a16", "fp8")
DEFAULT_PROMPT = "Dark background with one bright red ball that travels right."  # in the demo set's vocabulary


# ---------------------------------------------------------------------------------------------
# lengths
# ---------------------------------------------------------------------------------------------
def resolve_length(
    *,
    chunk_latents: int,
    temporal_stride: int,
    fps: float,
    num_chunks: int | None = None,
    num_frames: int | None = None,
    seconds: float | None = None,
) -> int:
    """Number of chunks for exactly one of ``num_chunks``, ``num_frames`` (must be a chunk boundary)
    or ``seconds`` (rounded up to whole chunks).

    Raises
    ------
    ValueError
        None or several given, non-positive values, or a frame count that is not a chunk boundary
        (the message names the nearest valid counts).
    """
    given = [
        n
        for n, v in (("num_chunks", num_chunks), ("num_frames", num_frames), ("seconds", seconds))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of num_chunks, num_frames or seconds, got {given or 'none'}")
    first, later = chunk_frame_counts(chunk_latents, temporal_stride)
    if num_chunks is not None:
        if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive int, got {num_chunks!r}")
        return num_chunks
    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        k = max(1, 1 + math.ceil((num_frames - first) / later)) if num_frames > first else 1
        if num_frames_for_chunks(k, first_chunk_frames=first, chunk_frames=later) == num_frames:
            return k
        lo = num_frames_for_chunks(max(1, k - 1), first_chunk_frames=first, chunk_frames=later)
        hi = num_frames_for_chunks(k, first_chunk_frames=first, chunk_frames=later)
        lo = lo if lo < num_frames else None
        raise ValueError(
            f"num_frames={num_frames} is not a whole number of chunks (first chunk {first} frames, "
            f"then {later} per chunk); nearest valid: {', '.join(str(v) for v in (lo, hi) if v)}"
        )
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not (seconds > 0 and math.isfinite(seconds))
    ):
        raise ValueError(f"seconds must be a positive finite number, got {seconds!r}")
    frames = max(1, round(seconds * fps))
    return 1 if frames <= first else 1 + math.ceil((frames - first) / later)


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class ChunkOutput:
    """One generated chunk.

    Attributes
    ----------
    index : int
        Chunk index in the video.
    latents : Tensor [1, C, F, H, W] fp32
        Clean latents of the chunk (all frames, also under sequence parallelism).
    num_frames : int
        Video frames this chunk decodes to.
    prompt : str
        Prompt given to the text encoder (with the scene-cut prefix on a shot's first chunk).
    plan : ChunkPlan
        Cache bookkeeping (shot, RoPE offset, attended chunks, re-cached chunks).
    seconds : float
        Wall time of the chunk's forwards (re-cache + denoising + t = 0 re-run), device-synchronised.
    """

    index: int
    latents: torch.Tensor
    num_frames: int
    prompt: str
    plan: ChunkPlan
    seconds: float


@dataclass
class GenerationResult:
    """Summary of :meth:`Pipeline.generate` (also after Ctrl-C: ``interrupted=True``)."""

    out: str | None
    num_chunks: int
    chunks_done: int = 0
    chunks_written: int = 0
    frames_written: int = 0
    frames_done: int = 0
    dit_seconds: float = 0.0
    wall_seconds: float = 0.0
    interrupted: bool = False
    chunk_seconds: list[float] = field(default_factory=list)
    chunk_frames: list[int] = field(default_factory=list)
    peak_memory_gb: float | None = None

    def dit_fps(self, warmup: int = 0) -> float:
        """Output frames / denoising time over chunks after the first ``warmup``."""
        s = sum(self.chunk_seconds[warmup:])
        return sum(self.chunk_frames[warmup:]) / s if s > 0 else float("nan")

    @property
    def e2e_fps(self) -> float:
        """Frames written / wall time from the first chunk to the closed file."""
        return self.frames_written / self.wall_seconds if self.wall_seconds > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# the per-video state
# ---------------------------------------------------------------------------------------------
class StreamSession:
    """Generation state of one video: KV cache, shot, RNG. Make with :meth:`Pipeline.session`.

    Call :meth:`next_chunk` with each chunk's prompt; it returns the chunk's clean latents.
    """

    def __init__(
        self,
        pipe: Pipeline,
        *,
        steps: int = 4,
        seed: int = 0,
        guidance_scale: float = 1.0,
        negative_prompt: str | None = None,
        policy: CachePolicy | None = None,
        shift: float = 5.0,
    ):
        if not (
            isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0
        ):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        self.pipe = pipe
        self.model = pipe.model
        self.scheduler = FlowUniPCScheduler(_check_steps(steps), shift=shift)
        self.guidance_scale = float(guidance_scale)
        self.cfg = self.guidance_scale != 1.0
        self.policy = policy or pipe.policy
        self.sp = pipe.sp
        p = self.sp.world_size if self.sp is not None else 1
        cfg = self.model.config
        self.device = self.model.device
        self.num_heads = cfg.num_heads // p
        self.cache = CacheManager(
            self.model, self.policy, batch_size=2 if self.cfg else 1, num_heads=self.num_heads
        )
        self._attn = CacheAttention(self.cache.cache, compute=pipe.attention_compute)
        self._sp_attn = (
            None
            if self.sp is None
            else SPCacheAttention(self.sp, self.cache.cache, compute=pipe.attention_compute)
        )
        h, w = cfg.latent_size
        self.chunk_shape = (1, cfg.in_channels, cfg.ar.chunk_frames, h, w)
        self.local_tokens = self.cache.cache.chunk_tokens // p
        self.local_frames = (cfg.ar.chunk_frames // cfg.patch_size[0]) // p
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.negative = None
        if self.cfg:
            self.negative = pipe.encode_prompt(negative_prompt if negative_prompt is not None else "")
        self._prompt: tuple[str, torch.Tensor] | None = None
        self._prev_body: str | None = None
        first, later = chunk_frame_counts(cfg.ar.chunk_frames, pipe.vae.temporal_stride)
        self._frames = (first, later)

    @property
    def chunk_index(self) -> int:
        """Index of the next chunk."""
        return self.cache.next_chunk

    def _context(self, text: str) -> torch.Tensor:
        if self._prompt is None or self._prompt[0] != text:
            self._prompt = (text, self.pipe.encode_prompt(text))
        ctx = self._prompt[1]
        return torch.cat([ctx, self.negative], 0) if self.cfg else ctx

    def _forward(
        self,
        x: torch.Tensor,
        t: float,
        ctx: torch.Tensor,
        plan: ChunkPlan,
        chunk: int | None = None,
        offset: int | None = None,
    ) -> torch.Tensor:
        """Flow prediction for this rank's frames ``x`` [1, C, F/P, H, W] at timestep ``t``."""
        xin = torch.cat([x, x], 0) if self.cfg else x
        tt = torch.full((xin.shape[0],), float(t), device=self.device)
        cid = plan.chunk if chunk is None else chunk
        offset = plan.frame_offset if offset is None else offset
        cache = self.cache.cache
        if self.sp is not None:
            offset += self.sp.rank * self.local_frames
            attn = (
                self._sp_attn
                if chunk is None
                else SPCacheAttention(
                    self.sp, cache, chunk=chunk, context=plan.context, compute=self.pipe.attention_compute
                )
            )
            handle = ForwardHandle(self.local_tokens, cid)
        elif chunk is not None:
            attn, handle = self.cache.recache_attention(chunk, plan), ForwardHandle(self.local_tokens, cid)
        else:
            attn, handle = self._attn, cache
        v = self.model.forward_chunk(
            xin, tt, ctx, cache=handle, chunk_id=cid, frame_offset=offset, attention=attn
        )
        if self.cfg:
            v_c, v_u = v.float().chunk(2)
            return v_u + self.guidance_scale * (v_c - v_u)
        return v

    @torch.no_grad()
    def next_chunk(self, prompt: str | ChunkPrompt, *, scene_cut: bool | None = None) -> ChunkOutput:
        """Generate the next chunk.

        Parameters
        ----------
        prompt : str or ChunkPrompt
            The chunk's prompt. A prompt starting with ``"The scene transitions. "`` is a scene
            cut; a prompt whose text differs from the previous chunk's is a switch (re-cache).
        scene_cut : bool, optional
            Force (True) or forbid (False) a scene cut; the prefix is added/removed accordingly.

        Returns
        -------
        ChunkOutput
        """
        n = self.chunk_index
        if isinstance(prompt, ChunkPrompt):
            text, cut, switch = prompt.prompt, prompt.is_scene_cut, prompt.is_switch
            body, _ = strip_scene_cut_prefix(text)
        else:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
            body, had = strip_scene_cut_prefix(prompt.strip())
            cut = (had if scene_cut is None else bool(scene_cut)) and n > 0
            switch = n > 0 and (cut or body != self._prev_body)
            text = SCENE_CUT_PREFIX + body if cut else body
        self._prev_body = body
        # stream-level syncs: a device-wide sync would also wait for the decoder's stream and serialise
        # decoding with denoising
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        if stream is not None:
            stream.synchronize()
        t0 = time.perf_counter()
        ctx = self._context(text)
        plan = self.cache.begin_chunk(scene_cut=cut, switch=switch)
        for c in plan.recache:  # v1 KV re-cache: refresh the window's K/V with the new prompt
            self._forward(self.cache.clean[c], 0.0, ctx, plan, chunk=c, offset=self.cache.offsets[c])
        noise = torch.randn(
            self.chunk_shape, generator=self.generator, device=self.device, dtype=torch.float32
        )
        x = self.sp.local(noise) if self.sp is not None else noise
        sched = self.scheduler
        sched.reset()
        for t in sched.timesteps:
            x = sched.step(self._forward(x, t, ctx, plan), x)
        self._forward(x, 0.0, ctx, plan)  # t = 0 re-run: the slot now holds the clean K/V
        self.cache.end_chunk(plan, x)
        full = self.sp.gather(x) if self.sp is not None else x
        if stream is not None:
            stream.synchronize()
        frames = self._frames[0] if n == 0 else self._frames[1]
        return ChunkOutput(n, full, frames, text, plan, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------
def _default_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _resolve_config(config) -> ModelConfig | None:
    if config is None or isinstance(config, ModelConfig):
        return config
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            f"config must be a preset name, a YAML path or a ModelConfig, got {type(config).__name__}"
        )
    text = os.fspath(config)
    if os.path.exists(text):
        return ModelConfig.from_yaml(text)
    if text.endswith((".yaml", ".yml")):
        raise FileNotFoundError(f"config file {text!r} does not exist")
    return ModelConfig.from_name(text)


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
        Math of the FP4-KV attention kernel.
    compile : bool
        ``torch.compile`` (in place, names unchanged) the shape-static per-token parts of every
        block — the FFN (GEMM + tanh-GELU + GEMM) and the cross-attention — on CUDA. Off by
        default: at 7040-token chunks the GPU is saturated and launch overhead is hidden, so it
        pays only where inductor fuses epilogues (measure with ``bench/e2e/bench_generate.py
        --compile``). Self-attention (cache update, RoPE offsets that move every chunk) stays eager.
    vae_channels_last : bool
        Store a CUDA VAE's 5-D conv weights channels-last (NDHWC), so cuDNN runs its conv3d as
        implicit GEMMs on the tensor cores without layout transposes. The Wan2.2 decoder costs
        ≈ 66 TFLOP per latent frame at 704×1280 (≈ 530 TFLOP per 32-frame chunk, 0.8× the DiT's
        4-step chunk), so its conv throughput bounds the end-to-end FPS on one GPU.

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
        vae_channels_last: bool = True,
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
    ) -> Pipeline:
        """Build a pipeline from a checkpoint (or random weights for smoke tests and benchmarks).

        Parameters
        ----------
        checkpoint : path, optional
            DiT weights: a LongLive/Wan checkpoint file or directory (see
            :func:`longlive.model.load_pretrained`). Required unless ``random_weights``.
        config : str, path or ModelConfig, optional
            Preset name or YAML; default from the checkpoint (required with ``random_weights``).
        precision : {"bf16", "nvfp4", "w4a16", "fp8"}
            Linear layers of the 30 blocks (spec §3.2 keeps embeddings and head in BF16).
        kv_cache : {"fp4", "bf16"}, optional
            KV-cache storage (default ``config.ar.kv_storage``).
        device, dtype :
            DiT device (default CUDA when available) and dtype (bf16 on CUDA, fp32 on CPU).
        vae : path, optional
            ``Wan2.2_VAE.pth`` (or a directory holding it; default: the checkpoint directory).
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
        pipe.sampling_defaults = {k: meta[k] for k in ("steps", "shift") if meta.get(k) is not None}
        return pipe

    # ---- generation ------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> torch.Tensor:
        """Text features [1, Lt, text_dim] on the model's device and dtype (LRU-cached by the encoder)."""
        emb, _ = self.text_encoder.encode([text])
        return emb.to(self.model.device, self.model.dtype)

    def session(self, **kwargs) -> StreamSession:
        """A fresh :class:`StreamSession` (``steps``, ``seed``, ``guidance_scale``, ``negative_prompt``, ``policy``).

        ``steps``/``shift`` left as ``None`` come from :attr:`sampling_defaults` (else 4 / 5.0)."""
        for key, value in self.sampling_defaults.items():
            if kwargs.get(key) is None:
                kwargs[key] = value
        return StreamSession(self, **{k: v for k, v in kwargs.items() if v is not None})

    def schedule(self, prompts, num_chunks: int) -> list[ChunkPrompt]:
        """Per-chunk prompts from a str (whole video), a list of per-chunk strings or ChunkPrompts."""
        if isinstance(prompts, str):
            prompts = [prompts] * num_chunks
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts must not be empty")
        if all(isinstance(p, ChunkPrompt) for p in prompts):
            sched = prompts
        elif all(isinstance(p, str) for p in prompts):
            sched = schedule_from_chunk_prompts(prompts)
        else:
            raise TypeError("prompts must be a str, a list of str or a list of ChunkPrompt")
        if len(sched) < num_chunks:  # the last prompt lasts until the end
            last = sched[-1]
            body, _ = strip_scene_cut_prefix(last.prompt)
            sched = sched + [ChunkPrompt(body, False, False)] * (num_chunks - len(sched))
        return sched[:num_chunks]

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


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _fp4_cache_available() -> bool:
    try:
        from longlive_kernels.attention import FP4KVCache  # noqa: F401
    except ImportError:
        return False
    return True


def _check_kv_storage(storage: str, model, *, ops: str | None = None) -> None:
    ops = ops or getattr(model, "ops", "kernels")
    if storage == "fp4" and (ops != "kernels" or not _fp4_cache_available()):
        why = (
            "ops='torch' uses the plain-torch BF16 cache"
            if ops != "kernels"
            else "longlive_kernels.attention.FP4KVCache is not available in this install"
        )
        raise ValueError(f"kv_cache='fp4' is not possible: {why}; use kv_cache='bf16' (--kv-cache bf16)")


def peek_config(checkpoint) -> ModelConfig | None:
    """The config stored in a safetensors checkpoint's metadata (by ``save_checkpoint``), read
    without loading any tensor; None when there is none."""
    import json

    path = Path(checkpoint)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files or files[0].suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt", device="cpu") as fh:
        meta = fh.metadata() or {}
    if "longlive_config" not in meta:
        return None
    return ModelConfig.from_dict(json.loads(meta["longlive_config"]))


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


def _text_encoder_spec(cfg: ModelConfig, name, ckpt_dir: Path | None, random_weights: bool):
    """What to load as the text encoder (checked up front): a name, a path, or ("hash", dim)."""
    from longlive.model.text_encoder import WAN_T5_CHECKPOINT

    if name is not None:
        text = os.fspath(name)
        if ("/" in text or os.sep in text) and not os.path.exists(text):
            raise FileNotFoundError(f"text encoder path {text!r} does not exist")
        return text
    if cfg.text_encoder != "umt5-xxl":
        return cfg.text_encoder
    if ckpt_dir is not None and (ckpt_dir / WAN_T5_CHECKPOINT).is_file():
        return ckpt_dir
    if random_weights:
        return ("hash", cfg.text_dim)
    raise ValueError(
        f"config {cfg.name!r} uses umT5-XXL: pass its local directory with --text-encoder PATH "
        f"(or put {WAN_T5_CHECKPOINT} next to the checkpoint)"
    )


def _build_text_encoder(cfg: ModelConfig, spec, device):
    from longlive.model import HashTextEncoder, load_text_encoder

    if isinstance(spec, tuple):  # random-weights stand-in for umT5: a weight-free test double
        return HashTextEncoder(spec[1], cfg.text_len, device=device)
    enc = load_text_encoder(spec, max_length=cfg.text_len, device=device)
    if enc.dim != cfg.text_dim:
        raise ValueError(
            f"text encoder {os.fspath(spec)!r} is {enc.dim} wide, config {cfg.name!r} expects "
            f"text_dim={cfg.text_dim}"
        )
    return enc


def _vae_path(cfg: ModelConfig, path, ckpt_dir: Path | None, random_weights: bool):
    if cfg.vae == "patch":
        if path is not None:
            raise ValueError(f"config {cfg.name!r} uses the weight-free PatchVAE; --vae takes no path")
        return None
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"VAE checkpoint {os.fspath(path)!r} does not exist")
        return path
    if ckpt_dir is not None:
        for name in ("Wan2.2_VAE.pth", "Wan2.2_VAE.safetensors"):
            if (ckpt_dir / name).is_file():
                return ckpt_dir / name
    if not random_weights:
        raise ValueError(f"config {cfg.name!r} needs the Wan2.2 VAE: pass --vae PATH (Wan2.2_VAE.pth)")
    return None


def _build_vae(cfg: ModelConfig, path, device, dtype, options: dict):
    from longlive.model import PatchVAE, WanVAE, load_vae

    if cfg.vae == "patch":
        opts = {"patch": cfg.vae_stride[1], "clamp": True}
        opts.update(options)
        vae = PatchVAE(**opts).to(device)
    elif path is not None:
        vae = WanVAE.from_pretrained(path, dtype=dtype, device=device, **options)
    else:  # random weights (benchmarks, smoke tests)
        with torch.device(device), _default_dtype(dtype):
            vae = load_vae("wan2.2", **options)
    if vae.latent_channels != cfg.in_channels or vae.spatial_stride != cfg.vae_stride[1]:
        raise ValueError(
            f"VAE ({vae.latent_channels} channels, stride {vae.spatial_stride}) does not fit config "
            f"{cfg.name!r} (in_channels={cfg.in_channels}, vae_stride={cfg.vae_stride})"
        )
    return vae.eval().requires_grad_(False)
