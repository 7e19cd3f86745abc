"""DiT checkpoints: official Wan naming round trip, diffusers naming, LongLive generator wrappers,
sharded directories next to VAE/T5 files, clear errors for other architectures and unsafe files."""

import json
import pickle

import pytest
import torch

from longlive.config import ModelConfig
from longlive.model.checkpoint import (
    CheckpointMismatchError,
    check_state_dict,
    infer_architecture,
    load_checkpoint,
    load_pretrained,
    read_state_dict,
    save_checkpoint,
)
from longlive.model.dit import CausalDiT

TINY = ModelConfig.from_name("tiny").replace(num_layers=2, dim=128, num_heads=2, ffn_dim=256, text_len=8)

# Original Wan → diffusers WanTransformer3DModel names (facts of the public conversion map); the test
# writes diffusers-named files with it and checks that loading maps them back.
_TO_DIFFUSERS_BLOCK = {
    "self_attn.q.": "attn1.to_q.", "self_attn.k.": "attn1.to_k.", "self_attn.v.": "attn1.to_v.",
    "self_attn.o.": "attn1.to_out.0.", "self_attn.norm_q.": "attn1.norm_q.", "self_attn.norm_k.": "attn1.norm_k.",
    "cross_attn.q.": "attn2.to_q.", "cross_attn.k.": "attn2.to_k.", "cross_attn.v.": "attn2.to_v.",
    "cross_attn.o.": "attn2.to_out.0.", "cross_attn.norm_q.": "attn2.norm_q.", "cross_attn.norm_k.": "attn2.norm_k.",
    "ffn.0.": "ffn.net.0.proj.", "ffn.2.": "ffn.net.2.", "norm3.": "norm2.", "modulation": "scale_shift_table",
}
_TO_DIFFUSERS_TOP = {
    "time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
    "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
    "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
    "text_embedding.2.": "condition_embedder.text_embedder.linear_2.",
    "time_projection.1.": "condition_embedder.time_proj.", "head.head.": "proj_out.",
    "head.modulation": "scale_shift_table",
}


def _to_diffusers(sd):
    out = {}
    for k, v in sd.items():
        nk = k
        if k.startswith("blocks."):
            _, idx, rest = k.split(".", 2)
            for a, b in _TO_DIFFUSERS_BLOCK.items():
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            nk = f"blocks.{idx}.{rest}"
        else:
            for a, b in _TO_DIFFUSERS_TOP.items():
                if k.startswith(a):
                    nk = b + k[len(a):]
                    break
        out[nk] = v
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CausalDiT(TINY, zero_init_head=False)


def _fresh(cfg=TINY):
    torch.manual_seed(1)
    return CausalDiT(cfg)


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_single_file_round_trip_in_official_naming(model, tmp_path):
    from safetensors import safe_open

    path = save_checkpoint(model, tmp_path / "dit.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    assert keys == set(model.state_dict())
    assert {"blocks.1.self_attn.q.weight", "blocks.0.cross_attn.norm_k.weight", "blocks.0.norm3.bias",
            "blocks.0.ffn.2.weight", "blocks.0.modulation", "head.head.weight", "head.modulation",
            "patch_embedding.weight", "text_embedding.2.bias", "time_embedding.0.weight",
            "time_projection.1.weight"} <= keys
    assert ModelConfig.from_dict(json.loads(meta["longlive_config"])) == TINY
    other = _fresh()
    rep = load_checkpoint(other, path)
    assert rep.ok and rep.naming == "wan"
    _assert_same(model, other)
    rebuilt = load_pretrained(path, dtype=torch.float32)  # config from the metadata
    assert rebuilt.config == TINY
    _assert_same(model, rebuilt)


def test_sharded_directory_next_to_vae_and_t5_files(model, tmp_path):
    d = save_checkpoint(model, tmp_path / "Wan2.2-TI2V-5B", shard_bytes=400_000)
    shards = sorted(d.glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((d / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    torch.save({"decoder.x": torch.zeros(2)}, d / "Wan2.2_VAE.pth")  # must be ignored
    torch.save({"encoder.y": torch.zeros(2)}, d / "models_t5_umt5-xxl-enc-bf16.pth")
    other = _fresh()
    assert load_checkpoint(other, d).ok
    _assert_same(model, other)


def test_diffusers_naming_loads(model, tmp_path):
    from safetensors.torch import save_file

    sd = _to_diffusers({k: v.clone() for k, v in model.state_dict().items()})
    assert "condition_embedder.time_proj.weight" in sd and "blocks.0.attn1.to_out.0.weight" in sd
    (tmp_path / "transformer").mkdir()
    save_file(sd, str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
    other = _fresh()
    rep = load_checkpoint(other, tmp_path)  # pipeline directory → transformer/
    assert rep.ok and rep.naming == "diffusers"
    _assert_same(model, other)


def test_longlive_generator_checkpoint_wrappers(model, tmp_path):
    sd = model.state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    # LongLive/Self-Forcing style: {"generator": ..., "generator_ema": ...} with the wrapper's "model." prefix,
    # FSDP and torch.compile infixes.
    wrap = {
        "generator": {"model." + k: v for k, v in sd.items()},
        "generator_ema": {"model._orig_mod." + k.replace("blocks.0.", "blocks.0._fsdp_wrapped_module."): v
                          for k, v in ema.items()},
        "step": 100,
    }
    torch.save(wrap, tmp_path / "model_bf16.pt")
    other = _fresh()
    rep = load_checkpoint(other, tmp_path / "model_bf16.pt")  # prefers EMA
    assert rep.wrapper == "generator_ema" and "_orig_mod" in rep.stripped and "model." in rep.stripped
    assert all(torch.equal(other.state_dict()[k], ema[k]) for k in sd)
    rep = load_checkpoint(other, tmp_path / "model_bf16.pt", prefer_ema=False)
    assert rep.wrapper == "generator"
    _assert_same(model, other)
    torch.save(sd, tmp_path / "plain.pth")
    assert load_checkpoint(_fresh(), tmp_path / "plain.pth").ok


def test_checkpoint_of_another_architecture_is_a_clear_error(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "dit.safetensors")
    wider = TINY.replace(dim=192, num_heads=3)
    with pytest.raises(CheckpointMismatchError) as exc:
        load_checkpoint(CausalDiT(wider), path)
    msg = str(exc.value)
    assert "another architecture" in msg and "dim=128 (expected 192)" in msg
    assert "blocks.0.cross_attn.k.weight: [128, 128] vs [192, 192]" in msg
    deeper = TINY.replace(num_layers=3)
    with pytest.raises(CheckpointMismatchError, match=r"num_layers=2 \(expected 3\)[\s\S]*missing keys.*"
                                                      r"blocks\.2\.cross_attn\.k\.bias \[128\]"):
        load_checkpoint(CausalDiT(deeper), path)
    partial = CausalDiT(deeper)
    rep = load_checkpoint(partial, path, strict=False)
    assert not rep.ok and len(rep.missing) == 27 and not rep.unexpected
    assert torch.equal(partial.blocks[1].ffn[0].weight, model.blocks[1].ffn[0].weight)


def test_5b_geometry_is_recognised_on_meta():
    with torch.device("meta"):
        five = CausalDiT(ModelConfig.from_name("wan2.2-ti2v-5b"))
        small = CausalDiT(ModelConfig.from_name("small-1.3b"))
    arch = infer_architecture(five.state_dict())
    assert arch == {"dim": 3072, "in_channels": 48, "patch_size": (1, 2, 2), "num_layers": 30,
                    "ffn_dim": 14336, "text_dim": 4096, "freq_dim": 256, "out_channels": 48}
    with pytest.raises(CheckpointMismatchError, match="matches preset 'small-1.3b'"):
        check_state_dict(five, small.state_dict())
    check_state_dict(five, five.state_dict())


def test_unsafe_and_unsupported_files_are_rejected(model, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        read_state_dict(tmp_path / "evil.pt")
    torch.save({"blocks.0.self_attn.q.quantized_weight_values": torch.zeros(2, dtype=torch.uint8)},
               tmp_path / "model_4o6.pt")
    with pytest.raises(ValueError, match="FourOverSix"):
        read_state_dict(tmp_path / "model_4o6.pt")
    torch.save({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 2)}, tmp_path / "lora.pt")
    with pytest.raises(ValueError, match="LoRA"):
        read_state_dict(tmp_path / "lora.pt")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DiT weights"):
        read_state_dict(tmp_path / "empty")


def test_load_pretrained_quantizes_on_load(model, tmp_path):
    fp4 = pytest.importorskip("longlive_kernels.fp4")
    if not hasattr(fp4, "quantize_model"):
        pytest.skip("longlive_kernels.fp4.quantize_model not available yet")
    path = save_checkpoint(model, tmp_path / "dit.safetensors")
    q = load_pretrained(path, mode="nvfp4", dtype=torch.float32)
    assert q.linear_mode == "nvfp4" and not isinstance(q.blocks[0].ffn[0], torch.nn.Linear)
    assert isinstance(q.text_embedding[0], torch.nn.Linear)
    packed = save_checkpoint(q, tmp_path / "packed.safetensors")
    with pytest.raises(CheckpointMismatchError, match="nvfp4"):
        load_checkpoint(_fresh(), packed)
    q2 = load_pretrained(packed, mode="nvfp4", dtype=torch.float32)
    _assert_same(q, q2)
    q3 = load_pretrained(packed, mode="nvfp4", dtype=torch.bfloat16)  # packed tensors are never cast
    s1, s3 = q.state_dict(), q3.state_dict()
    packed_keys = [k for k, v in s1.items() if v.dtype not in (torch.float32, torch.bfloat16) or "global" in k]
    assert packed_keys
    for k in packed_keys:
        assert s3[k].dtype == s1[k].dtype and torch.equal(s3[k].view(torch.uint8), s1[k].view(torch.uint8)), k


def test_fp8_tensor_checkpoint_round_trip(model, tmp_path):
    """A packed ``fp8_tensor`` model (0-dim weight scales behind the norms, row-wise elsewhere) loads
    back bit for bit, and only into its own mode."""
    path = save_checkpoint(model, tmp_path / "dit.safetensors")
    q = load_pretrained(path, mode="fp8_tensor", dtype=torch.bfloat16)
    blk = q.blocks[0]
    assert q.linear_mode == "fp8_tensor"
    assert blk.ffn[0].weight_scale.dim() == 0 and blk.ffn[2].weight_scale.dim() == 1
    packed = save_checkpoint(q, tmp_path / "packed.safetensors")
    with pytest.raises(CheckpointMismatchError, match="fp8_tensor"):
        load_pretrained(packed, mode="fp8", dtype=torch.bfloat16)
    _assert_same(q, load_pretrained(packed, mode="fp8_tensor", dtype=torch.bfloat16))
