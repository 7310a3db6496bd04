"""A small FineWeb-style ablation: the same tiny model and token budget, trained on raw extracted text
and on Winnow-curated text from the same WARCs, scored on held-out reference-quality text.

Run: `.venv/bin/python bench/ablation.py` (about ten minutes on 2 CPU cores).

* Data: bench/corpus (468 real pages repacked into 20,000 WARC records; see bench/build_corpus.py)
  through configs/quickstart.yaml. "Raw" is the extraction stage's output (text extracted, language
  ID applied, nothing else); "curated" is the final output (heuristics, dedup, quality, PII).
* Tokenizer: byte-level BPE trained on the Wikipedia demo articles, so neither side shapes it.
* Validation: the 30 Wikipedia demo articles (reference-quality text neither side contains).
* Model and budget: configs/train/tiny.yaml's model, the same steps, batch and schedule for both,
  with two seeds each; the curated set is smaller, so it is repeated more often within the budget.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from train.cli import pretrain_data  # noqa: E402
from train.config import load_train_config  # noqa: E402
from train.pretrain import train  # noqa: E402
from train.shards import tokenize_to_shards  # noqa: E402
from train.tokenizer import train_tokenizer  # noqa: E402

WORK = HERE / "work" / "ablation"
WIKI = ROOT.parent / "shared" / "data" / "pretrain-text" / "wiki-demo" / "wiki_demo.txt"
STEPS, SEEDS = 400, (1, 2)


def main() -> None:
    run = WORK / "run"
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "configs/quickstart.yaml",
                    "--set", f"input={HERE / 'corpus' / 'corpus-*.warc.gz'}", "--set", f"output_dir={run}"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    articles = [a for a in WIKI.read_text().splitlines() if a.strip()]
    pq.write_table(pa.table({"id": [f"wiki-{k}" for k in range(len(articles))], "text": articles}),
                   WORK / "wiki.parquet")
    tokenizer = str(train_tokenizer([str(WORK / "wiki.parquet")], 4096, str(WORK / "tokenizer.json")))
    sources = {"raw": sorted((run / "stages" / "00_extract").glob("part-*.parquet")),
               "curated": sorted((run / "output").glob("part-*.parquet"))}
    meta = {name: tokenize_to_shards([str(f) for f in files], tokenizer, str(WORK / f"tokens-{name}"),
                                     val_fraction=0.0) for name, files in sources.items()}
    tokenize_to_shards([str(WORK / "wiki.parquet")], tokenizer, str(WORK / "tokens-wiki"), val_fraction=0.0)
    results = {name: {"docs": m["docs"], "train_tokens": m["train_tokens"], "runs": []} for name, m in meta.items()}
    for name in sources:
        for seed in SEEDS:
            out = WORK / f"train-{name}-{seed}"
            overrides = [f"out_dir={out}", f"tokenizer={tokenizer}",
                         f"data.train={WORK / f'tokens-{name}'}/train-*.bin",
                         f"data.val={WORK / 'tokens-wiki'}/train-*.bin", "data.eval_batches=16", f"max_steps={STEPS}",
                         "eval_every=100", "log_every=100", "ckpt_every=0", f"seed={seed}", "tensorboard=false"]
            cfg = load_train_config(str(ROOT / "configs" / "train" / "tiny.yaml"), overrides)
            if (out / "checkpoint.pt").exists():
                (out / "checkpoint.pt").unlink()
                (out / "log.jsonl").unlink(missing_ok=True)
            batches, val = pretrain_data(cfg, 0, 1)
            train(cfg, batches, val)
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            curve = {r["step"]: r["val_loss"] for r in log if "val_loss" in r}
            results[name]["runs"].append({"seed": seed, "wiki_val_loss": curve})
        finals = [r["wiki_val_loss"][STEPS] for r in results[name]["runs"]]
        results[name]["final_wiki_val_loss_mean"] = round(statistics.mean(finals), 4)
        results[name]["epochs_in_budget"] = round(STEPS * cfg.micro_batch * cfg.seq_len / meta[name]["train_tokens"], 2)
    results["budget_tokens"] = STEPS * cfg.micro_batch * cfg.seq_len
    results["curated_minus_raw"] = round(results["curated"]["final_wiki_val_loss_mean"]
                                         - results["raw"]["final_wiki_val_loss_mean"], 4)
    print(json.dumps(results, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ablation.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
