"""What `winnow eval` reads: held-out text sets and multiple-choice tasks, from files the user names.

Text sets are JSONL, JSON arrays, Parquet or plain text (one document per non-empty line), a
folder of such files, or a run directory (its curated `output/`). A row gives its text in `text`;
an instruction row (`instruction`/`output`, the alpaca shape, or `messages`) gives an answer that is
scored after its prompt. Tasks are JSONL rows of `context`, `choices` (two or more strings) and
`label` (the index of the right choice). A row that cannot be used is skipped, counted, and named
by file and line; the rest still count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


@dataclass
class Doc:
    text: str  # what is scored
    instruction: str | None = None  # for an answer: the instruction it answers (read first, not scored)


@dataclass
class Question:
    context: str
    choices: list[str]
    label: int


@dataclass
class Skipped:
    """Rows that could not be used: a count, and the first few named by file and line."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, why: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(f"{where}: {why}")


def data_files(path: str) -> list[Path]:
    """The data files of a file, a folder, or a run directory (its curated `output/`)."""
    p = Path(path)
    if (p / "run.yaml").exists():
        p = p / "output"
    if p.is_dir():  # markers such as `_SUCCESS` or `.done.json` are not data
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(SUFFIXES)
                       and not f.name.startswith(("_", ".")))
        if not files:
            raise FileNotFoundError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        return files
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [p]


def read_rows(path: str, skipped: Skipped) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of every file under `path`; unreadable lines go to `skipped`."""
    for f in data_files(path):
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            for k, row in enumerate(pq.read_table(f).to_pylist()):
                yield f"{f} row {k}", row
        elif f.suffix == ".txt":
            for k, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if line.strip():
                    yield f"{f}:{k}", {"text": line}
        elif f.suffix == ".json":
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                skipped.add(str(f), f"not valid JSON ({exc})")
                continue
            for k, row in enumerate(data if isinstance(data, list) else [data]):
                yield f"{f} item {k}", row
        else:
            with f.open(encoding="utf-8", errors="replace") as lines:
                for k, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    try:
                        yield f"{f}:{k}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        skipped.add(f"{f}:{k}", f"not valid JSON ({exc.msg})")


def as_doc(row: Any, text_field: str) -> Doc:
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object, not {type(row).__name__}")
    if isinstance(row.get(text_field), str):
        return Doc(row[text_field])
    if isinstance(row.get("output"), str) and isinstance(row.get("instruction"), str):
        extra = row.get("input")
        instruction = row["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra else "")
        return Doc(row["output"], instruction)
    messages = row.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        if messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str):
            asked = "\n\n".join(str(m.get("content", "")) for m in messages[:-1])
            return Doc(messages[-1]["content"], asked)
    raise ValueError(f"no `{text_field}` string, no `instruction`/`output`, no `messages` ending with the "
                     f"assistant; keys: {sorted(row)[:8]}")


def load_text_set(path: str, skipped: Skipped, max_docs: int | None = None, text_field: str = "text") -> list[Doc]:
    docs: list[Doc] = []
    for where, row in read_rows(path, skipped):
        if max_docs is not None and len(docs) >= max_docs:
            break
        try:
            doc = as_doc(row, text_field)
        except ValueError as exc:
            skipped.add(where, str(exc))
            continue
        if doc.text:
            docs.append(doc)
        else:
            skipped.add(where, "empty text")
    return docs


def as_question(row: Any) -> Question:
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object, not {type(row).__name__}")
    context, choices, label = row.get("context"), row.get("choices"), row.get("label")
    if not isinstance(context, str):
        raise ValueError("`context` must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("`choices` must be a list of two or more non-empty strings")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise ValueError(f"`label` must be the index of the right choice, 0..{len(choices) - 1}; got {label!r}")
    return Question(context, choices, label)


def load_task(path: str, skipped: Skipped, max_questions: int | None = None) -> list[Question]:
    questions: list[Question] = []
    for where, row in read_rows(path, skipped):
        if max_questions is not None and len(questions) >= max_questions:
            break
        try:
            questions.append(as_question(row))
        except ValueError as exc:
            skipped.add(where, str(exc))
    return questions
