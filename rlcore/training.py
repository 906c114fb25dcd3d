"""Training utilities shared by every algorithm: metrics history, JSONL logs, progress bars,
learning-curve plots (mean +- std over seeds) and atomic checkpoints that can be resumed."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch


# --------------------------------------------------------------------- metrics
class History:
    """Append-only record of scalar metrics, keyed by name, each entry tagged with a step.

    ``history.log(step, loss=0.3, ret=12.0)`` then ``history["ret"]`` gives the values and
    ``history.steps("ret")`` the steps at which they were logged. Serialisable with
    :meth:`state_dict` so a resumed run continues the same curves.
    """

    def __init__(self):
        self._data: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def log(self, step: int, **metrics: float) -> None:
        for k, v in metrics.items():
            if v is None:
                continue
            self._data[k].append((int(step), float(v)))

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._data:
            raise KeyError(f"no metric {key!r} logged; available: {sorted(self._data)}")
        return np.array([v for _, v in self._data[key]])

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def steps(self, key: str) -> np.ndarray:
        return np.array([s for s, _ in self._data[key]])

    def keys(self):
        return self._data.keys()

    def last(self, key: str, default: float = math.nan) -> float:
        return self._data[key][-1][1] if self._data.get(key) else default

    def state_dict(self) -> dict:
        return {k: list(v) for k, v in self._data.items()}

    def load_state_dict(self, state: Mapping[str, list]) -> None:
        self._data = defaultdict(list, {k: [tuple(x) for x in v] for k, v in state.items()})

    def __repr__(self) -> str:
        return f"History({', '.join(f'{k}[{len(v)}]' for k, v in self._data.items())})"


class JSONLLogger:
    """Writes one JSON object per line (``{"step": ..., metric: value, ...}``); flushes each line.

    ``keep_until``: when resuming from a checkpoint taken at step ``k``, pass ``k``: records of later steps
    (written after the checkpoint by the interrupted run, and about to be redone) are dropped first, so
    the log holds every step exactly once. Implies appending.
    """

    def __init__(self, path: str | os.PathLike | None, append: bool = True, keep_until: int | None = None):
        self.path = Path(path) if path else None
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if keep_until is not None:
                _truncate_jsonl(self.path, keep_until)
                append = True
            self._fh = open(self.path, "a" if append else "w", encoding="utf-8")

    def log(self, step: int, **metrics: Any) -> None:
        if self._fh is None:
            return
        rec = {"step": int(step)}
        for k, v in metrics.items():
            if isinstance(v, (torch.Tensor, np.generic)):
                v = v.item()
            rec[k] = v
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _truncate_jsonl(path: Path, keep_until: int) -> None:
    """Keep the records of ``path`` with ``step <= keep_until`` (atomic rewrite; a torn last line is dropped)."""
    if not path.exists():
        return
    kept = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the interrupted run died mid-line
                continue
            if isinstance(rec, dict) and int(rec.get("step", 0)) <= keep_until:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", disable: bool | None = None, **kw):
    """A tqdm progress bar (notebook-aware). Disabled when ``disable`` is true or stderr is not a terminal in CI."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = bool(os.environ.get("CI")) or bool(os.environ.get("RLCORE_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, **kw)


# --------------------------------------------------------------------- plots
def rolling_mean(x, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (shorter at the start)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def interpolate_curves(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray | None = None, n: int = 200):
    """Put several ``(steps, values)`` curves on a common step grid (linear interpolation).

    The grid stops at the shortest run's last step, so no curve is extrapolated.
    Returns ``(grid, values[n_runs, len(grid)])``.
    """
    if not curves:
        raise ValueError("no curves to interpolate")
    if grid is None:
        lo = max(float(s[0]) for s, _ in curves)
        hi = min(float(s[-1]) for s, _ in curves)
        grid = np.linspace(lo, hi, n)
    vals = np.stack([np.interp(grid, s, v) for s, v in curves])
    return grid, vals


def plot_learning_curves(runs: Mapping[str, list[tuple[np.ndarray, np.ndarray]]], ax=None, xlabel: str = "environment steps",
                         ylabel: str = "episode return", title: str | None = None, smooth: int = 1, threshold: float | None = None):
    """Plot mean +- std over seeds for each labelled group of runs.

    ``runs = {"PPO": [(steps, returns), ...one per seed], "DQN": [...]}``. Each curve is
    optionally smoothed with a trailing mean of ``smooth`` points, then interpolated on a
    common grid. Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for label, curves in runs.items():
        curves = [(np.asarray(s, float), rolling_mean(v, smooth)) for s, v in curves if len(s) > 0]
        if not curves:
            continue
        grid, vals = interpolate_curves(curves)
        mean, std = vals.mean(0), vals.std(0)
        line, = ax.plot(grid, mean, label=f"{label} (n={len(curves)})")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.2, color=line.get_color())
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="gray", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return ax


# --------------------------------------------------------------------- checkpoints
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Save a dict of state (model/optimizer state dicts, step, RNG states, history) atomically."""
    import io

    buf = io.BytesIO()
    torch.save(dict(state), buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; a clear error naming the file if it is
    missing, empty, truncated or not a checkpoint (:func:`rlcore.lifecycle.load_run_checkpoint`)."""
    from rlcore.lifecycle import load_run_checkpoint

    return load_run_checkpoint(path, map_location=map_location)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states, to store in a checkpoint so resumed runs continue the same stream."""
    import random

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    import random

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def load_resume_checkpoint(path: str | os.PathLike, algo: str, env_id: str,
                           map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint to resume ``algo`` on ``env_id``; refuse one written by another run.

    Checkpoints store ``"algo"`` and ``"config"`` (with ``env_id``); resuming PPO from a
    TRPO checkpoint, or CartPole from Pendulum, would silently mix incompatible state.
    """
    from rlcore.lifecycle import load_run_checkpoint

    return load_run_checkpoint(path, algo=algo, env_id=env_id, map_location=map_location)
