"""`winnow train dpo CONFIG`: preference tuning from an SFT checkpoint (DPO, IPO, hinge, SimPO, KTO, ORPO).

The reference model's log-probabilities of every answer are computed once, in a first pass, and
kept in `ref-logps/<digest>.npz` beside the data (or in `dpo.ref_cache`). The digest covers the
reference checkpoint's bytes and the encoded data (files, tokenizer, template, length, layout), so
a rerun or a resumed run reuses them and a changed reference or data computes them anew. Training
then holds one model: the policy. SimPO and ORPO need no reference and skip the pass.

The loop is pretraining's (train/pretrain.py): AdamW and the schedule, gradient accumulation,
clipping, bf16 autocast on GPU, DDP under torchrun, atomic checkpoints, exact resume, stop on
SIGTERM. Each step's loss is the sum of per-pair losses over the pairs of every micro-batch and
rank, divided by their count, so packed micro-batches with different numbers of pairs weigh what
their pairs weigh. Logs: loss, chosen and rejected rewards, reward accuracy and margin, on the
training batches and on the held-out pairs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from train import checkpoint
from train.config import TrainConfig
from train.prefdata import (
    CHOSEN,
    DESIRABLE,
    REJECTED,
    PrefBatches,
    PrefRows,
    build_pref_rows,
    pref_batch,
    read_preferences,
    sequence_logps,
)
from train.preference import REFERENCE_FREE, kto_losses, pair_losses
from train.pretrain import Distributed, Logger, StopRequest, build_model, build_optimizer, lr_at
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


def reference_logps(cfg: TrainConfig, rows: list[PrefRows | None], env: Distributed, autocast: Any
                    ) -> tuple[list[np.ndarray | None], dict[str, Any]]:
    """The reference log-probs of each set of rows: read from the cache, or computed once by rank 0
    (the others wait) and written atomically."""
    path = cache_file(cfg, rows[0], rows[1])
    event = {"ref_logps": str(path), "reused": path.exists()}
    if not path.exists() and env.main:
        t = time.perf_counter()
        from train.checkpoint import load_model

        model, _ = load_model(str(reference_path(cfg)), env.device)
        arrays = {name: compute_logps(model, r, cfg.micro_batch, env.device, autocast)
                  for name, r in zip(("train", "val"), rows, strict=True) if r is not None}
        del model
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        path.with_suffix(".json").write_text(json.dumps(
            {"reference": str(reference_path(cfg)), "data": cfg.dpo.data, "template": cfg.dpo.template,
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


def prepare(cfg: TrainConfig, rank: int, world_size: int) -> tuple[PrefBatches, PrefRows | None, dict[str, Any]]:
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
    return PrefBatches(rows, cfg.micro_batch, cfg.seed, rank, world_size), val_rows, info


def train_dpo(cfg: TrainConfig, stop_at: int | None = None) -> dict[str, Any]:
    """Runs (or resumes) preference tuning; returns the last log record."""
    env = Distributed(cfg.device)
    device = env.device
    torch.manual_seed(cfg.seed + env.rank)
    vocab = load_vocab(cfg.tokenizer)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batches, val_rows, info = prepare(cfg, env.rank, env.world_size)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    logger = Logger(cfg.out_dir, env.main, cfg.tensorboard)
    resume = (out / checkpoint.LATEST).exists()
    val_ref = None
    if cfg.dpo.loss not in REFERENCE_FREE:  # before the policy is built: only one model at a time
        (batches.ref_logps, val_ref), event = reference_logps(cfg, [batches.rows, val_rows], env, autocast)
        info.update(event)
    model, ckpt = build_model(cfg, resume, vocab.size, device)
    optimizer = build_optimizer(model, cfg, device)
    start_step, tokens_seen = 0, 0
    if resume:
        optimizer.load_state_dict(ckpt["optimizer"])
        batches.load_state_dict(ckpt["loader"])
        start_step, tokens_seen = ckpt["step"], ckpt["tokens_seen"]
        checkpoint.set_rng_state(ckpt["rng"])
        logger.drop_after(start_step)
    if start_step >= cfg.max_steps or (stop_at is not None and stop_at <= start_step):
        env.close()
        return {"step": start_step, "event": "nothing to do: the checkpoint is at or past the stop"}
    if env.main:
        checkpoint.keep_tokenizer(cfg.tokenizer, cfg.out_dir)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    info.update(step=start_step, loss_kind=cfg.dpo.loss, params=raw_model.num_params(), device=str(device),
                world_size=env.world_size, bf16=bf16, resumed=resume)
    logger.log(info, f"{cfg.dpo.loss} on {info['train_items']:,} train and {info['val_items']:,} held-out items "
                     f"({info['truncated_answers']} answers truncated, {info['skipped_rows']} rows skipped), "
                     + (f"reference log-probs {'reused' if info['reused'] else 'computed'}: {info['ref_logps']}"
                        if "ref_logps" in info else "no reference model"))
    stop = StopRequest()
    val_batches = [] if val_rows is None else [
        np.arange(k, min(k + cfg.micro_batch, len(val_rows.groups)))
        for k in range(0, min(len(val_rows.groups), cfg.micro_batch * cfg.dpo.eval_batches), cfg.micro_batch)]

    def evaluate() -> dict[str, float]:
        if not val_batches:
            return {}
        model.eval()
        total = torch.zeros(len(STATS), device=device)
        with torch.no_grad():
            for index in val_batches:
                batch = to_device(pref_batch(val_rows, index, val_ref), device)
                with autocast:
                    logits, _ = raw_model(batch["x"], positions=batch["positions"], doc_ids=batch["doc_ids"])
                sums, counts = sequence_logps(logits, batch["y"], batch["target_seq"], batch["n_seq"])
                total += objective(cfg, batch, sums, counts)[1]
        model.train()
        return summary(total, "val_")

    def save(step: int) -> None:
        if env.main:
            checkpoint.save(cfg.out_dir, raw_model, optimizer, step,
                            {"loader": batches.state_dict(), "tokens_seen": tokens_seen,
                             "train_config": cfg.model_dump(), "tokenizer": checkpoint.TOKENIZER,
                             "ref_logps": info.get("ref_logps")})

    model.train()
    t_start, window_t, window_tokens = time.perf_counter(), time.perf_counter(), 0
    window = torch.zeros(len(STATS), device=device)
    last: dict[str, Any] = {}
    done = saved_at = start_step
    for step in range(start_step, cfg.max_steps):
        if env.any(stop.requested):  # every rank stops at the same step
            break
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [to_device(batches.next_batch(), device) for _ in range(cfg.grad_accum)]
        items = sum(int((b["role"] != REJECTED).sum()) for b in micro)
        count = env.sum(torch.tensor(float(items), device=device)).clamp(min=1)
        step_stats = torch.zeros(len(STATS), device=device)
        for k, batch in enumerate(micro):
            sync = not env.enabled or k == cfg.grad_accum - 1
            with (nullcontext() if sync else model.no_sync()), autocast:
                logits, _ = model(batch["x"], positions=batch["positions"], doc_ids=batch["doc_ids"])
            sums, counts = sequence_logps(logits, batch["y"], batch["target_seq"], batch["n_seq"])
            losses, stats = objective(cfg, batch, sums, counts)
            (losses.sum() * env.world_size / count).backward()  # DDP averages gradients over ranks
            step_stats += stats
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optimizer.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        real = env.sum(torch.tensor(float(sum(b["tokens"] for b in micro)), device=device)).item()
        tokens_seen += int(real)
        window_tokens += int(real)
        window += env.sum(step_stats)
        done = step + 1
        evaluate_now = done == cfg.max_steps or (cfg.eval_every and done % cfg.eval_every == 0)
        val = evaluate() if evaluate_now else {}
        if done % cfg.log_every == 0 or evaluate_now or done == stop_at:
            now = time.perf_counter()
            tok_s = window_tokens / (now - window_t)
            last = {"step": done, **summary(window), "lr": lr, "grad_norm": round(norm.item(), 4),
                    "tokens": tokens_seen, "tok_per_s": round(tok_s, 1), "elapsed_s": round(now - t_start, 2), **val}
            line = (f"step {done}/{cfg.max_steps} | loss {last['loss']:.4f} | acc {last['reward_accuracy']:.2f} "
                    f"| margin {last['reward_margin']:.3f}"
                    + (f" | val loss {val['val_loss']:.4f} acc {val['val_reward_accuracy']:.2f}" if val else "")
                    + f" | lr {lr:.2e} | {tok_s:,.0f} tok/s")
            logger.log(last, line)
            window_t, window_tokens = time.perf_counter(), 0
            window.zero_()
        if cfg.ckpt_every and done % cfg.ckpt_every == 0:
            save(done)
            saved_at = done
        if stop_at is not None and done >= stop_at:
            break
    if saved_at != done:
        save(done)
    stop.restore()
    logger.close()
    env.close()
    return last


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
