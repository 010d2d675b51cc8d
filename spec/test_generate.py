"""Chapter 9 — generate: temperature, top-k and top-p sampling, and the generation loop with a KV cache and a
context window.

The samplers are checked against their definitions (which tokens survive a filter, which distribution a draw
follows), and the loop against a plain sliding-window decoder written here: with or without the cache, cropped
or not, it must produce the same tokens, feed one token per step once the prompt is cached, and never show the
model more than its context window. The model used is a toy defined below: its logits depend on the token, the
one before it and the position, so a lost cache, a wrong position or a missing crop all change its output.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from .checks import assert_rejects
from .impl import kept

seeds = st.integers(0, 255)  # a short range: failing examples shrink in a few steps


@st.composite
def distinct_logits(draw, rows=None, min_vocab=2, max_vocab=10):
    """(rows, V) logits whose entries in a row differ by at least 0.05: no ties to argue about."""
    vocab = draw(st.integers(min_vocab, max_vocab))
    rows = rows or draw(st.integers(1, 4))
    generator = torch.Generator().manual_seed(draw(seeds))
    steps = torch.rand(rows, vocab, generator=generator) + 0.05
    order = torch.argsort(torch.rand(rows, vocab, generator=generator), dim=-1)
    return torch.cumsum(steps, -1).gather(-1, order) * draw(st.sampled_from([1.0, 3.0]))


# ---------------------------------------------------------------------------------------------- sampling


@given(distinct_logits(), seeds)
def test_temperature_zero_is_greedy(impl, logits, seed):
    generator = torch.Generator().manual_seed(seed)
    greedy = impl.generate.sample_next(logits, temperature=0.0, generator=generator)
    assert torch.equal(greedy, logits.argmax(-1)), "temperature=0 must pick the argmax of every row (greedy)"
    cold = impl.generate.sample_next(logits.expand(50, *logits.shape), temperature=1e-3, generator=generator)
    assert (cold == logits.argmax(-1)).all(), (
        "as the temperature goes to 0, sampling must become greedy: at temperature 1e-3, with logits 0.05 apart, "
        "every draw must be the argmax")


def frequencies(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.bincount(ids.reshape(-1), minlength=vocab).double() / ids.numel()


@given(distinct_logits(rows=1, max_vocab=6), st.sampled_from([0.5, 1.0, 2.0]), seeds)
def test_sampling_draws_from_the_softmax_of_logits_over_temperature(impl, logits, temperature, seed):
    draws = 20_000
    generator = torch.Generator().manual_seed(seed)
    ids = impl.generate.sample_next(logits.expand(draws, -1), temperature=temperature, generator=generator)
    expected = torch.softmax(logits[0].double() / temperature, -1)
    # Each frequency has standard deviation sqrt(p(1 − p)/n) <= 0.0036: 0.02 is more than 5 of them.
    observed = frequencies(ids, logits.shape[-1])
    worst = (observed - expected).abs().max().item()
    assert worst < 0.02, (
        f"at temperature {temperature}, draws must follow softmax(logits / temperature) = {expected.tolist()}; "
        f"observed {observed.tolist()}")


@given(distinct_logits(), st.data())
def test_top_k_filter_keeps_exactly_the_k_largest(impl, logits, data):
    k = data.draw(st.integers(1, logits.shape[-1]))
    kept = impl.generate.top_k_filter(logits, k)
    expected = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, logits.topk(k, -1).indices, True)
    assert torch.equal(torch.isfinite(kept), expected), (
        f"top_k_filter(k={k}) must keep the k largest logits of each row")
    assert torch.equal(kept[expected], logits[expected]), "top_k_filter must leave the logits it keeps unchanged"
    assert (kept[~expected] == -math.inf).all(), "top_k_filter must set the logits it drops to -inf"


def nucleus(probs: torch.Tensor, p: float) -> set[int]:
    """The smallest set of most likely tokens whose mass is >= p (computed in float64)."""
    order = torch.argsort(probs, descending=True).tolist()
    kept, mass = set(), 0.0
    for token in order:
        kept.add(token)
        mass += probs[token].item()
        if mass >= p:
            break
    return kept


@given(distinct_logits(), st.sampled_from([0.1, 0.5, 0.8, 0.9, 0.99]))
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(impl, logits, p):
    kept = impl.generate.top_p_filter(logits, p)
    for row in range(logits.shape[0]):
        probs = torch.softmax(logits[row].double(), -1)
        got = set(torch.isfinite(kept[row]).nonzero().flatten().tolist())
        mass = sum(probs[t].item() for t in got)
        expected = nucleus(probs, p)
        assert got == expected, (
            f"top_p_filter(p={p}) must keep the smallest set of most likely tokens with mass >= p: expected "
            f"{sorted(expected)}, kept {sorted(got)} (mass {mass:.4f}) of probabilities {probs.tolist()}")
        assert torch.equal(kept[row][list(got)], logits[row][list(got)]), "top_p_filter must not change kept logits"


@given(distinct_logits(rows=1), st.integers(1, 4), st.sampled_from([0.3, 0.7, 0.95]), seeds)
def test_sampling_never_emits_a_token_the_filters_dropped(impl, logits, k, p, seed):
    generator = torch.Generator().manual_seed(seed)
    k = min(k, logits.shape[-1])
    ids = impl.generate.sample_next(logits.expand(2000, -1), temperature=1.0, top_k=k, generator=generator)
    allowed = set(logits[0].topk(k).indices.tolist())
    assert set(ids.tolist()) <= allowed, (
        f"with top_k={k} only the {k} most likely tokens {sorted(allowed)} may be drawn")
    ids = impl.generate.sample_next(logits.expand(2000, -1), temperature=1.0, top_p=p, generator=generator)
    allowed = nucleus(torch.softmax(logits[0].double(), -1), p)
    assert set(ids.tolist()) <= allowed, f"with top_p={p} only the nucleus {sorted(allowed)} may be drawn"


@given(distinct_logits())
def test_k_zero_and_p_one_do_not_filter(impl, logits):
    assert torch.equal(impl.generate.top_k_filter(logits, 0), logits), "top_k=0 means no filter: every logit stays"
    assert torch.equal(impl.generate.top_p_filter(logits, 1.0), logits), "top_p=1 means no filter: every logit stays"
    peaked = logits.clone()
    peaked[:, 0] = 200.0  # every other probability underflows: a running sum reaches 1.0 before the last token
    assert torch.equal(impl.generate.top_p_filter(peaked, 1.0), peaked), (
        "top_p=1 must keep every token, even those whose probability rounds to 0")


@given(st.integers(2, 10), st.integers(1, 4), seeds, st.data())
def test_top_k_keeps_every_logit_tied_with_the_kth_largest(impl, vocab, rows, seed, data):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, 3, (rows, vocab), generator=generator).float()  # three values: ties everywhere
    k = data.draw(st.integers(1, vocab), label="k")
    kth = logits.topk(k, dim=-1).values[:, -1:]
    expected = logits >= kth
    kept = impl.generate.top_k_filter(logits, k)
    assert torch.equal(torch.isfinite(kept), expected), (
        f"top_k_filter(k={k}) must keep every logit >= the k-th largest of its row, ties included (a row may keep "
        f"more than k): rows {logits.tolist()}, kept {torch.isfinite(kept).tolist()}")


def filtered_distribution(logits: torch.Tensor, temperature: float, k: int, p: float) -> torch.Tensor:
    """The definition in float64: softmax(z / temperature) over the k most likely tokens (k = 0: all), then over the
    nucleus p of that distribution renormalised. (V,) -> (V,) probabilities, 0 for every dropped token."""
    z = logits.double() / temperature
    if 0 < k < len(z):
        z = z.masked_fill(z < z.topk(k).values[-1], -math.inf)
    probs = torch.softmax(z, -1)
    kept = sorted(nucleus(probs, p))
    final = torch.zeros_like(probs)
    final[kept] = probs[kept]
    return final / final.sum()


# Temperature 2 flattens [0.67, 0.24, 0.09] to [0.51, 0.31, 0.19]: the nucleus of 0.6 grows from one token to two.
@example(logits=torch.tensor([[2.0, 1.0, 0.0]]), temperature=2.0, p=0.6, k=3, seed=0)
# The 2 best, [0.67, 0.24], renormalise to [0.73, 0.27]: the nucleus of 0.7 among them is the first token alone.
@example(logits=torch.tensor([[2.0, 1.0, 0.0]]), temperature=1.0, p=0.7, k=2, seed=0)
@given(distinct_logits(rows=1, max_vocab=8), st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([0.3, 0.6, 0.9]),
       st.integers(1, 8), seeds)
def test_top_k_then_top_p_at_the_temperature_draw_from_the_renormalised_nucleus(impl, logits, temperature, p, k, seed):
    k = min(k, logits.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    ids = impl.generate.sample_next(logits.expand(20_000, -1), temperature=temperature, top_k=k, top_p=p,
                                    generator=generator)
    expected = filtered_distribution(logits[0], temperature, k, p)
    allowed = set(expected.nonzero().flatten().tolist())
    rule = (f"with temperature={temperature}, top_k={k} and top_p={p} together, draws must follow softmax(z / "
            "temperature) over the k best tokens, then over the smallest set of those whose renormalised mass is >= p")
    assert set(ids.tolist()) <= allowed, f"{rule}: only {sorted(allowed)} may be drawn, got {sorted(set(ids.tolist()))}"
    observed = frequencies(ids, logits.shape[-1])
    # Each frequency has standard deviation sqrt(p(1 − p)/n) <= 0.0036: 0.02 is more than 5 of them.
    assert (observed - expected).abs().max().item() < 0.02, (
        f"{rule}: expected {[round(x, 3) for x in expected.tolist()]}, observed "
        f"{[round(x, 3) for x in observed.tolist()]}")


# ---------------------------------------------------------------------------------------------- the loop


@kept()  # it records what generate fed the model: the record stays in the spec's process
class ToyCache:
    """The toy model's cache: the ids it has seen (a real KV cache keeps keys and values instead)."""

    def __init__(self, capacity: int):
        self.capacity, self.ids = capacity, []

    @property
    def length(self) -> int:
        return len(self.ids)


@kept("make_cache")
class ToyLM(nn.Module):
    """logits at position t = A[x_t] + B[x_{t−1}] + P[t]: depends on the token, the previous one and the position.

    It follows the model chapter's protocol: model(ids (1, T), cache=None) -> logits (1, T, V), make_cache(batch,
    max_seq_len), config.max_seq_len; and it refuses, with an AssertionError, more positions than its context.
    """

    def __init__(self, vocab=7, max_seq_len=6, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.a = nn.Parameter(torch.randn(vocab, vocab, generator=generator) * 2)
        self.b = nn.Parameter(torch.randn(vocab, vocab, generator=generator))
        self.p = nn.Parameter(torch.randn(max_seq_len, vocab, generator=generator))
        self.calls = []  # (tokens fed, positions already cached) per call

    def make_cache(self, batch_size, max_seq_len=None):
        assert batch_size == 1, (
            f"generate asked for a cache of batch size {batch_size}: it runs one sequence, make_cache(1, window)")
        return [ToyCache(self.config.max_seq_len if max_seq_len is None else max_seq_len)]

    def forward(self, input_ids, position_ids=None, cache=None):
        history = cache[0].ids if cache is not None else []
        length, offset = input_ids.shape[1], len(history)
        context = self.config.max_seq_len
        assert offset + length <= context, (
            f"generate fed the model {offset + length} positions ({offset} cached + {length} new) but its context "
            f"holds {context}: crop to the last context_length tokens")
        if cache is not None:
            assert offset + length <= cache[0].capacity, (
                f"generate fed {offset + length} positions into a cache made for {cache[0].capacity}: make the cache "
                "for the context_length positions the model will see")
        self.calls.append((length, offset))
        seq = history + input_ids[0].tolist()
        rows = [self.a[seq[t]] + self.b[seq[t - 1] if t else seq[t]] + self.p[t] for t in range(offset, len(seq))]
        if cache is not None:
            cache[0].ids = seq
        return torch.stack(rows)[None]  # (1, T, V)


def sliding_window_greedy(model, prompt, steps, window=None):
    """The definition: at each step, the argmax of the last logits over the last `window` tokens (default the
    model's max_seq_len), no cache."""
    ids, out = list(prompt), []
    window = window or model.config.max_seq_len
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(torch.tensor([ids[-window:]]))[0, -1].argmax())
        out.append(token)
        ids.append(token)
    return out


class ConstantLM(nn.Module):
    """The same logits z at every position, whatever the tokens: each generated token is an independent draw from
    the sampling distribution of z. Follows the protocol of ToyLM; its cache only counts positions."""

    def __init__(self, logits: torch.Tensor, max_seq_len=4096):
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.z = nn.Parameter(logits.clone())

    def make_cache(self, batch_size, max_seq_len=None):
        return [SimpleNamespace(length=0)]

    def forward(self, input_ids, position_ids=None, cache=None):
        if cache is not None:
            cache[0].length += input_ids.shape[1]
        return self.z.expand(1, input_ids.shape[1], -1)


prompts = st.lists(st.integers(0, 6), min_size=1, max_size=9)  # up to 9 tokens, a context of 6: some are cropped


@given(prompts, st.integers(0, 12), seeds, st.none() | st.integers(1, 6))
def test_generation_sees_the_last_context_length_tokens(impl, prompt, steps, seed, context_length):
    model = ToyLM(seed=seed)
    window = context_length or model.config.max_seq_len
    expected = sliding_window_greedy(model, prompt, steps, window)
    as_given = "the model's max_seq_len = 6" if context_length is None else f"context_length={context_length}"
    for use_cache in (False, True):
        got = list(impl.generate.generate(model, prompt, steps, temperature=0.0, context_length=context_length,
                                          use_cache=use_cache))
        assert got == expected, (
            f"greedy generation (use_cache={use_cache}) from {prompt} with {as_given} must see the last {window} "
            f"tokens at every step (a longer prompt is cropped to its end): expected {expected}, got {got}")


@given(prompts, st.integers(1, 12), seeds, st.sampled_from([(1.0, 0, 1.0), (0.8, 3, 1.0), (1.5, 0, 0.9)]))
def test_generation_with_the_cache_equals_generation_without(impl, prompt, steps, seed, sampling):
    temperature, top_k, top_p = sampling
    runs = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(seed)
        runs.append(list(impl.generate.generate(ToyLM(seed=seed), prompt, steps, temperature=temperature, top_k=top_k,
                                                top_p=top_p, generator=generator, use_cache=use_cache)))
    assert runs[0] == runs[1], (
        f"with the same seed, generation must give the same tokens with the KV cache ({runs[0]}) and without it "
        f"({runs[1]})")


@settings(max_examples=10)  # each example generates 1,500 tokens, one model call and one draw each
# [2, 1, 0] at temperature 2: [0.51, 0.31, 0.19], whose nucleus of 0.8 is the first two tokens.
@example(logits=torch.tensor([[2.0, 1.0, 0.0]]), temperature=2.0, k=3, p=0.8, seed=0)
@given(distinct_logits(rows=1, max_vocab=6), st.sampled_from([0.5, 2.0]), st.integers(1, 6),
       st.sampled_from([0.5, 0.8]), seeds)
def test_generation_samples_with_temperature_top_k_and_top_p_together(impl, logits, temperature, k, p, seed):
    k = min(k, logits.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.tensor(list(impl.generate.generate(ConstantLM(logits[0]), [0], 1500, temperature=temperature,
                                                      top_k=k, top_p=p, generator=generator)))
    expected = filtered_distribution(logits[0], temperature, k, p)
    allowed = set(expected.nonzero().flatten().tolist())
    rule = (f"generate(temperature={temperature}, top_k={k}, top_p={p}) must draw each token as sample_next does: "
            "softmax(z / temperature) over the k best, then over the nucleus p of those")
    seen = set(tokens.tolist())
    assert seen <= allowed, f"{rule}; only {sorted(allowed)} may appear, got {sorted(seen)}"
    observed = frequencies(tokens, logits.shape[-1])
    # Each frequency has standard deviation sqrt(p(1 − p)/n) <= 0.013: 0.065 is 5 of them.
    assert (observed - expected).abs().max().item() < 0.065, (
        f"{rule}: expected {[round(x, 3) for x in expected.tolist()]}, observed "
        f"{[round(x, 3) for x in observed.tolist()]}")


@given(st.lists(st.integers(0, 6), min_size=1, max_size=5), seeds)
def test_generation_feeds_one_token_per_step_while_the_window_has_room(impl, prompt, seed):
    model = ToyLM(seed=seed)
    steps = model.config.max_seq_len - len(prompt)  # exactly fills the window
    list(impl.generate.generate(model, prompt, steps, temperature=0.0, use_cache=True))
    fed = [length for length, _ in model.calls]
    assert fed and fed[0] == len(prompt), f"the first call must run the whole prompt ({len(prompt)} tokens), got {fed}"
    assert all(length == 1 for length in fed[1:]), (
        f"with the cache, each step after the prompt must feed only the newest token; the model was fed {fed}")


@given(prompts, seeds)
def test_same_seed_gives_the_same_tokens(impl, prompt, seed):
    logits = torch.zeros(200, 5)  # uniform: every draw is a coin toss
    draws = []
    for _ in range(2):
        torch.rand(3)  # the global random state moves on between the runs: only the generator may matter
        draws.append(impl.generate.sample_next(logits, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(draws[0], draws[1]), f"sample_next with a generator seeded {seed} must draw the same ids twice"
    runs = []
    for _ in range(2):
        torch.rand(3)  # the global random state moves on between the runs: only the generator may matter
        generator = torch.Generator().manual_seed(seed)
        runs.append(list(impl.generate.generate(ToyLM(seed=1), prompt, 20, temperature=2.0, generator=generator)))
    assert runs[0] == runs[1], f"two runs with a generator seeded {seed} must give the same tokens: {runs}"


STOP_TOKENS = {"a list": list, "a tuple": tuple, "a set": set, "a generator": lambda tokens: (t for t in tokens)}


@given(prompts, seeds, st.sampled_from(list(STOP_TOKENS)), st.none() | st.integers(1, 6), st.booleans())
def test_generation_stops_at_a_stop_token_without_yielding_it(impl, prompt, seed, kind, context_length, use_cache):
    model = ToyLM(seed=seed)
    free = sliding_window_greedy(model, prompt, 10, context_length)
    stops = list(dict.fromkeys([free[len(free) // 2], free[-1]]))  # one or two stop tokens
    got = list(impl.generate.generate(model, prompt, 10, temperature=0.0, stop_tokens=STOP_TOKENS[kind](stops),
                                      context_length=context_length, use_cache=use_cache))
    expected = free[: min(free.index(stop) for stop in stops)]
    assert got == expected, (
        f"generation (use_cache={use_cache}, context_length={context_length}) must end when it samples any of the "
        f"stop tokens {stops}, given as {kind}, without yielding it: expected {expected}, got {got}")


@given(prompts, st.integers(0, 15), seeds)
def test_generation_yields_max_new_tokens_tokens(impl, prompt, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    got = list(impl.generate.generate(ToyLM(seed=seed), prompt, steps, generator=generator))
    assert len(got) == steps, f"without stop tokens, generate must yield exactly max_new_tokens={steps}, got {len(got)}"
    assert all(isinstance(t, int) and 0 <= t < 7 for t in got), f"generate must yield token ids as ints, got {got}"


def test_rejects_an_empty_prompt(impl):
    assert_rejects(lambda: impl.generate.generate(ToyLM(), [], 5), "empty", what="generate from an empty prompt")
    assert_rejects(lambda: impl.generate.generate(ToyLM(), torch.tensor([], dtype=torch.long), 5), "empty",
                   what="generate from an empty tensor prompt")


BAD_ARGUMENTS = {
    "an empty prompt": {"prompt": []}, "max_new_tokens=-1": {"max_new_tokens": -1},
    "temperature=-0.5": {"temperature": -0.5}, "top_k=-1": {"top_k": -1}, "top_p=0": {"top_p": 0.0},
    "top_p=1.5": {"top_p": 1.5}, "context_length=0": {"context_length": 0},
}


@pytest.mark.parametrize("bad", list(BAD_ARGUMENTS))
def test_bad_arguments_raise_at_the_call_before_any_token(impl, bad):
    model = ToyLM()
    arguments = {"prompt": [1, 2], "max_new_tokens": 5, **BAD_ARGUMENTS[bad]}

    def call():  # returns nothing: the tokens are never asked for
        impl.generate.generate(model, **arguments)

    assert_rejects(call, what=f"generate(...) with {bad} must raise a ValueError at the call, before the first token "
                              "is asked for (a generator function runs none of its body until then: check the "
                              "arguments first, then return the iterator)")
    assert model.calls == [], f"generate with {bad} must refuse before it runs the model, it ran {model.calls}"


@given(st.lists(st.integers(0, 6), min_size=1, max_size=9), st.integers(1, 12), seeds, st.booleans())
def test_generation_runs_the_model_once_per_token(impl, prompt, steps, seed, use_cache):
    model = ToyLM(seed=seed)
    list(impl.generate.generate(model, prompt, steps, temperature=0.0, use_cache=use_cache))
    assert len(model.calls) == steps, (
        f"generating {steps} tokens (use_cache={use_cache}) must run the model {steps} times: once on the prompt, "
        f"then once per token that will be sampled; it ran {len(model.calls)} times (no logits are needed after the "
        "last token)")


# ---------------------------------------------------------------------------------------------- edge cases


def test_filters_and_the_sampler_reject_bad_arguments_naming_them(impl):
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    gen = impl.generate
    assert_rejects(lambda: gen.top_k_filter(logits, -1), -1, what="top_k_filter(k=-1): k counts tokens, 0 is no filter")
    for p in (0.0, -0.25, 1.5):
        assert_rejects(lambda: gen.top_p_filter(logits, p), p,
                       what=f"top_p_filter(p={p}): p is a probability mass in (0, 1]")
    assert_rejects(lambda: gen.sample_next(logits, temperature=-0.5, generator=torch.Generator().manual_seed(0)), -0.5,
                   what="sample_next(temperature=-0.5): a temperature is >= 0 (0 is greedy)")


@given(distinct_logits(rows=6), st.data())
def test_filters_and_greedy_sampling_take_logits_of_any_leading_shape(impl, rows, data):
    vocab = rows.shape[-1]
    k = data.draw(st.integers(1, vocab), label="k")
    p = data.draw(st.sampled_from([0.3, 0.6, 0.9]), label="p")
    gen = impl.generate
    operations = {f"top_k_filter(k={k})": lambda z: gen.top_k_filter(z, k),
                  f"top_p_filter(p={p})": lambda z: gen.top_p_filter(z, p),
                  "sample_next(temperature=0)": lambda z: gen.sample_next(z, temperature=0.0)}
    for what, operation in operations.items():
        by_rows = operation(rows)  # (rows, V) or (rows,)
        for shape in ((2, 3, vocab), (vocab,)):
            logits = rows.reshape(shape) if len(shape) == 3 else rows[0]
            got = operation(logits)
            expected = by_rows.reshape(*shape[:-1], *by_rows.shape[1:]) if len(shape) == 3 else by_rows[0]
            assert got.shape == expected.shape and torch.equal(got, expected), (
                f"{what} of logits {tuple(shape)} must act on the last dimension, row by row (..., V), as on the "
                f"same rows given as (rows, V): expected {expected.tolist()}, got {got.tolist()}")


@given(st.permutations(range(4)), st.sampled_from([0.5, 0.75]))
def test_top_p_stops_at_the_token_that_brings_the_mass_to_exactly_p(impl, order, p):
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])[list(order)]  # dyadic: every running sum is exact in float32
    logits = probs.log()
    kept = set(torch.isfinite(impl.generate.top_p_filter(logits[None], p)[0]).nonzero().flatten().tolist())
    expected = nucleus(probs.double(), p)
    assert kept == expected, (
        f"with probabilities {probs.tolist()} the running mass reaches p={p} exactly at one token: that token is the "
        f"last one kept (keep token i iff the mass before it is < p); expected {sorted(expected)}, kept {sorted(kept)}")


@given(seeds)
def test_sampling_without_a_generator_draws_from_torchs_global_random_state(impl, seed):
    logits = torch.zeros(200, 5)  # uniform: every draw is a coin toss
    draws = []
    for s in (seed, seed, seed + 1):
        torch.manual_seed(s)
        draws.append(impl.generate.sample_next(logits))
    assert torch.equal(draws[0], draws[1]), (
        f"sample_next without a generator must draw from torch's global generator: after torch.manual_seed({seed}) "
        "twice it must draw the same ids twice")
    assert not torch.equal(draws[0], draws[2]), (
        f"sample_next without a generator must draw from torch's global generator: seeds {seed} and {seed + 1} drew "
        "the same 200 ids (a generator of its own, seeded the same every time?)")
