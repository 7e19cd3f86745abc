"""NVFP4Linear / quantize_model: inference modes, NVFP4 training (QAT), packed save/load.

Accuracy bounds are the error NVFP4 itself implies on Gaussian data: one 1×16 NVFP4 quantization has
a relative error of ~0.096 (16×16 weight blocks ~0.11), so a W4A4 GEMM lands at cosine ≈ 0.990
(1×16 weights, inference) / 0.989 (16×16 weights, training); dgrad adds stochastic rounding on dY
(≈0.985) and wgrad re-quantizes the decoded FP4 activations along tokens (≈0.982).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from longlive_kernels.fp4 import NVFP4Linear, NVFP4Recipe, NVFP4Tensor, quantize_model, quantize_nvfp4
from longlive_kernels.fp4 import reference as ref
from longlive_kernels.fp4.format import TE_HADAMARD_MASK
from longlive_kernels.testing import assert_bitwise_equal, cosine, rel_err, triton_device

DEV = triton_device()  # where backend="triton" runs: "cpu" under the interpreter, else "cuda"

FWD_COS = {"bf16": 0.999999, "fp8": 0.998, "w4a16": 0.99, "nvfp4": 0.99}


def _linear(seed: int, k: int, n: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


@pytest.mark.parametrize("mode", ["bf16", "fp8", "w4a16", "nvfp4"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_inference_forward_close_to_nn_linear(mode, backend):
    dev = DEV if backend == "triton" else "cpu"
    lin = _linear(0, 128, 48).to(dev)
    x = torch.randn(2, 9, 128).to(dev)
    mod = NVFP4Linear.from_linear(lin, mode, backend=backend)
    y = mod(x)
    assert y.shape == (2, 9, 48) and y.dtype == x.dtype
    assert cosine(y, lin(x)) >= FWD_COS[mode]
    if mode != "bf16":
        assert mod.weight is None and "weight" not in dict(mod.named_parameters())


def test_triton_and_torch_backends_agree():
    lin = _linear(1, 64, 32).to(DEV)
    x = torch.randn(17, 64, dtype=torch.bfloat16).to(DEV)
    for mode in ("nvfp4", "w4a16", "fp8"):
        a = NVFP4Linear.from_linear(lin, mode, backend="torch")
        b = NVFP4Linear.from_linear(lin, mode, backend="triton")
        for name, t in a.state_dict().items():  # identical packing
            assert_bitwise_equal(t.view(torch.uint8) if t.element_size() == 1 else t, b.state_dict()[name].view(
                torch.uint8) if t.element_size() == 1 else b.state_dict()[name], name)
        assert rel_err(b(x), a(x)) <= 2.0**-7


def _fwd_bwd(mod: nn.Module, x: torch.Tensor, g: torch.Tensor):
    xx = x.clone().requires_grad_()
    y = mod(xx)
    y.backward(g)
    return y, xx.grad


@pytest.mark.parametrize("recipe", [NVFP4Recipe(), NVFP4Recipe.four_over_six()], ids=["te", "4over6"])
def test_training_forward_backward_close_to_bf16(recipe):
    lin = _linear(2, 256, 96)
    x = torch.randn(64, 256)
    g = torch.randn(64, 96)
    y_ref, dx_ref = _fwd_bwd(lin, x, g)
    mod = NVFP4Linear.from_linear(lin, "nvfp4", trainable=True, recipe=recipe, backend="torch")
    y, dx = _fwd_bwd(mod, x, g)
    assert cosine(y, y_ref) >= 0.985
    assert cosine(dx, dx_ref) >= 0.98
    assert cosine(mod.weight.grad, lin.weight.grad) >= 0.975
    assert rel_err(mod.bias.grad, lin.bias.grad) <= 1e-6
    assert mod.weight.grad.dtype == mod.weight.dtype == torch.float32


def test_w4a16_training_is_straight_through():
    lin = _linear(3, 128, 64)
    x, g = torch.randn(32, 128), torch.randn(32, 64)
    y_ref, dx_ref = _fwd_bwd(lin, x, g)
    mod = NVFP4Linear.from_linear(lin, "w4a16", trainable=True, backend="torch")
    y, dx = _fwd_bwd(mod, x, g)
    assert cosine(y, y_ref) >= 0.99 and cosine(dx, dx_ref) >= 0.99
    assert rel_err(mod.weight.grad, lin.weight.grad) <= 1e-6  # wgrad is the bf16 (here fp32) one


def test_training_triton_matches_torch_backend():
    """Same seeds → bit-identical quantization on both backends; GEMMs differ by summation order."""
    lin = _linear(4, 64, 32).to(DEV)
    x, g = torch.randn(24, 64).to(DEV), torch.randn(24, 32).to(DEV)
    outs = []
    for backend in ("torch", "triton"):
        mod = NVFP4Linear.from_linear(lin, "nvfp4", trainable=True, backend=backend)
        torch.manual_seed(123)
        y, dx = _fwd_bwd(mod, x, g)
        outs.append((y, dx, mod.weight.grad))
    for a, b in zip(outs[0], outs[1]):
        assert rel_err(b, a) <= 1e-5


def _sr_dgrad_stats(stochastic: bool, seeds: int):
    lin = _linear(5, 64, 48, bias=False)
    x, g = torch.randn(32, 64), torch.randn(32, 48)
    mod = NVFP4Linear.from_linear(lin, "nvfp4", trainable=True, backend="torch",
                                  recipe=NVFP4Recipe(stochastic_grad=stochastic))
    w_hat = quantize_nvfp4(lin.weight.detach(), block_2d=True, backend="torch").dequantize(torch.float32, backend="torch")
    expect = g @ w_hat  # E[Q_sr(dY)] = dY (up to saturation at ±6)
    grads = []
    for s in range(seeds):
        torch.manual_seed(s)
        grads.append(_fwd_bwd(mod, x, g)[1])
    return rel_err(grads[0], expect), rel_err(torch.stack(grads).mean(0), expect)


def test_stochastic_rounding_gradients_are_unbiased():
    single, mean = _sr_dgrad_stats(True, 64)
    assert mean < single / 4  # 64 samples: the noise shrinks ~8×; only saturation bias remains
    single_rn, mean_rn = _sr_dgrad_stats(False, 2)
    assert mean_rn == pytest.approx(single_rn)  # round-to-nearest is deterministic (biased)
    assert mean < single_rn / 2


def test_wgrad_mean_over_seeds_is_the_rht_product():
    """E[dW] = (H·dYᵀ) · dec(Q(H·X̂ᵀ))ᵀ: stochastic rounding on dY only, same RHT on both sides."""
    lin = _linear(6, 32, 16, bias=False)
    x, g = torch.randn(48, 32), torch.randn(48, 16)
    mod = NVFP4Linear.from_linear(lin, "nvfp4", trainable=True, backend="torch")
    x_hat = quantize_nvfp4(x, backend="torch").dequantize(torch.float32, backend="torch")
    xtq = quantize_nvfp4(x_hat.t().contiguous(), hadamard=True, backend="torch")
    xt_rot = ref.dequantize(xtq.data, xtq.scale, xtq.global_scale, dtype=torch.float64)
    expect = ref.random_hadamard_transform(g.t().contiguous(), TE_HADAMARD_MASK).double() @ xt_rot.T
    grads = []
    for s in range(48):
        torch.manual_seed(s)
        mod.weight.grad = None
        _fwd_bwd(mod, x, g)
        grads.append(mod.weight.grad.double())
    assert rel_err(torch.stack(grads).mean(0), expect) < rel_err(grads[0], expect) / 3


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def _train(mode: str, backend: str, steps: int, device: str = "cpu") -> list[float]:
    torch.manual_seed(0)
    teacher = _MLP().to(device)
    student = _MLP().to(device)
    if mode != "bf16":
        quantize_model(student, mode, trainable=True, backend=backend)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        x = torch.randn(64, 32, generator=torch.Generator().manual_seed(step)).to(device)
        with torch.no_grad():
            target = teacher(x)
        loss = torch.nn.functional.mse_loss(student(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tiny_mlp_trains_like_bf16():
    bf16 = _train("bf16", "torch", 60)
    nvfp4 = _train("nvfp4", "torch", 60)
    w4a16 = _train("w4a16", "torch", 60)
    tail = lambda losses: sum(losses[-10:]) / 10
    assert tail(bf16) < 0.25 * bf16[0]
    assert tail(nvfp4) < 0.35 * nvfp4[0]
    assert tail(nvfp4) < 2.0 * tail(bf16) + 0.02 * bf16[0]
    assert tail(w4a16) < 1.5 * tail(bf16) + 0.02 * bf16[0]


def test_tiny_mlp_triton_steps_match_torch():
    assert _train("nvfp4", "triton", 3, DEV) == pytest.approx(_train("nvfp4", "torch", 3, DEV), rel=1e-4)


def test_safetensors_round_trip_is_exact(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = _MLP()
    quantize_model(model, "nvfp4", backend="torch")
    path = tmp_path / "model.safetensors"
    safetensors.save_file(model.state_dict(), str(path))
    fresh = quantize_model(_MLP(), "nvfp4", backend="torch")  # different random weights
    fresh.load_state_dict(safetensors.load_file(str(path)))
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert_bitwise_equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                             b.view(torch.uint8) if b.element_size() == 1 else b, name)
    x = torch.randn(5, 32)
    assert_bitwise_equal(model(x), fresh(x), "output")


def test_fp8_state_dict_round_trip():
    model = quantize_model(_MLP(), "fp8", backend="torch")
    fresh = quantize_model(_MLP(), "fp8", backend="torch")
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(3, 32)
    assert_bitwise_equal(model(x), fresh(x), "output")


def test_float_checkpoint_loads_into_packed_module():
    lin = _linear(7, 64, 32)
    packed = NVFP4Linear(64, 32, mode="nvfp4", backend="torch", dtype=torch.float32)  # fp32 bias, as lin
    packed.load_state_dict(lin.state_dict())
    direct = NVFP4Linear.from_linear(lin, "nvfp4", backend="torch")
    assert_bitwise_equal(packed.weight_data, direct.weight_data, "codes")
    x = torch.randn(4, 64)
    assert_bitwise_equal(packed(x), direct(x), "output")


def test_packed_weights_cannot_load_into_trainable_module():
    packed = NVFP4Linear(64, 32, mode="nvfp4", backend="torch")
    trainable = NVFP4Linear(64, 32, mode="nvfp4", trainable=True, backend="torch")
    with pytest.raises(RuntimeError, match="master weight"):
        trainable.load_state_dict(packed.state_dict())


def test_pack_frees_master_weight_and_keeps_the_function():
    lin = _linear(8, 64, 32)
    mod = NVFP4Linear.from_linear(lin, "nvfp4", trainable=True, backend="torch")
    mod.pack()
    assert mod.weight is None and not mod.trainable
    direct = NVFP4Linear.from_linear(lin, "nvfp4", backend="torch")
    assert_bitwise_equal(mod.weight_data, direct.weight_data, "codes")
    assert isinstance(mod.packed_weight(), NVFP4Tensor)


def test_model_to_dtype_keeps_packed_format():
    model = quantize_model(_MLP(), "nvfp4", backend="torch").to(torch.bfloat16)
    assert model.fc1.weight_scale.dtype == torch.float8_e4m3fn
    assert model.fc1.weight_global_scale.dtype == torch.float32
    assert model.fc1.weight_data.dtype == torch.uint8
    assert model.fc1.bias.dtype == torch.bfloat16
    assert model(torch.randn(2, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_quantize_model_swaps_only_plain_linears():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32))
                                         for _ in range(2)])
            self.head = nn.Linear(32, 16)
            self.odd = nn.Linear(20, 32)  # in_features % 16 != 0: kept
            self.attn = nn.MultiheadAttention(32, 2)  # out_proj is a Linear subclass: kept

    net = quantize_model(Net(), "nvfp4", skip=("head",), backend="torch")
    assert isinstance(net.blocks[0][0], NVFP4Linear) and isinstance(net.blocks[1][2], NVFP4Linear)
    assert type(net.head) is nn.Linear and type(net.odd) is nn.Linear
    assert not isinstance(net.attn.out_proj, NVFP4Linear)
    skipped = quantize_model(copy.deepcopy(Net()), "nvfp4", skip=("blocks.*",), backend="torch")
    assert type(skipped.blocks[0][0]) is nn.Linear and isinstance(skipped.head, NVFP4Linear)


def test_meta_device_model_stays_empty_for_loading():
    with torch.device("meta"):
        net = _MLP()
    quantize_model(net, "nvfp4", backend="torch")
    assert net.fc1.weight_data.device.type == "meta"
    net.to_empty(device="cpu")
    src = quantize_model(_MLP(), "nvfp4", backend="torch")
    net.load_state_dict(src.state_dict())
    x = torch.randn(2, 32)
    assert_bitwise_equal(net(x), src(x), "output")


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: NVFP4Linear(20, 32, mode="nvfp4"), ValueError, "in_features"),
        (lambda: NVFP4Linear(32, 20, mode="nvfp4", trainable=True), ValueError, "out_features"),
        (lambda: NVFP4Linear(32, 32, mode="fp8", trainable=True), ValueError, "inference-only"),
        (lambda: NVFP4Linear(32, 32, mode="int4"), ValueError, "mode"),
        (lambda: NVFP4Linear(32, 32, mode="nvfp4", backend="torch")(torch.randn(2, 16)), ValueError, "last dim"),
        (lambda: NVFP4Linear.from_linear(nn.Conv1d(2, 2, 1)), TypeError, "nn.Linear"),
        (lambda: NVFP4Recipe(act_scale_rule="mse"), ValueError, "act_scale_rule"),
        (lambda: quantize_model(nn.Linear(16, 16), "int8"), ValueError, "mode"),
    ],
)
def test_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# --- GPU: the 5B block's linear shapes -----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("k,n", [(3072, 3072), (3072, 14336), (14336, 3072)])
def test_gpu_block_linear_training_matches_reference(k, n):
    torch.manual_seed(0)
    lin = nn.Linear(k, n, device="cuda")
    x = torch.randn(1760, k, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(1760, n, device="cuda", dtype=torch.bfloat16)
    outs = []
    for backend in ("triton", "torch"):
        mod = NVFP4Linear.from_linear(lin, "nvfp4", trainable=True, backend=backend)
        torch.manual_seed(1)
        y, dx = _fwd_bwd(mod, x, g)
        outs.append((y.float(), dx.float(), mod.weight.grad))
    for a, b in zip(*outs):
        assert rel_err(a, b) <= 1e-2  # identical quantization; bf16 outputs, summation order
    y_ref = lin(x.float())
    assert cosine(outs[0][0], y_ref) >= 0.985


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,m", [(3072, 3072, 7040), (3072, 14336, 7040), (14336, 3072, 1792), (200, 96, 192)])
def test_gpu_wgrad_gemm_in_the_weight_dtype_is_the_fp32_gemm_rounded(n, k, m):
    """The wgrad GEMM ``Q(dYᵀ)·Q(X̂ᵀ)ᵀ`` (tokens contracted) written in bf16 equals its FP32 output rounded
    to bf16 bit for bit, so the backward writes dW in the weight's dtype directly (no FP32 [N, K] round
    trip); shapes with and without the last-wave K split."""
    from longlive_kernels.fp4 import nvfp4_gemm

    g = torch.Generator(device="cuda").manual_seed(n + k + m)
    a = quantize_nvfp4(torch.randn(n, m, device="cuda", generator=g).bfloat16(), hadamard=True)
    b = quantize_nvfp4(torch.randn(k, m, device="cuda", generator=g).bfloat16(), hadamard=True)
    out32 = nvfp4_gemm(a, b, out_dtype=torch.float32)
    out16 = nvfp4_gemm(a, b, out_dtype=torch.bfloat16)
    assert out16.dtype == torch.bfloat16 and out32.abs().max() > 0
    assert torch.equal(out16, out32.to(torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_gpu_w4a16_wgrad_is_the_fp32_accumulated_product(w_dtype):
    """Weight-only QAT: dW = dYᵀ·X from one 16-bit tensor-core GEMM with FP32 accumulation, in the master
    weight's dtype: within FP32 summation error of the fp64 product for an FP32 master weight, within one
    bf16 rounding for a bf16 one; db is the FP32 sum of dY."""
    torch.manual_seed(0)
    mod = NVFP4Linear(512, 384, mode="w4a16", trainable=True, device="cuda", dtype=w_dtype)
    x = torch.randn(1000, 512, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(1000, 384, device="cuda", dtype=torch.bfloat16)
    mod(x).backward(g)
    want = g.double().t() @ x.double()
    assert mod.weight.grad.dtype == w_dtype
    tol = 1e-6 if w_dtype == torch.float32 else 2.0**-8
    assert rel_err(mod.weight.grad.double(), want) <= tol
    assert rel_err(mod.bias.grad.double(), g.double().sum(0)) <= tol


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["nvfp4", "w4a16", "fp8"])
def test_gpu_inference_modes(mode):
    torch.manual_seed(0)
    lin = nn.Linear(3072, 3072, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(7040, 3072, device="cuda", dtype=torch.bfloat16)
    mod = NVFP4Linear.from_linear(lin, mode)
    assert cosine(mod(x), lin(x)) >= FWD_COS[mode]
    ref_mod = NVFP4Linear.from_linear(lin, mode, backend="torch")
    assert rel_err(mod(x[:64]), ref_mod(x[:64])) <= 2.0**-6


@pytest.mark.parametrize("mode", ["bf16", "fp8", "w4a16", "nvfp4"])
def test_input_activation_is_gelu_then_linear(mode):
    """``NVFP4Linear(x, input_activation="gelu_tanh")`` = the module on ``F.gelu(x, "tanh")`` (fused into
    the FP8 quantization in fp8 mode, within the rounding of the GELU value; torch's GELU elsewhere,
    exactly); an unknown activation is refused."""
    import torch.nn.functional as F

    lin = _linear(3, 64, 24).to(DEV).bfloat16()
    x = torch.randn(3, 5, 64).to(DEV).bfloat16()
    mod = NVFP4Linear.from_linear(lin, mode)
    got = mod(x, input_activation="gelu_tanh")
    want = mod(F.gelu(x, approximate="tanh"))
    if mode == "fp8":
        assert cosine(got, want) >= 0.999
    else:
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="input_activation"):
        mod(x, input_activation="silu")
