"""The resumable step sampler and the random-latent set."""

import torch

from longlive.train.data import RandomLatentDataset, StepSampler


def test_step_sampler_is_a_function_of_step_and_rank():
    ranks = [StepSampler(10, 3, dp_rank=d, dp_size=2, seed=4) for d in range(2)]
    its = [iter(s) for s in ranks]
    seen = []
    for step in range(5):
        batches = [next(it) for it in its]
        assert batches == [s.indices(step) for s in ranks]
        seen += batches[0] + batches[1]
    # 30 positions = 3 epochs of a shuffled 10-sample set, DP ranks disjoint within a step
    for e in range(3):
        assert sorted(seen[10 * e : 10 * (e + 1)]) == list(range(10))
    assert seen[:10] != list(range(10))
    resumed = StepSampler(10, 3, dp_rank=1, dp_size=2, seed=4, start_step=3)
    assert next(iter(resumed)) == ranks[1].indices(3)
    plain = StepSampler(100, 2, shuffle=False)
    assert plain.indices(7) == [14, 15]


def test_random_latents_are_deterministic_per_index():
    ds = RandomLatentDataset(5, (4, 8, 2, 2), 4, seed=1)
    a, b = ds[3], ds[3]
    assert torch.equal(a["latents"], b["latents"]) and not torch.equal(a["latents"], ds[2]["latents"])
    assert len(a["prompts"]) == 4 and a["loss_mask"].all()
