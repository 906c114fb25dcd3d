"""Chapter 8's exercise checkers (rlcore/exercise_checks/ch08.py): they accept rlcore's reference and an
independent solution and reject the known mistakes with their hint."""
import unicodedata

import pytest
import torch
import torch.nn.functional as F

from rlcore.exercise_checks import ch08 as checks
from rlcore.llm.rewards import language_consistency
from rlcore.llm.sft import IGNORE_INDEX, sft_loss


def sol_language_share(text):
    words, cur, script = [], "", None
    for ch in text + " ":
        s = unicodedata.name(ch, "").split(" ")[0] if ch.isalpha() else None
        if cur and (s != script or script == "CJK" or s is None):
            words.append((cur, script))
            cur = ""
        if s is not None:
            cur, script = cur + ch, s
    if not words:
        return 0.0
    return sum(w.isascii() for w, s in words) / len(words)


def sol_labels(prompt_ids, completion_ids, eos_id):
    return [-100] * len(prompt_ids) + list(completion_ids) + [eos_id]


def sol_loss(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


def test_checkers_accept_references_and_solutions():
    assert checks.check_language_share(lambda t: language_consistency(t, "en"), raise_on_fail=True)
    assert checks.check_language_share(sol_language_share, raise_on_fail=True)
    assert checks.check_sft_labels(sol_labels, raise_on_fail=True)
    assert checks.check_sft_loss(sft_loss, raise_on_fail=True)
    assert checks.check_sft_loss(sol_loss, raise_on_fail=True)


def test_language_checker_rejects_space_splitting(capsys):
    def by_spaces(text):
        words = [w for w in text.split() if any(c.isalpha() for c in w)]
        return sum(w.strip(",.?").isascii() for w in words) / len(words) if words else 0.0

    assert not checks.check_language_share(by_spaces)
    assert "script changes" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda p, c, e: list(p) + list(c) + [e], "-100"),
    (lambda p, c, e: [-100] * len(p) + list(c), "EOS"),
])
def test_labels_checker_names_the_mistake(capsys, wrong, hint):
    assert not checks.check_sft_labels(wrong)
    assert hint in capsys.readouterr().out


def test_loss_checker_rejects_the_unshifted_loss(capsys):
    def no_shift(logits, labels):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)

    assert not checks.check_sft_loss(no_shift)
    assert "shift by one" in capsys.readouterr().out
    with pytest.raises(AssertionError):
        checks.check_sft_loss(lambda lg, lb: torch.tensor(0.0), raise_on_fail=True)


# ------------------------------------------------------------------ derivation: the SFT optimum with lengths
def test_sft_optimum_right_formulas_pass(capsys):
    def weights_written_out(n_a, len_a, n_b, len_b):
        return n_a * len_b / (n_a * len_b + n_b * len_a)

    assert checks.check_sft_optimum(checks.sft_optimum) is True
    assert checks.check_sft_optimum(weights_written_out, raise_on_fail=True) is True
    assert capsys.readouterr().out.startswith("✓ sft_optimum")


def test_sft_optimum_reference_minimises_the_length_normalised_loss():
    """Train a first-token distribution (and the continuations) by gradient descent on the average of per-example
    length-normalised losses, with rlcore's sft_loss applied to one example at a time."""
    from rlcore.llm.sft import sft_loss

    n_a, len_a, n_b, len_b = 1, 2, 1, 8
    V = 3  # tokens 0 and 1 start A and B; token 2 fills them up
    logits = torch.zeros(max(len_a, len_b) + 1, V, requires_grad=True)  # one distribution per position
    opt = torch.optim.Adam([logits], lr=0.05)
    seqs = [[0] + [2] * (len_a - 1)] * n_a + [[1] + [2] * (len_b - 1)] * n_b
    for _ in range(1500):
        loss = 0.0
        for s in seqs:  # prompt token 2 (label -100), then the completion
            labels = torch.tensor([[-100] + s])
            step_logits = logits[: len(s) + 1][None]  # position t predicts the label at t + 1
            loss = loss + sft_loss(step_logits, labels)
        opt.zero_grad()
        (loss / len(seqs)).backward()
        opt.step()
    p_first = torch.softmax(logits[0].detach(), -1)
    share = float(p_first[0] / (p_first[0] + p_first[1]))
    assert share == pytest.approx(float(checks.sft_optimum(n_a, len_a, n_b, len_b)), abs=0.01)


@pytest.mark.parametrize("fn,fragment", [
    (lambda a, la, b, lb: a / (a + b), "every example weighs the same"),
    (lambda a, la, b, lb: a * la / (a * la + b * lb), "the other way round"),
    (lambda a, la, b, lb: lb / (la + lb), "numbers of copies matter"),
])
def test_sft_optimum_mistakes_get_their_hint(fn, fragment, capsys):
    assert checks.check_sft_optimum(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and fragment in out, out


def test_sft_optimum_stub_gets_not_implemented(capsys):
    def my_sft_optimum(n_a, len_a, n_b, len_b):
        ...

    assert checks.check_sft_optimum(my_sft_optimum) is False
    out = capsys.readouterr().out
    assert "not implemented yet" in out and "Hint" not in out
