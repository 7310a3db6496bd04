"""`winnow eval CKPT`: bits per byte on held-out text, and accuracy on multiple-choice tasks.

Bits per byte is the model's total negative log-likelihood of a text, in bits, over the text's UTF-8
bytes: unlike loss per token it compares models with different tokenizers. Every document starts
with a BOS (as in training); a document longer than the context is read in windows that overlap by
one token, so each token is scored once. An answer (instruction data) is scored after its prompt,
in the template the model was fine-tuned with (a base model reads the alpaca prompt as text).

A multiple-choice question is scored as lm-evaluation-harness scores it: the log-likelihood of each
choice (after a space) given BOS and the context; the context and the continuation are tokenized
together and split, and the model's pick is the choice with the highest sum (`acc`) or the highest
sum per character of the choice (`acc_norm`). Centred accuracy, as in DCLM and nanochat's CORE,
is (acc - chance) / (1 - chance): 0 for guessing, 1 for always right, whatever the number of choices.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from train.eval_data import Doc, Question, Skipped, load_task, load_text_set
from train.model import GPT
from train.score import score
from train.sft import alpaca_prompt, prompt_ids
from train.tokenizer import Vocab


def windows(ids: list[int], length: int) -> list[tuple[int, list[int]]]:
    """(start, window) pieces of at most `length` tokens, overlapping by one: every token after the
    first is predicted exactly once, from up to length - 1 tokens before it."""
    if len(ids) <= length:
        return [(0, ids)]
    step = length - 1
    return [(s, ids[s:s + length]) for s in range(0, len(ids) - 1, step)]


def doc_tokens(doc: Doc, vocab: Vocab, template: str | None) -> tuple[list[int], int]:
    """The token sequence and the index of its first scored token."""
    if doc.instruction is None:
        return [vocab.bos_id, *vocab.encode(doc.text)], 1
    if template is None:  # a base model: the alpaca prompt as plain text
        context = [vocab.bos_id, *vocab.encode(alpaca_prompt(doc.instruction))]
    else:
        context = prompt_ids(vocab, template, messages=[{"role": "user", "content": doc.instruction}])
    return [*context, *vocab.encode(doc.text)], len(context)


def batch_tokens(model: GPT) -> int:
    """Tokens per scoring batch, so that its logits stay near 256 MB whatever the vocabulary: 8,192
    for the project's 8k vocabulary, about 1,400 for SmolLM2's 49k, 500 for Llama 3's 128k."""
    return max(256, min(8192, 2**26 // model.cfg.vocab_size))


def bits_per_byte(model: GPT, vocab: Vocab, docs: list[Doc], template: str | None = None,
                  device: str = "cpu") -> dict[str, Any]:
    pieces: list[tuple[int, int, list[int]]] = []  # (doc, first scored position in the window, window)
    scored_tokens = 0
    for k, doc in enumerate(docs):
        ids, first = doc_tokens(doc, vocab, template)
        scored_tokens += len(ids) - first
        for start, window in windows(ids, model.cfg.max_seq_len):
            pieces.append((k, max(first - start, 1), window))
    results = score(model, [w for _, _, w in pieces], device, tokens_per_batch=batch_tokens(model))
    nats = sum(sum(r.logprobs[skip - 1:]) for (_, skip, _), r in zip(pieces, results, strict=True))
    n_bytes = sum(len(doc.text.encode("utf-8")) for doc in docs)
    return {"docs": len(docs), "tokens": scored_tokens, "bytes": n_bytes,
            "bits_per_byte": -nats / math.log(2) / n_bytes if n_bytes else None}


def encode_pair(vocab: Vocab, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-evaluation-harness splits them: trailing spaces of the
    context move to the continuation, and the whole is tokenized once, then cut after the context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = [vocab.bos_id, *vocab.encode(context)]
    whole = [vocab.bos_id, *vocab.encode(context + continuation)]
    return context_ids, whole[len(context_ids):]


def choice_logprobs(model: GPT, vocab: Vocab, questions: list[Question], delimiter: str = " ",
                    device: str = "cpu") -> list[list[float]]:
    """The log-likelihood of every choice of every question, given its context."""
    limit = model.cfg.max_seq_len
    sequences, spans = [], []
    for q in questions:
        for choice in q.choices:
            context, continuation = encode_pair(vocab, q.context, delimiter + choice)
            whole = (context + continuation)[-limit:]  # too long: the context loses its start, as in lm-eval
            sequences.append(whole)
            spans.append(len(continuation))
    results = score(model, sequences, device, tokens_per_batch=batch_tokens(model))
    flat = [sum(r.logprobs[len(r.logprobs) - n:]) if n else 0.0 for r, n in zip(results, spans, strict=True)]
    out, k = [], 0
    for q in questions:
        out.append(flat[k:k + len(q.choices)])
        k += len(q.choices)
    return out


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first on a tie, as numpy's


def multiple_choice(model: GPT, vocab: Vocab, questions: list[Question], delimiter: str = " ",
                    device: str = "cpu") -> dict[str, Any]:
    if not questions:
        return {"questions": 0, "acc": None, "acc_norm": None, "chance": None, "centered_acc": None}
    lls = choice_logprobs(model, vocab, questions, delimiter, device)
    right = [argmax(ll) == q.label for q, ll in zip(questions, lls, strict=True)]
    right_norm = [argmax([v / len(c) for v, c in zip(ll, q.choices, strict=True)]) == q.label
                  for q, ll in zip(questions, lls, strict=True)]
    acc, acc_norm = sum(right) / len(questions), sum(right_norm) / len(questions)
    chance = sum(1 / len(q.choices) for q in questions) / len(questions)
    return {"questions": len(questions), "acc": acc, "acc_norm": acc_norm, "chance": chance,
            "centered_acc": (acc - chance) / (1 - chance)}


def format_tables(result: dict[str, Any]) -> str:
    lines = []
    if result["text"]:
        lines.append(f"{'text set':<16} {'docs':>6} {'tokens':>10} {'bytes':>11} {'bits/byte':>10}")
        for name, r in result["text"].items():
            bpb = f"{r['bits_per_byte']:.4f}" if r["bits_per_byte"] is not None else "-"
            lines.append(f"{name:<16} {r['docs']:>6,} {r['tokens']:>10,} {r['bytes']:>11,} {bpb:>10}")
    if result["tasks"]:
        if lines:
            lines.append("")
        lines.append(f"{'task':<16} {'questions':>9} {'acc':>7} {'acc_norm':>8} {'chance':>7} {'centred':>8}")
        for name, r in result["tasks"].items():
            cells = [f"{r[k]:.4f}" if r[k] is not None else "-" for k in ("acc", "acc_norm", "chance", "centered_acc")]
            lines.append(f"{name:<16} {r['questions']:>9,} {cells[0]:>7} {cells[1]:>8} {cells[2]:>7} {cells[3]:>8}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def named(spec: str) -> tuple[str, str]:
    """`NAME=PATH`, or a path whose file or folder name (without suffix) is the name."""
    from pathlib import Path

    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name, path
    return Path(spec).name.split(".")[0], spec


def evaluate(checkpoint: str, text_sets: dict[str, str], tasks: dict[str, str], notes: list[str],
             max_docs: int | None = None, device: str = "cpu", delimiter: str = " ") -> dict[str, Any]:
    from train.checkpoint import load_model, prompt_template
    from train.tokenizer import load_vocab

    model, ckpt = load_model(checkpoint, device)
    vocab = load_vocab(ckpt["tokenizer"])
    template = prompt_template(ckpt)
    result: dict[str, Any] = {"checkpoint": checkpoint, "step": ckpt.get("step"), "text": {}, "tasks": {},
                              "notes": notes}
    for name, path in text_sets.items():
        skipped = Skipped()
        docs = load_text_set(path, skipped, max_docs)
        result["text"][name] = {"path": path, **bits_per_byte(model, vocab, docs, template, device),
                                "skipped": skipped.count}
        notes += [f"{name}: skipped {e}" for e in skipped.examples]
    for name, path in tasks.items():
        skipped = Skipped()
        questions = load_task(path, skipped)
        result["tasks"][name] = {"path": path, **multiple_choice(model, vocab, questions, delimiter, device),
                                 "skipped": skipped.count}
        notes += [f"{name}: skipped {e}" for e in skipped.examples]
    return result


def finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: a figure that is not a number is null, as one with no data is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    if not args.text and not args.task:
        print("winnow eval: nothing to score; name held-out text with --text NAME=PATH "
              "and/or a multiple-choice task with --task NAME=PATH", file=sys.stderr)
        return 2
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    notes: list[str] = []
    text_sets = dict(named(spec) for spec in args.text or [])
    tasks = dict(named(spec) for spec in args.task or [])
    try:
        result = evaluate(args.checkpoint, text_sets, tasks, notes, args.max_docs, device, args.delimiter)
    except (FileNotFoundError, ValueError) as exc:
        print(f"winnow eval: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(finite(result), indent=1, allow_nan=False) if args.json else format_tables(result))
    return 0
