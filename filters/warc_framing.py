"""Framing WARC records out of damaged files, losing only what the damage touched.

`gzip_pieces` inflates gzip members one at a time and hands on only members whose CRC checks out; a
damaged member is dropped and reading resumes at the next gzip header that inflates. `Framer` cuts the
decompressed stream into records by Content-Length and checks that each record ends where the next
`WARC/` header (or the file) begins; when it does not, the header that does follow says whether the
length was too long or too short, and both records are kept. Every byte skipped is counted.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO

log = logging.getLogger("winnow.warc")

_HEADER = re.compile(rb"WARC/\d+\.\d+\r?\n")
_GZIP_MAGIC = b"\x1f\x8b\x08"
MAX_HEAD = 1 << 16  # a WARC or HTTP head longer than this is damage, not a header
_CHUNK = 1 << 20


def gzip_pieces(stream: BinaryIO, path: str, stats: Counter[str],
                hold: int = 32 << 20) -> Iterator[tuple[bytes, int, bool, bool | None]]:
    """Inflate concatenated gzip members; yield (data, member's compressed offset, data lost before it,
    CRC: True checked, None not yet, False failed).

    A member's output is held until its CRC checks out, so a damaged member of one record never
    reaches the framer. Past `hold` bytes (one huge member) output is passed on before its CRC to
    bound memory. A damaged member that holds several records (a file gzipped whole) passes on what
    it gave before the error, marked failed: the framer keeps only its records that match their
    WARC-Block-Digest.
    After damage, every later 1f 8b 08 is tried in turn until one inflates: a false match inside
    compressed data fails quickly and the scan goes on from the byte after it.
    """
    raw, base, pos, eof = b"", 0, 0, False  # raw[0] is at compressed offset `base`; a member starts at `pos`
    lost_from: int | None = None  # compressed offset where the current stretch of damage began

    def more() -> bool:
        nonlocal raw, base, pos, eof
        chunk = b"" if eof else stream.read(_CHUNK)
        if not chunk:
            eof = True
            return False
        raw, base, pos = raw[pos:] + chunk, base + pos, 0
        return True

    def resync(why: str) -> None:
        nonlocal pos, lost_from
        if lost_from is None:
            lost_from = base + pos
            stats["gzip_damaged"] += 1
            log.error("%s: gzip data damaged at compressed offset %d (%s); skipping to the next gzip member",
                      path, base + pos, why)
        found = raw.find(_GZIP_MAGIC, pos + 1)
        while found < 0:
            pos = max(len(raw) - 2, pos + 1)  # no member starts before here: let those bytes go
            if not more():
                break
            found = raw.find(_GZIP_MAGIC, pos)
        pos = found if found >= 0 else len(raw)

    def resumed(start: int) -> bool:
        nonlocal lost_from
        if lost_from is None:
            return False
        stats["gzip_bytes_skipped"] += start - lost_from
        log.warning("%s: resumed at the gzip member at offset %d after skipping %d damaged bytes",
                    path, start, start - lost_from)
        lost_from = None
        return True

    while pos < len(raw) or more():
        if len(raw) - pos < 1 << 17 and not eof:
            more()  # whole headers, for the checks below
        if not raw.startswith(_GZIP_MAGIC, pos):
            resync("no gzip header")
            continue
        if lost_from is not None and not _gzip_header_ok(raw, pos):
            resync("")  # a 1f 8b 08 inside other data
            continue
        start, inflate, out, held, fed, step = base + pos, zlib.decompressobj(31), [], 0, 0, 1 << 14
        whole = True  # all of this member's output is still here (none passed on early)
        try:
            while not inflate.eof:
                if pos + fed >= len(raw) and not more():
                    break
                piece = memoryview(raw)[pos + fed:pos + fed + step]
                data = inflate.decompress(piece)
                fed += len(piece) - len(inflate.unused_data)
                step = min(step * 4, _CHUNK)
                out.append(data)
                held += len(data)
                if held > hold:  # one huge member: pass it on unchecked rather than hold it all
                    yield b"".join(out), start, resumed(start), None
                    out, held, pos, fed, whole = [], 0, pos + fed, 0, False
        except zlib.error as exc:
            salvaged = _inflate_until_error(memoryview(raw)[pos:pos + fed + len(piece)]) if whole else b""
            if b"\nWARC/" in salvaged:  # many records in one member (a file gzipped whole): keep those before it
                yield salvaged, start, resumed(start), False
            resync(f"{exc} in the member at offset {start}")
            continue
        if not inflate.eof and lost_from is not None:  # found by the scan, never ended: not a member after all
            resync("")
            continue
        if not inflate.eof:  # the file ends inside this member: what inflated so far is sound
            log.error("%s: gzip stream truncated in the member at compressed offset %d", path, start)
            stats["gzip_truncated"] += 1
        yield b"".join(out), start, resumed(start), True
        pos += fed
    if lost_from is not None:
        stats["gzip_bytes_skipped"] += base + pos - lost_from
        log.warning("%s: no intact gzip member after compressed offset %d; %d bytes skipped",
                    path, lost_from, base + pos - lost_from)


def _inflate_until_error(member: memoryview) -> bytes:
    """What a damaged member inflates to before its error, in 4 KB steps (the failing step's output is lost)."""
    inflate, out = zlib.decompressobj(31), []
    try:
        for at in range(0, len(member), 4096):
            out.append(inflate.decompress(member[at:at + 4096]))
    except zlib.error:
        pass
    return b"".join(out)


def _gzip_header_ok(raw: bytes, pos: int) -> bool:
    """Whether the gzip header at `pos` is plausible (RFC 1952): no reserved flag bits, and a file name
    and comment that end soon. It keeps the scan after damage from trying every 1f 8b 08 at length."""
    flags = raw[pos + 3] if pos + 3 < len(raw) else 0
    if flags & 0xE0:
        return False
    at = pos + 10
    if flags & 4:  # FEXTRA: a two-byte length, then that many bytes
        at += 2 + int.from_bytes(raw[at:at + 2], "little")
    for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = raw.find(b"\0", at, at + 1024)
            if end < 0:
                return False
            at = end + 1
    return at < len(raw)


def plain_pieces(stream: BinaryIO) -> Iterator[tuple[bytes, int, bool, bool | None]]:
    offset = 0
    while chunk := stream.read(_CHUNK):
        yield chunk, offset, False, True
        offset += len(chunk)


def parse_head(head: bytes) -> dict[str, str]:
    """`Name: value` lines, names lower-cased, the first of a repeated name kept; the first line (and
    any folded continuation line) is no field."""
    fields: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and name[:1] not in " \t":
            key = name.strip().lower()
            if key not in fields:
                fields[key] = value.strip()
    return fields


def head_end(buf: bytes | bytearray, start: int, stop: int) -> tuple[int, int]:
    """(where the first blank line in buf[start:stop] begins, its length), or (-1, 0)."""
    crlf = buf.find(b"\r\n\r\n", start, stop)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else stop)
    if lf >= 0:
        return lf, 2
    return (crlf, 4) if crlf >= 0 else (-1, 0)


_BLANK = re.compile(rb"[\r\n]*")


class Framer:
    """Records out of decompressed pieces, each checked against where the next record begins.

    Yields (offset, fields, block, complete): `block` is the whole block, or only its first 64 KB
    when the record is over `max_block` (`complete` False), so its HTTP head can still be read.
    """

    def __init__(self, pieces: Iterator[tuple[bytes, int, bool, bool | None]], path: str, stats: Counter[str],
                 max_block: int, plain: bool):
        self.pieces, self.path, self.stats, self.max_block, self.plain = pieces, path, stats, max_block, plain
        self.buf, self.base, self.eof = bytearray(), 0, False  # buf[0] is at decompressed offset `base`
        self.starts: list[int] = []  # decompressed offset of each piece ...
        self.offsets: list[int] = []  # ... and its offset in the file (a gzip member's compressed offset)
        self.gaps: list[int] = []  # decompressed offsets right after data that was lost
        self.unchecked: list[tuple[int, int, bool]] = []  # data no gzip CRC vouched for: (from, to, failed)
        self.blank_free = (0, 0)  # a range of decompressed offsets known to hold no blank line
        self.bad_head_end = -1  # where the last head that did not parse ended

    def end(self) -> int:
        return self.base + len(self.buf)

    def fill(self, upto: int) -> bool:
        """Buffer data up to decompressed offset `upto`; False when the data ends before it."""
        while self.end() < upto:
            if self.eof:
                return False
            try:
                data, offset, gap, checked = next(self.pieces)
            except StopIteration:
                self.eof = True
                return False
            if gap:
                self.gaps.append(self.end())
            if checked is not True:
                self.unchecked.append((self.end(), self.end() + len(data), checked is False))
            self.starts.append(self.end())
            self.offsets.append(offset)
            self.buf += data
        return True

    def drop(self, upto: int) -> None:
        """Forget the data before decompressed offset `upto`."""
        if upto > self.base:
            del self.buf[:upto - self.base]
            self.base = upto
        i = bisect.bisect_right(self.starts, upto) - 1
        if i > 0:
            del self.starts[:i], self.offsets[:i]
        if self.gaps:
            self.gaps = [g for g in self.gaps if g > upto]
        if self.unchecked:
            self.unchecked = [r for r in self.unchecked if r[1] > upto]

    def source_offset(self, at: int) -> int:
        i = max(bisect.bisect_right(self.starts, at) - 1, 0)
        if not self.starts:
            return at
        return self.offsets[i] + (at - self.starts[i] if self.plain else 0)

    def header_at(self, at: int) -> tuple[dict[str, str], int] | None:
        """The fields and block start of a WARC header at `at`, if one parses there."""
        self.fill(at + MAX_HEAD)
        rel = at - self.base
        # A run of would-be headers with no blank line must not be rescanned for every one of them.
        free_from, free_to = self.blank_free
        start = free_to if free_from <= at < free_to else at
        end, sep = head_end(self.buf, start - self.base, rel + MAX_HEAD)
        if end < 0:
            self.blank_free = (min(free_from, at) if free_from <= at < free_to else at,
                               max(min(at + MAX_HEAD, self.end()) - 3, at))
            return None
        if self.base + end == self.bad_head_end:  # the tail of a head already found wanting
            return None
        inner = self.buf.rfind(b"\nWARC/", rel, end)
        if inner >= 0:  # a later line starts a header with the same blank line: that one is the record
            self.bad_head_end = -1 if _HEADER.match(self.buf, inner + 1) else self.base + end
            return None
        fields = parse_head(bytes(self.buf[rel:end]))
        length = fields.get("content-length", "")
        if not length.isdigit() or ("warc-type" not in fields and "warc-record-id" not in fields):
            self.bad_head_end = self.base + end
            return None
        return fields, at + end - rel + sep

    def find_header(self, start: int, stop: float, keep: bool = True) -> int | None:
        """The first offset in [start, stop) where a WARC header parses. Without `keep`, the data
        scanned past is forgotten as the scan goes, so memory stays bounded."""
        at = start
        while at < stop:
            more = self.fill(min(stop, at + _CHUNK) + 16)
            window_end = int(min(stop, self.end()))
            hits = [self.base + m.start() for m in _HEADER.finditer(self.buf, at - self.base, window_end - self.base)]
            for hit in hits:  # (header_at may grow the buffer: no regex may hold it meanwhile)
                if self.header_at(hit) is not None:
                    return hit
            at = max(window_end - 16, at + 1) if more else window_end
            if not keep:
                self.drop(at)
            if not more and at >= self.end():
                return None
        return None

    def boundary(self, at: int) -> bool:
        """Whether a record may end at `at`: the next header (after a blank line) or the data's end."""
        if not self.fill(at + 16) and at > self.end():
            return False
        rel = at - self.base
        if self.buf.startswith(b"\r\n\r\nWARC/", rel):
            return True
        nxt = _BLANK.match(self.buf, rel).end()
        return (nxt == len(self.buf) and self.eof) or self.buf.startswith(b"WARC/", nxt)

    def strip(self, block_start: int, at: int) -> int:
        """End of a block that a header at `at` follows: before its blank-line trailer."""
        rel = at - self.base
        end = rel
        while end > block_start - self.base and rel - end < 4 and self.buf[end - 1] in b"\r\n":
            end -= 1
        return self.base + end

    def skip_to_next(self, at: int, why: str) -> int | None:
        """Resynchronise: the next parsable header after `at`, counting the bytes in between."""
        found = self.find_header(at, float("inf"), keep=False)
        stop = found if found is not None else self.end()
        self.stats[why] += 1
        self.stats["bytes_skipped"] += stop - at
        log.warning("%s: %s at decompressed offset %d (near file offset %d); skipped %d bytes to %s", self.path,
                    why, at, self.source_offset(at), stop - at,
                    "the next record" if found is not None else "the end of the file")
        return found

    def __iter__(self) -> Iterator[tuple[int, dict[str, str], bytes, bool]]:
        pos: int | None = 0
        while pos is not None:
            self.fill(pos + MAX_HEAD)
            self.drop(pos)
            blank = _BLANK.match(self.buf).end()
            if blank:
                pos += blank
                self.drop(pos)
                continue
            if pos >= self.end():
                if self.eof:
                    return
                continue
            if not self.buf.startswith(b"WARC/"):
                pos = self.skip_to_next(pos, "bad_header")
                continue
            header = self.header_at(pos)
            if header is None:
                if self.eof and self.end() - pos < MAX_HEAD and head_end(self.buf, 0, MAX_HEAD)[0] < 0:
                    self.stats["truncated"] += 1
                    log.error("%s@%d: file ends inside a WARC header", self.path, self.source_offset(pos))
                    return
                pos = self.skip_to_next(pos + 1, "bad_header")
                continue
            self.stats["records"] += 1
            fields, block_start = header
            end = block_start + int(fields["content-length"])
            if end - block_start <= self.max_block and not self.gaps and not self.unchecked and self.fill(end + 9):
                rel = end - self.base
                if self.buf.startswith(b"\r\n\r\nWARC/", rel):  # the usual case, in short
                    with memoryview(self.buf) as view:
                        block = bytes(view[block_start - self.base:rel])
                    yield self.source_offset(pos), fields, block, True
                    pos = end + 4
                    continue
            pos = yield from self.frame(pos, fields, block_start)

    def emit(self, offset: int, pos: int, fields: dict[str, str], block: bytes):
        """Yield a record, unless it lies in data no CRC vouched for and fails its WARC-Block-Digest (or,
        in data from a member whose CRC failed, has none to pass)."""
        end = pos + len(block) + MAX_HEAD
        overlap = [failed for a, b, failed in self.unchecked if a < end and b > pos]
        if overlap:
            algo, _, value = fields.get("warc-block-digest", "").partition(":")
            if algo.strip().lower() == "sha1":
                intact = base64.b32encode(hashlib.sha1(block).digest()).decode() == value.strip().upper()
            else:
                intact = not any(overlap)
            if not intact:
                self.stats["damaged_record"] += 1
                log.error("%s@%d: record from damaged gzip data fails its WARC-Block-Digest (or has none); dropped",
                          self.path, offset)
                return
        yield offset, fields, block, True

    def frame(self, pos: int, fields: dict[str, str], block_start: int):
        """Yield the record at `pos` (if any of it is usable) and return where the next one starts."""
        offset, declared_end = self.source_offset(pos), block_start + int(fields["content-length"])
        window = block_start + self.max_block + MAX_HEAD
        self.fill(min(declared_end, window) + 16)
        gap = self.gaps and next((g for g in self.gaps if pos < g < min(declared_end, window)), None)
        if gap:  # part of this record sat in a damaged gzip member
            self.stats["damaged_record"] += 1
            log.error("%s@%d: record lost to the damaged gzip data after it", self.path, offset)
            return gap
        if declared_end <= window:
            if self.boundary(declared_end):
                block = bytes(self.buf[block_start - self.base:declared_end - self.base])
                yield from self.emit(offset, pos, fields, block)
                return declared_end
            found = self.find_header(block_start, window)
            if declared_end > self.end() and found is None:
                self.stats["truncated"] += 1
                log.error("%s@%d: file ends inside this record (%d of %d bytes); it is lost", self.path, offset,
                          self.end() - block_start, declared_end - block_start)
                return None
            rel = declared_end - self.base
            trailer = self.buf[rel:rel + 4] == b"\r\n\r\n"
            lost_between = found is not None and any(declared_end <= g <= found for g in self.gaps)
            if (found is None or found > declared_end) and (trailer or lost_between or found is None):
                # The length is right (its trailer is in place, or data after it was lost): what follows
                # is a broken header or the rest of a damaged record, not more of this one.
                yield from self.emit(offset, pos, fields, bytes(self.buf[block_start - self.base:rel]))
                return self.skip_to_next(declared_end + 4 if trailer else declared_end, "bad_header")
            end = self.strip(block_start, found)
            self.stats["bad_content_length"] += 1
            log.warning("%s@%d: Content-Length %d, but the next record starts after %d bytes; the record is cut "
                        "there", self.path, offset, declared_end - block_start, end - block_start)
            yield from self.emit(offset, pos, fields, bytes(self.buf[block_start - self.base:end - self.base]))
            return found
        # Over max_block: keep only the head, unless the length is wrong and a record starts inside.
        found = self.find_header(block_start, window)
        if found is not None:
            self.stats["bad_content_length"] += 1
            end = self.strip(block_start, found)
            log.warning("%s@%d: Content-Length %d, but the next record starts after %d bytes; the record is cut "
                        "there", self.path, offset, declared_end - block_start, end - block_start)
            yield from self.emit(offset, pos, fields, bytes(self.buf[block_start - self.base:end - self.base]))
            return found
        yield offset, fields, bytes(self.buf[block_start - self.base:block_start - self.base + MAX_HEAD]), False
        found = self.find_header(window, declared_end, keep=False)
        if found is not None:
            self.stats["bad_content_length"] += 1
            log.warning("%s@%d: Content-Length %d, but the next record starts inside it", self.path, offset,
                        declared_end - block_start)
            return found
        if not self.fill(declared_end):
            self.stats["truncated"] += 1
            log.error("%s@%d: file ends inside this record", self.path, offset)
            return None
        self.drop(declared_end)
        return declared_end if self.boundary(declared_end) else self.skip_to_next(declared_end, "bad_header")
