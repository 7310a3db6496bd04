"""The `winnow` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path


def _setup_logging(run_dir: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir and "://" not in run_dir:
        Path(run_dir, "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir, "logs", "run.log")))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set or [])
    except ConfigError as exc:
        print(f"winnow: config error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(cfg.output_dir)
    from pipeline.runner import Runner
    from pipeline.status import format_table, stage_rows

    start = time.perf_counter()
    try:
        manifest = Runner(cfg, ray_address=args.ray_address or os.environ.get("RAY_ADDRESS")).run()
    except ConfigError as exc:
        print(f"winnow: config error: {exc}", file=sys.stderr)
        return 2
    print(format_table(stage_rows(cfg.output_dir)))
    print(f"\n{manifest['status']} in {time.perf_counter() - start:.1f}s; "
          f"output: {cfg.output_dir}/output ({len(manifest['output']['files'])} files)")
    return 0 if manifest["status"] == "done" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.status import format_table, stage_rows

    try:
        print(format_table(stage_rows(args.run_dir)))
    except FileNotFoundError as exc:
        print(f"winnow: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import inspect_cluster, inspect_documents

    if args.cluster:
        return inspect_cluster(args.path, args.cluster, width=args.width)
    return inspect_documents(args.path, stage=args.stage, reason=args.reason, n=args.n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="winnow", description="Web crawls in, curated training data out.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume the pipeline of a config")
    run.add_argument("config")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key, e.g. stages.heuristics.steps.gopher_quality.min_doc_words=80")
    run.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="a table of stages: shards done, rows in and out, time")
    status.add_argument("run_dir")
    status.set_defaults(func=cmd_status)

    inspect = sub.add_parser("inspect", help="print sample documents, kept or dropped")
    inspect.add_argument("path", help="a run directory or a Parquet file")
    inspect.add_argument("--stage", help="stage name (default: the final output)")
    inspect.add_argument("--reason", help="only documents dropped for this reason (prefix match)")
    inspect.add_argument("-n", type=int, default=5)
    inspect.add_argument("--cluster", metavar="ID|largest",
                         help="show the members of one duplicate cluster side by side (a dup_cluster_id)")
    inspect.add_argument("--width", type=int, default=None, help="terminal width for --cluster")
    inspect.set_defaults(func=cmd_inspect)

    from pipeline.quality_cli import add_parser as add_quality

    add_quality(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `winnow inspect ... | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
