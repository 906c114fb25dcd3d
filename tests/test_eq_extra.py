"""Equation tests for the labelled equations that had no direct check of rlcore elsewhere.

Every test compares rlcore with an independent computation written out here from the book's
formula: exact small cases, enumeration, autograd identities, or Monte Carlo with a CLT bound
(``Z`` standard errors). The label each test checks is named in its docstring; book/coverage.md
maps every label of the book to its tests (checked by tests/test_book_coverage.py).
"""
import itertools
import math

import numpy as np
import pytest
import torch

from rlcore import tabular
from rlcore.returns import discounted_returns

Z = 5.0  # CLT bound in standard errors: a false failure has probability < 1e-6 per comparison


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is fastest (and CI has 2 shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _np_policy_values(P, R, gamma, pi):
    """Independent policy evaluation in numpy: ``Q = R + gamma P (pi . Q)`` solved as a linear system."""
    S, A = R.shape
    # unknowns Q[s, a]; Q = R + gamma * sum_{s'} P[s,a,s'] sum_{a'} pi[s',a'] Q[s',a']
    M = np.eye(S * A) - gamma * np.einsum("sat,tb->satb", P, pi).reshape(S * A, S * A)
    Q = np.linalg.solve(M, R.reshape(-1)).reshape(S, A)
    return (pi * Q).sum(1), Q


# ------------------------------------------------------------------ chapter 0
def test_softmax_policy_matches_formula():
    """eq-softmax-policy: ``pi(a|s) = exp(theta_sa) / sum_b exp(theta_sb)``, also for huge logits."""
    g = np.random.default_rng(0)
    theta = g.normal(size=(4, 3)) * 2
    pi = tabular.softmax_policy(torch.as_tensor(theta)).numpy()
    for s in range(4):
        z = sum(math.exp(t) for t in theta[s])
        for a in range(3):
            assert pi[s, a] == pytest.approx(math.exp(theta[s, a]) / z, rel=1e-12)
    # adding a constant per state leaves the formula unchanged; exp(1000) would overflow a naive version
    big = tabular.softmax_policy(torch.as_tensor(theta + 1000.0)).numpy()
    np.testing.assert_allclose(big, pi, rtol=1e-12)


def test_mdp_sampler_draws_rewards_and_next_states_from_p():
    """eq-mdp: rollouts of a TabularMDP (tabular.sample_returns) follow ``P(s'|s,a)`` and ``R(s,a)``:
    the mean 2-step return equals ``mu0 . (r_pi + gamma P_pi r_pi)`` computed by hand (CLT bound)."""
    mdp = tabular.random_mdp(n_states=5, n_actions=3, gamma=0.9, seed=4)
    pi = tabular.softmax_policy(torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    P, R, mu0, pi_np = mdp.P.numpy(), mdp.R.numpy(), mdp.mu0.numpy(), pi.numpy()
    r_pi = (pi_np * R).sum(1)
    P_pi = np.einsum("sa,sat->st", pi_np, P)
    for horizon, exact in [(1, mu0 @ r_pi), (2, mu0 @ (r_pi + mdp.gamma * P_pi @ r_pi))]:
        returns = tabular.sample_returns(mdp, pi, n_episodes=100_000, horizon=horizon, seed=horizon)
        se = returns.std(ddof=1) / math.sqrt(len(returns))
        assert abs(returns.mean() - exact) < Z * se, (horizon, returns.mean(), exact, se)
    # a wrong transition model must be detected: the reversed P_pi gives a different 2-step value
    wrong = mu0 @ (r_pi + mdp.gamma * P_pi.T @ r_pi)
    returns = tabular.sample_returns(mdp, pi, n_episodes=100_000, horizon=2, seed=2)
    assert abs(returns.mean() - wrong) > Z * returns.std(ddof=1) / math.sqrt(len(returns))


def test_values_and_advantages_are_expected_returns_monte_carlo():
    """eq-advantage: ``V(s) = E[G | s]``, ``Q(s,a) = E[G | s, a]`` and ``A = Q - V``, with rlcore's
    exact values checked against an independent numpy simulator started in every (s, a)."""
    mdp = tabular.random_mdp(n_states=4, n_actions=2, gamma=0.7, seed=11)
    pi = tabular.softmax_policy(torch.randn(4, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64))
    V, Q, A = tabular.state_values(mdp, pi), tabular.action_values(mdp, pi), tabular.advantage_values(mdp, pi)
    torch.testing.assert_close(A, Q - V[:, None], rtol=0, atol=1e-12)
    P, R, pi_np = mdp.P.numpy(), mdp.R.numpy(), pi.numpy()
    rng = np.random.default_rng(0)
    n, horizon = 6000, 60  # 0.7^60 < 1e-9: truncation is negligible
    S, Ac = R.shape
    for s0 in range(S):
        for a0 in [None, *range(Ac)]:  # None: first action from pi (estimates V), else forced (estimates Q)
            s = np.full(n, s0)
            total, disc = np.zeros(n), 1.0
            for t in range(horizon):
                if t == 0 and a0 is not None:
                    a = np.full(n, a0)
                else:
                    a = (rng.random(n)[:, None] > np.cumsum(pi_np[s], 1)).sum(1).clip(max=Ac - 1)
                total += disc * R[s, a]
                s = (rng.random(n)[:, None] > np.cumsum(P[s, a], 1)).sum(1).clip(max=S - 1)
                disc *= mdp.gamma
            exact = float(V[s0]) if a0 is None else float(Q[s0, a0])
            se = total.std(ddof=1) / math.sqrt(n)
            assert abs(total.mean() - exact) < Z * se + 1e-8, (s0, a0, total.mean(), exact, se)


def test_discounted_returns_match_definition_and_recursion():
    """eq-discounted-return: ``G_t = sum_k gamma^k r_{t+k} = r_t + gamma G_{t+1}`` within an episode,
    and nothing is carried across an episode end (``dones``)."""
    g = np.random.default_rng(1)
    r = g.normal(size=9)
    gamma = 0.93
    G = discounted_returns(torch.as_tensor(r), gamma).numpy()
    for t in range(9):
        assert G[t] == pytest.approx(sum(gamma**k * r[t + k] for k in range(9 - t)), abs=1e-12)
    np.testing.assert_allclose(G[:-1], r[:-1] + gamma * G[1:], atol=1e-12)
    dones = np.zeros(9)
    dones[3] = 1.0  # the first episode is steps 0..3
    G2 = discounted_returns(torch.as_tensor(r), gamma, dones=torch.as_tensor(dones)).numpy()
    for t in range(9):
        end = 4 if t <= 3 else 9
        assert G2[t] == pytest.approx(sum(gamma**k * r[t + k] for k in range(end - t)), abs=1e-12)


def test_state_distribution_is_normalised_discounted_visitation():
    """eq-eta and eq-dpi: ``eta^T = mu0^T (I - gamma P_pi)^{-1}`` (numpy solve) and
    ``d = eta / sum(eta) = (1 - gamma) eta``."""
    for seed in range(3):
        mdp = tabular.random_mdp(n_states=6, n_actions=3, gamma=0.85, seed=seed)
        pi = tabular.softmax_policy(torch.randn(6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        P_pi = np.einsum("sa,sat->st", pi.numpy(), mdp.P.numpy())
        eta = np.linalg.solve((np.eye(6) - mdp.gamma * P_pi).T, mdp.mu0.numpy())
        np.testing.assert_allclose(tabular.discounted_visitation(mdp, pi).numpy(), eta, atol=1e-12)
        d = tabular.state_distribution(mdp, pi).numpy()
        np.testing.assert_allclose(d, eta / eta.sum(), atol=1e-12)
        np.testing.assert_allclose(d, (1 - mdp.gamma) * eta, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_iteration_is_bellman_optimal_and_the_max_over_all_policies(seed):
    """eq-bellman-optimality, eq-q-star, eq-greedy-policy: value iteration's ``Q*`` solves
    ``Q = R + gamma P max_a' Q``, equals the element-wise maximum of ``Q^pi`` over *all* deterministic
    policies (enumerated, evaluated independently in numpy), ``V* = max_a Q*``, and the returned
    policy is ``argmax_a Q*``."""
    mdp = tabular.random_mdp(n_states=4, n_actions=3, gamma=0.9, seed=seed)
    V, Q, greedy = tabular.value_iteration(mdp)
    P, R = mdp.P.numpy(), mdp.R.numpy()
    Qn = Q.numpy()
    np.testing.assert_allclose(Qn, R + mdp.gamma * P @ Qn.max(1), atol=1e-8)
    np.testing.assert_allclose(V.numpy(), Qn.max(1), atol=1e-12)
    np.testing.assert_array_equal(greedy.numpy(), np.eye(3)[Qn.argmax(1)])
    best = np.full_like(Qn, -np.inf)
    for actions in itertools.product(range(3), repeat=4):  # all 81 deterministic policies
        _, Qpi = _np_policy_values(P, R, mdp.gamma, np.eye(3)[list(actions)])
        best = np.maximum(best, Qpi)
    np.testing.assert_allclose(Qn, best, atol=1e-8)


# ------------------------------------------------------------------ chapter 1
def test_dqn_act_is_greedy_when_deterministic():
    """eq-greedy-policy: ``rlcore.algos.dqn.act`` returns ``argmax_a Q(s, a)`` of the network."""
    from rlcore.algos import dqn

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 5)
    obs = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    with torch.no_grad():
        q = net(torch.as_tensor(obs)).numpy()
    np.testing.assert_array_equal(dqn.act(net, obs, deterministic=True), q.argmax(1))
    assert dqn.act(net, obs[7], deterministic=True) == int(q[7].argmax())
    # epsilon = 0 is greedy too
    np.testing.assert_array_equal(dqn.act(net, obs, deterministic=False, epsilon=0.0,
                                          rng=np.random.default_rng(0)), q.argmax(1))


def test_q_learning_update_matches_formula():
    """eq-q-learning: the reference update of chapter 1 (``rlcore.exercise_checks.ch01.q_learning_update``)
    on random tables and transitions, terminal and non-terminal."""
    from rlcore.exercise_checks.ch01 import q_learning_update

    g = np.random.default_rng(3)
    for _ in range(50):
        Q = g.normal(size=(5, 3))
        s, a, s2 = int(g.integers(5)), int(g.integers(3)), int(g.integers(5))
        r, alpha, gamma, term = float(g.normal()), float(g.uniform(0.01, 1)), float(g.uniform(0.5, 0.99)), bool(g.integers(2))
        new = q_learning_update(Q, s, a, r, s2, term, alpha, gamma)
        expected = Q.copy()
        expected[s, a] = Q[s, a] + alpha * (r + gamma * (1 - term) * Q[s2].max() - Q[s, a])
        np.testing.assert_allclose(new, expected, atol=1e-12)


@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_dqn_loss_is_huber_of_td_error_and_its_gradient_is_the_clipped_error(reduce):
    """eq-dqn-loss, eq-huber: ``rlcore.losses.dqn_loss(kind="huber")`` is ``(1/B) sum l_1(Q(s,a) - y)``
    with the piecewise Huber loss (kappa = 1), its gradient w.r.t. ``Q(s_i, a_i)`` is the TD error clipped
    to ``[-1, 1]`` (divided by B), no gradient reaches the other actions or the targets; kind="mse" is
    ``x^2 / 2``."""
    from rlcore.losses import dqn_loss

    B, A = 12, 3
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, A, generator=g, dtype=torch.float64).requires_grad_(True)
    actions = torch.randint(0, A, (B,), generator=g)
    errors = torch.linspace(-3, 3, B, dtype=torch.float64)  # both regions, and |x| = 1 nearby
    y = (q.detach()[torch.arange(B), actions] - errors).requires_grad_(True)

    def huber(x, kappa=1.0):
        return 0.5 * x * x if abs(x) <= kappa else kappa * (abs(x) - 0.5 * kappa)

    expected = [huber(float(x)) for x in errors]
    loss = dqn_loss(q, actions, y, kind="huber", reduce=reduce)
    if reduce == "none":
        np.testing.assert_allclose(loss.detach().numpy(), expected, atol=1e-12)
        loss = loss.mean()
    assert float(loss.detach()) == pytest.approx(np.mean(expected), abs=1e-12)
    gq, gy = torch.autograd.grad(loss, [q, y], allow_unused=True)
    want = torch.zeros(B, A, dtype=torch.float64)
    want[torch.arange(B), actions] = errors.clamp(-1, 1) / B
    torch.testing.assert_close(gq, want, rtol=0, atol=1e-12)
    assert gy is None or torch.all(gy == 0)  # the target is a constant (eq-dqn-target)
    mse = dqn_loss(q, actions, y, kind="mse", reduce="none")
    torch.testing.assert_close(mse.detach(), 0.5 * errors**2, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ chapter 2
def test_log_derivative_identity_for_rlcore_policies():
    """eq-log-derivative: ``grad pi(a|s) = pi(a|s) grad log pi(a|s)`` where ``pi`` is the density written
    out by hand (softmax of the logits; product of normal densities) and ``log pi`` is
    ``rlcore.networks.log_prob``: this also checks that log_prob is the log of that density."""
    from rlcore.networks import CategoricalPolicy, GaussianPolicy, log_prob

    torch.manual_seed(0)
    obs = torch.randn(6, 3, dtype=torch.float64)
    cat = CategoricalPolicy(3, 4, hidden=(5,)).double()
    actions = torch.tensor([0, 1, 2, 3, 1, 2])
    gau = GaussianPolicy(3, 2, hidden=(5,), log_std_init=-0.4).double()
    a_cont = torch.randn(6, 2, dtype=torch.float64)

    def cat_density():
        logits = cat.net(obs)
        e = torch.exp(logits - logits.max(-1, keepdim=True).values)
        return (e / e.sum(-1, keepdim=True))[torch.arange(6), actions]

    def gau_density():
        mu, sd = gau.mu(obs), gau.log_std.exp()
        return torch.prod(torch.exp(-0.5 * ((a_cont - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), -1)

    for policy, density, acts in [(cat, cat_density, actions), (gau, gau_density, a_cont)]:
        params = list(policy.parameters())
        for i in range(6):
            p = density()[i]
            lp = log_prob(policy.distribution(obs), acts)[i]
            assert float(lp.detach()) == pytest.approx(math.log(float(p.detach())), abs=1e-10)
            grad_p = torch.autograd.grad(p, params)
            grad_lp = torch.autograd.grad(lp, params)
            for gp, gl in zip(grad_p, grad_lp):
                torch.testing.assert_close(gp, p.detach() * gl, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ chapter 3
def test_sample_surrogate_estimates_the_tabular_surrogate():
    """eq-surrogate-sample: with ``s ~ d^{pi_old}``, ``a ~ pi_old`` and exact advantages, the mean of
    ``-rlcore.losses.surrogate_loss`` (per sample) estimates ``(1 - gamma)(L_{pi_old}(pi) - J(pi_old))``
    of ``rlcore.tabular.surrogate_objective`` (CLT bound)."""
    from rlcore.losses import surrogate_loss

    mdp = tabular.random_mdp(n_states=5, n_actions=3, gamma=0.9, seed=8)
    gen = torch.Generator().manual_seed(8)
    th_old = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    th_new = th_old + 0.7 * torch.randn(5, 3, generator=gen, dtype=torch.float64)
    pi_old, pi_new = tabular.softmax_policy(th_old), tabular.softmax_policy(th_new)
    target = (1 - mdp.gamma) * float(tabular.surrogate_objective(mdp, pi_old, pi_new) - tabular.expected_return(mdp, pi_old))
    d = tabular.state_distribution(mdp, pi_old)
    A = tabular.advantage_values(mdp, pi_old)
    n = 200_000
    s = torch.multinomial(d, n, replacement=True, generator=gen)
    a = torch.multinomial(pi_old[s], 1, generator=gen).squeeze(1)
    per = -surrogate_loss(torch.log(pi_new[s, a]), torch.log(pi_old[s, a]), A[s, a], reduce="none")
    se = float(per.std()) / math.sqrt(n)
    assert abs(float(per.mean()) - target) < Z * se, (float(per.mean()), target, se)
    assert abs(target) > 10 * se  # a non-trivial surrogate improvement, so the check has power


def _tiny_categorical(seed=0):
    from rlcore.networks import CategoricalPolicy

    torch.manual_seed(seed)
    policy = CategoricalPolicy(3, 4, hidden=(5,)).double()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    obs = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return policy, obs


def _explicit_fisher(policy, obs, damping=0.0):
    from rlcore.algos.trpo import fisher_vector_product, flat_params

    P = flat_params(policy).numel()
    eye = torch.eye(P, dtype=torch.float64)
    return torch.stack([fisher_vector_product(policy, obs, eye[i], damping) for i in range(P)], 1)


def test_fisher_is_expected_score_outer_product_and_negative_expected_hessian():
    """eq-fisher: the matrix of ``rlcore.algos.trpo.fisher_vector_product`` (columns F e_i) equals
    ``mean_s sum_a pi(a|s) grad log pi grad log pi^T`` and ``-mean_s sum_a pi(a|s) grad^2 log pi``
    (exact enumeration over the actions)."""
    from torch.func import functional_call

    from rlcore.algos.trpo import flat_params

    policy, obs = _tiny_categorical()
    F = _explicit_fisher(policy, obs)
    theta0 = flat_params(policy).detach()
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]

    def logits_of(flat):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            k = int(np.prod(shape))
            params[name] = flat[i:i + k].view(shape)
            i += k
        return functional_call(policy, params, (obs,)).logits

    J = torch.autograd.functional.jacobian(lambda th: torch.log_softmax(logits_of(th), -1), theta0)  # [S, A, P]
    p = torch.softmax(logits_of(theta0), -1).detach()
    outer = torch.einsum("sa,sai,saj->ij", p, J, J) / obs.shape[0]
    torch.testing.assert_close(F, outer, rtol=1e-8, atol=1e-10)
    neg_hess = -torch.autograd.functional.hessian(
        lambda th: (p * torch.log_softmax(logits_of(th), -1)).sum() / obs.shape[0], theta0)
    torch.testing.assert_close(F, neg_hess, rtol=1e-8, atol=1e-10)
    assert torch.linalg.eigvalsh(F).min() > -1e-10 and F.abs().max() > 1e-3


def test_trpo_full_step_is_the_scaled_natural_gradient():
    """eq-trpo-step: ``rlcore.algos.trpo.trpo_step`` moves the parameters by ``frac * Delta*`` with
    ``Delta* = sqrt(2 delta / (s^T F s)) s``, ``s = F^{-1} g`` (``F`` with the damping term, solved here
    with ``torch.linalg.solve`` on the explicit matrix), ``frac`` the accepted line-search fraction."""
    from rlcore.algos.trpo import flat_grad, flat_params, trpo_step
    from rlcore.losses import surrogate_loss
    from rlcore.networks import log_prob

    policy, obs = _tiny_categorical(seed=3)
    with torch.no_grad():
        dist = policy.distribution(obs)
        torch.manual_seed(3)
        actions = dist.sample()
        old_logp = log_prob(dist, actions)
    adv = torch.randn(obs.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    damping, delta = 0.05, 1e-3
    g = -flat_grad(surrogate_loss(log_prob(policy.distribution(obs), actions), old_logp, adv), policy)
    F = _explicit_fisher(policy, obs, damping)
    s = torch.linalg.solve(F, g)
    full = math.sqrt(2 * delta / float(s @ F @ s)) * s
    before = flat_params(policy).detach().clone()
    P = before.numel()
    info = trpo_step(policy, obs, actions, old_logp, adv, max_kl=delta, damping=damping, cg_iters=5 * P, cg_tol=1e-30)
    assert info["accepted"]
    step = flat_params(policy).detach() - before
    torch.testing.assert_close(step, info["fraction"] * full, rtol=1e-6, atol=1e-10)
    assert info["step_size"] == pytest.approx(math.sqrt(2 * delta / float(s @ F @ s)), rel=1e-6)


def test_conjugate_gradient_iterates_follow_the_recurrence():
    """eq-cg: after k iterations ``rlcore.algos.trpo.conjugate_gradient`` returns the k-th iterate of the
    recurrence (independent float64 implementation), and the n-th solves ``A x = b``."""
    from rlcore.algos.trpo import conjugate_gradient

    g = torch.Generator().manual_seed(5)
    n = 6
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x, r, p = np.zeros(n), b.numpy().copy(), b.numpy().copy()
    An = A.numpy()
    for k in range(1, n + 1):
        alpha = (r @ r) / (p @ An @ p)
        x = x + alpha * p
        r_new = r - alpha * An @ p
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
        ours = conjugate_gradient(lambda v: A @ v, b, iters=k, tol=0.0).numpy()
        np.testing.assert_allclose(ours, x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(An @ x, b.numpy(), atol=1e-8)


# ------------------------------------------------------------------ chapter 4
def test_explained_variance_matches_formula():
    """eq-explained-variance: ``1 - Var[R - V] / Var[R]`` (numpy), invariant to a constant offset in V."""
    from rlcore.losses import explained_variance

    g = np.random.default_rng(6)
    R = g.normal(size=200) * 3
    for V in [R + g.normal(size=200), 0.5 * R, g.normal(size=200)]:
        expected = 1 - np.var(R - V) / np.var(R)
        assert explained_variance(torch.as_tensor(V), torch.as_tensor(R)) == pytest.approx(expected, abs=1e-12)
        assert explained_variance(V + 7.0, R) == pytest.approx(expected, abs=1e-10)
    assert explained_variance(g.normal(size=200) * 10, R) < 0  # a bad critic is negative


def test_ppo_total_loss_combines_clip_entropy_and_value_terms(monkeypatch):
    """eq-ppo-total-loss: inside ``rlcore.algos.ppo.train`` the parameter gradient of every minibatch equals
    ``grad(-L^CLIP) - ent_coef * grad(mean entropy) + vf_coef * grad(L^V)``, each term's gradient taken
    separately (autograd) from the tensors rlcore.losses / rlcore.networks returned."""
    from rlcore.algos import ppo

    agents, terms, checked = [], {}, []

    class RecordingActorCritic(ppo.ActorCritic):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            agents.append(self)

    def grads(out):
        params = list(agents[0].parameters())
        gs = torch.autograd.grad(out, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, gs)]

    def wrap(name, fn, reduce_mean=False):
        def inner(*a, **k):
            out = fn(*a, **k)
            terms[name] = grads(out.mean() if reduce_mean else out)
            return out
        return inner

    real_clip = torch.nn.utils.clip_grad_norm_

    def checking_clip(parameters, *a, **k):
        parameters = list(parameters)
        if len(checked) < 6:
            expected = [pg - cfg.ent_coef * en + cfg.vf_coef * v
                        for pg, en, v in zip(terms["pg"], terms["ent"], terms["v"])]
            for p, e in zip(parameters, expected):
                torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)
            checked.append(True)
        return real_clip(parameters, *a, **k)

    monkeypatch.setattr(ppo, "ActorCritic", RecordingActorCritic)
    monkeypatch.setattr(ppo, "clipped_surrogate_loss", wrap("pg", ppo.clipped_surrogate_loss))
    monkeypatch.setattr(ppo, "value_loss", wrap("v", ppo.value_loss))
    monkeypatch.setattr(ppo, "entropy", wrap("ent", ppo.entropy, reduce_mean=True))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", checking_clip)
    cfg = ppo.PPOConfig(env_id="CartPole-v1", seed=0, total_timesteps=64, num_envs=2, num_steps=32,
                        update_epochs=3, num_minibatches=2, ent_coef=0.37, vf_coef=0.61)
    ppo.train(cfg, progress=False)
    assert len(checked) == 6 and len(agents) == 1


# ------------------------------------------------------------------ chapter 5
@pytest.fixture(scope="module")
def toy_lms():
    from rlcore.llm.models import tiny_model

    new, tok = tiny_model(seed=5, n_layer=1, d_model=32)
    old, _ = tiny_model(seed=6, n_layer=1, d_model=32)
    for m in (new, old):  # larger weights: non-trivial, different next-token distributions
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() == 2 and "embed" not in name:
                    p.mul_(4)
    return new, old, tok


def _padded(tok, prompts, comps):
    P, L = max(map(len, prompts)), max(map(len, comps))
    pad = tok.pad_token_id
    p_ids, p_mask = torch.full((len(prompts), P), pad), torch.zeros(len(prompts), P, dtype=torch.long)
    c_ids, c_mask = torch.full((len(comps), L), pad), torch.zeros(len(comps), L, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        p_ids[i, P - len(p):], p_mask[i, P - len(p):] = torch.tensor(p), 1  # left padding
        c_ids[i, :len(c)], c_mask[i, :len(c)] = torch.tensor(c), 1  # right padding
    return p_ids, p_mask, c_ids, c_mask


def test_token_logprobs_sum_is_the_sequence_logprob(toy_lms):
    """eq-sequence-logprob: ``rlcore.llm.sampling.token_logprobs`` gives ``log pi(o_t | q, o_<t)`` (checked
    against separate unpadded forward passes), and their sums over all ``V^2`` two-token completions are a
    probability distribution: ``sum_o exp(sum_t log pi(o_t|q,o_<t)) = 1`` (the chain rule)."""
    from rlcore.llm.sampling import token_logprobs

    model, _, tok = toy_lms
    prompts, comps = [[10, 11, 12], [13, 14]], [[20, 21, 22, 23], [24, 25]]
    lp = token_logprobs(model, *_padded(tok, prompts, comps), temperature=0.8)
    with torch.no_grad():
        for i, (p, c) in enumerate(zip(prompts, comps)):
            full = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0] / 0.8, -1)
            for t, tok_id in enumerate(c):
                assert float(lp[i, t]) == pytest.approx(float(full[len(p) + t - 1, tok_id]), abs=1e-4)
            assert float(lp[i, len(c):].abs().sum()) == 0.0
        V = len(tok)
        pairs = torch.tensor(list(itertools.product(range(V), repeat=2)))
        prompt = torch.tensor([[40, 41, 42]]).expand(len(pairs), -1)
        seq = token_logprobs(model, prompt, torch.ones_like(prompt), pairs, torch.ones_like(pairs)).double().sum(1)
    assert float(torch.logsumexp(seq, 0).exp()) == pytest.approx(1.0, abs=1e-5)


def test_token_ratio_is_the_ratio_of_token_probabilities(toy_lms):
    """eq-token-ratio: ``rlcore.losses.importance_ratio`` of two models' ``token_logprobs`` equals
    ``pi_theta(o_t|q,o_<t) / pi_old(o_t|q,o_<t)`` from softmax probabilities of separate forward passes."""
    from rlcore.losses import importance_ratio
    from rlcore.llm.sampling import token_logprobs

    new, old, tok = toy_lms
    prompts, comps = [[30, 31], [32, 33, 34]], [[50, 51, 52], [53]]
    batch = _padded(tok, prompts, comps)
    with torch.no_grad():
        ratio = importance_ratio(token_logprobs(new, *batch), token_logprobs(old, *batch))
        for i, (p, c) in enumerate(zip(prompts, comps)):
            x = torch.tensor([p + c])
            pn, po = torch.softmax(new(input_ids=x).logits[0], -1), torch.softmax(old(input_ids=x).logits[0], -1)
            for t, tok_id in enumerate(c):
                expected = float(pn[len(p) + t - 1, tok_id] / po[len(p) + t - 1, tok_id])
                assert float(ratio[i, t]) == pytest.approx(expected, rel=1e-4)
    assert float((ratio[batch[3].bool()] - 1).abs().max()) > 0.05  # the two models differ
