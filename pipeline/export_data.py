"""`winnow export-data SOURCE --format alpaca|sharegpt|messages --out DIR`: instruction data and preference
pairs as the JSONL that other trainers read.

SOURCE is a run directory (its `instructions/`), a folder of instruction Parquet files, a `winnow bestofn`
output folder (its `pairs.jsonl`), or one Parquet or JSONL file. Rows with `chosen` and `rejected` are
preference pairs; any other rows are SFT examples, in the alpaca shape (`instruction`, `input`, `output`)
or the chat shape (`messages`). Each format is one JSONL file, `DIR/<name>.jsonl`:

| format   | SFT example                                   | preference pair                                   |
|----------|-----------------------------------------------|---------------------------------------------------|
| alpaca   | instruction, input, output                    | prompt, chosen, rejected (strings)                |
| sharegpt | conversations: [{from, value}] (human, gpt)   | conversations, chosen {from, value}, rejected     |
| messages | messages: [{role, content}]                   | prompt, chosen, rejected: lists of {role, content} |

Beside it go the entry LLaMA-Factory needs (`dataset_info.json`, merged into one already there, so DIR can
be LLaMA-Factory's `data/` folder) and axolotl's `datasets:` section (`<name>.axolotl.yaml`), for the
formats each reads. TRL reads `messages` (SFTTrainer and DPOTrainer, conversational) and alpaca pairs
(DPOTrainer, standard), through `datasets.load_dataset("json", data_files=...)`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

FORMATS = ("alpaca", "sharegpt", "messages")
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}
CHAT_ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


class ExportError(ValueError):
    """A source that cannot be exported: the message names the file, the row and what to do."""


# -- reading ---------------------------------------------------------------------------------------
def source_files(source: str) -> list[Path]:
    """The files a SOURCE stands for (see the module docstring)."""
    path = Path(source)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ExportError(f"{source}: no such file or folder; give a run directory, a folder of instruction "
                          "Parquet files, a `winnow bestofn` output folder or one .parquet/.jsonl file")
    if (path / "instructions").is_dir():
        path = path / "instructions"
    elif (path / "pairs.jsonl").is_file():
        return [path / "pairs.jsonl"]
    files = sorted(path.glob("part-*.parquet")) or sorted(path.glob("*.parquet")) or sorted(path.glob("*.jsonl"))
    if not files:
        raise ExportError(f"{path}: no part-*.parquet, *.parquet or *.jsonl files to export")
    return files


def read_rows(files: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row, streamed: Parquet a batch at a time, JSONL a line at a time."""
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            k = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield f"{path}: row {k}", row
                    k += 1
        elif path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for k, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield f"{path}: line {k}", json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise ExportError(f"{path}: line {k} is not JSON: {exc}") from exc
        else:
            raise ExportError(f"{path}: export-data reads .parquet and .jsonl files")


def is_pair(row: dict[str, Any]) -> bool:
    return "chosen" in row and "rejected" in row


def turns(value: Any, where: str) -> list[dict[str, str]]:
    """A prompt, answer or conversation as [{role, content}] with roles user, assistant and system."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        value = [value]
    out = []
    for message in value or []:
        role = CHAT_ROLES.get(message.get("role", message.get("from")))
        content = message.get("content", message.get("value"))
        if role is None or not isinstance(content, str):
            raise ExportError(f"{where}: a message needs a role (user, assistant, system; or human, gpt) and text "
                              f"content; got {json.dumps(message)[:200]}")
        out.append({"role": role, "content": content})
    return out


def sft_turns(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """An SFT example as a conversation ending with the assistant's answer."""
    if "messages" in row or "conversations" in row:
        conversation = turns(row.get("messages", row.get("conversations")), where)
    elif isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str):
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        conversation = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    else:
        raise ExportError(f"{where}: an SFT example needs `instruction` and `output`, or `messages`; "
                          f"got keys {sorted(row)}")
    if not conversation or conversation[-1]["role"] != "assistant":
        raise ExportError(f"{where}: the conversation must end with the assistant's answer")
    return conversation


def answer(value: Any, where: str) -> str:
    """A pair's chosen or rejected answer as text (a string, or the last message of a list)."""
    if isinstance(value, str):
        return value
    found = turns(value, where)
    if not found or found[-1]["role"] != "assistant":
        raise ExportError(f"{where}: `chosen` and `rejected` must be text or end with an assistant message")
    return found[-1]["content"]


def single_turn(conversation: list[dict[str, str]], where: str) -> tuple[str, str]:
    """(system, user) of a one-question prompt: what the alpaca shape can hold."""
    system = conversation[0]["content"] if conversation and conversation[0]["role"] == "system" else ""
    rest = conversation[1:] if system else conversation
    if len(rest) != 1 or rest[0]["role"] != "user":
        raise ExportError(f"{where}: the alpaca format holds one user turn (and a system prompt); this prompt has "
                          f"{len(rest)} turns: use --format messages or sharegpt")
    return system, rest[0]["content"]


# -- one row in each format --------------------------------------------------------------------------
def sharegpt(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in conversation]


def sft_row(row: dict[str, Any], fmt: str, where: str) -> dict[str, Any]:
    conversation = sft_turns(row, where)
    if fmt == "messages":
        return {"messages": conversation}
    if fmt == "sharegpt":
        return {"conversations": sharegpt(conversation)}
    if "instruction" in row and "messages" not in row:  # alpaca in, alpaca out: keep `input` apart
        return {"instruction": row["instruction"], "input": row.get("input") or "", "output": row["output"]}
    system, user = single_turn(conversation[:-1], where)
    return {"instruction": user, "input": "", "output": conversation[-1]["content"], **({"system": system} if system
                                                                                        else {})}


def pair_row(row: dict[str, Any], fmt: str, where: str) -> dict[str, Any]:
    prompt = turns(row.get("prompt"), where)
    if not prompt or prompt[-1]["role"] != "user":
        raise ExportError(f"{where}: a preference pair needs a `prompt` that ends with a user turn")
    chosen, rejected = answer(row["chosen"], where), answer(row["rejected"], where)
    if fmt == "messages":
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    if fmt == "sharegpt":
        return {"conversations": sharegpt(prompt), "chosen": {"from": "gpt", "value": chosen},
                "rejected": {"from": "gpt", "value": rejected}}
    system, user = single_turn(prompt, where)
    return {"prompt": user, "chosen": chosen, "rejected": rejected, **({"system": system} if system else {})}


# -- what each trainer needs beside the file --------------------------------------------------------
def llamafactory_entry(file_name: str, fmt: str, pairs: bool, system: bool = False) -> dict[str, Any] | None:
    """The `dataset_info.json` entry (LLaMA-Factory's data/README.md), or None where it reads no such file.
    A `system` column is named only when some row has one: LLaMA-Factory looks up every column it is given."""
    system_column = {"system": "system"} if system else {}
    if pairs:
        if fmt == "alpaca":
            return {"file_name": file_name, "ranking": True,
                    "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", **system_column}}
        if fmt == "sharegpt":
            return {"file_name": file_name, "formatting": "sharegpt", "ranking": True,
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
        return None  # its sharegpt pairs hold chosen and rejected as one message each, not lists
    if fmt == "alpaca":
        return {"file_name": file_name,
                "columns": {"prompt": "instruction", "query": "input", "response": "output", **system_column}}
    if fmt == "sharegpt":
        return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "conversations"}}
    return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                     "system_tag": "system"}}


def axolotl_config(path: str, fmt: str, pairs: bool) -> dict[str, Any] | None:
    """axolotl's config keys for the file (its docs: dataset-formats and rlhf), or None where none fits."""
    dataset: dict[str, Any] = {"path": path, "ds_type": "json", "split": "train"}
    sharegpt_keys = {"field_messages": "conversations",
                     "message_property_mappings": {"role": "from", "content": "value"},
                     "roles": {"user": ["human"], "assistant": ["gpt"], "system": ["system"]}}
    if pairs:
        if fmt == "alpaca":
            return {"rl": "dpo", "datasets": [{**dataset, "type": "chatml.prompt_pairs"}]}
        if fmt == "sharegpt":
            return {"rl": "dpo", "datasets": [{**dataset, "type": "chat_template.default", **sharegpt_keys,
                                               "field_chosen": "chosen", "field_rejected": "rejected"}]}
        return None  # its conversational DPO types want whole conversations in chosen and rejected
    if fmt == "alpaca":
        return {"datasets": [{**dataset, "type": "alpaca"}]}
    if fmt == "sharegpt":
        return {"datasets": [{**dataset, "type": "chat_template", **sharegpt_keys}]}
    return {"datasets": [{**dataset, "type": "chat_template"}]}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def export(source: str, fmt: str, out_dir: str, name: str | None = None) -> dict[str, Any]:
    """Write DIR/<name>.jsonl and what LLaMA-Factory and axolotl need beside it; return what was written."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    files = source_files(source)
    rows = read_rows(files)
    first = next(rows, None)
    if first is None:
        raise ExportError(f"{source}: no rows to export")
    pairs = is_pair(first[1])
    name = name or ("winnow_pairs" if pairs else "winnow_instructions")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.jsonl"
    tmp = target.with_name(target.name + ".tmp")
    count, system = 0, False
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for where, row in itertools.chain([first], rows):
                if is_pair(row) != pairs:
                    raise ExportError(f"{where}: mixes SFT examples and preference pairs; export them separately")
                shaped = pair_row(row, fmt, where) if pairs else sft_row(row, fmt, where)
                f.write(json.dumps(shaped, ensure_ascii=False) + "\n")
                count += 1
                system |= "system" in shaped
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    written = {"file": str(target), "rows": count, "kind": "pairs" if pairs else "sft", "format": fmt}
    entry = llamafactory_entry(target.name, fmt, pairs, system)
    if entry is not None:
        info_path = out / "dataset_info.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        write_json_atomic(info_path, {**info, name: entry})
        written["llamafactory"] = str(info_path)
    axolotl = axolotl_config(str(target.resolve()), fmt, pairs)
    if axolotl is not None:
        axolotl_path = out / f"{name}.axolotl.yaml"
        axolotl_path.write_text(yaml.safe_dump(axolotl, sort_keys=False))
        written["axolotl"] = str(axolotl_path)
    return written



def cmd_export_data(args: Any) -> int:
    import sys

    try:
        written = export(args.source, args.format, args.out, args.name)
    except (ExportError, OSError) as exc:
        print(f"winnow export-data: {exc}", file=sys.stderr)
        return 2
    readers = ", ".join(k for k in ("llamafactory", "axolotl") if k in written)
    print(f"wrote {written['rows']:,} {'preference pairs' if written['kind'] == 'pairs' else 'examples'} "
          f"({written['format']}) to {written['file']}" + (f"; entries for {readers} beside it" if readers else ""))
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export-data", help="instructions (or bestofn preference pairs) as JSONL for TRL, "
                                           "LLaMA-Factory and axolotl")
    p.add_argument("source", help="a run directory, a folder of instruction Parquet files, a `winnow bestofn` "
                                  "output folder, or one .parquet/.jsonl file")
    p.add_argument("--format", required=True, choices=FORMATS, help="the shape of each JSONL row")
    p.add_argument("--out", required=True, help="the folder to write to (LLaMA-Factory's data/ folder works: "
                                                "its dataset_info.json is updated, not replaced)")
    p.add_argument("--name", help="the dataset's name and file stem (default winnow_instructions or winnow_pairs)")
    p.set_defaults(func=cmd_export_data)
