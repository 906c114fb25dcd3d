"""``python -m rlcore``: list, train (outputs), errors, --help, and --set type conversion."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlcore.algos import ALGORITHMS, config_class, field_docs, get_algorithm
from rlcore.algos.dqn import DQNConfig
from rlcore.cli import build_config, convert_value, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLCORE_NO_PROGRESS": "1", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rlcore", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=120)


def test_list():
    p = run_cli("list")
    assert p.returncode == 0, p.stderr
    for name in ALGORITHMS:
        assert name in p.stdout


def test_dqn_on_continuous_env_fails_with_clear_message(tmp_path):
    p = run_cli("train", "dqn", "--env", "Pendulum-v1", "--out", str(tmp_path / "run"))
    assert p.returncode != 0
    assert "discrete action space" in p.stderr and "Pendulum-v1" in p.stderr
    assert "Traceback" not in p.stderr


def test_unknown_algorithm_and_field(tmp_path, capsys):
    assert main(["train", "a2c"]) != 0
    err = capsys.readouterr().err
    assert "dqn" in err and "reinforce" in err
    assert main(["train", "dqn", "--set", "learning_rat=1e-3", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "valid fields" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_train_help_lists_fields_with_docstrings(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "dqn", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "target_network_frequency" in out and "Vector steps between two target-network updates" in out


def test_tiny_reinforce_run_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    p = run_cli("train", "reinforce", "--env", "CartPole-v1", "--seed", "1", "--total-timesteps", "2000",
                "--set", "hidden=16,16", "--set", "episodes_per_update=4", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "env steps" in p.stdout and "mean return of the last 10" in p.stdout
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert any("episode_return" in r for r in rows) and any("policy_loss" in r for r in rows)
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "checkpoint.pt").exists()
    # --resume continues from the checkpoint (already at the budget: nothing left to do)
    args = ["train", "reinforce", "--total-timesteps", "2000", "--set", "hidden=16,16", "--set", "episodes_per_update=4",
            "--out", str(out), "--no-progress"]
    assert main(args + ["--resume"]) == 0
    assert "nothing left to train" in capsys.readouterr().err
    assert len((out / "history.jsonl").read_text().splitlines()) == len(rows)
    # the same command again refuses to replace the run; --overwrite replaces it (not appends to it)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "earlier run's files exist" in err and "--resume" in err and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0
    assert [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()] == rows


def test_set_values_are_converted_with_field_types():
    cfg = build_config(DQNConfig, {"learning_rate": "3e-4", "total_timesteps": "5e4", "use_target_network": "false",
                                   "hidden": "64,32", "checkpoint_path": "none", "max_grad_norm": "inf"})
    assert cfg.learning_rate == 3e-4 and cfg.total_timesteps == 50_000 and cfg.use_target_network is False
    assert cfg.hidden == (64, 32) and cfg.checkpoint_path is None and cfg.max_grad_norm == float("inf")
    with pytest.raises(ValueError, match="integer"):
        build_config(DQNConfig, {"batch_size": "1.5"})
    with pytest.raises(ValueError, match="boolean"):
        convert_value("maybe", bool, "flag")
    # integers written as floats are fine when whole; a max_grad_norm of 0 or none turns clipping off
    assert convert_value("1.5e3", int, "n") == 1500
    with pytest.raises(ValueError, match="expects an integer"):
        convert_value("1500.5", int, "n")
    assert build_config(DQNConfig, {"max_grad_norm": "0"}).max_grad_norm == 0.0
    assert build_config(DQNConfig, {"max_grad_norm": "none"}).max_grad_norm is None
    with pytest.raises(ValueError, match="hidden is empty"):
        build_config(DQNConfig, {"hidden": ""})


def test_registry_helpers():
    assert config_class(get_algorithm("dqn")) is DQNConfig
    docs = field_docs(DQNConfig)
    assert set(docs) == {f for f in DQNConfig.__dataclass_fields__}  # every field is documented
    with pytest.raises(ValueError, match="choose one of"):
        get_algorithm("sac")
