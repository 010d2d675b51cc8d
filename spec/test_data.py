"""Chapter 3 — data: split a corpus, tokenize and pack it into a token file, cut batches from the stream.

The split is a function of each document alone: disjoint, complete, stable when the corpus is reordered or grows.
Packing writes doc_1 <eot> doc_2 <eot> ... as uint16 or uint32, the same with or without worker processes, and
atomically. Training batches are windows of the stream with y = x shifted by one, every start offset reachable,
the same for the same seed; evaluation batches cover every target once; document masks never cross a boundary.

The tokenizer is a byte-level stand-in (`encode(str) -> list[int]`), so this chapter does not need chapter 2.
Statistical tests state their bound: a correct implementation fails one with probability below 1e-6 per run.
"""

import hashlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from .checks import assert_rejects
from .strategies import seeds, unicode_text


class ByteTokenizer:
    """Token i is the byte i of the UTF-8 text; 256 is end-of-text. Picklable, for worker processes."""

    eot_id = 256
    vocab_size = 257

    def __init__(self, offset: int = 0):
        self.offset = offset  # shift every id: a vocabulary larger than uint16 holds

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]


class FailingTokenizer(ByteTokenizer):
    def encode(self, text: str) -> list[int]:
        if "FAIL" in text:
            raise RuntimeError("the tokenizer broke on purpose")
        return super().encode(text)


def packed(docs, eot_id: int = 256, offset: int = 0) -> list[int]:
    """The expected stream: every document's bytes, each followed by eot_id."""
    stream = []
    for doc in docs:
        stream += [b + offset for b in doc.encode("utf-8")] + [eot_id]
    return stream


# ---------------------------------------------------------------- split

documents = st.lists(unicode_text, max_size=30)


@given(documents, st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.sampled_from(["", "run 2", "ü"]))
@example([f"document {i}" for i in range(20)], 0.5, "run 2")
def test_split_is_disjoint_and_covers_every_document(impl, docs, fraction, salt):
    train, val = impl.data.train_val_split(iter(docs), val_fraction=fraction, salt=salt)
    assert sorted(train + val) == sorted(docs), (
        "train and validation together must hold every document exactly once (as many copies as the corpus has)")
    for side, name, expected in ((train, "train", False), (val, "validation", True)):
        assert side == [d for d in docs if impl.data.is_validation(d, fraction, salt) == expected], (
            f"the {name} side must be the documents is_validation(doc, {fraction}, salt={salt!r}) puts there, in "
            "corpus order")
    assert not set(train) & set(val), "a document and its copies must all land on the same side"
    if fraction == 0.0:
        assert val == [], "val_fraction=0 must leave validation empty"
    if fraction == 1.0:
        assert train == [], "val_fraction=1 must put everything in validation"


@given(documents, documents, seeds)
def test_split_is_stable_under_reordering_and_growth(impl, docs, more, seed):
    train, val = impl.data.train_val_split(docs, val_fraction=0.3)
    shuffled = docs + more
    random.Random(seed).shuffle(shuffled)
    train2, val2 = impl.data.train_val_split(shuffled, val_fraction=0.3)
    moved = [d for d in docs if (d in val) != (d in val2)]
    assert not moved, (
        f"a document's side must not change when the corpus is reordered or grows: {moved[:3]} changed side")
    assert len(set(train2) & set(val2)) == 0, "the grown corpus must still split disjointly"


# With N = 2000 distinct documents, P[|val/N - f| >= 0.07] <= 2 exp(-2 N 0.07²) < 6e-9 (Hoeffding).
@given(seeds, st.sampled_from([0.05, 0.2, 0.5]))
def test_validation_fraction_is_within_the_hoeffding_bound(impl, seed, fraction):
    docs = [f"document {seed} {i}" for i in range(2000)]
    val = [doc for doc, held in zip(docs, impl.each(impl.data.is_validation, docs, fraction)) if held]
    assert abs(len(val) / len(docs) - fraction) <= 0.07, (
        f"is_validation(doc, {fraction}) must hold for about that fraction of documents, it held for "
        f"{len(val)} of {len(docs)}")
    other = [doc for doc, held in zip(docs, impl.each(impl.data.is_validation, docs, fraction, salt="another split"))
             if held]
    assert other != val, "a different salt must draw a different split"
    # Salts longer than BLAKE2b's 64-byte key that differ only past byte 64 are different salts all the same.
    long_salts = ["split of run " + "x" * 60 + ending for ending in ("a", "b")]
    first, second = ([doc for doc, held in zip(docs, impl.each(impl.data.is_validation, docs, fraction, salt=s))
                      if held] for s in long_salts)
    assert first != second, (
        "a different salt must draw a different split, also two salts of 73 characters that differ only in the "
        "last one (BLAKE2b takes a key of at most 64 bytes: a longer salt cannot simply be cut to 64)")


def keyed_blake2b_split(text: str, fraction: float, salt: str) -> bool:
    """is_validation by its definition: n = BLAKE2b-64 of the UTF-8 text (surrogates passed through), keyed by the
    salt (hashed to 64 bytes first when longer), read big-endian; validation when n / 2^64 < fraction."""
    key = salt.encode("utf-8")
    if len(key) > 64:
        key = hashlib.blake2b(key).digest()
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def test_is_validation_is_the_keyed_blake2b_of_the_document(impl):
    docs = [f"document {i}" for i in range(200)] + ["a\ud800b", "\udfff", "ü\udc80"]  # lone surrogates too
    salts = {"no salt": "", "a short salt": "run 2", "a salt of exactly 64 bytes": "s" * 64,
             "a salt of 64 bytes in 32 characters": "é" * 32, "a salt of 65 bytes": "s" * 65}
    for name, salt in salts.items():
        expected = [keyed_blake2b_split(doc, 0.5, salt) for doc in docs]
        try:
            actual = impl.each(impl.data.is_validation, docs, 0.5, salt)
        except NotImplementedError:
            raise
        except (UnicodeError, ValueError) as error:
            raise AssertionError(
                f"is_validation with {name} must accept any Python str, lone surrogates included (encode with "
                f"errors='surrogatepass'), and any salt (BLAKE2b takes a key of up to 64 bytes: hash a longer salt "
                f"to 64 bytes first): {type(error).__name__}: {error}") from None
        wrong = [doc for doc, a, e in zip(docs, actual, expected) if a != e]
        assert not wrong, (
            f"is_validation(doc, 0.5, salt) with {name} must be n / 2^64 < 0.5, n the 8-byte BLAKE2b digest of the "
            "UTF-8 document keyed by the UTF-8 salt (hashed to 64 bytes only when it is longer than 64 bytes), read "
            f"big-endian: {len(wrong)} of {len(docs)} documents land on the other side, e.g. {wrong[:2]}")


# ---------------------------------------------------------------- tokenize and pack


def test_token_dtype_is_the_smallest_that_fits(impl):
    cases = {1: np.uint16, 2: np.uint16, 257: np.uint16, 50257: np.uint16, 65536: np.uint16, 65537: np.uint32,
             128256: np.uint32, 2**32: np.uint32}
    for vocab_size, expected in cases.items():
        try:
            actual = np.dtype(impl.data.token_dtype(vocab_size))
        except NotImplementedError:
            raise
        except ValueError as error:
            raise AssertionError(f"token_dtype({vocab_size}) must be {np.dtype(expected).name}: every vocab_size "
                                 f"from 1 to 2**32 has ids that fit, got ValueError: {error}") from None
        assert actual == np.dtype(expected), (
            f"token_dtype({vocab_size}) must be {np.dtype(expected).name}: ids 0..{vocab_size - 1} "
            f"{'fit' if expected is np.uint16 else 'do not fit'} in 16 bits; got {actual.name}")


@given(st.lists(unicode_text, min_size=1, max_size=12))
def test_packed_stream_is_each_document_followed_by_eot(impl, docs):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.npy"
        tokens = impl.data.tokenize_and_pack(iter(docs), ByteTokenizer(), 256, path, vocab_size=257)
        assert isinstance(tokens, np.memmap), f"tokenize_and_pack must return the file memory-mapped, not " \
                                              f"{type(tokens).__name__}"
        assert tokens.dtype == np.uint16, f"a vocabulary of 257 must be stored as uint16, got {tokens.dtype}"
        assert tokens.tolist() == packed(docs), (
            "the stream must be doc_1 <eot> doc_2 <eot> ... doc_n <eot>: each document's tokens followed by eot_id")
        loaded = impl.data.load_tokens(path)
        assert loaded.dtype == np.uint16 and loaded.tolist() == packed(docs), "load_tokens must read the file back"
        assert np.load(path).tolist() == packed(docs), "the token file must be a .npy file numpy can load"
        del tokens, loaded  # release the memory maps before the folder goes


def test_eot_id_may_be_any_id_of_the_vocabulary(impl, tmp_path):
    docs = ["first", "", "last ü"]
    for eot_id in (0, 256):
        try:
            tokens = impl.data.tokenize_and_pack(docs, ByteTokenizer(), eot_id, tmp_path / f"eot{eot_id}.npy",
                                                 vocab_size=257)
        except NotImplementedError:
            raise
        except ValueError as error:
            raise AssertionError(f"eot_id {eot_id} is an id of a vocabulary of 257 (0..256): tokenize_and_pack must "
                                 f"accept it, got ValueError: {error}") from None
        assert tokens.tolist() == packed(docs, eot_id=eot_id), (
            f"eot_id {eot_id} is an id of a vocabulary of 257 (0..256): tokenize_and_pack must accept it and end "
            "each document with it")
        del tokens


def test_packing_with_workers_equals_packing_in_one_process(impl, tmp_path):
    rng = random.Random(0)
    docs = ["".join(rng.choice("abc é😀\n") for _ in range(rng.randrange(0, 40))) + f" #{i}" for i in range(500)]
    one = impl.data.tokenize_and_pack(docs, ByteTokenizer(), 256, tmp_path / "one.npy", vocab_size=257)
    two = impl.data.tokenize_and_pack(docs, ByteTokenizer(), 256, tmp_path / "two.npy", vocab_size=257,
                                      num_workers=2)
    assert two.tolist() == one.tolist() == packed(docs), (
        "tokenize_and_pack(num_workers=2) must write the same stream as one process: documents in corpus order")


def test_large_vocabularies_pack_as_uint32(impl, tmp_path):
    docs = ["big ids", "ü"]
    tokens = impl.data.tokenize_and_pack(docs, ByteTokenizer(offset=70000), 70300, tmp_path / "big.npy",
                                         vocab_size=70301)
    assert tokens.dtype == np.uint32, f"a vocabulary of 70301 needs uint32, got {tokens.dtype}"
    assert tokens.tolist() == packed(docs, eot_id=70300, offset=70000), "ids above 65535 must be stored exactly"


def test_packing_writes_atomically(impl, tmp_path):
    path = tmp_path / "tokens.npy"
    impl.data.tokenize_and_pack(["old"], ByteTokenizer(), 256, path, vocab_size=257)
    before = path.read_bytes()
    docs = ["new document"] * 300 + ["FAIL here"]
    try:
        impl.data.tokenize_and_pack(docs, FailingTokenizer(), 256, path, vocab_size=257)
    except NotImplementedError:
        raise
    except RuntimeError:
        pass
    else:
        raise AssertionError("the tokenizer's error must reach the caller")
    assert path.read_bytes() == before, (
        "a packing that fails half way must leave the old file untouched: write to a temporary file in the same "
        "folder, then os.replace it")
    assert sorted(os.listdir(tmp_path)) == ["tokens.npy"], (
        f"a failed packing must remove its temporary file, found {sorted(os.listdir(tmp_path))}")


def test_token_file_is_written_at_the_path_given_and_mapped_read_only(impl, tmp_path):
    path = str(tmp_path / "train.tokens")  # a str, and a name that does not end in .npy
    try:
        tokens = impl.data.tokenize_and_pack(["one", "two"], ByteTokenizer(), 256, path, vocab_size=257)
    except OSError as error:
        raise AssertionError(f"tokenize_and_pack must write the token file at the path given, {path!r}, whatever its "
                             f"name (np.save would append '.npy'): {error}") from None
    assert sorted(os.listdir(tmp_path)) == ["train.tokens"], (
        f"tokenize_and_pack(path='.../train.tokens') must write exactly that file, found "
        f"{sorted(os.listdir(tmp_path))}")
    assert np.load(path).tolist() == packed(["one", "two"]), "the file must be a .npy file of the packed stream"
    for name, array in (("tokenize_and_pack", tokens), ("load_tokens", impl.data.load_tokens(path))):
        assert not array.flags.writeable, (
            f"{name} must return the token file memory-mapped read-only: a write into it would change the file")
    del tokens


# ---------------------------------------------------------------- batches


def stream(length: int, seed: int, dtype=np.uint16) -> np.ndarray:
    """Distinct tokens in random order: a window's first token tells where it starts."""
    return np.random.default_rng(seed).permutation(length).astype(dtype)


KINDS = ["uint16", "uint32", "memmap", "tensor"]


def source_of(tokens: np.ndarray, kind: str, folder: str):
    """The stream as one kind of input: a uint16 or uint32 array, a memory-mapped .npy file, or an int64 tensor."""
    if kind == "memmap":
        np.save(Path(folder) / "t.npy", tokens)
        return np.load(Path(folder) / "t.npy", mmap_mode="r")
    if kind == "tensor":
        return torch.from_numpy(tokens.astype(np.int64))
    return tokens.astype(np.uint32 if kind == "uint32" else np.uint16)


@given(st.integers(1, 8), st.integers(1, 16), st.integers(0, 40), seeds, st.sampled_from(KINDS))
def test_batches_are_windows_of_the_stream_with_y_shifted_by_one(impl, batch, context, extra, seed, kind):
    tokens = stream(context + 1 + extra, seed, np.uint32 if kind == "uint32" else np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        source = source_of(tokens, kind, folder)
        x, y = impl.data.get_batch(source, batch, context, torch.Generator().manual_seed(seed))
        del source
    for name, t in (("x", x), ("y", y)):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.int64, f"{name} must be an int64 tensor"
        assert tuple(t.shape) == (batch, context), f"{name} must have shape (batch_size, context_length) = " \
                                                   f"{(batch, context)}, got {tuple(t.shape)}"
    position = {int(token): i for i, token in enumerate(tokens)}
    for row in range(batch):
        start = position[int(x[row, 0])]
        assert x[row].tolist() == tokens[start:start + context].tolist(), (
            f"row {row} of x must be a contiguous window of the stream")
        assert y[row].tolist() == tokens[start + 1:start + context + 1].tolist(), (
            f"row {row} of y must be x shifted by one: the stream at positions {start + 1}..{start + context}")


# 32 start offsets (N = 40, T = 8), 1024 rows: P[some offset never drawn] <= 32 (31/32)^1024 < 3e-13.
@given(seeds)
def test_every_start_offset_is_reachable(impl, seed):
    tokens = np.arange(40, dtype=np.uint16)
    generator = torch.Generator().manual_seed(seed)
    starts = set()
    for _ in range(16):
        x, _ = impl.data.get_batch(tokens, 64, 8, generator)
        starts.update(x[:, 0].tolist())
    assert starts == set(range(32)), (
        f"with N=40 tokens and T=8, every start offset 0..31 must be drawn (the last one, 31, ends the target at the "
        f"last token); in 1024 rows these never came: {sorted(set(range(32)) - starts)}, these are too far: "
        f"{sorted(starts - set(range(32)))}")


@given(seeds)
def test_same_seed_gives_same_batches(impl, seed):
    tokens = stream(500, seed)
    first = [impl.data.get_batch(tokens, 4, 16, g) for g in [torch.Generator().manual_seed(seed)] * 3]
    torch.manual_seed(seed + 1)  # the global generator must play no part
    second = [impl.data.get_batch(tokens, 4, 16, g) for g in [torch.Generator().manual_seed(seed)] * 3]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2), (
            "the same seed must give the same sequence of batches: draw offsets from the generator passed in")


@given(st.integers(2, 60), st.integers(1, 5), st.integers(1, 9), seeds, st.sampled_from(KINDS))
def test_sequential_batches_cover_every_target_exactly_once(impl, length, batch, context, seed, kind):
    tokens = stream(length, seed)
    with tempfile.TemporaryDirectory() as folder:
        source = source_of(tokens, kind, folder)
        batches = list(impl.data.sequential_batches(source, batch, context))
        del source
    targets, windows = [], 0
    for i, (x, y) in enumerate(batches):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.shape[1] == context, (
            f"batch {i}: x and y must be int64 of shape (rows, {context}), got {tuple(x.shape)}, {tuple(y.shape)}")
        assert x.shape[0] == batch or i == len(batches) - 1, f"only the last batch may have fewer than {batch} rows"
        for row in range(x.shape[0]):
            start = (windows + row) * context
            valid = y[row] != -100
            n = int(valid.sum())
            assert valid.tolist() == [True] * n + [False] * (context - n), "padding (-100) may only end a window"
            assert n >= 1, (
                f"window {windows + row} has no target: {length} tokens hold {length - 1} targets, which fill "
                f"ceil({length - 1} / {context}) = {-(-(length - 1) // context)} windows, no more")
            assert x[row, :n].tolist() == tokens[start:start + n].tolist() and \
                y[row, :n].tolist() == tokens[start + 1:start + 1 + n].tolist(), (
                    f"window {windows + row} must be x = tokens[{start}:{start + context}], y shifted by one")
            inputs = tokens[start:start + context].tolist()
            assert x[row].tolist() == inputs + [0] * (context - len(inputs)), (
                f"window {windows + row}: x must be tokens[{start}:{start + context}], padded with 0 past the end of "
                f"the stream (a valid token id: -100 is for targets only), got {x[row].tolist()}")
            targets += y[row, :n].tolist()
        windows += x.shape[0]
    assert targets == tokens[1:].tolist(), (
        f"together the windows must predict every token after the first exactly once, in order: {len(targets)} "
        f"targets for {length - 1} tokens")


def test_batches_are_made_on_the_device_asked_for(impl):
    # The `meta` device holds shapes and no data: it tells a tensor left on the CPU from one moved, on any machine.
    tokens = stream(50, 0)
    x, y = impl.data.get_batch(tokens, 3, 8, torch.Generator().manual_seed(0), device="meta")
    for name, t in (("x", x), ("y", y)):
        assert t.device.type == "meta" and tuple(t.shape) == (3, 8), (
            f"get_batch(..., device='meta') must return {name} of shape (3, 8) on that device, got "
            f"{tuple(t.shape)} on {t.device}")
    batches = list(impl.data.sequential_batches(tokens, 4, 8, device="meta"))
    assert len(batches) == 2, f"50 tokens in windows of 8 make 7 windows, 2 batches of 4, got {len(batches)}"
    for i, (x, y) in enumerate(batches):
        for name, t in (("x", x), ("y", y)):
            assert t.device.type == "meta", (
                f"sequential_batches(..., device='meta') must put {name} of batch {i} on that device, got {t.device}")
    windows = torch.zeros(2, 6, dtype=torch.int64, device="meta")
    try:
        ids = impl.data.document_ids(windows, 0)
        mask = impl.data.document_mask(windows, 0)
    except NotImplementedError:
        raise
    except RuntimeError as error:
        raise AssertionError(f"document_ids and document_mask must work on the device of x (build the causal "
                             f"part there too): {error}") from None
    assert ids.device.type == "meta" and mask.device.type == "meta" and tuple(mask.shape) == (2, 6, 6), (
        f"document_ids and document_mask of windows on the meta device must be on that device, with the mask of "
        f"shape (2, 6, 6); got {ids.device} and {mask.device} {tuple(mask.shape)}")


def _of_any_shape(impl, name: str, x, eot):
    """data.<name>(x, eot) for x of shape (..., T): an error is a broken property, not a crash of the spec."""
    try:
        return getattr(impl.data, name)(x, eot)
    except NotImplementedError:
        raise
    except (IndexError, RuntimeError, ValueError) as error:
        raise AssertionError(f"{name} must accept windows of any shape (..., T), also {tuple(x.shape)}: "
                             f"{type(error).__name__}: {error}") from None


@given(st.sampled_from([(), (1,), (3,), (2, 3)]), st.integers(1, 12), seeds)
def test_document_ids_count_documents_from_zero(impl, leading, length, seed):
    eot = 0
    x = torch.tensor([[5, 7, eot, 9, eot, 4], [eot, eot, 1, 2, 3, eot]])
    expected = [[0, 0, 0, 1, 1, 2], [0, 1, 2, 2, 2, 2]]
    assert impl.data.document_ids(x, eot).tolist() == expected, (
        "document_ids must number the documents of each row from 0; an end-of-text token belongs to the document "
        f"it ends: expected {expected}, got {impl.data.document_ids(x, eot).tolist()}")
    x = torch.randint(0, 4, (*leading, length), generator=torch.Generator().manual_seed(seed))
    ids = _of_any_shape(impl, "document_ids", x, eot)
    assert ids.dtype == torch.int64 and ids.shape == x.shape, (
        f"document_ids of windows of shape {tuple(x.shape)} must be int64 of that shape, got {ids.dtype} "
        f"{tuple(ids.shape)}")
    before = torch.cat([torch.zeros_like(x[..., :1]), (x[..., :-1] == eot).long()], dim=-1).cumsum(dim=-1)
    assert torch.equal(ids, before), (
        f"document_ids of windows of shape {tuple(x.shape)}: each position's id must be the number of end-of-text "
        "tokens before it in its own window (the last dimension)")


@given(st.integers(1, 3), st.integers(1, 12), seeds, st.sampled_from(["(T)", "(B, T)", "(2, B, T)"]))
def test_document_mask_never_crosses_a_document_boundary(impl, rows, length, seed, layout):
    generator = torch.Generator().manual_seed(seed)
    eot = 3
    x = torch.randint(0, 6, (rows, length), generator=generator)  # about one token in six ends a document
    windows = {"(T)": x[0], "(B, T)": x, "(2, B, T)": torch.stack([x, x.flip(0)])}[layout]
    mask = _of_any_shape(impl, "document_mask", windows, eot)
    assert mask.dtype == torch.bool and tuple(mask.shape) == (*windows.shape, length), (
        f"document_mask of windows of shape {tuple(windows.shape)} must be a bool tensor of shape (..., T, T) = "
        f"{(*windows.shape, length)}, got {mask.dtype} {tuple(mask.shape)}")
    if layout == "(T)":
        mask, x, rows = mask[None], x[:1], 1
    elif layout == "(2, B, T)":
        assert torch.equal(mask[1], mask[0].flip(0)), "the mask of each window must depend on that window alone"
        mask = mask[0]
    for b in range(rows):
        for i in range(length):
            for j in range(length):
                allowed = j <= i and not (x[b, j:i] == eot).any()  # no document ends at j..i-1
                assert bool(mask[b, i, j]) == allowed, (
                    f"row {x[b].tolist()}: query {i} {'must' if allowed else 'must not'} attend to key {j} (causal, "
                    "within the document; an end-of-text token still sees its own document)")


# ---------------------------------------------------------------- bad input


def test_rejects_a_context_longer_than_the_data(impl):
    tokens = np.arange(10, dtype=np.uint16)
    generator = torch.Generator().manual_seed(0)
    x, y = impl.data.get_batch(tokens, 2, 9, generator)  # exactly fits: one possible window
    assert x[0].tolist() == list(range(9)) and y[0].tolist() == list(range(1, 10)), "T = N - 1 leaves one window"
    assert_rejects(lambda: impl.data.get_batch(tokens, 2, 10, generator), 10,
                   what="get_batch with context_length 10 on 10 tokens (a window and its target need 11)")
    assert_rejects(lambda: impl.data.get_batch(tokens, 2, 64, generator), 64,
                   what="get_batch with context_length 64 on 10 tokens")


def _old_file(impl, folder: Path) -> tuple[Path, bytes]:
    """A token file from an earlier run, which a rejected call must leave as it is."""
    path = folder / "old.npy"
    impl.data.tokenize_and_pack(["the old corpus"], ByteTokenizer(), 256, path, vocab_size=257)
    return path, path.read_bytes()


def _untouched(folder: Path, path: Path, before: bytes, what: str) -> None:
    assert path.read_bytes() == before, f"{what} must leave the existing token file as it was"
    assert sorted(os.listdir(folder)) == [path.name], (
        f"{what} must leave no file behind, found {sorted(os.listdir(folder))}")


def test_rejects_an_empty_corpus(impl, tmp_path):
    assert_rejects(lambda: impl.data.tokenize_and_pack([], ByteTokenizer(), 256, tmp_path / "t.npy", 257), "empty",
                   what="tokenize_and_pack of no documents")
    kept = (doc for doc in ["a", "b"] if len(doc) > 5)  # a filter that drops everything
    assert_rejects(lambda: impl.data.tokenize_and_pack(kept, ByteTokenizer(), 256, tmp_path / "t.npy", 257), "empty",
                   what="tokenize_and_pack of a corpus that is empty after filtering")
    assert not (tmp_path / "t.npy").exists(), "no token file may be written for an empty corpus"
    path, before = _old_file(impl, tmp_path)
    assert_rejects(lambda: impl.data.tokenize_and_pack(iter([]), ByteTokenizer(), 256, path, 257), "empty",
                   what="tokenize_and_pack of no documents over an existing token file")
    _untouched(tmp_path, path, before, "tokenize_and_pack of an empty corpus")


def test_rejects_token_ids_outside_the_vocabulary(impl, tmp_path):
    path, before = _old_file(impl, tmp_path)
    docs = ["fine"] * 300 + ["ÿ"]  # the bad id comes after hundreds of good documents
    assert_rejects(lambda: impl.data.tokenize_and_pack(docs, ByteTokenizer(), 179, path, 180),
                   195, what="token id 195 (the first byte of 'ÿ') with vocab_size 180")
    _untouched(tmp_path, path, before, "a packing rejected for a token id outside the vocabulary")
    assert_rejects(lambda: impl.data.tokenize_and_pack(["a"], ByteTokenizer(), 300, path, 257), 300,
                   what="eot_id 300 with vocab_size 257")
    _untouched(tmp_path, path, before, "a packing rejected for its eot_id")


def test_rejects_a_file_that_is_not_a_token_stream(impl, tmp_path):
    cases = {"floats.npy": np.zeros(5, np.float32), "signed.npy": np.arange(5, dtype=np.int64),
             "matrix.npy": np.zeros((2, 3), np.uint16)}
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        assert_rejects(lambda: impl.data.load_tokens(tmp_path / name), name,
                       what=f"load_tokens of a {array.dtype} array of shape {array.shape} (a token file is a 1-D "
                            "array of uint16 or uint32)")


def test_every_documented_rejection_names_the_bad_value(impl, tmp_path):
    for fraction in (1.5, -0.1):
        assert_rejects(lambda: impl.data.is_validation("doc", fraction), fraction,
                       what=f"is_validation with val_fraction {fraction} (a fraction is in [0, 1])")
        assert_rejects(lambda: impl.data.train_val_split(["doc"], fraction), fraction,
                       what=f"train_val_split with val_fraction {fraction}")
    for vocab_size in (0, 2**32 + 1):
        assert_rejects(lambda: impl.data.token_dtype(vocab_size), vocab_size,
                       what=f"token_dtype({vocab_size}) (no unsigned dtype of numpy holds the ids 0..vocab_size-1 "
                            "when vocab_size is 0 or above 2**32)")
    path = tmp_path / "t.npy"
    assert_rejects(lambda: impl.data.tokenize_and_pack(["a"], ByteTokenizer(), 257, path, 257), 257,
                   what="eot_id 257 with vocab_size 257 (the ids are 0..256)")
    assert_rejects(lambda: impl.data.tokenize_and_pack(["a"], ByteTokenizer(), -1, path, 257), -1,
                   what="eot_id -1")
    assert_rejects(lambda: impl.data.tokenize_and_pack(["a"], ByteTokenizer(), 256, path, 257, num_workers=0),
                   "num_workers", what="tokenize_and_pack with num_workers=0")
    assert not path.exists(), "a rejected packing must write no token file"
    for length in (0, 1):
        tokens = np.arange(length, dtype=np.uint16)
        assert_rejects(lambda: impl.data.sequential_batches(tokens, 2, 4), length,
                       what=f"sequential_batches of a stream of {length} token(s): no token has a successor to be "
                            "its target")
