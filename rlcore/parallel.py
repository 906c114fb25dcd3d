"""Independent training runs side by side, one process per core.

A chapter that trains several seeds (or a grid of settings x seeds) calls

    from rlcore.parallel import train_many
    runs = train_many(ppo.train, [ppo.PPOConfig(seed=s) for s in (1, 2, 3, 4)], progress=False)

instead of ``[ppo.train(cfg, progress=False) for cfg in configs]``: the same list in the same order, with
the same episode returns and final weights (every run seeds itself from its config), but on a 2-core
machine two runs train at a time.

``RLCORE_PROCESSES`` (environment variable): how many processes ``train_many`` uses when its
``processes`` argument is not given (default: the number of cores, at most one per config).
``RLCORE_PROCESSES=1`` trains in the calling process, one run after another.
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import sys
import traceback
from multiprocessing.connection import wait
from typing import Any, Callable, Sequence

__all__ = ["train_many", "train_config", "default_processes", "PROCESSES_ENV_VAR"]

PROCESSES_ENV_VAR = "RLCORE_PROCESSES"


def default_processes(n_runs: int) -> int:
    """Processes for ``n_runs`` runs: ``RLCORE_PROCESSES`` if set, else the usable cores; never more than ``n_runs``."""
    value = os.environ.get(PROCESSES_ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{PROCESSES_ENV_VAR} must be a positive integer (1 trains one run after another), "
                             f"got {value!r}")
        cores = int(value)
    else:  # the cores this process may run on (a container or taskset may allow fewer than the machine has)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_runs, cores))


def train_config(cfg, **train_kwargs):
    """``<algorithm>.train(cfg, **train_kwargs)`` for the algorithm whose module defines ``cfg``'s class, so that one
    :func:`train_many` call can mix algorithms: ``train_many(train_config, [trpo.TRPOConfig(), reinforce.ReinforceConfig()])``."""
    import importlib

    module = importlib.import_module(type(cfg).__module__)
    if not callable(getattr(module, "train", None)):
        raise TypeError(f"{type(cfg).__name__} is not the config of an rlcore algorithm (its module {module.__name__} "
                        f"has no train function)")
    return module.train(cfg, **train_kwargs)


def _describe(index: int, n: int, cfg) -> str:
    return f"run {index + 1} of {n} (config {cfg!r})"


def train_many(train_fn: Callable, configs: Sequence, *, processes: int | None = None, **train_kwargs) -> list:
    """``[train_fn(cfg, **train_kwargs) for cfg in configs]``, with the runs in a pool of processes.

    Example (chapter 4's seeds, then a grid of settings x seeds submitted as one call so every core stays busy)::

        runs = train_many(ppo.train, [ppo.PPOConfig(seed=s, total_timesteps=50_000) for s in (1, 2, 3)],
                          progress=False)
        grid = [ppo.PPOConfig(seed=s, gae_lambda=lam) for lam in (0.0, 0.95) for s in (1, 2)]
        by_setting = dict(zip(grid, train_many(ppo.train, grid, progress=False)))

    * The results come back in the order of ``configs`` and equal the serial loop's: each run seeds
      itself from its config, and a worker trains with one torch thread (one process per core) unless the
      config's ``torch_threads`` says otherwise (the trainers set it themselves).
    * ``processes``: how many runs train at once; ``None`` means :func:`default_processes` (the cores, or
      ``RLCORE_PROCESSES``). With one process, or one config, the runs train here, in this process.
    * What a run prints (the trainers' notices) is printed here after all runs end, run by run in config order.
    * A failing run stops the others and raises its exception here, with a note naming the run and its
      config (and the worker's traceback). Ctrl-C stops every worker at once (no checkpoint is written).
    * The workers are clean processes forked from a fork server (``spawn`` where there is none), not copies of
      this one: a plain ``fork`` of a Jupyter kernel that has used several torch threads can hang. So ``train_fn``
      must be importable by name: an ``rlcore`` trainer, or a function in a ``.py`` module (or the script's
      own, under ``if __name__ == "__main__":``). A function defined in a notebook cell cannot be sent;
      ``processes=1`` runs it.
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn must be a training function such as rlcore.algos.ppo.train, got {train_fn!r}")
    if isinstance(configs, (str, bytes)) or not isinstance(configs, Sequence):
        raise TypeError(f"configs must be a list of configs (one run each), got {type(configs).__name__}")
    configs = list(configs)
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise ValueError(f"processes must be a positive integer or None (one per core), got {processes!r}")
    n = len(configs)
    processes = default_processes(n) if processes is None else min(processes, max(n, 1))
    if processes <= 1:  # nothing to overlap: no pool, no pickling, the caller's process and threads
        results = []
        for i, cfg in enumerate(configs):
            try:
                results.append(train_fn(cfg, **train_kwargs))
            except Exception as exc:
                exc.add_note(f"in train_many: {_describe(i, n, cfg)}")
                raise
        return results
    payload = _payload(train_fn, configs, train_kwargs)
    return _run_pool(payload, configs, processes)


def _payload(train_fn, configs, train_kwargs) -> bytes:
    """The job, pickled once here, so that what cannot be sent fails now with an explanation, not in a worker."""
    module = getattr(train_fn, "__module__", None)
    if module == "__main__" and not getattr(sys.modules.get("__main__"), "__file__", None):
        raise ValueError(
            f"train_many cannot send {getattr(train_fn, '__qualname__', train_fn)!r} to its worker processes: it is "
            f"defined in this notebook (or interactive session), and a fresh process can only import functions from "
            f"files. Move it into a .py module and import it from there, or pass processes=1 to train here, one run "
            f"after another")
    try:
        return pickle.dumps((train_fn, configs, train_kwargs))
    except Exception as exc:
        raise ValueError(f"train_many cannot send the job to its worker processes ({exc}); train_fn must be a function "
                         f"importable by name (not a lambda or a nested function) and the configs and keyword "
                         f"arguments must be picklable; or pass processes=1 to train here") from exc


def _worker(payload: bytes, conn) -> None:
    """One worker process: train the runs the parent sends (an index; None: stop), answer each with its result.

    Everything travels as plain-pickle bytes: that copies the tensors into the message (a Connection's own
    pickler would share them through memory this process must keep alive until the parent has read them)."""
    import torch

    torch.set_num_threads(1)  # one process per core; a config's torch_threads still wins (its trainer sets it)
    while (i := pickle.loads(conn.recv_bytes())) is not None:
        out = io.StringIO()
        try:  # unpickled here so that a function this process cannot import is reported like a failing run
            train_fn, configs, train_kwargs = pickle.loads(payload)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                result = train_fn(configs[i], **train_kwargs)
            conn.send_bytes(pickle.dumps(("done", i, result, out.getvalue())))
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, which decides
            try:
                pickle.loads(pickle.dumps(exc))
            except Exception:  # an exception that cannot travel: its text does
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            conn.send_bytes(pickle.dumps(("error", i, exc, out.getvalue() + traceback.format_exc())))
            return


# What a worker needs before its first run, imported once by the fork server (Adam's first use imports
# torch._dynamo: seconds). "__main__" keeps the default: a script's own functions can be sent.
_PRELOAD = ["__main__", "torch", "torch._dynamo", "gymnasium", "rlcore.algos", "rlcore.envs", "rlcore.networks",
            "rlcore.algos.ppo", "rlcore.algos.dqn", "rlcore.algos.trpo", "rlcore.algos.reinforce",
            "rlcore.algos.grpo_control"]


def _context():
    """Workers forked from a fork server: a clean process started once (not a copy of this one, whose threads and
    OpenMP state can make a forked child hang), with the imports done, so a worker starts in a fraction of a second.
    Where there is no fork server (Windows), ``spawn``: every worker starts Python and imports torch itself."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)  # used when the server starts (once per session), ignored after
        return ctx
    return multiprocessing.get_context("spawn")


def _run_pool(payload: bytes, configs: list, processes: int) -> list:
    ctx = _context()
    n = len(configs)
    workers = []  # (process, this side of its pipe)
    running: dict[int, int] = {}  # worker number -> the run it is training
    done: dict[int, Any] = {}
    printed: dict[int, str] = {}
    todo = iter(range(n))

    def give_next(k: int) -> None:  # the next run to worker k, or None (stop) when there is none left
        i = next(todo, None)
        workers[k][1].send_bytes(pickle.dumps(i))
        if i is not None:
            running[k] = i
        else:
            running.pop(k, None)

    try:
        for k in range(processes):
            here, there = ctx.Pipe()
            w = ctx.Process(target=_worker, args=(payload, there), daemon=True, name=f"rlcore-train-many-{k}")
            w.start()
            there.close()
            workers.append((w, here))
            give_next(k)
        while len(done) < n:
            busy = [(k, *workers[k]) for k in running]
            ready = set(wait([c for _, _, c in busy] + [w.sentinel for _, w, _ in busy]))
            for k, w, conn in busy:
                if conn not in ready and w.sentinel not in ready:
                    continue
                try:
                    kind, i, value, output = pickle.loads(conn.recv_bytes())
                except (EOFError, ConnectionResetError):  # the worker died without a message
                    w.join(1)
                    i = running[k]
                    raise RuntimeError(
                        f"train_many: a worker process died (exit code {w.exitcode}) during "
                        f"{_describe(i, n, configs[i])}. In a script, call train_many under "
                        f"'if __name__ == \"__main__\":' (each worker imports the script's main module, and an "
                        f"unguarded call would start workers from the worker); otherwise it was killed from outside "
                        f"(e.g. out of memory): pass processes=1 to train here and see why") from None
                if kind == "error":
                    value.add_note(f"in train_many: {_describe(i, n, configs[i])}, in a worker process; "
                                   f"its traceback and output:\n{output}")
                    raise value
                done[i], printed[i] = value, output
                give_next(k)
    finally:  # on success the workers are stopping; on an error or Ctrl-C they are killed now, none left behind
        for w, conn in workers:
            if len(done) < n and w.is_alive():
                w.kill()
            w.join()
            conn.close()
    for i in range(n):
        if printed[i]:
            print(printed[i], end="", file=sys.stderr)
    return [done[i] for i in range(n)]
