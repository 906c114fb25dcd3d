"""Chapter 1 (value-based methods and DQN): reference implementations and exercise checkers.

References used by the chapter and its exercises:

* :func:`q_learning_update` -- one tabular Q-learning step (eq-q-learning);
* :func:`q_learning` -- tabular Q-learning on a :class:`rlcore.tabular.TabularMDP`, from samples only;
* :func:`epsilon_greedy_probs` -- the action probabilities of an epsilon-greedy policy (eq-epsilon-greedy).

Checkers (``fn`` is the reader's function; each returns ``True``/``False`` and prints the verdict):

* :func:`check_dqn_target` -- ex-01-dqn-target, the TD target with terminated *and* truncated flags;
* :func:`check_epsilon_greedy` -- ex-01-epsilon-greedy;
* :func:`check_q_learning_update` -- ex-01-q-learning;
* :func:`check_huber_loss` -- ex-01-huber, DQN's Huber loss (eq-dqn-loss, eq-huber);
* :func:`check_triad_factor` -- ex-01-triad-factor, a derivation: the expected growth factor of the deadly
  triad's weight under a mixture of the two transitions (a formula, see :mod:`rlcore.exercise_checks._derivation`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rlcore.exercises import Case, Mistake, check

__all__ = [
    "q_learning_update",
    "q_learning",
    "epsilon_greedy_probs",
    "check_dqn_target",
    "check_epsilon_greedy",
    "check_q_learning_update",
    "check_huber_loss",
    "check_triad_factor",
    "triad_factor",
]


# --------------------------------------------------------------------- references
def q_learning_update(Q, s: int, a: int, r: float, s_next: int, terminated: bool, alpha: float, gamma: float) -> np.ndarray:
    """One Q-learning step (eq-q-learning) on a copy of the table ``Q[s, a]``:

    ``Q(s,a) <- Q(s,a) + alpha * (r + gamma * (1 - terminated) * max_a' Q(s',a') - Q(s,a))``.

    Only the entry ``(s, a)`` changes. ``terminated`` means ``s_next`` is terminal (its value is 0).
    """
    Q = np.array(Q, dtype=np.float64, copy=True)
    target = r + (0.0 if terminated else gamma * Q[s_next].max())
    Q[s, a] += alpha * (target - Q[s, a])
    return Q


def q_learning(mdp, n_steps: int, epsilon: float = 0.2, omega: float = 0.8, seed: int = 0,
               exploring_starts: bool = True, record_every: int = 0):
    """Tabular Q-learning on ``mdp`` from sampled transitions only (Watkins 1989; eq-q-learning).

    The agent acts epsilon-greedily with respect to its current table (ties broken at random)
    and learns from every transition with the step size ``alpha = 1 / N(s,a)^omega``
    (``N`` = visits of the pair so far; ``1/2 < omega <= 1`` meets the Robbins-Monro conditions).
    Episodes end in the MDP's terminal states (``mdp.terminal``); with ``exploring_starts``
    each episode starts in a uniformly random non-terminal state, so that every pair keeps
    being visited. ``P`` and ``R`` are used only to *sample* ``s'`` and ``r``, as an environment would.

    Returns ``(Q, visits, snapshots)``: the final table ``[S, A]``, the visit counts ``N[s, a]``,
    and copies of the table every ``record_every`` steps (``[n, S, A]``; empty if ``record_every`` is 0).
    """
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    if not 0.5 < omega <= 1.0:
        raise ValueError(f"omega must lie in (0.5, 1] for Q-learning to converge, got {omega!r}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon!r}")
    rng = np.random.default_rng(seed)
    P, R = mdp.P.numpy(), mdp.R.numpy()
    S, A = R.shape
    terminal = mdp.terminal.numpy() if mdp.terminal is not None else np.zeros(S, dtype=bool)
    starts = np.flatnonzero(~terminal)
    cum_P = np.cumsum(P, axis=-1)
    Q, N = np.zeros((S, A)), np.zeros((S, A))
    snapshots = []

    def reset() -> int:
        return int(starts[rng.integers(len(starts))]) if exploring_starts else int(rng.choice(S, p=mdp.mu0.numpy()))

    s = reset()
    for t in range(n_steps):
        if rng.random() < epsilon:
            a = int(rng.integers(A))
        else:
            best = np.flatnonzero(Q[s] == Q[s].max())
            a = int(best[rng.integers(len(best))])
        s_next = min(int((rng.random() > cum_P[s, a]).sum()), S - 1)  # s' ~ P(.|s, a)
        done = bool(terminal[s_next])
        N[s, a] += 1
        # eq-q-learning in place (q_learning_update copies the whole table: too slow inside a loop)
        target = R[s, a] + (0.0 if done else mdp.gamma * Q[s_next].max())
        Q[s, a] += (target - Q[s, a]) / N[s, a] ** omega
        s = reset() if done else s_next
        if record_every and (t + 1) % record_every == 0:
            snapshots.append(Q.copy())
    return Q, N, np.asarray(snapshots).reshape(-1, S, A)


def epsilon_greedy_probs(q_values, epsilon: float) -> np.ndarray:
    """Action probabilities of the epsilon-greedy policy (eq-epsilon-greedy), ``[B, A]`` or ``[A]``:
    ``epsilon / A`` for every action plus ``1 - epsilon`` for ``argmax_a Q(s, a)`` (the first one on ties),
    matching :func:`rlcore.algos.dqn.act` with ``deterministic=False``."""
    q = np.asarray(q_values, dtype=np.float64)
    A = q.shape[-1]
    probs = np.full(q.shape, epsilon / A)
    greedy = np.eye(A)[q.argmax(-1)]
    return probs + (1.0 - epsilon) * greedy


# --------------------------------------------------------------------- checkers
def check_dqn_target(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-01-dqn-target: ``fn(rewards, next_q_target, terminated, truncated, gamma)`` returns
    ``y = r + gamma (1 - terminated) max_a' Q_target(s', a')`` (eq-dqn-target) for a batch.

    ``rewards``, ``terminated`` and ``truncated`` are float64 tensors ``[B]``, ``next_q_target`` is
    ``[B, A]`` (the target network at the *real* next state, also after a truncation).
    A truncated transition bootstraps like any other. Reference: :func:`rlcore.losses.td_target`.
    """
    from rlcore.losses import td_target

    def case(r, q, term, trunc, gamma, label=""):
        r, q, term, trunc = (torch.as_tensor(x, dtype=torch.float64) for x in (r, q, term, trunc))
        return Case({"rewards": r, "next_q_target": q, "terminated": term, "truncated": trunc, "gamma": gamma},
                    td_target(r, q, term, gamma), label)

    g = torch.Generator().manual_seed(0)
    cases = [
        case([1.0], [[2.0, 5.0]], [0.0], [0.0], 0.9, "one transition, the episode goes on"),
        case([1.0, 1.0], [[2.0, 5.0], [2.0, 5.0]], [0.0, 1.0], [0.0, 0.0], 0.9, "the second transition is terminal"),
        case([1.0, 1.0], [[2.0, 5.0], [2.0, 5.0]], [0.0, 0.0], [0.0, 1.0], 0.9,
             "the second transition hit the time limit (truncated, not terminal)"),
        case([0.5, -1.0, 2.0], [[1.0, -3.0, 0.0], [4.0, 4.0, 1.0], [-1.0, -2.0, -0.5]], [0.0, 0.0, 0.0],
             [0.0, 0.0, 0.0], 0.5, "three actions, negative values"),
    ]
    for i in range(3):
        B, A = 10, 2 + i
        ends = torch.rand(B, generator=g)
        cases.append(case(torch.randn(B, generator=g, dtype=torch.float64), torch.randn(B, A, generator=g, dtype=torch.float64),
                          (ends < 0.3).double(), (ends > 0.7).double(), 0.99, f"random batch {i + 1}"))

    def done(t, u):
        return torch.clamp(t + u, max=1.0)

    mistakes = [
        Mistake(lambda r, q, t, u, gamma: r + gamma * (1 - done(t, u)) * q.max(-1).values,
                "a truncated transition did not reach a terminal state: the pole is still up and s' still "
                "has value. Only `terminated` removes the bootstrap term; ignore `truncated` here."),
        Mistake(lambda r, q, t, u, gamma: r + gamma * q.max(-1).values,
                "a terminal next state has value 0: where terminated is 1 the target is the reward alone."),
        Mistake(lambda r, q, t, u, gamma: r + gamma * t * q.max(-1).values,
                "the mask is inverted: bootstrap when the next state is *not* terminal, not when it is."),
        Mistake(lambda r, q, t, u, gamma: r + gamma * (1 - t) * q.mean(-1),
                "Q-learning bootstraps from the best next action (eq-bellman-optimality): max over a', not the mean."),
        Mistake(lambda r, q, t, u, gamma: r + (1 - t) * q.max(-1).values,
                "the discount gamma is missing in front of the next state's value."),
    ]
    return check(fn, cases, "dqn_target",
                 hint="reread eq-dqn-target: the target is the reward plus the discounted value of the best next "
                      "action according to the target network; a terminal next state has no value, and a "
                      "time limit (truncated) is not a terminal state.",
                 raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-01-dqn-target")


def check_epsilon_greedy(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-01-epsilon-greedy: ``fn(q_values, epsilon)`` returns the ``[B, A]`` matrix of action
    probabilities of the epsilon-greedy policy (eq-epsilon-greedy): with probability ``epsilon`` a
    uniformly random action (any of the ``A``, the greedy one included), otherwise ``argmax_a Q(s, a)``.

    ``q_values`` is a float64 numpy array ``[B, A]`` without ties. Reference: :func:`epsilon_greedy_probs`.
    """

    def case(q, eps, label=""):
        q = np.asarray(q, dtype=np.float64)
        return Case({"q_values": q, "epsilon": eps}, epsilon_greedy_probs(q, eps), label)

    g = np.random.default_rng(5)
    cases = [
        case([[1.0, 2.0]], 0.0, "epsilon = 0: the greedy action"),
        case([[1.0, 2.0]], 1.0, "epsilon = 1: uniformly random"),
        case([[3.0, 1.0, 2.0]], 0.3, "three actions, the first is greedy"),
        case([[-5.0, -1.0, -2.0, -3.0], [0.5, 0.1, 0.9, 0.0]], 0.1, "two states, negative values"),
        *(case(g.normal(size=(6, k)), float(g.uniform(0.01, 0.5)), f"random batch with {k} actions") for k in (2, 5, 9)),
    ]

    def greedy_only(q, eps):
        return np.eye(q.shape[-1])[q.argmax(-1)]

    def no_share(q, eps):
        return (1 - eps) * np.eye(q.shape[-1])[q.argmax(-1)]

    def others_only(q, eps):
        A = q.shape[-1]
        onehot = np.eye(A)[q.argmax(-1)]
        return (1 - eps) * onehot + eps / (A - 1) * (1 - onehot)

    def argmin(q, eps):
        return epsilon_greedy_probs(-q, eps)

    mistakes = [
        Mistake(greedy_only, "with probability epsilon the agent explores: every action has a nonzero "
                             "probability."),
        Mistake(no_share, "the random action is drawn from *all* A actions, the greedy one included: every "
                          "action gets its share of epsilon, and each row must sum to 1."),
        Mistake(others_only, "in DQN the exploratory action is uniform over all A actions, the greedy one "
                             "included, not over the A - 1 others."),
        Mistake(argmin, "greedy means the action with the *largest* Q-value."),
    ]
    return check(fn, cases, "epsilon_greedy",
                 hint="reread eq-epsilon-greedy: with probability epsilon the action is uniform over all A actions "
                      "(the greedy one included), otherwise it is the greedy action; each row is a probability "
                      "distribution over the actions.",
                 raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-01-epsilon-greedy")


def check_q_learning_update(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-01-q-learning: ``fn(Q, s, a, r, s_next, terminated, alpha, gamma)`` returns the
    table after one Q-learning step (eq-q-learning); only ``Q[s, a]`` changes.

    ``Q`` is a float64 numpy array ``[S, A]``; ``s, a, s_next`` are ints, ``terminated`` a bool.
    Reference: :func:`q_learning_update`.
    """

    def case(Q, s, a, r, s_next, term, alpha, gamma, label=""):
        Q = np.asarray(Q, dtype=np.float64)
        args = {"Q": Q, "s": s, "a": a, "r": r, "s_next": s_next, "terminated": term, "alpha": alpha, "gamma": gamma}
        return Case(args, q_learning_update(*args.values()), label)

    g = np.random.default_rng(7)
    Q0 = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])
    cases = [
        case(np.zeros((2, 2)), 0, 1, 1.0, 1, False, 0.5, 0.9, "an all-zero table"),
        case(Q0, 0, 0, 1.0, 1, False, 0.1, 0.9, "bootstrap from max_a' Q(s', a') = 2"),
        case(Q0, 0, 0, 1.0, 1, True, 0.1, 0.9, "s' is terminal: the target is r alone"),
        case(Q0, 1, 1, -1.0, 1, False, 1.0, 0.5, "alpha = 1 and s' = s"),
        *(case(g.normal(size=(S, A)), int(g.integers(S)), int(g.integers(A)), float(g.normal()), int(g.integers(S)),
               bool(g.random() < 0.3), float(g.uniform(0.05, 0.9)), 0.95, f"random {S}x{A} table")
          for S, A in ((4, 2), (6, 3), (10, 4))),
    ]

    def make(target_of, step=lambda q, t, alpha: q + alpha * (t - q)):
        def wrong(Q, s, a, r, s_next, term, alpha, gamma):
            Q = np.array(Q, dtype=np.float64, copy=True)
            Q[s, a] = step(Q[s, a], target_of(Q, s, r, s_next, term, gamma), alpha)
            return Q
        return wrong

    mistakes = [
        Mistake(make(lambda Q, s, r, sn, term, gamma: r + gamma * Q[sn].max()),
                "a terminal s' has value 0: the target is the reward alone when terminated is True."),
        Mistake(make(lambda Q, s, r, sn, term, gamma: r + (0.0 if term else gamma * Q[sn].mean())),
                "Q-learning's target uses the best next action, max over a' (eq-bellman-optimality), not the "
                "average over a'."),
        Mistake(make(lambda Q, s, r, sn, term, gamma: r + (0.0 if term else gamma * Q[s].max())),
                "bootstrap from the *next* state s_next, not from the current state s."),
        Mistake(make(lambda Q, s, r, sn, term, gamma: r + (0.0 if term else gamma * Q[sn].max()),
                     step=lambda q, t, alpha: t),
                "move Q(s,a) only a step alpha towards the target; do not replace it by the target."),
        Mistake(make(lambda Q, s, r, sn, term, gamma: r + (0.0 if term else gamma * Q[sn].max()),
                     step=lambda q, t, alpha: q + alpha * t),
                "the step is alpha times the TD *error* (the target minus the current estimate), not alpha "
                "times the target."),
    ]
    return check(fn, cases, "q_learning_update",
                 hint="reread eq-q-learning: move Q(s, a) a fraction alpha of the way towards the TD target (the "
                      "reward plus the discounted best value of the next state, which has no value if it is "
                      "terminal); work on a copy and change only the entry (s, a).",
                 raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-01-q-learning")


def check_huber_loss(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-01-huber: ``fn(q_values, actions, targets)`` returns DQN's loss (eq-dqn-loss): the mean
    over the batch of the Huber loss (eq-huber, threshold 1) between ``Q(s_i, a_i)`` and ``y_i``.

    ``q_values`` is a float64 tensor ``[B, A]``, ``actions`` int64 ``[B]``, ``targets`` float64 ``[B]``.
    Reference: :func:`rlcore.losses.dqn_loss` with ``kind="huber"``.
    """
    from rlcore.losses import dqn_loss

    def case(q, a, y, label=""):
        q = torch.as_tensor(q, dtype=torch.float64)
        a = torch.as_tensor(a, dtype=torch.int64)
        y = torch.as_tensor(y, dtype=torch.float64)
        return Case({"q_values": q, "actions": a, "targets": y}, dqn_loss(q, a, y, kind="huber"), label)

    g = torch.Generator().manual_seed(3)
    cases = [
        case([[1.0, 2.0]], [0], [1.5], "small error 0.5: the quadratic branch"),
        case([[1.0, 2.0]], [1], [5.0], "large error 3: the linear branch"),
        case([[0.0, 0.0], [0.0, 0.0]], [0, 1], [1.0, -3.0], "an error of exactly 1 (the kink) and one of 3"),
        case([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], [2, 1], [0.0, 0.5], "the loss uses Q(s, a) of the action taken"),
    ]
    for i, (B, A, scale) in enumerate(((16, 2, 0.5), (32, 3, 3.0), (64, 4, 1.5))):
        cases.append(case(scale * torch.randn(B, A, generator=g, dtype=torch.float64),
                          torch.randint(0, A, (B,), generator=g),
                          scale * torch.randn(B, generator=g, dtype=torch.float64), f"random batch {i + 1}"))

    def gathered(q, a):
        return q.gather(-1, a.long()[:, None]).squeeze(-1)

    def huber(x):
        return torch.where(x.abs() < 1, 0.5 * x**2, x.abs() - 0.5)

    mistakes = [
        Mistake(lambda q, a, y: (0.5 * (gathered(q, a) - y) ** 2).mean(),
                "that is the squared error for every size of error; Huber is quadratic only for |error| < 1 and "
                "linear beyond, so a large TD error cannot produce a huge gradient."),
        Mistake(lambda q, a, y: ((gathered(q, a) - y) ** 2).mean(),
                "that is the plain squared error; Huber (eq-huber) is quadratic only for |x| < 1 and linear "
                "beyond."),
        Mistake(lambda q, a, y: huber(q.max(-1).values - y).mean(),
                "regress Q(s, a) of the action that was *taken*, not max_a Q(s, a)."),
        Mistake(lambda q, a, y: huber(gathered(q, a) - y).sum(),
                "average over the batch (mean), do not sum."),
        Mistake(lambda q, a, y: (gathered(q, a) - y).abs().mean(),
                "that is the absolute error everywhere; near zero Huber is quadratic (eq-huber)."),
        Mistake(lambda q, a, y: torch.where((gathered(q, a) - y).abs() < 1, (gathered(q, a) - y) ** 2,
                                            (gathered(q, a) - y).abs() - 0.5).mean(),
                "the quadratic branch has a factor one half, so that the two branches and their slopes meet "
                "where |x| is 1 (eq-huber)."),
    ]
    return check(fn, cases, "huber_loss",
                 hint="reread eq-dqn-loss and eq-huber: in each row take the Q-value of the action that was "
                      "taken, compare it with its target, apply the Huber function with threshold 1 (quadratic "
                      "near zero, linear beyond) and average over the batch.",
                 raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-01-huber")


# --------------------------------------------------------------------- derivation: the deadly triad
def triad_factor(alpha, gamma, p):
    """The reference: the factor by which one semi-gradient TD update multiplies the *expected* weight of the
    chapter's two-state example (values ``w`` and ``2w``), when the update uses the transition ``s_1 -> s_2``
    (reward 0) with probability ``p`` and ``s_2 -> terminal`` (reward 0) otherwise. The first multiplies ``w``
    by ``1 + alpha (2 gamma - 1)``, the second by ``1 - 4 alpha``."""
    return 1 + alpha * (p * (2 * gamma - 1) - 4 * (1 - p))


def check_triad_factor(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-01-triad-factor: ``fn(alpha, gamma, p)``, called with sympy symbols, returns the expected
    growth factor :func:`triad_factor` of the weight ``w`` per update. Compared at hand-made and random points."""
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    alpha, gamma, p = sp.symbols("alpha gamma p", positive=True)
    symbols = {"alpha": alpha, "gamma": gamma, "p": p}
    reference = triad_factor(alpha, gamma, p)

    def pt(a, g, m):
        return {"alpha": a, "gamma": g, "p": m}

    points = [(pt(0.1, 0.99, 1.0), "only the first transition is ever trained (the chapter's off-policy run)"),
              (pt(0.1, 0.99, 0.5), "both transitions equally often, as the policy visits them"),
              (pt(0.1, 0.4, 1.0), "a small discount, first transition only"),
              (pt(0.05, 0.9, 0.8), "mostly the first transition")]
    rng = np.random.default_rng(1)
    points += [(pt(float(np.round(rng.uniform(0.01, 0.5), 3)), float(np.round(rng.uniform(0.05, 0.999), 3)),
                   float(np.round(rng.uniform(0.01, 1.0), 3))), f"random point {i + 1}") for i in range(8)]
    mistakes = [
        (1 + alpha * (2 * gamma - 1),
         "that is the factor of an update on the first transition alone; the expectation mixes the two kinds of "
         "update in proportion to how often each is drawn."),
        (1 + alpha * (p * (2 * gamma - 1) - 2 * (1 - p)),
         "the update on the second transition is too small by a factor 2: the semi-gradient multiplies the TD "
         "error by the gradient of that state's value, its feature 2, and the TD error itself is proportional to "
         "2w."),
        (1 - alpha * (p * (2 * gamma - 1) ** 2 + 4 * (1 - p)),
         "you differentiated through the target as well (a full gradient of the squared TD error); semi-gradient "
         "TD holds the target fixed and differentiates only the prediction."),
        (1 + alpha * (p * (2 * gamma - 1) - 4 * p),
         "the probabilities are swapped: the first transition is drawn with probability p, the second with the "
         "rest."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "triad_factor",
        hint="write one semi-gradient TD update for each transition (target held fixed, step alpha times the TD "
             "error times the gradient of the predicted value): each multiplies w by a constant; the expected "
             "factor weights the two constants by the probabilities of drawing each transition.",
        exercise="ex-01-triad-factor", mistakes=mistakes, raise_on_fail=raise_on_fail)
