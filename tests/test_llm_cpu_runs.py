"""benchmarks/llm_cpu_runs.py: the statistics it reports, its contract fields, resuming, and the committed artifact.

The metrics behind coverage rows C20 (completion length and reflection rate per GRPO step) and C23
(distillation vs RL at equal FLOPs) are produced by this script; the smoke run checks that they are
recorded for every run, on the tiny model.
"""
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "llm_cpu_runs.json"
META_FIELDS = ("command", "git_commit", "cpu", "threads", "torch", "date", "wall_s")


@pytest.fixture(scope="module")
def runs_mod():
    spec = importlib.util.spec_from_file_location("llm_cpu_runs", ROOT / "benchmarks" / "llm_cpu_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_wilson_interval(runs_mod):
    lo, hi = runs_mod.wilson(0, 10)
    assert lo == 0 and math.isclose(hi, 0.2775, abs_tol=1e-3)  # textbook value
    lo, hi = runs_mod.wilson(50, 100)
    assert math.isclose(lo + hi, 1.0, abs_tol=1e-12) and math.isclose(hi - lo, 2 * 0.0963, abs_tol=1e-3)
    lo, hi = runs_mod.wilson(400, 400)
    assert hi == 1.0 and 0.99 < lo < 1.0


def test_paired_difference(runs_mod):
    a, b = [1, 1, 0, 1] * 100, [0, 1, 0, 1] * 100  # a wins a quarter of the questions, never loses
    d = runs_mod.paired_difference(a, b)
    assert math.isclose(d["difference"], 0.25) and d["excludes_zero"] and d["ci95"][0] > 0.2
    d = runs_mod.paired_difference([1, 0] * 50, [0, 1] * 50)
    assert d["difference"] == 0 and not d["excludes_zero"]


@pytest.fixture(scope="module")
def smoke(runs_mod, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    argv = ["--smoke", "--work-dir", str(tmp / "work"), "--out-dir", str(tmp / "out")]
    assert runs_mod.main(argv) == 0
    return runs_mod, argv, tmp


def test_smoke_run_records_every_contract_field(smoke):
    _, _, tmp = smoke
    res = json.loads((tmp / "out" / "llm_cpu_runs.json").read_text())
    assert (tmp / "out" / "llm_cpu_runs.png").stat().st_size > 0
    assert set(res["runs"]) == {"r1_zero", "cold_start", "lang_mix", "distill_vs_rl"}
    for name, run in res["runs"].items():
        assert all(run["meta"][k] is not None for k in META_FIELDS if k != "git_commit"), name
    r1, cs, lm, dv = (res["runs"][k] for k in ("r1_zero", "cold_start", "lang_mix", "distill_vs_rl"))
    # C20: completion length and reflection rate every GRPO step, signal share, transcripts at start/middle/end
    for curves in (r1["strict"]["curves"], cs["grpo"]["curves"]):
        for key in ("completion_length", "reflection_rate", "frac_zero_std_groups", "reward"):
            assert len(curves[key]["step"]) == len(curves[key]["value"]) >= 1
    assert set(cs["grpo"]["samples"]) == {"start", "middle", "end"}
    # held-out evaluation with intervals, per-question results for paired comparisons
    for ev in (r1["base_model"], cs["after_sft"], cs["grpo"], cs["sft_only_control"], lm["with_lang_reward"]):
        lo, hi = ev["heldout_accuracy_ci95"]
        assert lo <= ev["heldout_accuracy"] <= hi and len(ev["correct"]) == ev["n"]
    assert {"difference", "ci95", "excludes_zero"} <= set(cs["grpo_minus_control"])
    assert cs["sft_only_control"]["flops"] > 0 and cs["grpo"]["flops"] > 0
    # C22: language share with and without the reward
    assert 0 <= lm["with_lang_reward"]["language_consistency"] <= 1
    # C23: both students costed in FLOPs, RL within the distillation budget
    assert dv["rl"]["flops"] > 0 and dv["distill"]["flops"] > 0
    assert dv["rl"]["steps"] == 1 or dv["rl"]["flops"] <= dv["distill"]["flops"] * 1.0001  # >= 1 step always
    assert {"heldout_accuracy", "correct"} <= set(dv["distill"]) and "note" in dv


def test_rerun_skips_finished_runs(smoke, capsys):
    runs_mod, argv, tmp = smoke
    before = (tmp / "work" / "cold_start.result.json").read_text()
    assert runs_mod.main(argv + ["--runs", "cold_start"]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert (tmp / "work" / "cold_start.result.json").read_text() == before


def test_unknown_run_is_refused(runs_mod):
    with pytest.raises(SystemExit, match="unknown run"):
        runs_mod.main(["--smoke", "--runs", "nope"])


@pytest.mark.skipif(not RESULT.exists(), reason="benchmarks/results/llm_cpu_runs.json not committed yet")
def test_committed_artifact_is_a_real_smollm2_run():
    res = json.loads(RESULT.read_text())
    assert not res["meta"]["smoke"] and res["meta"]["model"] == "smollm2-135m-instruct"
    for name, run in res["runs"].items():
        assert all(run["meta"][k] is not None for k in META_FIELDS), name
        assert run["settings"]["eval_n"] >= 400, name
    cs = res["runs"].get("cold_start")
    if cs:
        assert cs["grpo"]["n"] >= 400 and cs["sft_examples"] <= 100  # a *small* cold-start set
