"""C10, C11: PPO's clipped surrogate (value and exact zero gradient in the clipped regions),
ratio = 1 at the start of every update, and the critic learning inside PPO."""
import numpy as np
import pytest
import torch

from rlcore.algos import ppo
from rlcore.losses import clipped_surrogate_loss
from rlcore.networks import CategoricalPolicy, log_prob

torch.set_num_threads(1)

EPS = 0.2


def piecewise(r, A, eps=EPS):
    """The case analysis of eq-ppo-clip, written out: the objective per sample."""
    if A >= 0:
        return (1 + eps) * A if r > 1 + eps else r * A
    return (1 - eps) * A if r < 1 - eps else r * A


RATIOS = [0.5, 0.79, 0.9, 1.0, 1.1, 1.21, 1.7]


@pytest.mark.parametrize("A", [1.5, -0.7])
def test_clipped_loss_equals_piecewise_form(A):
    r = torch.tensor(RATIOS, dtype=torch.float64)
    old_logp = torch.full_like(r, -1.3)
    logp = old_logp + torch.log(r)
    adv = torch.full_like(r, A)
    got = clipped_surrogate_loss(logp, old_logp, adv, clip_coef=EPS, reduce="none")
    expected = [-piecewise(float(ri), A) for ri in r]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    assert abs(float(clipped_surrogate_loss(logp, old_logp, adv, EPS)) - np.mean(expected)) < 1e-12


@pytest.mark.parametrize("A", [1.5, -0.7])
def test_gradient_is_zero_when_clipped_and_minus_A_r_otherwise(A):
    r = torch.tensor(RATIOS, dtype=torch.float64)
    old_logp = torch.full_like(r, -1.3)
    logp = (old_logp + torch.log(r)).requires_grad_(True)
    adv = torch.full_like(r, A)
    (grad,) = torch.autograd.grad(clipped_surrogate_loss(logp, old_logp, adv, EPS, reduce="sum"), logp)
    clipped = (r > 1 + EPS) if A > 0 else (r < 1 - EPS)
    assert clipped.any() and (~clipped).any()
    assert torch.all(grad[clipped] == 0.0)  # exactly zero, not just small
    # d(r A)/d logp = r A, so the loss gradient is -A r where the ratio is not clipped
    assert torch.allclose(grad[~clipped], -A * r[~clipped], atol=1e-12)


def test_parameter_gradient_is_sum_of_unclipped_terms():
    """Through a network: grad of the clipped loss = sum over unclipped samples of -A r grad log pi."""
    torch.manual_seed(0)
    policy = CategoricalPolicy(4, 3, hidden=(8,)).double()
    obs = torch.randn(32, 4, dtype=torch.float64)
    with torch.no_grad():
        dist = policy.distribution(obs)
        actions = dist.sample()
        # pretend the data came from a different old policy so ratios spread around 1
        old_logp = log_prob(dist, actions) + 0.4 * torch.randn(32, dtype=torch.float64)
    adv = torch.randn(32, dtype=torch.float64)
    params = list(policy.parameters())
    logp = log_prob(policy.distribution(obs), actions)
    grads = torch.autograd.grad(clipped_surrogate_loss(logp, old_logp, adv, EPS, reduce="sum"), params)
    r = torch.exp(logp.detach() - old_logp)
    clipped = torch.where(adv > 0, r > 1 + EPS, r < 1 - EPS)
    assert clipped.any() and (~clipped).any()
    logp2 = log_prob(policy.distribution(obs), actions)
    expected = torch.autograd.grad((-(adv * r)[~clipped] * logp2[~clipped]).sum(), params)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-12)


@pytest.fixture(scope="module")
def short_run():
    cfg = ppo.PPOConfig(env_id="CartPole-v1", seed=3, total_timesteps=12 * 512, num_envs=4, num_steps=128,
                        update_epochs=4, num_minibatches=4)
    return ppo.train(cfg, progress=False)


def test_ratio_is_one_on_first_minibatch_of_each_update(short_run):
    devs = ppo.first_minibatch_ratio(short_run.history)
    assert len(devs) == 12
    assert np.all(devs <= 1e-6)  # pi_theta == pi_old before the first gradient step of an update
    # and the policy did move during the updates (otherwise the check above would be vacuous)
    assert np.all(short_run.history["approx_kl"] > 0)


def test_value_loss_decreases_and_explained_variance_is_reported(short_run):
    h = short_run.history
    first, last = h["value_loss_first_epoch"], h["value_loss"]
    # within each update the critic fits the fixed lambda-returns: last epoch below first epoch
    assert np.mean(last < first) >= 0.8
    assert np.all(np.diff(h.steps("value_loss")) > 0)
    ev = h["explained_variance"]
    assert len(ev) == 12 and np.all(np.isfinite(ev)) and np.all(ev <= 1.0)
