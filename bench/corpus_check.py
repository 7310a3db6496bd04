"""How much of a benchmark corpus' text is distinct: its paragraphs, and its documents whole.

Run: `.venv/bin/python bench/corpus_check.py [DIR]` (bench/build_corpus.py runs it at the end of a build).

Each response record's HTML is extracted with resiliparse (main content, the first pass of Winnow's
default extractor) and cut at blank lines; a paragraph is a piece of 40 characters or more, its
whitespace collapsed. A paragraph is distinct when no other record holds the same text, a document
when no other record has the same extracted text. Both shares are given over all records; without
the exact and near copies that build_corpus.py puts in on purpose for dedup to find (their URLs are in
DIR/corpus_stats.json; the original of such a copy stays in); and over the changed copies alone (every
record after the originals, the first copy of each page, but the planted ones), since the real pages
repeat some text among themselves (a site's footer, a page crawled twice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text

MIN_PARAGRAPH_CHARS = 40


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def paragraphs(html: str) -> tuple[str, list[str]]:
    """The extracted text of a page, whitespace collapsed, and its paragraphs of MIN_PARAGRAPH_CHARS or more."""
    text = extract_plain_text(html, main_content=True, alt_texts=False, links=False, form_fields=False,
                              noscript=False, comments=False)
    blocks = [" ".join(b.split()) for b in text.split("\n\n")]
    return " ".join(text.split()), [b for b in blocks if len(b) >= MIN_PARAGRAPH_CHARS]


def read_file(path: Path) -> list[tuple[str, bytes | None, list[bytes]]]:
    """(URL, digest of the document's text or None when empty, digests of its distinct paragraphs) per record."""
    rows = []
    with path.open("rb") as stream:
        for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
            url = record.headers.get("WARC-Target-URI")
            text, blocks = paragraphs(record.reader.read().decode("utf-8", "replace"))
            rows.append((url, digest(text) if text else None, sorted({digest(b) for b in blocks})))
    return rows


Row = tuple[str, bytes | None, list[bytes]]


def shares(rows: list[Row], counted: list[Row]) -> dict:
    """Of the `counted` records, the share of paragraphs and of documents that no other of `rows` holds."""
    in_records = Counter(p for _, _, ps in rows for p in ps)
    documents = Counter(d for _, d, _ in rows if d is not None)
    paragraph_count = sum(len(ps) for _, _, ps in counted)
    distinct_paragraphs = sum(in_records[p] == 1 for _, _, ps in counted for p in ps)
    texts = [d for _, d, _ in counted if d is not None]
    return {
        "records": len(counted), "empty_documents": len(counted) - len(texts),
        "paragraphs": paragraph_count,
        "paragraph_distinct_share": round(distinct_paragraphs / paragraph_count, 4) if paragraph_count else 1.0,
        "document_distinct_share": round(sum(documents[d] == 1 for d in texts) / len(texts), 4) if texts else 1.0,
    }


def measure(corpus: Path, planted: set[str], originals: int, workers: int | None = None) -> dict:
    """Distinct shares over all records; without the records whose URL is in `planted`; and of the records
    after the first `originals` (the changed copies) against all but the planted ones."""
    files = sorted(corpus.glob("corpus-*.warc.gz"))
    workers = workers or min(len(files), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers) as pool:
        rows = [row for rows in pool.map(read_file, files) for row in rows]
    kept = [r for r in rows if r[0] not in planted]
    return {"all_records": shares(rows, rows), "without_planted_copies": shares(kept, kept),
            "changed_copies": shares(kept, [r for r in rows[originals:] if r[0] not in planted]),
            "planted_copies": len(rows) - len(kept)}


def describe(check: dict) -> str:
    a, w, c = check["all_records"], check["without_planted_copies"], check["changed_copies"]
    return (f"distinct paragraphs {w['paragraph_distinct_share']:.2%} of {w['paragraphs']} and distinct documents "
            f"{w['document_distinct_share']:.2%} without the {check['planted_copies']} planted copies "
            f"({a['paragraph_distinct_share']:.2%} and {a['document_distinct_share']:.2%} with them; "
            f"{c['paragraph_distinct_share']:.2%} and {c['document_distinct_share']:.2%} in the changed copies)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, nargs="?", default=Path(__file__).resolve().parent / "corpus")
    args = parser.parse_args()
    stats = json.loads((args.corpus / "corpus_stats.json").read_text())
    check = measure(args.corpus, {c["url"] for c in stats["planted_copies"]["records"]}, stats["originals"])
    print(json.dumps(check, indent=2))
    print(describe(check))


if __name__ == "__main__":
    main()
