"""Run untrusted model-written Python against unit tests, isolated from the host.

One call to :func:`run_tests` runs one program in a fresh child process tree. At isolation
level "full" (the default; where the machine cannot give it, see **Isolation levels**
below) the run gets:

* **namespaces**: ``unshare --net --pid --ipc --mount --fork --mount-proc`` gives the child
  an empty network namespace (no interfaces, not even loopback: every connect fails), its
  own IPC namespace, and its own PID namespace, whose init is the harness. When the harness
  exits or is killed the kernel SIGKILLs every process left in the namespace, so
  double-forked background processes cannot outlive the run.
* **its own filesystem** (a private mount namespace; the harness builds it as root, then
  drops to the run's uid, see :mod:`lrmjax.rewards.sandbox_harness`): every mount is
  remounted read-only and nosuid; one tmpfs of ``tmpfs_mb`` MiB (``tmpfs_inodes`` inodes)
  is the run's only writable storage, bound on ``/tmp`` (the working directory, HOME and
  TMPDIR), ``/var/tmp`` and ``/dev/shm``: one quota for all its writes, invisible to the
  host and to other runs, gone when the run ends (nothing it writes lands on host disk or
  in host memory beyond that quota). ``/proc`` is the PID namespace's own, listing only
  the run's processes. ``/sys`` and device nodes such as ``/dev/null`` stay visible
  (read-only mounts; the uid has no rights on the rest of ``/dev``).
* **unprivileged uid**: the child runs as a fresh uid (no passwd entry, no groups, no
  capabilities, ``no_new_privs`` so setuid binaries grant nothing), unique among concurrent
  runs. We run as root, and RLIMIT_NPROC is not enforced for root; as an
  ordinary uid the fork-bomb limit applies, and per-run uids keep one run's fork bomb from
  eating another's process budget. The uid also cannot signal host processes.
* **resource limits** (set by the harness before the program runs): RLIMIT_CPU,
  RLIMIT_AS (memory), RLIMIT_FSIZE (largest file), RLIMIT_NPROC, RLIMIT_CORE=0.
* **wall clock**: the host kills the whole tree (process group, then every process of the
  run's uid) once ``timeout_s`` passes.
* **scrubbed environment** (PATH, LANG, HOME/TMPDIR) and a fresh directory (prefix
  ``lrmjax_sbx_``, the tmpfs's mount point at level "full", the working directory at level
  "none") removed afterwards.
* ``setpriv --pdeathsig KILL`` plus a re-armed parent-death signal in the harness: if the
  calling process dies (e.g. a hung reward worker is killed) the run dies with it.

**Verdict: judged outside.** Tests are assertions ``assert name(<literals>) == <literal>``,
parsed here with ``ast`` (:mod:`lrmjax.rewards.sandbox_verdict`; any other shape is refused
with ValueError before anything runs). The harness receives the program and only the calls
(function name and literal arguments) on stdin (an unlinked file, replaced by /dev/null
before the program runs); the expected values stay in this process. After the program's
top level completes, the harness calls each function and writes its result on an inherited
unlinked file (the channel) as tagged JSON of exact builtin types; an object of any other
type (an always-equal object, an int subclass with a forged ``__eq__``) cannot be encoded
and its call fails. This process decodes the channel into its own plain objects and
compares them with the expected values. The untrusted side holds no secret and nothing
that decides the verdict, so frame walking, ``gc`` scans, trace functions, patched builtins
(``json``, ``print``, ``sys.stdout``...), printed markers, early exits and forged or
rewritten channel contents (before, after, from atexit or a thread) can at most claim
results the program could have returned: a wrong claim fails, and a malformed channel, a
duplicate record or a missing one fails. A run that does not end cleanly fails every test,
whatever was recorded: a timeout (e.g. correct answers, then a non-daemon thread that never
ends), a crash or kill, a nonzero exit status, or stdout/stderr reaching the
``file_size_mb`` cap.

**Limits of the guarantee** (stated, not hidden): a program that can compute the right
results scores, however it writes them; the test inputs are not secret (the program can read
the calls from the harness's memory), only the expected values never leave this process.
Comparison is Python ``==`` on builtins, as the assertion reads (``1 == 1.0 == True``;
``(1,) != [1]``; floats exact). Only plain function calls are testable by assertion (no
methods). :func:`run_io_tests` runs standard-input tests instead: one run per case, the
program as ``__main__`` with the case's input on stdin, its whole stdout compared here. The
sandbox defends the host and the verdict against the program; it does not judge whether the
tests are good.

The sandbox interpreter must be executable by the unprivileged uid (a pyenv build under
``/root`` is not): :func:`probe_isolation` picks the first candidate that a probe run
accepts (``SandboxConfig.python``, ``sys.executable``, ``/usr/bin/python3``).

**Isolation levels.** Everything above is level ``"full"``. It needs root (namespaces,
mounts and setuid) and util-linux ``unshare`` and ``setpriv`` on the sandbox's PATH
(``/usr/bin:/bin``); :func:`probe_isolation` checks once per process and names what is
missing. Without them the only level is ``"none"``: the program runs as a plain child
process of the caller, with the resource limits (but no RLIMIT_NPROC: it would count the
caller's own processes), the wall clock (killing its process group only: a program that
calls ``setsid()`` escapes it), the scrubbed environment, the temporary directory and the
verdict channel, but **with the caller's uid** (it can read, write and delete whatever the
caller can, signal the caller's processes and read their ``/proc/<pid>/environ``), **the
host network** (only an audit hook refuses Python's ``socket.*`` calls; ``ctypes`` or a
subprocess such as ``curl`` bypass it), **no PID namespace** (background processes can
outlive the run) and **the host's filesystem** (no quota beyond RLIMIT_FSIZE per file; files
outside the run's directory outlive it; ``/proc`` lists host processes). So ``run_tests``
refuses level "none" (:class:`SandboxUnavailableError`, before anything runs) unless
``SandboxConfig.allow_unisolated=True``; ``SandboxConfig.isolate=False`` asks for level
"none" on purpose (debugging) and is not refused. :func:`isolation_in_force` returns the
level a config gets and logs it once per process (a warning for "none", info for "full").
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from lrmjax.rewards.sandbox_harness import HARNESS
from lrmjax.rewards.sandbox_verdict import (
    Check,
    Verdict,
    check_compare,
    judge,
    outputs_match,
    parse_test,
)

log = logging.getLogger(__name__)

TMP_PREFIX = "lrmjax_sbx_"
# PATH of every sandbox process, `setpriv` and `unshare` included (subprocess resolves a bare
# command name on the child's PATH, not the caller's).
SANDBOX_PATH = "/usr/bin:/bin"
FULL, NONE = "full", "none"
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
      max_procs: RLIMIT_NPROC for the run's uid (harness included; level "full" only).
      max_output_bytes: bytes of stdout/stderr tail kept in the result.
      tmpfs_mb: level "full": size of the run's one tmpfs, the quota for everything it
        writes (/tmp, /var/tmp, /dev/shm together); the rest of the filesystem is read-only.
      tmpfs_inodes: level "full": the most files and directories the run may create.
      python: interpreter to run; None picks one (see :func:`probe_isolation`).
      tmp_dir: parent of the per-run temporary directories (None = the system default).
      isolate: True (default): level "full" (namespaces + a dropped uid), and where the
        machine cannot give it, refuse to run unless `allow_unisolated`. False: level
        "none" on purpose, a plain child process (new session, limits, timeout, audit-hook
        socket block; see the module docstring for what that does not stop): for debugging
        only, never refused.
      allow_unisolated: with `isolate`, run at level "none" (with a logged warning) where
        the machine cannot isolate, instead of raising SandboxUnavailableError.
    """

    timeout_s: float = 5.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_procs: int = 32
    max_output_bytes: int = 4096
    tmpfs_mb: int = 64
    tmpfs_inodes: int = 4096
    python: str | None = None
    tmp_dir: str | None = None
    isolate: bool = True
    allow_unisolated: bool = False


@dataclasses.dataclass(frozen=True)
class Isolation:
    """The isolation level of sandboxed runs (see the module docstring).

    Attributes:
      level: FULL ("full": network, PID, IPC and mount namespaces, a private tmpfs, a
        read-only rest of the filesystem and a fresh unprivileged uid per run)
        or NONE ("none": a plain child process with the caller's uid and network).
      python: the interpreter runs use.
      missing: why the level is not FULL, naming the missing capability ("" when FULL).
    """

    level: str
    python: str
    missing: str = ""

    @property
    def isolated(self) -> bool:
        return self.level == FULL


class SandboxUnavailableError(RuntimeError):
    """Raised before anything runs when isolation is required but unavailable."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one run.

    ``passed[i]`` is True iff the harness recorded test i as passing (missing record =
    fail) and the run ended cleanly (no timeout, exit status 0, output under the cap).
    ``program_ok`` is True iff the program's top level ran to completion.
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


def uid_range(pid: int) -> range:
    """The uids that runs started by process `pid` use (for leak checks)."""
    return range(_UID_BASE + pid * 64, _UID_BASE + pid * 64 + 64)


def _next_uid() -> int:
    global _uid_counter
    with _uid_lock:
        _uid_counter = (_uid_counter + 1) % 64
        return _UID_BASE + os.getpid() * 64 + _uid_counter


def _probe(python: str) -> str:
    """One isolated run with `python` of a program that imports stdlib modules after the
    uid drop; returns "" if it passed, else why."""
    config = SandboxConfig(timeout_s=30.0, cpu_s=30, file_size_mb=1)
    try:
        r = _run(python, True, "import json, math\ndef f():\n    return 1\n",
                 [parse_test("assert f() == 1")], config)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if r.all_passed:
        return ""
    err = r.stderr.strip().splitlines()
    return f"{r.error or 'test failed'}: {err[-1] if err else 'no output'}"


def _isolation_prefix() -> list[str]:
    # The harness starts as root in these namespaces, builds the run's filesystem, then drops
    # to the run's uid itself (sandbox_harness._setup_isolation).
    return ["setpriv", "--pdeathsig", "KILL", "unshare", "--net", "--pid", "--ipc", "--mount",
            "--propagation", "private", "--fork", "--kill-child", "--mount-proc"]


@functools.lru_cache(maxsize=8)
def probe_isolation(preferred: str | None = None) -> Isolation:
    """The isolation this process can give runs, probed once per process (cached).

    Args:
      preferred: interpreter to try first (``SandboxConfig.python``).

    Returns:
      FULL with the first candidate interpreter (`preferred`, ``sys.executable``,
      ``/usr/bin/python3``, ``/usr/local/bin/python3``) that runs under ``setpriv ...
      unshare --net --pid --ipc --mount --fork --mount-proc`` (a probe run of the harness,
      building the run's filesystem and dropping its uid); else NONE with (`preferred` or
      ``sys.executable``) and the missing capability: not root, ``unshare``/``setpriv``
      not on SANDBOX_PATH, or each candidate's failure (e.g. unshare's stderr).
    """
    fallback = preferred or sys.executable
    euid = os.geteuid()
    if euid != 0:
        return Isolation(NONE, fallback, f"not root (euid {euid}): the sandbox needs root to "
                         "create network/PID namespaces and switch to an unprivileged uid")
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool, path=SANDBOX_PATH) is None:
            return Isolation(NONE, fallback,
                             f"`{tool}` (util-linux) not found on PATH {SANDBOX_PATH}")
    candidates = dict.fromkeys(p for p in (preferred, sys.executable, "/usr/bin/python3",
                                           "/usr/local/bin/python3") if p)
    failures = []
    for python in candidates:
        if not os.path.exists(python):
            continue
        why = _probe(python)
        if not why:
            return Isolation(FULL, python)
        failures.append(f"{python}: {why}")
    return Isolation(NONE, fallback, "no interpreter runs under `setpriv --pdeathsig KILL "
                     "unshare --net --pid --ipc --mount --fork --mount-proc` as a dropped uid: "
                     + ("; ".join(failures) or f"none of {list(candidates)} exists"))


_reported: set[Isolation] = set()


def isolation_in_force(config: SandboxConfig) -> Isolation:
    """The isolation :func:`run_tests` gives under `config`; raises instead of running without.

    Args:
      config: ``isolate`` and ``allow_unisolated`` decide (see :class:`SandboxConfig`).

    Returns:
      :func:`probe_isolation` of ``config.python`` when ``config.isolate``; else NONE with
      ``missing`` = "SandboxConfig.isolate=False". Each distinct result is logged once per
      process: a warning for NONE, info for FULL.

    Raises:
      SandboxUnavailableError: ``config.isolate``, the machine cannot isolate, and not
        ``config.allow_unisolated``. The message names the missing capability.
    """
    probed = probe_isolation(config.python)
    if not config.isolate:
        # The interpreter stays the one the probe picked, as before the levels existed.
        iso = Isolation(NONE, probed.python, "SandboxConfig.isolate=False (debugging)")
    elif not probed.isolated and not config.allow_unisolated:
        raise SandboxUnavailableError(
            f"sandbox isolation unavailable: {probed.missing}. Without it, model-written "
            "programs would run as a plain child process with this process's uid and network "
            "and no PID namespace. Run as root with util-linux `unshare` and `setpriv` in "
            f"{SANDBOX_PATH}, or accept that with SandboxConfig(allow_unisolated=True).")
    else:
        iso = probed
    with _uid_lock:
        first = iso not in _reported
        _reported.add(iso)
    if first and iso.isolated:
        log.info("sandbox: full isolation (network, PID, mount namespaces, own tmpfs, a "
                 "fresh uid per run), "
                 "interpreter %s", iso.python)
    elif first:
        log.warning("sandbox: running model-written programs UNISOLATED (plain child process "
                    "with this process's uid, network and filesystem, no PID namespace): %s",
                    iso.missing)
    return iso


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
    """Runs `program`, then the calls of each test, sandboxed; judges the results here.

    Args:
      program: Python source. Executed with ``__name__ == "solution"`` (so an
        ``if __name__ == "__main__":`` block does not run) and stdin = /dev/null.
      tests: each a block of assertions ``assert name(<literals>) == <literal>`` (see
        :func:`lrmjax.rewards.sandbox_verdict.parse_test`); the calls run after the program
        in its namespace, and a test passes iff each call returned (as plain data) a value
        ``==`` its expected value, compared in this process.
      config: limits; defaults to ``SandboxConfig()``.

    Returns:
      A :class:`SandboxResult`; ``passed`` has one entry per test. Nothing raises for bad
      programs: every failure mode is a False entry.

    Raises:
      TypeError: `program` or a test is not a str.
      ValueError: a test is not of the accepted shape (naming it); nothing has run.
      SandboxUnavailableError: isolation is required but unavailable (see
        :func:`isolation_in_force`); nothing has run.
    """
    config = config or SandboxConfig()
    if not isinstance(program, str) or not all(isinstance(t, str) for t in tests):
        raise TypeError("program and every test must be str")
    checks = []
    for i, test in enumerate(tests):
        try:
            checks.append(parse_test(test))
        except ValueError as e:
            raise ValueError(f"test {i}: {e}") from None
    iso = isolation_in_force(config)  # raises before anything runs if isolation is missing
    return _run(iso.python, iso.isolated, program, checks, config)


def run_io_tests(program: str, cases: list[tuple[str, str]], config: SandboxConfig | None = None,
                 compare: str = "whitespace", float_tol: float = 1e-6) -> SandboxResult:
    """Standard-input tests: one sandboxed run of `program` per (input, expected output) case.

    The program runs as ``__main__`` with the input on stdin; the case passes iff the run
    ends cleanly (exit status 0, no timeout, output under the cap) and its whole stdout
    matches the expected output under `compare` (see
    :func:`lrmjax.rewards.sandbox_verdict.outputs_match`), judged here. Returns one
    SandboxResult: ``passed`` per case, ``timed_out`` if any run timed out, ``program_ok``
    if every run exited 0, stdout/stderr/error of the first failing case (else the last).
    """
    config = config or SandboxConfig()
    if not isinstance(program, str) or not all(
            isinstance(i, str) and isinstance(o, str) for i, o in cases):
        raise TypeError("program, every input and every expected output must be str")
    check_compare(compare)
    iso = isolation_in_force(config)
    runs = [_run(iso.python, iso.isolated, program, [], config, stdin=i) for i, _ in cases]
    passed = tuple(r.program_ok and r.returncode == 0 and not r.error
                   and outputs_match(r.stdout, o, compare, float_tol)
                   for r, (_, o) in zip(runs, cases, strict=True))
    shown = next((r for r, p in zip(runs, passed, strict=True) if not p), runs[-1])
    return dataclasses.replace(
        shown, passed=passed, program_ok=all(r.returncode == 0 for r in runs),
        timed_out=any(r.timed_out for r in runs), wall_s=sum(r.wall_s for r in runs))


def run_program(program: str, config: SandboxConfig | None = None, stdin: str = ""
                ) -> SandboxResult:
    """Runs `program` once, sandboxed, as ``__main__`` with `stdin`; judges nothing.

    For tools that show a program's output to a model (``lrmjax.envs.tools``). Returns the
    run's SandboxResult: ``passed`` is empty; ``stdout`` is all of it (up to the
    ``file_size_mb`` cap), ``stderr`` its tail; ``timed_out``, ``returncode`` and ``error``
    as for :func:`run_io_tests`.

    Raises:
      TypeError: `program` or `stdin` is not a str.
      SandboxUnavailableError: isolation is required but unavailable; nothing has run.
    """
    config = config or SandboxConfig()
    if not isinstance(program, str) or not isinstance(stdin, str):
        raise TypeError("program and stdin must be str")
    iso = isolation_in_force(config)
    return _run(iso.python, iso.isolated, program, [], config, stdin=stdin)


def _run(python: str, isolated: bool, program: str, tests: list[tuple[Check, ...]],
         config: SandboxConfig, stdin: str | None = None) -> SandboxResult:
    """One run of `program` and `tests` with `python`, at level "full" iff `isolated`; with
    `stdin`, the program runs as ``__main__`` on that input and the result's stdout is all
    of it (up to the cap) instead of a tail."""
    uid = _next_uid() if isolated else None
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
                "vfd": vfd, "program": program,
                "calls": [c.call() for checks in tests for c in checks],
                "limits": limits, "block_sockets": not isolated, "stdin": stdin,
                "isolation": None if not isolated else {
                    "uid": uid, "root": workdir, "tmpfs_mb": int(config.tmpfs_mb),
                    "inodes": int(config.tmpfs_inodes)},
            }))
            stdin_f.seek(0)
            cmd = [python, "-I", "-S", "-c", HARNESS]
            if isolated:
                cmd = _isolation_prefix() + cmd
            home = "/tmp" if isolated else workdir  # isolated: /tmp is the run's own tmpfs
            env = {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "HOME": home,
                   "TMPDIR": home, "PYTHONDONTWRITEBYTECODE": "1"}
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
            channel = verdict_f.read()
            # RLIMIT_FSIZE truncates output at the cap (Python ignores SIGXFSZ: the write
            # fails and the run goes on), so output that reached the cap was cut short.
            cap = int(config.file_size_mb) << 20
            over_cap = max(os.fstat(out_f.fileno()).st_size,
                           os.fstat(err_f.fileno()).st_size) >= cap
            stdout = _tail(out_f, cap if stdin is not None else config.max_output_bytes)
            stderr = _tail(err_f, config.max_output_bytes)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = time.monotonic() - start

    # Standard-input runs: the caller judges stdout; the program completed iff it exited 0.
    verdict = judge(channel, tests) if stdin is None else Verdict((), returncode == 0)
    program_ok = verdict.program_ok
    # A pass needs the program to have finished and the whole run to have ended cleanly: a
    # timeout, a crash, a kill or a nonzero exit after the tests ran, or output past the cap,
    # fails every test.
    clean = not timed_out and returncode == 0 and not over_cap
    passed = [p and clean for p in verdict.passed]
    if timed_out:
        error = f"timed out after {config.timeout_s:g}s"
    elif verdict.error:
        error = verdict.error
    elif not program_ok:
        error = "program did not complete" + (f" (exit {returncode})" if returncode else "")
    elif returncode != 0:
        error = f"run ended with exit status {returncode}"
    elif over_cap:
        error = f"output reached the {config.file_size_mb} MiB cap"
    else:
        error = ""
    return SandboxResult(
        passed=tuple(passed), program_ok=program_ok, timed_out=timed_out,
        returncode=returncode, stdout=stdout, stderr=stderr, error=error, wall_s=wall,
        network_isolated=isolated, pid_isolated=isolated,
    )
