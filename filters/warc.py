"""WARC reading: WARC files in, one document per HTML response record out.

Real archives are damaged in ways a strict reader turns into lost data: a gzip member with flipped
bytes, a file cut short, a Content-Length that is off, a header that does not parse, a URL that
does not either. So the reader does its own framing and loses only the records the damage touched,
counting each loss and naming the file and offset:

1. `warc_framing.gzip_pieces` inflates gzip members one at a time, passes on only those whose CRC
   checks out, and after damage resumes at the next gzip member that inflates.
2. `warc_framing.Framer` cuts records by Content-Length and checks each against where the next
   `WARC/` header begins, so a wrong length costs neither the record nor its neighbour.
3. Here, each record's HTTP head is read and the page decoded by the WHATWG encoding rules
   (`html_encoding`).

Old and odd files read as before: WARC/0.17 and 0.18, invalid dates, `<...>`-wrapped target URIs,
LF-only header lines, gzip or plain.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import fsspec
import pyarrow as pa
from pydantic import Field

from filters.base import Doc, StepParams
from filters.html_encoding import decode_html, whatwg_codec
from filters.warc_framing import MAX_HEAD, Framer, gzip_pieces, head_end, plain_pieces

__all__ = ["READER_COLUMNS", "WarcReaderParams", "clean_uri", "decode_html", "parse_warc_date",
           "read_warc", "whatwg_codec"]
log = logging.getLogger("winnow.warc")

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2}))?")
_CONTENT_TYPE = re.compile(rb"\ncontent-type:[ \t]*([^\r\n]*)", re.I)
_HTTP_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.I)


class WarcReaderParams(StepParams):
    type: Literal["warc"] = "warc"
    # Records larger than this are skipped and counted: a 50 MB page is not training text.
    max_record_bytes: int = Field(5_000_000, ge=1_000)
    # At least one: an empty list would skip every record and make a run that succeeds on nothing.
    mime_types: list[str] = Field(["text/html", "application/xhtml+xml"], min_length=1)
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


# Control bytes text does not have: C0 and DEL, less tab, newlines, form feed and ESC (ISO-2022's escapes).
_CONTROLS = bytes(b for b in [*range(0x20), 0x7F] if b not in b"\t\n\r\x0c\x1b")
_NOT_CONTROLS = bytes(b for b in range(256) if b not in _CONTROLS)  # deleted to count what is left
_BINARY_SHARE = 0.01  # random bytes hold ~12% C0 controls, text in any ASCII-compatible charset ~0%


def looks_binary(body: bytes, sample: int = 8192) -> bool:
    """Whether a body is binary data rather than text in some charset: a NUL, or more than 1% C0
    control bytes (other than tab, newlines, form feed and ESC) in its first `sample` bytes. Text in
    any ASCII-compatible charset, CJK multi-byte ones included, keeps its control bytes below 0x20
    to those few; an image or archive has them everywhere, NUL or not."""
    head = body[:sample]
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = len(head.translate(None, _NOT_CONTROLS))
    return controls > _BINARY_SHARE * len(head)


def parse_warc_date(raw: str | None) -> tuple[datetime | None, bool]:
    """Lenient WARC-Date parsing; returns (date, was_valid).

    Real files carry dates like `2008-10-294T05:21:46-0700`: we keep the date part we can read.
    """
    if not raw:
        return None, False
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(UTC), True
    except ValueError:
        pass
    m = _DATE.search(raw)
    if not m:
        return None, False
    parts = [int(p) if p else 0 for p in m.groups()]
    try:
        return datetime(*parts, tzinfo=UTC), False
    except ValueError:
        return None, False


def clean_uri(raw: str | None) -> str:
    """Strip the `<...>` some writers (wget) wrap around WARC-Target-URI."""
    uri = (raw or "").strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    return uri


def _http_head(block: bytes) -> tuple[int | None, str, bytes]:
    """(status, Content-Type, body) of an HTTP response block; status None when the status line does not
    parse. Only the one header the reader needs is looked up: a full parse would cost more than the rest."""
    end, sep = head_end(block, 0, MAX_HEAD)
    head, body = (block[:end], block[end + sep:]) if end >= 0 else (block[:MAX_HEAD], b"")
    first = head.split(b"\n", 1)[0].split(None, 2)
    status = int(first[1]) if len(first) > 1 and first[0].upper().startswith(b"HTTP/") and first[1].isdigit() else None
    content_type = _CONTENT_TYPE.search(head)
    return status, content_type.group(1).decode("latin-1").strip() if content_type else "", body


def _record_id(raw_id: str | None, source_file: str, offset: int) -> str:
    if raw_id:
        return raw_id.strip("<>").removeprefix("urn:uuid:")
    return hashlib.sha1(f"{source_file}@{offset}".encode()).hexdigest()


def _gunzip(body: bytes, limit: int) -> bytes | None:
    try:
        inflate = zlib.decompressobj(31)
        out = inflate.decompress(body, limit)
        return None if inflate.unconsumed_tail else out
    except zlib.error:
        return None


def _document(path: str, offset: int, fields: dict[str, str], block: bytes, complete: bool,
              params: WarcReaderParams, stats: Counter[str]) -> dict | None:
    """The document in one record, or None with the reason counted."""
    where = f"{path}@{offset}"
    rtype = fields.get("warc-type", "").lower()
    if rtype != "response":
        stats[f"skipped:{'revisit' if rtype == 'revisit' else 'not_response'}"] += 1
        return None
    if not fields.get("content-type", "").lower().startswith("application/http"):
        stats["skipped:not_http"] += 1
        return None
    status, content_type, body = _http_head(block)
    if params.only_ok_status and (status is None or not 200 <= status < 300):
        stats["skipped:http_status"] += 1
        return None
    if not content_type.split(";")[0].strip().lower().startswith(tuple(params.mime_types)):
        stats["skipped:mime_type"] += 1
        return None
    if not complete or len(block) > params.max_record_bytes:
        log.warning("%s: %s-byte record over max_record_bytes (%d), skipped", where,
                    fields.get("content-length"), params.max_record_bytes)
        stats["skipped:too_large"] += 1
        return None
    url = clean_uri(fields.get("warc-target-uri"))
    try:
        domain, problem = (urlsplit(url).hostname or "").lower(), "has no host"
    except ValueError as exc:
        domain, problem = "", f"does not parse ({exc})"
    if not domain:
        log.warning("%s: WARC-Target-URI %r %s; record skipped", where, url[:200], problem)
        stats["skipped:bad_url"] += 1
        return None
    charset_m = _HTTP_CHARSET.search(content_type)
    http_charset = charset_m.group(1) if charset_m else None
    if body[:2] == b"\x1f\x8b":
        # Stored still gzip-encoded (Content-Encoding: gzip kept as-is by some crawlers).
        body = _gunzip(body, params.max_record_bytes)
        if body is None:
            log.warning("%s: gzip-encoded body does not inflate, skipped", where)
            stats["skipped:bad_encoding"] += 1
            return None
        stats["gunzipped"] += 1
    utf16 = body.startswith((codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)) or "16" in (whatwg_codec(http_charset) or "")
    if not utf16 and looks_binary(body):
        # Labelled HTML but binary (images, archives served with the wrong type).
        log.warning("%s: binary body under Content-Type %s, skipped", where, content_type)
        stats["skipped:binary"] += 1
        return None
    date, valid = parse_warc_date(fields.get("warc-date"))
    if not valid:
        stats["bad_date"] += 1
    html, how = decode_html(body, http_charset)
    if http_charset and whatwg_codec(http_charset) is None:
        stats["charset_unknown"] += 1
        log.warning("%s: unknown charset %r; decoded as %s", where, http_charset[:40], how)
    if how.startswith("detected:"):
        stats["charset_detected"] += 1
    if how.endswith(":replaced"):
        stats["charset_replaced"] += 1
    return {
        "id": _record_id(fields.get("warc-record-id"), path, offset),
        "url": url,
        "domain": domain,
        "crawl_date": date,
        "source_file": path,
        "source_offset": offset,
        "html": html,
    }


def read_warc(path: str, params: WarcReaderParams, stats: Counter[str]) -> Iterator[Doc]:
    """Yield one document per usable HTML response in `path`; count every record skipped and every
    byte lost. Damage costs the records it touches, never the file: reading goes on after it."""
    try:
        stream = fsspec.open(path, "rb").open()
    except (OSError, ValueError) as exc:
        log.error("cannot open %s: %r", path, exc)
        stats["file_open_error"] += 1
        return
    records_before = stats["records"]
    with stream:
        try:
            head = stream.read(5)
            stream.seek(0)
            gz = head[:2] == b"\x1f\x8b" or (path.endswith(".gz") and not head.startswith(b"WARC/"))
            pieces = gzip_pieces(stream, path, stats) if gz else plain_pieces(stream)
            for offset, fields, block, complete in Framer(pieces, path, stats, params.max_record_bytes, not gz):
                try:
                    doc = _document(path, offset, fields, block, complete, params, stats)
                except Exception as exc:  # noqa: BLE001 - one record that breaks a parser never ends the file
                    log.error("%s@%d: record skipped: %r", path, offset, exc)
                    stats["skipped:record_error"] += 1
                    continue
                if doc is not None:
                    stats["documents"] += 1
                    yield doc
        except OSError as exc:  # the storage failed under us: nothing more can be read
            log.error("%s: unreadable after %d records: %r", path, stats["records"] - records_before, exc)
            stats["read_error"] += 1
            return
    if stats["records"] == records_before:
        log.error("%s: no WARC records found; is it a WARC file?", path)
        stats["not_warc"] += 1
