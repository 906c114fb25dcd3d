"""Committed experiment artifacts (``benchmarks/results/*.json``) for the chapters to read and check.

The book never reruns the hour-long SmolLM2 pipeline: chapters load what ``benchmarks/llm_cpu_runs.py``
wrote, print where it came from (command, commit, machine, date), and assert every claim they make
about it against these numbers.
"""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

__all__ = ["repo_root", "load_result", "provenance", "fmt_ci", "cpu_model", "git_commit", "run_meta"]


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows: recorded with every result."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(root: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout (None outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(root), capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def repo_root(start: str | Path | None = None) -> Path:
    """The checkout's root (the directory holding ``rlcore/__init__.py``), searched upwards."""
    here = Path(start or Path.cwd()).resolve()
    for p in [here, *here.parents]:
        if (p / "rlcore" / "__init__.py").exists() and (p / "benchmarks").is_dir():
            return p
    return Path(__file__).resolve().parents[2]


def load_result(name: str, root: str | Path | None = None) -> dict:
    """``benchmarks/results/<name>.json`` as a dict; a clear error naming the command that makes it."""
    path = repo_root(root) / "benchmarks" / "results" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; make it with `python benchmarks/{name}.py` "
                                "(see its --help for subsets)")
    return json.loads(path.read_text())


def provenance(meta: dict) -> str:
    """One block of text: how the numbers were made (command, commit, machine, threads, date, wall time)."""
    wall = meta.get("wall_s")
    return (f"command: {meta.get('command')}\n"
            f"commit:  {meta.get('git_commit')}\n"
            f"machine: {meta.get('cpu')}, {meta.get('threads')} threads, torch {meta.get('torch')}\n"
            f"date:    {meta.get('date')}" + (f", wall time {wall / 60:.1f} min" if wall else ""))


def fmt_ci(ev: dict, key: str = "heldout_accuracy") -> str:
    """``0.512 [0.463, 0.561]``: a value and its 95 % interval from an evaluation dict."""
    lo, hi = ev[f"{key}_ci95"]
    return f"{ev[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def run_meta(script: str | Path, argv, wall: float, git_commit: str | None, smoke: bool, **extra) -> dict:
    """The contract fields every SmolLM2 benchmark records with a result: the exact command (``script`` relative to
    the checkout, then ``argv``), the commit the process started from, CPU, torch threads, torch and transformers
    versions, UTC date, wall time, the model and whether it was a smoke run; ``extra`` fields are added after
    ``threads`` (e.g. ``device``)."""
    from datetime import datetime, timezone

    import torch
    import transformers

    root = repo_root(Path(script).resolve().parent)
    return {"command": "python " + " ".join([str(Path(script).resolve().relative_to(root))] + list(argv)),
            "git_commit": git_commit, "cpu": cpu_model(), "threads": torch.get_num_threads(), **extra,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": wall,
            "model": "tiny_model (smoke)" if smoke else "smollm2-135m-instruct", "smoke": smoke}
