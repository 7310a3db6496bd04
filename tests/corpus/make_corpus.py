"""Regenerate the damaged-input corpus in this folder, byte for byte, from data/sample.

`base.warc.gz` is twelve real records (request, response, metadata for four pages) taken unchanged
from data/sample/cc-2020-34-resiliparse.warc.gz (Apache-2.0, see data/sample/README.md), one gzip
member per record as Common Crawl writes them; `base.warc` is the same records uncompressed. Every
other file is one of those two with one kind of damage, made here; `encodings.warc` holds pages
written for this corpus. README.md says what each file is and what the reader must make of it.
Run: `.venv/bin/python tests/corpus/make_corpus.py [OUT_DIR]` (default: this folder).
"""

from __future__ import annotations

import gzip
import re
import sys
import uuid
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / "data" / "sample" / "cc-2020-34-resiliparse.warc.gz"
# Members of SOURCE to keep: the request, response and metadata records of four small pages.
KEEP = [10, 11, 12, 13, 14, 15, 34, 35, 36, 46, 47, 48]


def members(data: bytes) -> list[bytes]:
    """The gzip members of `data`, compressed, in order."""
    out, pos = [], 0
    while pos < len(data):
        inflate = zlib.decompressobj(31)
        inflate.decompress(data[pos:])
        end = len(data) - len(inflate.unused_data)
        out.append(data[pos:end])
        pos = end
    return out


def gz(record: bytes) -> bytes:
    return gzip.compress(record, compresslevel=6, mtime=0)


def set_header(record: bytes, name: bytes, value: bytes) -> bytes:
    head, sep, block = record.partition(b"\r\n\r\n")
    head, n = re.subn(rb"(?m)^" + name + rb": [^\r\n]*", name + b": " + value, head)
    assert n == 1, name
    return head + sep + block


def warc_record(uri: str, http: bytes) -> bytes:
    rid = uuid.uuid5(uuid.NAMESPACE_URL, uri)
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Date: 2024-01-02T03:04:05Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{rid}>\r\nWARC-Target-URI: {uri}\r\n"
            "Content-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def http_page(body: bytes, content_type: str = "text/html") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


KOREAN = "서울은 대한민국의 수도이며 가장 큰 도시이다. 한강이 도시를 가로질러 흐르고, 궁궐과 시장이 많다."
GERMAN = '<html><head><meta charset="utf-8"><title>Grüße</title></head><body><p>Schöne Grüße aus Köln.</p>'


def encoding_pages() -> list[tuple[str, bytes]]:
    """(uri, HTTP response) pairs: one encoding case each; README.md lists what each must decode to."""
    return [
        ("http://ko.example/euc-kr", http_page(f"<html><body><p>{KOREAN}</p></body></html>".encode("euc-kr"))),
        ("http://latin1.example/cp1252", http_page(
            "<p>\u201cQuoted\u201d \u2013 5 \u20ac, caf\u00e9</p>".encode("cp1252"), "text/html; charset=iso-8859-1")),
        ("http://utf8.example/stray-byte", http_page(GERMAN.encode() + b"<p>Preis: 5\xe9</p></body></html>")),
        ("http://unknown.example/", http_page("<p>caf\u00e9 cr\u00e8me br\u00fbl\u00e9e</p>".encode("latin-1"),
                                              "text/html; charset=x-no-such-charset")),
        ("http://bom.example/", http_page(b"\xef\xbb\xbf<p>Stra\xc3\x9fe</p>", "text/html; charset=windows-1252")),
        ("http://binary.example/", http_page(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)),
        ("http://[::1/broken", http_page(b"<p>a page behind a URL that does not parse</p>")),
        ("http://[evil]/", http_page(b"<p>another one</p>")),
        ("http://fine.example/", http_page(b"<html><body><p>An ordinary page.</p></body></html>")),
    ]


def build() -> dict[str, bytes]:
    parts = members(SOURCE.read_bytes())
    records = [gzip.decompress(parts[i]) for i in KEEP]
    base_gz = [gz(r) for r in records]
    files = {"base.warc.gz": b"".join(base_gz), "base.warc": b"".join(records)}

    bad = list(records)
    bad[1] = set_header(bad[1], b"WARC-Target-URI", b"http://[::1/broken")
    bad[4] = set_header(bad[4], b"WARC-Target-URI", b"http://[evil]/")
    files["bad-url.warc.gz"] = b"".join(gz(r) for r in bad)

    # 64 bytes inverted in the middle of the member that holds the second page (record 4).
    flipped = list(base_gz)
    mid = len(flipped[4]) // 2 - 32
    flipped[4] = flipped[4][:mid] + bytes(b ^ 0xFF for b in flipped[4][mid:mid + 64]) + flipped[4][mid + 64:]
    files["flipped-member.warc.gz"] = b"".join(flipped)

    junk = bytes((i * 37 + 11) % 256 for i in range(200))
    files["garbage-between.warc.gz"] = b"".join(base_gz[:6]) + junk + b"".join(base_gz[6:])

    whole = b"".join(base_gz)
    cut = sum(map(len, base_gz[:10])) + len(base_gz[10]) // 2  # inside the last page's response
    files["truncated.warc.gz"] = whole[:cut]

    # Content-Length of the first response 300 bytes too long: it runs into the metadata record after it.
    long_ = list(records)
    declared = int(re.search(rb"Content-Length: (\d+)", long_[1]).group(1))
    long_[1] = set_header(long_[1], b"Content-Length", str(declared + 300).encode())
    files["cl-too-long.warc"] = b"".join(long_)

    # Content-Length of the second response cut to 2,000 bytes: the page would end in its first lines.
    short = list(records)
    short[4] = set_header(short[4], b"Content-Length", b"2000")
    block = short[4].partition(b"\r\n\r\n")[2]
    assert block[2000:2004] != b"\r\n\r\n"  # a cut on a blank line would read as a correct length
    files["cl-too-short.warc"] = b"".join(short)

    broken = list(records)
    broken[6] = b"WRAC" + broken[6][4:]  # the third page's request record: no WARC/ line
    broken[8] = set_header(broken[8], b"Content-Length", b"12x4")  # its metadata record: no usable length
    files["broken-header.warc"] = b"".join(broken)

    files["encodings.warc"] = b"".join(warc_record(uri, http) for uri, http in encoding_pages())
    return files


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out.mkdir(parents=True, exist_ok=True)
    for name, data in build().items():
        (out / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
