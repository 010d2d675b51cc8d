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

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (..., V); set the others to −inf. k = 0 (or k >= V) keeps everything.

    Ties at the k-th largest value are all kept, so a row may keep more than k when logits are equal.
    Example: top_k_filter([1., 3., 2.], 2) -> [-inf, 3., 2.]
    """
    # BEGIN SOLUTION
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 means no filter), got {k}")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, -math.inf)
    # END SOLUTION


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep, in each row (..., V), the smallest set of most likely tokens whose softmax mass is >= p; set the
    others to −inf. p = 1 keeps everything; the most likely token is always kept.

    Sort the probabilities in decreasing order and keep token i iff the mass of the tokens before it is < p:
    the first token that brings the running sum to p or more is the last one kept.
    Example: probabilities [0.5, 0.3, 0.2], p = 0.6 -> keeps the first two (0.5 < 0.6 <= 0.8)
    """
    # BEGIN SOLUTION
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 means no filter), got {p}")
    if p == 1:
        return logits  # rounding could make the running sum reach 1 before the last token: never drop any
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (..., V): mass of the more likely tokens
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)
    # END SOLUTION


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of logits (..., V) -> ids (...), int64.

    temperature = 0 is greedy: the argmax, no randomness. Otherwise p = softmax(filters(z / temperature)), with
    top-k applied first, then top-p on what is left, and one draw per row from `generator` (torch's global
    generator when None).
    """
    # BEGIN SOLUTION
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    scaled = top_p_filter(top_k_filter(scaled, top_k), top_p)
    probs = torch.softmax(scaled, dim=-1).reshape(-1, logits.shape[-1])  # (rows, V)
    if generator is not None:
        probs = probs.to(generator.device)
    ids = torch.multinomial(probs, 1, generator=generator)  # (rows, 1)
    return ids.reshape(logits.shape[:-1]).to(logits.device)
    # END SOLUTION


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
    # BEGIN SOLUTION
    ids = prompt.tolist() if isinstance(prompt, Tensor) else list(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one token (e.g. the end-of-text id) to start from")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k < 0:  # the filters check these too, but only when the first token is sampled
        raise ValueError(f"top_k must be >= 0 (0 means no filter), got {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 means no filter), got {top_p}")
    window = _context_length(model, context_length)
    stop = set(stop_tokens)
    device = next(model.parameters()).device

    def forward(tokens: list[int]) -> tuple[Tensor, list | None]:
        """Run the model on a fresh window; return the last position's logits (1, V) and the filled cache."""
        x = torch.tensor([tokens], device=device)  # (1, T)
        if not use_cache:
            return model(x)[:, -1], None
        cache = model.make_cache(1, window)
        return model(x, cache=cache)[:, -1], cache

    @torch.no_grad()
    def tokens() -> Iterator[int]:
        logits, cache = forward(ids[-window:])  # a prompt longer than the window is cropped to its end
        cached = min(len(ids), window)  # positions the cache holds
        for produced in range(max_new_tokens):
            token = int(sample_next(logits, temperature, top_k, top_p, generator)[0])
            if token in stop:
                return
            yield token
            ids.append(token)
            if produced == max_new_tokens - 1:
                return  # no need for the logits of a token nobody will sample
            if use_cache and cached < window:
                logits = model(torch.tensor([[token]], device=device), cache=cache)[:, -1]  # one new position
                cached += 1
            else:  # no cache, or the window is full and slides: every position moves, recompute it
                logits, cache = forward(ids[-window:])

    return tokens()
    # END SOLUTION
