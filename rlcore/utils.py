"""Small helpers every part of rlcore shares: seeding, quick mode, validation."""
from __future__ import annotations

import math
import os
import random
from typing import Any

import numpy as np
import torch

QUICK_ENV_VAR = "RLCORE_QUICK"


def quick_mode() -> bool:
    """True when ``RLCORE_QUICK`` is set to a truthy value (``1``, ``true``, ``yes``).

    Notebooks and examples read budgets through :func:`pick` so that one switch makes
    every chapter run in a few minutes on a 2-core CPU, while the default reproduces
    the book's figures.
    """
    return os.environ.get(QUICK_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def pick(full: Any, quick: Any) -> Any:
    """Return ``quick`` in quick mode and ``full`` otherwise (e.g. ``pick(200_000, 20_000)``)."""
    return quick if quick_mode() else full


def seed_everything(seed: int, deterministic: bool | None = None) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a ``torch.Generator`` seeded the same way.

    CPU kernels are deterministic already, so the same seed gives the same result on CPU.
    ``deterministic=True`` also asks PyTorch for deterministic GPU kernels; the default
    (``None``) does so only when CUDA is available, because the switch costs seconds of
    import time on its first use.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic is None:
        deterministic = torch.cuda.is_available()
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def get_device(preferred: str | None = None) -> torch.device:
    """``cuda`` when available (or when asked for), else ``cpu``."""
    if preferred is not None:
        if preferred.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"device {preferred!r} was requested but CUDA is not available; use device='cpu'"
            )
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- validation
def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite positive number."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def check_probability(name: str, value: float, *, closed: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` lies in [0, 1] (``closed``) or (0, 1)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    ok = ok and ((0.0 <= value <= 1.0) if closed else (0.0 < value < 1.0))
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def check_finite(name: str, x: torch.Tensor | np.ndarray | float) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or infinity."""
    t = torch.as_tensor(x)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); check the function "
            f"that produced it"
        )
