"""Torch-free runtime for exported Q-SENN models (built in a later issue)."""
