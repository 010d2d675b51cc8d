# Generated from reference/tokenizer.py by `llmkata exercises`. This copy is yours: replace each stub.
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

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

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
    raise NotImplementedError('`tokenizer.train_bpe` is not implemented yet — chapter 2 (tokenizer): see '
                              'test_trained_vocabulary_has_exactly_vocab_size_tokens and 11 more in '
                              'spec/test_tokenizer.py.')


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
        raise NotImplementedError('`tokenizer.Tokenizer.__init__` is not implemented yet — chapter 2 (tokenizer): see '
                                  'test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 more in '
                                  'spec/test_tokenizer.py.')

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={len(self.vocab)}, special_tokens={list(self.special_tokens)})"

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        """BPE on one pre-token, as tiktoken does it: the whole pre-token if it is a token, else merge the adjacent
        pair whose concatenation has the lowest rank, leftmost among equals, until no adjacent pair is a token.

        Example with ranks {b'a': 97, b'b': 98, b'ab': 300, b'abb': 301}: 'abb' -> (301,) at once; 'abab' ->
        [a, b, a, b] -> [ab, a, b] -> [ab, ab] -> (300, 300).
        """
        raise NotImplementedError('`tokenizer.Tokenizer._encode_piece` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 '
                                  'more in spec/test_tokenizer.py.')

    def _encode_long_piece(self, data: bytes) -> tuple[int, ...]:
        """The same merges in O(n log n) for a long pre-token (a run of 10^5 spaces, a minified line): the pairs
        wait in a heap of (rank, position), the parts form a linked list, and an entry whose pair has changed
        since it was pushed is skipped when it comes up. Position order is text order, so among equal ranks the
        leftmost pair still goes first."""
        raise NotImplementedError('`tokenizer.Tokenizer._encode_long_piece` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 '
                                  'more in spec/test_tokenizer.py.')

    def _special_re(self, allowed: frozenset):
        found = self._special_res.get(allowed)
        if found is None and allowed:
            found = self._special_res[allowed] = _special_regex(allowed)
        return found

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError('`tokenizer.Tokenizer._encode_ordinary` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 '
                                  'more in spec/test_tokenizer.py.')

    def encode(self, text: str, allowed_special="all") -> list[int]:
        """Token ids of `text`. allowed_special: 'all' (default), 'none', or a set of the special tokens to treat as
        special; any other occurrence of a special token's text is encoded as ordinary text, byte by byte."""
        raise NotImplementedError('`tokenizer.Tokenizer.encode` is not implemented yet — chapter 2 (tokenizer): see '
                                  'test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 more in '
                                  'spec/test_tokenizer.py.')

    def _stable_prefix(self, text: str, allowed: frozenset) -> int:
        """How much of `text` encodes the same whatever text comes after it.

        Held back: the end of `text` that could begin a special token, and then the last pre-tokens: a pre-token
        ending less than _LOOKAHEAD characters from the end, and any pre-token next to a whitespace run that could
        still grow ("\\n" + spaces becomes one pre-token if a "\\n" follows the spaces).
        """
        raise NotImplementedError('`tokenizer.Tokenizer._stable_prefix` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 '
                                  'more in spec/test_tokenizer.py.')

    def encode_iterable(self, iterable: Iterable[str], allowed_special="all") -> Iterator[int]:
        """Ids of the concatenation of `iterable`'s strings, yielded as they become certain, in bounded memory:
        `list(encode_iterable(chunks)) == encode("".join(chunks))` however the text is cut into chunks."""
        raise NotImplementedError('`tokenizer.Tokenizer.encode_iterable` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 '
                                  'more in spec/test_tokenizer.py.')

    def decode(self, ids) -> str:
        """The text of `ids`. Any sequence of ids in the vocabulary decodes: bytes that are not valid UTF-8 (a
        character cut between tokens, say) become U+FFFD, the replacement character."""
        raise NotImplementedError('`tokenizer.Tokenizer.decode` is not implemented yet — chapter 2 (tokenizer): see '
                                  'test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 more in '
                                  'spec/test_tokenizer.py.')

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
        raise NotImplementedError('`tokenizer.Tokenizer.save` is not implemented yet — chapter 2 (tokenizer): see '
                                  'test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 more in '
                                  'spec/test_tokenizer.py.')

    @classmethod
    def load(cls, path) -> Tokenizer:
        """Read a tokenizer written by `save`."""
        raise NotImplementedError('`tokenizer.Tokenizer.load` is not implemented yet — chapter 2 (tokenizer): see '
                                  'test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 more in '
                                  'spec/test_tokenizer.py.')


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
    raise NotImplementedError('`tokenizer.train_sentencepiece` is not implemented yet — chapter 2 (tokenizer): see '
                              'test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 27 more in '
                              'spec/test_tokenizer.py.')


class SentencePieceTokenizer:
    """The Tokenizer interface over a sentencepiece model (`model`: the serialized model, a .model file's bytes).

    Its special tokens are the model's control symbols. sentencepiece itself never emits a control symbol from
    text, and decodes it to nothing, so special tokens are cut out and put back here. A '▁' in the text is
    encoded as its three bytes (sentencepiece would read it as a space), and decoding is done here, piece by
    piece, so that it never loses a byte.
    """

    def __init__(self, model: bytes):
        raise NotImplementedError('`tokenizer.SentencePieceTokenizer.__init__` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 20 '
                                  'more in spec/test_tokenizer.py.')

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={len(self.vocab)}, special_tokens={list(self.special_tokens)})"

    # Splitting out special tokens and joining bytes are the same for both tokenizers: written once, in Tokenizer.
    _special_re = Tokenizer._special_re
    encode = Tokenizer.encode
    decode = Tokenizer.decode

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError('`tokenizer.SentencePieceTokenizer._encode_ordinary` is not implemented yet — '
                                  'chapter 2 (tokenizer): see test_decode_inverts_encode and 21 more in '
                                  'spec/test_tokenizer.py.')

    def encode_iterable(self, iterable: Iterable[str], allowed_special="all") -> Iterator[int]:
        """Ids of the concatenation of `iterable`'s strings, one line at a time: sentencepiece never merges across
        a newline (it learned from lines), so text up to the last newline (or special token) is final."""
        raise NotImplementedError('`tokenizer.SentencePieceTokenizer.encode_iterable` is not implemented yet — '
                                  'chapter 2 (tokenizer): see test_decode_inverts_encode, '
                                  'test_ids_are_in_the_vocabulary and 20 more in spec/test_tokenizer.py.')

    def save(self, path) -> None:
        """Write the sentencepiece model itself (atomically): `sentencepiece.SentencePieceProcessor(model_file=path)`
        reads it too."""
        raise NotImplementedError('`tokenizer.SentencePieceTokenizer.save` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 20 '
                                  'more in spec/test_tokenizer.py.')

    @classmethod
    def load(cls, path) -> SentencePieceTokenizer:
        """Read a model written by `save` (or any sentencepiece .model file with byte fallback)."""
        raise NotImplementedError('`tokenizer.SentencePieceTokenizer.load` is not implemented yet — chapter 2 '
                                  '(tokenizer): see test_decode_inverts_encode, test_ids_are_in_the_vocabulary and 20 '
                                  'more in spec/test_tokenizer.py.')


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
    raise NotImplementedError('`tokenizer.to_tiktoken` is not implemented yet — chapter 2 (tokenizer): see '
                              'test_tiktoken_export_encodes_like_the_tokenizer and 1 more in spec/test_tokenizer.py.')


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
    raise NotImplementedError('`tokenizer.to_hf_tokenizer` is not implemented yet — chapter 2 (tokenizer): see '
                              'test_hf_export_encodes_like_the_tokenizer and '
                              'test_hf_export_of_a_vocabulary_built_by_hand in spec/test_tokenizer.py.')
