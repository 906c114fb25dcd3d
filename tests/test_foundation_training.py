"""rlcore.training: history, JSONL logs, curves, atomic checkpoints."""
import os

import numpy as np
import pytest
import torch

from rlcore import training


def test_history_roundtrip():
    h = training.History()
    h.log(10, ret=1.0, loss=0.5)
    h.log(20, ret=3.0, loss=None)
    assert h["ret"].tolist() == [1.0, 3.0] and h.steps("ret").tolist() == [10, 20]
    assert h["loss"].tolist() == [0.5] and h.last("ret") == 3.0
    h2 = training.History()
    h2.load_state_dict(h.state_dict())
    assert h2["ret"].tolist() == [1.0, 3.0]
    with pytest.raises(KeyError, match="available"):
        h["nope"]


def test_jsonl_logger(tmp_path):
    path = tmp_path / "log" / "m.jsonl"
    with training.JSONLLogger(path) as log:
        log.log(1, a=torch.tensor(2.0), b=np.float32(3))
        log.log(2, a=4.0, text="hi")
    rows = training.read_jsonl(path)
    assert rows == [{"step": 1, "a": 2.0, "b": 3.0}, {"step": 2, "a": 4.0, "text": "hi"}]


def test_rolling_mean_and_interpolation():
    np.testing.assert_allclose(training.rolling_mean([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    grid, vals = training.interpolate_curves([(np.array([0, 10]), np.array([0.0, 10.0])), (np.array([0, 5, 8]), np.array([0.0, 5.0, 8.0]))], n=5)
    assert grid[-1] == 8 and vals.shape == (2, 5)
    np.testing.assert_allclose(vals[0], vals[1])


def test_plot_learning_curves_mean_std():
    import matplotlib

    matplotlib.use("Agg")
    runs = {"A": [(np.arange(10), np.arange(10.0)), (np.arange(10), np.arange(10.0) + 2)]}
    ax = training.plot_learning_curves(runs, threshold=5)
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata()[0], 1.0)  # mean of 0 and 2
    assert "n=2" in line.get_label()


def test_checkpoint_roundtrip_and_atomicity(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    net = torch.nn.Linear(3, 2)
    training.save_checkpoint(path, {"model": net.state_dict(), "step": 7, "rng": training.rng_state()})
    state = training.load_checkpoint(path)
    assert state["step"] == 7
    torch.testing.assert_close(state["model"]["weight"], net.weight.detach())

    # a crash during the next save must leave the previous checkpoint readable and no temp files behind
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        training.save_checkpoint(path, {"model": {}, "step": 8})
    monkeypatch.undo()
    assert training.load_checkpoint(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_load_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        training.load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_restores_streams():
    s = training.rng_state()
    a = (np.random.rand(), torch.rand(1).item())
    training.set_rng_state(s)
    assert (np.random.rand(), torch.rand(1).item()) == a


def test_resume_checkpoint_refuses_another_runs_state(tmp_path):
    path = tmp_path / "ckpt.pt"
    training.save_checkpoint(path, {"algo": "trpo", "config": {"env_id": "Pendulum-v1"}, "step": 3})
    assert training.load_resume_checkpoint(path, "trpo", "Pendulum-v1")["step"] == 3
    with pytest.raises(ValueError, match="is from trpo on Pendulum-v1, not ppo on Pendulum-v1"):
        training.load_resume_checkpoint(path, "ppo", "Pendulum-v1")
    with pytest.raises(ValueError, match="not trpo on CartPole-v1"):
        training.load_resume_checkpoint(path, "trpo", "CartPole-v1")
