"""`winnow train pretrain CONFIG` (and `winnow train sft CONFIG`): the training loop.

AdamW (fused on GPU) with a cosine or warmup-stable-decay schedule, gradient accumulation and
clipping, bf16 autocast on GPU and float32 on CPU, `torch.compile` on request, DDP under
`torchrun`. It logs loss, validation loss, tokens per second, MFU and time left to the terminal,
to `log.jsonl` and, when the package is installed, to TensorBoard. It checkpoints atomically and
resumes from the checkpoint in `out_dir` when one is there, continuing the same run exactly.
SIGTERM or SIGINT (a preempted job, Ctrl-C) saves a checkpoint before exiting.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train import checkpoint
from train.config import TrainConfig
from train.model import GPT, ModelConfig
from train.tokenizer import load_vocab

# Dense BF16 peak per GPU, for MFU (vendor datasheets; SXM parts unless named).
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
               "L4": 121.0, "RTX 4090": 165.0}


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

    def mean(self, value: float) -> float:
        return self.sum(torch.tensor([value], device=self.device)).item() / self.world_size

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on some rank."""
        if not self.enabled:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item())

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


def build_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on norms), as GPT-2 and Llama train."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optimizer.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    o = cfg.optimizer
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=device.type == "cuda")


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    m = cfg.model
    padded = m.pad_vocab_to * math.ceil(vocab_size / m.pad_vocab_to)
    return ModelConfig(vocab_size=padded, n_layer=m.n_layer, n_head=m.n_head, n_kv_head=m.n_kv_head or m.n_head,
                       n_embd=m.n_embd, max_seq_len=cfg.seq_len, mlp_hidden=m.mlp_hidden, rope_theta=m.rope_theta,
                       qk_norm=m.qk_norm, tie_embeddings=m.tie_embeddings)


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


def build_model(cfg: TrainConfig, resume: bool, vocab_size: int, device: torch.device) -> tuple[GPT, dict | None]:
    """The model to train: from this run's checkpoint, from `init_from`, or new; and that checkpoint."""
    source = cfg.out_dir if resume else cfg.init_from
    ckpt = checkpoint.load(source, map_location=device) if source else None
    model = GPT(ModelConfig(**ckpt["model_config"])) if ckpt else GPT(model_config(cfg, vocab_size))
    if ckpt:
        model.load_state_dict(ckpt["model"])
    if vocab_size > model.cfg.vocab_size:
        raise ValueError(f"{cfg.tokenizer} has {vocab_size:,} tokens but the model {source} has "
                         f"{model.cfg.vocab_size:,}: train with the tokenizer it was built with")
    return model.to(device), ckpt


def target_count(batch: tuple) -> torch.Tensor:
    """Tokens the loss covers in a micro-batch: the loss mask's, or every target."""
    return batch[2].sum() if len(batch) > 2 and batch[2] is not None else torch.tensor(batch[1].numel())


def train(cfg: TrainConfig, batches: Any, val_batches: Any, stop_at: int | None = None) -> dict[str, Any]:
    """Runs (or resumes) training. `batches` gives (x, y[, loss_mask, positions, doc_ids]) per micro-step
    and has state_dict/load_state_dict; `val_batches()` lists validation batches. `stop_at` stops
    after that step, checkpointed, as a preempted job would."""
    env = Distributed(cfg.device)
    device = env.device
    torch.manual_seed(cfg.seed + env.rank)
    vocab = load_vocab(cfg.tokenizer)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = (out / checkpoint.LATEST).exists()
    model, ckpt = build_model(cfg, resume, vocab.size, device)
    optimizer = build_optimizer(model, cfg, device)
    start_step, tokens_seen = 0, 0
    if resume:
        optimizer.load_state_dict(ckpt["optimizer"])
        batches.load_state_dict(ckpt["loader"])
        start_step, tokens_seen = ckpt["step"], ckpt["tokens_seen"]
        checkpoint.set_rng_state(ckpt["rng"])
    if start_step >= cfg.max_steps or (stop_at is not None and stop_at <= start_step):
        env.close()
        return {"step": start_step, "event": "nothing to do: the checkpoint is at or past the stop"}
    logger = Logger(cfg.out_dir, env.main, cfg.tensorboard)
    if resume:
        logger.drop_after(start_step)  # steps logged after the checkpoint are about to be redone
    if env.main:
        checkpoint.keep_tokenizer(cfg.tokenizer, cfg.out_dir)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if env.enabled:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    peak = peak_flops(device, cfg.peak_tflops)
    flops_per_token = raw_model.flops_per_token(cfg.seq_len)
    tokens_per_step = cfg.micro_batch * cfg.seq_len * cfg.grad_accum * env.world_size
    if not resume:
        logger.log({"step": start_step, "event": "start", "params": raw_model.num_params(),
                    "tokens_per_step": tokens_per_step, "device": str(device), "bf16": bf16,
                    "world_size": env.world_size},
                   f"training {raw_model.num_params():,} parameters on {device} x{env.world_size}, "
                   f"{tokens_per_step:,} tokens per step, {'bf16' if bf16 else 'fp32'}")
    stop = StopRequest()

    def evaluate() -> float | None:
        listed = val_batches()
        if not listed:
            return None
        model.eval()
        total = 0.0
        with torch.no_grad(), autocast:
            for batch in listed:
                total += raw_model(*batch_args(batch, device))[1].item()
        model.train()
        return env.mean(total / len(listed))

    def save(step: int) -> None:
        if env.main:
            checkpoint.save(cfg.out_dir, raw_model, optimizer, step,
                            {"loader": batches.state_dict(), "tokens_seen": tokens_seen,
                             "train_config": cfg.model_dump(), "tokenizer": checkpoint.TOKENIZER})

    model.train()
    t_start, window_t, window_tokens = time.perf_counter(), time.perf_counter(), 0
    last: dict[str, Any] = {}
    done = saved_at = start_step
    for step in range(start_step, cfg.max_steps):
        # Every rank stops at the same step: a rank that left alone would hang the others' all-reduce.
        if env.any(stop.requested):
            break
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # The step's micro-batches go to the device together, and the loss is their total over the
        # total count of target tokens on every rank: an SFT micro-batch with few answer tokens
        # weighs what its tokens weigh, not as much as a full one.
        micro = [batch_args(batches.next_batch(), device) for _ in range(cfg.grad_accum)]
        count = env.sum(torch.stack([target_count(b) for b in micro]).sum().float().to(device)).clamp(min=1)
        loss_sum = torch.zeros((), device=device)
        for k, batch in enumerate(micro):
            sync = not env.enabled or k == cfg.grad_accum - 1
            with (nullcontext() if sync else model.no_sync()), autocast:
                _, loss = model(*batch, reduction="sum")
            (loss * env.world_size / count).backward()  # DDP averages gradients over ranks
            loss_sum += loss.detach()  # no .item() here: it would wait for the GPU every micro-step
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optimizer.grad_clip or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        done = step + 1
        evaluate_now = done == cfg.max_steps or (cfg.eval_every and done % cfg.eval_every == 0)
        val_loss = evaluate() if evaluate_now else None
        if done % cfg.log_every == 0 or evaluate_now or done == stop_at:
            train_loss = (env.sum(loss_sum) / count).item()
            now = time.perf_counter()
            tok_s = window_tokens / (now - window_t)
            mfu = tok_s * flops_per_token / (peak * env.world_size) if peak else None
            eta = (cfg.max_steps - done) * tokens_per_step / tok_s
            last = {"step": done, "loss": round(train_loss, 6), "lr": lr, "grad_norm": round(norm.item(), 4),
                    "tokens": tokens_seen, "tok_per_s": round(tok_s, 1), "mfu": round(mfu, 4) if mfu else None,
                    "elapsed_s": round(now - t_start, 2), "eta_s": round(eta, 1)}
            if val_loss is not None:
                last["val_loss"] = round(val_loss, 6)
            line = (f"step {done}/{cfg.max_steps} | loss {train_loss:.4f}"
                    + (f" | val {val_loss:.4f}" if val_loss is not None else "")
                    + f" | lr {lr:.2e} | {tok_s:,.0f} tok/s" + (f" | MFU {100 * mfu:.1f}%" if mfu else "")
                    + f" | eta {eta:.0f}s")
            logger.log(last, line)
            window_t, window_tokens = time.perf_counter(), 0
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


def batch_args(batch: tuple, device: torch.device) -> tuple:
    """(x, y[, loss_mask, positions, doc_ids]) on the device, as GPT.forward takes them; from pinned
    memory without blocking on a GPU."""
    if device.type != "cuda":
        return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
    return tuple(t.pin_memory().to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch)
