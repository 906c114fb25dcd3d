"""The code reward (C19): run model-written code against tests in :mod:`rlcore.llm.sandbox`.

RL maximises whatever the reward lets through, so a reward that a program can earn without
solving the task teaches the policy to stop solving it.  The classic hole: append
``assert add(2, 3) == 5`` to the candidate's code and count "exit status 0" as a pass.  Then
``import os; os._exit(0)`` passes every test, an object whose ``__eq__`` returns True passes
every assert, and a program that reads its own source finds the expected values in it.

The design here closes these holes by one rule: **the expected values never enter the
sandbox, and nothing the sandbox says is trusted except as plain data to compare.**

* A test is a *call plus expected value*.  A harness inside the sandbox runs the candidate's
  code, calls the function on each test's arguments, and writes the *outputs* as plain JSON
  (one record per call) to a report channel (file descriptor 3, not stdout).  The caller
  decodes the records into plain Python values (int, float, str, bytes, None, bool, list,
  tuple, dict, set, frozenset, complex) and compares them with the expected values itself.
* The harness serialises only values of exactly those types (``type(x) is int``, not
  ``isinstance``), so an always-equal object or an ``int`` subclass with a custom ``__eq__``
  is recorded as "unserialisable" and fails.  Exceptions are recorded by the name of their
  nearest built-in class (``{"raised": "ValueError"}``).
* Exiting early (``os._exit(0)``, ``sys.exit``, a signal) leaves no record, and no record
  means no pass.  Each call test needs exactly one well-formed record; duplicates or
  malformed records void the whole run (so a program cannot hedge by writing several answers).
* We do not try to hide the report channel: the candidate runs in the harness's process and
  could find any secret kept there (a nonce, say) with ``gc`` or frame inspection.  Instead the
  channel carries nothing worth forging.  A forged record can only claim outputs, and claiming
  the right outputs without knowing the expected values is exactly solving the task.  Tampering
  with the harness (monkeypatching ``json``, ``builtins``, closing fd 3) likewise only changes
  which outputs are claimed.  What the sandbox must guarantee is that the expected values are
  not reachable: they are not in its files, its environment or its arguments, and in strict
  mode the host's files (the repository and its tests) are not visible either.

**One sandbox per program, fresh sandboxes after a crash.**  All call tests of a completion
run in one sandbox (one interpreter start instead of one per test).  Records are written as
each call returns; when the run ends early (timeout, crash, exit) the first call without a
record is the one it died in: that test fails, and the tests after it run again in a fresh
sandbox.  So a program that hangs on one input loses exactly that test, and each credit comes
from an output the program computed.  ``timeout_s`` applies to each sandbox run.

Test formats (a list per prompt, mixed freely):

* ``{"call": "add(2, 3)", "expected": 5}``: call a top-level function of the candidate's code
  with literal arguments (positional and keyword: anything ``ast.literal_eval`` accepts);
  passes when the result equals ``expected`` under Python's ``==`` on plain data (so
  ``3 == 3.0`` and ``True == 1`` as in an assert, ``[1] != (1,)``, and, unlike Python, nan
  equals nan).  The candidate's code runs as a module named ``solution``, so its
  ``if __name__ == "__main__":`` block does not run.
* ``{"call": "parse('x')", "raises": "ValueError"}``: passes when the call raises that
  built-in exception or a subclass of it.
* ``{"input": "2 3", "output": "5"}``: the program reads stdin; passes when it exits with
  status 0 and its stdout equals ``output`` up to surrounding whitespace (one sandbox each).
* ``"assert add(2, 3) == 5"``: the old, insecure form.  The simple shape
  ``assert CALL == LITERAL`` is converted to a call test here in the caller; anything else
  raises ``ValueError`` (rewrite it as a call test).
"""
from __future__ import annotations

import ast
import builtins
import inspect
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)
MAX_RECORD_CHARS = 100_000  # a larger output is recorded as unserialisable


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


# ------------------------------------------------------------------ plain data <-> JSON
# These two functions run on both sides: here, and (their source is copied into the harness)
# inside the sandbox.  JSON has no tuples, sets, bytes, nan or non-string keys, so those are
# one-key objects: {"tuple": [...]}, {"set": [...]}, {"frozenset": [...]}, {"bytes": "hex"},
# {"float": "nan" | "inf" | "-inf"}, {"complex": [re, im]}, {"dict": [[key, value], ...]}.
def encode_value(x, depth=0):
    """Plain data -> a JSON-able structure; TypeError for any other type (subclasses included)."""
    if depth > 100:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return x if x == x and x not in (float("inf"), float("-inf")) else {"float": repr(x)}
    if t is list:
        return [encode_value(v, depth + 1) for v in x]
    if t is tuple or t is set or t is frozenset:
        return {t.__name__: [encode_value(v, depth + 1) for v in x]}
    if t is dict:
        return {"dict": [[encode_value(k, depth + 1), encode_value(v, depth + 1)] for k, v in x.items()]}
    if t is bytes:
        return {"bytes": x.hex()}
    if t is complex:
        return {"complex": [encode_value(x.real, depth + 1), encode_value(x.imag, depth + 1)]}
    raise TypeError(f"not plain data: {t.__name__}")


def decode_value(obj, depth=0):
    """Inverse of :func:`encode_value`; ValueError/TypeError for anything it could not have made."""
    if depth > 100:
        raise ValueError("value nested too deeply")
    t = type(obj)
    if obj is None or t is bool or t is int or t is str or t is float:
        return obj
    if t is list:
        return [decode_value(v, depth + 1) for v in obj]
    if t is dict and len(obj) == 1:
        (tag, v), = obj.items()
        if tag == "float" and v in ("nan", "inf", "-inf"):
            return float(v)
        if tag in ("tuple", "set", "frozenset") and type(v) is list:
            kind = {"tuple": tuple, "set": set, "frozenset": frozenset}[tag]
            return kind(decode_value(e, depth + 1) for e in v)
        if tag == "dict" and type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
            return {decode_value(k, depth + 1): decode_value(e, depth + 1) for k, e in v}
        if tag == "bytes" and type(v) is str:
            return bytes.fromhex(v)
        if tag == "complex" and type(v) is list and len(v) == 2:
            re_, im = (decode_value(e, depth + 1) for e in v)
            if type(re_) is float and type(im) is float:
                return complex(re_, im)
    raise ValueError(f"not an encoded value: {obj!r:.80}")


def _builtin_exception_name(cls) -> str:
    """Name of the nearest built-in class of an exception type (a user class named ValueError is not one)."""
    for c in cls.__mro__:
        if getattr(builtins, c.__name__, None) is c:
            return c.__name__
    return "BaseException"


# The program the sandbox runs.  It never sees an expected value: only function names and
# arguments (calls.json).  Everything in it is under the candidate's control once the
# candidate's code has run; see the module docstring for why that is fine.
_HARNESS = '''\
import builtins, json, os
_report = os.fdopen(3, "w", encoding="utf-8")

def _send(**record):
    _report.write(json.dumps(record, allow_nan=False) + "\\n")
    _report.flush()  # one line per call, written at once: a later crash keeps earlier records

{codec}
with open("calls.json", encoding="utf-8") as _f:
    _calls = json.load(_f)
with open("solution.py", encoding="utf-8") as _f:
    _src = _f.read()
del _f
_ns = {{"__name__": "solution", "__file__": "solution.py", "__builtins__": builtins}}
exec(compile(_src, "solution.py", "exec"), _ns)
_send(loaded=True)
for _i, (_name, _args, _kwargs) in enumerate(_calls):
    _fn = _ns.get(_name)
    if not callable(_fn):
        _send(i=_i, missing=_name)
        continue
    try:
        _value = _fn(*decode_value(_args), **decode_value(_kwargs))
    except BaseException as _e:  # whatever the call raises is its answer
        _send(i=_i, raised=_builtin_exception_name(type(_e)))
        continue
    try:
        _line = json.dumps(encode_value(_value), allow_nan=False)
    except Exception:  # not plain data (an object equal to everything, an int subclass, ...)
        _send(i=_i, unserialisable=True)
        continue
    if len(_line) > {max_chars}:
        _send(i=_i, unserialisable=True)
    else:
        _send(i=_i, value=json.loads(_line))
'''


@lru_cache(maxsize=1)
def _harness_source() -> str:
    codec = "\n\n".join(inspect.getsource(f) for f in (encode_value, decode_value, _builtin_exception_name))
    return _HARNESS.format(codec=codec, max_chars=MAX_RECORD_CHARS)


# ------------------------------------------------------------------ test formats
_ASSERT_HELP = ("only the shape 'assert f(LITERALS) == LITERAL' converts automatically; write it as "
                "{'call': 'f(...)', 'expected': VALUE} or {'call': 'f(...)', 'raises': 'ValueError'} "
                "(expected values must be plain data and stay outside the sandbox)")


def _assert_to_call(test: str) -> dict:
    """``"assert add(2, 3) == 5"`` -> ``{"call": "add(2, 3)", "expected": 5}``; ValueError otherwise."""
    try:
        body = ast.parse(test).body
    except SyntaxError as exc:
        raise ValueError(f"test {test!r} is not valid Python ({exc.msg}); {_ASSERT_HELP}") from None
    node = body[0] if len(body) == 1 else None
    cmp = node.test if isinstance(node, ast.Assert) else None
    if not (isinstance(cmp, ast.Compare) and len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq)
            and isinstance(cmp.left, ast.Call)):
        raise ValueError(f"cannot run the assert test {test!r} safely: {_ASSERT_HELP}")
    try:
        expected = ast.literal_eval(cmp.comparators[0])
    except ValueError:
        raise ValueError(f"the right side of {test!r} is not a literal: {_ASSERT_HELP}") from None
    return {"call": ast.unparse(cmp.left), "expected": expected}


def _parse_call(call: str) -> tuple[str, tuple, dict]:
    """``"f(1, x=[2])"`` -> ``("f", (1,), {"x": [2]})``: a top-level function with literal arguments."""
    try:
        node = ast.parse(call, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            raise ValueError
        args = tuple(ast.literal_eval(a) for a in node.args)  # a *starred arg is no literal: ValueError
        if any(k.arg is None for k in node.keywords):
            raise ValueError
        return node.func.id, args, {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (SyntaxError, ValueError, TypeError):
        raise ValueError(f"'call' must be a call of a function name with literal arguments, "
                         f"like 'add(2, 3)' or 'f([1, 2], key=\"a\")'; got {call!r}") from None


def parse_test(test) -> dict:
    """Check one test and bring it to its internal form (see the module docstring for the formats).

    Returns ``{"kind": "call", "fn", "args", "kwargs", "expected" or "raises"}`` or
    ``{"kind": "io", "input", "output"}``; raises ValueError for anything else.
    """
    if isinstance(test, str):
        test = _assert_to_call(test)
    if not isinstance(test, dict):
        raise ValueError(f"a test must be a dict or an assert string, got {test!r}")
    keys = set(test)
    if "output" in keys and keys <= {"input", "output"}:
        return {"kind": "io", "input": str(test.get("input", "")), "output": str(test["output"])}
    if keys not in ({"call", "expected"}, {"call", "raises"}):
        raise ValueError(f"a test must have the keys call+expected, call+raises, or input+output; got {test!r}")
    fn, args, kwargs = _parse_call(test["call"])
    out = {"kind": "call", "fn": fn, "args": args, "kwargs": kwargs}
    if "raises" in test:
        exc = getattr(builtins, str(test["raises"]), None)
        if not (isinstance(exc, type) and issubclass(exc, Exception)):
            raise ValueError(f"'raises' must name a built-in exception class, got {test['raises']!r}")
        out["raises"] = test["raises"]
    else:
        try:
            encode_value(test["expected"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expected value of {test!r} is not plain data ({exc})") from None
        out["expected"] = test["expected"]
    return out


# ------------------------------------------------------------------ comparing in the caller
def _same(a, b) -> bool:
    """Python's ``==`` on decoded plain data, except that nan equals nan."""
    if type(a) is float and type(b) is float and a != a and b != b:
        return True
    if type(a) in (list, tuple) and type(b) is type(a):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _reject_constant(name):
    raise ValueError(f"JSON constant {name} is not allowed in a report")


def _parse_report(report: str, n_calls: int) -> dict[int, dict] | None:
    """The harness's records by call index; None when the code did not load or the report is malformed."""
    lines = report.split("\n")
    lines.pop()  # text after the last newline is an unfinished record (the run was cut off)
    if not lines or lines[0] != '{"loaded": true}':
        return None
    records = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line, parse_constant=_reject_constant)
            if type(rec) is not dict:
                return None
            kind = next(k for k in ("value", "raised", "unserialisable", "missing") if k in rec)
            if set(rec) != {"i", kind} or type(rec["i"]) is not int or not 0 <= rec["i"] < n_calls:
                return None
            if kind == "value":
                rec["value"] = decode_value(rec["value"])
            if kind == "raised":
                exc = getattr(builtins, rec["raised"], None) if type(rec["raised"]) is str else None
                if not (isinstance(exc, type) and issubclass(exc, BaseException)):
                    return None
        except (ValueError, TypeError, RecursionError, StopIteration):
            return None
        if rec["i"] in records:  # one answer per call: no hedging
            return None
        records[rec["i"]] = rec
    return records


def _passes(test: dict, record: dict) -> bool:
    if "raises" in test:
        return "raised" in record and issubclass(getattr(builtins, record["raised"]), getattr(builtins, test["raises"]))
    return "value" in record and _same(record["value"], test["expected"])


# ------------------------------------------------------------------ running
def _run_call_tests(code: str, tests: list[dict], timeout_s: float, memory_mb: int, isolation) -> list[bool]:
    from .sandbox import run_python

    passed = [False] * len(tests)
    todo = list(range(len(tests)))
    while todo:
        calls = [[tests[k]["fn"], encode_value(tests[k]["args"]), encode_value(tests[k]["kwargs"])] for k in todo]
        r = run_python(_harness_source(), files={"solution.py": code, "calls.json": json.dumps(calls)},
                       timeout_s=timeout_s, memory_mb=memory_mb, max_output_bytes=1000,
                       report_bytes=64 + len(calls) * (MAX_RECORD_CHARS + 64), isolation=isolation)
        records = _parse_report(r.report, len(todo))
        if records is None:  # the code did not load, or the report was tampered with
            break
        for j, k in enumerate(todo):
            if j in records:
                passed[k] = _passes(tests[k], records[j])
        # the run ended inside the first call without a record: that test fails, the rest get a fresh sandbox
        todo = [k for j, k in enumerate(todo) if j not in records][1:]
    return passed


def run_tests(code: str, tests: Sequence, timeout_s: float = 2.0, memory_mb: int = 256,
              isolation: str | None = None) -> list[bool]:
    """Pass/fail of each test (formats: module docstring) for ``code``, run in the sandbox.

    All call tests share one sandbox (fresh ones after a crash); each stdin/stdout test gets its
    own.  ``isolation`` is passed to :func:`rlcore.llm.sandbox.run_python` (None: strict unless
    ``RLCORE_SANDBOX=weak``).  ValueError for a malformed test, before anything runs.
    """
    from .sandbox import run_python

    parsed = [parse_test(t) for t in tests]
    results = [False] * len(parsed)
    calls = [k for k, t in enumerate(parsed) if t["kind"] == "call"]
    if calls:
        for k, ok in zip(calls, _run_call_tests(code, [parsed[k] for k in calls], timeout_s, memory_mb, isolation)):
            results[k] = ok
    for k, t in enumerate(parsed):
        if t["kind"] == "io":
            r = run_python(code, stdin=t["input"], timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation)
            results[k] = r.ok and r.stdout.strip() == t["output"].strip()
    return results


def code_reward(prompts, completions, tests=None, timeout_s: float = 2.0, memory_mb: int = 256,
                isolation: str | None = None, max_workers: int | None = None, **kwargs) -> list[float]:
    """Fraction of ``tests[i]`` passed by the code in completion ``i`` (see :func:`run_tests`);
    0.0 when the completion holds no code.  Completions run in parallel (``max_workers``
    sandboxes at a time, default: the number of CPUs); every run is sandboxed."""
    from .rewards import _column

    tests = _column({"tests": tests, **kwargs}, "tests", len(completions), "code_reward")
    for ts in tests:  # refuse malformed tests before running anything
        for t in ts or ():
            parse_test(t)

    def score(pair) -> float:
        completion, ts = pair
        code = extract_code(completion)
        if code is None or not ts:
            return 0.0
        passed = run_tests(code, ts, timeout_s=timeout_s, memory_mb=memory_mb, isolation=isolation)
        return sum(passed) / len(passed)

    with ThreadPoolExecutor(max_workers=max_workers or os.cpu_count() or 1) as pool:
        return list(pool.map(score, zip(completions, tests)))
