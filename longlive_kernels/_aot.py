"""Registry of Triton kernels to compile ahead of time for sm_90a (``tools/aot_compile.py``).

Every kernel module registers one or more representative specialisations at import, so CI (no GPU)
proves each kernel builds for Hopper, and that matrix kernels issue wgmma (``expect_wgmma``).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class AotSpec:
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    options: dict[str, Any]
    expect_wgmma: bool

    @property
    def name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        return f"{fn.__module__}.{fn.__name__}"


AOT_SPECS: list[AotSpec] = []


def register_aot(
    kernel: Any,
    *,
    signature: dict[str, str],
    constexprs: dict[str, Any],
    options: dict[str, Any] | None = None,
    expect_wgmma: bool = False,
) -> None:
    """Record one specialisation of ``kernel`` (a ``@triton.jit`` function) for AOT compilation.

    ``signature`` maps each runtime argument to a Triton type string (``"*bf16"``, ``"i32"``...);
    constexpr arguments go in ``constexprs`` (and are typed ``"constexpr"`` automatically).
    """
    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    AOT_SPECS.append(AotSpec(kernel, sig, dict(constexprs), dict(options or {}), expect_wgmma))
