"""Checkpoints: everything a run needs to continue exactly, written atomically.

A checkpoint holds the model and optimizer states, the step, the data loader's position, every
random generator's state, the model config and the training config. It is written to a temporary
file and renamed, so a run killed while saving keeps its previous checkpoint.

Everything in it is tensors and plain Python values, so it loads with `torch.load(weights_only=True)`,
which runs no code from the file. (Checkpoints from before kept NumPy's generator state as an array,
which only the full unpickler reads; those still load.) A model imported from Hugging Face or GGUF
(train/hf_import.py) is the same file at step 0, plus `chat_template`, `special_tokens` and `source`;
its tokenizer's `tokenizer_config.json` (special tokens, chat template) sits next to `tokenizer.json`.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.model import GPT, ModelConfig
from train.tokenizer import TOKENIZER_CONFIG, tokenizer_file, tokenizer_settings

LATEST = "checkpoint.pt"
TOKENIZER = "tokenizer.json"  # a copy next to the checkpoint: the run directory can move


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)  # a tensor: weights-only
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
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
    try:
        try:
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:  # written before the RNG state was made plain: a file this project wrote
            ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a cut file fails in many ways (EOFError with no message, KeyError, ...)
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = f"{type(exc).__name__}: {first}" if first else ("the file is empty" if p.stat().st_size == 0
                                                                 else type(exc).__name__)
        raise ValueError(f"{p} is not a readable checkpoint (truncated or corrupted: {reason}); "
                         "restore it from a copy or train again") from exc
    if not isinstance(ckpt, dict) or not {"model", "model_config"} <= ckpt.keys():  # what `save` always writes
        raise ValueError(f"{p} is not a Winnow checkpoint (no model weights and config in it): give a training "
                         "out_dir, its checkpoint.pt, or a folder written by `winnow import`")
    return ckpt


def check_finite(state: dict[str, torch.Tensor], path: str) -> None:
    """A diverged run's weights are NaN or infinite: every score from them would be meaningless."""
    bad = [name for name, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{path}: the checkpoint holds NaN or infinite weights ({len(bad)} tensors, first "
                         f"{bad[0]}): the run that wrote it diverged; train again with a lower optimizer.lr")


def load_model(path: str, device: str | torch.device = "cpu") -> tuple[GPT, dict[str, Any]]:
    """A model ready for inference, and its checkpoint, with `tokenizer` resolved to a path."""
    ckpt = load(path, map_location=device)
    if "lora" in ckpt:  # adapters only: the weights of their base with them merged in (train/lora.py)
        from train.lora import merged_checkpoint

        ckpt = merged_checkpoint(ckpt, str(path), device)
    check_finite(ckpt["model"], str(path))
    with torch.device("meta"):  # no random init of weights about to be replaced: seconds for a real model
        model = GPT(ModelConfig(**ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except RuntimeError as exc:  # tensors missing or of other shapes than its config gives
        raise ValueError(f"{path}: the checkpoint's weights do not fit its model_config "
                         f"({str(exc).strip().splitlines()[-1].strip()[:200]})") from None
    if model.cfg.tie_embeddings:  # assign gives each name its own tensor: tie them again
        model.lm_head.weight = model.embed_tokens.weight
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    ckpt["tokenizer"] = str(folder / ckpt["tokenizer"]) if not Path(ckpt["tokenizer"]).is_absolute() \
        else ckpt["tokenizer"]
    if "chat_template" not in ckpt:  # fine-tuned from an imported model: its tokenizer files keep the template
        ckpt["chat_template"] = tokenizer_settings(ckpt["tokenizer"]).get("chat_template")
    return model.to(device).eval(), ckpt


def keep_tokenizer(tokenizer: str, out_dir: str) -> None:
    """Copy the tokenizer next to the checkpoint (atomically), unless it is already there, with its
    `tokenizer_config.json` when it has one (an imported model's special tokens and chat template)."""
    source = Path(tokenizer_file(tokenizer))
    for name, src in ((TOKENIZER, source), (TOKENIZER_CONFIG, source.with_name(TOKENIZER_CONFIG))):
        target = Path(out_dir) / name
        if not src.exists() or (target.exists() and target.resolve() == src.resolve()):
            continue
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)


def prompt_template(ckpt: dict[str, Any]) -> str | None:
    """The template the model was fine-tuned with ("alpaca", "chat" or "model": its own chat
    template), "model" for an imported model that has a chat template, or None for a base model."""
    tuned = ckpt.get("train_config") or {}
    section = tuned.get("sft") or tuned.get("dpo")  # a preference-tuned model keeps its SFT template
    if section:
        return section["template"]
    return "model" if ckpt.get("chat_template") else None
