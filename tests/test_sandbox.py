"""Tests for lrmjax.rewards.sandbox: hostile programs end with reward 0, bounded time, and
the host unharmed; honest programs pass. Hostile programs run in parallel in one fixture."""

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lrmjax.rewards import sandbox
from lrmjax.rewards import sandbox_verdict as verdict
from lrmjax.rewards.sandbox import SandboxConfig, run_tests

# Per-module root for run directories, world-traversable like /tmp, so leak checks only see
# this module's runs (other test processes may run sandboxes concurrently under xdist).
ROOT = tempfile.mkdtemp(prefix="lrmjax_test_sbxroot_")
os.chmod(ROOT, 0o755)
FAST = SandboxConfig(timeout_s=2.0, cpu_s=2, memory_mb=512, file_size_mb=8, max_procs=16,
                     tmp_dir=ROOT)
SECRET = "hunter2-lrmjax-fake-secret"
TESTS_ADD = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]

needs_isolation = pytest.mark.skipif(
    not sandbox.probe_isolation().isolated,
    reason=f"sandbox isolation unavailable here: {sandbox.probe_isolation().missing}")


@pytest.fixture(scope="module", autouse=True)
def _remove_root():
    yield
    os.rmdir(ROOT)  # fails (rightly) if a run left its directory behind


def _sandbox_dirs() -> set[str]:
    return {e for e in os.listdir(ROOT) if e.startswith(sandbox.TMP_PREFIX)}


def _sandbox_pids() -> list[int]:
    """Live processes owned by the sandbox uids of runs started by this process."""
    uids = sandbox.uid_range(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid not in uids:
                continue
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            pids.append(int(entry))
    return pids


def _cmdline_pids(needle: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle.encode() in f.read():
                        out.append(int(entry))
            except OSError:
                pass
    return out


ADD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a + b + 1\n"

# Classes 1 and 2: programs written against the harness. Each forges what a judge inside the
# program's interpreter would trust: pass records (with the old harness's secret nonce, found
# in its memory) and, for a judge that trusted the child's results, results claiming True.
FORGE = (
    "import gc, os, sys, time\n"
    "def _forge(vfd, nonce, n, truncate=False):\n"
    "    if nonce:\n"
    "        lines = ['%s program 0 ok' % nonce] + ['%s test %d pass' % (nonce, i)"
    " for i in range(n)]\n"
    "    else:\n"
    "        lines = ['[\"program\",\"ok\"]'] + ['[%d,\"ok\",[\"b\",1]]' % i for i in range(n)]\n"
    "    data = ('\\n'.join(lines) + '\\n').encode()\n"
    "    if truncate:  # replace what the harness wrote\n"
    "        os.pwrite(vfd, data, 0)\n        os.ftruncate(vfd, len(data))\n"
    "    else:\n        os.write(vfd, data)\n"
    "def _cfg():\n"
    "    for o in gc.get_objects():\n"
    "        if type(o) is dict and 'vfd' in o and ('nonce' in o or 'calls' in o):\n"
    "            return o['vfd'], o.get('nonce'), len(o.get('tests') or o.get('calls'))\n")

HOSTILE = {
    "infinite_loop": ADD + "while True:\n    pass\n",
    "fork_bomb": ADD + (
        "import os\n"
        "while True:\n"
        "    try:\n        os.fork()\n"
        "    except OSError:\n        pass\n"),
    "alloc_20gb": ADD + "x = bytearray(20 * 1024 ** 3)\n",
    "write_10gb": ADD + (
        "block = b'\\0' * (1 << 20)\n"
        "with open('big.bin', 'wb') as f:\n"
        "    for _ in range(10 * 1024):\n        f.write(block)\n"),
    "socket": ADD + (
        "import socket\n"
        "s = socket.create_connection(('127.0.0.1', PORT), timeout=1)\n"
        "s.sendall(b'exfiltrate')\n"),
    "read_env": (
        "import os\n"
        "found = [v for v in os.environ.values() if 'hunter2' in v]\n"
        "for p in os.listdir('/proc'):\n"
        "    try:\n"
        "        data = open('/proc/%s/environ' % p, 'rb').read()\n"
        "        if b'hunter2' in data:\n            found.append(data.decode(errors='replace'))\n"
        "    except Exception:\n        pass\n"
        "print('FOUND', found)\n"
        "def add(a, b):\n    assert found, 'no secret'\n    return a + b\n"),
    # Tries to take the grader down (hoping a dead grader means no failures), then submits
    # a wrong answer: the grader must survive and still judge.
    "kill_parent": (
        "import os\n"
        "for sig_target in [os.getppid()] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    if sig_target != os.getpid():\n"
        "        try:\n            os.kill(sig_target, 9)\n"
        "        except Exception:\n            pass\n"
        "def add(a, b):\n    return a + b + 1\n"),
    "delete_outside": ADD + (
        "import os, shutil\n"
        "for fn in (lambda: os.remove(SENTINEL), lambda: shutil.rmtree(os.path.dirname(SENTINEL)),"
        " lambda: open(SENTINEL, 'w').close()):\n"
        "    try:\n        fn()\n"
        "    except Exception:\n        pass\n"
        "raise SystemExit(0)\n"),
    "background": ADD + (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['sleep', '61.2345'])\n"
        "    os._exit(0)\n"
        "def add(a, b):\n    return a - b\n"),
    "sys_exit_0": "import sys\nsys.exit(0)\n" + ADD,
    "os_exit_0": "import os\nos._exit(0)\n" + ADD,
    "fake_marker": (
        "import os, sys\n"
        "print('PASS\\nAll tests passed\\nOK', flush=True)\n"
        "for fd in range(0, 256):\n"
        "    for i in range(3):\n"
        "        for line in ('%s test %d pass\\n' % ('0' * 32, i), 'test %d pass\\n' % i):\n"
        "            try:\n                os.write(fd, line.encode())\n"
        "            except OSError:\n                pass\n"
        "os._exit(0)\n"),
    "patch_builtins": (
        "import builtins\n"
        "class Fake(Exception):\n    pass\n"
        "builtins.AssertionError = Fake\n"
        "builtins.BaseException = Fake\n"
        "builtins.Exception = Fake\n"
        "builtins.exec = lambda *a, **k: None\n"
        "builtins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n"
        "builtins.enumerate = lambda xs: []\n"
        "import os\nos.write = lambda fd, data: len(data)\n"
        "def add(a, b):\n    return a + b + 1\n"),
    # Class 1: reach the harness from the program.
    "frame_walk": FORGE + WRONG + (
        "f = sys._getframe()\n"
        "while f is not None:\n"
        "    if 'vfd' in f.f_locals and ('nonce' in f.f_locals or 'calls' in f.f_locals):\n"
        "        L = f.f_locals\n"
        "        _forge(L['vfd'], L.get('nonce'), len(L.get('tests') or L.get('calls')))\n"
        "        os._exit(0)\n"
        "    f = f.f_back\n"),
    "gc_scan": FORGE + WRONG + "_forge(*_cfg())\nos._exit(0)\n",
    "settrace": FORGE + WRONG + (
        "def _tr(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'emit':\n"
        "        L = frame.f_locals\n"
        "        if L.get('kind') == 'test':\n            L['status'] = 'pass'\n"
        "        if 'line' in L and L['line'][:1] == '[' and 'program' not in L['line']:\n"
        "            L['line'] = L['line'].split(',')[0] + ',\"ok\",[\"b\",1]]'\n"
        "    return _tr\n"
        "sys.settrace(_tr)\n"),
    # Class 1: rewrite the channel after the harness wrote it (at exit; from a thread).
    "truncate_channel_at_exit": FORGE + WRONG + (
        "import atexit\ncfg = _cfg()\natexit.register(lambda: _forge(*cfg, truncate=True))\n"),
    "thread_rewrites_channel": FORGE + WRONG + (
        "import threading\n"
        "vfd, nonce, n = _cfg()\n"
        "def _later():\n"
        "    end = time.time() + 1.0\n"
        "    while time.time() < end and len(os.pread(vfd, 1 << 16, 0).splitlines()) < n + 1:\n"
        "        time.sleep(0.005)\n"
        "    _forge(vfd, nonce, n, truncate=True)\n"
        "threading.Thread(target=_later).start()\n"),
    "daemon_writes_later": FORGE + WRONG + (
        "import threading\n"
        "vfd, nonce, n = _cfg()\n"
        "def _later():\n"
        "    while len(os.pread(vfd, 1 << 16, 0).splitlines()) < n + 1:\n"
        "        pass\n"
        "    _forge(vfd, nonce, n, truncate=True)\n"
        "threading.Thread(target=_later, daemon=True).start()\n"
        "import atexit\natexit.register(time.sleep, 0.05)\n"),  # time for the daemon to win
    # Forged records carrying the right answers (read from the harness's memory, computed
    # by the program) but written beside the harness's own: duplicates fail the channel.
    "forge_right_answers_before": WRONG + (
        "import gc, os\n"
        "for o in gc.get_objects():\n"
        "    if type(o) is dict and 'calls' in o and 'vfd' in o:\n"
        "        lines = ['[\"program\",\"ok\"]'] + ['[%d,\"ok\",[\"i\",\"%x\"]]' % (j, sum(a))"
        " for j, (_, a, _) in enumerate(o['calls'])]\n"
        "        os.write(o['vfd'], ('\\n'.join(lines) + '\\n').encode())\n"),
    # Class 2: results that compare equal to anything.
    "always_equal": (
        "class AlwaysEqual:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return AlwaysEqual()\n"),
    "int_subclass": (
        "class Int(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return Int(a + b + 1)\n"),
    "patch_json_print_stdout": WRONG + (
        "import builtins, io, json, sys\n"
        "json.dumps = lambda *a, **k: '[0,\"ok\",[\"b\",1]]'\n"
        "json.loads = lambda *a, **k: True\n"
        "builtins.print = lambda *a, **k: None\n"
        "sys.stdout = io.StringIO()\n"
        "builtins.type = lambda *a: int\n"
        "builtins.format = lambda *a: '3'\n"
        "builtins.getattr = lambda *a: (lambda *b, **k: 3)\n"),
    # Class 3: correct answers, then the run does not end cleanly. Each fails every test.
    "non_daemon_thread": ADD + (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(1000,)).start()\n"),
    "crash_after_tests": ADD + (
        "import atexit, ctypes\n"
        "atexit.register(ctypes.string_at, 0)\n"),  # SIGSEGV at exit
    "exit_3_after_tests": ADD + "import atexit, os\natexit.register(os._exit, 3)\n",
    "output_over_cap": ADD + (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stdout.write('x' * (9 << 20)))\n"),
}


@pytest.fixture(scope="module")
def hostile_results():
    """Runs every hostile program concurrently; returns name -> (result, context)."""
    dirs_before, pids_before = _sandbox_dirs(), _sandbox_pids()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.setblocking(False)
    port = server.getsockname()[1]
    sentinel_dir = tempfile.mkdtemp(prefix="lrmjax_test_sentinel_")
    sentinel = os.path.join(sentinel_dir, "keep.txt")
    with open(sentinel, "w") as f:
        f.write("precious")
    decoy = subprocess.Popen(["sleep", "30"])
    os.environ["LRMJAX_FAKE_SECRET"] = SECRET
    programs = {
        k: v.replace("PORT", str(port)).replace("SENTINEL", repr(sentinel))
        for k, v in HOSTILE.items()
    }
    try:
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(programs)) as ex:
            futs = {k: ex.submit(run_tests, p, TESTS_ADD, FAST) for k, p in programs.items()}
            results = {k: f.result() for k, f in futs.items()}
        total = time.monotonic() - start
        try:
            server.accept()
            accepted = True
        except BlockingIOError:
            accepted = False
        ctx = dict(accepted=accepted, sentinel=sentinel, decoy_alive=decoy.poll() is None,
                   total_s=total, dirs_before=dirs_before, pids_before=pids_before,
                   sleepers=_cmdline_pids("61.2345"))
        yield results, ctx
    finally:
        del os.environ["LRMJAX_FAKE_SECRET"]
        decoy.send_signal(signal.SIGKILL)
        decoy.wait()
        server.close()
        for p in (sentinel,):
            if os.path.exists(p):
                os.remove(p)
        os.rmdir(sentinel_dir)


@needs_isolation
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_scores_zero(hostile_results, name):
    results, ctx = hostile_results
    r = results[name]
    assert r.passed == (False, False, False), (name, r)
    assert r.pass_fraction == 0.0
    # Bounded by the wall-clock limit plus cleanup (slack for a loaded 2-core machine).
    assert r.wall_s < FAST.timeout_s + 10.0, (name, r.wall_s)


@needs_isolation
def test_hostile_batch_bounded_and_host_unharmed(hostile_results):
    results, ctx = hostile_results
    # All ran concurrently; each is bounded by the 2 s wall clock plus cleanup.
    assert ctx["total_s"] < 60.0
    assert results["infinite_loop"].timed_out and results["fork_bomb"].timed_out
    assert results["non_daemon_thread"].timed_out and results["non_daemon_thread"].program_ok
    assert results["crash_after_tests"].returncode != 0
    assert results["exit_3_after_tests"].returncode == 3
    assert "cap" in results["output_over_cap"].error
    assert not ctx["accepted"], "a sandboxed program reached a host socket"
    assert results["socket"].network_isolated
    assert ctx["decoy_alive"], "a sandboxed program killed a host process"
    assert results["kill_parent"].program_ok  # the harness survived the kill attempts
    with open(ctx["sentinel"]) as f:
        assert f.read() == "precious"
    assert SECRET not in results["read_env"].stdout
    assert "FOUND []" in results["read_env"].stdout  # it ran and found nothing
    assert "All tests passed" in results["fake_marker"].stdout  # printed, yet scored 0
    assert "MemoryError" in results["alloc_20gb"].stderr


@needs_isolation
def test_no_leaks_after_hostile_batch(hostile_results):
    _, ctx = hostile_results
    assert ctx["sleepers"] == [], "a double-forked background process outlived its run"
    assert ctx["dirs_before"] == set() and _sandbox_dirs() == set()
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), "big.bin"))
    deadline = time.monotonic() + 2.0
    while _sandbox_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_pids() == []


@needs_isolation
def test_correct_program_passes():
    r = run_tests(ADD, TESTS_ADD, FAST)
    assert r.passed == (True, True, True) and r.all_passed and r.pass_fraction == 1.0
    assert r.program_ok and not r.timed_out and r.network_isolated and r.pid_isolated


@needs_isolation
def test_partially_correct_program_gets_fraction():
    prog = "def add(a, b):\n    return a + b if a != 2 else 5\n"
    r = run_tests(prog, TESTS_ADD, FAST)
    assert r.passed == (True, True, False)
    assert r.pass_fraction == pytest.approx(2 / 3) and not r.all_passed


@needs_isolation
def test_tests_are_independent_and_see_program_namespace():
    prog = ("import math\nCOUNT = [0]\ndef f(x):\n    COUNT[0] += 1\n    return math.sqrt(x)\n"
            "def boom():\n    raise ValueError('boom')\n"
            "def count():\n    return COUNT[0]\n")
    tests = ["assert f(4) == 2", "assert boom() == None", "assert f(9) == 3\nassert count() == 2"]
    r = run_tests(prog, tests, FAST)
    assert r.passed == (True, False, True)


@needs_isolation
def test_test_that_exits_loses_only_remaining_tests():
    prog = "import os\n" + ADD + "def bye():\n    os._exit(0)\n"
    tests = ["assert add(1, 2) == 3", "assert bye() == None", "assert add(2, 2) == 4"]
    r = run_tests(prog, tests, FAST)
    assert r.passed == (True, False, False)


@needs_isolation
def test_main_block_and_stdin_are_inert():
    prog = ADD + "if __name__ == '__main__':\n    raise SystemExit(1)\n" + (
        "try:\n    input()\n    GOT = True\nexcept EOFError:\n    GOT = False\n"
        "def got():\n    return GOT\ndef name():\n    return __name__\n")
    r = run_tests(prog, ["assert got() == False", "assert name() == 'solution'"], FAST)
    assert r.passed == (True, True)


@needs_isolation
def test_syntax_error_fails_all():
    r = run_tests("def add(a, b) return a + b", TESTS_ADD, FAST)
    assert r.passed == (False, False, False) and not r.program_ok


@needs_isolation
def test_rejects_non_string_input():
    with pytest.raises(TypeError, match="must be str"):
        run_tests(ADD, ["assert True", 3], FAST)  # type: ignore[list-item]


# ---------------------------------------------------------------- isolation levels
# These run anywhere: where isolation is missing for real, and (simulated) where it is not.

UNAVAILABLE = sandbox.Isolation(sandbox.NONE, sys.executable, "not root (simulated)")


@pytest.fixture
def no_isolation(monkeypatch):
    """The probe reports isolation unavailable; the once-per-process log starts afresh."""
    monkeypatch.setattr(sandbox, "probe_isolation", lambda preferred=None: UNAVAILABLE)
    monkeypatch.setattr(sandbox, "_reported", set())


@pytest.mark.parametrize("present, missing", [([], "unshare"), (["unshare"], "setpriv")])
def test_probe_names_the_tool_missing_from_the_sandbox_path(monkeypatch, tmp_path, present,
                                                           missing):
    for tool in present:
        os.symlink("/bin/true", tmp_path / tool)
    monkeypatch.setattr(sandbox, "SANDBOX_PATH", str(tmp_path))
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)  # get past the root check anywhere
    sandbox.probe_isolation.cache_clear()
    try:
        iso = sandbox.probe_isolation()
    finally:
        sandbox.probe_isolation.cache_clear()
    assert iso.level == "none" and not iso.isolated
    assert iso.missing == f"`{missing}` (util-linux) not found on PATH {tmp_path}"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv")
                    or not os.path.exists("/usr/bin/python3"),
                    reason="needs root and setpriv to become an unprivileged uid")
def test_probe_as_an_unprivileged_uid_names_root():
    """A real non-root process (uid nobody) probes level "none", naming the missing root."""
    with open(sandbox.__file__) as f:
        source = f.read()
    # sandbox.py alone, with its harness module: the package's __init__ needs numpy.
    here = os.path.dirname(sandbox.__file__)
    script = ("import importlib.util, sys, types\n"
              "for mod in ('sandbox_harness', 'sandbox_verdict'):\n"
              "    name = 'lrmjax.rewards.' + mod\n"
              f"    path = {here!r} + '/' + mod + '.py'\n"
              "    spec = importlib.util.spec_from_file_location(name, path)\n"
              "    h = sys.modules[name] = importlib.util.module_from_spec(spec)\n"
              "    spec.loader.exec_module(h)\n"
              "m = sys.modules['sbx'] = types.ModuleType('sbx')\n"
              "exec(compile(sys.stdin.read(), 'sandbox.py', 'exec'), m.__dict__)\n"
              "iso = m.probe_isolation()\n"
              "print(iso.level + '|' + iso.missing)\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "/usr/bin/python3", "-I", "-c", script], input=source,
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("none|not root (euid 65534)"), out.stdout


def test_unavailable_isolation_refuses_before_anything_runs(no_isolation, tmp_path):
    marker = tmp_path / "ran"
    runs = tmp_path / "runs"
    runs.mkdir()
    program = f"open({str(marker)!r}, 'w').close()\n" + ADD
    with pytest.raises(sandbox.SandboxUnavailableError,
                       match=r"not root \(simulated\).*allow_unisolated=True"):
        run_tests(program, TESTS_ADD, dataclasses.replace(FAST, tmp_dir=str(runs)))
    assert not marker.exists() and os.listdir(runs) == []


def test_allow_unisolated_runs_and_warns_once(no_isolation, caplog):
    config = dataclasses.replace(FAST, allow_unisolated=True)
    with caplog.at_level(logging.INFO, logger=sandbox.__name__):
        results = [run_tests(ADD, TESTS_ADD, config) for _ in range(2)]
    for r in results:
        assert r.all_passed and not r.network_isolated and not r.pid_isolated
    assert sandbox.isolation_in_force(config) == UNAVAILABLE
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "UNISOLATED" in record.getMessage() and "not root (simulated)" in record.getMessage()


def test_isolate_false_is_never_refused(no_isolation, caplog):
    config = dataclasses.replace(FAST, isolate=False)
    with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
        r = run_tests(ADD, TESTS_ADD, config)
    assert r.all_passed and not r.network_isolated
    assert sandbox.isolation_in_force(config).missing.startswith("SandboxConfig.isolate=False")
    [record] = caplog.records
    assert "isolate=False" in record.getMessage()


@needs_isolation
def test_full_isolation_is_in_force_and_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "_reported", set())
    with caplog.at_level(logging.INFO, logger=sandbox.__name__):
        iso = sandbox.isolation_in_force(FAST)
        r = run_tests(ADD, TESTS_ADD, FAST)
    assert iso.level == "full" and iso.isolated and iso.missing == ""
    assert r.network_isolated and r.pid_isolated
    [record] = caplog.records
    assert record.levelno == logging.INFO and "full isolation" in record.getMessage()


# ---------------------------------------------------------------- the run's own filesystem
# Class 4: files a run writes must not outlive it nor reach the host or another run; its
# writes share one quota; /proc shows only its own processes; the rest is read-only.

LEAK_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


@needs_isolation
def test_files_written_vanish_and_are_invisible_to_other_runs():
    token = "lrmjax_leak_" + os.urandom(6).hex()
    paths = [f"{d}/{token}" for d in LEAK_DIRS]
    writer = ADD + (
        f"import time\nfor p in {paths!r}:\n    open(p, 'w').write('secret')\n"
        "time.sleep(0.8)\n")
    # Passes iff it never sees the writer's files, concurrently or after.
    reader = (
        f"import os, time\nseen = []\nend = time.time() + 0.6\n"
        f"while time.time() < end and not seen:\n"
        f"    seen = [p for p in {paths!r} if os.path.exists(p)]\n"
        "    time.sleep(0.02)\n"
        "print('SEEN', seen)\n"
        "def add(a, b):\n    return a + b + len(seen)\n")
    try:
        with ThreadPoolExecutor(2) as ex:
            w = ex.submit(run_tests, writer, TESTS_ADD, FAST)
            time.sleep(0.2)
            concurrent = ex.submit(run_tests, reader, TESTS_ADD, FAST)
            results = [w.result(), concurrent.result()]
        results.append(run_tests(reader, TESTS_ADD, FAST))
        leaked = [p for p in paths if os.path.exists(p)]
    finally:
        for p in paths:
            if os.path.exists(p):
                os.remove(p)
    assert all(r.all_passed for r in results), results
    assert leaked == []


@needs_isolation
def test_writes_share_one_quota_and_leave_host_shm_unchanged():
    token = "lrmjax_fill_" + os.urandom(6).hex()
    # 64 files of 1 MiB, each under the 8 MiB per-file limit, 64 MiB in all.
    fill = (f"block = b'x' * (1 << 20)\nfor i in range(64):\n"
            f"    with open('/dev/shm/{token}_%d' % i, 'wb') as f:\n        f.write(block)\n"
            + ADD)
    before = shutil.disk_usage("/dev/shm").used
    try:
        r = run_tests(fill, TESTS_ADD, dataclasses.replace(FAST, tmpfs_mb=16))
        after = shutil.disk_usage("/dev/shm").used
    finally:
        for name in os.listdir("/dev/shm"):
            if name.startswith(token):
                os.remove(os.path.join("/dev/shm", name))
    assert r.passed == (False, False, False) and not r.program_ok
    assert "OSError" in r.stderr, r.stderr  # ENOSPC at the quota
    assert abs(after - before) < (4 << 20), (before, after)  # slack: other users of /dev/shm


@needs_isolation
def test_proc_shows_only_the_runs_own_processes():
    probe = (
        "import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "cmdlines = []\n"
        "for p in pids:\n"
        "    try:\n        cmdlines.append(open('/proc/%s/cmdline' % p, 'rb').read())\n"
        "    except OSError:\n        pass\n"
        f"seen = {str(os.getpid())!r} in pids or any(b'pytest' in c for c in cmdlines)\n"
        "print('PIDS', pids)\n"
        "def add(a, b):\n    return a + b + seen\n")
    r = run_tests(probe, TESTS_ADD, FAST)
    assert r.all_passed, r.stdout


@needs_isolation
@pytest.mark.skipif(not os.access("/run/lock", os.W_OK), reason="no world-writable /run/lock")
def test_rest_of_the_filesystem_is_read_only():
    target = f"/run/lock/lrmjax_ro_{os.urandom(6).hex()}"  # world-writable on the host
    program = (
        "try:\n"
        f"    open({target!r}, 'w').write('x')\n    wrote = True\n"
        "except OSError as e:\n    wrote = False\n    print(e)\n"
        "def add(a, b):\n    return a + b + wrote\n")
    try:
        r = run_tests(program, TESTS_ADD, FAST)
        existed = os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.remove(target)
    assert r.all_passed and "Read-only file system" in r.stdout, r
    assert not existed


# ---------------------------------------------------------------- the trusted judge

def _checks(*tests):
    return [verdict.parse_test(t) for t in tests]


def test_judge_compares_decoded_data_and_rejects_a_tampered_channel():
    tests = _checks("assert f(1) == 2", "assert f(2) == (1, 'é')\nassert f(3) == None")
    prog = '["program","ok"]\n'
    good = (prog + '[0,"ok",["i","2"]]\n[1,"ok",["t",[["b",1],["s","c3a9"]]]]\n'
            '[2,"ok",["n"]]\n').encode()
    assert verdict.judge(good, tests) == verdict.Verdict((True, True), True)
    wrong = good.replace(b'["i","2"]', b'["i","3"]')
    assert verdict.judge(wrong, tests).passed == (False, True)
    errored = good.replace(b'[2,"ok",["n"]]', b'[2,"error",null]')
    assert verdict.judge(errored, tests).passed == (True, False)
    assert verdict.judge(good.replace(b'[2,"ok",["n"]]\n', b''), tests).passed == (True, False)
    assert verdict.judge(b'["program","error"]\n', tests) == verdict.Verdict((False, False),
                                                                            False)
    for tampered in [good + b'[0,"ok",["i","2"]]\n',  # duplicate
                     prog.encode() + good,  # second program record
                     good + b'[7,"ok",["n"]]\n',  # unknown call
                     b'[0,"ok",["i","2"]]\n' + good,  # before the program record
                     good + b'garbage\n', good + b'[0,"ok",["x"]]\n',
                     good.replace(b'["i","2"]', b'["i",2]')]:
        v = verdict.judge(tampered, tests)
        assert v.passed == (False, False) and "malformed" in v.error, tampered


def test_parse_test_refuses_what_the_parent_cannot_judge():
    [check] = verdict.parse_test("assert {'a': [1, -2.5]} == f('x', k=(None, b'y'))")
    assert check == verdict.Check("f", ("x",), {"k": (None, b"y")}, {"a": [1, -2.5]})
    with pytest.raises(ValueError, match="test 1: 'assert add.1, 2. > 3': only assertions"):
        run_tests(ADD, ["assert add(1, 2) == 3", "assert add(1, 2) > 3"], FAST)


# ---------------------------------------------------------------- standard-input tests

SUM_MAIN = ("import sys\nif __name__ == '__main__':\n"
            "    a, b = map(int, sys.stdin.read().split())\n    print(a + b)\n    print(a / b)\n")


def test_outputs_match_modes():
    assert verdict.outputs_match("3\n0.5\n", "3 0.5", "whitespace")
    assert not verdict.outputs_match("3\n0.5\n", "3 0.5", "exact")
    assert verdict.outputs_match("3\n0.5\n", "3\n0.5\n", "exact")
    assert verdict.outputs_match("0.6666667", "0.66666666", "float", 1e-6)
    assert not verdict.outputs_match("0.6666667", "0.66666666", "whitespace")
    assert not verdict.outputs_match("0.67", "0.66666666", "float", 1e-6)
    assert not verdict.outputs_match("nan", "nan2", "float")
    assert not verdict.outputs_match("1 2", "1", "float")
    with pytest.raises(ValueError, match="compare must be one of"):
        verdict.outputs_match("a", "a", "fuzzy")


@needs_isolation
def test_io_tests_judge_stdout_of_each_case():
    cases = [("1 2", "3\n0.5\n"), ("2 3\n", "5 0.6666666667"), ("4 0", "4"), ("1 1", "2 2")]
    r = sandbox.run_io_tests(SUM_MAIN, cases, FAST, compare="float")
    assert r.passed == (True, True, False, False)  # a crash fails even with the output right
    assert "ZeroDivisionError" in r.stderr and not r.program_ok
    exact = sandbox.run_io_tests(SUM_MAIN, cases[:2], FAST, compare="exact")
    assert exact.passed == (True, False)
    # Correct output, then a hang or an exit without flushing: fails.
    hang = SUM_MAIN + ("import threading, time\n"
                       "threading.Thread(target=time.sleep, args=(99,)).start()\n")
    assert sandbox.run_io_tests(hang, cases[:1], FAST).passed == (False,)
    unflushed = SUM_MAIN + "import os\nos._exit(0)\n"
    assert sandbox.run_io_tests(unflushed, cases[:1], FAST).passed == (False,)


@needs_isolation
def test_results_must_be_exact_builtin_types():
    """Subclasses of builtins (anywhere inside a result) and unencodable values fail their
    call; exact builtins, however nested, round-trip (a 2536-digit int included)."""
    prog = ("class S(str):\n    pass\nclass D(dict):\n    pass\n"
            "loop = []\nloop.append(loop)\n"
            "def f(k):\n"
            "    return {'str_sub': S('a'), 'nested_sub': [1, {'k': S('a')}], 'dict_sub': D(),\n"
            "            'loop': loop, 'ok': (1, [2.5, {3: b'x'}], {(1, 2)}, None, -7),\n"
            "            'big': 7 ** 3000, 'nan': float('nan'), 'text': 'é\\n\"'}[k]\n")
    tests = ["assert f('str_sub') == 'a'", "assert f('nested_sub') == [1, {'k': 'a'}]",
             "assert f('dict_sub') == {}", "assert f('loop') == []",
             "assert f('ok') == (1, [2.5, {3: b'x'}], {(1, 2)}, None, -7)",
             f"assert f('big') == {7 ** 3000}", "assert f('nan') == 0.0",
             "assert f('text') == 'é\\n\"'"]
    r = run_tests(prog, tests, FAST)
    assert r.passed == (False, False, False, False, True, True, False, True), r
