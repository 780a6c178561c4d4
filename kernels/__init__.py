"""Triton kernels and their launch helpers (no torch.library or torch.compile knowledge)."""
