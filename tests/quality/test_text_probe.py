"""The text-encoder transfer probe: it fits training phrasings and reports no transfer without semantics."""

import numpy as np
import pytest

from longlive.data.procedural_prompts import parse_prompt
from longlive.model.text_encoder import HashTextEncoder
from longlive.quality.text_probe import format_probe, probe_text_encoder, random_prompts


def test_random_prompts_state_the_attributes_they_return():
    rng = np.random.default_rng(7)
    for phrasing in ("train", "heldout"):
        prompts, attrs = random_prompts(200, phrasing, rng)
        assert [parse_prompt(p) for p in prompts] == attrs
        assert len({a.colour for a in attrs}) == 6 and len({a.direction for a in attrs}) == 5


def test_probe_fits_training_words_but_cannot_transfer_hashed_words():
    # Hashed word vectors carry no meaning: an unseen held-out colour word is a fresh random vector, so
    # the probe that reads the training words perfectly must fall to about chance on held-out colours.
    results = {r.attribute: r for r in probe_text_encoder(HashTextEncoder(64, 32), n_train=400, n_heldout=300,
                                                          steps=120, seed=1)}
    assert list(results) == ["colour", "shape", "count", "direction", "background", "pan", "spin"]
    for name in ("colour", "shape", "background"):
        assert results[name].train_accuracy >= 0.9, results[name]
    assert results["colour"].heldout_accuracy <= results["colour"].chance + 0.2, results["colour"]
    assert results["colour"].classes == 6 and results["count"].classes == 2
    table = format_probe(list(results.values()), "hash")
    assert "| colour | 6 |" in table and "**mean**" in table


@pytest.mark.parametrize("kw", [{"n_train": 0}, {"n_heldout": -1}, {"steps": 0}, {"steps": 1.5}])
def test_probe_rejects_bad_sizes(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        probe_text_encoder(HashTextEncoder(16, 8), **kw)
