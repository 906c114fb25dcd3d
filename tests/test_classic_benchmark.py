"""benchmarks/classic_control.py: the success criteria, the targets, the report, and a real (tiny) rlcore run.

The benchmark itself (minutes to hours, with Stable-Baselines3) is not run here; these tests check that
its ruler measures what it says: the greedy criterion triggers on the first evaluation at or above the
threshold, evaluation time is excluded from the seconds, a target is judged from medians with a missed
seed counted as +inf, and a scratch ``--out`` never rewrites the README's committed table.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location("classic_control_bench", ROOT / "benchmarks/classic_control.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_greedy_criterion_is_the_first_evaluation_at_the_threshold(cc):
    tr = cc.Tracker(475.0, with_eval=True, stop=True)
    tr.evaluation(2048, 474.9)
    assert tr.eval_steps_to_threshold is None
    tr.evaluation(4096, 475.0)
    tr.evaluation(6144, 300.0)  # a later drop does not undo the first success
    assert tr.eval_steps_to_threshold == 4096
    assert not tr.done()  # the training-curve column is not met yet, so the run goes on
    for i in range(cc.WINDOW):
        tr.episode(7000 + i, 500.0)
    assert tr.steps_to_threshold == 7000 + cc.WINDOW - 1 and tr.done()
    res = tr.result()
    assert res["eval_returns"][:2] == [[2048, 474.9], [4096, 475.0]]


def test_training_curve_needs_a_full_window(cc):
    tr = cc.Tracker(475.0, with_eval=True, stop=True)
    for i in range(cc.WINDOW - 1):
        tr.episode(500 * (i + 1), 500.0)
    assert tr.steps_to_threshold is None  # 99 perfect episodes are not a window of 100


def test_evaluation_time_is_excluded_from_the_seconds(cc, monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(cc.time, "perf_counter", lambda: next(clock))
    tr = cc.Tracker(475.0, with_eval=True, stop=True)  # t0 = 0
    tr.eval_seconds = 4.0
    tr.evaluation(2048, 500.0)  # now = 10, 4 of which were spent evaluating
    assert tr.eval_seconds_to_threshold == pytest.approx(6.0)


def _run(lib, algo, env, seed, eval_steps, eval_seconds, steps=None, seconds=None, seconds_run=50.0):
    return {"library": lib, "algo": algo, "env": env, "seed": seed, "eval_steps_to_threshold": eval_steps,
            "eval_seconds_to_threshold": eval_seconds, "steps_to_threshold": steps, "seconds_to_threshold": seconds,
            "final_return": 480.0, "seconds_run": seconds_run}


def _target(data, cc, prefix):
    return next(t for t in cc.targets(data) if t["target"].startswith(prefix))


def test_ppo_target_uses_greedy_medians_and_the_ratio(cc):
    runs = [_run("rlcore", "ppo", "CartPole-v1", s, 12_000, t) for s, t in ((1, 1.0), (2, 1.2), (3, 9.0))]
    runs += [_run("sb3", "ppo", "CartPole-v1", s, 10_000, t) for s, t in ((1, 2.5), (2, 3.0), (3, 2.0))]
    t = _target({"runs": runs}, cc, "PPO CartPole")
    assert t["status"] == "met" and "ratio 0.48" in t["detail"]  # 1.2 / 2.5
    runs[1]["eval_seconds_to_threshold"] = 1.3  # 1.3 / 2.5 = 0.52 > 0.5
    assert _target({"runs": runs}, cc, "PPO CartPole")["status"] == "missed"


def test_a_missed_seed_counts_as_infinite(cc):
    runs = [_run("rlcore", "ppo", "CartPole-v1", 1, 12_000, 1.0),
            _run("rlcore", "ppo", "CartPole-v1", 2, None, None),
            _run("rlcore", "ppo", "CartPole-v1", 3, None, None)]
    runs += [_run("sb3", "ppo", "CartPole-v1", s, 10_000, 3.0) for s in (1, 2, 3)]
    t = _target({"runs": runs}, cc, "PPO CartPole")
    assert t["status"] == "missed" and "not met" in t["detail"]
    assert math.isinf(cc._med({"runs": runs}, "rlcore", "ppo", "CartPole-v1", "eval_steps_to_threshold"))


def test_summary_table_puts_greedy_first_and_training_curve_second(cc):
    runs = [_run("rlcore", "trpo", "Acrobot-v1", s, 20_000, 2.0, 40_000, 4.0) for s in (1, 2, 3)]
    row = [line for line in cc.summary_table({"runs": runs}).splitlines() if "trpo" in line][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:9] == ["3/3", "20.0k", "2.0s", "3/3", "40.0k", "4.0s"]


def test_scratch_out_leaves_the_readme_alone(cc, tmp_path, monkeypatch):
    out = tmp_path / "cc.json"
    out.write_text(json.dumps({"runs": [_run("rlcore", "ppo", "CartPole-v1", 1, 12_000, 1.0)], "date": "x"}))
    called = []
    monkeypatch.setattr(cc, "update_readme", lambda *a: called.append(a))
    assert cc.main(["--report-only", "--out", str(out)]) == 0
    assert called == [] and out.with_suffix(".png").exists()


def test_rlcore_run_reports_both_criteria(cc, monkeypatch):
    """A real (short) rlcore PPO run through the benchmark's runner: evaluations every EVAL_EVERY steps."""
    monkeypatch.setitem(cc.THRESHOLDS, "CartPole-v1", 10.0)  # reachable in two rollouts
    res = cc.run_rlcore("ppo", "CartPole-v1", seed=1, budget=4096, stop=True)
    steps = [s for s, _ in res["eval_returns"]]
    assert steps and all(s % 1024 == 0 for s in steps) and steps[0] >= cc.EVAL_EVERY
    assert res["eval_steps_to_threshold"] == steps[0]
    assert res["eval_seconds_excluded"] > 0 and res["eval_seconds_to_threshold"] <= res["seconds_run"]


def test_levers_benchmark_smoke(tmp_path):
    """benchmarks/classic_levers.py --smoke: every variant timed, the levers really switched, contract fields."""
    spec = importlib.util.spec_from_file_location("classic_levers_bench", ROOT / "benchmarks/classic_levers.py")
    levers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(levers)
    import torch

    import rlcore.networks as networks
    from rlcore.algos import ppo

    try:
        levers.configure(False, False)
        assert networks.Categorical(logits=torch.zeros(2))._validate_args and ppo.fused_adam("cpu") == {}
        levers.configure(True, True)
        assert not networks.Categorical(logits=torch.zeros(2))._validate_args and ppo.fused_adam("cpu")["fused"]
        out = tmp_path / "levers.json"
        assert levers.main(["--smoke", "--out", str(out)]) == 0
    finally:
        levers.configure(True, True)
    data = json.loads(out.read_text())
    assert data["smoke"] and data["command"].startswith("python benchmarks/classic_levers.py")
    assert set(data["ppo"]["median_seconds"]) == {"before", "fused_adam", "unvalidated", "after"}
    assert all(v > 0 for v in data["env_step_us"].values())
    assert {"cpu", "cores", "loadavg_at_start"} <= set(data["machine"])


def test_target_falls_back_to_the_training_curve_only_when_both_libraries_miss_greedy(cc):
    runs = [_run("rlcore", "ppo", "Pendulum-v1", s, None, None, 150_000, 30.0) for s in (1, 2, 3)]
    runs += [_run("sb3", "ppo", "Pendulum-v1", s, None, None, 100_000, 40.0) for s in (1, 2, 3)]
    t = _target({"runs": runs}, cc, "PPO Pendulum")
    assert t["status"] == "met" and "training curve" in t["detail"] and "ratio 0.75" in t["detail"]
    runs[3]["eval_steps_to_threshold"], runs[3]["eval_seconds_to_threshold"] = 90_000, 20.0
    runs[4]["eval_steps_to_threshold"], runs[4]["eval_seconds_to_threshold"] = 90_000, 20.0
    t = _target({"runs": runs}, cc, "PPO Pendulum")  # SB3 meets greedy: rlcore is judged by it, and misses
    assert t["status"] == "missed" and "training curve" not in t["detail"]
