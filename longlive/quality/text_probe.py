"""How far a text encoder carries the procedural world's attributes from training words to held-out words.

The demo DiT reads prompts only through cross-attention over the text encoder's token features, so a
held-out word ("cobalt") can only work if its features fall where the training words' features ("blue",
"navy", ...) taught the model to look. This module measures that ceiling without any video: per attribute
(colour, shape, ...), a small attention-pooling classifier (learned queries over the token features, the
same kind of read-out as cross-attention) is trained on prompts in the ``"train"`` phrasing and scored on
prompts in the ``"heldout"`` phrasing. Its held-out accuracy bounds what a DiT conditioned on the same
features can be expected to reach on held-out prompts; its training accuracy shows the attribute is
readable at all.

    python -m longlive.quality.text_probe                 # MiniLM (the demo's encoder)
    python -m longlive.quality.text_probe --text-encoder hash   # no semantics: held-out near chance
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from longlive.data.procedural_prompts import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    DIRECTIONS,
    PANS,
    SHAPES,
    SceneAttributes,
    describe,
)

__all__ = ["ProbeResult", "probe_text_encoder", "random_prompts"]


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy of the attention-pooling probe for one attribute (fractions in [0, 1])."""

    attribute: str
    classes: int
    train_accuracy: float  # on the prompts it was fitted to (training phrasing)
    heldout_accuracy: float  # on held-out phrasing prompts: the transfer ceiling
    chance: float  # accuracy of always answering the most frequent held-out class


def random_prompts(n: int, phrasing: str, rng: np.random.Generator) -> tuple[list[str], list[SceneAttributes]]:
    """``n`` prompts with attributes drawn uniformly and independently, written in ``phrasing``."""
    prompts, attrs = [], []
    for _ in range(n):
        a = SceneAttributes(
            COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))],
            COUNTS[rng.integers(len(COUNTS))], DIRECTIONS[rng.integers(len(DIRECTIONS))],
            BACKGROUNDS[rng.integers(len(BACKGROUNDS))], PANS[rng.integers(len(PANS))], bool(rng.integers(2)),
        )
        prompts.append(describe(a, phrasing=phrasing, rng=rng))
        attrs.append(a)
    return prompts, attrs


class _AttentionPool(nn.Module):
    """``heads`` learned queries attend over the token features; a linear layer reads the pooled values."""

    def __init__(self, dim: int, classes: int, heads: int = 4, head_dim: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.key = nn.Linear(dim, heads * head_dim)
        self.value = nn.Linear(dim, heads * head_dim)
        self.query = nn.Parameter(torch.randn(heads, head_dim))
        self.out = nn.Sequential(nn.Dropout(0.1), nn.Linear(heads * head_dim, classes))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = feats.shape
        k = self.key(feats).view(b, n, self.heads, self.head_dim)
        v = self.value(feats).view(b, n, self.heads, self.head_dim)
        w = torch.einsum("bnhd,hd->bhn", k, self.query) / self.head_dim**0.5
        w = w.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)
        return self.out(torch.einsum("bhn,bnhd->bhd", w, v).reshape(b, -1))


def _features(encoder, prompts: list[str], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    feats, masks = [], []
    with torch.no_grad():
        for i in range(0, len(prompts), batch):
            f, m = encoder.encode(prompts[i : i + batch])
            feats.append(f.float().cpu())
            masks.append(m.cpu())
    return torch.cat(feats), torch.cat(masks)


def probe_text_encoder(encoder, *, n_train: int = 3000, n_heldout: int = 600, steps: int = 300,
                       seed: int = 0) -> list[ProbeResult]:
    """Fit one attention-pooling probe per attribute on training-phrasing prompts; score held-out ones.

    Parameters
    ----------
    encoder : longlive.model.TextEncoder
        Any text encoder with ``encode(list[str]) -> ([B, L, dim] features, [B, L] bool mask)``.
    n_train, n_heldout : int
        Prompts drawn for fitting (``"train"`` phrasing) and for scoring (``"heldout"`` phrasing), ≥ 1.
    steps : int
        AdamW steps (batch 128, lr 1e-3) per attribute, ≥ 1.
    seed : int
        Seeds the prompts and the probes.

    Returns
    -------
    list of ProbeResult
        One per attribute of :attr:`SceneAttributes.FIELDS`, in that order.

    Raises
    ------
    ValueError
        A count or ``steps`` below 1.
    """
    for name, value in (("n_train", n_train), ("n_heldout", n_heldout), ("steps", steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    rng = np.random.default_rng(seed)
    train_prompts, train_attrs = random_prompts(n_train, "train", rng)
    held_prompts, held_attrs = random_prompts(n_heldout, "heldout", rng)
    f_train, m_train = _features(encoder, train_prompts)
    f_held, m_held = _features(encoder, held_prompts)
    gen = torch.Generator().manual_seed(seed)
    results = []
    for field in SceneAttributes.FIELDS:
        values = sorted({str(getattr(a, field)) for a in train_attrs + held_attrs})
        y_train = torch.tensor([values.index(str(getattr(a, field))) for a in train_attrs])
        y_held = torch.tensor([values.index(str(getattr(a, field))) for a in held_attrs])
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))
        probe = _AttentionPool(f_train.shape[-1], len(values))
        opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.01)
        for _ in range(steps):
            idx = torch.randint(n_train, (min(128, n_train),), generator=gen)
            loss = nn.functional.cross_entropy(probe(f_train[idx], m_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        probe.eval()
        with torch.no_grad():
            acc_train = (probe(f_train, m_train).argmax(-1) == y_train).float().mean().item()
            acc_held = (probe(f_held, m_held).argmax(-1) == y_held).float().mean().item()
        chance = torch.bincount(y_held, minlength=len(values)).max().item() / n_heldout
        results.append(ProbeResult(field, len(values), acc_train, acc_held, chance))
    return results


def format_probe(results: list[ProbeResult], encoder_name: str) -> str:
    """Markdown table of :func:`probe_text_encoder`'s results with the mean over attributes."""
    rows = [f"| {r.attribute} | {r.classes} | {100 * r.train_accuracy:.1f} | {100 * r.heldout_accuracy:.1f} | "
            f"{100 * r.chance:.1f} |" for r in results]
    mean_train = 100 * np.mean([r.train_accuracy for r in results])
    mean_held = 100 * np.mean([r.heldout_accuracy for r in results])
    return "\n".join([
        f"Text-encoder transfer probe ({encoder_name}): attention-pooling read-out fitted on training-phrasing "
        "prompts, scored on held-out phrasings",
        "",
        "| attribute | classes | train % | held-out % | chance % |",
        "|---|---:|---:|---:|---:|",
        *rows,
        f"| **mean** | | {mean_train:.1f} | **{mean_held:.1f}** | |",
    ])


def main(argv: list[str] | None = None) -> int:
    from longlive.model.text_encoder import load_text_encoder

    p = argparse.ArgumentParser(prog="python -m longlive.quality.text_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--text-encoder", default="all-minilm-l6-v2", help="encoder name (load_text_encoder)")
    p.add_argument("--train-prompts", type=int, default=3000)
    p.add_argument("--heldout-prompts", type=int, default=600)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    encoder = load_text_encoder(a.text_encoder, device="cpu")
    results = probe_text_encoder(encoder, n_train=a.train_prompts, n_heldout=a.heldout_prompts, steps=a.steps,
                                 seed=a.seed)
    print(format_probe(results, a.text_encoder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
