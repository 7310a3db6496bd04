"""Does fine-tuning SmolLM2 on this data move anything? Measured with the commands a user runs.

Run: `.venv/bin/python bench/finetune_evidence.py` (about 8 minutes on 2 CPU cores; needs `make demo`'s
runs/quickstart, or it runs the quickstart first).

1. SFT: SmolLM2-135M-Instruct (imported) is LoRA-tuned on alpaca demo pairs; `winnow eval` scores
   the answers of held-out pairs (bits per answer byte, in the model's chat template) before and after.
2. Continued pretraining, curated against raw: the same model, LoRA-tuned for the same number of
   tokens on the quickstart's curated output and on its raw extracted text (the extract stage's
   shards, before any filter); `winnow eval` bits per byte of both, and of the untouched model, on
   held-out text: pieces of Wikipedia articles (../shared/data) and of the curated pages themselves.
The figures go to bench/results/finetune_evidence.json; the differences are printed as they are,
including when they are too small to mean anything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.paths import results_dir, work_dir  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ALPACA = SHARED / "sft" / "llamafactory-demo" / "alpaca_en_demo.json"
WIKI = SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt"
WINNOW = [sys.executable, "-m", "pipeline.cli"]
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"]}


def winnow(*args: str) -> str:
    done = subprocess.run([*WINNOW, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"winnow {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def bpb(checkpoint: str, sets: dict[str, str], max_docs: int) -> dict[str, float]:
    out = json.loads(winnow("eval", checkpoint, *[f"--text={k}={v}" for k, v in sets.items()],
                            "--max-docs", str(max_docs), "--json", "--device", "cpu"))
    text = out.get("text", out)
    return {name: round(float(text[name]["bits_per_byte"]), 4) for name in sets}


def chunks(texts: list[str], out: Path, n: int, size: int = 1500) -> str:
    """The first `n` pieces of about `size` characters (whole lines) of the texts, as JSONL: `winnow eval`
    reads a document longer than the context in windows of the whole context (8192 tokens for SmolLM2),
    which on a CPU costs minutes per document."""
    pieces: list[str] = []
    for text in texts:
        piece = ""
        for line in text.splitlines():
            piece = f"{piece}\n{line}" if piece else line
            if len(piece) >= size:
                pieces.append(piece)
                piece = ""
        if len(piece) > 200:
            pieces.append(piece)
    out.write_text("".join(json.dumps({"text": p}) + "\n" for p in pieces[:n]))
    return str(out)


def curated_texts() -> list[str]:
    import pyarrow.parquet as pq

    files = sorted((ROOT / "runs" / "quickstart" / "output").glob("*.parquet"))
    return [t for f in files for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]


def train(kind: str, name: str, work: Path, base: str, steps: int, extra: dict) -> str:
    cfg = {"out_dir": str(work / name), "init_from": base, "lora": LORA, "seq_len": 256, "micro_batch": 4,
           "max_steps": steps, "optimizer": {"lr": 5.0e-4, "weight_decay": 0.0},
           "schedule": {"kind": "cosine", "warmup_steps": min(1, steps - 1), "min_lr_frac": 0.1}, "eval_every": 0,
           "log_every": max(1, steps // 2), **extra}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    winnow("train", kind, str(path))
    return str(work / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="LoRA steps of 4 x 256 tokens, for every run")
    ap.add_argument("--train-pairs", type=int, default=300)
    ap.add_argument("--held-out", type=int, default=40)
    ap.add_argument("--eval-docs", type=int, default=40, help="pieces of 1,500 characters per held-out text set")
    args = ap.parse_args()
    work = work_dir() / "finetune_evidence"
    work.mkdir(parents=True, exist_ok=True)
    base = str(work / "smollm2")
    if not (Path(base) / "checkpoint.pt").exists():
        winnow("import", "smollm2-135m-instruct", "--out", base)
    if not (ROOT / "runs" / "quickstart" / "manifest.json").exists():
        winnow("run", "configs/quickstart.yaml")

    rows = json.loads(ALPACA.read_text())
    held = rows[-args.held_out:]
    (work / "sft-train.json").write_text(json.dumps(rows[:args.train_pairs]))
    (work / "sft-heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    heldout = {"alpaca_heldout": str(work / "sft-heldout.jsonl")}
    sft_before = bpb(base, heldout, args.held_out)
    tuned = train("sft", "sft", work, base, args.steps,
                  {"sft": {"data": [str(work / "sft-train.json")], "template": "model", "packing": True,
                           "val_fraction": 0.0}})
    sft_after = bpb(tuned, heldout, args.held_out)
    print(f"SFT on {args.train_pairs} alpaca pairs, {args.steps} LoRA steps: held-out answers "
          f"{sft_before['alpaca_heldout']} -> {sft_after['alpaca_heldout']} bits per byte", flush=True)

    sets = {"wiki": chunks(WIKI.read_text().splitlines(), work / "wiki.jsonl", args.eval_docs),
            "curated": chunks(curated_texts(), work / "curated.jsonl", args.eval_docs)}
    results = {"base": bpb(base, sets, args.eval_docs)}
    sources = {"curated": "runs/quickstart", "raw": "runs/quickstart/stages/00_extract"}
    tokens = {}
    for name, source in sources.items():
        out = work / f"tokens-{name}"
        winnow("tokenize", str(ROOT / source), "--tokenizer", base, "--out", str(out), "--val-fraction", "0.05")
        tokens[name] = json.loads((out / "meta.json").read_text())["train_tokens"]
        ckpt = train("pretrain", f"cpt-{name}", work, base, args.steps,
                     {"data": {"train": str(out / "train-*.bin"), "val": str(out / "val-*.bin"), "eval_batches": 1}})
        results[name] = bpb(ckpt, sets, args.eval_docs)
        print(f"continued pretraining on {name} text ({tokens[name]:,} tokens available, "
              f"{args.steps * 4 * 256:,} trained): {results[name]} (base {results['base']})", flush=True)
    figures = {"model": "SmolLM2-135M-Instruct (bundled GGUF, imported)", "device": "cpu", "lora": LORA,
               "steps": args.steps, "tokens_per_run": args.steps * 4 * 256,
               "sft": {"train_pairs": args.train_pairs, "held_out_pairs": args.held_out,
                       "answer_bits_per_byte_before": sft_before["alpaca_heldout"],
                       "answer_bits_per_byte_after": sft_after["alpaca_heldout"]},
               "continued_pretraining": {"tokens_available": tokens, "bits_per_byte": results,
                                         "eval_docs": args.eval_docs}}
    out = results_dir() / "finetune_evidence.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
