"""Checkers for chapter 5's exercises (PPO for language models, RLHF): the per-token RLHF reward,
the token-level clipped PPO loss with a completion mask, and GAE along the tokens of a completion; and a
derivation, the success probability of the maximiser of the KL-regularised objective for a 0/1 reward (a
formula, see :mod:`rlcore.exercise_checks._derivation`).

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first, then random ones,
expected values from rlcore's reference (:mod:`rlcore.llm.ppo`), and known mistakes with a hint
each::

    from rlcore.exercise_checks import ch05 as checks
    checks.check_per_token_rewards(my_per_token_rewards)

All tensors are float64 and right-padded: row ``i`` of a ``[N, L]`` tensor holds completion ``i``,
``completion_mask[i, t] = 1`` on its ``|o_i|`` generated tokens and 0 on the padding after them.
"""
from __future__ import annotations

from typing import Callable

import torch

from rlcore.exercises import Case, Mistake, check

__all__ = ["check_per_token_rewards", "check_token_ppo_loss", "check_token_gae", "random_batch",
           "check_kl_optimum_success", "kl_optimum_success"]

DTYPE = torch.float64


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=DTYPE)


def _mask(lengths, L) -> torch.Tensor:
    return (torch.arange(L)[None, :] < torch.as_tensor(lengths)[:, None]).to(DTYPE)


def random_batch(N: int, L: int, seed: int, min_len: int = 1):
    """A random right-padded batch: ``(logp, old_logp, ref_logp, mask)``, float64 ``[N, L]``.

    Log-probabilities are negative; entries on the padding hold junk values (not 0) so that a
    solution which forgets the mask gets a different answer.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, L + 1, (N,), generator=g)
    lengths[0] = L  # at least one completion fills the width
    mask = _mask(lengths, L)
    logp = -torch.rand(N, L, generator=g, dtype=DTYPE) * 3 - 0.05
    old = logp + 0.3 * torch.randn(N, L, generator=g, dtype=DTYPE)
    ref = logp + 0.5 * torch.randn(N, L, generator=g, dtype=DTYPE)
    return logp, old, ref, mask


# --------------------------------------------------------------------- per-token rewards
def _rewards_variant(scores, logp, ref_logp, mask, beta, *, where="last", flip=False, masked=True):
    kl = (ref_logp - logp) if flip else (logp - ref_logp)
    r = -beta * kl * (mask if masked else 1.0)
    N, L = logp.shape
    last = mask.sum(1).long() - 1
    for i in range(N):
        if where == "last":
            r[i, last[i]] += scores[i]
        elif where == "column":
            r[i, L - 1] += scores[i]
        elif where == "first":
            r[i, 0] += scores[i]
        elif where == "every":
            r[i] += scores[i] * mask[i]
    return r


def check_per_token_rewards(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-05-rewards: ``fn(scores, logp, ref_logp, completion_mask, beta)`` returns the per-token
    RLHF reward of eq-rlhf-reward, a ``[N, L]`` tensor:

    ``r_{i,t} = scores_i * 1[t = |o_i| - 1] - beta * (logp_{i,t} - ref_logp_{i,t})`` on generated tokens,
    0 on padding (t counts from 0, so ``|o_i| - 1`` is the last generated token).

    ``scores`` is ``[N]``, the other tensors ``[N, L]``. Reference: :func:`rlcore.llm.ppo.per_token_rewards`.
    """
    from rlcore.llm.ppo import per_token_rewards

    def case(scores, logp, ref, mask, beta, label):
        args = {"scores": _t(scores), "logp": _t(logp), "ref_logp": _t(ref), "completion_mask": _t(mask),
                "beta": beta}
        expected = per_token_rewards(args["scores"], args["logp"], args["ref_logp"], args["completion_mask"], beta)
        return Case(args, expected.to(DTYPE), label)

    lp = [[-1.0, -0.5, -2.0]]
    cases = [
        case([1.0], lp, lp, [[1.0, 1.0, 1.0]], 0.1, "policy equals the reference: only the score, on the last token"),
        case([0.0], [[-1.0, -0.5, -2.0]], [[-1.5, -0.5, -1.0]], [[1.0, 1.0, 1.0]], 0.5,
             "score 0: only the KL penalty -beta * (logp - ref_logp)"),
        case([2.0, -1.0], [[-1.0, -0.5, -2.0], [-0.3, -0.7, -9.0]], [[-1.2, -0.5, -2.0], [-0.4, -0.2, -3.0]],
             [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], 0.2,
             "second completion has 2 tokens: its score goes on t = 1, and the padding stays 0"),
    ]
    for i, (N, L, beta) in enumerate([(4, 6, 0.05), (6, 9, 0.3), (3, 12, 1.0)]):
        logp, _, ref, mask = random_batch(N, L, seed=10 + i)
        scores = torch.randn(N, generator=torch.Generator().manual_seed(i), dtype=DTYPE)
        cases.append(case(scores, logp, ref, mask, beta, f"random batch {i + 1} (N = {N}, L = {L})"))

    mistakes = [
        Mistake(lambda *a: _rewards_variant(*a, where="column"),
                "the score belongs on each completion's *own* last generated token, not on the last column of "
                "the padded tensor."),
        Mistake(lambda *a: _rewards_variant(*a, where="every"),
                "the sequence score is paid once, at the end of the completion (eq-rlhf-reward), not on every "
                "token."),
        Mistake(lambda *a: _rewards_variant(*a, where="first"),
                "the score arrives when the completion is finished: on its last generated token, not the first."),
        Mistake(lambda *a: _rewards_variant(*a, flip=True),
                "sign of the KL term: the penalty grows when the policy puts *more* probability on the token "
                "than the reference does."),
        Mistake(lambda *a: _rewards_variant(*a, masked=False),
                "padding positions must get reward 0: the KL penalty applies only to generated tokens."),
    ]
    return check(fn, cases, "per_token_rewards",
                 hint="reread eq-rlhf-reward: every generated token pays the KL penalty of its own log-probability "
                      "against the reference's, the sequence score is added once on each completion's own last "
                      "generated token, and the padding gets nothing.",
                 atol=1e-5, rtol=1e-5, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-05-rewards")


# --------------------------------------------------------------------- token-level PPO loss
def _loss_variant(logp, old, adv, mask, eps, *, agg="seq", clip=True, combine=torch.min, sign=-1.0):
    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps) * adv if clip else ratio * adv
    per = sign * combine(ratio * adv, clipped)
    if agg == "seq":
        return ((per * mask).sum(1) / mask.sum(1)).mean()
    if agg == "tokens":
        return (per * mask).sum() / mask.sum()
    if agg == "padded":
        return (per * mask).mean()
    return per.mean()  # "nomask"


def check_token_ppo_loss(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-05-token-loss: ``fn(logp, old_logp, advantages, completion_mask, clip_coef)`` returns the
    token-level clipped PPO loss of eq-ppo-lm (a scalar to minimise):

    ``-1/N sum_i 1/|o_i| sum_{t < |o_i|} min(rho_{i,t} A_{i,t}, clip(rho_{i,t}, 1 - eps, 1 + eps) A_{i,t})``,
    ``rho_{i,t} = exp(logp_{i,t} - old_logp_{i,t})``.

    All inputs are ``[N, L]`` (padding holds junk that must not count). Reference: the policy part of
    :func:`rlcore.llm.ppo.ppo_lm_loss`.
    """
    from rlcore.llm.ppo import ppo_lm_loss

    def case(logp, old, adv, mask, eps, label):
        args = {"logp": _t(logp), "old_logp": _t(old), "advantages": _t(adv), "completion_mask": _t(mask),
                "clip_coef": eps}
        expected, _ = ppo_lm_loss(*args.values())
        return Case(args, expected.to(DTYPE), label)

    z = [[-1.0, -1.0, -1.0, -1.0]]
    cases = [
        case(z, z, [[1.0, 2.0, 3.0, 4.0]], [[1.0, 1.0, 1.0, 1.0]], 0.2,
             "ratio 1 everywhere: the loss is minus the mean advantage"),
        case([[-1.0, -1.0], [-1.0, -1.0]], [[-1.0, -1.0], [-1.0, -1.0]], [[1.0, 9.0], [1.0, 1.0]],
             [[1.0, 0.0], [1.0, 1.0]], 0.2,
             "padding: row 0 has one token, so its junk advantage 9 must not count"),
        case([[0.0, 0.0]], [[-1.0, 0.5]], [[-1.0, 1.0]], [[1.0, 1.0]], 0.2,
             "ratios e and e^-0.5 are outside [0.8, 1.2], but the unclipped terms are the smaller (pessimistic) ones"),
        case([[0.0, 0.0]], [[-1.0, 0.5]], [[1.0, -1.0]], [[1.0, 1.0]], 0.2,
             "ratios e and e^-0.5 are outside [0.8, 1.2]: the clipped terms win"),
        case([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]], [[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]],
             [[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], 0.2,
             "sequence mean, then batch mean: a 3-token and a 1-token completion weigh the same"),
    ]
    for i, (N, L, eps) in enumerate([(4, 7, 0.2), (8, 5, 0.1), (3, 16, 0.3)]):
        logp, old, _, mask = random_batch(N, L, seed=20 + i)
        adv = torch.randn(N, L, generator=torch.Generator().manual_seed(30 + i), dtype=DTYPE)
        cases.append(case(logp, old, adv, mask, eps, f"random batch {i + 1} (N = {N}, L = {L}, eps = {eps})"))

    mistakes = [
        Mistake(lambda *a: _loss_variant(*a, agg="tokens"),
                "that is the mean over all tokens of the batch (a long completion counts more). eq-ppo-lm averages "
                "each completion's tokens first (divided by its own length |o_i|), then averages over "
                "completions."),
        Mistake(lambda *a: _loss_variant(*a, agg="padded"),
                "you divided by the padded width L: divide each row's masked sum by its own length |o_i|."),
        Mistake(lambda *a: _loss_variant(*a, agg="nomask"),
                "padding counted: only the generated tokens (completion_mask) may enter the sums."),
        Mistake(lambda *a: _loss_variant(*a, clip=False),
                "no clipping: the second term of eq-ppo-lm uses the ratio clipped to the band set by clip_coef."),
        Mistake(lambda *a: _loss_variant(*a, combine=torch.max),
                "take the *min* of the unclipped and the clipped term (the pessimistic bound), not the max."),
        Mistake(lambda *a: _loss_variant(*a, sign=1.0),
                "that is the objective J; the loss to minimise is its negative."),
    ]
    return check(fn, cases, "token_ppo_loss",
                 hint="reread eq-ppo-lm and eq-token-ratio: the clipped PPO term of chapter 4, token by token; "
                      "padding does not count, each completion's tokens are averaged first and then the "
                      "completions, and the loss is the negative of the objective.",
                 atol=1e-9, rtol=1e-7, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-05-token-loss")


# --------------------------------------------------------------------- token-level GAE
def _gae_loop(rewards, values, mask, gamma, lam, *, bootstrap_end=False, use_mask=True, lam_power=True):
    N, L = rewards.shape
    adv = torch.zeros_like(rewards)
    for i in range(N):
        n = int(mask[i].sum()) if use_mask else L
        running = 0.0
        for t in reversed(range(n)):
            v_next = values[i, t + 1] if (t + 1 < n or bootstrap_end) else 0.0
            delta = rewards[i, t] + gamma * v_next - values[i, t]
            running = delta + (gamma * lam if lam_power else gamma) * running
            adv[i, t] = running
    return adv


def check_token_gae(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-05-token-gae: ``fn(rewards, values, completion_mask, gamma, gae_lambda)`` returns the GAE
    advantages (eq-gae) along the tokens of each completion, ``[N, L]``, 0 on padding.

    ``rewards`` is ``[N, L]`` (from eq-rlhf-reward), ``values`` is ``[N, L+1]`` with ``values[i, t] = V(s_t)``
    for the state before token ``t``. Every completion ended with EOS (terminated): the state after its last
    token ``|o_i| - 1`` is terminal, worth 0, whatever ``values`` holds there; entries of ``values`` and
    ``rewards`` beyond a completion's end are junk. Reference: :func:`rlcore.llm.ppo.token_gae` with all
    completions terminated.
    """
    from rlcore.llm.ppo import token_gae

    def case(rewards, values, mask, gamma, lam, label):
        args = {"rewards": _t(rewards), "values": _t(values), "completion_mask": _t(mask), "gamma": gamma,
                "gae_lambda": lam}
        m = args["completion_mask"]
        expected, _ = token_gae(args["rewards"] * m, args["values"], m, torch.ones(m.shape[0], dtype=torch.bool),
                                gamma, lam)
        return Case(args, expected.to(DTYPE), label)

    one = [[1.0, 1.0, 1.0]]
    cases = [
        case([[0.0, 0.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]], one, 1.0, 1.0,
             "V = 0, gamma = lambda = 1: every token's advantage is the final reward"),
        case([[0.0, 0.0, 1.0]], [[0.2, 0.4, 0.6, 5.0]], one, 1.0, 0.0,
             "lambda = 0: one-step TD errors; the state after the last token is terminal (V = 0, not 5)"),
        case([[0.0, 0.0, 1.0]], [[0.2, 0.4, 0.6, 5.0]], one, 1.0, 0.5, "lambda = 0.5"),
        case([[-0.1, 0.0, 1.0], [-0.1, 2.0, 7.0]], [[0.5, 0.5, 0.5, 0.5], [0.3, 0.1, 9.0, 9.0]],
             [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], 1.0, 0.95,
             "row 1 ends after 2 tokens: V(s_2) = 9 and the reward 7 in the padding are junk"),
    ]
    for i, (N, L, gamma, lam) in enumerate([(4, 6, 1.0, 0.95), (5, 10, 0.99, 0.9), (3, 8, 1.0, 1.0)]):
        g = torch.Generator().manual_seed(40 + i)
        _, _, _, mask = random_batch(N, L, seed=50 + i)
        cases.append(case(torch.randn(N, L, generator=g, dtype=DTYPE), torch.randn(N, L + 1, generator=g, dtype=DTYPE),
                          mask, gamma, lam, f"random batch {i + 1} (gamma = {gamma}, lambda = {lam})"))

    mistakes = [
        Mistake(lambda *a: _gae_loop(*a, bootstrap_end=True),
                "the completion ended with EOS: the state after its last token is terminal and worth 0, "
                "whatever values holds there."),
        Mistake(lambda *a: _gae_loop(*a, use_mask=False),
                "each completion's recursion must start at its own last generated token; the padding after it "
                "is not part of the episode and its advantages are 0."),
        Mistake(lambda *a: _gae_loop(*a, lam_power=False),
                "lambda is missing: the advantage carried back from the next token is weighted by gamma lambda "
                "(eq-gae)."),
    ]
    return check(fn, cases, "token_gae",
                 hint="reread eq-gae: GAE of chapter 4 along the tokens of each completion, going backwards from "
                      "its own last generated token; the state after that token is terminal, and the padding "
                      "gets advantage 0.",
                 atol=1e-5, rtol=1e-5, raise_on_fail=raise_on_fail, mistakes=mistakes, exercise="ex-05-token-gae")


# --------------------------------------------------------------------- derivation: the KL-regularised optimum
def kl_optimum_success(p, beta):
    """The reference: the probability of a correct completion under the maximiser of
    ``E_pi[r] - beta KL(pi || pi_ref)`` (prop-rlhf-objective) over all distributions ``pi`` of completions,
    when ``r`` is 1 for a correct completion and 0 otherwise and ``pi_ref`` is correct with probability ``p``.
    The maximiser tilts the reference by ``exp(r / beta)``."""
    import sympy as sp

    w = p * sp.exp(1 / beta)
    return w / (w + 1 - p)


def check_kl_optimum_success(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-05-kl-optimum: ``fn(p, beta)``, called with sympy symbols (both positive, ``p < 1``), returns
    :func:`kl_optimum_success` as a formula; compared at hand-made and random points."""
    import numpy as np
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    p, beta = sp.symbols("p beta", positive=True)
    symbols = {"p": p, "beta": beta}
    reference = kl_optimum_success(p, beta)

    points = [({"p": 0.5, "beta": 1.0}, "a coin flip for the reference, beta 1"),
              ({"p": 0.01, "beta": 0.1}, "a rare success, cheap divergence"),
              ({"p": 0.01, "beta": 10.0}, "a rare success, expensive divergence"),
              ({"p": 0.9, "beta": 0.5}, "an easy question")]
    rng = np.random.default_rng(5)
    points += [({"p": float(np.round(rng.uniform(0.01, 0.99), 3)), "beta": float(np.round(np.exp(rng.uniform(
        np.log(0.05), np.log(5.0))), 3))}, f"random point {i + 1}") for i in range(8)]
    w = p * sp.exp(1 / beta)
    mistakes = [
        (w,
         "that is the tilted weight of the correct completions alone; the maximiser is a probability distribution, "
         "so the weights of the correct and of the wrong completions must be normalised together."),
        (p * sp.exp(beta) / (p * sp.exp(beta) + 1 - p),
         "beta is the price of a nat of divergence: the larger beta, the closer the optimum stays to the reference, "
         "so the tilt must weaken as beta grows."),
        (p * sp.exp(-1 / beta) / (p * sp.exp(-1 / beta) + 1 - p),
         "the tilt goes the wrong way: the maximiser puts *more* probability than the reference on the completions "
         "that earn the reward."),
        (sp.Integer(1),
         "without the KL term the optimum would always be correct; with it, the optimum trades reward against "
         "divergence from the reference and keeps some probability on wrong completions."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "kl_optimum_success",
        hint="maximise the objective of prop-rlhf-objective over all distributions of completions (a Lagrange "
             "multiplier for the normalisation, or the non-negativity of a KL divergence): the maximiser "
             "reweights the reference by a factor that depends only on the reward; then add up the probability of "
             "the correct completions.",
        exercise="ex-05-kl-optimum", mistakes=mistakes, raise_on_fail=raise_on_fail)
