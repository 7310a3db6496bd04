"""Batched generation with a KV cache: `winnow generate CKPT`, `winnow serve`, the synth stage's
`local` generator and best-of-N all sample through `generate`.

Prompts of different lengths share a batch by being padded on the left; an attention mask keeps
every row off its padding and positions start at each prompt's first real token, so a row decodes
the same tokens as it would alone. Each row has its own sampling parameters (temperature, top-k,
top-p, min-p, seed, token limit, stop strings; see train/sampling.py). A row ends at a stop token,
a stop string or its token limit; rows that end leave the batch (their cache rows are dropped), so
they stop costing compute. Stop strings are looked for incrementally: each step decodes only the
new token's text (`TextTail`), never the whole continuation again. The prompt pass computes logits
at the last position only, and a greedy batch takes an argmax with no softmax over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from train.model import GPT, KVCache
from train.sampling import RowParams, SamplingParams, next_tokens
from train.tokenizer import Vocab

__all__ = ["Completion", "SamplingParams", "TextTail", "decode", "generate", "stream", "token_budget"]


@dataclass
class Completion:
    text: str
    tokens: list[int]
    score: float  # mean log-probability of the sampled tokens (under the temperature-scaled distribution)
    finish_reason: str  # "stop" (an end token or a stop string) or "length"


class TextTail:
    """A row's text, grown one token at a time, and the first stop string in it.

    Decoding a token alone can give the wrong text (a multi-byte character split over tokens, a
    tokenizer that drops a leading space), so each new token is decoded together with the token
    before it and the text the pair adds beyond that token is appended (vLLM's detokenizer does
    the same). Only the last `longest stop - 1` characters before the new text are searched again,
    so a stop string that spans tokens is found and the cost per token stays constant."""

    def __init__(self, vocab: Vocab, stops: list[str]):
        self.vocab, self.stops = vocab, [s for s in stops if s]
        self.reach = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""
        self.prefix = self.read = 0  # tokens[prefix:read] are decoded into the end of `text` already

    def add(self, token: int) -> int | None:
        """Append a token; the character offset where the earliest stop string starts, if one has."""
        self.tokens.append(token)
        known = self.vocab.decode(self.tokens[self.prefix:self.read])
        grown = self.vocab.decode(self.tokens[self.prefix:])
        if grown.endswith("\ufffd") or not grown.startswith(known):
            return None  # inside a multi-byte character: wait for the token that completes it
        start = max(0, len(self.text) - self.reach)
        self.text += grown[len(known):]
        self.prefix, self.read = self.read, len(self.tokens)
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        return min(hits) if hits else None


def token_budget(model: GPT, prompts: list[list[int]], wanted: int) -> int:
    """New tokens that fit in the model's context after the longest prompt (never more than asked)."""
    room = model.cfg.max_seq_len - max(len(x) for x in prompts)
    if room <= 0:
        raise ValueError(f"a prompt of {max(len(x) for x in prompts)} tokens leaves no room in the model's "
                         f"context of {model.cfg.max_seq_len}")
    return min(wanted, room)


@contextmanager
def _last_position_only(model: GPT) -> Iterator[None]:
    """The prompt pass needs logits at the last position only: the vocabulary projection of every
    prompt position would cost more than the rest of the pass on a 50k vocabulary (and B x T x V
    floats of memory). A hook on the final norm hands the head just the last position."""
    handle = model.norm.register_forward_hook(lambda _module, _inputs, out: out[:, -1:])
    try:
        yield
    finally:
        handle.remove()


class _Batch:
    """The rows still decoding: their cache rows, key masks, positions and parameters."""

    def __init__(self, model: GPT, prompts: list[list[int]], params: list[SamplingParams], seeds: list[int],
                 steps: int, device: torch.device):
        self.model = model
        batch, width = len(prompts), max(len(x) for x in prompts)
        idx = torch.zeros(batch, width, dtype=torch.long)
        self.keys = torch.zeros(batch, width + steps, dtype=torch.bool)  # True where a row has a real token
        for i, prompt in enumerate(prompts):
            idx[i, width - len(prompt):] = torch.tensor(prompt)
            self.keys[i, width - len(prompt):] = True
        self.keys[:, width:] = True
        idx, self.keys = idx.to(device), self.keys.to(device)
        self.padded = any(len(x) != width for x in prompts)
        valid = self.keys[:, :width]
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        self.cache = KVCache(model.cfg, batch, width + steps, device, next(model.parameters()).dtype)
        mask = None
        if self.padded:  # causal, off the padding; a padding row attends to itself so softmax stays finite
            causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
            mask = ((causal & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device))[:, None]
        with _last_position_only(model):
            logits, _ = model(idx, positions=positions, cache=self.cache, attn_mask=mask)
        self.last = logits[:, -1]
        self.next_pos = positions[:, -1] + 1
        self.rows = RowParams(params, seeds, device)

    def step(self, ids: torch.Tensor) -> None:
        end = self.cache.length + 1
        mask = self.keys[:, None, None, :end] if self.padded else None
        logits, _ = self.model(ids[:, None], positions=self.next_pos[:, None], cache=self.cache, attn_mask=mask)
        self.last, self.next_pos = logits[:, -1], self.next_pos + 1

    def keep(self, kept: list[int]) -> None:
        """Drop the rows not in `kept` (indices into the current batch) from every tensor."""
        rows = torch.tensor(kept, device=self.last.device)
        self.cache.k, self.cache.v = self.cache.k[:, rows], self.cache.v[:, rows]
        self.keys, self.last, self.next_pos = self.keys[rows], self.last[rows], self.next_pos[rows]
        self.rows.keep(rows, kept)


def _row_params(prompts: list[list[int]], p: SamplingParams | Sequence[SamplingParams]) -> list[SamplingParams]:
    if isinstance(p, SamplingParams):
        return [p] * len(prompts)
    if len(p) != len(prompts):
        raise ValueError(f"{len(p)} sampling parameter sets for {len(prompts)} prompts: give one, or one per prompt")
    return list(p)


def _seeds(params: list[SamplingParams], shared: bool) -> list[int]:
    """One seed per row. With one parameter set for the whole batch, row i takes seed + i, so copies
    of a prompt draw different samples; with a set per row, each row's own seed, so a request gives
    the same answer whatever batch it lands in. No seed: one drawn from torch's generator."""
    out = []
    for i, p in enumerate(params):
        if p.seed is None:
            out.append(int(torch.randint(0, 2**62, (1,)).item()))
        else:
            out.append(p.seed + i if shared else p.seed)
    return out


@torch.inference_mode()
def decode(model: GPT, prompts: list[list[int]], p: SamplingParams | Sequence[SamplingParams],
           device: torch.device | str = "cpu", stop_ids: set[int] | None = None, vocab: Vocab | None = None,
           want_logprobs: bool = True) -> Iterator[tuple[int, int, float, str | None, int | None]]:
    """The engine: yields (row, token, log-prob, finish reason or None, stop-string offset or None)
    for every token the rows draw, stop tokens included, in step order. A row's last event carries
    its finish reason; after it the row is out of the batch. Stop strings need `vocab`."""
    params = _row_params(prompts, p)
    if any(p.stop for p in params) and vocab is None:
        raise ValueError("stop strings need the vocabulary to decode tokens")
    device = torch.device(device)
    budgets = [min(q.max_new_tokens, model.cfg.max_seq_len - len(x)) for q, x in zip(params, prompts, strict=True)]
    for prompt, budget in zip(prompts, budgets, strict=True):
        if budget < 0 or not prompt:
            raise ValueError(f"a prompt of {len(prompt)} tokens leaves no room in the model's context of "
                             f"{model.cfg.max_seq_len}")
    stop_ids = stop_ids or set()
    live = [i for i, b in enumerate(budgets) if b > 0]  # original index of each row in the batch
    for i, b in enumerate(budgets):
        if b == 0:
            yield i, -1, 0.0, "length", None
    if not live:
        return
    tails = {i: TextTail(vocab, params[i].stop) for i in live if params[i].stop}
    seeds = _seeds(params, isinstance(p, SamplingParams))
    batch = _Batch(model, [prompts[i] for i in live], [params[i] for i in live], [seeds[i] for i in live],
                   max(budgets), device)
    drawn = [0] * len(prompts)
    while live:
        ids, logprobs = next_tokens(batch.last, batch.rows, want_logprobs)
        # One transfer per step for the whole batch: the host must see the tokens to end rows.
        host_ids = ids.tolist()
        host_lp = logprobs.tolist() if logprobs is not None else [0.0] * len(live)
        kept = []
        for k, (row, token, lp) in enumerate(zip(live, host_ids, host_lp, strict=True)):
            drawn[row] += 1
            finish, cut = None, None
            if token in stop_ids:
                finish = "stop"
            elif row in tails and (cut := tails[row].add(token)) is not None:
                finish = "stop"
            elif drawn[row] >= budgets[row]:
                finish = "length"
            yield row, token, lp, finish, cut
            if finish is None:
                kept.append(k)
        if not kept:
            return
        if len(kept) < len(live):
            batch.keep(kept)
            ids = ids[torch.tensor(kept, device=ids.device)]
            live = [live[k] for k in kept]
        batch.step(ids)


def generate(model: GPT, vocab: Vocab, prompts: list[list[int]], p: SamplingParams | Sequence[SamplingParams],
             device: torch.device | str = "cpu", stop_ids: set[int] | None = None,
             want_scores: bool = True) -> list[Completion]:
    """One completion per prompt (the best of `best_of` samples). `p` is one parameter set for every
    prompt or one per prompt. Without `want_scores`, greedy rows skip the log-softmax (score 0)."""
    params = _row_params(prompts, p)
    stop_ids = stop_ids if stop_ids is not None else {vocab.eos_id, vocab.end_of_turn_id, *vocab.stop_ids}
    expanded = [(k, q) for k, q in enumerate(params) for _ in range(q.best_of)]
    rows = [prompts[k] for k, _ in expanded]
    row_params: SamplingParams | list[SamplingParams] = p if isinstance(p, SamplingParams) else \
        [q for _, q in expanded]
    n = len(rows)
    tokens: list[list[int]] = [[] for _ in range(n)]
    sums, finished, cuts = [0.0] * n, ["length"] * n, [None] * n
    scores = want_scores or any(q.best_of > 1 for q in params)
    for row, token, lp, finish, cut in decode(model, rows, row_params, device, stop_ids, vocab, scores):
        if token in stop_ids or token < 0:
            finished[row] = finish or finished[row]
            continue
        tokens[row].append(token)
        sums[row] += lp
        if finish:
            finished[row], cuts[row] = finish, cut
    texts = [vocab.decode(t) if cuts[i] is None else vocab.decode(t)[:cuts[i]] for i, t in enumerate(tokens)]
    out, start = [], 0
    for q in params:
        group = range(start, start + q.best_of)
        start += q.best_of
        means = {i: sums[i] / max(1, len(tokens[i])) for i in group}
        best = max(group, key=lambda i: means[i])
        out.append(Completion(texts[best], tokens[best], means[best], finished[best]))
    return out


def stream(model: GPT, prompts: list[list[int]], p: SamplingParams,
           device: torch.device | str = "cpu") -> Iterator[tuple[list[int], list[float]]]:
    """Yields (token ids, log-probs), one of each per prompt, step by step, with no stop handling
    (the caller stops reading); at most as many steps as the context leaves after the longest prompt."""
    steps = token_budget(model, prompts, p.max_new_tokens)
    fixed = SamplingParams(**{**p.__dict__, "max_new_tokens": steps, "stop": [], "best_of": 1})
    ids, lps = [0] * len(prompts), [0.0] * len(prompts)
    for row, token, lp, _, _ in decode(model, prompts, fixed, device):
        ids[row], lps[row] = token, lp
        if row == len(prompts) - 1:  # every row draws once per step, in order
            yield list(ids), list(lps)
