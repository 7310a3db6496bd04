"""Preference tuning on CPU: each loss against a hand computation, DPO against TRL's DPOTrainer,
answer-only masks, packing without cross-talk, reference log-probs computed once, exact resume,
and a tiny model that learns a handful of real pairs."""

from __future__ import annotations

import json
import math
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
from train.config import load_train_config
from train.model import GPT, ModelConfig
from train.prefdata import CHOSEN, REJECTED, build_pref_rows, encode_rows, pref_batch, read_preferences, sequence_logps
from train.preference import kto_losses, pair_losses
from train.tokenizer import load_vocab, train_tokenizer

DEMO = SHARED / "sft" / "llamafactory-demo"
PAIRS, KTO = DEMO / "dpo_en_demo.json", DEMO / "kto_en_demo.json"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A byte-level BPE tokenizer trained on the demo pairs, and two tiny models saved as checkpoints:
    the "SFT" start and another reference."""
    root = tmp_path_factory.mktemp("dpo")
    rows = json.loads(PAIRS.read_text())
    texts = [" ".join([r["chosen"]["value"], r["rejected"]["value"], *(c["value"] for c in r["conversations"])])
             for r in rows]
    pq.write_table(pa.table({"text": texts}), root / "text.parquet")
    tokenizer = str(train_tokenizer([str(root / "text.parquet")], 512, str(root / "tokenizer.json")))
    for source in (PAIRS, KTO):  # the loop tests train on the first 48 real examples: fast on two cores
        (root / source.name).write_text(json.dumps(json.loads(source.read_text())[:48]))
    for name, seed in (("sft", 0), ("other", 1)):
        torch.manual_seed(seed)
        model = GPT(ModelConfig(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=128))
        checkpoint.save(str(root / name), model, None, 0, {"tokenizer": tokenizer,
                                                           "train_config": {"sft": {"template": "chat"}}})
    return root, tokenizer


def write_config(root: Path, tokenizer: str, name: str, **dpo) -> object:
    raw = {"out_dir": str(root / name), "tokenizer": tokenizer, "init_from": str(Path(tokenizer).parent / "sft"),
           "dpo": {"data": [str(Path(tokenizer).parent / PAIRS.name)], "ref_cache": str(root / "ref-logps"),
                   "val_fraction": 0.2, **dpo},
           "seq_len": 64, "micro_batch": 4, "max_steps": 6, "log_every": 1, "eval_every": 3, "ckpt_every": 0,
           "tensorboard": False, "schedule": {"kind": "cosine", "warmup_steps": 1}, "optimizer": {"lr": 2e-3}}
    for key in ("seq_len", "micro_batch", "max_steps", "init_from", "eval_every", "grad_accum"):
        if key in dpo:
            raw[key] = raw["dpo"].pop(key)
    (root / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return load_train_config(str(root / f"{name}.yaml"))


def log_of(cfg) -> list[dict]:
    return [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]


def test_each_loss_equals_a_hand_computation():
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
    rc, rr = torch.tensor([-11.0, -18.0]), torch.tensor([-11.5, -16.0])
    lc, lr = torch.tensor([5.0, 10.0]), torch.tensor([4.0, 6.0])
    beta, eps, gamma = 0.5, 0.1, 0.3

    def logsig(v: float) -> float:
        return -math.log1p(math.exp(-v))

    for i in range(2):
        d = (pc[i] - rc[i] - (pr[i] - rr[i])).item()
        mc, mr = pc[i].item() / lc[i].item(), pr[i].item() / lr[i].item()
        odds = (mc - mr) - (math.log(1 - math.exp(mc)) - math.log(1 - math.exp(mr)))
        expected = {
            "dpo": -(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d),
            "ipo": ((pc[i] - rc[i]).item() / lc[i].item() - (pr[i] - rr[i]).item() / lr[i].item()
                    - 1 / (2 * beta)) ** 2,
            "hinge": max(0.0, 1 - beta * d),
            "simpo": -(1 - eps) * logsig(beta * (mc - mr) - gamma) - eps * logsig(-(beta * (mc - mr) - gamma)),
            "orpo": -mc - beta * logsig(odds),
        }
        for kind, value in expected.items():
            losses, chosen, rejected = pair_losses(kind, pc, pr, rc, rr, lc, lr, beta, eps, gamma)
            assert losses[i].item() == pytest.approx(value, rel=1e-5), kind
            reward_c = beta * (mc if kind in ("simpo", "orpo") else (pc[i] - rc[i]).item())
            assert chosen[i].item() == pytest.approx(reward_c, rel=1e-5), kind
    policy, ref = torch.tensor([-10.0, -20.0, -5.0]), torch.tensor([-11.0, -18.0, -6.0])
    desirable = torch.tensor([True, False, True])
    losses, rewards, z = kto_losses(policy, ref, desirable, beta, 1.5, 0.7)
    ratios = [1.0, -2.0, 1.0]
    z_hand = max(0.0, sum(ratios) / 3)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    hand = [1.5 * (1 - sig(beta * (ratios[0] - z_hand))), 0.7 * (1 - sig(beta * (z_hand - ratios[1]))),
            1.5 * (1 - sig(beta * (ratios[2] - z_hand)))]
    assert z.item() == pytest.approx(z_hand) and losses.tolist() == pytest.approx(hand, rel=1e-5)
    assert rewards.tolist() == pytest.approx([beta * r for r in ratios])


def test_data_shapes_and_bad_rows(setup, tmp_path):
    root, tokenizer = setup
    vocab = load_vocab(tokenizer)
    rows = [{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
            {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
             "rejected": {"role": "assistant", "content": "Go away."}},
            {"prompt": "no answers here"},
            {"prompt": "x", "chosen": "y", "rejected": None}]
    pq.write_table(pa.Table.from_pylist([{"prompt": r["prompt"], "chosen": "A", "rejected": "B"} for r in rows[:1]]),
                   tmp_path / "pairs.parquet")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, val = read_preferences([str(tmp_path / "pairs.jsonl"), str(tmp_path / "pairs.parquet"), str(PAIRS)],
                                  vocab, "chat", 129, unpaired=False, val_fraction=0.0)
    # Demo pairs whose answers start alike are the same tokens once cut to half of 129: they teach nothing.
    same = [s for s in train.skipped if "the same tokens" in s]
    assert len(same) < 20 and all(f"{PAIRS}: example" in s for s in same)
    assert train.n_units == 2 + 1 + 300 - len(same) and not val.seqs
    bad = [s for s in train.skipped if s not in same]
    assert len(bad) == 2 and all("pairs.jsonl: example" in s for s in bad)  # named, counted
    kto, _ = read_preferences([str(KTO)], vocab, "chat", 129, unpaired=True, val_fraction=0.0)
    labels = [json.loads(KTO.read_text())[k]["label"] for k in range(300)]
    assert kto.n_units == 300 and [r == 2 for r in kto.role] == labels  # DESIRABLE where the label is true
    (tmp_path / "kto.json").write_text(json.dumps(json.loads(KTO.read_text())[:5]))
    refused, _ = read_preferences([str(tmp_path / "kto.json")], vocab, "chat", 129, unpaired=False, val_fraction=0.0)
    assert not refused.seqs and len(refused.skipped) == 5 and "dpo.loss: kto" in refused.skipped[0]


def test_the_loss_mask_covers_the_answers_only(setup):
    vocab = load_vocab(setup[1])
    row = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
           "chosen": "Blue.", "rejected": "I will not."}
    units = encode_rows([("mem", 0, row)], vocab, "chat", 129, unpaired=False)
    for layout in (True, False):
        rows = build_pref_rows(units, 128, vocab.pad_id, packing=layout)
        batch = pref_batch(rows, np.arange(len(rows.groups)), None)
        answers = [batch["y"][batch["target_seq"] == s].tolist() for s in range(batch["n_seq"])]
        assert answers == [vocab.encode("Blue.") + [vocab.end_of_turn_id],
                           vocab.encode("I will not.") + [vocab.end_of_turn_id]]
        assert batch["role"].tolist() == [CHOSEN, REJECTED]
    alpaca = encode_rows([("mem", 0, row)], vocab, "alpaca", 129, unpaired=False)
    tokens, mask = alpaca.seqs[0]
    assert [t for t, m in zip(tokens, mask, strict=True) if m] == vocab.encode("Blue.") + [vocab.eos_id]


def test_packed_pairs_do_not_attend_across_examples(setup):
    root, tokenizer = setup
    vocab = load_vocab(tokenizer)
    rows = [{"prompt": r["conversations"][-1]["value"][:60], "chosen": r["chosen"]["value"][:40],
             "rejected": r["rejected"]["value"][:40]} for r in json.loads(PAIRS.read_text())[:12]]  # short pairs
    units = encode_rows([("demo", k, r) for k, r in enumerate(rows)], vocab, "chat", 257, unpaired=False)
    packed = build_pref_rows(units, 256, vocab.pad_id, packing=True)
    padded = build_pref_rows(units, 256, vocab.pad_id, packing=False)
    assert len(packed.groups) < len(padded.groups) == 12  # several pairs share a row
    model, _ = checkpoint.load_model(str(root / "sft"))
    with torch.no_grad():
        a = {}
        for rows_, name in ((packed, "packed"), (padded, "padded")):
            b = pref_batch(rows_, np.arange(len(rows_.groups)), None)
            logits, _ = model(b["x"], positions=b["positions"], doc_ids=b["doc_ids"])
            a[name] = sequence_logps(logits, b["y"], b["target_seq"], b["n_seq"])
        assert torch.allclose(a["packed"][0], a["padded"][0], atol=1e-3)  # each sequence sees what it sees alone
        assert torch.equal(a["packed"][1], a["padded"][1])
        shared = next(g for g in range(len(packed.groups)) if len(set(packed.seq_ids[g].tolist()) - {-1}) >= 4)
        b = pref_batch(packed, np.array([shared]), None)
        first = b["seq_ids"][0].item()
        changed = b["x"].clone()
        changed[b["doc_ids"] == first] = 7  # rewrite the row's first answer: the others must not notice
        before = sequence_logps(model(b["x"], positions=b["positions"], doc_ids=b["doc_ids"])[0], b["y"],
                                b["target_seq"], b["n_seq"])[0]
        after = sequence_logps(model(changed, positions=b["positions"], doc_ids=b["doc_ids"])[0], b["y"],
                               b["target_seq"], b["n_seq"])[0]
        assert torch.equal(before[1:], after[1:]) and before[0] != after[0]


def test_reference_logps_are_computed_once_reused_and_recomputed_for_a_new_reference(setup, tmp_path, monkeypatch):
    from train.dpo import train_dpo

    root, tokenizer = setup
    import shutil

    shutil.copytree(root / "other", tmp_path / "ref")
    first = write_config(tmp_path, tokenizer, "first", max_steps=2, reference=str(tmp_path / "ref"))
    train_dpo(first)
    event = log_of(first)[0]
    assert event["reused"] is False and Path(event["ref_logps"]).exists()
    stamp = Path(event["ref_logps"]).stat().st_mtime_ns

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference model was loaded again")

    monkeypatch.setattr(checkpoint, "load_model", no_reference)  # a rerun only reads the stored log-probs
    again = write_config(tmp_path, tokenizer, "again", max_steps=2, reference=str(tmp_path / "ref"))
    train_dpo(again)
    assert log_of(again)[0]["reused"] is True and log_of(again)[0]["ref_logps"] == event["ref_logps"]
    assert Path(event["ref_logps"]).stat().st_mtime_ns == stamp
    monkeypatch.undo()
    assert log_of(again)[-1]["loss"] == log_of(first)[-1]["loss"]
    # A changed reference checkpoint (other weights) gets new log-probs.
    model, _ = checkpoint.load_model(str(root / "sft"))
    checkpoint.save(str(tmp_path / "ref"), model, None, 0, {"tokenizer": tokenizer})
    changed = write_config(tmp_path, tokenizer, "changed", max_steps=2, reference=str(tmp_path / "ref"))
    train_dpo(changed)
    assert log_of(changed)[0]["reused"] is False and log_of(changed)[0]["ref_logps"] != event["ref_logps"]
    stored = np.load(log_of(changed)[0]["ref_logps"])["train"]
    assert np.isfinite(stored).all() and (stored < 0).all()


def test_stop_and_resume_equals_an_unbroken_run(setup, tmp_path):
    from train.dpo import train_dpo

    root, tokenizer = setup
    unbroken = write_config(tmp_path, tokenizer, "unbroken", grad_accum=1)
    train_dpo(unbroken)
    stopped = write_config(tmp_path, tokenizer, "stopped", grad_accum=1)
    train_dpo(stopped, stop_at=4)
    train_dpo(stopped)  # the same command again: it finds the checkpoint and goes on from step 5
    keys = ("step", "loss", "reward_accuracy", "reward_margin", "val_loss", "val_reward_accuracy")
    a = [tuple(r.get(k) for k in keys) for r in log_of(unbroken) if "loss" in r]
    b = [tuple(r.get(k) for k in keys) for r in log_of(stopped) if "loss" in r]
    assert [r[0] for r in b] == list(range(1, 7)) and a == b
    pa_, _ = checkpoint.load_model(unbroken.out_dir)
    pb, ckpt = checkpoint.load_model(stopped.out_dir)
    assert all(torch.equal(p, q) for p, q in zip(pa_.state_dict().values(), pb.state_dict().values(), strict=True))
    assert checkpoint.prompt_template(ckpt) == "chat"  # generate and serve wrap prompts as the SFT model was tuned


@pytest.mark.parametrize("loss,data", [("kto", KTO), ("orpo", PAIRS), ("simpo", PAIRS), ("ipo", PAIRS)])
def test_every_loss_trains_in_the_loop(setup, tmp_path, loss, data):
    from train.dpo import train_dpo

    root, tokenizer = setup
    cfg = write_config(tmp_path, tokenizer, loss, loss=loss, data=[str(root / data.name)], max_steps=2,
                       eval_every=2, beta=1.0 if loss in ("simpo", "kto") else 0.1)
    last = train_dpo(cfg)
    assert math.isfinite(last["loss"]) and 0 <= last["val_reward_accuracy"] <= 1
    assert ("ref_logps" in log_of(cfg)[0]) == (loss in ("kto", "ipo"))  # SimPO and ORPO need no reference


def test_dpo_raises_reward_accuracy_on_a_handful_of_pairs(setup, tmp_path):
    from train.dpo import compute_logps, train_dpo

    root, tokenizer = setup
    rows = json.loads(PAIRS.read_text())[:8]
    (tmp_path / "few.json").write_text(json.dumps(rows))
    cfg = write_config(tmp_path, tokenizer, "few", data=[str(tmp_path / "few.json")], val_fraction=0.0,
                       max_steps=24, micro_batch=2, eval_every=0, beta=0.5)
    train_dpo(cfg)
    vocab = load_vocab(tokenizer)
    units, _ = read_preferences(cfg.dpo.data, vocab, "chat", 65, unpaired=False, val_fraction=0.0)
    rows_ = build_pref_rows(units, 64, vocab.pad_id, packing=True)

    def accuracy(path: str) -> float:
        model, _ = checkpoint.load_model(path)
        logps = compute_logps(model, rows_, 2, torch.device("cpu"), nullcontext())
        ref = np.load(log_of(cfg)[0]["ref_logps"])["train"]
        ratio = logps - ref
        return float((ratio[rows_.role == CHOSEN] > ratio[rows_.role == REJECTED]).mean())

    assert accuracy(str(root / "sft")) == 0.0  # the start is the reference: every reward is zero
    assert accuracy(cfg.out_dir) == 1.0


def test_dpo_loss_and_rewards_equal_trls_on_the_first_batch(setup, tmp_path):
    """Same weights (exported to Llama), same pairs, same batch: TRL's DPOTrainer, policy and reference."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    from train.dpo import objective, prepare, reference_logps, summary
    from train.export import export_hf
    from train.pretrain import Distributed
    from train.sft import alpaca_prompt

    root, tokenizer = setup
    pairs = [{"prompt": r["conversations"][-1]["value"][:80], "chosen": r["chosen"]["value"][:60],
              "rejected": r["rejected"]["value"][:60]} for r in json.loads(PAIRS.read_text())[:4]]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    cfg = write_config(tmp_path, tokenizer, "vs-trl", data=[str(tmp_path / "pairs.json")], val_fraction=0.0,
                       template="alpaca", packing=False, reference=str(root / "other"), seq_len=256, beta=0.1)
    batches, _, _ = prepare(cfg, 0, 1)
    (ref, _), _ = reference_logps(cfg, [batches.rows, None], Distributed("cpu"), nullcontext())
    policy, _ = checkpoint.load_model(str(root / "sft"))
    b = pref_batch(batches.rows, np.arange(4), ref)
    with torch.no_grad():
        sums, counts = sequence_logps(policy(b["x"])[0], b["y"], b["target_seq"], b["n_seq"])
    ours = summary(objective(cfg, b, sums, counts)[1])

    hf = {}
    for name in ("sft", "other"):
        export_hf(str(root / name), str(tmp_path / f"hf-{name}"))
        hf[name] = AutoModelForCausalLM.from_pretrained(str(tmp_path / f"hf-{name}"), dtype=torch.float32)
    hf_tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "hf-sft"))
    data = Dataset.from_list([{**p, "prompt": alpaca_prompt(p["prompt"])} for p in pairs])
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=0.1, max_length=None,
                     report_to=[], use_cpu=True, bf16=False, dataloader_num_workers=0)
    trainer = DPOTrainer(model=hf["sft"], ref_model=hf["other"], args=args, train_dataset=data,
                         processing_class=hf_tokenizer)
    examples = [trainer.train_dataset[i] for i in range(4)]
    for k, ex in enumerate(examples):  # the same tokens: prompt, then the chosen answer and EOS
        assert batches.rows.tokens[2 * k, :len(ex["prompt_ids"]) + len(ex["chosen_ids"])].tolist() == \
            ex["prompt_ids"] + ex["chosen_ids"]
    trainer.model.train()  # TRL files its metrics under the model's mode
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    assert ours["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert ours["reward_chosen"] == pytest.approx(metrics["rewards/chosen"], abs=1e-5)
    assert ours["reward_rejected"] == pytest.approx(metrics["rewards/rejected"], abs=1e-5)
    assert ours["reward_accuracy"] == pytest.approx(metrics["rewards/accuracies"])
    assert abs(ours["reward_margin"]) > 1e-3  # two different models: the check is not trivially 0 == 0


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_under_torchrun_equals_one_process(setup, tmp_path):
    """2 ranks x 2 row groups see the same pairs per step as 1 process x 4: the weights must agree."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    root, tokenizer = setup
    ddp = write_config(tmp_path, tokenizer, "ddp", micro_batch=2, max_steps=3, eval_every=0)
    single = write_config(tmp_path, tokenizer, "single", micro_batch=4, max_steps=3, eval_every=0)
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pipeline.cli", "train", "dpo",
                           str(tmp_path / "ddp.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from train.dpo import train_dpo

    train_dpo(single)
    assert log_of(ddp)[0]["world_size"] == 2
    a, _ = checkpoint.load_model(ddp.out_dir)
    b, _ = checkpoint.load_model(single.out_dir)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def test_best_of_n_writes_the_judged_best_as_sft_and_best_vs_worst_as_pairs(setup, tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from train.bestofn import cmd_bestofn, judge_logprob
    from train.cli import add_parsers

    root, tokenizer = setup
    prompts = tmp_path / "prompts.jsonl"
    alpaca = json.loads((DEMO / "alpaca_en_demo.json").read_text())[:3]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in alpaca) + '{"nothing": 1}\n')

    import argparse

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    base = ["bestofn", str(root / "sft"), "--prompts", str(prompts), "-n", "4", "--max-tokens", "12",
            "--device", "cpu"]
    args = parser.parse_args([*base, "--out", str(tmp_path / "lp"), "--judge-checkpoint", str(root / "other")])
    assert cmd_bestofn(args) == 0
    stats = json.loads((tmp_path / "lp" / "stats.json").read_text())
    assert stats["prompts"] == 3 and stats["skipped_rows"] == 1 and "row 3" in stats["skipped_examples"][0]
    samples = [json.loads(line) for line in (tmp_path / "lp" / "samples.jsonl").read_text().splitlines()]
    sft = [json.loads(line) for line in (tmp_path / "lp" / "sft.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "lp" / "pairs.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(len(set(s["answers"])) > 1 for s in samples)  # N different samples
    rescored = judge_logprob(str(root / "other"), [s["prompt"] for s in samples], [s["answers"] for s in samples],
                             "cpu")
    for s, again in zip(samples, rescored, strict=True):
        assert s["scores"] == pytest.approx(again, abs=1e-5)  # the score is the judge's mean answer log-prob
    for s, best in zip(samples, sft, strict=True):
        top = max(range(4), key=lambda i: s["scores"][i])
        assert best["messages"][-1] == {"role": "assistant", "content": s["answers"][top]}
    assert len(pairs) == stats["pairs"] >= 1
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    vocab = load_vocab(tokenizer)
    units = encode_rows([("pairs", k, p) for k, p in enumerate(pairs)], vocab, "chat", 129, unpaired=False)
    assert units.n_units == len(pairs) and not units.skipped  # the pairs feed `winnow train dpo` as they are

    class Judge(BaseHTTPRequestHandler):  # an OpenAI-compatible judge on loopback: longer answers score higher
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = body["messages"][-1]["content"].split("Answer:\n", 1)[1].rsplit("\n\nScore:", 1)[0]
            reply = {"choices": [{"message": {"role": "assistant", "content": f"{min(10, 1 + len(answer) // 8)}"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        args = parser.parse_args([*base, "--out", str(tmp_path / "ep"), "--judge-endpoint",
                                  f"http://127.0.0.1:{server.server_address[1]}/v1"])
        assert cmd_bestofn(args) == 0
    finally:
        server.shutdown()
        server.server_close()
    for line in (tmp_path / "ep" / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        assert s["scores"] == [float(min(10, 1 + len(a) // 8)) for a in s["answers"]]
