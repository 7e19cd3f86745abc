"""Model layer of longlive: the causal DiT, the video autoencoders and the text encoders.

VAEs (``longlive.model.vae``): ``VideoVAE`` interface, ``WanVAE`` (Wan2.2 VAE with streaming decode),
``PatchVAE`` (weight-free pixel (un)shuffle), ``load_vae``.
Text encoders (``longlive.model.text_encoder``): ``TextEncoder`` interface, ``UMT5Encoder``,
``MiniLMEncoder``, ``HashTextEncoder``, ``load_text_encoder``.
"""

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
