"""Reliability of CAA vectors for every shipped behaviour on the default model.

Diagnoses each behaviour over all layers on a training split (directional agreement,
d'), takes the recommended layer, measures steerability on held-out records, and writes
the table plus Spearman correlations to ``docs/reliability_smollm2.md``::

    python scripts/reliability_report.py [--n-train 60] [--n-eval 40]
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import steerlab as sl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-eval", type=int, default=40)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent.parent / "docs" / "reliability_smollm2.md"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = sl.Model.load(dtype="f32")
    table = sl.evaluate.reliability_table(model, n_train=args.n_train, n_eval=args.n_eval)
    took = time.perf_counter() - t0
    text = (
        f"# CAA reliability on SmolLM2-135M-Instruct (f32)\n\n"
        f"Made by `python scripts/reliability_report.py --n-train {args.n_train} "
        f"--n-eval {args.n_eval}` on {datetime.date.today()} in {took:.0f} s. Prefilled A/B "
        f"prompts, mean-difference vector at the layer with the highest mean cosine, "
        f"steered at every position with multipliers -1, 0, +1; effect = m(+1) - m(0), "
        f"m = logit(y+) - logit(y-).\n\n{table.markdown()}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
