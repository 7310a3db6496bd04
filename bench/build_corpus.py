"""Build a benchmark WARC corpus by repacking the real HTML pages of ../shared/data.

Run: `.venv/bin/python bench/build_corpus.py --records 20000 --files 8 --out bench/corpus`

How the corpus is built:
  * Pages come from four sources of real HTML in ../shared/data (see its README.md):
    the 181 scrapinghub article pages (their URLs from ground-truth.json), the 5 DCLM Common Crawl
    pages (their canonical URL, or a made-up host), an evenly spaced sample of `--udhr` of the UDHR
    translations (made-up host; the English one is always included) for some non-English text, and
    every complete `text/html` 200 response inside the real WARC files under warc/ (their own URLs).
  * A body kept gzip-compressed by the crawler is decompressed; binary bodies are left out. Each page is
    decoded once (HTTP charset, then <meta charset>, then UTF-8, then byte-level detection) and stored
    as UTF-8, so every record says `Content-Type: text/html; charset=utf-8`.
  * The page list is shuffled with a fixed seed and cycled until `--records` response records exist.
    The first copy of each page is the page itself. Every later copy is a variant (bench/corpus_variants.py):
    the same markup (boilerplate, navigation, scripts), new text: prose paragraphs exchanged with other
    pages of the same source and language, sentences reordered, mid-sentence capitalized words (names)
    replaced by others of the same language from the corpus, digits replaced by digits of the same
    length, and, where a block of text would still repeat one already written, two of its words
    swapped. Without this, copies of a few hundred pages would let caches (trafilatura's duplicate-text
    cache, parse caches) answer from memory, and the throughput would measure them.
  * PLANTED_SHARE (5%) of the records, placed at random after the originals, are planted copies of one
    of the last PLANTED_WINDOW records: half exact, half near (two words swapped in one block), so that
    a dedup stage still has true duplicates to find. corpus_stats.json lists them.
  * Copy i of a page gets the URL `<original url>?copy=i` (or `&copy=i`), a WARC-Record-ID derived
    from i, and a WARC-Date of 2024-07-01 plus i seconds; the host is the page's own.
  * The records are split into `--files` contiguous runs (corpus-00000.warc.gz, ...), each a gzipped
    WARC/1.0 file with one warcinfo record first, then response records that carry
    `WARC-Identified-Payload-Type: text/html` as Common Crawl's do. No request records. Contiguous runs
    keep two copies of a page a whole cycle of distinct pages apart in every file: trafilatura's
    `deduplicate` counts the last 4096 texts (paragraphs and whole pages) it saw in a process and drops
    those seen more than twice. Same arguments give the same bytes.
  * At the end, bench/corpus_check.py measures how much of the text is distinct (paragraphs no other
    record holds, documents no other record equals), printed and written to DIR/corpus_stats.json.
  * DIR/CORPUS.md says how many pages and records came from each source, and the distinct shares.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from corpus_check import describe, measure
from corpus_variants import Block, Template, Variant, checked_keys, mid_sentence_names, near_copy, template
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SEED = 20240701
PLANTED_SHARE = 0.05  # of all records: exact and near copies of a recent record, for dedup to find
PLANTED_WINDOW = 64  # a planted copy repeats one of the last this many records
BASE_DATE = datetime(2024, 7, 1, tzinfo=UTC)
ID_NAMESPACE = uuid.UUID("6f1c1f4e-2b1a-4c56-9a55-7b0d3c1e9a10")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.I)
_UDHR_LANG = re.compile(r'data-iso6393="([a-z]{3})"')
_CANONICAL = re.compile(r"""<link[^>]+rel=["']?canonical["']?[^>]+href=["']([^"']+)["']""", re.I)


@dataclass(frozen=True)
class Page:
    source: str
    url: str
    html: str


def decode(body: bytes, http_charset: str | None = None) -> str:
    """HTTP charset, then <meta charset>, then UTF-8; byte-level detection if none of them decodes."""
    meta = _META_CHARSET.search(body[:4096])
    candidates = [http_charset, meta.group(1).decode("ascii", "ignore") if meta else None, "utf-8"]
    for enc in candidates:
        if enc:
            try:
                return body.decode(enc)
            except (LookupError, UnicodeDecodeError):
                continue
    return bytes_to_str(body, detect_encoding(body) or "utf-8")


def plain_body(body: bytes) -> bytes | None:
    """Undo a gzip Content-Encoding the crawler kept (one page in example.pdf.warc.gz); None if binary.

    Several files say `Content-Encoding: gzip` over bodies already decoded, so the bytes decide, not the header.
    """
    if body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError):
            return None
    return None if b"\x00" in body[:8192] else body


def scrapinghub_pages() -> list[Page]:
    folder = DATA / "html-extraction" / "scrapinghub-aeb"
    truth = json.loads((folder / "ground-truth.json").read_text())
    return [Page("scrapinghub-aeb", truth[key]["url"], decode(gzip.decompress((folder / "html" / f"{key}.html.gz")
                                                                              .read_bytes())))
            for key in sorted(truth)]


def dclm_pages() -> list[Page]:
    pages = []
    for path in sorted((DATA / "html-extraction" / "dclm-cc-html").glob("*.html")):
        html = decode(path.read_bytes())
        canonical = _CANONICAL.search(html)
        url = canonical.group(1) if canonical else f"https://dclm-cc.example.org/{path.name}"
        pages.append(Page("dclm-cc-html", url, html))
    return pages


def udhr_pages(limit: int) -> list[Page]:
    paths = sorted((DATA / "langid" / "udhr" / "declaration").glob("*.html"))
    if limit < len(paths):
        step = len(paths) / limit
        chosen = {paths[int(k * step)] for k in range(limit)}
        english = [p for p in paths if 'data-iso6393="eng"' in p.read_text(encoding="utf-8")[:400]]
        chosen |= set(english[:1])
        paths = sorted(chosen)
    return [Page("udhr", f"https://udhr.example.org/declaration/{p.name}", decode(p.read_bytes())) for p in paths]


def warc_pages() -> tuple[list[Page], Counter[str]]:
    """Complete text/html 200 responses of every WARC file under warc/, per file counted."""
    pages, per_file = [], Counter()
    files = sorted(p for p in (DATA / "warc").rglob("*") if p.name.endswith((".warc.gz", ".warc")))
    for path in files:
        with path.open("rb") as stream:
            records = ArchiveIterator(stream, parse_http=True, quirks_mode=True, strict_mode=False)
            try:
                for record in records:
                    if record.record_type != WarcRecordType.response or not record.is_http:
                        continue
                    if record.http_headers.status_code != 200:
                        continue
                    if not (record.http_content_type or "").lower().startswith("text/html"):
                        continue
                    expected, body = record.content_length, record.reader.read()
                    if len(body) < expected:  # truncated gzip member (clipped.warc.gz)
                        continue
                    body = plain_body(body)
                    if body is None:
                        continue
                    url = (record.headers.get("WARC-Target-URI") or "").strip().strip("<>").split("#")[0]
                    if url:
                        pages.append(Page("warc", url, decode(body, record.http_charset)))
                        per_file[str(path.relative_to(DATA))] += 1
            except Exception as exc:  # noqa: BLE001 - a broken tail ends that file only
                print(f"  {path.relative_to(DATA)}: stopped reading: {exc!r}")
    return pages, per_file


def copy_url(url: str, i: int) -> str:
    return f"{url}{'&' if '?' in url else '?'}copy={i}"


def http_headers(body: bytes) -> StatusAndHeaders:
    return StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                       ("Content-Length", str(len(body)))], protocol="HTTP/1.1")


def warcinfo(writer: WARCWriter, name: str, records: int) -> None:
    info = f"software: winnow bench/build_corpus.py\r\nformat: WARC File Format 1.0\r\nrecords: {records}\r\n"
    payload = info.encode()
    writer.write_record(writer.create_warc_record(
        "", "warcinfo", payload=BytesIO(payload), length=len(payload), warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(ID_NAMESPACE, name)}>",
                           "WARC-Date": BASE_DATE.strftime("%Y-%m-%dT%H:%M:%SZ"), "WARC-Filename": name}))


def response(writer: WARCWriter, i: int, url: str, body: bytes) -> None:
    headers = {"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(ID_NAMESPACE, f'{i}:{url}')}>",
               "WARC-Date": (BASE_DATE + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "WARC-Identified-Payload-Type": "text/html"}
    writer.write_record(writer.create_warc_record(url, "response", payload=BytesIO(body), length=len(body),
                                                  http_headers=http_headers(body), warc_headers_dict=headers))


class GzipMembers:
    """Writes WARC records to files, each record its own gzip member as warcio writes them, compressed in a
    thread (zlib lets go of the GIL) while the next record is made."""

    def __init__(self) -> None:
        self.buffer = BytesIO()
        self.writer = WARCWriter(self.buffer, gzip=False, warc_version="1.0")
        self.pool = ThreadPoolExecutor(1)
        self.pending: deque[tuple[BinaryIO, Future[bytes]]] = deque()

    def write(self, out: BinaryIO, record: Callable[[WARCWriter], None]) -> None:
        self.buffer.seek(0)
        self.buffer.truncate()
        record(self.writer)
        self.pending.append((out, self.pool.submit(gzip.compress, self.buffer.getvalue(), 6, mtime=0)))
        while len(self.pending) > 16:
            self.flush_one()

    def flush_one(self) -> None:
        out, member = self.pending.popleft()
        out.write(member.result())

    def close(self) -> None:
        while self.pending:
            self.flush_one()
        self.pool.shutdown()


def languages(pages: list[Page]) -> list[str]:
    """Each page's language: the UDHR's own ISO 639-3 code, else lid.176's label for its main text."""
    sys.path.insert(0, str(ROOT))
    from filters.langid import bundled_model_path, load_model

    model = load_model(str(bundled_model_path()))
    out = []
    for page in pages:
        declared = _UDHR_LANG.search(page.html[:400]) if page.source == "udhr" else None
        if declared:
            out.append(declared.group(1))
            continue
        text = extract_plain_text(page.html, main_content=True)
        labels, _ = model.predict(" ".join(text.lower().split())[:4000] or "-")
        out.append(labels[0].removeprefix("__label__"))
    return out


def templates(pages: list[Page]) -> tuple[list[Template], dict[str, list[Block]], dict[str, list[str]]]:
    """The pages cut for variants, the prose paragraphs of each group and the names of each language."""
    cut = [template(p.html, f"{p.source}:{lang}", lang) for p, lang in zip(pages, languages(pages), strict=True)]
    pools: dict[str, list[Block]] = {}
    by_language: dict[str, list[Block]] = {}
    for t in cut:
        pools.setdefault(t.group, []).extend(t.prose)
        by_language.setdefault(t.language, []).extend(p for p in t.pieces if isinstance(p, Block))
    names = {lang: sorted(mid_sentence_names(blocks)) for lang, blocks in by_language.items()}
    return cut, pools, names


def plan_copies(records: int, pages: int, rng: random.Random) -> dict[int, str]:
    """Positions of the planted copies (exact or near), after every page's original has been written."""
    count = min(round(PLANTED_SHARE * records), max(0, records - pages))
    return {i: rng.choice(("exact", "near")) for i in sorted(rng.sample(range(pages, records), count))}


def build(records: int, files: int, out: Path, udhr: int) -> dict:
    warc, warc_files = warc_pages()
    sources = {"scrapinghub-aeb": scrapinghub_pages(), "dclm-cc-html": dclm_pages(), "udhr": udhr_pages(udhr),
               "warc": warc}
    pages = [p for group in sources.values() for p in group]
    random.Random(SEED).shuffle(pages)
    cut, pools, names = templates(pages)
    rng = random.Random(SEED)
    planted_at = plan_copies(records, len(pages), rng)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("corpus-*.warc.gz"):
        old.unlink()
    names_of_files = [f"corpus-{k:05d}.warc.gz" for k in range(files)]
    handles = [(out / n).open("wb") for n in names_of_files]
    members = GzipMembers()
    file_of = [i * files // records for i in range(records)]
    per_file = Counter(file_of)
    for k, (handle, name) in enumerate(zip(handles, names_of_files, strict=True)):
        members.write(handle, partial(warcinfo, name=name, records=per_file[k]))
    used: Counter[str] = Counter()
    seen: set[bytes] = set()  # digests of every block of 40+ characters written so far
    recent: deque[tuple[Page, str, str]] = deque(maxlen=PLANTED_WINDOW)  # (page, url, html) of the last records
    planted: list[dict[str, str]] = []
    html_bytes, copies = 0, 0
    for i in range(records):
        if i in planted_at:
            page, of, html = rng.choice(recent)
            url = copy_url(page.url, i)
            if planted_at[i] == "near":
                html = near_copy(html, random.Random(f"{SEED}:{i}"))
            planted.append({"url": url, "of": of, "kind": planted_at[i]})
        else:
            page, t = pages[copies % len(pages)], cut[copies % len(pages)]
            url = copy_url(page.url, i)
            if copies < len(pages):  # the first copy of a page is the page itself
                html = page.html
                seen.update(checked_keys(t))
            else:
                html = Variant(random.Random(f"{SEED}:{i}"), names[t.language]).render(t, pools, seen)
            copies += 1
            recent.append((page, url, html))
        body = html.encode("utf-8")
        html_bytes += len(body)
        used[page.source] += 1
        members.write(handles[file_of[i]], partial(response, i=i, url=url, body=body))
    members.close()
    for h in handles:
        h.close()
    kinds = Counter(c["kind"] for c in planted)
    summary = {
        "records": records, "files": files, "distinct_pages": len(pages), "udhr_sample": udhr,
        "originals": min(records, len(pages)), "variants": max(0, copies - len(pages)),
        "planted_copies": {"exact": kinds["exact"], "near": kinds["near"],
                           "share": round(len(planted) / records, 4), "records": planted},
        "groups": len(pools), "languages": len(names),
        "pages_per_source": {s: len(g) for s, g in sources.items()}, "records_per_source": dict(used),
        "warc_pages_per_file": dict(sorted(warc_files.items())), "html_mb": round(html_bytes / 2**20, 1),
        "gzipped_mb": round(sum((out / n).stat().st_size for n in names_of_files) / 2**20, 1),
    }
    summary["distinct_text"] = measure(out, {c["url"] for c in planted}, summary["originals"])
    (out / "corpus_stats.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_report(out, summary)
    return summary


def write_report(out: Path, s: dict) -> None:
    planted, check = s["planted_copies"], s["distinct_text"]
    lines = [
        "# Benchmark corpus", "",
        f"Built by `bench/build_corpus.py --records {s['records']} --files {s['files']} --udhr {s['udhr_sample']}`"
        " (deterministic: the same arguments give the same bytes).", "",
        f"{s['records']} HTML response records in {s['files']} gzipped WARC/1.0 files ({s['html_mb']} MB of HTML, "
        f"{s['gzipped_mb']} MB on disk), made from {s['distinct_pages']} distinct real pages of ../shared/data, "
        "cycled in a fixed shuffled order and split into contiguous runs, one per file. The first copy of a page "
        f"is the page itself ({s['originals']} records); every later copy ({s['variants']} records) keeps its markup "
        "and gets new text (paragraphs exchanged within its source and language, sentences reordered, names and "
        f"numbers changed, see bench/corpus_variants.py). {planted['exact']} exact and {planted['near']} near "
        f"copies of recent records ({planted['share']:.1%} of the records) are planted for dedup to find. "
        "Copy i of a page has URL `<original url>?copy=i`, its own WARC-Record-ID, and `HTTP/1.1 200` with "
        "`Content-Type: text/html; charset=utf-8` (pages re-encoded as UTF-8).", "",
        f"Distinct text (bench/corpus_check.py): {describe(check)}.", "",
        "| source | distinct pages | records |", "|---|---:|---:|",
    ]
    for source, n in s["pages_per_source"].items():
        lines.append(f"| {source} | {n} | {s['records_per_source'].get(source, 0)} |")
    lines += ["", "HTML responses taken from each real WARC file:", ""]
    lines += [f"- `{name}`: {n}" for name, n in s["warc_pages_per_file"].items()]
    (out / "CORPUS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000, help="response records in total")
    parser.add_argument("--files", type=int, default=8, help="number of WARC files")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "corpus")
    parser.add_argument("--udhr", type=int, default=100, help="UDHR translations to include (of 532)")
    args = parser.parse_args()
    build(args.records, args.files, args.out, args.udhr)
    print((args.out / "CORPUS.md").read_text())


if __name__ == "__main__":
    main()
