"""rlcore.losses pieces not covered by an algorithm's equation tests, and KL estimator basics."""
import pytest
import torch

from rlcore import kl, losses


def test_reinforce_loss_gradient_is_score_function():
    logits = torch.randn(5, 3, requires_grad=True)
    actions = torch.tensor([0, 2, 1, 1, 0])
    w = torch.randn(5)
    logp = torch.log_softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
    (g,) = torch.autograd.grad(losses.reinforce_loss(logp, w), logits)
    # d/dlogits of -mean(w log softmax) = -(w/N) (onehot - softmax)
    p = torch.softmax(logits, -1).detach()
    expected = -(w[:, None] / 5) * (torch.nn.functional.one_hot(actions, 3) - p)
    torch.testing.assert_close(g, expected)


def test_value_loss_and_clipping():
    v = torch.tensor([1.0, 2.0])
    R = torch.tensor([0.0, 2.5])
    assert float(losses.value_loss(v, R)) == pytest.approx(0.5 * (1 + 0.25) / 2)
    old = torch.tensor([0.0, 2.0])
    # clipping takes the max of clipped/unclipped errors: value 1.0 clipped to 0.2 from old 0.0
    per = losses.value_loss(v, R, old_values=old, clip_coef=0.2, reduce="none")
    torch.testing.assert_close(per, 0.5 * torch.tensor([max(1.0, 0.04), max(0.25, 0.09)]))
    with pytest.raises(ValueError, match="old_values"):
        losses.value_loss(v, R, clip_coef=0.2)


def test_explained_variance():
    y = torch.randn(100)
    assert losses.explained_variance(y, y) == pytest.approx(1.0)
    assert losses.explained_variance(torch.full_like(y, float(y.mean())), y) == pytest.approx(0.0, abs=1e-9)


def test_kl_estimators_exact_on_identical_policies_and_shapes():
    lp = torch.randn(10)
    for name in ("k1", "k2", "k3"):
        assert torch.all(kl.kl_estimator(name)(lp, lp) == 0)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl.kl_estimator("k4")
    with pytest.raises(ValueError, match="same shape"):
        kl.kl_k3(torch.zeros(3), torch.zeros(4))


def test_approx_kl_is_k3_of_old_vs_new():
    old = torch.log_softmax(torch.randn(1000, 4), -1)[:, 0]
    new = old + 0.1 * torch.randn(1000)
    r = torch.exp(new - old)
    torch.testing.assert_close(losses.approx_kl(new, old), ((r - 1) - torch.log(r)).mean())
