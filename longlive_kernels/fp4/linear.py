"""``NVFP4Linear``: a drop-in ``nn.Linear`` for NVFP4 inference and NVFP4 training (QAT), and
``quantize_model`` (a module swap; no monkey-patching).

Modes
-----
- ``"bf16"``: plain ``F.linear`` (the baseline).
- ``"nvfp4"`` (W4A4): activations quantized per call to NVFP4 (1×16 blocks), NVFP4 weights,
  exact NVFP4 GEMM (:func:`~longlive_kernels.fp4.nvfp4_gemm`).
- ``"w4a16"``: NVFP4 weights, bf16/fp16 activations.
- ``"fp8"``: weights re-quantized once to FP8 E4M3 per output row, activations per token row
  (:mod:`~longlive_kernels.fp4.fp8`); Hopper-native speed, not NVFP4-exact. Inference only.

Inference modules store the packed weight as buffers (the float weight is freed):
``weight_data`` uint8 [out, in/2], ``weight_scale`` float8_e4m3fn [out, in/16],
``weight_global_scale`` fp32 [1] (NVFP4) or ``weight_fp8`` float8_e4m3fn [out, in], ``weight_scale``
fp32 [out] (FP8) — plain tensors, so ``safetensors.torch.save_file(model.state_dict())`` works and a
quantized model loads without re-quantizing. Loading a float ``weight`` into a packed module
quantizes it on load.

Training (``trainable=True``, modes ``nvfp4``/``w4a16``) keeps a high-precision master ``weight``
Parameter and follows the NVFP4 recipe of Transformer Engine / the paper's FourOverSix linear
(``longlive-spec.md`` §3.6): forward ``Q(X)·Q(W)ᵀ`` with 1×16 activation blocks and 16×16 weight
blocks; dgrad ``Q_sr(dY)·Q(Wᵀ)`` (stochastic rounding on dY; with 16×16 blocks ``Q(Wᵀ) = Q(W)ᵀ``,
taken by moving the packed nibbles, :func:`~longlive_kernels.fp4.gemm_operands.transpose_nvfp4`);
wgrad ``Q_sr(H·dYᵀ)·Q(H·X̂ᵀ)ᵀ`` with the 16-point RHT ``H`` along the token dimension on both
operands and X̂ the decoded FP4 copy of X — the only copy of X saved for backward. ``w4a16``
training is weight-only QAT with a straight-through estimator.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _checks
from .format import BLOCK_SIZE, SCALE_RULES, NVFP4Tensor
from .fp8 import quantize_fp8_rowwise
from .fp8_tensorwise import check_scale_shape, quantize_fp8_tensorwise
from .gemm import nvfp4_gemm
from .gemm_fp8 import fp8_linear
from .gemm_operands import dequantize_nvfp4_t, transpose_nvfp4, transpose_pad_rows
from .quantize import quantize_nvfp4

MODES = ("bf16", "nvfp4", "w4a16", "fp8")


@dataclasses.dataclass(frozen=True)
class NVFP4Recipe:
    """Quantization choices of NVFP4 training (and of the activation quantizer at inference).

    Defaults are Transformer Engine's NVFP4 recipe (standard NVFP4 everywhere); :meth:`four_over_six`
    gives the paper's AR-stage configuration (Four Over Six for activations and gradients).
    """

    act_scale_rule: str = "static6"
    weight_scale_rule: str = "static6"
    grad_scale_rule: str = "static6"
    weight_block_2d: bool | None = None  # None: 16×16 blocks when training, 1×16 for inference
    stochastic_grad: bool = True
    hadamard_wgrad: bool = True

    def __post_init__(self):
        for name in ("act_scale_rule", "weight_scale_rule", "grad_scale_rule"):
            _checks.check_choice(name, getattr(self, name), tuple(SCALE_RULES))

    def weight_2d(self, training: bool) -> bool:
        """Whether weights use 16×16 blocks (TE and the paper: training yes, inference 1×16)."""
        return training if self.weight_block_2d is None else self.weight_block_2d

    @classmethod
    def four_over_six(cls) -> NVFP4Recipe:
        """``configs/nvfp4/train_ar_nvfp4.yaml``: activation mse, weight static_6, gradient mse."""
        return cls(act_scale_rule="four_over_six", grad_scale_rule="four_over_six")


def _draw_seed() -> int:
    """Philox key for stochastic rounding, from torch's CPU generator (no device sync)."""
    return int(torch.randint(0, 2**62, (1,)).item())


class _NVFP4LinearFn(torch.autograd.Function):
    """W4A4 linear with NVFP4 forward, dgrad and wgrad GEMMs (master weight in high precision)."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, recipe: NVFP4Recipe, backend: str):
        xq = quantize_nvfp4(x2d, scale_rule=recipe.act_scale_rule, backend=backend)
        wq = quantize_nvfp4(weight, scale_rule=recipe.weight_scale_rule, block_2d=recipe.weight_2d(True),
                            backend=backend)
        y = nvfp4_gemm(xq, wq, bias=bias, out_dtype=x2d.dtype, backend=backend)
        ctx.save_for_backward(xq.data, xq.scale, xq.global_scale, weight)
        ctx.recipe, ctx.backend, ctx.x_dtype, ctx.has_bias = recipe, backend, x2d.dtype, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x_data, x_scale, x_gs, weight = ctx.saved_tensors
        r, be = ctx.recipe, ctx.backend
        rounding = "stochastic" if r.stochastic_grad else "rne"
        dy = dy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dyq = quantize_nvfp4(dy, scale_rule=r.grad_scale_rule, rounding=rounding, seed=_draw_seed(),
                                 backend=be)
            if r.weight_2d(True):  # Q(Wᵀ) = Q(W)ᵀ with 16×16 blocks: re-quantize W, move nibbles
                wq = quantize_nvfp4(weight, scale_rule=r.weight_scale_rule, block_2d=True, backend=be)
                wtq = transpose_nvfp4(wq, backend=be)
            else:
                wtq = quantize_nvfp4(weight.t().contiguous(), scale_rule=r.weight_scale_rule, backend=be)
            dx = nvfp4_gemm(dyq, wtq, out_dtype=ctx.x_dtype, backend=be)
        if ctx.needs_input_grad[1]:
            m, k = x_data.shape[0], x_data.shape[1] * 2
            xq = NVFP4Tensor(data=x_data, scale=x_scale, global_scale=x_gs, shape=torch.Size((m, k)),
                             dtype=ctx.x_dtype, scale_rule=r.act_scale_rule)
            # wgrad contracts over tokens: quantize X̂ᵀ and dYᵀ along M (zero rows pad M to a multiple
            # of 64, the GEMM's K tile, so the TMA kernel applies to any token count). X̂ᵀ is decoded
            # straight from the saved FP4 copy; each bf16 temporary dies once quantized.
            xt = dequantize_nvfp4_t(xq, pad_rows_to=64, backend=be)
            xtq = quantize_nvfp4(xt, scale_rule=r.act_scale_rule, hadamard=r.hadamard_wgrad, backend=be)
            del xt
            dyt = transpose_pad_rows(dy, pad_rows_to=64, backend=be)
            dytq = quantize_nvfp4(dyt, scale_rule=r.grad_scale_rule, rounding=rounding, seed=_draw_seed(),
                                  hadamard=r.hadamard_wgrad, backend=be)
            del dyt
            # the GEMM rounds its FP32 sum once to any output dtype: no FP32 [N, K] round trip
            dw = nvfp4_gemm(dytq, xtq, out_dtype=weight.dtype, backend=be)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0, dtype=torch.float32)
        return dx, dw, db, None, None


class _W4A16LinearFn(torch.autograd.Function):
    """Weight-only NVFP4 QAT: forward ``X·Q(W)ᵀ``, straight-through gradients in high precision."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, recipe: NVFP4Recipe, backend: str):
        wq = quantize_nvfp4(weight, scale_rule=recipe.weight_scale_rule, block_2d=recipe.weight_2d(True),
                            backend=backend)
        xin = x2d if x2d.dtype in (torch.bfloat16, torch.float16) else x2d.to(torch.bfloat16)
        y = nvfp4_gemm(xin, wq, bias=bias, out_dtype=x2d.dtype, backend=backend)
        ctx.save_for_backward(x2d, wq.data, wq.scale, wq.global_scale)
        ctx.backend, ctx.has_bias, ctx.w_dtype = backend, bias is not None, weight.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x2d, wd, ws, wg = ctx.saved_tensors
        n, k = wd.shape[0], wd.shape[1] * 2
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            w_hat = NVFP4Tensor(data=wd, scale=ws, global_scale=wg, shape=torch.Size((n, k))).dequantize(
                dy.dtype, backend=ctx.backend)
            dx = (dy @ w_hat).to(x2d.dtype)
        if ctx.needs_input_grad[1]:
            dw = _wgrad_16bit(dy, x2d, ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0, dtype=torch.float32)
        return dx, dw, db, None, None


def _wgrad_16bit(dy: torch.Tensor, x2d: torch.Tensor, w_dtype: torch.dtype) -> torch.Tensor:
    """``dyᵀ·x`` with FP32 accumulation, in ``w_dtype``. On CUDA with 16-bit operands one tensor-core GEMM
    (products of 16-bit values are exact in FP32, so this is the FP32 GEMM of the same values up to the
    summation order; FP32 output through ``torch.mm(out_dtype=)``); an FP32 GEMM takes ~15× longer on an
    H100 (no TF32 by default). Elsewhere the FP32 GEMM."""
    if dy.is_cuda and dy.dtype == x2d.dtype and dy.dtype in (torch.bfloat16, torch.float16):
        if w_dtype == dy.dtype:
            return dy.t() @ x2d
        return torch.mm(dy.t(), x2d, out_dtype=torch.float32).to(w_dtype)
    return (dy.float().t() @ x2d.float()).to(w_dtype)


class NVFP4Linear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` with NVFP4 / FP8 weights (see the module docstring).

    Parameters
    ----------
    in_features, out_features : int
        As ``nn.Linear``. NVFP4 modes need ``in_features % 16 == 0``; NVFP4 training also
        ``out_features % 16 == 0`` (the dgrad GEMM contracts over out_features).
    bias : bool
    mode : {"bf16", "nvfp4", "w4a16", "fp8"}
    trainable : bool
        Keep a high-precision master ``weight`` Parameter and quantize in every forward (QAT,
        modes ``nvfp4``/``w4a16``; ``bf16`` is always trainable). Otherwise the weight is stored
        packed and only the bias is a Parameter.
    recipe : NVFP4Recipe, optional
        Scale rules, 2-D weight blocks, stochastic rounding and RHT (default: TE's NVFP4 recipe).
    backend : {"auto", "triton", "torch"}
        Passed to every quantize/GEMM op.
    fp8_scaling : {"row", "tensor"}
        ``fp8`` mode: one E4M3 scale per weight row, or one for the whole weight
        (``quantize_fp8_tensorwise``). A per-tensor weight fed per-tensor activation codes
        (``forward(codes, x_scale=<one element>)``, e.g. from ``adaln_modulate(..., fp8_scale=...)``)
        runs cuBLAS's per-tensor FP8 GEMM where it is the faster one (M = 1760, N = 3072: 1.09–1.22×
        the row-wise kernel); any other input runs the row-wise kernel with the scale broadcast.
    device, dtype :
        Of the master weight / bias (default fp32 master weights for ``trainable``; bf16 otherwise).

    Raises
    ------
    ValueError
        Unknown mode or ``fp8_scaling``, sizes that are not multiples of 16 where required,
        ``trainable`` with ``fp8``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, mode: str = "nvfp4",
                 trainable: bool = False, recipe: NVFP4Recipe | None = None, backend: str = "auto",
                 fp8_scaling: str = "row", device=None, dtype=None):
        super().__init__()
        _checks.check_choice("mode", mode, MODES)
        _checks.check_choice("fp8_scaling", fp8_scaling, ("row", "tensor"))
        self.fp8_scaling = fp8_scaling
        if mode in ("nvfp4", "w4a16") and in_features % BLOCK_SIZE != 0:
            raise ValueError(f"mode={mode!r} needs in_features % 16 == 0, got {in_features}")
        if mode == "nvfp4" and trainable and out_features % BLOCK_SIZE != 0:
            raise ValueError(f"NVFP4 training needs out_features % 16 == 0 (dgrad K), got {out_features}")
        if mode == "fp8" and trainable:
            raise ValueError("mode='fp8' is inference-only; use mode='nvfp4' or 'bf16' for training")
        self.in_features, self.out_features = in_features, out_features
        self.mode = mode
        self.trainable = trainable or mode == "bf16"
        self.recipe = recipe or NVFP4Recipe()
        self.backend = backend
        # nvfp4_gemm's algorithm for the W4A4 inference GEMM ("auto": "predecode" on Hopper for M > 256 trades
        # activation traffic for the cheaper W4A16 main loop — pick it from bench_gemm numbers)
        self.gemm_algorithm = "auto"
        master_dtype = dtype or (torch.float32 if trainable else torch.bfloat16)
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=master_dtype)) if bias else None
        weight = torch.empty(out_features, in_features, device=device, dtype=master_dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        if self.trainable:
            self.weight = nn.Parameter(weight)
        else:
            self.weight = None
            self._register_packed(weight)

    # -- packed storage ------------------------------------------------------------------------

    def _packed_names(self) -> tuple[str, ...]:
        if self.trainable:
            return ()
        return ("weight_fp8", "weight_scale") if self.mode == "fp8" else (
            "weight_data", "weight_scale", "weight_global_scale")

    def _register_packed(self, weight: torch.Tensor) -> None:
        for name, t in self._pack(weight).items():
            self.register_buffer(name, t)

    def _pack(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight must be [{self.out_features}, {self.in_features}], got {tuple(weight.shape)}")
        w = weight.detach()
        if w.dtype not in _checks.FLOAT_DTYPES:
            w = w.float()
        w = w.contiguous()
        # a meta weight (from_linear's placeholder) only needs shapes: a compiled backend cannot take it
        backend = "torch" if w.device.type == "meta" else self.backend
        if self.mode == "fp8":
            tensor = self.fp8_scaling == "tensor"
            q, s = quantize_fp8_tensorwise(w) if tensor else quantize_fp8_rowwise(w, backend=backend)
            return {"weight_fp8": q, "weight_scale": s}
        wq = quantize_nvfp4(w, scale_rule=self.recipe.weight_scale_rule, block_2d=self.recipe.weight_2d(False),
                            backend=backend)
        return {"weight_data": wq.data, "weight_scale": wq.scale,
                "weight_global_scale": wq.global_scale.reshape(1).float()}

    def packed_weight(self) -> NVFP4Tensor:
        """The stored NVFP4 weight [out, in] (packed modules ``nvfp4``/``w4a16`` only)."""
        if self.trainable or self.mode not in ("nvfp4", "w4a16"):
            raise ValueError(f"packed_weight() needs a packed nvfp4/w4a16 module, got mode={self.mode!r}, "
                             f"trainable={self.trainable}")
        return NVFP4Tensor(data=self.weight_data, scale=self.weight_scale,
                           global_scale=self.weight_global_scale.reshape(()),
                           shape=torch.Size((self.out_features, self.in_features)),
                           scale_rule=self.recipe.weight_scale_rule, block_2d=self.recipe.weight_2d(False))

    @torch.no_grad()
    def pack(self) -> NVFP4Linear:
        """Quantize the master weight once, store it packed and free it (training → inference)."""
        if self.mode == "bf16" or not self.trainable:
            return self
        weight = self.weight
        del self._parameters["weight"]
        self.weight = None
        self.trainable = False
        self._register_packed(weight)
        return self

    def _apply(self, fn, recurse=True):
        # model.to(dtype) must not convert packed codes/scales (float8 counts as floating point).
        packed = {n: getattr(self, n) for n in self._packed_names()}
        super()._apply(fn, recurse)
        for name, old in packed.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "weight"
        if not self.trainable and key in state_dict:  # a float checkpoint into a packed module
            weight = state_dict.pop(key)
            for name, t in self._pack(weight.to(self._packed_device())).items():
                state_dict[prefix + name] = t
        elif self.trainable and self.mode != "bf16" and key not in state_dict and prefix + "weight_data" in state_dict:
            error_msgs.append(f"{prefix}: packed NVFP4 weights cannot be loaded into a trainable module "
                              "(it needs the high-precision master weight)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _packed_device(self) -> torch.device:
        return getattr(self, self._packed_names()[0]).device

    # -- construction from nn.Linear -----------------------------------------------------------

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str = "nvfp4", *, trainable: bool = False,
                    recipe: NVFP4Recipe | None = None, backend: str = "auto", fp8_scaling: str = "row"
                    ) -> NVFP4Linear:
        """Build from an ``nn.Linear`` (its weight is quantized once unless ``trainable``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, mode=mode, trainable=trainable,
                  recipe=recipe, backend=backend, fp8_scaling=fp8_scaling, device="meta", dtype=w.dtype)
        if w.device.type == "meta":
            return mod
        with torch.no_grad():
            if mod.trainable:
                mod.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
            else:
                for name, t in mod._pack(w).items():
                    mod._buffers[name] = t
            if linear.bias is not None:
                mod.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return mod

    # -- forward ---------------------------------------------------------------------------------

    # activations ``forward(x, input_activation=...)`` applies to x first (fused into the FP8 quantization)
    INPUT_ACTIVATIONS = ("gelu_tanh",)

    @property
    def takes_fp8_input(self) -> bool:
        """True when ``forward(codes, x_scale=...)`` feeds already quantized row-wise E4M3
        activations straight to the FP8 GEMM (``fp8`` mode, not trainable); other modes accept them
        too but decode them to bf16 first."""
        return self.mode == "fp8" and not self.trainable

    def forward(self, x: torch.Tensor, *, input_activation: str | None = None,
                x_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``linear(act(x))``; ``input_activation="gelu_tanh"`` is ``F.gelu(x, approximate="tanh")``,
        fused into the row-wise quantization in ``fp8`` mode (the FFN's GELU pass disappears), applied
        by torch in the other modes.

        With ``x_scale`` [...] fp32, ``x`` [..., K] is float8_e4m3fn row-wise codes (``x ≈ codes ·
        x_scale[..., None]``, e.g. from ``adaln_modulate(..., out_fp8=True)``), or per-tensor codes
        with a one-element ``x_scale`` (``out_fp8=True, fp8_scale=...``): in ``fp8`` mode
        they go to the GEMM as they are (no quantization pass; the output is bf16); other modes
        decode them to bf16 first."""
        if x_scale is not None:
            if x.dtype != torch.float8_e4m3fn:
                raise TypeError(f"x_scale needs float8_e4m3fn x (row-wise codes), got x of {x.dtype}")
            if input_activation is not None:
                raise ValueError("input_activation cannot apply to already quantized x (x_scale given)")
            check_scale_shape("x_scale", x_scale, tuple(x.shape[:-1]))
            if not self.takes_fp8_input:
                dt = self.weight.dtype if self.mode == "bf16" else torch.bfloat16
                x, x_scale = (x.float() * x_scale.float().unsqueeze(-1)).to(dt), None
        if input_activation is not None:
            if input_activation not in self.INPUT_ACTIVATIONS:
                raise ValueError(f"input_activation must be None or one of {self.INPUT_ACTIVATIONS}, got "
                                 f"{input_activation!r}")
            if self.mode != "fp8" or self.trainable or x.dtype not in _checks.FLOAT_DTYPES:
                x = F.gelu(x, approximate="tanh")
                input_activation = None
        if self.mode == "bf16":
            return F.linear(x, self.weight, self.bias)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dim {self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        out_dtype = x.dtype if x.dtype in _checks.FLOAT_DTYPES else torch.bfloat16
        bias = self.bias
        if self.trainable:
            fn = _NVFP4LinearFn if self.mode == "nvfp4" else _W4A16LinearFn
            y = fn.apply(x2d, self.weight, bias, self.recipe, self.backend)
        elif self.mode == "fp8":
            # one call, two launches (row-wise quantize, cuBLAS FP8 GEMM); the same bits as
            # fp8_gemm(*quantize_fp8_rowwise(x2d), ...) with less host time per call
            xs = None if x_scale is None else x_scale.reshape(-1)
            y = fp8_linear(x2d, self.weight_fp8, self.weight_scale, x_scale=xs, bias=bias, out_dtype=out_dtype,
                           input_activation=input_activation, backend=self.backend)
        elif self.mode == "nvfp4":
            xq = quantize_nvfp4(x2d, scale_rule=self.recipe.act_scale_rule, backend=self.backend)
            y = nvfp4_gemm(xq, self.packed_weight(), bias=bias, out_dtype=out_dtype, algorithm=self.gemm_algorithm,
                           backend=self.backend)
        else:
            xin = x2d if x2d.dtype in (torch.bfloat16, torch.float16) else x2d.to(torch.bfloat16)
            y = nvfp4_gemm(xin, self.packed_weight(), bias=bias, out_dtype=out_dtype, backend=self.backend)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        fp8 = f", fp8_scaling={self.fp8_scaling}" if self.mode == "fp8" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mode={self.mode}{fp8}, trainable={self.trainable}")


def quantize_model(
    model: nn.Module,
    mode: str = "nvfp4",
    *,
    skip: tuple[str, ...] | list[str] = (),
    trainable: bool = False,
    recipe: NVFP4Recipe | None = None,
    backend: str = "auto",
    fp8_tensor: tuple[str, ...] | list[str] = (),
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`NVFP4Linear` (in place; returns model).

    Parameters
    ----------
    model : nn.Module
    mode : {"bf16", "nvfp4", "w4a16", "fp8"}
    skip : sequence of str
        ``fnmatch`` patterns of qualified module names to keep in high precision (e.g.
        ``("head.*", "*.modulation", "time_embedding.*")``). Linears whose sizes the mode cannot
        handle (in_features % 16, or out_features % 16 when training NVFP4) are kept as well.
    trainable, recipe, backend :
        As :class:`NVFP4Linear`.
    fp8_tensor : sequence of str
        ``fp8`` mode: ``fnmatch`` patterns of the linears whose weight gets one per-tensor scale
        (``fp8_scaling="tensor"``: those fed by a LayerNorm producer with a known bound); the
        others are row-wise.

    Returns
    -------
    nn.Module
        ``model``, with the swapped modules (weights quantized once unless ``trainable``; modules
        on the meta device stay empty, ready for ``load_state_dict``/``to_empty``).
    """
    _checks.check_choice("mode", mode, MODES)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    targets = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear or any(fnmatch.fnmatchcase(name, p) for p in skip):
            continue
        if mode in ("nvfp4", "w4a16") and mod.in_features % BLOCK_SIZE != 0:
            continue
        if mode == "nvfp4" and trainable and mod.out_features % BLOCK_SIZE != 0:
            continue
        targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        scaling = "tensor" if any(fnmatch.fnmatchcase(name, p) for p in fp8_tensor) else "row"
        setattr(parent, child, NVFP4Linear.from_linear(getattr(parent, child), mode, trainable=trainable,
                                                       recipe=recipe, backend=backend, fp8_scaling=scaling))
    return model
