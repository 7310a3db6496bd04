"""The trainer against hostile inputs: a run that diverges, SFT data that does not fit, preference
pairs that teach nothing, a judge that does not answer, and damaged files."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.test_train import corpus, tiny_config  # noqa: F401 (the fixture)
from train.cli import add_parsers


def winnow(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_a_diverging_run_stops_with_an_error_and_writes_no_nan_checkpoint(corpus, capsys):  # noqa: F811
    root, _, tokenizer, _ = corpus
    tiny_config(root, "diverge", tokenizer, optimizer={"lr": 1e9}, ckpt_every=3, log_every=100, eval_every=0)
    assert winnow("train", "pretrain", str(root / "diverge.yaml")) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "optimizer.lr=1e+09" in err and "Lower optimizer.lr" in err
    ckpt = root / "diverge" / "checkpoint.pt"
    if ckpt.exists():  # only a checkpoint from before the divergence, with finite weights
        import torch

        state = torch.load(ckpt, weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    log = root / "diverge" / "log.jsonl"
    assert "NaN" not in log.read_text() and "Infinity" not in log.read_text()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny_model import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), steps=2)


def test_sft_counts_cut_examples_and_refuses_data_with_no_answer_within_seq_len(corpus, tmp_path, capsys):  # noqa: F811
    root, _, tokenizer, _ = corpus
    long = [{"instruction": "Summarise this. " + "word " * 80, "output": "Short."} for _ in range(6)]
    (tmp_path / "long.json").write_text(json.dumps(long))
    tiny_config(tmp_path, "sft-long", tokenizer, max_steps=3, eval_every=0, data=None,
                sft={"data": [str(tmp_path / "long.json")], "template": "alpaca", "val_fraction": 0.0})
    assert winnow("train", "sft", str(tmp_path / "sft-long.yaml")) == 2
    err = capsys.readouterr().err
    assert "none of the 6 training examples" in err and "seq_len=32" in err and "long.json" in err
    fits = [{"instruction": "Name a colour.", "output": "Blue."} for _ in range(4)]
    (tmp_path / "mixed.json").write_text(json.dumps(long[:2] + fits))
    tiny_config(tmp_path, "sft-mixed", tokenizer, max_steps=3, eval_every=0, data=None,
                sft={"data": [str(tmp_path / "mixed.json")], "template": "alpaca", "val_fraction": 0.0})
    assert winnow("train", "sft", str(tmp_path / "sft-mixed.yaml")) == 0
    assert "2 of 6 training examples" in capsys.readouterr().err


def test_a_pair_whose_answers_are_the_same_tokens_is_skipped_and_all_such_pairs_are_an_error(corpus, tmp_path):  # noqa: F811
    from train.prefdata import encode_rows
    from train.tokenizer import load_vocab

    vocab = load_vocab(corpus[2])
    rows = [("pairs.json", 0, {"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."}),
            ("pairs.json", 1, {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}),
            # different only past the row's end: the same tokens once cut
            ("pairs.json", 2, {"prompt": "Hi", "chosen": "word " * 60 + "yes", "rejected": "word " * 60 + "no"})]
    units = encode_rows(rows, vocab, "alpaca", 65, unpaired=False)
    assert units.n_units == 1 and len(units.skipped) == 2
    assert all("the same tokens" in s for s in units.skipped) and "pairs.json: example 0" in units.skipped[0]


def test_bestofn_with_a_judge_that_never_answers_fails_and_bad_sampling_flags_are_usage_errors(tiny, tmp_path,
                                                                                             capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "prompts.txt").write_text("Name a colour.\nWhat is rain?\n")
    base = ["bestofn", str(tiny), "--prompts", str(tmp_path / "prompts.txt"), "-n", "2", "--max-tokens", "4",
            "--device", "cpu", "--out", str(tmp_path / "out")]
    assert winnow(*base, "--judge-endpoint", f"http://127.0.0.1:{port}/v1") == 1
    assert "scored none of 4 answers" in capsys.readouterr().err and not (tmp_path / "out" / "stats.json").exists()
    # The rules winnow generate and winnow serve apply (train/sampling.py), refused before any work, in one line.
    for flag, value in (("--top-p", "0"), ("--top-p", "1.5"), ("--top-p", "nan"), ("--temperature", "-1"),
                        ("--temperature", "nan"), ("--temperature", "2.5"), ("--seed", "-1"), ("--max-tokens", "-1")):
        assert winnow(*base, "--judge-checkpoint", str(tiny), f"{flag}={value}") == 2
        err = capsys.readouterr().err
        assert err.startswith(f"winnow bestofn: {flag} ") and err.count("\n") == 1 and "Traceback" not in err
    assert winnow(*base, "--judge-checkpoint", str(tiny), "-n", "0") == 2
    assert "-n should be at least 1" in capsys.readouterr().err


def test_eval_refuses_nan_weights_and_a_truncated_checkpoint_and_writes_no_nan_json(tiny, tmp_path, capsys):
    import shutil

    import torch

    from train.eval import finite

    text = tmp_path / "held.txt"
    text.write_text("The river runs to the sea.\n")
    nan = tmp_path / "nan"
    shutil.copytree(tiny, nan)
    state = torch.load(nan / "checkpoint.pt", weights_only=True)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    torch.save(state, nan / "checkpoint.pt")
    assert winnow("eval", str(nan), "--text", str(text), "--json", "--device", "cpu") == 2
    assert "NaN or infinite weights" in capsys.readouterr().err
    cut = tmp_path / "cut"
    shutil.copytree(tiny, cut)
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert winnow("eval", str(cut), "--text", str(text), "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is not a readable checkpoint" in err and "Traceback" not in err
    assert json.dumps(finite({"a": [float("nan"), 1.0], "b": float("inf")}), allow_nan=False) == \
        '{"a": [null, 1.0], "b": null}'
    for argv in (["generate", str(cut), "--prompt", "Hi", "--device", "cpu"], ["serve", str(nan), "--port", "0"]):
        assert winnow(*argv) == 2
        err = capsys.readouterr().err
        assert ("not a readable checkpoint" in err or "NaN or infinite weights" in err) and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04", b"not a checkpoint\n", "torch.save([1, 2])"])
def test_an_empty_cut_or_foreign_checkpoint_file_is_one_line_naming_it(tiny, tmp_path, capsys, content):
    import torch

    path = tmp_path / "checkpoint.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save([1, 2], path)  # a readable torch file that holds no model
    (tmp_path / "held.txt").write_text("The river runs to the sea.\n")
    for argv in (["generate", str(path), "--prompt", "Hi", "--device", "cpu"], ["serve", str(path), "--port", "0"],
                 ["eval", str(path), "--text", str(tmp_path / "held.txt"), "--device", "cpu"],
                 ["export", str(path), "--hf", str(tmp_path / "hf")]):
        assert winnow(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"winnow {argv[0]}: {path} ") and err.count("\n") == 1, err
        assert "readable checkpoint" in err or "not a Winnow checkpoint" in err


def test_an_unreadable_train_config_is_a_config_error_naming_the_file(tmp_path, capsys):
    (tmp_path / "latin1.yaml").write_bytes("out_dir: caf\u00e9\n".encode("latin-1"))
    (tmp_path / "broken.yaml").write_text("max_steps: [1,\nseq_len: 3\n")
    (tmp_path / "tab.yaml").write_text("max_steps: 3\nseq_len: 3\n\tlog_every: 1\n")
    (tmp_path / "deep.yaml").write_text("max_steps: " + "[" * 5000 + "]" * 5000 + "\n")
    for name, says in (("latin1.yaml", "not UTF-8 text"), ("broken.yaml", "not valid YAML: line 3, column 1: "),
                       ("tab.yaml", "not valid YAML: line 3, column 1: found character '\\t'"),
                       ("deep.yaml", "not valid YAML: nested too deeply"), ("", "is a folder")):
        assert winnow("train", "pretrain", str(tmp_path / name)) == 2
        err = capsys.readouterr().err
        assert f"config error: {tmp_path / name}" in err and says in err and "Traceback" not in err, err
        assert err.count("\n") == 1 and "<unicode string>" not in err, err


@pytest.mark.parametrize("name,content,says", [
    ("empty.json", b"", "empty.json is empty"),
    ("blank.jsonl", b"\n\n", "blank.jsonl is empty"),
    ("latin1.json", '[{"instruction": "caf\u00e9", "output": "x"}]'.encode("latin-1"), "latin1.json: not UTF-8 text"),
    ("lines.json", b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n',
     "lines.json: not valid JSON at line 2"),
    ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": \n', "bad.jsonl: line 2: not valid JSON"),
    ("strings.json", b'["just text"]', "strings.json: row 0 is str"),
    ("fake.parquet", b"not parquet at all", "fake.parquet: not a readable Parquet file"),
])
def test_a_bad_data_file_is_an_error_that_names_it(tmp_path, name, content, says):
    from train.sft import read_examples

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_examples([str(tmp_path / name)])
    assert says in str(error.value) and str(tmp_path) in str(error.value)


@pytest.mark.slow
def test_killed_runs_keep_a_loadable_checkpoint_and_resume_from_it(corpus, tmp_path):  # noqa: F811
    """SIGTERM saves and exits; SIGKILL at any moment leaves the last whole checkpoint (written by rename)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from tests.conftest import ROOT

    root, _, tokenizer, _ = corpus
    cfg = tiny_config(tmp_path, "killed", tokenizer, max_steps=5000, eval_every=0, ckpt_every=3,
                      data={"train": str(root / "tokens" / "train-*.bin")})
    log, ckpt = tmp_path / "killed" / "log.jsonl", tmp_path / "killed" / "checkpoint.pt"

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", "pretrain",
                                 str(tmp_path / "killed.yaml")], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def wait_for_steps(n: int, proc: subprocess.Popen) -> None:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and sum('"loss"' in line for line in log.read_text().splitlines()) >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"the run did not reach step {n}: {proc.stderr.read().decode()[-2000:]}")

    proc = start()
    wait_for_steps(4, proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 0
    stopped = torch.load(ckpt, weights_only=True)["step"]
    assert stopped >= 4 and json.loads(log.read_text().splitlines()[-1])["step"] == stopped
    proc = start()
    wait_for_steps(stopped + 4, proc)
    os.kill(proc.pid, signal.SIGKILL)  # wherever it was, a save included
    proc.wait(60)
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] > stopped and state["step"] % 3 == 0 or state["step"] == stopped
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert cfg.out_dir == str(tmp_path / "killed")
    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "pretrain", str(tmp_path / "killed.yaml"),
                              "--stop-at", str(state["step"] + 2)], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"loss"' in line]
    assert steps[-1] == state["step"] + 2 and steps == sorted(set(steps))  # redone steps replace the killed ones
