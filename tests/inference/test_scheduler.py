"""FlowUniPCScheduler: the spec §2.7 timestep table, exactness on a linear flow, golden values of
diffusers' UniPC-bh2 step algorithm on LongLive's sigmas, bad input."""

import itertools
import math

import pytest
import torch

from longlive.inference.scheduler import FlowUniPCScheduler, unipc_sigmas, unipc_timesteps

SPEC_TABLE = {4: [999, 937, 833, 624], 3: [999, 908, 713], 2: [999, 833]}
SPEC_SIGMAS = {4: [0.9998, 0.9373, 0.8331, 0.6247], 3: [0.9998, 0.9088, 0.7140], 2: [0.9998, 0.8331]}


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_timesteps_match_spec_table(steps):
    assert unipc_timesteps(steps) == SPEC_TABLE[steps]
    assert FlowUniPCScheduler(steps).timesteps == SPEC_TABLE[steps]
    sig = unipc_sigmas(steps)
    assert sig[-1] == 0.0 and len(sig) == steps + 1
    assert [round(s, 4) for s in sig[:-1]] == SPEC_SIGMAS[steps]


def test_schedule_formula_all_step_counts():
    # σ = linspace(0.999, 0, N+1)[:-1], σ' = 5σ/(1+4σ), t = int(1000σ'), strictly decreasing
    for n in range(1, 9):
        ts = unipc_timesteps(n)
        assert ts[0] == 999 and all(a > b for a, b in itertools.pairwise(ts))
        for k, t in enumerate(ts):
            s = 0.999 * (1 - k / n)
            assert abs(t - 1000 * 5 * s / (1 + 4 * s)) < 1.0


@pytest.mark.parametrize("steps", range(1, 9))
def test_exact_on_linear_flow(steps):
    # x_σ = (1-σ)x0 + σε and the oracle flow v = ε - x0: every UniPC step stays on the path and the
    # last step returns x0 (up to fp64 rounding).
    g = torch.Generator().manual_seed(steps)
    x0 = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    sched = FlowUniPCScheduler(steps)
    x = (1 - sched.sigmas[0]) * x0 + sched.sigmas[0] * eps
    for k in range(steps):
        x = sched.step(eps - x0, x)
        s = sched.sigmas[k + 1]
        torch.testing.assert_close(x, (1 - s) * x0 + s * eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-12)


# x = linspace(-2, 2, 6), v(x) = sin(3x) + x/2 through diffusers 0.42 UniPCMultistepScheduler(solver_order=2,
# bh2, predict_x0, lower_order_final, final_sigmas_type="zero", flow_prediction) with sigmas/timesteps set to
# LongLive's (diffusers' own flow sigmas give 909/714/625: it does not reproduce §2.7 by itself).
GOLDEN = {
    2: [-1.596768, -0.9935571, 0.3700364, -0.3700364, 0.9935571, 1.596768],
    3: [-1.6696765, -0.9483312, 0.1847489, -0.1847489, 0.9483312, 1.6696765],
    4: [-1.6962261, -0.9001612, 0.1255257, -0.1255257, 0.9001612, 1.6962261],
    8: [-1.7468998, -0.7661042, 0.0300558, -0.0300558, 0.7661042, 1.7468998],
}


@pytest.mark.parametrize("steps", sorted(GOLDEN))
def test_golden_diffusers_unipc_values(steps):
    sched = FlowUniPCScheduler(steps)
    x = torch.linspace(-2, 2, 6, dtype=torch.float64)
    for _ in sched.timesteps:
        x = sched.step(torch.sin(3 * x) + 0.5 * x, x)
    torch.testing.assert_close(x, torch.tensor(GOLDEN[steps], dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6, 8])
def test_against_diffusers_if_installed(steps):
    diffusers = pytest.importorskip("diffusers")
    d = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        solver_order=2,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=5.0,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    d.set_timesteps(steps)
    ours = FlowUniPCScheduler(steps)
    d.sigmas = torch.tensor(ours.sigmas, dtype=torch.float32)
    d.timesteps = torch.tensor(ours.timesteps)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(1, 2, 8, generator=g, dtype=torch.float64)
    y = x.clone()
    w = 0.3 * torch.randn(8, 8, generator=g, dtype=torch.float64)
    for t in ours.timesteps:
        x = d.step(torch.tanh(x @ w) + x, t, x).prev_sample
        y = ours.step(torch.tanh(y @ w) + y, y)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6)


def test_second_order_beats_first_order_in_convergence():
    # Gaussian data N(mu, s^2): the exact ODE solution is x0 = mu + s·z, z = x_1/sqrt(...) ; error must
    # fall quickly with more steps (a broken corrector stalls at O(1/N)).
    mu, s = 0.7, 0.3
    z = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)

    def flow(x, sig):
        var = (1 - sig) ** 2 * s * s + sig * sig
        x0 = mu + (1 - sig) * s * s / var * (x - (1 - sig) * mu)
        return (x - x0) / sig

    errs = []
    for n in (2, 4, 8):
        sched = FlowUniPCScheduler(n, shift=1.0)
        sig0 = sched.sigmas[0]
        x = (1 - sig0) * mu + math.sqrt((1 - sig0) ** 2 * s * s + sig0 * sig0) * z
        for k in range(n):
            x = sched.step(flow(x, sched.sigmas[k]), x)
        errs.append((x - (mu + s * z)).abs().max().item())
    assert errs[2] < errs[1] < errs[0]
    assert errs[2] < errs[1] / 2.5


def test_bad_input():
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 8\]"):
        FlowUniPCScheduler(0)
    with pytest.raises(ValueError, match="steps"):
        FlowUniPCScheduler(9)
    with pytest.raises(ValueError, match="shift"):
        unipc_sigmas(4, shift=0.0)
    s = FlowUniPCScheduler(2)
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="one shape"):
        s.step(torch.zeros(4), x)
    s.step(x, x)
    s.step(x, x)
    with pytest.raises(RuntimeError, match="reset"):
        s.step(x, x)
    s.reset()
    s.step(x, x)
