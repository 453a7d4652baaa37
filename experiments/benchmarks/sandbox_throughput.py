"""Sandbox throughput: programs per second through `RewardPool` (2 workers) for the `code`
reward, each a trivial correct program with 3 assert tests.

    PYTHONPATH=. python experiments/benchmarks/sandbox_throughput.py [--n 100] [--repeats 3]

Prints programs/s per repeat and the best; needs sandbox isolation (root + util-linux).
"""

from __future__ import annotations

import argparse
import time

from lrmjax.rewards import RewardPool, get

PROGRAM = "```python\ndef add(a, b):\n    return a + b\n```"
TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    with RewardPool(get("code"), num_workers=2, timeout_s=60.0) as pool:
        pool.score(["p"] * 2, [PROGRAM] * 2, [{"tests": TESTS}] * 2)  # start the workers
        rates = []
        for _ in range(args.repeats):
            start = time.monotonic()
            scores, metrics, _ = pool.score(["p"] * n, [PROGRAM] * n, [{"tests": TESTS}] * n)
            elapsed = time.monotonic() - start
            assert scores.tolist() == [1.0] * n, (scores, metrics)
            rates.append(n / elapsed)
            print(f"{n} programs in {elapsed:.2f}s: {n / elapsed:.1f} programs/s", flush=True)
    print(f"best: {max(rates):.1f} programs/s (2 workers, {n} programs, 3 tests each)")


if __name__ == "__main__":
    main()
