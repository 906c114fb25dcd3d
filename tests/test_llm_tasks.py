"""Synthetic verifiable tasks and prompt templates (rlcore/llm/tasks.py)."""
import re
from fractions import Fraction

import pytest

from rlcore.llm.tasks import (CHAT_SYSTEM_PROMPT, R1_ZERO_TEMPLATE, Example, arithmetic_dataset, as_columns,
                              countdown_dataset, format_prompt)


def _exact(expr: str) -> Fraction:
    # independent evaluation of our own (trusted) generated expressions with exact arithmetic
    return eval(re.sub(r"(\d+)", r"Fraction(\1)", expr), {"Fraction": Fraction})


@pytest.mark.parametrize("digits,ops,k", [(1, ("+",), 2), (2, ("+", "-"), 3), (3, ("*",), 2),
                                          (2, ("+", "-", "*", "/"), 4)])
def test_arithmetic_answers_and_difficulty(digits, ops, k):
    n = 50 if digits == 1 else 200  # 1-digit a + b has only 100 problems, ~80 of them in train
    data = arithmetic_dataset(n, digits=digits, ops=ops, num_operands=k, seed=3)
    assert len(data) == n and len({ex.prompt for ex in data}) == n
    for ex in data:
        expr = ex.meta["expression"]
        assert ex.prompt == f"What is {expr}?"
        operands = [int(x) for x in re.findall(r"\d+", expr)]
        assert len(operands) == k
        assert all(len(str(x)) == digits for x in operands if digits > 1)
        assert set(re.findall(r"[-+*/]", expr)) <= set(ops)
        assert _exact(expr) == int(ex.answer)


def test_arithmetic_is_seeded():
    a = arithmetic_dataset(50, digits=2, ops=("+", "*"), seed=7)
    b = arithmetic_dataset(50, digits=2, ops=("+", "*"), seed=7)
    c = arithmetic_dataset(50, digits=2, ops=("+", "*"), seed=8)
    assert a == b
    assert [e.prompt for e in a] != [e.prompt for e in c]


@pytest.mark.parametrize("seed_train,seed_test", [(0, 0), (0, 1), (5, 2)])
def test_splits_are_disjoint(seed_train, seed_test):
    train = arithmetic_dataset(3000, digits=2, ops=("+", "-"), seed=seed_train, split="train")
    test = arithmetic_dataset(800, digits=2, ops=("+", "-"), seed=seed_test, split="test")
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert all(e.meta["split"] == "test" for e in test)
    ctrain = countdown_dataset(1000, seed=seed_train, split="train")
    ctest = countdown_dataset(300, seed=seed_test, split="test")
    key = lambda e: (tuple(sorted(e.meta["numbers"])), e.meta["target"])  # noqa: E731
    assert not {key(e) for e in ctrain} & {key(e) for e in ctest}


def test_small_problem_space_gives_a_clear_error():
    # 1-digit a + b has 100 problems; the test split holds ~20 of them
    with pytest.raises(ValueError, match="ask for fewer"):
        arithmetic_dataset(60, digits=1, split="test")


def test_countdown_targets_are_reachable():
    data = countdown_dataset(300, num_numbers=(3, 4), seed=0)
    for ex in data:
        nums, target = ex.meta["numbers"], ex.meta["target"]
        assert 3 <= len(nums) <= 4 and all(1 <= x <= 25 for x in nums)
        assert sorted(int(x) for x in re.findall(r"\d+", ex.answer)) == sorted(nums)
        assert set(re.findall(r"[^\d\s()]", ex.answer)) <= set("+-*/")
        assert _exact(ex.answer) == target and 1 <= target <= 200
        assert str(target) in ex.prompt and str(nums) in ex.prompt
    assert countdown_dataset(20, seed=4) == countdown_dataset(20, seed=4)


def test_as_columns_matches_reward_kwargs():
    data = countdown_dataset(3, seed=1)
    cols = as_columns(data)
    assert cols["prompt"] == [e.prompt for e in data]
    assert cols["numbers"] == [e.meta["numbers"] for e in data]
    assert cols["target"] == [e.meta["target"] for e in data]


def test_bad_arguments():
    with pytest.raises(ValueError, match="ops"):
        arithmetic_dataset(5, ops=("^",))
    with pytest.raises(ValueError, match="split"):
        arithmetic_dataset(5, split="validation")
    with pytest.raises(ValueError, match="num_operands"):
        arithmetic_dataset(5, num_operands=1)
    with pytest.raises(ValueError, match="num_numbers"):
        countdown_dataset(5, num_numbers=1)


def test_r1_zero_template():
    ex = Example(prompt="What is 2 + 3?", answer="5")
    text = format_prompt(ex)
    assert "{question}" in R1_ZERO_TEMPLATE
    assert text.endswith("User: What is 2 + 3?\nAssistant: <think>")
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in text.split("User:")[0], "the instructions must name every tag"
    plain = format_prompt("What is 2 + 3?", prefill_think=False)
    assert plain.endswith("Assistant:") and plain + " <think>" == text
    with pytest.raises(ValueError, match="template"):
        format_prompt(ex, template="llama")


class _FakeChatTokenizer:
    """Minimal stand-in for a Hugging Face tokenizer (records what it was given)."""

    def __init__(self, allow_system=True):
        self.allow_system, self.calls = allow_system, []

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        self.calls.append((messages, tokenize, add_generation_prompt))
        if not self.allow_system and any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + ("<|assistant|>" if add_generation_prompt else "")


def test_chat_template_variant():
    tok = _FakeChatTokenizer()
    text = format_prompt("What is 2 + 3?", template="chat", tokenizer=tok)
    messages, tokenize, gen = tok.calls[-1]
    assert messages[0] == {"role": "system", "content": CHAT_SYSTEM_PROMPT}
    assert messages[1] == {"role": "user", "content": "What is 2 + 3?"}
    assert tokenize is False and gen is True
    assert text.endswith("<|assistant|><think>")
    assert format_prompt("q", template="chat", tokenizer=tok, prefill_think=False).endswith("<|assistant|>")
    # templates without a system role get the instructions in the user turn
    tok2 = _FakeChatTokenizer(allow_system=False)
    text2 = format_prompt("What is 2 + 3?", template="chat", tokenizer=tok2)
    assert CHAT_SYSTEM_PROMPT in text2 and "<|system|>" not in text2
    with pytest.raises(ValueError, match="tokenizer"):
        format_prompt("q", template="chat")
