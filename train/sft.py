"""Supervised fine-tuning data: examples to token rows with a response-only loss mask, packed or padded.

Two shapes come in: alpaca (`instruction`, `input`, `output`) and chat (`messages`, a list of
`{role, content}`). Two templates go out:
- `alpaca`: "### Instruction:\\n...\\n\\n### Input:\\n...\\n\\n### Response:\\n" then the answer and EOS;
- `chat`: each turn as a role token, its text and an end-of-turn token (the tokenizer from
  `winnow tokenize train` has them).
Only the answer tokens (and the EOS or end-of-turn that closes them) carry loss.

Packing puts several examples in one row. Each keeps its own positions (RoPE restarts) and a
document id, from which the model builds a block-diagonal causal mask: no token attends across
an example boundary, and no target crosses one. Padding gives each example its own row instead.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.chat import encode_conversation, prompt_tokens, resolve_template
from train.data import RowBatches
from train.tokenizer import Vocab, load_vocab

VAL_BATCHES = 8  # the first rows of the held-out split, the same at every evaluation


def example_files(path: str) -> list[Path]:
    """A file as is; a folder's Parquet parts; a Winnow run directory's `instructions/`."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    if (p / "instructions").is_dir():
        p = p / "instructions"
    files = sorted(p.glob("part-*.parquet")) or sorted(p.glob("*.parquet")) + sorted(p.glob("*.jsonl"))
    if not files:
        raise ValueError(f"sft.data: {path} holds no part-*.parquet, *.parquet or *.jsonl files")
    return files


def read_text(path: Path) -> str:
    """A data file's text; bytes that are not UTF-8 are an error that names the file and the byte."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}): convert it to UTF-8") from None


def read_file_rows(p: Path) -> list[Any]:
    """One file's rows; every problem is a ValueError that names the file (and the line, for JSONL)."""
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(p).to_pylist()
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{p}: not a readable Parquet file ({exc})") from None
    text = read_text(p)
    if not text.strip():
        raise ValueError(f"{p} is empty: give a file of examples (JSON array, JSONL or Parquet)")
    if p.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{p}: line {n}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (one object per line? name it .jsonl)" if exc.msg == "Extra data" else ""
        raise ValueError(f"{p}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{hint}") from None
    return data if isinstance(data, list) else [data]


def read_examples(paths: list[str]) -> list[dict[str, Any]]:
    """Rows from JSON arrays, JSONL or Parquet files (or folders of them), in file order."""
    rows: list[dict[str, Any]] = []
    for p in [f for path in paths for f in example_files(path)]:
        found = read_file_rows(p)
        for k, row in enumerate(found):
            if not isinstance(row, dict):
                raise ValueError(f"{p}: row {k} is {type(row).__name__}, not an object with named fields")
        rows += found
    return rows


def as_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in row:
        return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
    if "instruction" not in row or "output" not in row:
        raise ValueError(f"an SFT example needs `instruction` and `output`, or `messages`; got keys {sorted(row)}")
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def alpaca_prompt(instruction: str, input_text: str | None = None) -> str:
    prompt = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        prompt += f"### Input:\n{input_text}\n\n"
    return prompt + "### Response:\n"


def encode_example(row: dict[str, Any], vocab: Vocab, template: str) -> tuple[list[int], list[int]]:
    """Tokens and a loss mask (1 on the answer tokens) for one example."""
    template = resolve_template(vocab, template)
    if template == "model":
        return encode_conversation(vocab, as_messages(row))
    if template == "alpaca":
        if "messages" in row:
            turns = as_messages(row)
            if [t["role"] for t in turns] != ["user", "assistant"]:
                raise ValueError("the alpaca template takes single-turn examples; use template: chat")
            row = {"instruction": turns[0]["content"], "output": turns[1]["content"]}
        prompt = [vocab.bos_id, *vocab.encode(alpaca_prompt(row["instruction"], row.get("input")))]
        answer = [*vocab.encode(row["output"]), vocab.eos_id]
        return prompt + answer, [0] * len(prompt) + [1] * len(answer)
    missing = {"user", "assistant"} - set(vocab.role_ids)
    if missing:
        raise ValueError(f"the chat template needs role tokens {sorted(missing)} in the tokenizer "
                         "(train one with `winnow tokenize train`, or use template: alpaca)")
    tokens, mask = [vocab.bos_id], [0]
    for turn in as_messages(row):
        if turn["role"] not in vocab.role_ids:
            raise ValueError(f"unknown role {turn['role']!r}")
        body = [*vocab.encode(turn["content"]), vocab.end_of_turn_id]
        tokens += [vocab.role_ids[turn["role"]], *body]
        mask += [0] + [1 if turn["role"] == "assistant" else 0] * len(body)
    return tokens, mask


def chat_prompt(messages: list[dict[str, str]], vocab: Vocab) -> list[int]:
    """Tokens of a conversation so far, ending where the assistant's answer starts."""
    tokens = [vocab.bos_id]
    for turn in messages:
        if turn["role"] not in vocab.role_ids:
            raise ValueError(f"unknown role {turn['role']!r}")
        tokens += [vocab.role_ids[turn["role"]], *vocab.encode(turn["content"]), vocab.end_of_turn_id]
    return tokens + [vocab.role_ids["assistant"]]


def prompt_ids(vocab: Vocab, template: str | None, messages: list[dict[str, str]] | None = None,
               text: str | None = None) -> list[int]:
    """What a model sees before it answers: plain `text` (a base model continues it), or a
    conversation in the template the model was fine-tuned with. Alpaca has no turns: earlier
    turns become the instruction."""
    template = resolve_template(vocab, template)
    if messages is None:
        messages = [{"role": "user", "content": text or ""}]
        if template is None:
            return [vocab.bos_id, *vocab.encode(text or "")]
    if template == "model":
        return prompt_tokens(vocab, messages)
    if template == "chat" or (template is None and {"user", "assistant"} <= set(vocab.role_ids)):
        return chat_prompt(messages, vocab)
    instruction = "\n\n".join(m["content"] for m in messages)
    return [vocab.bos_id, *vocab.encode(alpaca_prompt(instruction))]


@dataclass
class Rows:
    """Training rows of length seq_len + 1: tokens, loss mask, positions, example ids."""

    tokens: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    doc_ids: np.ndarray
    packed: bool
    truncated: int = 0  # examples longer than a row, cut to fit
    dropped: int = 0  # of those, the ones cut before their answer: nothing left to learn from

    def __len__(self) -> int:
        return len(self.tokens)


def build_rows(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int, packing: bool) -> Rows:
    """Packs examples greedily into rows (or one per row when not packing); long ones are cut, and
    dropped when the cut leaves no answer token (they would train at loss 0); both are counted."""
    width = seq_len + 1
    rows: list[tuple[list, list, list, list]] = []
    current: tuple[list, list, list, list] = ([], [], [], [])
    truncated = dropped = 0
    for k, (tokens, mask) in enumerate(examples):
        if len(tokens) > width:
            truncated += 1
            tokens, mask = tokens[:width], mask[:width]
            if not any(mask[1:]):  # the first token is never a target
                dropped += 1
                continue
        if current[0] and (not packing or len(current[0]) + len(tokens) > width):
            rows.append(current)
            current = ([], [], [], [])
        current[0].extend(tokens)
        current[1].extend(mask)
        current[2].extend(range(len(tokens)))
        current[3].extend([k] * len(tokens))
    if current[0]:
        rows.append(current)
    n = len(rows)
    out = Rows(np.full((n, width), pad_id, np.int64), np.zeros((n, width), np.int64),
               np.zeros((n, width), np.int64), np.full((n, width), -1, np.int64), packing, truncated, dropped)
    for i, (tokens, mask, positions, ids) in enumerate(rows):
        out.tokens[i, :len(tokens)] = tokens
        out.mask[i, :len(mask)] = mask
        out.positions[i, :len(positions)] = positions
        out.doc_ids[i, :len(ids)] = ids
    return out


def row_batch(rows: Rows, index: np.ndarray) -> tuple[torch.Tensor, ...]:
    """(x, y, loss_mask, positions, doc_ids) for GPT.forward; no target crosses an example boundary.
    Unpacked rows leave positions and doc_ids out, so attention keeps its fast causal kernels."""
    tokens, mask = torch.from_numpy(rows.tokens[index]), torch.from_numpy(rows.mask[index])
    positions, doc_ids = torch.from_numpy(rows.positions[index]), torch.from_numpy(rows.doc_ids[index])
    same_example = doc_ids[:, 1:] == doc_ids[:, :-1]
    loss_mask = (mask[:, 1:] == 1) & same_example
    if not rows.packed:  # one example per row, padding after it: plain causal attention suffices
        return tokens[:, :-1], tokens[:, 1:], loss_mask, None, None
    return tokens[:, :-1], tokens[:, 1:], loss_mask, positions[:, :-1], doc_ids[:, :-1]


def held_out(index: int, row: dict[str, Any], fraction: float) -> bool:
    key = json.dumps(row, sort_keys=True, default=str) + str(index)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64 < fraction


def sft_data(cfg: Any, rank: int, world_size: int) -> tuple[RowBatches, Any]:
    """Training batches and a validation-batch function for `winnow train sft`."""
    vocab = load_vocab(cfg.tokenizer)
    train, val = [], []
    for k, row in enumerate(read_examples(cfg.sft.data)):
        (val if held_out(k, row, cfg.sft.val_fraction) else train).append(encode_example(row, vocab, cfg.sft.template))
    rows = build_rows(train, cfg.seq_len, vocab.pad_id, cfg.sft.packing)
    where = ", ".join(cfg.sft.data)
    if not len(rows):
        raise ValueError(f"sft.data: none of the {len(train):,} training examples in {where} has an answer token "
                         f"within seq_len={cfg.seq_len} ({rows.dropped:,} cut before their answer): raise seq_len "
                         "or shorten the prompts")
    if rows.truncated and rank == 0:
        print(f"sft: {rows.truncated:,} of {len(train):,} training examples in {where} are longer than "
              f"seq_len={cfg.seq_len} and were cut; {rows.dropped:,} of them lost their whole answer and were "
              "dropped", file=sys.stderr, flush=True)
    batches = RowBatches(rows, len(rows), partial(row_batch, rows), cfg.micro_batch, cfg.seed, rank, world_size,
                         what="SFT rows")
    val_rows = build_rows(val, cfg.seq_len, vocab.pad_id, cfg.sft.packing) if val else None

    def val_batches() -> list:
        if val_rows is None:
            return []
        n = min(len(val_rows), cfg.micro_batch * VAL_BATCHES)
        return [row_batch(val_rows, np.arange(k, min(k + cfg.micro_batch, n))) for k in range(0, n, cfg.micro_batch)]

    return batches, val_batches
