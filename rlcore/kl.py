"""KL-divergence estimators k1, k2, k3 (book equations ``eq-kl-k1``, ``eq-kl-k2``, ``eq-kl-k3``).

All three estimate ``KL(pi_theta || pi_ref) = E_{x ~ pi_theta}[log pi_theta(x) - log pi_ref(x)]``
from samples ``x ~ pi_theta``, given per-sample log-probabilities under both policies.
Write ``log_ratio = log pi_ref(x) - log pi_theta(x)`` and ``x_r = exp(log_ratio)`` (the book's x_r):

* k1 = -log x_r             unbiased, can be negative, high variance;
* k2 = (log x_r)^2 / 2      biased, always >= 0, low variance;
* k3 = x_r - log x_r - 1    unbiased (because E[x_r] = 1) and always >= 0 (since log x_r <= x_r - 1).

"Unbiased" is about the *value* for samples drawn from pi_theta. It does not make the gradient of
the estimator, placed in a loss, an unbiased gradient of KL(pi_theta || pi_ref): the expected
gradient of k3 is that of KL(pi_ref || pi_theta) (chapter 5's prop-kl-placement, chapter 6).
k3 is the estimator GRPO puts in its loss (DeepSeekMath, eq. 4).
"""
from __future__ import annotations

import torch


def _log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} and "
            f"{tuple(ref_logp.shape)}"
        )
    return ref_logp - logp


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi_theta(x) - log pi_ref(x)  (eq-kl-k1). Per-sample, same shape as inputs."""
    return -_log_ratio(logp, ref_logp)


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi_theta(x) - log pi_ref(x))^2 / 2  (eq-kl-k2)."""
    return 0.5 * _log_ratio(logp, ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = x_r - log x_r - 1 with x_r = pi_ref/pi_theta  (eq-kl-k3); >= 0, and its value is unbiased for x ~ pi_theta.

    ``torch.expm1`` keeps precision when the two policies are close.
    """
    log_ratio = _log_ratio(logp, ref_logp)
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimator(name: str):
    """Look up an estimator by name (``"k1"``, ``"k2"`` or ``"k3"``)."""
    try:
        return KL_ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown KL estimator {name!r}; choose one of {sorted(KL_ESTIMATORS)}"
        ) from None
