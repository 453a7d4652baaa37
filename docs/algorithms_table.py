"""The algorithm table of README.md and docs/algorithms.md, rendered from `PRESETS`.

`lrmjax.rl.algorithms.PRESETS` is the one source: each file holds the rendered table between
the two marker lines below, and `tests/test_algorithms.py` checks that it is up to date.
After adding or changing a preset, rewrite both files with

  python docs/algorithms_table.py          # --check: exit 1 if a file is out of date
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/algorithms.md")
BEGIN = (
    "<!-- algorithms table: generated from lrmjax.rl.algorithms.PRESETS by "
    "`python docs/algorithms_table.py`; do not edit by hand -->"
)
END = "<!-- end of the generated algorithms table -->"
COMMAND = "python docs/algorithms_table.py"

# Knobs that have a column of their own; every other knob a preset sets goes in the last one.
_COLUMN_KNOBS = ("adv_estimator", "policy_loss", "loss_agg_mode", "kl_mode")
_KL_KNOBS = ("kl_estimator", "kl_coef")


def _value(v) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _kl(cfg) -> str:
    if cfg.kl_mode == "none":
        return "none"
    where = "loss" if cfg.kl_mode == "loss" else "in the reward"
    return f"`{cfg.kl_estimator}` {where}, coef {cfg.kl_coef}"


def markdown_table() -> str:
    """The markdown table of `algorithms.PRESETS`, one row per preset, then the defaults of
    every knob some preset sets (what a row that does not name it has)."""
    from lrmjax.rl import algorithms

    defaults = algorithms._defaults()
    rows = [
        "| preset | paper | advantage | policy loss | aggregation | KL | other knobs it sets |",
        "|---|---|---|---|---|---|---|",
    ]
    set_anywhere: list[str] = []
    for name, preset in algorithms.PRESETS.items():
        cfg = algorithms.get(name)
        shown = _COLUMN_KNOBS + (_KL_KNOBS if cfg.kl_mode != "none" else ())
        others = [f"`{k}={_value(v)}`" for k, v in preset.overrides.items() if k not in shown]
        paper = preset.paper.replace("|", "/")  # a "|" would split the cell
        rows.append(
            f"| `{name}` | {paper} | `{cfg.adv_estimator}` | `{cfg.policy_loss}` | "
            f"`{cfg.loss_agg_mode}` | {_kl(cfg)} | {', '.join(others) or '-'} |"
        )
        set_anywhere += [k for k in preset.overrides if k not in set_anywhere]
    knobs = [k for k in defaults if k in set_anywhere and k not in _COLUMN_KNOBS]
    note = (
        "A knob a row does not name has its default: "
        + ", ".join(f"`{k}={_value(defaults[k])}`" for k in knobs)
        + " (every knob and its meaning: `lrmjax/rl/algorithms.py`)."
    )
    wrapped = textwrap.fill(note, width=95, break_long_words=False, break_on_hyphens=False)
    return "\n".join([*rows, "", wrapped])


def render(text: str, table: str) -> str:
    """`text` with the block between BEGIN and END replaced by `table`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"expected one {BEGIN!r} line and one {END!r} line")
    head, rest = text.split(BEGIN + "\n", 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    table = markdown_table()
    stale = []
    for name in FILES:
        path = ROOT / name
        text = path.read_text()
        new = render(text, table)
        if new != text:
            stale.append(name)
            if not args.check:
                path.write_text(new)
    verb = "out of date" if args.check else "rewritten"
    print(f"{verb}: {', '.join(stale)}" if stale else "up to date")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
