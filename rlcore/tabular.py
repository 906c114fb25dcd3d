"""Exact computations on small tabular MDPs (the book's ground truth).

Everything here is solved with linear algebra in float64 and is differentiable with
autograd, so the book can check each theorem exactly: the value of a policy, the
discounted state visitation ``eta`` and ``d^pi``, the objective ``J(theta)`` and its gradient,
the policy gradient theorem's right-hand side, the surrogate objective and TRPO's bound.

Setting: a discounted MDP ``(S, A, P, R, gamma, mu0)`` with ``P[s, a, s'] = P(s' | s, a)``
and expected reward ``R[s, a]``. Episodic tasks fit by making terminal states absorbing
with zero reward. Policies are arrays ``pi[s, a] = pi(a | s)``; a tabular softmax policy
has one logit per (s, a).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

DTYPE = torch.float64


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=DTYPE)


@dataclass
class TabularMDP:
    """A finite discounted MDP (eq-mdp): ``P[s, a, s']``, ``R[s, a]``, ``gamma``, ``mu0[s]``."""

    P: torch.Tensor
    R: torch.Tensor
    gamma: float
    mu0: torch.Tensor
    state_names: list[str] | None = None
    action_names: list[str] | None = None
    terminal: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        self.P, self.R, self.mu0 = _t(self.P), _t(self.R), _t(self.mu0)
        S, A = self.R.shape
        if self.P.shape != (S, A, S):
            raise ValueError(f"P must have shape (S, A, S) = {(S, A, S)}, got {tuple(self.P.shape)}")
        if not torch.allclose(self.P.sum(-1), torch.ones(S, A, dtype=DTYPE), atol=1e-8) or (self.P < 0).any():
            raise ValueError("each P[s, a, :] must be a probability distribution over next states")
        if self.mu0.shape != (S,) or abs(float(self.mu0.sum()) - 1) > 1e-8 or (self.mu0 < 0).any():
            raise ValueError("mu0 must be a probability distribution over the S states")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must lie in [0, 1) for exact values, got {self.gamma}")

    @property
    def n_states(self) -> int:
        return self.R.shape[0]

    @property
    def n_actions(self) -> int:
        return self.R.shape[1]


# --------------------------------------------------------------------- policies
def softmax_policy(logits) -> torch.Tensor:
    """Tabular softmax policy ``pi(a|s) = exp(theta_{s,a}) / sum_a' exp(theta_{s,a'})`` (eq-softmax-policy)."""
    return torch.softmax(_t(logits) if not torch.is_tensor(logits) else logits.to(DTYPE), dim=-1)


def uniform_policy(mdp: TabularMDP) -> torch.Tensor:
    return torch.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=DTYPE)


def _check_policy(mdp: TabularMDP, pi: torch.Tensor) -> torch.Tensor:
    pi = pi.to(DTYPE)
    if pi.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(f"policy must have shape (S, A) = {(mdp.n_states, mdp.n_actions)}, got {tuple(pi.shape)}")
    return pi


# --------------------------------------------------------------------- values
def state_transition_matrix(mdp: TabularMDP, pi) -> torch.Tensor:
    """``P_pi[s, s'] = sum_a pi(a|s) P(s'|s,a)``."""
    pi = _check_policy(mdp, pi)
    return torch.einsum("sa,sax->sx", pi, mdp.P)


def state_values(mdp: TabularMDP, pi) -> torch.Tensor:
    """``V^pi`` from the Bellman equation ``V = r_pi + gamma P_pi V`` (eq-bellman-v), solved exactly."""
    pi = _check_policy(mdp, pi)
    r_pi = (pi * mdp.R).sum(-1)
    eye = torch.eye(mdp.n_states, dtype=DTYPE)
    return torch.linalg.solve(eye - mdp.gamma * state_transition_matrix(mdp, pi), r_pi)


def action_values(mdp: TabularMDP, pi) -> torch.Tensor:
    """``Q^pi(s,a) = R(s,a) + gamma sum_s' P(s'|s,a) V^pi(s')`` (eq-bellman-q)."""
    return mdp.R + mdp.gamma * mdp.P @ state_values(mdp, pi)


def advantage_values(mdp: TabularMDP, pi) -> torch.Tensor:
    """``A^pi(s,a) = Q^pi(s,a) - V^pi(s)`` (eq-advantage)."""
    return action_values(mdp, pi) - state_values(mdp, pi)[:, None]


def expected_return(mdp: TabularMDP, pi) -> torch.Tensor:
    """``J(pi) = E_{s0 ~ mu0}[V^pi(s0)]`` (eq-objective). Differentiable in ``pi``."""
    return mdp.mu0 @ state_values(mdp, pi)


def rho(mdp: TabularMDP, pi, k: int) -> torch.Tensor:
    """``omega^pi(s -> x, k)`` (the book's omega, whose rho is the importance ratio): the discounted probability
    of going from ``s`` to ``x`` in ``k`` steps, ``gamma^k Pr(s_k = x | s_0 = s)`` = the matrix ``(gamma P_pi)^k``
    (eq-pg-unroll)."""
    M = mdp.gamma * state_transition_matrix(mdp, pi)
    return torch.linalg.matrix_power(M, k)


def discounted_visitation(mdp: TabularMDP, pi) -> torch.Tensor:
    """``eta^pi(s) = sum_k sum_{s0} mu0(s0) omega^pi(s0 -> s, k)`` = ``mu0^T (I - gamma P_pi)^{-1}`` (eq-eta)."""
    eye = torch.eye(mdp.n_states, dtype=DTYPE)
    return torch.linalg.solve((eye - mdp.gamma * state_transition_matrix(mdp, pi)).T, mdp.mu0)


def state_distribution(mdp: TabularMDP, pi) -> torch.Tensor:
    """``d^pi(s) = eta(s) / sum_s' eta(s')`` (eq-dpi). In the discounted case ``sum eta = 1/(1-gamma)``."""
    eta = discounted_visitation(mdp, pi)
    return eta / eta.sum()


def policy_gradient_theorem(mdp: TabularMDP, logits) -> torch.Tensor:
    """Right-hand side of the policy gradient theorem for a tabular softmax policy (eq-pg-theorem)::

        grad J = sum_s eta(s) sum_a Q^pi(s,a) grad pi(a|s)
               = (sum_s eta(s)) * sum_s d^pi(s) sum_a Q^pi(s,a) grad pi(a|s)

    Returned as a tensor shaped like ``logits`` (the gradient w.r.t. each logit). For the
    softmax, ``d pi(a|s) / d theta_{s,a'} = pi(a|s) (1[a=a'] - pi(a'|s))``, so the entry for
    ``(s, a')`` is ``eta(s) pi(a'|s) (Q(s,a') - V(s))``. No autograd is used here on purpose:
    the test compares this with autograd's gradient of :func:`expected_return`.
    """
    with torch.no_grad():
        pi = softmax_policy(logits)
        Q = action_values(mdp, pi)
        d = state_distribution(mdp, pi)
        eta_total = discounted_visitation(mdp, pi).sum()  # the proportionality constant
        dpi = pi[:, :, None] * (torch.eye(mdp.n_actions, dtype=DTYPE)[None] - pi[:, None, :])  # [s, a, b]
        phi = torch.einsum("sa,sab->sb", Q, dpi)  # the book's g(s) = sum_a Q(s,a) grad pi(a|s)
        return eta_total * d[:, None] * phi


def exact_policy_gradient(mdp: TabularMDP, logits) -> torch.Tensor:
    """Autograd gradient of the exact ``J(theta)`` w.r.t. tabular softmax logits."""
    theta = _t(logits).detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(expected_return(mdp, softmax_policy(theta)), theta)
    return grad


# --------------------------------------------------------------------- optimal control
def value_iteration(mdp: TabularMDP, tol: float = 1e-10, max_iter: int = 100_000):
    """Optimal ``Q*`` by iterating the Bellman optimality operator (eq-bellman-optimality).

    Returns ``(V*, Q*, greedy_policy)`` with the greedy policy as a one-hot ``[S, A]`` array.
    """
    V = torch.zeros(mdp.n_states, dtype=DTYPE)
    for _ in range(max_iter):
        Q = mdp.R + mdp.gamma * mdp.P @ V
        V_new = Q.max(-1).values
        if (V_new - V).abs().max() < tol:
            V = V_new
            break
        V = V_new
    Q = mdp.R + mdp.gamma * mdp.P @ V
    greedy = torch.nn.functional.one_hot(Q.argmax(-1), mdp.n_actions).to(DTYPE)
    return V, Q, greedy


# --------------------------------------------------------------------- TRPO theory
def surrogate_objective(mdp: TabularMDP, pi_old, pi_new) -> torch.Tensor:
    """``L_{pi_old}(pi_new) = J(pi_old) + sum_s eta_old(s) sum_a pi_new(a|s) A^{pi_old}(s,a)`` (eq-surrogate).

    The visitation ``eta`` is that of the *old* policy; this is the only difference from the
    exact identity :func:`performance_difference`. Differentiable in ``pi_new``.
    """
    with torch.no_grad():
        A = advantage_values(mdp, pi_old)
        eta = discounted_visitation(mdp, pi_old)
        J_old = expected_return(mdp, pi_old)
    return J_old + (eta[:, None] * pi_new * A).sum()


def performance_difference(mdp: TabularMDP, pi_old, pi_new) -> torch.Tensor:
    """``J(pi_new) = J(pi_old) + sum_s eta_new(s) sum_a pi_new(a|s) A^{pi_old}(s,a)`` (eq-performance-difference)."""
    A = advantage_values(mdp, pi_old)
    return expected_return(mdp, pi_old) + (discounted_visitation(mdp, pi_new)[:, None] * pi_new * A).sum()


def kl_per_state(pi_p, pi_q) -> torch.Tensor:
    """``KL(p(.|s) || p'(.|s))`` for every state, with ``p = pi_p`` and ``p' = pi_q``."""
    p, q = pi_p.to(DTYPE), pi_q.to(DTYPE)
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)


def max_kl(pi_old, pi_new) -> torch.Tensor:
    """``D_KL^max(pi_old, pi_new) = max_s KL(pi_old(.|s) || pi_new(.|s))``."""
    return kl_per_state(pi_old, pi_new).max()


def max_tv(pi_old, pi_new) -> torch.Tensor:
    """``D_TV^max = max_s (1/2) sum_a |pi_old(a|s) - pi_new(a|s)|``."""
    return 0.5 * (pi_old.to(DTYPE) - pi_new.to(DTYPE)).abs().sum(-1).max()


def cpi_lower_bound(mdp: TabularMDP, pi_old, pi_prime, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Conservative policy iteration (Kakade & Langford 2002), eq-cpi-bound.

    For the mixture ``pi_new = (1 - alpha) pi_old + alpha pi_prime``:
    ``J(pi_new) >= L(pi_new) - 2 A_bar_max gamma alpha^2 / (1 - gamma)^2`` with
    ``A_bar_max = max_s |sum_a pi_prime(a|s) A^{pi_old}(s,a)|`` (the paper's epsilon, the code's ``eps``).
    Uses the discounted visitation, so ``L`` and ``J`` here are unnormalised returns (the book states the
    scaling).
    Returns ``(J(pi_new), bound)``.
    """
    pi_new = (1 - alpha) * pi_old + alpha * pi_prime
    A = advantage_values(mdp, pi_old)
    eps = (pi_prime * A).sum(-1).abs().max()
    g = mdp.gamma
    bound = surrogate_objective(mdp, pi_old, pi_new) - 2 * eps * g * alpha**2 / (1 - g) ** 2
    return expected_return(mdp, pi_new), bound


def trpo_lower_bound(mdp: TabularMDP, pi_old, pi_new) -> tuple[torch.Tensor, torch.Tensor]:
    """TRPO's bound (Schulman et al. 2015, Theorem 1 with ``D_TV^2 <= D_KL``), eq-trpo-bound:

    ``J(pi_new) >= L_{pi_old}(pi_new) - C D_KL^max(pi_old, pi_new)``,
    ``C = 4 A_max gamma / (1 - gamma)^2``, ``A_max = max_{s,a} |A^{pi_old}(s,a)|``
    (the paper's epsilon, the code's ``eps``).
    Returns ``(J(pi_new), bound)``.
    """
    eps = advantage_values(mdp, pi_old).abs().max()
    C = 4 * eps * mdp.gamma / (1 - mdp.gamma) ** 2
    return expected_return(mdp, pi_new), surrogate_objective(mdp, pi_old, pi_new) - C * max_kl(pi_old, pi_new)


# --------------------------------------------------------------------- builders and sampling
def random_mdp(n_states: int = 5, n_actions: int = 3, gamma: float = 0.9, seed: int = 0) -> TabularMDP:
    """A random dense MDP (Dirichlet transitions, normal rewards), reproducible from ``seed``."""
    g = np.random.default_rng(seed)
    P = g.dirichlet(np.ones(n_states), size=(n_states, n_actions))
    R = g.normal(size=(n_states, n_actions))
    mu0 = g.dirichlet(np.ones(n_states))
    return TabularMDP(P, R, gamma, mu0)


def gridworld(
    rows: int = 3,
    cols: int = 4,
    goal: tuple[int, int] = (0, 3),
    pit: tuple[int, int] | None = (1, 3),
    slip: float = 0.1,
    step_reward: float = -0.04,
    gamma: float = 0.95,
) -> TabularMDP:
    """A small slippery grid: start bottom-left, +1 at ``goal``, -1 at ``pit``.

    Actions up/right/down/left move as intended with probability ``1 - slip`` and to a
    random perpendicular direction otherwise; walls keep the agent in place. Goal and pit
    lead to an absorbing terminal state with zero reward (the episodic task inside a
    discounted MDP). State ``rows*cols`` is that terminal state.
    """
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]
    n = rows * cols
    S = n + 1
    P = np.zeros((S, 4, S))
    R = np.zeros((S, 4))
    idx = lambda r, c: r * cols + c  # noqa: E731
    for r in range(rows):
        for c in range(cols):
            s = idx(r, c)
            if (r, c) == goal or (r, c) == pit:
                P[s, :, n] = 1.0
                R[s, :] = 1.0 if (r, c) == goal else -1.0
                continue
            for a in range(4):
                for direction, prob in ((a, 1 - slip), ((a + 1) % 4, slip / 2), ((a + 3) % 4, slip / 2)):
                    dr, dc = moves[direction]
                    rr, cc = r + dr, c + dc
                    if not (0 <= rr < rows and 0 <= cc < cols):
                        rr, cc = r, c
                    P[s, a, idx(rr, cc)] += prob
                R[s, a] = step_reward
    P[n, :, n] = 1.0
    mu0 = np.zeros(S)
    mu0[idx(rows - 1, 0)] = 1.0
    names = [f"({r},{c})" for r in range(rows) for c in range(cols)] + ["end"]
    terminal = torch.zeros(S, dtype=torch.bool)
    terminal[n] = True
    return TabularMDP(P, R, gamma, mu0, state_names=names, action_names=["up", "right", "down", "left"], terminal=terminal)


def sample_returns(mdp: TabularMDP, pi, n_episodes: int, horizon: int, seed: int = 0) -> np.ndarray:
    """Monte Carlo: discounted returns ``sum_t gamma^t r_t`` of ``n_episodes`` rollouts of ``horizon`` steps.

    Vectorised over episodes; the truncation error is at most ``gamma^horizon max|R| / (1-gamma)``.
    """
    g = np.random.default_rng(seed)
    P = mdp.P.numpy()
    R = mdp.R.numpy()
    pi = _check_policy(mdp, _t(pi)).numpy()
    S, A = R.shape
    s = g.choice(S, size=n_episodes, p=mdp.mu0.numpy())
    total = np.zeros(n_episodes)
    discount = 1.0
    for _ in range(horizon):
        u = g.random(n_episodes)[:, None]
        a = (u > np.cumsum(pi[s], axis=1)).sum(1).clip(max=A - 1)
        total += discount * R[s, a]
        u = g.random(n_episodes)[:, None]
        s = (u > np.cumsum(P[s, a], axis=1)).sum(1).clip(max=S - 1)
        discount *= mdp.gamma
    return total
