"""Labelled text for Winnow's default quality scorer, from the real data in ../shared/data.

The DCLM recipe at small scale: well-formed, informative text against random web text.

* Positives (`hq`): the 30 Wikipedia articles (pretrain-text/wiki-demo), cut into page-sized
  documents; the 20 CCNet "head" documents (the part of Common Crawl closest to Wikipedia by
  perplexity); the expert-written instructions with their human answers (sft/self-instruct-human);
  and the longer answers of the English alpaca demo (sft/llamafactory-demo), explanatory prose.
* Negatives (`cc`): the 697 raw Common Crawl documents of dolma CC-MAIN-2019-30 and the 300 C4
  documents: extracted web text as it comes, before any model-based filtering.

`default_documents` gives whole documents with their source, for the feature combiner and for
evaluation split by source. `default_rows` cuts them into passages of about 250 words for fastText,
so that a 10,000-word article does not weigh like one 300-word web page; passages of fewer than 40
words are dropped. Same files, same rows.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import xxhash

PASSAGE_WORDS = 250
MIN_WORDS = 40
SOURCES = {"wiki": "hq", "ccnet": "hq", "self_instruct": "hq", "alpaca": "hq", "dolma_cc": "cc", "c4": "cc"}
# The feature combiner learns from documents shaped like web pages only: instruction answers are short
# by nature, and learning from them would teach "shorter is better" about web pages.
PAGE_SOURCES = ("wiki", "ccnet", "dolma_cc", "c4")
# Wikipedia articles are cut into documents of these sizes (chosen by a hash of the article and
# position), so that the positives span web-page lengths instead of all being 5,000-word articles.
WIKI_DOC_WORDS = (150, 300, 600, 1200, 2400)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


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


def _wiki_documents(article: str, key: str) -> list[str]:
    """An article stored on one line, as paragraphs of four sentences cut into page-sized documents."""
    sentences = _SENTENCE.split(article.strip())
    paragraphs = [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4)]
    docs, current, count = [], [], 0
    target = WIKI_DOC_WORDS[xxhash.xxh32_intdigest(f"{key}:0".encode()) % len(WIKI_DOC_WORDS)]
    for paragraph in paragraphs:
        current.append(paragraph)
        count += len(paragraph.split())
        if count >= target:
            docs.append("\n".join(current))
            current, count = [], 0
            target = WIKI_DOC_WORDS[xxhash.xxh32_intdigest(f"{key}:{len(docs)}".encode()) % len(WIKI_DOC_WORDS)]
    if current and count >= MIN_WORDS:
        docs.append("\n".join(current))
    return docs


def default_documents(data: Path) -> list[dict[str, Any]]:
    """Whole documents: {text, label, source, group}; `group` is the source document, so a split by
    group keeps the pieces of one Wikipedia article (or one answer's passages) on one side."""
    docs: list[dict[str, Any]] = []

    def add(text: str, source: str, group: str) -> None:
        docs.append({"text": text, "label": SOURCES[source], "source": source, "group": group})

    wiki = (data / "pretrain-text" / "wiki-demo" / "wiki_demo.txt").read_text().splitlines()
    for i, article in enumerate(wiki):
        for text in _wiki_documents(article, f"wiki:{i}"):
            add(text, "wiki", f"wiki:{i}")
    for path in sorted((data / "cc-text" / "dolma-ccnet-head").glob("*.jsonl.gz")):
        for i, doc in enumerate(_jsonl(path)):
            add(doc["text"], "ccnet", f"{path.name}:{i}")
    for task in _jsonl(data / "sft" / "self-instruct-human" / "user_oriented_instructions.jsonl"):
        for k, instance in enumerate(task["instances"]):
            text = "\n".join(x for x in (task["instruction"], instance.get("input", ""), instance["output"]) if x)
            if len(text.split()) >= MIN_WORDS:
                add(text, "self_instruct", f"{task['id']}:{k}")
    alpaca = json.loads((data / "sft" / "llamafactory-demo" / "alpaca_en_demo.json").read_text())
    for i, example in enumerate(alpaca):
        # Only the explanatory answers: lists, code and one-liners are not what a web page's prose is.
        if len(example["output"].split()) >= 80:
            add(example["output"], "alpaca", f"alpaca:{i}")
    for path in sorted((data / "cc-text" / "dolma-cc-2019-30").glob("*.jsonl.gz")):
        for i, doc in enumerate(_jsonl(path)):
            add(doc["text"], "dolma_cc", f"{path.name}:{i}")
    for i, doc in enumerate(_jsonl(data / "cc-text" / "c4-demo" / "c4_demo.jsonl")):
        add(doc["text"], "c4", f"c4:{i}")
    return docs


def passage_rows(docs: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[str]]:
    """(text, label) passages of the documents for fastText, and each passage's group."""
    rows: list[tuple[str, str]] = []
    groups: list[str] = []
    for doc in docs:
        # Short answers are kept whole; everything else is cut into passages.
        pieces = [doc["text"]] if doc["source"] == "self_instruct" else passages(doc["text"])
        rows.extend((p, doc["label"]) for p in pieces)
        groups.extend([doc["group"]] * len(pieces))
    return rows, groups


def default_rows(data: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(text, label) passages, `hq` for reference-quality text and `cc` for web text, and each
    row's source document (the train/validation split keeps a document's passages together)."""
    return passage_rows(default_documents(data))
