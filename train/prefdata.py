"""Preference data: pairs (or single labelled answers) to token rows, packed or padded.

Shapes that come in, from JSON, JSONL or Parquet:
- `{prompt, chosen, rejected}`: the prompt a string or a list of `{role, content}` messages; each
  answer a string, a message, or a list of messages (the assistant's answer is the last one);
- LLaMA-Factory's pairs: `{conversations: [{from, value}], chosen: {from, value}, rejected: {...}}`;
- unpaired (KTO): `{messages, label}` with the answer as the last assistant turn, or `{prompt, completion, label}`.

Every answer is encoded as SFT encodes it (the same templates; see train/sft.py): the prompt as
the model sees it before answering, then the answer and its closing token. Only the answer
tokens carry a mask, so log-probabilities are summed over the answer alone.

A pair is one unit: its chosen and rejected sequences always land in the same batch. Packing
puts whole units side by side in a row, each sequence with its own document id (the block-
diagonal mask of train/model.py keeps attention inside it, and positions restart); padding gives
each sequence a row of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from train.chat import resolve_template
from train.sft import held_out, prompt_ids, read_examples
from train.tokenizer import Vocab

CHOSEN, REJECTED, DESIRABLE, UNDESIRABLE = 0, 1, 2, 3  # the role of each sequence
ROLE_NAMES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant",
              "observation": "user", "function_call": "assistant"}


def messages(value: Any) -> list[dict[str, str]]:
    """A prompt or answer as a list of {role, content}: a string is one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        value = [value]
    out = []
    for m in value:
        role = m.get("role", m.get("from"))
        if role not in ROLE_NAMES:
            raise ValueError(f"unknown role {role!r}")
        out.append({"role": ROLE_NAMES[role], "content": m.get("content", m.get("value", ""))})
    return out


def answer_text(value: Any) -> str:
    """The assistant's answer: a string, or the last message's content."""
    if isinstance(value, str):
        return value
    turns = messages(value)
    if not turns:
        raise ValueError("an empty answer")
    return turns[-1]["content"]


def normalize(row: dict[str, Any]) -> dict[str, Any]:
    """{prompt: messages, chosen: str, rejected: str} or {prompt: messages, answer: str, label: bool}."""
    if "chosen" in row and "rejected" in row:
        prompt = row.get("prompt", row.get("conversations"))
        if prompt is None:
            raise ValueError(f"a pair needs `prompt` or `conversations`; got keys {sorted(row)}")
        return {"prompt": messages(prompt), "chosen": answer_text(row["chosen"]),
                "rejected": answer_text(row["rejected"])}
    if "label" in row:
        if "messages" in row:
            turns = messages(row["messages"])
            if not turns or turns[-1]["role"] != "assistant":
                raise ValueError("an unpaired example's `messages` must end with the assistant's answer")
            return {"prompt": turns[:-1], "answer": turns[-1]["content"], "label": bool(row["label"])}
        if "prompt" in row and "completion" in row:
            return {"prompt": messages(row["prompt"]), "answer": answer_text(row["completion"]),
                    "label": bool(row["label"])}
    raise ValueError("a preference example needs `chosen` and `rejected` (with `prompt` or `conversations`), "
                     f"or `label` (with `messages`, or `prompt` and `completion`); got keys {sorted(row)}")


def encode_answer(vocab: Vocab, template: str, prompt: list[int], answer: str, width: int
                  ) -> tuple[list[int], list[int], bool]:
    """Prompt then answer and its closing token, at most `width` tokens, and a mask on the answer.
    Too long: the prompt keeps BOS and its last tokens, at least half the width (more when the answer
    is short), and the answer is cut to what is left. A model's own chat template closes an answer
    with its EOS (`<|im_end|>`, `<|eot_id|>`: the end of its turn)."""
    template = resolve_template(vocab, template)
    closing = vocab.end_of_turn_id if template == "chat" else vocab.eos_id
    body = [*vocab.encode(answer), closing]
    cut = len(prompt) + len(body) > width
    if cut:  # the prompt keeps BOS and its end (where the question and the answer's role token are)
        keep = max(1, min(len(prompt), max(width // 2, width - len(body))))
        prompt = [prompt[0], *prompt[len(prompt) - keep + 1:]] if keep > 1 else prompt[:1]
        body = body[: width - len(prompt)]
    return prompt + body, [0] * len(prompt) + [1] * len(body), cut


@dataclass
class Units:
    """Encoded sequences (token and mask lists), the unit of each and its role, per split."""

    seqs: list[tuple[list[int], list[int]]]
    unit: list[int]  # which pair (or unpaired example) each sequence belongs to
    role: list[int]  # CHOSEN, REJECTED, DESIRABLE or UNDESIRABLE
    truncated: int = 0  # answers cut to fit the row
    skipped: list[str] = field(default_factory=list)  # rows left out, each with its file, index and reason

    @property
    def n_units(self) -> int:
        return (max(self.unit) + 1) if self.unit else 0


def encode_rows(rows: list[tuple[str, int, dict[str, Any]]], vocab: Vocab, template: str, width: int,
                unpaired: bool) -> Units:
    """(source, index, row) triples to sequences. A pair is one unit of (chosen, rejected); with
    `unpaired` (KTO) a pair gives one desirable and one undesirable example instead. A bad row is
    left out and listed in `skipped` with its file, index and what is wrong."""
    out = Units([], [], [])
    next_unit = 0
    for source, k, row in rows:
        try:
            ex = normalize(row)
            if "chosen" not in ex and not unpaired:
                raise ValueError("is unpaired (it has `label`); the pair losses need `chosen` and `rejected` "
                                 "(or use dpo.loss: kto)")
            prompt = prompt_ids(vocab, template, messages=ex["prompt"])
            if "chosen" in ex:
                answers = [(ex["chosen"], DESIRABLE if unpaired else CHOSEN),
                           (ex["rejected"], UNDESIRABLE if unpaired else REJECTED)]
            else:
                answers = [(ex["answer"], DESIRABLE if ex["label"] else UNDESIRABLE)]
            # A pair shares a row when packed, so each of its two sequences gets at most half of one.
            limit = width if unpaired else width // 2
            encoded = [(*encode_answer(vocab, template, prompt, answer, limit), role) for answer, role in answers]
            if len(encoded) == 2 and encoded[0][0] == encoded[1][0]:  # zero margin, zero gradient, always
                raise ValueError("`chosen` and `rejected` are the same tokens (after cutting to the row): "
                                 "a pair teaches nothing unless its answers differ")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            out.skipped.append(f"{source}: example {k}: {exc}")
            continue
        for tokens, mask, cut, role in encoded:
            out.seqs.append((tokens, mask))
            out.role.append(role)
            out.unit.append(next_unit)
            out.truncated += cut
            next_unit += unpaired
        next_unit += not unpaired
    return out


def read_preferences(paths: list[str], vocab: Vocab, template: str, width: int, unpaired: bool,
                     val_fraction: float) -> tuple[Units, Units]:
    """Train and held-out units from the files; the split is a stable hash of each row, as SFT's."""
    train, val = [], []
    for path in paths:
        for k, row in enumerate(read_examples([path])):
            (val if held_out(k, row, val_fraction) else train).append((path, k, row))
    return (encode_rows(train, vocab, template, width, unpaired),
            encode_rows(val, vocab, template, width, unpaired))


@dataclass
class PrefRows:
    """Rows of width seq_len + 1 (tokens, answer mask, positions, sequence ids: -1 on padding), the
    row groups a batch draws from (a unit's rows when padded, one row when packed), and per sequence
    its unit and role."""

    tokens: np.ndarray
    mask: np.ndarray
    positions: np.ndarray
    seq_ids: np.ndarray
    groups: list[np.ndarray]
    unit: np.ndarray
    role: np.ndarray
    packed: bool

    def digest(self) -> str:
        """The data as the model sees it: any change in files, tokenizer, template or layout changes it."""
        h = hashlib.blake2b(digest_size=16)
        for a in (self.tokens, self.mask, self.seq_ids, self.unit, self.role):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"packed" if self.packed else b"padded")
        return h.hexdigest()


def build_pref_rows(units: Units, seq_len: int, pad_id: int, packing: bool) -> PrefRows:
    """Units into rows: whole units side by side when packing (greedy, in order), else a row per sequence."""
    width = seq_len + 1
    by_unit: dict[int, list[int]] = {}
    for s, u in enumerate(units.unit):
        by_unit.setdefault(u, []).append(s)
    rows: list[list[int]] = []  # the sequences in each row
    groups: list[list[int]] = []
    used = width + 1
    for u in sorted(by_unit):
        seqs = by_unit[u]
        if not packing:
            groups.append(list(range(len(rows), len(rows) + len(seqs))))
            rows += [[s] for s in seqs]
            continue
        size = sum(len(units.seqs[s][0]) for s in seqs)
        if used + size > width:
            rows.append([])
            groups.append([len(rows) - 1])
            used = 0
        rows[-1] += seqs
        used += size
    n = len(rows)
    out = PrefRows(np.full((n, width), pad_id, np.int64), np.zeros((n, width), np.int64),
                   np.zeros((n, width), np.int64), np.full((n, width), -1, np.int64),
                   [np.array(g) for g in groups], np.array(units.unit, np.int64), np.array(units.role, np.int64),
                   packing)
    for i, seqs in enumerate(rows):
        at = 0
        for s in seqs:
            tokens, mask = units.seqs[s]
            end = at + len(tokens)
            out.tokens[i, at:end], out.mask[i, at:end] = tokens, mask
            out.positions[i, at:end], out.seq_ids[i, at:end] = np.arange(len(tokens)), s
            at = end
    return out


def pref_batch(rows: PrefRows, group_index: np.ndarray, ref_logps: np.ndarray | None) -> dict[str, Any]:
    """A batch from the chosen row groups: model inputs, each target's local sequence index (-1 where
    no loss), and the sequences' units, roles and reference log-probs in local order."""
    index = np.concatenate([rows.groups[g] for g in group_index])
    seq = rows.seq_ids[index]
    # Columns that are padding in every row are cut: a batch of short answers costs what they cost.
    end = max(2, int(np.nonzero((seq >= 0).any(0))[0].max()) + 1) if (seq >= 0).any() else 2
    seq = seq[:, :end]
    tokens = torch.from_numpy(rows.tokens[index, :end])
    present = np.unique(seq[seq >= 0])
    local = np.full(seq.shape, -1, np.int64)
    local[seq >= 0] = np.searchsorted(present, seq[seq >= 0])
    answer = (rows.mask[index, 1:end] == 1) & (seq[:, 1:] == seq[:, :-1])  # no target crosses a sequence
    target_seq = np.where(answer, local[:, 1:], -1)
    batch = {"x": tokens[:, :-1], "y": tokens[:, 1:], "target_seq": torch.from_numpy(target_seq),
             "positions": None, "doc_ids": None, "n_seq": len(present),
             "unit": torch.from_numpy(rows.unit[present]), "role": torch.from_numpy(rows.role[present]),
             "ref": torch.from_numpy(ref_logps[present]).float() if ref_logps is not None else None,
             "seq_ids": torch.from_numpy(present), "tokens": int((seq[:, :-1] >= 0).sum())}
    if rows.packed:  # several sequences share a row: block-diagonal attention, positions per sequence
        batch["positions"] = torch.from_numpy(rows.positions[index, :end - 1])
        batch["doc_ids"] = torch.from_numpy(seq[:, :-1])
    return batch


def sequence_logps(logits: torch.Tensor, y: torch.Tensor, target_seq: torch.Tensor, n_seq: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the answer tokens' log-probabilities per sequence, and their count, in float32."""
    logp = -torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                              reduction="none")
    where = target_seq.reshape(-1)
    keep = where >= 0
    sums = torch.zeros(n_seq, device=logits.device).index_add(0, where[keep], logp[keep])
    counts = torch.zeros(n_seq, device=logits.device).index_add(0, where[keep], torch.ones_like(logp[keep]))
    return sums, counts
