"""GRPO loss (C14 token-level loss, C16 objective, C18 group advantages) against independent formulas."""
import pytest
import torch

from rlcore.llm.grpo import LOSS_TYPES, grpo_loss
from rlcore.returns import group_normalized_advantages, zero_variance_groups


def _batch(seed=0, N=6, L=7):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(N, L, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(N, L, generator=g, dtype=torch.float64)
    ref = logp + 0.3 * torch.randn(N, L, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).double()
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    return logp, old, ref, mask, adv


def _expected(logp, old, ref, mask, adv, el, eh, beta, loss_type, max_len, num_items=None):
    # written out from the paper formulas, without rlcore.losses / rlcore.kl
    N, L = logp.shape
    ratio = torch.exp(logp - old)
    A = adv[:, None]
    obj = torch.minimum(ratio * A, torch.clamp(ratio, 1 - el, 1 + eh) * A)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    per = -obj + beta * k3
    if loss_type == "grpo":
        return torch.stack([(per[i] * mask[i]).sum() / mask[i].sum() for i in range(N)]).mean()
    if loss_type == "bnpo":
        return (per * mask).sum() / mask.sum()
    if loss_type == "dr_grpo":
        return (per * mask).sum() / (N * max_len)
    return (per * mask).sum() / (mask.sum() if num_items is None else num_items)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_equals_formula(loss_type, beta):
    logp, old, ref, mask, adv = _batch()
    loss, metrics = grpo_loss(logp, old, ref, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28, beta=beta,
                              loss_type=loss_type, max_completion_length=10)
    expected = _expected(logp, old, ref, mask, adv, 0.2, 0.28, beta, loss_type, 10)
    torch.testing.assert_close(loss, expected)
    assert ("kl" in metrics) == (beta > 0)
    if beta > 0:
        k3 = torch.exp(ref - logp) - (ref - logp) - 1
        assert metrics["kl"] == pytest.approx(((k3 * mask).sum() / mask.sum()).item())


def test_clip_metrics_count_clipped_tokens():
    logp, old, ref, mask, adv = _batch(seed=1)
    _, m = grpo_loss(logp, old, None, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    ratio = torch.exp(logp - old)
    A = adv[:, None].expand_as(ratio)
    low = ((ratio < 0.8) & (A < 0)).double()
    high = ((ratio > 1.28) & (A > 0)).double()
    assert m["clip_ratio/low"] == pytest.approx(((low * mask).sum() / mask.sum()).item())
    assert m["clip_ratio/high"] == pytest.approx(((high * mask).sum() / mask.sum()).item())
    assert m["clip_ratio/low"] + m["clip_ratio/high"] > 0  # the test batch does exercise clipping


def _softmax_policy(seed=0, N=8, L=5, V=11, G=4):
    """A 'language model' with free logits per (sequence, position): grad log pi is known exactly."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, L, V, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (N, L), generator=g)
    lengths = torch.tensor([5, 2, 3, 5, 1, 4, 5, 2])[:N]
    mask = (torch.arange(L)[None] < lengths[:, None]).double()
    rewards = torch.rand(N, generator=g, dtype=torch.float64)
    adv = group_normalized_advantages(rewards, group_size=G)
    return W, tokens, mask, adv, lengths


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_on_policy_gradient_is_reinforce(loss_type):
    W, tokens, mask, adv, lengths = _softmax_policy()
    N, L, V = W.shape
    logp = torch.log_softmax(W, -1).gather(-1, tokens[..., None]).squeeze(-1)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0, loss_type=loss_type, max_completion_length=L)
    loss.backward()
    # analytic REINFORCE gradient: d log softmax(W)[o] / dW = onehot(o) - softmax(W)
    score = torch.nn.functional.one_hot(tokens, V).double() - torch.softmax(W.detach(), -1)
    weight = {"grpo": 1.0 / (N * lengths.double())[:, None].expand(N, L),
              "bnpo": torch.full((N, L), 1.0 / mask.sum().item(), dtype=torch.float64),
              "dapo": torch.full((N, L), 1.0 / mask.sum().item(), dtype=torch.float64),
              "dr_grpo": torch.full((N, L), 1.0 / (N * L), dtype=torch.float64)}[loss_type]
    expected = -(adv[:, None, None] * (weight * mask)[..., None] * score)
    torch.testing.assert_close(W.grad, expected)
    if loss_type == "grpo":
        # loss VALUE is -mean(A) = 0 for group-normalised advantages, though the gradient is not 0
        assert abs(loss.item()) < 1e-12
        assert W.grad.abs().max() > 1e-3


def test_grpo_downweights_long_sequences_dr_grpo_does_not():
    # Two completions with the same advantage and the same per-token signal, lengths 2 and 8.
    L = 8
    logp = torch.full((2, L), -1.0, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, L, dtype=torch.float64)
    mask[0, :2] = 1
    mask[1, :8] = 1
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    grads = {}
    for lt in LOSS_TYPES:
        logp.grad = None
        loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, loss_type=lt, max_completion_length=16)
        loss.backward()
        grads[lt] = logp.grad.clone()
    # grpo: per-token weight 1/(N |o_i|): the long sequence's tokens get 4x less
    assert grads["grpo"][0, 0].item() == pytest.approx(-1 / (2 * 2))
    assert grads["grpo"][1, 0].item() == pytest.approx(-1 / (2 * 8))
    # dr_grpo: per-token weight 1/(N * max_completion_length), the same for both lengths
    assert grads["dr_grpo"][0, 0].item() == pytest.approx(-1 / (2 * 16))
    assert grads["dr_grpo"][1, 0].item() == pytest.approx(-1 / (2 * 16))
    # bnpo / dapo: 1 / total tokens, also length-independent within a batch
    for lt in ("bnpo", "dapo"):
        assert grads[lt][0, 0].item() == pytest.approx(-1 / 10)
        assert grads[lt][1, 0].item() == pytest.approx(-1 / 10)
    for g in grads.values():
        assert torch.all(g * (1 - mask) == 0)  # padding gets no gradient


def test_dapo_global_normaliser_makes_microbatches_add_up():
    logp, old, ref, mask, adv = _batch(seed=2, N=6, L=7)
    full, _ = grpo_loss(logp, old, None, adv, mask, loss_type="bnpo")
    parts = [slice(0, 2), slice(2, 6)]
    dapo = sum(grpo_loss(logp[s], old[s], None, adv[s], mask[s], loss_type="dapo",
                         num_items_in_batch=mask.sum())[0] for s in parts)
    torch.testing.assert_close(dapo, full)
    # bnpo normalises per micro-batch, so the average of micro-batch losses is a different quantity
    bnpo = sum(grpo_loss(logp[s], old[s], None, adv[s], mask[s], loss_type="bnpo")[0] for s in parts) / 2
    assert abs(bnpo.item() - full.item()) > 1e-6


def test_clip_higher_is_asymmetric():
    # one token per sequence; ratios chosen around the clip bounds
    ratios = torch.tensor([1.25, 1.25, 0.75, 1.35], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    old = torch.zeros(4, 1, dtype=torch.float64)
    mask = torch.ones(4, 1, dtype=torch.float64)

    def grad(eps_high):
        logp = torch.log(ratios)[:, None].clone().requires_grad_(True)
        loss, m = grpo_loss(logp, old, None, adv, mask, clip_eps_low=0.2, clip_eps_high=eps_high, loss_type="bnpo")
        loss.backward()
        return logp.grad[:, 0], m

    g_sym, m_sym = grad(None)
    g_high, m_high = grad(0.28)
    # A > 0, ratio 1.25: clipped with eps=0.2 (no gradient), free with eps_high=0.28 (gradient -r A / N)
    assert g_sym[0] == 0
    assert g_high[0].item() == pytest.approx(-1.25 / 4)
    assert m_sym["clip_ratio/high"] == pytest.approx(0.25) and m_high["clip_ratio/high"] == 0
    # A < 0, ratio 0.75 < 1 - eps_low: clipped either way (eps_high does not matter below 1)
    assert g_sym[2] == 0 and g_high[2] == 0
    # A < 0 with ratio above 1 + eps: the pessimistic min keeps the unclipped term, gradient flows
    for g in (g_sym, g_high):
        assert g[1].item() == pytest.approx(1.25 / 4)
        assert g[3].item() == pytest.approx(1.35 / 4)


def test_zero_variance_groups_give_zero_advantage_and_gradient():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    G = 4
    zero = zero_variance_groups(rewards, group_size=G)
    assert zero.tolist() == [True, False, True]
    for scale in ("group", "batch", "none"):
        adv = group_normalized_advantages(rewards, group_size=G, scale=scale)
        assert torch.all(adv[:4] == 0) and torch.all(adv[8:] == 0)
        assert adv[4:8].abs().sum() > 0
    adv = group_normalized_advantages(rewards, group_size=G)
    r = rewards[4:8]
    torch.testing.assert_close(adv[4:8], (r - r.mean()) / (r.std() + 1e-4))
    logp = (-torch.rand(12, 5, dtype=torch.float64)).requires_grad_(True)
    loss, _ = grpo_loss(logp, logp.detach() + 0.1, None, adv, torch.ones(12, 5), loss_type="grpo")
    loss.backward()
    assert torch.all(logp.grad[:4] == 0) and torch.all(logp.grad[8:] == 0)
    assert logp.grad[4:8].abs().sum() > 0


def test_kl_term_gradient_vanishes_at_reference():
    logp = (-torch.rand(3, 4, dtype=torch.float64)).requires_grad_(True)
    adv = torch.zeros(3, dtype=torch.float64)
    loss, m = grpo_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(3, 4), beta=0.1)
    loss.backward()
    assert m["kl"] == 0 and torch.all(logp.grad == 0)
    # away from the reference, d k3 / d log pi = 1 - pi_ref / pi
    ref = logp.detach() - 0.5
    logp.grad = None
    loss, _ = grpo_loss(logp, logp.detach(), ref, adv, torch.ones(3, 4), beta=0.1, loss_type="bnpo")
    loss.backward()
    torch.testing.assert_close(logp.grad, 0.1 * (1 - torch.exp(ref - logp.detach())) / 12)


def test_bad_inputs_raise_clear_errors():
    logp, old, ref, mask, adv = _batch()
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old, None, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, None, adv[:3], mask)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, old, None, adv, mask, loss_type="dr_grpo", max_completion_length=3)
