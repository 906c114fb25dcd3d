"""Equation tests for PPO on language models (C14, C15): eq-rlhf-reward, token-level GAE, eq-ppo-lm,
and the exact relationship between "KL in the reward" and "KL in the loss"."""
import itertools
import math

import pytest
import torch

from rlcore.llm.ppo import (ValueHead, per_token_rewards, ppo_lm_loss, sequence_logprobs_and_values,
                            token_gae)


def _mask(lengths, L):
    return (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()


# ------------------------------------------------------------------ eq-rlhf-reward
def test_per_token_rewards_matches_formula():
    g = torch.Generator().manual_seed(0)
    lengths, L, beta = [5, 1, 3, 5], 5, 0.07
    mask = _mask(lengths, L)
    logp = -torch.rand(4, L, generator=g) * 3 * mask
    ref = -torch.rand(4, L, generator=g) * 3 * mask
    scores = torch.tensor([1.0, -0.5, 0.25, 2.0])
    r = per_token_rewards(scores, logp, ref, mask, beta)
    for i, n in enumerate(lengths):
        for t in range(L):
            if t >= n:
                expected = 0.0
            else:
                expected = -beta * (logp[i, t].item() - ref[i, t].item()) + (scores[i].item() if t == n - 1 else 0.0)
            assert r[i, t].item() == pytest.approx(expected, abs=1e-6)
    # the sum over a sequence is score - beta * sequence log-ratio
    assert torch.allclose(r.sum(1), scores - beta * ((logp - ref) * mask).sum(1), atol=1e-6)


def test_per_token_rewards_bad_input():
    m = torch.ones(2, 3)
    with pytest.raises(ValueError, match="one score per completion"):
        per_token_rewards([1.0], torch.zeros(2, 3), torch.zeros(2, 3), m, 0.1)
    with pytest.raises(ValueError, match="at least one generated token"):
        per_token_rewards([1.0, 2.0], torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1, 1, 0], [0, 0, 0]]), 0.1)


# ------------------------------------------------------------------ token-level GAE
def test_token_gae_gamma_lambda_one_zero_values_is_reward_to_go():
    g = torch.Generator().manual_seed(1)
    lengths, L = [4, 2, 6], 6
    mask = _mask(lengths, L)
    rewards = torch.randn(3, L, generator=g) * mask
    values = torch.zeros(3, L + 1)
    adv, ret = token_gae(rewards, values, mask, terminated=[True, False, True], gamma=1.0, gae_lambda=1.0)
    for i, n in enumerate(lengths):
        for t in range(n):
            assert adv[i, t].item() == pytest.approx(rewards[i, t:n].sum().item(), abs=1e-5)
        assert torch.all(adv[i, n:] == 0)
    assert torch.allclose(ret, adv)


def test_token_gae_terminated_vs_truncated_bootstrap():
    # one-token completions: A = r + gamma * V(next) * (1 - terminated) - V(s_0)
    mask = torch.ones(2, 1, dtype=torch.long)
    rewards = torch.tensor([[1.0], [1.0]])
    values = torch.tensor([[0.3, 5.0], [0.3, 5.0]])  # V(s_0), V(s_1)
    adv, ret = token_gae(rewards, values, mask, terminated=[True, False], gamma=0.9, gae_lambda=0.5)
    assert adv[0, 0].item() == pytest.approx(1.0 - 0.3)  # EOS: the value after it is 0
    assert adv[1, 0].item() == pytest.approx(1.0 + 0.9 * 5.0 - 0.3)  # max length: bootstrap
    # general gamma, lambda against the explicit sum of (gamma lambda)^l delta_{t+l}
    g = torch.Generator().manual_seed(2)
    L, gamma, lam = 5, 0.95, 0.8
    r = torch.randn(1, L, generator=g)
    v = torch.randn(1, L + 1, generator=g)
    adv, _ = token_gae(r, v, torch.ones(1, L), terminated=[False], gamma=gamma, gae_lambda=lam)
    delta = [r[0, t] + gamma * v[0, t + 1] - v[0, t] for t in range(L)]
    for t in range(L):
        expected = sum((gamma * lam) ** k * delta[t + k] for k in range(L - t))
        assert adv[0, t].item() == pytest.approx(expected.item(), abs=1e-5)


# ------------------------------------------------------------------ eq-ppo-lm on a toy LM
def test_token_level_loss_on_toy_lm_matches_formula():
    from rlcore.llm.models import tiny_model

    model, tok = tiny_model(seed=3, n_layer=1, d_model=32)
    wrapped = ValueHead(model)
    g = torch.Generator().manual_seed(3)
    prompts = [[10, 11, 12], [13, 14]]
    comps = [[20, 21, 22, 23], [24, 25]]
    P, L = 3, 4
    pad = tok.pad_token_id
    p_ids = torch.full((2, P), pad)
    p_mask = torch.zeros(2, P, dtype=torch.long)
    c_ids = torch.full((2, L), pad)
    c_mask = torch.zeros(2, L, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        p_ids[i, P - len(p):] = torch.tensor(p)  # left padding
        p_mask[i, P - len(p):] = 1
        c_ids[i, :len(c)] = torch.tensor(c)  # right padding
        c_mask[i, :len(c)] = 1
    logp, values = sequence_logprobs_and_values(wrapped, p_ids, p_mask, c_ids, c_mask, temperature=0.7)
    assert values.shape == (2, L + 1)
    # independent: run each unpadded sequence alone and read off log-softmax(logits / T)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        x = torch.tensor([p + c])
        lp = torch.log_softmax(model(input_ids=x).logits[0] / 0.7, -1)
        for t, tok_id in enumerate(c):
            assert logp[i, t].item() == pytest.approx(lp[len(p) + t - 1, tok_id].item(), abs=1e-4)
    old = (logp + 0.3 * torch.randn(2, L, generator=g)).detach()
    adv = torch.randn(2, L, generator=g)
    eps = 0.2
    loss, metrics = ppo_lm_loss(logp, old, adv, c_mask, clip_coef=eps)
    expected = 0.0
    for i, c in enumerate(comps):
        s = 0.0
        for t in range(len(c)):
            ratio = math.exp(logp[i, t].item() - old[i, t].item())
            a = adv[i, t].item()
            s += min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
        expected += s / len(c)
    expected = -expected / len(comps)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    # padding does not matter: changing padded entries leaves the loss unchanged
    adv2 = adv.clone()
    adv2[c_mask == 0] = 1e3
    assert ppo_lm_loss(logp, old, adv2, c_mask, clip_coef=eps)[0].item() == pytest.approx(loss.item(), abs=1e-6)


# ------------------------------------------------------------------ KL in the reward vs KL in the loss
def _two_token_lm(seed, V=3, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    th1 = (scale * torch.randn(V, generator=g)).requires_grad_(True)
    th2 = (scale * torch.randn(V, V, generator=g)).requires_grad_(True)
    ref1 = torch.randn(V, generator=g)
    ref2 = torch.randn(V, V, generator=g)
    return th1, th2, ref1, ref2


def _seq_logps(th1, th2, ref1, ref2, V=3):
    seqs = list(itertools.product(range(V), repeat=2))
    lp1, lp2 = torch.log_softmax(th1, -1), torch.log_softmax(th2, -1)
    r1, r2 = torch.log_softmax(ref1, -1), torch.log_softmax(ref2, -1)
    logp = torch.stack([torch.stack([lp1[a], lp2[a, b]]) for a, b in seqs])  # [9, 2]
    ref = torch.stack([torch.stack([r1[a], r2[a, b]]) for a, b in seqs])
    return seqs, logp, ref


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_in_reward_gradient_is_sequence_kl_gradient(seed):
    """KL in the reward (k1 per token, gamma=lambda=1, V=0): the expected gradient of eq-ppo-lm at
    theta=theta_old equals (beta/|o|) grad KL(pi_theta || pi_ref) over whole sequences (exact enumeration)."""
    beta = 0.3
    th1, th2, ref1, ref2 = _two_token_lm(seed)
    seqs, logp, ref = _seq_logps(th1, th2, ref1, ref2)
    mask = torch.ones_like(logp)
    rewards = per_token_rewards(torch.zeros(len(seqs)), logp, ref, mask, beta)
    adv, _ = token_gae(rewards, torch.zeros(len(seqs), 3), mask, [True] * len(seqs), gamma=1.0, gae_lambda=1.0)
    prob = logp.sum(1).exp().detach()  # pi(sequence), the sampling weight
    expected_loss = sum(prob[i] * ppo_lm_loss(logp[i:i + 1], logp[i:i + 1].detach(), adv[i:i + 1], mask[i:i + 1])[0]
                        for i in range(len(seqs)))
    g_reward = torch.autograd.grad(expected_loss, [th1, th2])
    # independent: exact sequence-level KL and autograd
    th1b, th2b = th1.detach().clone().requires_grad_(True), th2.detach().clone().requires_grad_(True)
    _, lp, rf = _seq_logps(th1b, th2b, ref1, ref2)
    kl_seq = (lp.sum(1).exp() * (lp.sum(1) - rf.sum(1))).sum()
    g_kl = torch.autograd.grad(kl_seq, [th1b, th2b])
    for a, b in zip(g_reward, g_kl):
        assert torch.allclose(a, beta / 2 * b, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_in_loss_gradient_is_per_token_reverse_kl(seed):
    """KL in the loss (k3): the expected gradient is (beta/|o|) sum_t E_{o<t~pi}[grad KL(pi_ref(.|o<t) || pi_theta(.|o<t))]:
    the *reverse* KL, per visited state, ignoring how theta changes which states are visited.
    With k1 in the loss the expected gradient is exactly zero (E[grad log pi] = 0)."""
    beta = 0.3
    th1, th2, ref1, ref2 = _two_token_lm(seed)
    seqs, logp, ref = _seq_logps(th1, th2, ref1, ref2)
    mask = torch.ones_like(logp)
    zero_adv = torch.zeros_like(logp)
    prob = logp.sum(1).exp().detach()

    def expected_grad(estimator):
        total = sum(prob[i] * ppo_lm_loss(logp[i:i + 1], logp[i:i + 1].detach(), zero_adv[i:i + 1], mask[i:i + 1],
                                          ref_logp=ref[i:i + 1], kl_coef=beta, kl_estimator=estimator)[0]
                    for i in range(len(seqs)))
        return torch.autograd.grad(total, [th1, th2], retain_graph=True)

    g_k3 = expected_grad("k3")
    # independent: per-state reverse KL, states weighted by (detached) visitation probabilities
    th1b, th2b = th1.detach().clone().requires_grad_(True), th2.detach().clone().requires_grad_(True)
    lp1, lp2 = torch.log_softmax(th1b, -1), torch.log_softmax(th2b, -1)
    r1, r2 = torch.log_softmax(ref1, -1), torch.log_softmax(ref2, -1)
    rev1 = (r1.exp() * (r1 - lp1)).sum()
    rev2 = (lp1.exp().detach() * (r2.exp() * (r2 - lp2)).sum(-1)).sum()
    g_ref = torch.autograd.grad(rev1 + rev2, [th1b, th2b])
    for a, b in zip(g_k3, g_ref):
        assert torch.allclose(a, beta / 2 * b, atol=1e-5)
    for a in expected_grad("k1"):
        assert torch.allclose(a, torch.zeros_like(a), atol=1e-6)


def test_kl_in_reward_and_in_loss_agree_near_reference():
    """Both KL placements push towards pi_ref: positive alignment in general, and for pi_theta close to pi_ref
    (KL(p||q) and KL(q||p) agree to second order) their single-token gradients coincide to first order."""
    cos = []
    for scale in (1.0, 1e-2):
        g = torch.Generator().manual_seed(5)
        ref_logits = torch.randn(4, generator=g)
        th = (ref_logits + scale * torch.randn(4, generator=g)).requires_grad_(True)
        logp = torch.log_softmax(th, -1)[:, None]  # 4 one-token "sequences"
        ref = torch.log_softmax(ref_logits, -1)[:, None]
        mask = torch.ones_like(logp)
        prob = logp.exp().detach()[:, 0]
        rew = per_token_rewards(torch.zeros(4), logp, ref, mask, beta=1.0)
        adv, _ = token_gae(rew, torch.zeros(4, 2), mask, [True] * 4, 1.0, 1.0)
        lr = sum(prob[i] * ppo_lm_loss(logp[i:i + 1], logp[i:i + 1].detach(), adv[i:i + 1], mask[i:i + 1])[0] for i in range(4))
        ll = sum(prob[i] * ppo_lm_loss(logp[i:i + 1], logp[i:i + 1].detach(), torch.zeros(1, 1), mask[i:i + 1],
                                       ref_logp=ref[i:i + 1], kl_coef=1.0)[0] for i in range(4))
        (gr,) = torch.autograd.grad(lr, th, retain_graph=True)
        (gl,) = torch.autograd.grad(ll, th)
        cos.append(torch.nn.functional.cosine_similarity(gr, gl, dim=0).item())
        if scale < 0.1:
            assert torch.allclose(gr, gl, atol=5 * scale * gr.norm().item())
    assert all(c > 0 for c in cos)
    assert cos[1] > 0.999
