"""PPO end to end: learning on CartPole and Pendulum, determinism, checkpoint/resume, errors."""
import dataclasses

import numpy as np
import pytest
import torch

from rlcore.algos import ppo
from rlcore.rollout import ActorCritic
from rlcore.training import read_jsonl, rolling_mean

torch.set_num_threads(1)


def tiny(**kw):
    base = dict(env_id="CartPole-v1", seed=0, total_timesteps=4 * 256, num_envs=2, num_steps=128,
                update_epochs=2, num_minibatches=2)
    base.update(kw)
    return ppo.PPOConfig(**base)


def curves(history):
    """The history without wall-clock times (those differ between identical runs)."""
    d = history.state_dict()
    d.pop("wall_seconds", None)
    return d


def test_config_fields_have_docstrings():
    import inspect

    src = inspect.getsource(ppo.PPOConfig)
    for f in dataclasses.fields(ppo.PPOConfig):
        assert f"    {f.name}:" in src
        after = src.split(f"    {f.name}:", 1)[1].splitlines()[1].strip()
        assert after.startswith('"""'), f"field {f.name} has no docstring"


def test_same_seed_same_history():
    a = ppo.train(tiny(), progress=False).history
    b = ppo.train(tiny(), progress=False).history
    assert curves(a) == curves(b)
    c = ppo.train(tiny(seed=1), progress=False).history
    assert curves(c) != curves(a)


def test_history_metrics_and_jsonl(tmp_path):
    log = tmp_path / "ppo.jsonl"
    r = ppo.train(tiny(log_path=str(log)), progress=False)
    h = r.history
    for key in ("episode_return", "episode_length", "policy_loss", "value_loss", "entropy", "approx_kl",
                "clip_fraction", "explained_variance", "learning_rate"):
        assert key in h and np.all(np.isfinite(h[key])), key
    assert r.env_steps == 1024 and h.steps("policy_loss")[-1] == 1024
    # CartPole gives reward 1 per step, so every episode's return equals its length
    assert np.array_equal(h["episode_return"], h["episode_length"])
    assert np.all(np.diff(h.steps("episode_return")) >= 0) and h.steps("episode_return")[-1] <= 1024
    assert np.all(np.diff(h["learning_rate"]) < 0)  # annealed
    rows = read_jsonl(log)
    assert sum("episode_return" in row for row in rows) == len(h["episode_return"])


def test_resume_from_checkpoint_is_identical(tmp_path):
    # without lr annealing the schedule does not depend on total_timesteps, so k + (N - k) == N exactly
    full = ppo.train(tiny(anneal_lr=False, total_timesteps=6 * 256), progress=False)
    ck = str(tmp_path / "ppo.pt")
    part = ppo.train(tiny(anneal_lr=False, total_timesteps=3 * 256, checkpoint_path=ck), progress=False)
    assert part.env_steps == 3 * 256
    resumed = ppo.train(tiny(anneal_lr=False, total_timesteps=6 * 256, checkpoint_path=ck), resume=True,
                        progress=False)
    assert resumed.env_steps == full.env_steps
    assert curves(resumed.history) == curves(full.history)
    for p, q in zip(resumed.agent.parameters(), full.agent.parameters()):
        assert torch.equal(p, q)


def _interrupt_after_step(monkeypatch, step):
    """Deliver SIGINT (as Ctrl-C would) the first time a metric is logged at or after env step ``step``."""
    import os
    import signal

    from rlcore.training import History

    real, sent = History.log, []

    def log(self, at, **metrics):
        real(self, at, **metrics)
        if at >= step and not sent:
            sent.append(at)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(History, "log", log)
    return sent


def test_resume_with_normalisation_and_annealing(tmp_path, monkeypatch):
    """Pendulum with both normalisers and an annealed learning rate: interrupted after 2 of 4 updates, then
    extended to 8: the rate continues linearly from its value at the checkpoint (0.5 * lr) to 0, no jump."""
    from rlcore.lifecycle import TrainingInterrupted

    ck = str(tmp_path / "pend.pt")
    cfg = tiny(env_id="Pendulum-v1", normalize_obs=True, normalize_reward=True, checkpoint_path=ck)
    _interrupt_after_step(monkeypatch, 2 * 256)
    with pytest.raises(TrainingInterrupted):
        ppo.train(cfg, progress=False)
    monkeypatch.undo()
    r = ppo.train(dataclasses.replace(cfg, total_timesteps=8 * 256), resume=True, progress=False)
    assert r.env_steps == 8 * 256
    assert r.agent.obs_normalizer is not None and r.agent.obs_normalizer.rms.count > 8 * 256
    assert all(np.all(np.isfinite(r.history[k])) for k in ("policy_loss", "value_loss", "approx_kl"))
    lr = r.history["learning_rate"] / cfg.learning_rate
    np.testing.assert_allclose(lr, [1, 0.75] + [0.5 * (1 - k / 6) for k in range(6)], rtol=1e-12)
    # a run that finished its annealed schedule has a learning rate of 0: extending it is refused
    done = str(tmp_path / "done.pt")
    ppo.train(tiny(checkpoint_path=done), progress=False)
    with pytest.raises(ValueError, match="decayed to 0.*fresh run"):
        ppo.train(tiny(checkpoint_path=done, total_timesteps=8 * 256), resume=True, progress=False)
    # a checkpoint from another algorithm/env is refused with a clear message
    with pytest.raises(ValueError, match="checkpoint"):
        ppo.train(tiny(checkpoint_path=ck, total_timesteps=8 * 256), resume=True, progress=False)


def test_act_and_pairing_errors():
    r = ppo.train(tiny(), progress=False)
    a = ppo.act(r.agent, np.zeros(4, dtype=np.float32))
    assert isinstance(a, int) and a in (0, 1)
    assert ppo.act(r.agent, np.zeros((5, 4), dtype=np.float32), deterministic=False).shape == (5,)
    with pytest.raises(TypeError, match="ppo.act"):
        ppo.act(torch.nn.Linear(4, 2), np.zeros(4))
    with pytest.raises(TypeError, match="PPOConfig"):
        from rlcore.algos.trpo import TRPOConfig

        ppo.train(TRPOConfig(), progress=False)


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown Gymnasium environment"):
        ppo.train(tiny(env_id="CartPol-v1"), progress=False)
    with pytest.raises(ValueError, match="divisible"):
        ppo.train(tiny(num_minibatches=3), progress=False)
    with pytest.raises(ValueError, match="total_timesteps"):
        ppo.train(tiny(total_timesteps=0), progress=False)
    with pytest.raises(ValueError, match="clip_coef"):
        ppo.train(tiny(clip_coef=-0.1), progress=False)


def test_continuous_actions_are_clipped_and_act_in_bounds():
    r = ppo.train(tiny(env_id="Pendulum-v1", normalize_obs=True), progress=False)
    assert isinstance(r.agent, ActorCritic) and not r.agent.discrete
    a = ppo.act(r.agent, np.array([1.0, 0.0, 100.0], dtype=np.float32), deterministic=False)
    assert a.shape == (1,) and -2.0 <= a[0] <= 2.0


@pytest.mark.slow
def test_ppo_solves_cartpole():
    r = ppo.train(ppo.default_config("CartPole-v1", seed=1), progress=False)
    ret = r.history["episode_return"]
    assert r.env_steps == 97 * 1024 <= 100_000
    assert rolling_mean(ret, 100)[-1] >= 475, rolling_mean(ret, 100)[-1]


@pytest.mark.slow
def test_ppo_pendulum_improves_over_random():
    cfg = ppo.default_config("Pendulum-v1", seed=1, total_timesteps=40_960)
    r = ppo.train(cfg, progress=False)
    h = r.history
    for key in ("policy_loss", "value_loss", "approx_kl", "entropy", "explained_variance"):
        assert np.all(np.isfinite(h[key])), key
    ret = h["episode_return"]
    # a random policy scores about -1200 on Pendulum; the first episodes are that bad
    assert np.mean(ret[-20:]) > np.mean(ret[:20]) + 300


def test_rollout_collector_bootstraps_on_the_real_final_observation():
    """Pendulum truncates every episode at 200 steps: at that step next_values must be V of the
    real last observation (infos["final_obs"]), not of the reset observation that follows."""
    from rlcore.envs import make_vector_env
    from rlcore.returns import gae
    from rlcore.rollout import RolloutCollector

    torch.manual_seed(0)
    envs = make_vector_env("Pendulum-v1", 2, seed=None)
    agent = ActorCritic(envs.single_observation_space, envs.single_action_space)
    col = RolloutCollector(envs, agent, num_steps=250, gamma=0.99, gae_lambda=0.95)
    col.reset(seed=0)
    roll, episodes = col.collect(global_step=0)
    assert [(s, l) for s, _, l in episodes] == [(400, 200), (400, 200)]  # both ended at vector step 200
    assert roll.truncated[199].tolist() == [1.0, 1.0] and roll.truncated.sum() == 2 and roll.terminated.sum() == 0
    with torch.no_grad():
        # inside an episode s_{t+1} is the next stored observation
        assert torch.allclose(roll.next_values[:199], roll.values[1:200])
        assert torch.allclose(roll.next_values[200:-1], roll.values[201:])
        # at the truncation step it is not (the env was reset), ...
        assert not torch.allclose(roll.next_values[199], roll.values[200])
        # ... it is the value of the final observation: replay sub-env 0 (seeded 0) with the same actions
        from rlcore.envs import make_env

        env = make_env("Pendulum-v1")
        obs, _ = env.reset(seed=0)
        assert np.allclose(obs, roll.obs[0, 0].numpy())
        for t in range(200):
            obs, *_ = env.step(agent.env_actions(roll.actions[t, 0:1])[0])
        assert torch.allclose(roll.next_values[199, 0], agent.value(torch.as_tensor(obs[None], dtype=torch.float32))[0])
    expected = gae(roll.rewards, roll.values, roll.next_values, roll.terminated, roll.truncated, 0.99, 0.95)
    assert torch.allclose(roll.advantages, expected) and torch.allclose(roll.returns, expected + roll.values)
    envs.close()
