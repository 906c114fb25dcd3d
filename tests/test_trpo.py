"""TRPO end to end: learning on CartPole, Pendulum runs, determinism, checkpoint/resume, errors."""

import numpy as np
import pytest
import torch

from rlcore.algos import trpo
from rlcore.training import rolling_mean

torch.set_num_threads(1)

# rolling-100 mean of training returns after 100k steps (see the report for measured values)
TRPO_CARTPOLE_THRESHOLD = 475


def tiny(**kw):
    base = dict(env_id="CartPole-v1", seed=0, total_timesteps=4 * 256, num_envs=2, num_steps=128,
                vf_epochs=2, vf_minibatches=2)
    base.update(kw)
    return trpo.TRPOConfig(**base)


def curves(history):
    d = history.state_dict()
    d.pop("wall_seconds", None)
    return d


def test_same_seed_same_history():
    a = trpo.train(tiny(), progress=False).history
    b = trpo.train(tiny(), progress=False).history
    assert curves(a) == curves(b)


def test_metrics_and_kl_constraint():
    r = trpo.train(tiny(max_kl=0.01), progress=False)
    h = r.history
    for key in ("episode_return", "episode_length", "policy_loss", "value_loss", "entropy", "kl",
                "step_accepted", "explained_variance"):
        assert key in h and np.all(np.isfinite(h[key])), key
    # every update's accepted step respects the trust region
    assert np.all(h["kl"] <= 0.01 + 1e-9)
    assert np.all((h["step_accepted"] == 0) | (h["kl"] > 0))
    assert h["step_accepted"].mean() > 0.5


def test_resume_from_checkpoint_is_identical(tmp_path):
    full = trpo.train(tiny(total_timesteps=6 * 256), progress=False)
    ck = str(tmp_path / "trpo.pt")
    trpo.train(tiny(total_timesteps=3 * 256, checkpoint_path=ck), progress=False)
    resumed = trpo.train(tiny(total_timesteps=6 * 256, checkpoint_path=ck), resume=True, progress=False)
    assert resumed.env_steps == full.env_steps == 6 * 256
    assert curves(resumed.history) == curves(full.history)


def test_pendulum_runs_with_finite_metrics():
    cfg = trpo.default_config("Pendulum-v1", seed=0, total_timesteps=4 * 256, num_envs=2, num_steps=128,
                              vf_epochs=2, vf_minibatches=2)
    r = trpo.train(cfg, progress=False)
    for key in ("policy_loss", "value_loss", "kl", "entropy"):
        assert np.all(np.isfinite(r.history[key])), key
    a = trpo.act(r.agent, np.array([1.0, 0.0, 0.0], dtype=np.float32))
    assert a.shape == (1,) and -2.0 <= a[0] <= 2.0


def test_errors():
    with pytest.raises(ValueError, match="unknown Gymnasium environment"):
        trpo.train(tiny(env_id="Cartpole-v1"), progress=False)
    with pytest.raises(ValueError, match="max_kl"):
        trpo.train(tiny(max_kl=0.0), progress=False)
    with pytest.raises(TypeError, match="TRPOConfig"):
        from rlcore.algos.ppo import PPOConfig

        trpo.train(PPOConfig(), progress=False)
    with pytest.raises(TypeError, match="trpo.act"):
        trpo.act(torch.nn.Linear(4, 2), np.zeros(4))


def test_critic_gradient_clipping_is_optional():
    """max_grad_norm clips the critic's Adam steps; None and 0 (the default) both mean no clipping."""
    off = trpo.train(tiny(total_timesteps=512), progress=False)
    zero = trpo.train(tiny(total_timesteps=512, max_grad_norm=0), progress=False)
    clipped = trpo.train(tiny(total_timesteps=512, max_grad_norm=1e-3), progress=False)
    assert curves(off.history) == curves(zero.history)
    assert not all(torch.equal(a, b) for a, b in zip(off.agent.critic.parameters(), clipped.agent.critic.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(off.agent.policy.parameters(), zero.agent.policy.parameters()))
    with pytest.raises(ValueError, match="max_grad_norm"):
        trpo.train(tiny(max_grad_norm=-1.0), progress=False)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint"):
        trpo.train(tiny(checkpoint_path=str(tmp_path / "none.pt")), resume=True, progress=False)


@pytest.mark.slow
def test_trpo_learns_cartpole():
    r = trpo.train(trpo.default_config("CartPole-v1", seed=1), progress=False)
    assert r.env_steps == 97 * 1024 <= 100_000
    final = rolling_mean(r.history["episode_return"], 100)[-1]
    assert final >= TRPO_CARTPOLE_THRESHOLD, final


@pytest.mark.slow
def test_trpo_pendulum_improves():
    cfg = trpo.default_config("Pendulum-v1", seed=1, total_timesteps=40_960)
    r = trpo.train(cfg, progress=False)
    ret = r.history["episode_return"]
    assert np.mean(ret[-20:]) > np.mean(ret[:20]) + 200
