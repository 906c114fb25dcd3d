"""Helpers shared by the exercise-checker tests (tests/test_exercises_ch*.py)."""


def fails_with(checker, fn, *fragments, capsys):
    """Assert that ``checker`` rejects ``fn`` with a "✗" message containing every fragment; return the message."""
    assert checker(fn) is False
    out = capsys.readouterr().out
    assert out.startswith("✗"), out
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    return out
