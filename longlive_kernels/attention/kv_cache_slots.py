"""Host-side bookkeeping of the FP4 KV cache (``kv_cache.py``): which chunk lives in which physical
slot, and the index table the kernels read.
"""

from __future__ import annotations

import collections

# ---------------------------------------------------------------------------------------------
# Host-side bookkeeping: a ring of physical slots (cross-checked against reference.KVCachePolicy)
# ---------------------------------------------------------------------------------------------


class _SlotRing:
    """Which chunk lives in which physical slot. Sinks and the shot sink are protected; every other
    resident chunk sits in ``window`` (oldest first) and is evicted from the left."""

    def __init__(self, num_slots: int, sink_chunks: int):
        self.num_slots = num_slots
        self.sink_chunks = sink_chunks
        self.chunk_in_slot = [-1] * num_slots
        self.window: collections.deque[int] = collections.deque()
        self.sinks: list[int] = []
        self.shot: int | None = None
        self.current: int | None = None

    def slot_of(self, chunk: int) -> int:
        try:
            return self.chunk_in_slot.index(chunk)
        except ValueError:
            raise ValueError(f"chunk {chunk} is not resident (resident: {self.resident()})") from None

    def resident(self) -> list[int]:
        return sorted(c for c in self.chunk_in_slot if c >= 0)

    def start(self, chunk: int) -> None:
        if chunk < 0 or (self.current is not None and chunk <= self.current):
            raise ValueError(f"chunk ids must increase: start_chunk({chunk}) after chunk {self.current}")
        protected = len(self.sinks) + (self.shot is not None and self.shot not in self.sinks)
        while self.window and protected + len(self.window) + 1 > self.num_slots:
            gone = self.window.popleft()
            self.chunk_in_slot[self.chunk_in_slot.index(gone)] = -1
        self.chunk_in_slot[self.chunk_in_slot.index(-1)] = chunk
        if chunk < self.sink_chunks:
            self.sinks.append(chunk)
        else:
            self.window.append(chunk)
        self.current = chunk

    def pin(self, chunk: int) -> None:
        self.slot_of(chunk)  # must be resident
        if chunk >= self.sink_chunks and self.sink_chunks + 2 > self.num_slots:
            raise ValueError(
                f"no room for a shot sink: sink_chunks={self.sink_chunks} + shot sink + current chunk "
                f"> max_chunks={self.num_slots}"
            )
        old = self.shot
        if old is not None and old not in self.sinks:
            self.window = collections.deque(sorted([*self.window, old]))  # evictable again
        if chunk in self.window:
            self.window.remove(chunk)
        self.shot = chunk

    def context(self) -> list[int]:
        return [c for c in self.resident() if c != self.current]

    def table(self) -> list[int]:
        ctx = self.context()
        cur = -1 if self.current is None else self.slot_of(self.current)
        return [len(ctx), cur] + [self.slot_of(c) for c in ctx] + [-1] * (self.num_slots - len(ctx))
