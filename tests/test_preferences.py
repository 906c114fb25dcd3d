"""Reward models, preference data and DPO on the tiny random model (rlcore.llm.preferences, rlcore.llm.dpo).

* A reward model learns a toy preference (the chosen completion contains a marker character) from chance to
  held-out accuracy > 0.8; its score of a row does not depend on the batch it is padded into.
* DPO raises the implicit reward margin and the chosen-minus-rejected log-probability gap on its pairs.
* The programmed rater: gold rewards, Bradley–Terry coin-flip labels at the right rate, sampled pairs.
* Bad input (identical or empty texts, mismatched lengths, beta <= 0, NaN max_grad_norm, other pairs on
  resume) is refused with a message naming the fix; a SIGINT mid-run saves a checkpoint and the resumed run
  equals an uninterrupted one in weights and log rows, for both trainers.
"""
import contextlib
import math
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from rlcore.lifecycle import RunExistsError, TrainingInterrupted
from rlcore.llm.dpo import (DPOConfig, best_of_n, best_of_n_distribution, best_of_n_kl, dpo_loss,
                            kl_regularized_objective, kl_regularized_optimum, sequence_logps, train_dpo)
from rlcore.llm.models import tiny_model
from rlcore.llm.preferences import (ArithmeticGold, PreferencePair, RewardModel, RewardModelConfig,
                                    check_preference_pairs, gold_reward, label_pairs_bradley_terry,
                                    make_preference_pairs, reward_model_accuracy, sample_preference_pairs,
                                    train_reward_model)
from rlcore.llm.tasks import arithmetic_dataset
from rlcore.training import read_jsonl


def marker_pairs(n, seed):
    """Toy comparisons: two random digit strings per prompt; the chosen one contains a '#'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = f"{rng.randint(0, 9)}+{rng.randint(0, 9)}="
        a = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6)))
        b = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6)))
        k = rng.randint(0, len(a))
        out.append(PreferencePair(p, a[:k] + "#" + a[k:], b))
    return out


TRAIN, HELD_OUT = marker_pairs(64, 0), marker_pairs(40, 1)


def small():
    return tiny_model(seed=0, n_layer=1, d_model=32)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def rows(path):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in read_jsonl(path)]


@contextlib.contextmanager
def sigint_at_optimizer_step(k):
    """SIGINT the process (as a Ctrl-C would) just before the ``k``-th optimizer step (1-based)."""
    calls = {"n": 0}

    def hook(opt, args, kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGINT)

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(autouse=True)
def _sigint_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    yield
    assert signal.getsignal(signal.SIGINT) is before, "a trainer left its SIGINT handler installed"


# ------------------------------------------------------------------ reward model
def test_reward_model_learns_a_toy_preference_from_chance():
    backbone, tok = small()
    rm = RewardModel(backbone, tok)
    before = reward_model_accuracy(rm, HELD_OUT)
    assert 0.2 < before < 0.8  # a random head and backbone: about chance
    hist = train_reward_model(RewardModelConfig(max_steps=16, batch_size=8, learning_rate=3e-3, eval_every=8),
                              rm, tok, TRAIN, eval_pairs=HELD_OUT)
    assert list(hist.steps("eval_accuracy")) == [8, 16]
    assert hist["eval_accuracy"][-1] > 0.8 and hist["train_accuracy"][-1] > 0.8
    assert reward_model_accuracy(rm, HELD_OUT) == pytest.approx(hist["eval_accuracy"][-1])
    assert hist["loss"][-1] < hist["loss"][0] and hist["margin"][-1] > 0
    assert list(hist.steps("loss")) == list(range(1, 17))
    assert hist["pairs_seen"][-1] == 16 * 8


def test_reward_model_score_ignores_padding_and_batching_and_serves_as_a_reward_function():
    backbone, tok = small()
    rm = RewardModel(backbone, tok)
    prompts = ["1+2=", "What is 13 + 29?", "7*8="]
    completions = ["3", "<answer>42</answer> and some longer text", "56#"]
    together = rm.score(prompts, completions)
    alone = torch.cat([rm.score([p], [c]) for p, c in zip(prompts, completions)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert len(set(together.tolist())) == 3
    fn = rm.as_reward_function()
    from rlcore.llm.rewards import compute_rewards

    total, per = compute_rewards([fn], None, prompts, completions)
    torch.testing.assert_close(total, together)
    assert "reward_model" in per


def test_reward_model_with_lora_trains_only_adapters_and_head():
    backbone, tok = small()
    rm = RewardModel(backbone, tok, lora_r=2)
    names = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert any(n.startswith("head.") for n in names)
    frozen = {n: p.detach().clone() for n, p in rm.named_parameters() if not p.requires_grad}
    train_reward_model(RewardModelConfig(max_steps=2, batch_size=4), rm, tok, TRAIN[:8])
    assert all(torch.equal(p, frozen[n]) for n, p in rm.named_parameters() if not p.requires_grad)


# ------------------------------------------------------------------ DPO
def test_dpo_raises_the_implicit_margin_and_the_log_prob_gap():
    model, tok = small()
    pairs = TRAIN[:32]
    prompts = [p.prompt for p in pairs]

    def gap():
        with torch.no_grad():
            c = sequence_logps(model, tok, prompts, [p.chosen for p in pairs])
            r = sequence_logps(model, tok, prompts, [p.rejected for p in pairs])
        return float((c - r).mean())

    gap0 = gap()
    hist = train_dpo(DPOConfig(max_steps=10, batch_size=8, learning_rate=3e-3, beta=0.1, eval_every=5), model, None,
                     tok, pairs, eval_pairs=HELD_OUT[:16])
    assert abs(hist["rewards/margins"][0]) < 1e-3  # the reference is the starting policy: margin 0 at step 1
    assert hist["train_margin"][-1] > 0.1 and hist["train_reward_accuracy"][-1] > 0.8
    assert gap() > gap0 + 1.0  # the policy's own log-probs moved towards the chosen completions
    # the implicit margin is beta times the change of the log-prob gap (the reference's gap cancels)
    assert hist["train_margin"][-1] == pytest.approx(0.1 * (gap() - gap0), rel=1e-3, abs=1e-4)
    assert hist["eval_margin"][-1] > 0  # and it generalises to held-out pairs with the marker
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/gap", "grad_norm"):
        assert len(hist[key]) == 10 and np.isfinite(hist[key]).all()


def test_dpo_with_an_explicit_reference_ipo_and_the_teaching_path():
    model, tok = small()
    ref, _ = small()
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(0.5)  # a different reference: the starting margin is not 0
    hist = train_dpo(DPOConfig(max_steps=1, batch_size=4, fast=False), model, ref, tok, TRAIN[:4])
    assert abs(hist["rewards/margins"][0]) > 1e-3
    model, tok = small()
    hist = train_dpo(DPOConfig(max_steps=6, batch_size=8, loss_type="ipo", beta=0.5, learning_rate=3e-3), model, None,
                     tok, TRAIN[:16])
    assert hist["loss"][-1] < hist["loss"][0]


def test_sequence_logps_fast_equals_teaching_path():
    model, tok = small()
    prompts, comps = ["1+2=", "1+2=", "9*9="], ["3", "12", "81"]
    fast = sequence_logps(model, tok, prompts, comps, fast=True)
    slow = sequence_logps(model, tok, prompts, comps, fast=False)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    avg = sequence_logps(model, tok, prompts, comps, average=True)
    torch.testing.assert_close(avg, slow / torch.tensor([2.0, 3.0, 3.0]), rtol=1e-4, atol=1e-4)  # chars + EOS


def test_sequence_logps_at_a_temperature_are_those_of_the_tempered_softmax():
    """``temperature=T`` scores the policy a sampler at T draws from: sum_t log softmax(logits_t / T)[y_t]."""
    model, tok = small()
    prompts, comps = ["1+2=", "9*9="], ["3", "81"]
    T = 0.7
    got = sequence_logps(model, tok, prompts, comps, temperature=T)
    want = []
    for p, c in zip(prompts, comps):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p_ids + c_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p_ids) - 1:-1]  # the logits that predict c_ids
        want.append(torch.log_softmax(logits / T, -1)[torch.arange(len(c_ids)), torch.tensor(c_ids)].sum())
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, sequence_logps(model, tok, prompts, comps))  # T matters
    with pytest.raises(ValueError, match="temperature"):
        DPOConfig(temperature=0.0)


# ------------------------------------------------------------------ the programmed rater
def test_gold_reward_rule():
    assert gold_reward("<answer>12</answer>", "12") == pytest.approx(1 - 0.005 * 19)
    assert gold_reward("so it is 12", "12", length_penalty=0.0) == 1.0  # the last number counts
    assert gold_reward("13", "12", length_penalty=0.1) == pytest.approx(-0.2)
    ex = arithmetic_dataset(3, digits=1, seed=0)
    gold = ArithmeticGold.from_examples(ex)
    assert gold(ex[0].prompt, ex[0].answer) > gold(ex[0].prompt, ex[0].answer + "0")
    with pytest.raises(KeyError, match="same formatted prompts"):
        gold("unknown prompt", "1")


def test_bradley_terry_labels_have_the_right_rate_and_drop_uninformative_pairs():
    gold = {"good": 0.3, "bad": 0.0}
    n = 4000
    pairs = label_pairs_bradley_terry(["q"] * n, ["good"] * n, ["bad"] * n, lambda p, c: gold[c], beta_label=0.2,
                                      rng=0)
    rate = np.mean([p.chosen == "good" for p in pairs])
    p = 1 / (1 + math.exp(-0.3 / 0.2))
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert all(q.meta["gold_chosen"] - q.meta["gold_rejected"] in (0.3, -0.3) for q in pairs)
    exact = label_pairs_bradley_terry(["q"] * 50, ["bad"] * 50, ["good"] * 50, lambda p, c: gold[c], beta_label=0.0)
    assert all(q.chosen == "good" and q.meta["p_chosen"] == 1.0 for q in exact)
    kept = label_pairs_bradley_terry(["q", "q", "q"], ["same", "", "good"], ["same", "bad", "bad"],
                                     lambda p, c: gold.get(c, 0.0), beta_label=0.1, rng=1)
    assert len(kept) == 1  # identical texts and an empty completion carry no preference


def test_sample_preference_pairs_then_label_them():
    exs = arithmetic_dataset(4, digits=1, seed=0)
    prompts = [e.prompt for e in exs]
    model, tok = small()
    out = sample_preference_pairs(model, tok, prompts, n_per_prompt=2, max_new_tokens=8,
                                  generator=torch.Generator().manual_seed(0), batch_prompts=3)
    again = sample_preference_pairs(model, tok, prompts, n_per_prompt=2, max_new_tokens=8,
                                    generator=torch.Generator().manual_seed(0), batch_prompts=3)
    assert out == again  # reproducible from the generator
    P, A, B = out
    assert P == [p for p in prompts for _ in range(2)] and len(A) == len(B) == 8
    assert A != B
    teaching = sample_preference_pairs(model, tok, prompts[:1], n_per_prompt=1, max_new_tokens=8, fast=False,
                                       generator=torch.Generator().manual_seed(0))
    assert len(teaching[0]) == 1
    pairs = label_pairs_bradley_terry(P, A, B, ArithmeticGold.from_examples(exs), beta_label=0.05, rng=0)
    assert 1 <= len(pairs) <= 8 and all(isinstance(p, PreferencePair) for p in pairs)


# ------------------------------------------------------------------ bad input
def test_bad_pairs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="same text.*drop this pair or resample"):
        PreferencePair("q", "a", "a")
    with pytest.raises(ValueError, match="chosen is empty"):
        PreferencePair("q", "", "b")
    with pytest.raises(ValueError, match="prompt is empty"):
        PreferencePair("  ", "a", "b")
    with pytest.raises(ValueError, match="one prompt, one chosen and one rejected"):
        make_preference_pairs(["q", "r"], ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="pass one prompt and two completions"):
        label_pairs_bradley_terry(["q"], ["a", "b"], ["c"], lambda p, c: 0.0)
    with pytest.raises(ValueError, match="pairs is empty"):
        check_preference_pairs([])
    assert check_preference_pairs([("q", "a", "b"), {"prompt": "q", "chosen": "c", "rejected": "d"}])[1].chosen == "c"
    model, tok = small()
    with pytest.raises(ValueError, match="same text"):
        train_dpo(DPOConfig(max_steps=1), model, None, tok, [("q", "a", "a")])


@pytest.mark.parametrize("beta", [0, 0.0, -0.1, float("nan"), float("inf")])
def test_beta_must_be_positive_with_the_reason(beta):
    reason = "KL coefficient.*only for beta > 0"
    with pytest.raises(ValueError, match=reason):
        DPOConfig(beta=beta)
    with pytest.raises(ValueError, match=reason):
        kl_regularized_optimum([0.5, 0.5], [1.0, 0.0], beta)
    with pytest.raises(ValueError, match=reason):
        kl_regularized_objective([0.5, 0.5], [0.5, 0.5], [1.0, 0.0], beta)
    z = torch.zeros(2)
    with pytest.raises(ValueError, match=reason):
        dpo_loss(z, z, z, z, beta)


def test_bad_knobs_are_refused():
    for cfg in (RewardModelConfig, DPOConfig):
        with pytest.raises(ValueError, match="max_grad_norm must be None or 0"):
            cfg(max_grad_norm=float("nan"))
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            cfg(batch_size=0)
        with pytest.raises(ValueError, match="resume=True needs a checkpoint_path"):
            cfg(resume=True)
        cfg(max_grad_norm=0)  # 0 and None: no clipping
        cfg(max_grad_norm=None)
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(loss_type="sigmoid")
    with pytest.raises(ValueError, match="sum to 1"):
        kl_regularized_optimum([0.5, 0.6], [1.0, 0.0], 0.1)
    with pytest.raises(ValueError, match="one reward per output"):
        kl_regularized_optimum([0.5, 0.5], [1.0, 0.0, 2.0], 0.1)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        best_of_n_kl(0)
    with pytest.raises(ValueError, match="multiple of n=3"):
        best_of_n(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="both be \\[K\\]"):
        best_of_n_distribution([0.5, 0.5], [0.0, 1.0, 2.0], 2)
    backbone, tok = small()
    with pytest.raises(TypeError, match="must be a RewardModel"):
        train_reward_model(RewardModelConfig(), backbone, tok, TRAIN)


# ------------------------------------------------------------------ lifecycle: interrupt, resume, refuse
def _rm_run(tmp_path, name, **kw):
    backbone, tok = small()
    rm = RewardModel(backbone, tok)
    base = dict(max_steps=6, batch_size=8, learning_rate=3e-3, eval_every=3, log_path=str(tmp_path / f"{name}.jsonl"))
    cfg = RewardModelConfig(**{**base, **kw})
    return rm, tok, cfg


def test_reward_model_sigint_then_resume_equals_uninterrupted(tmp_path):
    ref, tok, cfg = _rm_run(tmp_path, "ref")
    train_reward_model(cfg, ref, tok, TRAIN, HELD_OUT)
    ck = tmp_path / "rm.pt"
    rm, tok, cfg = _rm_run(tmp_path, "run", checkpoint_path=str(ck))
    with sigint_at_optimizer_step(4), pytest.raises(TrainingInterrupted) as info:
        train_reward_model(cfg, rm, tok, TRAIN, HELD_OUT)
    assert info.value.step == 4 and info.value.checkpoint_path == str(ck) and "resume" in str(info.value)
    resumed, tok, cfg = _rm_run(tmp_path, "run", checkpoint_path=str(ck), resume=True)
    hist = train_reward_model(cfg, resumed, tok, TRAIN, HELD_OUT)
    assert torch.equal(params(resumed), params(ref))
    assert rows(tmp_path / "run.jsonl") == rows(tmp_path / "ref.jsonl")
    assert list(hist.steps("loss")) == [1, 2, 3, 4, 5, 6]
    # the same run again is refused unless resumed or overwritten; other pairs cannot resume it
    again, tok, cfg = _rm_run(tmp_path, "run", checkpoint_path=str(ck))
    with pytest.raises(RunExistsError, match="resume=True"):
        train_reward_model(cfg, again, tok, TRAIN)
    again, tok, cfg = _rm_run(tmp_path, "run", checkpoint_path=str(ck), resume=True, max_steps=8)
    with pytest.raises(ValueError, match="other preference pairs"):
        train_reward_model(cfg, again, tok, TRAIN[:-1])


def test_dpo_sigint_then_resume_equals_uninterrupted(tmp_path):
    def run(name, **kw):
        model, tok = small()
        cfg = DPOConfig(max_steps=5, batch_size=8, learning_rate=3e-3, eval_every=2,
                        log_path=str(tmp_path / f"{name}.jsonl"), **kw)
        return model, tok, cfg

    ref, tok, cfg = run("ref")
    train_dpo(cfg, ref, None, tok, TRAIN[:24], HELD_OUT[:8])
    ck = tmp_path / "dpo.pt"
    model, tok, cfg = run("run", checkpoint_path=str(ck))
    with sigint_at_optimizer_step(2), pytest.raises(TrainingInterrupted) as info:
        train_dpo(cfg, model, None, tok, TRAIN[:24], HELD_OUT[:8])
    assert info.value.step == 2
    resumed, tok, cfg = run("run", checkpoint_path=str(ck), resume=True)
    with torch.no_grad():  # the reference log-probs come from the checkpoint, not from these weights
        for p in resumed.parameters():
            p.add_(1.0)
    train_dpo(cfg, resumed, None, tok, TRAIN[:24], HELD_OUT[:8])
    assert torch.equal(params(resumed), params(ref))
    assert rows(tmp_path / "run.jsonl") == rows(tmp_path / "ref.jsonl")
    bad, tok, cfg = run("run", checkpoint_path=str(ck), resume=True, beta=0.2)
    with pytest.raises(ValueError, match="beta"):
        train_dpo(cfg, bad, None, tok, TRAIN[:24], HELD_OUT[:8])


def test_dpo_with_lora_and_bf16_resumes_exactly(tmp_path):
    """The SmolLM2 set-up (LoRA adapters, bf16 autocast where supported) on the tiny model: interrupted and
    resumed equals uninterrupted, and only the adapters moved."""
    def run(**kw):
        model, tok = small()
        return model, tok, DPOConfig(max_steps=4, batch_size=4, learning_rate=3e-3, lora_r=2, bf16=True, **kw)

    ref, tok, cfg = run()
    base = {n: p.detach().clone() for n, p in ref.named_parameters()}
    train_dpo(cfg, ref, None, tok, TRAIN[:16])
    after = {n.replace(".base_layer", ""): p for n, p in ref.named_parameters() if "lora_" not in n}
    assert after.keys() == base.keys()  # peft added the adapters in place, to the caller's model
    assert all(torch.equal(after[n], base[n]) for n in base)  # the base weights are frozen
    assert any(p.abs().sum() > 0 for n, p in ref.named_parameters() if "lora_B" in n)  # the adapters trained
    ck = str(tmp_path / "dpo_lora.pt")
    model, tok, cfg = run(checkpoint_path=ck)
    with sigint_at_optimizer_step(2), pytest.raises(TrainingInterrupted):
        train_dpo(cfg, model, None, tok, TRAIN[:16])
    resumed, tok, cfg = run(checkpoint_path=ck, resume=True)
    train_dpo(cfg, resumed, None, tok, TRAIN[:16])
    assert torch.equal(params(resumed), params(ref))
    # a run continued in the same process with the same object (its adapters already injected in place):
    # 2 steps, then 2 more, equals 4 at once
    ck2 = str(tmp_path / "dpo_lora_twice.pt")
    model, tok, cfg = run(checkpoint_path=ck2)
    cfg.max_steps = 2
    train_dpo(cfg, model, None, tok, TRAIN[:16])
    _, _, cfg = run(checkpoint_path=ck2, resume=True)
    train_dpo(cfg, model, None, tok, TRAIN[:16])
    assert torch.equal(params(model), params(ref))


def test_dpo_checkpoint_without_the_temperature_field_resumes(tmp_path):
    """A DPO checkpoint written before ``DPOConfig.temperature`` existed resumes at the default temperature 1."""
    ck = str(tmp_path / "dpo.pt")
    model, tok = small()
    train_dpo(DPOConfig(max_steps=1, batch_size=4, checkpoint_path=ck), model, None, tok, TRAIN[:8])
    state = torch.load(ck, weights_only=False)
    del state["config"]["temperature"]
    torch.save(state, ck)
    model, tok = small()
    hist = train_dpo(DPOConfig(max_steps=2, batch_size=4, checkpoint_path=ck, resume=True), model, None, tok, TRAIN[:8])
    assert list(hist.steps("loss")) == [1, 2]
    with pytest.raises(ValueError, match="temperature"):
        train_dpo(DPOConfig(max_steps=3, batch_size=4, checkpoint_path=ck, resume=True, temperature=0.5), model, None,
                  tok, TRAIN[:8])
