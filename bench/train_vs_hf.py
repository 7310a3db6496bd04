"""The trainer side by side with what users would pick instead, on the same data, in the same run.

Run: `.venv/bin/python bench/train_vs_hf.py` (a few minutes on 2 CPU cores; `--device cuda` on a GPU).

* Pretraining: Winnow's GPT against Hugging Face `LlamaForCausalLM` of the same shape (the exported
  config), started from the same weights, in a plain torch loop with the same AdamW, sequence
  length, batch, precision and token batches. The first-step losses are printed to show the two
  compute the same thing.
* SFT: Winnow's packed, response-only SFT against TRL's `SFTTrainer` (packing, completion-only
  loss) on the same 512 alpaca examples, the same model shape and initial weights, batch and
  length, counting the answer tokens each trains on per second.

On CPU these are CPU figures (float32, 2 cores): tokens per second and their ratio; MFU needs a
GPU's peak and is reported only with `--device cuda`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.paths import results_dir, work_dir  # noqa: E402
from train.export import export_hf  # noqa: E402
from train.model import GPT, ModelConfig  # noqa: E402
from train.pretrain import peak_flops  # noqa: E402
from train.sft import alpaca_prompt, build_rows, encode_example, row_batch  # noqa: E402
from train.tokenizer import load_vocab, train_tokenizer  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
WORK = work_dir() / "train_vs_hf"


def tokenizer_and_tokens(vocab_size: int) -> tuple[str, np.ndarray]:
    """A tokenizer trained on the Wikipedia demo articles, and those articles as one token stream."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    WORK.mkdir(parents=True, exist_ok=True)
    articles = [a for a in (SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt").read_text().splitlines() if a]
    pq.write_table(pa.table({"text": articles}), WORK / "wiki.parquet")
    path = str(train_tokenizer([str(WORK / "wiki.parquet")], vocab_size, str(WORK / "tokenizer.json")))
    vocab = load_vocab(path)
    stream = np.concatenate([[vocab.bos_id, *vocab.encode(a)] for a in articles]).astype(np.int64)
    return path, stream


def hf_twin(model: GPT, tokenizer: str):
    """LlamaForCausalLM with the same shape and the same weights, through Winnow's export."""
    from transformers import AutoModelForCausalLM

    from train import checkpoint

    checkpoint.save(str(WORK / "init"), model, None, 0, {"tokenizer": tokenizer})
    export_hf(str(WORK / "init"), str(WORK / "init-hf"))
    return AutoModelForCausalLM.from_pretrained(str(WORK / "init-hf"), dtype=torch.float32,
                                                attn_implementation="sdpa")


def timed_steps(step, batches: list, warmup: int, device: str) -> tuple[float, list[float]]:
    losses = []
    for batch in batches[:warmup]:
        losses.append(step(batch))
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for batch in batches[warmup:]:
        losses.append(step(batch))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, losses


def pretrain_comparison(args: argparse.Namespace, tokenizer: str, stream: np.ndarray) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=load_vocab(tokenizer).size, n_layer=args.layers, n_head=args.heads,
                      n_kv_head=args.heads, n_embd=args.width, max_seq_len=args.seq_len)
    winnow = GPT(cfg)
    hf = hf_twin(winnow, tokenizer)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(stream) - args.seq_len - 1, size=(args.steps + args.warmup, args.batch))
    batches = [torch.from_numpy(np.stack([stream[s: s + args.seq_len + 1] for s in row])) for row in starts]
    bf16 = args.device == "cuda"
    results = {}
    for name, model in (("winnow", winnow), ("transformers", hf)):
        model.to(args.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=args.device == "cuda")

        def step(batch, model=model, optimizer=optimizer, name=name):
            batch = batch.to(args.device)
            x, y = batch[:, :-1], batch[:, 1:]
            with torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)[0] if name == "winnow" else model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()

        seconds, losses = timed_steps(step, batches, args.warmup, args.device)
        tokens = args.steps * args.batch * args.seq_len
        peak = peak_flops(torch.device(args.device), None)
        tok_s = tokens / seconds
        results[name] = {"tok_per_s": round(tok_s, 1), "first_loss": round(losses[0], 5),
                         "last_loss": round(losses[-1], 5),
                         "mfu": round(tok_s * winnow.flops_per_token(args.seq_len) / peak, 4) if peak else None}
    results["ratio"] = round(results["winnow"]["tok_per_s"] / results["transformers"]["tok_per_s"], 2)
    results["params"] = winnow.num_params()
    return results


def sft_comparison(args: argparse.Namespace, tokenizer: str) -> dict:
    """Same examples, model, batch and length: Winnow's SFT step against TRL's SFTTrainer."""
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    vocab = load_vocab(tokenizer)
    rows = json.loads((SHARED / "sft" / "llamafactory-demo" / "alpaca_en_demo.json").read_text())[:args.sft_examples]
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab.size, n_layer=args.layers, n_head=args.heads, n_kv_head=args.heads,
                      n_embd=args.width, max_seq_len=args.seq_len)
    winnow = GPT(cfg)
    hf = hf_twin(winnow, tokenizer)

    examples = [encode_example(r, vocab, "alpaca") for r in rows]
    packed = build_rows(examples, args.seq_len, vocab.pad_id, packing=True)
    answer_tokens = sum(min(sum(m), args.seq_len) for _, m in examples)
    winnow.to(args.device).train()
    optimizer = torch.optim.AdamW(winnow.parameters(), lr=1e-4, weight_decay=0.0)
    order = np.arange(len(packed))
    t = time.perf_counter()
    for k in range(0, len(order), args.batch):
        x, y, mask, positions, doc_ids = (b.to(args.device) for b in row_batch(packed, order[k:k + args.batch]))
        _, loss = winnow(x, y, mask, positions, doc_ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(winnow.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    winnow_s = time.perf_counter() - t

    hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(str(WORK / "init-hf"))
    data = Dataset.from_list([{"prompt": alpaca_prompt(r["instruction"], r.get("input")),
                               "completion": r["output"] + hf_tokenizer.eos_token} for r in rows])
    config = SFTConfig(output_dir=str(WORK / "trl"), per_device_train_batch_size=args.batch, num_train_epochs=1,
                       max_length=args.seq_len, packing=True, completion_only_loss=True, learning_rate=1e-4,
                       weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant", report_to=[],
                       logging_steps=10_000, save_strategy="no", use_cpu=args.device == "cpu", bf16=False,
                       dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=hf, args=config, train_dataset=data, processing_class=hf_tokenizer)
    t = time.perf_counter()
    trainer.train()
    trl_s = time.perf_counter() - t
    return {"examples": len(rows), "answer_tokens": answer_tokens, "winnow_rows": len(packed),
            "winnow": {"seconds": round(winnow_s, 2), "answer_tok_per_s": round(answer_tokens / winnow_s, 1)},
            "trl": {"seconds": round(trl_s, 2), "answer_tok_per_s": round(answer_tokens / trl_s, 1),
                    "steps": trainer.state.global_step},
            "ratio": round(trl_s / winnow_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--sft-examples", type=int, default=512)
    args = parser.parse_args()
    tokenizer, stream = tokenizer_and_tokens(args.vocab)
    result = {"device": args.device, "torch_threads": torch.get_num_threads(), "config": vars(args),
              "pretrain": pretrain_comparison(args, tokenizer, stream)}
    print(json.dumps(result["pretrain"], indent=1))
    result["sft"] = sft_comparison(args, tokenizer)
    print(json.dumps(result["sft"], indent=1))
    results_dir().mkdir(parents=True, exist_ok=True)
    (results_dir() / f"train_vs_hf_{args.device}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
