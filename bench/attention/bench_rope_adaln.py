"""Fused adaLN / gated residual / residual+LayerNorm and qk-RMSNorm + 3D RoPE, forward and backward,
at LongLive-2.0-5B shapes (issue 4).

Shapes: x [1, 7040, 3072] (one 8-frame AR chunk, 880 tokens per frame) and [1, 56320, 3072]
(training, 64 frames), bf16 activations, fp32 modulation vectors [1, F, 6, 3072]; q/k
[1, 7040, 24, 128] bf16 slices of a fused QKV [1, 7040, 3, 24, 128], grid (8, 22, 40).

Bytes counted (N = tokens·3072 elements, 2 B each; the per-frame vectors and their gradients are
counted too but are < 0.1 %; the backward's fp32 partial sums are *not* counted, they are overhead):

| op | forward | backward |
|---|---|---|
| adaln_modulate | read x, write h: 4N | read x, g_h, write dx: 6N |
| gated_residual | read x, y, write r: 6N | read g, y, write dy: 6N (dx = g, no copy) |
| gated_residual_adaln (LN2, ungated) | read x, y, write r, h: 8N | read r, g_r, g_h, write dx: 8N |
| gated_residual_layernorm (LN3, gated) | 8N | read r, y, g_r, g_h, write dx, dy: 12N |
| rope q+k (no norm) | read q, k, write q, k: 8N | 8N |
| rms+rope q+k | 8N | + read q, k: 12N |

Every row: µs = GPU time of the call (CUDA events, L2 flushed by a read, median), with the host's
launch overhead hidden by a ~1 ms GPU spin queued before the start event (the Python dispatch of
a custom op + autotuner + autograd is 50-300 µs, comparable to the kernels; a plain event pair
would time the host, not the kernels, and differently for each implementation); GB/s over those
bytes, the ratio to a device-to-device copy timed in the same run (target ≥ 0.80), the speed-up
over eager PyTorch as Wan/LongLive write it (adaLN via F.layer_norm + broadcast mul/add, RoPE via
the fp64 complex chain), and over ``torch.compile`` of ``longlive_kernels.attention.reference``
(target ≥ 1.2×), all timed the same way. "call µs" is our time per call *with* the host overhead
(plain event pair, as ``cuda_time_ms``), for reference. Backward rows time
``torch.autograd.grad`` of each implementation's own graph w.r.t. the op's inputs; q and k are
leaves that are strided views of one fused QKV tensor (the forward reads them in place), so the
backward rows time the op, not autograd's scatter of dq/dk into a zero-filled d(qkv). The
autotuned configs of our kernels are printed after the table.

Run: python bench/attention/bench_rope_adaln.py [--quick]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from longlive_kernels.attention import (
    adaln_modulate,
    apply_rope_3d,
    gated_residual,
    gated_residual_adaln,
    gated_residual_layernorm,
)
from longlive_kernels.attention import reference as ref
from longlive_kernels.testing import copy_bandwidth_gbs, cuda_time_ms, device_header

C = 3072
FRAME_LEN = 880
HEADS, HEAD_DIM = 24, 128
ROPE_GRID = (8, 22, 40)
EPS = 1e-6


@dataclasses.dataclass
class Case:
    name: str
    shape: str
    inputs: dict[str, torch.Tensor]  # leaves; those with requires_grad get gradients
    ours: Callable
    eager: Callable
    reference: Callable
    fwd_bytes: int
    bwd_bytes: int


def _tok(v: torch.Tensor, n_frames: int) -> torch.Tensor:
    return v[:, :, None, :]  # [B, F, 1, C]: broadcast over the frame's tokens


def _frames(t: torch.Tensor, n_frames: int) -> torch.Tensor:
    return t.unflatten(1, (n_frames, -1))


def _eager_adaln(x, shift, scale):
    n_frames = shift.shape[1]
    h = _frames(F.layer_norm(x, (C,), eps=EPS), n_frames) * (1 + _tok(scale, n_frames)) + _tok(
        shift, n_frames
    )
    return h.flatten(1, 2).to(x.dtype)


def _eager_gated(x, y, gate):
    n_frames = gate.shape[1]
    return (x + (_frames(y, n_frames) * _tok(gate, n_frames)).flatten(1, 2)).to(x.dtype)


def _adaln_cases(n_tok: int) -> list[Case]:
    n_frames = n_tok // FRAME_LEN
    n = n_tok * C
    vec = n_frames * C * 4  # one per-frame fp32 vector
    g = torch.Generator(device="cuda").manual_seed(0)

    def act():
        return (torch.randn(1, n_tok, C, device="cuda", generator=g) * 2).bfloat16().requires_grad_()

    def mods():
        e = torch.randn(1, n_frames, 6, C, device="cuda", generator=g) * 0.3
        return [e[:, :, i].detach().clone().requires_grad_() for i in range(6)]

    x, y = act(), act()
    e0, e1, e2, e3, e4, _ = mods()
    w3 = (torch.randn(C, device="cuda", generator=g) * 0.1 + 1).requires_grad_()
    b3 = (torch.randn(C, device="cuda", generator=g) * 0.1).requires_grad_()
    shape = f"[1, {n_tok}, {C}]"

    def ln3_eager(x, y, gate, w, b):
        r = _eager_gated(x, y, gate)
        return r, F.layer_norm(r, (C,), weight=w.to(r.dtype), bias=b.to(r.dtype), eps=EPS)

    def ln3_ref(x, y, gate, w, b):
        wv, bv = w.view(1, 1, C).expand(1, n_frames, C), b.view(1, 1, C).expand(1, n_frames, C)
        return ref.residual_layernorm_modulate(
            x, y, gate, wv, bv, frame_len=FRAME_LEN, eps=EPS, plus_one=False
        )

    def ln2_eager(x, y, shift, scale):
        r = x + y
        return r, _eager_adaln(r, shift, scale)

    return [
        Case(
            "adaln_modulate",
            shape,
            {"x": x, "shift": e0, "scale": e1},
            lambda x, shift, scale: adaln_modulate(x, shift, scale, frame_len=FRAME_LEN),
            _eager_adaln,
            lambda x, shift, scale: ref.adaln_modulate(x, shift, scale, frame_len=FRAME_LEN, eps=EPS),
            4 * n + 2 * vec,
            6 * n + 5 * vec,
        ),
        Case(
            "gated_residual",
            shape,
            {"x": x, "y": y, "gate": e2},
            lambda x, y, gate: gated_residual(x, y, gate, frame_len=FRAME_LEN),
            _eager_gated,
            lambda x, y, gate: ref.gated_residual(x, y, gate, frame_len=FRAME_LEN),
            6 * n + vec,
            6 * n + 2 * vec,
        ),
        Case(
            "gated_residual_adaln (LN2)",
            shape,
            {"x": x, "y": y, "shift": e3, "scale": e4},
            lambda x, y, shift, scale: gated_residual_adaln(x, y, None, shift, scale, frame_len=FRAME_LEN),
            ln2_eager,
            lambda x, y, shift, scale: ref.residual_layernorm_modulate(
                x, y, None, scale, shift, frame_len=FRAME_LEN, eps=EPS
            ),
            8 * n + 2 * vec,
            8 * n + 5 * vec,
        ),
        Case(
            "gated_residual_layernorm (LN3)",
            shape,
            {"x": x, "y": y, "gate": e2, "w": w3, "b": b3},
            lambda x, y, gate, w, b: gated_residual_layernorm(x, y, gate, w, b, frame_len=FRAME_LEN),
            ln3_eager,
            ln3_ref,
            8 * n + vec,
            12 * n + 3 * vec,
        ),
    ]


def _rope_cases() -> list[Case]:
    n_tok = ROPE_GRID[0] * ROPE_GRID[1] * ROPE_GRID[2]
    n = n_tok * HEADS * HEAD_DIM
    g = torch.Generator(device="cuda").manual_seed(1)
    qkv = torch.randn(1, n_tok, 3, HEADS, HEAD_DIM, device="cuda", generator=g).bfloat16()
    # q, k: leaves that are strided views of the fused QKV output (row stride 3·heads·D)
    q_in = qkv[:, :, 0].detach().requires_grad_()
    k_in = qkv[:, :, 1].detach().requires_grad_()
    wq = (torch.randn(HEADS * HEAD_DIM, device="cuda", generator=g) * 0.1 + 1).bfloat16().requires_grad_()
    wk = (torch.randn(HEADS * HEAD_DIM, device="cuda", generator=g) * 0.1 + 1).bfloat16().requires_grad_()
    offset = 1500  # a chunk late in a long video (beyond Wan's 1024-row table)
    ang = ref.rope_3d_angles(ROPE_GRID, HEAD_DIM, frame_offset=offset, device="cuda")
    freqs = torch.polar(torch.ones_like(ang), ang)

    def wan_eager(q, k, wq=None, wk=None):
        """Wan/LongLive training path: WanRMSNorm on the flat 3072 q/k, then fp64 complex RoPE."""
        outs = []
        for x, w in ((q, wq), (k, wk)):
            if w is not None:
                xf = x.flatten(2).float()
                x = ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).type_as(x) * w).view_as(x)
            xc = torch.view_as_complex(x.to(torch.float64).reshape(1, n_tok, HEADS, -1, 2))
            outs.append(torch.view_as_real(xc * freqs[None, :, None]).flatten(3).to(x.dtype))
        return tuple(outs)

    def ours(q, k, wq=None, wk=None):
        return apply_rope_3d(
            q,
            k,
            grid=ROPE_GRID,
            frame_offset=offset,
            norm_weight_q=wq,
            norm_weight_k=wk,
        )

    def reference(q, k, wq=None, wk=None):
        return ref.apply_rope_3d(
            q,
            k,
            grid=ROPE_GRID,
            frame_offset=offset,
            norm_weight_q=wq,
            norm_weight_k=wk,
            eps=EPS,
        )

    shape = f"q,k [1, {n_tok}, {HEADS}, {HEAD_DIM}]"
    return [
        Case("rope q+k", shape, {"q": q_in, "k": k_in}, ours, wan_eager, reference, 8 * n, 8 * n),
        Case(
            "rms_norm+rope q+k",
            shape,
            {"q": q_in, "k": k_in, "wq": wq, "wk": wk},
            ours,
            wan_eager,
            reference,
            8 * n,
            12 * n,
        ),
    ]


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _gpu_time_ms(fn: Callable[[], object], iters: int, warmup: int = 10) -> float:
    """Median GPU time of ``fn()`` in ms without its host overhead (L2 flushed, host hidden)."""
    return cuda_time_ms(fn, iters=iters, warmup=warmup, hide_host=True)


def _fwd_bwd_ms(fn: Callable, inputs: dict[str, torch.Tensor], iters: int, with_host: bool = False):
    """(forward ms, backward ms[, forward ms with host overhead, backward ms with host overhead])
    of ``fn(**inputs)``; the backward times autograd.grad on one graph."""
    leaves = [t for t in inputs.values() if t.requires_grad]

    def fwd():
        with torch.no_grad():
            return fn(**inputs)

    outs = _as_tuple(fn(**inputs))
    grads = [torch.randn_like(o) for o in outs]

    def bwd():
        return torch.autograd.grad(outs, leaves, grads, retain_graph=True)

    times = (_gpu_time_ms(fwd, iters), _gpu_time_ms(bwd, iters))
    if with_host:
        times += (cuda_time_ms(fwd, iters=iters), cuda_time_ms(bwd, iters=iters))
    return times


def autotune_choices() -> str:
    """The config each autotuned kernel picked, per autotune key (for the log next to the table)."""
    from longlive_kernels.attention import adaln_ops, adaln_triton, rope_ops, rope_triton

    lines = []
    pairs = ((adaln_ops, (adaln_triton._residual_norm_fwd_kernel, adaln_triton._residual_norm_bwd_kernel)),
             (rope_ops, (rope_triton._rope_fwd_kernel, rope_triton._rope_bwd_kernel)))
    for mod, kernels in pairs:
        for bwd, kernel in enumerate(kernels):
            tuned = mod._tuned(kernel, bool(bwd))
            if tuned is None:
                continue
            for key, cfg in tuned.cache.items():
                lines.append(f"- {kernel.fn.__name__} key={list(key)}: {cfg}")
    return "\n".join(lines)


def profile(quick: bool = False, iters: int = 20) -> str:
    """Per-kernel GPU time of our forward and backward of every case (torch.profiler), to see
    which launches a row's time goes to."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cases = _adaln_cases(7040) + _rope_cases() + ([] if quick else _adaln_cases(56320))
    lines = []
    for case in cases:
        leaves = [t for t in case.inputs.values() if t.requires_grad]
        outs = _as_tuple(case.ours(**case.inputs))
        grads = [torch.randn_like(o) for o in outs]
        for pass_ in ("fwd", "bwd"):
            def step():
                if pass_ == "fwd":
                    with torch.no_grad():
                        case.ours(**case.inputs)
                else:
                    torch.autograd.grad(outs, leaves, grads, retain_graph=True)
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(iters):
                    step()
                torch.cuda.synchronize()
            kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
            total = sum(e.device_time_total for e in kernels) / iters
            lines.append(f"{case.name} {case.shape} {pass_}: {total:.1f} us of kernels per call")
            for e in sorted(kernels, key=lambda e: -e.device_time_total):
                lines.append(f"    {e.device_time_total / iters:8.1f} us  x{e.count // iters}  {e.key[:90]}")
    return "\n".join(lines)


def run(quick: bool = False) -> list[dict]:
    copy = copy_bandwidth_gbs()
    torch._dynamo.config.cache_size_limit = 64
    cases = _adaln_cases(7040) + _rope_cases() + ([] if quick else _adaln_cases(56320))
    rows = []
    for case in cases:
        t_ours = _fwd_bwd_ms(case.ours, case.inputs, 50, with_host=True)
        t_eager = _fwd_bwd_ms(case.eager, case.inputs, 10)
        compiled = torch.compile(case.reference, dynamic=False)
        t_comp = _fwd_bwd_ms(compiled, case.inputs, 20)
        for i, (pass_, nbytes) in enumerate((("fwd", case.fwd_bytes), ("bwd", case.bwd_bytes))):
            gbs = nbytes / (t_ours[i] * 1e-3) / 1e9
            rows.append(
                {
                    "op": case.name,
                    "shape": case.shape,
                    "pass_": pass_,
                    "us": t_ours[i] * 1e3,
                    "gbs": gbs,
                    "x_copy": gbs / copy,
                    "vs_eager": t_eager[i] / t_ours[i],
                    "vs_compile": t_comp[i] / t_ours[i],
                    "compile_gbs": nbytes / (t_comp[i] * 1e-3) / 1e9,
                    "call_us": t_ours[2 + i] * 1e3,
                    "copy": copy,
                }
            )
    return rows


def to_markdown(rows: list[dict]) -> str:
    head = (
        "| op | shape | pass | µs | GB/s | ×copy (≥0.80) | vs eager | vs compile(ref) (≥1.2) "
        "| compile(ref) GB/s | call µs (host incl.) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['op']} | {r['shape']} | {r['pass_']} | {r['us']:.1f} | {r['gbs']:.0f} | {r['x_copy']:.2f} | "
        f"{r['vs_eager']:.2f}× | {r['vs_compile']:.2f}× | {r['compile_gbs']:.0f} | {r['call_us']:.1f} |\n"
        for r in rows
    )
    return head + body


# ---- pytest-benchmark entry points (GPU only) ----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case_index", range(4))
def test_bench_adaln_fwd_bwd(benchmark, case_index):
    case = _adaln_cases(7040)[case_index]
    outs = _as_tuple(case.ours(**case.inputs))
    grads = [torch.randn_like(o) for o in outs]
    leaves = [t for t in case.inputs.values() if t.requires_grad]

    def step():
        o = _as_tuple(case.ours(**case.inputs))
        torch.autograd.grad(o, leaves, grads)
        torch.cuda.synchronize()

    benchmark(step)


@pytest.mark.gpu
@pytest.mark.parametrize("case_index", range(2))
def test_bench_rope_fwd_bwd(benchmark, case_index):
    case = _rope_cases()[case_index]
    outs = _as_tuple(case.ours(**case.inputs))
    grads = [torch.randn_like(o) for o in outs]
    leaves = [t for t in case.inputs.values() if t.requires_grad]

    def step():
        o = _as_tuple(case.ours(**case.inputs))
        torch.autograd.grad(o, leaves, grads)
        torch.cuda.synchronize()

    benchmark(step)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the 7040-token shapes")
    ap.add_argument("--profile", action="store_true", help="per-kernel times instead of the table")
    args = ap.parse_args()
    print(device_header())
    if args.profile:
        print(profile(args.quick))
        raise SystemExit(0)
    result = run(args.quick)
    print(f"device-to-device copy: {result[0]['copy']:.0f} GB/s (read + write)\n")
    print(to_markdown(result))
    print("autotuned configs:\n" + autotune_choices())
