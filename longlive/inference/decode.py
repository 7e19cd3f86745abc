"""Streaming VAE decode overlapped with denoising, and an mp4 writer that takes frames as they come.

LongLive-2.0 decodes the whole clip at the end by default; its streaming modes call a
``cached_decode`` that only its LightVAE has, so they break with the stock Wan2.2 VAE (spec §7).
Here every VAE has a stateful ``stream_decoder()`` and decoding is always per chunk:

- ``mode="sync"``: decode on the caller's stream right after the chunk (baseline).
- ``mode="async"``: a worker thread decodes — on CUDA on its own stream of the VAE's GPU (the
  DiT's GPU: a second stream; ``vae_device="cuda:1"``: another GPU, latents cross over
  peer-to-peer) — while the caller denoises the next chunk. The stream waits on an event
  recorded after the chunk, so the caller never blocks on the decode unless ``max_pending``
  chunks are queued (back-pressure). Frames go to pinned host memory and on to a second thread
  that encodes them into the mp4, so encoding overlaps decoding too.

:class:`Mp4Writer` writes H.264 with PyAV into a *fragmented* mp4 (``frag_keyframe+empty_moov``;
one keyframe per chunk): the file is playable after every chunk, even if the process is killed,
and :meth:`Mp4Writer.close` (Ctrl-C path) finalises it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch

from ..data.video_folder import as_rgb_frames
from .graphs import CAPTURE_LOCK

__all__ = ["DECODE_MODES", "ChunkDecoder", "Mp4Writer", "to_uint8_frames"]

DECODE_MODES = ("sync", "async")
_STOP = object()


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """``[B, 3, T, H, W]`` in [-1, 1] → uint8 ``[B, T, H, W, 3]`` (RGB, round to nearest), same device."""
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, T, H, W], got {tuple(video.shape)}")
    x = ((video.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


class Mp4Writer:
    """Append RGB frames to an H.264 mp4 with PyAV, chunk by chunk.

    Parameters
    ----------
    path : str or PathLike
        Output file (``.mp4``); its directory must exist.
    fps : float
        Frame rate.
    codec : str
        PyAV encoder (``"libx264"`` default, ``"mpeg4"`` where x264 is missing).
    crf : int
        x264 constant rate factor (18 ≈ visually lossless).
    preset : str
        x264 preset (``"veryfast"``: a 704×1280 chunk of 32 frames encodes in well under the time
        the DiT needs for the next chunk).
    fragmented : bool
        Write a fragmented mp4 (playable while it grows and after a crash).

    Notes
    -----
    The container is opened at the first :meth:`write` (frame size known then). Frame height and
    width must be even (yuv420p).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: float,
        codec: str = "libx264",
        crf: int = 18,
        preset: str = "veryfast",
        fragmented: bool = True,
    ):
        if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"output directory {parent!r} does not exist (for {self.path!r})")
        self.fps, self.codec, self.crf, self.preset, self.fragmented = fps, codec, crf, preset, fragmented
        self.frames_written = 0
        self.chunks_written = 0
        self._container = None
        self._stream = None
        self._closed = False

    def _open(self, height: int, width: int) -> None:
        import av

        if height % 2 or width % 2:
            raise ValueError(f"frame height and width must be even for yuv420p, got {height}x{width}")
        opts = {"movflags": "frag_keyframe+empty_moov+default_base_moof"} if self.fragmented else {}
        self._container = av.open(self.path, mode="w", options=opts)
        stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(10000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if self.codec == "libx264":
            stream.options = {"crf": str(int(self.crf)), "preset": self.preset, "tune": "zerolatency"}
        self._stream = stream

    def write(self, frames) -> None:
        """Append ``frames`` (uint8 ``[T, H, W, 3]`` RGB, numpy or CPU tensor); the first frame of
        every call is a keyframe, so each call (one chunk) starts a new mp4 fragment."""
        import av

        if self._closed:
            raise RuntimeError(f"Mp4Writer({self.path!r}) is closed")
        frames = as_rgb_frames(frames)
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if i == 0:
                vf.pict_type = av.video.frame.PictureType.I
            vf.pts = self.frames_written
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1
        self.chunks_written += 1

    def close(self) -> None:
        """Flush the encoder and finalise the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            try:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            finally:
                self._container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChunkDecoder:
    """Decode latent chunks into uint8 frames, synchronously or on a worker thread (module docstring).

    Parameters
    ----------
    vae : VideoVAE
        Any VAE with ``stream_decoder()``; its parameters' device is the decode device.
    mode : {"sync", "async"}
    sink : callable(chunk_index, frames) or Mp4Writer, optional
        Receives uint8 ``[T, H, W, 3]`` numpy frames of batch row 0, in chunk order (an
        :class:`Mp4Writer` gets ``write(frames)``). In async mode it runs on its own thread.
    max_pending : int
        Chunks queued for decoding before :meth:`submit` blocks (async mode).

    Attributes
    ----------
    chunks_decoded, frames_decoded : int
    decode_seconds : float
        Wall time inside the decoder (worker time in async mode).
    """

    def __init__(
        self, vae, *, mode: str = "async", sink: Callable | Mp4Writer | None = None, max_pending: int = 2
    ):
        if mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
        self.vae, self.mode = vae, mode
        self.writer = sink if isinstance(sink, Mp4Writer) else None
        self._sink = (lambda index, frames: sink.write(frames)) if self.writer is not None else sink
        self._decoder = vae.stream_decoder()
        p = next(iter(vae.parameters()), None)
        buf = next(iter(vae.buffers()), None)
        self.device = p.device if p is not None else (buf.device if buf is not None else torch.device("cpu"))
        self.chunks_decoded = 0
        self.frames_decoded = 0
        self.chunks_sunk = 0
        self.decode_seconds = 0.0
        self._error: BaseException | None = None
        self._closed = False
        self._stream = None
        if mode == "async":
            if self.device.type == "cuda":
                self._stream = torch.cuda.Stream(device=self.device)
            self._decode_q: queue.Queue = queue.Queue(maxsize=max_pending)
            self._sink_q: queue.Queue = queue.Queue(maxsize=max_pending + 1)
            self._threads = [
                threading.Thread(target=self._decode_loop, name="longlive-decode", daemon=True),
                threading.Thread(target=self._sink_loop, name="longlive-mp4", daemon=True),
            ]
            for t in self._threads:
                t.start()

    # ---- work ------------------------------------------------------------------------------
    def _decode_one(self, latents: torch.Tensor, event) -> torch.Tensor:
        t0 = time.perf_counter()
        if self._stream is not None:
            if event is not None:
                self._stream.wait_event(event)
            with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
                z = latents.to(self.device, non_blocking=True)
                frames = to_uint8_frames(self._decoder.decode_chunk(z))[0]
                host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
                host.copy_(frames, non_blocking=True)
                self._stream.synchronize()
        else:
            with torch.no_grad():
                z = latents.to(self.device)
                frames = to_uint8_frames(self._decoder.decode_chunk(z))[0]
                if frames.device.type == "cuda":
                    host = frames.cpu()
                else:
                    host = frames
        self.decode_seconds += time.perf_counter() - t0
        self.chunks_decoded += 1
        self.frames_decoded += host.shape[0]
        return host

    def _emit(self, index: int, host: torch.Tensor) -> None:
        if self._sink is not None:
            self._sink(index, host.numpy())
        self.chunks_sunk += 1

    def _to_sink(self, item) -> None:
        while self._threads[1].is_alive():
            try:
                self._sink_q.put(item, timeout=0.1)
                return
            except queue.Full:
                pass

    def _decode_loop(self) -> None:
        while True:
            item = self._decode_q.get()
            if item is _STOP or self._error is not None:
                self._to_sink(_STOP)
                return
            index, latents, event = item
            try:
                with CAPTURE_LOCK, torch.no_grad():  # no CUDA-graph capture of the DiT meanwhile
                    host = self._decode_one(latents, event)
                del latents
                self._to_sink((index, host))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
                self._to_sink(_STOP)
                return

    def _sink_loop(self) -> None:
        while True:
            item = self._sink_q.get()
            if item is _STOP:
                return
            try:
                self._emit(*item)
            except BaseException as exc:  # noqa: BLE001
                self._error = exc
                return

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"streaming VAE decode failed: {err!r}") from err

    # ---- API -------------------------------------------------------------------------------
    def submit(self, index: int, latents: torch.Tensor) -> None:
        """Hand over the clean latents ``[B, C, T', H', W']`` of chunk ``index`` (chunks in order).

        Async mode returns at once unless ``max_pending`` chunks are waiting; ``latents`` must not
        be modified afterwards (the pipeline hands over a fresh tensor per chunk)."""
        if self._closed:
            raise RuntimeError("ChunkDecoder is closed")
        self._check()
        if self.mode == "sync":
            with torch.no_grad():
                self._emit(index, self._decode_one(latents, None))
            return
        event = None
        if latents.device.type == "cuda" and self.device.type == "cuda" and latents.device != self.device:
            # another GPU decodes: copy peer-to-peer now, from the caller's thread, while the DiT stream is idle
            # between chunks (from the worker the copy would queue behind the next chunk's kernels)
            latents = latents.to(self.device, non_blocking=True)
        if latents.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(latents.device))
        while True:  # short timeouts keep Ctrl-C responsive while back-pressured
            try:
                self._decode_q.put((index, latents, event), timeout=0.1)
                break
            except queue.Full:
                self._check()

    def close(self, *, drain: bool = True) -> None:
        """Finish: with ``drain`` decode and write every submitted chunk first; then stop the threads
        and close an :class:`Mp4Writer` sink. Re-raises a worker error."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.mode == "async":
                if not drain:
                    try:
                        while True:
                            self._decode_q.get_nowait()
                    except queue.Empty:
                        pass
                while self._threads[0].is_alive():
                    try:
                        self._decode_q.put(_STOP, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                for t in self._threads:
                    while t.is_alive():
                        t.join(timeout=0.1)
            self._check()
        finally:
            if self.writer is not None:
                self.writer.close()
