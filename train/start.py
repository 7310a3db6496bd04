"""Where a training run's model comes from: this run's own checkpoint (resume), `init_from` (a
checkpoint trained here or imported with `winnow import`), or new from the `model:` section; with
`lora:`, the base frozen and adapters added (train/lora.py).

Starting from a checkpoint, the model's shape is the checkpoint's: a `model:` section that says
otherwise is an error rather than silently ignored.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from train import checkpoint
from train.config import TrainConfig, TrainConfigError
from train.model import GPT, ModelConfig


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    m = cfg.model
    padded = m.pad_vocab_to * math.ceil(vocab_size / m.pad_vocab_to)
    return ModelConfig(vocab_size=padded, n_layer=m.n_layer, n_head=m.n_head, n_kv_head=m.n_kv_head or m.n_head,
                       n_embd=m.n_embd, max_seq_len=cfg.seq_len, mlp_hidden=m.mlp_hidden, rope_theta=m.rope_theta,
                       qk_norm=m.qk_norm, tie_embeddings=m.tie_embeddings)


def check_model_section(cfg: TrainConfig, found: ModelConfig, source: str) -> None:
    """The keys `model:` sets explicitly must agree with the checkpoint's model."""
    if "model" not in cfg.model_fields_set:
        return
    given = cfg.model.model_dump(include=cfg.model.model_fields_set - {"pad_vocab_to"})
    if given.get("n_kv_head") is None:
        given.pop("n_kv_head", None)
    if given.get("mlp_hidden") == 0:
        given.pop("mlp_hidden")
    conflicts = [f"{key}={value} (the checkpoint has {getattr(found, key)})" for key, value in given.items()
                 if getattr(found, key) != value]
    if conflicts:
        raise TrainConfigError(f"model: {', '.join(conflicts)}: starting from {source}, the model's shape comes "
                               "from that checkpoint; drop the `model:` section (or make it match)")


def from_checkpoint(ckpt: dict[str, Any], path: str, device: torch.device) -> GPT:
    """The checkpoint's model; a LoRA checkpoint's base with its adapters merged in."""
    if "lora" in ckpt:
        from train.lora import merged_model

        return merged_model(ckpt, path, device)
    model = GPT(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model


def build_model(cfg: TrainConfig, resume: bool, vocab_size: int, device: torch.device
                ) -> tuple[GPT, dict[str, Any] | None, dict[str, Any] | None]:
    """The model to train, this run's checkpoint when resuming, and with LoRA the reference to the
    base that every checkpoint of the run carries."""
    ckpt = checkpoint.load(cfg.out_dir, map_location=device) if resume else None
    if ckpt is not None and ("lora" in ckpt) != (cfg.lora is not None):
        raise TrainConfigError(f"lora: {cfg.out_dir} holds a checkpoint {'with' if 'lora' in ckpt else 'without'} "
                               "LoRA adapters and the config says otherwise: use a new out_dir, or match the config")
    lora_ref = None
    if cfg.lora is not None:
        from train.lora import training_model

        model, lora_ref = training_model(cfg, ckpt, device)
        source = cfg.init_from
    elif ckpt is not None:
        model, source = from_checkpoint(ckpt, cfg.out_dir, device), cfg.out_dir
    elif cfg.init_from:
        model, source = from_checkpoint(checkpoint.load(cfg.init_from, device), cfg.init_from, device), cfg.init_from
    else:
        model, source = GPT(model_config(cfg, vocab_size)), None
    if source is not None:
        check_model_section(cfg, model.cfg, source)
    if vocab_size > model.cfg.vocab_size:
        raise ValueError(f"{cfg.tokenizer} has {vocab_size:,} tokens but the model {source} has "
                         f"{model.cfg.vocab_size:,}: train with the tokenizer it was built with")
    return model.to(device).train(), ckpt, lora_ref
