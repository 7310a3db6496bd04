"""`winnow train dpo CONFIG`: preference tuning from an SFT checkpoint (DPO, IPO, hinge, SimPO, KTO, ORPO).

The reference model's log-probabilities of every answer are computed once, in a first pass, and
kept in `ref-logps/<digest>.npz` beside the data (or in `dpo.ref_cache`). The digest covers the
reference checkpoint's bytes and the encoded data (files, tokenizer, template, length, layout), so
a rerun or a resumed run reuses them and a changed reference or data computes them anew. Training
then holds one model: the policy. With `lora:` the reference is the frozen base itself, the
policy with its adapters off, so no second model is ever loaded. SimPO and ORPO need no reference
and skip the pass.

The loop is the one in train/loop.py (schedule, accumulation, clipping, bf16, DDP, atomic
checkpoints, exact resume, stop on SIGTERM); this module gives it its objective. Each step's
loss is the sum of per-pair losses over the pairs of every micro-batch and rank, divided by their
count, so packed micro-batches with different numbers of pairs weigh what their pairs weigh.
Logs: loss, chosen and rejected rewards, reward accuracy and margin, on the training batches and
on the held-out pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from train import checkpoint
from train.config import TrainConfig
from train.data import RowBatches
from train.loop import Distributed, autocast_for, run
from train.model import GPT
from train.prefdata import (
    CHOSEN,
    DESIRABLE,
    REJECTED,
    PrefRows,
    build_pref_rows,
    pref_batch,
    read_preferences,
    sequence_logps,
)
from train.preference import REFERENCE_FREE, kto_losses, pair_losses
from train.tokenizer import load_vocab

# Per micro-batch sums: loss, items (pairs or examples), chosen reward, chosen count, rejected reward,
# rejected count, correct (chosen above rejected; for kto, a reward on the label's side of zero).
STATS = ("loss", "items", "chosen", "n_chosen", "rejected", "n_rejected", "correct")


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def reference_path(cfg: TrainConfig) -> Path:
    ref = Path(cfg.dpo.reference or cfg.init_from)
    return ref / checkpoint.LATEST if ref.is_dir() else ref


def cache_file(cfg: TrainConfig, train_rows: PrefRows, val_rows: PrefRows | None) -> Path:
    """`<ref_cache>/<digest>.npz`, the digest over the reference checkpoint and the encoded data."""
    folder = Path(cfg.dpo.ref_cache) if cfg.dpo.ref_cache else Path(cfg.dpo.data[0]).parent / "ref-logps"
    parts = [file_digest(reference_path(cfg)), train_rows.digest(), val_rows.digest() if val_rows else "-"]
    return folder / f"{hashlib.blake2b('/'.join(parts).encode(), digest_size=12).hexdigest()}.npz"


@torch.no_grad()
def compute_logps(model: torch.nn.Module, rows: PrefRows, batch_size: int, device: torch.device,
                  autocast: Any) -> np.ndarray:
    """Every sequence's summed answer log-probability under `model`, in one pass over the rows."""
    out = np.zeros(len(rows.unit), np.float64)
    for start in range(0, len(rows.groups), batch_size):
        batch = to_device(pref_batch(rows, np.arange(start, min(start + batch_size, len(rows.groups))), None), device)
        with autocast:
            logits, _ = model(batch["x"], positions=batch["positions"], doc_ids=batch["doc_ids"])
        sums, _ = sequence_logps(logits, batch["y"], batch["target_seq"], batch["n_seq"])
        out[batch["seq_ids"].cpu().numpy()] = sums.double().cpu().numpy()
    return out


def reference_logps(cfg: TrainConfig, rows: list[PrefRows | None], env: Distributed, autocast: Any,
                    policy: GPT | None = None) -> tuple[list[np.ndarray | None], dict[str, Any]]:
    """The reference log-probs of each set of rows: read from the cache, or computed once by rank 0
    (the others wait) and written atomically. With `policy` (a LoRA model), the reference is its
    base: the policy with its adapters off; else the reference checkpoint is loaded."""
    path = cache_file(cfg, rows[0], rows[1])
    event = {"ref_logps": str(path), "reused": path.exists(),
             "reference": "base with adapters off" if policy is not None else str(reference_path(cfg))}
    if not path.exists() and env.main:
        t = time.perf_counter()
        if policy is None:
            model, _ = checkpoint.load_model(str(reference_path(cfg)), env.device)
            off = nullcontext()
        else:
            from train.lora import adapters_disabled

            model, off = policy, adapters_disabled(policy)
        training = model.training
        model.eval()
        with off:
            arrays = {name: compute_logps(model, r, cfg.micro_batch, env.device, autocast)
                      for name, r in zip(("train", "val"), rows, strict=True) if r is not None}
        model.train(training)
        del model
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(
            {"reference": event["reference"], "data": cfg.dpo.data, "template": cfg.dpo.template,
             "seq_len": cfg.seq_len, "packing": cfg.dpo.packing, "sequences": {k: len(v) for k, v in arrays.items()},
             "seconds": round(time.perf_counter() - t, 2)}, indent=1))
        event["seconds"] = round(time.perf_counter() - t, 2)
    if env.enabled:
        dist.barrier()
    with np.load(path) as stored:
        return [stored["train"], stored["val"] if rows[1] is not None else None], event


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def objective(cfg: TrainConfig, batch: dict[str, Any], sums: torch.Tensor, counts: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item losses of a micro-batch, and its STATS sums (detached)."""
    d, role, ref = cfg.dpo, batch["role"], batch["ref"]
    if d.loss == "kto":
        desirable = role == DESIRABLE
        losses, rewards, _ = kto_losses(sums, ref, desirable, d.beta, d.desirable_weight, d.undesirable_weight)
        chosen, rejected = rewards[desirable], rewards[~desirable]
        correct = (chosen > 0).sum() + (rejected < 0).sum()
    else:
        c, r = role == CHOSEN, role == REJECTED  # sequences in id order: a pair's two are aligned
        refs = (None, None) if d.loss in REFERENCE_FREE else (ref[c], ref[r])
        losses, chosen, rejected = pair_losses(d.loss, sums[c], sums[r], *refs, counts[c], counts[r], d.beta,
                                               d.label_smoothing, d.simpo_gamma)
        correct = (chosen > rejected).sum()
    stats = torch.stack([losses.detach().sum(), torch.tensor(float(len(losses)), device=sums.device), chosen.sum(),
                         torch.tensor(float(len(chosen)), device=sums.device), rejected.sum(),
                         torch.tensor(float(len(rejected)), device=sums.device), correct.float()])
    return losses, stats


def summary(stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
    s = dict(zip(STATS, stats.tolist(), strict=True))
    chosen, rejected = s["chosen"] / max(1, s["n_chosen"]), s["rejected"] / max(1, s["n_rejected"])
    return {f"{prefix}loss": round(s["loss"] / max(1, s["items"]), 6), f"{prefix}reward_chosen": round(chosen, 5),
            f"{prefix}reward_rejected": round(rejected, 5), f"{prefix}reward_margin": round(chosen - rejected, 5),
            f"{prefix}reward_accuracy": round(s["correct"] / max(1, s["items"]), 4)}


def prepare(cfg: TrainConfig, rank: int, world_size: int) -> tuple[RowBatches, PrefRows | None, dict[str, Any]]:
    """Training batches, held-out rows and what was read (pairs, truncated answers, skipped rows)."""
    vocab = load_vocab(cfg.tokenizer)
    d = cfg.dpo
    train, val = read_preferences(d.data, vocab, d.template, cfg.seq_len + 1, d.loss == "kto", d.val_fraction)
    skipped = train.skipped + val.skipped
    if not train.seqs:
        first = f": {skipped[0]}" if skipped else ""
        raise ValueError(f"no usable preference examples in {', '.join(d.data)} ({len(skipped)} skipped{first})")
    rows = build_pref_rows(train, cfg.seq_len, vocab.pad_id, d.packing)
    val_rows = build_pref_rows(val, cfg.seq_len, vocab.pad_id, d.packing) if val.seqs else None
    info = {"event": "data", "train_items": train.n_units, "val_items": val.n_units, "train_rows": len(rows.tokens),
            "truncated_answers": train.truncated + val.truncated, "skipped_rows": len(skipped),
            "skipped_examples": skipped[:5]}
    batches = RowBatches(rows, len(rows.groups), partial(pref_batch, rows, ref_logps=None), cfg.micro_batch,
                         cfg.seed, rank, world_size, what="preference row groups")
    return batches, val_rows, info


def reference_is_base(cfg: TrainConfig) -> bool:
    """With LoRA and no other reference named, the reference is the frozen base: the policy itself
    with its adapters off, so no second model is loaded."""
    return cfg.lora is not None and cfg.dpo.reference is None


class Preference:
    """The preference objective (train/preference.py's losses); stats are STATS's sums."""

    def __init__(self, cfg: TrainConfig, batches: RowBatches, val_rows: PrefRows | None, info: dict[str, Any]):
        self.cfg, self.batches, self.val_rows, self.info = cfg, batches, val_rows, info
        self.val_ref: np.ndarray | None = None

    def use_reference(self, refs: list[np.ndarray | None]) -> None:
        self.batches.make = partial(pref_batch, self.batches.rows, ref_logps=refs[0])
        self.val_ref = refs[1]

    def setup(self, model: GPT, env: Distributed, autocast: Any) -> dict[str, Any]:
        if self.cfg.dpo.loss not in REFERENCE_FREE and reference_is_base(self.cfg):
            refs, event = reference_logps(self.cfg, [self.batches.rows, self.val_rows], env, autocast, policy=model)
            self.use_reference(refs)
            self.info.update(event)
        d = self.info
        note = (f"{self.cfg.dpo.loss} on {d['train_items']:,} train and {d['val_items']:,} held-out items "
                f"({d['truncated_answers']} answers truncated, {d['skipped_rows']} rows skipped), "
                + (f"reference log-probs {'reused' if d['reused'] else 'computed'}: {d['ref_logps']}"
                   if "ref_logps" in d else "no reference model"))
        return {**d, "event": "start", "loss_kind": self.cfg.dpo.loss, "note": note}

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        return to_device(batch, device)

    def weight(self, batch: dict[str, Any]) -> torch.Tensor:
        return (batch["role"] != REJECTED).sum()  # pairs count once, unpaired examples once each

    def tokens(self, batch: dict[str, Any]) -> int:
        return batch["tokens"]

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = model(batch["x"], positions=batch["positions"], doc_ids=batch["doc_ids"])
        sums, counts = sequence_logps(logits, batch["y"], batch["target_seq"], batch["n_seq"])
        losses, stats = objective(self.cfg, batch, sums, counts)
        return losses.sum(), stats

    def val_batches(self) -> list:
        rows, size = self.val_rows, self.cfg.micro_batch
        if rows is None:
            return []
        end = min(len(rows.groups), size * self.cfg.dpo.eval_batches)
        return [pref_batch(rows, np.arange(k, min(k + size, len(rows.groups))), self.val_ref)
                for k in range(0, end, size)]

    def summary(self, stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
        return summary(stats, prefix)

    def describe(self, r: dict[str, Any]) -> str:
        return (f"loss {r['loss']:.4f} | acc {r['reward_accuracy']:.2f} | margin {r['reward_margin']:.3f}"
                + (f" | val loss {r['val_loss']:.4f} acc {r['val_reward_accuracy']:.2f}" if "val_loss" in r else ""))

    def extra(self) -> dict[str, Any]:
        return {"ref_logps": self.info.get("ref_logps")}


def train_dpo(cfg: TrainConfig, stop_at: int | None = None) -> dict[str, Any]:
    """Runs (or resumes) preference tuning; returns the last log record."""
    env = Distributed(cfg.device)
    batches, val_rows, info = prepare(cfg, env.rank, env.world_size)
    pref = Preference(cfg, batches, val_rows, info)
    if cfg.dpo.loss not in REFERENCE_FREE and not reference_is_base(cfg):
        # Before the policy is built: only one model in memory at a time.
        refs, event = reference_logps(cfg, [batches.rows, val_rows], env, autocast_for(cfg, env.device)[0])
        pref.use_reference(refs)
        info.update(event)
    return run(cfg, pref, stop_at, env)


def evaluate_checkpoint(cfg: TrainConfig, path: str) -> dict[str, float]:
    """Held-out reward accuracy and margin of any checkpoint (the SFT start, or the tuned model) against
    the configured reference, on this config's held-out pairs; the reference log-probs come from the cache."""
    from train.checkpoint import load_model

    env = Distributed(cfg.device)
    batches, val_rows, _ = prepare(cfg, 0, 1)
    if val_rows is None:
        raise ValueError("no held-out pairs: raise dpo.val_fraction")
    refs: list[np.ndarray | None] = [None, None]
    if cfg.dpo.loss not in REFERENCE_FREE:
        refs, _ = reference_logps(cfg, [batches.rows, val_rows], env, nullcontext())
    model, _ = load_model(path, env.device)
    total = torch.zeros(len(STATS))
    prefers = []  # pairs: does the model itself give the chosen answer the higher log-prob?
    with torch.no_grad():
        for k in range(0, len(val_rows.groups), cfg.micro_batch):
            batch = to_device(pref_batch(val_rows, np.arange(k, min(k + cfg.micro_batch, len(val_rows.groups))),
                                         refs[1]), env.device)
            logits, _ = model(batch["x"], positions=batch["positions"], doc_ids=batch["doc_ids"])
            sums, counts = sequence_logps(logits, batch["y"], batch["target_seq"], batch["n_seq"])
            total += objective(cfg, batch, sums, counts)[1].cpu()
            if cfg.dpo.loss != "kto":
                prefers += (sums[batch["role"] == CHOSEN] > sums[batch["role"] == REJECTED]).tolist()
    found = {**summary(total, "val_"), "val_items": int(total[1].item())}
    if prefers:
        found["val_logp_accuracy"] = round(sum(prefers) / len(prefers), 4)
    return found
