"""Tokenizer: byte-level BPE trained from scratch, and the tokenizers it must agree with.

Text becomes ids in three steps. (1) Special tokens (`<|endoftext|>` ...) are cut out first: each is one id, never
split, never part of a merge. (2) The text between them is split into pre-tokens by a regular expression (the GPT-2
or GPT-4 split pattern): words with their leading space, runs of digits, punctuation, whitespace. No token ever
crosses a pre-token boundary. (3) Each pre-token's UTF-8 bytes are merged, pair by pair, into vocabulary tokens.
Because the alphabet is the 256 byte values, every string has an encoding and `decode(encode(s)) == s` always.

Training learns the merges (Sennrich et al. 2016 on bytes, as in GPT-2): start from the 256 single bytes, count
adjacent pairs over the corpus, turn the most frequent pair into a new token, repeat until the vocabulary has
`vocab_size` tokens. Ids: 0..255 are the bytes, then the special tokens, then the merged tokens in the order learned.
`train_bpe` here is that loop as written; `kernels.train_bpe` (chapter 14) learns the same merges fast.

Encoding follows tiktoken exactly: a pre-token that is itself a token is one id; otherwise merge, again and again,
the adjacent pair whose concatenation has the lowest id (its rank), leftmost first. The same ranks and pattern
therefore give the same ids in tiktoken (`to_tiktoken`) and Hugging Face `tokenizers` (`to_hf_tokenizer`).

Also here: `SentencePieceTokenizer`, the same interface backed by a `sentencepiece` model configured to be lossless.

Left out: normalisation (NFC, lower-casing: a tokenizer that changes the text cannot round-trip it), the dropout
and sampling variants of BPE, and unigram language-model training of our own (sentencepiece provides one).
"""

from __future__ import annotations

import heapq
import io
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain, repeat
from operator import add
from pathlib import Path

import regex

from .files import write_bytes_atomic

# The split patterns, as tiktoken and Hugging Face write them. GPT-2: contractions, letters with an optional
# leading space, digits likewise, other symbols likewise, then whitespace. GPT-4 (cl100k) differs: contractions are
# case-insensitive, a letter run may take one leading non-letter ("(foo", "_bar"), numbers split every 3 digits,
# and newlines are kept with the whitespace before them.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# On ASCII text the two patterns mean exactly what these do: \p{L} is [A-Za-z], \p{N} is [0-9], \s is
# [\t\n\v\f\r ] (not `re`'s \s, which also takes \x1c-\x1f, characters Unicode does not count as white space).
# The standard `re` module runs them about twice as fast as `regex` runs the originals, and most code and much
# English is pure ASCII.
_W = r"\t\n\x0b\x0c\r "
_ASCII_TWINS = {
    GPT2_PATTERN: rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_W}A-Za-z0-9]+|[{_W}]+(?![^{_W}])|[{_W}]+""",
    GPT4_PATTERN: (rf"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{{1,3}}"""
                   rf"""| ?[^{_W}A-Za-z0-9]+[\r\n]*|[{_W}]*[\r\n]+|[{_W}]+(?![^{_W}])|[{_W}]+"""),
}

# Streaming encoding holds back the last pre-tokens: the patterns decide a pre-token from at most a few characters
# past its end (the longest contraction, "'ll", needs 3), except across whitespace, which is held back whole.
_LOOKAHEAD = 8
# Pre-tokens remembered by an encoder; past this, the cache starts again (bounded memory on endless streams).
_CACHE_SIZE = 1 << 18
_REPLACEMENT = "\N{REPLACEMENT CHARACTER}"
_SINGLE_BYTES = [bytes([byte]) for byte in range(256)]
# Pre-tokens longer than this many bytes are merged with a heap, in O(n log n) instead of O(n^2).
_LONG_PIECE = 256


# ---------------------------------------------------------------------------------------------------------------
# Checks shared by training and encoding
# ---------------------------------------------------------------------------------------------------------------

def _resolve_pattern(pattern: str) -> str:
    """'gpt2' or 'gpt4' name a built-in pattern; any other string is the regular expression itself."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be 'gpt2', 'gpt4' or a regular expression, got {pattern!r}")
    pattern = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(pattern)
    except regex.error as error:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {error}") from None
    return pattern


class _PreTokenizer:
    """`findall` of a pattern: the list of pre-tokens of a text. A pure-ASCII text (str.isascii() costs nothing)
    goes through the pattern's `re` twin when it has one; the pre-tokens are the same."""

    def __init__(self, pattern: str):
        self.pattern = regex.compile(pattern)
        twin = _ASCII_TWINS.get(pattern)
        self.ascii_pattern = re.compile(twin) if twin else None

    def __call__(self, text: str) -> list[str]:
        if self.ascii_pattern is not None and text.isascii():
            return self.ascii_pattern.findall(text)
        return self.pattern.findall(text)


def _check_text(text: str, what: str = "text") -> None:
    """Raise a ValueError naming the first lone surrogate: such a string has no UTF-8 bytes to tokenize."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        char = text[error.start]
        raise ValueError(
            f"{what} contains the lone surrogate {char!r} (U+{ord(char):04X}) at index {error.start}; "
            "it is not valid Unicode and has no UTF-8 encoding") from None


def _check_special_tokens(special_tokens) -> list[str]:
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, not the string {special_tokens!r}")
    tokens = list(special_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"a special token must be a non-empty string, got {token!r}")
        _check_text(token, f"the special token {token!r}")
    duplicates = sorted({token for token in tokens if tokens.count(token) > 1})
    if duplicates:
        raise ValueError(f"special tokens must be distinct; {duplicates[0]!r} is given more than once")
    return tokens


def _special_regex(special_tokens) -> regex.Pattern | None:
    """One alternation of the escaped tokens, longest first, so that '<|a|>x' wins over its prefix '<|a|>'."""
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=lambda token: (-len(token), token))
    return regex.compile("|".join(regex.escape(token) for token in ordered))


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def _sources(data) -> Iterator[str | Path]:
    """The documents of `data`, each a str or a Path: a str is one document, a path one file, an iterable many."""
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    elif isinstance(data, bytes) or not isinstance(data, Iterable):
        raise TypeError(f"data must be a str, a path, or an iterable of them, not {type(data).__name__}")
    for item in data:
        if isinstance(item, str):
            yield item
        elif isinstance(item, os.PathLike):
            yield Path(item)
        else:
            raise TypeError(f"each document must be a str or a path, got {type(item).__name__}")


def _documents(data) -> Iterator[str]:
    """The text of each document of `data`, one at a time."""
    for source in _sources(data):
        if isinstance(source, str):
            yield source
            continue
        # newline="" keeps "\r\n" as it is: the tokenizer sees the file's exact text.
        with open(source, encoding="utf-8", newline="") as file:
            try:
                text = file.read()
            except UnicodeDecodeError as error:
                raise ValueError(f"{source} is not UTF-8 text: {error}") from None
        yield text


def _check_vocab_size(vocab_size, special_tokens: list[str]) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} is too small: 256 bytes + {len(special_tokens)} special tokens "
                         f"need at least {256 + len(special_tokens)}")


# BEGIN SOLUTION
def _pair_counts(words: dict[tuple[bytes, ...], int]) -> Counter:
    """How often each adjacent pair occurs, a word counting as often as it occurs in the corpus.

    Example: {(b'a', b'b', b'a', b'b'): 2, (b'b', b'a'): 1} -> {(b'a', b'b'): 4, (b'b', b'a'): 3}
    """
    pairs = Counter()
    for word, count in words.items():
        for pair in zip(word, word[1:]):
            pairs[pair] += count
    return pairs


def _merge(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """`word` with every occurrence of `pair` made one token, left to right, without overlap.

    Example: (b'a', b'a', b'a', b'b'), (b'a', b'a') -> (b'aa', b'a', b'b')
    """
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)
# END SOLUTION


def train_bpe(data, vocab_size: int, special_tokens=(), pattern: str = "gpt4") -> Tokenizer:
    """Learn a byte-level BPE tokenizer of `vocab_size` tokens from `data`.

    data: a str (one document), a path (a UTF-8 file, read as it is, "\\r\\n" included), or an iterable of them.
    Documents are independent: no pre-token spans two of them. A special token in the text separates what is on
    either side just as well, and is never counted or merged into anything.

    Vocabulary: ids 0..255 are the single bytes, then `special_tokens` in order, then one token per merge, in the
    order learned. Training stops at exactly `vocab_size` tokens, or earlier, with a warning, when no adjacent pair
    is left in the corpus.

    Each step merges the most frequent adjacent pair. **Tie-break**: among pairs of equal count, the
    lexicographically greatest pair of byte strings wins, comparing (left, right) as Python compares
    (bytes, bytes) tuples. Worked example, the documents ['ab', 'cd', 'ab', 'cd', 'ac'], vocab_size=259:

        pair counts                      merge
        (a,b) 2   (c,d) 2   (a,c) 1      b'c' + b'd'   a tie at 2, and b'c' > b'a'
        (a,b) 2   (a,c) 1                b'a' + b'b'
        (a,c) 1                          b'a' + b'c'

    Bytes decide, not ids: after merging ab, the pairs (b'ab', b'c') and (b'b', b'd') tie, and (b'b', b'd') wins,
    because b'b' > b'ab' (although the token ab has the larger id).

    Every merge makes a new token. (Could a later merge X + Y spell an earlier token T? The merges so far cut a
    stretch of a word that begins and ends at token boundaries just as they would cut its bytes alone; alone,
    T's bytes became the one token T when T was made, and a token is never split again.)

    This is the textbook loop: it recounts every pair after each merge. `kernels.train_bpe` learns exactly the
    same merges with work proportional to what each merge changes.
    """
    # BEGIN SOLUTION
    special_tokens = _check_special_tokens(special_tokens)
    _check_vocab_size(vocab_size, special_tokens)
    pattern = _resolve_pattern(pattern)

    # 1. Pre-token frequencies: special tokens cut out, the rest split by the pattern.
    split, special_re = _PreTokenizer(pattern), _special_regex(special_tokens)
    counts, empty = Counter(), True
    for text in _documents(data):
        empty = empty and not text
        for segment in special_re.split(text) if special_re else (text,):
            counts.update(split(segment))
    if empty:
        raise ValueError("the corpus is empty: there is no text to learn merges from")

    # 2. Each distinct pre-token is a word: a tuple of single-byte tokens, with how often it occurs.
    words = {}
    for piece, count in counts.items():
        _check_text(piece, "the corpus")
        words[tuple(_SINGLE_BYTES[byte] for byte in piece.encode("utf-8"))] = count

    # 3. Merge the most frequent pair (ties: the greatest (left, right) bytes), again and again.
    vocab = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    merges = []
    while len(vocab) < vocab_size:
        pairs = _pair_counts(words)
        if not pairs:
            warnings.warn(f"the corpus ran out of pairs to merge after {len(merges)} merges: the vocabulary has "
                          f"{len(vocab)} tokens, not vocab_size={vocab_size}", stacklevel=2)
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        vocab[len(vocab)] = best[0] + best[1]
        # only the words that hold the pair change (a word that lacks its left token cannot hold it)
        words = {(_merge(word, best) if best[0] in word else word): count for word, count in words.items()}
    return Tokenizer(vocab, merges, special_tokens, pattern)
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------------
# Encoding and decoding
# ---------------------------------------------------------------------------------------------------------------

class _PieceCache(dict):
    """pre-token -> ids; a miss runs BPE on the pre-token (dict's __missing__), so hits stay in C."""

    def __init__(self, encode_piece):
        super().__init__()
        self.encode_piece = encode_piece

    def __missing__(self, piece: str) -> tuple[int, ...]:
        ids = self.encode_piece(piece)
        if len(self) >= _CACHE_SIZE:
            self.clear()
        self[piece] = ids
        return ids


def _allowed_set(allowed_special, special_tokens: dict[str, int]) -> frozenset[str]:
    if allowed_special == "all":
        return frozenset(special_tokens)
    if allowed_special == "none" or allowed_special is None:
        return frozenset()
    if isinstance(allowed_special, str):
        raise ValueError(f"allowed_special must be 'all', 'none' or a set of special tokens, got {allowed_special!r}")
    allowed = frozenset(allowed_special)
    unknown = sorted(allowed - set(special_tokens))
    if unknown:
        raise ValueError(f"allowed_special names {unknown[0]!r}, which is not a special token of this tokenizer")
    return allowed


def _last_special_prefix(text: str, special_tokens: Iterable[str]) -> int:
    """Length of the longest end of `text` that is a proper prefix of a special token.  Example: 'ab<|e' -> 3"""
    best = 0
    for token in special_tokens:
        for size in range(min(len(token) - 1, len(text)), best, -1):
            if text.endswith(token[:size]):
                best = size
                break
    return best


class Tokenizer:
    """A byte-level BPE tokenizer: `vocab` (id -> bytes), `merges` (in order), special tokens and a split pattern.

    vocab must hold the 256 single bytes and every merge's parts and result. A special token's id is the largest
    id whose bytes spell it; every other id is an ordinary token, and an ordinary token's rank is its id. When two
    ordinary ids spell the same bytes, those bytes encode as the smaller id (the larger one only decodes).
    """

    def __init__(self, vocab: dict[int, bytes], merges, special_tokens=(), pattern: str = "gpt4"):
        # BEGIN SOLUTION
        self.vocab = {int(i): bytes(token) for i, token in vocab.items()}
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.pattern = _resolve_pattern(pattern)
        specials = _check_special_tokens(special_tokens)
        by_bytes = {}
        for i, token in sorted(self.vocab.items()):
            by_bytes[token] = i  # the largest id wins
        self.special_tokens: dict[str, int] = {}
        for token in specials:
            if token.encode("utf-8") not in by_bytes:
                raise ValueError(f"the special token {token!r} is not in the vocabulary")
            self.special_tokens[token] = by_bytes[token.encode("utf-8")]
        special_ids = set(self.special_tokens.values())
        self._ranks: dict[bytes, int] = {}
        for i, token in sorted(self.vocab.items(), reverse=True):
            if i not in special_ids:
                self._ranks[token] = i  # duplicates: the smallest id wins
        missing = [byte for byte in range(256) if bytes([byte]) not in self._ranks]
        if missing:
            raise ValueError(f"the vocabulary lacks the single byte {bytes([missing[0]])!r}: byte-level BPE needs "
                             "all 256 to encode any text")
        for a, b in self.merges:
            for part in (a, b, a + b):
                if part not in self._ranks:
                    raise ValueError(f"the merge {a!r} + {b!r} uses {part!r}, which is not an ordinary token")
        self._regex = regex.compile(self.pattern)
        self._split = _PreTokenizer(self.pattern)
        self._special_res: dict[frozenset, regex.Pattern | None] = {}
        self._cache = _PieceCache(self._encode_piece)
        # END SOLUTION

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={len(self.vocab)}, special_tokens={list(self.special_tokens)})"

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        """BPE on one pre-token, as tiktoken does it: the whole pre-token if it is a token, else merge the adjacent
        pair whose concatenation has the lowest rank, leftmost among equals, until no adjacent pair is a token.

        Example with ranks {b'a': 97, b'b': 98, b'ab': 300, b'abb': 301}: 'abb' -> (301,) at once; 'abab' ->
        [a, b, a, b] -> [ab, a, b] -> [ab, ab] -> (300, 300).
        """
        # BEGIN SOLUTION
        try:
            data = piece.encode("utf-8")
        except UnicodeEncodeError:
            _check_text(piece)
        ranks = self._ranks
        whole = ranks.get(data)
        if whole is not None:
            return (whole,)
        if len(data) > _LONG_PIECE:
            return self._encode_long_piece(data)
        parts = list(map(_SINGLE_BYTES.__getitem__, data))
        get, missing = ranks.get, 1 << 62  # `missing` ranks after every token
        # pair_ranks[i]: the rank of parts[i] + parts[i + 1], or `missing`. It never runs empty: the last merge
        # would make the whole pre-token, which is not a token (it would have been returned above).
        pair_ranks = list(map(get, map(add, parts, parts[1:]), repeat(missing)))
        while (lowest := min(pair_ranks)) != missing:
            best = pair_ranks.index(lowest)  # the leftmost of the lowest
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
            del pair_ranks[best]
            # only the pairs touching the new part change
            if best > 0:
                pair_ranks[best - 1] = get(parts[best - 1] + parts[best], missing)
            if best < len(pair_ranks):
                pair_ranks[best] = get(parts[best] + parts[best + 1], missing)
        return tuple(map(ranks.__getitem__, parts))
        # END SOLUTION

    def _encode_long_piece(self, data: bytes) -> tuple[int, ...]:
        """The same merges in O(n log n) for a long pre-token (a run of 10^5 spaces, a minified line): the pairs
        wait in a heap of (rank, position), the parts form a linked list, and an entry whose pair has changed
        since it was pushed is skipped when it comes up. Position order is text order, so among equal ranks the
        leftmost pair still goes first."""
        # BEGIN SOLUTION
        ranks = self._ranks
        parts = list(map(_SINGLE_BYTES.__getitem__, data))  # parts[i]: the part starting at byte i (when alive)
        after = list(range(1, len(parts))) + [-1]  # the next live part, or -1
        before = list(range(-1, len(parts) - 1))
        heap = [(rank, i) for i in range(len(parts) - 1)
                if (rank := ranks.get(parts[i] + parts[i + 1])) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = after[i]
            if parts[i] is None or j < 0 or ranks.get(parts[i] + parts[j]) != rank:
                continue  # stale: this pair was changed by a merge since
            parts[i] += parts[j]
            parts[j] = None
            after[i] = after[j]
            if after[j] >= 0:
                before[after[j]] = i
            for left, right in ((before[i], i), (i, after[i])):
                if left >= 0 and right >= 0 and (new := ranks.get(parts[left] + parts[right])) is not None:
                    heapq.heappush(heap, (new, left))
        return tuple(ranks[part] for part in parts if part is not None)
        # END SOLUTION

    def _special_re(self, allowed: frozenset):
        found = self._special_res.get(allowed)
        if found is None and allowed:
            found = self._special_res[allowed] = _special_regex(allowed)
        return found

    def _encode_ordinary(self, text: str) -> list[int]:
        # BEGIN SOLUTION
        return list(chain.from_iterable(map(self._cache.__getitem__, self._split(text))))
        # END SOLUTION

    def encode(self, text: str, allowed_special="all") -> list[int]:
        """Token ids of `text`. allowed_special: 'all' (default), 'none', or a set of the special tokens to treat as
        special; any other occurrence of a special token's text is encoded as ordinary text, byte by byte."""
        # BEGIN SOLUTION
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        special_re = self._special_re(_allowed_set(allowed_special, self.special_tokens))
        if special_re is None:
            return self._encode_ordinary(text)
        ids, start = [], 0
        for match in special_re.finditer(text):
            ids += self._encode_ordinary(text[start:match.start()])
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids += self._encode_ordinary(text[start:])
        return ids
        # END SOLUTION

    def _stable_prefix(self, text: str, allowed: frozenset) -> int:
        """How much of `text` encodes the same whatever text comes after it.

        Held back: the end of `text` that could begin a special token, and then the last pre-tokens: a pre-token
        ending less than _LOOKAHEAD characters from the end, and any pre-token next to a whitespace run that could
        still grow ("\\n" + spaces becomes one pre-token if a "\\n" follows the spaces).
        """
        # BEGIN SOLUTION
        end = len(text) - _last_special_prefix(text, allowed)
        start = 0
        special_re = self._special_re(allowed)
        if special_re is not None:
            for match in special_re.finditer(text, 0, end):
                start = match.end()
        cut = start
        for match in self._regex.finditer(text, start, end):
            position = match.start()
            if position > end - _LOOKAHEAD:
                break
            # str.isspace() holds every character the patterns' \s matches (and \x1c-\x1f besides)
            if position > start and not text[position - 1].isspace():
                cut = position
        return cut
        # END SOLUTION

    def encode_iterable(self, iterable: Iterable[str], allowed_special="all") -> Iterator[int]:
        """Ids of the concatenation of `iterable`'s strings, yielded as they become certain, in bounded memory:
        `list(encode_iterable(chunks)) == encode("".join(chunks))` however the text is cut into chunks."""
        # BEGIN SOLUTION
        allowed = _allowed_set(allowed_special, self.special_tokens)
        buffer = ""
        for chunk in iterable:
            if not isinstance(chunk, str):
                raise TypeError(f"encode_iterable takes strings, got {type(chunk).__name__}")
            buffer += chunk
            cut = self._stable_prefix(buffer, allowed)
            if cut:
                yield from self.encode(buffer[:cut], allowed)
                buffer = buffer[cut:]
        yield from self.encode(buffer, allowed)
        # END SOLUTION

    def decode(self, ids) -> str:
        """The text of `ids`. Any sequence of ids in the vocabulary decodes: bytes that are not valid UTF-8 (a
        character cut between tokens, say) become U+FFFD, the replacement character."""
        # BEGIN SOLUTION
        if hasattr(ids, "tolist"):  # a tensor or an array
            ids = ids.tolist()
        ids = list(ids)
        vocab = self.vocab
        try:
            data = b"".join(map(vocab.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not _in(i, vocab))
            raise ValueError(f"cannot decode the id {bad!r}: the vocabulary has ids 0..{len(vocab) - 1}") from None
        return data.decode("utf-8", errors="replace")
        # END SOLUTION

    def save(self, path) -> None:
        """Write the tokenizer to `path` as JSON (atomically: a reader never sees half a file):

            {"format": "llmkata-bpe/1",
             "pattern": "<the split regex>",
             "special_tokens": {"<|endoftext|>": 256, ...},
             "vocab": {"0": "\\u0000", ..., "300": " the", ...},
             "merges": [[" ", "t"], [" t", "he"], ...]}

        Token bytes are written as text by mapping byte b to the character chr(b) (Latin-1), so ASCII tokens read
        as themselves and any byte string round-trips. Merges are listed in the order they were learned.
        """
        # BEGIN SOLUTION
        as_text = lambda token: token.decode("latin-1")  # noqa: E731
        document = {
            "format": "llmkata-bpe/1",
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab": {str(i): as_text(token) for i, token in sorted(self.vocab.items())},
            "merges": [[as_text(a), as_text(b)] for a, b in self.merges],
        }
        write_bytes_atomic(path, json.dumps(document, indent=1).encode("utf-8"))
        # END SOLUTION

    @classmethod
    def load(cls, path) -> Tokenizer:
        """Read a tokenizer written by `save`."""
        # BEGIN SOLUTION
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("format") != "llmkata-bpe/1":
                raise ValueError("no 'format': 'llmkata-bpe/1' entry")
            as_bytes = lambda text: text.encode("latin-1")  # noqa: E731
            vocab = {int(i): as_bytes(token) for i, token in document["vocab"].items()}
            merges = [(as_bytes(a), as_bytes(b)) for a, b in document["merges"]]
            specials = sorted(document["special_tokens"], key=document["special_tokens"].get)
            tokenizer = cls(vocab, merges, specials, document["pattern"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is not a tokenizer file written by Tokenizer.save: {error}") from None
        if tokenizer.special_tokens != document["special_tokens"]:
            raise ValueError(f"{path}: the special token ids do not match the vocabulary")
        return tokenizer
        # END SOLUTION


def _in(key, mapping) -> bool:
    try:
        return key in mapping
    except TypeError:  # unhashable
        return False


# ---------------------------------------------------------------------------------------------------------------
# sentencepiece
# ---------------------------------------------------------------------------------------------------------------

# sentencepiece writes a space as U+2581 '▁' inside its pieces; a '▁' in the text would come back as a space.
_SP_SPACE = "\u2581"
_SP_SPLIT = regex.compile(f"({_SP_SPACE})")


def train_sentencepiece(data, vocab_size: int, special_tokens=()) -> SentencePieceTokenizer:
    """Train a sentencepiece BPE model configured to lose nothing, and wrap it in a SentencePieceTokenizer.

    Lossless means: byte fallback (a character outside the vocabulary becomes its UTF-8 bytes, <0x..> pieces),
    the identity normalisation (no NFKC), no dummy prefix (no space added in front), whitespace kept as it is
    (no trimming, no collapsing of runs). sentencepiece learns from lines: the documents are split at special
    tokens and newlines. The vocabulary: <unk>, the special tokens (control symbols), 256 byte pieces, then the
    learned pieces: one for each character of the corpus but line ends (however rare), then merged pieces, which
    may be runs of whitespace alone (indentation) or of digits. No <s>, </s> or <pad> piece: a special token is
    asked for by name.

    vocab_size bounds the vocabulary: at most that many tokens, fewer when the corpus has no more pieces to learn.
    It must leave room for <unk>, the special tokens, the 256 bytes and each distinct character of the corpus
    (sentencepiece's own rule): the smallest is 258 + len(special_tokens), for a corpus of one character.
    """
    # BEGIN SOLUTION
    import sentencepiece

    special_tokens = _check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 258 + len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} is too small: <unk> + 256 bytes + {len(special_tokens)} special "
                         f"tokens + a character need at least {258 + len(special_tokens)}")
    special_re = _special_regex(special_tokens)
    sentences = []
    for text in _documents(data):
        _check_text(text, "the corpus")
        for segment in special_re.split(text) if special_re else (text,):
            sentences.extend(line for line in segment.split("\n") if line)
    if not sentences:
        raise ValueError("the corpus is empty: there is no text to train sentencepiece on")
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
            remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=False,
            character_coverage=1.0, hard_vocab_limit=False, control_symbols=special_tokens,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2, num_threads=os.cpu_count() or 1)
    except RuntimeError as error:
        raise ValueError(f"sentencepiece could not train on this corpus with vocab_size={vocab_size}: "
                         f"{error}") from None
    return SentencePieceTokenizer(model.getvalue())
    # END SOLUTION


class SentencePieceTokenizer:
    """The Tokenizer interface over a sentencepiece model (`model`: the serialized model, a .model file's bytes).

    Its special tokens are the model's control symbols. sentencepiece itself never emits a control symbol from
    text, and decodes it to nothing, so special tokens are cut out and put back here. A '▁' in the text is
    encoded as its three bytes (sentencepiece would read it as a space), and decoding is done here, piece by
    piece, so that it never loses a byte.
    """

    def __init__(self, model: bytes):
        # BEGIN SOLUTION
        import sentencepiece

        self.model = bytes(model)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.model)
        except RuntimeError as error:
            raise ValueError(f"not a sentencepiece model: {error}") from None
        sp = self._sp
        self.special_tokens = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if sp.is_control(i)}
        self.vocab: dict[int, bytes] = {}
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                self.vocab[i] = bytes([int(piece[1:-1], 16)])  # '<0x0A>' -> b'\n'
            elif sp.is_control(i):
                self.vocab[i] = piece.encode("utf-8")
            elif sp.is_unknown(i):
                self.vocab[i] = _REPLACEMENT.encode("utf-8")
            else:
                self.vocab[i] = piece.replace(_SP_SPACE, " ").encode("utf-8")
        pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
        if any(f"<0x{byte:02X}>" not in pieces for byte in range(256)):
            raise ValueError("the sentencepiece model has no byte fallback pieces: it cannot encode every text")
        self._space_ids = [sp.piece_to_id(f"<0x{byte:02X}>") for byte in _SP_SPACE.encode("utf-8")]
        self._special_res: dict[frozenset, regex.Pattern | None] = {}
        # END SOLUTION

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={len(self.vocab)}, special_tokens={list(self.special_tokens)})"

    # Splitting out special tokens and joining bytes are the same for both tokenizers: written once, in Tokenizer.
    _special_re = Tokenizer._special_re
    encode = Tokenizer.encode
    decode = Tokenizer.decode

    def _encode_ordinary(self, text: str) -> list[int]:
        # BEGIN SOLUTION
        if not text:
            return []
        _check_text(text)
        ids = []
        for part in _SP_SPLIT.split(text):
            if part == _SP_SPACE:
                ids += self._space_ids
            elif part:
                ids += self._sp.encode(part)
        return ids
        # END SOLUTION

    def encode_iterable(self, iterable: Iterable[str], allowed_special="all") -> Iterator[int]:
        """Ids of the concatenation of `iterable`'s strings, one line at a time: sentencepiece never merges across
        a newline (it learned from lines), so text up to the last newline (or special token) is final."""
        # BEGIN SOLUTION
        allowed = _allowed_set(allowed_special, self.special_tokens)
        buffer = ""
        for chunk in iterable:
            if not isinstance(chunk, str):
                raise TypeError(f"encode_iterable takes strings, got {type(chunk).__name__}")
            buffer += chunk
            end = len(buffer) - _last_special_prefix(buffer, allowed)
            cut = 0
            special_re = self._special_re(allowed)
            if special_re is not None:
                for match in special_re.finditer(buffer, 0, end):
                    cut = match.end()
            cut = max(cut, buffer.rfind("\n", cut, end) + 1)  # a line break inside a special token is no cut
            if cut:
                yield from self.encode(buffer[:cut], allowed)
                buffer = buffer[cut:]
        yield from self.encode(buffer, allowed)
        # END SOLUTION

    def save(self, path) -> None:
        """Write the sentencepiece model itself (atomically): `sentencepiece.SentencePieceProcessor(model_file=path)`
        reads it too."""
        # BEGIN SOLUTION
        write_bytes_atomic(path, self.model)
        # END SOLUTION

    @classmethod
    def load(cls, path) -> SentencePieceTokenizer:
        """Read a model written by `save` (or any sentencepiece .model file with byte fallback)."""
        # BEGIN SOLUTION
        try:
            return cls(Path(path).read_bytes())
        except ValueError as error:
            raise ValueError(f"{path} is not a sentencepiece model: {error}") from None
        # END SOLUTION


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------

def _ordinary_ranks(tokenizer) -> dict[bytes, int]:
    special_ids = set(tokenizer.special_tokens.values())
    ranks = {}
    for i, token in sorted(tokenizer.vocab.items(), reverse=True):
        if i not in special_ids:
            ranks[token] = i
    return ranks


def to_tiktoken(tokenizer: Tokenizer, name: str = "llmkata"):
    """A `tiktoken.Encoding` with the tokenizer's ranks, pattern and special tokens: the same ids, from Rust."""
    # BEGIN SOLUTION
    import tiktoken

    return tiktoken.Encoding(name, pat_str=tokenizer.pattern, mergeable_ranks=_ordinary_ranks(tokenizer),
                             special_tokens=dict(tokenizer.special_tokens))
    # END SOLUTION


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table, which Hugging Face's ByteLevel uses: printable Latin-1 bytes stand for
    themselves, the other 68 (controls, space, soft hyphen...) for chr(256), chr(257), ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def to_hf_tokenizer(tokenizer: Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` that encodes like `tokenizer`: the same split regex, ByteLevel
    bytes-as-characters, a BPE model with our vocabulary and merges, `ignore_merges` (a pre-token that is a
    token is taken whole, as tiktoken does) and the special tokens as added tokens with their own ids.

    Hugging Face applies the merges in the order they are listed; ours go by rank, the id of the token a merge
    makes. So the merges are listed by that rank, which is the order learned for a trained vocabulary and not
    always the given order for one built by hand. (Hugging Face merges only listed pairs: the export encodes like
    `tokenizer` when every two ordinary tokens that make an ordinary token are one of its merges.)"""
    # BEGIN SOLUTION
    import tokenizers

    table = _bytes_to_unicode()
    spell = lambda token: "".join(table[byte] for byte in token)  # noqa: E731
    ranks = _ordinary_ranks(tokenizer)
    vocab = {spell(token): i for token, i in ranks.items()}
    for token, i in tokenizer.special_tokens.items():
        # the model must know the id too, or the added token is given a new one past the end of the vocabulary
        vocab.setdefault(spell(token.encode("utf-8")), i)
    merges = sorted(tokenizer.merges, key=lambda pair: ranks[pair[0] + pair[1]])  # by the rank of what each makes
    document = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for token, i in tokenizer.special_tokens.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [[spell(a), spell(b)] for a, b in merges]},
    }
    return tokenizers.Tokenizer.from_str(json.dumps(document))
    # END SOLUTION
