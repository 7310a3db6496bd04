"""Training configs: YAML validated by pydantic, unknown keys rejected, `--set` overrides and error
messages as `winnow run`'s (train/overrides.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from train.overrides import ConfigError, describe, read_config


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


class LoraSection(Strict):
    """Low-rank adapters on the named linear layers; the base model stays frozen (train/lora.py)."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)  # the adapters' output is scaled by alpha / r
    dropout: float = Field(0.0, ge=0, lt=1)  # on the adapters' input
    targets: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1)


class TrainConfig(Strict):
    out_dir: str
    tokenizer: str | None = None  # default: the tokenizer saved beside init_from's checkpoint
    data: DataSection | None = None  # pretraining
    sft: SftSection | None = None  # supervised fine-tuning
    dpo: DpoSection | None = None  # preference tuning, from an SFT checkpoint
    init_from: str | None = None  # a checkpoint to start from: continued pretraining, or SFT
    lora: LoraSection | None = None  # train adapters on init_from instead of every weight
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


class TrainConfigError(ConfigError):
    pass


def load_train_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """The config at `path`, with `key.sub=value` overrides applied; errors name the key."""
    try:
        raw = read_config(path, overrides or [], error=TrainConfigError)
    except UnicodeDecodeError as exc:
        raise TrainConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save the config as UTF-8") from None
    except IsADirectoryError:
        raise TrainConfigError(f"{path} is a folder: give the YAML file of a training config") from None
    except OSError as exc:
        raise TrainConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise TrainConfigError(f"{path}: {describe(exc, TrainConfig)}") from None
    if [cfg.data, cfg.sft, cfg.dpo].count(None) != 2:
        raise TrainConfigError(f"{path}: give one of `data:` (pretraining), `sft:` (fine-tuning) or `dpo:` "
                               "(preference tuning)")
    if cfg.dpo is not None and not cfg.init_from:
        raise TrainConfigError(f"{path}: init_from: preference tuning starts from a checkpoint (an SFT model)")
    if cfg.lora is not None and not cfg.init_from:
        raise TrainConfigError(f"{path}: lora: adapters train on a base model: set init_from to its checkpoint")
    if cfg.schedule.warmup_steps >= cfg.max_steps:
        raise TrainConfigError(f"{path}: schedule.warmup_steps ({cfg.schedule.warmup_steps}) must be below "
                               f"max_steps ({cfg.max_steps})")
    if cfg.tokenizer is None:
        cfg.tokenizer = tokenizer_beside(path, cfg.init_from)
    return cfg


def tokenizer_beside(path: str, init_from: str | None) -> str:
    """The tokenizer.json a checkpoint keeps next to itself (train/checkpoint.py writes it there)."""
    if not init_from:
        raise TrainConfigError(f"{path}: tokenizer: give the tokenizer.json to train with (or init_from: a "
                               "checkpoint, whose tokenizer is then used)")
    folder = Path(init_from) if Path(init_from).is_dir() or not init_from.endswith(".pt") else Path(init_from).parent
    found = folder / "tokenizer.json"
    if not found.exists():
        raise TrainConfigError(f"{path}: tokenizer: not given, and init_from's folder has no tokenizer.json "
                               f"({found}): give tokenizer: explicitly")
    return str(found)
