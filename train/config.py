"""Training configs: YAML validated by pydantic, unknown keys rejected, like the pipeline's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Strict):
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int | None = None  # None: as many as n_head (no grouping)
    n_embd: int = Field(256, ge=8)
    mlp_hidden: int = 0
    rope_theta: float = 10000.0
    qk_norm: bool = False
    tie_embeddings: bool = True
    pad_vocab_to: int = 64  # round the vocabulary up (tensor-core-friendly shapes); 1: exact


class OptimizerSection(Strict):
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = Field(1.0, ge=0)  # 0: no clipping


class ScheduleSection(Strict):
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(10, ge=0)
    min_lr_frac: float = Field(0.1, ge=0, le=1)
    decay_frac: float = Field(0.2, gt=0, le=1)  # wsd: the last fraction of steps decays linearly


class DataSection(Strict):
    train: str  # a glob of token shards
    val: str | None = None
    eval_batches: int = Field(8, ge=1)


class SftSection(Strict):
    data: list[str]  # Parquet or JSONL files in the alpaca or chat shape
    template: Literal["alpaca", "chat", "model", "auto"] = "alpaca"  # model: the imported model's chat template
    packing: bool = True  # pack examples into full rows (attention stays inside each), else pad
    val_fraction: float = Field(0.05, ge=0, lt=1)


class DpoSection(Strict):
    data: list[str]  # Parquet, JSON or JSONL files of pairs, or of labelled answers for kto
    template: Literal["alpaca", "chat", "model", "auto"] = "chat"  # as the SFT checkpoint was tuned with
    packing: bool = True  # pack whole pairs into rows (attention stays inside each answer), else pad
    val_fraction: float = Field(0.1, ge=0, lt=1)
    eval_batches: int = Field(8, ge=1)
    loss: Literal["dpo", "ipo", "hinge", "simpo", "kto", "orpo"] = "dpo"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # dpo and simpo
    simpo_gamma: float = 0.5  # simpo's target margin
    desirable_weight: float = Field(1.0, gt=0)  # kto
    undesirable_weight: float = Field(1.0, gt=0)  # kto
    reference: str | None = None  # the reference checkpoint; default: init_from
    ref_cache: str | None = None  # where reference log-probs are kept; default: ref-logps/ beside the first file


class TrainConfig(Strict):
    out_dir: str
    tokenizer: str
    data: DataSection | None = None  # pretraining
    sft: SftSection | None = None  # supervised fine-tuning
    dpo: DpoSection | None = None  # preference tuning, from an SFT checkpoint
    init_from: str | None = None  # a checkpoint to start from: continued pretraining, or SFT
    model: ModelSection = ModelSection()
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    seq_len: int = Field(256, ge=8)
    micro_batch: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(100, ge=1)
    eval_every: int = Field(50, ge=0)  # 0: only at the end
    log_every: int = Field(10, ge=1)
    ckpt_every: int = Field(100, ge=0)  # 0: only at the end
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    peak_tflops: float | None = None  # for MFU on hardware Winnow does not know
    tensorboard: bool = True  # when the tensorboard package is installed


class TrainConfigError(ValueError):
    pass


def load_train_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """The config at `path`, with `key.sub=value` overrides applied; errors name the key."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for item in overrides or []:
        key, _, value = item.partition("=")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise TrainConfigError(f"{path}: {problems}") from None
    if [cfg.data, cfg.sft, cfg.dpo].count(None) != 2:
        raise TrainConfigError(f"{path}: give one of `data:` (pretraining), `sft:` (fine-tuning) or `dpo:` "
                               "(preference tuning)")
    if cfg.dpo is not None and not cfg.init_from:
        raise TrainConfigError(f"{path}: init_from: preference tuning starts from a checkpoint (an SFT model)")
    if cfg.schedule.warmup_steps >= cfg.max_steps:
        raise TrainConfigError(f"{path}: schedule.warmup_steps ({cfg.schedule.warmup_steps}) must be below "
                               f"max_steps ({cfg.max_steps})")
    return cfg
