"""The trainer on CPU: tokenizer and shards, loader, model, overfitting, exact resume, SFT masks and
packing, sampling, Hugging Face export, and DDP under torchrun (the server: tests/test_serve.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import ROOT, SHARED
from train.checkpoint import load_model
from train.config import load_train_config
from train.data import TokenLoader
from train.generate import SamplingParams, generate
from train.model import GPT, ModelConfig
from train.sft import build_rows, encode_example, row_batch
from train.shards import MAGIC, read_shard, tokenize_to_shards
from train.tokenizer import load_vocab, train_tokenizer

WIKI = SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt"
ALPACA = SHARED / "sft" / "llamafactory-demo" / "alpaca_en_demo.json"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, ray_local):
    """Real Wikipedia articles in two Parquet files, a tokenizer trained on them, and token shards."""
    root = tmp_path_factory.mktemp("train")
    articles = [line for line in WIKI.read_text().splitlines() if line.strip()]
    docs = [a[i:i + 2000] for a in articles for i in range(0, len(a), 2000)][:300]
    for k in range(2):
        part = docs[k::2]
        pq.write_table(pa.table({"id": [f"wiki-{k}-{i}" for i in range(len(part))], "text": part}),
                       root / f"part-{k}.parquet")
    files = sorted(str(p) for p in root.glob("part-*.parquet"))
    tokenizer = train_tokenizer(files, 1024, str(root / "tokenizer.json"))
    meta = tokenize_to_shards(files, str(tokenizer), str(root / "tokens"), val_fraction=0.1)
    return root, files, str(tokenizer), meta


def tiny_config(root: Path, out: str, tokenizer: str, **extra) -> object:
    raw = {"out_dir": str(root / out), "tokenizer": tokenizer,
           "data": {"train": str(root / "tokens" / "train-*.bin"), "val": str(root / "tokens" / "val-*.bin"),
                    "eval_batches": 2},
           "model": {"n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64}, "seq_len": 32, "micro_batch": 4,
           "max_steps": 12, "log_every": 1, "eval_every": 6, "ckpt_every": 0, "tensorboard": False,
           "schedule": {"kind": "wsd", "warmup_steps": 2}, **extra}
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_train_config(str(path))


def run_pretrain(cfg, stop_at=None) -> list[dict]:
    from train.cli import pretrain_data
    from train.pretrain import train

    batches, val = pretrain_data(cfg, 0, 1)
    train(cfg, batches, val, stop_at=stop_at)
    return [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(corpus):
    """A tiny model pretrained for a few steps on the corpus: (checkpoint folder, tokenizer)."""
    root, _, tokenizer, _ = corpus
    cfg = tiny_config(root, "trained", tokenizer)
    run_pretrain(cfg)
    return cfg.out_dir, tokenizer


def test_tokenizer_and_shards_follow_the_llmc_format(corpus):
    root, files, tokenizer, meta = corpus
    vocab = load_vocab(tokenizer)
    assert vocab.size == 1024 and vocab.role_ids.keys() == {"system", "user", "assistant"}
    text = "Anarchism is a political philosophy — naïve café 東京."
    assert vocab.decode(vocab.encode(text)) == text  # byte-level: every string round-trips
    header = np.fromfile(root / "tokens" / "train-00000.bin", dtype="<i4", count=256)
    assert (header[0], header[1]) == (MAGIC, 1)  # uint16 tokens, as llm.c writes them
    tokens = [read_shard(root / "tokens" / f"{split}-0000{k}.bin") for split in ("train", "val") for k in (0, 1)]
    assert sum(int((t == vocab.bos_id).sum()) for t in tokens) == meta["docs"] == 300
    assert meta["train_tokens"] + meta["val_tokens"] == sum(len(t) for t in tokens)
    assert 0 < meta["val_tokens"] < meta["train_tokens"]
    again = tokenize_to_shards(files, tokenizer, str(root / "tokens-again"), val_fraction=0.1)
    for name in ("train-00000.bin", "val-00001.bin"):  # deterministic: the same bytes on a rerun
        assert (root / "tokens" / name).read_bytes() == (root / "tokens-again" / name).read_bytes()
    assert again["shards"] == meta["shards"]


def test_loader_samples_without_replacement_and_resumes_exactly(corpus):
    root = corpus[0]
    pattern = str(root / "tokens" / "train-*.bin")
    loader = TokenLoader(pattern, seq_len=32, batch_size=4, seed=3)
    per_epoch = loader.tokens_per_epoch // 32
    seen = [tuple(loader._next_window().tolist()) for _ in range(per_epoch)]
    assert len(set(seen)) == per_epoch and loader.state.epoch == 0
    loader = TokenLoader(pattern, seq_len=32, batch_size=4, seed=3)
    for _ in range(5):
        loader.next_batch()
    resumed = TokenLoader(pattern, seq_len=32, batch_size=4, seed=3)
    resumed.load_state_dict(loader.state_dict())
    for _ in range(3):
        assert torch.equal(loader.next_batch()[0], resumed.next_batch()[0])
    ranks = [TokenLoader(pattern, 32, 4, seed=3, rank=r, world_size=2).next_batch()[0] for r in (0, 1)]
    assert not torch.equal(ranks[0], ranks[1])  # DDP ranks read different windows


def test_a_tiny_model_overfits_a_small_batch():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, qk_norm=True))
    x = torch.randint(0, 128, (4, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05


def test_resume_continues_exactly_like_an_unbroken_run(corpus):
    root, _, tokenizer, _ = corpus
    unbroken = run_pretrain(tiny_config(root, "unbroken", tokenizer))
    stopped_cfg = tiny_config(root, "stopped", tokenizer)
    before = run_pretrain(stopped_cfg, stop_at=5)
    assert [r["step"] for r in before if "loss" in r] == [1, 2, 3, 4, 5]
    resumed = run_pretrain(stopped_cfg)  # the same command again: it finds the checkpoint
    assert [r["step"] for r in resumed if "loss" in r] == list(range(1, 13))  # went on from 6, did not restart
    losses = {r["step"]: (r["loss"], r.get("val_loss")) for r in unbroken if "loss" in r}
    after = {r["step"]: (r["loss"], r.get("val_loss")) for r in resumed if "loss" in r}
    assert losses[12][0] < losses[1][0]
    assert {s: v for s, v in after.items()} == losses  # steps 1-5 before the stop, 6-12 after it
    a, _ = load_model(str(root / "unbroken"))
    b, _ = load_model(str(root / "stopped"))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_sft_loss_covers_exactly_the_response_tokens(corpus):
    vocab = load_vocab(corpus[2])
    row = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    tokens, mask = encode_example(row, vocab, "alpaca")
    answer = vocab.encode("Blue.") + [vocab.eos_id]
    assert tokens[-len(answer):] == answer and mask == [0] * (len(tokens) - len(answer)) + [1] * len(answer)
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                         {"role": "assistant", "content": "Bye."}]}
    tokens, mask = encode_example(chat, vocab, "chat")
    trained = [t for t, m in zip(tokens, mask, strict=True) if m]
    assert trained == vocab.encode("Hello.") + [vocab.end_of_turn_id] + vocab.encode("Bye.") + [vocab.end_of_turn_id]
    x, y, loss_mask, _, _ = row_batch(build_rows([(tokens, mask)], 64, vocab.pad_id, packing=False), np.array([0]))
    assert y[loss_mask].tolist() == trained  # targets where the loss counts: exactly the answers


def test_packing_keeps_attention_and_targets_inside_each_example(corpus):
    vocab = load_vocab(corpus[2])
    rows = json.loads(ALPACA.read_text())[:6]
    examples = [encode_example(r, vocab, "alpaca") for r in rows]
    packed = build_rows(examples, 1024, vocab.pad_id, packing=True)
    assert len(packed) < len(examples)  # several examples share a row
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=1024, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)).eval()
    shared = next(i for i in range(len(packed)) if len(set(packed.doc_ids[i].tolist()) - {-1}) >= 2)
    x, y, loss_mask, positions, doc_ids = row_batch(packed, np.array([shared]))
    first, second = sorted(set(doc_ids[0].tolist()) - {-1})[:2]
    logits, _ = model(x, positions=positions, doc_ids=doc_ids)
    alone = x[:, doc_ids[0] == second]
    logits_alone, _ = model(alone)
    assert torch.allclose(logits[:, doc_ids[0] == second], logits_alone, atol=1e-5)
    changed = x.clone()
    changed[0, doc_ids[0] == first] = 7  # rewrite the first example: the last one must not notice
    logits_changed, _ = model(changed, positions=positions, doc_ids=doc_ids)
    assert torch.equal(logits_changed[:, doc_ids[0] == second], logits[:, doc_ids[0] == second])
    boundary = (doc_ids[0, 1:] != doc_ids[0, :-1]).nonzero()[:, 0]
    assert not loss_mask[0, boundary].any()  # no example learns to predict the next one's BOS


def test_sampling_is_deterministic_under_a_seed_and_the_cache_matches_a_full_forward(trained):
    folder, tokenizer = trained
    model, _ = load_model(folder)
    vocab = load_vocab(tokenizer)
    prompts = [[vocab.bos_id, *vocab.encode("Anarchism is")], [vocab.bos_id, *vocab.encode("The")]]
    params = SamplingParams(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.95, min_p=0.01, seed=11, best_of=2)
    first, again = generate(model, vocab, prompts, params), generate(model, vocab, prompts, params)
    assert [c.tokens for c in first] == [c.tokens for c in again]
    other = generate(model, vocab, prompts, SamplingParams(**{**params.__dict__, "seed": 12}))
    assert [c.tokens for c in other] != [c.tokens for c in first]
    greedy = generate(model, vocab, prompts, SamplingParams(max_new_tokens=10, temperature=0), stop_ids=set())
    for prompt, completion in zip(prompts, greedy, strict=True):
        ids = torch.tensor([prompt])
        for _ in range(10):  # no cache, no padding: the reference
            ids = torch.cat([ids, model(ids)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
        assert completion.tokens == ids[0, len(prompt):].tolist()


@pytest.mark.parametrize("qk_norm,tie", [(False, True), (True, False)])
def test_hf_export_round_trip_gives_equal_logits(corpus, tmp_path, qk_norm, tie):
    from transformers import AutoModelForCausalLM

    from train import checkpoint
    from train.export import export_hf

    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=1024, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, qk_norm=qk_norm,
                            tie_embeddings=tie))
    checkpoint.save(str(tmp_path / "ckpt"), model, None, 0, {"tokenizer": corpus[2]})
    out = export_hf(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if qk_norm else "LlamaForCausalLM")
    x = torch.randint(0, 1024, (2, 48))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model.eval()(x)[0], atol=1e-4)


def test_ddp_with_two_cpu_processes_under_torchrun_equals_one_process(corpus):
    """2 ranks x 2 sequences x 2 accumulation steps see the same windows per step as 1 process x 2 x 4,
    so the weights after training must agree (up to float summation order)."""
    root, _, tokenizer, _ = corpus
    cfg = tiny_config(root, "ddp", tokenizer, max_steps=4, eval_every=0, micro_batch=2, grad_accum=2)
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipeline.cli", "train",
                           "pretrain", str(root / "ddp.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]
    assert log[0]["world_size"] == 2 and log[0]["tokens_per_step"] == 2 * 2 * 2 * 32
    assert log[-1]["step"] == 4 and log[-1]["tokens"] == 4 * 8 * 32
    single = tiny_config(root, "single", tokenizer, max_steps=4, eval_every=0, micro_batch=2, grad_accum=4)
    run_pretrain(single)
    a, _ = load_model(cfg.out_dir)
    b, _ = load_model(single.out_dir)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def test_sft_trains_and_resumes_exactly(trained, tmp_path):
    folder, tokenizer = trained
    raw = {"tokenizer": tokenizer, "init_from": folder, "seq_len": 64, "micro_batch": 4, "grad_accum": 2,
           "max_steps": 6, "log_every": 1, "eval_every": 3, "ckpt_every": 0, "tensorboard": False,
           "schedule": {"kind": "cosine", "warmup_steps": 1},
           "sft": {"data": [str(ALPACA)], "template": "chat", "packing": True, "val_fraction": 0.1}}
    logs = {}
    for name, stops in (("unbroken", [None]), ("stopped", [3, None])):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**raw, "out_dir": str(tmp_path / name)}))
        for stop in stops:
            args = ["train", "sft", str(path)] + (["--stop-at", str(stop)] if stop else [])
            subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, check=True, capture_output=True)
        logs[name] = [(r["step"], r["loss"], r.get("val_loss")) for r in
                      map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r[0] for r in logs["stopped"]] == list(range(1, 7))
    assert logs["stopped"] == logs["unbroken"]
    assert logs["unbroken"][-1][1] < logs["unbroken"][0][1]
    assert (tmp_path / "unbroken" / "tokenizer.json").exists()  # the checkpoint keeps its tokenizer


def test_train_set_overrides_are_parsed_and_reported_as_winnow_run_does(corpus, capsys):
    import argparse

    from train.cli import add_parsers

    root, _, tokenizer, _ = corpus
    tiny_config(root, "overrides", tokenizer)
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())

    def train_with(*sets: str) -> str:
        args = parser.parse_args(["train", "pretrain", str(root / "overrides.yaml"),
                                  *[a for s in sets for a in ("--set", s)]])
        assert args.func(args) == 2
        return capsys.readouterr().err

    assert "--set max_steps.x: 'max_steps' is a value, not a section" in train_with("max_steps.x=1")
    assert "unknown key 'model.n_layr'; did you mean 'n_layer'?" in train_with("model.n_layr=2")
    assert "--set 'max_steps': expected key=value" in train_with("max_steps")
    assert "max_steps: Input should be greater than or equal to 1" in train_with("max_steps=0")
    cfg = load_train_config(str(root / "overrides.yaml"), ["schedule.kind=constant", "model.n_layer=3"])
    assert cfg.schedule.kind == "constant" and cfg.model.n_layer == 3


def test_continued_pretraining_takes_the_model_and_tokenizer_from_init_from(trained, corpus):
    """An imported model is a checkpoint.pt with its tokenizer.json beside it, as a trained one is."""
    folder, _ = trained
    root = corpus[0]
    raw = {"out_dir": str(root / "continued"), "init_from": folder, "seq_len": 32, "micro_batch": 4, "max_steps": 3,
           "log_every": 1, "eval_every": 0, "ckpt_every": 0, "tensorboard": False,
           "data": {"train": str(root / "tokens" / "train-*.bin")}, "schedule": {"kind": "constant", "warmup_steps": 0}}
    (root / "continued.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_train_config(str(root / "continued.yaml"))
    assert cfg.tokenizer == str(Path(folder) / "tokenizer.json")
    log = run_pretrain(cfg)
    start, base = load_model(folder)[0], load_model(cfg.out_dir)[0]
    assert log[0]["params"] == start.num_params() and base.cfg == start.cfg and log[-1]["step"] == 3
    (root / "conflict.yaml").write_text(yaml.safe_dump({**raw, "out_dir": str(root / "conflict"),
                                                         "model": {"n_layer": 6, "n_head": 4}}))
    from train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match=r"model: n_layer=6 \(the checkpoint has 2\)"):
        run_pretrain(load_train_config(str(root / "conflict.yaml")))


def test_the_shipped_train_configs_are_valid():
    from train.config import TrainConfig

    paths = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert any(p.name == "sft-lora.yaml" for p in paths)
    for path in paths:
        cfg = TrainConfig.model_validate(yaml.safe_load(path.read_text()))
        assert cfg.tokenizer or cfg.init_from, path.name
        assert [cfg.data, cfg.sft, cfg.dpo].count(None) == 2, path.name
