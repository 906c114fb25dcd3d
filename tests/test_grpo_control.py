"""GRPO on a control task: group structure, advantages, learning, determinism, resume, errors."""

import numpy as np
import pytest
import torch

from rlcore.algos import grpo_control as grpo
from rlcore.envs import make_env
from rlcore.networks import make_policy
from rlcore.training import rolling_mean

torch.set_num_threads(1)

# rolling-100 mean of training returns at the end of the default budget (see the report)
GRPO_CARTPOLE_THRESHOLD = 475


def tiny(**kw):
    base = dict(env_id="CartPole-v1", seed=0, total_timesteps=1500, group_size=4, num_groups=2,
                update_epochs=2, num_minibatches=2)
    base.update(kw)
    return grpo.GRPOControlConfig(**base)


def curves(history):
    d = history.state_dict()
    d.pop("wall_seconds", None)
    return d


def test_group_members_start_from_the_same_state():
    envs = [make_env("CartPole-v1") for _ in range(6)]
    torch.manual_seed(0)
    policy = make_policy(envs[0].observation_space, envs[0].action_space)
    data = grpo.collect_groups(envs, policy, [11, 22], group_size=3)
    ep = data["episode"].numpy()
    first_obs = np.stack([data["obs"][np.nonzero(ep == j)[0][0]].numpy() for j in range(6)])
    assert np.array_equal(first_obs[0], first_obs[1]) and np.array_equal(first_obs[0], first_obs[2])
    assert np.array_equal(first_obs[3], first_obs[5]) and not np.array_equal(first_obs[0], first_obs[3])
    # each episode ran to its end, and the stored steps add up to the episode lengths
    assert np.array_equal(np.bincount(ep, minlength=6), data["lengths"])
    assert np.array_equal(data["returns"], data["lengths"])  # CartPole: reward 1 per step
    assert sorted(j for j, _ in data["end_order"]) == list(range(6))
    # sampling differs within a group (otherwise GRPO would have no signal)
    assert len(set(data["lengths"][:3].tolist() + data["lengths"][3:].tolist())) > 1


def test_metrics_and_history():
    r = grpo.train(tiny(), progress=False)
    h = r.history
    for key in ("episode_return", "episode_length", "policy_loss", "approx_kl", "clip_fraction",
                "zero_variance_share", "entropy"):
        assert key in h and np.all(np.isfinite(h[key])), key
    assert np.all((h["zero_variance_share"] >= 0) & (h["zero_variance_share"] <= 1))
    assert r.env_steps >= 1500 and r.env_steps == int(h["episode_length"].sum())
    # 8 episodes per update, logged at nondecreasing env steps
    assert len(h["episode_return"]) == 8 * len(h["policy_loss"])
    assert np.all(np.diff(h.steps("episode_return")) >= 0)


def test_continuous_actions():
    r = grpo.train(tiny(env_id="Pendulum-v1", total_timesteps=1600, group_size=2, num_groups=2), progress=False)
    assert r.env_steps == 1600 and np.all(r.history["episode_length"] == 200)
    a = grpo.act(r.agent, np.array([1.0, 0.0, 0.0], dtype=np.float32))
    assert a.shape == (1,)


def test_kl_to_reference():
    r = grpo.train(tiny(beta=0.1), progress=False)
    kl = r.history["kl_ref"]
    assert np.all(kl >= 0) and kl[-1] > 0


def test_same_seed_same_history_and_resume(tmp_path):
    a = grpo.train(tiny(total_timesteps=3000), progress=False)
    b = grpo.train(tiny(total_timesteps=3000), progress=False)
    assert curves(a.history) == curves(b.history)
    ck = str(tmp_path / "grpo.pt")
    grpo.train(tiny(total_timesteps=1000, checkpoint_path=ck), progress=False)
    resumed = grpo.train(tiny(total_timesteps=3000, checkpoint_path=ck), resume=True, progress=False)
    assert resumed.env_steps == a.env_steps
    assert curves(resumed.history) == curves(a.history)


def test_errors():
    with pytest.raises(ValueError, match="group_size"):
        grpo.train(tiny(group_size=1), progress=False)
    with pytest.raises(ValueError, match="unknown Gymnasium environment"):
        grpo.train(tiny(env_id="CartPole-v9"), progress=False)
    with pytest.raises(ValueError, match="scale"):
        grpo.train(tiny(scale="std"), progress=False)
    with pytest.raises(TypeError, match="GRPOControlConfig"):
        from rlcore.algos.ppo import PPOConfig

        grpo.train(PPOConfig(), progress=False)
    with pytest.raises(TypeError, match="grpo_control.act"):
        grpo.act(torch.nn.Linear(4, 2), np.zeros(4))
    with pytest.raises(ValueError, match="max_grad_norm must be None or 0"):
        grpo.train(tiny(max_grad_norm=-0.5), progress=False)
    with pytest.raises(ValueError, match="hidden is empty"):
        grpo.train(tiny(hidden=()), progress=False)


@pytest.mark.slow
def test_grpo_learns_cartpole():
    r = grpo.train(grpo.GRPOControlConfig(seed=1), progress=False)
    final = rolling_mean(r.history["episode_return"], 100)[-1]
    assert final >= GRPO_CARTPOLE_THRESHOLD, final
    assert grpo.act(r.agent, np.zeros(4, dtype=np.float32)) in (0, 1)
