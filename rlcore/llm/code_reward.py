"""The code reward (C19): run model-written code against tests in :mod:`rlcore.llm.sandbox`."""
from __future__ import annotations

import re
from typing import Sequence


_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """Code of a completion: the last fenced block inside the last ``<answer>`` block, else that
    block's text, else the last fenced block anywhere; None when there is none."""
    from .rewards import extract_answer  # lazy: rewards re-exports this module

    ans = extract_answer(completion)
    if ans is not None:
        blocks = _FENCE.findall(ans)
        return blocks[-1] if blocks else (ans or None)
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else None


def run_tests(code: str, tests: Sequence, timeout_s: float = 2.0, memory_mb: int = 256) -> list[bool]:
    """Run each test against ``code`` in its own sandboxed process (:mod:`rlcore.llm.sandbox`).

    A test is either a string of Python appended to the code (``"assert add(2, 3) == 5"``;
    passes when the program exits with status 0) or a dict ``{"input": stdin, "output": expected}``
    (passes when stdout equals ``expected`` up to surrounding whitespace).  One process per
    test, so the program cannot forge results for the other tests.
    """
    from .sandbox import run_python

    results = []
    for t in tests:
        if isinstance(t, str):
            r = run_python(code + "\n\n" + t + "\n", timeout_s=timeout_s, memory_mb=memory_mb)
            results.append(r.ok)
        elif isinstance(t, dict) and "output" in t:
            r = run_python(code, stdin=str(t.get("input", "")), timeout_s=timeout_s, memory_mb=memory_mb)
            results.append(r.ok and r.stdout.strip() == str(t["output"]).strip())
        else:
            raise ValueError(f"a test must be an assert string or a dict with 'input'/'output', got {t!r}")
    return results


def code_reward(prompts, completions, tests=None, timeout_s: float = 2.0, **kwargs) -> list[float]:
    """Fraction of ``tests[i]`` passed by the code in completion ``i`` (see :func:`run_tests`);
    0.0 when the completion holds no code.  Every run is sandboxed."""
    from .rewards import _column

    tests = _column({"tests": tests, **kwargs}, "tests", len(completions), "code_reward")
    out = []
    for c, ts in zip(completions, tests):
        code = extract_code(c)
        if code is None or not ts:
            out.append(0.0)
            continue
        passed = run_tests(code, ts, timeout_s=timeout_s)
        out.append(sum(passed) / len(passed))
    return out
