"""Data: split a corpus, tokenize and pack it into one token file, and cut training batches from it.

    split     is_validation(doc) decides by a hash of the document itself, so the split of a document never changes
              when the corpus is reordered or grows; train_val_split(docs) applies it to a corpus.
    pack      tokenize_and_pack(docs, tokenizer, eot_id, path, vocab_size): one flat stream of token ids,
              doc_1 <eot> doc_2 <eot> ... doc_n <eot>, in a .npy file of uint16 (vocab_size <= 65536) or uint32,
              written atomically and read back as a memory map (load_tokens): the corpus never has to fit in RAM.
    batch     get_batch: random windows of the stream for training, x = stream[s : s+T], y = stream[s+1 : s+T+1];
              sequential_batches: consecutive windows for evaluation, every token a target exactly once;
              document_ids / document_mask: which positions of a packed window may attend to which, when
              attention should not cross from one document into the next.

Any tokenizer works that has `encode(str) -> list[int]`. Left out: shuffling buffers, sharded token files,
data-loader worker processes, curriculum and mixture weights.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from .files import atomic_path

__all__ = [
    "is_validation", "train_val_split", "token_dtype", "tokenize_and_pack", "load_tokens",
    "get_batch", "sequential_batches", "document_ids", "document_mask", "IGNORE_INDEX",
]

IGNORE_INDEX = -100  # the target of a padding position: cross-entropy skips it (torch's default ignore_index)

_DOCS_PER_TASK = 64  # documents one worker tokenizes per task


# --------------------------------------------------------------------------------------------------------- split

def is_validation(text: str, val_fraction: float = 0.1, salt: str = "") -> bool:
    """Whether a document belongs to the validation split: u(text) < val_fraction, where u = n / 2^64 and n is the
    8-byte BLAKE2b digest of the UTF-8 text (lone surrogates passed through: any str has a side), keyed by the UTF-8
    salt, read big-endian. BLAKE2b takes a key of at most 64 bytes: a longer salt is hashed to 64 bytes first.

    A function of the document alone: reorder or grow the corpus and no document changes side, and duplicates
    always land on the same side (no copy of a validation document leaks into training). A different `salt`
    draws a different split.
    """
    # BEGIN SOLUTION
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    key = salt.encode("utf-8")
    if len(key) > 64:  # BLAKE2b takes a key of at most 64 bytes: a longer salt is hashed down, never cut
        key = hashlib.blake2b(key).digest()
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
    # u < f compared exactly as integers, n < f·2^64: the float n / 2^64 would round the largest n up to 1.0 and
    # keep those documents out of a validation fraction of 1.
    return int.from_bytes(digest, "big") < val_fraction * 2**64
    # END SOLUTION


def train_val_split(docs: Iterable[str], val_fraction: float = 0.1, salt: str = "") -> tuple[list[str], list[str]]:
    """(train, validation): every document on exactly one side by is_validation, each side in corpus order."""
    # BEGIN SOLUTION
    train, val = [], []
    for doc in docs:
        (val if is_validation(doc, val_fraction, salt) else train).append(doc)
    return train, val
    # END SOLUTION


# ---------------------------------------------------------------------------------------------- tokenize and pack

def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id 0..vocab_size-1, for 1 <= vocab_size <= 2**32 (else a
    ValueError).  Example: 50257 -> uint16"""
    # BEGIN SOLUTION
    if not 1 <= vocab_size <= 2**32:
        raise ValueError(f"vocab_size must be between 1 and 2**32, got {vocab_size}")
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    # END SOLUTION


def _encode(task: tuple[int, list[str]], tokenizer, eot_id: int, vocab_size: int, dtype: np.dtype) -> np.ndarray:
    """Token ids of a run of documents, each followed by eot_id, as one array of `dtype`."""
    first, docs = task
    pieces = []
    for number, doc in enumerate(docs, start=first):
        if not isinstance(doc, str):
            raise TypeError(f"document {number} is {type(doc).__name__}, not str")
        ids = tokenizer.encode(doc)
        # fromiter with a count is the quickest way from a list of ints to an array; the ids of a numpy tokenizer
        # are an array already.
        ids = ids.astype(np.int64) if isinstance(ids, np.ndarray) else np.fromiter(ids, np.int64, count=len(ids))
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = ids[(ids < 0) | (ids >= vocab_size)][0]
            raise ValueError(f"document {number}: token id {bad} is outside the vocabulary 0..{vocab_size - 1}")
        pieces += [ids, np.array([eot_id])]
    return np.concatenate(pieces).astype(dtype) if pieces else np.empty(0, dtype)


def _tasks(docs: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """(number of the first document, the next _DOCS_PER_TASK documents), until the documents run out."""
    docs = iter(docs)
    first = 0
    while chunk := list(islice(docs, _DOCS_PER_TASK)):
        yield first, chunk
        first += len(chunk)


_worker_args: tuple = ()


def _init_worker(*args) -> None:
    global _worker_args
    _worker_args = args


def _encode_in_worker(task: tuple[int, list[str]]) -> np.ndarray:
    return _encode(task, *_worker_args)


def _encoded(tasks, pool, in_flight: int, args: tuple) -> Iterator[tuple[list[str], np.ndarray]]:
    """(documents, their tokens) for each task, in task order. With a pool, up to `in_flight` tasks are being
    tokenized while the caller writes: the workers never wait for the disk, and memory stays bounded (Pool.imap
    would read the whole corpus ahead)."""
    if pool is None:
        for task in tasks:
            yield task[1], _encode(task, *args)
        return
    pending = deque()
    for task in tasks:
        pending.append((task[1], pool.apply_async(_encode_in_worker, (task,))))
        if len(pending) >= in_flight:
            chunk, result = pending.popleft()
            yield chunk, result.get()
    for chunk, result in pending:
        yield chunk, result.get()


def tokenize_and_pack(docs: Iterable[str], tokenizer, eot_id: int, path, vocab_size: int,
                      num_workers: int = 1) -> np.memmap:
    """Tokenize every document, follow each by eot_id, and write the stream to `path` as a .npy file of
    token_dtype(vocab_size); return it memory-mapped, read-only.

    Streams: documents are read, tokenized and written a few hundred at a time. With num_workers > 1 a process
    pool tokenizes them (the tokenizer must pickle); the order of the stream is the order of `docs` either way.
    The file is written to a temporary name in the same folder and renamed at the end, so `path` is either the
    complete old file or the complete new one, never half written. An empty corpus is a ValueError.
    """
    # BEGIN SOLUTION
    dtype = token_dtype(vocab_size)
    if not 0 <= eot_id < vocab_size:
        raise ValueError(f"eot_id {eot_id} is outside the vocabulary 0..{vocab_size - 1}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    path = Path(path)
    tasks = _tasks(docs)
    pool = None
    if num_workers > 1:
        pool = multiprocessing.get_context().Pool(
            num_workers, initializer=_init_worker, initargs=(tokenizer, eot_id, vocab_size, dtype))
    length = 0
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            # The .npy header holds the length, unknown until the end: write a placeholder, fill it in last.
            # A 1-D header is 128 bytes whatever the length, so the data never has to move.
            np.lib.format.write_array_header_1_0(file, {"descr": dtype.str, "fortran_order": False, "shape": (0,)})
            start = file.tell()
            for _, ids in _encoded(tasks, pool, 2 * num_workers, (tokenizer, eot_id, vocab_size, dtype)):
                file.write(ids.tobytes())
                length += ids.size
            if length == 0:  # every document adds at least its eot_id: no tokens means no documents
                raise ValueError("the corpus is empty: there are no documents to tokenize (did filtering drop all?)")
            file.seek(0)
            np.lib.format.write_array_header_1_0(
                file, {"descr": dtype.str, "fortran_order": False, "shape": (length,)})
            assert file.tell() == start, "the .npy header changed size"
    finally:
        if pool is not None:
            pool.terminate()
    return load_tokens(path)
    # END SOLUTION


def load_tokens(path) -> np.memmap:
    """A token file written by tokenize_and_pack, memory-mapped read-only: a 1-D array of uint16 or uint32."""
    # BEGIN SOLUTION
    tokens = np.load(path, mmap_mode="r")
    if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"{path}: expected a 1-D array of uint16 or uint32 tokens, got {tokens.dtype} {tokens.shape}")
    return tokens
    # END SOLUTION


# ---------------------------------------------------------------------------------------------------------- batches

def _check_stream(tokens, batch_size: int, context_length: int) -> int:
    if len(tokens.shape) != 1:
        raise ValueError(f"tokens must be a 1-D stream, got shape {tuple(tokens.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if context_length < 1:
        raise ValueError(f"context_length must be at least 1, got {context_length}")
    return len(tokens)


def _gather(tokens, index: np.ndarray) -> torch.Tensor:
    """tokens[index] as int64, for a numpy array, a memory map or a tensor of tokens."""
    if isinstance(tokens, torch.Tensor):
        return tokens[torch.from_numpy(index).to(tokens.device)].long().cpu()
    return torch.from_numpy(np.asarray(tokens[index]).astype(np.int64))


def get_batch(tokens, batch_size: int, context_length: int, generator: torch.Generator,
              device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: x, y of shape (batch_size, context_length), int64.

    Each row starts at an offset s drawn uniformly from all N - T offsets that leave room for the target
    (0 <= s <= N - T - 1, N = len(tokens), T = context_length): x = tokens[s : s+T], y = tokens[s+1 : s+T+1].
    The offsets come from `generator` alone: the same seed gives the same batches.
    """
    # BEGIN SOLUTION
    n = _check_stream(tokens, batch_size, context_length)
    if n < context_length + 1:
        raise ValueError(
            f"context_length {context_length} is too long for the data: a window and its shifted target need "
            f"{context_length + 1} tokens, the stream has {n}"
        )
    starts = torch.randint(n - context_length, (batch_size,), generator=generator).numpy()  # high is exclusive
    rows = _gather(tokens, starts[:, None] + np.arange(context_length + 1))  # (batch_size, T + 1)
    x, y = rows[:, :-1], rows[:, 1:]  # (batch_size, T) each
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
    # END SOLUTION


def sequential_batches(tokens, batch_size: int, context_length: int,
                       device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive windows for evaluation, each target exactly once: window k has x = tokens[kT : kT+T] and
    y = tokens[kT+1 : kT+T+1], for k = 0 .. ceil((N-1)/T) - 1, batch_size windows per batch.

    The last window is usually short: x is padded with 0 and y with IGNORE_INDEX (-100), which cross-entropy
    skips; the last batch may have fewer rows. Together the y's hold tokens[1:], each once, in order.
    """
    # BEGIN SOLUTION
    n = _check_stream(tokens, batch_size, context_length)
    if n < 2:
        raise ValueError(f"a stream of {n} token(s) has no targets: it needs at least 2")
    windows = -(-(n - 1) // context_length)  # ceil((N - 1) / T)
    for first in range(0, windows, batch_size):
        starts = np.arange(first, min(first + batch_size, windows)) * context_length  # (rows,)
        positions = starts[:, None] + np.arange(context_length + 1)  # (rows, T + 1)
        past_end = torch.from_numpy(positions >= n)  # only in the last window
        rows = _gather(tokens, np.minimum(positions, n - 1))  # (rows, T + 1)
        x, y = rows[:, :-1].clone(), rows[:, 1:].clone()  # (rows, T) each; clones: the two views overlap
        x[past_end[:, :-1]] = 0
        y[past_end[:, 1:]] = IGNORE_INDEX
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield x, y
    # END SOLUTION


# ---------------------------------------------------------------------------------------------- document masks

def document_ids(x: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Which document each position of a packed window belongs to, counted from 0 in each row: (..., T) int64.

    An end-of-text token closes its document, so it belongs to the document before it.
    Example: x = [5, 7, EOT, 9, EOT, 4] -> [0, 0, 0, 1, 1, 2]
    """
    # BEGIN SOLUTION
    is_eot = (x == eot_id).long()
    return torch.cumsum(is_eot, dim=-1) - is_eot  # EOTs strictly before each position
    # END SOLUTION


def document_mask(x: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Causal attention mask that stops at document boundaries: (..., T, T) bool, True where query i may attend to
    key j, i.e. j <= i and positions i and j are in the same document (document_ids)."""
    # BEGIN SOLUTION
    ids = document_ids(x, eot_id)  # (..., T)
    length = x.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()  # (T, T)
    return causal & (ids[..., :, None] == ids[..., None, :])  # (..., T, T)
    # END SOLUTION
