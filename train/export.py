"""`winnow export CKPT --hf DIR`: a Hugging Face checkpoint that `transformers` loads as is.

The model already uses Llama's layout and names (rotate-half RoPE, RMSNorm, SwiGLU, no biases),
so the weights map one to one under a `model.` prefix. The architecture written is the one the
model came from when it was imported (Llama, Mistral, Qwen2, Qwen3); a model trained here is Llama,
or Qwen3 with QK-norm (Llama has none; Qwen3 normalizes each head's queries and keys the same way).
An imported model's tokenizer files go back as they came, with its own chat template. A model
trained here gets `tokenizer.json` with a `tokenizer_config.json` naming its special tokens, and,
when it has role tokens, a chat template matching `template: chat`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from train.checkpoint import load_model, prompt_template
from train.hf_import import FAMILIES
from train.tokenizer import END_OF_TURN, ROLES, load_vocab, tokenizer_settings

# The two SFT templates as Jinja chat templates, so `apply_chat_template` gives what training gave.
CHAT_TEMPLATES = {
    "chat": ("{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '" + END_OF_TURN
             + "' }}{% endfor %}{% if add_generation_prompt %}{{ '" + ROLES["assistant"] + "' }}{% endif %}"),
    "alpaca": ("{{ bos_token }}### Instruction:\n{{ messages | map(attribute='content') | join('\n\n') }}"
               "\n\n### Response:\n"),
}


def model_type(cfg: Any, ckpt: dict[str, Any]) -> str:
    imported = (ckpt.get("source") or {}).get("model_type")
    if imported:
        return imported
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


def hf_config(cfg: Any, bos_id: int, eos_id: int | list[int], kind: str = "llama") -> dict[str, Any]:
    scaling = cfg.rope_scaling or {"rope_type": "default"}
    config = {
        "architectures": [FAMILIES[kind]],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # and rope_scaling: how configs said it before transformers 5
        "rope_scaling": cfg.rope_scaling,
        "rope_parameters": {**scaling, "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if kind in ("llama", "qwen3"):
        config.update(attention_bias=False, mlp_bias=False)
    if kind in ("mistral", "qwen2", "qwen3"):  # the context was capped at any window on import
        config.update(sliding_window=None, use_sliding_window=False)
    return config


def export_hf(checkpoint: str, out_dir: str) -> Path:
    from safetensors.torch import save_file

    model, ckpt = load_model(checkpoint)
    vocab = load_vocab(ckpt["tokenizer"])
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if cfg.tie_embeddings:
                continue  # transformers ties it back to the embeddings
            weights[name] = tensor.contiguous()
        else:
            weights[f"model.{name}"] = tensor.contiguous()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    stops = sorted({vocab.eos_id, vocab.end_of_turn_id, *vocab.stop_ids})
    eos = vocab.eos_id if len(stops) == 1 else stops
    (out / "config.json").write_text(json.dumps(hf_config(cfg, vocab.bos_id, eos, model_type(cfg, ckpt)), indent=1))
    settings = tokenizer_settings(ckpt["tokenizer"])
    if settings:  # an imported model's tokenizer: back as it came
        shutil.copyfile(ckpt["tokenizer"], out / "tokenizer.json")
        tok_config = {k: v for k, v in settings.items() if k != "stop_tokens"}
    else:
        tok_config = project_tokenizer(ckpt, vocab, cfg, out)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": vocab.bos_id, "eos_token_id": stops, "pad_token_id": vocab.pad_id}, indent=1))
    return out


def project_tokenizer(ckpt: dict[str, Any], vocab: Any, cfg: Any, out: Path) -> dict[str, Any]:
    """A tokenizer trained here: set to start with BOS, and a chat template for the SFT template."""
    template = prompt_template(ckpt)
    write_tokenizer(ckpt["tokenizer"], vocab.tokenizer.id_to_token(vocab.bos_id), out / "tokenizer.json")
    names = {token_id: vocab.tokenizer.id_to_token(token_id) for token_id in (vocab.bos_id, vocab.eos_id, vocab.pad_id)}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": names[vocab.bos_id],
                  "eos_token": names[vocab.eos_id], "pad_token": names[vocab.pad_id],
                  "model_max_length": cfg.max_seq_len, "clean_up_tokenization_spaces": False}
    if template == "alpaca" or (template == "chat" and {"user", "assistant"} <= set(vocab.role_ids)):
        tok_config["chat_template"] = CHAT_TEMPLATES[template]
    return tok_config


def write_tokenizer(source: str, bos: str, target: Path) -> None:
    """The tokenizer, set to start every encoding with BOS, as every training document started."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(source)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    tokenizer.save(str(target))
