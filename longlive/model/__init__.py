"""Model layer of longlive: the causal DiT, the video autoencoders and the text encoders.

DiT (``longlive.model.dit``): ``CausalDiT`` (chunk step with a KV cache, teacher forcing), attention
backends (``longlive.model.attention``), the teacher-forcing mask (``longlive.model.masks``),
checkpoints (``longlive.model.checkpoint``: ``load_pretrained``, ``load_checkpoint``, ``save_checkpoint``).

VAEs (``longlive.model.vae``): ``VideoVAE`` interface, ``WanVAE`` (Wan2.2 VAE with streaming decode),
``PatchVAE`` (weight-free pixel (un)shuffle), ``load_vae``.
Text encoders (``longlive.model.text_encoder``): ``TextEncoder`` interface, ``UMT5Encoder``,
``MiniLMEncoder``, ``HashTextEncoder``, ``load_text_encoder``.
"""

from longlive.model.attention import (
    BF16KVCache,
    DenseAttention,
    KVCacheAttention,
    MaskedAttention,
    SequenceParallelAttention,
)
from longlive.model.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
)
from longlive.model.dit import CausalDiT
from longlive.model.masks import TeacherForcingLayout
from longlive.model.text_encoder import (
    HashTextEncoder,
    MiniLMEncoder,
    TextEncoder,
    UMT5Encoder,
    load_text_encoder,
)
from longlive.model.vae import (
    PatchVAE,
    StateDictMismatchError,
    StreamDecoder,
    StreamEncoder,
    VideoVAE,
    WanVAE,
    WanVAEConfig,
    load_vae,
)

__all__ = [
    "BF16KVCache",
    "CausalDiT",
    "CheckpointMismatchError",
    "DenseAttention",
    "HashTextEncoder",
    "KVCacheAttention",
    "MaskedAttention",
    "MiniLMEncoder",
    "PatchVAE",
    "SequenceParallelAttention",
    "StateDictMismatchError",
    "StreamDecoder",
    "StreamEncoder",
    "TeacherForcingLayout",
    "TextEncoder",
    "UMT5Encoder",
    "VideoVAE",
    "WanVAE",
    "WanVAEConfig",
    "load_checkpoint",
    "load_pretrained",
    "load_text_encoder",
    "load_vae",
    "save_checkpoint",
]
