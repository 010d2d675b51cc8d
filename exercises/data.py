# Generated from reference/data.py by `llmkata exercises`. This copy is yours: replace each stub.
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

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch

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
    raise NotImplementedError('`data.is_validation` is not implemented yet — chapter 3 (data): see '
                              'test_split_is_disjoint_and_covers_every_document and 3 more in spec/test_data.py.')


def train_val_split(docs: Iterable[str], val_fraction: float = 0.1, salt: str = "") -> tuple[list[str], list[str]]:
    """(train, validation): every document on exactly one side by is_validation, each side in corpus order."""
    raise NotImplementedError('`data.train_val_split` is not implemented yet — chapter 3 (data): see '
                              'test_split_is_disjoint_and_covers_every_document and 2 more in spec/test_data.py.')


# ---------------------------------------------------------------------------------------------- tokenize and pack

def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every token id 0..vocab_size-1, for 1 <= vocab_size <= 2**32 (else a
    ValueError).  Example: 50257 -> uint16"""
    raise NotImplementedError('`data.token_dtype` is not implemented yet — chapter 3 (data): see '
                              'test_token_dtype_is_the_smallest_that_fits and '
                              'test_every_documented_rejection_names_the_bad_value in spec/test_data.py.')


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
    raise NotImplementedError('`data.tokenize_and_pack` is not implemented yet — chapter 3 (data): see '
                              'test_packed_stream_is_each_document_followed_by_eot and 8 more in spec/test_data.py.')


def load_tokens(path) -> np.memmap:
    """A token file written by tokenize_and_pack, memory-mapped read-only: a 1-D array of uint16 or uint32."""
    raise NotImplementedError('`data.load_tokens` is not implemented yet — chapter 3 (data): see '
                              'test_packed_stream_is_each_document_followed_by_eot and 2 more in spec/test_data.py.')


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
    raise NotImplementedError('`data.get_batch` is not implemented yet — chapter 3 (data): see '
                              'test_batches_are_windows_of_the_stream_with_y_shifted_by_one, '
                              'test_every_start_offset_is_reachable and 3 more in spec/test_data.py.')


def sequential_batches(tokens, batch_size: int, context_length: int,
                       device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive windows for evaluation, each target exactly once: window k has x = tokens[kT : kT+T] and
    y = tokens[kT+1 : kT+T+1], for k = 0 .. ceil((N-1)/T) - 1, batch_size windows per batch.

    The last window is usually short: x is padded with 0 and y with IGNORE_INDEX (-100), which cross-entropy
    skips; the last batch may have fewer rows. Together the y's hold tokens[1:], each once, in order.
    """
    raise NotImplementedError('`data.sequential_batches` is not implemented yet — chapter 3 (data): see '
                              'test_sequential_batches_cover_every_target_exactly_once and 2 more in '
                              'spec/test_data.py.')


# ---------------------------------------------------------------------------------------------- document masks

def document_ids(x: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Which document each position of a packed window belongs to, counted from 0 in each row: (..., T) int64.

    An end-of-text token closes its document, so it belongs to the document before it.
    Example: x = [5, 7, EOT, 9, EOT, 4] -> [0, 0, 0, 1, 1, 2]
    """
    raise NotImplementedError('`data.document_ids` is not implemented yet — chapter 3 (data): see '
                              'test_batches_are_made_on_the_device_asked_for and '
                              'test_document_ids_count_documents_from_zero in spec/test_data.py.')


def document_mask(x: torch.Tensor, eot_id: int) -> torch.Tensor:
    """Causal attention mask that stops at document boundaries: (..., T, T) bool, True where query i may attend to
    key j, i.e. j <= i and positions i and j are in the same document (document_ids)."""
    raise NotImplementedError('`data.document_mask` is not implemented yet — chapter 3 (data): see '
                              'test_batches_are_made_on_the_device_asked_for and '
                              'test_document_mask_never_crosses_a_document_boundary in spec/test_data.py.')
