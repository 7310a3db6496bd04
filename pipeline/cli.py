"""The `winnow` command."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path


def _setup_logging() -> None:
    """The terminal gets the log; the runner adds RUN_DIR/logs/run.log once it owns the directory."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(sys.stderr)], force=True)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError, load_config

    config = run_yaml_of(args.config)
    try:
        cfg = load_config(config, (args.set or []) + (["profile=true"] if args.profile else []))
        # A run directory is the output, wherever it is now and whatever its run.yaml says.
        if config != args.config and not any(s.startswith("output_dir=") for s in args.set or []):
            here = args.config if "://" in args.config else os.path.abspath(args.config)
            cfg = cfg.model_copy(update={"output_dir": here.rstrip("/") or "/"})
    except ConfigError as exc:
        print(f"winnow: config error: {exc}", file=sys.stderr)
        return 2
    finally:
        if config != args.config and "://" in args.config:  # a copy of a remote run.yaml
            shutil.rmtree(Path(config).parent, ignore_errors=True)
    if args.retry_failed:
        failed = failed_shards(cfg.output_dir)
        if not failed:
            print(f"winnow: no failed shards in {cfg.output_dir}; nothing to retry")
            return 0
        print(f"retrying {len(failed)} failed shard(s): " + ", ".join(failed))
    _setup_logging()
    from pipeline.rundir import RunDirError, describe_os_error
    from pipeline.runner import Runner
    from pipeline.status import format_table, stage_rows

    start = time.perf_counter()
    try:
        manifest = Runner(cfg, ray_address=args.ray_address or os.environ.get("RAY_ADDRESS")).run()
    except ConfigError as exc:
        print(f"winnow: config error: {exc}", file=sys.stderr)
        return 2
    except RunDirError as exc:
        print(f"winnow: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"winnow: cannot write the run: {describe_os_error(exc)}; nothing half-written was kept: fix the "
              "cause (free space, permissions) and run the same command again to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nwinnow: interrupted; finished shards are kept in {cfg.output_dir}: run the same command again to "
              "resume", file=sys.stderr)
        return 130
    print(format_table(stage_rows(cfg.output_dir)))
    print(f"\n{manifest['status']} in {time.perf_counter() - start:.1f}s; "
          f"output: {cfg.output_dir}/output ({len(manifest['output']['files'])} files)")
    return 0 if manifest["status"] == "done" else 1


def run_yaml_of(config: str) -> str:
    """A config file as given; for a run directory (local or on object storage), its run.yaml."""
    if Path(config).is_dir():
        return str(Path(config) / "run.yaml")
    if "://" in config:
        import tempfile

        import fsspec

        fs, path = fsspec.core.url_to_fs(config)
        if fs.isdir(path):
            local = Path(tempfile.mkdtemp(prefix="winnow-")) / "run.yaml"
            fs.get(f"{path.rstrip('/')}/run.yaml", str(local))
            return str(local)
    return config


def failed_shards(run_dir: str) -> list[str]:
    """`stage/shard` of every shard the last run recorded as failed."""
    from pipeline.jsonfile import read_json
    from pipeline.rundir import RunDir

    rundir = RunDir(run_dir)
    manifest = read_json(rundir.fs, rundir.manifest) or {}
    return [f"{stage['name']}/{error['shard']}" for stage in manifest.get("stages", [])
            for error in stage.get("errors", [])]


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.status import format_errors, format_table, run_status, stage_rows, synth_lines

    try:
        rows = stage_rows(args.run_dir)
        print(format_table(rows))
        if synth := synth_lines(args.run_dir):
            print(f"\n{synth}")
        print(f"\nrun: {run_status(args.run_dir)}")
        if errors := format_errors(rows, args.run_dir):
            print(f"\nfailed shards:\n{errors}")
    except FileNotFoundError as exc:
        print(f"winnow: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.inspect import Query, inspect_cluster, inspect_documents

    if args.cluster:
        return inspect_cluster(args.path, args.cluster, width=args.width)
    query = Query(stage=args.stage, reason=args.reason, dropped=args.dropped, language=args.language,
                  min_score=args.min_score, max_score=args.max_score, score_column=args.score_column, grep=args.grep)
    color = {"auto": None, "always": True, "never": False}[args.color]
    return inspect_documents(args.path, query, n=args.n, as_json=args.json, chars=None if args.full else args.chars,
                             width=args.width, color=color)


def cmd_report(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from pipeline.report import write_comparison, write_report
    from pipeline.report.budget import Assumptions

    given = {k: v for k, v in vars(args).items() if k in Assumptions.model_fields and v is not None}
    try:
        assumptions = Assumptions(**given)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        print(f"winnow report: {problems}", file=sys.stderr)
        return 2
    try:
        if args.compare:
            path = write_comparison(args.run_dir, args.compare, assumptions, out=args.out)
        else:
            path = write_report(args.run_dir, assumptions, tokenizer=args.tokenizer, out=args.out)
    except FileNotFoundError as exc:
        print(f"winnow: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="winnow", description="Web crawls in, curated training data out.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume the pipeline of a config")
    run.add_argument("config", help="a config file, or a run directory to rerun with its run.yaml")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override a config key, e.g. stages.heuristics.steps.gopher_quality.min_doc_words=80")
    run.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    run.add_argument("--profile", action="store_true",
                     help="sample the run with py-spy into RUN_DIR/profile/ and show it in the report")
    run.add_argument("--retry-failed", action="store_true",
                     help="rerun only if the last run recorded failed shards (CONFIG may be the run directory); "
                          "finished shards are reused, as on any rerun")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="a table of stages: shards done, rows in and out, time")
    status.add_argument("run_dir")
    status.set_defaults(func=cmd_status)

    report = sub.add_parser("report", help="write RUN_DIR/report.html (and refresh output/README.md)")
    report.add_argument("run_dir")
    report.add_argument("--compare", metavar="RUN_B", help="compare with another run: writes RUN_DIR/compare-<B>.html")
    report.add_argument("--out", help="where to write the page instead")
    report.add_argument("--tokenizer", help="a tokenizers JSON file: count output tokens instead of estimating")
    report.add_argument("--mfu", type=float, help="model FLOPs utilization for the training budget (default 0.40)")
    report.add_argument("--gpu", help="GPU name shown in the budget (default H100 SXM)")
    report.add_argument("--gpu-peak-tflops", type=float, help="dense BF16 peak per GPU (default 989)")
    report.add_argument("--gpu-hour-usd", type=float, help="price per GPU-hour (default 2.50)")
    report.add_argument("--gpus", type=int, help="GPUs training in parallel (default 8)")
    report.add_argument("--cpu-hour-usd", type=float, help="price per vCPU-hour for the crawl cost (default 0.04)")
    report.add_argument("--dump-pages", type=float, help="HTML pages in a full Common Crawl dump (default 2.5e9)")
    report.set_defaults(func=cmd_report)

    inspect = sub.add_parser("inspect", help="print documents, kept or dropped, filtered; or --json")
    inspect.add_argument("path", help="a run directory, a directory of Parquet files, or one file")
    inspect.add_argument("--stage", help="a stage's output (default: the run's final output)")
    inspect.add_argument("--dropped", action="store_true", help="dropped documents (of --stage, or of every stage)")
    inspect.add_argument("--reason", help="only documents dropped for this reason (a prefix: 'gopher' matches all "
                                          "gopher_quality:* and gopher_repetition:*); implies --dropped")
    inspect.add_argument("--language", help="only this language code")
    inspect.add_argument("--min-score", type=float, help="only documents whose --score-column is at least this")
    inspect.add_argument("--max-score", type=float, help="only documents whose --score-column is at most this")
    inspect.add_argument("--score-column", default="quality_score", help="the score the range applies to")
    inspect.add_argument("--grep", metavar="REGEX", help="only documents whose text matches; matches are highlighted")
    inspect.add_argument("-n", type=int, default=5, help="how many to show, in a stable sample order (0: all)")
    inspect.add_argument("--json", action="store_true", help="one JSON object per document, every column")
    inspect.add_argument("--chars", type=int, default=800, help="characters of text to show (default 800)")
    inspect.add_argument("--full", action="store_true", help="the whole text")
    inspect.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    inspect.add_argument("--cluster", metavar="ID|largest",
                         help="show the members of one duplicate cluster side by side (a dup_cluster_id)")
    inspect.add_argument("--width", type=int, default=None, help="terminal width")
    inspect.set_defaults(func=cmd_inspect)

    from pipeline.export_data import add_parser as add_export_data
    from pipeline.quality_cli import add_parser as add_quality
    from train.cli import add_parsers as add_training

    add_quality(sub)
    add_export_data(sub)
    add_training(sub)

    args = parser.parse_args(argv)
    from pipeline.jsonfile import RecordError

    try:
        return args.func(args)
    except RecordError as exc:  # a damaged record in a run directory: the message names it
        print(f"winnow: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `winnow inspect ... | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
