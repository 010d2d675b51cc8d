"""Near-duplicate detection: MinHash signatures over word n-gram shingles, and LSH banding to find candidates.

Two documents are near duplicates when the Jaccard similarity of their shingle sets is high:

    J(A, B) = |A ∩ B| / |A ∪ B|,    A = { (w_i, ..., w_{i+n-1}) : i }  the word n-grams of a document.

MinHash (Broder, 1997). For a random hash function h, P[min h(A) = min h(B)] = J(A, B): the smallest hash over
A ∪ B lands in A ∩ B with that probability. With k independent functions h_1..h_k the signature of a document is
(min h_1(A), ..., min h_k(A)), and the fraction of equal positions estimates J with standard deviation
sqrt(J(1-J)/k); Hoeffding: P[|Ĵ - J| >= eps] <= 2 exp(-2 k eps^2).

LSH banding. Cut each signature into b bands of r rows. Two documents become candidates when some band is equal
in all r rows, which happens with probability 1 - (1 - J^r)^b: an S-curve in J that rises steeply around
(1/b)^(1/r). Each band is a hash table, so finding candidates costs one lookup per band, not one comparison per
pair. A candidate is then confirmed by its estimated Jaccard >= threshold.

Hashing, all vectorised with numpy. Words are hashed once (CRC-32); the n words of a shingle are combined by a
polynomial and a 64-bit mixer into a 32-bit shingle id x; the k hash functions are multiply-add-shift,
h_j(x) = ((a_j x + b_j) mod 2^64) >> 32 with random 64-bit a_j, b_j (Dietzfelbinger, 1996): strongly universal,
no modulo by a prime, and numpy's uint64 arithmetic wraps around mod 2^64 for free.

Left out: weighted MinHash, one-permutation hashing, b-bit signatures, suffix-array substring dedup.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .text import FilterReport

# numpy computes a (num_perm, shingles) block of hashes at a time: at most this many 8-byte entries (32 MB).
_BLOCK = 1 << 22
# Documents signed together by near_dedup before their turn in the LSH tables comes.
_CHUNK = 512


def shingles(text: str, ngram: int = 5) -> set[tuple[str, ...]]:
    """The set of word n-grams of `text` (words: whitespace-separated).  A text shorter than `ngram` words is one
    shingle of all its words; an empty text is the one empty shingle, so every text has at least one.

    Example: shingles('a b c a b', ngram=2) -> {('a', 'b'), ('b', 'c'), ('c', 'a')}
    """
    # BEGIN SOLUTION
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, got {ngram}")
    words = text.split()
    if len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}
    # END SOLUTION


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b|, and 1.0 for two empty sets.  Example: jaccard({1, 2, 3}, {2, 3, 4}) -> 0.5"""
    # BEGIN SOLUTION
    union = len(a | b)
    return len(a & b) / union if union else 1.0
    # END SOLUTION


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit flips about half of the output bits.  uint64 -> uint64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _shingle_ids(text: str, ngram: int, vocabulary: dict[str, int]) -> np.ndarray:
    """32-bit ids of the word n-grams of `text` (with repeats), as uint64.  The same shingle always gets the same id;
    `vocabulary` caches word hashes across documents."""
    words = text.split() or [""]
    for word in set(words).difference(vocabulary):
        vocabulary[word] = zlib.crc32(word.encode("utf-8", "surrogatepass"))
    ids = np.array(list(map(vocabulary.__getitem__, words)), dtype=np.uint64)  # (words,)
    span = max(len(words) - ngram + 1, 1)  # shingles; a short text is one shingle of all its words
    width = min(ngram, len(words))
    combined = np.zeros(span, dtype=np.uint64)
    for j in range(width):  # polynomial hash of the n word hashes: (((w_i) P + w_{i+1}) P + ...) mod 2^64
        combined = combined * np.uint64(0x100000001B3) + ids[j:j + span]
    # A short text and a long one never share a shingle: mix the width in.
    return _mix64(combined + np.uint64(width)) >> np.uint64(32)


def _hash_functions(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The multipliers a (num_perm, 1) and offsets b (num_perm, 1) of the num_perm hash functions: uint64."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2**64, size=(2, num_perm, 1), dtype=np.uint64)
    return a, b


def minhash_signatures(docs: Sequence[str], num_perm: int = 128, ngram: int = 5, seed: int = 0) -> np.ndarray:
    """MinHash signatures, one row per document: (len(docs), num_perm) uint32.

    Row i, column j is min over the shingles x of docs[i] of h_j(x). The hash functions depend on `seed` alone,
    so signatures made with the same (num_perm, ngram, seed) can be compared across calls.
    """
    # BEGIN SOLUTION
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1, got {num_perm}")
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, got {ngram}")
    a, b = _hash_functions(num_perm, seed)
    vocabulary: dict[str, int] = {}
    ids = [_shingle_ids(doc, ngram, vocabulary) for doc in docs]
    out = np.empty((len(ids), num_perm), dtype=np.uint32)
    per_block = max(_BLOCK // num_perm, 1)  # shingles hashed together
    start = 0
    while start < len(ids):
        # Sign consecutive documents together while their shingles fit in one block.
        stop, total = start + 1, len(ids[start])
        while stop < len(ids) and total + len(ids[stop]) <= per_block:
            total += len(ids[stop])
            stop += 1
        x = np.concatenate(ids[start:stop])  # (total,)
        offsets = np.cumsum([0] + [len(v) for v in ids[start:stop - 1]])  # first shingle of each document
        if stop - start == 1 and total > per_block:  # one long document: a running minimum over pieces
            low = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
            for piece in range(0, total, per_block):
                hashed = (a * x[piece:piece + per_block] + b) >> np.uint64(32)  # (num_perm, piece)
                np.minimum(low, hashed.min(axis=1), out=low)
            out[start] = low
        else:
            hashed = (a * x + b) >> np.uint64(32)  # (num_perm, total): h_j of every shingle
            out[start:stop] = np.minimum.reduceat(hashed, offsets, axis=1).T  # (documents, num_perm)
        start = stop
    return out
    # END SOLUTION


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of positions where two signatures agree: an unbiased estimate of the Jaccard similarity."""
    # BEGIN SOLUTION
    if a.shape != b.shape:
        raise ValueError(f"signatures of different shapes {a.shape} and {b.shape}: made with different num_perm?")
    return float(np.count_nonzero(a == b)) / a.shape[-1]
    # END SOLUTION


def _choose_bands(threshold: float, num_perm: int) -> int:
    """The number of bands b (rows r = num_perm // b) with the most rows per band for which a pair at the threshold
    becomes a candidate with probability at least 0.99: few false candidates, few missed duplicates.

    Example: threshold 0.8, 128 permutations -> 21 bands of 6 rows: P[candidate | J=0.8] = 0.998, | J=0.5: 0.28.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
            return bands
    return num_perm


def near_dedup(docs: Iterable[str], threshold: float = 0.8, num_perm: int = 128, bands: int | None = None,
               ngram: int = 5, seed: int = 0, report: FilterReport | None = None) -> Iterator[str]:
    """Yield each document unless it is a near duplicate of a document already kept.

    A document is a near duplicate of a kept one when they share an LSH band (`bands` bands of num_perm // bands
    rows; None chooses them from the threshold) and their estimated Jaccard is >= `threshold`. Only kept documents
    go into the tables, so the first document of a group of near duplicates is the one that stays. Dropped
    documents are counted in report.dropped['near_duplicate']. Lazy: documents are signed in chunks as they come.
    """
    # BEGIN SOLUTION
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    bands = _choose_bands(threshold, num_perm) if bands is None else bands
    if not 1 <= bands <= num_perm:
        raise ValueError(f"bands must be between 1 and num_perm={num_perm}, got {bands}")
    rows = num_perm // bands
    # A band's key: its r values combined into one 64-bit number by random weights (equal bands, equal keys).
    weights = np.random.default_rng([seed, 1]).integers(0, 2**64, size=rows, dtype=np.uint64)
    tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]  # band key -> kept documents with that band
    kept: list[np.ndarray] = []  # signatures of the kept documents
    docs = iter(docs)
    while chunk := list(islice(docs, _CHUNK)):
        signatures = minhash_signatures(chunk, num_perm, ngram, seed)  # (chunk, num_perm)
        banded = signatures[:, :bands * rows].reshape(len(chunk), bands, rows).astype(np.uint64)
        keys = (banded * weights).sum(axis=2, dtype=np.uint64).tolist()  # (chunk, bands) python ints
        for doc, signature, doc_keys in zip(chunk, signatures, keys):
            candidates = {c for table, key in zip(tables, doc_keys) for c in table.get(key, ())}
            if any(estimate_jaccard(signature, kept[c]) >= threshold for c in candidates):
                if report is not None:
                    report.dropped["near_duplicate"] += 1
                continue
            for table, key in zip(tables, doc_keys):
                table.setdefault(key, []).append(len(kept))
            kept.append(signature)
            yield doc
    # END SOLUTION
