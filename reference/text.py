"""Text: load a corpus, clean it, filter it for quality and remove exact and near duplicates.

A model is only as good as its data. This module turns raw documents into a corpus worth training on:

    load      default_corpus(), load_text_files(paths), load_jsonl(paths), load_hf_dataset(...): lazy iterators
    clean     clean(text) = normalize_whitespace(normalize_unicode(remove_control_characters(text)))
    filter    quality rules in the spirit of Gopher (Rae et al., 2021), thresholds in one QualityConfig
    dedup     exact_dedup (hash of the normalised text, keeps the first); near_dedup (MinHash + LSH)
    pipeline  clean_corpus(docs) chains them and records in a FilterReport why each document was dropped

Every stage takes an iterable of documents (str) and yields documents, so a corpus larger than memory streams
through. Left out: language identification, toxicity and PII filters, perplexity filters, repetition rules on
n-grams and paragraphs, URL and boilerplate heuristics.

Non-UTF-8 input is a documented choice: by default a loader raises one ValueError that names the file and the
byte offset; with errors="replace" every invalid sequence becomes U+FFFD and a UnicodeWarning reports how many.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import unicodedata
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

__all__ = [
    "default_corpus", "decode_utf8", "load_text_files", "load_jsonl", "load_hf_dataset",
    "normalize_unicode", "remove_control_characters", "normalize_whitespace", "clean",
    "QualityConfig", "FilterReport", "word_count", "mean_word_length", "symbol_to_word_ratio",
    "alphabetic_word_fraction", "duplicate_line_fraction", "failed_rules", "quality_filter",
    "dedup_key", "exact_dedup", "shingles", "jaccard", "minhash_signatures", "estimate_jaccard", "near_dedup",
    "clean_corpus",
]

ERRORS = ("strict", "replace")


# ----------------------------------------------------------------------------------------------------------- loading

def default_corpus() -> Iterator[str]:
    """The corpus that ships with every Python: the `pydoc_data` topics (~465 KB of English), one document per topic.

    Example: next(default_corpus()).splitlines()[0] -> 'The "assert" statement'
    """
    # BEGIN SOLUTION
    from pydoc_data.topics import topics  # imported on first use: 0.5 MB of text

    yield from topics.values()
    # END SOLUTION


def decode_utf8(data: bytes, source: str = "<bytes>", errors: str = "strict") -> str:
    """Decode UTF-8 bytes.  errors="strict": invalid bytes raise a ValueError naming `source` and the byte offset;
    errors="replace": each invalid sequence becomes U+FFFD and a UnicodeWarning says how many were replaced.

    Example: decode_utf8(b"caf\\xc3\\xa9") -> 'café'
    """
    # BEGIN SOLUTION
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        if errors == "strict":
            bad = data[error.start:error.end]
            raise ValueError(
                f"{source}: not valid UTF-8 at byte {error.start} ({bad!r}: {error.reason}); fix the file or "
                f"load it with errors='replace'"
            ) from None
    text = data.decode("utf-8", errors="replace")
    # U+FFFD may already be in the file, encoded correctly: count only the ones decoding introduced.
    replaced = text.count("\ufffd") - data.count("\ufffd".encode("utf-8"))
    warnings.warn(f"{source}: replaced {replaced} invalid UTF-8 sequence(s) with U+FFFD", UnicodeWarning, stacklevel=3)
    return text
    # END SOLUTION


def _expand(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named by a path, a glob pattern ('data/**/*.txt') or a folder (every *.txt under it), in sorted order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for entry in paths:
        entry = os.fspath(entry)
        if os.path.isdir(entry):
            matches = sorted(glob.glob(os.path.join(glob.escape(entry), "**", "*.txt"), recursive=True))
        elif glob.has_magic(entry):
            matches = sorted(glob.glob(entry, recursive=True))
        elif os.path.exists(entry):
            matches = [entry]
        else:
            raise ValueError(f"no such file: {entry!r}")
        if not matches:
            raise ValueError(f"no files match {entry!r}")
        yield from (Path(match) for match in matches)


def load_text_files(paths, errors: str = "strict") -> Iterator[str]:
    """One document per file, read lazily: a file is opened only when its document is asked for.

    `paths`: a path, a glob pattern, a folder (its *.txt files, recursively) or a list of them.
    `errors`: what to do with bytes that are not UTF-8 (see decode_utf8).
    """
    # BEGIN SOLUTION
    for path in _expand(paths):
        yield decode_utf8(path.read_bytes(), source=str(path), errors=errors)
    # END SOLUTION


def load_jsonl(paths, field: str = "text", errors: str = "strict") -> Iterator[str]:
    """One document per line of JSON Lines files: the string in `field` of each object.  Blank lines are skipped.

    A line that is not JSON, not an object, or lacks `field` raises a ValueError naming the file and line number.
    Example line: {"text": "Hello.", "url": "https://example.com"}
    """
    # BEGIN SOLUTION
    for path in _expand(paths):
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                where = f"{path}:{number}"
                line = decode_utf8(raw, source=where, errors=errors)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
                if field not in record:
                    raise ValueError(f"{where}: no field {field!r} in this line (it has {sorted(record)})")
                if not isinstance(record[field], str):
                    raise ValueError(f"{where}: field {field!r} is {type(record[field]).__name__}, not a string")
                yield record[field]
    # END SOLUTION


def load_hf_dataset(dataset, field: str = "text", split: str = "train", streaming: bool = False,
                    **load_kwargs) -> Iterator[str]:
    """Documents from a Hugging Face `datasets` dataset: the string in `field` of each row.

    `dataset` is a name or path for `datasets.load_dataset(dataset, split=split, streaming=streaming, **load_kwargs)`
    (e.g. load_hf_dataset("json", data_files="corpus.jsonl", streaming=True)), or an already loaded Dataset or
    IterableDataset. With streaming=True rows are read as they are asked for, nothing is downloaded in full.
    """
    # BEGIN SOLUTION
    if isinstance(dataset, (str, os.PathLike)):
        try:
            import datasets
        except ImportError:
            raise ImportError("load_hf_dataset needs the `datasets` package: pip install datasets") from None
        dataset = datasets.load_dataset(os.fspath(dataset), split=split, streaming=streaming, **load_kwargs)
    for number, row in enumerate(dataset):  # a row of a Dataset or IterableDataset is a dict
        value = row.get(field)
        if not isinstance(value, str):
            raise ValueError(f"row {number}: no string field {field!r} (the row has {sorted(row)})")
        yield value
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------- cleaning

UNICODE_FORMS = ("NFC", "NFKC")

# Translation tables, built once. Control characters (category Cc) all lie in U+0000-U+009F; the whitespace ones
# among them (tab, line feed, form feed, U+001C-U+001F, U+0085 ...) are left to normalize_whitespace. U+FEFF
# (byte-order mark) and U+200B (zero-width space) are invisible and carry no text; the zero-width joiner U+200D
# stays: it glues emoji sequences together.
_CONTROLS = {i: None for i in range(0xA0) if unicodedata.category(chr(i)) == "Cc" and not chr(i).isspace()}
_CONTROLS.update({0xFEFF: None, 0x200B: None})
# Whitespace other than ' ', tab and newline (all of it lies below U+3001): line breaks -> '\n', the rest -> ' '.
# str.splitlines() knows which ones break lines.
_SPACES = {
    i: ("\n" if len(f"a{chr(i)}b".splitlines()) == 2 else " ")
    for i in range(0x3001) if chr(i).isspace() and chr(i) not in " \t\n"
}


def normalize_unicode(text: str, form: str = "NFC") -> str:
    """Unicode normalisation: one code point sequence for one text.  'e' + U+0301 (combining acute) -> 'é' (U+00E9).

    NFC composes canonically equivalent sequences. NFKC also folds compatibility variants: 'ﬁ' -> 'fi',
    full-width 'Ａ' -> 'A', no-break space -> space. Both are idempotent.
    """
    # BEGIN SOLUTION
    if form not in UNICODE_FORMS:
        raise ValueError(f"form must be one of {UNICODE_FORMS}, got {form!r}")
    return unicodedata.normalize(form, text)
    # END SOLUTION


def remove_control_characters(text: str) -> str:
    """Drop control characters (Unicode category Cc) except the whitespace ones (tab, newlines, form feed ...:
    normalize_whitespace turns those into spaces and line breaks), and the invisible U+FEFF and U+200B.

    Example: 'bell\\x07 and\\x00 null\\ufeff' -> 'bell and null'
    """
    # BEGIN SOLUTION
    return text.translate(_CONTROLS)
    # END SOLUTION


def normalize_whitespace(text: str) -> str:
    """Uniform whitespace, structure kept:

    1. every line break (\\r\\n, \\r, \\v, \\f, U+0085, U+2028, U+2029, ...) becomes '\\n';
    2. every other whitespace character except tab (no-break space, ideographic space ...) becomes ' ';
    3. spaces and tabs at the end of a line go; 4. runs of blank lines shrink to one blank line;
    5. whitespace at both ends of the document goes.

    Indentation and runs of spaces inside a line stay: they carry meaning in code and tables.
    Example: ' a \\r\\n\\n\\n\\u00a0b\\t' -> 'a\\n\\n b'
    """
    # BEGIN SOLUTION
    text = text.replace("\r\n", "\n").translate(_SPACES)  # "\r\n" first, or it would become two line breaks
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip(" \t\n")
    # END SOLUTION


def clean(text: str, form: str = "NFC") -> str:
    """normalize_whitespace(normalize_unicode(remove_control_characters(text), form)).  Idempotent.

    The order matters: removing a control character between 'e' and a combining accent makes a pair that
    normalisation composes, so controls go first; normalisation can make spaces (NFKC: U+00A0 -> ' '), so
    whitespace goes last. Cleaning never makes a text longer than its Unicode normalisation; normalisation alone
    can (NFC decomposes a few characters, e.g. U+FB2C -> three code points).
    """
    # BEGIN SOLUTION
    return normalize_whitespace(normalize_unicode(remove_control_characters(text), form))
    # END SOLUTION


# --------------------------------------------------------------------------------------------------- quality filters

@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality rules, after Gopher (Rae et al., 2021, appendix A.1.1). A document passes when

    min_words <= words <= max_words, min_mean_word_length <= mean word length <= max_mean_word_length,
    symbols ('#', '...', '…') per word <= max_symbol_word_ratio, words with a letter >= min_alphabetic_fraction,
    lines repeating an earlier line <= max_duplicate_line_fraction.
    """

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    min_alphabetic_fraction: float = 0.8
    max_duplicate_line_fraction: float = 0.3


class FilterReport:
    """How many documents went in, came out, and were dropped by each rule (a Counter: rule -> documents).

    The stages add to one report as documents stream through; str(report) prints it as a table.
    """

    def __init__(self):
        self.read = 0
        self.kept = 0
        self.dropped: Counter[str] = Counter()

    def __str__(self) -> str:
        lines = [f"read {self.read} documents, kept {self.kept}"]
        lines += [f"  dropped by {rule:<20} {count}" for rule, count in self.dropped.most_common()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"FilterReport(read={self.read}, kept={self.kept}, dropped={dict(self.dropped)})"


def word_count(text: str) -> int:
    """Words are maximal runs of non-whitespace.  Example: 'Hello,  world !' -> 3"""
    # BEGIN SOLUTION
    return len(text.split())
    # END SOLUTION


def mean_word_length(text: str) -> float:
    """Mean characters per word (0.0 for no words).  Example: 'a bb cccccc' -> 3.0"""
    # BEGIN SOLUTION
    words = text.split()
    return sum(map(len, words)) / len(words) if words else 0.0
    # END SOLUTION


def symbol_to_word_ratio(text: str) -> float:
    """Occurrences of '#', '...' and '…' per word (0.0 for no words).  Example: '# title ... done' -> 2/4 = 0.5"""
    # BEGIN SOLUTION
    words = len(text.split())
    symbols = text.count("#") + text.count("...") + text.count("…")
    return symbols / words if words else 0.0
    # END SOLUTION


def alphabetic_word_fraction(text: str) -> float:
    """Fraction of words with at least one letter (0.0 for no words).  Example: 'abc 123 x1' -> 2/3"""
    # BEGIN SOLUTION
    words = text.split()
    return sum(any(ch.isalpha() for ch in word) for word in words) / len(words) if words else 0.0
    # END SOLUTION


def duplicate_line_fraction(text: str) -> float:
    """Fraction of non-blank lines that repeat an earlier line (compared without surrounding whitespace).

    Example: 'a\\nb\\na\\na' -> 2/4 = 0.5 (the second and third 'a' repeat the first)
    """
    # BEGIN SOLUTION
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0
    # END SOLUTION


def failed_rules(text: str, config: QualityConfig | None = None) -> list[str]:
    """Names of the quality rules `text` breaks, in this order: 'too_few_words', 'too_many_words',
    'mean_word_length', 'symbol_to_word_ratio', 'alphabetic_fraction', 'duplicate_lines'.  [] means it passes.

    A pure function: the answer depends on `text` and `config` alone, never on documents seen before.
    """
    # BEGIN SOLUTION
    config = config or QualityConfig()
    words = word_count(text)
    checks = [
        ("too_few_words", words >= config.min_words),
        ("too_many_words", words <= config.max_words),
        ("mean_word_length",
         config.min_mean_word_length <= mean_word_length(text) <= config.max_mean_word_length),
        ("symbol_to_word_ratio", symbol_to_word_ratio(text) <= config.max_symbol_word_ratio),
        ("alphabetic_fraction", alphabetic_word_fraction(text) >= config.min_alphabetic_fraction),
        ("duplicate_lines", duplicate_line_fraction(text) <= config.max_duplicate_line_fraction),
    ]
    return [name for name, passed in checks if not passed]
    # END SOLUTION


def quality_filter(docs: Iterable[str], config: QualityConfig | None = None,
                   report: FilterReport | None = None) -> Iterator[str]:
    """Yield the documents that break no quality rule; count each dropped one in report.dropped under the first
    rule it breaks."""
    # BEGIN SOLUTION
    for doc in docs:
        failed = failed_rules(doc, config)
        if not failed:
            yield doc
        elif report is not None:
            report.dropped[failed[0]] += 1
    # END SOLUTION


# ------------------------------------------------------------------------------------------------------ exact dedup

def dedup_key(text: str) -> bytes:
    """The identity of a document for exact deduplication: a 128-bit BLAKE2b hash of its normalised text,
    clean(text) case-folded with every whitespace run made one space.

    'Hello  World' and 'hello\\nworld' share a key; 'Hello, World' does not.
    """
    # BEGIN SOLUTION
    normalized = " ".join(clean(text).casefold().split())
    return hashlib.blake2b(normalized.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()
    # END SOLUTION


def exact_dedup(docs: Iterable[str], report: FilterReport | None = None) -> Iterator[str]:
    """Yield each document whose dedup_key has not been seen before: the first of each group of duplicates, in
    corpus order.  Memory: 16 bytes per distinct document."""
    # BEGIN SOLUTION
    seen: set[bytes] = set()
    for doc in docs:
        key = dedup_key(doc)
        if key in seen:
            if report is not None:
                report.dropped["exact_duplicate"] += 1
            continue
        seen.add(key)
        yield doc
    # END SOLUTION


# ------------------------------------------------------------------------------------------------------- near dedup

# Near-duplicate detection: MinHash signatures over word n-gram shingles, and LSH banding to find candidates.
#
# Two documents are near duplicates when the Jaccard similarity of their shingle sets is high:
#
#     J(A, B) = |A ∩ B| / |A ∪ B|,    A = { (w_i, ..., w_{i+n-1}) : i }  the word n-grams of a document.
#
# MinHash (Broder, 1997). For a random hash function h, P[min h(A) = min h(B)] = J(A, B): the smallest hash over
# A ∪ B lands in A ∩ B with that probability. With k independent functions h_1..h_k the signature of a document is
# (min h_1(A), ..., min h_k(A)), and the fraction of equal positions estimates J with standard deviation
# sqrt(J(1-J)/k); Hoeffding: P[|Ĵ - J| >= eps] <= 2 exp(-2 k eps^2).
#
# LSH banding. Cut each signature into b bands of r rows. Two documents become candidates when some band is equal
# in all r rows, which happens with probability 1 - (1 - J^r)^b: an S-curve in J that rises steeply around
# (1/b)^(1/r). Each band is a hash table, so finding candidates costs one lookup per band, not one comparison per
# pair. A candidate is then confirmed by its estimated Jaccard >= threshold.
#
# Hashing, all vectorised with numpy. Words are hashed once (CRC-32); the n words of a shingle are combined by a
# polynomial and a 64-bit mixer into a 32-bit shingle id x; the k hash functions are multiply-add-shift,
# h_j(x) = ((a_j x + b_j) mod 2^64) >> 32 with random 64-bit a_j, b_j (Dietzfelbinger, 1996): strongly universal,
# no modulo by a prime, and numpy's uint64 arithmetic wraps around mod 2^64 for free.
#
# Left out: weighted MinHash, one-permutation hashing, b-bit signatures, suffix-array substring dedup.

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


def _shingle_ids(docs: Sequence[str], ngram: int, vocabulary: dict[str, int]) -> list[np.ndarray]:
    """32-bit ids of the word n-grams of each document (with repeats), as uint64 arrays: the same shingle always
    gets the same id. Computed for all the documents at once on their words laid end to end, so numpy's cost per
    call is paid once, not once per document. `vocabulary` caches word hashes.

    Example (ngram=2): ['a b c', 'd'] -> [ids of (a, b), (b, c)], [id of (d)]
    """
    if not docs:
        return []
    words = [doc.split() or [""] for doc in docs]
    for word in set().union(*words).difference(vocabulary):
        vocabulary[word] = zlib.crc32(word.encode("utf-8", "surrogatepass"))
    flat = np.array([vocabulary[w] for doc_words in words for w in doc_words], dtype=np.uint64)  # (all words,)
    lengths = np.array([len(doc_words) for doc_words in words])  # (documents,)
    starts = np.cumsum(lengths) - lengths  # first word of each document
    short = lengths < ngram  # a short text is one shingle of all its words
    # Polynomial hash of n consecutive word hashes, (((w_i) P + w_{i+1}) P + ...) mod 2^64, at every position of
    # the stream; windows that run past the end of their document are thrown away below.
    combined = np.zeros(len(flat), dtype=np.uint64)
    whole_short_text = np.zeros(len(docs), dtype=np.uint64)
    for j in range(ngram):
        m = max(len(flat) - j, 0)  # windows that still have a word j
        combined[:m] = combined[:m] * np.uint64(0x100000001B3) + flat[j:j + m]
        done = short & (lengths == j + 1)  # short texts of j + 1 words are complete now
        whole_short_text[done] = combined[starts[done]]
    combined[starts[short]] = whole_short_text[short]
    last_start = np.repeat(starts + np.where(short, 0, lengths - ngram), lengths)  # per word: its document's
    keep = np.arange(len(flat)) <= last_start  # windows that stay inside their document
    # A short text and a long one never share a shingle: mix the width in.
    widths = np.repeat(np.where(short, lengths, ngram).astype(np.uint64), lengths)
    ids = _mix64(combined[keep] + widths[keep]) >> np.uint64(32)
    counts = np.where(short, 1, lengths - ngram + 1)  # shingles per document
    return np.split(ids, np.cumsum(counts)[:-1])


def _hash_functions(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The multipliers a (num_perm, 1) and offsets b (num_perm, 1) of the num_perm hash functions: uint64."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2**64, size=(2, num_perm, 1), dtype=np.uint64)
    return a, b


def _hash(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """h_j(x) = ((a_j x + b_j) mod 2^64) >> 32 for every function j and shingle x: (num_perm, len(x)) uint64.
    In place after the first product: this is where the time goes."""
    hashed = a * x  # (num_perm, 1) * (len(x),) -> (num_perm, len(x)), wrapping mod 2^64
    hashed += b
    hashed >>= np.uint64(32)
    return hashed


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
    out = np.empty((len(docs), num_perm), dtype=np.uint32)
    per_block = max(_BLOCK // num_perm, 1)  # shingles hashed together
    for first in range(0, len(docs), _CHUNK):  # bounded memory: shingle ids of _CHUNK documents at a time
        ids = _shingle_ids(docs[first:first + _CHUNK], ngram, vocabulary)
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
                    np.minimum(low, _hash(a, b, x[piece:piece + per_block]).min(axis=1), out=low)
                out[first + start] = low
            else:
                hashed = _hash(a, b, x)  # (num_perm, total): h_j of every shingle
                out[first + start:first + stop] = np.minimum.reduceat(hashed, offsets, axis=1).T  # (docs, num_perm)
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


# --------------------------------------------------------------------------------------------------------- pipeline

def clean_corpus(docs: Iterable[str], config: QualityConfig | None = None, near_threshold: float | None = 0.8,
                 form: str = "NFC", report: FilterReport | None = None) -> Iterator[str]:
    """clean -> drop empty -> quality_filter -> exact_dedup -> near_dedup (skipped when near_threshold is None).

    Lazy like its stages. When the last document has gone by and none was kept, raises a ValueError that says how
    many were read and what dropped them: an empty corpus is an error, not an empty training run.
    """
    # BEGIN SOLUTION
    report = report if report is not None else FilterReport()

    def cleaned() -> Iterator[str]:
        for doc in docs:
            report.read += 1
            text = clean(doc, form)
            if text:
                yield text
            else:
                report.dropped["empty"] += 1

    stream = exact_dedup(quality_filter(cleaned(), config, report), report)
    if near_threshold is not None:
        stream = near_dedup(stream, threshold=near_threshold, report=report)
    for doc in stream:
        report.kept += 1
        yield doc
    if report.kept == 0:
        raise ValueError(f"the corpus is empty after filtering: {report}")
    # END SOLUTION
