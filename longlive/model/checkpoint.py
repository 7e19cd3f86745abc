"""Load and save :class:`~longlive.model.dit.CausalDiT` weights.

Accepted inputs (local files only, never arbitrary unpickling):

- the official Wan2.2-TI2V-5B DiT (``Wan-AI/Wan2.2-TI2V-5B``: ``diffusion_pytorch_model-*.safetensors``
  + ``*.safetensors.index.json``; original Wan names ``blocks.N.self_attn.q`` …), or the same weights
  in diffusers naming (``WanTransformer3DModel``: ``blocks.N.attn1.to_q``, ``condition_embedder.*``,
  ``scale_shift_table``, ``proj_out`` …; a pipeline directory's ``transformer/`` is used);
- LongLive-2.0 generator checkpoints (merged BF16 ``.pt``): ``torch.load(weights_only=True)``,
  unwrapping ``generator_ema`` / ``generator`` / ``model`` / ``state_dict`` dicts and stripping
  ``model.`` / ``module.`` / FSDP / ``torch.compile`` prefixes;
- our own :func:`save_checkpoint` output (official naming, config in the safetensors metadata;
  packed NVFP4/FP8 linears when saved from a quantized model).

Anything that does not match the model (missing/unexpected keys, shape mismatches) raises
:class:`CheckpointMismatchError` naming the keys, their expected shapes and, when the checkpoint's
own geometry differs, the architecture it was made for.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import MODEL_PRESETS, ModelConfig

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "check_state_dict",
    "infer_architecture",
    "load_checkpoint",
    "load_pretrained",
    "read_state_dict",
    "save_checkpoint",
    "to_official_names",
]

_WRAPPERS_EMA_FIRST = ("generator_ema", "generator", "model", "state_dict", "module", "ema")
_WRAPPERS = ("generator", "generator_ema", "model", "state_dict", "module", "ema")
_INFIX_TOKENS = ("_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module")
_LEADING_PREFIXES = ("module.", "model.", "generator.", "diffusion_model.", "transformer.")

# diffusers WanTransformer3DModel → original Wan names (facts of the public conversion map).
_DIFFUSERS_TOP = {
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "proj_out.": "head.head.",
}
_DIFFUSERS_BLOCK = {
    "attn1.to_q.": "self_attn.q.", "attn1.to_k.": "self_attn.k.", "attn1.to_v.": "self_attn.v.",
    "attn1.to_out.0.": "self_attn.o.", "attn1.norm_q.": "self_attn.norm_q.", "attn1.norm_k.": "self_attn.norm_k.",
    "attn2.to_q.": "cross_attn.q.", "attn2.to_k.": "cross_attn.k.", "attn2.to_v.": "cross_attn.v.",
    "attn2.to_out.0.": "cross_attn.o.", "attn2.norm_q.": "cross_attn.norm_q.", "attn2.norm_k.": "cross_attn.norm_k.",
    "ffn.net.0.proj.": "ffn.0.", "ffn.net.2.": "ffn.2.",
    "norm2.": "norm3.",  # diffusers' norm2 is Wan's cross-attention LayerNorm (the one with affine)
}


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model (another architecture, missing or unexpected keys)."""


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` found and did."""

    source: str = ""
    naming: str = "wan"  # "wan" | "diffusers"
    wrapper: str | None = None  # dict key unwrapped ("generator_ema", ...)
    stripped: list[str] = field(default_factory=list)  # prefixes/infixes removed
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, ckpt shape, model shape
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _pick_files(path: Path) -> list[Path]:
    """The DiT weight files of a directory (never the VAE/T5 files that sit next to them)."""
    if (path / "transformer").is_dir() and not any(path.glob("*.safetensors")):
        path = path / "transformer"
    indices = sorted(path.glob("*.safetensors.index.json"))
    if len(indices) > 1:
        preferred = [p for p in indices if p.name.startswith("diffusion_pytorch_model")]
        indices = preferred or indices
    if indices:
        with open(indices[0], encoding="utf-8") as fh:
            weight_map = json.load(fh).get("weight_map", {})
        if not weight_map:
            raise ValueError(f"{indices[0]} has no 'weight_map'")
        return [path / f for f in sorted(set(weight_map.values()))]
    st = sorted(path.glob("diffusion_pytorch_model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if st:
        return st
    pts = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth", ".bin"))
    named = [p for p in pts if re.match(r"(model|generator|diffusion_pytorch_model|dit)", p.name)]
    if len(named) == 1 or len(pts) == 1:
        return [(named or pts)[0]]
    raise FileNotFoundError(f"no DiT weights found in {path}: expected *.safetensors (+ index json) or one "
                            f"model*.pt/.pth; found {[p.name for p in pts] or 'nothing'}")


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _read_file(path: Path, meta: dict[str, str], dtype: torch.dtype | None = None) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta.update(fh.metadata() or {})
            for k in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                out[k] = _cast(fh.get_tensor(k), dtype)  # one tensor at a time: peak = target size
        return out
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip archive (legacy format): mmap unsupported
            return torch.load(str(path), map_location="cpu", weights_only=True)
    raise ValueError(f"unsupported checkpoint file {path.name!r}: expected .safetensors, .pt, .pth or .bin")


def _unwrap(obj, prefer_ema: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    wrapper = None
    for _ in range(4):
        if not isinstance(obj, dict):
            raise TypeError(f"checkpoint holds a {type(obj).__name__}, expected a state dict")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj, wrapper
        for key in (_WRAPPERS_EMA_FIRST if prefer_ema else _WRAPPERS):
            if isinstance(obj.get(key), dict) and obj[key]:
                wrapper = key if wrapper is None else f"{wrapper}.{key}"
                obj = obj[key]
                break
        else:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors, wrapper
            raise ValueError(f"checkpoint dict has no tensors and no known wrapper key "
                             f"({', '.join(_WRAPPERS)}); top-level keys: {sorted(obj)[:20]}")
    raise ValueError("checkpoint nesting too deep")


def _strip(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    stripped = []
    if any(tok in k for k in sd for tok in _INFIX_TOKENS):
        new = {}
        for k, v in sd.items():
            parts = [p for p in k.split(".") if p not in _INFIX_TOKENS]
            new[".".join(parts)] = v
        stripped += [t for t in _INFIX_TOKENS if any(t in k for k in sd)]
        sd = new
    changed = True
    while changed:
        changed = False
        for pre in _LEADING_PREFIXES:
            if sd and all(k.startswith(pre) for k in sd):
                sd = {k[len(pre):]: v for k, v in sd.items()}
                stripped.append(pre)
                changed = True
    return sd, stripped


def to_official_names(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename diffusers ``WanTransformer3DModel`` keys to the original Wan names (no-op for Wan names).

    Returns (state dict, ``"diffusers"`` or ``"wan"``)."""
    if not any(k.startswith("condition_embedder.") or ".attn1." in k or k == "scale_shift_table" for k in sd):
        return sd, "wan"
    out = {}
    for k, v in sd.items():
        nk = k
        if k == "scale_shift_table":
            nk = "head.modulation"
        elif re.match(r"blocks\.\d+\.scale_shift_table$", k):
            nk = k.replace("scale_shift_table", "modulation")
        elif k.startswith("blocks."):
            head, _, rest = k.partition(".")
            idx, _, rest = rest.partition(".")
            for a, b in _DIFFUSERS_BLOCK.items():
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            nk = f"{head}.{idx}.{rest}"
        else:
            for a, b in _DIFFUSERS_TOP.items():
                if k.startswith(a):
                    nk = b + k[len(a):]
                    break
        out[nk] = v
    return out, "diffusers"


def read_state_dict(path: str | os.PathLike, *, prefer_ema: bool = True,
                    dtype: torch.dtype | None = None) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Read DiT weights from a file or directory into a flat dict in the official Wan naming.

    Parameters
    ----------
    path : path
        A ``.safetensors`` / ``.pt`` / ``.pth`` file or a directory (sharded safetensors with an
        index json, a diffusers pipeline directory, or one ``model*.pt``).
    prefer_ema : bool
        With both ``generator_ema`` and ``generator`` in a training checkpoint, take the EMA weights.
    dtype : torch.dtype, optional
        Cast floating tensors while reading (the official 5B files are fp32: reading them as bf16
        keeps host memory at ~10 GB instead of 20 + 10).

    Returns
    -------
    (state_dict, LoadReport) with ``naming``, ``wrapper``, ``stripped`` and ``metadata`` filled in.

    Raises
    ------
    FileNotFoundError, ValueError
        No weights found; unsupported file type; a LoRA-adapter or FourOverSix NVFP4 checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {p} does not exist")
    files = _pick_files(p) if p.is_dir() else [p]
    meta: dict[str, str] = {}
    raw: dict = {}
    for f in files:
        obj = _read_file(f, meta, dtype)
        if len(files) > 1:
            raw.update(obj)
        else:
            raw = obj
    sd, wrapper = _unwrap(raw, prefer_ema)
    if dtype is not None:  # .pt files are memory-mapped: casting tensor by tensor stays cheap
        sd = {k: _cast(v, dtype) for k, v in sd.items()}
    sd, stripped = _strip(sd)
    if any(k.endswith("quantized_weight_values") for k in sd):
        raise ValueError(f"{p}: FourOverSix materialised NVFP4 state dicts (model_4o6.pt) are not supported; "
                         "load the merged BF16 generator (model_bf16.pt) and quantize on load (mode='nvfp4')")
    if any("lora_A" in k or "lora_B" in k for k in sd):
        raise ValueError(f"{p}: this is a LoRA adapter checkpoint (lora_A/lora_B keys); merge it into the base "
                         "weights first (LongLive merged BF16 generator)")
    sd, naming = to_official_names(sd)
    rep = LoadReport(source=str(p), naming=naming, wrapper=wrapper, stripped=stripped, metadata=meta)
    return sd, rep


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------
def infer_architecture(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    """Geometry readable from the weights: dim, num_layers, ffn_dim, in/out channels, patch_size,
    text_dim, freq_dim (only the fields whose keys are present)."""
    arch: dict[str, object] = {}
    pe = sd.get("patch_embedding.weight")
    if pe is not None and pe.dim() == 5:
        arch.update(dim=pe.shape[0], in_channels=pe.shape[1], patch_size=tuple(pe.shape[2:]))
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        arch["num_layers"] = max(blocks) + 1
    if (w := sd.get("blocks.0.ffn.0.weight")) is not None:
        arch["ffn_dim"] = w.shape[0]
    if (w := sd.get("text_embedding.0.weight")) is not None:
        arch["text_dim"] = w.shape[1]
    if (w := sd.get("time_embedding.0.weight")) is not None:
        arch["freq_dim"] = w.shape[1]
    if (w := sd.get("head.head.weight")) is not None and "patch_size" in arch:
        pt, ph, pw = arch["patch_size"]
        arch["out_channels"] = w.shape[0] // (pt * ph * pw)
    return arch


def _config_arch(cfg: ModelConfig) -> dict[str, object]:
    return {"dim": cfg.dim, "in_channels": cfg.in_channels, "patch_size": tuple(cfg.patch_size),
            "num_layers": cfg.num_layers, "ffn_dim": cfg.ffn_dim, "text_dim": cfg.text_dim,
            "freq_dim": cfg.freq_dim, "out_channels": cfg.out_channels}


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], *, report: LoadReport | None = None,
                     raise_on_error: bool = True, max_listed: int = 12) -> LoadReport:
    """Compare ``sd`` with ``model.state_dict()`` (keys and shapes; works on meta models).

    Raises
    ------
    CheckpointMismatchError
        When ``raise_on_error`` and anything is missing, unexpected or mis-shaped. The message
        names the first ``max_listed`` keys of each kind with the expected shapes, and the
        checkpoint's architecture when it differs from the model's config.
    """
    rep = report or LoadReport()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    rep.missing = sorted(k for k in expected if k not in sd)
    rep.unexpected = sorted(k for k in sd if k not in expected)
    rep.mismatched = [(k, tuple(sd[k].shape), expected[k]) for k in sorted(expected)
                      if k in sd and tuple(sd[k].shape) != expected[k]]
    if rep.ok or not raise_on_error:
        return rep
    cfg = getattr(model, "config", None)
    lines = [f"checkpoint {rep.source or '<state dict>'} does not match the model"
             + (f" (config {cfg.name!r})" if cfg is not None else "")]
    if cfg is not None:
        have, want = infer_architecture(sd), _config_arch(cfg)
        diff = {k: (have[k], want[k]) for k in have if k in want and have[k] != want[k]}
        if diff:
            lines.append("checkpoint of another architecture: " + ", ".join(
                f"{k}={a} (expected {b})" for k, (a, b) in diff.items()))
            match = [n for n, c in MODEL_PRESETS.items() if all(_config_arch(c).get(k) == v for k, v in have.items())]
            if match:
                lines.append(f"the checkpoint matches preset {match[0]!r}")
    for title, items in (("missing keys (expected shape)", [f"{k} {list(expected[k])}" for k in rep.missing]),
                         ("unexpected keys (checkpoint shape)", [f"{k} {list(sd[k].shape)}" for k in rep.unexpected]),
                         ("shape mismatches (checkpoint vs expected)",
                          [f"{k}: {list(a)} vs {list(b)}" for k, a, b in rep.mismatched])):
        if items:
            more = f" … and {len(items) - max_listed} more" if len(items) > max_listed else ""
            lines.append(f"{len(items)} {title}: " + "; ".join(items[:max_listed]) + more)
    raise CheckpointMismatchError("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Loading / saving
# ---------------------------------------------------------------------------------------------
def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *, strict: bool = True,
                    prefer_ema: bool = True, assign: bool = False) -> LoadReport:
    """Load DiT weights from ``path`` into ``model`` (see :func:`read_state_dict` for formats).

    Tensors are cast to each parameter's dtype. ``assign=True`` (for models on the meta device)
    adopts the checkpoint tensors instead of copying. With ``strict`` any mismatch raises
    :class:`CheckpointMismatchError`; otherwise matching keys are loaded and the report lists the rest.
    """
    sd, rep = read_state_dict(path, prefer_ema=prefer_ema)
    mode = rep.metadata.get("longlive_linear_mode", "bf16")
    current = getattr(model, "linear_mode", "bf16")
    if mode != current:
        raise CheckpointMismatchError(f"{path}: checkpoint holds {mode!r} linears, the model is in {current!r} mode; "
                                      f"call model.quantize_({mode!r}) first or use load_pretrained(mode=...)")
    check_state_dict(model, sd, report=rep, raise_on_error=strict)
    own = model.state_dict()
    sd = {k: (v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v)
          for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(sd, strict=False, assign=assign)
    return rep


def _peek_metadata(path) -> dict[str, str]:
    """safetensors header metadata of the first weight file (no tensor is read); {} otherwise."""
    p = Path(path)
    if not p.exists():
        return {}
    first = _pick_files(p)[0] if p.is_dir() else p
    if first.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(first), framework="pt", device="cpu") as fh:
        return dict(fh.metadata() or {})


def _config_for(sd, rep: LoadReport, path) -> ModelConfig:
    if "longlive_config" in rep.metadata:
        return ModelConfig.from_dict(json.loads(rep.metadata["longlive_config"]))
    have = infer_architecture(sd)
    for cfg in MODEL_PRESETS.values():
        if have and all(_config_arch(cfg).get(k) == v for k, v in have.items()):
            return cfg
    raise CheckpointMismatchError(f"{path}: no preset matches the checkpoint's architecture {have}; "
                                  "pass config=ModelConfig(...) (num_heads cannot be read from weights)")


def load_pretrained(path: str | os.PathLike, config: ModelConfig | str | None = None, *, device=None,
                    dtype: torch.dtype = torch.bfloat16, mode: str = "bf16", ops: str = "kernels",
                    prefer_ema: bool = True, strict: bool = True):
    """Build a :class:`CausalDiT` and load ``path`` into it without a second copy of the weights.

    Parameters
    ----------
    config : ModelConfig or preset name, optional
        Default: the config stored by :func:`save_checkpoint`, else the preset whose geometry
        matches the weights (``wan2.2-ti2v-5b`` for the official checkpoint).
    device, dtype :
        Target device and floating dtype of the high-precision parameters.
    mode : {"bf16", "nvfp4", "w4a16", "fp8", "fp8_tensor"}
        Linear mode. A BF16 checkpoint is quantized on load (``model.quantize_(mode)`` after
        loading); a checkpoint saved from a quantized model in the same mode loads its packed
        weights directly.
    """
    from .dit import CausalDiT

    packed = _peek_metadata(path).get("longlive_linear_mode", "bf16") != "bf16"
    sd, rep = read_state_dict(path, prefer_ema=prefer_ema, dtype=None if packed else dtype)
    if isinstance(config, str):
        config = ModelConfig.from_name(config)
    cfg = config or _config_for(sd, rep, path)
    saved_mode = rep.metadata.get("longlive_linear_mode", "bf16")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if saved_mode != "bf16":
        if saved_mode != mode:
            raise CheckpointMismatchError(f"{path}: checkpoint holds packed {saved_mode!r} linears, cannot load "
                                          f"into mode {mode!r}; load a BF16 checkpoint instead")
        with torch.device(device):
            model = CausalDiT(cfg, ops=ops)
        model.to(dtype).quantize_(mode)
        check_state_dict(model, sd, report=rep, raise_on_error=strict)
        model.load_state_dict(sd, strict=strict)
        return model
    with torch.device("meta"):
        model = CausalDiT(cfg, ops=ops)
    check_state_dict(model, sd, report=rep, raise_on_error=strict)
    sd = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in sd.items()}
    model.load_state_dict(sd, strict=strict, assign=True)
    return model.quantize_(mode)


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *, shard_bytes: int | None = None) -> Path:
    """Write ``model``'s weights as safetensors in the official Wan naming.

    ``path`` ending in ``.safetensors`` → one file; otherwise a directory with
    ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` shards of ≤ ``shard_bytes`` (default
    5 GB) and ``diffusion_pytorch_model.safetensors.index.json``. The model config and linear mode
    are stored in the metadata, so :func:`load_pretrained` rebuilds the model without arguments.
    """
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
          if isinstance(v, torch.Tensor)}
    meta = {"format": "pt", "longlive_linear_mode": getattr(model, "linear_mode", "bf16")}
    if getattr(model, "config", None) is not None:
        meta["longlive_config"] = json.dumps(model.config.to_dict())
    p = Path(path)
    if p.suffix == ".safetensors" and shard_bytes is None:
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(p), metadata=meta)
        return p
    p.mkdir(parents=True, exist_ok=True)
    limit = shard_bytes or 5 * 1024**3
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(p / name), metadata=meta)
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    with open(p / "diffusion_pytorch_model.safetensors.index.json", "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return p
