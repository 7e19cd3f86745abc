"""longlive: causal Wan2.2-TI2V-style DiT, streaming inference, Balanced-SP teacher-forcing trainer
and the ``longlive`` command, built on :mod:`longlive_kernels`."""

__version__ = "0.1.0"
