"""Classic deep RL algorithms on Gymnasium control tasks, one file each (CleanRL style).

Every algorithm module ``rlcore.algos.<name>`` exposes the same small interface:

* ``<Name>Config``: a dataclass of hyperparameters (a docstring under each field);
* ``train(cfg, *, resume=False, overwrite=False, progress=True) -> TrainResult``;
* ``act(agent, obs, deterministic=True)``: the action(s) of a trained agent, for videos and evaluation;
* ``load_agent(state, device="cpu")``: the trained agent rebuilt from a checkpoint (``python -m rlcore eval``).

Every ``train`` follows the same run lifecycle (:mod:`rlcore.lifecycle`): the output files are checked
before any work, an earlier run is never overwritten without ``overwrite=True``, ``resume=True``
without a checkpoint is an error, Ctrl-C (SIGINT) or SIGTERM stops at the end of the current
iteration after writing a checkpoint (:class:`rlcore.lifecycle.TrainingInterrupted`), a resumed
run refuses config changes other than those in :data:`RESUME_SAFE` (plus an algorithm's own) and
continues bit-identically, and its JSONL log holds every step exactly once.

Two rules shared by the algorithms:

* **Run length.** Algorithms that train in fixed-size batches of environment steps (PPO and TRPO:
  rollouts of ``num_envs * num_steps``; DQN: vector steps of ``num_envs``) round ``total_timesteps``
  *up* to a whole number of batches and print a notice when they do. REINFORCE and GRPO train on
  whole episodes and stop after the update that reaches ``total_timesteps``.
* **Schedules on extension.** Resuming with a larger ``total_timesteps`` extends the run. A schedule
  (PPO's annealed learning rate, DQN's epsilon) is stored in the checkpoint and continues *linearly
  from its value at the checkpoint* to its end value at the point the new total puts its end, so
  it never jumps; with an unchanged total the resumed run is bit-identical to an uninterrupted one.

Modules are imported lazily (``get_algorithm("ppo")``) so that ``import rlcore.algos`` is cheap
and a module that does not exist yet only fails when it is asked for.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import math
import sys
import textwrap
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import numpy as np

__all__ = ["TrainResult", "ALGORITHMS", "RESUME_SAFE", "get_algorithm", "config_class", "field_docs", "evaluate",
           "open_log", "notice", "resolve_device", "check_hidden", "check_seed", "check_torch_threads",
           "whole_batches", "begin_run", "module_for_checkpoint", "fused_adam"]


@dataclass
class TrainResult:
    """What every ``train`` returns."""

    history: Any
    """:class:`rlcore.training.History` of every logged metric (``episode_return``, losses, ...)."""
    agent: Any
    """The trained ``torch.nn.Module`` (policy, actor-critic or Q-network)."""
    config: Any
    """The config the run was trained with."""
    env_steps: int
    """Environment steps taken in total (over all sub-environments, including before a resume)."""
    wall_seconds: float
    """Wall-clock seconds of this call (not counting time before a resume)."""


ALGORITHMS: dict[str, str] = {
    "dqn": "rlcore.algos.dqn",
    "reinforce": "rlcore.algos.reinforce",
    "ppo": "rlcore.algos.ppo",
    "trpo": "rlcore.algos.trpo",
    "grpo": "rlcore.algos.grpo_control",
}


def get_algorithm(name: str) -> ModuleType:
    """The module of algorithm ``name`` (a key of :data:`ALGORITHMS`), imported on first use."""
    if not isinstance(name, str) or name.lower() not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}")
    module_name = ALGORITHMS[name.lower()]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ValueError(f"algorithm {name!r} is registered but its module {module_name} is not "
                             f"available yet; choose another of: {', '.join(ALGORITHMS)}") from exc
        raise


def config_class(module: ModuleType) -> type:
    """The single ``*Config`` dataclass defined in an algorithm module."""
    found = [obj for n, obj in vars(module).items()
             if n.endswith("Config") and inspect.isclass(obj) and dataclasses.is_dataclass(obj)
             and obj.__module__ == module.__name__]
    if len(found) != 1:
        raise ValueError(f"{module.__name__} must define exactly one *Config dataclass, found "
                         f"{[c.__name__ for c in found]}")
    return found[0]


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal written right under each dataclass field."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def evaluate(act_fn: Callable[[np.ndarray], np.ndarray], env_id: str, n_episodes: int = 10,
             seed: int = 0, max_steps: int = 100_000) -> np.ndarray:
    """Returns of ``n_episodes`` episodes of ``act_fn`` (batched: ``[n, obs_dim] -> [n]`` actions).

    The episodes run side by side in independent environments seeded ``seed, seed + 1, ...``,
    so an evaluation never touches the training environments or their random streams.
    """
    from rlcore.envs import make_env

    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes must be a positive integer, got {n_episodes!r}")
    envs = [make_env(env_id) for _ in range(n_episodes)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    returns = np.zeros(n_episodes)
    active = np.ones(n_episodes, dtype=bool)
    for _ in range(max_steps):
        idx = np.nonzero(active)[0]
        if len(idx) == 0:
            break
        actions = act_fn(obs[idx])
        for j, i in enumerate(idx):
            o, r, term, trunc, _ = envs[i].step(actions[j])
            returns[i] += float(r)
            obs[i] = o
            if term or trunc:
                active[i] = False
    for e in envs:
        e.close()
    return returns


def open_log(path: str | None, resume_step: int | None):
    """A :class:`rlcore.training.JSONLLogger` for a run's metrics.

    A fresh run (``resume_step is None``) starts a new file. A resumed run first drops the lines
    logged after the checkpoint it resumes from (they will be logged again; a line torn by a killed
    process goes too), then appends: after any number of resumes the log holds every step once.
    """
    from rlcore.training import JSONLLogger

    if path is None:
        return JSONLLogger(None)
    if resume_step is None:
        return JSONLLogger(path, append=False)
    return JSONLLogger(path, keep_until=int(resume_step))


# --------------------------------------------------------------------- the run lifecycle, shared
RESUME_SAFE: dict[str, str] = {
    "total_timesteps": "training continues to the new total; a schedule (PPO's annealed learning rate, DQN's "
                       "epsilon) continues linearly from its value at the checkpoint to its end value at the new "
                       "total, so it never jumps",
    "checkpoint_every": "only changes how often checkpoints are written",
    "checkpoint_path": "the run continues from (and saves to) the new file, e.g. a run folder that was moved",
    "log_path": "later rows go to the new log file (rows after the checkpoint's step are dropped from it first)",
    "device": "the same computation on another device (floating-point results may differ in the last bits)",
    "torch_threads": "only the speed changes",
}
"""Config fields every classic algorithm lets a resumed run change, with what the change does.
Algorithms add their own (e.g. DQN's evaluation settings); any other change is refused."""


def notice(message: str) -> None:
    """Print a one-line notice (stderr) about something a trainer decided for the user."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def resolve_device(name) -> "torch.device":
    """``cfg.device`` as a ``torch.device``, with a clear error for a bad name or a missing CUDA/MPS."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"device must be a string such as 'cpu' or 'cuda', got {name!r}")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {name!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available on this machine; "
                         f"use device 'cpu' (--device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1} or 'cpu'")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} was requested but MPS is not available; use device 'cpu'")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported by rlcore's classic algorithms; use 'cpu' or 'cuda'")
    return device


def check_hidden(hidden) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive layer sizes; an empty list (a linear policy) is refused."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (tuple, list)):
        raise ValueError(f"hidden must be a list of hidden-layer sizes such as (64, 64) (--set hidden=64,64), "
                         f"got {hidden!r}")
    if len(hidden) == 0:
        raise ValueError("hidden is empty, which would make a linear model without hidden layers; rlcore's "
                         "networks need at least one hidden layer: give sizes such as (64, 64) (--set hidden=64,64)")
    for h in hidden:
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
            raise ValueError(f"hidden layer sizes must be positive integers, got {tuple(hidden)!r}; "
                             f"e.g. (64, 64) (--set hidden=64,64)")
    return tuple(int(h) for h in hidden)


def fused_adam(device) -> dict:
    """``torch.optim.Adam`` keyword arguments for ``device``: ``fused=True`` on CPU and CUDA.

    The same Adam update computed in one kernel per step instead of a few per parameter: on these
    small MLPs the per-parameter calls, not the arithmetic, were the optimizer's cost (its share of a
    PPO minibatch step fell from about a quarter to a few percent). Deterministic, like the default."""
    import torch

    return {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {}


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (e.g. 1), got {seed!r}")
    return int(seed)


def check_torch_threads(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"torch_threads must be a positive integer or None (leave torch's setting), got {value!r}")


def check_positive_int(name: str, value, *, allow_zero: bool = False) -> None:
    """``value`` must be an integer > 0 (or >= 0): an error naming the field and a valid example otherwise."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        what = "an integer >= 0" if allow_zero else "a positive integer"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def whole_batches(total_timesteps: int, batch: int, algo: str, batch_name: str) -> int:
    """Number of fixed-size batches a run of ``total_timesteps`` trains: rounded *up*, with a notice."""
    n = max(1, math.ceil(total_timesteps / batch))
    if n * batch != total_timesteps:
        notice(f"{algo} trains in whole {batch_name} of {batch} environment steps: total_timesteps "
               f"{total_timesteps} is rounded up to {n} x {batch} = {n * batch} steps (choose a multiple of {batch} "
               f"to avoid rounding)")
    return n


def begin_run(cfg, algo: str, *, resume: bool, overwrite: bool, required, safe: dict[str, str] | None = None,
              map_location="cpu") -> dict | None:
    """Start a run: check its files (:func:`rlcore.lifecycle.prepare_run`); when resuming, load its checkpoint
    (refusing another algorithm's or task's) and compare configs (:func:`rlcore.lifecycle.check_resume_config`,
    :data:`RESUME_SAFE` plus ``safe``). Returns the checkpoint's state, or ``None`` for a fresh run.
    Accepted config changes are printed as notices."""
    from rlcore.lifecycle import check_resume_config, load_run_checkpoint, prepare_run

    if not isinstance(resume, bool) or not isinstance(overwrite, bool):
        raise TypeError(f"resume and overwrite must be True or False, got {resume!r} and {overwrite!r}")
    prepare_run(cfg.checkpoint_path, cfg.log_path, resume=resume, overwrite=overwrite)
    if not resume:
        return None
    state = load_run_checkpoint(cfg.checkpoint_path, algo=algo, env_id=cfg.env_id,
                                required=["config", *required], map_location=map_location)
    saved = state["config"]
    if dataclasses.is_dataclass(saved):
        saved = dataclasses.asdict(saved)
    allowed = {**RESUME_SAFE, **(safe or {})}
    changes = check_resume_config(saved, dataclasses.asdict(cfg), allowed, path=cfg.checkpoint_path)
    for name, (old, new) in sorted(changes.items()):
        notice(f"resuming with {name} changed from {old!r} to {new!r}: {allowed[name]}")
    return state


def module_for_checkpoint(algo) -> ModuleType:
    """The algorithm module that wrote a checkpoint whose ``"algo"`` entry is ``algo``."""
    modules = {m.rsplit(".", 1)[1]: m for m in ALGORITHMS.values()}
    if algo not in modules:
        raise ValueError(f"the checkpoint was written by {algo!r}, not by one of rlcore's classic algorithms "
                         f"({', '.join(modules)}); evaluate it with the tools of the trainer that wrote it")
    return importlib.import_module(modules[algo])
