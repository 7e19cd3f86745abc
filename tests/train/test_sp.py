"""Sequence-parallel geometry of the trainer: the §5.2 mask against a brute-force construction, the
tile-level BlockMask, the Balanced / naive rank slices, and the §5.3 halo encode (worked examples,
equality with the full-video encode)."""

import itertools

import pytest
import torch

from longlive.model.masks import TeacherForcingLayout
from longlive.model.vae import PatchVAE, WanVAE, WanVAEConfig
from longlive.train.sp import (
    HaloWindow,
    TeacherForcingAttention,
    check_sp_geometry,
    encode_halo_window,
    plan_halo_windows,
    rank_slice,
    teacher_forcing_block_mask,
)
from longlive_kernels.testing import rel_err


# ---------------------------------------------------------------------------------------------
# Mask
# ---------------------------------------------------------------------------------------------
def brute_force_mask(num_frames, frame_len, chunk_frames, sp_size):
    """Token by token from the spec's words: rank r holds frames [r·F/P, (r+1)·F/P) of the clean
    copy then of the noisy copy; clean→clean block-causal, noisy→clean strictly earlier blocks,
    noisy→noisy same block, clean→noisy never."""
    local = num_frames // sp_size
    tokens = []  # (is_noisy, block) in global order
    for r in range(sp_size):
        for noisy in (False, True):
            for f in range(r * local, (r + 1) * local):
                tokens += [(noisy, f // chunk_frames)] * frame_len
    n = len(tokens)
    m = torch.zeros(n, n, dtype=torch.bool)
    for i, (qn, qb) in enumerate(tokens):
        for j, (kn, kb) in enumerate(tokens):
            if not qn and not kn:
                m[i, j] = kb <= qb
            elif qn and not kn:
                m[i, j] = kb < qb
            elif qn and kn:
                m[i, j] = kb == qb
    return m


@pytest.mark.parametrize(
    "frames,frame_len,chunk,sp",
    [(4, 1, 2, 1), (8, 3, 2, 1), (8, 3, 2, 2), (8, 2, 2, 4), (12, 2, 4, 3), (6, 2, 3, 2), (8, 1, 4, 2)],
)
def test_teacher_forcing_mask_equals_brute_force(frames, frame_len, chunk, sp):
    lay = TeacherForcingLayout(frames, frame_len, chunk, sp_size=sp)
    assert torch.equal(lay.dense_mask(), brute_force_mask(frames, frame_len, chunk, sp))


def _tiles_from_dense(dense, bs):
    n = dense.shape[0]
    nb = -(-n // bs)
    full = torch.zeros(nb, nb, dtype=torch.bool)
    partial = torch.zeros(nb, nb, dtype=torch.bool)
    for i, j in itertools.product(range(nb), range(nb)):
        tile = dense[i * bs : (i + 1) * bs, j * bs : (j + 1) * bs]
        complete = tile.shape[1] == bs
        full[i, j] = bool(tile.all()) and complete
        partial[i, j] = bool(tile.any()) and not full[i, j]
    return full, partial


def _rows(num, idx):
    return [sorted(idx[0, 0, r, : num[0, 0, r]].tolist()) for r in range(num.shape[-1])]


@pytest.mark.parametrize(
    "frames,frame_len,chunk,sp,bs",
    [(8, 5, 2, 1, 8), (8, 5, 2, 2, 16), (12, 7, 3, 4, 16), (16, 10, 4, 4, 32), (6, 9, 3, 2, 8)],
)
def test_tile_block_mask_equals_dense_classification(frames, frame_len, chunk, sp, bs):
    lay = TeacherForcingLayout(frames, frame_len, chunk, sp_size=sp)
    bm = teacher_forcing_block_mask(lay, block_size=bs)
    full, partial = _tiles_from_dense(lay.dense_mask(), bs)
    nb = full.shape[0]
    assert _rows(bm.full_kv_num_blocks, bm.full_kv_indices) == [
        full[r].nonzero().flatten().tolist() for r in range(nb)
    ]
    assert _rows(bm.kv_num_blocks, bm.kv_indices) == [
        partial[r].nonzero().flatten().tolist() for r in range(nb)
    ]
    # transposed lists (backward pass) are the column view of the same tiles
    assert _rows(bm.full_q_num_blocks, bm.full_q_indices) == [
        full[:, c].nonzero().flatten().tolist() for c in range(nb)
    ]
    assert _rows(bm.q_num_blocks, bm.q_indices) == [
        partial[:, c].nonzero().flatten().tolist() for c in range(nb)
    ]
    assert bm.seq_lengths == (lay.num_tokens, lay.num_tokens)


@pytest.mark.parametrize("sp", [1, 2])
def test_flex_block_mask_attention_equals_dense_sdpa_on_cpu(sp):
    torch.manual_seed(0)
    lay = TeacherForcingLayout(8, 37, 2, sp_size=sp)  # 592 tokens: not a multiple of 128
    q, k, v = (torch.randn(1, lay.num_tokens, 2, 16) for _ in range(3))
    dense = TeacherForcingAttention(lay, impl="sdpa")(q, k, v, layer=0)
    flex = TeacherForcingAttention(lay, impl="flex")(q, k, v, layer=0)
    assert rel_err(flex, dense) < 1e-5


# ---------------------------------------------------------------------------------------------
# Rank slices, geometry errors
# ---------------------------------------------------------------------------------------------
def test_balanced_and_naive_rank_slices():
    bal = [rank_slice("balanced", 16, 2, 4, r) for r in range(4)]
    assert [(s.start, s.stop, s.sides) for s in bal] == [
        (4 * r, 4 * r + 4, ("clean", "noisy")) for r in range(4)
    ]
    assert all(s.carries_loss for s in bal)
    assert bal[2].prompt_slice(8) == slice(4, 6) and bal[2].prompt_slice(1) == slice(0, 1)
    nav = [rank_slice("naive", 16, 2, 4, r) for r in range(4)]
    assert [(s.start, s.stop, s.sides) for s in nav] == [
        (0, 8, ("clean",)),
        (8, 16, ("clean",)),
        (0, 8, ("noisy",)),
        (8, 16, ("noisy",)),
    ]
    assert [s.carries_loss for s in nav] == [False, False, True, True]
    # naive: the global order after the all-to-all is the plain [clean ; noisy] layout
    assert nav[0].attention_layout(3).sp_size == 1 and bal[0].attention_layout(3).sp_size == 4
    one = rank_slice("naive", 16, 2, 1, 0)
    assert (one.start, one.stop, one.sides) == (0, 16, ("clean", "noisy"))


def test_sp_geometry_errors_are_clear():
    with pytest.raises(ValueError, match=r"not divisible by P·chunk_frames = 4·8 = 32.*96 or 128"):
        check_sp_geometry(100, 8, 4)
    with pytest.raises(ValueError, match="even sp_size"):
        check_sp_geometry(24, 8, 3, layout="naive")
    with pytest.raises(ValueError, match="num_heads % sp_size"):
        check_sp_geometry(32, 8, 4, num_heads=6)
    with pytest.raises(ValueError, match="layout must be one of"):
        check_sp_geometry(32, 8, 4, layout="ring")
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        rank_slice("balanced", 16, 2, 2, 2)
    with pytest.raises(ValueError, match="one per chunk"):
        rank_slice("balanced", 16, 2, 2, 0).prompt_slice(3)


# ---------------------------------------------------------------------------------------------
# Halo encode (§5.3)
# ---------------------------------------------------------------------------------------------
def test_halo_plan_reproduces_the_spec_worked_examples():
    w96 = plan_halo_windows(96, 4, halo=28, temporal_stride=4)
    assert [(w.raw_start, w.raw_stop) for w in w96] == [(0, 93), (0, 189), (76, 285), (172, 381)]
    assert [w.drop for w in w96] == [0, 24, 29, 29]
    assert [w.pseudo for w in w96] == [0, 0, 1, 1]
    w384 = plan_halo_windows(384, 4, halo=28, temporal_stride=4)
    assert [(w.raw_start, w.raw_stop) for w in w384] == [(0, 381), (268, 765), (652, 1149), (1036, 1533)]
    assert [w.drop for w in w384] == [0, 29, 29, 29]
    assert w384[-1].raw_stop == 1 + 4 * (384 - 1)  # the last rank ends at the clip's last raw frame
    assert w96[2] == HaloWindow(2, 48, 72, 20, 76, 285, 1, 29)


def test_halo_plan_errors():
    with pytest.raises(ValueError, match="not divisible by sp_size 4"):
        plan_halo_windows(30, 4)
    with pytest.raises(ValueError, match="halo must be an int >= 0"):
        plan_halo_windows(32, 4, halo=-1)


def _halo_encode_all(vae, video, num_latents, sp, halo):
    parts = []
    for w in plan_halo_windows(num_latents, sp, halo=halo, temporal_stride=vae.temporal_stride):
        parts.append(encode_halo_window(vae, video[:, :, w.raw_start : w.raw_stop], w))
    return torch.cat(parts, dim=2)


@pytest.mark.parametrize("sp,halo", [(2, 0), (4, 3), (4, 28), (8, 1)])
def test_halo_encode_equals_full_encode_patch_vae_exactly(sp, halo):
    vae = PatchVAE(4, mean=0.25, std=0.5)
    video = torch.rand(2, 3, 32, 16, 16) * 2 - 1
    full = vae.encode(video)
    assert torch.equal(_halo_encode_all(vae, video, 32, sp, halo), full)


def test_halo_encode_equals_full_encode_small_wan_vae():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    vae = WanVAE(WanVAEConfig(enc_dim=8, dec_dim=8, z_dim=4), encode_groups_per_step=16).eval()
    f, sp = 64, 2  # rank 1 keeps latents [32, 64) with h = 4: a pseudo-first frame and 28 latents of halo
    video = torch.randn(1, 3, 1 + 4 * (f - 1), 16, 16)
    with torch.no_grad():
        full = vae.encode(video)
        halo28 = _halo_encode_all(vae, video, f, sp, 28)
        halo4 = _halo_encode_all(vae, video, f, sp, 4)
    assert rel_err(halo28, full) < 1e-5
    # the test can fail: a halo shorter than the encoder's receptive field changes the kept latents
    assert rel_err(halo4[:, :, 32:], full[:, :, 32:]) > 1e-3


def test_encode_halo_window_checks_the_window():
    vae = PatchVAE(4)
    w = plan_halo_windows(8, 2, halo=1, temporal_stride=1)[1]
    with pytest.raises(ValueError, match=r"video window must be \[B, 3, 6, H, W\]"):
        encode_halo_window(vae, torch.zeros(1, 3, 4, 8, 8), w)
