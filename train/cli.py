"""`winnow tokenize`, `winnow train`, `winnow generate`, `winnow import`, `winnow export`, `winnow serve` and
`winnow eval`."""

from __future__ import annotations

import argparse
import json
import os
import sys


def cmd_tokenize(args: argparse.Namespace) -> int:
    from train.tokenizer import parquet_inputs

    training = args.inputs[0] == "train"
    inputs = args.inputs[1:] if training else args.inputs
    try:
        files = parquet_inputs(inputs)
    except FileNotFoundError as exc:
        print(f"winnow tokenize: {exc}", file=sys.stderr)
        return 2
    if training:
        from train.tokenizer import train_tokenizer

        out = args.out or "tokenizer.json"
        path = train_tokenizer(files, args.vocab_size, out, max_docs=args.max_docs)
        print(f"wrote {path} ({args.vocab_size:,} tokens, from {len(files)} files)")
        return 0
    if not args.tokenizer or not args.out:
        print("winnow tokenize: --tokenizer and --out are required to write token shards", file=sys.stderr)
        return 2
    from train.shards import tokenize_to_shards
    from train.tokenizer import tokenizer_file

    try:
        tokenizer = tokenizer_file(args.tokenizer)
    except FileNotFoundError as exc:
        print(f"winnow tokenize: --tokenizer: {exc}", file=sys.stderr)
        return 2
    try:
        meta = tokenize_to_shards(files, tokenizer, args.out, val_fraction=args.val_fraction,
                                  formats=tuple(f.strip() for f in args.format.split(",") if f.strip()))
    except ValueError as exc:
        print(f"winnow tokenize: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(meta['shards'])} train and validation shards to {args.out}: {meta['train_tokens']:,} train "
          f"and {meta['val_tokens']:,} validation tokens from {meta['docs']:,} documents ({meta['dtype']})"
          + (f"; Megatron-LM's indexed dataset: --data-path {args.out}/{meta['megatron']['train']}"
             if "megatron" in meta else ""))
    return 0


def check_shards_tokenizer(pattern: str, tokenizer: str) -> None:
    """Token shards record the tokenizer that made them; training with another one is an error."""
    import glob
    from pathlib import Path

    from train.tokenizer import tokenizer_digest

    for folder in {Path(f).parent for f in glob.glob(pattern)}:
        meta = folder / "meta.json"
        if meta.exists() and json.loads(meta.read_text())["tokenizer_digest"] != tokenizer_digest(tokenizer):
            raise ValueError(f"{folder} was tokenized with {json.loads(meta.read_text())['tokenizer']}, "
                             f"not with {tokenizer}: retokenize, or train with that tokenizer")


def pretrain_data(cfg, rank: int, world_size: int):
    import glob

    from train.data import TokenLoader, validation_batches

    check_shards_tokenizer(cfg.data.train, cfg.tokenizer)

    loader = TokenLoader(cfg.data.train, cfg.seq_len, cfg.micro_batch, seed=cfg.seed, rank=rank,
                         world_size=world_size)
    val_files = sorted(glob.glob(cfg.data.val)) if cfg.data.val else []
    cache: list = []

    def val() -> list:
        if not cache and val_files:
            cache.extend(validation_batches(val_files, cfg.seq_len, cfg.micro_batch, cfg.data.eval_batches))
        return cache

    return loader, val


def cmd_train(args: argparse.Namespace) -> int:
    from train.config import TrainConfigError, load_train_config
    from train.loop import TrainingDiverged

    try:
        cfg = load_train_config(args.config, args.set or [])
    except TrainConfigError as exc:
        print(f"winnow train: config error: {exc}", file=sys.stderr)
        return 2
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if {"pretrain": cfg.data, "sft": cfg.sft, "dpo": cfg.dpo}[args.mode] is None:
        section = {"pretrain": "data"}.get(args.mode, args.mode)
        print(f"winnow train {args.mode}: the config has no `{section}:` section", file=sys.stderr)
        return 2
    try:
        if args.mode == "dpo":
            from train.dpo import train_dpo

            last = train_dpo(cfg, stop_at=args.stop_at)
        else:
            from train.pretrain import train
            from train.sft import sft_data

            batches, val = (pretrain_data if args.mode == "pretrain" else sft_data)(cfg, rank, world)
            last = train(cfg, batches, val, stop_at=args.stop_at)
    except TrainConfigError as exc:  # found once the model is read: lora targets, a conflicting model:
        print(f"winnow train {args.mode}: config error: {args.config}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"winnow train {args.mode}: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"winnow train {args.mode}: {exc}", file=sys.stderr)
        return 1
    if rank == 0:
        print(json.dumps(last))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from train.checkpoint import load_model, prompt_template
    from train.generate import generate
    from train.sampling import SamplingError, SamplingParams
    from train.sft import prompt_ids
    from train.tokenizer import load_vocab

    try:  # the rules winnow serve applies to a request, checked before the model loads
        params = SamplingParams(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, min_p=args.min_p, stop=args.stop or [], seed=args.seed,
                                best_of=args.best_of)
    except SamplingError as exc:
        print(f"winnow generate: {exc.option} {exc.problem}", file=sys.stderr)
        return 2
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto"
                                                                                    else args.device)
    try:
        model, ckpt = load_model(args.checkpoint, device)
    except (ValueError, FileNotFoundError) as exc:  # a truncated or diverged checkpoint: no traceback
        print(f"winnow generate: {exc}", file=sys.stderr)
        return 2
    vocab = load_vocab(ckpt["tokenizer"])
    template = prompt_template(ckpt) if args.template == "auto" else args.template
    if template == "none":
        template = None
    try:
        prompts = [prompt_ids(vocab, template, messages=[{"role": "user", "content": p}]) if template
                   else prompt_ids(vocab, None, text=p) for p in args.prompt]
        outs = generate(model, vocab, prompts, params, device)
    except ValueError as exc:
        print(f"winnow generate: {exc}", file=sys.stderr)
        return 2
    for prompt, out in zip(args.prompt, outs, strict=True):
        if args.json:
            print(json.dumps({"prompt": prompt, "text": out.text, "score": out.score,
                              "finish_reason": out.finish_reason, "tokens": len(out.tokens)}))
        else:
            print(f"{prompt}\033[1m{out.text}\033[0m" if sys.stdout.isatty() else prompt + out.text)
            print(f"  [{len(out.tokens)} tokens, mean log-prob {out.score:.3f}, {out.finish_reason}]")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import time

    os.environ["HF_HUB_OFFLINE"] = "1"  # a published model is read from disk, never fetched
    from train.hf_import import ModelImportError, import_model

    start = time.time()
    try:
        out = import_model(args.source, args.out, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (ModelImportError, FileNotFoundError) as exc:
        print(f"winnow import: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} in {time.time() - start:.0f}s: `winnow generate {out} --prompt ...`, or `init_from: {out}`")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from train.export import export_hf

    try:
        path = export_hf(args.checkpoint, args.hf)
    except (ValueError, FileNotFoundError) as exc:  # a truncated or diverged checkpoint: no traceback
        print(f"winnow export: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a Hugging Face checkpoint to {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from train.serve import serve
    from train.serve_requests import Limits

    try:
        serve(args.checkpoint, args.host, args.port, args.name, args.device,
              Limits(max_prompts=args.max_prompts, max_samples=args.max_samples))
    except (ValueError, FileNotFoundError) as exc:  # raised while loading, before it serves
        print(f"winnow serve: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenize", help="train a tokenizer (`tokenize train ...`) or write token shards")
    tok.add_argument("inputs", nargs="+", help="`train` first to train a tokenizer; then run directories, "
                                               "folders of Parquet files or files")
    tok.add_argument("--out", help="tokenizer.json to write (train), or the folder for token shards")
    tok.add_argument("--tokenizer", help="the tokenizer.json to encode with, or a checkpoint folder (an imported "
                                         "model's: continued pretraining) whose tokenizer to use (shards)")
    tok.add_argument("--vocab-size", type=int, default=8192, help="train: vocabulary size (default 8192)")
    tok.add_argument("--max-docs", type=int, help="train: at most this many documents")
    tok.add_argument("--val-fraction", type=float, default=0.01, help="shards: documents held out (default 0.01)")
    tok.add_argument("--format", default="llmc", help="shards: llmc (the bundled trainer's, default), megatron "
                                                      "(Megatron-LM's .bin/.idx under OUT/megatron/), or both: "
                                                      "llmc,megatron")
    tok.set_defaults(func=cmd_tokenize)

    tr = sub.add_parser("train", help="pretrain, fine-tune or preference-tune the bundled GPT")
    tr.add_argument("mode", choices=["pretrain", "sft", "dpo"])
    tr.add_argument("config")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. max_steps=50")
    tr.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint (rerun to resume)")
    tr.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="sample from a checkpoint")
    gen.add_argument("checkpoint", help="a training out_dir or checkpoint.pt")
    gen.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    gen.add_argument("--template", choices=["auto", "none", "alpaca", "chat", "model"], default="auto",
                     help="wrap each prompt as a chat model expects (auto: the template it was tuned with, or an "
                          "imported model's own chat template; model: that template; a base model continues the text)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.8, help="0 to 2 (default 0.8); below 1e-5: greedy")
    gen.add_argument("--top-k", type=int, default=0, help="keep the K most likely tokens (0 or -1: off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="in (0, 1]: keep that share of the probability "
                                                               "mass, at least the top token (default 1: off)")
    gen.add_argument("--min-p", type=float, default=0.0, help="in [0, 1]: drop tokens below min-p times the top "
                                                               "token's probability (default 0: off)")
    gen.add_argument("--stop", action="append", help="a stop string (repeatable)")
    gen.add_argument("--seed", type=int, help="0 to 2**63-1; prompt i samples with seed + i")
    gen.add_argument("--best-of", type=int, default=1, help="sample N times, keep the highest mean log-prob")
    gen.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=cmd_generate)

    imp = sub.add_parser("import", help="a published model (Hugging Face folder, GGUF file, or bundled name) "
                                        "as a checkpoint")
    imp.add_argument("source", metavar="SRC", help="a Hugging Face model folder, a .gguf file, or "
                                                   "smollm2-135m-instruct (the bundled SmolLM2)")
    imp.add_argument("--out", required=True, metavar="CKPT", help="the checkpoint folder to write")
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="export a checkpoint for Hugging Face transformers")
    exp.add_argument("checkpoint")
    exp.add_argument("--hf", required=True, metavar="DIR", help="the folder to write")
    exp.set_defaults(func=cmd_export)

    srv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server for a checkpoint")
    srv.add_argument("checkpoint")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--name", help="the model name clients send (default: the checkpoint folder's name)")
    srv.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    srv.add_argument("--max-prompts", type=int, default=32, help="prompts per completions request (default 32)")
    srv.add_argument("--max-samples", type=int, default=8, help="`n` and `best_of` per request (default 8)")
    srv.set_defaults(func=cmd_serve)

    add_eval_parser(sub)

    from train.bestofn import add_parser as add_bestofn

    add_bestofn(sub)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """`winnow eval`: built here so that the CLI starts without importing torch."""
    ev = sub.add_parser("eval", help="bits per byte on held-out text and accuracy on multiple-choice tasks")
    ev.add_argument("checkpoint", help="a training out_dir or checkpoint.pt")
    ev.add_argument("--text", action="append", metavar="[NAME=]PATH",
                    help="a held-out text set: JSONL, JSON, Parquet or .txt, a folder of them, or a run directory "
                         "(repeatable; --text or --task is required)")
    ev.add_argument("--task", action="append", metavar="[NAME=]PATH",
                    help="a multiple-choice task: JSONL rows of context, choices, label (repeatable)")
    ev.add_argument("--max-docs", type=int, default=200, help="documents per text set (default 200)")
    ev.add_argument("--delimiter", default=" ", help="what goes between a context and a choice (default: a space)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ev.add_argument("--json", action="store_true", help="the figures as JSON")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from train.eval import run

    return run(args)
