"""Flow-matching UniPC multistep sampler (LongLive-2.0's few-step schedule, spec §2.7).

LongLive builds a fresh ``FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1,
solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
final_sigmas_type="zero")`` per chunk and calls ``set_timesteps(steps, shift=5.0)``. This module
is a small re-implementation of exactly that configuration (the UniPC predictor-corrector of
Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework", in its B(h) = e^h − 1 form,
applied to the flow-matching parameterisation x_σ = (1 − σ)·x0 + σ·ε):

- schedule: σ_k = linspace(σ_max = 0.999, 0, N + 1)[k] for k < N, shifted σ'_k = sσ/(1 + (s−1)σ)
  with s = 5; the model is fed ``timesteps = int(σ'·1000)`` (4 steps: 999, 937, 833, 624);
  the sigma list ends with 0;
- the network predicts the flow v ≈ ε − x0; the solver works on the data prediction
  x0 = x_σ − σ·v;
- step k: UniC corrector of the previous step's prediction (k ≥ 1), then the UniP predictor
  to σ_{k+1}; order 1 at the first step (warm-up) and at the last step (``lower_order_final``),
  order 2 otherwise; the last step (σ = 0) returns the x0 prediction.

All solver coefficients depend only on the σ schedule, so they are computed once per schedule in
float64 (Python floats); a step is a handful of fused tensor AXPYs in the latents' dtype (fp32 in
the pipeline). The sampler is stateful (history of x0 predictions): one instance per chunk, or
:meth:`FlowUniPCScheduler.reset` between chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["MAX_STEPS", "FlowUniPCScheduler", "unipc_sigmas", "unipc_timesteps"]

MAX_STEPS = 8
NUM_TRAIN_TIMESTEPS = 1000
SIGMA_MAX = 0.999  # 1 − 1/num_train_timesteps: the first entry of the 1000-entry training table


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(
            f"steps must be an int in [1, {MAX_STEPS}] (4 default, 2-3 for few-step checkpoints), "
            f"got {steps!r}"
        )
    return steps


def _shifted(steps: int, shift: float) -> list[float]:
    """float64 σ'_k of the reference's numpy code (before its float32 cast)."""
    steps = _check_steps(steps)
    if (
        isinstance(shift, bool)
        or not isinstance(shift, (int, float))
        or not (shift > 0 and math.isfinite(shift))
    ):
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")
    sigma_max = float(torch.tensor(SIGMA_MAX, dtype=torch.float32))  # read from a float32 table
    out = []
    for k in range(steps):
        s = k * ((0.0 - sigma_max) / steps) + sigma_max  # numpy.linspace
        out.append(shift * s / (1.0 + (shift - 1.0) * s))
    return out


def unipc_sigmas(steps: int, *, shift: float = 5.0) -> list[float]:
    """Shifted sigmas of the schedule, ``steps + 1`` values ending with 0 (spec §2.7).

    σ_k = σ_max·(1 − k/steps) for k < steps with σ_max = float32(0.999) (the training table's
    first entry), σ' = shift·σ/(1 + (shift−1)·σ), rounded to float32 as the reference stores them."""
    return [float(torch.tensor(s, dtype=torch.float32)) for s in _shifted(steps, shift)] + [0.0]


def unipc_timesteps(steps: int, *, shift: float = 5.0) -> list[int]:
    """Integer timesteps fed to the model: ``int64(σ'·1000)`` of the float64 σ' (4 steps → [999, 937, 833, 624])."""
    return [int(s * NUM_TRAIN_TIMESTEPS) for s in _shifted(steps, shift)]


@dataclass(frozen=True)
class _StepCoefficients:
    """x_next = a·x + b·m0 + c·m1 (predictor) and x_corr = a·x_prev + b·m0 + c·m1 + d·m_t (corrector)."""

    pred: tuple[float, float, float]
    corr: tuple[float, float, float, float] | None


def _lam(sigma: float) -> float:
    """log-SNR λ = log(α) − log(σ) with α = 1 − σ (flow matching); +inf at σ = 0."""
    return math.inf if sigma == 0.0 else math.log(1.0 - sigma) - math.log(sigma)


def _phis(h: float) -> tuple[float, float, float, float]:
    """(hh, h·φ1 = e^hh − 1, B(h) = e^hh − 1 (bh2), first two g-terms) for hh = −h (data prediction)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = math.expm1(hh)
    if math.isinf(hh):  # σ_next = 0: e^{-inf} − 1 = −1; the g-terms are unused (order 1)
        return hh, -1.0, -1.0, math.nan
    h_phi_k0 = h_phi_1 / hh - 1.0
    return hh, h_phi_1, b_h, h_phi_k0


def _coefficients(sigmas: list[float]) -> list[_StepCoefficients]:
    """Predictor/corrector weights of every step for the UniPC-bh2 solver with solver_order 2."""
    n = len(sigmas) - 1
    orders = [min(min(2, n - k), k + 1) for k in range(n)]  # lower_order_final + warm-up
    out = []
    for k in range(n):
        # predictor from σ_k to σ_{k+1} with order orders[k]
        s0, t = sigmas[k], sigmas[k + 1]
        h = _lam(t) - _lam(s0)
        _, h_phi_1, b_h, _ = _phis(h)
        alpha_t = 1.0 - t
        a, b, c = t / s0, -alpha_t * h_phi_1, 0.0
        if orders[k] == 2:
            r1 = (_lam(sigmas[k - 1]) - _lam(s0)) / h
            # x −= α_t·B(h)·ρ·D1 with ρ = 0.5 and D1 = (m1 − m0)/r1
            w = alpha_t * b_h * 0.5 / r1
            b, c = b + w, c - w
        pred = (a, b, c)
        corr = None
        if k >= 1:
            # corrector of the sample at σ_k with the order used by the previous predictor
            p = orders[k - 1]
            s0, t = sigmas[k - 1], sigmas[k]
            h = _lam(t) - _lam(s0)
            hh, h_phi_1, b_h, h_phi_k0 = _phis(h)
            alpha_t = 1.0 - t
            a, b, c, d = t / s0, -alpha_t * h_phi_1, 0.0, 0.0
            if p == 1:
                rho_d1, rho_t = 0.0, 0.5
                r1 = 1.0
            else:
                r1 = (_lam(sigmas[k - 2]) - _lam(s0)) / h
                h_phi_k1 = h_phi_k0 / hh - 0.5
                rhs = (h_phi_k0 / b_h, 2.0 * h_phi_k1 / b_h)
                # solve [[1, 1], [r1, 1]] · ρ = rhs
                det = 1.0 - r1
                rho_d1 = (rhs[0] - rhs[1]) / det
                rho_t = (rhs[1] - r1 * rhs[0]) / det
            # x −= α_t·B(h)·(ρ_d1·(m1 − m0)/r1 + ρ_t·(m_t − m0))
            g = alpha_t * b_h
            w1 = g * rho_d1 / r1
            b += w1 + g * rho_t
            c -= w1
            d -= g * rho_t
            corr = (a, b, c, d)
        out.append(_StepCoefficients(pred, corr))
    return out


class FlowUniPCScheduler:
    """Stateful flow-matching UniPC sampler for one chunk (spec §2.7).

    Parameters
    ----------
    steps : int
        Denoising steps, 1–8 (LongLive: 4; 2–3 for few-step checkpoints).
    shift : float
        Timestep shift (5.0 in every LongLive inference config).

    Attributes
    ----------
    timesteps : list of int
        Timesteps fed to the model (4 steps: ``[999, 937, 833, 624]``).
    sigmas : list of float
        ``steps + 1`` shifted sigmas ending with 0.
    step_index : int
        Steps taken since the last :meth:`reset`.

    Examples
    --------
    >>> sched = FlowUniPCScheduler(4)
    >>> x = noise
    >>> for t in sched.timesteps:
    ...     v = model(x, t)           # flow prediction v ≈ ε − x0
    ...     x = sched.step(v, x)
    """

    def __init__(self, steps: int = 4, *, shift: float = 5.0):
        self.steps = _check_steps(steps)
        self.shift = float(shift)
        self.sigmas = unipc_sigmas(steps, shift=shift)
        self.timesteps = unipc_timesteps(steps, shift=shift)
        self._coef = _coefficients(self.sigmas)
        self.reset()

    def reset(self) -> None:
        """Forget the history (start a new chunk)."""
        self.step_index = 0
        self._m: list[torch.Tensor] = []  # x0 predictions, newest last (at most 2)
        self._last_sample: torch.Tensor | None = None

    @property
    def sigma(self) -> float:
        """σ of the current step (the one the next :meth:`step` consumes)."""
        return self.sigmas[self.step_index]

    @property
    def timestep(self) -> int:
        """Model timestep of the current step."""
        return self.timesteps[self.step_index]

    def flow_to_x0(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Data prediction ``x0 = x_σ − σ·v`` at the current step (in ``sample``'s dtype)."""
        return sample - self.sigma * flow.to(sample.dtype)

    def step(self, flow: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """One UniPC step: correct ``sample`` with the new prediction, then predict the next sample.

        Parameters
        ----------
        flow : Tensor
            Model output (flow v) at ``sample`` and :attr:`timestep`; any float dtype.
        sample : Tensor
            Current noisy latents x_σ (the scheduler computes in this dtype; fp32 recommended).

        Returns
        -------
        Tensor
            Latents at the next sigma; after the last step the clean x0 estimate.

        Raises
        ------
        RuntimeError
            Called more than ``steps`` times since the last reset.
        ValueError
            ``flow`` and ``sample`` shapes differ.
        """
        k = self.step_index
        if k >= self.steps:
            raise RuntimeError(
                f"FlowUniPCScheduler.step called {k + 1} times for a {self.steps}-step schedule; "
                "call reset() to start a new chunk"
            )
        if flow.shape != sample.shape:
            raise ValueError(f"flow {tuple(flow.shape)} and sample {tuple(sample.shape)} must have one shape")
        m_t = self.flow_to_x0(flow, sample)
        coef = self._coef[k]
        if coef.corr is not None:
            a, b, c, d = coef.corr
            m0 = self._m[-1]
            m1 = self._m[-2] if len(self._m) > 1 else m0
            sample = a * self._last_sample + b * m0 + d * m_t + (c * m1 if c != 0.0 else 0.0)
        self._m = (self._m + [m_t])[-2:]
        self._last_sample = sample
        a, b, c = coef.pred
        m1 = self._m[-2] if len(self._m) > 1 else m_t
        if a == 0.0 and c == 0.0:  # last step to σ = 0: the x0 prediction itself (b = 1)
            out = b * m_t if b != 1.0 else m_t.clone()
        else:
            out = a * sample + b * m_t + (c * m1 if c != 0.0 else 0.0)
        self.step_index = k + 1
        return out

    def __repr__(self) -> str:
        return f"FlowUniPCScheduler(steps={self.steps}, shift={self.shift}, timesteps={self.timesteps})"
