"""Checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint holds the model and optimizer states, the step, the data loader's position, every
random generator's state, the model config and the training config. It is written to a temporary
file and renamed, so a run killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.model import GPT, ModelConfig

LATEST = "checkpoint.pt"
TOKENIZER = "tokenizer.json"  # a copy next to the checkpoint: the run directory can move


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out_dir: str, model: GPT, optimizer: torch.optim.Optimizer | None, step: int, extra: dict[str, Any]) -> Path:
    path = Path(out_dir) / LATEST
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), "model_config": model.cfg.to_dict(), "step": step, "rng": rng_state(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None, **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / LATEST
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(p, map_location=map_location, weights_only=False)


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """A model ready for inference, and its checkpoint, with `tokenizer` resolved to a path."""
    ckpt = load(path, map_location=device)
    if "lora" in ckpt:  # adapters only: the weights of their base with them merged in (train/lora.py)
        from train.lora import merged_checkpoint

        ckpt = merged_checkpoint(ckpt, str(path), device)
    model = GPT(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    ckpt["tokenizer"] = str(folder / ckpt["tokenizer"]) if not Path(ckpt["tokenizer"]).is_absolute() \
        else ckpt["tokenizer"]
    return model.to(device).eval(), ckpt


def keep_tokenizer(tokenizer: str, out_dir: str) -> None:
    """Copy the tokenizer next to the checkpoint (atomically), unless it is already there."""
    target = Path(out_dir) / TOKENIZER
    if target.exists() and target.resolve() == Path(tokenizer).resolve():
        return
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(tokenizer, tmp)
    os.replace(tmp, target)


def prompt_template(ckpt: dict[str, Any]) -> str | None:
    """The template the model was fine-tuned with ("alpaca" or "chat"), or None for a base model."""
    tuned = ckpt.get("train_config") or {}
    section = tuned.get("sft") or tuned.get("dpo")  # a preference-tuned model keeps its SFT template
    return section["template"] if section else None
