"""benchmarks/preferences.py: its contract fields, resuming by stage, and the committed artifact.

The smoke run (tiny random model, temporary directories) goes through every stage: preference pairs labelled by
the programmed rater, the reward model, best-of-n, RLHF-PPO against the reward model and DPO, each evaluated
with the proxy, the gold reward and a Monte-Carlo KL from the reference.
"""
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "preferences.json"
META_FIELDS = ("command", "git_commit", "cpu", "threads", "torch", "date", "wall_s")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("preferences_bench", ROOT / "benchmarks" / "preferences.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smoke(bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pref")
    argv = ["--smoke", "--work-dir", str(tmp / "work"), "--out-dir", str(tmp / "out")]
    assert bench.main(argv) == 0
    return bench, argv, tmp


def _evaluation_ok(ev):
    for key in ("kl", "proxy", "gold", "accuracy"):
        lo, hi = ev[key]["ci95"]
        assert lo <= ev[key]["mean"] <= hi or math.isnan(lo), key
    assert 0 <= ev["accuracy"]["mean"] <= 1 and ev["length_chars"] >= 0


def test_smoke_run_records_every_stage_and_contract_field(smoke):
    _, _, tmp = smoke
    res = json.loads((tmp / "out" / "preferences.json").read_text())
    assert (tmp / "out" / "preferences.png").stat().st_size > 0
    assert set(res["runs"]) == {"data", "reward_model", "best_of_n", "ppo", "dpo"}
    for name, run in res["runs"].items():
        assert all(run["meta"][k] is not None for k in META_FIELDS if k != "git_commit"), name
    data, rm, bon, ppo, dpo = (res["runs"][k] for k in ("data", "reward_model", "best_of_n", "ppo", "dpo"))
    assert data["train_pairs"] > 0 and data["eval_pairs"] > 0
    assert 0 <= rm["heldout_accuracy_vs_labels"]["mean"] <= 1 and rm["wall_s"] > 0
    ns = [row["n"] for row in bon["curve"]]
    assert ns == [2 ** k for k in range(len(ns))] and ns[-1] == bon["samples_per_prompt"]
    for row in bon["curve"]:  # the gold-picked best-of-n is never below the proxy-picked one
        assert row["gold_if_gold_picks"]["mean"] >= row["gold"]["mean"] - 1e-9
        assert row["kl_bound"] == pytest.approx(math.log(row["n"]) - (row["n"] - 1) / row["n"])
    for run in (ppo, dpo):
        _evaluation_ok(run["reference"])
        steps = [e["step"] for e in run["evals"]]
        assert steps == sorted(steps) and len(steps) >= 2
        times = [e["train_s_cumulative"] for e in run["evals"]]
        assert times == sorted(times) and times[0] > 0
        for e in run["evals"]:
            _evaluation_ok(e)


def test_rerun_skips_finished_stages(smoke, capsys):
    bench, argv, tmp = smoke
    before = (tmp / "work" / "dpo.result.json").read_text()
    assert bench.main(argv + ["--runs", "dpo"]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert (tmp / "work" / "dpo.result.json").read_text() == before


def test_an_interrupted_stage_keeps_its_evaluations(bench, tmp_path):
    """A stage killed after some evaluations continues from the recorded ones and its checkpoint."""
    argv = ["--smoke", "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out"), "--runs", "dpo"]
    assert bench.main(argv) == 0
    work = tmp_path / "work"
    evals = json.loads((work / "dpo.evals.json").read_text())
    (work / "dpo.result.json").unlink()
    (work / "dpo.evals.json").write_text(json.dumps(evals[:1]))  # as if killed after the first evaluation
    assert bench.main(argv) == 0
    again = json.loads((work / "dpo.evals.json").read_text())
    assert [e["step"] for e in again] == [e["step"] for e in evals]
    assert again[0] == evals[0]


def test_bad_arguments_are_refused(bench):
    with pytest.raises(SystemExit, match="unknown run"):
        bench.main(["--smoke", "--runs", "nope"])
    with pytest.raises(SystemExit, match="power of 2"):
        bench.main(["--smoke", "--bon-max", "6"])


@pytest.mark.skipif(not RESULT.exists(), reason="benchmarks/results/preferences.json not committed yet")
def test_committed_artifact_is_a_real_smollm2_run():
    res = json.loads(RESULT.read_text())
    assert not res["meta"]["smoke"] and res["meta"]["model"] == "smollm2-135m-instruct"
    assert set(res["runs"]) == {"data", "reward_model", "best_of_n", "ppo", "dpo"}
    for name, run in res["runs"].items():
        assert all(run["meta"][k] is not None for k in META_FIELDS), name
    assert res["runs"]["data"]["train_pairs"] >= 200 and res["runs"]["best_of_n"]["samples_per_prompt"] >= 16
