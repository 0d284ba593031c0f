"""steerlab against an earlier steerlab: the same W1-W3 tasks of ``measure.py`` run by
two Python environments (e.g. the release wheels of two commits), interleaved A B B A per
round so that drift cancels; prints each task's median seconds and the median of the
per-round ratios new / old. Peers do not change between two steerlab builds, so this is
how a change is checked not to slow W1-W3 down (the ratios to the peers follow).

    python bench/compare_builds.py --old /path/old-venv/bin/python \\
        --new /path/new-venv/bin/python [--rounds 3] [--tasks steerlab-q4:w1 ...]

The work dir (token ids, vectors) is made once by ``measure.py prepare`` with ``--new``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "BENCH_RESULT "
TASKS = ["steerlab-q4:w1", "steerlab-q4:w2", "steerlab-q4:w3", "steerlab-f32:w2"]


def run(python: str, task: str, work: Path) -> dict:
    out = subprocess.run(
        [python, str(HERE / "measure.py"), task, str(work)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(x for x in reversed(out.splitlines()) if x.startswith(MARK))
    return json.loads(line[len(MARK) :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", nargs="*", default=TASKS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        run(args.new, "prepare", work)
        report = {}
        for task in args.tasks:
            old, new, ratios = [], [], []
            for r in range(args.rounds):
                order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
                got = {k: run(getattr(args, k), task, work)["seconds"] for k in order}
                old.append(got["old"])
                new.append(got["new"])
                ratios.append(got["new"] / got["old"])
            report[task] = {
                "old_s": statistics.median(old),
                "new_s": statistics.median(new),
                "new_over_old": statistics.median(ratios),
                "ratios": ratios,
            }
            print(
                f"{task:18s} old {report[task]['old_s']:.3f} s  new {report[task]['new_s']:.3f} s"
                f"  new/old {report[task]['new_over_old']:.3f}  {[round(x, 3) for x in ratios]}",
                flush=True,
            )
        json.dump(report, sys.stdout)
        print()


if __name__ == "__main__":
    main()
