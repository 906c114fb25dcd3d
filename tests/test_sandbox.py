"""The sandbox contains adversarial model-generated code (rlcore/llm/sandbox.py).

These tests check behaviour that both modes share (limits, timeouts, output caps) and the
refusal rule.  On a host where strict isolation is unavailable they run in weak mode (set
through RLCORE_SANDBOX, as a user would) and check that strict mode refuses; the escape
attempts against the strict walls are in tests/test_sandbox_escapes.py.
"""
import os
import socket
import time

import pytest

from rlcore.llm import sandbox
from rlcore.llm.sandbox import SandboxUnavailable, run_python, sandbox_info

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX resource limits")
STRICT = os.name == "posix" and sandbox_info("strict")["available"]


@pytest.fixture(autouse=True)
def _mode(monkeypatch):
    """Strict where this host can raise the walls, else the named weak mode."""
    monkeypatch.delenv("RLCORE_SANDBOX", raising=False)
    if not STRICT:
        monkeypatch.setenv("RLCORE_SANDBOX", "weak")


def test_runs_code_with_stdin_and_isolated_interpreter():
    code = ("import sys, os\n"
            "print(input()[::-1])\n"
            "print(sys.flags.isolated, sys.flags.no_site, sorted(os.environ))\n"
            "print(os.getcwd())\n")
    r = run_python(code, stdin="abc\n")
    assert r.ok and r.returncode == 0 and not r.timed_out, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "cba"
    assert lines[1].startswith("1 1 ")
    assert "HOME" not in lines[1] and "PYTHONPATH" not in lines[1]
    cwd = lines[2]
    if STRICT:
        assert cwd == sandbox.WORKDIR  # inside the private root; the host copy is already gone
    else:
        assert os.path.basename(cwd).startswith("rlcore-sbx-")
        assert not os.path.exists(cwd), "the temporary working directory must be deleted"


def test_errors_are_reported_not_raised():
    r = run_python("raise SystemExit(3)")
    assert not r.ok and r.returncode == 3
    r = run_python("1/0")
    assert not r.ok and "ZeroDivisionError" in r.stderr
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
    assert not r.ok and r.returncode == -15 and r.killed_reason == "signal:15"


def test_extra_files_and_report_channel():
    code = ("import os\n"
            "print(open('data.txt').read())\n"
            "os.write(3, b'to the caller')\n")
    r = run_python(code, files={"data.txt": "hello"}, report_bytes=100)
    assert r.ok, r.stderr
    assert r.stdout.strip() == "hello" and r.report == "to the caller"
    r = run_python("import os\nos.write(3, b'x')", report_bytes=0)  # no channel unless asked for
    assert not r.ok and "Bad file descriptor" in r.stderr and r.report == ""


def test_resource_limits_are_set_inside():
    code = ("import resource as r\n"
            "for n in ('RLIMIT_AS', 'RLIMIT_CPU', 'RLIMIT_FSIZE', 'RLIMIT_NOFILE', 'RLIMIT_NPROC'):\n"
            "    print(n, r.getrlimit(getattr(r, n))[0])\n")
    r = run_python(code, memory_mb=200, timeout_s=2.0, max_file_bytes=50_000, max_processes=7)
    assert r.ok, r.stderr
    lim = dict(line.split() for line in r.stdout.splitlines())
    assert int(lim["RLIMIT_AS"]) == 200 * 2**20
    assert 2 <= int(lim["RLIMIT_CPU"]) <= 5
    assert int(lim["RLIMIT_FSIZE"]) == 50_000
    assert int(lim["RLIMIT_NOFILE"]) == 64
    assert int(lim["RLIMIT_NPROC"]) == r.isolation["nproc_limit"]


def test_infinite_loop_times_out_quickly():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert r.timed_out and r.killed_reason == "timeout" and not r.ok
    assert time.monotonic() - t0 < 3.0


def test_bounded_fork_bomb_hits_the_process_limit():
    code = ("import os, time\n"
            "n = 0\n"
            "for i in range(60):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        break\n"
            "    if pid == 0:\n"
            "        time.sleep(30)\n"
            "        os._exit(0)\n"
            "    n += 1\n"
            "print(n)\n")
    r = run_python(code, timeout_s=3.0, max_processes=8)
    assert r.ok, r.stderr
    assert int(r.stdout) < 60, "RLIMIT_NPROC was not enforced"
    if sandbox_info()["privilege_drop"]:
        assert int(r.stdout) <= 7  # the program itself is one of the 8


def test_fork_bomb_is_contained_and_machine_survives():
    t0 = time.monotonic()
    r = run_python("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                   timeout_s=1.0, max_processes=8)
    assert not r.ok and r.timed_out
    assert time.monotonic() - t0 < 4.0
    assert run_python("print(6 * 7)").stdout.strip() == "42"


def test_file_deletion_outside_the_sandbox_fails(tmp_path):
    if not sandbox_info()["privilege_drop"]:
        pytest.skip("without root the sandbox runs as the caller, who owns the canary")
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    tmp_path.chmod(0o755)
    code = (f"import os, shutil\n"
            f"try:\n    os.remove({str(canary)!r})\nexcept OSError as e:\n    print('remove failed', e)\n"
            f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n"
            f"open({str(canary)!r}, 'w').write('overwritten')\n")
    r = run_python(code)
    assert not r.ok and "remove failed" in r.stdout
    assert canary.read_text() == "alive"


def test_huge_output_is_truncated():
    t0 = time.monotonic()
    r = run_python("while True:\n    print('x' * 1000)\n", timeout_s=3.0, max_output_bytes=5000,
                   max_file_bytes=200_000)
    assert len(r.stdout) <= 5000 and r.truncated and not r.ok
    assert r.killed_reason == "output_limit"
    assert time.monotonic() - t0 < 3.0, "the output limit, not the timeout, must stop the program"


def test_huge_file_write_is_stopped():
    r = run_python("with open('big', 'wb') as f:\n    f.write(b'0' * 10_000_000)\n", max_file_bytes=100_000)
    assert not r.ok and "File too large" in r.stderr


def test_memory_bomb_is_stopped():
    r = run_python("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", memory_mb=128, timeout_s=3.0)
    assert not r.ok and r.killed_reason == "memory_limit"


def _listening_socket():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv


_CONNECT = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
            "s.settimeout(1.0)\n"
            "s.connect(('127.0.0.1', {port}))\n"
            "print('connected')\n")


def test_network_is_blocked():
    srv = _listening_socket()  # a reachable server: without isolation the connect would succeed
    try:
        r = run_python(_CONNECT.format(port=srv.getsockname()[1]), timeout_s=3.0)
        assert not r.ok and "connected" not in r.stdout
        assert "Error" in r.stderr
        assert sandbox_info()["network"] == r.isolation["network"]
        assert r.isolation["network"] == ("netns" if STRICT else "socket-guard")
    finally:
        srv.close()


def test_socket_guard_of_the_weak_mode_blocks_sockets():
    srv = _listening_socket()
    try:
        r = run_python(_CONNECT.format(port=srv.getsockname()[1]), isolation="weak")
        assert not r.ok and "PermissionError" in r.stderr and "connected" not in r.stdout
        assert r.isolation["pid_namespace"] is False and r.isolation["network"] == "socket-guard"
    finally:
        srv.close()


def test_sandbox_info_reports_the_walls():
    strict, weak = sandbox_info("strict"), sandbox_info("weak")
    assert strict["mode"] == "strict" and weak["mode"] == "weak" and weak["available"]
    assert not weak["pid_namespace"] and not weak["mount_namespace"] and weak["network"] == "socket-guard"
    if STRICT:
        assert strict["pid_namespace"] and strict["mount_namespace"] and strict["ipc_namespace"]
        assert strict["network"] == "netns" and strict["privilege_drop"]
        assert strict["memory"] in ("cgroup-v1", "cgroup-v2", "rlimit-as")
        assert strict["processes"] in ("cgroup-v1", "cgroup-v2", "rlimit-nproc")
        assert sandbox_info()["mode"] == "strict"
    else:
        assert "isolation='weak'" in strict["reason"]
        assert sandbox_info()["mode"] == "weak"  # RLCORE_SANDBOX=weak, set by the fixture


def test_strict_mode_refuses_where_walls_are_missing(monkeypatch):
    """The refusal path, on every host: without root, strict mode must not run the code."""
    monkeypatch.setattr(sandbox, "_is_root", lambda: False)
    with pytest.raises(SandboxUnavailable, match="RLCORE_SANDBOX=weak"):
        run_python("print(1)", isolation="strict")
    monkeypatch.delenv("RLCORE_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailable, match="isolation='weak'"):
        run_python("print(1)")  # strict is the default
    monkeypatch.setenv("RLCORE_SANDBOX", "weak")
    r = run_python("print(1)")
    assert r.ok and r.stdout.strip() == "1" and r.isolation["pid_namespace"] is False


def test_bad_arguments():
    with pytest.raises(TypeError):
        run_python(b"print(1)")
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("print(1)", timeout_s=0)
    with pytest.raises(ValueError, match="isolation"):
        run_python("print(1)", isolation="off")
    with pytest.raises(ValueError, match="file name"):
        run_python("print(1)", files={"../x": ""})
