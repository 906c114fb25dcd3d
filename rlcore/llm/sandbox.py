"""Run model-generated Python in a contained subprocess (used by the code reward, C19).

Code written by a policy during RL is untrusted: it may loop forever, fork without end,
allocate all memory, print gigabytes, delete files or open sockets -- not out of malice
but because reward hacking finds whatever the checker does not forbid.  ``run_python``
never executes such code in the calling process.  Each call

1. writes the code to a fresh temporary directory that becomes the child's working
   directory and is deleted afterwards;
2. starts a *launcher* (this file, run as a script with ``python -I -S``) in a new
   session (its own process group), with an empty environment;
3. the launcher sets the resource limits ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``,
   ``RLIMIT_FSIZE`` (file and captured-output size), ``RLIMIT_NOFILE``, ``RLIMIT_CORE=0``
   and ``RLIMIT_NPROC`` (fork bombs), moves into a new network namespace when it can
   (``unshare(CLONE_NEWNET)``: only a loopback interface that is down, so every
   connect fails), and, when running as root, drops to the unprivileged user
   ``nobody`` (uid 65534) -- the kernel never enforces ``RLIMIT_NPROC`` for root, and
   ``nobody`` cannot delete or overwrite the caller's files;
4. then ``exec``s an isolated interpreter (``python -I -S``) on the code.

The parent enforces the wall-clock timeout by killing the whole process group (and,
with a network namespace, every process left in that namespace, which catches children
that called ``setsid`` to leave the group).  stdout/stderr go to files whose size is
bounded by ``RLIMIT_FSIZE``; only the first ``max_output_bytes`` are read back, so a
program printing forever costs neither memory nor time.

When a network namespace cannot be created (non-root without unprivileged user
namespaces), a preamble replaces ``socket.socket`` and friends so that socket
creation raises ``PermissionError`` -- weaker, because C extensions could bypass it,
but enough for the accidental network use of generated code.
:func:`sandbox_info` tells which mechanisms are in effect on this machine.

Limits of the design (honest list): no seccomp filter and no mount namespace, so a
non-root caller's files are readable and writable by the sandboxed code (running as
root is what enables the ``nobody`` drop); ``RLIMIT_AS`` is per process, so a
fork bomb may use up to ``max_processes * memory_mb`` of address space; killed processes
are reaped by the system's init, and until then (about 1.5 s on some VMs) they still count
towards the ``nobody`` process limit, so a run right after a fork bomb may be unable to fork
(it still starts).  The timeout includes the launcher's start-up (~0.1 s).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache

NOBODY_UID = 65534
NOBODY_GID = 65534
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000

_SOCKET_GUARD = '''\
import socket as _s
def _blocked(*a, **k):
    raise PermissionError("network access is disabled in the rlcore sandbox")
for _n in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
    setattr(_s, _n, _blocked)
try:
    import _socket as _c
    _c.socket = _blocked
except ImportError:
    pass
del _s, _n
'''

_RUNNER = '''\
{guard}
import sys
sys.argv = ["solution.py"]
with open("solution.py", encoding="utf-8") as _f:
    _src = _f.read()
del _f
exec(compile(_src, "solution.py", "exec"), {{"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}})
'''


@dataclass
class SandboxResult:
    """Outcome of :func:`run_python`."""

    ok: bool
    """True when the program exited with status 0 within every limit."""
    stdout: str
    """Captured standard output, truncated to ``max_output_bytes``."""
    stderr: str
    """Captured standard error, truncated to ``max_output_bytes``."""
    returncode: int | None
    """Exit status (negative: killed by that signal; None: could not start)."""
    timed_out: bool = False
    """True when the wall-clock timeout fired and the process group was killed."""
    killed_reason: str | None = None
    """``"timeout"``, ``"cpu_limit"``, ``"memory_limit"``, ``"output_limit"``, ``"signal:<n>"`` or None."""
    truncated: bool = False
    """True when stdout or stderr was longer than ``max_output_bytes``."""
    duration_s: float = 0.0
    """Wall time of the run."""
    isolation: dict = field(default_factory=dict)
    """The mechanisms used (see :func:`sandbox_info`)."""


# ------------------------------------------------------------------ launcher side
def _launch(spec: dict) -> None:
    """Executed in the child (``python -I -S sandbox.py SPEC``): limits, namespace, uid, exec."""
    status_fd = spec["status_fd"]

    def report(msg: str) -> None:
        os.write(status_fd, (msg + "\n").encode())

    try:
        os.umask(0o077)
        limits = {
            resource.RLIMIT_AS: spec["memory_bytes"],
            resource.RLIMIT_CPU: spec["cpu_s"],
            resource.RLIMIT_FSIZE: spec["fsize_bytes"],
            resource.RLIMIT_NOFILE: spec["nofile"],
            resource.RLIMIT_CORE: 0,
        }
        for res, val in limits.items():
            resource.setrlimit(res, (val, val))
        netns = False
        if spec["try_netns"]:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            flags = CLONE_NEWNET if os.geteuid() == 0 else (CLONE_NEWNET | CLONE_NEWUSER)
            netns = libc.unshare(flags) == 0
        if spec["drop_to"] is not None:
            uid, gid = spec["drop_to"]
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise RuntimeError("could not drop privileges")
        # set after the uid drop: NPROC counts the processes of the *new* uid
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
        os.chdir(spec["workdir"])
        ns = os.readlink("/proc/self/ns/net") if netns else ""
        report(f"ready netns={int(netns)} ns={ns}")
        os.close(status_fd)
        argv = [spec["python"], "-I", "-S", "-B", "runner.py"]
        os.execve(spec["python"], argv, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                         "PYTHONIOENCODING": "utf-8"})
    except BaseException as exc:  # report setup failures to the parent, never run the code
        try:
            report(f"error {type(exc).__name__}: {exc}")
        finally:
            os._exit(111)


# ------------------------------------------------------------------ parent side
def _is_root() -> bool:
    return os.geteuid() == 0


@lru_cache(maxsize=1)
def _nobody_python() -> str | None:
    """An interpreter the ``nobody`` user can execute (``sys.executable`` may live under /root)."""
    candidates = [sys.executable, os.path.realpath(sys.executable),
                  getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3"]
    seen = set()
    for cand in candidates:
        if not cand or cand in seen or not os.path.exists(cand):
            continue
        seen.add(cand)
        try:
            r = subprocess.run([cand, "-I", "-S", "-c", "import resource, json"], user=NOBODY_UID,
                               group=NOBODY_GID, extra_groups=[], env={}, cwd="/",
                               capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return cand
    return None


@lru_cache(maxsize=1)
def _netns_available() -> bool:
    r = run_python("import socket\nprint('probe')", timeout_s=10.0, _probe=True)
    return r.ok and r.isolation.get("netns", False)


def _own_process_count() -> int:
    uid = os.getuid()
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def sandbox_info() -> dict:
    """Which containment mechanisms :func:`run_python` uses on this machine.

    ``privilege_drop``: runs as ``nobody`` (needs root and an interpreter nobody can run);
    ``network``: ``"netns"`` (new network namespace) or ``"socket-guard"`` (preamble);
    ``python``: the interpreter that runs the code.
    """
    drop = _is_root() and _nobody_python() is not None
    return {"privilege_drop": drop,
            "network": "netns" if _netns_available() else "socket-guard",
            "python": _nobody_python() if drop else sys.executable}


def _read_head(path: str, n: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(n + 1)
    return data[:n].decode("utf-8", errors="replace"), len(data) > n


def _kill_netns(ns: str) -> None:
    """SIGKILL every process living in the network namespace ``ns`` (only the sandbox's live there)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.readlink(f"/proc/{pid}/ns/net") == ns and int(pid) != os.getpid():
                    os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def run_python(code: str, stdin: str = "", timeout_s: float = 2.0, memory_mb: int = 256,
               max_output_bytes: int = 10_000, max_processes: int = 16,
               max_file_bytes: int = 1_000_000, network: str = "auto",
               _probe: bool = False) -> SandboxResult:
    """Run ``code`` with ``python -I -S`` in a contained subprocess; see the module docstring.

    Args:
        code: Python source (untrusted).
        stdin: text fed to the program's standard input.
        timeout_s: wall-clock limit; the whole process group is killed when it fires.
            The CPU-time limit is ``ceil(timeout_s) + 1`` seconds.
        memory_mb: address-space limit (``RLIMIT_AS``) per process.
        max_output_bytes: stdout and stderr are each cut to this many bytes.
        max_processes: ``RLIMIT_NPROC`` (extra processes for a non-root caller, whose
            existing processes count towards the limit too).
        max_file_bytes: ``RLIMIT_FSIZE``: largest file (and captured output) the program
            may write; a program printing more is stopped.
        network: ``"auto"`` (network namespace when available, else the socket guard),
            ``"guard"`` (socket guard only, for testing it) or ``"netns"`` (fail when no
            namespace can be made).
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if not timeout_s > 0 or memory_mb < 32 or max_output_bytes < 1 or max_processes < 1:
        raise ValueError("need timeout_s > 0, memory_mb >= 32 (the interpreter itself needs ~20 MB), "
                         "max_output_bytes >= 1 and max_processes >= 1")
    if network not in ("auto", "guard", "netns"):
        raise ValueError(f"network must be 'auto', 'guard' or 'netns', got {network!r}")

    drop_to = (NOBODY_UID, NOBODY_GID) if _is_root() and _nobody_python() else None
    python = _nobody_python() if drop_to else sys.executable
    try_netns = network != "guard"
    use_guard = network == "guard" or (network == "auto" and not _probe and not _netns_available())
    nproc = max_processes if drop_to else _own_process_count() + max_processes
    max_file_bytes = max(max_file_bytes, max_output_bytes + 1)

    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="rlcore-sbx-")   # the child's cwd
    priv = tempfile.mkdtemp(prefix="rlcore-sbx-io-")  # captured output, parent only
    try:
        with open(os.path.join(work, "solution.py"), "w", encoding="utf-8") as f:
            f.write(code)
        with open(os.path.join(work, "runner.py"), "w", encoding="utf-8") as f:
            f.write(_RUNNER.format(guard=_SOCKET_GUARD if use_guard else ""))
        if drop_to:
            for p in (work, os.path.join(work, "solution.py"), os.path.join(work, "runner.py")):
                os.chown(p, *drop_to)
        os.chmod(work, 0o700)
        with open(os.path.join(priv, "stdin"), "w", encoding="utf-8") as f:
            f.write(stdin)
        out_path, err_path = os.path.join(priv, "stdout"), os.path.join(priv, "stderr")
        status_r, status_w = os.pipe()
        spec = {"status_fd": status_w, "memory_bytes": int(memory_mb) * 2**20,
                "cpu_s": int(timeout_s) + 2, "fsize_bytes": int(max_file_bytes), "nofile": 64,
                "nproc": int(nproc), "try_netns": try_netns, "drop_to": drop_to,
                "workdir": work, "python": python}
        launcher = [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(spec)]
        with open(os.path.join(priv, "stdin"), "rb") as fin, open(out_path, "wb") as fout, \
                open(err_path, "wb") as ferr:
            try:
                proc = subprocess.Popen(launcher, stdin=fin, stdout=fout, stderr=ferr, env={},
                                        cwd=work, start_new_session=True, pass_fds=(status_w,),
                                        close_fds=True)
            finally:
                os.close(status_w)
        status = b""
        with os.fdopen(status_r, "rb") as st:  # EOF once the launcher execs or dies
            status = st.read().decode(errors="replace").strip()
        timed_out = False
        try:
            proc.wait(timeout=max(0.0, timeout_s - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            timed_out = True
        # kill the group on every path: background children must not outlive the run
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        ns = ""
        netns = status.startswith("ready netns=1")
        if netns:
            ns = status.split("ns=", 2)[-1]
            if ns.startswith("net:["):
                _kill_netns(ns)
        if network == "netns" and not netns:
            raise RuntimeError(f"no network namespace could be created here (launcher said {status!r}); "
                               "use network='auto'")
        stdout, t1 = _read_head(out_path, max_output_bytes)
        stderr, t2 = _read_head(err_path, max_output_bytes)
        out_size = max(os.path.getsize(out_path), os.path.getsize(err_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(priv, ignore_errors=True)

    rc = proc.returncode
    if status.startswith("error"):
        return SandboxResult(False, "", status, None, killed_reason="setup_failed",
                             duration_s=time.monotonic() - start)
    reason = None
    if timed_out:
        reason = "timeout"
    elif out_size >= max_file_bytes or "File too large" in stderr:
        reason = "output_limit"
    elif rc == -signal.SIGXCPU:
        reason = "cpu_limit"
    elif rc != 0 and "MemoryError" in stderr:
        reason = "memory_limit"
    elif rc is not None and rc < 0:
        reason = f"signal:{-rc}"
    isolation = {"netns": netns, "socket_guard": use_guard, "uid": drop_to[0] if drop_to else os.getuid(),
                 "nproc_limit": nproc}
    return SandboxResult(ok=(rc == 0 and reason is None), stdout=stdout, stderr=stderr, returncode=rc,
                         timed_out=timed_out, killed_reason=reason, truncated=t1 or t2,
                         duration_s=time.monotonic() - start, isolation=isolation)


if __name__ == "__main__":
    _launch(json.loads(sys.argv[1]))
