"""`winnow inspect PATH`: documents, kept or dropped, in the terminal or as JSON lines.

Filters (stage, drop reason, language, a score range, a regex over the text) become one Arrow
dataset expression, so only matching rows are read. The documents shown are a stable sample
(the report's sampler: the same ones on every rerun), or with `-n 0` all of them, streamed.
`--grep` takes a regular expression that both Arrow (RE2) and Python understand.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipeline.report.collect import dataset, read_rows, readable_counts, smallest_keys
from pipeline.rundir import RunDir
from pipeline.stagedir import REJECTED

PLACEHOLDER = re.compile(r"<[A-Z]+_\d+>")  # what the PII step leaves in the text
RED, YELLOW, CYAN, DIM, BOLD, RESET = "\033[31m", "\033[33m", "\033[36m", "\033[2m", "\033[1m", "\033[0m"


@dataclass
class Query:
    stage: str | None = None
    reason: str | None = None  # prefix of drop_reason; implies dropped documents
    dropped: bool = False
    language: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    score_column: str = "quality_score"
    grep: str | None = None


def source_files(path: str, query: Query) -> list[str]:
    """The Parquet files a query reads: a file, a directory of them, or a run directory's output,
    a stage's kept or rejected shards, or every stage's rejected shards."""
    p = Path(path)
    if p.is_file():
        return [str(p)]
    if not p.is_dir():
        raise FileNotFoundError(f"{path} does not exist: give a run directory, a folder of Parquet files or a "
                                "Parquet file")
    dropped = query.dropped or query.reason is not None
    if not (p / "run.yaml").exists():  # a plain directory of Parquet files
        found = sorted(str(f) for f in p.rglob("*.parquet"))
        if not found:
            raise FileNotFoundError(f"{path} holds no Parquet files and is not a run directory (no run.yaml)")
        return found
    rundir = RunDir(path)
    if query.stage is None:
        if dropped:
            return sorted(f for stage in rundir.stages() for f in stage.parts(REJECTED))
        return sorted(str(f) for f in Path(rundir.output).glob("part-*.parquet"))
    stages = [stage for stage in rundir.stages() if stage.name == query.stage]
    if not stages:
        known = ", ".join(stage.name for stage in rundir.stages())
        raise FileNotFoundError(f"no stage {query.stage!r} in {path} (stages: {known})")
    return stages[0].parts(REJECTED if dropped else "")


def expression(query: Query, schema: pa.Schema) -> ds.Expression | None:
    """The query as one Arrow filter; a column the files lack is an error naming it."""
    names = set(schema.names)
    terms = []

    def need(column: str) -> ds.Expression:
        if column not in names:
            raise ValueError(f"these documents have no {column!r} column (columns: {', '.join(sorted(names))})")
        return ds.field(column)

    if query.reason is not None:
        terms.append(pc.starts_with(need("drop_reason"), query.reason))
    if query.language is not None:
        terms.append(need("language") == query.language)
    if query.min_score is not None:
        terms.append(need(query.score_column) >= query.min_score)
    if query.max_score is not None:
        terms.append(need(query.score_column) <= query.max_score)
    if query.grep is not None:
        terms.append(pc.match_substring_regex(need("text"), query.grep))
    if not terms:
        return None
    combined = terms[0]
    for term in terms[1:]:
        combined = combined & term
    return combined


def find_documents(path: str, query: Query, n: int) -> tuple[int, Iterator[dict[str, Any]], str]:
    """(how many match, the first `n` of them in the report's stable sample order, or all of them in
    file order when n is 0, streamed; where they were read)."""
    files = source_files(path, query)
    where = str(Path(files[0]).parent) if len(files) == 1 else path
    data = dataset(files)
    if data is None:
        return 0, iter([]), path
    condition = expression(query, data.schema)
    total = data.count_rows(filter=condition)
    if n == 0:
        return total, all_rows(data, condition), where
    return total, iter(read_rows(data, smallest_keys(data, n, condition).get(None, []), condition)), where


def all_rows(data: ds.Dataset, condition: ds.Expression | None) -> Iterator[dict[str, Any]]:
    for batch in data.to_batches(filter=condition, batch_size=1024):
        for row in batch.to_pylist():
            readable_counts(row, data.schema)
            yield row


# Control characters (C0 but newline and tab, DEL, C1) and bidirectional overrides: page text and URLs
# are untrusted, and a terminal would act on them (clear the screen, set the title, write the clipboard).
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """Text with every character a terminal would act on written out as an escape (ESC -> \\x1b)."""
    return UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else
                      f"\\u{ord(m.group()):04x}", text)


def highlight(text: str, grep: re.Pattern[str] | None, color: bool) -> str:
    """PII placeholders and --grep matches in colour, found on the plain text in one pass."""
    if not color:
        return text
    spans = [(m.start(), m.end(), CYAN) for m in PLACEHOLDER.finditer(text)]
    if grep is not None:
        spans += [(m.start(), m.end(), YELLOW + BOLD) for m in grep.finditer(text) if m.end() > m.start()]
    out, last = [], 0
    for start, end, code in sorted(spans):
        if start < last:  # overlapping spans: the first one wins
            continue
        out += [text[last:start], code, text[start:end], RESET]
        last = end
    out.append(text[last:])
    return "".join(out)


def format_document(row: dict[str, Any], width: int, chars: int | None, grep: re.Pattern[str] | None,
                    color: bool) -> str:
    text = visible(row.get("text") or "")
    meta = []
    for key, value in row.items():
        if key == "text" or value is None or value == {} or value == []:
            continue
        if isinstance(value, float):
            value = round(value, 4)
        value = visible(str(value))
        shown = f"{key}={value}"
        if color and key == "drop_reason":
            shown = f"{RED}{BOLD}{shown}{RESET}"
        elif color:
            shown = f"{DIM}{key}={RESET}{value}"
        meta.append(shown)
    body = text if chars is None or len(text) <= chars else text[:chars] + " […]"
    wrapped = "\n".join(textwrap.fill(line, width - 4, replace_whitespace=False) if line.strip() else ""
                         for line in body.splitlines())
    return "  ".join(meta) + "\n" + textwrap.indent(highlight(wrapped, grep, color), "    ", lambda _: True)


def inspect_documents(path: str, query: Query | None = None, n: int = 5, as_json: bool = False,
                      chars: int | None = 800, width: int | None = None, color: bool | None = None) -> int:
    query = query or Query()
    try:
        grep = re.compile(query.grep) if query.grep else None
        total, rows, where = find_documents(path, query, n)
    except re.error as exc:
        print(f"winnow inspect: --grep {query.grep!r} is not a valid regular expression: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, pa.ArrowInvalid) as exc:
        print(f"winnow inspect: {exc}", file=sys.stderr)
        return 2
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str, ensure_ascii=False))
        return 0 if total else 1
    width = width or shutil.get_terminal_size((100, 40)).columns
    color = sys.stdout.isatty() if color is None else color
    shown = total if n == 0 else min(n, total)
    print(f"{total} documents match in {visible(str(where))}" + (f"; showing {shown}" if shown < total else "") + "\n")
    for row in rows:
        print(format_document(row, width, chars, grep, color))
        print("-" * min(width, 100))
    return 0 if total else 1


def cluster_members(run_dir: str, cluster: str) -> list[dict]:
    """Every member of a duplicate cluster, kept one first; `largest` picks the biggest cluster."""
    import pyarrow.compute as pc

    for stage in RunDir(run_dir).stages():
        if not stage.fs.exists(stage.file("_dedup.json")):  # not a dedup stage
            continue
        files = stage.parts() + stage.parts(REJECTED)
        if not files:
            continue
        data = dataset(files)  # rejected files add columns: the schemas are unified
        if cluster == "largest":
            sizes = data.to_table(columns=["dup_cluster_id", "dup_cluster_size"])
            if not len(sizes):
                continue
            best = pc.index(sizes["dup_cluster_size"], pc.max(sizes["dup_cluster_size"]))
            target = sizes["dup_cluster_id"][best.as_py()].as_py()
        else:
            target = cluster
        rows = data.to_table(filter=ds.field("dup_cluster_id") == target).to_pylist()
        if rows:
            return sorted(rows, key=lambda r: (r.get("drop_reason") is not None, r["id"]))
    return []


def inspect_cluster(run_dir: str, cluster: str, width: int | None = None, columns: int = 3) -> int:
    members = cluster_members(run_dir, cluster)
    if not members:
        print(f"no cluster {cluster!r} in the dedup stages of {run_dir}")
        return 1
    width = width or shutil.get_terminal_size((150, 40)).columns
    print(f"cluster {members[0]['dup_cluster_id']}: {len(members)} documents, the first is the one kept\n")
    for start in range(0, len(members), columns):
        group = members[start: start + columns]
        col = max(20, (width - 3 * (len(group) - 1)) // len(group))
        blocks = []
        for row in group:
            status = row.get("drop_reason") or "kept"
            head = [visible(str(status)), visible(row.get("url") or ""), str(row.get("crawl_date") or ""),
                    f"{len(row['text'] or '')} chars"]
            body = textwrap.wrap(visible(row["text"] or ""), col)[:30]
            blocks.append([h[:col] for h in head] + ["-" * col] + body)
        for line in itertools.zip_longest(*blocks, fillvalue=""):
            print(" | ".join(cell.ljust(col) for cell in line).rstrip())
        print()
    return 0
