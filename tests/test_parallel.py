"""rlcore.parallel.train_many: the serial loop's results, in order, from a pool of processes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rlcore.algos import ppo, reinforce
from rlcore.parallel import PROCESSES_ENV_VAR, default_processes, train_config, train_many


def square(x, offset=0):
    """A picklable 'trainer' for the cheap tests: the worker's pid comes back to show where it ran."""
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x * x + offset, os.getpid()


def assert_same_runs(a, b):
    assert [r.config for r in a] == [r.config for r in b]
    for x, y in zip(a, b):
        assert x.history.keys() == y.history.keys()
        for key in set(x.history.keys()) - {"wall_seconds"}:  # everything but the clock
            np.testing.assert_array_equal(x.history[key], y.history[key])
            np.testing.assert_array_equal(x.history.steps(key), y.history.steps(key))
        sx, sy = x.agent.state_dict(), y.agent.state_dict()
        assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)
        assert x.env_steps == y.env_steps


@pytest.mark.parametrize("module, make", [
    (ppo, lambda s: ppo.PPOConfig(seed=s, total_timesteps=2048)),
    (reinforce, lambda s: reinforce.ReinforceConfig(seed=s, total_timesteps=1500)),
])
def test_parallel_equals_serial(module, make):
    configs = [make(s) for s in (1, 2)]
    serial = [module.train(c, progress=False) for c in configs]
    parallel = train_many(module.train, configs, processes=2, progress=False)
    assert_same_runs(serial, parallel)
    # the agent came back usable: it acts like the serial one
    obs = np.zeros((3, 4), dtype=np.float32)
    assert np.array_equal(module.act(parallel[0].agent, obs), module.act(serial[0].agent, obs))
    assert parallel[0].history["episode_return"].size > 0


def test_train_config_mixes_algorithms():
    configs = [reinforce.ReinforceConfig(seed=3, total_timesteps=600), ppo.PPOConfig(seed=3, total_timesteps=1024)]
    mixed = train_many(train_config, configs, processes=2, progress=False)
    assert_same_runs(mixed, [reinforce.train(configs[0], progress=False), ppo.train(configs[1], progress=False)])
    with pytest.raises(TypeError, match="not the config of an rlcore algorithm"):
        train_config(3)


def test_order_kwargs_and_workers():
    results = train_many(square, list(range(7)), processes=2, offset=1)
    assert [v for v, _ in results] == [x * x + 1 for x in range(7)]
    pids = {pid for _, pid in results}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_one_process_runs_here(monkeypatch):
    assert train_many(square, [2, 3], processes=1) == [(4, os.getpid()), (9, os.getpid())]
    monkeypatch.setenv(PROCESSES_ENV_VAR, "1")
    assert train_many(square, [2, 3]) == [(4, os.getpid()), (9, os.getpid())]
    assert train_many(square, [5]) == [(25, os.getpid())]  # one config: no pool
    assert train_many(square, []) == []


def test_env_var(monkeypatch):
    monkeypatch.delenv(PROCESSES_ENV_VAR, raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_processes(100) == cores and default_processes(1) == 1
    monkeypatch.setenv(PROCESSES_ENV_VAR, "3")
    assert default_processes(100) == 3 and default_processes(2) == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(PROCESSES_ENV_VAR, bad)
        with pytest.raises(ValueError, match=PROCESSES_ENV_VAR):
            train_many(square, [1, 2])


def test_failing_run_raises_with_its_config():
    with pytest.raises(ValueError, match="negative input -3") as info:
        train_many(square, [1, 2, -3, 4, 5], processes=2)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "run 3 of 5" in notes and "-3" in notes and "Traceback" in notes
    with pytest.raises(ValueError) as info:  # the serial path names the run too
        train_many(square, [1, -2], processes=1)
    assert "run 2 of 2" in "\n".join(info.value.__notes__)


def test_bad_input():
    with pytest.raises(TypeError, match="train_fn"):
        train_many("ppo", [1, 2])
    with pytest.raises(TypeError, match="list of configs"):
        train_many(square, 3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="processes"):
            train_many(square, [1, 2], processes=bad)
    with pytest.raises(ValueError, match="lambda"):  # cannot be sent to another process: said before any starts
        train_many(lambda x: x, [1, 2], processes=2)


def test_notebook_function_is_refused_with_the_fix(monkeypatch):
    import sys
    import types

    main = types.ModuleType("__main__")  # what an IPython kernel's __main__ looks like: no __file__

    def train_here(cfg):
        return cfg

    train_here.__module__ = "__main__"
    monkeypatch.setitem(sys.modules, "__main__", main)
    with pytest.raises(ValueError, match=r"notebook.*\.py module.*processes=1"):
        train_many(train_here, [1, 2], processes=2)
    assert train_many(train_here, [1, 2], processes=1) == [1, 2]


def test_an_unguarded_script_gets_an_error_naming_the_main_guard(tmp_path):
    """A script that calls train_many at import time (no ``if __name__ == "__main__":``) makes each worker start
    workers while importing it; the parent must say so instead of a bare ConnectionResetError."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from rlcore.algos import ppo\nfrom rlcore.parallel import train_many\n"
                      "train_many(ppo.train, [ppo.PPOConfig(seed=s, total_timesteps=256, num_envs=1, num_steps=256)"
                      " for s in (1, 2)], processes=2, progress=False)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                         cwd=str(tmp_path), env={**__import__("os").environ, "RLCORE_PROCESSES": "2"})
    assert out.returncode != 0
    assert "__name__" in out.stderr and "train_many: a worker process died" in out.stderr, out.stderr[-2000:]
