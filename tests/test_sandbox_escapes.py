"""Escape attempts against the strict sandbox's walls (rlcore/llm/sandbox.py).

Each program below tries to leave something behind (a process, a file, a shared-memory
segment), to reach the host (its network, files, environment, processes) or to gain
privileges.  After each run the test checks, from the outside, that nothing survived: no
process of the run's throw-away uid and no process whose command line holds the test's unique
marker, no file with the marker in the host's /tmp, /var/tmp, /dev/shm, home or repository.
The walls are specific to strict mode: on a host that cannot raise them these tests are
skipped (tests/test_sandbox.py then checks that strict mode refuses to run).
"""
import ast
import ctypes
import errno
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from rlcore.llm import sandbox
from rlcore.llm.sandbox import run_python, sandbox_info

STRICT_INFO = sandbox_info("strict") if os.name == "posix" else {"available": False, "reason": "not POSIX"}
STRICT = STRICT_INFO["available"]
pytestmark = pytest.mark.skipif(not STRICT, reason="needs the strict sandbox's walls: " + STRICT_INFO.get("reason", ""))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_DIRS = ("/tmp", "/var/tmp", "/dev/shm", os.path.expanduser("~"), REPO, "/")


def _run(code: str, **kw):
    return run_python(code, isolation="strict", **kw)


def survivors(marker: str, uid: int = -1) -> list[str]:
    """Host processes of ``uid`` (a run's throw-away uid) or with ``marker`` in their command line."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                owner = int(re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, AttributeError):
            continue  # exited while we looked
        if uid == owner or marker in cmd:
            found.append(f"pid {pid} uid {owner}: {cmd[:80]}")
    return found


def leftovers(marker: str) -> list[str]:
    """Files or directories named with ``marker`` in the host's usual writable places."""
    return [os.path.join(d, n) for d in HOST_DIRS if os.path.isdir(d) for n in os.listdir(d) if marker in n]


def assert_contained(r, marker: str) -> None:
    assert survivors(marker, r.isolation["uid"]) == [], "processes outlived the run"
    assert leftovers(marker) == [], "files outlived the run"


@pytest.fixture
def marker():
    return "rlcoreesc" + uuid.uuid4().hex[:12]


# A process that sleeps with the marker in its command line (so the test can look for it).
def _sleeper(marker: str, seconds: int = 60) -> str:
    return f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep({seconds})', {marker!r}])"


# ------------------------------------------------------------------ processes
def test_double_fork_and_setsid_do_not_survive(marker):
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()               # leave the process group and the session\n"
            "    if os.fork() == 0:        # double fork: re-parented, like a daemon\n"
            f"        {_sleeper(marker)}\n"
            "    os._exit(0)\n"
            "time.sleep(0.3)\n"
            "print('parent done')\n")
    r = _run(code, timeout_s=3.0)
    assert r.ok and r.stdout.strip() == "parent done", r.stderr
    assert_contained(r, marker)


def test_escapee_surviving_the_timeout_is_killed(marker):
    code = ("import os, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    {_sleeper(marker)}\n"
            "while True:\n"
            "    pass\n")
    t0 = time.monotonic()
    r = _run(code, timeout_s=1.0)
    assert r.timed_out and r.returncode is None and time.monotonic() - t0 < 3.0
    assert_contained(r, marker)


def test_new_namespaces_from_inside_are_refused_and_do_not_help(marker):
    code = ("import ctypes, os, sys, time\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "for name, flag in [('user', 0x10000000), ('pid', 0x20000000), ('mount', 0x00020000), ('net', 0x40000000)]:\n"
            "    print(name, libc.unshare(flag), ctypes.get_errno())\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    libc.unshare(0x10000000 | 0x20000000)\n"
            "    if os.fork() == 0:\n"
            f"        {_sleeper(marker)}\n"
            "    time.sleep(60)\n"
            "time.sleep(0.3)\n")
    r = _run(code, timeout_s=3.0)
    assert r.ok, r.stderr
    for name in ("user", "pid", "mount", "net"):  # a chrooted, unprivileged process may not create any
        assert f"{name} -1 {errno.EPERM}" in r.stdout, r.stdout
    assert_contained(r, marker)


def test_prctl_games_do_not_help(marker):
    code = ("import ctypes, os, signal, sys, time\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "libc.prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER: orphans come to us, not to init\n"
            "if os.fork() == 0:\n"
            "    libc.prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG 0: do not die with the parent\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        {_sleeper(marker)}\n"
            "    time.sleep(60)\n"
            "time.sleep(0.3)\n"
            "os._exit(0)\n")
    r = _run(code, timeout_s=3.0)
    assert r.ok, r.stderr
    assert_contained(r, marker)


def test_signals_cannot_reach_the_host_or_init(marker):
    host = subprocess.Popen(["sleep", "30"])  # a host process the program would love to kill
    try:
        code = ("import os, signal\n"
                "hits = 0\n"
                "for pid in range(1, 70000):\n"
                "    if pid == os.getpid():\n"
                "        continue\n"
                "    try:\n"
                "        os.kill(pid, signal.SIGKILL)\n"
                "        hits += 1\n"
                "    except OSError:\n"
                "        pass\n"
                "try:\n"
                "    os.kill(-1, signal.SIGKILL)\n"
                "except OSError as e:\n"
                "    print('kill -1 failed', e.errno)\n"
                "print('visible', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()), 'hits', hits)\n")
        r = _run(code, timeout_s=3.0)
        assert r.ok, r.stderr
        # in its own PID namespace the program sees only init (1) and itself (2), and init is not its to kill
        assert "visible [1, 2] hits 0" in r.stdout, r.stdout
        assert host.poll() is None, "a host process was killed from inside the sandbox"
        assert_contained(r, marker)
    finally:
        host.kill()
        host.wait()


def test_the_run_ends_itself_when_the_caller_dies(marker, tmp_path):
    """init's own timer: even if the caller is killed mid-run, nothing of the run survives its timeout."""
    code = ("import os, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    {_sleeper(marker)}\n"
            "import time; time.sleep(60)\n")
    caller = tmp_path / "caller.py"  # a file, so that only the escapee has the marker in its command line
    caller.write_text("import importlib.util as u, sys\n"  # the sandbox module alone: no torch to import
                      f"spec = u.spec_from_file_location('sandbox', {sandbox.__file__!r})\n"
                      "m = sys.modules['sandbox'] = u.module_from_spec(spec)\n"
                      "spec.loader.exec_module(m)\n"
                      f"m.run_python({code!r}, timeout_s=1.0, isolation='strict')\n")
    proc = subprocess.Popen([sys.executable, "-I", str(caller)], env={"TMPDIR": str(tmp_path)})
    try:
        deadline = time.monotonic() + 10
        while not survivors(marker):
            assert time.monotonic() < deadline, "the escapee never started"
            time.sleep(0.02)
        proc.kill()  # the caller dies; it can no longer kill anything
        proc.wait()
        time.sleep(1.5)  # past the run's 1 s timeout
        assert survivors(marker) == []
    finally:
        proc.kill()
        proc.wait()
        for name in os.listdir(tmp_path):  # the dead caller's cgroups are empty but still there: remove them
            for _, parent in sandbox._cgroup_parents().values():
                try:
                    os.rmdir(os.path.join(parent, name))
                except OSError:
                    pass


def test_fork_bomb_leaves_no_process(marker):
    code = ("import os\n"
            "while True:\n"
            "    try:\n"
            "        os.fork()\n"
            "    except OSError:\n"
            "        pass\n")
    r = _run(code, timeout_s=1.0, max_processes=32)
    assert r.timed_out
    assert_contained(r, marker)


# ------------------------------------------------------------------ files and disk
def test_files_written_anywhere_are_gone_after_the_run(marker):
    host_file = f"/tmp/{marker}-host"
    with open(host_file, "w") as f:
        f.write("host")
    try:
        code = ("import os\n"
                f"m = {marker!r}\n"
                "for d in ['/tmp', '/var/tmp', '/dev/shm', '.', os.path.expanduser('~'), '/root', '/home',\n"
                f"          {REPO!r}, '/', '/usr', '/etc']:\n"
                "    try:\n"
                "        with open(os.path.join(d, m), 'w') as f:\n"
                "            f.write('left behind')\n"
                "        print('wrote', d)\n"
                "    except OSError as e:\n"
                "        print('failed', d, e.errno)\n"
                "print('host file visible', any(n.endswith('-host') for n in os.listdir('/tmp')))\n")
        r = _run(code)
        assert r.ok, r.stderr
        for d in ("/tmp", "/var/tmp", "/dev/shm", "."):  # usable inside (on the private tmpfs)...
            assert f"wrote {d}\n" in r.stdout, r.stdout
        for d in ("/root", "/home", REPO, "/", "/usr", "/etc"):  # ...but not the host's directories
            assert f"wrote {d}\n" not in r.stdout, r.stdout
        assert "host file visible False" in r.stdout  # /tmp is private in both directions
        assert os.path.exists(host_file)
        leftovers_now = [p for p in leftovers(marker) if p != host_file]
        assert leftovers_now == []
        assert survivors(marker, r.isolation["uid"]) == []
    finally:
        os.remove(host_file)


def test_many_small_files_hit_the_disk_cap(marker):
    code = ("import os\n"
            "n = 0\n"
            "try:\n"
            "    while True:\n"
            "        with open(f'/dev/shm/f{n}', 'wb') as f:\n"
            "            f.write(b'x' * 65536)\n"
            "        n += 1\n"
            "except OSError as e:\n"
            "    print(n, e.errno)\n")
    r = _run(code, disk_mb=4, max_file_bytes=10_000_000)
    assert r.ok, r.stderr
    n, err = map(int, r.stdout.split())
    assert err == errno.ENOSPC and n * 65536 <= 4 * 2**20  # the total, not each file, is capped
    assert_contained(r, marker)


def test_many_empty_files_hit_the_file_count_cap(marker):
    code = ("import os\n"
            "n = 0\n"
            "try:\n"
            "    while n < 100000:\n"
            "        open(f'/tmp/e{n}', 'w').close()\n"
            "        n += 1\n"
            "except OSError as e:\n"
            "    print(n, e.errno)\n")
    r = _run(code, timeout_s=5.0)
    assert r.ok, r.stderr
    n, err = map(int, r.stdout.split())
    assert err == errno.ENOSPC and n <= sandbox.MAX_FILES
    assert_contained(r, marker)


def test_host_file_system_is_hidden_and_read_only(marker):
    secret = os.path.join(REPO, "tests", os.path.basename(__file__))  # world-readable on the host
    code = ("import ctypes, os\n"
            f"for p in [{secret!r}, '/etc/passwd', '/root', '/work', '/home']:\n"
            "    print(p, os.path.exists(p))\n"
            "try:\n"
            "    open('/usr/lib/x', 'w')\n"
            "except OSError as e:\n"
            "    print('usr', e.errno)\n"
            "print('top', sorted(os.listdir('/')))\n")
    r = _run(code)
    assert r.ok, r.stderr
    for p in (secret, "/etc/passwd", "/root", "/work", "/home"):
        assert f"{p} False" in r.stdout
    assert re.search(rf"usr ({errno.EROFS}|{errno.EACCES})", r.stdout)
    top = set(ast.literal_eval(r.stdout.split("top ", 1)[1]))
    assert top <= set(sandbox.SYSTEM_DIRS) | {"dev", "etc", "proc", "sandbox", "tmp", "var", "opt"}
    assert_contained(r, marker)


def test_sandbox_leaves_no_directories_or_cgroups(marker, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []

    class Recording(sandbox._Cgroups):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.extend(self.dirs.values())

    monkeypatch.setattr(sandbox, "_Cgroups", Recording)
    code = ("import os, sys\n"
            "open('out.txt', 'w').write('x' * 1000)\n"
            "if os.fork() == 0:\n"
            f"    {_sleeper(marker)}\n")
    r = _run(code)
    assert r.ok, r.stderr
    assert os.listdir(tmp_path) == []  # program files, captured output, the root's mount point
    assert made and not any(os.path.exists(d) for d in made)
    assert_contained(r, marker)


def test_system_v_shared_memory_dies_with_the_run(marker):
    key = int(marker[-7:], 16) + 1  # a key no one else uses
    code = ("import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"shmid = libc.shmget({key}, 1 << 20, 0o1000 | 0o666)  # IPC_CREAT: outlives processes\n"
            "print('shmid', shmid)\n")
    try:
        r = _run(code)
        assert r.ok and "shmid -1" not in r.stdout, r.stdout + r.stderr  # created, in the run's IPC namespace
        with open("/proc/sysvipc/shm") as f:
            keys = [int(line.split()[0]) for line in list(f)[1:]]
        assert key not in keys
        assert_contained(r, marker)
    finally:  # if the wall failed, do not leave the segment on the host
        libc = ctypes.CDLL(None, use_errno=True)
        shmid = libc.shmget(key, 0, 0)
        if shmid >= 0:
            libc.shmctl(shmid, 0, None)  # IPC_RMID


# ------------------------------------------------------------------ network and secrets
def test_loopback_listener_of_the_host_is_unreachable(marker):
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1)
        udp.bind(("127.0.0.1", 0))
        unix.bind("\0" + marker)  # abstract unix sockets belong to the network namespace
        unix.listen(1)
        for s in (tcp, udp, unix):
            s.setblocking(False)
        code = ("import socket\n"
                "def attempt(name, fn):\n"
                "    try:\n"
                "        fn()\n"
                "        print(name, 'reached')\n"
                "    except OSError as e:\n"
                "        print(name, 'blocked', e.errno)\n"
                f"attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1))\n"
                "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"attempt('udp', lambda: u.sendto(b'hi', ('127.0.0.1', {udp.getsockname()[1]})))\n"
                "x = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                f"attempt('unix', lambda: x.connect('\\0' + {marker!r}))\n"
                "attempt('dns', lambda: socket.getaddrinfo('example.com', 80))\n")
        r = _run(code, timeout_s=3.0)
        assert r.ok, r.stderr
        for name in ("tcp", "udp", "unix", "dns"):
            assert f"{name} blocked" in r.stdout, r.stdout
        for s in (tcp, unix):
            with pytest.raises(BlockingIOError):
                s.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(10)
        assert_contained(r, marker)
    finally:
        for s in (tcp, udp, unix):
            s.close()


def test_secrets_of_the_host_cannot_be_read(marker, monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("RLCORE_TEST_SECRET", secret)
    path = f"/tmp/{marker}"
    with open(path, "w") as f:
        f.write(secret)
    os.chmod(path, 0o644)  # readable by every user of the host
    try:
        half = len(marker) // 2  # the path is assembled at run time so that it is not in the code itself
        code = ("import glob, os\n"
                "seen = [repr(dict(os.environ))]\n"
                f"for p in ['/tmp/' + {marker[:half]!r} + {marker[half:]!r}] + glob.glob('/proc/*/environ') + "
                "glob.glob('/proc/*/cmdline') + glob.glob('/tmp/*'):\n"
                "    try:\n"
                "        seen.append(open(p, errors='replace').read())\n"
                "    except OSError:\n"
                "        pass\n"
                "print('\\n'.join(seen))\n")
        r = _run(code, max_output_bytes=1_000_000)
        assert r.ok, r.stderr
        assert secret not in r.stdout and secret not in r.stderr
        assert os.environ["RLCORE_TEST_SECRET"] == secret  # the secret was there to be found
    finally:
        os.remove(path)
    assert survivors(marker, r.isolation["uid"]) == []


# ------------------------------------------------------------------ privileges and memory
def test_no_privileges_to_regain(marker):
    code = ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def attempt(name, fn):\n"
            "    try:\n"
            "        r = fn()\n"
            "        print(name, 'ok' if r in (None, 0) else f'err {ctypes.get_errno()}')\n"
            "    except OSError as e:\n"
            "        print(name, 'err', e.errno)\n"
            "attempt('setuid', lambda: os.setuid(0))\n"
            "attempt('chroot', lambda: os.chroot('/tmp'))\n"
            "attempt('mount', lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n"
            "attempt('mknod', lambda: os.mknod('/tmp/sda', 0o600 | 0o060000, os.makedev(8, 0)))\n"
            "print('nnp', open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])\n")
    r = _run(code)
    assert r.ok, r.stderr
    for name in ("setuid", "chroot", "mount", "mknod"):
        assert re.search(rf"^{name} err", r.stdout, re.M), r.stdout
    assert "nnp 1" in r.stdout  # set-uid binaries cannot raise privileges either
    assert_contained(r, marker)


def test_memory_cgroup_caps_all_processes_together(marker):
    if not sandbox_info("strict")["memory"].startswith("cgroup"):
        pytest.skip("no memory cgroup on this host: the memory limit is per process (RLIMIT_AS)")
    code = ("import os, time\n"
            "kids = []\n"
            "for _ in range(3):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        block = b'x' * (70 << 20)  # touched memory: 70 MB each, 210 MB together\n"
            "        time.sleep(60)\n"
            "    kids.append(pid)\n"
            "time.sleep(1.5)\n"
            "alive = sum(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in kids)\n"
            "print('alive', alive)\n")
    r = _run(code, memory_mb=128, timeout_s=4.0)  # 128 MB per process would allow all three
    assert r.ok, r.stderr
    assert int(r.stdout.split()[1]) <= 1, r.stdout
    assert_contained(r, marker)
