"""Checkers for chapter 3's exercises (TRPO): conjugate gradient, Fisher-vector products,
the step size from the KL radius, and the surrogate objective on a tabular MDP; and a derivation,
the Fisher information matrix of a Gaussian policy (a formula, see :mod:`rlcore.exercise_checks._derivation`).

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first, then random ones,
expected values from rlcore's reference, and known mistakes with a hint each::

    from rlcore.exercise_checks import ch03 as checks
    checks.check_conjugate_gradient(my_conjugate_gradient)
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rlcore.exercises import Case, Mistake, check

__all__ = ["MatVec", "check_conjugate_gradient", "check_fisher_vector_product", "check_trpo_step",
           "check_surrogate_objective", "tiny_policy", "check_gaussian_fisher", "gaussian_fisher"]

DTYPE = torch.float64


class MatVec:
    """The callable ``v -> A v`` handed to the reader's conjugate gradient; prints as its matrix."""

    def __init__(self, A: torch.Tensor):
        self.A = torch.as_tensor(A, dtype=DTYPE)
        self.calls = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.A @ torch.as_tensor(v, dtype=DTYPE)

    def __repr__(self) -> str:
        body = np.array2string(self.A.numpy(), precision=3, suppress_small=True, threshold=30, separator=", ")
        return f"(v -> A @ v) with A = {body}"


def _spd(n: int, cond: float, seed: int) -> torch.Tensor:
    """A random symmetric positive-definite matrix with eigenvalues spread over ``[1, cond]``."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DTYPE))
    return Q @ torch.diag(torch.logspace(0, float(np.log10(cond)), n, dtype=DTYPE)) @ Q.T


# --------------------------------------------------------------------- conjugate gradient
def check_conjugate_gradient(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-03-cg: ``fn(Avp, b, iters)`` runs ``iters`` iterations of conjugate gradient
    (eq-cg) from ``x_0 = 0`` on ``A x = b``, with ``A`` symmetric positive definite and known only
    through the function ``Avp(v) = A v``; it returns ``x_iters``.

    ``b`` is a float64 tensor. With ``iters`` equal to the dimension the answer is ``A^{-1} b``;
    with fewer iterations it is CG's iterate, which every correct CG variant reproduces
    (it minimises ``x^T A x / 2 - b^T x`` over the Krylov space ``span{b, Ab, ...}``).
    Reference: :func:`rlcore.algos.trpo.conjugate_gradient` with ``tol = 0``.
    """
    from rlcore.algos.trpo import conjugate_gradient

    def case(A, b, iters, label):
        A, b = torch.as_tensor(A, dtype=DTYPE), torch.as_tensor(b, dtype=DTYPE)
        expected = conjugate_gradient(lambda v: A @ v, b, iters, tol=0.0)
        return Case({"Avp": MatVec(A), "b": b, "iters": iters}, expected, label)

    cases = [
        case(torch.eye(3), [1.0, 2.0, 3.0], 1, "A = I: one iteration solves it"),
        case(torch.diag(torch.tensor([1.0, 4.0])), [1.0, 1.0], 2, "diagonal 2x2, two iterations: the exact solution"),
        case(torch.diag(torch.tensor([1.0, 4.0])), [1.0, 1.0], 1,
             "diagonal 2x2, ONE iteration: a single step along b"),
        case([[4.0, 1.0], [1.0, 3.0]], [1.0, 2.0], 2, "a 2x2 system from the textbooks, two iterations"),
        case(_spd(6, 10.0, 0), torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=DTYPE), 6,
             "random 6x6 SPD matrix, 6 iterations: exact"),
        case(_spd(20, 100.0, 2), torch.randn(20, generator=torch.Generator().manual_seed(3), dtype=DTYPE), 5,
             "random 20x20 SPD matrix, only 5 iterations"),
        case(_spd(50, 1e3, 4), torch.randn(50, generator=torch.Generator().manual_seed(5), dtype=DTYPE), 10,
             "random 50x50 SPD matrix, 10 iterations (TRPO's budget)"),
    ]

    def _run(Avp, b, iters, direction):
        x, r = torch.zeros_like(b), b.clone()
        p = b.clone()
        for _ in range(iters):
            if r @ r == 0:
                break
            Ap = Avp(p)
            alpha = (r @ r) / (p @ Ap)
            x = x + alpha * p
            r_new = r - alpha * Ap
            p = direction(r_new, r, p)
            r = r_new
        return x

    mistakes = [
        Mistake(lambda Avp, b, n: _run(Avp, b, n, lambda rn, r, p: rn),
                "that is steepest descent: the new direction must be the new residual corrected by a multiple "
                "of the previous direction, which makes the directions A-conjugate (eq-cg)."),
        Mistake(lambda Avp, b, n: _run(Avp, b, n, lambda rn, r, p: rn + (rn @ rn) / (r @ r) * rn),
                "beta_k multiplies the previous *direction* p_k, not the new residual."),
        Mistake(lambda Avp, b, n: _run(Avp, b, n, lambda rn, r, p: rn + (r @ r) / (rn @ rn) * p),
                "beta_k is upside down: the squared norm of the *new* residual goes on top (eq-cg)."),
        Mistake(lambda Avp, b, n: torch.linalg.solve(Avp.A, b),
                "with fewer iterations than the dimension CG does not reach A^{-1} b yet: return the CG iterate "
                "after exactly `iters` iterations (and use only Avp, never the matrix)."),
    ]
    return check(fn, cases, "conjugate_gradient",
                 hint="reread eq-cg: start from zero, with the residual and the first direction both equal to b; "
                      "each iteration steps along the current direction as far as minimises the quadratic, "
                      "updates the residual, and builds the next direction A-conjugate to the previous one. "
                      "Use only Avp, one call per iteration.",
                 atol=1e-8, rtol=1e-6, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-03-cg")


# --------------------------------------------------------------------- Fisher-vector product
def tiny_policy(obs_dim: int = 3, n_actions: int = 4, hidden: tuple[int, ...] = (5,), seed: int = 0):
    """A small float64 :class:`rlcore.networks.CategoricalPolicy` with non-trivial logits (the usual
    initialisation scales the last layer by 0.01, which would make every policy nearly uniform)."""
    from rlcore.networks import CategoricalPolicy

    torch.manual_seed(seed)
    policy = CategoricalPolicy(obs_dim, n_actions, hidden=hidden).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=DTYPE))
    return policy


def check_fisher_vector_product(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-03-fvp: ``fn(policy, obs, v)`` returns ``F v`` where ``F`` is the Hessian at the
    current parameters ``theta_old`` of ``theta -> mean_s KL(pi_old(.|s) || pi_theta(.|s))``
    (eq-fisher), computed by double backprop (eq-fisher-vector-product).

    ``policy`` is a float64 :class:`rlcore.networks.CategoricalPolicy` (``policy.distribution(obs)``
    is a ``Categorical``), ``obs`` a ``[B, obs_dim]`` tensor and ``v`` a flat vector with one entry
    per parameter, in the order of ``policy.parameters()``. The answer is a flat vector like ``v``.
    Reference: :func:`rlcore.algos.trpo.fisher_vector_product` with ``damping = 0``; the tests
    compare that with the explicit Hessian.
    """
    from rlcore.algos.trpo import fisher_vector_product

    def case(obs_dim, n_actions, hidden, batch, seed, label, unit=None):
        policy = tiny_policy(obs_dim, n_actions, hidden, seed)
        g = torch.Generator().manual_seed(100 + seed)
        obs = torch.randn(batch, obs_dim, generator=g, dtype=DTYPE)
        n = sum(p.numel() for p in policy.parameters())
        if unit is None:
            v = torch.randn(n, generator=g, dtype=DTYPE)
        else:
            v = torch.zeros(n, dtype=DTYPE)
            v[unit] = 1.0
        expected = fisher_vector_product(policy, obs, v, 0.0).detach()
        return Case({"policy": policy, "obs": obs, "v": v}, expected, label)

    cases = [
        case(2, 2, (3,), 1, 0, "one state, two actions, v = first unit vector (a column of F)", unit=0),
        case(2, 3, (3,), 4, 1, "4 states, 3 actions, a random v"),
        case(3, 4, (5,), 16, 2, "16 states, 4 actions, a random v"),
        case(4, 2, (8, 8), 32, 3, "two hidden layers, 32 states"),
    ]

    def _score_outer(policy, obs, v):
        # empirical Fisher with the *mean* score: (grad mean log pi)(grad mean log pi)^T v, wrong
        dist = policy.distribution(obs)
        a = dist.probs.argmax(-1)
        grads = torch.autograd.grad(dist.log_prob(a).mean(), list(policy.parameters()))
        g = torch.cat([x.reshape(-1) for x in grads])
        return g * (g @ v)

    mistakes = [
        Mistake(lambda policy, obs, v: torch.zeros_like(v),
                "you got zero: the old distribution must be a *constant* copy, cut from the autograd graph; if "
                "it moves with theta the KL is identically 0, and so is its Hessian."),
        Mistake(lambda policy, obs, v: fisher_vector_product(policy, obs, v, 0.0).detach() * obs.shape[0],
                "the constraint is the *mean* KL over the states of the batch, not the sum."),
        Mistake(_score_outer,
                "F is the expected outer product of the score over *all* actions (the Hessian of the KL), "
                "not the outer product of one averaged gradient: differentiate the product of the KL's "
                "gradient with v a second time."),
    ]
    return check(fn, cases, "fisher_vector_product",
                 hint="reread eq-fisher and eq-fisher-vector-product: F is the Hessian of the mean KL between the "
                      "frozen old policy and the current one; differentiate that KL once (keeping the graph), "
                      "take the dot product of the gradient with v, and differentiate the result again.",
                 atol=1e-9, rtol=1e-6, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-03-fvp")


# --------------------------------------------------------------------- the step from the KL radius
def _reference_step(F, g, max_kl):
    s = torch.linalg.solve(F, g)
    return torch.sqrt(2 * max_kl / (s @ F @ s)) * s


def check_trpo_step(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-03-step: ``fn(F, g, max_kl)`` returns TRPO's full step (eq-trpo-step)
    ``Delta = sqrt(2 delta / (s^T F s)) s`` with ``s = F^{-1} g``: the maximiser of the linear
    model ``g^T Delta`` subject to the quadratic KL model ``Delta^T F Delta / 2 <= delta``.

    ``F`` is a symmetric positive-definite float64 ``[n, n]`` tensor, ``g`` a float64 ``[n]``
    tensor, ``max_kl`` the radius ``delta``. Reference: the closed form with ``torch.linalg.solve``
    (``rlcore.algos.trpo.trpo_step`` computes the same with CG and Fisher-vector products).
    """

    def case(F, g, max_kl, label):
        F, g = torch.as_tensor(F, dtype=DTYPE), torch.as_tensor(g, dtype=DTYPE)
        return Case({"F": F, "g": g, "max_kl": max_kl}, _reference_step(F, g, max_kl), label)

    rng = torch.Generator().manual_seed(7)
    cases = [
        case(torch.eye(2), [3.0, 4.0], 0.5, "F = I: a step of length sqrt(2 delta) along g"),
        case(torch.diag(torch.tensor([1.0, 100.0])), [1.0, 1.0], 0.01,
             "F = diag(1, 100): the natural step goes mostly along the flat direction"),
        case([[2.0, 0.5], [0.5, 1.0]], [1.0, -1.0], 0.02, "a 2x2 F with correlations"),
        case(_spd(8, 50.0, 8), torch.randn(8, generator=rng, dtype=DTYPE), 0.01, "random 8x8 F, delta = 0.01"),
        case(_spd(12, 1e3, 9), torch.randn(12, generator=rng, dtype=DTYPE), 0.05, "random 12x12 F, delta = 0.05"),
    ]

    def scaled(direction, coef):
        def wrong(F, g, d):
            s = direction(F, g)
            return torch.sqrt(coef * d / (s @ F @ s)) * s
        return wrong

    mistakes = [
        Mistake(scaled(lambda F, g: torch.linalg.solve(F, g), 1.0),
                "the quadratic KL model has a factor one half (the proposition of eq-trpo-step): your "
                "step stops short of the boundary by a factor sqrt 2."),
        Mistake(scaled(lambda F, g: g, 2.0),
                "that is the vanilla gradient scaled to the KL boundary; TRPO's direction is the natural gradient, "
                "the solution of a linear system with F."),
        Mistake(lambda F, g, d: (2 * d / (torch.linalg.solve(F, g) @ F @ torch.linalg.solve(F, g))) * torch.linalg.solve(F, g),
                "the step length is a *square root*: the KL model is quadratic in the step."),
        Mistake(lambda F, g, d: torch.linalg.solve(F, g),
                "the natural gradient is only the direction: scale it so that the quadratic KL model reaches "
                "delta exactly."),
    ]
    return check(fn, cases, "trpo_step",
                 hint="reread eq-trpo-step: the direction is the natural gradient (a linear system with F), and "
                      "its length is chosen so that the quadratic KL model sits exactly on the boundary delta.",
                 atol=1e-9, rtol=1e-7, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-03-step")


# --------------------------------------------------------------------- surrogate on a tabular MDP
def check_surrogate_objective(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-03-surrogate: ``fn(P, R, gamma, mu0, pi_old, pi_new)`` returns the surrogate
    ``L_{pi_old}(pi_new) = J(pi_old) + sum_s eta^{pi_old}(s) sum_a pi_new(a|s) A^{pi_old}(s,a)``
    (eq-surrogate), with the *unnormalised* discounted visitation ``eta`` of the old policy (eq-eta).

    All inputs are float64 numpy arrays (``P[s, a, s']``, ``R[s, a]``, ``mu0[s]``, policies ``[S, A]``)
    except the float ``gamma``; the answer is a number. Reference: :func:`rlcore.tabular.surrogate_objective`.
    """
    from rlcore.exercises import _tabular_cases
    from rlcore.tabular import TabularMDP, random_mdp, surrogate_objective

    g = np.random.default_rng(11)
    cases = []
    for args, label in _tabular_cases(with_mu0=True):
        S, A = args["R"].shape
        pi_new = g.dirichlet(np.ones(A), size=S)
        mdp = TabularMDP(args["P"], args["R"], args["gamma"], args["mu0"])
        inputs = {"P": args["P"], "R": args["R"], "gamma": args["gamma"], "mu0": args["mu0"],
                  "pi_old": args["pi"], "pi_new": pi_new}
        expected = float(surrogate_objective(mdp, torch.as_tensor(args["pi"]), torch.as_tensor(pi_new)))
        cases.append(Case(inputs, expected, label + ", a random new policy"))
    # pi_new = pi_old: L equals J(pi_old)
    small = random_mdp(3, 2, 0.9, seed=20)
    pi = g.dirichlet(np.ones(2), size=3)
    cases.insert(0, Case({"P": small.P.numpy(), "R": small.R.numpy(), "gamma": 0.9, "mu0": small.mu0.numpy(),
                          "pi_old": pi, "pi_new": pi.copy()},
                         float(surrogate_objective(small, torch.as_tensor(pi), torch.as_tensor(pi))),
                         "pi_new = pi_old: L must equal J(pi_old)"))

    def parts(P, R, gamma, mu0, pi):
        P_pi = np.einsum("sa,sax->sx", pi, P)
        eye = np.eye(len(mu0))
        V = np.linalg.solve(eye - gamma * P_pi, (pi * R).sum(1))
        Q = R + gamma * P @ V
        eta = np.linalg.solve((eye - gamma * P_pi).T, mu0)
        return V, Q, eta

    def new_visitation(P, R, gamma, mu0, pi_old, pi_new):
        V, Q, _ = parts(P, R, gamma, mu0, pi_old)
        _, _, eta_new = parts(P, R, gamma, mu0, pi_new)
        return mu0 @ V + (eta_new[:, None] * pi_new * (Q - V[:, None])).sum()

    def normalised(P, R, gamma, mu0, pi_old, pi_new):
        V, Q, eta = parts(P, R, gamma, mu0, pi_old)
        return mu0 @ V + (eta[:, None] / eta.sum() * pi_new * (Q - V[:, None])).sum()

    def with_q(P, R, gamma, mu0, pi_old, pi_new):
        V, Q, eta = parts(P, R, gamma, mu0, pi_old)
        return mu0 @ V + (eta[:, None] * pi_new * Q).sum()

    def no_j(P, R, gamma, mu0, pi_old, pi_new):
        V, Q, eta = parts(P, R, gamma, mu0, pi_old)
        return (eta[:, None] * pi_new * (Q - V[:, None])).sum()

    mistakes = [
        Mistake(new_visitation, "you weighted the states by the visitation of the *new* policy: that is the exact "
                                "J(pi_new) (eq-performance-difference). The surrogate freezes the visitation at pi_old."),
        Mistake(normalised, "the weights are the unnormalised discounted visitation eta(s) (summing to 1/(1-gamma)), "
                            "not the normalised distribution d^pi (eq-dpi)."),
        Mistake(with_q, "use the advantage of pi_old (eq-advantage), not Q itself."),
        Mistake(no_j, "the surrogate starts from J(pi_old), the value of the old policy; only the correction "
                      "term was returned."),
    ]
    return check(fn, cases, "surrogate_objective",
                 hint="reread eq-surrogate: start from J(pi_old) and add the advantages of pi_old (chapter 0's "
                      "values), averaged over the actions of pi_new and weighted by the *unnormalised* "
                      "discounted visitation eta of pi_old (eq-eta).",
                 atol=1e-8, rtol=1e-7, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-03-surrogate")


# --------------------------------------------------------------------- derivation: the Fisher matrix of a Gaussian
def gaussian_fisher(m, sigma):
    """The reference: the Fisher information matrix (eq-fisher) of ``N(m, sigma^2)`` with respect to the
    parameters ``(m, log sigma)``, as a 2 x 2 sympy matrix."""
    import sympy as sp

    return sp.Matrix([[1 / sigma**2, 0], [0, 2]])


def check_gaussian_fisher(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-03-gaussian-fisher: ``fn(m, sigma)``, called with sympy symbols (``sigma`` positive), returns
    the 2 x 2 Fisher matrix of a one-dimensional Gaussian policy in the parameters ``(m, log sigma)``, rows and
    columns in that order (a sympy Matrix, a nested list or a numpy array of formulas). Compared with
    :func:`gaussian_fisher` at hand-made and random points."""
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    m = sp.Symbol("m", real=True)
    sigma = sp.Symbol("sigma", positive=True)
    symbols = {"m": m, "sigma": sigma}
    reference = gaussian_fisher(m, sigma)

    points = [({"m": 0.0, "sigma": 1.0}, "the standard normal"), ({"m": 0.0, "sigma": 0.5}, "a narrow Gaussian"),
              ({"m": 3.0, "sigma": 2.0}, "a wide Gaussian away from 0")]
    rng = np.random.default_rng(3)
    points += [({"m": float(np.round(rng.normal(0, 2), 3)), "sigma": float(np.round(rng.uniform(0.1, 3), 3))},
                f"random point {i + 1}") for i in range(8)]
    mistakes = [
        (sp.Matrix([[1 / sigma**2, 0], [0, 2 / sigma**2]]),
         "that is the Fisher matrix in the parameters (m, sigma); the policy's second parameter is log sigma, and "
         "the Fisher matrix changes with the parametrisation (the scores are multiplied by the chain-rule factor)."),
        (sp.Matrix([[1 / sigma**2, 0], [0, 1 / (2 * sigma**4)]]),
         "that is the Fisher matrix in the parameters (m, variance); the policy's second parameter is log sigma."),
        (sp.Matrix([[1 / sigma**2, 0], [0, 1]]),
         "the log sigma entry is the expected square of the log-std score, and the square of a standardised "
         "Gaussian variable minus one has the variance of a chi-square variable with one degree of freedom."),
        (sp.Matrix([[sigma**2, 0], [0, 2]]),
         "the mean entry is inverted: a narrow Gaussian (small sigma) is *more* sensitive to a shift of its mean, "
         "so its Fisher information is larger."),
        (sp.Matrix([[1 / sigma**2, 1 / sigma], [1 / sigma, 2]]),
         "the off-diagonal entries vanish: the expected product of the two scores is an odd moment of a centred "
         "Gaussian."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "gaussian_fisher",
        hint="use the outer-product form of eq-fisher: the two scores of log pi (with respect to m and to log sigma), "
             "the expectation of each product under the Gaussian itself (Gaussian moments, or sympy's integration), "
             "as a 2 by 2 matrix of formulas in m and sigma.",
        exercise="ex-03-gaussian-fisher", mistakes=mistakes, raise_on_fail=raise_on_fail)
