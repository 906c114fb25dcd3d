"""Cold-start SFT (C21): programmatic chain-of-thought traces, the masked loss (eq-sft-loss), training."""
import math
import random

import pytest
import torch

from rlcore.llm.models import tiny_model
from rlcore.llm.rewards import accuracy_reward, format_reward, reflection_rate
from rlcore.llm.sft import (IGNORE_INDEX, SFTConfig, collate_sft, cot_trace, encode_pair, sft_dataset, sft_loss,
                            train_sft)
from rlcore.llm.tasks import arithmetic_dataset


@pytest.mark.parametrize("ops,digits", [(("+",), 2), (("+",), 3), (("-",), 2), (("*",), 2), (("+", "-", "*"), 1)])
def test_cot_traces_are_correct_and_well_formed(ops, digits):
    exs = arithmetic_dataset(40, digits=digits, ops=ops, seed=1)
    for prefilled in (True, False):
        comps = [cot_trace(ex, prefilled_think=prefilled, self_check=True) for ex in exs]
        kw = dict(answer=[ex.answer for ex in exs], prefilled_think=prefilled)
        assert accuracy_reward(None, comps, **kw) == [1.0] * len(exs)
        assert format_reward(None, comps, **kw) == [1.0] * len(exs)
    assert reflection_rate(comps) == 1.0
    assert reflection_rate([cot_trace(ex) for ex in exs]) == 0.0


def test_addition_trace_carries_add_up():
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        text = cot_trace(f"What is {a} + {b}?", style="compact")
        # rebuild the sum from the digits the trace writes, column by column
        written = [int(line.split(" write ")[1].split()[0]) for line in text.splitlines() if " write " in line]
        carry_line = [line for line in text.splitlines() if line.startswith("write carry")]
        digits = written + [int(carry_line[0].split()[-1])] if carry_line else written
        assert int("".join(map(str, reversed(digits)))) == a + b


def test_cot_trace_rejects_wrong_answer_and_unknown_question():
    from rlcore.llm.tasks import Example

    with pytest.raises(ValueError, match="answer"):
        cot_trace(Example(prompt="What is 2 + 2?", answer="5"))
    with pytest.raises(ValueError, match="no arithmetic expression"):
        cot_trace("What is the capital of France?")


def test_prompt_tokens_are_masked():
    _, tok = tiny_model(seed=0)
    pairs = [("What is 1 + 2?", "<think>x</think><answer>3</answer>"), ("Q: 10+20", "<answer>30</answer>")]
    batch = collate_sft(tok, pairs)
    for i, (p, c) in enumerate(pairs):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        c_ids = tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p_ids) + len(c_ids)
        assert batch["input_ids"][i, :n].tolist() == p_ids + c_ids
        assert (batch["labels"][i, :len(p_ids)] == IGNORE_INDEX).all()
        assert batch["labels"][i, len(p_ids):n].tolist() == c_ids
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all() and (batch["attention_mask"][i, n:] == 0).all()
    with pytest.raises(ValueError, match="max_length"):
        encode_pair(tok, "a long prompt", "x", max_length=4)


def test_sft_loss_equals_completion_token_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 7, 8, -100, -100, -100]])
    total, count = 0.0, 0
    for i in range(2):
        for t in range(1, 6):
            if labels[i, t] != -100:
                total -= torch.log_softmax(logits[i, t - 1], -1)[labels[i, t]].item()
                count += 1
    assert sft_loss(logits, labels).item() == pytest.approx(total / count, abs=1e-5)
    # prompt positions do not matter: changing the logits that predict prompt tokens leaves the loss unchanged
    logits2 = logits.clone()
    logits2[0, 0] += 10.0
    assert sft_loss(logits2, labels).item() == pytest.approx(sft_loss(logits, labels).item(), abs=1e-6)


def test_train_sft_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    pairs = sft_dataset(arithmetic_dataset(16, digits=1, seed=0), template=None, style="compact")
    cfg = dict(batch_size=4, learning_rate=3e-3, seed=0)
    m1, tok = tiny_model(seed=0, n_layer=1, d_model=32)
    h1 = train_sft(m1, tok, pairs, SFTConfig(max_steps=6, **cfg))
    ck = str(tmp_path / "sft.pt")
    m2, _ = tiny_model(seed=0, n_layer=1, d_model=32)
    train_sft(m2, tok, pairs, SFTConfig(max_steps=3, checkpoint_path=ck, **cfg))
    m3, _ = tiny_model(seed=0, n_layer=1, d_model=32)
    h3 = train_sft(m3, tok, pairs, SFTConfig(max_steps=6, checkpoint_path=ck, resume=True, **cfg))
    assert list(h3.steps("loss")) == [1, 2, 3, 4, 5, 6]
    assert h3["loss"] == pytest.approx(h1["loss"], abs=1e-6)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m3.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k


@pytest.mark.slow
def test_sft_teaches_the_format_on_heldout_prompts():
    """Cold start in miniature: a random tiny model learns the <think>/<answer> format from 256 traces."""
    from rlcore.llm.grpo import evaluate

    torch.set_num_threads(1)
    train = arithmetic_dataset(256, digits=2, seed=0)
    test = arithmetic_dataset(32, digits=2, seed=0, split="test")
    pairs = sft_dataset(train, template=None, style="compact")
    model, tok = tiny_model(seed=0)
    before = evaluate(model, tok, test, template=None, max_new_tokens=128)
    hist = train_sft(model, tok, pairs, SFTConfig(max_steps=200, batch_size=16, learning_rate=3e-3, warmup_steps=10))
    after = evaluate(model, tok, test, template=None, max_new_tokens=128)
    loss = hist["loss"]
    assert all(math.isfinite(x) for x in loss)
    assert loss[-10:].mean() < 0.15 * loss[:3].mean()
    assert before["format_rate"] == 0.0
    # measured 32/32 (format_rate 1.0, from 0.0 before; accuracy stays 0.0) at seed 0; 0.6 leaves room for platform noise
    assert after["format_rate"] >= 0.6, after


def test_resumed_sft_log_has_each_step_once(tmp_path):
    import json

    from rlcore.llm.models import tiny_model
    from rlcore.llm.sft import SFTConfig, train_sft
    from rlcore.training import read_jsonl

    pairs = [("1+1=", "2"), ("2+2=", "4"), ("3+3=", "6")]
    ck, log = tmp_path / "sft.pt", tmp_path / "sft.jsonl"
    model, tok = tiny_model(seed=0)
    train_sft(model, tok, pairs, SFTConfig(max_steps=2, batch_size=2, checkpoint_path=str(ck), log_path=str(log)))
    with open(log, "a") as fh:  # the interrupted run got one step further, then died mid-line
        fh.write(json.dumps({"step": 3, "loss": 9.9}) + "\n" + '{"step": 4, "lo')
    model, tok = tiny_model(seed=0)
    train_sft(model, tok, pairs, SFTConfig(max_steps=4, batch_size=2, checkpoint_path=str(ck), log_path=str(log),
                                           resume=True))
    recs = read_jsonl(log)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[2]["loss"] != 9.9
