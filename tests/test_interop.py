"""What a run writes, loaded by the tools users load it with: every Parquet folder in 🤗 Datasets, DuckDB,
Polars and pandas; the dataset cards' snippets, run verbatim; the cards' configs on the run directory and
on the Hub's layout; `winnow export-data` in TRL (its own data utilities and trainers), LLaMA-Factory's and
axolotl's documented schemas; and Megatron-LM's indexed dataset read back by a reader of its layout."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.parquet_io import empty_parquet
from pipeline.runner import Runner
from tests.conftest import ROOT, SAMPLE
from tests.fake_llm_server import ServerThread

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
INPUT = [str(SAMPLE / "wget-2024-dolma-000*.warc.gz"), str(SAMPLE / "cc-2020-34-resiliparse.warc.gz"),
         str(SAMPLE / "cc-2014-35-npm.warc")]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
# An LLM on loopback answers the synth stage on the second run: question/answer pairs and paraphrases.
LLM_SYNTH = {"generator": "llm", "model": "fake", "backoff_s": 0.01,
             "recipes": [{"name": "paragraph_qa"}, {"name": "wikipedia_paraphrase"}]}


def quickstart(out: Path, *overrides: str):
    return load_config(QUICKSTART, [f"output_dir={out}", f"input={json.dumps(INPUT)}", *overrides])


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """(the quickstart as `make demo` runs it, with webqa instructions; the same run after its synth stage was
    switched to an LLM, which adds rephrased documents). The first is a copy, taken before the rerun."""
    root = tmp_path_factory.mktemp("interop")
    run = root / "run"
    Runner(quickstart(run)).run()
    shutil.copytree(run, root / "demo")
    with ServerThread() as server:
        synth = {**LLM_SYNTH, "endpoint": server.url}
        Runner(quickstart(run, f"stages.synth.synth={json.dumps(synth)}")).run()
    return root / "demo", run


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    for key, value in {**OFFLINE, "HF_HOME": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(key, value)


def rows_in(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def load_everywhere(files: list[Path], cache: Path) -> dict[str, int]:
    """Rows of the files as each library reads them (🤗 Datasets streams a folder of no rows: it builds no
    split of none)."""
    from datasets import load_dataset

    names = [str(f) for f in files]
    schema = pq.read_schema(files[0])
    counts = {"duckdb": duckdb.sql(f"SELECT count(*) FROM read_parquet({names})").fetchone()[0],
              "polars": pl.read_parquet(names).height,
              "pandas": len(pd.concat([pd.read_parquet(f) for f in names], ignore_index=True))}
    if rows_in(files):
        loaded = load_dataset("parquet", data_files=names, split="train", cache_dir=str(cache))
        counts["datasets"] = loaded.num_rows
    else:
        loaded = load_dataset("parquet", data_files=names, split="train", streaming=True)
        counts["datasets"] = len(list(loaded))
    assert list(loaded.features) == schema.names, files[0].parent
    return counts


def parquet_folders(run: Path) -> list[Path]:
    """Every folder of shards a run writes: output/, instructions/, rephrased/ and each stage's (kept and
    rejected). Folders starting with "_" hold the stages' own scratch files, which readers skip."""
    return sorted({p.parent for p in run.rglob("part-*.parquet") if not p.parent.name.startswith("_")})


@pytest.mark.slow
def test_every_folder_loads_in_datasets_duckdb_polars_and_pandas(runs, tmp_path):
    demo, run = runs
    folders = parquet_folders(run) + [demo / name for name in ("output", "instructions", "rephrased")] + \
        [f for f in parquet_folders(demo) if "06_synth" in f.parts]
    assert {"output", "instructions", "rephrased", "rejected", "00_extract", "05_pii"} <= {f.name for f in folders}
    for folder in folders:
        files = sorted(folder.glob("part-*.parquet"))
        expected = rows_in(files)
        assert load_everywhere(files, tmp_path / "cache") == dict.fromkeys(
            ("duckdb", "polars", "pandas", "datasets"), expected), folder
    # The quickstart's webqa stage leaves shards without instructions, and no rephrased documents at all:
    # those files hold a schema and no row group.
    empty = [f for f in (demo / "instructions").glob("part-*.parquet") if pq.ParquetFile(f).metadata.num_rows == 0]
    assert empty and all(pq.ParquetFile(f).metadata.num_row_groups == 0 for f in empty)
    assert rows_in(sorted((demo / "rephrased").glob("part-*.parquet"))) == 0
    # pii_counts: a list of {entity, count} whose counts add up to pii_count, in SQL as in Python.
    output = f"{run}/output/part-*.parquet"
    total, by_entity = duckdb.sql(f"SELECT sum(pii_count), (SELECT sum(c.count) FROM (SELECT unnest(pii_counts) "
                                  f"AS c FROM '{output}')) FROM '{output}'").fetchone()
    assert total == by_entity and total > 0


def test_an_empty_shard_is_read_as_no_rows_by_every_reader(tmp_path):
    from datasets import load_dataset

    schema = pa.schema([("id", pa.string()), ("pii_counts", pa.list_(pa.struct([("entity", pa.string()),
                                                                                 ("count", pa.int32())])))])
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "part-00000-000.parquet").write_bytes(empty_parquet(schema))
    pq.write_table(pa.table({"id": ["a"], "pii_counts": [[{"entity": "EMAIL_ADDRESS", "count": 2}]]}, schema=schema),
                   folder / "part-00001-000.parquet")
    files = sorted(folder.glob("*.parquet"))
    assert load_everywhere(files, tmp_path / "cache") == dict.fromkeys(("duckdb", "polars", "pandas", "datasets"), 1)
    assert load_everywhere(files[:1], tmp_path / "cache") == dict.fromkeys(("duckdb", "polars", "pandas",
                                                                            "datasets"), 0)
    # What an empty table written as such gives instead: one row group of no rows, which 🤗 Datasets refuses.
    pq.write_table(schema.empty_table(), folder / "part-00000-000.parquet")
    with pytest.raises(Exception, match="BatchSize must be greater than 0|generating the dataset"):
        load_dataset("parquet", data_files=[str(f) for f in files], split="train", cache_dir=str(tmp_path / "c2"))


def python_blocks(card: Path) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", card.read_text(), re.S))


def run_verbatim(code: str, cwd: Path, tmp_path: Path) -> dict:
    """The card's code as a user pastes it, then one line that prints what it loaded."""
    report = ("\nimport json as _json\nprint(_json.dumps({k: (v.num_rows if hasattr(v, 'num_rows') else len(v)) "
              "for k, v in dict(globals()).items() if k in ('dataset', 'documents', 'frame', 'table', "
              "'instructions', 'rephrased')}))")
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([sys.executable, "-c", code + report], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def header(card: Path) -> dict:
    return yaml.safe_load(card.read_text().split("---")[1])


@pytest.mark.slow
def test_the_cards_snippets_run_verbatim_and_load_each_config(runs, tmp_path):
    names = []
    for run in runs:
        rows = {name: rows_in(sorted((run / name).glob("part-*.parquet")))
                for name in ("output", "instructions", "rephrased")}
        loaded = run_verbatim(python_blocks(run / "output" / "README.md"), run / "output", tmp_path)
        assert loaded == dict.fromkeys(("dataset", "documents", "frame", "table"), rows["output"])
        configs = {c["config_name"]: c["data_files"][0]["path"] for c in header(run / "README.md")["configs"]}
        expected = {"documents": rows["output"], "instructions": rows["instructions"], "rephrased": rows["rephrased"]}
        expected = {name: n for name, n in expected.items() if n}  # a folder without rows is no config
        assert configs == {("default" if name == "documents" else name):
                           f"{'output' if name == 'documents' else name}/part-*.parquet" for name in expected}
        assert run_verbatim(python_blocks(run / "README.md"), run, tmp_path) == expected
        names.append(list(configs))
    # The demo's webqa stage rephrases nothing, so its card names no `rephrased` config; the LLM's does.
    assert names == [["default", "instructions"], ["default", "instructions", "rephrased"]]


@pytest.mark.slow
def test_the_configs_load_from_a_hub_layout_with_the_features_the_card_names(runs, tmp_path):
    """A Hub repository holds the card and the three folders (what the card's `hf upload` line sends)."""
    from datasets import Features, load_dataset

    _, run = runs
    hub = tmp_path / "user" / "winnow-quickstart"
    hub.mkdir(parents=True)
    shutil.copy(run / "README.md", hub / "README.md")
    for folder in ("output", "instructions", "rephrased"):
        (hub / folder).mkdir()
        for f in (run / folder).glob("part-*.parquet"):
            shutil.copy(f, hub / folder / f.name)
    card = header(hub / "README.md")
    assert [c["config_name"] for c in card["configs"]] == ["default", "instructions", "rephrased"]
    assert card["size_categories"] == ["n<1K"]
    for config in card["configs"]:
        folder = config["data_files"][0]["path"].split("/")[0]
        files = sorted((run / folder).glob("part-*.parquet"))
        loaded = load_dataset(str(hub), config["config_name"], split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == rows_in(files)
        # The features come from the card: they must be the ones 🤗 Datasets gives the files themselves.
        assert loaded.features == Features.from_arrow_schema(pq.read_schema(files[-1]))
    assert load_dataset(str(hub), split="train", cache_dir=str(tmp_path / "cache")).num_rows == rows_in(
        sorted((run / "output").glob("part-*.parquet")))


@pytest.mark.slow
def test_winnow_report_rewrites_both_cards(runs, capsys):
    _, run = runs
    cards = {path: path.read_text() for path in (run / "README.md", run / "output" / "README.md")}
    (run / "README.md").unlink()
    (run / "output" / "README.md").write_text("---\nconfigs: []\n---\nstale\n")
    assert main(["report", str(run)]) == 0
    for path, text in cards.items():
        assert header(path) == yaml.safe_load(text.split("---")[1]), path


# -- instruction data and preference pairs for other trainers -------------------------------------------
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny(runs, tmp_path_factory):
    """Winnow's tokenizer (byte-level BPE with role tokens) trained on the run's output, as the transformers
    tokenizer TRL takes, with a chat template over those role tokens."""
    from transformers import PreTrainedTokenizerFast

    from train.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    files = [str(f) for f in sorted((runs[1] / "output").glob("part-*.parquet"))]
    path = str(train_tokenizer(files, 512, str(root / "tokenizer.json")))
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=path, bos_token="<|bos|>", eos_token="<|eos|>",
                                        pad_token="<|pad|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return root, path, tokenizer


def tiny_gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id))


def trainer_args(config_class, out: Path):
    return config_class(output_dir=str(out), max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True,
                        save_strategy="no", max_length=128, logging_steps=1)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def llamafactory_turns(entry: dict, row: dict) -> list[tuple[str, str]]:
    """A row as LLaMA-Factory's data/README.md says it reads it: alpaca columns (prompt + "\\n" + query,
    response), or sharegpt messages whose role and content keys, and role names, the entry's tags give
    (defaults: from, value, human, gpt); users at odd positions, the assistant at even ones."""
    columns = entry.get("columns", {})
    if entry.get("formatting", "alpaca") == "alpaca":
        prompt = row[columns.get("prompt", "instruction")]
        query = row.get(columns.get("query", "input")) or ""
        turns = [("user", prompt + ("\n" + query if query else ""))]
        return turns if entry.get("ranking") else [*turns, ("assistant", row[columns.get("response", "output")])]
    tags = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
            "system_tag": "system", **entry.get("tags", {})}
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant"}
    messages = [m for m in row[columns.get("messages", "conversations")] if m[tags["role_tag"]] != tags["system_tag"]]
    turns = [(roles[m[tags["role_tag"]]], m[tags["content_tag"]]) for m in messages]
    assert all(role == ("user" if k % 2 == 0 else "assistant") for k, (role, _) in enumerate(turns)), turns
    return turns


def axolotl_check(config: dict, rows: list[dict], path: Path) -> None:
    """axolotl's documented dataset types (docs/dataset-formats, docs/rlhf.qmd) against the rows."""
    dataset = config["datasets"][0]
    assert Path(dataset["path"]) == path.resolve() and dataset["ds_type"] == "json"
    kind = dataset["type"]
    if kind == "alpaca":
        assert all({"instruction", "input", "output"} <= set(r) for r in rows)
    elif kind == "chatml.prompt_pairs":
        assert config["rl"] == "dpo" and all(isinstance(r[k], str) for r in rows for k in ("prompt", "chosen",
                                                                                             "rejected"))
    else:
        assert kind in ("chat_template", "chat_template.default"), kind
        mapping = dataset.get("message_property_mappings", {"role": "role", "content": "content"})
        roles = {name for names in dataset.get("roles", {"user": ["user"], "assistant": ["assistant"]}).values()
                 for name in names}
        for row in rows:
            messages = row[dataset.get("field_messages", "messages")]
            if kind == "chat_template.default":
                assert config["rl"] == "dpo"
                messages = [*messages, row[dataset["field_chosen"]], row[dataset["field_rejected"]]]
            assert all(set(mapping.values()) <= set(m) and m[mapping["role"]] in roles for m in messages), row


@pytest.mark.slow
def test_instructions_export_for_trl_llamafactory_and_axolotl(runs, tiny, tmp_path):
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer
    from trl.data_utils import apply_chat_template, is_conversational

    _, run = runs
    _, _, tokenizer = tiny
    source = [r for f in sorted((run / "instructions").glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    expected = [[("user", r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")), ("assistant", r["output"])]
                for r in source]
    out = tmp_path / "data"  # as LLaMA-Factory's data/ folder: an entry already there stays
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    for fmt in ("alpaca", "sharegpt", "messages"):
        assert main(["export-data", str(run), "--format", fmt, "--out", str(out), "--name", f"winnow_{fmt}"]) == 0
        path = out / f"winnow_{fmt}.jsonl"
        rows = read_jsonl(path)
        loaded = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.num_rows == len(source) == len(rows) > 0
        entry = json.loads((out / "dataset_info.json").read_text())[f"winnow_{fmt}"]
        assert entry["file_name"] == path.name
        turns = [llamafactory_turns(entry, r) for r in rows]
        if fmt == "alpaca":  # LLaMA-Factory joins instruction and input with "\n"; the rows keep them apart
            assert [(r["instruction"], r["input"], r["output"]) for r in rows] == [
                (r["instruction"], r["input"], r["output"]) for r in source]
        else:
            assert turns == expected
        axolotl_check(yaml.safe_load((out / f"winnow_{fmt}.axolotl.yaml").read_text()), rows, path)
    assert "mine" in json.loads((out / "dataset_info.json").read_text())
    # TRL: the messages file is conversational language-modeling data; its chat template renders each row, and
    # SFTTrainer prepares it and takes a step.
    messages = load_dataset("json", data_files=str(out / "winnow_messages.jsonl"), split="train",
                            cache_dir=str(tmp_path / "cache"))
    assert is_conversational(messages[0])
    text = apply_chat_template(messages[0], tokenizer)["text"]
    assert text == f"<|user|>{expected[0][0][1]}<|end|><|assistant|>{expected[0][1][1]}<|end|>"
    trainer = SFTTrainer(model=tiny_gpt2(tokenizer), args=trainer_args(SFTConfig, tmp_path / "sft"),
                         train_dataset=messages, processing_class=tokenizer)
    result = trainer.train()
    assert trainer.state.global_step == 1 and np.isfinite(result.training_loss)


@pytest.fixture(scope="module")
def pairs(runs, tiny, tmp_path_factory):
    """Real `winnow bestofn` output: 4 answers to each of the run's first instructions from a tiny Winnow GPT,
    judged by the log-probability another gives them."""
    import torch

    from train import checkpoint
    from train.model import GPT, ModelConfig

    root, tokenizer, _ = tiny
    out = tmp_path_factory.mktemp("bestofn")
    for name, seed in (("sft", 0), ("judge", 1)):
        torch.manual_seed(seed)
        model = GPT(ModelConfig(vocab_size=512, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, max_seq_len=256))
        checkpoint.save(str(out / name), model, None, 0, {"tokenizer": tokenizer,
                                                          "train_config": {"sft": {"template": "chat"}}})
    assert main(["export-data", str(runs[1]), "--format", "alpaca", "--out", str(out / "prompts")]) == 0
    assert main(["bestofn", str(out / "sft"), "--prompts", str(out / "prompts" / "winnow_instructions.jsonl"),
                 "--limit", "6", "-n", "4", "--max-tokens", "12", "--device", "cpu", "--out", str(out / "best"),
                 "--judge-checkpoint", str(out / "judge")]) == 0
    assert read_jsonl(out / "best" / "pairs.jsonl")
    return out / "best"


@pytest.mark.slow
def test_bestofn_pairs_export_for_trl_dpo_llamafactory_and_axolotl(pairs, tiny, tmp_path):
    from datasets import load_dataset
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import apply_chat_template, is_conversational

    _, _, tokenizer = tiny
    source = read_jsonl(pairs / "pairs.jsonl")
    out = tmp_path / "data"
    for fmt in ("alpaca", "sharegpt", "messages"):
        assert main(["export-data", str(pairs), "--format", fmt, "--out", str(out), "--name", f"pairs_{fmt}"]) == 0
        path = out / f"pairs_{fmt}.jsonl"
        rows = read_jsonl(path)
        assert len(rows) == len(source)
        info = json.loads((out / "dataset_info.json").read_text())
        if fmt == "messages":  # LLaMA-Factory's sharegpt pairs hold one message each: the sharegpt file is its
            assert f"pairs_{fmt}" not in info and not (out / f"pairs_{fmt}.axolotl.yaml").exists()
            continue
        entry = info[f"pairs_{fmt}"]
        assert entry["ranking"] is True
        assert [llamafactory_turns(entry, r) for r in rows] == [[("user", p["prompt"][-1]["content"])]
                                                                for p in source]
        chosen = [r["chosen"] if fmt == "alpaca" else r["chosen"]["value"] for r in rows]
        assert chosen == [p["chosen"] for p in source]
        axolotl_check(yaml.safe_load((out / f"pairs_{fmt}.axolotl.yaml").read_text()), rows, path)
    # TRL: the alpaca file is its standard preference format (prompt, chosen, rejected as text), the messages
    # file its conversational one; DPOTrainer prepares the latter and takes a step.
    standard = load_dataset("json", data_files=str(out / "pairs_alpaca.jsonl"), split="train",
                            cache_dir=str(tmp_path / "cache"))
    assert not is_conversational(standard[0]) and set(standard.column_names) == {"prompt", "chosen", "rejected"}
    chat = load_dataset("json", data_files=str(out / "pairs_messages.jsonl"), split="train",
                        cache_dir=str(tmp_path / "cache"))
    assert is_conversational(chat[0])
    rendered = apply_chat_template(chat[0], tokenizer)
    assert rendered == {"prompt": f"<|user|>{source[0]['prompt'][-1]['content']}<|end|><|assistant|>",
                        "chosen": f"{source[0]['chosen']}<|end|>", "rejected": f"{source[0]['rejected']}<|end|>"}
    trainer = DPOTrainer(model=tiny_gpt2(tokenizer), ref_model=tiny_gpt2(tokenizer),
                         args=trainer_args(DPOConfig, tmp_path / "dpo"), train_dataset=chat, processing_class=tokenizer)
    result = trainer.train()
    assert trainer.state.global_step == 1 and np.isfinite(result.training_loss)


def test_export_errors_name_the_row_and_what_to_do(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl: line 2: an SFT example needs `instruction` and `output`"):
        from pipeline.export_data import export

        export(str(bad), "messages", str(tmp_path / "out"))
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    bad.write_text(json.dumps({"prompt": turns, "chosen": "x", "rejected": "y"}) + "\n")
    with pytest.raises(ValueError, match="line 1: the alpaca format holds one user turn .* use --format messages"):
        export(str(bad), "alpaca", str(tmp_path / "out"))
    assert not list((tmp_path / "out").glob("*.tmp"))  # nothing half-written is left


# -- token shards for Megatron-LM ---------------------------------------------------------------------------
def read_megatron(prefix: Path) -> tuple[list[list[int]], list[int], int]:
    """Megatron-LM's indexed dataset, read by the layout megatron/core/datasets/indexed_dataset.py documents
    (its _IndexWriter): magic, version, dtype code, sequence and document counts, then int32 lengths, int64
    byte pointers into the .bin and int64 document indices. Returns (sequences, document indices, dtype code)."""
    idx = Path(f"{prefix}.idx").read_bytes()
    assert idx[:9] == b"MMIDIDX\x00\x00" and struct.unpack_from("<Q", idx, 9) == (1,)
    code = idx[17]
    sequences, documents = struct.unpack_from("<QQ", idx, 18)
    offset = 34
    lengths = np.frombuffer(idx, "<i4", sequences, offset)
    pointers = np.frombuffer(idx, "<i8", sequences, offset + 4 * sequences)
    doc_index = np.frombuffer(idx, "<i8", documents, offset + 12 * sequences)
    assert offset + 12 * sequences + 8 * documents == len(idx)
    dtype = np.dtype({8: "<u2", 4: "<i4"}[code])
    tokens = np.memmap(f"{prefix}.bin", dtype=dtype, mode="r")
    assert tokens.nbytes == int(lengths.sum()) * dtype.itemsize
    out = [tokens[p // dtype.itemsize:p // dtype.itemsize + n].tolist() for p, n in zip(pointers, lengths,
                                                                                         strict=True)]
    return out, doc_index.tolist(), code


def read_llmc(path: Path) -> list[int]:
    """An llm.c shard: 256 int32 of header (magic 20240520, version 1 for uint16, token count), then tokens."""
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == 20240520 and header[1] == 1
    return np.fromfile(path, dtype="<u2", offset=1024).tolist()[: header[2]]


@pytest.mark.slow
def test_megatron_indexed_dataset_reads_back_by_its_documented_layout(runs, tiny, tmp_path):
    from tokenizers import Tokenizer

    from train.shards import is_validation

    _, run = runs
    _, tokenizer_path, tokenizer = tiny
    out = tmp_path / "tokens"
    assert main(["tokenize", str(run), "--tokenizer", tokenizer_path, "--out", str(out), "--format", "llmc,megatron",
                 "--val-fraction", "0.3"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    encoder = Tokenizer.from_file(tokenizer_path)
    eod, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    docs = [r for f in sorted((run / "output").glob("part-*.parquet"))
            for r in pq.read_table(f, columns=["id", "text"]).to_pylist()]
    for split in ("train", "val"):
        mine = [d for d in docs if is_validation(d["id"], 0.3) == (split == "val")]
        expected = [encoder.encode(d["text"], add_special_tokens=False).ids for d in mine]
        sequences, doc_index, code = read_megatron(out / meta["megatron"][split])
        assert code == 8 and sequences == [e + [eod] for e in expected]  # uint16, EOD closing each document
        assert doc_index == list(range(len(expected) + 1)) and len(expected) > 0
        llmc = [t for f in sorted(out.glob(f"{split}-*.bin")) for t in read_llmc(f)]
        assert llmc == [t for e in expected for t in (bos, *e)]  # the same documents, as llm.c has them
    assert not list((out / "megatron").glob("*-0000*"))  # the per-input parts were merged and removed


def test_megatron_tokens_are_int32_above_65500_vocabulary_entries(tmp_path):
    from train.megatron import write_indexed

    documents = [np.array([70000, 1, 65535], np.uint32), np.array([], np.uint32), np.array([99999], np.uint32)]
    write_indexed(tmp_path / "big", documents, eod_id=3, vocab_size=100_000)
    sequences, doc_index, code = read_megatron(tmp_path / "big")
    assert code == 4 and sequences == [[70000, 1, 65535, 3], [3], [99999, 3]] and doc_index == [0, 1, 2, 3]


def test_card_configs_without_a_datasets_type_name_no_features(tmp_path):
    """A run written before `pii_counts` became a list (an Arrow map): its card still names the config, and
    `winnow report` does not fail on it; features are left for 🤗 Datasets to find (and refuse, by name)."""
    from pipeline.report.hub import feature, hub_configs

    (tmp_path / "output").mkdir()
    old = pa.table({"id": ["a"], "pii_counts": pa.array([[("EMAIL_ADDRESS", 1)]], pa.map_(pa.string(), pa.int32()))})
    pq.write_table(old, tmp_path / "output" / "part-00000-000.parquet")
    assert hub_configs(str(tmp_path)) == [{"name": "default", "folder": "output", "rows": 1, "size": "n<1K",
                                           "features": None}]
    with pytest.raises(ValueError, match="column 'pii_counts': Arrow type map<string, int32"):
        feature("pii_counts", old.schema.field("pii_counts").type)
