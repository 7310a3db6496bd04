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
    Copy i of a page gets the URL `<original url>?copy=i` (or `&copy=i`), a WARC-Record-ID derived
    from i, and a WARC-Date of 2024-07-01 plus i seconds; the host is the page's own.
  * The records are split into `--files` contiguous runs (corpus-00000.warc.gz, ...), each a gzipped
    WARC/1.0 file with one warcinfo record first, then response records that carry
    `WARC-Identified-Payload-Type: text/html` as Common Crawl's do. No request records. Contiguous runs
    keep two copies of a page a whole cycle of distinct pages apart in every file: trafilatura's
    `deduplicate` counts the last 4096 texts (paragraphs and whole pages) it saw in a process and drops
    those seen more than twice, so copies close together would measure that cache, not extraction.
    Same arguments give the same bytes.
  * DIR/CORPUS.md says how many pages and records came from each source.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SEED = 20240701
BASE_DATE = datetime(2024, 7, 1, tzinfo=UTC)
ID_NAMESPACE = uuid.UUID("6f1c1f4e-2b1a-4c56-9a55-7b0d3c1e9a10")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.I)
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


def build(records: int, files: int, out: Path, udhr: int) -> dict:
    warc, warc_files = warc_pages()
    sources = {"scrapinghub-aeb": scrapinghub_pages(), "dclm-cc-html": dclm_pages(), "udhr": udhr_pages(udhr),
               "warc": warc}
    pages = [p for group in sources.values() for p in group]
    random.Random(SEED).shuffle(pages)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("corpus-*.warc.gz"):
        old.unlink()
    names = [f"corpus-{k:05d}.warc.gz" for k in range(files)]
    handles = [(out / n).open("wb") for n in names]
    writers = [WARCWriter(h, gzip=True, warc_version="1.0") for h in handles]
    file_of = [i * files // records for i in range(records)]
    per_file = Counter(file_of)
    for k, (writer, name) in enumerate(zip(writers, names, strict=True)):
        warcinfo(writer, name, per_file[k])
    used: Counter[str] = Counter()
    html_bytes = 0
    for i in range(records):
        page = pages[i % len(pages)]
        url = copy_url(page.url, i)
        body = page.html.encode("utf-8")
        html_bytes += len(body)
        used[page.source] += 1
        headers = {"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(ID_NAMESPACE, f'{i}:{url}')}>",
                   "WARC-Date": (BASE_DATE + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "WARC-Identified-Payload-Type": "text/html"}
        writer = writers[file_of[i]]
        writer.write_record(writer.create_warc_record(url, "response", payload=BytesIO(body), length=len(body),
                                                      http_headers=http_headers(body), warc_headers_dict=headers))
    for h in handles:
        h.close()
    summary = {
        "records": records, "files": files, "distinct_pages": len(pages), "udhr_sample": udhr,
        "pages_per_source": {s: len(g) for s, g in sources.items()}, "records_per_source": dict(used),
        "warc_pages_per_file": dict(sorted(warc_files.items())), "html_mb": round(html_bytes / 2**20, 1),
        "gzipped_mb": round(sum((out / n).stat().st_size for n in names) / 2**20, 1),
    }
    write_report(out, summary)
    return summary


def write_report(out: Path, s: dict) -> None:
    lines = [
        "# Benchmark corpus", "",
        f"Built by `bench/build_corpus.py --records {s['records']} --files {s['files']} --udhr {s['udhr_sample']}`"
        " (deterministic: the same arguments give the same bytes).", "",
        f"{s['records']} HTML response records in {s['files']} gzipped WARC/1.0 files ({s['html_mb']} MB of HTML, "
        f"{s['gzipped_mb']} MB on disk), repacked from {s['distinct_pages']} distinct real pages of ../shared/data, "
        "cycled in a fixed shuffled order and split into contiguous runs, one per file. Copy i of a page has URL "
        "`<original url>?copy=i`, its own "
        "WARC-Record-ID, and `HTTP/1.1 200` with `Content-Type: text/html; charset=utf-8` (pages re-encoded as "
        "UTF-8).", "",
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
