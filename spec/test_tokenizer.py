"""Chapter 2 — tokenizer: byte-level BPE trained from scratch, a sentencepiece twin, export to tiktoken and HF.

What is pinned: any text round-trips; special tokens are single ids and only when allowed; training gives exactly
the vocabulary the textbook algorithm gives (with the tie-break written in `train_bpe`'s docstring), of exactly the
size asked for; streaming, saving and exporting change no id; bad input is refused with a ValueError that names it.

The Tokenizer tests use a vocabulary trained by `textbook_bpe` below, so encoding can be written before training.
"""

import functools
import itertools
import warnings
from collections import Counter

import pytest
import regex
from hypothesis import example, given
from hypothesis import strategies as st

from .checks import assert_rejects
from .strategies import unicode_text

SPECIALS = ["<|endoftext|>", "<|pad|>"]
KINDS = ["bpe", "sentencepiece"]


# ---------------------------------------------------------------- the corpus and the textbook algorithm

MULTILINGUAL = (
    "Le cœur a ses raisons que la raison ne connaît point. Ça coûte 12,50 €, déjà payé.\n"
    "Über den Wolken muß die Freiheit wohl grenzenlos sein. Straße, Größe, Äpfel.\n"
    "東京は日本の首都です。大阪と京都も大きな都市です。\n"
    "Москва — столица России. Привет, мир!\n"
    "We're done, aren't we? I'll say it's 2024 and you've 3 cats 😀😀 👍🏽 ✓\n"
    "You'll see, we'll see, they'll see, it'll all be well, and she'll tell, he'll yell.\n"
    "    indented code:\n\tif x == 1:\r\n\t\treturn x ** 2  # comment\n"
)


@functools.cache
def corpus_documents() -> tuple[str, ...]:
    """About 14 KB of English (Python's own documentation, which ships with every Python) and a multilingual tail."""
    from pydoc_data.topics import topics

    documents, size = [], 0
    for name in sorted(topics):
        if size > 12_000:
            break
        documents.append(topics[name][:3000])
        size += len(documents[-1])
    return tuple(documents) + (MULTILINGUAL,)


def corpus_text() -> str:
    return "<|endoftext|>".join(corpus_documents())


def textbook_bpe(documents, vocab_size: int, special_tokens, pattern: str):
    """Byte-level BPE as the definition reads, recounting every pair at every step (slow, obviously right).

    Returns (vocab, merges): ids 0..255 the bytes, then the special tokens, then one new token per merge; the most
    frequent pair wins, ties going to the lexicographically greatest (left bytes, right bytes).
    """
    cut = regex.compile("|".join(map(regex.escape, sorted(special_tokens, key=len, reverse=True))))
    counts = Counter()
    for document in documents:
        for segment in cut.split(document) if special_tokens else [document]:
            counts.update(regex.findall(pattern, segment))
    words = Counter()
    for piece, count in counts.items():
        words[tuple(bytes([byte]) for byte in piece.encode("utf-8"))] += count
    vocab = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        token = best[0] + best[1]
        vocab[len(vocab)] = token
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(token)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return vocab, merges


# The split patterns, written out: GPT-2's and GPT-4's (cl100k), as tiktoken and Hugging Face use them.
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
        r"""|\s+(?!\S)|\s+""")


@functools.cache
def textbook_vocab():
    return textbook_bpe(corpus_documents()[:4] + corpus_documents()[-1:], 256 + len(SPECIALS) + 220, SPECIALS, GPT4)


# ---------------------------------------------------------------- tokenizers under test (cached per implementation)

@functools.cache
def _bpe(cls, pattern="gpt4"):
    vocab, merges = textbook_vocab()
    return cls(vocab, merges, SPECIALS, pattern)


@functools.cache
def _sentencepiece_model(train) -> bytes:
    return train(corpus_text(), 600, SPECIALS).model


@functools.cache
def _sentencepiece(cls, train):
    return cls(_sentencepiece_model(train))


def make(impl, kind: str, pattern: str = "gpt4"):
    """The tokenizer of `kind` from the implementation under test, built from the fixed vocabulary."""
    if kind == "bpe":
        return _bpe(impl.tokenizer.Tokenizer, pattern)
    return _sentencepiece(impl.tokenizer.SentencePieceTokenizer, impl.tokenizer.train_sentencepiece)


# ---------------------------------------------------------------- text that is hard to tokenize

FRAGMENTS = [
    *SPECIALS, "<|endoftext", "|>", "<|", "<|pad", "endoftext", "▁", "▁▁x", " ", "  ", "   ", "\n", "\n\n", "\r\n",
    "\t", " \n ", "'ll", "'S", "'re", "12345", "3.14", "the", " the", " and", "é", "e\u0301", "東京", "😀", "👍🏽",
    "👩\u200d👩\u200d👧", "\u00a0", "\u3000", "\x00", "\x1c", "a", "aaaa", "=====", "hello world", "_init", "(x)",
]
texts = st.one_of(
    unicode_text,
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(codec="utf-8"), max_size=6)),
             max_size=12).map("".join),
)


def special_ids(tokenizer) -> dict[str, int]:
    return dict(tokenizer.special_tokens)


# ---------------------------------------------------------------- round trip, ids, special tokens

@pytest.mark.parametrize("kind", KINDS)
@given(text=texts)
@example(text="<|endoftext|><|endoftext|>")
@example(text="▁hello▁ world")
@example(text="e\u0301 👩\u200d👩\u200d👧 東京\n\n   x")
def test_decode_inverts_encode(impl, kind, text):
    tokenizer = make(impl, kind)
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text, f"decode(encode(s)) must give back s exactly; s = {text!r}"
    ordinary = tokenizer.encode(text, allowed_special="none")
    assert tokenizer.decode(ordinary) == text, (
        f"decode(encode(s, allowed_special='none')) must give back s too; s = {text!r}")


@pytest.mark.parametrize("kind", KINDS)
@given(text=texts)
def test_ids_are_in_the_vocabulary(impl, kind, text):
    tokenizer = make(impl, kind)
    size = len(tokenizer.vocab)
    assert sorted(tokenizer.vocab) == list(range(size)), "vocab must map the ids 0..len(vocab)-1 to bytes"
    for i in tokenizer.encode(text):
        assert isinstance(i, int) and 0 <= i < size, f"encode({text!r}) gave the id {i!r}, outside 0..{size - 1}"


@pytest.mark.parametrize("kind", KINDS)
@given(left=texts, right=texts, run=st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=4))
@example(left="", right="", run=["<|endoftext|>", "<|endoftext|>"])
@example(left="<|pad", right="|>", run=["<|pad|>"])
def test_special_tokens_encode_to_one_id_each(impl, kind, left, right, run):
    tokenizer = make(impl, kind)
    ids = special_ids(tokenizer)
    assert sorted(ids) == sorted(SPECIALS), f"special_tokens must map each of {SPECIALS} to its id"
    assert len(set(ids.values())) == len(SPECIALS), "each special token must have an id of its own"
    for token in SPECIALS:
        assert tokenizer.encode(token) == [ids[token]], f"{token!r} must encode to the one id {ids[token]}"
    text = left + "".join(run) + right
    expected = tokenizer.encode(left) + [ids[token] for token in run] + tokenizer.encode(right)
    assert tokenizer.encode(text) == expected, (
        f"special tokens must be single ids, also side by side, and cut the text around them: {text!r}")


@pytest.mark.parametrize("kind", KINDS)
@given(text=texts)
@example(text="<|endoftext|><|pad|>x<|endoftext|>")
def test_disallowed_special_tokens_encode_as_ordinary_text(impl, kind, text):
    tokenizer = make(impl, kind)
    ids = special_ids(tokenizer)
    ordinary = tokenizer.encode(text, allowed_special="none")
    assert not set(ordinary) & set(ids.values()), (
        f"with allowed_special='none' no special id may appear; encode({text!r}) gave {ordinary}")
    only_pad = tokenizer.encode(text, allowed_special={"<|pad|>"})
    assert ids["<|endoftext|>"] not in only_pad, "with allowed_special={'<|pad|>'}, '<|endoftext|>' is ordinary text"
    assert only_pad.count(ids["<|pad|>"]) == text.count("<|pad|>"), (
        f"with allowed_special={{'<|pad|>'}}, each '<|pad|>' in {text!r} must be its id")
    assert tokenizer.decode(only_pad) == text, "text with a disallowed special token must still round-trip"


# ---------------------------------------------------------------- streaming

@pytest.mark.parametrize("kind, pattern", [("bpe", "gpt2"), ("bpe", "gpt4"), ("sentencepiece", None)])
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=8))
@example(text="x\n" + " " * 20 + "\ny", cuts=[5])
@example(text="it'll<|endoftext|>", cuts=[3, 9])
@example(text="we'll", cuts=[4])
def test_encode_iterable_matches_encode_for_any_chunking(impl, kind, pattern, text, cuts):
    tokenizer = make(impl, kind, pattern)
    bounds = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    streamed = list(tokenizer.encode_iterable(iter(chunks)))
    assert streamed == tokenizer.encode(text), (
        f"encode_iterable over the chunks {chunks!r} must give the ids of encode of their concatenation")


@pytest.mark.parametrize("kind", KINDS)
def test_encode_iterable_yields_before_reading_everything(impl, kind):
    tokenizer = make(impl, kind)
    read = 0

    def lines():
        nonlocal read
        for read in itertools.count(1):
            assert read <= 1000, "encode_iterable read 1000 lines without yielding an id: it must stream"
            yield "The quick brown fox jumps over the lazy dog.<|endoftext|>\n"

    first = list(itertools.islice(tokenizer.encode_iterable(lines()), 10))
    assert len(first) == 10 and read <= 10, (
        f"encode_iterable must yield the ids of the first lines while the rest is unread (it read {read} lines)")


# ---------------------------------------------------------------- decoding any ids

def _decode(tokenizer, ids):
    try:
        return tokenizer.decode(ids)
    except UnicodeDecodeError as error:
        raise AssertionError(f"decode({ids}) must replace invalid UTF-8 by U+FFFD, not raise: {error}") from None


@pytest.mark.parametrize("kind", KINDS)
@given(raw=st.lists(st.integers(0, 2**20), max_size=30))
@example(raw=[0xC3, 0xA9])  # for byte-level BPE: 'é' split over two byte tokens decodes to 'é', not two U+FFFD
def test_decode_accepts_any_ids_and_replaces_invalid_utf8(impl, kind, raw):
    tokenizer = make(impl, kind)
    vocab = tokenizer.vocab
    ids = [i % len(vocab) for i in raw]
    expected = b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    assert _decode(tokenizer, ids) == expected, (
        f"decode({ids}) must be the UTF-8 decoding of the tokens' bytes joined, with U+FFFD for invalid bytes")
    byte = next(i for i, token in vocab.items() if token == b"\xc3")  # the first half of 'é'
    assert _decode(tokenizer, [byte]) == "\N{REPLACEMENT CHARACTER}", "a lone b'\\xc3' must decode to U+FFFD"


# ---------------------------------------------------------------- save and load

SAMPLES = ["", "hello world", "<|endoftext|>x<|pad|>", "▁ ▁", "東京 😀 e\u0301", "  \n\n\t x'll 12345", MULTILINGUAL]


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_load_gives_identical_output(impl, kind, tmp_path):
    tokenizer = make(impl, kind, pattern="gpt2")  # not the default pattern: the file must carry it
    path = tmp_path / "tokenizer.bin"
    tokenizer.save(path)
    assert not [p.name for p in tmp_path.iterdir() if p != path], "save must leave no temporary file behind"
    loaded = type(tokenizer).load(path)
    assert loaded.vocab == tokenizer.vocab, "load(save(t)) must have the same vocab"
    assert special_ids(loaded) == special_ids(tokenizer), "load(save(t)) must have the same special tokens and ids"
    if kind == "bpe":
        assert loaded.merges == tokenizer.merges, "load(save(t)) must have the same merges, in the same order"
    for text in SAMPLES + [corpus_text()]:
        assert loaded.encode(text) == tokenizer.encode(text), f"load(save(t)) must encode {text[:40]!r} the same"
        assert loaded.encode(text, allowed_special="none") == tokenizer.encode(text, allowed_special="none"), (
            f"load(save(t)) must encode {text[:40]!r} the same with special tokens disallowed")


# ---------------------------------------------------------------- agreement with tiktoken and Hugging Face

@functools.cache
def _tiktoken_for(tokenizer, pattern: str):
    tiktoken = pytest.importorskip("tiktoken")
    ids = special_ids(tokenizer)
    ranks = {}
    for i, token in sorted(tokenizer.vocab.items(), reverse=True):
        if i not in ids.values():
            ranks[token] = i
    return tiktoken.Encoding("spec", pat_str=pattern, mergeable_ranks=ranks, special_tokens=ids)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@given(text=texts)
@example(text="aaaaaaa =========  \n\n\n        x 1234567 it'S (foo) _bar")
@example(text="a" * 3000 + " " + "ab" * 700 + "\n" + " " * 1000 + "x")  # pre-tokens of thousands of bytes
@example(text=MULTILINGUAL)
def test_encode_equals_tiktoken_with_the_same_ranks_and_pattern(impl, pattern, text):
    tokenizer = make(impl, "bpe", pattern)
    expected = _tiktoken_for(tokenizer, GPT2 if pattern == "gpt2" else GPT4).encode(text, allowed_special="all")
    assert tokenizer.encode(text) == expected, (
        f"encode({text!r}) must give tiktoken's ids for the same ranks and {pattern} pattern (merge the pair of "
        "lowest rank first, leftmost among equals; a pre-token that is a token is one id)")


@given(text=texts)
@example(text=MULTILINGUAL)
def test_tiktoken_export_encodes_like_the_tokenizer(impl, text):
    pytest.importorskip("tiktoken")
    tokenizer = make(impl, "bpe")
    exported = _export(impl.tokenizer.to_tiktoken, tokenizer)
    assert exported.encode(text, allowed_special="all") == tokenizer.encode(text), (
        f"to_tiktoken(t).encode({text!r}, allowed_special='all') must equal t.encode(...)")
    assert exported.encode_ordinary(text) == tokenizer.encode(text, allowed_special="none"), (
        f"to_tiktoken(t).encode_ordinary({text!r}) must equal t.encode(..., allowed_special='none')")


@functools.cache
def _export(function, tokenizer):
    return function(tokenizer)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@given(text=texts)
@example(text=MULTILINGUAL + "<|pad|><|endoftext|>")
def test_hf_export_encodes_like_the_tokenizer(impl, pattern, text):
    pytest.importorskip("tokenizers")
    tokenizer = make(impl, "bpe", pattern)
    exported = _export(impl.tokenizer.to_hf_tokenizer, tokenizer)
    ids = tokenizer.encode(text)
    assert exported.encode(text).ids == ids, (
        f"to_hf_tokenizer(t).encode({text!r}).ids must equal t.encode(...) ({pattern} pattern)")
    assert exported.decode(ids, skip_special_tokens=False) == text, "the exported tokenizer must decode it back"


# ---------------------------------------------------------------- training

def _train(impl, data, vocab_size, special_tokens=SPECIALS, pattern="gpt4", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return impl.tokenizer.train_bpe(data, vocab_size, special_tokens, pattern, **kwargs)


def test_trained_vocabulary_has_exactly_vocab_size_tokens(impl):
    for vocab_size in (500, 300, 256 + len(SPECIALS)):
        tokenizer = _train(impl, corpus_text(), vocab_size)
        vocab = tokenizer.vocab
        assert len(vocab) == vocab_size, f"train_bpe(..., vocab_size={vocab_size}) gave {len(vocab)} tokens"
        assert sorted(vocab) == list(range(vocab_size)), "the ids must be 0..vocab_size-1"
        assert all(vocab[i] == bytes([i]) for i in range(256)), "ids 0..255 must be the single bytes"
        assert [vocab[256 + k] for k in range(len(SPECIALS))] == [s.encode() for s in SPECIALS], (
            "the special tokens must come next, in the order given")
        assert special_ids(tokenizer) == {s: 256 + k for k, s in enumerate(SPECIALS)}, (
            "special_tokens must give each special token's id")
        assert len(set(vocab.values())) == vocab_size, "the trained vocabulary must not hold a token twice"


def test_training_stops_with_a_warning_when_pairs_run_out(impl):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenizer = impl.tokenizer.train_bpe(["abab", "ab"], 1000, SPECIALS)
    # pairs: (a,b) 3, (b,a) 1 -> ab; then (ab,ab) 1 -> abab; then no pair is left.
    assert [a + b for a, b in tokenizer.merges] == [b"ab", b"abab"], (
        f"the corpus ['abab', 'ab'] allows exactly the merges ab and abab, got {tokenizer.merges}")
    assert len(tokenizer.vocab) == 256 + len(SPECIALS) + 2, "the vocabulary must not be padded past the last merge"
    assert caught, "train_bpe must warn when the corpus runs out of pairs before vocab_size"


def test_merges_follow_the_pinned_tie_break(impl):
    # The docstring's example: (a,b) and (c,d) both occur twice; b'c' > b'a', so (c,d) goes first.
    tokenizer = _train(impl, ["ab", "cd", "ab", "cd", "ac"], 256 + 3, special_tokens=[])
    assert tokenizer.merges == [(b"c", b"d"), (b"a", b"b"), (b"a", b"c")], (
        f"equal counts must go to the lexicographically greatest pair of byte strings, got {tokenizer.merges}")
    # After ab (3 times), (ab,c) and (b,d) tie at 2: b'b' > b'ab' as bytes, though the token ab has the larger id.
    tokenizer = _train(impl, ["abc", "abc", "bd", "bd", "ab"], 256 + 3, special_tokens=[])
    assert tokenizer.merges == [(b"a", b"b"), (b"b", b"d"), (b"ab", b"c")], (
        "ties compare the pairs' bytes, not their ids: (b'b', b'd') > (b'ab', b'c'); "
        f"got {tokenizer.merges}")


small_corpora = st.lists(st.text(st.sampled_from("ab c\né😀'1<|>"), max_size=30), min_size=1, max_size=4)


@given(documents=small_corpora, extra=st.integers(0, 40), pattern=st.sampled_from(["gpt2", "gpt4"]),
       specials=st.sampled_from([[], ["<|>"], ["c", "<|>"]]))
@example(documents=["aaaa aaa", "aaaaa"], extra=10, pattern="gpt4", specials=[])
@example(documents=["cd ab ab ab"], extra=3, pattern="gpt4", specials=[])
@example(documents=["x<|>y<|>z<|>w<|>"], extra=1, pattern="gpt4", specials=["<|>"])  # specials are never counted
def test_training_equals_the_textbook_algorithm(impl, documents, extra, pattern, specials):
    if not "".join(documents):
        documents = ["ab"]
    vocab_size = 256 + len(specials) + extra
    tokenizer = _train(impl, documents, vocab_size, specials, pattern)
    vocab, merges = textbook_bpe(documents, vocab_size, specials, GPT4 if pattern == "gpt4" else GPT2)
    assert tokenizer.merges == merges, (
        f"train_bpe({documents!r}, {vocab_size}, {specials}, {pattern!r}) must learn the textbook merges "
        f"{merges}, got {tokenizer.merges}")
    assert tokenizer.vocab == vocab, "the vocabulary must be the bytes, the special tokens, then the merged tokens"


def test_training_does_not_depend_on_how_the_corpus_is_given(impl, tmp_path):
    documents = list(corpus_documents())
    reference = _train(impl, documents, 400)
    as_text = _train(impl, "<|endoftext|>".join(documents), 400)
    path = tmp_path / "corpus.txt"
    path.write_bytes("<|endoftext|>".join(documents).encode("utf-8"))
    from_file = _train(impl, path, 400)
    halves = [tmp_path / "first.txt", tmp_path / "second.txt"]
    halves[0].write_bytes("<|endoftext|>".join(documents[:3]).encode("utf-8"))
    halves[1].write_bytes("<|endoftext|>".join(documents[3:]).encode("utf-8"))
    from_files = _train(impl, halves, 400)
    again = _train(impl, documents, 400)
    for name, other in [("a text joined by <|endoftext|>", as_text), ("a file", from_file),
                        ("a list of two files", from_files), ("the same list again", again)]:
        assert other.merges == reference.merges, (
            f"documents given as {name} must train the same merges as the list of documents (documents are "
            "independent, and special tokens separate documents)")


def test_special_tokens_are_never_merged_into(impl):
    tokenizer = _train(impl, "<|endoftext|>hello<|pad|><|endoftext|>world " * 40, 300)
    special = set(special_ids(tokenizer).values())
    for i, token in tokenizer.vocab.items():
        if i not in special:
            assert not any(mark in token for mark in (b"<|", b"|>", b"endoftext", b"pad")), (
                f"the ordinary token {token!r} holds part of a special token: special tokens must be cut out of "
                "the text before counting pairs")


def test_training_text_compresses(impl):
    trained = _train(impl, corpus_text(), 512)
    tokenizer = impl.tokenizer.Tokenizer(trained.vocab, trained.merges, SPECIALS, "gpt4")
    text = corpus_text()
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text, "the training text must round-trip"
    ratio = len(text.encode("utf-8")) / len(ids)
    assert ratio > 2.0, f"512 tokens trained on a text must encode it in fewer ids: {ratio:.2f} bytes per token"


# ---------------------------------------------------------------- bad input

def _trainer(impl, kind):
    return impl.tokenizer.train_bpe if kind == "bpe" else impl.tokenizer.train_sentencepiece


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_vocab_size_below_bytes_and_special_tokens(impl, kind):
    size = 256 + len(SPECIALS) - 1
    assert_rejects(lambda: _trainer(impl, kind)(corpus_text(), size, SPECIALS), str(size),
                   what=f"vocab_size={size} cannot hold 256 bytes and {len(SPECIALS)} special tokens")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_an_empty_corpus(impl, kind):
    for empty in ("", [], [""]):
        assert_rejects(lambda: _trainer(impl, kind)(empty, 300, SPECIALS), "",
                       what=f"the corpus {empty!r} is empty")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_empty_or_duplicate_special_tokens(impl, kind):
    train = _trainer(impl, kind)
    assert_rejects(lambda: train(corpus_text(), 400, ["<|x|>", ""]), "''", what="an empty special token")
    assert_rejects(lambda: train(corpus_text(), 400, ["<|x|>", "<|y|>", "<|x|>"]), "<|x|>",
                   what="a special token given twice")
    if kind == "bpe":
        vocab, merges = textbook_vocab()
        assert_rejects(lambda: impl.tokenizer.Tokenizer(vocab, merges, ["<|pad|>", "<|pad|>"]), "<|pad|>",
                       what="Tokenizer with a special token given twice")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_ids_outside_the_vocabulary(impl, kind):
    tokenizer = make(impl, kind)
    size = len(tokenizer.vocab)
    for bad in (size, -1, 10**9):
        assert_rejects(lambda: tokenizer.decode([1, 2, bad]), str(bad), what=f"decode of the id {bad}")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_lone_surrogates(impl, kind):
    tokenizer = make(impl, kind)
    for text in ("ab\ud800cd", "\udfff", "<|endoftext|>\udc80"):
        assert_rejects(lambda: tokenizer.encode(text), repr(next(c for c in text if "\ud800" <= c <= "\udfff")),
                       what=f"encode of {text!r}, which has a lone surrogate")
    assert_rejects(lambda: _trainer(impl, kind)(["fine text", "x\udcff y"], 300, SPECIALS), repr("\udcff"),
                   what="training on text with a lone surrogate")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_a_file_that_is_not_a_saved_tokenizer(impl, kind, tmp_path):
    cls = type(make(impl, kind))
    for name, content in [("empty", b""), ("garbage", b"\x00\xff not a tokenizer"), ("json", b'{"a": 1}')]:
        path = tmp_path / name
        path.write_bytes(content)
        assert_rejects(lambda: cls.load(path), name, what=f"load of a file that holds {content!r}")
