"""A decoder-only transformer, written plainly: RoPE, RMSNorm, SwiGLU, grouped-query attention,
optional QK-norm, SDPA attention (flash kernels on GPU), optional weight tying.

The layout and conventions are Llama's (rotate-half RoPE, pre-norm, no biases), so a checkpoint
exports to Hugging Face's `LlamaForCausalLM` without rearranging weights (see train/export.py).
The few switches published models need are config fields, off by default: q/k/v biases (Qwen2),
QK-norm (Qwen3), a head size other than n_embd / n_head (Qwen3), and RoPE frequency scaling
(Llama 3's `llama3`, or `linear`). train/hf_import.py maps each family onto them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4  # < n_head: grouped-query attention
    n_embd: int = 256
    max_seq_len: int = 512
    mlp_hidden: int = 0  # 0: 8/3 of n_embd, rounded up to a multiple of 64 (Llama's rule)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qk_norm: bool = False
    tie_embeddings: bool = True
    head_dim: int = 0  # 0: n_embd / n_head
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    rope_scaling: dict | None = None  # {"rope_type": "llama3" or "linear", "factor": ..., ...}

    def __post_init__(self) -> None:
        if (self.head_dim == 0 and self.n_embd % self.n_head) or self.n_head % self.n_kv_head:
            raise ValueError(f"n_embd ({self.n_embd}) must divide by n_head ({self.n_head}), "
                             f"and n_head by n_kv_head ({self.n_kv_head})")
        if self.head_dim == 0:
            self.head_dim = self.n_embd // self.n_head
        if self.mlp_hidden == 0:
            self.mlp_hidden = 64 * math.ceil(8 * self.n_embd / 3 / 64)
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in ("default", "linear", "llama3"):
            raise ValueError(f"rope_scaling: unsupported rope_type {kind!r} (default, linear and llama3 are)")

    def to_dict(self) -> dict:
        return asdict(self)


def scale_frequencies(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """Stretch RoPE's wavelengths for a longer context. `linear` divides every frequency by the
    factor; Llama 3's `llama3` divides only the low ones (wavelengths past the original context
    over `low_freq_factor`), keeps the high ones, and blends smoothly in between."""
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    factor = scaling["factor"]
    if kind == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(medium, blended, scaled)


def rope_tables(head_dim: int, positions: torch.Tensor, theta: float, scaling: dict | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for the given positions, in the rotate-half layout: (..., T, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    inv_freq = scale_frequencies(inv_freq, scaling)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32, as Llama does: bf16 squares lose too much.
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class KVCache:
    """Keys and values of every layer for generation, preallocated to `max_len`."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (cfg.n_layer, batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        gqa = cfg.n_kv_head != cfg.n_head
        if mask is None:  # plain causal: SDPA picks flash or memory-efficient kernels
            causal = cache is None or T > 1
            if cache is not None and T > 1 and cache.length > 0:
                raise ValueError("a multi-token step on a non-empty cache needs an explicit mask")
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by depth
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.embed_tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward and backward): 6 per weight that multiplies a token's
        activations, plus attention's scores and values (PaLM's appendix; nanoGPT's estimate)."""
        cfg = self.cfg
        matmul_params = self.num_params() - self.embed_tokens.weight.numel() * (0 if cfg.tie_embeddings else 1)
        return 6 * matmul_params + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, attn_mask: torch.Tensor | None = None, reduction: str = "mean",
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the cross-entropy over the target tokens where `loss_mask` is set: their mean,
        or with `reduction="sum"` their sum (the trainer divides by the step's token count).

        `doc_ids` (B, T) packs several examples in a row: attention stays inside each example, and
        `positions` restart at each example's start, so every example sees what it would alone.
        `attn_mask` (B, 1, T, keys), True where a query may attend, is for left-padded generation."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device).expand(B, T)
        cos, sin = rope_tables(self.cfg.head_dim, positions, self.cfg.rope_theta, self.cfg.rope_scaling)
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        mask = attn_mask
        if doc_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal
            mask = mask[:, None]
        x = self.embed_tokens(idx)
        for block in self.layers:
            x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits, None
        losses = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="none",
                                 ignore_index=-100)
        if loss_mask is None:
            loss_mask = targets.reshape(-1) != -100
        weights = loss_mask.reshape(-1).float()
        total = (losses * weights).sum()
        return logits, total if reduction == "sum" else total / weights.sum().clamp(min=1)
