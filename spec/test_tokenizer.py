"""Chapter 2 — tokenizer: byte-level BPE trained from scratch, a sentencepiece twin, export to tiktoken and HF.

What is pinned: any text round-trips; special tokens are single ids and only when allowed; training gives exactly
the vocabulary the textbook algorithm gives (with the tie-break written in `train_bpe`'s docstring), of exactly the
size asked for; streaming, saving and exporting change no id; bad input is refused with a ValueError that names it.

The Tokenizer tests use a vocabulary trained by `textbook_bpe` below, so encoding can be written before training.
"""

import functools
import io
import itertools
import json
import random
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


def tokenizer_class(impl, kind: str):
    return impl.tokenizer.Tokenizer if kind == "bpe" else impl.tokenizer.SentencePieceTokenizer


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

ALLOWED = ["all", "none", frozenset({"<|pad|>"})]


@pytest.mark.parametrize("kind, pattern", [("bpe", "gpt2"), ("bpe", "gpt4"), ("sentencepiece", None)])
@given(text=texts, cuts=st.lists(st.integers(0, 400), max_size=8), allowed=st.sampled_from(ALLOWED))
@example(text="x\n" + " " * 20 + "\ny", cuts=[5], allowed="all")
@example(text="it'll<|endoftext|>", cuts=[3, 9], allowed="all")
@example(text="we'll", cuts=[4], allowed="all")
@example(text="a<|endoftext|>b\n<|pad|>c", cuts=[3, 15], allowed="none")
@example(text="a<|endoftext|>b\n<|pad|>c", cuts=[3, 15], allowed=frozenset({"<|pad|>"}))
@example(text="abc<|endoftext|>def", cuts=[14], allowed="all")  # the chunk ends in 11 characters of a special token
@example(text="<|pad|>'ll thel ", cuts=[1], allowed="all")  # pre-tokens begin after the last special token
@example(text="  12ab the", cuts=[1], allowed="all")  # a pre-token after whitespace may still change
def test_encode_iterable_matches_encode_for_any_chunking(impl, kind, pattern, text, cuts, allowed):
    tokenizer = make(impl, kind, pattern)
    bounds = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    streamed = list(tokenizer.encode_iterable(iter(chunks), allowed_special=allowed))
    assert streamed == tokenizer.encode(text, allowed_special=allowed), (
        f"encode_iterable over the chunks {chunks!r} with allowed_special={allowed!r} must give the ids of "
        "encode of their concatenation with the same allowed_special")


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


@pytest.mark.parametrize("kind", KINDS)
def test_encode_iterable_holds_back_no_more_than_the_last_chunk(impl, kind):
    tokenizer = make(impl, kind)
    streams = {"lines": "The quick brown fox jumps over the lazy dog.\n" * 3,
               "special tokens, no line break": "The quick brown fox jumps over the lazy dog.<|endoftext|>"}
    if kind == "bpe":  # sentencepiece learned from lines: it waits for a line break or a special token
        streams |= {"words, no line break": "The quick brown fox jumps over the lazy dog. ",
                    "runs of spaces": "x = 1  # one  two  "}

    def chunks(name, chunk, ids):
        for count in range(1, 41):
            covered = len(tokenizer.decode(ids))
            assert covered >= (count - 2) * len(chunk), (
                f"encode_iterable over chunks of {name} ({chunk!r}) must keep up with its input: when it asks for "
                f"chunk {count}, the ids of the first {count - 2} must have been yielded, but they cover "
                f"{covered} characters, not {(count - 2) * len(chunk)}")
            yield chunk

    for name, chunk in streams.items():
        ids = []
        ids.extend(tokenizer.encode_iterable(chunks(name, chunk, ids)))
        assert tokenizer.decode(ids) == chunk * 40, f"encode_iterable over chunks of {name} must round-trip"


NESTED = ["<|a|>", "<|a|>b", "<|x\ny|>"]  # one special token begins another; one holds a line break


@pytest.mark.parametrize("kind", KINDS)
def test_encode_iterable_waits_while_a_longer_special_token_may_follow(impl, kind):
    if kind == "bpe":
        vocab, merges = textbook_vocab()
        vocab = {**vocab, **{len(vocab) + k: token.encode() for k, token in enumerate(NESTED)}}
        tokenizer = impl.tokenizer.Tokenizer(vocab, merges, NESTED)
    else:
        pytest.importorskip("sentencepiece")
        model = impl.tokenizer.train_sentencepiece(corpus_text(), 600, NESTED).model
        tokenizer = impl.tokenizer.SentencePieceTokenizer(model)
    for text, allowed in itertools.product(["x<|a|>b y<|a|><|a|>b\n<|a|>", "a\n<|x\ny|>z<|x"],
                                           ["all", frozenset({"<|a|>"})]):
        expected = tokenizer.encode(text, allowed_special=allowed)
        for cut in range(len(text) + 1):
            chunks = [text[:cut], text[cut:]]
            streamed = list(tokenizer.encode_iterable(iter(chunks), allowed_special=allowed))
            assert streamed == expected, (
                f"with the special tokens {NESTED}, encode_iterable over {chunks} with allowed_special={allowed!r} "
                f"must give the ids of encode: a chunk that ends in '<|a|>' may go on with 'b' (the longer token "
                f"wins), one that ends in '<|x\\n' with 'y|>', and what is left at the end still holds special "
                f"tokens")


# ---------------------------------------------------------------- decoding any ids

def _decode(tokenizer, ids):
    """decode(ids) of ids in the vocabulary: any exception is a broken property, not a crash of the spec."""
    try:
        return tokenizer.decode(ids)
    except NotImplementedError:
        raise
    except UnicodeDecodeError as error:
        raise AssertionError(f"decode({ids}) must replace invalid UTF-8 by U+FFFD, not raise: {error}") from None
    except Exception as error:
        raise AssertionError(f"decode({ids[:20]}...) of ids in the vocabulary must not raise: "
                             f"{type(error).__name__}: {error}") from None


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
    loaded = tokenizer_class(impl, kind).load(path)
    assert loaded.vocab == tokenizer.vocab, "load(save(t)) must have the same vocab"
    assert special_ids(loaded) == special_ids(tokenizer), "load(save(t)) must have the same special tokens and ids"
    if kind == "bpe":
        assert loaded.merges == tokenizer.merges, "load(save(t)) must have the same merges, in the same order"
    for text in SAMPLES + [corpus_text()]:
        assert loaded.encode(text) == tokenizer.encode(text), f"load(save(t)) must encode {text[:40]!r} the same"
        assert loaded.encode(text, allowed_special="none") == tokenizer.encode(text, allowed_special="none"), (
            f"load(save(t)) must encode {text[:40]!r} the same with special tokens disallowed")


@pytest.mark.parametrize("kind", KINDS)
def test_saved_file_has_the_documented_format(impl, kind, tmp_path):
    tokenizer = make(impl, kind, pattern="gpt2")
    path = tmp_path / "tokenizer.file"
    tokenizer.save(path)
    if kind == "sentencepiece":
        sentencepiece = pytest.importorskip("sentencepiece")
        try:
            model = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as error:
            raise AssertionError(f"SentencePieceTokenizer.save must write the sentencepiece model itself, which "
                                 f"sentencepiece reads: {error}") from None
        assert model.get_piece_size() == len(tokenizer.vocab), (
            "the saved sentencepiece model must hold the tokenizer's pieces, one per id")
        return
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise AssertionError(f"Tokenizer.save must write UTF-8 JSON: {error}") from None
    expected = {
        "format": "llmkata-bpe/1",
        "pattern": GPT2,
        "special_tokens": special_ids(tokenizer),
        "vocab": {str(i): token.decode("latin-1") for i, token in tokenizer.vocab.items()},
        "merges": [[a.decode("latin-1"), b.decode("latin-1")] for a, b in tokenizer.merges],
    }
    for key, value in expected.items():
        assert document.get(key) == value, (
            f"the saved file's {key!r} must be as Tokenizer.save's docstring says (the split regex itself; token "
            "bytes as Latin-1 text, byte b as chr(b); merges in the order learned)")


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


SYLLABLES = ["the", "ron", "tion", "er", "in", "an", "ed", "es", "or", "at", "e", "s", "x", "q"]


@given(piece=st.lists(st.sampled_from(SYLLABLES), min_size=257, max_size=300).map("".join))
@example(piece="e" * 300 + "ron")  # the last pair merges first
@example(piece="the" * 90 + "tion")
def test_a_long_pre_token_merges_like_a_short_one(impl, piece):
    vocab, _ = textbook_vocab()
    tokenizer = make(impl, "bpe")
    assert tokenizer.encode(piece) == encode_by_definition(piece, vocab, SPECIALS, "all"), (
        f"a pre-token of {len(piece)} bytes, {piece[:20]!r}...{piece[-20:]!r}, must merge like any other (the pair "
        "of lowest rank first, leftmost among equals), however long pre-tokens are merged for speed")


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


# ---------------------------------------------------------------- a vocabulary built by hand

@functools.cache
def hand_built(variant: int):
    """(vocab, merges, special_tokens) that training did not make: the textbook vocabulary's tokens under ids drawn
    at random from 256..4·size (gaps between them, and a token's id may be below its parts'), the merges shuffled,
    and one more special token whose bytes are also an ordinary token (b'the' or the like) at another id."""
    vocab, merges = textbook_vocab()
    rng = random.Random(variant)
    ordinary = [vocab[i] for i in range(256 + len(SPECIALS), len(vocab))]
    twin = next(token for token in ordinary if token.isalpha() and len(token) >= 3)
    specials = [*SPECIALS, twin.decode()]
    ids = rng.sample(range(256, 4 * len(vocab)), len(specials) + len(ordinary))
    hand = {i: bytes([i]) for i in range(256)}
    hand.update(zip(ids, [*(token.encode() for token in specials), *ordinary]))
    shuffled = list(merges)
    rng.shuffle(shuffled)
    return hand, shuffled, specials


@functools.cache
def _hand_built_tokenizer(cls, variant: int):
    vocab, merges, specials = hand_built(variant)
    return cls(vocab, merges, specials, "gpt4")


def merge_by_rank(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """BPE on one pre-token by the definition: the whole pre-token if it is a token, else merge the adjacent pair
    whose concatenation has the lowest rank, leftmost among equals, until no adjacent pair is a token."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [bytes([byte]) for byte in piece]
    while pairs := [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in ranks]:
        _, i = min(pairs)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[part] for part in parts]


def encode_by_definition(text: str, vocab, special_tokens, allowed: str, pattern: str = GPT4) -> list[int]:
    """Special tokens (when allowed) cut out first, each the largest id that spells it; the rest split by the
    pattern and merged by rank, an ordinary token's rank being its id."""
    special_ids = {token: max(i for i, t in vocab.items() if t == token.encode()) for token in special_tokens}
    ranks = {token: i for i, token in sorted(vocab.items(), reverse=True) if i not in special_ids.values()}
    cut = sorted(special_tokens, key=len, reverse=True) if allowed == "all" else []
    segments = regex.split("(" + "|".join(map(regex.escape, cut)) + ")", text) if cut else [text]
    ids = []
    for k, segment in enumerate(segments):
        if k % 2:  # a special token, captured by the split
            ids.append(special_ids[segment])
        else:
            for piece in regex.findall(pattern, segment):
                ids += merge_by_rank(piece.encode("utf-8"), ranks)
    return ids


@given(text=texts, variant=st.integers(0, 3), allowed=st.sampled_from(["all", "none"]))
@example(text="the theme, there<|pad|>x", variant=0, allowed="all")
@example(text=MULTILINGUAL, variant=1, allowed="none")
def test_a_vocabulary_built_by_hand_encodes_by_rank(impl, text, variant, allowed):
    vocab, _, specials = hand_built(variant)
    tokenizer = _hand_built_tokenizer(impl.tokenizer.Tokenizer, variant)
    expected = {token: max(i for i, t in vocab.items() if t == token.encode()) for token in specials}
    assert special_ids(tokenizer) == expected, (
        f"a special token's id must be the largest id whose bytes spell it: expected {expected}, got "
        f"{special_ids(tokenizer)}")
    ids = tokenizer.encode(text, allowed_special=allowed)
    assert ids == encode_by_definition(text, vocab, specials, allowed), (
        f"with a vocabulary built by hand (ids with gaps, merges listed out of rank order), encode({text!r}, "
        f"allowed_special={allowed!r}) must merge by rank, and an ordinary token's rank is its id, not the place of "
        "its merge in the list")
    assert _decode(tokenizer, ids) == text, f"decode(encode(s)) must give back s with any vocabulary; s = {text!r}"


def test_tiktoken_export_of_a_vocabulary_built_by_hand(impl):
    pytest.importorskip("tiktoken")
    tokenizer = _hand_built_tokenizer(impl.tokenizer.Tokenizer, 1)
    exported = impl.tokenizer.to_tiktoken(tokenizer, name="hand-built")
    assert exported.name == "hand-built", f"to_tiktoken(t, name='hand-built') must be named so, got {exported.name!r}"
    for text in SAMPLES + ["the theme, there", corpus_text()[:5000]]:
        assert exported.encode(text, allowed_special="all") == tokenizer.encode(text), (
            f"to_tiktoken(t) of a vocabulary built by hand (gaps in its ids, merges out of rank order) must encode "
            f"{text[:40]!r} like t: the rank of a token is its id")
        assert exported.encode_ordinary(text) == tokenizer.encode(text, allowed_special="none"), (
            f"to_tiktoken(t).encode_ordinary({text[:40]!r}) must equal t.encode(..., allowed_special='none')")


def test_bytes_spelt_by_two_ordinary_ids_encode_as_the_smaller_id(impl):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({700: b"ab", 300: b"ab", 500: b"<|endoftext|>", 256: b"<|pad|>"})  # 700 listed first
    tokenizer = impl.tokenizer.Tokenizer(vocab, [(b"a", b"b")], SPECIALS)
    for text, expected in [("ab", [300]), ("xab", [ord("x"), 300]), ("abab<|pad|>", [300, 300, 256])]:
        assert tokenizer.encode(text) == expected, (
            f"the ordinary ids 300 and 700 both spell b'ab': encode({text!r}) must use the smaller, {expected}, "
            f"got {tokenizer.encode(text)}")
    assert tokenizer.decode([700, 300]) == "abab", "the larger id of two that spell the same bytes still decodes"


def small_vocabulary_built_by_hand():
    """(vocab, merges): the bytes, the special tokens and a few words under ids with gaps, and merges listed out of
    rank order: b'bc' (300) ranks before b'ab' (500), so 'abc' is [a, bc]; b' world' is made by no merge (a
    pre-token that is a token is taken whole)."""
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({900: b"<|endoftext|>", 301: b"<|pad|>", 500: b"ab", 300: b"bc", 400: b"he", 350: b"ll",
                  380: b"hell", 270: b"hello", 600: b" world"})
    merges = [(b"a", b"b"), (b"hell", b"o"), (b"h", b"e"), (b"b", b"c"), (b"he", b"ll"), (b"l", b"l")]
    return vocab, merges


def test_hf_export_of_a_vocabulary_built_by_hand(impl):
    pytest.importorskip("tokenizers")
    vocab, merges = small_vocabulary_built_by_hand()
    tokenizer = impl.tokenizer.Tokenizer(vocab, merges, SPECIALS, "gpt4")
    exported = impl.tokenizer.to_hf_tokenizer(tokenizer)
    for text in ["abc hello world", "hellos abcabc helloworld", "<|pad|> hello <|endoftext|>\n world",
                 " world<|pad|>  abc<|endoftext|> x", "hell abcd <|pad|>"]:
        ids = tokenizer.encode(text)
        assert exported.encode(text).ids == ids, (
            f"to_hf_tokenizer(t) of a vocabulary built by hand (merges listed out of rank order, a token no merge "
            f"makes, special tokens next to spaces) must encode {text!r} like t: {ids}, got {exported.encode(text).ids}")
        assert exported.decode(ids, skip_special_tokens=False) == text, f"the export must decode {text!r} back"


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


# A split pattern of our own, neither GPT-2's nor GPT-4's: runs of non-space and runs of space.
WORDS_AND_SPACES = r"\S+|\s+"


@given(documents=small_corpora, extra=st.integers(0, 40),
       pattern=st.sampled_from(["gpt2", "gpt4", WORDS_AND_SPACES]),
       specials=st.sampled_from([[], ["<|>"], ["c", "<|>"]]))
@example(documents=["aaaa aaa", "aaaaa"], extra=10, pattern="gpt4", specials=[])
@example(documents=["cd ab ab ab"], extra=3, pattern="gpt4", specials=[])
@example(documents=["x<|>y<|>z<|>w<|>"], extra=1, pattern="gpt4", specials=["<|>"])  # specials are never counted
@example(documents=["a b a b a b"], extra=3, pattern=WORDS_AND_SPACES, specials=[])  # GPT-4's would merge ' b'
def test_training_equals_the_textbook_algorithm(impl, documents, extra, pattern, specials):
    if not "".join(documents):
        documents = ["ab"]
    vocab_size = 256 + len(specials) + extra
    tokenizer = _train(impl, documents, vocab_size, specials, pattern)
    vocab, merges = textbook_bpe(documents, vocab_size, specials, {"gpt2": GPT2, "gpt4": GPT4}.get(pattern, pattern))
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
    generated = _train(impl, (document for document in documents), 400)
    mixed = _train(impl, [*documents[:3], str(halves[1]), halves[1]], 400)  # a str is a text, even a path's
    mixed_reference = _train(impl, "<|endoftext|>".join([*documents[:3], str(halves[1]), *documents[3:]]), 400)
    assert mixed.merges == mixed_reference.merges, (
        "in an iterable of documents a str is a document's text and a path a file's: a list that mixes them must "
        "train as the list of their texts")
    for name, other in [("a text joined by <|endoftext|>", as_text), ("a file", from_file),
                        ("a list of two files", from_files), ("the same list again", again),
                        ("a generator (read once)", generated)]:
        assert other.merges == reference.merges, (
            f"documents given as {name} must train the same merges as the list of documents (documents are "
            "independent, and special tokens separate documents)")


def test_sentencepiece_vocabulary_is_unk_special_tokens_bytes_then_pieces(impl):
    pytest.importorskip("sentencepiece")
    tokenizer = impl.tokenizer.train_sentencepiece(corpus_text(), 600, SPECIALS)  # trained here, not cached
    vocab, size = tokenizer.vocab, len(tokenizer.vocab)
    assert size <= 600, f"train_sentencepiece(..., vocab_size=600) must make at most 600 tokens in all, got {size}"
    assert sorted(vocab) == list(range(size)), "the ids must be 0..len(vocab)-1"
    assert special_ids(tokenizer) == {token: 1 + k for k, token in enumerate(SPECIALS)}, (
        f"the special tokens must follow <unk> (id 0), in the order given: got {special_ids(tokenizer)}")
    first = 1 + len(SPECIALS)
    assert [vocab[first + byte] for byte in range(256)] == [bytes([byte]) for byte in range(256)], (
        f"the 256 byte pieces must come next, ids {first}..{first + 255}, byte b at id {first} + b")
    extra = sorted({b"<s>", b"</s>", b"<pad>"} & set(vocab.values()))
    assert not extra, f"sentencepiece's <s>, </s> and <pad> must not be in the vocabulary, found {extra}"


YEARS_AND_CODE = "In 2024 we sold 2024 units; 2025 will beat 2024, and 2026 beats 2025.\n" * 8 + (
    "def area(r):\n    if r < 0:\n        return 0\n    return 3.14159 * r ** 2\n" * 8)


def _learned_pieces(tokenizer) -> set[bytes]:
    """The pieces after <unk>, the special tokens and the 256 bytes."""
    return {tokenizer.vocab[i] for i in range(1 + len(tokenizer.special_tokens) + 256, len(tokenizer.vocab))}


def test_sentencepiece_learns_every_character_and_runs_of_spaces_or_digits(impl):
    pytest.importorskip("sentencepiece")
    corpus = corpus_text() + "<|endoftext|>" + YEARS_AND_CODE
    pieces = _learned_pieces(impl.tokenizer.train_sentencepiece(corpus, 1000, SPECIALS))
    characters = set(regex.sub("|".join(map(regex.escape, SPECIALS)) + "|\r?\n", "", corpus))  # but line ends
    unlearned = sorted(c for c in characters if c.encode("utf-8") not in pieces)
    assert not unlearned, (
        f"every character of the corpus, however rare, must be a piece of its own (character coverage 1.0); "
        f"missing: {unlearned[:5]}")
    assert any(len(piece) > 1 and not piece.strip(b" ") for piece in pieces), (
        "runs of spaces (indentation) must be learned as pieces of their own: whitespace-only pieces are allowed")
    assert any(len(piece) > 1 and piece.isdigit() for piece in pieces), (
        "digits must merge into pieces as other characters do (years repeat in the corpus): digits are not split")


def test_sentencepiece_pieces_are_merges_of_earlier_pieces(impl):
    pytest.importorskip("sentencepiece")
    tokenizer = impl.tokenizer.train_sentencepiece(corpus_text(), 600, SPECIALS)
    first = 1 + len(SPECIALS) + 256
    ids = {tokenizer.vocab[i].decode("utf-8"): i for i in range(first, len(tokenizer.vocab))}
    for piece, i in ids.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        assert len(piece) == 1 or any(all(len(part) == 1 or ids.get(part, i) < i for part in split)
                                      for split in splits), (
            f"train_sentencepiece trains a BPE model: each learned piece is two earlier pieces (or characters) "
            f"joined, but {piece!r} (id {i}) is not")


def test_sentencepiece_vocab_size_bounds_the_vocabulary_from_above(impl):
    pytest.importorskip("sentencepiece")
    train = impl.tokenizer.train_sentencepiece
    for corpus, vocab_size, specials in [("abab abba\nbaab", 1000, SPECIALS), ("aaaa", 258 + len(SPECIALS), SPECIALS),
                                         ("aaaa", 258, [])]:
        try:
            tokenizer = train(corpus, vocab_size, specials)
        except ValueError as error:
            raise AssertionError(
                f"train_sentencepiece({corpus!r}, {vocab_size}, {specials}) must train: vocab_size is an upper bound "
                f"(a corpus with fewer pieces gives fewer), and 258 + len(special_tokens) leaves room for <unk>, the "
                f"special tokens, the bytes and one character; it raised: {error}") from None
        size = len(tokenizer.vocab)
        assert size <= vocab_size, f"train_sentencepiece(vocab_size={vocab_size}) made {size} tokens"
        characters = set(corpus) - {"\n"}
        assert {character.encode() for character in characters} <= _learned_pieces(tokenizer), (
            f"every character of {corpus!r} must be a piece of its own")
        if corpus == "aaaa":
            assert size == vocab_size, (
                f"the corpus 'aaaa' with vocab_size={vocab_size} must give <unk>, {specials}, the bytes and 'a': "
                f"{vocab_size} tokens, got {size}")


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


def test_rejects_a_vocabulary_without_every_byte_or_merge_part(impl):
    vocab, merges = textbook_vocab()
    Tokenizer = impl.tokenizer.Tokenizer
    no_a = {i: token for i, token in vocab.items() if token != b"A"}
    assert_rejects(lambda: Tokenizer(no_a, merges, SPECIALS), repr(b"A"),
                   what="a vocabulary without the single byte b'A' (byte-level BPE needs all 256 to encode any text)")
    assert_rejects(lambda: Tokenizer(vocab, [*merges, (b"q", b"z")], SPECIALS), repr(b"qz"),
                   what="a merge b'q' + b'z' whose result b'qz' is not in the vocabulary")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_ids_outside_the_vocabulary(impl, kind):
    tokenizer = make(impl, kind)
    size = len(tokenizer.vocab)
    for bad in (size, -1, 10**9):
        assert_rejects(lambda: tokenizer.decode([1, 2, bad]), str(bad), what=f"decode of the id {bad}")
    if kind == "bpe":
        hand = _hand_built_tokenizer(impl.tokenizer.Tokenizer, 0)
        gap = min(set(range(256, max(hand.vocab))) - set(hand.vocab))
        assert_rejects(lambda: hand.decode([1, gap]), gap,
                       what=f"decode of the id {gap}, a gap between the ids of a vocabulary built by hand")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_lone_surrogates(impl, kind):
    tokenizer = make(impl, kind)
    for text in ("ab\ud800cd", "\udfff", "<|endoftext|>\udc80"):
        assert_rejects(lambda: tokenizer.encode(text), repr(next(c for c in text if "\ud800" <= c <= "\udfff")),
                       what=f"encode of {text!r}, which has a lone surrogate")
    assert_rejects(lambda: _trainer(impl, kind)(["fine text", "x\udcff y"], 300, SPECIALS), repr("\udcff"),
                   what="training on text with a lone surrogate")


def test_rejects_a_sentencepiece_model_without_byte_fallback(impl, tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_text().splitlines()), model_writer=model, vocab_size=300, model_type="bpe",
        hard_vocab_limit=False, minloglevel=2)  # no byte_fallback: a character it never saw becomes <unk>
    path = tmp_path / "no_bytes.model"
    path.write_bytes(model.getvalue())
    cls = impl.tokenizer.SentencePieceTokenizer
    assert_rejects(lambda: cls(model.getvalue()), "byte",
                   what="a sentencepiece model without byte fallback pieces (it cannot encode every text)")
    assert_rejects(lambda: cls.load(path), "no_bytes.model", what="load of a sentencepiece model without byte fallback")


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_a_file_that_is_not_a_saved_tokenizer(impl, kind, tmp_path):
    tokenizer = make(impl, kind)
    cls = tokenizer_class(impl, kind)
    for name, content in [("empty", b""), ("garbage", b"\x00\xff not a tokenizer"), ("json", b'{"a": 1}')]:
        path = tmp_path / name
        path.write_bytes(content)
        assert_rejects(lambda: cls.load(path), name, what=f"load of a file that holds {content!r}")
    if kind == "bpe":  # a complete tokenizer file, but of another format (a later version, say)
        tokenizer.save(tmp_path / "saved.json")
        document = json.loads((tmp_path / "saved.json").read_text(encoding="utf-8"))
        path = tmp_path / "version2.json"
        path.write_text(json.dumps({**document, "format": "llmkata-bpe/2"}), encoding="utf-8")
        assert_rejects(lambda: cls.load(path), "version2", what="load of a file whose format is 'llmkata-bpe/2'")


def test_load_rejects_special_token_ids_that_disagree_with_the_vocabulary(impl, tmp_path):
    tokenizer = make(impl, "bpe")
    saved = special_ids(tokenizer)
    tokenizer.save(tmp_path / "tokenizer.json")
    document = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    eot, pad = saved["<|endoftext|>"], saved["<|pad|>"]
    for name, edited in [("swapped", {"<|endoftext|>": pad, "<|pad|>": eot}),
                         ("ordinary", {"<|endoftext|>": 300, "<|pad|>": pad})]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**document, "special_tokens": edited}), encoding="utf-8")
        content = path.read_bytes()
        assert_rejects(lambda: impl.tokenizer.Tokenizer.load(path), name,
                       what=f"load of a file whose special token ids {edited} are not the ids of their bytes in its "
                            f"vocabulary {saved}")
        assert path.read_bytes() == content, "a rejected load must leave the file as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ordinary.json", "swapped.json", "tokenizer.json"], (
        "load must write no file")
    assert special_ids(tokenizer) == saved, "a rejected load must change no tokenizer already built"


@pytest.mark.parametrize("kind", KINDS)
def test_rejects_what_is_not_text_naming_its_type(impl, kind):
    tokenizer = make(impl, kind)
    assert_rejects(lambda: tokenizer.encode(b"bytes"), "bytes", error=TypeError,
                   what="encode of bytes (encode takes a str: decode bytes to text first)")
    assert_rejects(lambda: tokenizer.encode_iterable(["text, then ", b"bytes"]), "bytes", error=TypeError,
                   what="encode_iterable over a chunk of bytes")
    if kind == "bpe":
        vocab, merges = textbook_vocab()
        assert_rejects(lambda: impl.tokenizer.Tokenizer(vocab, merges, ["<|new|>"]), "<|new|>",
                       what="Tokenizer with a special token whose bytes are no token of the vocabulary")
    else:
        for size in (600.0, True):
            assert_rejects(lambda: impl.tokenizer.train_sentencepiece(corpus_text(), size, SPECIALS), repr(size),
                           what=f"train_sentencepiece with vocab_size={size!r} (a vocabulary size is an int)")


@pytest.mark.parametrize("kind", KINDS)
def test_decode_accepts_a_tensor_or_an_array_of_ids(impl, kind):
    import numpy as np
    import torch

    tokenizer = make(impl, kind)
    ids = tokenizer.encode(MULTILINGUAL)
    for name, held in (("a tensor", torch.tensor(ids)), ("a numpy array", np.array(ids, dtype=np.int64))):
        try:
            text = tokenizer.decode(held)
        except NotImplementedError:
            raise
        except (ValueError, TypeError, KeyError) as error:
            raise AssertionError(f"decode of {name} of ids must read the ids it holds (.tolist()), got "
                                 f"{type(error).__name__}: {error}") from None
        assert text == MULTILINGUAL, f"decode of {name} of ids must equal decode of the list of the same ids"


def test_trained_tokenizer_splits_with_the_pattern_it_was_trained_with(impl):
    # GPT-2 keeps the space before a number in its pre-token (" 2024"), GPT-4 does not (" ", "202", "4"): trained
    # with GPT-2 on these years, the tokenizer learns " 2024" as one token, which only the GPT-2 split can use.
    text = "In 2024 and 2024, again 2024."
    trained = impl.tokenizer.train_bpe([text] * 20, 256 + len(SPECIALS) + 12, SPECIALS, pattern="gpt2")
    again = impl.tokenizer.Tokenizer(trained.vocab, trained.merges, SPECIALS, "gpt2")
    assert trained.encode(text) == again.encode(text), (
        "train_bpe(pattern='gpt2') must return a tokenizer that splits text with the GPT-2 pattern it learned "
        f"with: {trained.encode(text)} differs from the same vocabulary and merges under 'gpt2', {again.encode(text)}")


def test_sentencepiece_learns_from_the_lines_between_special_tokens(impl):
    pytest.importorskip("sentencepiece")
    train = impl.tokenizer.train_sentencepiece
    text = corpus_text()
    model = train(text, 600, SPECIALS)
    spanning = [piece for piece in model.vocab.values() if b"\n" in piece and len(piece) > 1]
    assert not spanning, (
        f"sentencepiece learns from lines: no piece may span a line break (encode_iterable relies on it), got "
        f"{spanning[:3]}")
    as_lines = regex.sub("|".join(map(regex.escape, SPECIALS)), "\n", text)
    assert train(as_lines, 600, SPECIALS).vocab == model.vocab, (
        "a special token in the training text must separate what is on either side, as a line break does, and be "
        "learned from no more than that: training on the text with every special token made a line break must give "
        "the same vocabulary")
    assert_rejects(lambda: train(text, 300, SPECIALS), 300,
                   what="train_sentencepiece(vocab_size=300) of a corpus with more than 300 distinct characters "
                        "(sentencepiece refuses it: the error must be a ValueError naming the size)")


@pytest.fixture(autouse=True, scope="module")
def _tokenizers_built_afresh():
    """The tokenizers, models and exports built from the implementation live for one run of this module: a
    process that runs the spec again (a forked worker of a mutation run, say) builds them anew from the code
    it tests, instead of reusing what an earlier run built."""
    for cached in (_bpe, _sentencepiece_model, _sentencepiece, _tiktoken_for, _export, _hand_built_tokenizer):
        cached.cache_clear()
    yield
