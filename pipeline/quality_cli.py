"""`winnow quality train | annotate`.

The default scorer that ships in filters/models is rebuilt by tools/build_quality_model.py, outside the package.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def print_report(report: dict, out: str) -> None:
    shown = {k: v for k, v in report.items() if k not in ("negative_score_percentiles", "params")}
    print(json.dumps(shown, indent=1))
    print(f"model: {out}\nreport: {out}.json")


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.quality_train import read_texts, train

    if args.labelled:
        rows = [(t, str(label)) for t, label in read_texts(args.labelled, args.text_column, args.label_column)
                if label is not None]
    elif args.positive and args.negative:
        rows = [(t, args.positive_label) for t, _ in read_texts(args.positive, args.text_column)]
        rows += [(t, args.negative_label) for t, _ in read_texts(args.negative, args.text_column)]
    else:
        print("winnow quality train: give --labelled FILES, or --positive FILES and --negative FILES", file=sys.stderr)
        return 2
    try:
        report = train(rows, args.out, positive=args.positive_label, validation=args.validation,
                       threshold=args.threshold, epoch=args.epoch)
    except ValueError as exc:
        print(f"winnow quality train: {exc}", file=sys.stderr)
        return 2
    print_report(report, args.out)
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from llmclient import LLMClient
    from pipeline.quality_edu import annotate
    from pipeline.quality_train import read_texts

    texts = [t for t, _ in read_texts(args.input, args.text_column)]
    client = LLMClient(args.endpoint, args.model, concurrency=args.concurrency)
    rows = annotate(texts, client, sample=args.sample, seed=args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} of {min(len(texts), args.sample or len(texts))} documents rated; labels: {args.out}")
    return 0 if rows else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    quality = sub.add_parser("quality", help="train and build quality classifiers")
    qsub = quality.add_subparsers(dest="quality_command", required=True)

    tr = qsub.add_parser("train", help="train a fastText classifier from labelled or positive/negative text")
    tr.add_argument("--positive", nargs="+", help="Parquet/JSONL files of good text")
    tr.add_argument("--negative", nargs="+", help="Parquet/JSONL files of other text")
    tr.add_argument("--labelled", nargs="+", help="Parquet/JSONL files with a label column")
    tr.add_argument("--label-column", default="label")
    tr.add_argument("--text-column", default="text")
    tr.add_argument("--positive-label", default="hq")
    tr.add_argument("--negative-label", default="cc")
    tr.add_argument("--validation", type=float, default=0.1, help="share held out for the report")
    tr.add_argument("--threshold", type=float, default=0.5, help="where the report measures precision and recall")
    tr.add_argument("--epoch", type=int, default=20)
    tr.add_argument("--out", required=True, help="model path (.ftz is quantized, .bin is not)")
    tr.set_defaults(func=cmd_train)

    an = qsub.add_parser("annotate", help="rate documents 0-5 for educational value with an LLM endpoint")
    an.add_argument("input", nargs="+", help="Parquet/JSONL files, e.g. RUN/output")
    an.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    an.add_argument("--model", required=True)
    an.add_argument("--sample", type=int, default=1000)
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--concurrency", type=int, default=8)
    an.add_argument("--text-column", default="text")
    an.add_argument("--out", required=True, help="JSONL of {text, edu_score, answer}")
    an.set_defaults(func=cmd_annotate)
