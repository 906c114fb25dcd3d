"""DQN (C2): TD target with terminated vs truncated, replay buffer, epsilon schedule, errors,
determinism, checkpoint/resume, and a learning test on CartPole-v1."""
import math

import numpy as np
import pytest
import torch

from rlcore.algos import dqn
from rlcore.losses import td_target
from rlcore.networks import QNetwork
from rlcore.training import load_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny MLPs: one intra-op thread is fastest (and CI has 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

FAST = dict(eval_every=0, learning_starts=200, train_frequency=4, gradient_steps=1, buffer_size=1000, batch_size=32,
            target_network_frequency=100, hidden=(32, 32))


def test_td_target_terminated_vs_truncated_through_the_buffer():
    """A truncated transition bootstraps from Q_target of the *real* final observation; a
    terminated one does not bootstrap at all."""
    torch.manual_seed(0)
    q_target = QNetwork(4, 2, hidden=(8,))
    rb = dqn.ReplayBuffer(4, (4,))
    s = np.zeros((2, 4), np.float32)
    final = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, -0.5, 0.2, 0.0]], np.float32)
    rb.add(s, final, actions=[0, 1], rewards=[1.0, 2.0], terminated=[False, True], truncated=[True, False])
    batch = {k: torch.as_tensor(getattr(rb, k)[:2]) for k in ("rewards", "next_obs", "terminated")}
    gamma = 0.9
    with torch.no_grad():
        y = td_target(batch["rewards"], q_target(batch["next_obs"]), batch["terminated"], gamma)
        q_final = q_target(torch.as_tensor(final))
    assert y[0].item() == pytest.approx(1.0 + gamma * q_final[0].max().item(), abs=1e-6)  # truncated: bootstrap
    assert y[1].item() == pytest.approx(2.0, abs=1e-6)  # terminated: y = r
    assert rb.truncated[:2].tolist() == [1.0, 0.0] and rb.terminated[:2].tolist() == [0.0, 1.0]


def test_td_target_by_hand():
    next_q = torch.tensor([[1.0, 3.0], [2.0, -1.0], [0.5, 0.25]])
    y = td_target(torch.tensor([1.0, 0.0, -1.0]), next_q, torch.tensor([0.0, 1.0, 0.0]), 0.5)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.5 * 3.0, 0.0, -1.0 + 0.5 * 0.5]))


def test_double_q_target_by_hand():
    """Double DQN: the online network picks argmax_a' Q_theta(s', a'), the target network scores it."""
    next_online = torch.tensor([[1.0, 3.0], [2.0, -1.0], [0.0, 5.0]])
    next_target = torch.tensor([[10.0, 20.0], [30.0, 40.0], [7.0, -7.0]])
    y = dqn.double_q_target(torch.tensor([1.0, 0.0, -1.0]), next_online, next_target,
                            torch.tensor([0.0, 0.0, 1.0]), 0.5)
    # rows: online picks action 1 -> Q_target 20; action 0 -> 30 (not max 40); terminated -> r only
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.5 * 20.0, 0.0 + 0.5 * 30.0, -1.0]))
    # with identical networks it is the ordinary DQN target
    torch.testing.assert_close(dqn.double_q_target(torch.ones(3), next_target, next_target, torch.zeros(3), 0.9),
                               td_target(torch.ones(3), next_target, torch.zeros(3), 0.9))
    with pytest.raises(ValueError, match="same"):
        dqn.double_q_target(torch.ones(3), next_online, next_target[:, :1], torch.zeros(3), 0.9)


def test_double_q_and_gradient_steps_run():
    r = dqn.train(dqn.DQNConfig(total_timesteps=600, double_q=True, **{**FAST, "gradient_steps": 3}), progress=False)
    # updates happen at vector steps 204, 208, ..., 596 (learning_starts=200, every 4th): 100 bursts of 3
    assert np.isfinite(r.history["td_loss"]).all() and len(r.history["td_loss"]) == 3  # logged every 100 updates
    with pytest.raises(ValueError, match="use_target_network"):
        dqn.DQNConfig(double_q=True, use_target_network=False)


def test_replay_buffer_ring_and_sampling():
    rb = dqn.ReplayBuffer(3, (1,))
    for i in range(5):
        rb.add(np.array([[i]], np.float32), np.array([[i + 1]], np.float32), [i % 2], [float(i)], [0], [0])
    assert len(rb) == 3 and sorted(rb.obs[:, 0].tolist()) == [2.0, 3.0, 4.0]  # the oldest were overwritten
    batch = rb.sample(64, np.random.default_rng(0))
    assert batch["obs"].shape == (64, 1) and batch["actions"].dtype == torch.int64
    torch.testing.assert_close(batch["next_obs"], batch["obs"] + 1)
    with pytest.raises(ValueError, match="empty"):
        dqn.ReplayBuffer(3, (1,)).sample(2, np.random.default_rng(0))


def _buffer_after(tmp_path, env_id, steps):
    path = tmp_path / f"{env_id}.pt"
    cfg = dqn.DQNConfig(env_id=env_id, total_timesteps=steps, learning_starts=10**6, eval_every=0,
                        buffer_size=steps, batch_size=8, checkpoint_path=str(path), hidden=(8,), end_e=1.0)
    dqn.train(cfg, progress=False)
    b = load_checkpoint(path)["buffer"]
    assert b["size"] == steps
    return b


def test_buffer_stores_real_final_observation_on_autoreset(tmp_path):
    # a uniformly random policy (epsilon = 1) on CartPole: episodes end by termination
    b = _buffer_after(tmp_path, "CartPole-v1", 400)
    ends = np.nonzero(b["terminated"])[0]
    assert len(ends) >= 5 and not b["truncated"].any()
    cont = np.setdiff1d(np.arange(len(b["obs"]) - 1), ends)
    np.testing.assert_array_equal(b["next_obs"][cont], b["obs"][cont + 1])  # s' is the next s within an episode
    for i in ends[ends < len(b["obs"]) - 1]:
        x, theta = b["next_obs"][i][0], b["next_obs"][i][2]
        assert abs(x) > 2.4 or abs(theta) > 12 * 2 * math.pi / 360  # the real terminal state ...
        assert np.abs(b["obs"][i + 1]).max() <= 0.05  # ... while the next stored s is a reset state
    # Acrobot with a random policy: every episode is truncated at 500 steps
    b = _buffer_after(tmp_path, "Acrobot-v1", 1100)
    assert np.nonzero(b["truncated"])[0].tolist() == [499, 999] and not b["terminated"].any()
    for i in (499, 999):
        assert not np.allclose(b["next_obs"][i], b["obs"][i + 1])  # final obs kept, not the reset obs
        # the final observation continues the trajectory: cos/sin stay on the unit circle
        np.testing.assert_allclose(b["next_obs"][i][0] ** 2 + b["next_obs"][i][1] ** 2, 1.0, atol=1e-5)


def test_linear_schedule():
    assert dqn.linear_schedule(1.0, 0.05, 100, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.05, 100, 50) == pytest.approx(0.525)
    assert dqn.linear_schedule(1.0, 0.05, 100, 100) == pytest.approx(0.05)
    assert dqn.linear_schedule(1.0, 0.05, 100, 10_000) == pytest.approx(0.05)
    assert dqn.linear_schedule(1.0, 0.05, 0, 0) == 0.05


def test_continuous_action_space_raises_clear_error():
    with pytest.raises(ValueError, match="discrete action space.*Pendulum-v1"):
        dqn.train(dqn.DQNConfig(env_id="Pendulum-v1", total_timesteps=10), progress=False)


def test_bad_config_raises_clear_errors():
    with pytest.raises(ValueError, match="batch_size"):
        dqn.DQNConfig(batch_size=100, buffer_size=10)
    with pytest.raises(ValueError, match="tau"):
        dqn.DQNConfig(tau=0.0)
    with pytest.raises(ValueError, match="loss"):
        dqn.DQNConfig(loss="l1")
    with pytest.raises(ValueError, match="total_timesteps"):
        dqn.DQNConfig(total_timesteps=0)
    with pytest.raises(ValueError, match="gradient_steps"):
        dqn.DQNConfig(gradient_steps=0)
    with pytest.raises(TypeError, match="DQNConfig"):
        dqn.train({"env_id": "CartPole-v1"})
    with pytest.raises(ValueError, match="max_grad_norm must be None or 0"):
        dqn.DQNConfig(max_grad_norm=-1.0)
    assert dqn.DQNConfig(max_grad_norm=0).max_grad_norm == 0  # 0 = no clipping (as everywhere in rlcore)
    with pytest.raises(ValueError, match="hidden is empty"):
        dqn.DQNConfig(hidden=())


def test_same_seed_same_history():
    cfg = dqn.DQNConfig(seed=3, total_timesteps=1000, **{**FAST, "eval_every": 500})
    a, b = dqn.train(cfg, progress=False), dqn.train(cfg, progress=False)
    assert a.history.state_dict() == b.history.state_dict()
    for k in ("episode_return", "td_loss", "eval_return"):
        assert k in a.history
    c = dqn.train(dqn.DQNConfig(seed=4, total_timesteps=1000, **{**FAST, "eval_every": 500}), progress=False)
    assert c.history.state_dict() != a.history.state_dict()


def test_no_target_network_ablation_runs():
    r = dqn.train(dqn.DQNConfig(total_timesteps=1000, use_target_network=False, **FAST), progress=False)
    assert np.isfinite(r.history["td_loss"]).all() and r.env_steps == 1000


def test_resume_after_crash_is_identical(tmp_path, monkeypatch):
    """Train 1500 steps in one go; then train the same config, 'crash' right after the checkpoint
    at step 800, resume from it: same history, same weights, same JSONL."""
    kw = dict(seed=5, total_timesteps=1500, **{**FAST, "eval_every": 500})
    full = dqn.train(dqn.DQNConfig(**kw, log_path=str(tmp_path / "a.jsonl")), progress=False)

    ckpt = tmp_path / "ckpt.pt"
    cfg = dqn.DQNConfig(**kw, checkpoint_path=str(ckpt), checkpoint_every=800, log_path=str(tmp_path / "b.jsonl"))
    real_save = dqn.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(dqn, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        dqn.train(cfg, progress=False)
    monkeypatch.setattr(dqn, "save_checkpoint", real_save)
    assert load_checkpoint(ckpt)["global_step"] == 800
    resumed = dqn.train(cfg, resume=True, progress=False)

    assert resumed.env_steps == full.env_steps == 1500
    assert resumed.history.state_dict() == full.history.state_dict()
    for p, q in zip(resumed.agent.parameters(), full.agent.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_resume_needs_a_checkpoint_and_fresh_runs_do_not_overwrite(tmp_path):
    """No silent fresh start: resume without a checkpoint is an error naming the path (it used to warn)."""
    from rlcore.lifecycle import RunExistsError

    cfg = dqn.DQNConfig(total_timesteps=300, checkpoint_path=str(tmp_path / "ck.pt"), **FAST)
    with pytest.raises(FileNotFoundError, match="cannot resume: no checkpoint at .*ck.pt"):
        dqn.train(cfg, resume=True, progress=False)
    dqn.train(cfg, progress=False)
    with pytest.raises(RunExistsError, match="overwrite"):
        dqn.train(cfg, progress=False)
    assert dqn.train(cfg, overwrite=True, progress=False).env_steps == 300
    assert load_checkpoint(cfg.checkpoint_path)["algo"] == "dqn"


@pytest.mark.slow
def test_dqn_learns_cartpole():
    """Default hyperparameters and their 50k-step exploration schedule (epsilon reaches end_e after
    8k steps), cut at 30k steps to stay fast: the greedy policy of seed 3 must balance the pole for
    at least 400 steps on average at some evaluation (random: ~22; solved: 475)."""
    cfg = dqn.DQNConfig(seed=3, total_timesteps=30_000, exploration_fraction=0.16 * 50 / 30,
                        eval_every=2_500, eval_episodes=5)
    r = dqn.train(cfg, progress=False)
    assert r.history["eval_return"].max() >= 400, r.history["eval_return"]
