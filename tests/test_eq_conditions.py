"""The conditions under which the derivations of chapters 0-6 hold, checked exactly.

Each test backs one sentence of the book that states *when* a result holds (or why a constant is
what it is) by exact arithmetic on small enumerable cases, using rlcore where it implements the
quantity:

* ch0/ch2: J is the eta-weighted reward (always); the d^pi-Q form equals J only for a stationary mu0.
* ch3: Pinsker's inequality D_TV^2 <= KL/2 (tight near equal distributions) and the weaker form
  D_TV^2 <= KL that TRPO uses; the step |sum_a pi~(a|s) A^pi(s,a)| <= 2 D_TV(s) max|A| that turns
  CPI's constant 2 into TRPO's 4 (with an equality case); TRPO's Theorem 1 in its D_TV form; the
  sample surrogate weights states by the undiscounted visitation, which equals d^pi only when mu0
  is stationary.
* ch4: a constant offset in the critic leaves the explained variance unchanged but shifts the GAE
  advantages by an amount that depends on the distance to a termination.
* ch5: with V = 0 and lambda < 1 the first advantages are lambda-weighted rewards, not returns.
* ch6: on an enumerable "language model" (all sequences of a small autoregressive policy), the
  full-group mean centring is (G-1)/G times leave-one-out centring; a constant baseline times the
  sequence score has expectation 0, times the length-normalised score it has expectation
  b * grad E[1/|o|] != 0; the exact expected GRPO update is (G-1)/G grad J with the sum (Dr. GRPO)
  aggregation and not proportional to grad J with the 1/|o_i| aggregation; the std division keeps
  the direction for binary rewards only; k3 is unbiased for the KL's value but its gradient is
  that of the reversed KL.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rlcore import kl, losses, returns, tabular
from rlcore.llm.grpo import grpo_loss

F64 = torch.float64


# ===================================================================== chapters 0 and 2: the objective
def _stationary(P_pi):
    evals, evecs = torch.linalg.eig(P_pi.T)
    v = evecs[:, torch.argmin((evals - 1).abs())].real
    return v / v.sum()


def test_objective_is_the_reward_form_and_the_dpi_q_form_only_for_a_stationary_start():
    mdp = tabular.random_mdp(n_states=5, n_actions=3, gamma=0.9, seed=0)
    pi = tabular.softmax_policy(torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64))
    J = float(tabular.expected_return(mdp, pi))
    r_pi = (pi * mdp.R).sum(-1)
    eta, d = tabular.discounted_visitation(mdp, pi), tabular.state_distribution(mdp, pi)
    # always: J = sum_s eta(s) r_pi(s) = E_{s ~ d}[r_pi(s)] / (1 - gamma)
    assert float(eta @ r_pi) == pytest.approx(J, abs=1e-12)
    assert float(d @ r_pi) / (1 - mdp.gamma) == pytest.approx(J, abs=1e-12)
    # the d^pi-Q form sum_s d(s) sum_a Q(s,a) pi(a|s) = sum_s d(s) V(s) is a different number in general
    Q, V = tabular.action_values(mdp, pi), tabular.state_values(mdp, pi)
    dq_form = float((d[:, None] * Q * pi).sum())
    assert dq_form == pytest.approx(float(d @ V), abs=1e-12)
    assert abs(dq_form - J) > 1e-2
    # ... and equals J when mu0 is stationary under P_pi (then d = mu0)
    stat = _stationary(tabular.state_transition_matrix(mdp, pi))
    mdp_stat = tabular.TabularMDP(mdp.P, mdp.R, mdp.gamma, stat)
    d_stat = tabular.state_distribution(mdp_stat, pi)
    assert torch.allclose(d_stat, stat, atol=1e-10)
    assert float((d_stat[:, None] * Q * pi).sum()) == pytest.approx(float(tabular.expected_return(mdp_stat, pi)), abs=1e-10)


# ===================================================================== chapter 3: Pinsker and the 4
def _random_pairs(n=400, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=g, dtype=F64) * 3
    p = torch.softmax(scale * torch.randn(n, K, generator=g, dtype=F64), -1)
    q = torch.softmax(scale * torch.randn(n, K, generator=g, dtype=F64), -1)
    return p, q


def _tv(p, q):
    return 0.5 * (p - q).abs().sum(-1)


def test_pinsker_constant_is_one_half_and_trpo_uses_the_weaker_form():
    p, q = _random_pairs()
    tv2, kl_pq = _tv(p, q) ** 2, tabular.kl_per_state(p, q)
    ratio = tv2 / kl_pq
    assert float(ratio.max()) <= 0.5 + 1e-12          # Pinsker: D_TV^2 <= KL / 2
    assert bool((tv2 <= kl_pq).all())                  # hence the weaker D_TV^2 <= KL of TRPO
    # rlcore's per-state maxima satisfy the same inequality (max_tv^2 <= max_kl / 2)
    assert float(tabular.max_tv(p, q)) ** 2 <= 0.5 * float(tabular.max_kl(p, q)) + 1e-12
    # tight near equal distributions: p = (1/2 + d, 1/2 - d), q = uniform gives D_TV = d, KL ~ 2 d^2
    d = 1e-3
    p_close = torch.tensor([[0.5 + d, 0.5 - d]], dtype=F64)
    q_unif = torch.tensor([[0.5, 0.5]], dtype=F64)
    r = float(_tv(p_close, q_unif) ** 2 / tabular.kl_per_state(p_close, q_unif))
    assert 0.4999 < r <= 0.5                            # so no constant below 1/2 works (e.g. 1/4 fails)
    # the weaker form gives away exactly this factor 2: TRPO's C could be halved
    assert r > 0.25


def test_expected_advantage_of_any_policy_is_at_most_twice_tv_times_max_advantage():
    worst = 0.0
    for seed in range(30):
        mdp = tabular.random_mdp(n_states=4, n_actions=3, gamma=0.9, seed=seed)
        g = torch.Generator().manual_seed(100 + seed)
        pi = tabular.softmax_policy(2 * torch.randn(4, 3, generator=g, dtype=F64))
        pi_new = tabular.softmax_policy(2 * torch.randn(4, 3, generator=g, dtype=F64))
        A = tabular.advantage_values(mdp, pi)
        assert torch.allclose((pi * A).sum(-1), torch.zeros(4, dtype=F64), atol=1e-12)  # sum_a pi A = 0
        lhs = (pi_new * A).sum(-1).abs()
        # |sum_a (pi~ - pi) A| <= ||pi~ - pi||_1 max_a |A(s, a)| = 2 D_TV(s) max_a |A(s, a)|
        per_state = 2 * _tv(pi, pi_new) * A.abs().max(-1).values
        assert bool((lhs <= per_state + 1e-12).all())
        eps, alpha = A.abs().max(), tabular.max_tv(pi, pi_new)
        assert bool((lhs <= 2 * alpha * eps + 1e-12).all())
        worst = max(worst, float((lhs / per_state).max()))
    assert worst < 1.0
    # equality case: one state, two actions, R = (1, 0); pi uniform gives A = (1/2, -1/2); pi~ = (1, 0)
    mdp = tabular.TabularMDP(P=torch.ones(1, 2, 1), R=torch.tensor([[1.0, 0.0]]), gamma=0.5, mu0=torch.ones(1))
    pi = torch.tensor([[0.5, 0.5]], dtype=F64)
    pi_new = torch.tensor([[1.0, 0.0]], dtype=F64)
    A = tabular.advantage_values(mdp, pi)
    assert torch.allclose(A, torch.tensor([[0.5, -0.5]], dtype=F64), atol=1e-12)
    lhs = float((pi_new * A).sum())
    eps, alpha = float(A.abs().max()), float(tabular.max_tv(pi, pi_new))
    assert lhs == pytest.approx(2 * alpha * eps, abs=1e-12) == pytest.approx(0.5)
    assert lhs > alpha * eps                         # without the factor 2 the inequality is false


def test_trpo_theorem_1_in_total_variation_form():
    # J(pi~) >= L_pi(pi~) - 4 eps gamma alpha^2 / (1 - gamma)^2, alpha = D_TV^max, eps = max |A^pi|
    for seed in range(40):
        gamma = 0.5 + 0.012 * seed
        mdp = tabular.random_mdp(n_states=4, n_actions=3, gamma=gamma, seed=seed)
        g = torch.Generator().manual_seed(seed)
        pi = tabular.softmax_policy(1.5 * torch.randn(4, 3, generator=g, dtype=F64))
        pi_new = tabular.softmax_policy(3.0 * torch.randn(4, 3, generator=g, dtype=F64))
        eps = tabular.advantage_values(mdp, pi).abs().max()
        alpha = tabular.max_tv(pi, pi_new)
        bound = tabular.surrogate_objective(mdp, pi, pi_new) - 4 * eps * gamma * alpha**2 / (1 - gamma) ** 2
        assert float(tabular.expected_return(mdp, pi_new)) >= float(bound) - 1e-10
        # and the D_TV form implies the KL form of eq-trpo-bound, because alpha^2 <= max KL
        assert float(alpha) ** 2 <= float(tabular.max_kl(pi, pi_new)) + 1e-12


def _undiscounted_visitation(mdp, pi, horizon):
    """What a rollout of `horizon` steps weights states by: (1/H) sum_{t<H} Pr(s_t = s)."""
    P_pi = tabular.state_transition_matrix(mdp, pi)
    mu, total = mdp.mu0.clone(), torch.zeros_like(mdp.mu0)
    for _ in range(horizon):
        total += mu
        mu = mu @ P_pi
    return total / horizon


def test_sample_surrogate_state_weighting_is_exact_only_for_a_stationary_start():
    mdp = tabular.random_mdp(n_states=5, n_actions=3, gamma=0.9, seed=3)
    g = torch.Generator().manual_seed(0)
    pi_old = tabular.softmax_policy(torch.randn(5, 3, generator=g, dtype=F64))
    pi_new = tabular.softmax_policy(torch.randn(5, 3, generator=g, dtype=F64))
    A = tabular.advantage_values(mdp, pi_old)
    inner = (pi_new * A).sum(-1)                       # sum_a pi_new(a|s) A(s, a) = E_{pi_old}[ratio A]
    target = (1 - mdp.gamma) * float(tabular.surrogate_objective(mdp, pi_old, pi_new)
                                     - tabular.expected_return(mdp, pi_old))
    # states drawn from d^pi_old: exact (eq-surrogate-sample)
    assert float(tabular.state_distribution(mdp, pi_old) @ inner) == pytest.approx(target, abs=1e-12)
    # states weighted as a rollout weights them (undiscounted): a different number
    rollout = float(_undiscounted_visitation(mdp, pi_old, 200) @ inner)
    assert abs(rollout - target) > 1e-3
    # ... unless mu0 is stationary under P_pi_old: then d^pi = mu0 = the rollout's weighting
    stat = _stationary(tabular.state_transition_matrix(mdp, pi_old))
    mdp_stat = tabular.TabularMDP(mdp.P, mdp.R, mdp.gamma, stat)
    target_stat = (1 - mdp.gamma) * float(tabular.surrogate_objective(mdp_stat, pi_old, pi_new)
                                          - tabular.expected_return(mdp_stat, pi_old))
    assert float(_undiscounted_visitation(mdp_stat, pi_old, 200) @ inner) == pytest.approx(target_stat, abs=1e-10)


# ===================================================================== chapter 4: a constant critic offset
def test_constant_critic_offset_keeps_explained_variance_but_shifts_gae_unevenly():
    T, gamma, lam, c = 200, 0.99, 0.95, 5.0
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(T, generator=g, dtype=F64)
    V = torch.randn(T + 1, generator=g, dtype=F64)
    terminated = torch.zeros(T, dtype=F64)
    terminated[-1] = 1.0                               # the episode terminates at the last step
    truncated = torch.zeros(T, dtype=F64)
    adv = returns.gae(rewards, V[:-1], V[1:], terminated, truncated, gamma, lam)
    adv_c = returns.gae(rewards, V[:-1] + c, V[1:] + c, terminated, truncated, gamma, lam)
    rets = adv + V[:-1]
    ev = losses.explained_variance(V[:-1], rets)
    assert losses.explained_variance(V[:-1] + c, rets) == pytest.approx(ev, abs=1e-12)
    # TD errors: (gamma - 1) c on a non-terminating step, -c on the terminating one; GAE sums them
    shift = adv_c - adv
    x = gamma * lam
    for t in range(T):
        k = T - 1 - t                                   # non-terminating steps from t to the end
        expected = (gamma - 1) * c * (1 - x**k) / (1 - x) - c * x**k
        assert float(shift[t]) == pytest.approx(expected, abs=1e-10)
    # far from the end the shift approaches (gamma - 1) c / (1 - gamma lam); next to it, -c
    assert float(shift[0]) == pytest.approx((gamma - 1) * c / (1 - x), abs=1e-3)
    assert float(shift[-1]) == pytest.approx(-c, abs=1e-12)
    assert float(shift.max() - shift.min()) > 0.5 * c  # not a common shift: normalisation cannot remove it


# ===================================================================== chapter 5: a zero value head
def test_zero_critic_gives_lambda_weighted_rewards_not_returns():
    n, score, gamma = 6, 1.0, 1.0
    rewards = torch.zeros(n, dtype=F64)
    rewards[-1] = score                                 # the score on the last token, gamma = 1
    zeros = torch.zeros(n, dtype=F64)
    terminated = zeros.clone()
    terminated[-1] = 1.0
    for lam in (0.95, 1.0):
        adv = returns.gae(rewards, zeros, zeros, terminated, zeros, gamma, lam)
        expected = torch.tensor([lam ** (n - 1 - t) * score for t in range(n)], dtype=F64)
        assert torch.allclose(adv, expected, atol=1e-12)
    adv = returns.gae(rewards, zeros, zeros, terminated, zeros, gamma, 0.95)
    assert float(adv[0]) < 0.8 * score                 # with lambda < 1 the first token gets less than the return


# ===================================================================== chapter 6: an enumerable language model
VOCAB, L_MAX = 3, 3                                     # tokens 0 = "a", 1 = "b", 2 = EOS


def _sequences():
    """All completions of an autoregressive policy over {a, b, EOS} cut at L_MAX tokens."""
    seqs = []

    def grow(prefix):
        for tok in range(VOCAB):
            s = prefix + (tok,)
            if tok == 2 or len(s) == L_MAX:
                seqs.append(s)
            else:
                grow(s)
    grow(())
    prefixes = sorted({s[:t] for s in seqs for t in range(len(s))}, key=lambda p: (len(p), p))
    return seqs, {p: i for i, p in enumerate(prefixes)}


SEQS, PREFIX = _sequences()
TOKENS = torch.tensor([list(s) + [0] * (L_MAX - len(s)) for s in SEQS])
MASK = torch.tensor([[1.0] * len(s) + [0.0] * (L_MAX - len(s)) for s in SEQS], dtype=F64)
PREFIX_IDX = torch.tensor([[PREFIX[s[:t]] if t < len(s) else 0 for t in range(L_MAX)] for s in SEQS])
LENGTHS = MASK.sum(1)


def _policy(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(PREFIX), VOCAB, generator=g, dtype=F64).requires_grad_(True)


def _token_logp(W):
    """[S, L_MAX] log pi(o_t | o_<t) of every enumerated sequence (0 on padding)."""
    lp = torch.log_softmax(W, -1)[PREFIX_IDX, TOKENS]
    return lp * MASK


def _grad(f, W):
    (g,) = torch.autograd.grad(f, W, retain_graph=True)
    return g


def test_enumeration_is_a_distribution_with_varying_lengths():
    W = _policy()
    probs = _token_logp(W).sum(1).exp()
    assert len(SEQS) == 15 and set(LENGTHS.tolist()) == {1.0, 2.0, 3.0}
    assert float(probs.detach().sum()) == pytest.approx(1.0, abs=1e-12)


def test_full_group_mean_centring_is_g_minus_one_over_g_times_leave_one_out():
    g = torch.Generator().manual_seed(0)
    for G in (2, 4, 8):
        r = torch.rand(50, G, generator=g, dtype=F64)
        centred = returns.group_normalized_advantages(r, scale="none")
        loo = r - (r.sum(1, keepdim=True) - r) / (G - 1)
        assert torch.allclose(centred, (G - 1) / G * loo, atol=1e-12)
        assert not torch.allclose(centred, loo, atol=1e-3)   # the factor is real, not 1


def test_constant_baseline_is_unbiased_for_the_sum_but_not_for_the_length_normalised_score():
    W = _policy(1)
    logp = _token_logp(W)
    probs = logp.sum(1).exp()
    S, b = len(SEQS), 0.7
    # per-row weights b * pi(o) * S turn grpo_loss's batch average into the expectation over o ~ pi
    adv = (b * probs * S).detach()
    g_norm = _grad(grpo_loss(logp, logp.detach(), None, adv, MASK, loss_type="grpo")[0], W)
    g_sum = _grad(grpo_loss(logp, logp.detach(), None, adv, MASK, loss_type="dr_grpo", max_completion_length=L_MAX)[0], W)
    # sum aggregation: E[b grad log pi(o)] = b grad sum_o pi(o) = 0
    assert float(g_sum.abs().max()) < 1e-12
    # length-normalised: E[b (1/|o|) grad log pi(o)] = b grad E[1/|o|], not 0
    grad_inv_len = _grad((probs / LENGTHS).sum(), W)
    assert torch.allclose(g_norm, -b * grad_inv_len, atol=1e-12)
    assert float(g_norm.norm()) > 1e-2


def _group_expectation(W, reward, G, loss_type, scale):
    """Exact expected gradient of the GRPO loss over all G-tuples of i.i.d. completions, at theta_old."""
    logp = _token_logp(W)
    probs = logp.sum(1).exp().detach()
    S = len(SEQS)
    tuples = torch.tensor(list(itertools.product(range(S), repeat=G)))          # [S^G, G]
    weight = probs[tuples].prod(1)                                              # P(tuple)
    rows = tuples.reshape(-1)
    adv = returns.group_normalized_advantages(reward[tuples], scale=scale)      # per group
    adv = (adv * weight[:, None] * len(tuples)).reshape(-1)                     # expectation as a batch mean
    lp = logp[rows]
    loss, _ = grpo_loss(lp, lp.detach(), None, adv, MASK[rows], loss_type=loss_type, max_completion_length=L_MAX)
    return _grad(loss, W)


def _residual(g, direction):
    """Norm of the part of g orthogonal to `direction`, relative to |g|."""
    u = direction.flatten() / direction.norm()
    v = g.flatten()
    return float((v - (v @ u) * u).norm() / v.norm())


REWARDS = {
    "binary": torch.tensor([float("a" in "".join("ab."[t] for t in s)) for s in SEQS], dtype=F64),
    "three-valued": torch.tensor([float(sum(t == 0 for t in s)) for s in SEQS], dtype=F64).clamp(max=2),
}


@pytest.mark.parametrize("name", list(REWARDS))
def test_group_baseline_gives_the_policy_gradient_only_under_sum_aggregation(name):
    G = 3
    W = _policy(2)
    r = REWARDS[name]
    probs = _token_logp(W).sum(1).exp()
    grad_J = _grad((probs * r).sum(), W)
    J = float((probs * r).detach().sum())
    # sum aggregation (Dr. GRPO's constant normaliser G * L_MAX), mean-centred rewards:
    # expected loss gradient = -(1 / L_MAX) (G - 1) / G grad J, exactly
    g_sum = _group_expectation(W, r, G, "dr_grpo", "none")
    assert torch.allclose(g_sum, -(G - 1) / G / L_MAX * grad_J, atol=1e-12)
    # GRPO's 1/|o_i| aggregation: -(G - 1) / G (grad E[r/|o|] - J grad E[1/|o|]), not along grad J
    g_norm = _group_expectation(W, r, G, "grpo", "none")
    expected = -(G - 1) / G * (_grad((probs * r / LENGTHS).sum(), W) - J * _grad((probs / LENGTHS).sum(), W))
    assert torch.allclose(g_norm, expected, atol=1e-12)
    assert _residual(g_norm, grad_J) > 0.03               # exact arithmetic: rounding would give ~1e-15


def test_std_division_keeps_the_direction_for_binary_rewards_only():
    G = 3
    W = _policy(2)
    probs = _token_logp(W).sum(1).exp()
    # binary rewards: the weight of o_i depends on o_i only through r_i in {0, 1}: a multiple of grad J
    r = REWARDS["binary"]
    grad_J = _grad((probs * r).sum(), W)
    g = _group_expectation(W, r, G, "dr_grpo", "group")
    assert _residual(g, grad_J) < 1e-9
    assert float((g * grad_J).sum()) < 0                 # the loss gradient points against grad J: ascent
    # three reward values: the weight is a non-linear function of r_i, the direction changes
    r3 = REWARDS["three-valued"]
    grad_J3 = _grad((probs * r3).sum(), W)
    assert _residual(_group_expectation(W, r3, G, "dr_grpo", "group"), grad_J3) > 1e-3


def test_k3_is_unbiased_for_the_value_but_its_gradient_is_the_reversed_kl():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, dtype=F64).requires_grad_(True)
    ref_logits = torch.randn(6, generator=g, dtype=F64)
    logp, ref_logp = torch.log_softmax(theta, -1), torch.log_softmax(ref_logits, -1)
    p, p_ref = logp.exp(), ref_logp.exp()
    kl_forward = (p * (logp - ref_logp)).sum()          # KL(pi_theta || pi_ref)
    kl_reverse = (p_ref * (ref_logp - logp)).sum()      # KL(pi_ref || pi_theta)
    w = p.detach()                                       # exact expectation over x ~ pi_theta, samples fixed
    k3, k1 = kl.kl_k3(logp, ref_logp), kl.kl_k1(logp, ref_logp)
    # value: both unbiased
    assert float((w * k3).sum().detach()) == pytest.approx(float(kl_forward.detach()), abs=1e-12)
    assert float((w * k1).sum().detach()) == pytest.approx(float(kl_forward.detach()), abs=1e-12)
    # gradient of the estimator in the loss: k3 -> grad KL(ref || theta), k1 -> 0
    g_k3, g_k1 = _grad((w * k3).sum(), theta), _grad((w * k1).sum(), theta)
    g_fwd, g_rev = _grad(kl_forward, theta), _grad(kl_reverse, theta)
    assert torch.allclose(g_k3, g_rev, atol=1e-12)
    assert float(g_k1.abs().max()) < 1e-12
    assert float((g_k3 - g_fwd).norm()) > 0.1 * float(g_fwd.norm())   # not the gradient of the KL it estimates
    # near the reference the two gradients agree to first order in the distance (second order in the KL)
    th_close = (ref_logits + 1e-3 * torch.randn(6, generator=g, dtype=F64)).requires_grad_(True)
    lp_c = torch.log_softmax(th_close, -1)
    gf = _grad((lp_c.exp() * (lp_c - ref_logp)).sum(), th_close)
    gk3 = _grad((lp_c.exp().detach() * kl.kl_k3(lp_c, ref_logp)).sum(), th_close)
    assert float((gk3 - gf).norm()) < 1e-2 * float(gf.norm())
    assert math.isfinite(float(gk3.norm()))


def test_group_mean_is_not_a_baseline_by_itself_but_leave_one_out_is():
    # Under sum aggregation, E[mean(r) grad log pi(o_i)] != 0 (it contains r_i), E[r_bar_{-i} ...] = 0.
    G = 3
    W = _policy(4)
    r = REWARDS["three-valued"]
    logp = _token_logp(W)
    probs = logp.sum(1).exp()
    grad_J = _grad((probs * r).sum(), W)
    seq_logp = logp.sum(1)
    # E over o_i of [c grad log pi(o_i)] for a constant c is 0; the own-reward part r_i / G is not
    exp_mean_term = _grad((probs.detach() * (r / G + (G - 1) / G * float((probs * r).detach().sum())) * seq_logp).sum(), W)
    assert torch.allclose(exp_mean_term, grad_J / G, atol=1e-12)
    exp_loo_term = _grad((probs.detach() * float((probs * r).detach().sum()) * seq_logp).sum(), W)
    assert float(exp_loo_term.abs().max()) < 1e-12
    assert np.isfinite(float(grad_J.norm()))
