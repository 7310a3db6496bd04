"""Shingles, MinHash signatures and LSH band keys, computed a batch of documents at a time.

Signatures use datasketch's permutation family (`scheme="affine32"`: a MurmurHash3 pre-mix,
then `a * h + b mod 2**32` per permutation), so they equal what `datasketch.MinHash` computes
for the same shingle hashes; a unit test holds us to that. The difference is speed: datasketch
hashes one shingle per Python call and one document per `update_batch`, while here words are
hashed once, shingle hashes are combined with array arithmetic, and the permutations of a whole
batch are applied as one matrix product followed by a segmented minimum.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import xxhash
from datasketch import MinHash
from datasketch.lsh import _optimal_param
from datasketch.minhash import _fmix

# A CJK character is a token on its own (those scripts put no spaces between words); elsewhere a
# token is a run of letters and digits. Punctuation and case never make two copies differ.
TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): multiply-mix
# Shingles per matrix product. Small enough to stay in cache (4k x 128 perms x 4 bytes = 2 MB):
# one big product is several times slower, from page faults on the fresh allocation.
_CHUNK_ROWS = 4096


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def exact_hash(text: str) -> int:
    """The key of exact dedup: byte-identical or whitespace-identical texts share it."""
    return xxhash.xxh3_64_intdigest(" ".join(text.split()).encode())


def shingle_hashes(text: str, size: int) -> np.ndarray:
    """32-bit hashes of the word `size`-grams of `text` (unique, sorted).

    A text shorter than `size` words is one shingle of all its words, so short texts can still
    match their copies. Each word is hashed once; an n-gram's hash is an order-sensitive
    polynomial of its words' hashes, folded to 32 bits.
    """
    words = tokens(text)
    if not words:
        return np.empty(0, dtype=np.uint32)
    h = np.fromiter((xxhash.xxh3_64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    n = min(size, len(h))
    combined = h[: len(h) - n + 1].copy()
    for k in range(1, n):
        combined = combined * _MIX + h[k: len(h) - n + 1 + k]
    folded = (combined ^ (combined >> np.uint64(32))).astype(np.uint32)
    return np.unique(folded)


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine32 permutation parameters for (num_perm, seed)."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(shingles: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, one row per document; a document with no shingle gets all-max."""
    a, b = permutations(num_perm, seed)
    out = np.full((len(shingles), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    lengths = np.fromiter((len(s) for s in shingles), dtype=np.int64, count=len(shingles))
    nonempty = np.flatnonzero(lengths)
    if not len(nonempty):
        return out
    values = _fmix(np.concatenate([shingles[i] for i in nonempty]), 32)
    starts = np.concatenate([[0], np.cumsum(lengths[nonempty])[:-1]])
    # Apply the permutations in chunks of whole documents, so that memory stays bounded.
    doc = 0
    while doc < len(nonempty):
        end = int(np.searchsorted(starts, starts[doc] + _CHUNK_ROWS, side="left"))
        end = max(end, doc + 1)
        lo = starts[doc]
        hi = starts[end] if end < len(nonempty) else len(values)
        permuted = values[lo:hi, None] * a[None, :] + b[None, :]  # uint32 wrap-around is mod 2**32
        out[nonempty[doc:end]] = np.minimum.reduceat(permuted, starts[doc:end] - lo, axis=0)
        doc = end
    return out


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit bucket keys, shape (docs, bands). Two documents collide in band i exactly when
    their rows i*r..(i+1)*r agree (up to 64-bit hash collisions); the band number is mixed in,
    so equal values in different bands never share a bucket."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    wide = sigs.astype(np.uint64)
    for band in range(bands):
        h = np.full(len(sigs), ((band + 1) * int(_MIX)) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        for col in range(band * rows, (band + 1) * rows):
            h = (h ^ wide[:, col]) * _MIX
            h ^= h >> np.uint64(29)
        keys[:, band] = h
    return keys & ~EXACT_BIT


EXACT_BIT = np.uint64(1 << 63)  # set in exact-dedup keys only, so they never meet an LSH band key


def exact_keys(hashes: np.ndarray) -> np.ndarray:
    """Bucket keys for exact dedup: the content hash, mixed, with the top bit set."""
    h = (hashes.astype(np.uint64) ^ np.uint64(0xE7AC7)) * _MIX
    return (h ^ (h >> np.uint64(31))) | EXACT_BIT


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """datasketch's (bands, rows) that minimize the weighted false-positive and false-negative areas."""
    bands, rows = _optimal_param(threshold, num_perm, fp_weight, fn_weight)
    return int(bands), int(rows)


def detection_probability(similarity: np.ndarray | float, bands: int, rows: int) -> np.ndarray | float:
    """The LSH S-curve: P(a pair of Jaccard s shares at least one bucket) = 1 - (1 - s**r)**b."""
    return 1.0 - (1.0 - np.power(similarity, rows)) ** bands


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted, unique shingle-hash arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
