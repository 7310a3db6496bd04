"""Damaged and hostile WARC input (tests/corpus, real files cut and broken on purpose): every case keeps
what can be kept, counts what is lost, and names the file and offset of the damage."""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from pathlib import Path

import pytest

from filters.warc import WarcReaderParams, decode_html, read_warc, whatwg_codec
from tests.conftest import SAMPLE, WARC
from tests.corpus import make_corpus

CORPUS = Path(__file__).resolve().parent / "corpus"


def read(path: Path, **params) -> tuple[list[dict], Counter[str]]:
    stats: Counter[str] = Counter()
    return list(read_warc(str(path), WarcReaderParams(**params), stats)), stats


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    docs, stats = read(CORPUS / "base.warc.gz")
    assert stats["records"] == 12 and len(docs) == 4
    return docs


def same_pages(docs: list[dict], expected: list[dict]) -> None:
    assert [(d["id"], d["url"], d["html"]) for d in docs] == [(d["id"], d["url"], d["html"]) for d in expected]


def test_corpus_is_what_make_corpus_writes():
    for name, data in make_corpus.build().items():
        assert (CORPUS / name).read_bytes() == data, f"{name}: rerun tests/corpus/make_corpus.py"
    plain, _ = read(CORPUS / "base.warc")
    same_pages(plain, read(CORPUS / "base.warc.gz")[0])


def test_unparsable_target_uris_drop_only_their_records(base, caplog):
    docs, stats = read(CORPUS / "bad-url.warc.gz")
    same_pages(docs, base[2:])
    assert stats["skipped:bad_url"] == 2 and stats["records"] == 12
    members = make_corpus.members((CORPUS / "bad-url.warc.gz").read_bytes())
    first_page_at = sum(map(len, members[:1]))
    assert any(m.startswith(f"{CORPUS / 'bad-url.warc.gz'}@{first_page_at}:") and "http://[::1/broken" in m
               for m in messages(caplog))
    assert any("http://[evil]/" in m and "does not parse" in m for m in messages(caplog))


def test_a_corrupt_gzip_member_costs_only_its_record(base, caplog):
    path = CORPUS / "flipped-member.warc.gz"
    members = make_corpus.members((CORPUS / "base.warc.gz").read_bytes())
    docs, stats = read(path)
    same_pages(docs, [base[0], *base[2:]])
    assert stats["gzip_damaged"] == 1 and stats["gzip_bytes_skipped"] == len(members[4])
    assert stats["records"] == 11
    damaged_at = sum(map(len, members[:4]))
    assert any(m.startswith(f"{path}: gzip data damaged at compressed offset {damaged_at} ") for m in messages(caplog))


def test_bytes_between_members_are_skipped(base):
    docs, stats = read(CORPUS / "garbage-between.warc.gz")
    same_pages(docs, base)
    assert stats["gzip_damaged"] == 1 and stats["gzip_bytes_skipped"] == 200 and stats["records"] == 12


def test_truncated_gzip_keeps_every_record_before_the_cut(base, caplog):
    docs, stats = read(CORPUS / "truncated.warc.gz")
    same_pages(docs, base[:3])
    assert stats["truncated"] == 1 and stats["gzip_truncated"] == 1
    members = make_corpus.members((CORPUS / "base.warc.gz").read_bytes())
    assert any(m.startswith(f"{CORPUS / 'truncated.warc.gz'}@{sum(map(len, members[:10]))}: file ends inside")
               for m in messages(caplog))
    docs, stats = read(WARC / "resiliparse" / "clipped.warc.gz")  # a real clipped file: one record, cut
    assert docs == [] and stats["truncated"] == 1 and stats["records"] == 1


@pytest.mark.parametrize("name", ["cl-too-long.warc", "cl-too-short.warc"])
def test_wrong_content_length_keeps_both_records(name, base, caplog):
    docs, stats = read(CORPUS / name)
    same_pages(docs, base)  # the page with the wrong length is whole, and so is the record after it
    assert stats["bad_content_length"] == 1 and stats["records"] == 12
    assert any(name in m and "Content-Length" in m for m in messages(caplog))


def test_wrong_content_length_in_gzip_members(base, tmp_path):
    records = [gzip.decompress(m) for m in make_corpus.members((CORPUS / "base.warc.gz").read_bytes())]
    records[4] = make_corpus.set_header(records[4], b"Content-Length", b"99999999")  # past the end of the file
    path = tmp_path / "long.warc.gz"
    path.write_bytes(b"".join(make_corpus.gz(r) for r in records))
    docs, stats = read(path)
    same_pages(docs, base)
    assert stats["bad_content_length"] == 1


def test_broken_headers_lose_only_their_records(base):
    docs, stats = read(CORPUS / "broken-header.warc")
    same_pages(docs, base)  # the two broken records are a request and a metadata record
    assert stats["bad_header"] == 2 and stats["records"] == 10 and 0 < stats["bytes_skipped"] < 2000


def test_one_damaged_member_of_ten_keeps_the_other_nine(tmp_path):
    members = make_corpus.members((SAMPLE / "wget-2024-dolma-0000.warc.gz").read_bytes())[:10]
    fifth = members[4]
    members[4] = fifth[:len(fifth) // 2] + bytes(64) + fifth[len(fifth) // 2 + 64:]
    path = tmp_path / "ten.warc.gz"
    path.write_bytes(b"".join(members))
    docs, stats = read(path)
    assert stats["records"] == 9 and stats["gzip_damaged"] == 1
    whole, _ = read(SAMPLE / "wget-2024-dolma-0000.warc.gz")
    fifth_at = sum(map(len, members[:4]))
    assert [d["id"] for d in docs] == [d["id"] for d in whole if d["source_offset"] < sum(map(len, members))
                                       and d["source_offset"] != fifth_at] and len(docs) == 3


def test_64_flipped_bytes_in_the_48_member_sample_keep_21_of_22_pages(tmp_path):
    data = (SAMPLE / "wget-2024-dolma-0000.warc.gz").read_bytes()
    members = make_corpus.members(data)
    middle = next(i for i in range(len(members)) if sum(map(len, members[:i + 1])) > len(data) // 2)
    start = sum(map(len, members[:middle]))
    at = start + len(members[middle]) // 2 - 32
    path = tmp_path / "flipped.warc.gz"
    path.write_bytes(data[:at] + bytes(b ^ 0xFF for b in data[at:at + 64]) + data[at + 64:])
    whole, _ = read(SAMPLE / "wget-2024-dolma-0000.warc.gz")
    docs, stats = read(path)
    assert len(whole) == 22 and len(docs) == 21
    assert [d["id"] for d in docs] == [d["id"] for d in whole if d["source_offset"] != start]
    assert stats["gzip_damaged"] == 1 and stats["records"] == 47


def test_encodings_follow_whatwg(caplog):
    docs, stats = read(CORPUS / "encodings.warc")
    html = {d["url"]: d["html"] for d in docs}
    assert "서울은 대한민국의 수도" in html["http://ko.example/euc-kr"]  # EUC-KR, no charset anywhere
    assert "\u201cQuoted\u201d \u2013 5 \u20ac, caf\u00e9" in html["http://latin1.example/cp1252"]
    assert "Schöne Grüße aus Köln" in html["http://utf8.example/stray-byte"]  # one stray byte
    assert "Preis: 5\ufffd" in html["http://utf8.example/stray-byte"]
    assert "café crème brûlée" in html["http://unknown.example/"]
    assert html["http://bom.example/"] == "<p>Straße</p>"  # the byte order mark outranks the HTTP charset
    assert "http://binary.example/" not in html and stats["skipped:binary"] == 1
    assert stats["skipped:bad_url"] == 2 and stats["charset_unknown"] == 1 and stats["charset_replaced"] == 1
    assert any("x-no-such-charset" in m and "encodings.warc@" in m for m in messages(caplog))


def test_decode_html_cases():
    text, how = decode_html('<meta charset="utf-8">Schöne Grüße'.encode() + b"\xe9", None)
    assert text.startswith('<meta charset="utf-8">Schöne Grüße') and text.endswith("\ufffd") and how == "utf-8:replaced"
    # Declared UTF-8 but written in windows-1252 (no valid UTF-8 sequence at all): detection decides.
    text, how = decode_html(b"<p>this Agreement \x97 no other use \xa7 3</p>", "utf-8")
    assert "Agreement \u2014 no other use \u00a7 3" in text and how == "detected:cp1252"
    korean = "<p>한국어 웹 페이지입니다. 서울과 부산은 큰 도시입니다.</p>".encode("euc-kr")
    assert "서울과 부산" in decode_html(korean, None)[0]
    assert decode_html("<p>Привет, мир</p>".encode("cp1251"), "x-cp1251")[0] == "<p>Привет, мир</p>"
    assert decode_html("<p>naïve</p>".encode("utf-16-le"), "utf-16") == ("<p>naïve</p>", "utf-16-le")
    assert [whatwg_codec(x) for x in ("latin1", "ISO-8859-1", "us-ascii", "euc-kr", "gb2312", "sjis", "bogus")] == [
        "cp1252", "cp1252", "cp1252", "cp949", "gb18030", "cp932", None]


def test_every_corpus_file_reads_without_raising():
    for path in sorted(CORPUS.glob("*.warc*")):
        docs, stats = read(path)
        assert stats["records"] > 0 and all(d["url"] and d["domain"] for d in docs), path.name


def test_compressed_offsets_name_members(base):
    data = (CORPUS / "base.warc.gz").read_bytes()
    starts, pos = set(), 0
    while pos < len(data):
        starts.add(pos)
        inflate = zlib.decompressobj(31)
        inflate.decompress(data[pos:])
        pos = len(data) - len(inflate.unused_data)
    assert all(d["source_offset"] in starts for d in base)
    # In a plain file the offset is the record's own: where its WARC/1.0 line starts.
    plain = (CORPUS / "base.warc").read_bytes()
    expected = [plain.rfind(b"WARC/1.0\r\n", 0, plain.find(f"<urn:uuid:{d['id']}>".encode())) for d in base]
    assert [d["source_offset"] for d in read(CORPUS / "base.warc")[0]] == expected and min(expected) > 0


@pytest.mark.parametrize("junk", [b"WARC/1.0\r\n" * 50_000, b"WARC/1.0\r\nX: y\r\n" * 30_000,
                                  b"\x1f\x8b\x08" * 100_000])
def test_floods_of_would_be_headers_are_skipped_in_one_pass(junk, base, tmp_path):
    """Hostile input: every line looks like the start of a record (or of a gzip member)."""
    if junk.startswith(b"WARC"):  # (a plain file that starts 1f 8b 08 is read as gzip)
        path = tmp_path / "flood.warc"
        path.write_bytes(junk + (CORPUS / "base.warc").read_bytes())
        docs, stats = read(path)
        same_pages(docs, base)
        assert stats["bytes_skipped"] == len(junk) - 1 and stats["bad_header"] == 1  # from its second byte
    gz = (CORPUS / "base.warc.gz").read_bytes()
    path = tmp_path / "flood.warc.gz"
    path.write_bytes(gz[:9000] + junk + gz[9000:])
    docs, stats = read(path)
    members = make_corpus.members(gz)
    hit = next(i for i in range(len(members)) if sum(map(len, members[:i + 1])) > 9000)
    assert stats["gzip_damaged"] == 1 and stats["records"] == 11
    assert stats["gzip_bytes_skipped"] == len(junk) + len(members[hit])
    same_pages(docs, [d for d in base if d["source_offset"] != sum(map(len, members[:hit]))])


def test_every_record_is_a_document_or_a_counted_skip():
    for path in sorted(CORPUS.glob("*.warc*")):
        docs, stats = read(path)
        skipped = sum(v for k, v in stats.items() if k.startswith("skipped:"))
        assert len(docs) == stats["documents"] and stats["documents"] + skipped + stats["truncated"] == stats[
            "records"], path.name


@pytest.mark.parametrize("damaged_half", [0, 1])
def test_a_record_split_over_two_members_is_lost_alone(damaged_half, base, tmp_path):
    """Some writers split a record over several gzip members; damage to either half costs that record only."""
    records = [gzip.decompress(m) for m in make_corpus.members((CORPUS / "base.warc.gz").read_bytes())]
    halves = [make_corpus.gz(records[4][:len(records[4]) // 2]), make_corpus.gz(records[4][len(records[4]) // 2:])]
    hit = halves[damaged_half]
    halves[damaged_half] = hit[:len(hit) // 2] + bytes(b ^ 0xFF for b in hit[len(hit) // 2:len(hit) // 2 + 16]) + hit[
        len(hit) // 2 + 16:]
    path = tmp_path / "split.warc.gz"
    path.write_bytes(b"".join([*map(make_corpus.gz, records[:4]), *halves, *map(make_corpus.gz, records[5:])]))
    docs, stats = read(path)
    same_pages(docs, [base[0], *base[2:]])  # the page before it is whole, not run on into the other half
    assert stats["gzip_damaged"] == 1 and stats["bad_content_length"] == 0
    assert stats["damaged_record"] + stats["bad_header"] == 1


def test_blank_lines_between_records_and_at_the_end_are_no_damage(base, tmp_path):
    plain = (CORPUS / "base.warc").read_bytes()
    path = tmp_path / "blank.warc"
    path.write_bytes(plain.replace(b"\r\n\r\nWARC/1.0\r\n", b"\r\n\r\n" + b"\r\n" * 40 + b"WARC/1.0\r\n") + b"\n" * 100)
    docs, stats = read(path)
    same_pages(docs, base)
    assert stats["records"] == 12 and not stats["bad_header"] and not stats["bad_content_length"]


def test_a_file_gzipped_whole_keeps_the_records_before_its_damage(tmp_path):
    """One gzip member for the whole file: its CRC cannot vouch for any record, so the records inflated
    before the damage are kept only where they match their WARC-Block-Digest."""
    whole, _ = read(SAMPLE / "wget-2024-dolma-0000.warc.gz")
    one = gzip.compress(gzip.decompress((SAMPLE / "wget-2024-dolma-0000.warc.gz").read_bytes()), mtime=0)
    at = int(len(one) * 0.6)
    path = tmp_path / "whole.warc.gz"
    path.write_bytes(one[:at] + bytes(b ^ 0xFF for b in one[at:at + 64]) + one[at + 64:])
    docs, stats = read(path)
    assert stats["gzip_damaged"] == 1 and stats["damaged_record"] >= 1
    assert len(whole) // 2 <= len(docs) < len(whole)
    same_pages(docs, whole[:len(docs)])  # the pages before the damage, unchanged; nothing after it
