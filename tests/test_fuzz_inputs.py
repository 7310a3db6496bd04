"""Fuzzing the WARC reader with damaged copies of the corpus files (fixed seeds, so every run is the same).

Each case flips, zeroes, deletes or inserts bytes, or cuts the file, at a random place. Whatever the
damage, read_warc must not raise, must finish within a generous bound, and must keep every page whose
bytes the damage did not touch, unchanged: a record is lost only when its own bytes (its gzip member,
in a gzip file) were hit.
"""

from __future__ import annotations

import random
import re
import signal
import zlib
from collections import Counter
from pathlib import Path

import pytest

from filters.warc import WarcReaderParams, read_warc

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = ["base.warc.gz", "base.warc", "encodings.warc"]
SEEDS = range(30)
BOUND_S = 30  # a hang, not a speed limit: a case takes milliseconds


def read(path: Path) -> tuple[list[dict], Counter[str]]:
    stats: Counter[str] = Counter()
    return list(read_warc(str(path), WarcReaderParams(), stats)), stats


def record_spans(data: bytes, gz: bool) -> list[tuple[int, int]]:
    """Byte ranges of the records of an intact file: its gzip members, or WARC records back to back."""
    if gz:
        starts, pos = [], 0
        while pos < len(data):
            starts.append(pos)
            inflate = zlib.decompressobj(31)
            inflate.decompress(data[pos:])
            pos = len(data) - len(inflate.unused_data)
    else:
        starts = [m.start() for m in re.finditer(rb"WARC/1\.0\r\n", data) if m.start() == 0
                  or data[m.start() - 4:m.start()] == b"\r\n\r\n"]
    return list(zip(starts, [*starts[1:], len(data)], strict=True))


def damage(data: bytes, rng: random.Random) -> tuple[bytes, int, int]:
    """A damaged copy and the range [a, b) of original bytes it touched (a == b: bytes inserted at a)."""
    kind = rng.choice(["flip", "zero", "delete", "insert", "truncate"])
    pos = rng.randrange(len(data))
    n = rng.randint(1, 64)
    if kind == "flip":
        hit = bytes(b ^ rng.randint(1, 255) for b in data[pos:pos + n])
        return data[:pos] + hit + data[pos + n:], pos, pos + len(hit)
    if kind == "zero":
        return data[:pos] + bytes(len(data[pos:pos + n])) + data[pos + n:], pos, min(pos + n, len(data))
    if kind == "delete":
        return data[:pos] + data[pos + n:], pos, min(pos + n, len(data))
    if kind == "insert":
        return data[:pos] + rng.randbytes(rng.randint(1, 300)) + data[pos:], pos, pos
    return data[:pos], pos, len(data)


def touched(span: tuple[int, int], a: int, b: int) -> bool:
    start, end = span
    return start < a < end if a == b else a < end and b > start


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


@pytest.mark.parametrize("name", FILES)
def test_damage_never_raises_hangs_or_loses_an_untouched_page(name, tmp_path):
    data = (CORPUS / name).read_bytes()
    gz = name.endswith(".gz")
    intact, _ = read(CORPUS / name)
    spans = record_spans(data, gz)
    span_of = {doc["id"]: next(s for s in spans if s[0] <= doc["source_offset"] < s[1]) for doc in intact}
    assert len(intact) >= 4 and len(spans) >= 9
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for seed in SEEDS:
            rng = random.Random(f"{name}:{seed}")
            broken, a, b = damage(data, rng)
            path = tmp_path / f"{seed}-{name}"
            path.write_bytes(broken)
            signal.alarm(BOUND_S)
            try:
                docs, stats = read(path)
            except _Hang:
                pytest.fail(f"{name} seed {seed}: read_warc still running after {BOUND_S}s (damage at {a}-{b})")
            finally:
                signal.alarm(0)
            kept = {doc["id"]: doc for doc in docs}
            for doc in intact:
                span = span_of[doc["id"]]
                if touched(span, a, b):
                    continue
                assert doc["id"] in kept, f"{name} seed {seed}: damage at {a}-{b} lost untouched {doc['url']}"
                assert kept[doc["id"]]["html"] == doc["html"], f"{name} seed {seed}: {doc['url']} changed"
                if span[1] <= a:  # before the damage, offsets are those of the intact file
                    assert kept[doc["id"]]["source_offset"] == doc["source_offset"]
            assert len(docs) <= len(intact) + 1 and all(v >= 0 for v in stats.values())
    finally:
        signal.signal(signal.SIGALRM, previous)
