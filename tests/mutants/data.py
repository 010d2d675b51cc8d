"""Wrong implementations of the data chapter that a learner could plausibly write."""

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

import llmkata.reference.data as ref

from . import mutant

# ---------------------------------------------------------------- split


@mutant("data.train_val_split", "test_split_is_disjoint_and_covers_every_document",
        why="validation documents stay in train too")
def train_val_split_keeping_everything_in_train(docs, val_fraction=0.1, salt=""):
    docs = list(docs)
    return docs, [doc for doc in docs if ref.is_validation(doc, val_fraction, salt)]


@mutant("data.is_validation", "test_split_is_disjoint_and_covers_every_document", why="a coin flip instead of a hash")
def is_validation_by_a_random_draw(text, val_fraction=0.1, salt=""):
    return random.random() < val_fraction


@mutant("data.train_val_split", "test_split_is_stable_under_reordering_and_growth", why="every k-th document")
def train_val_split_by_position(docs, val_fraction=0.1, salt=""):
    """Every k-th document to validation: right fraction, but a document's side depends on its position."""
    train, val = [], []
    every = max(round(1 / val_fraction), 1) if val_fraction else 0
    for i, doc in enumerate(docs):
        (val if every and i % every == 0 else train).append(doc)
    return train, val


@mutant("data.is_validation", "test_validation_fraction_is_within_the_hoeffding_bound",
        why="u > f: the fraction is 1 - f")
def is_validation_comparing_the_wrong_way(text, val_fraction=0.1, salt=""):
    return not ref.is_validation(text, val_fraction, salt)  # u >= f: validation gets 1 - f


@mutant("data.is_validation", "test_validation_fraction_is_within_the_hoeffding_bound", why="ignores the salt")
def is_validation_ignoring_the_salt(text, val_fraction=0.1, salt=""):
    return ref.is_validation(text, val_fraction)


@mutant("data.train_val_split", "test_split_is_disjoint_and_covers_every_document", why="the salt is not passed on")
def train_val_split_ignoring_the_salt(docs, val_fraction=0.1, salt=""):
    return ref.train_val_split(docs, val_fraction)


# ---------------------------------------------------------------- tokenize and pack


@mutant("data.token_dtype", "test_token_dtype_is_the_smallest_that_fits",
        why="a vocabulary of exactly 65536 ids fits uint16")
def token_dtype_off_by_one(vocab_size):
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def _pack_unchecked(docs, tokenizer, eot_id, path, dtype, between_only=False):
    ids = []
    for doc in docs:
        ids += tokenizer.encode(doc) + [eot_id]
    if between_only and ids:
        ids.pop()
    np.save(path, np.array(ids, dtype=np.int64).astype(dtype))  # astype wraps ids that do not fit


@mutant("data.tokenize_and_pack", "test_packed_stream_is_each_document_followed_by_eot",
        why="no end-of-text after the last document")
def tokenize_and_pack_eot_between_documents_only(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    _pack_unchecked(docs, tokenizer, eot_id, path, ref.token_dtype(vocab_size), between_only=True)
    return np.load(path, mmap_mode="r")


@mutant("data.tokenize_and_pack", "test_packed_stream_is_each_document_followed_by_eot",
        why="loads the stream into memory")
def tokenize_and_pack_returning_an_array_in_memory(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    return np.array(ref.tokenize_and_pack(docs, tokenizer, eot_id, path, vocab_size, num_workers))


@mutant("data.tokenize_and_pack", "test_large_vocabularies_pack_as_uint32",
        "test_rejects_token_ids_outside_the_vocabulary",
        why="uint16 whatever the vocabulary, no range check")
def tokenize_and_pack_always_uint16(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    _pack_unchecked(docs, tokenizer, eot_id, path, np.uint16)
    return np.load(path, mmap_mode="r")


@mutant("data.tokenize_and_pack", "test_packing_with_workers_equals_packing_in_one_process",
        why="worker shards change the order")
def tokenize_and_pack_interleaving_worker_shards(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    """Deals documents round-robin to the workers and concatenates their outputs: the corpus order is lost."""
    docs = list(docs)
    shards = [docs[w::num_workers] for w in range(num_workers)]
    return ref.tokenize_and_pack([doc for shard in shards for doc in shard], tokenizer, eot_id, path, vocab_size)


@mutant("data.tokenize_and_pack", "test_packing_writes_atomically",
        why="truncates the old file before the new one is complete")
def tokenize_and_pack_writing_in_place(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    with open(path, "wb") as file:
        ids = []
        for doc in docs:
            ids += tokenizer.encode(doc) + [eot_id]
        np.save(file, np.array(ids, dtype=ref.token_dtype(vocab_size)))
    return np.load(path, mmap_mode="r")


@mutant("data.tokenize_and_pack", "test_packing_writes_atomically", why="a failure leaves the temporary file behind")
def tokenize_and_pack_leaving_its_temporary_file(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    """Streams raw tokens to a temporary file, then converts it; an error on the way leaves it behind."""
    dtype = ref.token_dtype(vocab_size)
    tmp = f"{path}.raw"
    with open(tmp, "wb") as file:
        for doc in docs:
            file.write(np.array(tokenizer.encode(doc) + [eot_id], dtype=dtype).tobytes())
    np.save(path, np.fromfile(tmp, dtype=dtype))
    os.remove(tmp)
    return np.load(path, mmap_mode="r")


@mutant("data.tokenize_and_pack", "test_rejects_an_empty_corpus", why="an empty corpus gives an empty file")
def tokenize_and_pack_writing_an_empty_file(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    docs = list(docs)
    if not docs:
        np.save(path, np.zeros(0, dtype=ref.token_dtype(vocab_size)))
        return np.zeros(0, dtype=ref.token_dtype(vocab_size))
    return ref.tokenize_and_pack(docs, tokenizer, eot_id, path, vocab_size, num_workers)


@mutant("data.tokenize_and_pack", "test_token_file_is_written_at_the_path_given_and_mapped_read_only",
        why="np.save(path, ...): a name without .npy gets '.npy' appended")
def tokenize_and_pack_with_np_save(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    ids = []
    for doc in docs:
        ids += tokenizer.encode(doc) + [eot_id]
    np.save(path, np.array(ids, dtype=ref.token_dtype(vocab_size)))
    return ref.load_tokens(path)


@mutant("data.load_tokens", "test_token_file_is_written_at_the_path_given_and_mapped_read_only",
        why="maps the file read-write: a write into the array changes the token file")
def load_tokens_read_write(path):
    return np.load(path, mmap_mode="r+")


@mutant("data.load_tokens", "test_rejects_a_file_that_is_not_a_token_stream", why="any .npy file is taken as tokens")
def load_tokens_unchecked(path):
    return np.load(path, mmap_mode="r")


@mutant("data.tokenize_and_pack", "test_rejects_token_ids_outside_the_vocabulary",
        why="checks the ids once the new file has replaced the old one")
def tokenize_and_pack_checking_ids_afterwards(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    path = Path(path)
    ids = []
    for doc in docs:
        ids += tokenizer.encode(doc) + [eot_id]
    if not ids:
        raise ValueError("the corpus is empty: there are no documents to tokenize")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        np.save(file, np.array(ids, dtype=ref.token_dtype(vocab_size)))
    os.replace(tmp, path)
    tokens = ref.load_tokens(path)
    if int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary 0..{vocab_size - 1}")
    return tokens


# ---------------------------------------------------------------- batches


def _rows(tokens, starts, length):
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + length]).astype(np.int64) for s in starts]))


@mutant("data.get_batch", "test_batches_are_windows_of_the_stream_with_y_shifted_by_one", why="y = x")
def get_batch_without_the_shift(tokens, batch_size, context_length, generator, device=None):
    x, _ = ref.get_batch(tokens, batch_size, context_length, generator, device)
    return x, x.clone()


@mutant("data.get_batch", "test_batches_are_windows_of_the_stream_with_y_shifted_by_one", why="int32 batches")
def get_batch_as_int32(tokens, batch_size, context_length, generator, device=None):
    x, y = ref.get_batch(tokens, batch_size, context_length, generator, device)
    return x.int(), y.int()


@mutant("data.get_batch", "test_every_start_offset_is_reachable", why="randint's high is exclusive: one offset too few")
def get_batch_missing_the_last_offset(tokens, batch_size, context_length, generator, device=None):
    starts = torch.randint(len(tokens) - context_length - 1, (batch_size,), generator=generator).tolist()
    rows = _rows(tokens, starts, context_length + 1)
    return rows[:, :-1], rows[:, 1:]


@mutant("data.get_batch", "test_every_start_offset_is_reachable", why="only offsets that are multiples of T")
def get_batch_from_aligned_chunks(tokens, batch_size, context_length, generator, device=None):
    chunks = (len(tokens) - 1) // context_length
    starts = (torch.randint(chunks, (batch_size,), generator=generator) * context_length).tolist()
    rows = _rows(tokens, starts, context_length + 1)
    return rows[:, :-1], rows[:, 1:]


@mutant("data.get_batch", "test_same_seed_gives_same_batches", why="ignores the generator passed in")
def get_batch_from_the_global_generator(tokens, batch_size, context_length, generator, device=None):
    starts = torch.randint(len(tokens) - context_length, (batch_size,)).tolist()
    rows = _rows(tokens, starts, context_length + 1)
    return rows[:, :-1], rows[:, 1:]


@mutant("data.get_batch", "test_rejects_a_context_longer_than_the_data", why="shortens the window silently")
def get_batch_shortening_the_window(tokens, batch_size, context_length, generator, device=None):
    return ref.get_batch(tokens, batch_size, min(context_length, len(tokens) - 1), generator, device)


@mutant("data.sequential_batches", "test_sequential_batches_cover_every_target_exactly_once",
        why="drops the short last window")
def sequential_batches_dropping_the_last_window(tokens, batch_size, context_length, device=None):
    for x, y in ref.sequential_batches(tokens, batch_size, context_length, device):
        keep = (y != -100).all(dim=1)
        if keep.any():
            yield x[keep], y[keep]


@mutant("data.sequential_batches", "test_sequential_batches_cover_every_target_exactly_once",
        why="windows of T + 1 skip a target each")
def sequential_batches_striding_by_t_plus_one(tokens, batch_size, context_length, device=None):
    starts = list(range(0, len(tokens) - 1, context_length + 1))
    for first in range(0, len(starts), batch_size):
        xs, ys = [], []
        for s in starts[first:first + batch_size]:
            row = np.asarray(tokens[s:s + context_length + 1]).astype(np.int64).tolist()
            x, y = row[:-1], row[1:]
            xs.append(x + [0] * (context_length - len(x)))
            ys.append(y + [-100] * (context_length - len(y)))
        yield torch.tensor(xs), torch.tensor(ys)


@mutant("data.sequential_batches", "test_sequential_batches_cover_every_target_exactly_once",
        why="pads targets with token 0")
def sequential_batches_padding_targets_with_zero(tokens, batch_size, context_length, device=None):
    for x, y in ref.sequential_batches(tokens, batch_size, context_length, device):
        yield x, y.masked_fill(y == -100, 0)


@mutant("data.sequential_batches", "test_sequential_batches_cover_every_target_exactly_once",
        why="pads the inputs of the short last window with -100 like its targets: -100 is no token id")
def sequential_batches_padding_inputs_with_ignore_index(tokens, batch_size, context_length, device=None):
    starts = list(range(0, len(tokens) - 1, context_length))
    for first in range(0, len(starts), batch_size):
        xs, ys = [], []
        for s in starts[first:first + batch_size]:
            x = np.asarray(tokens[s:s + context_length]).astype(np.int64).tolist()
            y = np.asarray(tokens[s + 1:s + context_length + 1]).astype(np.int64).tolist()
            xs.append(x + [ref.IGNORE_INDEX] * (context_length - len(x)))
            ys.append(y + [ref.IGNORE_INDEX] * (context_length - len(y)))
        yield torch.tensor(xs), torch.tensor(ys)


@mutant("data.document_ids", "test_document_ids_count_documents_from_zero",
        why="the end-of-text token opens the next document")
def document_ids_starting_after_the_eot(x, eot_id):
    return torch.cumsum((x == eot_id).long(), dim=-1)


@mutant("data.document_mask", "test_document_mask_never_crosses_a_document_boundary", why="forgets the causal part")
def document_mask_without_causality(x, eot_id):
    ids = ref.document_ids(x, eot_id)
    return ids[..., :, None] == ids[..., None, :]


@mutant("data.document_mask", "test_document_mask_never_crosses_a_document_boundary",
        why="the end-of-text token opens the next document")
def document_mask_putting_eot_in_the_next_document(x, eot_id):
    ids = torch.cumsum((x == eot_id).long(), dim=-1)
    causal = torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril()
    return causal & (ids[..., :, None] == ids[..., None, :])


@mutant("data.document_ids", "test_document_ids_count_documents_from_zero",
        why="counts along dim 1, as for a (batch, T) window: wrong for (T) and (2, batch, T)")
def document_ids_along_dim_one(x, eot_id):
    is_eot = (x == eot_id).long()
    return torch.cumsum(is_eot, dim=1) - is_eot


@mutant("data.document_mask", "test_document_mask_never_crosses_a_document_boundary",
        why="indexes as if the windows were (batch, T)")
def document_mask_for_batches_only(x, eot_id):
    ids = ref.document_ids(x, eot_id)
    causal = torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril()
    return causal & (ids[:, :, None] == ids[:, None, :])


@mutant("data.is_validation", "test_validation_fraction_is_within_the_hoeffding_bound",
        why="cuts the salt to BLAKE2b's 64-byte key: salts that differ only past byte 64 draw the same split")
def is_validation_cutting_long_salts(text, val_fraction=0.1, salt=""):
    return ref.is_validation(text, val_fraction, salt.encode("utf-8")[:64].decode("utf-8", "ignore"))


@mutant("data.is_validation", "test_is_validation_is_the_keyed_blake2b_of_the_document",
        why="hashes every salt of 64 bytes or more: a 64-byte salt, which BLAKE2b takes as a key as it is, is hashed")
def is_validation_hashing_64_byte_salts(text, val_fraction=0.1, salt=""):
    key = salt.encode("utf-8")
    if len(key) >= 64:
        key = hashlib.blake2b(key).digest()
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") < val_fraction * 2**64


@mutant("data.is_validation", "test_is_validation_is_the_keyed_blake2b_of_the_document",
        why="strict UTF-8: a document with a lone surrogate raises UnicodeEncodeError")
def is_validation_encoding_strictly(text, val_fraction=0.1, salt=""):
    text.encode("utf-8")
    return ref.is_validation(text, val_fraction, salt)


@mutant("data.is_validation", "test_is_validation_is_the_keyed_blake2b_of_the_document",
        why="reads the digest little-endian: a split other tools cannot reproduce")
def is_validation_little_endian(text, val_fraction=0.1, salt=""):
    key = salt.encode("utf-8")
    if len(key) > 64:
        key = hashlib.blake2b(key).digest()
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


@mutant("data.is_validation", "test_every_documented_rejection_names_the_bad_value",
        why="no range check: a val_fraction of 1.5 silently puts everything in validation")
def is_validation_unchecked(text, val_fraction=0.1, salt=""):
    return ref.is_validation(text, min(max(val_fraction, 0.0), 1.0), salt)


@mutant("data.token_dtype", "test_every_documented_rejection_names_the_bad_value",
        why="no range check: vocab_size 0 or above 2**32 still gets a dtype")
def token_dtype_unchecked(vocab_size):
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


@mutant("data.token_dtype", "test_token_dtype_is_the_smallest_that_fits",
        why="rejects vocab_size 2**32, whose largest id 2**32 - 1 still fits uint32")
def token_dtype_rejecting_2_to_the_32(vocab_size):
    if not 1 <= vocab_size < 2**32:
        raise ValueError(f"vocab_size must be between 1 and 2**32 - 1, got {vocab_size}")
    return ref.token_dtype(vocab_size)


@mutant("data.tokenize_and_pack", "test_eot_id_may_be_any_id_of_the_vocabulary",
        why="takes id 0 for padding and rejects it as eot_id")
def tokenize_and_pack_rejecting_eot_zero(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    if eot_id == 0:
        raise ValueError("eot_id must be a positive id, got 0")
    return ref.tokenize_and_pack(docs, tokenizer, eot_id, path, vocab_size, num_workers)


@mutant("data.tokenize_and_pack", "test_every_documented_rejection_names_the_bad_value",
        why="eot_id <= vocab_size: eot_id == vocab_size is one past the vocabulary")
def tokenize_and_pack_accepting_eot_of_vocab_size(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    if eot_id == vocab_size:
        return ref.tokenize_and_pack(docs, tokenizer, eot_id, path, vocab_size + 1, num_workers)
    return ref.tokenize_and_pack(docs, tokenizer, eot_id, path, vocab_size, num_workers)


@mutant("data.tokenize_and_pack", "test_every_documented_rejection_names_the_bad_value",
        why="num_workers=0 silently runs in one process")
def tokenize_and_pack_accepting_zero_workers(docs, tokenizer, eot_id, path, vocab_size, num_workers=1):
    return ref.tokenize_and_pack(docs, tokenizer, eot_id, path, vocab_size, max(num_workers, 1))


@mutant("data.sequential_batches", "test_every_documented_rejection_names_the_bad_value",
        why="a stream of fewer than 2 tokens yields no batch instead of an error")
def sequential_batches_silent_on_a_short_stream(tokens, batch_size, context_length, device=None):
    if len(tokens) < 2:
        return
    yield from ref.sequential_batches(tokens, batch_size, context_length, device)


@mutant("data.sequential_batches", "test_sequential_batches_cover_every_target_exactly_once",
        why="ceil(N / T) windows, counting tokens instead of targets: one window of padding only when T divides N - 1")
def sequential_batches_one_window_too_many(tokens, batch_size, context_length, device=None):
    n = len(tokens)
    windows = -(-n // context_length)
    for first in range(0, windows, batch_size):
        xs, ys = [], []
        for k in range(first, min(first + batch_size, windows)):
            s = k * context_length
            x = np.asarray(tokens[s:s + context_length]).astype(np.int64).tolist()
            y = np.asarray(tokens[s + 1:s + context_length + 1]).astype(np.int64).tolist()
            xs.append(x + [0] * (context_length - len(x)))
            ys.append(y + [ref.IGNORE_INDEX] * (context_length - len(y)))
        yield torch.tensor(xs), torch.tensor(ys)


@mutant("data.get_batch", "test_batches_are_made_on_the_device_asked_for", why="ignores `device`: batches stay on the CPU")
def get_batch_ignoring_the_device(tokens, batch_size, context_length, generator, device=None):
    return ref.get_batch(tokens, batch_size, context_length, generator)


@mutant("data.sequential_batches", "test_batches_are_made_on_the_device_asked_for",
        why="moves x to the device and forgets y")
def sequential_batches_moving_x_only(tokens, batch_size, context_length, device=None):
    for x, y in ref.sequential_batches(tokens, batch_size, context_length):
        yield (x if device is None else x.to(device)), y


@mutant("data.document_mask", "test_batches_are_made_on_the_device_asked_for",
        why="builds the causal triangle on the CPU whatever the device of x")
def document_mask_with_a_cpu_triangle(x, eot_id):
    ids = ref.document_ids(x, eot_id)
    causal = torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril()
    return causal & (ids[..., :, None] == ids[..., None, :])
