"""rlcore.envs and rlcore.networks."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlcore import envs, networks


def test_unknown_env_id_suggests_close_names():
    with pytest.raises(ValueError, match="Did you mean one of: CartPole-v1"):
        envs.make_env("CartPol-v1")
    with pytest.raises(TypeError):
        envs.make_env(3)


def test_vector_env_keeps_final_observation_on_autoreset():
    venv = envs.make_vector_env("CartPole-v1", num_envs=2, seed=0)
    obs, _ = venv.reset(seed=0)
    ended = []
    for _ in range(200):
        nxt, r, term, trunc, infos = venv.step(venv.action_space.sample())
        real = envs.final_observations(nxt, infos)
        done = term | trunc
        if done.any():
            i = int(np.nonzero(done)[0][0])
            # the returned obs is the new episode's first state; the real next state is the final one
            assert not np.allclose(real[i], nxt[i])
            # CartPole terminates when the pole or cart leaves its bounds: the final obs shows it
            assert abs(real[i][2]) > 0.2 or abs(real[i][0]) > 2.4
            ended += envs.finished_episodes(infos)
        assert np.allclose(real[~done], nxt[~done])
        obs = nxt
    assert ended and all(length > 0 and ret == length for ret, length in ended)


def test_truncation_is_reported_separately():
    venv = envs.make_vector_env("CartPole-v1", num_envs=1, seed=0, max_episode_steps=5)
    venv.reset(seed=0)
    flags = []
    for _ in range(5):
        _, _, term, trunc, _ = venv.step(np.array([0]))
        flags.append((bool(term[0]), bool(trunc[0])))
    assert flags[-1] == (False, True)


def test_action_space_checks():
    with pytest.raises(ValueError, match="DQN needs a discrete action space"):
        envs.require_discrete(gym.spaces.Box(-1, 1, (1,)), "DQN", "Pendulum-v1")
    envs.require_discrete(gym.spaces.Discrete(2), "DQN")


def test_record_episode_and_video_bytes():
    frames, ret = envs.record_episode("CartPole-v1", seed=0, max_steps=20)
    assert len(frames) >= 2 and frames[0].ndim == 3 and ret > 0
    mp4 = envs.frames_to_video(frames[:5], fps=10)
    assert mp4[4:8] == b"ftyp"
    gif = envs.frames_to_video(frames[:5], fps=10, fmt="gif")
    assert gif[:3] == b"GIF"
    html = envs.show_video(frames[:5], fps=10, caption="random").data
    assert "data:video/mp4;base64," in html and "random" in html


def test_orthogonal_init_and_heads():
    torch.manual_seed(0)
    layer = networks.layer_init(torch.nn.Linear(8, 8), std=math.sqrt(2))
    W = layer.weight.detach()
    torch.testing.assert_close(W @ W.T, 2 * torch.eye(8), atol=1e-5, rtol=0)
    assert (layer.bias == 0).all()

    cat = networks.CategoricalPolicy(4, 3)
    dist = cat(torch.zeros(5, 4))
    assert dist.probs.shape == (5, 3)
    # output gain 0.01: the initial policy is close to uniform (a PPO implementation detail)
    assert torch.allclose(dist.probs, torch.full((5, 3), 1 / 3), atol=0.02)

    gauss = networks.GaussianPolicy(3, 2, log_std_init=-0.5)
    d = gauss(torch.zeros(4, 3))
    a = torch.zeros(4, 2)
    expected = torch.distributions.Normal(d.mean, d.stddev).log_prob(a).sum(-1)
    torch.testing.assert_close(networks.log_prob(d, a), expected)
    assert networks.entropy(d).shape == (4,)
    assert networks.ValueNetwork(3)(torch.zeros(7, 3)).shape == (7,)
    assert networks.QNetwork(3, 2)(torch.zeros(7, 3)).shape == (7, 2)


def test_make_policy_picks_head_and_validates():
    env = gym.make("Pendulum-v1")
    assert isinstance(networks.make_policy(env.observation_space, env.action_space), networks.GaussianPolicy)
    env = gym.make("CartPole-v1")
    assert isinstance(networks.make_policy(env.observation_space, env.action_space), networks.CategoricalPolicy)
    with pytest.raises(ValueError, match="hidden"):
        networks.mlp(3, 2, hidden=(0,))
