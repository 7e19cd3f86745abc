"""Run a function on P local processes with an initialized process group, with a hard timeout.

Used by the multi-process tests (gloo on CPU, NCCL on GPUs) and by the all-to-all benchmark when it
is started without torchrun. ``fn(rank, world_size, *args)`` must be a module-level function (it
is pickled by reference for the ``spawn`` start method); its return value is serialized with
``torch.save`` and handed back to the parent, one entry per rank, where it is read with
``weights_only=True`` (tensors, numbers, strings, and lists / tuples / dicts of them).
"""

from __future__ import annotations

import datetime
import io
import os
import queue as queue_mod
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.multiprocessing as mp

# NVLink SHARP / multicast must stay off on the shared GPU machines.
NCCL_SAFE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, backend, port, args, results, timeout_s):
    import torch.distributed as dist

    try:
        if backend == "nccl":
            for k, v in NCCL_SAFE_ENV.items():
                os.environ.setdefault(k, v)
            torch.cuda.set_device(rank)
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        try:
            value = fn(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        buf = io.BytesIO()
        torch.save(value, buf)
        results.put((rank, "ok", buf.getvalue()))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        results.put((rank, "error", traceback.format_exc()))


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *,
    backend: str = "gloo",
    args: Sequence[Any] = (),
    timeout_s: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes.

    Parameters
    ----------
    fn : callable
        Module-level function; its return value must be made of tensors, numbers, strings and
        lists / tuples / dicts of them (it is loaded back with ``weights_only=True``).
    world_size : int
        Number of processes (ranks 0..world_size-1; with NCCL, rank r uses ``cuda:r``).
    backend : {"gloo", "nccl"}
    args : sequence
        Extra picklable arguments.
    timeout_s : float
        Hard limit for the whole run, process start-up included; also the process group's
        collective timeout.

    Returns
    -------
    list
        ``fn``'s return value on each rank, in rank order.

    Raises
    ------
    RuntimeError
        A rank raised (its traceback is in the message); the other ranks are terminated.
    TimeoutError
        Not every rank finished within ``timeout_s`` (a hang); all ranks are terminated.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world_size, backend, port, tuple(args), results, timeout_s),
                    daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) + len(errors) < world_size:
            left = deadline - time.monotonic()
            if errors:
                left = min(left, 5.0)  # the others are likely stuck in a collective with the failed rank
            if left <= 0:
                break
            try:
                rank, status, payload = results.get(timeout=min(left, 1.0))
            except queue_mod.Empty:
                if all(not p.is_alive() for p in procs) and results.empty():
                    break
                continue
            if status == "ok":
                got[rank] = torch.load(io.BytesIO(payload), weights_only=True)
            else:
                errors[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=2.0)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        detail = "\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items()))
        raise RuntimeError(f"{len(errors)} of {world_size} ranks failed:\n{detail}")
    missing = [r for r in range(world_size) if r not in got]
    if missing:
        codes = {r: procs[r].exitcode for r in missing}
        raise TimeoutError(
            f"ranks {missing} did not finish within {timeout_s:.0f} s (hang?); exit codes {codes}"
        )
    return [got[r] for r in range(world_size)]
