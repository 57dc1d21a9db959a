"""Triton kernels of the DiT sampler, each beside its PyTorch reference."""
