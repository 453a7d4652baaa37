"""Tests for lrmjax.rewards.pool.RewardPool: failures score 0 and are counted (the first of
each kind logged, a reward failing every row stopped), hangs are killed within their timeout
and cost no worker restart, workers are replaced and die with their parent, custom rewards
reach the workers, and the code reward runs 1,000 sandboxed programs without leaking
processes or temporary directories."""

import json
import logging
import math
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from multiprocessing import resource_tracker

import numpy as np
import pytest

from lrmjax.rewards import RewardPool, RewardResult, combine, get, register, sandbox, shape

REPO = pathlib.Path(__file__).resolve().parent.parent


# Module-level so that spawned workers can import them by reference.
def behaving(prompts, completions, metadata):
    """Reward = metadata["mode"]-driven misbehaviour, else float(completion)."""
    out = []
    for c, m in zip(completions, metadata, strict=True):
        mode = m.get("mode", "ok")
        if mode == "raise":
            raise RuntimeError("reward bug")
        if mode == "hang":
            time.sleep(3600)
        if mode == "exit":
            os._exit(3)
        out.append({"nan": math.nan, "inf": math.inf, "str": "1.0"}.get(mode, float(c)))
    return RewardResult(scores=out, components={"twice": [2 * s if isinstance(s, float)
                                                          else 0.0 for s in out]})


def grouped(prompts, completions, metadata):
    """Scores each row with the size of the group it was handed with."""
    return [float(len(completions))] * len(completions)


grouped.group_level = True

MODES = ["ok", "raise", "ok", "nan", "inf", "str", "ok"]


def _batch(modes):
    n = len(modes)
    return ["p"] * n, [str(i + 1) for i in range(n)], [{"mode": m} for m in modes]


def _check_scores(scores, metrics, comps, modes):
    expected = np.array([i + 1.0 if m == "ok" else 0.0 for i, m in enumerate(modes)])
    np.testing.assert_array_equal(scores, expected)
    np.testing.assert_array_equal(comps["twice"][[0, 2, 6]], [2.0, 6.0, 14.0])
    assert metrics["reward/mean"] == pytest.approx(expected.mean())
    assert metrics["reward/twice"] == pytest.approx(comps["twice"].mean())


def test_in_process_mode_counts_errors_and_nonfinite():
    with RewardPool(behaving, num_workers=0) as pool:
        scores, metrics, comps = pool.score(*_batch(MODES))
    _check_scores(scores, metrics, comps, MODES)
    # "raise" and "str" (not a number) are errors; nan and inf are non-finite.
    assert metrics["reward/errors"] == 2.0
    assert metrics["reward/nonfinite"] == 2.0
    assert metrics["reward/timeouts"] == 0.0


def test_workers_kill_hangs_and_replace_dead_workers():
    modes = MODES + ["hang", "exit", "ok", "hang"]
    with RewardPool(behaving, num_workers=2, timeout_s=1.0) as pool:
        pool.score(*_batch(["ok", "ok"]))  # wait for workers to start
        start = time.monotonic()
        scores, metrics, comps = pool.score(*_batch(modes))
        elapsed = time.monotonic() - start
        assert metrics["reward/timeouts"] == 2.0
        assert metrics["reward/errors"] == 3.0  # raise, str, worker died (os._exit)
        assert metrics["reward/nonfinite"] == 2.0
        _check_scores(scores[:7], metrics | {"reward/mean": scores[:7].mean(),
                                             "reward/twice": comps["twice"][:7].mean()},
                      {k: v[:7] for k, v in comps.items()}, MODES)
        assert scores[9] == 10.0 and scores[7] == scores[8] == scores[10] == 0.0
        # Two hangs on two workers in parallel: about one timeout plus worker restarts, never
        # the hang's 3600 s (generous: worker start-up is slow on a loaded 2-core machine).
        assert elapsed < 60.0
        # The pool still works after replacing workers.
        scores2, metrics2, _ = pool.score(*_batch(["ok", "ok", "ok"]))
        np.testing.assert_array_equal(scores2, [1.0, 2.0, 3.0])
        assert metrics2["reward/errors"] == metrics2["reward/timeouts"] == 0.0


def test_group_level_reward_gets_whole_groups():
    meta = [{"group_id": g} for g in ["a", "b", "a", "a", "c", "b"]] + [{}]
    with RewardPool(grouped, num_workers=0) as pool:
        scores, metrics, _ = pool.score(["p"] * 7, ["x"] * 7, meta)
    # Rows are scored with their group's size; the row without group_id is its own task.
    np.testing.assert_array_equal(scores, [3, 2, 3, 3, 1, 2, 1])


def test_bad_construction_errors():
    with pytest.raises(ValueError, match="unknown reward 'nope'.*valid names:.*math"):
        RewardPool("nope", num_workers=0)
    with pytest.raises(ValueError, match="fork is unsafe"):
        RewardPool("math", num_workers=0, start_method="fork")
    with pytest.raises(ValueError, match="differ in length"):
        RewardPool("format", num_workers=0).score(["p"], ["a", "b"], [{}])


def test_registered_name_in_workers_with_missing_answer_counted():
    with RewardPool("math", num_workers=1, timeout_s=20.0) as pool:
        scores, metrics, comps = pool.score(
            ["q"] * 3, ["\\boxed{4}", "\\boxed{5}", "\\boxed{4}"],
            [{"answer": "4"}, {"answer": "4"}, {}])
    np.testing.assert_array_equal(scores, [1.0, 0.0, 0.0])
    assert metrics["reward/errors"] == 1.0


def test_first_failure_of_each_kind_is_logged_once(caplog):
    fn = combine({"format": 1.0, behaving: 1.0})
    with RewardPool(fn, num_workers=0) as pool, caplog.at_level(logging.WARNING):
        for _ in range(2):
            _, metrics, _ = pool.score(*_batch(["ok", "raise", "str", "raise"]))
            assert metrics["reward/errors"] == 3.0
    logged = [r.getMessage() for r in caplog.records if r.name == "lrmjax.rewards.pool"]
    assert len(logged) == 2, logged
    assert ("reward 'format+behaving': RuntimeError: reward bug (in the part 'behaving' of "
            "reward 'format+behaving')") in logged[0]
    assert "ValueError: reward score '1.0' (str) is not a number" in logged[1]


def test_a_reward_failing_on_every_row_stops_after_three_calls():
    with RewardPool(behaving, num_workers=0) as pool:
        # Fails on every row: 1; a good row resets the count; 1, 2; a call without rows
        # changes nothing.
        for modes in (["raise"] * 2, ["raise", "ok"], ["raise"], ["raise"] * 3, []):
            pool.score(*_batch(modes))
        with pytest.raises(RuntimeError, match="reward 'behaving' failed on every row of 3 "
                                               "consecutive calls: RuntimeError: reward bug"):
            pool.score(*_batch(["raise"]))


# A custom reward registered by a module the trainer imported (here: this test module).
@register("test_pool_custom")
def custom(prompts, completions, metadata, bonus=0.0):
    return [len(c) + bonus for c in completions]


@pytest.mark.parametrize("spec, want", [
    ("test_pool_custom", [1.0, 2.0]),
    (combine({"test_pool_custom": 2.0, "format": 0.5}), [2.0, 4.0]),  # weighted, combined
    (get("test_pool_custom", bonus=1.0), [2.0, 3.0]),
    (shape("test_pool_custom"), [1.0, 2.0]),
], ids=["alone", "combined", "options", "shaped"])
def test_custom_reward_scores_in_workers(spec, want):
    with RewardPool(spec, num_workers=1, timeout_s=60.0, spares=0) as pool:
        scores, metrics, _ = pool.score(["p", "p"], ["a", "bb"], [{}, {}])
    assert metrics["reward/errors"] == 0.0
    np.testing.assert_array_equal(scores, want)


def _python_script(tmp_path, source, *args, **kwargs):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def test_custom_reward_defined_in_main_scores_in_workers(tmp_path):
    proc = _python_script(tmp_path, """
        import json

        from lrmjax.rewards import RewardPool, combine, register


        @register("mine")
        def mine(prompts, completions, metadata):
            return [float(len(c)) for c in completions]


        if __name__ == "__main__":
            fn = combine({"mine": 2.0, "format": 0.5})
            with RewardPool(fn, num_workers=1, spares=0) as pool:
                scores, metrics, _ = pool.score(["p", "p"], ["a", "bb"], [{}, {}])
            print(json.dumps([scores.tolist(), metrics["reward/errors"]]))
        """)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1]) == [[2.0, 4.0], 0.0]


class SlowToLoad:
    """Scores 1, hangs on the completion "hang", and takes `load_s` to load in a worker (as a
    reward that loads a model or a large library does): a worker restart is expensive."""

    def __init__(self, load_s):
        self.load_s = load_s

    def __setstate__(self, state):
        self.__dict__.update(state)
        time.sleep(self.load_s)

    def __call__(self, prompts, completions, metadata):
        if "hang" in completions:
            time.sleep(3600)
        return [1.0] * len(completions)


def _wait_for_spares(pool, timeout_s=60.0):
    spares = pool._crew.spares if hasattr(pool, "_crew") else []
    deadline = time.monotonic() + timeout_s
    while not all(s.poll_ready() for s in spares) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_hangs_stall_a_call_by_their_timeout_not_by_worker_restarts():
    """Both workers hang at once: a warm spare takes over when they are killed, so the call
    does not wait the replacements' start-up (3 s here; the stall used to be timeout +
    start-up)."""
    timeout = 0.5
    with RewardPool(SlowToLoad(3.0), num_workers=2, timeout_s=timeout) as pool:
        pool.score(["p"] * 2, ["ok"] * 2, [{}] * 2)  # the workers are up
        _wait_for_spares(pool)
        completions = ["hang", "hang"] + ["ok"] * 6
        start = time.monotonic()
        scores, metrics, _ = pool.score(["p"] * 8, completions, [{}] * 8)
        elapsed = time.monotonic() - start
    assert metrics["reward/timeouts"] == 2.0
    np.testing.assert_array_equal(scores, [0.0, 0.0] + [1.0] * 6)
    print(f"\n2 of 8 rows hang, 2 workers, timeout_s={timeout}: the call took {elapsed:.2f} s")
    assert elapsed < timeout + 2.0


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def test_workers_die_with_a_sigkilled_parent(tmp_path):
    """A parent with two pools (one started by a thread that has exited since), each worker
    mid-task, is SIGKILLed: every worker is gone within seconds."""
    markers = tmp_path / "busy"
    markers.mkdir()
    proc = _python_script(tmp_path, """
        import os
        import sys
        import threading
        import time

        from lrmjax.rewards import RewardPool


        def hang(prompts, completions, metadata):
            open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
            time.sleep(3600)


        if __name__ == "__main__":
            made = []
            starter = threading.Thread(
                target=lambda: made.append(RewardPool(hang, num_workers=1, timeout_s=3600,
                                                       spares=0)))
            starter.start()
            starter.join()
            pools = [RewardPool(hang, num_workers=1, timeout_s=3600, spares=0), made[0]]
            print(" ".join(str(w.proc.pid) for p in pools for w in p._workers), flush=True)
            for p in pools:
                threading.Thread(target=p.score, args=(["p"], ["x"], [{}]), daemon=True).start()
            time.sleep(3600)
        """, markers)
    pids = []
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        deadline = time.monotonic() + 60
        while len(os.listdir(markers)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(os.listdir(markers)) == 2, proc.stderr.read() if proc.poll() else ""
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in pids if _alive(p)]
    for p in left:  # do not leave them hanging for an hour
        os.kill(p, signal.SIGKILL)
    assert pids and left == []


def _terminal_sigint():
    """In the child before exec: SIGINT as a shell leaves it (default action, unblocked), so
    the script's Python installs its KeyboardInterrupt handler whatever state the test
    process (an xdist worker, after other tests) was left in."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_stops_the_trainer_not_its_workers(tmp_path):
    """Ctrl-C sends SIGINT to the whole process group: the parent handles it (here: closes
    the pool and exits), and no worker prints a KeyboardInterrupt traceback."""
    proc = _python_script(tmp_path, """
        import signal
        import time

        from lrmjax.rewards import RewardPool

        if __name__ == "__main__":
            with RewardPool("format", num_workers=1) as pool:
                pool.score(["p"], ["x"], [{}])
                try:
                    # What the script inherited (a shell gives the default handler, nothing
                    # blocked): printed so that a hang below can be told apart from it.
                    print("ready", signal.getsignal(signal.SIGINT),
                          sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), flush=True)
                    time.sleep(60)
                except KeyboardInterrupt:
                    pass
                pool.score(["p"], ["x"], [{}])  # the workers are still there
        """, start_new_session=True, preexec_fn=_terminal_sigint)
    ready = proc.stdout.readline()
    assert ready.startswith("ready <built-in function default_int_handler> []"), ready
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]


def _uid_pids(worker_pids):
    """Live processes owned by sandbox uids of runs started by the given workers."""
    uids = set()
    for pid in worker_pids:
        uids.update(sandbox.uid_range(pid))
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if os.stat(f"/proc/{e}").st_uid in uids:
                    with open(f"/proc/{e}/stat", "rb") as f:
                        if f.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                            out.append(int(e))
            except (OSError, IndexError):
                pass
    return out


def _sbx_dirs(root):
    return {e for e in os.listdir(root) if e.startswith(sandbox.TMP_PREFIX)}


@pytest.fixture
def run_root():
    """A world-traversable parent for this test's sandbox run directories."""
    root = tempfile.mkdtemp(prefix="lrmjax_test_poolroot_")
    os.chmod(root, 0o755)
    yield root
    os.rmdir(root)  # fails if a run directory leaked


def _children():
    me = str(os.getpid())
    kids = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[1].decode() == me:
                        kids.append(int(e))
            except (OSError, IndexError):
                pass
    return kids


def _code_programs(n):
    completions, metadata = [], []
    for i in range(n):
        wrong = i % 3 == 0
        completions.append(f"```python\ndef f(x):\n    return x + {i + (1 if wrong else 0)}\n```")
        metadata.append({"tests": [f"assert f(1) == {i + 1}", f"assert f(0) == {i}"]})
    expected = np.array([0.0 if i % 3 == 0 else 1.0 for i in range(n)])
    return ["write f"] * n, completions, metadata, expected


def _run_many(n, root):
    if not sandbox.probe_isolation().isolated:
        pytest.skip("sandbox isolation unavailable here")
    # multiprocessing's resource tracker is one helper per parent process, started by the
    # first pool and kept for the process's life by design: start it before counting, so
    # the comparison below sees only what the pool itself leaves (run alone, this test
    # otherwise found the tracker as a "leaked" child).
    resource_tracker.ensure_running()
    kids_before = _children()
    prompts, completions, metadata, expected = _code_programs(n)
    with RewardPool(get("code", tmp_dir=root), num_workers=2, timeout_s=30.0) as pool:
        pool.score(prompts[:2], completions[:2], metadata[:2])  # start workers
        start = time.monotonic()
        scores, metrics, comps = pool.score(prompts, completions, metadata)
        elapsed = time.monotonic() - start
        worker_pids = [w.proc.pid for w in pool._workers]
    np.testing.assert_array_equal(scores, expected)
    assert metrics["reward/errors"] == metrics["reward/timeouts"] == 0.0
    assert _sbx_dirs(root) == set()
    assert _uid_pids(worker_pids) == []
    assert sorted(_children()) == sorted(kids_before)
    # Per-program overhead with 2 workers, printed for the record (pytest -s).
    print(f"\n{n} sandboxed programs: {elapsed:.2f}s, {1000 * elapsed / n:.1f} ms/program "
          f"wall with 2 workers")


def test_200_sandboxed_programs_through_pool_no_leaks(run_root):
    _run_many(200, run_root)


@pytest.mark.slow
def test_1000_sandboxed_programs_through_pool_no_leaks(run_root):
    _run_many(1000, run_root)


def test_killed_worker_takes_its_sandbox_run_down(run_root):
    """A pool timeout shorter than the sandbox's: killing the worker must kill the run; its
    orphaned run directory goes at the next sweep."""
    if not sandbox.probe_isolation().isolated:
        pytest.skip("sandbox isolation unavailable here")
    fn = get("code", timeout_s=30.0, tmp_dir=run_root)
    with RewardPool(fn, num_workers=1, timeout_s=2.0) as pool:
        pool.score(["p"], ["def f(): pass"], [{"tests": ["assert f() == None"]}])  # start it
        worker_pid = pool._workers[0].proc.pid
        scores, metrics, _ = pool.score(["p"], ["import time\ntime.sleep(60)"],
                                        [{"tests": ["assert f() == None"]}])
    assert metrics["reward/timeouts"] == 1.0 and scores[0] == 0.0
    deadline = time.monotonic() + 3.0
    while _uid_pids([worker_pid]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _uid_pids([worker_pid]) == []
    assert len(_sbx_dirs(run_root)) == 1  # the killed worker could not clean up
    assert sandbox.remove_orphaned_dirs(run_root) == 1
    assert _sbx_dirs(run_root) == set()
