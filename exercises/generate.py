# Generated from reference/generate.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Generation: turn next-token logits into text, one token at a time.

A language model gives logits z (V,) for the next token. Sampling reshapes them, then draws:

    temperature τ   p ∝ exp(z / τ): τ < 1 sharpens, τ > 1 flattens; τ → 0 puts all the mass on the argmax,
                    so τ = 0 is defined as greedy decoding (always the most likely token);
    top-k           keep the k most likely tokens, drop the rest (k = 0: no filter);
    top-p           keep the smallest set of most likely tokens whose probability adds up to at least p
                    (the "nucleus"; p = 1: no filter);

and `generate` repeats: feed the sequence, sample, append, until max_new_tokens or a stop token. The prompt is
run once to fill the model's KV cache; after that each step feeds only the newest token, so a step costs one row
of attention instead of a full forward pass. A model sees at most its context window (model.config.max_seq_len):
a longer prompt is cropped to its last tokens, and once the sequence outgrows the window the model sees a sliding
window of the last tokens. Sliding shifts every position, which invalidates the cached keys (they carry RoPE
rotations for their old positions), so from then on each step recomputes the window: exact, just slower.

All randomness comes from one torch.Generator: the same seed gives the same text.

Left out: batched generation with padding, beam search, repetition penalties, min-p and typical sampling,
speculative decoding, and keeping a cache across the window slide (attention sinks, StreamingLLM).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (..., V); set the others to −inf. k = 0 (or k >= V) keeps everything.

    Ties at the k-th largest value are all kept, so a row may keep more than k when logits are equal.
    Example: top_k_filter([1., 3., 2.], 2) -> [-inf, 3., 2.]
    """
    raise NotImplementedError('`generate.top_k_filter` is not implemented yet — chapter 9 (generate): see '
                              'test_top_k_filter_keeps_exactly_the_k_largest, test_k_zero_and_p_one_do_not_filter and '
                              '3 more in spec/test_generate.py.')


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep, in each row (..., V), the smallest set of most likely tokens whose softmax mass is >= p; set the
    others to −inf. p = 1 keeps everything; the most likely token is always kept.

    Sort the probabilities in decreasing order and keep token i iff the mass of the tokens before it is < p:
    the first token that brings the running sum to p or more is the last one kept.
    Example: probabilities [0.5, 0.3, 0.2], p = 0.6 -> keeps the first two (0.5 < 0.6 <= 0.8)
    """
    raise NotImplementedError('`generate.top_p_filter` is not implemented yet — chapter 9 (generate): see '
                              'test_top_p_keeps_the_smallest_set_with_mass_at_least_p and 4 more in '
                              'spec/test_generate.py.')


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of logits (..., V) -> ids (...), int64.

    temperature = 0 is greedy: the argmax, no randomness. Otherwise p = softmax(filters(z / temperature)), with
    top-k applied first, then top-p on what is left, and one draw per row from `generator` (torch's global
    generator when None).
    """
    raise NotImplementedError('`generate.sample_next` is not implemented yet — chapter 9 (generate): see '
                              'test_temperature_zero_is_greedy and 7 more in spec/test_generate.py.')


def _context_length(model: nn.Module, context_length: int | None) -> int:
    if context_length is None:
        context_length = getattr(getattr(model, "config", None), "max_seq_len", None)
        if context_length is None:
            raise ValueError("the model has no config.max_seq_len: pass context_length")
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    return context_length


def generate(model: nn.Module, prompt, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, stop_tokens: Iterable[int] = (), context_length: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[int]:
    """An iterator over up to max_new_tokens token ids continuing `prompt` (a list or 1-D tensor of ids), produced
    one at a time, so a caller can print each as it comes.

    model(ids (1, T)) returns logits (1, T, V). With use_cache, the model also provides make_cache(batch_size,
    max_seq_len) and model(ids, cache=cache), which continues the sequence the cache holds (the Transformer of
    the model chapter does). A sampled token in `stop_tokens` ends the generation and is not yielded.

    context_length (default model.config.max_seq_len): the model sees at most this many tokens. A longer prompt
    is cropped to its last context_length tokens; past the window, each step sees the last context_length tokens.
    Bad arguments raise at the call, before any token is produced: an empty prompt is a ValueError (start from a
    token, such as the end-of-text separator).
    """
    raise NotImplementedError('`generate.generate` is not implemented yet — chapter 9 (generate): see '
                              'test_generation_sees_the_last_context_length_tokens and 9 more in '
                              'spec/test_generate.py.')
