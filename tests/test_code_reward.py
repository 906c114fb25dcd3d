"""The code reward cannot be gamed (rlcore/llm/code_reward.py).

Every adversarial completion below tries to earn reward without implementing the function:
exiting early with status 0, forging or hedging result records, objects equal to everything,
tampering with the harness, reading the expected values from somewhere.  Each must earn
exactly what its outputs deserve (0 for most).  Positive controls check that correct code
still earns 1.0 and half-correct code 0.5.
"""
import json
import os
import uuid

import pytest

from rlcore.llm import code_reward as cr
from rlcore.llm import sandbox
from rlcore.llm.code_reward import code_reward, decode_value, encode_value, parse_test, run_tests
from rlcore.llm.sandbox import SandboxUnavailable, sandbox_info

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX")
STRICT = os.name == "posix" and sandbox_info("strict")["available"]
MODE = "strict" if STRICT else "weak"  # weak: a host without the walls (then strict must refuse)

# The task: solve(x) = x * x + 2.  These expected values are in this file, which is readable on
# the host: the "read the tests" attack below looks for them here.
TESTS = [
    {"call": "solve(3)", "expected": 11},
    {"call": "solve(-2)", "expected": 6},
    {"call": "solve(0)", "expected": 2},
    {"call": "solve(10)", "expected": 102},
]
ASSERTS = ["assert solve(3) == 11", "assert solve(-2) == 6", "assert solve(0) == 2", "assert solve(10) == 102"]
CORRECT = "def solve(x):\n    return x * x + 2\n"
HALF = "def solve(x):\n    return x * x + 2 if x > 0 else 0\n"  # right for 3 and 10 only

ALWAYS_EQUAL = ("class AlwaysEqual:\n"
                "    def __eq__(self, other):\n        return True\n"
                "    def __ne__(self, other):\n        return False\n"
                "    def __hash__(self):\n        return 0\n")


def forged_report(records: str) -> str:
    """Code that writes ``records`` (a Python expression for a list of dicts) to the report fd."""
    return ("import json, os\n"
            f"lines = [json.dumps(r) for r in [{{'loaded': True}}] + {records}]\n"
            "os.write(3, ('\\n'.join(lines) + '\\n').encode())\n")


READ_THIS_FILE = (f"import re\nsrc = open({os.path.abspath(__file__)!r}).read()\n"
                  "table = {int(a): int(b) for a, b in re.findall("
                  "r'\"call\": \"solve\\((-?\\d+)\\)\", \"expected\": (-?\\d+)', src)}\n"
                  "def solve(x):\n    return table[x]\n")

# name -> (code, reward it deserves, needs the strict walls to be run safely/meaningfully)
ADVERSARIAL = {
    # --- ending the process early with a success status
    "os._exit(0) at import": ("import os\nos._exit(0)\n", 0.0, False),
    "sys.exit(0) at import": ("import sys\nsys.exit(0)\n", 0.0, False),
    "raise SystemExit": ("raise SystemExit\n", 0.0, False),
    "SystemExit(0) in the call": ("def solve(x):\n    raise SystemExit(0)\n", 0.0, False),
    "os._exit(0) in the call": ("import os\ndef solve(x):\n    os._exit(0)\n", 0.0, False),
    "SIGKILL to itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", 0.0, False),
    "SIGKILL to itself in the call": ("import os\ndef solve(x):\n    os.kill(os.getpid(), 9)\n", 0.0, False),
    "kill the parent": ("import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                        "except OSError:\n    pass\ndef solve(x):\n    return None\n", 0.0, True),
    "exec another interpreter": ("import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'pass'])\n",
                                 0.0, False),
    "atexit exits 0 after forging": ("import atexit, os\n"
                                     "def forge():\n"
                                     "    os.write(3, b'{\"i\": 0, \"value\": 11}\\n')\n"
                                     "    os._exit(0)\n"
                                     "atexit.register(forge)\n"
                                     "def solve(x):\n    return None\n", 0.0, False),
    # --- forging the report
    "forged 'passed' records": (forged_report("[{'i': i, 'passed': True} for i in range(4)]") + "os._exit(0)\n",
                                0.0, False),
    "forged record with expected field": (forged_report("[{'i': i, 'value': 0, 'expected': 0} for i in range(4)]")
                                          + "os._exit(0)\n", 0.0, False),
    "hedging: every answer for every call": (forged_report("[{'i': i, 'value': v} for i in range(4) "
                                                           "for v in range(-10, 200)]") + "os._exit(0)\n", 0.0, False),
    "forged records before the harness's": (forged_report("[{'i': i, 'value': 0} for i in range(4)]")
                                            + CORRECT, 0.0, False),
    "forged records printed to stdout": ("import json\nprint('{\"loaded\": true}')\n"
                                         "for i in range(4):\n    print(json.dumps({'i': i, 'value': 11}))\n"
                                         "def solve(x):\n    return None\n", 0.0, False),
    "forged result files": ("import os\n"
                            "for p in ['report', 'result.json', 'results.txt', '/tmp/report', '/dev/shm/report']:\n"
                            "    try:\n        open(p, 'w').write('{\"loaded\": true}\\n{\"i\": 0, \"value\": 11}\\n')\n"
                            "    except OSError:\n        pass\n"
                            "def solve(x):\n    return None\n", 0.0, True),
    "report channel closed": ("import os\nos.close(3)\n" + CORRECT, 0.0, False),
    "report channel redirected to stdout": ("import os\nos.dup2(1, 3)\n" + CORRECT, 0.0, False),
    "fork: two processes answer each call": ("import atexit, os\n"
                                             "pid = os.fork()\n"
                                             "if pid:\n    atexit.register(lambda: os.waitpid(pid, 0))\n"
                                             "def solve(x):\n    return 11 if pid else 6\n", 0.0, False),
    "a thread writes hedged records": ("import os, threading\n"
                                       "def spam():\n"
                                       "    for v in range(200):\n"
                                       "        os.write(3, ('{\"i\": 0, \"value\": %d}\\n' % v).encode())\n"
                                       "threading.Thread(target=spam).start()\n"
                                       "def solve(x):\n    return None\n", 0.0, False),
    "huge junk on the report channel": ("import os\ntry:\n    os.write(3, b'x' * 10**7)\nexcept OSError:\n    pass\n"
                                        "def solve(x):\n    return None\n", 0.0, False),
    # --- values that compare equal to anything
    "always-equal object": (ALWAYS_EQUAL + "def solve(x):\n    return AlwaysEqual()\n", 0.0, False),
    "int subclass equal to everything": ("class I(int):\n    def __eq__(self, o):\n        return True\n"
                                         "    __hash__ = int.__hash__\n"
                                         "def solve(x):\n    return I(0)\n", 0.0, False),
    "str subclass equal to everything": ("class S(str):\n    def __eq__(self, o):\n        return True\n"
                                         "    __hash__ = str.__hash__\n"
                                         "def solve(x):\n    return S('')\n", 0.0, False),
    "list of always-equal objects": (ALWAYS_EQUAL + "class L(list):\n    def __eq__(self, o):\n        return True\n"
                                     "def solve(x):\n    return L([AlwaysEqual()])\n", 0.0, False),
    "float subclass equal to everything": ("class F(float):\n    def __eq__(self, o):\n        return True\n"
                                           "    __hash__ = float.__hash__\n"
                                           "def solve(x):\n    return F(0.0)\n", 0.0, False),
    "object pretending to be an int": (ALWAYS_EQUAL + "class Fake(AlwaysEqual):\n"
                                       "    __class__ = property(lambda self: int)  # isinstance(Fake(), int) is True\n"
                                       "def solve(x):\n    return Fake()\n", 0.0, False),
    "nan for everything": ("def solve(x):\n    return float('nan')\n", 0.0, False),
    # --- tampering with the harness
    "builtins.type patched": (ALWAYS_EQUAL + "import builtins\n_type = builtins.type\n"
                              "builtins.type = lambda *a: int if len(a) == 1 and _type(a[0]) is AlwaysEqual else _type(*a)\n"
                              "def solve(x):\n    return AlwaysEqual()\n", 0.0, False),
    "harness globals patched through the frame": ("import sys\ng = sys._getframe(1).f_globals\n"
                                                  "g['_send'] = lambda **r: None\n"
                                                  "def solve(x):\n    return None\n", 0.0, False),
    "sys.settrace swaps the harness's value": (ALWAYS_EQUAL + "import sys\n"
                                               "def tracer(frame, event, arg):\n"
                                               "    if frame.f_code.co_filename == 'main.py':\n"
                                               "        frame.f_globals['_value'] = AlwaysEqual()\n"
                                               "    return tracer\n"
                                               "sys._getframe(1).f_trace = tracer\nsys.settrace(tracer)\n"
                                               "def solve(x):\n    return 0\n", 0.0, False),
    # json.dumps patched to claim 11 for every call: exactly what `return 11` earns (solve(3) == 11)
    "json.dumps patched to claim 11": ("import json\n_dumps = json.dumps\n"
                                       "def dumps(obj, **kw):\n"
                                       "    if isinstance(obj, dict) and 'i' in obj:\n"
                                       "        obj = {'i': obj['i'], 'value': 11}\n"
                                       "    return _dumps(obj, **kw)\n"
                                       "json.dumps = dumps\n"
                                       "def solve(x):\n    return None\n", 0.25, False),
    "harness files deleted": ("import os\nfor f in os.listdir('.'):\n    os.remove(f)\n" + HALF, 0.5, False),
    # --- looking for the expected values
    "read the tests from this file": (READ_THIS_FILE, 0.0, True),
    "read /proc, the environment, the harness": (
        "import glob, os, re\ntext = repr(dict(os.environ))\n"
        "for p in ['/proc/self/cmdline', '/proc/1/cmdline', '/proc/1/environ', '/proc/self/environ'] + "
        "glob.glob('/proc/*/cmdline') + glob.glob('*') + glob.glob('/tmp/*'):\n"
        "    try:\n        text += open(p, errors='replace').read()\n    except OSError:\n        pass\n"
        "table = {int(a): int(b) for a, b in re.findall(r'solve\\((-?\\d+)\\)\\D{1,30}?(-?\\d+)', text)}\n"
        "def solve(x):\n    return table.get(x)\n", 0.0, True),
    "search the heap with gc": ("import gc\n"
                                "def solve(x):\n"
                                "    for o in gc.get_objects():\n"
                                "        if type(o) is dict and 'expected' in o:\n"
                                "            return o['expected']\n"
                                "    return None\n", 0.0, False),
    # --- resource abuse
    "huge list output": ("def solve(x):\n    return list(range(10**5))\n", 0.0, False),
    "huge string output": ("def solve(x):\n    return 'x' * 10**6\n", 0.0, False),
    "infinite recursion": ("def solve(x):\n    return solve(x)\n", 0.0, False),
    "memory bomb in the call": ("def solve(x):\n    return bytearray(10**10)\n", 0.0, False),
    "prints forever": ("while True:\n    print('x' * 1000)\n", 0.0, False),
    # hangs on solve(3) only: the other three are right and keep their credit
    "hangs on one input": ("def solve(x):\n    while x == 3:\n        pass\n    return x * x + 2\n", 0.75, False),
}


def wrap(code: str) -> str:
    return f"<think>t</think><answer>\n```python\n{code}```\n</answer>"


@pytest.fixture(scope="module")
def adversarial_rewards():
    names = [n for n, (_, _, strict_only) in ADVERSARIAL.items() if STRICT or not strict_only]
    rewards = code_reward(None, [wrap(ADVERSARIAL[n][0]) for n in names], tests=[TESTS] * len(names),
                          timeout_s=1.0, isolation=MODE, max_workers=8)
    return dict(zip(names, rewards))


def test_there_are_enough_adversarial_completions():
    assert len(ADVERSARIAL) >= 25 and sum(r == 0.0 for _, r, _ in ADVERSARIAL.values()) >= 25


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_completion_earns_only_what_it_computed(name, adversarial_rewards):
    code, deserved, strict_only = ADVERSARIAL[name]
    if strict_only and not STRICT:
        pytest.skip("needs the strict sandbox's walls (host files hidden, no signals to the caller)")
    assert adversarial_rewards[name] == pytest.approx(deserved), name


def test_reading_the_tests_works_outside_the_sandbox():
    """The control for the attack above: run in this process, the file reader would score 1.0."""
    ns = {}
    exec(READ_THIS_FILE, ns)
    assert [ns["solve"](x) for x in (3, -2, 0, 10)] == [11, 6, 2, 102]


def test_positive_controls():
    completions = [wrap(CORRECT), wrap(HALF), "no code at all", wrap(CORRECT)]
    r = code_reward(None, completions, tests=[TESTS, TESTS, TESTS, ASSERTS], isolation=MODE, max_workers=4)
    assert r == [1.0, 0.5, 0.0, 1.0]


def test_raises_tests_need_the_real_builtin_exception():
    tests = [{"call": "solve('a')", "raises": "TypeError"}, {"call": "solve(3)", "expected": 11}]
    programs = [
        CORRECT,                                                    # 'a' * 'a' raises TypeError
        "class TypeError(Exception):\n    pass\n"                   # its own class named TypeError
        "def solve(x):\n    if type(x) is str:\n        raise TypeError\n    return x * x + 2\n",
        "class E(TypeError):\n    pass\n"                           # a subclass counts, as in pytest.raises
        "def solve(x):\n    if type(x) is str:\n        raise E\n    return x * x + 2\n",
        "def solve(x):\n    raise TypeError\n",                     # raising for everything: 1 of 2
    ]
    r = code_reward(None, [wrap(p) for p in programs], tests=[tests] * 4, isolation=MODE, max_workers=4)
    assert r == [1.0, 0.5, 1.0, 0.5]


def test_stdin_stdout_tests_compare_in_the_caller():
    tests = [{"input": "2 3", "output": "5"}, {"input": "10 -4", "output": "6"}]
    programs = ["print(sum(map(int, input().split())))\n",
                "import os\nos._exit(0)\n",                       # early exit: no output, no pass
                "print('5')\n",                                   # a constant: right once
                "import sys\nprint(sum(map(int, input().split())))\nsys.stdout.flush()\nos = __import__('os')\n"
                "os._exit(0)\n"]                                  # right output, then exit 0: still right
    r = code_reward(None, [wrap(p) for p in programs], tests=[tests] * 4, isolation=MODE, max_workers=4)
    assert r == [1.0, 0.0, 0.5, 1.0]


def test_expected_values_never_enter_the_sandbox(monkeypatch):
    secret = "expected-" + uuid.uuid4().hex
    seen = []

    def spy(code, stdin="", files=None, **kw):
        seen.append(json.dumps([code, stdin, files, kw]))
        return sandbox.SandboxResult(ok=True, stdout="", stderr="", returncode=0)

    monkeypatch.setattr(sandbox, "run_python", spy)
    tests = [{"call": "solve(3)", "expected": secret}, {"call": "solve(4)", "raises": "ValueError"},
             {"input": "3", "output": secret}, f"assert solve(5) == {secret!r}"]
    assert run_tests(CORRECT, tests) == [False, False, False, False]
    assert seen and not any(secret in s for s in seen)
    assert any("solve" in s and "calls.json" in s for s in seen)  # the call tests did run (in the spy)


def test_code_reward_refuses_without_walls(monkeypatch):
    monkeypatch.setattr(sandbox, "_is_root", lambda: False)
    monkeypatch.delenv("RLCORE_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailable, match="RLCORE_SANDBOX=weak"):
        code_reward(None, [wrap(CORRECT)], tests=[TESTS])


# ------------------------------------------------------------------ the parts that run in the caller
def test_assert_strings_convert_to_call_tests():
    assert parse_test("assert solve(3) == 11") == parse_test({"call": "solve(3)", "expected": 11})
    assert parse_test("assert f([1, 2], key='a') == (1, None), 'message'") == {
        "kind": "call", "fn": "f", "args": ([1, 2],), "kwargs": {"key": "a"}, "expected": (1, None)}
    assert parse_test("assert f(-1) == -2.5")["expected"] == -2.5


@pytest.mark.parametrize("bad", [
    "assert solve(3) > 11",                # not ==
    "assert solve(3)",                     # truthiness
    "assert 11 == solve(3)",               # literal on the left
    "assert solve(x) == 11",               # argument is not a literal
    "assert solve(3) == float('inf')",     # expected is not a literal
    "assert solve(3) == 11\nassert solve(0) == 2",
    "assert obj.solve(3) == 11",           # not a plain function name
    "assert solve(*[3]) == 11",
    "import os; os._exit(0)",
    "assert solve(3 == 11",                # not Python
])
def test_other_assert_strings_are_refused(bad):
    with pytest.raises(ValueError, match=r"'call'|call of a function"):
        parse_test(bad)


@pytest.mark.parametrize("bad", [
    {"call": "solve(3)"},                                          # nothing to compare with
    {"call": "solve(3)", "expected": 11, "raises": "ValueError"},
    {"call": "solve(3)", "expect": 11},                            # typo
    {"call": "solve(3)", "expected": object()},                    # not plain data
    {"call": "solve(3)", "raises": "MyError"},                     # not a built-in exception
    {"call": "solve(3)", "raises": "SystemExit"},                  # not an Exception
    {"call": "__import__('os').system('x')", "expected": 0},
    {"input": "1"},
    42,
])
def test_malformed_tests_are_refused_before_anything_runs(bad):
    with pytest.raises(ValueError):
        parse_test(bad)
    with pytest.raises(ValueError):
        code_reward(None, [wrap(CORRECT)], tests=[[bad]], isolation=MODE)


def test_plain_data_round_trip():
    values = [None, True, 0, -7, 2**100, 1.5, -0.0, float("inf"), float("-inf"), "é\n", b"\x00\xff",
              [1, [2, (3,)]], (), (1, "a"), {1, 2}, frozenset({"x"}), {1: "a", (2, 3): [None]}, 1 + 2j, []]
    for v in values:
        back = decode_value(json.loads(json.dumps(encode_value(v), allow_nan=False)))
        assert type(back) is type(v) and cr._same(back, v), v
    nan = decode_value(json.loads(json.dumps(encode_value(float("nan")))))
    assert nan != nan and cr._same([nan], [float("nan")])
    assert cr._same(3, 3.0) and cr._same(True, 1) and not cr._same([1], (1,)) and not cr._same("11", 11)


@pytest.mark.parametrize("value", [type("I", (int,), {})(1), type("S", (str,), {})("a"), object(),
                                   type("L", (list,), {})(), [object()], {1: object()}, range(3)])
def test_only_exact_plain_types_are_encoded(value):
    with pytest.raises(TypeError):
        encode_value(value)


@pytest.mark.parametrize("obj", [{"tuple": 1}, {"float": "1.0"}, {"set": [[1]]}, {"a": 1, "b": 2},
                                 {"dict": [[1]]}, {"complex": ["a", 1.0]}, {"bytes": "zz"}, {"object": []}])
def test_decoder_refuses_what_the_encoder_cannot_make(obj):
    with pytest.raises((ValueError, TypeError)):
        decode_value(obj)


def test_report_parser_accepts_only_one_well_formed_record_per_call():
    ok = '{"loaded": true}\n{"i": 0, "value": 11}\n{"i": 1, "raised": "KeyError"}\n{"i": 2, "unserialisable": true}\n'
    recs = cr._parse_report(ok, 3)
    assert recs[0]["value"] == 11 and recs[1]["raised"] == "KeyError" and 2 in recs
    assert cr._parse_report(ok + '{"i": 0, "val', 3) is not None  # an unfinished last line is ignored
    bad = [
        "",                                                  # nothing: the code never loaded
        '{"i": 0, "value": 11}\n',                           # no "loaded" first
        '{"loaded": true}\n{"i": 0, "value": 11}\n{"i": 0, "value": 12}\n',   # two answers
        '{"loaded": true}\n{"i": 0, "value": 11, "passed": true}\n',          # extra field
        '{"loaded": true}\n{"i": 3, "value": 11}\n',         # no such call
        '{"loaded": true}\n{"i": true, "value": 11}\n',      # bool is not an index
        '{"loaded": true}\n{"i": 0, "value": NaN}\n',        # raw NaN is not our encoding
        '{"loaded": true}\n{"i": 0, "raised": "MyError"}\n', # not a built-in exception
        '{"loaded": true}\n{"i": 0, "value": {"weird": 1}}\n',
        '{"loaded": true}\n[0, 11]\n',
        '{"loaded": true}\n' + "[" * 100_000 + "]" * 100_000 + "\n",
    ]
    for text in bad:
        assert cr._parse_report(text, 3) is None, text[:80]


def test_harness_holds_no_expected_value_and_only_plain_types():
    src = cr._harness_source()
    assert "expected" not in src  # nothing to find in its source
    compile(src, "main.py", "exec")
