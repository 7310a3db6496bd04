"""WARC reading: WARC files in, one document per HTML response record out.

Real archives are damaged in ways a strict reader turns into lost data: a gzip member with flipped
bytes, a file cut short, a Content-Length that is off, a header that does not parse, a URL that
does not either. So the reader does its own framing, in three layers that each lose as little as
they can and count what they lose:

1. `_gzip_pieces` inflates gzip members one at a time and hands on only members whose CRC checks
   out. A damaged member is dropped, and reading resumes at the next gzip header (1f 8b 08) that
   inflates; the bytes in between are counted.
2. `_Framer` cuts the decompressed stream into records by Content-Length, and checks that each
   record ends where the next `WARC/` header (or the file) begins. When it does not, the header that
   does follow says whether the length was too long or too short, and both records are kept.
3. `read_warc` parses the HTTP head and decodes the page by the WHATWG encoding rules.

Old and odd files read as before: WARC/0.17 and 0.18, invalid dates, `<...>`-wrapped target URIs,
LF-only header lines, gzip or plain.
"""

from __future__ import annotations

import bisect
import codecs
import hashlib
import logging
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import BinaryIO, Literal
from urllib.parse import urlsplit

import cchardet
import fsspec
import pyarrow as pa
from resiliparse.parse.encoding import detect_encoding

from filters.base import Doc, StepParams

log = logging.getLogger("winnow.warc")

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.I)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2}))?")
_HEADER = re.compile(rb"WARC/\d+\.\d+\r?\n")
_HTTP_CHARSET = re.compile(r"""charset\s*=\s*["']?([^"';\s]+)""", re.I)
_GZIP_MAGIC = b"\x1f\x8b\x08"
_MAX_HEAD = 1 << 16  # a WARC or HTTP head longer than this is damage, not a header
_CHUNK = 1 << 20


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


# ---------------------------------------------------------------- encodings
# The WHATWG Encoding Standard's labels (encoding.spec.whatwg.org), as browsers read them, mapped to
# Python codecs. They differ from Python's own names where it matters: `iso-8859-1`, `latin1` and
# `ascii` mean windows-1252, `euc-kr` means windows-949, `gb2312` means GBK/GB18030.
_WHATWG = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "cp866": "866 cp866 csibm866 ibm866",
    "iso8859_2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2",
    "iso8859_3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3",
    "iso8859_4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4",
    "iso8859_5": "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 iso_8859-5:1988",
    "iso8859_6": "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e "
                 "iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987",
    "iso8859_7": "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597 "
                 "iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    "iso8859_8": "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598 "
                 "iso_8859-8 iso_8859-8:1988 visual csiso88598i iso-8859-8-i logical",
    "iso8859_10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso8859_13": "iso-8859-13 iso8859-13 iso885913",
    "iso8859_14": "iso-8859-14 iso8859-14 iso885914",
    "iso8859_15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "iso8859_16": "iso-8859-16",
    "koi8_r": "cskoi8r koi koi8 koi8-r koi8_r",
    "koi8_u": "koi8-ru koi8-u",
    "mac_roman": "csmacintosh mac macintosh x-mac-roman",
    "cp874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "cp1250": "cp1250 windows-1250 x-cp1250",
    "cp1251": "cp1251 windows-1251 x-cp1251",
    "cp1252": "ansi_x3.4-1968 ascii cp1252 cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 iso88591 "
              "iso_8859-1 iso_8859-1:1987 l1 latin1 us-ascii windows-1252 x-cp1252",
    "cp1253": "cp1253 windows-1253 x-cp1253",
    "cp1254": "cp1254 csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 latin5 "
              "windows-1254 x-cp1254",
    "cp1255": "cp1255 windows-1255 x-cp1255",
    "cp1256": "cp1256 windows-1256 x-cp1256",
    "cp1257": "cp1257 windows-1257 x-cp1257",
    "cp1258": "cp1258 windows-1258 x-cp1258",
    "mac_cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "gb18030": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk gb18030",
    "big5hkscs": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc_jp": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "iso2022_jp": "csiso2022jp iso-2022-jp",
    "cp932": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "cp949": "cseuckr csksc56011987 euc-kr iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601 "
             "windows-949",
    "utf-16-be": "unicodefffe utf-16be",
    "utf-16-le": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16 utf-16le",
}
WHATWG_LABELS = {label: codec for codec, labels in _WHATWG.items() for label in labels.split()}
# What cchardet reports that is not a WHATWG label.
WHATWG_LABELS.update({"uhc": "cp949", "cp949": "cp949", "euc-tw": "big5hkscs", "iso-2022-kr": "cp949",
                      "iso-2022-cn": "gb18030", "mac-cyrillic": "mac_cyrillic", "ibm855": "cp855"})
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_BE, "utf-16-be"), (codecs.BOM_UTF16_LE, "utf-16-le"))


def whatwg_codec(label: str | None) -> str | None:
    """The Python codec for an encoding label as a browser reads it, or None for an unknown label."""
    return WHATWG_LABELS.get((label or "").strip().strip("\"'").lower()) if label else None


def _decode_almost(body: bytes, codec: str) -> str | None:
    """Decode with replacement when the bytes are almost valid in `codec`: fewer bad sequences than good
    non-ASCII characters. A page in another encoding read as UTF-8 has almost no valid sequences."""
    text = body.decode(codec, "replace")
    bad = text.count("\ufffd") - body.count(b"\xef\xbf\xbd")
    good = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if bad <= good else None


def decode_html(body: bytes, http_charset: str | None) -> tuple[str, str]:
    """Decode a page as a browser would (WHATWG): byte order mark, HTTP charset, `<meta charset>`,
    then detection. A declared charset the bytes almost fit (a stray byte in a UTF-8 page) still
    wins, with U+FFFD for the bad bytes. Returns (text, how), `how` naming the codec used."""
    for bom, codec in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(codec, "replace"), codec
    declared = [whatwg_codec(http_charset)]
    meta = _META_CHARSET.search(body[:4096])
    if meta:
        codec = whatwg_codec(meta.group(1).decode("ascii", "ignore"))
        # A meta tag readable as ASCII cannot be UTF-16: WHATWG reads it as UTF-8.
        declared.append("utf-8" if codec and codec.startswith("utf-16") else codec)
    for codec in filter(None, declared):
        try:
            return body.decode(codec), codec
        except UnicodeDecodeError:
            text = _decode_almost(body, codec)
            if text is not None:
                return text, f"{codec}:replaced"
    try:
        return body.decode("utf-8"), "detected:utf-8"
    except UnicodeDecodeError:
        pass
    text = _decode_almost(body, "utf-8")
    if text is not None:
        return text, "detected:utf-8:replaced"
    return _detect(body)


def _detect(body: bytes) -> tuple[str, str]:
    """Byte-level detection: resiliparse's guess, and cchardet's when that guess does not fit the bytes
    (resiliparse takes EUC-KR for UTF-8; cchardet knows Korean but guesses wildly on mostly-ASCII pages)."""
    first = whatwg_codec(detect_encoding(body)) or "cp1252"
    for guess in (first, cchardet.detect(body[:65536]).get("encoding")):
        codec = whatwg_codec(guess)
        if codec:
            try:
                return body.decode(codec), f"detected:{codec}"
            except (UnicodeDecodeError, LookupError):
                continue
    return body.decode(first, "replace"), f"detected:{first}:replaced"


# ---------------------------------------------------------------- gzip members
def _gzip_pieces(stream: BinaryIO, path: str, stats: Counter[str],
                 hold: int = 32 << 20) -> Iterator[tuple[bytes, int, bool]]:
    """Inflate concatenated gzip members; yield (data, member's compressed offset, data lost before it).

    A member's output is held until its CRC checks out, so a damaged member never reaches the
    framer; past `hold` bytes (one huge member) it is passed on unchecked to bound memory. After
    damage, every later 1f 8b 08 is tried in turn until one inflates: a false match inside
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
                    yield b"".join(out), start, resumed(start)
                    out, held, pos, fed = [], 0, pos + fed, 0
        except zlib.error as exc:
            resync(f"{exc} in the member at offset {start}")
            continue
        if not inflate.eof and lost_from is not None:  # found by the scan, never ended: not a member after all
            resync("")
            continue
        if not inflate.eof:  # the file ends inside this member: what inflated so far is sound
            log.error("%s: gzip stream truncated in the member at compressed offset %d", path, start)
            stats["gzip_truncated"] += 1
        yield b"".join(out), start, resumed(start)
        pos += fed
    if lost_from is not None:
        stats["gzip_bytes_skipped"] += base + pos - lost_from
        log.warning("%s: no intact gzip member after compressed offset %d; %d bytes skipped",
                    path, lost_from, base + pos - lost_from)


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


def _plain_pieces(stream: BinaryIO) -> Iterator[tuple[bytes, int, bool]]:
    offset = 0
    while chunk := stream.read(_CHUNK):
        yield chunk, offset, False
        offset += len(chunk)


# ---------------------------------------------------------------- records
def _parse_head(head: bytes) -> dict[str, str]:
    """`Name: value` lines, names lower-cased, the first of a repeated name kept; the first line (and
    any folded continuation line) is no field."""
    fields: dict[str, str] = {}
    for line in head.decode("utf-8", "replace").split("\n")[1:]:
        name, colon, value = line.partition(":")
        if colon and name[:1] not in (" ", "\t"):
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def _head_end(buf: bytes | bytearray, start: int, stop: int) -> tuple[int, int]:
    """(where the first blank line in buf[start:stop] begins, its length), or (-1, 0)."""
    crlf = buf.find(b"\r\n\r\n", start, stop)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else stop)
    if lf >= 0:
        return lf, 2
    return (crlf, 4) if crlf >= 0 else (-1, 0)


_BLANK = re.compile(rb"[\r\n]*")
_SHORT_BLANK = re.compile(rb"[\r\n]{0,8}")


class _Framer:
    """Records out of decompressed pieces, each checked against where the next record begins.

    Yields (offset, fields, block, complete): `block` is the whole block, or only its first 64 KB
    when the record is over `max_block` (`complete` False), so its HTTP head can still be read.
    """

    def __init__(self, pieces: Iterator[tuple[bytes, int, bool]], path: str, stats: Counter[str],
                 max_block: int, plain: bool):
        self.pieces, self.path, self.stats, self.max_block, self.plain = pieces, path, stats, max_block, plain
        self.buf, self.base, self.eof = bytearray(), 0, False  # buf[0] is at decompressed offset `base`
        self.starts: list[int] = []  # decompressed offset of each piece ...
        self.offsets: list[int] = []  # ... and its offset in the file (a gzip member's compressed offset)
        self.gaps: list[int] = []  # decompressed offsets right after data that was lost
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
                data, offset, gap = next(self.pieces)
            except StopIteration:
                self.eof = True
                return False
            if gap:
                self.gaps.append(self.end())
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
        self.gaps = [g for g in self.gaps if g > upto]

    def source_offset(self, at: int) -> int:
        i = max(bisect.bisect_right(self.starts, at) - 1, 0)
        if not self.starts:
            return at
        return self.offsets[i] + (at - self.starts[i] if self.plain else 0)

    def header_at(self, at: int) -> tuple[dict[str, str], int] | None:
        """The fields and block start of a WARC header at `at`, if one parses there."""
        self.fill(at + _MAX_HEAD)
        rel = at - self.base
        # A run of would-be headers with no blank line must not be rescanned for every one of them.
        free_from, free_to = self.blank_free
        start = free_to if free_from <= at < free_to else at
        end, sep = _head_end(self.buf, start - self.base, rel + _MAX_HEAD)
        if end < 0:
            self.blank_free = (min(free_from, at) if free_from <= at < free_to else at,
                               max(min(at + _MAX_HEAD, self.end()) - 3, at))
            return None
        if self.base + end == self.bad_head_end:  # the tail of a head already found wanting
            return None
        inner = self.buf.rfind(b"\nWARC/", rel, end)
        if inner >= 0:  # a later line starts a header with the same blank line: that one is the record
            self.bad_head_end = -1 if _HEADER.match(self.buf, inner + 1) else self.base + end
            return None
        fields = _parse_head(bytes(self.buf[rel:end]))
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
        nxt = _SHORT_BLANK.match(self.buf, rel).end()
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
            self.fill(pos + _MAX_HEAD)
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
                if self.eof and self.end() - pos < _MAX_HEAD and _head_end(self.buf, 0, _MAX_HEAD)[0] < 0:
                    self.stats["truncated"] += 1
                    log.error("%s@%d: file ends inside a WARC header", self.path, self.source_offset(pos))
                    return
                pos = self.skip_to_next(pos + 1, "bad_header")
                continue
            self.stats["records"] += 1
            pos = yield from self.frame(pos, *header)

    def frame(self, pos: int, fields: dict[str, str], block_start: int):
        """Yield the record at `pos` (if any of it is usable) and return where the next one starts."""
        offset, declared_end = self.source_offset(pos), block_start + int(fields["content-length"])
        window = block_start + self.max_block + _MAX_HEAD
        self.fill(min(declared_end, window) + 16)
        gap = self.gaps and next((g for g in self.gaps if pos < g < min(declared_end, window)), None)
        if gap:  # part of this record sat in a damaged gzip member
            self.stats["damaged_record"] += 1
            log.error("%s@%d: record lost to the damaged gzip data after it", self.path, offset)
            return gap
        if declared_end <= window:
            if self.boundary(declared_end):
                yield offset, fields, bytes(self.buf[block_start - self.base:declared_end - self.base]), True
                return declared_end
            found = self.find_header(block_start, window)
            if declared_end > self.end() and found is None:
                self.stats["truncated"] += 1
                log.error("%s@%d: file ends inside this record (%d of %d bytes); it is lost", self.path, offset,
                          self.end() - block_start, declared_end - block_start)
                return None
            rel = declared_end - self.base
            if ((found is None or found > declared_end) and self.buf[rel:rel + 4] == b"\r\n\r\n"
                    and re.search(rb"WARC|(?i:content-length)", self.buf[rel + 4:rel + 2048])):
                # The length is right (its trailer is in place); the header after it is what is broken.
                yield offset, fields, bytes(self.buf[block_start - self.base:rel]), True
                return self.skip_to_next(declared_end + 4, "bad_header")
            if found is None:
                yield offset, fields, bytes(self.buf[block_start - self.base:rel]), True
                return self.skip_to_next(declared_end, "bad_header")
            end = self.strip(block_start, found)
            self.stats["bad_content_length"] += 1
            log.warning("%s@%d: Content-Length %d, but the next record starts after %d bytes; the record is cut "
                        "there", self.path, offset, declared_end - block_start, end - block_start)
            yield offset, fields, bytes(self.buf[block_start - self.base:end - self.base]), True
            return found
        # Over max_block: keep only the head, unless the length is wrong and a record starts inside.
        found = self.find_header(block_start, window)
        if found is not None:
            self.stats["bad_content_length"] += 1
            end = self.strip(block_start, found)
            log.warning("%s@%d: Content-Length %d, but the next record starts after %d bytes; the record is cut "
                        "there", self.path, offset, declared_end - block_start, end - block_start)
            yield offset, fields, bytes(self.buf[block_start - self.base:end - self.base]), True
            return found
        yield offset, fields, bytes(self.buf[block_start - self.base:block_start - self.base + _MAX_HEAD]), False
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


# ---------------------------------------------------------------- documents
def _http_head(block: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """(status, headers, body) of an HTTP response block; status None when the status line does not parse."""
    end, sep = _head_end(block, 0, _MAX_HEAD)
    head, body = (block[:end], block[end + sep:]) if end >= 0 else (block[:_MAX_HEAD], b"")
    first = head.split(b"\n", 1)[0].split(None, 2)
    status = int(first[1]) if len(first) > 1 and first[0].upper().startswith(b"HTTP/") and first[1].isdigit() else None
    return status, _parse_head(head), body


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
    status, http, body = _http_head(block)
    if params.only_ok_status and (status is None or not 200 <= status < 300):
        stats["skipped:http_status"] += 1
        return None
    content_type = http.get("content-type", "")
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
        stats["bad_url"] += 1
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
    if b"\x00" in body[:8192] and not utf16:
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
    records_before, damage_before = stats["records"], stats["gzip_damaged"]
    with stream:
        try:
            head = stream.read(5)
            stream.seek(0)
            gz = head[:2] == b"\x1f\x8b" or (path.endswith(".gz") and not head.startswith(b"WARC/"))
            pieces = _gzip_pieces(stream, path, stats) if gz else _plain_pieces(stream)
            for offset, fields, block, complete in _Framer(pieces, path, stats, params.max_record_bytes, not gz):
                try:
                    doc = _document(path, offset, fields, block, complete, params, stats)
                except Exception as exc:  # noqa: BLE001 - one record that breaks a parser never ends the file
                    log.error("%s@%d: record skipped: %r", path, offset, exc)
                    stats["record_error"] += 1
                    continue
                if doc is not None:
                    stats["documents"] += 1
                    yield doc
        except OSError as exc:  # the storage failed under us: nothing more can be read
            log.error("%s: unreadable after %d records: %r", path, stats["records"] - records_before, exc)
            stats["read_error"] += 1
            return
    if stats["records"] == records_before and stats["gzip_damaged"] == damage_before:
        log.error("%s: no WARC records found; is it a WARC file?", path)
        stats["not_warc"] += 1
