"""GRPO training loop on the tiny model: learning, determinism, resume, logging, errors."""
import copy
import types

import numpy as np
import pytest
import torch

from rlcore.llm import grpo as grpo_mod
from rlcore.llm.grpo import GRPOConfig, evaluate, train_grpo
from rlcore.llm.models import tiny_model
from rlcore.training import read_jsonl

PROMPTS = [f"{a}+{b}=" for a in range(10) for b in range(10)]


def sevens(prompts, completions, **kwargs):
    """Share of completion characters that are the digit 7 (a trivial, dense task)."""
    return [c.count("7") / max(len(c), 1) for c in completions]


def _cfg(**kw):
    base = dict(steps=3, prompts_per_step=2, num_generations=4, max_new_tokens=6, learning_rate=3e-3,
                template=None, progress_bar=False, log_completions=0)
    base.update(kw)
    return GRPOConfig(**base)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.slow
def test_reward_rises_under_grpo():
    model, tok = tiny_model(seed=0)  # 105-token vocabulary: a random completion has ~1% sevens
    cfg = _cfg(steps=30, prompts_per_step=4, num_generations=8, max_new_tokens=8, seed=0)
    res = train_grpo(cfg, model, tok, PROMPTS, [sevens])
    r = res.history["reward"]
    first, last = r[:5], r[-5:]
    # margin over noise: 4 standard errors of the first-steps mean, plus an absolute gap
    noise = 4 * r[:5].std(ddof=1) / np.sqrt(5) + 4 * np.sqrt(0.25 / (cfg.prompts_per_step * cfg.num_generations * 8))
    assert last.mean() - first.mean() > max(noise, 0.3), r
    assert res.history["entropy"][-1] < res.history["entropy"][0]  # the policy sharpens


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        model, tok = tiny_model(seed=0, vocab="digits")
        res = train_grpo(_cfg(seed=1), model, tok, PROMPTS, [sevens])
        runs.append((_params(model), res.history["reward"], res.history["loss"]))
    assert torch.equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])


@pytest.mark.parametrize("extra", [dict(), dict(beta=0.05, num_iterations=2)])
def test_resume_equals_uninterrupted(tmp_path, extra):
    model, tok = tiny_model(seed=0, vocab="digits")
    full = train_grpo(_cfg(steps=4, **extra), model, tok, PROMPTS, [sevens])
    ck = tmp_path / "grpo.pt"
    m1, _ = tiny_model(seed=0, vocab="digits")
    train_grpo(_cfg(steps=2, checkpoint_path=str(ck), **extra), m1, tok, PROMPTS, [sevens])
    m2, _ = tiny_model(seed=0, vocab="digits")  # fresh weights: everything must come from the checkpoint
    res = train_grpo(_cfg(steps=4, checkpoint_path=str(ck), resume=True, **extra), m2, tok, PROMPTS, [sevens])
    torch.testing.assert_close(_params(m2), _params(model), rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.history["reward"], full.history["reward"])
    assert list(res.history.steps("reward")) == [1, 2, 3, 4]


def test_beta_zero_never_builds_a_reference_model(monkeypatch):
    def no_copy(*a, **k):
        raise AssertionError("reference model copied although beta == 0")

    model, tok = tiny_model(seed=0, vocab="digits")
    monkeypatch.setattr(grpo_mod, "copy", types.SimpleNamespace(deepcopy=no_copy))
    res = train_grpo(_cfg(steps=1), model, tok, PROMPTS, [sevens])
    assert "kl" not in res.history


@pytest.mark.parametrize("kl_in_reward", [False, True])
def test_kl_penalty_uses_a_frozen_reference(kl_in_reward):
    model, tok = tiny_model(seed=0, vocab="digits")
    ref = copy.deepcopy(model)
    before = _params(ref)
    res = train_grpo(_cfg(steps=3, beta=0.1, kl_in_reward=kl_in_reward), model, tok, PROMPTS, [sevens], ref_model=ref)
    kl = res.history["kl"]
    assert torch.equal(_params(ref), before)
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first update
    assert np.all(np.isfinite(kl)) and kl[-1] > 0


def test_constant_reward_gives_no_update():
    model, tok = tiny_model(seed=0, vocab="digits")
    before = _params(model)
    res = train_grpo(_cfg(steps=2), model, tok, PROMPTS, [lambda prompts, completions, **kw: [1.0] * len(completions)])
    assert np.all(res.history["frac_zero_std_groups"] == 1.0)
    assert torch.equal(_params(model), before)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(loss_type):
    out = []
    for mb in (None, 3):
        model, tok = tiny_model(seed=0, vocab="digits")
        train_grpo(_cfg(steps=1, loss_type=loss_type, micro_batch_size=mb, max_grad_norm=0.0,
                        learning_rate=1e-3), model, tok, PROMPTS, [sevens])
        out.append(_params(model))
    init, _ = tiny_model(seed=0, vocab="digits")
    assert not torch.equal(out[0], _params(init))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)


def test_metrics_and_jsonl_log(tmp_path):
    log = tmp_path / "log.jsonl"
    model, tok = tiny_model(seed=0, vocab="digits")
    res = train_grpo(_cfg(steps=2, num_iterations=2, clip_eps_high=0.28, log_path=str(log), log_completions=3),
                     model, tok, PROMPTS, [sevens])
    for key in ("reward", "reward_std", "rewards/sevens", "frac_zero_std_groups", "clip_ratio/low", "clip_ratio/high",
                "entropy", "completion_length", "truncation_rate", "loss", "grad_norm"):
        assert key in res.history, key
    assert np.all((res.history["truncation_rate"] >= 0) & (res.history["truncation_rate"] <= 1))
    recs = read_jsonl(log)
    tables = [r["completions"] for r in recs if "completions" in r]
    assert len(tables) == 2 and len(tables[0]) == 3
    assert set(tables[0][0]) == {"prompt", "completion", "reward", "advantage"}
    assert [r["step"] for r in recs if "reward" in r] == [1, 2]


def test_greedy_evaluation():
    model, tok = tiny_model(seed=0, vocab="digits")
    data = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(5)]

    def correct(prompts, completions, answer, **kw):
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    def nonempty(prompts, completions, **kw):
        return [float(len(c) > 0) for c in completions]

    m = evaluate(model, tok, data, template=None, max_new_tokens=4, batch_size=2, accuracy_fn=correct, format_fn=nonempty)
    assert 0 <= m["heldout_accuracy"] <= 1 and 0 <= m["format_rate"] <= 1 and m["eval_mean_length"] >= 1


def test_errors_are_clear():
    model, tok = tiny_model(seed=0, vocab="digits")
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="sum")

    def broken_reward(prompts, completions, **kw):
        raise KeyError("answer")

    with pytest.raises(Exception, match="broken_reward"):
        train_grpo(_cfg(steps=1), model, tok, PROMPTS, [broken_reward])

    def short_reward(prompts, completions, **kw):
        return [0.0]

    with pytest.raises(Exception, match="short_reward"):
        train_grpo(_cfg(steps=1), model, tok, PROMPTS, [short_reward])
    with pytest.raises(ValueError, match="reward"):
        train_grpo(_cfg(steps=1), model, tok, PROMPTS, [])


def test_end_to_end_with_r1_zero_template_and_rule_rewards():
    from rlcore.llm.rewards import accuracy_reward, format_reward
    from rlcore.llm.tasks import arithmetic_dataset

    model, tok = tiny_model(seed=0)
    train, test = arithmetic_dataset(8, seed=0, split="train"), arithmetic_dataset(3, seed=0, split="test")
    res = train_grpo(_cfg(steps=1, template="r1_zero", max_new_tokens=4), model, tok, train,
                     [accuracy_reward, format_reward], reward_weights=[1.0, 0.5], eval_dataset=test)
    assert set(res.eval_metrics) == {"heldout_accuracy", "format_rate", "eval_mean_length"}
    for key in ("rewards/accuracy_reward", "rewards/format_reward", "heldout_accuracy", "reflection_rate"):
        assert key in res.history, key
    assert res.last_rollout.prompts[0].endswith("<think>")


@pytest.mark.parametrize("fast", [False, True])
def test_interrupted_run_resumes_with_every_step_logged_once(tmp_path, fast):
    """Killed after the checkpoint at step 2 but during step 4: the resumed log has steps 1..5 exactly once,
    and equals the log of an uninterrupted run."""
    ck, log = tmp_path / "grpo.pt", tmp_path / "log.jsonl"
    calls = {"n": 0}

    def dies_at_step_4(prompts, completions, **kw):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user pressed Ctrl-C
        return sevens(prompts, completions)

    cfg = dict(steps=5, checkpoint_every=2, checkpoint_path=str(ck), log_path=str(log), fast=fast)
    model, tok = tiny_model(seed=0, vocab="digits")
    with pytest.raises(KeyboardInterrupt):
        train_grpo(_cfg(**cfg), model, tok, PROMPTS, [dies_at_step_4])
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3]  # step 3 is after the checkpoint
    m2, _ = tiny_model(seed=0, vocab="digits")
    train_grpo(_cfg(resume=True, **cfg), m2, tok, PROMPTS, [sevens])
    resumed = read_jsonl(log)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    m3, _ = tiny_model(seed=0, vocab="digits")
    ref_log = tmp_path / "ref.jsonl"
    train_grpo(_cfg(**{**cfg, "checkpoint_path": None, "log_path": str(ref_log)}), m3, tok, PROMPTS, [sevens])
    assert [r["reward"] for r in resumed] == [r["reward"] for r in read_jsonl(ref_log)]
