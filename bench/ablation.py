"""Curation ablation: the same tiny model, the same tokens, the same epochs, on text from one pipeline
run cut at different stages, scored by `winnow eval`'s bits per byte on held-out text.

Run: `nice -n 19 .venv/bin/python bench/ablation.py --tokens 81920` (about 9 minutes on 2 shared CPU
cores, one torch thread; no GPU used).

* Input: the 468 distinct real pages of ../shared/data, each once, repacked into 2 WARC files by
  `bench/build_corpus.py --records 468 --files 2` (bench/corpus has about 43 copies of each, with new text).
* One run of configs/quickstart.yaml gives every variant: raw (00_extract: extraction and language
  ID only), heuristics (01: Gopher filters), heuristics + dedup (02), full curation (output: also
  the C4/FineWeb line filters, the quality model and PII).
* Held-out sets: the opening 2,000 characters of each of the 30 Wikipedia demo articles, the first
  30 C4 demo documents and the first 300 book sentences of the PAN test set. Training documents that
  share a 13-word n-gram with any document of the whole sets are dropped (counted; none expected).
  The quality model was trained with the Wikipedia articles as positives and the C4 documents as
  negatives, so full curation is aimed at those two; the book sentences are a set it never saw.
* Tokenizer: byte-level BPE (4,096) trained on the 697 dolma CC-2019-30 documents, which are neither
  in a variant nor held out.
* Budget: T tokens (--tokens, at most the smallest variant's size), in seq_len windows. Every variant
  is subsampled without repetition to exactly T tokens (whole documents in a seeded order, the last
  one cut), then configs/train/tiny.yaml's model and schedule run for --epochs passes over them:
  every window is seen exactly --epochs times on every side. A seed sets the initialisation, the
  window order and the subsample.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.paths import results_dir, work_dir  # noqa: E402
from train.cli import pretrain_data  # noqa: E402
from train.config import load_train_config  # noqa: E402
from train.eval import evaluate  # noqa: E402
from train.pretrain import train  # noqa: E402
from train.shards import write_shard  # noqa: E402
from train.tokenizer import load_vocab, train_tokenizer  # noqa: E402

WORK = work_dir() / "ablation"
DATA = ROOT.parent / "shared" / "data"
VARIANTS = {"raw": "stages/00_extract", "heuristics": "stages/01_heuristics",
            "heuristics + dedup": "stages/02_dedup", "full curation": "output"}
N = 13  # words per n-gram for the containment check
EVAL_SIZE = {"wiki": 30, "c4": 30, "books": 300}  # documents scored per held-out set
WIKI_CHARS = 2000  # the opening of each article


def texts(folder: Path) -> list[str]:
    return [t for f in sorted(folder.glob("part-*.parquet")) for t in pq.read_table(f, columns=["text"])
            .column("text").to_pylist() if t]


def ngrams(text: str) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[k:k + N])) for k in range(len(words) - N + 1)}


def held_out() -> dict[str, list[str]]:
    wiki = [a for a in (DATA / "pretrain-text/wiki-demo/wiki_demo.txt").read_text().splitlines() if a.strip()]
    c4 = [json.loads(line)["text"] for line in (DATA / "cc-text/c4-demo/c4_demo.jsonl").read_text().splitlines()]
    pan = (DATA / "dedup/pan-plagiarism-sentence-pairs/pan-test_s1.txt").read_text().splitlines()
    return {"wiki": wiki, "c4": c4, "books": [s.strip() for s in pan if s.strip()]}


def prepare(records: int = 468, udhr: int = 100) -> tuple[dict[str, list[str]], dict[str, str],
                                                         dict[str, dict[str, int]], str]:
    """The variants' documents (overlapping ones dropped), the held-out files, the drops, the tokenizer."""
    corpus, run = WORK / "corpus", WORK / "run"
    if not (corpus / "CORPUS.md").exists():
        subprocess.run([sys.executable, str(HERE / "build_corpus.py"), "--records", str(records), "--files", "2",
                        "--udhr", str(udhr), "--out", str(corpus)], check=True, stdout=subprocess.DEVNULL)
    if not any((run / "output").glob("part-*.parquet")):  # delete WORK to redo
        with (WORK / "pipeline.log").open("w") as log:
            subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "configs/quickstart.yaml",
                            "--set", f"input={corpus}/corpus-*.warc.gz", "--set", f"output_dir={run}"],
                           cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    sets = held_out()
    files = {}
    for name, docs in sets.items():  # scored: a sample; checked for overlap: all of it
        scored = [d[:d.rfind(" ", 0, WIKI_CHARS)] if name == "wiki" and len(d) > WIKI_CHARS else d
                  for d in docs[:EVAL_SIZE[name]]]
        files[name] = str(WORK / f"heldout-{name}.jsonl")
        Path(files[name]).write_text("".join(json.dumps({"text": d}) + "\n" for d in scored))
    grams = {name: set().union(*map(ngrams, docs)) for name, docs in sets.items()}
    variants, dropped = {}, {}
    for name, folder in VARIANTS.items():
        docs = texts(run / folder)
        hits = {s: {k for k, d in enumerate(docs) if ngrams(d) & g} for s, g in grams.items()}
        dropped[name] = {s: len(h) for s, h in hits.items()}
        variants[name] = [d for k, d in enumerate(docs) if not any(k in h for h in hits.values())]
    dolma = DATA / "cc-text/dolma-cc-2019-30/CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
    rows = [json.loads(line)["text"] for line in gzip.open(dolma, "rt")]
    pq.write_table(pa.table({"text": rows}), WORK / "tokenizer-text.parquet")
    tokenizer = str(train_tokenizer([str(WORK / "tokenizer-text.parquet")], 4096, str(WORK / "tokenizer.json")))
    return variants, files, dropped, tokenizer


def subsample(docs: list[np.ndarray], n_tokens: int, seed: int) -> tuple[np.ndarray, int]:
    """Whole documents in a seeded order until n_tokens are reached (the last one cut); none twice."""
    picked, total = [], 0
    for k in np.random.default_rng(seed).permutation(len(docs)):
        picked.append(docs[k][:n_tokens - total])
        total += len(picked[-1])
        if total == n_tokens:
            return np.concatenate(picked), len(picked)
    raise ValueError(f"only {total} tokens, {n_tokens} wanted")


def spread(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"seeds": values, "mean": round(statistics.mean(values), 4), "std": round(std, 4),
            "min": min(values), "max": max(values)}


def svg(results: dict, sets: list[str], path: Path) -> None:
    """One panel per held-out set: each seed's bpb (dots), the mean (red), min to max (line)."""
    pw, ph, left, top = 300, 300, 60, 40
    names = list(VARIANTS)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + pw * len(sets) + 20}" height="{ph + 150}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13">Curation ablation: bits per byte on held-out text '
           '(lower is better; dots: seeds, red: mean, line: min to max)</text>']
    for p, s in enumerate(sets):
        values = [r for n in names for r in results[n]["bpb"][s]["seeds"]]
        lo, hi = min(values), max(values)
        lo, hi = lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)
        x0 = left + p * pw

        def y(v: float) -> float:
            return top + ph - (v - lo) / (hi - lo) * ph  # noqa: B023

        out.append(f'<rect x="{x0}" y="{top}" width="{pw - 60}" height="{ph}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{x0 + 5}" y="{top - 5}" font-weight="bold">{s}</text>')
        for v in np.linspace(lo, hi, 5):
            out.append(f'<text x="{x0 - 3}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
        step = (pw - 60) / len(names)
        for k, n in enumerate(names):
            cx, r = x0 + step * (k + 0.5), results[n]["bpb"][s]
            out.append(f'<line x1="{cx - 14:.1f}" x2="{cx + 14:.1f}" y1="{y(r["mean"]):.1f}" y2="{y(r["mean"]):.1f}" '
                       'stroke="#d62728" stroke-width="3"/>')
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(r["min"]):.1f}" y2="{y(r["max"]):.1f}" '
                       'stroke="#000"/>')
            out += [f'<circle cx="{cx:.1f}" cy="{y(v):.1f}" r="3" fill="#08519c"/>' for v in r["seeds"]]
            out.append(f'<text transform="translate({cx + 4:.1f},{top + ph + 8}) rotate(45)">{n}</text>')
    path.write_text("\n".join(out + ["</svg>"]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tokens", type=int, help="T (default: the smallest variant's size)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the cores are shared)")
    parser.add_argument("--tiny", action="store_true",
                        help="200 records and two training steps per variant: checks the bench runs")
    args = parser.parse_args()
    global WORK
    if args.tiny:  # its own corpus and run: the full-size ones are reused between calls
        WORK = WORK / "tiny"
    torch.set_num_threads(args.threads)
    started = time.time()
    WORK.mkdir(parents=True, exist_ok=True)
    variants, files, dropped, tokenizer = prepare(200, 10) if args.tiny else prepare()
    cfg = load_train_config(str(ROOT / "configs/train/tiny.yaml"))
    vocab, seq, batch = load_vocab(tokenizer), cfg.seq_len, cfg.micro_batch
    tokens = {n: [np.asarray([vocab.bos_id, *ids], dtype=np.uint32) for ids in vocab.encode_batch(docs)]
              for n, docs in variants.items()}
    sizes = {n: sum(map(len, t)) for n, t in tokens.items()}
    if args.tiny and not args.tokens:
        args.tokens = 2 * seq * batch + 1  # two steps of whole batches
    if args.tokens and args.tokens >= min(sizes.values()):
        raise SystemExit(f"--tokens {args.tokens}: the smallest variant has {min(sizes.values())}")
    windows = ((args.tokens or min(sizes.values()) - 1) // seq) // batch * batch  # whole batches of windows
    budget = windows * seq  # T: what every variant trains on, --epochs times
    steps = args.epochs * windows // batch
    results: dict = {"command": shlex.join(["nice", "-n", "19", ".venv/bin/python", "bench/ablation.py",
                                            *sys.argv[1:]]),
                     "device": "cpu (2 shared cores; no GPU)", "tokenizer": "BPE 4096 on dolma CC-2019-30",
                     "model": cfg.model.model_dump(), "seq_len": seq, "micro_batch": batch,
                     "tokens_per_variant": budget, "epochs": args.epochs, "steps": steps,
                     "held_out": {s: f for s, f in files.items()}, "variants": {}}
    print(f"T = {budget:,} tokens per variant, {args.epochs} epochs, {steps} steps; sizes {sizes}", flush=True)
    for name, docs in tokens.items():
        runs = []
        for seed in args.seeds:
            out = WORK / "train" / f"{name.replace(' ', '').replace('+', 'p')}-{seed}"
            shard, used = subsample(docs, budget + 1, seed)  # + 1: the last window's target
            (out / "data").mkdir(parents=True, exist_ok=True)
            write_shard(out / "data" / "train-00000.bin", shard, vocab.size)
            for f in ("checkpoint.pt", "log.jsonl"):
                (out / f).unlink(missing_ok=True)
            run_cfg = load_train_config(str(ROOT / "configs/train/tiny.yaml"), [
                f"out_dir={out}", f"tokenizer={tokenizer}", f"data.train={out / 'data'}/train-*.bin",
                "data.val=null", f"max_steps={steps}", "eval_every=0", f"log_every={steps}", "ckpt_every=0",
                f"seed={seed}", "tensorboard=false", "device=cpu",
                *(["schedule.warmup_steps=1"] if args.tiny else [])])  # tiny.yaml's warmup outlasts two steps
            t0 = time.time()
            train(run_cfg, *pretrain_data(run_cfg, 0, 1))
            scored = evaluate(str(out), files, {}, [], max_docs=None, device="cpu")
            bpb = {s: round(r["bits_per_byte"], 4) for s, r in scored["text"].items()}
            runs.append({"seed": seed, "docs_used": used, "bpb": bpb, "wall_s": round(time.time() - t0, 1)})
            print(f"{name:<20} seed {seed}: {used} docs, {bpb}, {runs[-1]['wall_s']} s", flush=True)
        results["variants"][name] = {
            "docs": len(docs), "tokens": sizes[name], "dropped_for_overlap": dropped[name], "runs": runs,
            "bpb": {s: spread([r["bpb"][s] for r in runs]) for s in files}}
    results["wall_s"] = round(time.time() - started)
    print(f"\n{'variant':<20} {'docs':>5} {'used':>5} " + " ".join(f"{s + ' bpb':>16}" for s in files))
    for name, v in results["variants"].items():
        used = round(statistics.mean(r["docs_used"] for r in v["runs"]))
        cells = " ".join(f"{v['bpb'][s]['mean']:.4f} ± {v['bpb'][s]['std']:.4f}" for s in files)
        print(f"{name:<20} {v['docs']:>5} {used:>5} {cells}")
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    svg(results["variants"], list(files), out / "ablation.svg")


if __name__ == "__main__":
    main()
