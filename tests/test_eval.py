"""`winnow eval` on a tiny real model against hand computations, its handling of bad rows and missing
sets, and lm-evaluation-harness (from PyPI, offline) scoring the same task through `winnow serve` and
through the exported Hugging Face checkpoint with the same numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from tests.conftest import ROOT, SHARED
from tests.tiny_model import build_tiny_checkpoint
from train.checkpoint import load_model
from train.eval import windows
from train.sft import alpaca_prompt
from train.tokenizer import load_vocab

TASK = ROOT / "tests" / "fixtures" / "lm_eval"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, model, vocab)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on shared cores: threads only wait on each other
    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("eval"))
    model, ckpt = load_model(str(folder))
    yield folder, model, load_vocab(ckpt["tokenizer"])
    torch.set_num_threads(threads)


def run_eval(capsys, *args: str) -> tuple[int, dict]:
    code = main(["eval", *args, "--json", "--device", "cpu"])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def logprob_sum(model, ids: list[int], first: int) -> float:
    """Sum of log P(ids[i] | ids[:i]) for i >= first, from one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0][0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[i - 1, ids[i]].item() for i in range(first, len(ids)))


def test_multiple_choice_accuracy_equals_a_hand_computation(tiny, tmp_path, capsys):
    folder, model, vocab = tiny
    questions = [("The capital of France is", ["Paris", "banana"]),
                 ("Water freezes at zero", ["degrees", "purple", "running"])]
    scores = []
    for context, choices in questions:
        ctx = [vocab.bos_id, *vocab.encode(context)]
        scores.append([logprob_sum(model, [vocab.bos_id, *vocab.encode(f"{context} {c}")], len(ctx)) for c in choices])
    best = [max(range(len(s)), key=s.__getitem__) for s in scores]
    # Label the first question with the model's pick and the second with another choice: one right, one wrong.
    labels = [best[0], (best[1] + 1) % 3]
    task = tmp_path / "two.jsonl"
    task.write_text("".join(json.dumps({"context": q, "choices": c, "label": label}) + "\n"
                            for (q, c), label in zip(questions, labels, strict=True)))
    code, result = run_eval(capsys, str(folder), "--task", str(task))
    assert code == 0
    r = result["tasks"]["two"]
    chance = (1 / 2 + 1 / 3) / 2
    assert r["questions"] == 2 and r["acc"] == 0.5 and r["chance"] == pytest.approx(chance)
    assert r["centered_acc"] == pytest.approx((0.5 - chance) / (1 - chance))
    norm = [max(range(len(s)), key=lambda i, s=s, c=c: s[i] / len(c[i]))
            for s, (_, c) in zip(scores, questions, strict=True)]
    assert r["acc_norm"] == sum(n == label for n, label in zip(norm, labels, strict=True)) / 2
    from train.eval import choice_logprobs
    from train.eval_data import Question

    got = choice_logprobs(model, vocab, [Question(q, c, 0) for q, c in questions])
    for mine, hand in zip(got, scores, strict=True):
        assert mine == pytest.approx(hand, abs=1e-4)


def test_bits_per_byte_equals_a_hand_computation_across_context_windows(tiny, tmp_path, capsys):
    folder, model, vocab = tiny
    long_text = " ".join(Path(SHARED / "pretrain-text" / "wiki-demo" / "wiki_demo.txt").read_text().split()[:400])
    short_text = "Anarchism is a political philosophy."
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": long_text}) + "\n" + json.dumps({"text": short_text})
                                         + "\n{broken\n" + json.dumps({"title": "no text"}) + "\n")
    answer = {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."}
    (tmp_path / "answers.json").write_text(json.dumps([answer]))
    code, result = run_eval(capsys, str(folder), "--text", f"docs={tmp_path / 'docs.jsonl'}",
                            "--text", f"answers={tmp_path / 'answers.json'}")
    assert code == 0
    ids = [vocab.bos_id, *vocab.encode(long_text)]
    L = model.cfg.max_seq_len
    assert len(ids) > 2 * L  # the long document needs several windows
    nats = 0.0
    for i in range(1, len(ids)):  # each token from the window it falls in: start = the last multiple of L - 1
        start = ((i - 1) // (L - 1)) * (L - 1)
        nats += logprob_sum(model, ids[start:i + 1], i - start)
    nats += logprob_sum(model, [vocab.bos_id, *vocab.encode(short_text)], 1)
    docs = result["text"]["docs"]
    n_bytes = len(long_text.encode()) + len(short_text.encode())
    assert docs["docs"] == 2 and docs["bytes"] == n_bytes and docs["skipped"] == 2
    assert docs["bits_per_byte"] == pytest.approx(-nats / math.log(2) / n_bytes, rel=1e-5)
    assert any("docs.jsonl:3" in note and "JSON" in note for note in result["notes"])
    assert any("docs.jsonl:4" in note and "no `text`" in note for note in result["notes"])
    prompt = [vocab.bos_id, *vocab.encode(alpaca_prompt("Name a colour."))]  # a base model: the prompt as text
    hand = logprob_sum(model, prompt + vocab.encode(answer["output"]), len(prompt))
    got = result["text"]["answers"]
    assert got["bits_per_byte"] == pytest.approx(-hand / math.log(2) / len(answer["output"]), rel=1e-5)


def test_a_run_directory_is_read_from_its_curated_output(tiny, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "run"
    (run / "output").mkdir(parents=True)
    (run / "run.yaml").write_text("name: test\n")
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["First page.", "Second page."]}),
                   run / "output" / "part-0.parquet")
    (run / "output" / "README.md").write_text("# card")
    (run / "output" / "_manifest.json").write_text("{}")  # a marker, not data
    code, result = run_eval(capsys, str(tiny[0]), "--text", f"curated={run}")
    assert code == 0 and result["text"]["curated"]["docs"] == 2 and result["text"]["curated"]["skipped"] == 0
    assert result["text"]["curated"]["bytes"] == len("First page.Second page.")


def test_windows_score_every_token_once():
    ids = list(range(10))
    pieces = windows(ids, 4)
    assert [s for s, _ in pieces] == [0, 3, 6]
    assert sorted(s + j for s, w in pieces for j in range(1, len(w))) == list(range(1, 10))


def test_bad_task_rows_are_counted_and_missing_sets_reported(tiny, tmp_path, capsys):
    folder = tiny[0]
    rows = ['{"context": "A", "choices": ["b", "c"], "label": 1}', "{oops",
            '{"context": "A", "choices": "bc", "label": 0}', '{"context": "A", "choices": ["b", "c"], "label": 2}',
            '{"context": "A", "choices": ["b", "c"], "label": true}', "[1, 2]"]
    (tmp_path / "task.jsonl").write_text("\n".join(rows) + "\n")
    code, result = run_eval(capsys, str(folder), "--task", f"t={tmp_path / 'task.jsonl'}")
    assert code == 0 and result["tasks"]["t"]["questions"] == 1 and result["tasks"]["t"]["skipped"] == 5
    assert any("task.jsonl:4" in n and "`label`" in n for n in result["notes"])
    assert main(["eval", str(folder)]) == 2  # nothing named to score
    assert "--text NAME=PATH" in capsys.readouterr().err
    assert main(["eval", str(folder), "--task", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "no-checkpoint"), "--task", str(tmp_path / "task.jsonl")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def lm_eval(model: str, model_args: str, out: Path, *extra: str) -> dict:
    """Runs the harness's command line on the fixture task, offline; returns {doc_id: [loglikelihoods]} and
    the metrics."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(out / "hf-home"), "HF_DATASETS_CACHE": str(out / "datasets")}
    done = subprocess.run([str(Path(sys.executable).parent / "lm_eval"), "run", "--model", model, "--model_args",
                           model_args, "--include_path", ".", "--tasks", "winnow_mc", "--batch_size", "4",
                           "--output_path", str(out), "--log_samples", *extra],
                          cwd=TASK, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]["winnow_mc"]
    samples = [json.loads(line) for line in next(out.rglob("samples_*.jsonl")).read_text().splitlines()]
    lls = {s["doc_id"]: [float(r[0][0]) for r in s["resps"]] for s in samples}
    return {"acc": results["acc,none"], "acc_norm": results["acc_norm,none"], "lls": lls}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_lm_eval_scores_the_served_and_the_exported_model_like_winnow_eval(tiny, tmp_path, capsys):
    from train.eval import choice_logprobs
    from train.eval_data import Skipped, load_task

    folder, model, vocab = tiny
    code, ours = run_eval(capsys, str(folder), "--task", str(TASK / "winnow_mc.jsonl"))
    ours = ours["tasks"]["winnow_mc"]
    our_lls = choice_logprobs(model, vocab, load_task(str(TASK / "winnow_mc.jsonl"), Skipped()))
    assert main(["export", str(folder), "--hf", str(tmp_path / "hf")]) == 0
    hf = lm_eval("hf", f"pretrained={tmp_path / 'hf'},add_bos_token=True,dtype=float32", tmp_path / "hf-out",
                 "--device", "cpu")
    server = subprocess.Popen([str(Path(sys.executable).parent / "winnow"), "serve", str(folder), "--port", "0",
                               "--name", "tiny"], stdout=subprocess.PIPE, text=True)
    try:
        port = re.search(r":(\d+)/v1", server.stdout.readline()).group(1)
        served = lm_eval("local-completions", f"base_url=http://127.0.0.1:{port}/v1/completions,model=tiny,"
                         f"tokenizer={tmp_path / 'hf'},tokenizer_backend=huggingface,add_bos_token=True,"
                         f"max_length={model.cfg.max_seq_len},num_concurrent=1,max_retries=1", tmp_path / "api-out")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for theirs in (hf, served):
        assert (theirs["acc"], theirs["acc_norm"]) == (ours["acc"], ours["acc_norm"])
        for doc_id, lls in theirs["lls"].items():
            assert lls == pytest.approx(our_lls[doc_id], abs=1e-3)
