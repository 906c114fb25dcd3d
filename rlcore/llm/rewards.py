"""Rule-based rewards for RL on language models (C19, C20, C22).

Every reward function has the TRL signature ``f(prompts, completions, **kwargs) -> list[float]``:
dataset columns arrive as keyword lists aligned with ``completions`` (``answer=[...]``,
``numbers=[...]``, ``target=[...]``, ``tests=[...]``); unknown keywords are ignored.
``completions`` are what the policy generated *after* the prompt.  When the prompt was
prefilled with ``<think>`` (:data:`rlcore.llm.tasks.R1_ZERO_TEMPLATE`), pass
``prefilled_think=True`` (or a list of bools): the completion then starts inside the
think block and the parsers prepend the missing ``<think>``.

Parsing conventions (decided once, used everywhere):

* :func:`extract_answer` returns the content of the **last** ``<answer>...</answer>``
  block (the text after the last ``<answer>`` up to the next ``</answer>``).  Spamming
  several answers therefore buys nothing: only one guess is graded.  Whether the
  completion is *well formed* (one block, nothing outside the tags, ...) is the job of
  :func:`format_reward`, not of the accuracy reward (the R1-Zero split into
  eq-r1-accuracy-reward and eq-r1-format-reward).
* Numbers are compared numerically and exactly (``Fraction``): ``"0042" == "42" ==
  "42.0"``, but the whole answer must be one number: ``"4 2"``, ``"42 apples"`` and
  ``"1,000"`` are wrong.
"""
from __future__ import annotations

import ast
import math
import numbers as _numbers
import re
import unicodedata
from collections import Counter
from fractions import Fraction
from typing import Callable, Sequence

# ------------------------------------------------------------------ parsing
_EOS_STRINGS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<eos>")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def _prefilled(kwargs: dict, i: int) -> bool:
    p = kwargs.get("prefilled_think", False)
    if isinstance(p, (list, tuple)):
        return bool(p[i])
    return bool(p)


def _with_think(text: str, prefilled_think: bool) -> str:
    return "<think>" + text if prefilled_think else text


def _strip_eos(text: str) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for eos in _EOS_STRINGS:
            if text.endswith(eos):
                text, changed = text[: -len(eos)].rstrip(), True
    return text


def extract_answer(text: str) -> str | None:
    """Stripped content of the last ``<answer>...</answer>`` block, or None if there is none."""
    if not isinstance(text, str):
        raise TypeError(f"completion must be a str, got {type(text).__name__}")
    end = text.rfind("</answer>")
    while end != -1:
        start = text.rfind("<answer>", 0, end)
        if start != -1:
            return text[start + len("<answer>"):end].strip()
        end = text.rfind("</answer>", 0, end)
    return None


def extract_think(text: str, prefilled_think: bool = False) -> str | None:
    """Stripped content of the first ``<think>...</think>`` block, or None if there is none."""
    text = _with_think(text, prefilled_think)
    m = re.search(r"<think>(.*?)</think>", text, flags=re.DOTALL)
    return m.group(1).strip() if m else None


def parse_number(text: str | None) -> Fraction | None:
    """The exact value of ``text`` if it is one decimal number (``"0042"``, ``"-3.50"``), else None."""
    if text is None:
        return None
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    return Fraction(text)


def answers_match(predicted: str | None, reference: str) -> bool:
    """Numeric comparison when the reference is a number, whitespace-normalised string equality otherwise."""
    if predicted is None:
        return False
    ref = parse_number(str(reference))
    if ref is not None:
        return parse_number(predicted) == ref
    return " ".join(predicted.split()) == " ".join(str(reference).split())


def _column(kwargs: dict, name: str, n: int, fn: str) -> list:
    if name in kwargs and kwargs[name] is not None:
        col = kwargs[name]
    elif "meta" in kwargs and kwargs["meta"] is not None:  # list of Example.meta dicts
        col = [m[name] for m in kwargs["meta"]]
    else:
        raise ValueError(f"{fn} needs the dataset column {name!r} as a keyword list "
                         f"(e.g. {fn}(prompts, completions, {name}=[...]))")
    if len(col) != n:
        raise ValueError(f"{fn}: column {name!r} has {len(col)} entries for {n} completions")
    return list(col)


# ------------------------------------------------------------------ accuracy and format
def accuracy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the last ``<answer>`` block equals the reference ``answer`` (eq-r1-accuracy-reward), else 0.0."""
    answer = _column({"answer": answer}, "answer", len(completions), "accuracy_reward")
    return [float(answers_match(extract_answer(c), a)) for c, a in zip(completions, answer)]


_ANY_NUMBER = re.compile(r"[-\u2212]?\d+(?:\.\d+)?")


def lenient_accuracy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the *last number* of the completion equals ``answer``, tags or not.

    A shaped answer reward for models that do not yet follow the ``<answer>`` format: R1-Zero style
    replications use such a relaxed check to get any learning signal from a weak starting model, and
    move to the strict :func:`accuracy_reward` once the format is learned. Easier to game (a list of
    numbers ending in the right one passes), which is why it is only a starting aid.
    """
    answer = _column({"answer": answer}, "answer", len(completions), "lenient_accuracy_reward")
    out = []
    for c, a in zip(completions, answer):
        inside = extract_answer(c)
        nums = _ANY_NUMBER.findall(inside if inside is not None else c[-2000:])  # bounded: no long scans
        out.append(float(bool(nums) and answers_match(nums[-1].replace("\u2212", "-"), a)))
    return out


_STRICT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def is_well_formed(completion: str, prefilled_think: bool = False) -> bool:
    """Strict format check: exactly one non-empty ``<think>`` block, then exactly one
    non-empty ``<answer>`` block, nothing but whitespace before, between and after
    (a trailing EOS string such as ``<|im_end|>`` is allowed), no nested or repeated tags."""
    text = _strip_eos(_with_think(completion, prefilled_think))
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    m = _STRICT.fullmatch(text)
    return bool(m and m.group("think").strip() and m.group("answer").strip())


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 for a strictly well-formed completion (:func:`is_well_formed`, eq-r1-format-reward), else 0.0.

    Keyword ``prefilled_think`` (bool or list of bools): the prompt ended with ``<think>``.
    """
    return [float(is_well_formed(c, _prefilled(kwargs, i))) for i, c in enumerate(completions)]


def format_components(completion: str, prefilled_think: bool = False) -> dict[str, bool]:
    """The five checks behind :func:`partial_format_reward`; all True iff :func:`is_well_formed`."""
    text = _strip_eos(_with_think(completion, prefilled_think))
    counts = {tag: text.count(tag) for tag in _TAGS}
    t0, t1 = text.find("<think>"), text.find("</think>")
    a0, a1 = text.find("<answer>"), text.find("</answer>")
    think_ok = counts["<think>"] == 1 and counts["</think>"] == 1 and t0 < t1
    answer_ok = counts["<answer>"] == 1 and counts["</answer>"] == 1 and a0 < a1
    return {
        "think_block": think_ok,
        "think_nonempty": think_ok and bool(text[t0 + 7:t1].strip()),
        "answer_block": answer_ok and (not think_ok or t1 < a0),
        "answer_nonempty": answer_ok and bool(text[a0 + 8:a1].strip()),
        "nothing_outside": think_ok and answer_ok and t1 < a0 and bool(_STRICT.fullmatch(text)),
    }


def partial_format_reward(prompts, completions, **kwargs) -> list[float]:
    """Shaped format credit for curricula: the share of the five :func:`format_components`
    that hold (0.2 each).  Equals 1.0 exactly when :func:`format_reward` does."""
    return [sum(format_components(c, _prefilled(kwargs, i)).values()) / 5.0
            for i, c in enumerate(completions)]


# ------------------------------------------------------------------ language consistency
_SCRIPT_PREFIXES = {
    "LATIN": "latin", "HANGUL": "hangul", "CJK": "han", "HIRAGANA": "kana", "KATAKANA": "kana",
    "CYRILLIC": "cyrillic", "GREEK": "greek", "ARABIC": "arabic", "HEBREW": "hebrew",
    "DEVANAGARI": "devanagari", "THAI": "thai",
}
LANGUAGE_SCRIPTS = {
    "en": {"latin"}, "fr": {"latin"}, "de": {"latin"}, "es": {"latin"}, "it": {"latin"}, "pt": {"latin"},
    "ko": {"hangul"}, "zh": {"han"}, "ja": {"han", "kana"}, "ru": {"cyrillic"}, "uk": {"cyrillic"},
    "el": {"greek"}, "ar": {"arabic"}, "he": {"hebrew"}, "hi": {"devanagari"}, "th": {"thai"},
}
"""Target language -> the Unicode scripts its words are written in."""

NON_ENGLISH_LATIN_WORDS = frozenset("""
und der die das nicht ist ein eine ich wir sie mit auch oder aber dann wenn
les des est une avec pour dans pas sont nous vous mais donc alors aussi
el los las por para con una pero entonces tambien es que del
""".split())
"""Frequent function words of German, French and Spanish that are not English words;
the word-list heuristic that separates English from other Latin-script text."""

_SCRIPT_CACHE: dict[str, str | None] = {}


def char_script(ch: str) -> str | None:
    """Script of a letter (``"latin"``, ``"hangul"``, ``"han"``, ``"kana"``, ``"cyrillic"``, ...),
    ``"other"`` for letters of other scripts, None for digits, punctuation and spaces."""
    if ch in _SCRIPT_CACHE:
        return _SCRIPT_CACHE[ch]
    script = None
    if ch.isalpha() or unicodedata.category(ch) == "Lo":
        name = unicodedata.name(ch, "")
        script = next((s for p, s in _SCRIPT_PREFIXES.items() if name.startswith(p)), "other")
    _SCRIPT_CACHE[ch] = script
    return script


def split_words(text: str) -> list[tuple[str, str]]:
    """``[(word, script), ...]``: maximal runs of letters of one script; every Han or kana
    character is a word of its own (Chinese and Japanese do not separate words by
    spaces).  Digits and punctuation are not words."""
    words, cur, cur_script = [], [], None
    for ch in text:
        s = char_script(ch)
        if s is not None and s == cur_script and s not in ("han", "kana"):
            cur.append(ch)
            continue
        if cur:
            words.append(("".join(cur), cur_script))
        cur, cur_script = ([ch], s) if s is not None else ([], None)
    if cur:
        words.append(("".join(cur), cur_script))
    return words


def _in_language(word: str, script: str, target_lang: str) -> bool:
    if script not in LANGUAGE_SCRIPTS[target_lang]:
        return False
    if target_lang == "en":
        return word.isascii() and word.lower() not in NON_ENGLISH_LATIN_WORDS
    return True


def language_consistency(text: str, target_lang: str = "en") -> float:
    """Share of the words of ``text`` that are in ``target_lang`` (eq-r1-language-reward); 0.0 without words.

    Scripts are told apart by Unicode character names; within the Latin script English is
    separated from other languages by a word-list heuristic (ASCII-only words that are not in
    :data:`NON_ENGLISH_LATIN_WORDS`), so e.g. French words without accents can pass as English.
    """
    if target_lang not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unknown target_lang {target_lang!r}; choose one of {sorted(LANGUAGE_SCRIPTS)}")
    words = split_words(text)
    if not words:
        return 0.0
    return sum(_in_language(w, s, target_lang) for w, s in words) / len(words)


def language_consistency_reward(prompts, completions, target_lang: str = "en", **kwargs) -> list[float]:
    """Share of chain-of-thought words in ``target_lang`` (DeepSeek-R1's language-consistency reward).

    The chain of thought is the ``<think>`` block (honouring ``prefilled_think``); for a
    completion whose think block never closes, everything generated counts as thought.
    ``target_lang`` may also be a list (one per completion).
    """
    out = []
    for i, c in enumerate(completions):
        lang = target_lang[i] if isinstance(target_lang, (list, tuple)) else target_lang
        think = extract_think(c, _prefilled(kwargs, i))
        if think is None:
            think = _with_think(c, _prefilled(kwargs, i)).split("<think>", 1)[-1]
        out.append(language_consistency(think, lang))
    return out


# ------------------------------------------------------------------ Countdown
MAX_EXPRESSION_CHARS = 200


def safe_eval_arithmetic(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value and the integer literals of an expression of integers, ``+ - * /`` and
    parentheses, parsed with :mod:`ast` (never ``eval``).  Raises ValueError for anything
    else (names, calls, powers, unary minus, floats, division by zero, overly long text)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, RecursionError, MemoryError, ValueError) as exc:
        raise ValueError(f"not an arithmetic expression: {exc}") from None
    literals: list[int] = []
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}

    def ev(node) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return ops[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"disallowed syntax: {type(node).__name__}")

    try:
        value = ev(tree)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    return value, literals


def countdown_score(answer_text: str | None, numbers: Sequence[int], target: int) -> float:
    """1.0 if ``answer_text`` (optionally ``expr = target``) uses exactly ``numbers`` and equals ``target``."""
    if answer_text is None:
        return 0.0
    expr = answer_text.split("=")[0]
    try:
        value, literals = safe_eval_arithmetic(expr)
    except ValueError:
        return 0.0
    if Counter(literals) != Counter(int(x) for x in numbers):
        return 0.0
    return float(value == target)


def countdown_reward(prompts, completions, numbers=None, target=None, **kwargs) -> list[float]:
    """Countdown reward: 1.0 when the last ``<answer>`` block is an expression that uses each
    given number exactly once and evaluates (exactly, without ``eval``) to the target."""
    n = len(completions)
    numbers = _column({"numbers": numbers, **kwargs}, "numbers", n, "countdown_reward")
    target = _column({"target": target, **kwargs}, "target", n, "countdown_reward")
    return [countdown_score(extract_answer(c), nums, t) for c, nums, t in zip(completions, numbers, target)]


# ------------------------------------------------------------------ code
# The code reward lives in its own module (it drives the sandbox); re-exported here so that
# ``rlcore.llm.rewards`` stays the one place to import every reward from.
from .code_reward import code_reward, extract_code, run_tests  # noqa: E402,F401


# ------------------------------------------------------------------ combining
class RewardFunctionError(RuntimeError):
    """A reward function raised, or returned something other than one finite number per completion."""


def reward_name(func: Callable) -> str:
    """Name used for logging: ``__name__``, the wrapped function of a ``functools.partial``, or the class name."""
    name = getattr(func, "__name__", None)
    if name is None and hasattr(func, "func"):
        name = getattr(func.func, "__name__", None)
    return name or type(func).__name__


def compute_rewards(reward_funcs: Sequence[Callable], weights: Sequence[float] | None, prompts: list[str],
                    completions: list[str], **kwargs):
    """Weighted sum of reward functions, with checks (eq-r1-total-reward: r = sum_k w_k r_k).

    Returns ``(total, per_function)``: a float32 tensor ``[N]`` and ``{name: tensor [N]}``
    of unweighted values for logging (names made unique with ``_2``, ``_3``, ...).
    Raises :class:`RewardFunctionError` naming the function (and the first offending index)
    when a function raises, returns a wrong length, or returns None / NaN / inf / non-numbers.
    """
    import torch

    if callable(reward_funcs):
        reward_funcs = [reward_funcs]
    reward_funcs = list(reward_funcs)
    if not reward_funcs:
        raise ValueError("reward_funcs is empty; pass at least one reward function")
    if weights is None:
        weights = [1.0] * len(reward_funcs)
    weights = [float(w) for w in weights]
    if len(weights) != len(reward_funcs):
        raise ValueError(f"got {len(weights)} weights for {len(reward_funcs)} reward functions")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite, got {weights}")
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions; repeat each prompt once per completion")

    total = torch.zeros(n, dtype=torch.float32)
    per_function: dict[str, torch.Tensor] = {}
    for func, w in zip(reward_funcs, weights):
        name = base = reward_name(func)
        k = 2
        while name in per_function:
            name, k = f"{base}_{k}", k + 1
        try:
            values = func(prompts, completions, **kwargs)
        except Exception as exc:
            raise RewardFunctionError(f"reward function {name!r} raised {type(exc).__name__}: {exc}") from exc
        if values is None or isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise RewardFunctionError(f"reward function {name!r} returned {type(values).__name__}; "
                                      f"it must return a list of {n} floats")
        if hasattr(values, "tolist"):
            values = values.tolist()
        if len(values) != n:
            raise RewardFunctionError(f"reward function {name!r} returned {len(values)} values for {n} completions")
        clean = []
        for i, v in enumerate(values):
            if not isinstance(v, _numbers.Real) or not math.isfinite(float(v)):
                raise RewardFunctionError(f"reward function {name!r} returned {v!r} at index {i}; "
                                          "every reward must be a finite number")
            clean.append(float(v))
        t = torch.tensor(clean, dtype=torch.float32)
        per_function[name] = t
        total += w * t
    return total, per_function


def combine_rewards(reward_funcs: Sequence[Callable], weights: Sequence[float] | None = None) -> Callable:
    """One TRL-style reward function returning the checked weighted sum of ``reward_funcs``."""
    funcs = list(reward_funcs)

    def combined_reward(prompts, completions, **kwargs) -> list[float]:
        total, _ = compute_rewards(funcs, weights, prompts, completions, **kwargs)
        return total.tolist()

    return combined_reward


# ------------------------------------------------------------------ reflection ("aha moment")
REFLECTION_WORDS = (
    "wait", "hmm", "check", "checking", "recheck", "re-check", "double-check", "verify", "verifying",
    "re-evaluate", "reevaluate", "reconsider", "mistake", "wrong", "actually", "let me try again",
    "on second thought",
)
"""Words and phrases that signal self-reflection (matched case-insensitively as whole words)."""

_REFLECTION_RE = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(w) for w in
                            sorted(REFLECTION_WORDS, key=len, reverse=True)) + r")(?![\w-])", re.IGNORECASE)


def reflection_count(completion: str) -> int:
    """Number of reflection words and phrases in ``completion``."""
    return len(_REFLECTION_RE.findall(completion))


def reflection_rate(completions: Sequence[str]) -> float:
    """Share of completions containing at least one of :data:`REFLECTION_WORDS` (C20); 0.0 for none."""
    completions = list(completions)
    if not completions:
        return 0.0
    return sum(reflection_count(c) > 0 for c in completions) / len(completions)


def think_length(completion: str, prefilled_think: bool = False, tokenizer=None) -> int:
    """Length of the chain of thought: whitespace-separated words (or tokens with ``tokenizer``).
    An unclosed think block (truncated generation) counts up to the end; no think block: 0."""
    text = _with_think(completion, prefilled_think)
    think = extract_think(text)
    if think is None:
        think = text.split("<think>", 1)[1] if "<think>" in text else ""
    if tokenizer is not None:
        return len(tokenizer(think, add_special_tokens=False)["input_ids"])
    return len(think.split())


__all__ = [
    "extract_answer", "extract_think", "extract_code", "parse_number", "answers_match", "accuracy_reward",
    "lenient_accuracy_reward", "is_well_formed", "format_reward", "format_components", "partial_format_reward", "char_script",
    "split_words", "language_consistency", "language_consistency_reward", "LANGUAGE_SCRIPTS",
    "NON_ENGLISH_LATIN_WORDS", "safe_eval_arithmetic", "countdown_score", "countdown_reward", "run_tests",
    "code_reward", "RewardFunctionError", "reward_name", "compute_rewards", "combine_rewards",
    "REFLECTION_WORDS", "reflection_count", "reflection_rate", "think_length",
]
