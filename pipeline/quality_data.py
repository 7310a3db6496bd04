"""Labelled text for Winnow's default quality classifier, from the real data in ../shared/data.

The DCLM recipe at small scale: reference-quality text against random web text.

* Positives (`hq`): the 30 Wikipedia articles (pretrain-text/wiki-demo), the 20 CCNet "head"
  documents (the part of Common Crawl closest to Wikipedia by perplexity), and the 252 expert-written
  instructions with their human answers (sft/self-instruct-human).
* Negatives (`cc`): the 697 raw Common Crawl documents of dolma CC-MAIN-2019-30 and the 300 C4
  documents: extracted web text as it comes, before any model-based filtering.

Long documents are cut into passages of about 250 words, so that a 10,000-word article does not
weigh like a 10,000-word one against a 300-word web page; passages of fewer than 40 words are
dropped. Same files, same rows.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

PASSAGE_WORDS = 250
MIN_WORDS = 40


def passages(text: str, size: int = PASSAGE_WORDS) -> list[str]:
    """Cut at line ends into passages of about `size` words."""
    out, current, count = [], [], 0
    for line in text.split("\n"):
        words = len(line.split())
        if count and count + words > size:
            out.append("\n".join(current))
            current, count = [], 0
        current.append(line)
        count += words
    if current:
        out.append("\n".join(current))
    return [p for p in out if len(p.split()) >= MIN_WORDS]


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def default_rows(data: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(text, label) rows, `hq` for reference-quality passages and `cc` for web passages, and each
    row's source document (the train/validation split keeps a document's passages together)."""
    rows: list[tuple[str, str]] = []
    groups: list[str] = []

    def add(texts: list[str], label: str, group: str) -> None:
        rows.extend((t, label) for t in texts)
        groups.extend([group] * len(texts))

    wiki = (data / "pretrain-text" / "wiki-demo" / "wiki_demo.txt").read_text().splitlines()
    for i, article in enumerate(wiki):
        # The articles are one line each: cut them at sentence ends instead.
        add(passages(article.replace(". ", ".\n")), "hq", f"wiki:{i}")
    for path in sorted((data / "cc-text" / "dolma-ccnet-head").glob("*.jsonl.gz")):
        for i, doc in enumerate(_jsonl(path)):
            add(passages(doc["text"]), "hq", f"{path.name}:{i}")
    for task in _jsonl(data / "sft" / "self-instruct-human" / "user_oriented_instructions.jsonl"):
        for k, instance in enumerate(task["instances"]):
            text = "\n".join(x for x in (task["instruction"], instance.get("input", ""), instance["output"]) if x)
            if len(text.split()) >= MIN_WORDS:
                add([text], "hq", f"{task['id']}:{k}")
    for path in sorted((data / "cc-text" / "dolma-cc-2019-30").glob("*.jsonl.gz")):
        for i, doc in enumerate(_jsonl(path)):
            add(passages(doc["text"]), "cc", f"{path.name}:{i}")
    for i, doc in enumerate(_jsonl(data / "cc-text" / "c4-demo" / "c4_demo.jsonl")):
        add(passages(doc["text"]), "cc", f"c4:{i}")
    return rows, groups
