"""Data: procedural tasks (`lrmjax.data.tasks`), prompt datasets (`lrmjax.data.datasets`),
TFDS builders (`lrmjax.data.tfds_builders`) and curricula (`lrmjax.data.curriculum`).

Shipped fixtures (hand-written, for tests and smoke runs) live in `FIXTURES_DIR`:
`gsm8k_sample.jsonl` (30 GSM8K-format problems), `math_sample.jsonl` (30 MATH-format),
`code_assert_sample.jsonl` (6 function-writing problems with assertion tests) and
`code_stdin_sample.jsonl` (4 standard-input problems with input/output cases).
"""

import pathlib

FIXTURES_DIR = pathlib.Path(__file__).resolve().parent / "fixtures"
