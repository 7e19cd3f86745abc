"""CUDA graphs of the streaming chunk forward (issue 8: "CUDA graphs for the per-chunk step").

A denoising forward of the current chunk issues ~1,200 kernels (30 blocks × ~40 ops, plus the
all-to-alls under Ulysses SP). On one GPU the host keeps ahead of them; under SP every rank's GPU
work halves but its host work does not, and the NCCL kernels then wait on the slower host
(bench/RESULTS.md, SP generation: 764 ms per chunk against ~530 ms of kernels at SP=2). A graph
replay issues the whole forward in one call.

What lets one graph serve many chunks: a forward depends on host state only through

- the number of context chunks (shapes; part of the graph key),
- the cache slots — ``FP4KVCache`` keeps its slot table on the device and its update / dequantize
  kernels read it there, so a chunk landing in another slot needs no new graph,
- the temporal RoPE offset — the RoPE kernel reads cos/sin tables from memory, and inside
  :class:`~longlive_kernels.attention.rope.RopeTableBuffers` those tables sit at fixed addresses
  that :meth:`ChunkGraphs.__call__` refills before each replay.

So a window of ``max_chunks`` needs at most ``max_chunks`` graphs (context lengths 0 … max − 1),
all drawing from one memory pool (they are replayed one after another on one stream). The first
call of a key runs eagerly (Triton autotuning, lazily built workspaces and tables must exist
before a capture), a later one captures — unless another thread (the streaming decoder) holds
:data:`CAPTURE_LOCK`, then the call runs eagerly and the next one tries again. If a capture fails
(an op that syncs with the host), the runner warns once and stays eager: graphs change speed,
never results.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import torch

__all__ = ["CAPTURE_LOCK", "ChunkGraphs"]

#: Held by a capture, and by other threads of this process while they issue CUDA work (the
#: streaming decoder): a capture must not overlap calls that are illegal during one (pinned-memory
#: allocation, device-wide syncs), and a failed capture also breaks the other thread's work
#: (measured: the async decoder died with "operation not permitted when stream is capturing").
CAPTURE_LOCK = threading.Lock()

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


class _Captured:
    __slots__ = ("graph", "inputs", "output")

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        self.graph, self.inputs, self.output = graph, inputs, output


class ChunkGraphs:
    """Run a chunk forward eagerly or as a replayed CUDA graph (one graph per key).

    Parameters
    ----------
    enabled : bool
        False: every call runs eagerly (CPU, or to compare).
    eager_calls : int
        Eager calls per key before its capture (≥ 1: autotuning and lazy buffers happen there).

    Attributes
    ----------
    disabled_reason : str or None
        Why graphs were turned off after a failed capture.
    """

    def __init__(self, *, enabled: bool = True, eager_calls: int = 1):
        if isinstance(eager_calls, bool) or not isinstance(eager_calls, int) or eager_calls < 1:
            raise ValueError(f"ChunkGraphs: eager_calls must be an int >= 1, got {eager_calls!r}")
        from longlive_kernels.attention.rope import RopeTableBuffers

        self.enabled = bool(enabled)
        self.eager_calls = eager_calls
        self.rope = RopeTableBuffers()
        self.disabled_reason: str | None = None
        self._graphs: dict[tuple, _Captured] = {}
        self._calls: dict[tuple, int] = {}
        self._pool = None

    @property
    def num_graphs(self) -> int:
        """Graphs captured so far."""
        return len(self._graphs)

    def reset(self) -> None:
        """Drop every graph (and its pool memory once no replay is pending)."""
        self._graphs.clear()
        self._calls.clear()
        self._pool = None

    def __call__(self, forward: Forward, key: tuple, frame_offset: int, x: torch.Tensor, t: torch.Tensor,
                 context: torch.Tensor) -> torch.Tensor:
        """``forward(x, t, context, frame_offset)``, eagerly or by replaying the graph of ``key``.

        ``forward`` must not sync with the host and must read, besides its three tensor
        arguments, only tensors that outlive the runner (weights, cache buffers). ``key`` must
        identify everything else its kernels depend on (e.g. the number of context chunks); the
        tensors' shapes and dtypes are added to it here. Returns a fresh tensor (not the graph's
        static output, which the next replay overwrites).
        """
        if not (self.enabled and x.is_cuda):
            return forward(x, t, context, frame_offset)
        full_key = (key, *((tuple(a.shape), a.dtype) for a in (x, t, context)))
        self.rope.set_offset(int(frame_offset))
        captured = self._graphs.get(full_key)
        if captured is None:
            calls = self._calls.get(full_key, 0)
            if calls < self.eager_calls:
                self._calls[full_key] = calls + 1
                with self.rope.active():
                    return forward(x, t, context, frame_offset)
            captured = self._capture(forward, full_key, frame_offset, x, t, context)
            if captured is None:  # capture failed, or the decoder is busy: eager this time
                with self.rope.active():
                    return forward(x, t, context, frame_offset)
        for dst, src in zip(captured.inputs, (x, t, context), strict=True):
            dst.copy_(src)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, forward: Forward, full_key: tuple, frame_offset: int, x, t, context) -> _Captured | None:
        # never wait for the decoder (a chunk's decode takes seconds): try again at the next call
        if not CAPTURE_LOCK.acquire(blocking=False):
            return None
        try:
            inputs = (x.clone(), t.clone(), context.clone())
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with self.rope.active(), torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                output = forward(*inputs, frame_offset)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: stay eager
            self.enabled = False
            self.disabled_reason = f"{type(exc).__name__}: {exc}"
            self.reset()
            warnings.warn(f"CUDA graphs of the chunk step are off for this session: the capture failed "
                          f"({self.disabled_reason})", RuntimeWarning, stacklevel=3)
            return None
        finally:
            CAPTURE_LOCK.release()
        captured = _Captured(graph, inputs, output)
        self._graphs[full_key] = captured
        return captured
