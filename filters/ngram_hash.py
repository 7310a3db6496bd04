"""Gopher repetition's n-gram measures, counted on hashes of the words' characters.

datatrove joins every n-gram of a document into a string and counts the strings: nine passes (n = 2 to 10),
each allocating and hashing one string per word. Here the document's characters get one prefix hash, so
the polynomial hash of any run of words is two array lookups; each measure is a few numpy operations, and
strings are built only for the n-grams whose hash occurs more than once. Equal strings always hash alike, so
the candidates are a superset of the true repeats, and every decision is then made on the strings
themselves: the figures are datatrove's exactly, whatever the hashes collide on. Where the install could
build it, `filters/ngram_speedups.pyx` walks the n-grams with a hash table instead, on the same hashes.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

try:
    from filters import ngram_speedups as compiled
except ImportError:  # no C compiler at install: the numpy measures below
    compiled = None

_BASE = 0x9E3779B97F4A7C15  # odd, hence invertible modulo 2**64
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)


# Texts longer than this are left to datatrove's string counting (filters/heuristics.py): the hash arrays
# take 8 bytes a character each, several at once, and the power tables kept below never outgrow it by more
# than their doubling.
MAX_CHARS = 1 << 20


class _Powers:
    """BASE**k and BASE**-k modulo 2**64 for k = 0..len-1, grown by doubling as longer texts arrive."""

    def __init__(self) -> None:
        self.up = self.down = np.ones(1, np.uint64)

    def upto(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) <= size:
            length = max(size + 1, 2 * len(self.up), 4096)
            self.up, self.down = _geometric(_BASE, length), _geometric(_BASE_INVERSE, length)
        return self.up, self.down


def _geometric(ratio: int, length: int) -> np.ndarray:
    out = np.full(length, ratio, np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)  # wraps modulo 2**64, as intended


_POWERS = _Powers()


class _PrefixHash:
    """hash(a, b) = sum of code[t] * BASE**(b-1-t) over a <= t < b, for arrays of spans, in O(1) each."""

    def __init__(self, text: str):
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.uint64)
        self.up, down = _POWERS.upto(len(codes) + 1)
        self.prefix = np.zeros(len(codes) + 1, np.uint64)
        np.cumsum(codes * down[1 : len(codes) + 1], out=self.prefix[1:])

    def spans(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return self.up[ends] * (self.prefix[ends] - self.prefix[starts])


class WordNgrams:
    """One document's words, ready for the top and repeated n-gram measures of any n."""

    def __init__(self, words: list[str]):
        self.words = words
        self.offsets = np.zeros(len(words) + 1, np.int64)  # word k spans offsets[k]:offsets[k+1] of `joined`
        np.cumsum(np.fromiter(map(len, words), np.int64, len(words)), out=self.offsets[1:])
        self.joined = "".join(words)

    @cached_property
    def spaced(self) -> str:
        """The words joined by spaces."""
        return " ".join(self.words)

    @cached_property
    def joined_text(self) -> object:
        """`joined`, hashed for the compiled measures."""
        return compiled.Text(self.joined)

    @cached_property
    def spaced_text(self) -> object:
        """`spaced`, hashed for the compiled measures."""
        return compiled.Text(self.spaced)

    @cached_property
    def joined_hash(self) -> _PrefixHash:
        return _PrefixHash(self.joined)

    @cached_property
    def spaced_hash(self) -> _PrefixHash:
        return _PrefixHash(self.spaced)

    def top_chars(self, n: int) -> int:
        """Characters of the most frequent n-gram (words joined by spaces) times its count; of equally frequent
        ones the first seen, as Counter.most_common does; 0 for a document of fewer than `n` words (datatrove's
        filter skips the check there)."""
        if compiled and len(self.words) >= n:
            found = compiled.top_chars(self.offsets, self.spaced_text, n)
            return found if found >= 0 else _top_chars_by_strings(self.words, n)  # -1: a hash collision
        return self.top_chars_numpy(n)

    def top_chars_numpy(self, n: int) -> int:
        count = len(self.words) - n + 1
        if count < 1:
            return 0
        spaced = self.spaced
        starts = self.offsets[:count] + np.arange(count)  # one space after each earlier word
        ends = self.offsets[n:] + np.arange(n - 1, n - 1 + count)
        hashes = self.spaced_hash.spans(starts, ends)
        ordered = np.sort(hashes)
        run_starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        counts = np.diff(run_starts, append=len(ordered))
        most = int(counts.max())
        if most == 1:  # all distinct: the first n-gram, once
            return int(ends[0] - starts[0])
        # the first n-gram of the document whose hash is one of the most frequent ones
        pick = _first_of(hashes, ordered[run_starts[counts == most]])
        gram = spaced[starts[pick] : ends[pick]]
        if any(spaced[starts[k] : ends[k]] != gram for k in np.flatnonzero(hashes == hashes[pick]).tolist()):
            return _top_chars_by_strings(self.words, n)  # a collision merged two n-grams
        return len(gram) * most

    def repeated_chars(self, n: int) -> int:
        """Characters of the n-grams (words joined without spaces) seen before, reading on past each repeat."""
        if compiled and len(self.words) > n:
            found = compiled.repeated_chars(self.offsets, self.joined_text, n)
            return found if found >= 0 else _repeated_chars_by_strings(self.words, n)  # -1: a hash collision
        return self.repeated_chars_numpy(n)

    def repeated_chars_numpy(self, n: int) -> int:
        count = len(self.words) - n + 1
        if count < 2:
            return 0
        starts, ends = self.offsets[:count], self.offsets[n:]
        hashes = self.joined_hash.spans(starts, ends)
        order = np.argsort(hashes)
        ordered = hashes[order]
        twin = ordered[1:] == ordered[:-1]
        if not twin.any():
            return 0
        shared = np.zeros(count, bool)
        shared[order[1:][twin]] = shared[order[:-1][twin]] = True
        # An n-gram whose hash is unique is never a repeat and never equals a later one, so only the shared
        # ones need walking; the ones inside a counted repeat are skipped, as datatrove's loop skips them.
        seen: set[str] = set()
        repeated = resume = 0
        for k in np.flatnonzero(shared).tolist():
            if k < resume:
                continue
            gram = self.joined[starts[k] : ends[k]]
            if gram in seen:
                repeated += len(gram)
                resume = k + n
            else:
                seen.add(gram)
        return repeated


def _first_of(hashes: np.ndarray, values: np.ndarray) -> int:
    """The first position of `hashes` that holds one of `values`."""
    if len(values) > 8:
        return int(np.flatnonzero(np.isin(hashes, values))[0])
    return min(int(np.argmax(hashes == value)) for value in values.tolist())


def _top_chars_by_strings(words: list[str], n: int) -> int:
    from datatrove.pipeline.filters.gopher_repetition_filter import find_top_duplicate, get_n_grams

    return find_top_duplicate(get_n_grams(words, n))


def _repeated_chars_by_strings(words: list[str], n: int) -> int:
    from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate

    return find_all_duplicate(words, n)
