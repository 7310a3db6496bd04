"""LoRA: low-rank adapters on the linear layers of train/model.py's GPT, with PEFT's conventions.

Each targeted `nn.Linear` (named by its module name: q_proj, k_proj, v_proj, o_proj, gate_proj,
up_proj, down_proj, or a longer dotted suffix) becomes `base(x) + B(A(dropout(x))) * alpha / r`:
A is (r, in) with Kaiming-uniform init, B is (out, r) with zeros, so training starts exactly at
the base model. The base stays frozen; only A and B train and carry optimizer state.

A LoRA run's checkpoint holds the adapters and a reference to its base checkpoint: the path, and
a digest of the base's weights that is checked on load. `load_model` on such a checkpoint loads
the base and merges the adapters into its weights (W + B A * alpha / r), so generation, serving,
evaluation and export see an ordinary model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.config import TrainConfig, TrainConfigError
from train.model import GPT

LORA_KEYS = ("r", "alpha", "dropout", "targets")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update, switched off by `enabled = False`."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base_layer = base
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **kw)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        self.enabled = True
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear and PEFT initialise A
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if not self.enabled:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight."""
        with torch.no_grad():
            delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
            self.base_layer.weight += delta.to(self.base_layer.weight.dtype)
        return self.base_layer


def linear_names(model: nn.Module) -> list[str]:
    """Every nn.Linear's module name, adapters' own layers left out."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not name.endswith(("lora_A", "lora_B", "base_layer"))]


def apply_lora(model: GPT, r: int, alpha: float, dropout: float, targets: list[str]) -> list[str]:
    """Freeze every weight of `model` and wrap the targeted linear layers with adapters, in place.
    Returns the wrapped layers' names. A target that names no linear layer is a config error."""
    names = linear_names(model)
    chosen = {t: [n for n in names if n == t or n.endswith("." + t)] for t in targets}
    missing = [t for t, found in chosen.items() if not found]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise TrainConfigError(f"lora.targets: {', '.join(map(repr, missing))} names no linear layer of the model; "
                               f"its linear layers are: {', '.join(leaves)}")
    wrapped = sorted({n for found in chosen.values() for n in found})
    if model.cfg.tie_embeddings and "lm_head" in wrapped:
        raise TrainConfigError("lora.targets: lm_head shares its weight with the embeddings in this model; "
                               "merging an adapter into it would change both: leave lm_head out")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in wrapped:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), r, alpha, dropout))
    return wrapped


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model's outputs, exactly: every adapter off inside the block."""
    layers = lora_layers(model)
    before = [layer.enabled for layer in layers]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer, enabled in zip(layers, before, strict=True):
            layer.enabled = enabled


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only: what a LoRA checkpoint stores in place of the model."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def load_adapters(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = adapter_state(model).keys()
    if set(state) != set(expected):
        raise ValueError(f"{where}: the stored adapters do not fit the model ({len(state)} tensors stored, "
                         f"{len(expected)} expected): the checkpoint belongs to another base or lora config")
    model.load_state_dict(state, strict=False)


def merge(model: GPT) -> GPT:
    """Fold every adapter into its base weight and drop the adapters, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module.merged())
    return model


def weights_digest(model: nn.Module) -> str:
    """A digest of the weights (names, shapes, dtypes and bytes), to notice a changed base."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_base(ref: dict[str, Any], where: str, device: str | torch.device) -> GPT:
    """The base checkpoint a LoRA checkpoint names, checked against the digest taken at training."""
    from train.checkpoint import load_model

    base = ref["base"]["path"]
    if not Path(base).exists():
        raise FileNotFoundError(f"{where}: holds LoRA adapters for the base checkpoint {base}, which is not "
                                "there: put the base back at that path (or retrain the adapters)")
    model, _ = load_model(base, device)
    if weights_digest(model) != ref["base"]["digest"]:
        raise ValueError(f"{where}: the base checkpoint {base} has changed since these LoRA adapters were trained "
                         "(its weights digest differs): restore that base, or retrain the adapters on the new one")
    return model


def merged_model(ckpt: dict[str, Any], where: str, device: str | torch.device) -> GPT:
    """A LoRA checkpoint as an ordinary model: its base with the adapters merged in."""
    ref = ckpt["lora"]
    model = load_base(ref, where, device)
    apply_lora(model, **{k: ref[k] for k in LORA_KEYS})
    load_adapters(model, ckpt["model"], where)
    return merge(model).eval()


def merged_checkpoint(ckpt: dict[str, Any], where: str, device: str | torch.device) -> dict[str, Any]:
    """The checkpoint with `model` holding the merged weights, as a full checkpoint would."""
    model = merged_model(ckpt, where, device)
    return {**ckpt, "model": model.state_dict(), "model_config": model.cfg.to_dict()}


def training_model(cfg: TrainConfig, ckpt: dict[str, Any] | None, device: torch.device
                   ) -> tuple[GPT, dict[str, Any]]:
    """The base from `init_from` (or, resuming, the one this run's checkpoint names) with adapters
    on, and the reference to the base that the run's checkpoints carry."""
    section = cfg.lora.model_dump()
    if ckpt is not None:
        ref = ckpt["lora"]
        changed = [k for k in ("r", "alpha", "targets") if ref[k] != section[k]]
        if changed:
            raise TrainConfigError(f"lora: {', '.join(changed)} differ from the checkpoint in {cfg.out_dir} "
                                   f"({', '.join(f'{k}={ref[k]}' for k in changed)}): use a new out_dir")
        model = load_base(ref, cfg.out_dir, device)
    else:
        from train.checkpoint import load_model

        model, _ = load_model(cfg.init_from, device)  # a LoRA checkpoint comes merged: adapters stack on it
        base = Path(cfg.init_from).resolve()
        ref = {**section, "base": {"path": str(base), "digest": weights_digest(model)}}
    apply_lora(model, **{k: section[k] for k in LORA_KEYS})
    if ckpt is not None:
        load_adapters(model, ckpt["model"], cfg.out_dir)
    return model, {**ref, "dropout": section["dropout"]}
