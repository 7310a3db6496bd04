"""WARC reading: WARC files in, one document per HTML response record out.

FastWARC (from resiliparse) parses records several times faster than warcio, which
datatrove's WarcReader uses, and its quirks mode reads the old and broken files found in
real archives: WARC/0.17 and 0.18, invalid dates, `<...>`-wrapped target URIs. What it does
not do is say that a gzip stream ended early, so we check each payload against its
declared length: a short one marks the point where a truncated file breaks.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.parse.encoding import bytes_to_str, detect_encoding

from filters.base import Doc, StepParams

log = logging.getLogger("winnow.warc")

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.I)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2}))?")


class WarcReaderParams(StepParams):
    type: Literal["warc"] = "warc"
    # Records larger than this are skipped and counted: a 50 MB page is not training text.
    max_record_bytes: int = 5_000_000
    mime_types: list[str] = ["text/html", "application/xhtml+xml"]
    # Keep the ones with a 2xx status only; redirects and errors carry no content.
    only_ok_status: bool = True


READER_COLUMNS: dict[str, pa.DataType] = {
    "id": pa.string(),
    "url": pa.string(),
    "domain": pa.string(),
    "crawl_date": pa.timestamp("us", tz="UTC"),
    "source_file": pa.string(),
    "source_offset": pa.int64(),
}


def parse_warc_date(raw: str | None) -> datetime | None:
    """Lenient WARC-Date parsing: real files carry dates like `2008-10-294T05:21:46-0700`."""
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        pass
    m = _DATE.search(raw)
    if not m:
        return None
    parts = [int(p) if p else 0 for p in m.groups()]
    try:
        return datetime(*parts, tzinfo=UTC)
    except ValueError:
        return None


def clean_uri(raw: str | None) -> str:
    """Strip the `<...>` some writers (wget) wrap around WARC-Target-URI."""
    uri = (raw or "").strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    return uri


def decode_html(body: bytes, http_charset: str | None) -> tuple[str, str]:
    """Decode a page: HTTP charset, then <meta charset>, then byte-level detection."""
    candidates = [http_charset]
    meta = _META_CHARSET.search(body[:4096])
    if meta:
        candidates.append(meta.group(1).decode("ascii", "ignore"))
    for enc in candidates:
        if not enc:
            continue
        try:
            return body.decode(enc), enc.lower()
        except (LookupError, UnicodeDecodeError):
            continue
    detected = detect_encoding(body) or "utf-8"
    return bytes_to_str(body, detected), f"detected:{detected}"


def _record_id(raw_id: str | None, source_file: str, offset: int) -> str:
    if raw_id:
        return raw_id.strip("<>").removeprefix("urn:uuid:")
    return hashlib.sha1(f"{source_file}@{offset}".encode()).hexdigest()


def read_warc(path: str, params: WarcReaderParams, stats: Counter[str]) -> Iterator[Doc]:
    """Yield one document per usable HTML response in `path`; count every record skipped."""
    mime_types = tuple(params.mime_types)
    try:
        stream = fsspec.open(path, "rb").open()
    except (OSError, ValueError) as exc:
        log.error("cannot open %s: %r", path, exc)
        stats["file_open_error"] += 1
        return
    with stream:
        records = ArchiveIterator(stream, parse_http=True, quirks_mode=True, strict_mode=False)
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - a corrupt stream ends the file, not the job
                log.error("%s: unreadable after %d records: %r", path, stats["records"], exc)
                stats["read_error"] += 1
                return
            stats["records"] += 1
            offset = record.stream_pos
            rtype = record.record_type
            if rtype != WarcRecordType.response:
                stats[f"skipped:{'revisit' if rtype == WarcRecordType.revisit else 'not_response'}"] += 1
                continue
            if not record.is_http:
                stats["skipped:not_http"] += 1
                continue
            status = record.http_headers.status_code
            if params.only_ok_status and (status is None or not 200 <= status < 300):
                stats["skipped:http_status"] += 1
                continue
            content_type = (record.http_content_type or "").lower()
            if not content_type.startswith(mime_types):
                stats["skipped:mime_type"] += 1
                continue
            if record.content_length > params.max_record_bytes:
                log.warning("%s@%d: %d-byte record over max_record_bytes, skipped",
                            path, offset, record.content_length)
                stats["skipped:too_large"] += 1
                continue
            body = record.reader.read()
            if len(body) < record.content_length:
                log.error("%s@%d: truncated (%d of %d bytes); records after this point are lost",
                          path, offset, len(body), record.content_length)
                stats["truncated"] += 1
                return
            url = clean_uri(record.headers.get("WARC-Target-URI"))
            raw_date = record.headers.get("WARC-Date")
            date = parse_warc_date(raw_date)
            if date is None:
                stats["bad_date"] += 1
            html, charset = decode_html(body, record.http_charset)
            if charset.startswith("detected:"):
                stats["charset_detected"] += 1
            stats["documents"] += 1
            yield {
                "id": _record_id(record.record_id, path, offset),
                "url": url,
                "domain": (urlsplit(url).hostname or "").lower(),
                "crawl_date": date,
                "source_file": path,
                "source_offset": offset,
                "html": html,
            }
