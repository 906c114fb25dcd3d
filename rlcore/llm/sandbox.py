"""Run untrusted, model-generated Python behind hard walls (used by the code reward, C19).

Code written by a policy during RL is untrusted: it may loop forever, fork without end, fill
the memory or the disk, leave processes behind, open sockets or read files that hold the
answers.  Not out of malice: reward hacking finds whatever the checker does not forbid, and
RL then teaches the policy to use it.  ``run_python`` never runs such code in the calling
process, and by default (``isolation="strict"``) it runs it behind these walls:

=====================  =====================================================================
wall                   mechanism
=====================  =====================================================================
processes die with it  a new **PID namespace**; our own small *init* is its PID 1 and the
                       program runs as PID 2.  When the program exits (or the timeout
                       fires) init exits, and the kernel kills every process left in the
                       namespace.  ``setsid()``, double forks and new namespaces cannot
                       leave it.
private file system    a new **mount namespace** whose root is a fresh ``tmpfs`` of
                       ``disk_mb`` (``chroot``): the host's ``/usr``, ``/lib*``, ``/bin`` are
                       bound in read-only (no set-uid), ``/dev`` has only ``null``, ``zero``,
                       ``random``, ``urandom``; ``/tmp``, ``/var/tmp``, ``/dev/shm`` and the
                       working directory ``/sandbox`` live on that tmpfs.  The host's other
                       files (home directories, the repository, the tests) are not visible;
                       nothing written survives the run, and the *total* disk is capped
                       (size and number of files).
no network             a new **network namespace** (only a loopback interface that is down).
no shared IPC          new IPC and UTS namespaces (System V shared memory dies with the run).
no privileges          the program runs under a **throw-away uid** (random, above 10^9, no
                       account, no files on the host) with ``PR_SET_NO_NEW_PRIVS``; a fresh
                       uid per run means ``RLIMIT_NPROC`` counts exactly this run's
                       processes, and no run can signal another.
memory                 a **memory cgroup** (v1 or v2, where this process may create one)
                       caps all the run's processes *and* its tmpfs files together;
                       ``RLIMIT_AS`` caps each process as well.
process count          a **pids cgroup** where available, and ``RLIMIT_NPROC`` always.
time, output, files    the wall-clock timeout is enforced inside the sandbox by init (so it
                       holds even if the caller dies) and by the caller as a back-stop;
                       ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (largest file, and the captured
                       output), ``RLIMIT_NOFILE``, ``RLIMIT_CORE=0``; stdout/stderr are read
                       back only up to ``max_output_bytes``.
=====================  =====================================================================

How a run goes: the caller writes the program to a private temporary directory and starts a
*launcher* (this file run as a script, ``python -I -S``) with an empty environment.  The
launcher ``unshare``-s the namespaces and forks init, which joins the cgroups, builds the
private root, copies the program in, ``chroot``-s, and forks the program: limits, uid drop,
``exec`` of an isolated interpreter (``python -I -S``).  Init reports (on a pipe the program
never holds) ``ready``, then the program's exit status or ``timeout``.  When the caller reads
end-of-file on that pipe, init has exited, so every process of the run is gone.

**Refusal, not silent weakening.**  Strict mode needs Linux, root (for namespaces, mounts and
the uid drop) and a kernel that allows those namespaces.  Where they are missing
``run_python`` raises :class:`SandboxUnavailable` instead of running the code with weaker walls.
A caller that accepts weaker containment says so by name: ``isolation="weak"``, or for a
whole program the environment variable ``RLCORE_SANDBOX=weak`` (the default of
``isolation``).  Weak mode keeps the resource limits, a new process group killed at the end,
the uid drop when root, and a Python-level socket guard; it has **none** of the namespace
walls: background processes that call ``setsid`` survive, files written outside the working
directory stay, the disk limit is per file, sockets opened through C code reach the host's
network, and the program can read every file its uid can read.  :func:`sandbox_info` tells
which walls are up.

Limits of the design (honest list): no seccomp filter, so the whole (namespaced) kernel
interface is reachable and a kernel bug is an escape; the read-only system directories are
visible (their content is public); per-uid kernel objects such as keyrings are not cleaned up;
the memory cgroup's limit includes init (a few MB); cgroup v2 is used only where this process
may create child cgroups with the memory/pids controllers; without a cgroup the memory limit is
per process (``RLIMIT_AS``), so all processes together may use ``max_processes * memory_mb``;
if the caller is killed mid-run, the run still ends at its timeout but its (empty) cgroup and
temporary directories stay behind.  The timeout counts from the program's start; setting up
the walls adds about 0.1 s.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache

NOBODY_UID = 65534
# Linux constants: <sched.h>, <sys/mount.h>, <sys/prctl.h>
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38

SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")  # bound read-only
DEVICES = ("null", "zero", "random", "urandom")
WORKDIR = "/sandbox"        # the program's working directory inside the private root
MAX_FILES = 4096            # inodes of the private tmpfs: many empty files fill it too
REPORT_FD = 3               # the optional report channel (see ``run_python(report_bytes=...)``)
MODES = ("strict", "weak")

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
sys.argv = ["main.py"]
with open("main.py", encoding="utf-8") as _f:
    _src = _f.read()
del _f
exec(compile(_src, "main.py", "exec"), {{"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}})
'''


class SandboxUnavailable(RuntimeError):
    """Strict isolation was asked for but this host cannot raise its walls."""


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
    """Exit status (negative: killed by that signal; None: could not start or timed out)."""
    timed_out: bool = False
    """True when the wall-clock timeout fired and the run was killed."""
    killed_reason: str | None = None
    """``"timeout"``, ``"cpu_limit"``, ``"memory_limit"``, ``"output_limit"``, ``"signal:<n>"``,
    ``"setup_failed"`` (weak mode only) or None."""
    truncated: bool = False
    """True when stdout or stderr was longer than ``max_output_bytes``."""
    duration_s: float = 0.0
    """Wall time of the run, set-up included."""
    isolation: dict = field(default_factory=dict)
    """The walls of this run (see :func:`sandbox_info`), plus its uid and process limit."""
    report: str = ""
    """What the program wrote to file descriptor 3 (only with ``report_bytes > 0``)."""


# ====================================================================== launcher side
# Everything in this section runs in the launcher process (``python -I -S sandbox.py SPEC``)
# and its forks, never in the caller.
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _bind(libc, src: str, dst: str, flags: int) -> None:
    """Bind ``src`` onto ``dst``, then remount the bind with ``flags`` (e.g. read-only, no set-uid)."""
    _mount(libc, src, dst, None, MS_BIND | MS_REC)
    _mount(libc, None, dst, None, MS_REMOUNT | MS_BIND | flags)


def _build_root(spec: dict, libc) -> None:
    """Populate a fresh tmpfs at ``spec["root"]`` with what an interpreter needs, and nothing else."""
    root = spec["root"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={spec['disk_bytes']},nr_inodes={MAX_FILES},mode=755")
    for name in SYSTEM_DIRS + tuple(spec["extra_ro_dirs"]):
        host, inside = "/" + name, root + "/" + name
        if os.path.islink(host):      # e.g. /lib -> usr/lib on merged-/usr systems
            os.symlink(os.readlink(host), inside)
        elif os.path.isdir(host) and not os.path.exists(inside):
            os.makedirs(inside)
            _bind(libc, host, inside, MS_RDONLY | MS_NOSUID | MS_NODEV)
    files = [("/etc/ld.so.cache", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)]
    files += [(f"/dev/{d}", MS_NOSUID | MS_NOEXEC) for d in DEVICES]
    for host, flags in files:  # single files: bind each onto an empty file of the same name
        if os.path.exists(host):
            os.makedirs(os.path.dirname(root + host), exist_ok=True)
            open(root + host, "w").close()
            _bind(libc, host, root + host, flags)
    for d in ("tmp", "var/tmp", "dev/shm"):  # world-writable like on any system, but on our tmpfs
        os.makedirs(root + "/" + d, exist_ok=True)
        os.chmod(root + "/" + d, 0o1777)
    os.mkdir(root + "/proc")  # a fresh /proc shows only this PID namespace
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    work = root + WORKDIR
    os.mkdir(work, 0o700)
    for name in os.listdir(spec["workdir"]):  # the program's files (the caller's copy is root-only)
        with open(os.path.join(spec["workdir"], name), "rb") as src, open(os.path.join(work, name), "wb") as dst:
            dst.write(src.read())
        os.chown(os.path.join(work, name), spec["uid"], spec["uid"])
    os.chown(work, spec["uid"], spec["uid"])


def _exec_program(spec: dict, libc) -> None:
    """Limits, uid drop, exec of the isolated interpreter; runs in the process that becomes the program."""
    os.umask(0o077)
    limits = {resource.RLIMIT_AS: spec["memory_bytes"], resource.RLIMIT_CPU: spec["cpu_s"],
              resource.RLIMIT_FSIZE: spec["fsize_bytes"], resource.RLIMIT_NOFILE: 64, resource.RLIMIT_CORE: 0}
    for res, val in limits.items():
        resource.setrlimit(res, (val, val))
    if spec["uid"] is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
        if os.getuid() != spec["uid"] or os.geteuid() != spec["uid"]:
            raise RuntimeError("could not drop privileges")
    # after the uid drop: RLIMIT_NPROC counts the processes of the *new* uid (and never root's)
    resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")  # set-uid binaries stay powerless
    os.close(spec["status_fd"])  # the program must never hold the status pipe
    if spec["report_fd"] is not None:
        os.dup2(spec["report_fd"], REPORT_FD)
        os.set_inheritable(REPORT_FD, True)
        if spec["report_fd"] != REPORT_FD:
            os.close(spec["report_fd"])
    argv = [spec["python"], "-I", "-S", "-B", "runner.py"]
    os.execve(spec["python"], argv, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"})


def _init(spec: dict, report, libc) -> None:
    """PID 1 of the run's namespaces: build the walls, start the program, wait, report, exit."""
    for procs in spec["cgroup_procs"]:   # "0" = the writing process; the program inherits the cgroup
        with open(procs, "w") as f:
            f.write("0")
    _build_root(spec, libc)
    os.chroot(spec["root"])
    os.chdir(WORKDIR)
    report("ready", "")

    def on_timeout(signum, frame):  # PID 1 ignores signals without a handler, so install one
        report("timeout", "")
        os._exit(0)                 # init exits: the kernel kills everything left in the namespace

    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, spec["timeout_s"])
    program = os.fork()
    if program == 0:
        try:
            _exec_program(spec, libc)
        except BaseException as exc:
            _die(report, exc)
    while True:  # orphans of the namespace are re-parented to us: reap them until the program ends
        pid, status = os.wait()
        if pid == program:
            break
    signal.setitimer(signal.ITIMER_REAL, 0)
    report("exit", str(status))
    os._exit(0)


def _die(report, exc: BaseException) -> None:
    """Report a set-up failure (if the status pipe is still open) and end this process, whatever happens."""
    try:
        report("error", f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(111)


def _launch(spec: dict) -> None:
    """Main of the launcher: strict mode forks init inside new namespaces; weak mode execs directly."""
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)

    def report(kind: str, payload) -> None:
        os.write(status_fd, f"{kind} {json.dumps(payload)}\n".encode())

    try:
        libc = _libc()
        if spec["mode"] == "weak":
            os.chdir(spec["workdir"])
            report("ready", "")
            _exec_program(spec, libc)
        flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
        _check(libc.unshare(flags), "unshare(PID, mount, network, IPC, UTS namespaces)")
        init = os.fork()  # the first child after unshare(CLONE_NEWPID) is PID 1 of the new namespace
        if init == 0:
            try:
                _init(spec, report, libc)
            except BaseException as exc:
                _die(report, exc)
        os.waitpid(init, 0)  # init returns only after every process of the namespace is gone
        os._exit(0)
    except BaseException as exc:  # report set-up failures to the caller, never run the code
        _die(report, exc)


# ====================================================================== caller side
def _is_root() -> bool:
    return os.geteuid() == 0


@lru_cache(maxsize=1)
def _sandbox_python() -> tuple[str, str] | None:
    """(interpreter, its prefix) that an unprivileged user can run (``sys.executable`` may live under /root).

    The interpreter is returned as its real path: a virtual environment's ``bin/python`` is a
    link that would not exist inside the private root (and ``-I -S`` ignores the venv anyway)."""
    candidates = [sys.executable, os.path.realpath(sys.executable),
                  getattr(sys, "_base_executable", ""), "/usr/bin/python3", "/usr/local/bin/python3"]
    for cand in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        kw = dict(user=NOBODY_UID, group=NOBODY_UID, extra_groups=[]) if _is_root() else {}
        try:
            r = subprocess.run([cand, "-I", "-S", "-c", "import resource, json, sys; print(sys.base_prefix)"],
                               env={}, cwd="/", capture_output=True, text=True, timeout=10, **kw)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return os.path.realpath(cand), r.stdout.strip()
    return None


def _extra_ro_dirs(python: str, prefix: str) -> list[str]:
    """Directories to bind into the private root besides SYSTEM_DIRS (an interpreter outside /usr)."""
    extra = []
    for path in sorted({os.path.dirname(python), os.path.realpath(prefix)}, key=len):  # outer dirs first
        rel = path.strip("/")
        if rel and rel.split("/")[0] not in SYSTEM_DIRS and not any((rel + "/").startswith(e + "/") for e in extra):
            extra.append(rel)
    return extra


@lru_cache(maxsize=1)
def _cgroup_parents() -> dict:
    """controller -> (version, directory of our own cgroup), for memory/pids where we may create children."""
    mine, unified = {}, None
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if not ctrls:
                unified = path
            for c in ctrls.split(","):
                mine[c] = path
    found = {}
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[:4] for line in f]
    for _, mnt, fstype, opts in mounts:
        for c in ("memory", "pids"):
            if fstype == "cgroup" and c in opts.split(",") and c in mine:
                d = mnt.rstrip("/") + mine[c]
                if os.access(d, os.W_OK):
                    found[c] = ("v1", d)
    for _, mnt, fstype, _ in mounts:
        if fstype == "cgroup2" and unified is not None:
            d = mnt.rstrip("/") + unified
            try:
                with open(os.path.join(d, "cgroup.subtree_control")) as f:
                    enabled = f.read().split()
            except OSError:
                continue
            for c in ("memory", "pids"):
                if c in enabled and c not in found and os.access(d, os.W_OK):
                    found[c] = ("v2", d)
    return found


class _Cgroups:
    """This run's memory and pids cgroups, where the host lets us create them."""

    def __init__(self, name: str, memory_bytes: int, max_pids: int):
        self.dirs, self.kinds = {}, {}
        for ctrl, (ver, parent) in _cgroup_parents().items():
            d = os.path.join(parent, name)
            try:
                if d not in self.dirs.values():
                    os.mkdir(d)
                self.dirs[ctrl] = d
                files = {("v1", "memory"): [("memory.limit_in_bytes", memory_bytes),
                                            ("memory.memsw.limit_in_bytes", memory_bytes)],
                         ("v2", "memory"): [("memory.max", memory_bytes), ("memory.swap.max", 0)],
                         ("v1", "pids"): [("pids.max", max_pids)], ("v2", "pids"): [("pids.max", max_pids)]}
                for i, (fname, value) in enumerate(files[ver, ctrl]):
                    try:
                        with open(os.path.join(d, fname), "w") as f:
                            f.write(str(value))
                    except OSError:
                        if i == 0:   # the limit itself is required; swap accounting is optional
                            raise
                self.kinds[ctrl] = f"cgroup-{ver}"
            except OSError:
                pass  # no cgroup for this controller: the rlimits still hold

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for c, d in self.dirs.items() if c in self.kinds]

    def oom_kills(self) -> int:
        if "memory" not in self.kinds:
            return 0
        fname = "memory.oom_control" if self.kinds["memory"] == "cgroup-v1" else "memory.events"
        try:
            with open(os.path.join(self.dirs["memory"], fname)) as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("oom_kill "))
        except (OSError, ValueError, IndexError):
            return 0

    def remove(self) -> None:
        for d in dict.fromkeys(self.dirs.values()):
            for _ in range(200):   # the last exits may still be in flight for a few ms
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)


def _resolve_mode(isolation: str | None) -> str:
    mode = isolation if isolation is not None else os.environ.get("RLCORE_SANDBOX", "strict")
    if mode not in MODES:
        raise ValueError(f"isolation must be one of {MODES} (or RLCORE_SANDBOX unset), got {mode!r}")
    return mode


def _unavailable(reason: str) -> SandboxUnavailable:
    return SandboxUnavailable(
        f"rlcore sandbox: strict isolation is not available here ({reason}). Strict mode needs Linux, "
        "root, and permission to create PID/mount/network/IPC namespaces and tmpfs mounts. To run "
        "anyway with weaker walls (resource limits and a process group only: escaping processes, "
        "files outside the working directory and host file reads are not contained), pass "
        "isolation='weak' or set RLCORE_SANDBOX=weak.")


def _weak_walls(drop: bool) -> dict:
    return {"pid_namespace": False, "mount_namespace": False, "ipc_namespace": False,
            "network": "socket-guard", "privilege_drop": drop, "disk": "per-file (RLIMIT_FSIZE)",
            "memory": "rlimit-as", "processes": "rlimit-nproc"}


@lru_cache(maxsize=1)
def _strict_probe() -> dict | str:
    """The walls of a strict run on this host, or why strict mode is refused."""
    try:
        r = run_python("pass", timeout_s=10.0, isolation="strict")
    except SandboxUnavailable as exc:
        return str(exc)
    return r.isolation if r.ok else f"probe failed: {r.stderr.strip()[-200:]}"


def sandbox_info(isolation: str | None = None) -> dict:
    """Which walls :func:`run_python` raises on this machine in mode ``isolation`` (default: the
    ``RLCORE_SANDBOX`` environment variable, else ``"strict"``).

    Keys: ``mode``; ``available`` (False: strict mode refuses to run here, ``reason`` says why);
    ``pid_namespace``, ``mount_namespace`` (private root on a tmpfs: private /tmp, /dev/shm,
    capped disk, host files hidden), ``ipc_namespace`` (bool); ``network`` (``"netns"`` or
    ``"socket-guard"``); ``privilege_drop`` (runs as a throw-away uid); ``disk``, ``memory`` and
    ``processes`` (what enforces each limit); ``python`` (the interpreter that runs the code).
    """
    mode = _resolve_mode(isolation)
    py = _sandbox_python()
    python = py[0] if py else sys.executable
    if mode == "weak":
        return {"mode": "weak", "available": True, **_weak_walls(_is_root() and py is not None),
                "python": python}
    probe = _strict_probe()
    if isinstance(probe, str):
        return {"mode": "strict", "available": False, "reason": probe, **_weak_walls(False),
                "network": "none", "disk": "none", "memory": "none", "processes": "none", "python": python}
    walls = {k: v for k, v in probe.items() if k not in ("uid", "nproc_limit")}
    return {"mode": "strict", "available": True, **walls, "python": python}


def _read_head(path: str, n: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(n + 1)
    return data[:n].decode("utf-8", errors="replace"), len(data) > n


def _own_process_count() -> int:
    uid, n = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                n += os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                pass
    return n


def run_python(code: str, stdin: str = "", timeout_s: float = 2.0, memory_mb: int = 256,
               max_output_bytes: int = 10_000, max_processes: int = 16, max_file_bytes: int = 1_000_000,
               disk_mb: int = 16, files: dict[str, str] | None = None, report_bytes: int = 0,
               isolation: str | None = None) -> SandboxResult:
    """Run ``code`` with ``python -I -S`` behind the walls of the module docstring.

    Args:
        code: Python source (untrusted), run as ``main.py`` in the working directory.
        stdin: text fed to the program's standard input.
        timeout_s: wall-clock limit of the program; every process of the run is killed when it
            fires.  The CPU-time limit is ``int(timeout_s) + 2`` seconds.
        memory_mb: memory of the whole run (all processes and tmpfs files; memory cgroup) and
            of each process (``RLIMIT_AS``).
        max_output_bytes: stdout and stderr are each cut to this many bytes.
        max_processes: processes (and threads) the program may have at once, itself included.
        max_file_bytes: ``RLIMIT_FSIZE``: largest file (and captured output) the program may
            write; a program printing more is stopped.
        disk_mb: strict mode: size of the private tmpfs that holds /tmp, /dev/shm, /var/tmp
            and the working directory together (and at most ``MAX_FILES`` files).
        files: extra files ``{name: text}`` placed next to ``main.py`` (e.g. the code a test
            harness imports).
        report_bytes: when > 0, file descriptor 3 of the program is a write-only channel to
            the caller and ``SandboxResult.report`` holds its first ``report_bytes`` bytes.
        isolation: ``"strict"`` (refuse with :class:`SandboxUnavailable` unless every wall can
            be raised) or ``"weak"`` (see the module docstring); None: ``$RLCORE_SANDBOX``,
            else ``"strict"``.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if not timeout_s > 0 or memory_mb < 32 or max_output_bytes < 1 or max_processes < 1 or disk_mb < 1:
        raise ValueError("need timeout_s > 0, memory_mb >= 32 (the interpreter itself needs ~20 MB), "
                         "max_output_bytes >= 1, max_processes >= 1 and disk_mb >= 1")
    files = dict(files or {})
    for name in files:
        if not name or "/" in name or name.startswith(".") or name in ("main.py", "runner.py"):
            raise ValueError(f"bad extra file name {name!r}")
    mode = _resolve_mode(isolation)
    py = _sandbox_python()
    if mode == "strict" and (os.name != "posix" or not sys.platform.startswith("linux")):
        raise _unavailable("not Linux")
    if mode == "strict" and not _is_root():
        raise _unavailable("not running as root")
    if mode == "strict" and py is None:
        raise _unavailable("no Python interpreter an unprivileged user may run")
    root = _is_root() and py is not None
    python = py[0] if root else sys.executable
    uid = 1_000_000_000 + secrets.randbelow(1_000_000_000) if root else None  # a fresh, unused uid
    nproc = max_processes if uid is not None else _own_process_count() + max_processes
    max_file_bytes = max(max_file_bytes, max_output_bytes + 1, report_bytes + 1)
    walls = {"uid": uid if uid is not None else os.getuid(), "nproc_limit": nproc}

    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="rlcore-sbx-")     # the program's files
    priv = tempfile.mkdtemp(prefix="rlcore-sbx-io-")  # stdin/stdout/stderr/report, the root's mount point
    cgroups = None
    status_r = None
    try:
        files.update({"main.py": code, "runner.py": _RUNNER.format(guard=_SOCKET_GUARD if mode == "weak" else "")})
        for name, text in files.items():
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                f.write(text)
        if mode == "weak" and uid is not None:  # weak mode runs in `work` itself
            for p in [work] + [os.path.join(work, n) for n in files]:
                os.chown(p, uid, uid)
        os.chmod(work, 0o700)
        if mode == "strict":
            os.mkdir(os.path.join(priv, "root"), 0o700)
            cgroups = _Cgroups(os.path.basename(priv), int(memory_mb) * 2**20, max_processes + 1)  # +1: init
            walls.update({"pid_namespace": True, "mount_namespace": True, "ipc_namespace": True,
                          "network": "netns", "privilege_drop": True, "disk": f"tmpfs {disk_mb} MB",
                          "memory": cgroups.kinds.get("memory", "rlimit-as"),
                          "processes": cgroups.kinds.get("pids", "rlimit-nproc")})
        else:
            walls.update(_weak_walls(uid is not None))
        paths = {k: os.path.join(priv, k) for k in ("stdin", "stdout", "stderr", "report")}
        with open(paths["stdin"], "w", encoding="utf-8") as f:
            f.write(stdin)
        status_r, status_w = os.pipe()
        with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, \
                open(paths["stderr"], "wb") as ferr, open(paths["report"], "wb") as frep:
            spec = {"mode": mode, "status_fd": status_w, "report_fd": frep.fileno() if report_bytes > 0 else None,
                    "memory_bytes": int(memory_mb) * 2**20, "cpu_s": int(timeout_s) + 2,
                    "fsize_bytes": int(max_file_bytes), "nproc": int(nproc), "uid": uid, "python": python,
                    "workdir": work, "root": os.path.join(priv, "root"), "disk_bytes": int(disk_mb) * 2**20,
                    "extra_ro_dirs": _extra_ro_dirs(*py) if py else [], "timeout_s": float(timeout_s),
                    "cgroup_procs": cgroups.procs_files() if cgroups else []}
            launcher = [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(spec)]
            pass_fds = (status_w, frep.fileno()) if report_bytes > 0 else (status_w,)
            try:
                proc = subprocess.Popen(launcher, stdin=fin, stdout=fout, stderr=ferr, env={}, cwd=work,
                                        start_new_session=True, pass_fds=pass_fds, close_fds=True)
            finally:
                os.close(status_w)
        # strict: init enforces the timeout itself, we only keep a back-stop; weak: we enforce it
        timed_out = False
        try:
            proc.wait(timeout=timeout_s + 5.0 if mode == "strict" else timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        if timed_out or mode == "weak":  # weak: background children in the group must not outlive the run
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait()
        with os.fdopen(status_r, "rb") as st:  # EOF once init (strict) / the launcher (weak) is gone
            status_r = None
            status = st.read().decode(errors="replace")
        oom_kills = cgroups.oom_kills() if cgroups else 0
        stdout, t1 = _read_head(paths["stdout"], max_output_bytes)
        stderr, t2 = _read_head(paths["stderr"], max_output_bytes)
        out_size = max(os.path.getsize(paths["stdout"]), os.path.getsize(paths["stderr"]))
        report = _read_head(paths["report"], report_bytes)[0] if report_bytes > 0 else ""
    finally:
        if status_r is not None:
            os.close(status_r)
        if cgroups:
            cgroups.remove()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(priv, ignore_errors=True)

    rc, error = proc.returncode, None
    for line in status.splitlines():
        kind, _, payload = line.partition(" ")
        if kind == "exit":
            rc = os.waitstatus_to_exitcode(int(json.loads(payload)))
        elif kind == "timeout":
            timed_out = True
        elif kind == "error":
            error = json.loads(payload)
    if mode == "strict" and (error is not None or not status.startswith("ready")):
        raise _unavailable(error or f"the launcher ended without a report (status {proc.returncode})")
    if error is not None:
        return SandboxResult(False, "", error, None, killed_reason="setup_failed",
                             duration_s=time.monotonic() - start, isolation=walls)
    reason = None
    if timed_out:
        reason, rc = "timeout", None if mode == "strict" else rc
    elif out_size >= max_file_bytes or "File too large" in stderr:
        reason = "output_limit"
    elif rc == -signal.SIGXCPU:
        reason = "cpu_limit"
    elif rc != 0 and ("MemoryError" in stderr or oom_kills > 0):
        reason = "memory_limit"
    elif rc is not None and rc < 0:
        reason = f"signal:{-rc}"
    return SandboxResult(ok=(rc == 0 and reason is None), stdout=stdout, stderr=stderr, returncode=rc,
                         timed_out=timed_out, killed_reason=reason, truncated=t1 or t2,
                         duration_s=time.monotonic() - start, isolation=walls, report=report)


if __name__ == "__main__":
    _launch(json.loads(sys.argv[1]))
