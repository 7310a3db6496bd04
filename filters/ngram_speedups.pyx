# cython: language_level=3, boundscheck=False, wraparound=False
"""Gopher repetition's n-gram measures, compiled: `filters/ngram_hash.py` counts them with numpy (a sort per
measure, nine measures per document); here each is one walk over the n-grams with a hash table, as
datatrove's own loops walk them, on the same polynomial hashes of the characters. Equal hashes are settled on
the characters themselves; where two different n-grams share a hash, the functions return -1 and the caller
counts that document with datatrove's strings. `tests/test_steps.py` holds both paths equal to datatrove's.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc

cdef uint64_t BASE = 0x9E3779B97F4A7C15  # filters/ngram_hash.py's
cdef uint64_t SPREAD = 0xFF51AFD7ED558CCD  # mixes a hash's bits into the table's slot number


# BASE**k for k below _powers_length, shared by every text and grown by doubling.
cdef uint64_t *_powers = NULL
cdef Py_ssize_t _powers_length = 0


cdef void _ensure_powers(Py_ssize_t length) except *:
    global _powers, _powers_length
    cdef Py_ssize_t k, size = max(length, 2 * _powers_length, 4096)
    cdef uint64_t *grown
    if length <= _powers_length:
        return
    grown = <uint64_t *> realloc(_powers, size * sizeof(uint64_t))
    if not grown:
        raise MemoryError()
    grown[0] = 1
    for k in range(max(1, _powers_length), size):
        grown[k] = grown[k - 1] * BASE
    _powers, _powers_length = grown, size


cdef class Text:
    """A string's code points and polynomial prefix hashes: hash(s, e) = sum of c[t] * BASE**(e-1-t)."""
    cdef Py_UCS4 *chars
    cdef uint64_t *prefix

    def __cinit__(self, str text):
        cdef Py_ssize_t i, n = len(text)
        _ensure_powers(n + 1)
        self.chars = <Py_UCS4 *> malloc((n + 1) * sizeof(Py_UCS4))
        self.prefix = <uint64_t *> malloc((n + 1) * sizeof(uint64_t))
        if not self.chars or not self.prefix:
            raise MemoryError()
        self.prefix[0] = 0
        for i in range(n):
            self.chars[i] = text[i]
            self.prefix[i + 1] = self.prefix[i] * BASE + <uint64_t> self.chars[i]

    def __dealloc__(self):
        free(self.chars)
        free(self.prefix)

    cdef inline uint64_t span(self, Py_ssize_t start, Py_ssize_t end):
        return self.prefix[end] - self.prefix[start] * _powers[end - start]

    cdef inline bint same(self, Py_ssize_t a, Py_ssize_t b, Py_ssize_t length):
        cdef Py_ssize_t k
        for k in range(length):
            if self.chars[a + k] != self.chars[b + k]:
                return False
        return True


cdef class _Table:
    """Open addressing from an n-gram's hash to its slot: where the n-gram first starts, its length and its
    count so far."""
    cdef uint64_t *keys
    cdef int64_t *first
    cdef int64_t *length
    cdef int64_t *count
    cdef Py_ssize_t mask

    def __cinit__(self, Py_ssize_t entries):
        cdef Py_ssize_t size = 8, i
        while size < 2 * entries:
            size <<= 1
        self.mask = size - 1
        self.keys = <uint64_t *> malloc(size * sizeof(uint64_t))
        self.first = <int64_t *> malloc(size * sizeof(int64_t))
        self.length = <int64_t *> malloc(size * sizeof(int64_t))
        self.count = <int64_t *> malloc(size * sizeof(int64_t))
        if not self.keys or not self.first or not self.length or not self.count:
            raise MemoryError()
        for i in range(size):
            self.first[i] = -1

    def __dealloc__(self):
        free(self.keys)
        free(self.first)
        free(self.length)
        free(self.count)

    cdef inline Py_ssize_t find(self, Text text, Py_ssize_t start, Py_ssize_t end):
        """The slot of the n-gram text[start:end]: a new one (count 0) the first time, -1 where another n-gram
        holds its hash."""
        cdef uint64_t key = text.span(start, end)
        cdef Py_ssize_t i = <Py_ssize_t> ((key * SPREAD) >> 32) & self.mask
        while self.first[i] >= 0 and self.keys[i] != key:
            i = (i + 1) & self.mask
        if self.first[i] < 0:
            self.keys[i], self.first[i], self.length[i], self.count[i] = key, start, end - start, 0
        elif self.length[i] != end - start or not text.same(self.first[i], start, end - start):
            return -1
        return i


def top_chars(const int64_t[:] offsets, Text spaced, Py_ssize_t n):
    """`WordNgrams.top_chars`, given where each word starts in the words joined without spaces (and where the
    last one ends): characters of the most frequent n-gram (`spaced` is the words joined by single
    spaces) times its count, the first seen of equally frequent ones; -1 where two n-grams share a hash."""
    cdef Py_ssize_t count = offsets.shape[0] - n, k, i, start
    cdef int64_t best = 0, best_first = 0, best_length = 0
    if count < 1:
        return 0
    cdef _Table table = _Table(count)
    for k in range(count):
        start = offsets[k] + k
        i = table.find(spaced, start, offsets[k + n] + k + n - 1)
        if i < 0:
            return -1
        table.count[i] += 1
        if table.count[i] > best or (table.count[i] == best and table.first[i] < best_first):
            best, best_first, best_length = table.count[i], table.first[i], table.length[i]
    return best_length * best


def repeated_chars(const int64_t[:] offsets, Text joined, Py_ssize_t n):
    """`WordNgrams.repeated_chars`, given the same word offsets: characters of the n-grams (`joined` is the
    words joined without spaces) seen before, reading on past each repeat, as datatrove's loop does; -1 where
    two n-grams share a hash."""
    cdef Py_ssize_t count = offsets.shape[0] - n, k = 0, i
    cdef int64_t repeated = 0
    if count < 2:
        return 0
    cdef _Table table = _Table(count)
    while k < count:
        i = table.find(joined, offsets[k], offsets[k + n])
        if i < 0:
            return -1
        if table.count[i]:
            repeated += table.length[i]
            k += n
        else:
            table.count[i] = 1
            k += 1
    return repeated
