"""Equation tests for reward models, the KL-regularised optimum, DPO, IPO and best-of-n.

eq-bradley-terry / eq-reward-model-loss / eq-bt-gradient / eq-bt-shift (:mod:`rlcore.llm.preferences`),
eq-kl-objective / eq-kl-optimum / eq-kl-optimum-value / eq-dpo-implicit-reward / eq-dpo-loss /
eq-dpo-gradient / eq-ipo-loss / eq-best-of-n / eq-best-of-n-kl (:mod:`rlcore.llm.dpo`).

Each identity is checked on small enumerated output sets in float64, against an independent computation:
a hand-written formula, autograd, or a numerical optimiser (L-BFGS on softmax logits) that knows nothing of
the closed forms.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from rlcore.llm.dpo import (best_of_n, best_of_n_distribution, best_of_n_kl, dpo_loss, implicit_reward, ipo_loss,
                            kl_regularized_objective, kl_regularized_optimum, kl_regularized_value)
from rlcore.llm.preferences import bradley_terry_loss, bradley_terry_prob

D = torch.float64


def _problem(K=6, seed=0):
    """A reference distribution with full support and distinct rewards over K outputs."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(K, generator=g, dtype=D) + 0.05
    ref = ref / ref.sum()
    rewards = torch.randn(K, generator=g, dtype=D) * 1.5
    return ref, rewards


def _maximise(f, K, seed=1, steps=3):
    """argmax over the simplex of ``f(pi)`` by L-BFGS on softmax logits (no closed form involved)."""
    theta = (0.1 * torch.randn(K, generator=torch.Generator().manual_seed(seed), dtype=D)).requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -f(torch.softmax(theta, -1))
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return torch.softmax(theta.detach(), -1)


# ------------------------------------------------------------------ eq-bradley-terry, eq-reward-model-loss
def test_bradley_terry_loss_and_gradient_match_the_formula():
    g = torch.Generator().manual_seed(0)
    B = 7
    r_c = (torch.randn(B, generator=g, dtype=D) * 3).requires_grad_(True)
    r_r = (torch.randn(B, generator=g, dtype=D) * 3).requires_grad_(True)
    loss = bradley_terry_loss(r_c, r_r)
    by_hand = -sum(math.log(1.0 / (1.0 + math.exp(-(a - b)))) for a, b in zip(r_c.tolist(), r_r.tolist())) / B
    assert loss.item() == pytest.approx(by_hand, rel=1e-12)
    loss.backward()
    sig = torch.sigmoid(r_r.detach() - r_c.detach())  # sigma(r_l - r_w)
    torch.testing.assert_close(r_c.grad, -sig / B, rtol=1e-12, atol=1e-15)  # eq-bt-gradient
    torch.testing.assert_close(r_r.grad, sig / B, rtol=1e-12, atol=1e-15)
    # the probability of the model (eq-bradley-terry), and P(a > b) + P(b > a) = 1
    p = bradley_terry_prob(r_c.detach(), r_r.detach())
    torch.testing.assert_close(p, 1 / (1 + torch.exp(-(r_c.detach() - r_r.detach()))))
    torch.testing.assert_close(p + bradley_terry_prob(r_r.detach(), r_c.detach()), torch.ones(B, dtype=D))
    assert loss.item() == pytest.approx(-torch.log(p).mean().item(), rel=1e-12)


def test_bradley_terry_loss_is_finite_for_huge_margins():
    r = torch.tensor([-500.0, 500.0], dtype=torch.float32)
    loss = bradley_terry_loss(r, torch.zeros(2))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(250.0, rel=1e-6)  # (500 + ~0) / 2


@pytest.mark.parametrize("shift", ["common", "per_pair"])
def test_bradley_terry_is_invariant_to_a_reward_shift(shift):
    """eq-bt-shift: r(x, y) + c(x) gives the same loss and the same gradient."""
    g = torch.Generator().manual_seed(1)
    B = 5
    r_c, r_r = torch.randn(B, generator=g, dtype=D), torch.randn(B, generator=g, dtype=D)
    c = torch.full((B,), 17.3, dtype=D) if shift == "common" else torch.randn(B, generator=g, dtype=D) * 10
    grads = []
    losses = []
    for s in (torch.zeros(B, dtype=D), c):
        a, b = (r_c + s).requires_grad_(True), (r_r + s).requires_grad_(True)
        loss = bradley_terry_loss(a, b)
        loss.backward()
        losses.append(loss.item())
        grads.append((a.grad, b.grad))
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-10, atol=1e-14)
    # a shift of only the chosen side is not invariant: the check above can fail
    assert bradley_terry_loss(r_c + 1.0, r_r).item() != pytest.approx(losses[0], rel=1e-6)


# ------------------------------------------------------------------ eq-kl-objective, eq-kl-optimum, eq-kl-optimum-value
@pytest.mark.parametrize("beta", [0.05, 0.5, 3.0])
def test_kl_optimum_is_the_numerical_maximiser_and_its_value_is_beta_log_z(beta):
    ref, rewards = _problem(K=7, seed=2)
    pi_star = kl_regularized_optimum(ref, rewards, beta)
    found = _maximise(lambda pi: kl_regularized_objective(pi, ref, rewards, beta), K=7)
    torch.testing.assert_close(found, pi_star, rtol=1e-6, atol=1e-8)
    value = kl_regularized_value(ref, rewards, beta)
    by_hand = beta * math.log(sum(p * math.exp(r / beta) for p, r in zip(ref.tolist(), rewards.tolist())))
    assert value.item() == pytest.approx(by_hand, rel=1e-12)
    assert kl_regularized_objective(pi_star, ref, rewards, beta).item() == pytest.approx(by_hand, rel=1e-10)
    assert kl_regularized_objective(found, ref, rewards, beta).item() == pytest.approx(by_hand, rel=1e-9)
    # the objective by hand: E_pi[r] - beta KL(pi || ref), at pi*
    kl = sum(p * math.log(p / q) for p, q in zip(pi_star.tolist(), ref.tolist()))
    e_r = sum(p * r for p, r in zip(pi_star.tolist(), rewards.tolist()))
    assert e_r - beta * kl == pytest.approx(by_hand, rel=1e-10)


def test_objective_is_beta_log_z_minus_beta_kl_to_the_optimum():
    """J(pi) = beta log Z - beta KL(pi || pi*) for any pi: why pi* is the unique maximiser."""
    ref, rewards = _problem(K=6, seed=3)
    beta = 0.4
    pi_star = kl_regularized_optimum(ref, rewards, beta)
    for s in range(5):
        pi = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(10 + s), dtype=D) * 2, -1)
        kl_to_star = (pi * (pi / pi_star).log()).sum()
        assert kl_regularized_objective(pi, ref, rewards, beta).item() == pytest.approx(
            (kl_regularized_value(ref, rewards, beta) - beta * kl_to_star).item(), rel=1e-10, abs=1e-12)


def test_kl_optimum_is_stable_and_has_the_right_limits():
    ref, rewards = _problem(K=5, seed=4)
    huge = kl_regularized_optimum(ref, rewards * 1e4, 1e-3)  # exp(1e7) would overflow without log space
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge, F.one_hot(rewards.argmax(), 5).to(D))  # beta -> 0: the argmax
    torch.testing.assert_close(kl_regularized_optimum(ref, rewards, 1e9), ref)  # beta -> inf: the reference
    ref0 = ref.clone()
    ref0[int(rewards.argmax())] = 0.0  # the best output is outside the reference's support
    ref0 = ref0 / ref0.sum()
    assert kl_regularized_optimum(ref0, rewards, 0.1)[int(rewards.argmax())].item() == 0.0
    # batched over leading axes
    both = kl_regularized_optimum(torch.stack([ref, ref]), torch.stack([rewards, 2 * rewards]), 0.5)
    torch.testing.assert_close(both[1], kl_regularized_optimum(ref, 2 * rewards, 0.5))


# ------------------------------------------------------------------ eq-dpo-implicit-reward
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_implicit_reward_of_the_optimum_is_the_reward_minus_beta_log_z(beta):
    ref, rewards = _problem(K=8, seed=5)
    pi_star = kl_regularized_optimum(ref, rewards, beta)
    log_z = kl_regularized_value(ref, rewards, beta) / beta
    r_hat = implicit_reward(pi_star.log(), ref.log(), beta)
    torch.testing.assert_close(r_hat, rewards - beta * log_z, rtol=1e-10, atol=1e-10)
    # so every reward difference is recovered exactly
    torch.testing.assert_close(r_hat[:, None] - r_hat[None, :], rewards[:, None] - rewards[None, :],
                               rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ eq-dpo-loss, eq-dpo-gradient
def test_dpo_loss_matches_the_formula():
    g = torch.Generator().manual_seed(6)
    pc, pr, rc, rr = (torch.randn(4, generator=g, dtype=D) * 5 - 20 for _ in range(4))
    beta = 0.3
    out = dpo_loss(pc, pr, rc, rr, beta, reduction="none")
    by_hand = [-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d)))))
               for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    torch.testing.assert_close(out.loss, torch.tensor(by_hand, dtype=D), rtol=1e-12, atol=1e-14)
    assert dpo_loss(pc, pr, rc, rr, beta).loss.item() == pytest.approx(sum(by_hand) / 4, rel=1e-12)
    torch.testing.assert_close(out.chosen_rewards, beta * (pc - rc))
    torch.testing.assert_close(out.rejected_rewards, beta * (pr - rr))
    assert out.metrics["rewards/accuracies"] == pytest.approx(float(((pc - rc) > (pr - rr)).double().mean()))
    assert out.metrics["rewards/margins"] == pytest.approx(float((beta * ((pc - rc) - (pr - rr))).mean()))
    # at pi = pi_ref every pair costs log 2
    assert dpo_loss(rc, rr, rc, rr, beta).loss.item() == pytest.approx(math.log(2), rel=1e-12)


def test_dpo_gradient_identity_on_a_softmax_policy():
    """eq-dpo-gradient: grad = -beta/B sum_i sigma(r_l - r_w) (grad log pi(y_w) - grad log pi(y_l)),
    with grad_theta log softmax(theta)_y = e_y - pi for a softmax policy over K outputs."""
    K, beta = 6, 0.7
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(K, generator=g, dtype=D).requires_grad_(True)
    ref = torch.softmax(torch.randn(K, generator=g, dtype=D), -1)
    w = torch.tensor([0, 1, 2, 5, 3])
    lo = torch.tensor([1, 4, 0, 2, 3 + 2])
    logpi = torch.log_softmax(theta, -1)
    out = dpo_loss(logpi[w], logpi[lo], ref.log()[w], ref.log()[lo], beta)
    out.loss.backward()
    pi = torch.softmax(theta.detach(), -1)
    eye = torch.eye(K, dtype=D)
    weight = torch.sigmoid(out.rejected_rewards - out.chosen_rewards)  # sigma(r_hat_l - r_hat_w)
    expected = -beta * (weight[:, None] * ((eye[w] - pi) - (eye[lo] - pi))).mean(0)
    torch.testing.assert_close(theta.grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("beta,weights", [(0.5, "uniform"), (0.2, "random"), (2.0, "random")])
def test_dpo_population_minimiser_is_the_kl_optimum(beta, weights):
    """Comparisons of every pair of outputs, labelled by the Bradley–Terry model of a reward r: the policy
    minimising the expected DPO loss is pi* of eq-kl-optimum for r (probabilities identified: all pairs have data)."""
    K = 6
    ref, r = _problem(K=K, seed=8)
    i, j = torch.triu_indices(K, K, offset=1)
    p_ij = torch.sigmoid(r[i] - r[j])  # P(i > j) under eq-bradley-terry
    gw = torch.Generator().manual_seed(9)
    w = torch.ones(i.numel(), dtype=D) if weights == "uniform" else torch.rand(i.numel(), generator=gw, dtype=D) + 0.1

    def neg_expected_loss(pi):
        logpi = pi.log()
        lref = ref.log()
        l_ij = dpo_loss(logpi[i], logpi[j], lref[i], lref[j], beta, reduction="none").loss  # i chosen
        l_ji = dpo_loss(logpi[j], logpi[i], lref[j], lref[i], beta, reduction="none").loss  # j chosen
        return -(w * (p_ij * l_ij + (1 - p_ij) * l_ji)).sum()

    found = _maximise(neg_expected_loss, K=K)
    torch.testing.assert_close(found, kl_regularized_optimum(ref, r, beta), rtol=1e-5, atol=1e-7)
    # and not the optimum for another beta (the check can fail)
    assert not torch.allclose(found, kl_regularized_optimum(ref, r, 2 * beta), rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ eq-ipo-loss
def test_ipo_loss_matches_the_formula_and_is_minimal_at_the_target_margin():
    g = torch.Generator().manual_seed(10)
    pc, pr, rc, rr = (torch.randn(5, generator=g, dtype=D) * 4 - 10 for _ in range(4))
    tau = 0.25
    out = ipo_loss(pc, pr, rc, rr, tau, reduction="none")
    by_hand = [(((a - c) - (b - d)) - 1 / (2 * tau)) ** 2 for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(),
                                                                                 rr.tolist())]
    torch.testing.assert_close(out.loss, torch.tensor(by_hand, dtype=D), rtol=1e-12, atol=1e-14)
    assert ipo_loss(pc, pr, rc, rr, tau).loss.item() == pytest.approx(sum(by_hand) / 5, rel=1e-12)
    # zero exactly at h = 1/(2 tau), where the DPO loss would still push further
    h = torch.tensor([1 / (2 * tau)], dtype=D).requires_grad_(True)
    z = torch.zeros(1, dtype=D)
    loss = ipo_loss(h, z, z, z, tau).loss
    loss.backward()
    assert loss.item() == 0.0 and h.grad.item() == 0.0
    h.grad = None
    dpo_loss(h, z, z, z, tau).loss.backward()
    assert h.grad.item() < 0


def test_ipo_population_minimiser_uses_win_rates_not_rewards():
    """IPO's minimiser with all pairs weighted equally (Azar et al. 2023, Psi = identity, mu uniform):
    pi(y) proportional to pi_ref(y) exp( E_{y' ~ U}[p(y > y')] / tau ), with p(y > y) = 1/2."""
    K, tau = 5, 0.3
    ref, r = _problem(K=K, seed=11)
    p = torch.sigmoid(r[:, None] - r[None, :])  # p[a, b] = P(a > b); the diagonal is 1/2
    i, j = torch.triu_indices(K, K, offset=1)

    def neg_expected_loss(pi):
        logpi, lref = pi.log(), ref.log()
        l_ij = ipo_loss(logpi[i], logpi[j], lref[i], lref[j], tau, reduction="none").loss
        l_ji = ipo_loss(logpi[j], logpi[i], lref[j], lref[i], tau, reduction="none").loss
        return -(p[i, j] * l_ij + p[j, i] * l_ji).sum()

    found = _maximise(neg_expected_loss, K=K)
    expected = torch.softmax(ref.log() + p.mean(1) / tau, -1)
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(found, kl_regularized_optimum(ref, r, tau), atol=1e-3)


# ------------------------------------------------------------------ eq-best-of-n, eq-best-of-n-kl
def test_best_of_n_picks_the_argmax_first_on_ties():
    g = torch.Generator().manual_seed(12)
    r = torch.randn(9, 4, generator=g)
    idx, best = best_of_n(r, 4)
    for m in range(9):
        row = r[m].tolist()
        assert int(idx[m]) == 4 * m + row.index(max(row)) and best[m].item() == max(row)
    idx_flat, best_flat = best_of_n(r.flatten(), 4)
    assert torch.equal(idx_flat, idx) and torch.equal(best_flat, best)
    idx_tie, _ = best_of_n(torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0, 2.0]), 3)
    assert idx_tie.tolist() == [1, 4]


def test_best_of_n_distribution_matches_selection_by_monte_carlo():
    """eq-best-of-n: the exact distribution vs the frequencies of best_of_n on draws from pi_ref (ties included)."""
    ref = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.10], dtype=D)
    rewards = torch.tensor([0.0, 2.0, 1.0, 2.0, -1.0], dtype=D)  # outputs 1 and 3 tie
    n, M = 4, 200_000
    exact = best_of_n_distribution(ref, rewards, n)
    assert exact.sum().item() == pytest.approx(1.0, abs=1e-12)
    # by hand: P(max reward = 2) = 1 - (1 - 0.40)^4, shared 0.25 : 0.15
    assert exact[1].item() == pytest.approx((1 - 0.6 ** 4) * 0.25 / 0.40, rel=1e-12)
    assert exact[4].item() == pytest.approx(0.10 ** 4, rel=1e-12)
    g = torch.Generator().manual_seed(13)
    draws = torch.multinomial(ref.float(), M * n, replacement=True, generator=g)  # [M * n] output ids
    # a random order among tied samples: add a tiny random tie-breaker below the reward resolution
    noisy = rewards[draws] + 1e-9 * torch.rand(M * n, generator=g, dtype=D)
    idx, _ = best_of_n(noisy, n)
    freq = torch.bincount(draws[idx], minlength=5).to(D) / M
    torch.testing.assert_close(freq, exact, atol=4e-3, rtol=0)  # ~ 4 standard errors


def _kl(p, q):
    m = p > 0
    return float((p[m] * (p[m] / q[m]).log()).sum())


@pytest.mark.parametrize("n", [2, 4, 16])
def test_best_of_n_kl_is_bounded_by_log_n_minus_and_reached_as_the_support_grows(n):
    bound = best_of_n_kl(n)
    assert bound == pytest.approx(math.log(n) - (n - 1) / n, rel=1e-15)
    gaps = []
    for K in (2, 8, 64, 1024, 16384):
        ref = torch.full((K,), 1.0 / K, dtype=D)
        rewards = torch.randperm(K, generator=torch.Generator().manual_seed(K)).to(D)  # distinct
        kl = _kl(best_of_n_distribution(ref, rewards, n), ref)
        assert kl <= bound + 1e-12
        gaps.append(bound - kl)
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps  # closer and closer
    assert gaps[-1] < 2e-3 * max(bound, 0.1)
    # any reference distribution, ties or not, stays below the bound
    g = torch.Generator().manual_seed(n)
    for _ in range(5):
        ref = torch.rand(20, generator=g, dtype=D) + 0.01
        ref = ref / ref.sum()
        rewards = torch.randint(0, 6, (20,), generator=g).to(D)
        assert _kl(best_of_n_distribution(ref, rewards, n), ref) <= bound + 1e-12


@pytest.mark.parametrize("n", [2, 8])
def test_best_of_n_kl_monte_carlo_with_continuous_rewards(n):
    """Continuous rewards (uniform on [0, 1]): the best of n has density n u^(n-1), so the Monte Carlo mean of
    log(pi_bon / pi_ref) over selected samples estimates the KL; it matches log n - (n-1)/n."""
    M = 100_000
    u = torch.rand(M * n, generator=torch.Generator().manual_seed(14), dtype=D)
    _, best = best_of_n(u, n)
    kl_mc = (math.log(n) + (n - 1) * best.log()).mean().item()
    se = ((n - 1) * best.log()).std().item() / math.sqrt(M)
    assert abs(kl_mc - best_of_n_kl(n)) < 5 * se
