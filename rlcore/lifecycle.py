"""The life of a training run, the same in every trainer: start, checkpoint, interrupt, resume.

A run owns two files: a checkpoint (everything needed to continue: weights, optimiser, RNG
streams, history, step) and a JSONL log (one row per logged step).  The rules, shared by the
classic algorithms (:mod:`rlcore.algos`) and the language-model trainers (:mod:`rlcore.llm`):

* **Start** (:func:`prepare_run`): the output paths are checked for writability *before* any
  work; temporary files orphaned by a process killed mid-write are removed; an existing run is
  never overwritten unless the caller says ``overwrite=True``; ``resume=True`` without a
  checkpoint is an error that names the path (it does not silently start from scratch).
* **Checkpoint** (:func:`rlcore.training.save_checkpoint`): written to a temporary file in the
  same directory, fsynced, then renamed over the old one, so a crash at any moment leaves
  either the previous checkpoint or the new one, never a torn file.
* **Interrupt** (:class:`GracefulInterrupt`): the first Ctrl-C (SIGINT) or SIGTERM asks the
  loop to stop at the end of the current iteration; the trainer then writes a checkpoint and
  raises :class:`TrainingInterrupted`.  A second signal stops at once (the last checkpoint stays).
* **Resume** (:func:`load_run_checkpoint`, :func:`check_resume_config`): a checkpoint that is
  empty, truncated, not a checkpoint, or from another algorithm/task is an error naming the file
  and what is wrong; a config that differs from the checkpoint's is refused unless every change
  is listed as safe by the trainer; the log is cut back to the checkpoint's step, so after any
  number of resumes it holds each step exactly once (:class:`rlcore.training.JSONLLogger`).
* **Knobs** (:func:`check_max_grad_norm`, :func:`clip_grad_norm`): ``max_grad_norm`` means the
  same everywhere: ``None`` or ``0`` turns clipping off, any other value must be a finite
  positive number.
"""
from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

__all__ = ["RunExistsError", "CheckpointError", "TrainingInterrupted", "prepare_run", "load_run_checkpoint",
           "check_resume_config", "clean_orphans", "check_writable", "GracefulInterrupt",
           "check_max_grad_norm", "clip_grad_norm"]


class RunExistsError(FileExistsError):
    """A fresh run would overwrite an earlier run's checkpoint or log."""


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (empty, corrupt, another run's)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by a trainer after SIGINT/SIGTERM, once its checkpoint is safely written.

    A subclass of ``KeyboardInterrupt``, so code that already handles Ctrl-C keeps working.
    ``checkpoint_path`` is where training can be resumed from (``None`` when the run had none).
    """

    def __init__(self, message: str, checkpoint_path: str | None = None, step: int | None = None):
        super().__init__(message)
        self.checkpoint_path, self.step = checkpoint_path, step


# ------------------------------------------------------------------ start
def check_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """Create ``path``'s folder and prove we can create a file in it; else a clear ``PermissionError``.

    Done before training so that an unwritable location costs seconds, not the whole run.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a directory; pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.write-test-{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"ok")
        probe.unlink()
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as exc:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{str(blocker)!r} is a file, not a folder" if blocker else (exc.strerror or str(exc))
        raise PermissionError(f"cannot write the {what} {str(path)!r} ({reason}); "
                              f"choose a writable location") from None
    return path


def clean_orphans(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files left next to ``path`` by a process killed while writing it.

    :func:`rlcore.training.atomic_write_bytes` writes ``.<name>.<random>.tmp`` then renames it;
    a ``kill -9`` between the two leaves the temporary file behind. Returns what was removed.
    """
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


def prepare_run(checkpoint_path: str | os.PathLike | None, log_path: str | os.PathLike | None = None, *,
                resume: bool = False, overwrite: bool = False, extra_paths: Iterable[str | os.PathLike] = ()) -> None:
    """Check a run's files before any work is done (see the module docstring for the rules).

    ``extra_paths``: other files the run will write at the end (plots, exported models), checked
    for writability too. With ``overwrite=True`` an earlier run's checkpoint and log are deleted.
    """
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; choose one")
    files = [(p, w) for p, w in ((checkpoint_path, "checkpoint"), (log_path, "log")) if p is not None]
    for p, what in files:
        check_writable(p, what)
    for p in extra_paths:
        check_writable(p)
    if checkpoint_path is not None:
        clean_orphans(checkpoint_path)
    if log_path is not None:
        clean_orphans(log_path)
    if resume:
        if checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint_path to resume from")
        if not Path(checkpoint_path).exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {str(checkpoint_path)!r}; "
                                    f"start a fresh run without resume, or point the checkpoint path at the run to continue")
        return
    existing = [str(p) for p, _ in files if Path(p).exists() and Path(p).stat().st_size > 0]
    if existing and not overwrite:
        raise RunExistsError(f"an earlier run's files exist ({', '.join(existing)}); pass resume=True "
                             f"(--resume) to continue it or overwrite=True (--overwrite) to replace it")
    for p in existing:
        Path(p).unlink()


# ------------------------------------------------------------------ resume
def load_run_checkpoint(path: str | os.PathLike, algo: str | None = None, env_id: str | None = None,
                        required: Iterable[str] = (), map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint, with an error naming the file and the problem for every way it can be bad.

    ``algo`` / ``env_id``: refuse a checkpoint written by another algorithm or for another task
    (checkpoints store ``"algo"`` and ``"config"``). ``required``: keys the trainer needs.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; train first or pass the right path")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; pass the checkpoint file inside it")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes); it was not written by rlcore's "
                              f"atomic save. Delete it and train again, or restore a copy")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling arbitrary bytes can raise almost anything (OverflowError,
        # struct.error, MemoryError, ... besides UnpicklingError / BadZipFile): all mean "not a readable checkpoint"
        raise CheckpointError(f"checkpoint {str(path)!r} ({size} bytes) cannot be read: it is truncated or not a "
                              f"PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}). "
                              f"Delete it and train again, or restore a copy") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not an rlcore checkpoint "
                              f"(a dict of training state)")
    if algo is not None:
        found_algo = state.get("algo")
        found_env = state.get("config", {}).get("env_id") if isinstance(state.get("config"), dict) else None
        if found_algo is None:
            raise CheckpointError(f"checkpoint {str(path)!r} has no 'algo' tag: it was written by an older rlcore "
                                  f"or another program, so it cannot be resumed as {algo}; start a fresh run")
        if found_algo != algo or (env_id is not None and found_env != env_id):
            what = f"{algo} on {env_id}" if env_id is not None else algo
            raise CheckpointError(f"checkpoint {str(path)!r} is from {found_algo} on {found_env}, not {what}; "
                                  f"point the checkpoint path elsewhere or start a fresh run")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}; it was written by another trainer "
                              f"or an older rlcore version. Start a fresh run")
    return state


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_resume_config(saved: Mapping[str, Any], current: Mapping[str, Any], safe: Mapping[str, str],
                        path: str | os.PathLike | None = None) -> dict[str, tuple[Any, Any]]:
    """Compare the config stored in a checkpoint with the one a resumed run was started with.

    ``safe`` maps the field names that may change on resume to a sentence saying what the change
    does (e.g. ``{"total_timesteps": "training continues to the new total; ..."}``). Any other
    difference is refused, naming the fields. Returns ``{field: (old, new)}`` of the accepted changes.
    """
    where = f" in {str(path)!r}" if path is not None else ""
    changed = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current)
               if not _same(saved.get(k), current.get(k))}
    unsafe = {k: v for k, v in changed.items() if k not in safe}
    if unsafe:
        desc = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(unsafe.items()))
        allowed = ", ".join(sorted(safe)) or "none"
        raise ValueError(f"cannot resume with a different config than the checkpoint{where} ({desc}); resume with the "
                         f"same settings (fields that may change: {allowed}) or start a fresh run")
    return changed


# ------------------------------------------------------------------ interrupt
class GracefulInterrupt:
    """Context manager: SIGINT/SIGTERM set :attr:`requested` instead of killing the loop mid-step.

    The trainer checks ``stop.requested`` at the end of each iteration, saves a checkpoint and
    raises :class:`TrainingInterrupted`. A second signal raises ``KeyboardInterrupt`` at once.
    Handlers can only be installed from the main thread; elsewhere this is a no-op.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested:  # second signal: the user means it
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        return False

    def interrupted(self, checkpoint_path: str | os.PathLike | None, step: int) -> TrainingInterrupted:
        """The exception to raise once the checkpoint is written."""
        name = signal.Signals(self.signum).name if self.signum else "signal"
        where = (f"checkpoint saved at step {step} in {str(checkpoint_path)!r}; resume with resume=True (--resume)"
                 if checkpoint_path else "no checkpoint_path was set, so nothing was saved")
        return TrainingInterrupted(f"training stopped by {name}: {where}", str(checkpoint_path) if checkpoint_path else None, step)


# ------------------------------------------------------------------ shared knobs
def check_max_grad_norm(value: float | None, name: str = "max_grad_norm") -> float | None:
    """``None`` or ``0`` -> ``None`` (no clipping); a finite positive number -> itself; anything else -> error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be None or 0 (no clipping) or a positive number, got {value!r}")
    if value == 0 or math.isinf(value):
        return None
    return float(value)


def clip_grad_norm(parameters, max_grad_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_grad_norm`` (``None``/``0``: no clipping); return the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    limit = check_max_grad_norm(max_grad_norm)
    if limit is None:
        return float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
    return float(torch.nn.utils.clip_grad_norm_(params, limit))
