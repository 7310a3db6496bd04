"""LoRA on CPU: equal to PEFT on the same weights and batch, adapters off give the base exactly, only
the adapters train, a LoRA SFT run learns, resumes exactly and saves adapters only that load merged,
and a LoRA DPO run takes its reference log-probs from the base with the adapters off."""

from __future__ import annotations

import copy
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import SHARED
from train import checkpoint
from train.config import TrainConfig, TrainConfigError, load_train_config
from train.lora import LoRALinear, adapter_state, adapters_disabled, apply_lora, merge
from train.model import GPT, ModelConfig
from train.tokenizer import train_tokenizer

DEMO = SHARED / "sft" / "llamafactory-demo"
ALPACA, PAIRS = DEMO / "alpaca_en_demo.json", DEMO / "dpo_en_demo.json"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def small_gpt(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{"vocab_size": 512, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
                              "max_seq_len": 128, **kw}))


def randomize_b(model: torch.nn.Module, seed: int = 1) -> None:
    """B starts at zero, which makes A's gradient zero: give it values so the checks can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoRALinear):
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A base checkpoint laid out as an imported one: checkpoint.pt with its tokenizer.json beside it."""
    root = tmp_path_factory.mktemp("lora")
    rows = json.loads(ALPACA.read_text()) + json.loads(PAIRS.read_text())
    texts = [json.dumps(r, ensure_ascii=False) for r in rows]
    pq.write_table(pa.table({"text": texts}), root / "text.parquet")
    (root / "base").mkdir()
    train_tokenizer([str(root / "text.parquet")], 512, str(root / "base" / "tokenizer.json"))
    model = small_gpt()
    with torch.no_grad():  # confident random predictions: a loss that a few adapter steps can visibly lower
        model.embed_tokens.weight.mul_(10)
    checkpoint.save(str(root / "base"), model, None, 0, {"tokenizer": checkpoint.TOKENIZER,
                                                               "train_config": {"sft": {"template": "chat"}}})
    (root / "pairs.json").write_text(json.dumps(json.loads(PAIRS.read_text())[:32]))
    return root


def write_config(root: Path, name: str, base: Path, **extra) -> object:
    raw = {"out_dir": str(root / name), "init_from": str(base / "base"), "seq_len": 64, "micro_batch": 4,
           "max_steps": 8, "log_every": 1, "eval_every": 4, "ckpt_every": 0, "tensorboard": False,
           "schedule": {"kind": "cosine", "warmup_steps": 1}, "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
           "lora": {"r": 4, "alpha": 16, "dropout": 0.1, "targets": ALL},
           "sft": {"data": [str(ALPACA)], "template": "chat", "val_fraction": 0.1}, **extra}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return load_train_config(str(root / f"{name}.yaml"))


def log_of(cfg) -> list[dict]:
    return [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]


def test_loss_and_adapter_gradients_equal_peft(capsys):
    """Our GPT as Hugging Face's LlamaForCausalLM (the export mapping), the same adapters in PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from train.export import hf_config

    ours = small_gpt(tie_embeddings=False)
    hf = LlamaForCausalLM(LlamaConfig(**hf_config(ours.cfg, 1, 2))).float()
    hf.load_state_dict({(k if k == "lm_head.weight" else f"model.{k}"): v for k, v in ours.state_dict().items()})
    apply_lora(ours, r=4, alpha=8, dropout=0.0, targets=ALL)
    randomize_b(ours)
    peft = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL))
    theirs = dict(peft.named_parameters())
    pairs = {}
    for name, p in ours.named_parameters():
        if p.requires_grad:  # layers.0.self_attn.q_proj.lora_A.weight -> ...q_proj.lora_A.default.weight
            peft_name = "base_model.model.model." + name.replace(".lora_A.", ".lora_A.default.").replace(
                ".lora_B.", ".lora_B.default.")
            with torch.no_grad():
                theirs[peft_name].copy_(p)
            pairs[name] = theirs[peft_name]
    assert len(pairs) == 2 * len(ALL) * 2
    assert sum(p.requires_grad for p in theirs.values()) == len(pairs)  # PEFT trains exactly these too
    seq = torch.randint(0, 512, (3, 33), generator=torch.Generator().manual_seed(5))
    _, loss = ours(seq[:, :-1], seq[:, 1:])
    loss.backward()
    their_loss = peft(input_ids=seq, labels=seq).loss
    their_loss.backward()
    loss_diff = abs(loss.item() - their_loss.item())
    grad_diff = max((p.grad - pairs[n].grad).abs().max().item() for n, p in ours.named_parameters()
                    if p.requires_grad)
    grad_scale = max(p.grad.abs().max().item() for p in ours.parameters() if p.requires_grad)
    with capsys.disabled():
        print(f"\nPEFT parity: loss {loss.item():.6f}, |loss diff| {loss_diff:.2e}, max |adapter grad diff| "
              f"{grad_diff:.2e} (largest adapter grad {grad_scale:.2e})")
    assert loss_diff < 1e-5 and grad_diff < 1e-5 and grad_scale > 1e-3


def test_adapters_off_give_the_base_exactly_and_merging_gives_adapters_on():
    base = small_gpt().eval()
    tuned = copy.deepcopy(base)
    wrapped = apply_lora(tuned, r=8, alpha=16, dropout=0.0, targets=["q_proj", "layers.1.mlp.down_proj"])
    assert wrapped == ["layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "layers.1.self_attn.q_proj"]
    randomize_b(tuned)
    x = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        expected = base(x)[0]
        on = tuned(x)[0]
        with adapters_disabled(tuned):
            off = tuned(x)[0]
        assert torch.equal(off, expected) and not torch.allclose(on, expected, atol=1e-3)
        assert torch.equal(tuned(x)[0], on)  # switched back on after the block
        merged = merge(tuned)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert torch.allclose(merged(x)[0], on, atol=1e-5)


def test_only_the_adapters_train_and_carry_optimizer_state():
    from train.loop import build_optimizer

    model = small_gpt()
    apply_lora(model, r=4, alpha=8, dropout=0.0, targets=ALL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state(model)) and len(trainable) == 2 * len(ALL) * 2
    cfg = TrainConfig.model_validate({"out_dir": "x", "tokenizer": "t", "data": {"train": "x"}})
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = [p.clone() for p in model.parameters() if not p.requires_grad]
    model(torch.randint(0, 512, (2, 16)), torch.randint(0, 512, (2, 16)))[1].backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(frozen, [p for p in model.parameters() if not p.requires_grad],
                                                strict=True))
    assert len(optimizer.state) == len(trainable)


def test_a_target_that_names_no_module_is_a_config_error():
    with pytest.raises(TrainConfigError) as err:
        apply_lora(small_gpt(), r=4, alpha=8, dropout=0.0, targets=["q_proj", "qkv_proj"])
    message = str(err.value)
    assert "lora.targets" in message and "'qkv_proj'" in message and "'q_proj'" not in message
    assert "q_proj, up_proj, v_proj" in message.replace("lm_head, ", "")  # the linear layers that exist


def run_sft(cfg, stop_at=None) -> None:
    from train.pretrain import train
    from train.sft import sft_data

    train(cfg, *sft_data(cfg, 0, 1), stop_at=stop_at)


def test_lora_sft_learns_resumes_exactly_and_saves_adapters_that_load_merged(base):
    unbroken = write_config(base, "sft-unbroken", base)
    assert unbroken.tokenizer == str(base / "base" / "tokenizer.json")  # beside init_from
    run_sft(unbroken)
    stopped = write_config(base, "sft-stopped", base)
    run_sft(stopped, stop_at=3)
    run_sft(stopped)
    a = [(r["step"], r["loss"], r.get("val_loss")) for r in log_of(unbroken) if "loss" in r]
    b = [(r["step"], r["loss"], r.get("val_loss")) for r in log_of(stopped) if "loss" in r]
    assert [s for s, *_ in b] == list(range(1, 9)) and a == b  # dropout on: the RNG resumes too
    vals = [v for *_, v in a if v is not None]
    assert a[-1][1] < a[0][1] - 1 and vals[-1] < vals[0] - 1  # training and validation loss fall
    start = log_of(unbroken)[0]
    assert start["trainable_params"] / start["params"] < 0.1
    ckpt = checkpoint.load(unbroken.out_dir)
    assert set(ckpt["model"]) == set(k for k in ckpt["model"] if ".lora_" in k) and len(ckpt["model"]) == 28
    assert len(ckpt["optimizer"]["state"]) == 28  # moments for the adapters only
    assert ckpt["lora"]["base"]["path"] == str((base / "base").resolve())
    size = (Path(unbroken.out_dir) / checkpoint.LATEST).stat().st_size
    assert size < 0.35 * (base / "base" / checkpoint.LATEST).stat().st_size
    merged, loaded = checkpoint.load_model(unbroken.out_dir)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert checkpoint.prompt_template(loaded) == "chat"
    other, _ = checkpoint.load_model(stopped.out_dir)
    assert all(torch.equal(p, q) for p, q in zip(merged.state_dict().values(), other.state_dict().values(),
                                                strict=True))
    plain, _ = checkpoint.load_model(str(base / "base"))
    x = torch.randint(0, 512, (2, 20))
    with torch.no_grad():
        assert not torch.allclose(merged(x)[0], plain(x)[0], atol=1e-4)  # the adapters changed the model
    # A checkpoint of a LoRA run can itself be a base: init_from merges it, new adapters go on top.
    stacked = write_config(base, "sft-stacked", base, init_from=unbroken.out_dir, max_steps=2,
                           tokenizer=str(base / "base" / "tokenizer.json"))
    run_sft(stacked)
    assert checkpoint.load_model(stacked.out_dir)[0].cfg == merged.cfg


def test_a_changed_or_missing_base_is_a_clear_error(base, tmp_path):
    shutil.copytree(base / "base", tmp_path / "base")
    cfg = write_config(tmp_path, "moved", base, init_from=str(tmp_path / "base"), max_steps=2, eval_every=0)
    run_sft(cfg)
    model, _ = checkpoint.load_model(str(tmp_path / "base"))
    with torch.no_grad():
        model.norm.weight.mul_(1.01)
    checkpoint.save(str(tmp_path / "base"), model, None, 0, {"tokenizer": checkpoint.TOKENIZER})
    with pytest.raises(ValueError, match="has changed since these LoRA adapters were trained"):
        checkpoint.load_model(cfg.out_dir)
    shutil.rmtree(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match="put the base back"):
        checkpoint.load_model(cfg.out_dir)


def test_lora_dpo_takes_reference_logps_from_the_base_with_adapters_off(base, tmp_path, monkeypatch):
    from train.dpo import compute_logps, prepare, reference_logps, train_dpo
    from train.loop import Distributed

    cfg = write_config(tmp_path, "dpo", base, sft=None, max_steps=2, eval_every=2, micro_batch=2,
                       dpo={"data": [str(base / "pairs.json")], "ref_cache": str(tmp_path / "ref"),
                            "val_fraction": 0.2})
    loads = []
    real = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    train_dpo(cfg)
    monkeypatch.undo()
    assert loads == [cfg.init_from]  # the base, once: no reference model besides it
    start = log_of(cfg)[0]
    assert start["reference"] == "base with adapters off" and start["reused"] is False
    batches, val_rows, _ = prepare(cfg, 0, 1)
    plain, _ = checkpoint.load_model(cfg.init_from)
    expected = compute_logps(plain, batches.rows, 2, torch.device("cpu"), nullcontext())
    assert np.allclose(np.load(start["ref_logps"])["train"], expected, atol=1e-5)
    # With trained adapters (B no longer zero), the pass still sees the base: the adapters are off.
    policy, _ = checkpoint.load_model(cfg.init_from)
    apply_lora(policy, r=4, alpha=8, dropout=0.1, targets=ALL)
    randomize_b(policy)
    policy.train()
    fresh = cfg.model_copy(update={"dpo": cfg.dpo.model_copy(update={"ref_cache": str(tmp_path / "ref2")})})
    (train_ref, _), event = reference_logps(fresh, [batches.rows, val_rows], Distributed("cpu"), nullcontext(),
                                            policy=policy)
    assert np.allclose(train_ref, expected, atol=1e-5) and policy.training
    with torch.no_grad():
        on = compute_logps(policy.eval(), batches.rows, 2, torch.device("cpu"), nullcontext())
    assert not np.allclose(on, expected, atol=1e-3)


@pytest.mark.slow
def test_lora_under_torchrun_equals_one_process(base, tmp_path):
    """2 ranks x 2 rows per step see what 1 process x 4 sees: the adapters must agree; DDP leaves the
    frozen base out of its gradient all-reduce."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    ddp = write_config(tmp_path, "ddp", base, micro_batch=2, max_steps=3, eval_every=0,
                       lora={"r": 4, "alpha": 8, "dropout": 0.0, "targets": ALL})
    single = write_config(tmp_path, "single", base, micro_batch=4, max_steps=3, eval_every=0,
                          lora={"r": 4, "alpha": 8, "dropout": 0.0, "targets": ALL})
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipeline.cli", "train", "sft",
                           str(tmp_path / "ddp.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_sft(single)
    assert log_of(ddp)[0]["world_size"] == 2
    a, b = checkpoint.load(ddp.out_dir)["model"], checkpoint.load(single.out_dir)["model"]
    assert a.keys() == b.keys() and len(a) == 28
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_an_imported_model_fine_tunes_with_lora_and_exports_merged(tmp_path, capsys):
    """The usual path: `winnow import`, then `init_from:` + `lora:` with neither `tokenizer:` nor `model:`,
    then generate and export the merged model; transformers reads the export with the same logits."""
    from transformers import AutoModelForCausalLM

    from pipeline.cli import main
    from tests.test_import import tiny_llama

    tiny_llama(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "base")]) == 0
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"the fox {k}", "output": "jumps over the lazy dog"})
                              for k in range(16)))
    raw = {"out_dir": str(tmp_path / "tuned"), "init_from": str(tmp_path / "base"), "seq_len": 64, "micro_batch": 4,
           "max_steps": 6, "log_every": 1, "eval_every": 0, "ckpt_every": 0, "tensorboard": False,
           "schedule": {"kind": "constant", "warmup_steps": 0}, "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
           "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "down_proj"]},
           "sft": {"data": [str(data)], "template": "model", "val_fraction": 0}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "sft", str(tmp_path / "sft.yaml")]) == 0
    log = [json.loads(line) for line in (tmp_path / "tuned" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[1]["loss"] and log[0]["trainable_params"] < log[0]["params"] / 10
    merged, ckpt = checkpoint.load_model(str(tmp_path / "tuned"))
    assert checkpoint.prompt_template(ckpt) == "model" and ckpt["chat_template"]
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "tuned"), "--prompt", "the fox", "--max-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["tokens"] <= 4
    assert main(["export", str(tmp_path / "tuned"), "--hf", str(tmp_path / "export")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), dtype=torch.float32).eval()
    x = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, merged(x)[0], atol=1e-4)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**raw, "out_dir": str(tmp_path / "bad"),
                                                        "lora": {"targets": ["q_proj", "query"]}}))
    assert main(["train", "sft", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config error" in err and "'query' names no linear layer" in err and "gate_proj" in err
