"""WARC reading on every real file in ../shared/data/warc, broken ones included."""

from __future__ import annotations

import gzip
import zlib
from collections import Counter

import pytest

from filters.warc import WarcReaderParams, clean_uri, decode_html, parse_warc_date, read_warc
from tests.conftest import SHARED, WARC


def read(path, **params):
    stats: Counter[str] = Counter()
    docs = list(read_warc(str(path), WarcReaderParams(**params), stats))
    return docs, stats


@pytest.mark.parametrize("path", sorted(p for p in WARC.rglob("*") if p.is_file() and "LICENSE" not in p.name),
                         ids=lambda p: p.name)
def test_every_real_file_reads_without_raising(path):
    docs, stats = read(path)
    assert stats["records"] + stats["not_warc"] + stats["read_error"] > 0
    for doc in docs:
        assert doc["id"] and doc["url"] and doc["html"]
        assert doc["source_file"] == str(path)


def test_warc_0_17_with_non_html_and_status_skips():
    docs, stats = read(WARC / "aut-archiveit" / "example.warc.gz")
    assert len(docs) == 94 == stats["documents"]
    assert stats["records"] == 822
    # Every record is either a document or counted under a skip reason.
    skipped = sum(v for k, v in stats.items() if k.startswith("skipped:"))
    assert skipped + stats["documents"] == stats["records"]
    assert stats["skipped:mime_type"] == 120 and stats["skipped:http_status"] == 47


def test_revisit_and_non_html_mime_types_are_skipped_and_counted():
    docs, stats = read(WARC / "aut-archiveit" / "example.pdf.warc.gz")
    assert stats["skipped:revisit"] == 2
    assert stats["skipped:mime_type"] == 31
    # Its one HTML page is stored still gzip-encoded: decoded, not mistaken for binary.
    assert stats["gunzipped"] == 1 and len(docs) == 1 and "<html" in docs[0]["html"]
    docs, stats = read(WARC / "aut-archiveit" / "example.docs.warc.gz")
    assert docs == [] and stats["skipped:mime_type"] == 9


def test_warc_0_18_with_invalid_dates_and_euc_jp_pages():
    docs, stats = read(WARC / "resiliparse" / "clueweb-quirk.warc.gz")
    assert len(docs) == 29
    assert stats["bad_date"] == 29  # `2008-10-294T05:21:46-0700`: counted, date part kept
    assert all(d["crawl_date"].year == 2008 for d in docs)
    # The pages declare EUC-JP; decoded text must be Japanese, not mojibake.
    assert any("\u3002" in d["html"] or "\u306e" in d["html"] for d in docs)


def test_angle_bracket_uris_are_unwrapped():
    docs, _ = read(WARC / "dolma-wget" / "sample-0000.warc.gz")
    assert len(docs) == 22
    assert all(d["url"].startswith("https://") and not d["url"].endswith(">") for d in docs)
    assert clean_uri("<https://a.example/x>") == "https://a.example/x"


def test_uncompressed_warc_reads():
    docs, stats = read(WARC / "cc-2014-npm-warc" / "CC-MAIN-20140820021334-00006-ip-10-180-136-8.ec2.internal.warc")
    assert len(docs) == 3 and stats["records"] == 13


def test_truncated_gzip_is_reported_not_raised():
    docs, stats = read(WARC / "resiliparse" / "clipped.warc.gz")
    assert docs == []  # its only record is cut in the middle
    assert stats["truncated"] == 1


def test_truncated_file_keeps_every_record_before_the_break(tmp_path):
    full = (WARC / "aut-archiveit" / "example.warc.gz").read_bytes()
    clipped = tmp_path / "clipped.warc.gz"
    clipped.write_bytes(full[: len(full) // 2])
    whole, _ = read(WARC / "aut-archiveit" / "example.warc.gz")
    docs, stats = read(clipped)
    assert stats["truncated"] + stats["read_error"] == 1
    assert 0 < len(docs) < len(whole)
    assert [d["id"] for d in docs] == [d["id"] for d in whole[: len(docs)]]


def member_starts(data: bytes) -> list[int]:
    """Compressed offsets of the gzip members of an intact file, and its length."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        inflate = zlib.decompressobj(31)
        inflate.decompress(data[pos:])
        pos = len(data) - len(inflate.unused_data)
    return [*starts, len(data)]


def test_corrupt_middle_loses_only_the_damaged_members(tmp_path):
    data = (WARC / "aut-archiveit" / "example.warc.gz").read_bytes()
    corrupt = tmp_path / "corrupt.warc.gz"
    corrupt.write_bytes(data[:200_000] + bytes(range(256)) * 11 + data[202_816:])
    whole, _ = read(WARC / "aut-archiveit" / "example.warc.gz")
    docs, stats = read(corrupt)
    starts = member_starts(data)
    damaged = {a for a, b in zip(starts, starts[1:], strict=False) if a < 202_816 and b > 200_000}
    assert stats["gzip_damaged"] == 1 and stats["read_error"] == 0
    # Skipped: from the first damaged member to the first member that starts after the damage.
    assert stats["gzip_bytes_skipped"] == min(b for b in starts if b >= 202_816) - min(damaged)
    assert [d["id"] for d in docs] == [d["id"] for d in whole if d["source_offset"] not in damaged]
    assert stats["records"] == 822 - len(damaged) and len(damaged) == 6  # one record per member


def test_non_warc_and_missing_files(tmp_path):
    docs, stats = read(SHARED / "cc-text" / "c4-demo" / "c4_demo.jsonl")
    assert docs == [] and stats["not_warc"] == 1
    docs, stats = read(tmp_path / "missing.warc.gz")
    assert docs == [] and stats["file_open_error"] == 1


def test_oversized_records_are_skipped():
    docs, stats = read(WARC / "dolma-wget" / "sample-0000.warc.gz", max_record_bytes=20_000)
    assert stats["skipped:too_large"] > 0
    assert len(docs) + stats["skipped:too_large"] == 22


def test_charset_detection_without_declared_charset():
    html = "<html><body><p>Grüße aus Köln, schönes Wetter heute.</p></body></html>"
    text, how = decode_html(html.encode("cp1252"), None)
    assert "Grüße" in text and how.startswith("detected:")
    text, how = decode_html(gzip.decompress(gzip.compress(html.encode("utf-8"))), "utf-8")
    assert "Köln" in text and how == "utf-8"
    # WHATWG: the label iso-8859-1 means windows-1252, so 0x93/0x94 are curly quotes, not C1 controls.
    text, how = decode_html(b'<meta charset="iso-8859-1"><p>caf\xe9 \x93quoted\x94</p>', None)
    assert "café \u201cquoted\u201d" in text and how == "cp1252"


JAPANESE = ("東京は日本の首都であり、多くの人々が住んでいます。今日は天気が良いので、公園まで散歩に行きましょう。"
            "図書館で新しい本を借りました。")
TRADITIONAL = "國立臺灣大學是臺灣第一所大學，歷史悠久，圖書館收藏豐富，學生來自世界各地。"


@pytest.mark.parametrize("codec,text", [("euc_jp", JAPANESE), ("iso2022_jp", JAPANESE), ("shift_jis", JAPANESE),
                                        ("big5", TRADITIONAL), ("big5", "國立學臺"), ("big5", "國立學大")])
def test_undeclared_cjk_pages_decode_as_their_encoding(codec, text):
    """No charset anywhere: the detectors' codec names lead to the browser's codec, a 7-bit ISO-2022-JP
    page is not taken for ASCII, and a strict multi-byte fit (Big5) beats a permissive one."""
    html = f"<html><head><title>{text[:4]}</title></head><body><p>{text}</p></body></html>"
    decoded, how = decode_html(html.encode(codec), None)
    assert decoded == html, how
    assert how.startswith("detected:")


def test_binary_bodies_without_a_nul_byte_are_skipped_and_cjk_text_is_kept(tmp_path):
    import random

    noise = random.Random(0).randbytes(6000).replace(b"\x00", b"\x01")  # compressed data, never a NUL
    gif = b"GIF89a\x10\x01\x10\x01\xf7\x1f\x01" + noise
    records = [_warc_record("https://gif.example.com/", gif, "text/html"),  # mislabelled, as crawls have them
               _warc_record("https://jp.example.com/", f"<p>{JAPANESE}</p>".encode("iso2022_jp"), "text/html"),
               _warc_record("https://tw.example.com/", f"<p>{TRADITIONAL}</p>".encode("big5"), "text/html")]
    (tmp_path / "b.warc").write_bytes(b"".join(records))
    docs, stats = read(tmp_path / "b.warc")
    assert stats["skipped:binary"] == 1
    assert [d["url"] for d in docs] == ["https://jp.example.com/", "https://tw.example.com/"]
    assert JAPANESE in docs[0]["html"] and TRADITIONAL in docs[1]["html"]


def test_parse_warc_date():
    assert parse_warc_date("2017-07-22T00:50:11Z")[1] is True
    date, valid = parse_warc_date("2008-10-294T05:21:46-0700")
    assert not valid and (date.year, date.month, date.day) == (2008, 10, 29)
    assert parse_warc_date("garbage") == (None, False)


def _warc_record(uri: str, body: bytes, content_type: str = "text/html; charset=utf-8") -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2024-01-02T03:04:05Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{abs(hash(uri)):032d}>\r\nContent-Type: application/http; msgtype=response\r\n"
            f"Content-Length: {len(http)}\r\n\r\n").encode()
    return head + http + b"\r\n\r\n"


def test_50_mb_page_binary_body_and_unknown_charset(tmp_path, caplog):
    page = b"<html><body>" + b"<p>the same paragraph again and again</p>" * (50_000_000 // 41) + b"</body></html>"
    records = [
        _warc_record("https://huge.example.com/", page),
        _warc_record("https://binary.example.com/", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8),
        _warc_record("https://odd.example.com/", "<p>caf\u00e9 cr\u00e8me br\u00fbl\u00e9e</p>".encode("latin-1"),
                     "text/html; charset=x-no-such-charset"),
        _warc_record("https://fine.example.com/", b"<html><body><p>An ordinary page.</p></body></html>"),
    ]
    path = tmp_path / "edge.warc"
    path.write_bytes(b"".join(records))
    docs, stats = read(path)
    assert stats["skipped:too_large"] == 1 and stats["skipped:binary"] == 1
    assert [d["url"] for d in docs] == ["https://odd.example.com/", "https://fine.example.com/"]
    assert "crème brûlée" in docs[0]["html"]
    assert "crème brûlée" in docs[0]["html"] and stats["charset_unknown"] == 1
    messages = [r.getMessage() for r in caplog.records]
    # Each skip names the file and the record's offset: the huge page is the first record, at 0.
    assert any(m.startswith(f"{path}@0:") and "max_record_bytes" in m for m in messages)
    binary_at = len(records[0])
    assert any(m.startswith(f"{path}@{binary_at}:") and "binary" in m for m in messages)
    assert any(m.startswith(f"{path}@{binary_at + len(records[1])}:") and "x-no-such-charset" in m
               for m in messages)


@pytest.mark.parametrize("key,value", [("timeout_s", -1), ("timeout_s", float("nan")), ("max_html_chars", 0),
                                       ("min_text_chars", -5)])
def test_extract_limits_refuse_values_that_mean_nothing(key, value):
    from pydantic import ValidationError

    from filters.extract import ExtractParams

    with pytest.raises(ValidationError, match=key):
        ExtractParams(**{key: value})
    assert ExtractParams(timeout_s=0).timeout_s == 0  # 0: no limit, extracted in the worker
