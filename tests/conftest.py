"""Test-wide settings: quick budgets, headless plotting, few threads, GPU skips."""

from __future__ import annotations

import os

# Before anything imports rlcore, matplotlib or torch.
os.environ.setdefault("RLCORE_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is faster than two (less sync overhead)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set once parallel work has started
    pass


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
