"""Run untrusted model-written Python against unit tests, isolated from the host.

One call to :func:`run_tests` runs one program in a fresh child process tree:

* **namespaces**: ``unshare --net --pid --fork`` gives the child an empty network
  namespace (no interfaces, not even loopback: every connect fails) and its own PID
  namespace, whose init is the harness. When the harness exits or is killed the kernel
  SIGKILLs every process left in the namespace, so double-forked background processes
  cannot outlive the run.
* **unprivileged uid**: the child runs as a fresh uid (no passwd entry, no groups), unique
  among concurrent runs. We run as root, and RLIMIT_NPROC is not enforced for root; as an
  ordinary uid the fork-bomb limit applies, and per-run uids keep one run's fork bomb from
  eating another's process budget. The uid also cannot signal host processes, read their
  ``/proc/<pid>/environ``, or delete root-owned files outside its directory.
* **resource limits** (set by the harness before the program runs): RLIMIT_CPU,
  RLIMIT_AS (memory), RLIMIT_FSIZE (largest file), RLIMIT_NPROC, RLIMIT_CORE=0.
* **wall clock**: the host kills the whole tree (process group, then every process of the
  run's uid) once ``timeout_s`` passes.
* **scrubbed environment** (PATH, LANG, HOME/TMPDIR = the run's temporary directory) and
  a fresh temporary directory (prefix ``lrmjax_sbx_``) removed afterwards.
* ``setpriv --pdeathsig KILL`` plus a re-armed parent-death signal in the harness: if the
  calling process dies (e.g. a hung reward worker is killed) the run dies with it.

**Verdict.** The program and its tests reach the harness on stdin (an unlinked file, closed
and replaced by /dev/null before the program runs), so the program cannot read the tests
from disk. The harness records each outcome as ``<nonce> test <i> pass|fail`` on an unlinked
temporary file inherited as an extra fd; the 128-bit nonce is random per run and lives only
in harness memory. Exiting early (``sys.exit(0)``, ``os._exit(0)``), printing a pass marker,
or rebinding builtins (the harness captures what it uses before the program runs, and
``assert`` raises the real AssertionError regardless of any rebinding) leaves tests without
a ``pass`` record, and a missing record is a fail.

**Limits of the guarantee** (stated, not hidden): tests run in the same interpreter as the
program, so a program written *specifically against this harness* can still win, e.g. by
scanning interpreter memory (``gc.get_objects()``) for the nonce, or by returning objects
whose ``__eq__`` always returns True. The sandbox defends the host and the verdict channel
against generic misbehaviour; it is not a proof system.

The sandbox interpreter must be executable by the unprivileged uid (a pyenv build under
``/root`` is not): :func:`sandbox_python` picks the first candidate that a probe run
accepts (``SandboxConfig.python``, ``sys.executable``, ``/usr/bin/python3``).
Where namespaces are unavailable (not root, no ``unshare``) the sandbox still runs, with
an audit hook that refuses socket operations, and reports ``network_isolated=False``.
"""

from __future__ import annotations

import dataclasses
import functools
import marshal
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

TMP_PREFIX = "lrmjax_sbx_"
# Per-run uids: BASE + pid * 64 + counter, far above any real account. pid_max <= 2**22 keeps
# this below 2**31.
_UID_BASE = 100_000_000
_uid_lock = threading.Lock()
_uid_counter = 0
_run_count = 0


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits for one sandboxed run.

    Attributes:
      timeout_s: wall-clock limit for the whole run (program + all tests).
      cpu_s: RLIMIT_CPU in seconds (per process).
      memory_mb: RLIMIT_AS in MiB (per process address space).
      file_size_mb: RLIMIT_FSIZE in MiB (largest file the program may write; also caps
        stdout/stderr, which go to files).
      max_procs: RLIMIT_NPROC for the run's uid (harness included).
      max_output_bytes: bytes of stdout/stderr tail kept in the result.
      python: interpreter to run; None picks one (see :func:`sandbox_python`).
      tmp_dir: parent of the per-run temporary directories (None = the system default).
      isolate: use namespaces + a dropped uid when available. False runs the program as a
        plain child process (still new session, limits, timeout, audit-hook socket block):
        for debugging only.
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_procs: int = 32
    max_output_bytes: int = 4096
    python: str | None = None
    tmp_dir: str | None = None
    isolate: bool = True


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    ``passed[i]`` is True iff the harness recorded test i as passing (missing record =
    fail). ``program_ok`` is True iff the program's top level ran to completion.
    """

    passed: tuple[bool, ...]
    program_ok: bool
    timed_out: bool
    returncode: int | None
    stdout: str
    stderr: str
    error: str
    wall_s: float
    network_isolated: bool
    pid_isolated: bool

    @property
    def num_tests(self) -> int:
        return len(self.passed)

    @property
    def pass_fraction(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.passed) and all(self.passed)


# The harness runs as `python -I -S -c _HARNESS`. It reads a marshal'd dict from stdin,
# swaps stdin for /dev/null, sets limits, then execs the program and each test in one
# namespace. Everything it needs after the program starts is bound to locals first, so a
# program that rebinds builtins or module attributes cannot change what the harness does.
_HARNESS = r"""
def _harness():
    import marshal, os, resource, sys
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG=SIGKILL (cleared by setuid)
    except Exception:
        pass
    chunks = []
    while True:
        b = os.read(0, 1 << 20)
        if not b:
            break
        chunks.append(b)
    cfg = marshal.loads(b"".join(chunks))
    del chunks
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    vfd, nonce, program, tests = cfg["vfd"], cfg["nonce"], cfg["program"], cfg["tests"]
    for name, value in cfg["limits"]:
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))
    if cfg["block_sockets"]:
        def _audit(event, args):
            if event.startswith("socket."):
                raise PermissionError("network disabled in sandbox: " + event)
        sys.addaudithook(_audit)
    write, compile_, exec_, enc = os.write, compile, exec, str.encode
    base_exc, fmt, enumerate_ = BaseException, "{} {} {} {}\n".format, enumerate

    def emit(kind, idx, status):
        try:
            write(vfd, enc(fmt(nonce, kind, idx, status)))
        except base_exc:
            pass

    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec_(compile_(program, "solution.py", "exec"), ns)
    except base_exc as e:
        emit("program", 0, "error")
        try:
            sys.stderr.write("program raised " + type(e).__name__ + "\n")
        except base_exc:
            pass
        return
    emit("program", 0, "ok")
    for i, test in enumerate_(tests):
        try:
            exec_(compile_(test, "test_%d.py" % i, "exec"), ns)
            ok = True
        except base_exc:
            ok = False
        emit("test", i, "pass" if ok else "fail")

_harness()
"""


def uid_range(pid: int) -> range:
    """The uids that runs started by process `pid` use (for leak checks)."""
    return range(_UID_BASE + pid * 64, _UID_BASE + pid * 64 + 64)


def _next_uid() -> int:
    global _uid_counter
    with _uid_lock:
        _uid_counter = (_uid_counter + 1) % 64
        return _UID_BASE + os.getpid() * 64 + _uid_counter


@functools.lru_cache(maxsize=8)
def _probe(python: str, isolated: bool) -> bool:
    """True iff `python` runs (inside namespaces as an unprivileged uid when `isolated`)."""
    cmd = [python, "-I", "-S", "-c", "import marshal, resource"]
    if isolated:
        cmd = _isolation_prefix(_UID_BASE - 1) + cmd
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                             cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def _isolation_prefix(uid: int) -> list[str]:
    return ["setpriv", "--pdeathsig", "KILL", "unshare", "--net", "--pid", "--fork",
            "--kill-child", f"--setuid={uid}", f"--setgid={uid}"]


@functools.lru_cache(maxsize=8)
def sandbox_python(preferred: str | None = None) -> tuple[str, bool]:
    """Returns (interpreter, isolated): the first interpreter that works in isolation.

    Isolation needs root (for namespaces and setuid) plus util-linux ``unshare``/``setpriv``.
    Falls back to (sys.executable, False) when no candidate runs isolated.
    """
    candidates = [p for p in (preferred, sys.executable, "/usr/bin/python3",
                              "/usr/local/bin/python3") if p]
    can_isolate = (os.geteuid() == 0 and shutil.which("unshare") is not None
                   and shutil.which("setpriv") is not None)
    if can_isolate:
        for python in candidates:
            if os.path.exists(python) and _probe(python, True):
                return python, True
    return (preferred or sys.executable), False


def remove_orphaned_dirs(tmp_dir: str | None = None) -> int:
    """Removes run directories whose creating process is dead; returns how many.

    A run's directory is named ``lrmjax_sbx_<pid>_*`` after the process that made it.
    Normally the run removes it; if that process was SIGKILLed mid-run (a reward worker
    killed for a timeout), the directory stays until a later sweep. :func:`run_tests`
    sweeps on a process's first run and every 256 runs after.
    """
    root = tmp_dir or tempfile.gettempdir()
    removed = 0
    for entry in os.scandir(root):
        if not entry.name.startswith(TMP_PREFIX):
            continue
        pid = entry.name[len(TMP_PREFIX):].split("_", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or its pid was reused): keep
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    return removed


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by `uid`, from /proc."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid != uid:
                    continue
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                pids.append(int(entry.name))
    return pids


def _kill_uid(uid: int, deadline_s: float = 5.0) -> None:
    """SIGKILLs every process of `uid` until none remain (bounded by RLIMIT_NPROC)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _wait(proc: subprocess.Popen, timeout_s: float) -> int:
    """proc.wait(timeout_s), woken exactly at exit through a pidfd where available.

    ``Popen.wait(timeout=...)`` polls with sleeps of up to 50 ms, which would dominate the
    cost of a short run.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout_s)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0, int(timeout_s * 1000))):
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
    finally:
        os.close(pidfd)
    return proc.wait()


def _tail(f, limit: int) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - limit))
    return f.read().decode("utf-8", errors="replace")


def run_tests(program: str, tests: list[str], config: SandboxConfig | None = None
              ) -> SandboxResult:
    """Runs `program`, then each test statement block in its namespace, sandboxed.

    Args:
      program: Python source. Executed with ``__name__ == "solution"`` (so an
        ``if __name__ == "__main__":`` block does not run) and stdin = /dev/null.
      tests: Python source blocks, typically ``assert`` statements, each run after the
        program in the program's namespace; a block passes iff it raises nothing.
      config: limits; defaults to ``SandboxConfig()``.

    Returns:
      A :class:`SandboxResult`; ``passed`` has one entry per test. Nothing raises for bad
      programs: every failure mode is a False entry.
    """
    config = config or SandboxConfig()
    if not isinstance(program, str) or not all(isinstance(t, str) for t in tests):
        raise TypeError("program and every test must be str")
    python, isolated = sandbox_python(config.python)
    isolated = isolated and config.isolate
    uid = _next_uid() if isolated else None
    nonce = secrets.token_hex(16)
    limits = [
        ("RLIMIT_CPU", int(config.cpu_s)),
        ("RLIMIT_AS", int(config.memory_mb) << 20),
        ("RLIMIT_FSIZE", int(config.file_size_mb) << 20),
        ("RLIMIT_CORE", 0),
    ]
    if isolated:  # NPROC counts processes of the real uid: only meaningful for our own uid.
        limits.append(("RLIMIT_NPROC", int(config.max_procs)))
    global _run_count
    with _uid_lock:
        _run_count += 1
        sweep = _run_count % 256 == 1
    if sweep:
        remove_orphaned_dirs(config.tmp_dir)
    workdir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}_", dir=config.tmp_dir)
    start = time.monotonic()
    timed_out = False
    returncode = None
    with (tempfile.TemporaryFile() as stdin_f, tempfile.TemporaryFile() as verdict_f,
          tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f):
        try:
            vfd = verdict_f.fileno()
            stdin_f.write(marshal.dumps({
                "vfd": vfd, "nonce": nonce, "program": program, "tests": list(tests),
                "limits": limits, "block_sockets": not isolated,
            }))
            stdin_f.seek(0)
            cmd = [python, "-I", "-S", "-c", _HARNESS]
            if isolated:
                os.chown(workdir, uid, uid)
                cmd = _isolation_prefix(uid) + cmd
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir,
                   "TMPDIR": workdir, "PYTHONDONTWRITEBYTECODE": "1"}
            proc = subprocess.Popen(cmd, stdin=stdin_f, stdout=out_f, stderr=err_f,
                                    cwd=workdir, env=env, pass_fds=(vfd,),
                                    start_new_session=True)
            try:
                returncode = _wait(proc, config.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                if isolated:
                    # Kill the run's uid first: its init (the harness) dying tears down the
                    # PID namespace, and `unshare`, still alive, reaps it (no zombie left
                    # for the host's init).
                    _kill_uid(uid)
                try:
                    proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
            verdict_f.seek(0)
            records = verdict_f.read().decode("utf-8", errors="replace").splitlines()
            stdout = _tail(out_f, config.max_output_bytes)
            stderr = _tail(err_f, config.max_output_bytes)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = time.monotonic() - start

    passed = [False] * len(tests)
    failed = [False] * len(tests)
    program_ok = False
    for line in records:
        parts = line.split(" ")
        if len(parts) != 4 or parts[0] != nonce:
            continue  # not written by the harness
        _, kind, idx, status = parts
        if kind == "program" and status == "ok":
            program_ok = True
        elif kind == "test" and idx.isdigit() and int(idx) < len(tests):
            if status == "pass":
                passed[int(idx)] = True
            else:
                failed[int(idx)] = True
    # A pass needs the program to have finished, and a test with both records (impossible
    # from the harness alone) counts as failed.
    passed = [p and not f and program_ok for p, f in zip(passed, failed, strict=True)]
    if timed_out:
        error = f"timed out after {config.timeout_s:g}s"
    elif not program_ok:
        error = "program did not complete" + (f" (exit {returncode})" if returncode else "")
    else:
        error = ""
    return SandboxResult(
        passed=tuple(passed), program_ok=program_ok, timed_out=timed_out,
        returncode=returncode, stdout=stdout, stderr=stderr, error=error, wall_s=wall,
        network_isolated=isolated, pid_isolated=isolated,
    )
