"""Checkers of chapter 3's exercises (rlcore.exercise_checks.ch03): independent right answers pass,
known mistakes fail with their hint, unfinished stubs get "not implemented yet" (no hint), and the
references the checkers use agree with independent computations (explicit matrices, numpy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence
from torch.func import functional_call

from rlcore.exercise_checks import ch03 as checks
from rlcore.exercises import ExerciseError

torch.set_num_threads(1)


# ------------------------------------------------------------------ independent solutions
def cg_numpy(Avp, b, iters):
    """Textbook CG (Nocedal & Wright, Alg. 5.2) in numpy, calling Avp on tensors."""
    b_np = b.numpy()
    x = np.zeros_like(b_np)
    r = b_np.copy()
    p = r.copy()
    for _ in range(iters):
        rr = r @ r
        if rr == 0:
            break
        Ap = Avp(torch.as_tensor(p)).numpy()
        alpha = rr / (p @ Ap)
        x += alpha * p
        r = r - alpha * Ap
        p = r + (r @ r) / rr * p
    return x


def fvp_explicit_hessian(policy, obs, v):
    """F v from the explicit Hessian of the mean KL (torch.func), no double backprop."""
    names = [n for n, _ in policy.named_parameters()]
    shapes = [p.shape for p in policy.parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in policy.parameters()])
    old = Categorical(logits=policy.distribution(obs).logits.detach())

    def kl(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            params[n] = flat[i:i + k].view(s)
            i += k
        return kl_divergence(old, functional_call(policy, params, (obs,))).mean()

    return torch.autograd.functional.hessian(kl, theta0) @ v


def fvp_fisher_expectation(policy, obs, v):
    """F v = mean_s sum_a pi(a|s) (score . v) score, the Fisher matrix as an expectation of outer products."""
    params = list(policy.parameters())
    logp = torch.log_softmax(policy.distribution(obs).logits, -1)
    probs = logp.exp().detach()
    out = torch.zeros_like(v)
    for s in range(obs.shape[0]):
        for a in range(logp.shape[1]):
            grads = torch.autograd.grad(logp[s, a], params, retain_graph=True)
            score = torch.cat([g.reshape(-1) for g in grads])
            out += probs[s, a] * (score @ v) * score
    return out / obs.shape[0]


def step_by_lagrangian(F, g, max_kl):
    """Maximise g.x s.t. x F x / 2 = delta via the eigenbasis of F (independent of the closed form)."""
    w, U = np.linalg.eigh(F.numpy())
    gt = U.T @ g.numpy()
    s = U @ (gt / w)  # F^{-1} g
    lam = np.sqrt((gt**2 / w).sum() / (2 * max_kl))  # from the constraint with x = s / lam
    return s / lam


def surrogate_numpy(P, R, gamma, mu0, pi_old, pi_new):
    """L by summing the series eta = sum_t gamma^t mu_t directly (no linear solve)."""
    P_pi = np.einsum("sa,sax->sx", pi_old, P)
    r_pi = (pi_old * R).sum(1)
    V = np.zeros(len(mu0))
    for _ in range(3000):
        V = r_pi + gamma * P_pi @ V
    Q = R + gamma * P @ V
    eta, mu = np.zeros(len(mu0)), mu0.copy()
    for t in range(3000):
        eta += gamma**t * mu
        mu = mu @ P_pi
    return mu0 @ V + (eta[:, None] * pi_new * (Q - V[:, None])).sum()


CHECKERS = [
    (checks.check_conjugate_gradient, cg_numpy),
    (checks.check_fisher_vector_product, fvp_fisher_expectation),
    (checks.check_trpo_step, step_by_lagrangian),
    (checks.check_surrogate_objective, surrogate_numpy),
]


@pytest.mark.parametrize("checker,solution", CHECKERS)
def test_independent_solution_passes(checker, solution, capsys):
    assert checker(solution) is True
    assert "✓" in capsys.readouterr().out
    assert checker(solution, raise_on_fail=True) is True


@pytest.mark.parametrize("checker,solution", CHECKERS)
def test_stub_returning_none_fails_with_a_clear_message(checker, solution, capsys):
    def stub(*args):
        ...

    assert checker(stub) is False
    out = capsys.readouterr().out
    assert "✗" in out and "returned None" in out and "not implemented yet" in out and "Hint" not in out
    with pytest.raises(ExerciseError):
        checker(stub, raise_on_fail=True)


@pytest.mark.parametrize("checker,solution", CHECKERS)
def test_perturbed_solution_fails(checker, solution, capsys):
    def off(*args):
        return 1.001 * np.asarray(solution(*args)) + 1e-3

    assert checker(off) is False
    assert "✗" in capsys.readouterr().out


def test_rlcore_references_pass():
    from rlcore import tabular
    from rlcore.algos.trpo import conjugate_gradient, fisher_vector_product

    assert checks.check_conjugate_gradient(lambda Avp, b, n: conjugate_gradient(Avp, b, n, tol=0.0))
    assert checks.check_fisher_vector_product(lambda pol, obs, v: fisher_vector_product(pol, obs, v, 0.0))

    def surrogate(P, R, gamma, mu0, pi_old, pi_new):
        mdp = tabular.TabularMDP(P, R, gamma, mu0)
        return tabular.surrogate_objective(mdp, torch.as_tensor(pi_old), torch.as_tensor(pi_new))

    assert checks.check_surrogate_objective(surrogate)


def test_fisher_reference_equals_explicit_hessian():
    from rlcore.algos.trpo import fisher_vector_product

    for seed in range(3):
        policy = checks.tiny_policy(3, 4, (5,), seed)
        obs = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        v = torch.randn(sum(p.numel() for p in policy.parameters()), dtype=torch.float64)
        assert torch.allclose(fisher_vector_product(policy, obs, v, 0.0), fvp_explicit_hessian(policy, obs, v),
                              atol=1e-10, rtol=1e-8)


def _hint_for(checker, wrong, capsys):
    assert checker(wrong) is False
    return capsys.readouterr().out


def test_cg_mistakes_are_named(capsys):
    def steepest_descent(Avp, b, iters):
        x, r = torch.zeros_like(b), b.clone()
        for _ in range(iters):
            Ar = Avp(r)
            alpha = (r @ r) / (r @ Ar)
            x, r = x + alpha * r, r - alpha * Ar
        return x

    assert "steepest descent" in _hint_for(checks.check_conjugate_gradient, steepest_descent, capsys)
    assert "fewer iterations" in _hint_for(checks.check_conjugate_gradient,
                                          lambda Avp, b, n: torch.linalg.solve(Avp.A, b), capsys)


def test_matvec_counts_calls_and_prints_its_matrix():
    mv = checks.MatVec(torch.eye(2))
    assert torch.equal(mv(torch.tensor([1.0, 2.0], dtype=torch.float64)), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert mv.calls == 1 and "A =" in repr(mv)


def test_fvp_mistakes_are_named(capsys):
    def not_detached(policy, obs, v):
        dist = policy.distribution(obs)
        kl = kl_divergence(dist, policy.distribution(obs)).mean()
        params = list(policy.parameters())
        grads = torch.autograd.grad(kl, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        out = torch.autograd.grad((flat * v).sum(), params, allow_unused=True)
        return torch.cat([torch.zeros(p.numel(), dtype=v.dtype) if o is None else o.reshape(-1)
                          for o, p in zip(out, params)])

    assert "cut from the autograd graph" in _hint_for(checks.check_fisher_vector_product, not_detached, capsys)

    def summed(policy, obs, v):
        return obs.shape[0] * fvp_fisher_expectation(policy, obs, v)

    assert "*mean* KL" in _hint_for(checks.check_fisher_vector_product, summed, capsys)


def test_step_mistakes_are_named(capsys):
    def no_two(F, g, d):
        s = torch.linalg.solve(F, g)
        return torch.sqrt(d / (s @ F @ s)) * s

    def vanilla(F, g, d):
        return torch.sqrt(2 * d / (g @ F @ g)) * g

    assert "factor one half" in _hint_for(checks.check_trpo_step, no_two, capsys)
    assert "natural gradient" in _hint_for(checks.check_trpo_step, vanilla, capsys)


def test_step_lands_on_the_kl_boundary():
    g = torch.Generator().manual_seed(0)
    for n, delta in [(3, 0.01), (10, 0.05)]:
        A = torch.randn(n, n, generator=g, dtype=torch.float64)
        F = A @ A.T + 0.1 * torch.eye(n, dtype=torch.float64)
        grad = torch.randn(n, generator=g, dtype=torch.float64)
        step = torch.as_tensor(step_by_lagrangian(F, grad, delta))
        assert abs(float(step @ F @ step) / 2 - delta) < 1e-10
        # and it beats every other direction on the boundary (sampled)
        for _ in range(50):
            d = torch.randn(n, generator=g, dtype=torch.float64)
            d = d * torch.sqrt(2 * delta / (d @ F @ d))
            assert float(grad @ d) <= float(grad @ step) + 1e-12


def test_surrogate_mistakes_are_named(capsys):
    from rlcore import tabular

    def exact_J(P, R, gamma, mu0, pi_old, pi_new):
        return tabular.expected_return(tabular.TabularMDP(P, R, gamma, mu0), torch.as_tensor(pi_new))

    def normalised(P, R, gamma, mu0, pi_old, pi_new):
        J = surrogate_numpy(P, R, gamma, mu0, pi_old, pi_old)
        return J + (1 - gamma) * (surrogate_numpy(P, R, gamma, mu0, pi_old, pi_new) - J)

    assert "*new* policy" in _hint_for(checks.check_surrogate_objective, exact_J, capsys)
    assert "unnormalised" in _hint_for(checks.check_surrogate_objective, normalised, capsys)


# ------------------------------------------------------------------ derivation: the Fisher matrix of a Gaussian
def _fisher_by_integration(m, sigma):
    import sympy as sp

    a, u = sp.symbols("a u", real=True)
    logp = -(a - m) ** 2 / (2 * sp.exp(2 * u)) - u - sp.log(2 * sp.pi) / 2
    scores = [sp.diff(logp, m), sp.diff(logp, u)]
    density = sp.exp(-(a - m) ** 2 / (2 * sigma**2)) / (sp.sqrt(2 * sp.pi) * sigma)
    return sp.Matrix(2, 2, lambda i, j: sp.simplify(sp.integrate(
        (scores[i] * scores[j]).subs(u, sp.log(sigma)) * density, (a, -sp.oo, sp.oo))))


def test_gaussian_fisher_right_answers_pass(capsys):
    assert checks.check_gaussian_fisher(checks.gaussian_fisher) is True
    assert checks.check_gaussian_fisher(lambda m, s: [[1 / s**2, 0], [0, 2]]) is True
    assert checks.check_gaussian_fisher(lambda m, s: np.array([[1 / s**2, 0], [0, 2]], dtype=object)) is True
    assert checks.check_gaussian_fisher(_fisher_by_integration, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ gaussian_fisher")


def test_gaussian_fisher_reference_is_the_hessian_of_the_kl():
    """The reference against autograd's Hessian of torch's Gaussian KL in (m, log sigma), at a few points."""
    for m0, s0 in [(0.0, 1.0), (1.5, 0.3), (-2.0, 2.5)]:
        def kl(params):
            new = torch.distributions.Normal(params[0], params[1].exp())
            return torch.distributions.kl_divergence(torch.distributions.Normal(torch.tensor(m0, dtype=torch.float64),
                                                                                torch.tensor(s0, dtype=torch.float64)), new)
        H = torch.autograd.functional.hessian(kl, torch.tensor([m0, np.log(s0)], dtype=torch.float64))
        expected = np.array(checks.gaussian_fisher(m0, s0).evalf(), dtype=float)
        np.testing.assert_allclose(H.numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("fn,fragment", [
    (lambda m, s: [[1 / s**2, 0], [0, 2 / s**2]], "parameters (m, sigma)"),
    (lambda m, s: [[1 / s**2, 0], [0, 1 / (2 * s**4)]], "(m, variance)"),
    (lambda m, s: [[1 / s**2, 0], [0, 1]], "chi-square"),
    (lambda m, s: [[s**2, 0], [0, 2]], "mean entry is inverted"),
    (lambda m, s: [[1 / s**2, 1 / s], [1 / s, 2]], "off-diagonal entries vanish"),
])
def test_gaussian_fisher_mistakes_get_their_hint(fn, fragment, capsys):
    assert checks.check_gaussian_fisher(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_gaussian_fisher_scalar_and_stub(capsys):
    assert checks.check_gaussian_fisher(lambda m, s: 1 / s**2) is False
    assert "2 x 2 matrix" in capsys.readouterr().out

    def my_gaussian_fisher(m, sigma):
        ...

    assert checks.check_gaussian_fisher(my_gaussian_fisher) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out
