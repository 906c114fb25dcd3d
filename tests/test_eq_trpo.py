"""C7, C8, C9: the surrogate objective, the CPI and TRPO lower bounds on exact tabular MDPs,
and TRPO's numerical pieces (Fisher-vector product, conjugate gradient, line search)."""
import numpy as np
import pytest
import torch
from torch.func import functional_call

from rlcore import tabular as tb
from rlcore.algos.trpo import (conjugate_gradient, fisher_operator, fisher_vector_product, flat_grad, flat_params, line_search,
                               mean_kl, set_flat_params, trpo_step, _detached)
from rlcore.losses import surrogate_loss
from rlcore.networks import CategoricalPolicy, GaussianPolicy, log_prob

torch.set_num_threads(1)  # tiny tensors: threads only add overhead on the shared CI cores


def random_logits(mdp, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(mdp.n_states, mdp.n_actions, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------- C7
@pytest.mark.parametrize("seed", range(5))
def test_surrogate_matches_objective_value_and_gradient_at_old_policy(seed):
    mdp = tb.random_mdp(n_states=6, n_actions=3, gamma=0.9, seed=seed)
    theta_old = random_logits(mdp, seed)
    pi_old = tb.softmax_policy(theta_old)
    assert abs(float(tb.surrogate_objective(mdp, pi_old, pi_old) - tb.expected_return(mdp, pi_old))) < 1e-10
    theta = theta_old.clone().requires_grad_(True)
    (grad_L,) = torch.autograd.grad(tb.surrogate_objective(mdp, pi_old, tb.softmax_policy(theta)), theta)
    grad_J = tb.exact_policy_gradient(mdp, theta_old)
    assert torch.allclose(grad_L, grad_J, atol=1e-8, rtol=0)
    # away from theta_old the two differ (the surrogate uses the old visitation): the match is local
    pi_far = tb.softmax_policy(theta_old + random_logits(mdp, seed + 100, scale=2.0))
    assert abs(float(tb.surrogate_objective(mdp, pi_old, pi_far) - tb.expected_return(mdp, pi_far))) > 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_performance_difference_identity_is_exact(seed):
    mdp = tb.random_mdp(n_states=5, n_actions=4, gamma=0.95, seed=seed)
    pi_old = tb.softmax_policy(random_logits(mdp, seed))
    pi_new = tb.softmax_policy(random_logits(mdp, seed + 50, scale=3.0))
    assert abs(float(tb.performance_difference(mdp, pi_old, pi_new) - tb.expected_return(mdp, pi_new))) < 1e-9


# --------------------------------------------------------------------- C8
def test_cpi_and_trpo_lower_bounds_hold_on_many_random_policy_pairs():
    checked = 0
    for seed in range(20):
        mdp = tb.random_mdp(n_states=4, n_actions=3, gamma=0.8 + 0.01 * seed, seed=seed)
        for j in range(10):
            pi_old = tb.softmax_policy(random_logits(mdp, 1000 * seed + j, scale=1.5))
            pi_prime = tb.softmax_policy(random_logits(mdp, 1000 * seed + j + 500, scale=3.0))
            for alpha in (0.01, 0.1, 0.5, 1.0):
                J, bound = tb.cpi_lower_bound(mdp, pi_old, pi_prime, alpha)
                assert float(J) >= float(bound) - 1e-10
            J, bound = tb.trpo_lower_bound(mdp, pi_old, pi_prime)
            assert float(J) >= float(bound) - 1e-10
            # the gap J - bound is second order in the step: 10x smaller step, ~100x smaller gap
            gaps = []
            for mix in (0.01, 0.001):
                J, bound = tb.trpo_lower_bound(mdp, pi_old, (1 - mix) * pi_old + mix * pi_prime)
                gaps.append(float(J - bound))
            assert 0 <= gaps[1] < 0.05 * gaps[0]
            checked += 1
    assert checked == 200


# --------------------------------------------------------------------- C9
def _tiny(kind):
    torch.manual_seed(0)
    if kind == "categorical":
        policy = CategoricalPolicy(3, 4, hidden=(5,)).double()
    else:
        policy = GaussianPolicy(3, 2, hidden=(5,), log_std_init=-0.3).double()
    # make the logits/means non-trivial (the default init scales the output layer by 0.01)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    obs = torch.randn(7, 3, dtype=torch.float64)
    return policy, obs


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_fisher_vector_product_equals_explicit_hessian_of_kl(kind):
    policy, obs = _tiny(kind)
    theta0 = flat_params(policy)
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    with torch.no_grad():
        old = _detached(policy.distribution(obs))

    def kl_of_flat(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            params[n] = flat[i:i + k].view(s)
            i += k
        dist = functional_call(policy, params, (obs,))
        kl = torch.distributions.kl_divergence(old, dist)
        return (kl.sum(-1) if kind == "gaussian" else kl).mean()

    H = torch.autograd.functional.hessian(kl_of_flat, theta0)
    assert H.shape == (theta0.numel(), theta0.numel())
    assert torch.allclose(H, H.T, atol=1e-12)
    assert torch.linalg.eigvalsh(H).min() > -1e-10  # the Fisher matrix is positive semi-definite
    g = torch.Generator().manual_seed(1)
    for damping in (0.0, 0.1):
        v = torch.randn(theta0.numel(), generator=g, dtype=torch.float64)
        fvp = fisher_vector_product(policy, obs, v, damping)
        assert torch.allclose(fvp, H @ v + damping * v, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_fisher_operator_gives_the_same_products(kind):
    """trpo_step's operator (grad KL built once, reused for every product) equals fisher_vector_product exactly,
    product after product, as conjugate gradient calls it."""
    policy, obs = _tiny(kind)
    g = torch.Generator().manual_seed(2)
    for damping in (0.0, 0.1):
        fvp = fisher_operator(policy, obs, damping)
        for _ in range(3):
            v = torch.randn(flat_params(policy).numel(), generator=g, dtype=torch.float64)
            torch.testing.assert_close(fvp(v), fisher_vector_product(policy, obs, v, damping), rtol=0, atol=0)


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    n = 30
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(0.5, 5.0, n, dtype=torch.float64)) @ Q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=n, tol=1e-20)
    assert torch.linalg.norm(A @ x - b) < 1e-8 * torch.linalg.norm(b)
    # 10 iterations (TRPO's default) already reduce the residual by orders of magnitude here
    x10 = conjugate_gradient(lambda v: A @ v, b, iters=10)
    assert torch.linalg.norm(A @ x10 - b) < 1e-2 * torch.linalg.norm(b)
    with pytest.raises(ValueError):
        conjugate_gradient(lambda v: A @ v, b, iters=0)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_conjugate_gradient_with_fisher_vector_products(kind):
    policy, obs = _tiny(kind)
    P = flat_params(policy).numel()
    b = torch.randn(P, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    damping = 0.1
    x = conjugate_gradient(lambda v: fisher_vector_product(policy, obs, v, damping), b, iters=10 * P, tol=1e-24)
    residual = fisher_vector_product(policy, obs, x, damping) - b
    assert torch.linalg.norm(residual) < 1e-6 * torch.linalg.norm(b)


def _batch(policy, obs, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dist = policy.distribution(obs)
        torch.manual_seed(seed)
        actions = dist.sample()
        old_logp = log_prob(dist, actions)
    adv = torch.randn(obs.shape[0], generator=g, dtype=torch.float64)
    return actions, old_logp, adv


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
@pytest.mark.parametrize("max_kl", [1e-3, 1e-2, 5e-2])
def test_accepted_step_satisfies_kl_constraint_and_improves_surrogate(kind, max_kl):
    policy, obs = _tiny(kind)
    obs = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    actions, old_logp, adv = _batch(policy, obs)
    with torch.no_grad():
        old_dist = _detached(policy.distribution(obs))
        loss_before = float(surrogate_loss(log_prob(policy.distribution(obs), actions), old_logp, adv))
    info = trpo_step(policy, obs, actions, old_logp, adv, max_kl=max_kl, damping=0.01)
    assert info["accepted"]
    with torch.no_grad():
        kl = float(mean_kl(policy, obs, old_dist))
        loss_after = float(surrogate_loss(log_prob(policy.distribution(obs), actions), old_logp, adv))
    assert 0 < kl <= max_kl
    assert loss_after < loss_before
    assert abs(info["kl"] - kl) < 1e-12


def test_line_search_reverts_when_no_step_improves():
    policy, obs = _tiny("categorical")
    actions, old_logp, adv = _batch(policy, obs)
    old = flat_params(policy).clone()
    with torch.no_grad():
        old_dist = _detached(policy.distribution(obs))

    def loss_fn():
        return surrogate_loss(log_prob(policy.distribution(obs), actions), old_logp, adv)

    g = flat_grad(loss_fn(), policy)  # gradient of the loss: stepping along it makes the loss worse
    info = line_search(policy, loss_fn, lambda: mean_kl(policy, obs, old_dist), old, 0.1 * g, 1.0, max_kl=0.01)
    assert not info["accepted"]
    assert torch.equal(flat_params(policy), old)
    # and a huge step along the right direction is shrunk until the KL fits
    info = line_search(policy, loss_fn, lambda: mean_kl(policy, obs, old_dist), old, -100.0 * g,
                       float(100.0 * g @ g), max_kl=1e-3, max_backtracks=30, accept_ratio=0.0)
    assert info["accepted"] and info["fraction"] < 1.0 and info["kl"] <= 1e-3
    set_flat_params(policy, old)
