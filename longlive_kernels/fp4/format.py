"""NVFP4: E2M1 elements, one E4M3 scale per 16 consecutive elements, one FP32 tensor scale.

Semantics (``shared/docs/nvfp4-hopper.md`` §1, fouroversix for Four Over Six):

    x ≈ e2m1 · s_block · s_global
    s_global = amax / (E2M1_MAX[rule] · E4M3_MAX[rule])           (the *decode* scale, FP32)
    s_block  = e4m3_rn(min((block_amax / E2M1_TARGET) / s_global, 448))
    q        = e2m1_rn_sat(x · r),  r = 1 / (s_block · s_global)  (TE's block_scale_inverse)

Packing: element ``2i`` in the LOW nibble of byte ``i``; E2M1 code = sign<<3 | exp<<1 | mantissa.
"""

from __future__ import annotations

import dataclasses
import math

import torch

BLOCK_SIZE = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0

# E2M1 magnitude of code 0..7.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

# rule -> (E2M1 target the block amax maps to, tensor-scale denominator E2M1_MAX · E4M3 bound).
# four_over_six maps to 6 or 4 per block and uses fouroversix's E4M3 bound of 256.
SCALE_RULES: dict[str, tuple[float, float]] = {
    "static6": (6.0, 6.0 * 448.0),
    "static4": (4.0, 4.0 * 448.0),
    "four_over_six": (6.0, 6.0 * 256.0),
}
ROUNDINGS = ("rne", "stochastic")

# Transformer Engine's fixed RHT sign vector (bit i set = element i negated); used for hadamard=True.
TE_HADAMARD_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)


def signs_to_mask(signs: tuple[int, ...]) -> int:
    """16 signs (±1) → 16-bit mask with bit i set where sign i is −1."""
    return sum(1 << i for i, s in enumerate(signs) if s < 0)


TE_HADAMARD_MASK = signs_to_mask(TE_HADAMARD_SIGNS)


def hadamard_mask_from_seed(seed: int) -> int:
    """A reproducible 16-bit sign mask from an integer seed (splitmix64 finaliser)."""
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0xFFFF


def global_scale_denominator(scale_rule: str) -> float:
    """E2M1_MAX · E4M3 bound of the rule: 2688 (static6), 1792 (static4), 1536 (four_over_six)."""
    return SCALE_RULES[scale_rule][1]


def _ceil_to(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def to_blocked(scale: torch.Tensor) -> torch.Tensor:
    """Linear scales [rows, cols] → cuBLAS/CUTLASS 128×4-tiled layout (flat, padded).

    Rows are padded to a multiple of 128 and cols to a multiple of 4 (with zeros); each 128×4 tile
    becomes 512 contiguous bytes, byte ``(r % 32)·16 + ((r % 128) // 32)·4 + c % 4``; tiles are
    row-block major (cuBLAS "1D block scaling factors layout").
    """
    rows, cols = scale.shape
    pr, pc = _ceil_to(rows, 128), _ceil_to(cols, 4)
    padded = scale.new_zeros((pr, pc)) if scale.dtype != torch.float8_e4m3fn else torch.zeros(
        (pr, pc), dtype=torch.uint8, device=scale.device
    ).view(torch.float8_e4m3fn)
    padded[:rows, :cols] = scale
    tiles = padded.view(pr // 128, 4, 32, pc // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(-1)


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_blocked`: flat tiled scales → linear [rows, cols]."""
    pr, pc = _ceil_to(rows, 128), _ceil_to(cols, 4)
    if blocked.numel() != pr * pc:
        raise ValueError(f"blocked scale has {blocked.numel()} elements, expected {pr * pc} for [{rows}, {cols}]")
    tiles = blocked.view(pr // 128, pc // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(pr, pc)[:rows, :cols].contiguous()


@dataclasses.dataclass
class NVFP4Tensor:
    """A tensor quantized to NVFP4.

    Attributes
    ----------
    data : torch.Tensor
        uint8 [..., K/2], packed E2M1 codes, element ``2i`` in the low nibble.
    scale : torch.Tensor
        float8_e4m3fn [..., K/16] block scales (linear layout), or the flat 128×4-tiled layout of
        [rows, K/16] when ``swizzled`` (see :func:`to_blocked`).
    global_scale : torch.Tensor
        float32 0-dim decode scale ``amax / (E2M1_MAX · E4M3 bound)`` of ``scale_rule``.
    shape : torch.Size
        Original shape [..., K].
    dtype : torch.dtype
        Original dtype (the default of :meth:`dequantize`).
    scale_rule : str
        ``"static6"``, ``"static4"`` or ``"four_over_six"`` (fixes the tensor-scale denominator).
    block_2d : bool
        Scales were chosen per 16×16 tile of the flattened [rows, K] matrix (replicated per row).
    hadamard_mask : int or None
        The data holds ``x`` after the random Hadamard transform with this 16-bit sign mask
        (:func:`~longlive_kernels.fp4.random_hadamard_transform`); ``dequantize`` undoes it.
    swizzled : bool
        ``scale`` is in the 128×4-tiled layout.
    """

    data: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype = torch.bfloat16
    scale_rule: str = "static6"
    block_2d: bool = False
    hadamard_mask: int | None = None
    swizzled: bool = False

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def k(self) -> int:
        return self.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed data + scales + the FP32 tensor scale."""
        return (
            self.data.numel() * self.data.element_size()
            + self.scale.numel() * self.scale.element_size()
            + self.global_scale.numel() * self.global_scale.element_size()
        )

    def to(self, device: torch.device | str) -> NVFP4Tensor:
        """Copy to ``device`` (returns ``self`` when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return dataclasses.replace(
            self,
            data=self.data.to(device),
            scale=self.scale.to(device),
            global_scale=self.global_scale.to(device),
        )

    def to_blocked(self) -> NVFP4Tensor:
        """Same tensor with scales in the cuBLAS 128×4-tiled layout (for sm_100 block-scaled GEMM)."""
        if self.swizzled:
            return self
        lin = self.scale.reshape(self.rows, self.k // BLOCK_SIZE)
        return dataclasses.replace(self, scale=to_blocked(lin), swizzled=True)

    def from_blocked(self) -> NVFP4Tensor:
        """Same tensor with linear [..., K/16] scales."""
        if not self.swizzled:
            return self
        lin = from_blocked(self.scale, self.rows, self.k // BLOCK_SIZE)
        return dataclasses.replace(self, scale=lin.reshape(*self.shape[:-1], self.k // BLOCK_SIZE), swizzled=False)

    def dequantize(self, dtype: torch.dtype | None = None, *, backend: str = "auto") -> torch.Tensor:
        """Decode to a dense tensor of ``dtype`` (default: the original dtype)."""
        from .dequantize import dequantize_nvfp4

        return dequantize_nvfp4(self, dtype=dtype or self.dtype, backend=backend)

    def __repr__(self) -> str:
        return (
            f"NVFP4Tensor(shape={tuple(self.shape)}, dtype={self.dtype}, rule={self.scale_rule}, "
            f"block_2d={self.block_2d}, hadamard={self.hadamard_mask is not None}, "
            f"swizzled={self.swizzled}, device={self.device})"
        )
