"""WARC reading: WARC files in, one document per HTML response record out.

FastWARC (from resiliparse) parses records several times faster than warcio, which
datatrove's WarcReader uses, and its quirks mode reads the old and broken files found in
real archives: WARC/0.17 and 0.18, invalid dates, `<...>`-wrapped target URIs. What it does
not do is say that a gzip stream ended early, so we check each payload against its
declared length: a short one marks the point where a truncated file breaks.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import BinaryIO, Literal
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


class GzipMembers:
    """A reader over concatenated gzip members that notices when the last one is cut short.

    FastWARC decompresses on its own, but stops silently at a truncated member. Feeding it
    decompressed bytes from here costs little (zlib does the work), tells us whether the file
    ended cleanly, so lost records are reported instead of vanishing, and maps each record back
    to the compressed offset of its gzip member: the offset Common Crawl's index uses.
    """

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.inflate = zlib.decompressobj(31)
        self.member_started = False
        self.truncated = False
        self.buffer = b""
        self.done = False
        self.raw_pos = 0  # compressed bytes consumed
        self.out_pos = 0  # decompressed bytes produced
        self.read_pos = 0  # decompressed bytes handed out
        self.member_starts: list[tuple[int, int]] = [(0, 0)]  # (decompressed, compressed) offsets

    def _fill(self) -> None:
        chunk = self.raw.read(1 << 16)
        if not chunk:
            self.truncated = self.member_started and not self.inflate.eof
            self.done = True
            return
        chunk_start = self.raw_pos
        self.raw_pos += len(chunk)
        out = []
        while chunk:
            self.member_started = True
            data = self.inflate.decompress(chunk)
            out.append(data)
            self.out_pos += len(data)
            if not self.inflate.eof:
                break
            consumed = len(chunk) - len(self.inflate.unused_data)
            chunk_start += consumed
            chunk = self.inflate.unused_data
            self.member_starts.append((self.out_pos, chunk_start))
            self.inflate = zlib.decompressobj(31)
            self.member_started = False
        self.buffer += b"".join(out)

    def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.buffer) < size):
            self._fill()
        if size < 0:
            size = len(self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        self.read_pos += len(data)
        return data

    def tell(self) -> int:
        return self.read_pos

    def compressed_offset(self, position: int) -> int:
        """The compressed offset of the gzip member holding decompressed `position`."""
        i = bisect.bisect_right(self.member_starts, (position, float("inf"))) - 1
        return self.member_starts[max(i, 0)][1]


def _gunzip(body: bytes, limit: int) -> bytes | None:
    try:
        inflate = zlib.decompressobj(31)
        out = inflate.decompress(body, limit)
        return None if inflate.unconsumed_tail else out
    except zlib.error:
        return None


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
        source: BinaryIO | GzipMembers = stream
        if stream.read(2) == b"\x1f\x8b":
            source = GzipMembers(stream)
        stream.seek(0)
        records = ArchiveIterator(source, parse_http=True, quirks_mode=True, strict_mode=False)
        while True:
            try:
                record = next(records)
            except StopIteration:
                if isinstance(source, GzipMembers) and source.truncated:
                    log.error("%s: gzip stream truncated after %d records; the rest is lost",
                              path, stats["records"])
                    stats["truncated"] += 1
                elif not stats["records"]:
                    log.error("%s: no WARC records found; is it a WARC file?", path)
                    stats["not_warc"] += 1
                return
            except Exception as exc:  # noqa: BLE001 - a corrupt stream ends the file, not the job
                log.error("%s: unreadable after %d records: %r", path, stats["records"], exc)
                stats["read_error"] += 1
                return
            stats["records"] += 1
            offset = record.stream_pos
            if isinstance(source, GzipMembers):
                offset = source.compressed_offset(offset)
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
            try:
                body = record.reader.read()
            except Exception as exc:  # noqa: BLE001 - corrupt compressed data mid-record
                log.error("%s@%d: unreadable record body: %r; stopping this file", path, offset, exc)
                stats["read_error"] += 1
                return
            if len(body) < record.content_length:
                log.error("%s@%d: truncated (%d of %d bytes); records after this point are lost",
                          path, offset, len(body), record.content_length)
                stats["truncated"] += 1
                return
            if body[:2] == b"\x1f\x8b":
                # Stored still gzip-encoded (Content-Encoding: gzip kept as-is by some crawlers).
                body = _gunzip(body, params.max_record_bytes)
                if body is None:
                    stats["skipped:bad_encoding"] += 1
                    continue
                stats["gunzipped"] += 1
            if b"\x00" in body[:8192]:
                # Labelled HTML but binary (images, archives served with the wrong type).
                log.warning("%s@%d: binary body under Content-Type %s, skipped", path, offset, content_type)
                stats["skipped:binary"] += 1
                continue
            url = clean_uri(record.headers.get("WARC-Target-URI"))
            raw_date = record.headers.get("WARC-Date")
            date, valid = parse_warc_date(raw_date)
            if not valid:
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
