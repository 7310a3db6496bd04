"""Winnow's DPO side by side with TRL's DPOTrainer, and what DPO does to held-out reward accuracy.

Run: `.venv/bin/python bench/dpo_vs_trl.py` (CPU; `--device cuda` on a GPU). Needs `trl` (the bench extra).
`--skip agreement|speed|accuracy` leaves a part out; `--work` and `--results` let two parts run side by side.

1. Agreement. The same weights (Winnow checkpoints exported to Hugging Face Llama through
   train/export.py), the same pairs and the same batch of 8: Winnow's loss and chosen/rejected
   rewards against TRL's on the first batch. The policy and the reference are two different
   models, so the rewards are not trivially zero.
2. Speed and memory. One pass over the same 64 demo pairs, 8 pairs a step (packed: rows of the
   same number of tokens), each configuration in its own process so that its peak resident memory
   (ru_maxrss) is its own: Winnow packed or padded, with the reference log-probs precomputed (what
   `winnow train dpo` does) or with a reference forward in every step; TRL with and without
   `precompute_ref_log_probs` (TRL 1.16 has no packing: `padding_free` is disabled there). Tokens
   are the prompt and answer tokens of both sequences of each pair, the same count for both.
   The reference pass itself is timed apart, for both.
3. Accuracy. A tiny model fine-tuned on the alpaca demo (`winnow train sft`), then tuned with DPO on
   the demo pairs (`winnow train dpo`); reward accuracy and margin on the held-out pairs, and how
   often each model gives the chosen answer the higher log-prob, before and after.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.paths import results_dir, work_dir  # noqa: E402
from train import checkpoint  # noqa: E402
from train.config import load_train_config  # noqa: E402
from train.model import GPT, ModelConfig  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
DEMO = SHARED / "sft" / "llamafactory-demo"
WORK = work_dir() / "dpo_vs_trl"  # --work changes it (two parts can run side by side)


def prepare(args: argparse.Namespace) -> dict:
    """A tokenizer trained on the demo pairs and alpaca examples, two models of the bench's shape,
    their Hugging Face exports, and short pairs that fit the length unchanged on both sides."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from train.export import export_hf
    from train.tokenizer import train_tokenizer

    WORK.mkdir(parents=True, exist_ok=True)
    pairs_raw = json.loads((DEMO / "dpo_en_demo.json").read_text())
    alpaca = json.loads((DEMO / "alpaca_en_demo.json").read_text())
    texts = [" ".join([r["chosen"]["value"], r["rejected"]["value"], *(c["value"] for c in r["conversations"])])
             for r in pairs_raw] + [r["instruction"] + " " + r["output"] for r in alpaca]
    pq.write_table(pa.table({"text": texts}), WORK / "text.parquet")
    tokenizer = str(train_tokenizer([str(WORK / "text.parquet")], args.vocab, str(WORK / "tokenizer.json")))
    for name, seed in (("policy", 0), ("reference", 1)):
        torch.manual_seed(seed)
        model = GPT(ModelConfig(vocab_size=args.vocab, n_layer=args.layers, n_head=args.heads, n_kv_head=args.heads,
                                n_embd=args.width, max_seq_len=args.seq_len))
        checkpoint.save(str(WORK / name), model, None, 0, {"tokenizer": tokenizer,
                                                           "train_config": {"sft": {"template": "alpaca"}}})
        export_hf(str(WORK / name), str(WORK / f"hf-{name}"))
    from train.prefdata import encode_rows
    from train.tokenizer import load_vocab

    vocab = load_vocab(tokenizer)
    pairs = []
    for r in pairs_raw:  # the first pairs that fit whole: both sides must see the same tokens
        pair = {"prompt": r["conversations"][-1]["value"][:300], "chosen": r["chosen"]["value"][:400],
                "rejected": r["rejected"]["value"][:400]}
        if len(pairs) < args.pairs and not encode_rows([("", 0, pair)], vocab, "alpaca", args.seq_len + 1,
                                                       False).truncated:
            pairs.append(pair)
    (WORK / "pairs.json").write_text(json.dumps(pairs))
    return {"tokenizer": tokenizer, "pairs": len(pairs)}


def winnow_config(args: argparse.Namespace, name: str, packing: bool, micro_batch: int, **extra) -> object:
    raw = {"out_dir": str(WORK / name), "tokenizer": str(WORK / "tokenizer.json"), "init_from": str(WORK / "policy"),
           "dpo": {"data": [str(WORK / "pairs.json")], "template": "alpaca", "packing": packing, "val_fraction": 0.0,
                   "reference": str(WORK / "reference"), "ref_cache": str(WORK / "ref-logps"), "beta": 0.1},
           "seq_len": args.seq_len, "micro_batch": micro_batch, "max_steps": 2, "device": args.device,
           "tensorboard": False, "schedule": {"kind": "constant", "warmup_steps": 1}, **extra}
    (WORK / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return load_train_config(str(WORK / f"{name}.yaml"))


def winnow_case(args: argparse.Namespace, packing: bool, precomputed: bool) -> dict:
    """One pass over the pairs with Winnow's batches, log-probs and loss; AdamW as the trainer builds it."""
    from train.checkpoint import load_model
    from train.dpo import compute_logps, objective, prepare, summary, to_device
    from train.prefdata import pref_batch, sequence_logps
    from train.pretrain import build_optimizer

    device = torch.device(args.device)
    bf16 = args.device == "cuda"
    autocast = torch.autocast(args.device, dtype=torch.bfloat16) if bf16 else nullcontext()
    cfg = winnow_config(args, "speed", packing, 8)
    batches, _, _ = prepare(cfg, 0, 1)
    rows = batches.rows
    reference, _ = load_model(str(WORK / "reference"), device)
    t = time.perf_counter()
    ref = compute_logps(reference, rows, 8, device, autocast) if precomputed else None
    ref_pass_s = time.perf_counter() - t
    if precomputed:
        del reference
    policy, _ = load_model(str(WORK / "policy"), device)
    policy.train()
    optimizer = build_optimizer(policy, cfg, device)
    # Packed rows hold several pairs: as many rows per step as make 8 pairs on average.
    per_step = max(1, round(8 * len(rows.groups) / (rows.unit.max() + 1))) if packing else 8
    steps = [np.arange(k, min(k + per_step, len(rows.groups))) for k in range(0, len(rows.groups), per_step)]
    tokens, first = 0, None
    if args.device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for index in steps:
        batch = to_device(pref_batch(rows, index, ref), device)
        if not precomputed:
            with torch.no_grad(), autocast:
                logits, _ = reference(batch["x"], positions=batch["positions"], doc_ids=batch["doc_ids"])
            batch["ref"] = sequence_logps(logits, batch["y"], batch["target_seq"], batch["n_seq"])[0]
        with autocast:
            logits, _ = policy(batch["x"], positions=batch["positions"], doc_ids=batch["doc_ids"])
        sums, counts = sequence_logps(logits, batch["y"], batch["target_seq"], batch["n_seq"])
        losses, stats = objective(cfg, batch, sums, counts)
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch["tokens"]
        first = first or summary(stats)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 1), "tokens": tokens,
            "steps": len(steps), "ref_pass_s": round(ref_pass_s, 2) if precomputed else None}


def trl_trainer(args: argparse.Namespace, precomputed: bool, batch: int, steps: int | None = None):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    from train.sft import alpaca_prompt

    pairs = json.loads((WORK / "pairs.json").read_text())
    data = Dataset.from_list([{**p, "prompt": alpaca_prompt(p["prompt"])} for p in pairs])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(WORK / "hf-policy"))
    models = {name: AutoModelForCausalLM.from_pretrained(str(WORK / f"hf-{name}"), dtype=torch.float32,
                                                         attn_implementation="sdpa")
              for name in ("policy", "reference")}
    config = DPOConfig(output_dir=str(WORK / "trl"), per_device_train_batch_size=batch, beta=0.1, max_length=None,
                       learning_rate=3e-3, weight_decay=0.1, adam_beta2=0.95, lr_scheduler_type="constant",
                       max_grad_norm=1.0, report_to=[], save_strategy="no", logging_steps=10_000,
                       use_cpu=args.device == "cpu", bf16=args.device == "cuda", dataloader_num_workers=0, seed=0,
                       precompute_ref_log_probs=precomputed, max_steps=steps or -1, num_train_epochs=1)
    return DPOTrainer(model=models["policy"], ref_model=models["reference"], args=config, train_dataset=data,
                      processing_class=tokenizer)


def trl_case(args: argparse.Namespace, precomputed: bool) -> dict:
    from transformers import TrainerCallback

    t = time.perf_counter()
    trainer = trl_trainer(args, precomputed, 8)
    setup_s = time.perf_counter() - t  # includes TRL's reference pass when precomputing
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    tokens = sum(len(e["prompt_ids"]) * 2 + len(e["chosen_ids"]) + len(e["rejected_ids"])
                 for e in trainer.train_dataset)
    seconds = marks[-1] - marks[0]
    return {"seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 1), "tokens": tokens,
            "steps": trainer.state.global_step, "setup_s": round(setup_s, 2)}


def agreement(args: argparse.Namespace) -> dict:
    """First batch of 8 pairs: Winnow's loss and rewards against TRL's."""
    from train.checkpoint import load_model
    from train.dpo import objective, prepare, reference_logps, summary
    from train.prefdata import pref_batch, sequence_logps
    from train.pretrain import Distributed

    cfg = winnow_config(args, "agree", False, 8)
    batches, _, info = prepare(cfg, 0, 1)
    if info["truncated_answers"]:
        raise ValueError("an answer was cut: the comparison needs the same tokens on both sides")
    (ref, _), _ = reference_logps(cfg, [batches.rows, None], Distributed("cpu"), nullcontext())
    policy, _ = load_model(str(WORK / "policy"))
    batch = pref_batch(batches.rows, np.arange(8), ref)
    with torch.no_grad():
        sums, counts = sequence_logps(policy(batch["x"])[0], batch["y"], batch["target_seq"], batch["n_seq"])
    ours = summary(objective(cfg, batch, sums, counts)[1])
    trainer = trl_trainer(argparse.Namespace(**{**vars(args), "device": "cpu"}), False, 8)
    examples = [trainer.train_dataset[i] for i in range(8)]
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples)).item()
    m = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    theirs = {"loss": loss, "reward_chosen": m["rewards/chosen"], "reward_rejected": m["rewards/rejected"],
              "reward_accuracy": m["rewards/accuracies"], "reward_margin": m["rewards/margins"]}
    diff = max(abs(ours[k] - theirs[k]) for k in theirs)
    return {"winnow": ours, "trl": {k: round(v, 6) for k, v in theirs.items()}, "max_abs_diff": round(diff, 7)}


def accuracy(args: argparse.Namespace) -> dict:
    """SFT on the alpaca demo, then DPO on the demo pairs; held-out reward accuracy before and after."""
    from train.dpo import evaluate_checkpoint, train_dpo
    from train.pretrain import train
    from train.sft import sft_data

    # Warmups are capped below the step counts, which a quick run sets to a few steps.
    common = {"tokenizer": str(WORK / "tokenizer.json"), "seq_len": 256, "device": args.device,
              "tensorboard": False, "log_every": 25, "ckpt_every": 0,
              "model": {"n_layer": 4, "n_head": 4, "n_kv_head": 2, "n_embd": 128}}
    sft = {**common, "out_dir": str(WORK / "acc-sft"), "micro_batch": 16, "max_steps": args.sft_steps,
           "eval_every": 0, "sft": {"data": [str(DEMO / "alpaca_en_demo.json")], "template": "chat"},
           "optimizer": {"lr": 3e-3, "weight_decay": 0.0},
           "schedule": {"kind": "cosine", "warmup_steps": min(10, args.sft_steps - 1)}}
    (WORK / "acc-sft.yaml").write_text(yaml.safe_dump(sft))
    cfg = load_train_config(str(WORK / "acc-sft.yaml"))
    if not (WORK / "acc-sft" / "checkpoint.pt").exists():
        train(cfg, *sft_data(cfg, 0, 1))
    dpo = {**common, "out_dir": str(WORK / "acc-dpo"), "init_from": str(WORK / "acc-sft"), "micro_batch": 8,
           "max_steps": args.dpo_steps, "eval_every": 25,
           "dpo": {"data": [str(DEMO / "dpo_en_demo.json")], "template": "chat", "val_fraction": 0.1, "beta": 0.1,
                   "ref_cache": str(WORK / "ref-logps")},
           "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
           "schedule": {"kind": "cosine", "warmup_steps": min(5, args.dpo_steps - 1)}}
    (WORK / "acc-dpo.yaml").write_text(yaml.safe_dump(dpo))
    dcfg = load_train_config(str(WORK / "acc-dpo.yaml"))
    t = time.perf_counter()
    last = train_dpo(dcfg)
    return {"sft_steps": args.sft_steps, "dpo_steps": args.dpo_steps, "dpo_seconds": round(time.perf_counter() - t, 1),
            "sft_start": evaluate_checkpoint(dcfg, str(WORK / "acc-sft")),
            "after_dpo": evaluate_checkpoint(dcfg, dcfg.out_dir), "last_train_log": last}


CASES = {"winnow-packed-precomputed": (winnow_case, True, True),
         "winnow-padded-precomputed": (winnow_case, False, True),
         "winnow-packed-ref-forward": (winnow_case, True, False),
         "winnow-padded-ref-forward": (winnow_case, False, False),
         "trl-padded-precomputed": (trl_case, None, True),
         "trl-padded-ref-forward": (trl_case, None, False)}


def main() -> None:
    global WORK
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--dpo-steps", type=int, default=100)
    parser.add_argument("--case", choices=sorted(CASES), help="(internal) run one speed case in this process")
    parser.add_argument("--skip", action="append", default=[], choices=["agreement", "speed", "accuracy"])
    parser.add_argument("--work", default=str(WORK), help="scratch folder for models, data and runs")
    parser.add_argument("--results", help="the JSON to write (default bench/results/dpo_vs_trl_<device>.json)")
    args = parser.parse_args()
    WORK = Path(args.work).resolve()
    if args.case:
        fn, packing, precomputed = CASES[args.case]
        result = fn(args, packing, precomputed) if fn is winnow_case else fn(args, precomputed)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if args.device == "cuda":
            result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        print(json.dumps(result))
        return
    result = {"device": args.device, "torch_threads": torch.get_num_threads(), "config": vars(args),
              "note": "CPU figures (float32)" if args.device == "cpu" else "GPU figures (bf16 autocast)"}
    result["data"] = prepare(args)
    if "agreement" not in args.skip:
        result["agreement"] = agreement(args)
        print(json.dumps(result["agreement"], indent=1), flush=True)
    if "speed" not in args.skip:
        result["speed"] = {}
        forward = [a for a in sys.argv[1:] if a not in ("--skip", "agreement", "speed", "accuracy")]
        for case in CASES:
            done = subprocess.run([sys.executable, __file__, "--case", case, *forward], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{case} failed: {done.stderr[-2000:]}")
            result["speed"][case] = json.loads(done.stdout.strip().splitlines()[-1])
            print(case, result["speed"][case], flush=True)
    if "accuracy" not in args.skip:
        result["accuracy"] = accuracy(args)
        print(json.dumps({k: v for k, v in result["accuracy"].items() if k != "last_train_log"}, indent=1))
    out = Path(args.results) if args.results else results_dir() / f"dpo_vs_trl_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
