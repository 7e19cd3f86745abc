"""Flow-matching teacher-forcing objective (spec §6.1): shifted table, Gaussian weight, per-block
timesteps, noising, target and the per-frame weighted loss."""

import math

import pytest
import torch

from longlive.train.objective import (
    FlowMatchSchedule,
    add_noise,
    drop_captions,
    draw_targets,
    frame_mse,
    step_generator,
    weighted_frame_loss,
)


def test_shifted_table_matches_the_spec_formula():
    s = FlowMatchSchedule(1000, shift=5.0)
    i = torch.arange(1000, dtype=torch.float64)
    sigma = 1.0 - i / 1000.0
    ref = 5 * sigma / (1 + 4 * sigma)
    assert torch.allclose(s.sigmas, ref, rtol=0, atol=1e-15)
    assert s.timesteps[0].item() == 1000.0
    assert s.timesteps[-1].item() == pytest.approx(4.98008, abs=1e-5)  # "1000 … 4.98"
    assert bool((s.timesteps[1:] < s.timesteps[:-1]).all())
    lin = FlowMatchSchedule(1000, shift=1.0)
    assert torch.allclose(lin.sigmas, sigma)


def test_gaussian_weight_peak_ends_and_normalisation():
    s = FlowMatchSchedule()
    w, t = s.weights, s.timesteps
    assert w.sum().item() == pytest.approx(1000.0)
    assert w.max().item() == pytest.approx(2.08, abs=0.01)
    assert abs(t[w.argmax()].item() - 500) < 2
    assert w[0].item() == pytest.approx(0.0, abs=1e-12)  # t = 1000
    assert w[-1].item() < 0.05  # t ≈ 5
    y = torch.exp(-2 * ((t - 500) / 1000) ** 2)
    assert torch.allclose(w, (y - y.min()) * 1000 / (y - y.min()).sum())
    assert torch.equal(FlowMatchSchedule(weighting="uniform").weights, torch.ones(1000, dtype=torch.float64))


def test_block_timesteps_are_shared_within_a_chunk_and_uniform_over_the_table():
    s = FlowMatchSchedule()
    g = torch.Generator().manual_seed(0)
    u = s.sample_indices(4000, 6, generator=g)
    assert u.min().item() == 0 and u.max().item() == 999
    assert abs(u.double().mean().item() - 499.5) < 3.0
    sig, ts, w = s.lookup(u[:2], chunk_frames=3)
    assert sig.shape == ts.shape == w.shape == (2, 18)
    assert torch.equal(sig.view(2, 6, 3), sig.view(2, 6, 3)[:, :, :1].expand(2, 6, 3))
    assert torch.allclose(ts, sig * 1000)


def test_noising_target_and_x0_recovery():
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)
    sigma = torch.tensor([[0.0, 1.0, 0.3, 0.7], [0.5, 0.5, 0.9, 0.1]])
    x = add_noise(z, eps, sigma)
    assert torch.equal(x[0, :, 0], z[0, :, 0]) and torch.equal(x[0, :, 1], eps[0, :, 1])
    v = eps - z  # the flow target: a perfect prediction recovers x0 = x_t − σ·v
    assert torch.allclose(x - sigma[:, None, :, None, None] * v, z, atol=1e-6)
    with pytest.raises(ValueError, match=r"sigma must be \[B, F\] = \[2, 4\]"):
        add_noise(z, eps, sigma[:, :3])


def test_weighted_frame_loss_equals_the_per_frame_formula():
    g = torch.Generator().manual_seed(2)
    pred, tgt = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 3, 4, 2, 2, generator=g)
    w = torch.rand(2, 4, generator=g)
    mask = torch.tensor([[True, True, False, True], [True, False, True, True]])
    per = frame_mse(pred, tgt)
    ref = torch.zeros(2, 4)
    for b in range(2):
        for f in range(4):
            ref[b, f] = ((pred[b, :, f] - tgt[b, :, f]) ** 2).mean()
    assert torch.allclose(per, ref, atol=1e-6)
    assert weighted_frame_loss(per, w).item() == pytest.approx((ref * w).mean().item(), rel=1e-6)
    masked = weighted_frame_loss(per, w, mask=mask)
    assert masked.item() == pytest.approx(((ref * w)[mask]).sum().item() / 6, rel=1e-6)
    # split over "ranks" with the global normaliser: the local losses sum to the global one
    parts = [
        weighted_frame_loss(per[:, sl], w[:, sl], mask=mask[:, sl], normalizer=6)
        for sl in (slice(0, 2), slice(2, 4))
    ]
    assert sum(p.item() for p in parts) == pytest.approx(masked.item(), rel=1e-6)


def test_draws_depend_only_on_seed_step_stream_and_the_global_shape():
    s = FlowMatchSchedule()
    a = draw_targets(s, (1, 2, 8, 3, 3), 4, generator=step_generator(0, 5, 1), device="cpu")
    b = draw_targets(s, (1, 2, 8, 3, 3), 4, generator=step_generator(0, 5, 1), device="cpu")
    c = draw_targets(s, (1, 2, 8, 3, 3), 4, generator=step_generator(0, 6, 1), device="cpu")
    assert torch.equal(a.noise, b.noise) and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.noise, c.noise)
    assert a.sigma.shape == (1, 8) and a.indices.shape == (1, 2)
    assert math.isclose(a.timesteps[0, 0].item(), s.timesteps[a.indices[0, 0]].item(), rel_tol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of chunk_frames=3"):
        draw_targets(s, (1, 2, 8, 3, 3), 3, generator=step_generator(0, 0, 0), device="cpu")


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match="shift must be a positive number"):
        FlowMatchSchedule(shift=0)
    with pytest.raises(ValueError, match="weighting must be"):
        FlowMatchSchedule(weighting="lognormal")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        FlowMatchSchedule(1)


def test_drop_captions_per_sample_deterministic_and_at_rate():
    """Whole samples (all chunk prompts) become "" at rate p; the same generator state drops the same
    samples (SP ranks, resumed runs); p = 0 is the identity; p outside [0, 1) is rejected."""
    prompts = [[f"sample {i} chunk {c}" for c in range(3)] for i in range(4000)]
    a = drop_captions(prompts, 0.1, step_generator(0, 5, 0))
    b = drop_captions(prompts, 0.1, step_generator(0, 5, 0))
    c = drop_captions(prompts, 0.1, step_generator(0, 6, 0))
    assert a == b and a != c
    dropped = [i for i, ps in enumerate(a) if ps[0] == ""]
    assert all(a[i] == ["", "", ""] for i in dropped)
    assert all(a[i] == prompts[i] for i in range(len(prompts)) if i not in set(dropped))
    # binomial(4000, 0.1): mean 400, sd 19; 6 sd either side
    assert 286 <= len(dropped) <= 514, len(dropped)
    assert drop_captions(prompts, 0.0, step_generator(0, 5, 0)) is prompts
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="caption dropout"):
            drop_captions(prompts, bad, step_generator(0, 5, 0))


def test_caption_dropout_config_range():
    from longlive.train.config import TrainConfig

    assert TrainConfig(caption_dropout=0.1).caption_dropout == 0.1
    with pytest.raises(ValueError, match="caption_dropout"):
        TrainConfig(caption_dropout=1.0)
