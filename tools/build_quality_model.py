"""Rebuild Winnow's default quality scorer (filters/models/quality-default.*) from ../shared/data.

Run `python -m tools.build_quality_model` from the repository root (a few minutes on 2 cores). It
trains fastText on the passages of tools/quality_data.py's documents, then the feature combiner on
out-of-fold fastText scores (tools/quality_combine.py), and writes the model, its report
(`.ftz.json`) and the combiner (`.combiner.json`) next to each other. To train a scorer on your own
text, use `winnow quality train` instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.quality_cli import print_report
from pipeline.quality_train import train
from tools.quality_combine import build_combiner
from tools.quality_data import default_documents, passage_rows

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.build_quality_model", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared data folder")
    parser.add_argument("--out", default=str(ROOT / "filters" / "models" / "quality-default.ftz"))
    parser.add_argument("--folds", type=int, default=5, help="out-of-fold fastText models for the combiner")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "cc-text").is_dir():
        print(f"build_quality_model: {data} is not the shared data folder (no cc-text/ in it); "
              "pass --data PATH", file=sys.stderr)
        return 2
    docs = default_documents(data)
    rows, groups = passage_rows(docs)
    print(f"fastText on {len(rows)} passages of {len(docs)} documents ...", file=sys.stderr)
    print_report(train(rows, args.out, positive="hq", groups=groups), args.out)
    print(f"combiner: {args.folds} out-of-fold fastText models, then the logistic model ...", file=sys.stderr)
    spec = build_combiner(docs, Path(args.out), folds=args.folds)
    print(json.dumps({k: v for k, v in spec["report"].items() if k != "negative_score_percentiles"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
