"""Classic deep RL algorithms on Gymnasium control tasks, one file each (CleanRL style).

Every algorithm module ``rlcore.algos.<name>`` exposes the same small interface:

* ``<Name>Config``: a dataclass of hyperparameters (a docstring under each field);
* ``train(cfg, *, resume=False, progress=True) -> TrainResult``;
* ``act(agent, obs, deterministic=True)``: the action(s) of a trained agent, for videos and evaluation.

Modules are imported lazily (``get_algorithm("ppo")``) so that ``import rlcore.algos`` is cheap
and a module that does not exist yet only fails when it is asked for.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

__all__ = ["TrainResult", "ALGORITHMS", "get_algorithm", "config_class", "field_docs", "evaluate",
           "open_log"]


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
    logged after the checkpoint it resumes from (they will be logged again), then appends.
    """
    from rlcore.training import JSONLLogger, atomic_write_bytes

    if path is None:
        return JSONLLogger(None)
    p = Path(path)
    if resume_step is not None and p.exists():
        kept = [line for line in p.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and _step_of(line) <= resume_step]
        atomic_write_bytes(p, "".join(kept).encode())
        return JSONLLogger(p, append=True)
    return JSONLLogger(p, append=False)


def _step_of(line: str) -> int:
    import json

    return int(json.loads(line)["step"])
