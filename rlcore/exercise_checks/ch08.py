"""Checkers for chapter 8's exercises (cold start and language consistency): the share of
words in the target language, the SFT labels that mask the prompt, and the masked SFT loss; and a
derivation, the minimiser of the length-normalised SFT loss on two answers of different lengths (a formula,
see :mod:`rlcore.exercise_checks._derivation`).

Each checker follows :func:`rlcore.exercises.check`: hand-made cases first, then random ones,
expected values from rlcore's reference, and known mistakes with a hint each::

    from rlcore.exercise_checks import ch08 as checks
    checks.check_language_share(my_language_share)
"""
from __future__ import annotations

import random
from typing import Callable

import torch

from rlcore.exercises import Case, Mistake, check

__all__ = ["ascii_word_share", "check_language_share", "check_sft_labels", "check_sft_loss", "check_sft_optimum",
           "sft_optimum"]


# --------------------------------------------------------------------- language consistency
def ascii_word_share(text: str) -> float:
    """The exercise's definition of the English share (eq-r1-language-reward): words as in
    :func:`rlcore.llm.rewards.split_words`, a word is English when it is written in ASCII letters;
    0.0 without words. The reference of :func:`check_language_share`."""
    from rlcore.llm.rewards import split_words

    words = split_words(text)
    return sum(w.isascii() for w, _ in words) / len(words) if words else 0.0


def check_language_share(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-08-language: ``fn(text) -> float`` is the share of the words of ``text`` that
    are English (eq-r1-language-reward), 0.0 when there are no words. A word is a maximal run of
    letters of one script (Hangul, Latin, Cyrillic, ...); every Chinese (Han) or Japanese kana
    character is a word of its own; digits, punctuation and spaces are not words. A word is
    English when it is written in ASCII letters. Reference: :func:`ascii_word_share`.

    rlcore's reward, :func:`rlcore.llm.rewards.language_consistency`, goes further (a Latin word
    must be a recognisable English word by its frequency in wordfreq's lists, single letters are
    neutral, code is not prose); every case here is one where the two agree (real English words
    of two letters or more), so the reward passes this checker too."""
    def case(text, label):
        return Case({"text": text}, ascii_word_share(text), label)

    cases = [
        case("First add the ones, then the tens.", "all English"),
        case("먼저 일의 자리를 더한다", "all Korean: no English word"),
        case("First 일의 자리 add, then carry", "English with Korean words"),
        case("我们 add the ones", "each Chinese character is a word: 3 of 5"),
        case("3 + 4 = 7", "digits and symbols are not words: 0.0"),
        case("", "empty text: 0.0"),
        case("carry1write", "digits split words: 'carry' and 'write'"),
        case("Übertrag and carry", "'Übertrag' has a non-ASCII letter"),
        case("so 일이 + 二 = 三, ok?", "mixed scripts with punctuation"),
        case("Wait, 다시 확인해 보자. 7 + 5 = 12, yes", "a language switch inside the reflection"),
    ]
    rng = random.Random(5)
    pool = ["add", "the", "ones", "carry", "write", "so", "일", "쓰기", "올림", "自", "然", "数", "число", " ", " ", ", ", "7", "+"]
    for i in range(8):
        text = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        cases.append(case(text, f"random text {i + 1}"))

    def split_on_spaces(text):
        words = [w.strip(",.?!:;") for w in text.split()]
        words = [w for w in words if any(ch.isalpha() for ch in w)]
        return sum(w.isascii() for w in words) / len(words) if words else 0.0

    def char_share(text):
        letters = [ch for ch in text if ch.isalpha()]
        return sum(ch.isascii() for ch in letters) / len(letters) if letters else 0.0

    mistakes = [
        Mistake(split_on_spaces, "splitting on spaces misses words without spaces between them (Chinese, or "
                                 "'일의' glued to an English word): split where the script changes, and count "
                                 "each Han character as one word."),
        Mistake(char_share, "you counted characters, not words: a long English word and a one-character "
                            "Korean word count one each."),
    ]
    return check(fn, cases, "language_share", raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-08-language",
                 hint="reread the exercise's definition of a word: a word ends where the script changes or a "
                      "non-letter appears, every Chinese character is a word of its own, and a word is English "
                      "when all its letters are ASCII (the statement says how to find a letter's script).")


# --------------------------------------------------------------------- SFT labels and loss
class _IdTokenizer:
    """A minimal tokenizer for the checker: text of single characters -> their code points."""

    eos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(ch) for ch in text]}


def check_sft_labels(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-08-labels: ``fn(prompt_ids, completion_ids, eos_id) -> list[int]`` returns the
    labels of the sequence ``prompt_ids + completion_ids + [eos_id]`` for SFT (eq-sft-loss): ``-100``
    (ignored) at every prompt position, the token itself at every completion position and at the
    appended EOS. Reference: :func:`rlcore.llm.sft.encode_pair`."""
    from rlcore.llm.sft import encode_pair

    tok = _IdTokenizer()

    def case(prompt, completion, label):
        _, labels = encode_pair(tok, prompt, completion)
        return Case({"prompt_ids": [ord(c) for c in prompt], "completion_ids": [ord(c) for c in completion],
                     "eos_id": tok.eos_token_id}, labels, label)

    cases = [
        case("Q3+4", "<7>", "a short pair"),
        case("What is 2+2?", "x", "a one-token completion: its token and the EOS are learned"),
        case("P", "abcdef", "a one-token prompt"),
    ]
    rng = random.Random(2)
    for i in range(5):
        p = "".join(chr(rng.randint(40, 120)) for _ in range(rng.randint(1, 12)))
        c = "".join(chr(rng.randint(40, 120)) for _ in range(rng.randint(1, 12)))
        cases.append(case(p, c, f"random pair {i + 1}"))

    def no_mask(p, c, eos):
        return list(p) + list(c) + [eos]

    def no_eos(p, c, eos):
        return [-100] * len(p) + list(c)

    def shifted(p, c, eos):
        return [-100] * (len(p) - 1) + list(c) + [eos] + [-100]

    mistakes = [
        Mistake(no_mask, "the prompt positions must be -100: the model should not be trained to write the question."),
        Mistake(no_eos, "append the EOS id to the completion: without it the model never learns to stop."),
        Mistake(shifted, "do not shift the labels here: labels line up with input_ids, and the loss shifts "
                         "them by one (logits at t predict token t+1)."),
    ]
    return check(fn, cases, "sft_labels", raise_on_fail=raise_on_fail, mistakes=mistakes,
                 exercise="ex-08-labels",
                 hint="reread eq-sft-loss: the labels line up with the input ids (prompt, completion, EOS); the "
                      "prompt positions are ignored (-100), while every completion token and the EOS are learned.")


def check_sft_loss(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-08-loss: ``fn(logits, labels) -> scalar tensor`` is the masked next-token
    cross-entropy of eq-sft-loss: logits ``[B, T, V]`` at position ``t`` predict ``labels[:, t+1]``;
    positions labelled ``-100`` are ignored; the mean is over all remaining tokens of the batch.
    Reference: :func:`rlcore.llm.sft.sft_loss`."""
    import torch.nn.functional as F

    from rlcore.llm.sft import sft_loss

    g = torch.Generator().manual_seed(8)

    def case(B, T, V, prompt_lens, pad_lens, label):
        logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
        labels = torch.randint(0, V, (B, T), generator=g)
        for b in range(B):
            labels[b, : prompt_lens[b]] = -100
            if pad_lens[b]:
                labels[b, T - pad_lens[b]:] = -100
        return Case({"logits": logits, "labels": labels}, sft_loss(logits, labels), label)

    cases = [
        case(1, 5, 4, [2], [0], "one sequence, 2 prompt tokens"),
        case(2, 6, 5, [1, 3], [0, 0], "two sequences with different prompt lengths"),
        case(2, 7, 3, [2, 2], [0, 3], "padding at the end of the second sequence"),
        case(3, 8, 6, [4, 1, 5], [1, 0, 2], "a batch of three"),
    ]

    def no_shift(logits, labels):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

    def per_sequence(logits, labels):
        lp = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
        mask = (labels[:, 1:] != -100).to(lp.dtype)
        return ((lp * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()

    mistakes = [
        Mistake(no_shift, "shift by one: the logits at position t predict the token at t+1, so the last "
                          "position has no label and the first label has no prediction."),
        Mistake(per_sequence, "average over all completion tokens of the batch, not per sequence then over "
                              "sequences (each token has the same weight)."),
    ]
    return check(fn, cases, "sft_loss", raise_on_fail=raise_on_fail, mistakes=mistakes, atol=1e-6,
                 exercise="ex-08-loss",
                 hint="reread eq-sft-loss: line the logits at each position up with the label of the *next* "
                      "position, leave out the positions labelled -100, and average the cross-entropy over all "
                      "remaining tokens of the batch.")


# --------------------------------------------------------------------- derivation: what SFT converges to
def sft_optimum(n_a, len_a, n_b, len_b):
    """The reference: the probability of answer A under the minimiser of the average of eq-sft-loss over a data
    set with ``n_a`` copies of a completion A of ``len_a`` tokens and ``n_b`` copies of a completion B of
    ``len_b`` tokens for the same prompt, A and B differing in their first token, for a policy that can
    represent any distribution. Each example's loss is divided by its own length, so each copy of A weighs
    ``1 / len_a``."""
    return (n_a / len_a) / (n_a / len_a + n_b / len_b)


def check_sft_optimum(fn: Callable, raise_on_fail: bool = False) -> bool:
    """Exercise ex-08-sft-optimum: ``fn(n_a, len_a, n_b, len_b)``, called with sympy symbols (positive
    integers), returns :func:`sft_optimum` as a formula; compared at hand-made and random points."""
    import numpy as np
    import sympy as sp

    from rlcore.exercise_checks._derivation import closed_form_check

    n_a, len_a, n_b, len_b = sp.symbols("n_a len_a n_b len_b", integer=True, positive=True)
    symbols = {"n_a": n_a, "len_a": len_a, "n_b": n_b, "len_b": len_b}
    reference = sft_optimum(n_a, len_a, n_b, len_b)

    def pt(a, la, b, lb):
        return {"n_a": a, "len_a": la, "n_b": b, "len_b": lb}

    points = [(pt(1, 10, 1, 10), "one copy of each, equal lengths"),
              (pt(3, 10, 1, 10), "A three times as frequent, equal lengths"),
              (pt(1, 10, 1, 40), "one copy of each, B four times as long"),
              (pt(1, 10, 4, 40), "B four times as frequent and four times as long")]
    rng = np.random.default_rng(8)
    points += [(pt(int(rng.integers(1, 50)), int(rng.integers(1, 200)), int(rng.integers(1, 50)),
                   int(rng.integers(1, 200))), f"random data set {i + 1}") for i in range(8)]
    mistakes = [
        (n_a / (n_a + n_b),
         "that is the optimum when every example weighs the same (its log-probability summed over its tokens, or "
         "tokens pooled over the batch); eq-sft-loss divides each example by its own length."),
        (n_a * len_a / (n_a * len_a + n_b * len_b),
         "the length enters the other way round: dividing an example's loss by its length makes a long example "
         "count less, not more."),
        (len_b / (len_a + len_b),
         "the numbers of copies matter too: the average loss is a weighted sum over the two answers, each weighted "
         "by how many copies it has and by one over its length."),
    ]
    return closed_form_check(
        fn, symbols, reference, points, "sft_optimum",
        hint="only the first token's distribution is contested (the rest of each answer can be predicted with "
             "probability one), so the average loss is a weighted sum of the negative logs of two probabilities "
             "that add up to at most one; find the weights from eq-sft-loss and maximise.",
        exercise="ex-08-sft-optimum", mistakes=mistakes, raise_on_fail=raise_on_fail)
