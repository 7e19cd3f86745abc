"""Argument checks shared by the ops: each raises a ``TypeError``/``ValueError`` that names the
argument, what it got and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_dtype(name: str, x: torch.Tensor, allowed: Sequence[torch.dtype] = FLOAT_DTYPES) -> None:
    check_tensor(name, x)
    if x.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(x.dtype).removeprefix('torch.')}")


def check_nonempty(name: str, x: torch.Tensor) -> None:
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def check_ndim(name: str, x: torch.Tensor, ndim: int | Sequence[int]) -> None:
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in allowed:
        raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dims, got shape {tuple(x.shape)}")


def check_multiple(name: str, value: int, multiple: int, what: str = "size") -> None:
    if value % multiple != 0:
        raise ValueError(f"{name}: {what} must be a multiple of {multiple}, got {value}")


def check_last_dim_contiguous(name: str, x: torch.Tensor) -> None:
    if x.dim() > 0 and x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dim (stride 1), got strides {tuple(x.stride())}")


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    uniq = set(devices.values())
    if len(uniq) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on one device, got {listing}")
    return next(iter(uniq))


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_scale_tensor(name: str, scale: object, like_name: str, like: torch.Tensor) -> torch.Tensor:
    """``scale`` is a one-element fp32 tensor on ``like``'s device (a per-tensor FP8 scale)."""
    check_tensor(name, scale)
    check_dtype(name, scale, (torch.float32,))
    if scale.numel() != 1:
        raise ValueError(f"{name} must have one element, got shape {list(scale.shape)}")
    check_same_device(**{like_name: like, name: scale})
    return scale


def check_positive_bound(name: str, bound: object, device: torch.device) -> None:
    """``bound`` is None, a positive finite number, or a one-element floating tensor on ``device`` (a
    caller-known upper bound, e.g. of a tensor's amax)."""
    if bound is None:
        return
    if isinstance(bound, torch.Tensor):
        if not bound.is_floating_point() or bound.numel() != 1:
            raise ValueError(f"{name} must be a one-element floating tensor, got {bound.dtype} of shape "
                             f"{list(bound.shape)}")
        if bound.device != device:
            raise ValueError(f"{name} is on {bound.device}, the tensors it bounds on {device}")
        return
    if isinstance(bound, bool) or not isinstance(bound, (int, float)):
        raise TypeError(f"{name} must be a float or a one-element tensor, got {type(bound).__name__}")
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"{name} must be a positive finite upper bound, got {bound}")
