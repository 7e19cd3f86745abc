"""longlive: causal Wan2.2-TI2V-style DiT, streaming inference, Balanced-SP teacher-forcing trainer
and the ``longlive`` command, built on :mod:`longlive_kernels`."""

__version__ = "0.1.0"

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str):
    # ``longlive.Pipeline`` without importing torch-heavy modules at ``import longlive``.
    if name == "Pipeline":
        from longlive.inference.pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'longlive' has no attribute {name!r}")
