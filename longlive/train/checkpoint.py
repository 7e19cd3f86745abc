"""Training checkpoints: safetensors model / EMA / optimizer / RNG state, written atomically, auto-resume.

Layout of ``<dir>/step_<N>/`` (a folder is renamed into place only when complete, so a crash
mid-save never leaves a readable half checkpoint; ``<dir>/latest`` names the newest one)::

    model.safetensors       full fp32 master weights, official Wan names; metadata ``longlive_config``
                            and ``longlive_linear_mode="bf16"`` (float weights), so
                            ``longlive.model.load_pretrained(path, mode="nvfp4")`` serves it directly
    ema.safetensors         the EMA weights in the same format (what inference should load)
    optimizer.safetensors   AdamW state as ``state.<param>.<exp_avg|exp_avg_sq|step>``; param groups in metadata
    rng.safetensors         every rank's torch CPU (and CUDA) generator state
    trainer_state.json      step, model config, linear mode, SP/DP sizes, the run config

Under FSDP2 the full tensors are gathered with ``torch.distributed.checkpoint.state_dict``
(``full_state_dict=True, cpu_offload=True``) and written by rank 0; on resume every rank reads the
files and keeps its shard. Resuming restores weights, AdamW moments and step counts, EMA and RNG
bit for bit; with the step-indexed data order and noise (``StepSampler``, ``step_generator``) the
loss curve continues exactly as in an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = [
    "CheckpointConfigMismatch",
    "TrainingCheckpoint",
    "export_weights",
    "find_latest_checkpoint",
    "gather_full_state",
    "read_checkpoint",
    "restore_full_state",
    "write_checkpoint",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointConfigMismatch(ValueError):
    """A checkpoint made for another model configuration (the message lists the differing fields)."""


@dataclass
class TrainingCheckpoint:
    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict
    rng: dict[str, torch.Tensor]
    state: dict


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None
):
    """Full (unsharded, CPU) model, optimizer and EMA state dicts on rank 0 (others get empty dicts).

    Collective under FSDP2: every rank must call it. ``ema`` maps parameter names to fp32 tensors
    shaped like each parameter's local shard.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    writer = not _distributed() or dist.get_rank() == 0
    ema_sd: dict[str, torch.Tensor] = {}
    if ema is not None:
        from torch.distributed.tensor import DTensor

        params = dict(model.named_parameters())
        for name, local in ema.items():
            p = params[name]
            full = (
                DTensor.from_local(
                    local, p.device_mesh, p.placements, shape=p.shape, stride=p.stride()
                ).full_tensor()
                if _is_dtensor(p)
                else local
            )
            if writer:
                ema_sd[_clean(name)] = full.detach().to("cpu", copy=True)
    return (model_sd if writer else {}), (optim_sd if writer else {}), (ema_sd if writer else {})


def _clean(name: str) -> str:
    for token in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(token, "")
    return name


def restore_full_state(
    model, optimizer, ckpt: TrainingCheckpoint, ema: dict[str, torch.Tensor] | None
) -> None:
    """Load a checkpoint's full state into a (possibly FSDP2-sharded) model, its optimizer and EMA."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ckpt.model, options=opts)
    set_optimizer_state_dict(model, optimizer, ckpt.optimizer, options=opts)
    if ema is not None and ckpt.ema is not None:
        from torch.distributed.tensor import distribute_tensor

        params = dict(model.named_parameters())
        for name, local in ema.items():
            full = ckpt.ema[_clean(name)]
            p = params[name]
            if _is_dtensor(p):
                shard = distribute_tensor(
                    full.to(local.device), p.device_mesh, p.placements, src_data_rank=None
                )
                local.copy_(shard.to_local())
            else:
                local.copy_(full)


def _flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {}
    for pname, st in osd.get("state", {}).items():
        for key, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"state.{_clean(pname)}.{key}"] = t.detach().to("cpu").contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in osd.get("param_groups", [])
    ]
    for g in groups:
        g["params"] = [_clean(p) for p in g["params"]]
    return tensors, {"param_groups": json.dumps(groups)}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict:
    state: dict[str, dict] = {}
    for key, t in tensors.items():
        pname, sub = key[len("state.") :].rsplit(".", 1)
        state.setdefault(pname, {})[sub] = t
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _weights_metadata(model_config: dict, linear: str) -> dict[str, str]:
    return {
        "format": "pt",
        "longlive_config": json.dumps(model_config),
        "longlive_linear_mode": "bf16",
        "longlive_train_linear": linear,
    }


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    directory: str | os.PathLike,
    step: int,
    *,
    model_sd: dict,
    optim_sd: dict,
    ema_sd: dict | None,
    rng: dict[str, torch.Tensor],
    state: dict,
    keep: int = 3,
) -> Path:
    """Write ``<directory>/step_<step>`` atomically (temp folder + rename), update ``latest``, prune
    to the ``keep`` newest. Call on one rank only."""
    from safetensors.torch import save_file

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    meta = _weights_metadata(state["model_config"], state.get("linear", "bf16"))
    save_file(
        {_clean(k): v.detach().to("cpu").contiguous() for k, v in model_sd.items()},
        str(tmp / "model.safetensors"),
        metadata=meta,
    )
    if ema_sd:
        save_file({k: v.contiguous() for k, v in ema_sd.items()}, str(tmp / "ema.safetensors"), metadata=meta)
    tensors, ometa = _flatten_optimizer(optim_sd)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata=ometa)
    save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "rng.safetensors"))
    with open(tmp / "trainer_state.json", "w", encoding="utf-8") as fh:
        json.dump(dict(state, step=step), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / f".latest.tmp{os.getpid()}"
    latest_tmp.write_text(final.name + "\n", encoding="utf-8")
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    steps = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    )
    for _, old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete ``step_*`` folder of ``directory`` (``latest`` if valid), or None."""
    root = Path(directory)
    if not root.is_dir():
        return None
    latest = root / "latest"
    if latest.is_file():
        cand = root / latest.read_text(encoding="utf-8").strip()
        if (cand / "trainer_state.json").is_file():
            return cand
    steps = sorted(
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / "trainer_state.json").is_file()
    )
    return steps[-1][1] if steps else None


def read_checkpoint(
    path: str | os.PathLike, *, expect_model_config: dict | None = None, expect_linear: str | None = None
) -> TrainingCheckpoint:
    """Read a ``step_*`` folder (or a run folder: its latest checkpoint).

    Raises
    ------
    FileNotFoundError
        No checkpoint at ``path``.
    CheckpointConfigMismatch
        The checkpoint was written for another model configuration or linear mode.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "trainer_state.json").is_file():
        found = find_latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(
                f"no training checkpoint at {str(p)!r} (expected step_*/trainer_state.json)"
            )
        p = found
    with open(p / "trainer_state.json", encoding="utf-8") as fh:
        state = json.load(fh)
    if expect_model_config is not None:
        have = state.get("model_config", {})
        diff = sorted(
            k for k in set(have) | set(expect_model_config) if have.get(k) != expect_model_config.get(k)
        )
        if diff:
            detail = "; ".join(
                f"{k}: checkpoint {have.get(k)!r} vs config {expect_model_config.get(k)!r}" for k in diff
            )
            raise CheckpointConfigMismatch(
                f"checkpoint {str(p)!r} was made for another model configuration ({detail}); "
                "use a matching config or another checkpoint dir"
            )
    if expect_linear is not None and state.get("linear", "bf16") != expect_linear:
        raise CheckpointConfigMismatch(
            f"checkpoint {str(p)!r} trained {state.get('linear')!r} linears, the config asks "
            f"for {expect_linear!r}"
        )
    with safe_open(str(p / "optimizer.safetensors"), framework="pt") as fh:
        ometa = fh.metadata() or {}
    optim = _unflatten_optimizer(load_file(str(p / "optimizer.safetensors")), ometa)
    ema = load_file(str(p / "ema.safetensors")) if (p / "ema.safetensors").is_file() else None
    return TrainingCheckpoint(
        path=p,
        step=int(state["step"]),
        model=load_file(str(p / "model.safetensors")),
        ema=ema,
        optimizer=optim,
        rng=load_file(str(p / "rng.safetensors")),
        state=state,
    )


def collect_rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """Every rank's generator states keyed ``rank<r>.cpu`` / ``rank<r>.cuda`` (collective when distributed)."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if not _distributed():
        return {f"rank0.{k}": v for k, v in mine.items()}
    allr: list = [None] * dist.get_world_size()
    dist.all_gather_object(allr, mine)
    return {f"rank{r}.{k}": v for r, d in enumerate(allr) for k, v in d.items()}


def restore_rng_states(
    rng: dict[str, torch.Tensor], device: torch.device, *, rank: int, world_size: int, saved_world_size: int
) -> bool:
    """Restore this rank's generator states; False (nothing restored) when the world size changed."""
    if saved_world_size != world_size or f"rank{rank}.cpu" not in rng:
        return False
    torch.set_rng_state(rng[f"rank{rank}.cpu"])
    if device.type == "cuda" and f"rank{rank}.cuda" in rng:
        torch.cuda.set_rng_state(rng[f"rank{rank}.cuda"], device)
    return True


def export_weights(checkpoint: str | os.PathLike, out: str | os.PathLike, *, prefer_ema: bool = True) -> Path:
    """Copy a checkpoint's EMA (else model) weights to ``out`` (a ``.safetensors`` file), atomically.

    ``checkpoint`` is a ``step_*`` folder or a run folder (its newest checkpoint). The file keeps the
    config metadata, so ``longlive generate --checkpoint out`` / ``load_pretrained(out)`` need nothing else.
    """
    p = Path(checkpoint)
    if not (p / "trainer_state.json").is_file():
        found = find_latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(f"no training checkpoint at {str(p)!r}")
        p = found
    src = (
        p / "ema.safetensors" if prefer_ema and (p / "ema.safetensors").is_file() else p / "model.safetensors"
    )
    dst = Path(out)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst
