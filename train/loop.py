"""The one training loop behind `winnow train pretrain`, `sft` and `dpo`.

AdamW (fused on GPU) with a cosine, warmup-stable-decay or constant schedule, gradient
accumulation and clipping, bf16 autocast on GPU and float32 on CPU, `torch.compile` on request,
DDP under `torchrun`. What is learned comes from an `Objective`: next-token cross-entropy for
pretraining and SFT (train/pretrain.py), a preference loss for DPO and its kin (train/dpo.py).
Each step's loss is the objective's summed loss over every micro-batch and rank, divided by the
total of its weights (target tokens, or pairs), so a micro-batch weighs what its contents weigh.

The loop logs to the terminal, `log.jsonl` and, when installed, TensorBoard. It checkpoints
atomically and resumes from the checkpoint in `out_dir` when one is there, continuing the same run
exactly: weights (or LoRA adapters), optimizer, batch position, every random generator. SIGTERM or
SIGINT (a preempted job, Ctrl-C) saves a checkpoint before exiting; every rank stops at the same step.
A run whose loss or gradient norm stops being finite raises TrainingDiverged at the next log or
save, before any checkpoint of NaN weights is written (the command exits 1).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from train import checkpoint
from train.config import TrainConfig
from train.model import GPT
from train.start import build_model
from train.tokenizer import load_vocab

# Dense BF16 peak per GPU, for MFU (vendor datasheets; SXM parts unless named).
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
               "L4": 121.0, "RTX 4090": 165.0}


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm stopped being a finite number: the weights are lost, not worth keeping."""


class Objective(Protocol):
    """What a training run optimises. Batches come from `batches` (next_batch, state_dict,
    load_state_dict); `forward` returns a micro-batch's summed loss and a vector of summed stats
    that `summary` turns into the logged figures."""

    batches: Any

    def setup(self, model: GPT, env: Distributed, autocast: Any) -> dict[str, Any]:
        """Work that needs the model before training (e.g. reference log-probs); the start record's fields."""

    def to_device(self, batch: Any, device: torch.device) -> Any: ...

    def weight(self, batch: Any) -> torch.Tensor:
        """What the step's loss is divided by, this micro-batch's share: target tokens, or items."""

    def tokens(self, batch: Any) -> int:
        """Tokens the micro-batch holds, for throughput."""

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]: ...

    def val_batches(self) -> list: ...

    def summary(self, stats: torch.Tensor, prefix: str = "") -> dict[str, float]: ...

    def describe(self, record: dict[str, Any]) -> str:
        """The objective's figures in the terminal line, after the step."""

    def extra(self) -> dict[str, Any]:
        """What the checkpoint keeps besides the loop's own state."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate for `step` (0-based) under the configured schedule."""
    s, peak = cfg.schedule, cfg.optimizer.lr
    if step < s.warmup_steps:
        return peak * (step + 1) / s.warmup_steps
    floor = peak * s.min_lr_frac
    if s.kind == "constant":
        return peak
    if s.kind == "cosine":
        progress = (step - s.warmup_steps) / max(1, cfg.max_steps - s.warmup_steps)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
    # wsd: flat, then a linear decay over the last decay_frac of the steps (never inside the warmup)
    decay_start = max(s.warmup_steps, cfg.max_steps - int(s.decay_frac * cfg.max_steps))
    if step < decay_start:
        return peak
    return peak - (peak - floor) * (step - decay_start + 1) / max(1, cfg.max_steps - decay_start)


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None  # a CPU has no meaningful tensor peak here; tokens/s is the figure
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return tflops * 1e12
    return None


def flops_per_token(model: GPT, seq_len: int) -> float:
    """The model's training FLOPs per token, less the weight gradients frozen weights (a LoRA base)
    skip: 4 FLOPs per frozen weight instead of 6."""
    untied_embedding = "embed_tokens.weight" if not model.cfg.tie_embeddings else None
    frozen = sum(p.numel() for n, p in model.named_parameters()
                 if not p.requires_grad and p.dim() >= 2 and n != untied_embedding)
    return model.flops_per_token(seq_len) - 2 * frozen


class Distributed:
    """Rank and world size under torchrun, or a single process."""

    def __init__(self, device_pref: str):
        self.enabled = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
        self.device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.enabled:
            dist.init_process_group(backend="nccl" if cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def total(self, value: float) -> float:
        return self.sum(torch.tensor([float(value)], device=self.device)).item()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on some rank."""
        return bool(self.total(flag)) if self.enabled else flag

    def close(self) -> None:
        if self.enabled:
            dist.barrier()  # no rank tears the group down while another still waits on it (rank 0 saves last)
            dist.destroy_process_group()


class Logger:
    """One line to the terminal, one JSON object to log.jsonl, and TensorBoard scalars if available."""

    def __init__(self, out_dir: str, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.path = Path(out_dir) / "log.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                self.tb = None

    def drop_after(self, step: int) -> None:
        """On resume: forget records past the checkpoint's step, which the run is about to redo."""
        if self.enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def log(self, record: dict[str, Any], line: str) -> None:
        if not self.enabled:
            return
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and key != "step":
                    self.tb.add_scalar(key, value, record["step"])


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. under a test runner's worker): no handler
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def build_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Only the weights that train (all, or LoRA's adapters); weight decay on matrices only (not on
    norms), as GPT-2 and Llama train."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optimizer.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    o = cfg.optimizer
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=device.type == "cuda")


def autocast_for(cfg: TrainConfig, device: torch.device) -> tuple[Any, bool]:
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()), bf16


def run(cfg: TrainConfig, objective: Objective, stop_at: int | None = None,
        env: Distributed | None = None) -> dict[str, Any]:
    """Runs (or resumes) training; returns the last log record. `stop_at` stops after that step,
    checkpointed, as a preempted job would."""
    env = env or Distributed(cfg.device)
    device = env.device
    torch.manual_seed(cfg.seed + env.rank)
    vocab = load_vocab(cfg.tokenizer)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = (out / checkpoint.LATEST).exists()
    model, ckpt, lora_ref = build_model(cfg, resume, vocab.size, device)
    optimizer = build_optimizer(model, cfg, device)
    start_step, tokens_before = 0, 0
    if resume:
        optimizer.load_state_dict(ckpt["optimizer"])
        objective.batches.load_state_dict(ckpt["loader"])
        start_step, tokens_before = ckpt["step"], ckpt["tokens_seen"]
        checkpoint.set_rng_state(ckpt["rng"])
    if start_step >= cfg.max_steps or (stop_at is not None and stop_at <= start_step):
        env.close()
        return {"step": start_step, "event": "nothing to do: the checkpoint is at or past the stop"}
    autocast, bf16 = autocast_for(cfg, device)
    logger = Logger(cfg.out_dir, env.main, cfg.tensorboard)
    if resume:
        logger.drop_after(start_step)  # steps logged after the checkpoint are about to be redone
    info = objective.setup(model, env, autocast)
    note = info.pop("note", None)
    if env.main:
        checkpoint.keep_tokenizer(cfg.tokenizer, cfg.out_dir)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    peak = peak_flops(device, cfg.peak_tflops)
    fpt = flops_per_token(raw_model, cfg.seq_len)
    params, trainable = raw_model.num_params(), sum(p.numel() for p in raw_model.parameters() if p.requires_grad)
    tokens_per_step = cfg.micro_batch * cfg.seq_len * cfg.grad_accum * env.world_size
    start = {"step": start_step, "event": "start", "params": params, "trainable_params": trainable,
             "tokens_per_step": tokens_per_step, "device": str(device), "bf16": bf16, "world_size": env.world_size,
             "resumed": resume, **info}
    logger.log(start, f"{'resuming' if resume else 'training'} {params:,} parameters"
               + (f" ({trainable:,} trainable, LoRA)" if lora_ref else "") + f" on {device} x{env.world_size}, "
               f"{tokens_per_step:,} tokens per step at most, {'bf16' if bf16 else 'fp32'}"
               + (f"; {note}" if note else ""))
    stop = StopRequest()

    def evaluate() -> dict[str, float]:
        listed = objective.val_batches()
        if not listed:
            return {}
        model.eval()
        total = None
        with torch.no_grad(), autocast:
            for batch in listed:
                stats = objective.forward(raw_model, objective.to_device(batch, device))[1]
                total = stats if total is None else total + stats
        model.train()
        return objective.summary(total, "val_")

    local_tokens = 0  # this rank's tokens since the start of this process

    def tokens_seen() -> int:
        return tokens_before + int(env.total(local_tokens))

    def check_finite(step: int) -> None:
        """Stops before a diverged model is written: one sync at each log or save, not every step."""
        weights_finite = torch.stack([torch.isfinite(p).all() for p in raw_model.parameters()]).all()
        if nonfinite_at.item() >= 0 or not weights_finite.item():
            first = int(nonfinite_at.item()) if nonfinite_at.item() >= 0 else step
            kept = f"the checkpoint of step {saved_at} in {cfg.out_dir} is kept" if saved_at > start_step or resume \
                else "no checkpoint was written"
            stop.restore()
            logger.close()
            raise TrainingDiverged(
                f"training diverged: the loss or gradient norm became NaN or infinite at step {first} "
                f"(optimizer.lr={cfg.optimizer.lr:g}); {kept}. Lower optimizer.lr, lengthen schedule.warmup_steps "
                "or set optimizer.grad_clip, then rerun")

    def save(step: int, seen: int) -> None:
        check_finite(step)
        if env.main:
            extra = {"loader": objective.batches.state_dict(), "tokens_seen": seen, "train_config": cfg.model_dump(),
                     "tokenizer": checkpoint.TOKENIZER, **objective.extra()}
            if lora_ref is not None:  # adapters only, and where their base is
                from train.lora import adapter_state

                extra.update(model=adapter_state(raw_model), lora=lora_ref)
            checkpoint.save(cfg.out_dir, raw_model, optimizer, step, extra)

    model.train()
    t_start = window_t = time.perf_counter()
    window, window_tokens, window_steps = None, 0, 0
    last: dict[str, Any] = {}
    done = saved_at = start_step
    nonfinite_at = torch.tensor(-1, device=device)  # the first step whose loss or gradient was not finite
    for step in range(start_step, cfg.max_steps):
        if env.any(stop.requested):  # a rank that left alone would hang the others' all-reduce
            break
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # The step's micro-batches go to the device together, so the loss can be divided by the
        # step's total weight on every rank before any backward pass.
        micro = [objective.to_device(objective.batches.next_batch(), device) for _ in range(cfg.grad_accum)]
        weight = env.sum(torch.stack([objective.weight(b) for b in micro]).sum().float().to(device)).clamp(min=1)
        for k, batch in enumerate(micro):
            sync = not env.enabled or k == cfg.grad_accum - 1
            with (nullcontext() if sync else model.no_sync()), autocast:
                loss, stats = objective.forward(model, batch)
            (loss * env.world_size / weight).backward()  # DDP averages gradients over ranks
            window = stats if window is None else window + stats  # no .item(): it would wait for the GPU
            local_tokens += objective.tokens(batch)
            window_tokens += objective.tokens(batch)
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optimizer.grad_clip or float("inf"))
        # A non-finite norm means a NaN/inf loss or gradient: the step's update would poison every weight.
        bad = ~torch.isfinite(norm) & (nonfinite_at < 0)
        nonfinite_at = torch.where(bad, torch.full_like(nonfinite_at, step + 1), nonfinite_at)  # no host copy
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done, window_steps = step + 1, window_steps + 1
        evaluate_now = done == cfg.max_steps or (cfg.eval_every and done % cfg.eval_every == 0)
        if done % cfg.log_every == 0 or evaluate_now or done == stop_at:
            check_finite(done)
        val = evaluate() if evaluate_now else {}
        if done % cfg.log_every == 0 or evaluate_now or done == stop_at:
            now = time.perf_counter()
            tok_s = env.total(window_tokens) / (now - window_t)
            mfu = tok_s * fpt / (peak * env.world_size) if peak else None
            eta = (cfg.max_steps - done) * (now - window_t) / window_steps
            last = {"step": done, **objective.summary(env.sum(window)), "lr": lr, "grad_norm": round(norm.item(), 4),
                    "tokens": tokens_seen(), "tok_per_s": round(tok_s, 1), "mfu": round(mfu, 4) if mfu else None,
                    "elapsed_s": round(now - t_start, 2), "eta_s": round(eta, 1), **val}
            logger.log(last, f"step {done}/{cfg.max_steps} | " + objective.describe(last)
                       + f" | lr {lr:.2e} | {tok_s:,.0f} tok/s" + (f" | MFU {100 * mfu:.1f}%" if mfu else "")
                       + f" | eta {eta:.0f}s")
            window_t, window, window_tokens, window_steps = time.perf_counter(), None, 0, 0
        if cfg.ckpt_every and done % cfg.ckpt_every == 0:
            save(done, tokens_seen())
            saved_at = done
        if stop_at is not None and done >= stop_at:
            break
    if saved_at != done:
        save(done, tokens_seen())
    stop.restore()
    logger.close()
    env.close()
    return last
