"""`winnow tokenize`, `winnow train`, `winnow generate`, `winnow export` and `winnow serve`."""

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

    meta = tokenize_to_shards(files, args.tokenizer, args.out, val_fraction=args.val_fraction)
    print(f"wrote {len(meta['shards'])} train and validation shards to {args.out}: {meta['train_tokens']:,} train "
          f"and {meta['val_tokens']:,} validation tokens from {meta['docs']:,} documents ({meta['dtype']})")
    return 0


def pretrain_data(cfg, rank: int, world_size: int):
    import glob

    from train.data import TokenLoader, validation_batches

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

    try:
        cfg = load_train_config(args.config, args.set or [])
    except (TrainConfigError, FileNotFoundError) as exc:
        print(f"winnow train: config error: {exc}", file=sys.stderr)
        return 2
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if args.mode == "pretrain":
        if cfg.data is None:
            print("winnow train pretrain: the config has no `data:` section (is it an SFT config?)", file=sys.stderr)
            return 2
        batches, val = pretrain_data(cfg, rank, world)
    else:
        if cfg.sft is None:
            print("winnow train sft: the config has no `sft:` section", file=sys.stderr)
            return 2
        from train.sft import sft_data

        batches, val = sft_data(cfg, rank, world)
    from train.pretrain import train

    last = train(cfg, batches, val, stop_at=args.stop_at)
    if rank == 0:
        print(json.dumps(last))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenize", help="train a tokenizer (`tokenize train ...`) or write token shards")
    tok.add_argument("inputs", nargs="+", help="`train` first to train a tokenizer; then run directories, "
                                               "folders of Parquet files or files")
    tok.add_argument("--out", help="tokenizer.json to write (train), or the folder for token shards")
    tok.add_argument("--tokenizer", help="the tokenizer.json to encode with (shards)")
    tok.add_argument("--vocab-size", type=int, default=8192, help="train: vocabulary size (default 8192)")
    tok.add_argument("--max-docs", type=int, help="train: at most this many documents")
    tok.add_argument("--val-fraction", type=float, default=0.01, help="shards: documents held out (default 0.01)")
    tok.set_defaults(func=cmd_tokenize)

    tr = sub.add_parser("train", help="pretrain or fine-tune the bundled GPT")
    tr.add_argument("mode", choices=["pretrain", "sft"])
    tr.add_argument("config")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. max_steps=50")
    tr.add_argument("--stop-at", type=int, help="stop after this step with a checkpoint (rerun to resume)")
    tr.set_defaults(func=cmd_train)
