"""Verifiable tasks for RL on language models and the R1-Zero prompt template (C19).

Two synthetic task families whose answers a program can check exactly, so that the
reward is a rule, not a learned model (the R1-Zero recipe, eq-r1-accuracy-reward):

* :func:`arithmetic_dataset` -- ``What is 37 + 85 * 4?`` with adjustable difficulty
  (``digits`` per operand, the set of ``ops``, ``num_operands``);
* :func:`countdown_dataset` -- reach a target from given numbers with ``+ - * /``, each
  number used exactly once (the TinyZero task); every target is reachable by
  construction and ``answer`` holds one valid expression.

Train and held-out splits are disjoint by construction: a problem belongs to the test
split iff a hash of its canonical form falls into the first ``test_fraction`` of the
hash range, so no seed or size can make the splits overlap.  Same ``seed`` and
arguments, same data.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from fractions import Fraction

R1_ZERO_TEMPLATE = (
    "A conversation between a User and an Assistant. The User asks a question and the "
    "Assistant solves it. The Assistant first thinks the problem through step by step and "
    "then gives the User the final answer. The reasoning goes inside <think> </think> tags and "
    "the final answer inside <answer> </answer> tags, like this: <think> reasoning here </think> "
    "<answer> answer here </answer>.\nUser: {question}\nAssistant: <think>"
)
"""R1-Zero style template (our wording, the structure of DeepSeek-R1's Table 1); ``{question}``
is filled with :attr:`Example.prompt`.  It ends with ``"Assistant: <think>"``: the thinking
tag is *prefilled*, so the completion starts inside the think block."""

CHAT_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think about the problem step by step inside "
    "<think> </think> tags, then give only the final answer inside <answer> </answer> tags, "
    "like this: <think> reasoning here </think> <answer> answer here </answer>."
)
"""System prompt used by ``format_prompt(..., template="chat")``."""

ARITHMETIC_OPS = ("+", "-", "*", "/")


@dataclass
class Example:
    """One task instance."""

    prompt: str
    """The user question, without any template."""
    answer: str
    """Reference answer (a number for arithmetic, one valid expression for Countdown)."""
    meta: dict = field(default_factory=dict)
    """Task details (operands, numbers, target, difficulty, split)."""

    def to_dict(self) -> dict:
        """``{"prompt", "answer", **meta}``: one row with the meta fields as columns."""
        return {"prompt": self.prompt, "answer": self.answer, **self.meta}


def as_columns(examples: list[Example]) -> dict[str, list]:
    """Column view ``{"prompt": [...], "answer": [...], "numbers": [...], ...}`` of a list of
    examples -- the shape in which TRL-style reward functions receive dataset columns as
    keyword arguments (e.g. ``countdown_reward(prompts, completions, **as_columns(batch))``)."""
    rows = [ex.to_dict() for ex in examples]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in keys}


def _in_test_split(key: str, test_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h < test_fraction * 2**64


def _split_rng(seed: int, split: str, task: str) -> random.Random:
    return random.Random(f"{task}|{seed}|{split}")


def _check_common(n: int, seed: int, split: str, test_fraction: float) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")


def _draw(rng: random.Random, digits: int) -> int:
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _evaluate(tokens: list) -> Fraction:
    """Evaluate ``[a, op, b, op, c, ...]`` with the usual precedence (* and / before + and -)."""
    terms, ops = [Fraction(tokens[0])], []
    for op, x in zip(tokens[1::2], tokens[2::2]):
        if op in "*/":
            if op == "/" and x == 0:
                raise ZeroDivisionError
            terms[-1] = terms[-1] * x if op == "*" else terms[-1] / x
        else:
            ops.append(op)
            terms.append(Fraction(x))
    total = terms[0]
    for op, t in zip(ops, terms[1:]):
        total = total + t if op == "+" else total - t
    return total


def arithmetic_dataset(n: int, digits: int = 2, ops: tuple[str, ...] = ("+",), seed: int = 0,
                       split: str = "train", num_operands: int = 2,
                       test_fraction: float = 0.2) -> list[Example]:
    """``n`` distinct arithmetic problems ``What is a op b [op c ...]?`` with integer answers.

    Args:
        digits: digits per operand (1 allows 0..9, d > 1 draws from [10^(d-1), 10^d)).
        ops: operators drawn uniformly per position, from ``+ - * /``; division only
            appears when the whole expression has an integer value.
        num_operands: operands per problem (>= 2); precedence is the usual one.
        split: ``"train"`` or ``"test"``; disjoint by a hash of the expression.
        test_fraction: share of the problem space that belongs to the test split.
    """
    _check_common(n, seed, split, test_fraction)
    if not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be an int >= 1, got {digits!r}")
    if isinstance(ops, str):
        ops = (ops,)
    bad = [o for o in ops if o not in ARITHMETIC_OPS]
    if not ops or bad:
        raise ValueError(f"ops must be a non-empty subset of {ARITHMETIC_OPS}, got {ops!r}")
    if not isinstance(num_operands, int) or num_operands < 2:
        raise ValueError(f"num_operands must be an int >= 2, got {num_operands!r}")
    rng = _split_rng(seed, split, f"arith{digits}{''.join(ops)}{num_operands}")
    seen, out = set(), []
    max_tries = 200 * n + 1000
    for _ in range(max_tries):
        if len(out) == n:
            break
        tokens = [_draw(rng, digits)]
        for _ in range(num_operands - 1):
            tokens += [rng.choice(ops), _draw(rng, digits)]
        expr = " ".join(map(str, tokens))
        if expr in seen or _in_test_split(expr, test_fraction) != (split == "test"):
            continue
        try:
            value = _evaluate(tokens)
        except ZeroDivisionError:
            continue
        if value.denominator != 1:
            continue
        seen.add(expr)
        out.append(Example(prompt=f"What is {expr}?", answer=str(value.numerator),
                           meta={"task": "arithmetic", "expression": expr, "digits": digits,
                                 "ops": list(ops), "num_operands": num_operands, "split": split}))
    if len(out) < n:
        raise ValueError(f"could only find {len(out)} distinct {split} problems with digits={digits}, "
                         f"ops={ops}, num_operands={num_operands}; ask for fewer or make the task larger")
    return out


def _countdown_expression(rng: random.Random, numbers: list[int]) -> tuple[str, Fraction] | None:
    """Combine all ``numbers`` in random order with random operators; None if a step is invalid."""
    items = [(str(x), Fraction(x)) for x in numbers]
    rng.shuffle(items)
    while len(items) > 1:
        (ea, a), (eb, b) = items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items)))
        op = rng.choice("+-*/")
        if op == "-" and a < b:
            (ea, a), (eb, b) = (eb, b), (ea, a)
        if op == "/":
            if b == 0 or (a / b).denominator != 1:
                op = "*"
        val = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        items.append((f"({ea} {op} {eb})", val))
    expr, val = items[0]
    return (expr[1:-1] if expr.startswith("(") else expr), val


def countdown_dataset(n: int, num_numbers: int | tuple[int, int] = (3, 4), seed: int = 0,
                      split: str = "train", max_number: int = 25, max_target: int = 200,
                      test_fraction: float = 0.2) -> list[Example]:
    """``n`` Countdown problems: combine the given numbers (each exactly once) with ``+ - * /``
    to reach the target.  Reachable by construction: the target is the value of a random
    expression over the numbers, which is stored as ``answer``.

    Args:
        num_numbers: how many numbers (an int, or an inclusive range ``(lo, hi)``).
        max_number: numbers are drawn from ``1..max_number``.
        max_target: targets are integers in ``1..max_target``.
    """
    _check_common(n, seed, split, test_fraction)
    lo, hi = (num_numbers, num_numbers) if isinstance(num_numbers, int) else tuple(num_numbers)
    if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi):
        raise ValueError(f"num_numbers must be an int >= 2 or a range (lo, hi) with 2 <= lo <= hi, got {num_numbers!r}")
    if max_number < 1 or max_target < 1:
        raise ValueError("max_number and max_target must be >= 1")
    rng = _split_rng(seed, split, f"countdown{lo}-{hi}-{max_number}-{max_target}")
    seen, out = set(), []
    for _ in range(500 * n + 1000):
        if len(out) == n:
            break
        numbers = [rng.randint(1, max_number) for _ in range(rng.randint(lo, hi))]
        expr, val = _countdown_expression(rng, numbers)
        if val.denominator != 1 or not 1 <= val <= max_target:
            continue
        target = int(val)
        key = f"{sorted(numbers)}->{target}"
        if key in seen or _in_test_split(key, test_fraction) != (split == "test"):
            continue
        seen.add(key)
        out.append(Example(
            prompt=(f"Using the numbers {numbers}, write an expression that equals {target}. "
                    "Use each number exactly once and only + - * / and parentheses."),
            answer=expr,
            meta={"task": "countdown", "numbers": numbers, "target": target, "split": split}))
    if len(out) < n:
        raise ValueError(f"could only find {len(out)} distinct {split} Countdown problems; "
                         "ask for fewer or raise max_number / max_target")
    return out


def format_prompt(example_or_question: Example | str, template: str = "r1_zero", tokenizer=None,
                  prefill_think: bool = True) -> str:
    """Turn a question into the text the policy continues.

    ``template="r1_zero"``: :data:`R1_ZERO_TEMPLATE` (a plain-text prompt for base models);
    with ``prefill_think=False`` the trailing ``<think>`` is dropped and the prompt ends
    with ``"Assistant:"``.  ``template="chat"``: the tokenizer's chat template with
    :data:`CHAT_SYSTEM_PROMPT` as system message and ``add_generation_prompt=True``;
    ``prefill_think`` appends ``<think>`` after the generation prompt.
    Reward functions must be told about the prefill (``prefilled_think=True``).
    """
    if isinstance(example_or_question, Example):
        question = example_or_question.prompt
    elif isinstance(example_or_question, str):
        question = example_or_question
    else:
        raise TypeError(f"expected an Example or a str, got {type(example_or_question).__name__}")
    if template == "r1_zero":
        text = R1_ZERO_TEMPLATE.format(question=question)
        return text if prefill_think else text[: -len(" <think>")]
    if template == "chat":
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError("template='chat' needs a tokenizer with a chat template (tokenizer=...)")
        messages = [{"role": "system", "content": CHAT_SYSTEM_PROMPT},
                    {"role": "user", "content": question}]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # some chat templates reject a system role: fold it into the user turn
            messages = [{"role": "user", "content": CHAT_SYSTEM_PROMPT + "\n\n" + question}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + "<think>" if prefill_think else text
    raise ValueError(f"template must be 'r1_zero' or 'chat', got {template!r}")


__all__ = ["Example", "as_columns", "arithmetic_dataset", "countdown_dataset", "format_prompt",
           "R1_ZERO_TEMPLATE", "CHAT_SYSTEM_PROMPT", "ARITHMETIC_OPS"]
