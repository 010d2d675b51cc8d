"""Wrong implementations of the generate chapter that a learner could plausibly write."""

import math

import torch

import llmkata.reference.generate as ref

from . import mutant

# ---------------------------------------------------------------------------------------------- sampling


@mutant("generate.sample_next", "test_temperature_zero_is_greedy", why="temperature 0 samples at temperature 1")
def sample_ignoring_zero_temperature(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """Treats temperature 0 as 'no scaling' instead of greedy."""
    return ref.sample_next(logits, temperature or 1.0, top_k, top_p, generator)


@mutant("generate.sample_next", "test_sampling_draws_from_the_softmax_of_logits_over_temperature",
        "test_temperature_zero_is_greedy",
        why="never divides by the temperature")
def sample_ignoring_temperature(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    return ref.sample_next(logits, 1.0 if temperature else 0.0, top_k, top_p, generator)


@mutant("generate.sample_next", "test_sampling_draws_from_the_softmax_of_logits_over_temperature",
        why="z · τ instead of z / τ")
def sample_multiplying_by_temperature(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    if temperature == 0:
        return logits.argmax(-1)
    return ref.sample_next(logits * temperature * temperature, temperature, top_k, top_p, generator)


@mutant("generate.sample_next", "test_same_seed_gives_the_same_tokens",
        why="draws from torch's global generator, not the one given")
def sample_from_the_global_generator(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    return ref.sample_next(logits, temperature, top_k, top_p, None)


@mutant("generate.sample_next", "test_sampling_never_emits_a_token_the_filters_dropped", why="forgets top_k")
def sample_ignoring_top_k(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    return ref.sample_next(logits, temperature, 0, top_p, generator)


@mutant("generate.sample_next", "test_sampling_never_emits_a_token_the_filters_dropped", why="forgets top_p")
def sample_ignoring_top_p(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    return ref.sample_next(logits, temperature, top_k, 1.0, generator)


@mutant("generate.top_k_filter", "test_top_k_filter_keeps_exactly_the_k_largest", why="keeps k + 1 tokens")
def top_k_keeping_one_more(logits, k):
    return ref.top_k_filter(logits, k + 1 if 0 < k < logits.shape[-1] else k)


@mutant("generate.top_k_filter", "test_top_k_filter_keeps_exactly_the_k_largest", why="keeps the k smallest logits")
def top_k_keeping_the_smallest(logits, k):
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth_smallest = torch.topk(logits, k, dim=-1, largest=False).values[..., -1:]
    return logits.masked_fill(logits > kth_smallest, -math.inf)


@mutant("generate.top_k_filter", "test_k_zero_and_p_one_do_not_filter", why="k = 0 drops every token")
def top_k_zero_keeping_nothing(logits, k):
    if k == 0:
        return torch.full_like(logits, -math.inf)
    return ref.top_k_filter(logits, k)


@mutant("generate.top_p_filter", "test_top_p_keeps_the_smallest_set_with_mass_at_least_p",
        why="drops the token that brings the mass to p: the kept mass is below p")
def top_p_keeping_the_crossing_token_out(logits, p):
    """Keeps tokens while the running sum *including* them stays below p: the kept mass falls short of p."""
    if p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    drop_sorted = torch.cumsum(probs, dim=-1) >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


@mutant("generate.top_p_filter", "test_top_p_keeps_the_smallest_set_with_mass_at_least_p",
        why="keeps one token past the nucleus")
def top_p_keeping_one_too_many(logits, p):
    if p == 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_two_before = torch.cumsum(probs, dim=-1) - probs - torch.nn.functional.pad(probs, (1, 0))[..., :-1]
    drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, mass_two_before >= p)
    return logits.masked_fill(drop, -math.inf)


@mutant("generate.top_p_filter", "test_top_p_keeps_the_smallest_set_with_mass_at_least_p",
        why="accumulates in vocabulary order")
def top_p_without_sorting(logits, p):
    """Accumulates the mass in vocabulary order instead of from the most likely token."""
    if p == 1:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    return logits.masked_fill(torch.cumsum(probs, dim=-1) - probs >= p, -math.inf)


@mutant("generate.top_p_filter", "test_k_zero_and_p_one_do_not_filter",
        why="p = 1 drops tokens whose probability rounds to 0")
def top_p_trusting_the_running_sum_at_one(logits, p):
    """No special case for p = 1: a running sum that rounds to 1.0 drops the tail."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, torch.cumsum(probs, dim=-1) - probs >= p)
    return logits.masked_fill(drop, -math.inf)


# ---------------------------------------------------------------------------------------------- the loop


def _loop(model, prompt, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator, window, use_cache,
          crop_prompt=True, slide=True, feed_all=False, yield_stop=False, own_window=True, stop_set=True,
          pass_top_p=True, temper_first=False, cache_batch=1):
    """A generation loop with switches for the mistakes below."""
    ids = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
    window = (window if own_window else None) or model.config.max_seq_len
    if stop_set:
        stop_tokens = set(stop_tokens)
    if not pass_top_p:
        top_p = 1.0
    start = ids[-window:] if crop_prompt else ids
    make_cache = (lambda: model.make_cache(cache_batch, window)) if cache_batch else (lambda: model.make_cache(window))
    cache = make_cache() if use_cache else None
    logits = (model(torch.tensor([start]), cache=cache) if use_cache else model(torch.tensor([start])))[:, -1]
    cached = len(start)
    with torch.no_grad():
        for produced in range(max_new_tokens):
            if temper_first and temperature > 0:
                logits = logits / temperature
            token = int(ref.sample_next(logits, temperature, top_k, top_p, generator)[0])
            if token in stop_tokens:
                if yield_stop:
                    yield token
                return
            yield token
            ids.append(token)
            if use_cache and not feed_all and (cached < window or not slide):
                logits = model(torch.tensor([[token]]), cache=cache)[:, -1]
                cached += 1
            else:
                tokens = ids[-window:] if slide else ids
                cache = make_cache() if use_cache else None
                logits = (model(torch.tensor([tokens]), cache=cache) if use_cache else model(torch.tensor([tokens])))
                logits = logits[:, -1]


def _generator(name, **switches):
    def generate(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_tokens=(),
                 context_length=None, generator=None, use_cache=True):
        return _loop(model, prompt, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator,
                     context_length, use_cache, **switches)
    generate.__name__ = name
    return generate


generate_without_cropping_the_prompt = _generator("generate_without_cropping_the_prompt", crop_prompt=False)
generate_without_sliding = _generator("generate_without_sliding", slide=False)
generate_feeding_the_whole_window = _generator("generate_feeding_the_whole_window", feed_all=True)
generate_yielding_the_stop_token = _generator("generate_yielding_the_stop_token", yield_stop=True)


@mutant("generate.generate", "test_generation_stops_at_a_stop_token_without_yielding_it", why="ignores stop tokens")
def generate_ignoring_stop_tokens(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_tokens=(),
                                  context_length=None, generator=None, use_cache=True):
    return ref.generate(model, prompt, max_new_tokens, temperature, top_k, top_p, (), context_length, generator,
                        use_cache)


@mutant("generate.generate", "test_generation_yields_max_new_tokens_tokens", why="an off-by-one in the loop")
def generate_one_token_short(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_tokens=(),
                             context_length=None, generator=None, use_cache=True):
    return ref.generate(model, prompt, max(0, max_new_tokens - 1), temperature, top_k, top_p, stop_tokens,
                        context_length, generator, use_cache)


@mutant("generate.generate", "test_rejects_an_empty_prompt", why="starts an empty prompt from token 0 silently")
def generate_from_token_zero_when_empty(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                                        stop_tokens=(), context_length=None, generator=None, use_cache=True):
    prompt = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
    return ref.generate(model, prompt or [0], max_new_tokens, temperature, top_k, top_p, stop_tokens,
                        context_length, generator, use_cache)


mutant("generate.generate", "test_generation_sees_the_last_context_length_tokens",
       why="feeds a prompt longer than the context")(generate_without_cropping_the_prompt)


mutant("generate.generate", "test_generation_sees_the_last_context_length_tokens",
       "test_generation_with_the_cache_equals_generation_without",
       why="keeps appending past the window")(generate_without_sliding)


mutant("generate.generate", "test_generation_feeds_one_token_per_step_while_the_window_has_room",
       why="never uses the cache after the prompt")(generate_feeding_the_whole_window)


mutant("generate.generate", "test_generation_stops_at_a_stop_token_without_yielding_it",
       why="yields the stop token before stopping")(generate_yielding_the_stop_token)



mutant("generate.generate", "test_generation_sees_the_last_context_length_tokens",
       why="ignores context_length: the window is always the model's max_seq_len")(
    _generator("generate_ignoring_context_length", own_window=False))


mutant("generate.generate", "test_generation_stops_at_a_stop_token_without_yielding_it",
       why="tests `token in stop_tokens` on the iterable itself: a generator of stop tokens is used up by the "
           "first test")(_generator("generate_reading_the_stop_tokens_each_step", stop_set=False))


mutant("generate.generate", "test_generation_samples_with_temperature_top_k_and_top_p_together",
       why="passes temperature and top_k on to the sampler, and forgets top_p")(
    _generator("generate_forgetting_top_p", pass_top_p=False))


mutant("generate.generate", "test_generation_samples_with_temperature_top_k_and_top_p_together",
       why="divides the logits by the temperature and lets sample_next divide them again")(
    _generator("generate_tempering_twice", temper_first=True))


@mutant("generate.generate", "test_bad_arguments_raise_at_the_call_before_any_token",
        why="a generator function: every check waits for the first next()")
def generate_checking_lazily(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_tokens=(),
                             context_length=None, generator=None, use_cache=True):
    yield from ref.generate(model, prompt, max_new_tokens, temperature, top_k, top_p, stop_tokens, context_length,
                            generator, use_cache)


@mutant("generate.generate", "test_bad_arguments_raise_at_the_call_before_any_token",
        why="leaves top_k and top_p to the filters, which check them only when the first token is sampled")
def generate_leaving_the_filters_to_check(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                                          stop_tokens=(), context_length=None, generator=None, use_cache=True):
    ref.generate(model, prompt, max_new_tokens, temperature, 0, 1.0, stop_tokens, context_length, generator,
                 use_cache)  # checks everything else at the call
    return _loop(model, prompt, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator, context_length,
                 use_cache)


# ---------------------------------------------------------------------------------------------- filters together


@mutant("generate.top_k_filter", "test_top_k_keeps_every_logit_tied_with_the_kth_largest",
        why="keeps the k indices torch.topk returns: exactly k, ties at the k-th value broken arbitrarily")
def top_k_by_indices(logits, k):
    if k == 0 or k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k, dim=-1).indices, True)
    return logits.masked_fill(~keep, -math.inf)


@mutant("generate.sample_next", "test_top_k_then_top_p_at_the_temperature_draw_from_the_renormalised_nucleus",
        why="filters the raw logits and divides by the temperature after: the nucleus ignores the temperature")
def sample_filtering_before_the_temperature(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = ref.top_p_filter(ref.top_k_filter(logits.float(), top_k), top_p)
    return ref.sample_next(filtered / temperature, 1.0, 0, 1.0, generator)


@mutant("generate.sample_next", "test_top_k_then_top_p_at_the_temperature_draw_from_the_renormalised_nucleus",
        why="top-p on the whole distribution, then top-k: the nucleus is not taken among the k best")
def sample_with_top_p_before_top_k(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = ref.top_k_filter(ref.top_p_filter(logits.float() / temperature, top_p), top_k)
    return ref.sample_next(scaled, 1.0, 0, 1.0, generator)


@mutant("generate.sample_next", "test_top_k_then_top_p_at_the_temperature_draw_from_the_renormalised_nucleus",
        why="one filter only: top_k when it is given, else top_p")
def sample_with_one_filter(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    return ref.sample_next(logits, temperature, top_k, 1.0 if top_k else top_p, generator)


# ---------------------------------------------------------------------------------------------- edge cases


@mutant("generate.top_k_filter", "test_filters_and_the_sampler_reject_bad_arguments_naming_them",
        why="no check of k: a negative k reaches torch.topk")
def top_k_without_a_check(logits, k):
    if k == 0 or k >= logits.shape[-1]:
        return logits
    return logits.masked_fill(logits < torch.topk(logits, k, dim=-1).values[..., -1:], -math.inf)


@mutant("generate.top_p_filter", "test_filters_and_the_sampler_reject_bad_arguments_naming_them",
        why="no check of p: p = 0 drops every token, p > 1 keeps them all silently")
def top_p_without_a_check(logits, p):
    return ref.top_p_filter(logits, 1.0) if p >= 1 else _top_p(logits, p)


def _top_p(logits, p, dim=-1, strict=False):
    """top_p_filter along `dim`, without checks; `strict` keeps a token while the mass before it is <= p."""
    sorted_logits, order = torch.sort(logits, dim=dim, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=dim)
    mass_before = torch.cumsum(probs, dim=dim) - probs
    drop_sorted = mass_before > p if strict else mass_before >= p
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(dim, order, drop_sorted), -math.inf)


@mutant("generate.sample_next", "test_filters_and_the_sampler_reject_bad_arguments_naming_them",
        why="no check of the temperature: a negative one makes the least likely token the most likely")
def sample_without_a_temperature_check(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    if temperature < 0:
        return ref.sample_next(-logits, -temperature, top_k, top_p, generator)
    return ref.sample_next(logits, temperature, top_k, top_p, generator)


@mutant("generate.top_k_filter", "test_filters_and_greedy_sampling_take_logits_of_any_leading_shape",
        why="flattens the logits to (rows, V) and never gives them their shape back")
def top_k_returning_rows(logits, k):
    return ref.top_k_filter(logits.reshape(-1, logits.shape[-1]), k)


@mutant("generate.top_p_filter", "test_filters_and_greedy_sampling_take_logits_of_any_leading_shape",
        why="sorts and sums along dim=1, the vocabulary only for (rows, V) logits")
def top_p_along_dim_one(logits, p):
    return logits if p == 1 else _top_p(logits, p, dim=1)


@mutant("generate.sample_next", "test_filters_and_greedy_sampling_take_logits_of_any_leading_shape",
        why="greedy argmax along dim=1, the vocabulary only for (rows, V) logits")
def sample_greedy_along_dim_one(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    if temperature == 0:
        return logits.argmax(dim=1)
    return ref.sample_next(logits, temperature, top_k, top_p, generator)


@mutant("generate.top_p_filter", "test_top_p_stops_at_the_token_that_brings_the_mass_to_exactly_p",
        why="keeps a token while the mass before it is <= p: one token too many when the mass reaches p exactly")
def top_p_keeping_the_token_after_exactly_p(logits, p):
    return logits if p == 1 else _top_p(logits, p, strict=True)


@mutant("generate.sample_next", "test_sampling_without_a_generator_draws_from_torchs_global_random_state",
        why="makes a fresh torch.Generator() when none is given: the same draws whatever torch.manual_seed says")
def sample_with_a_fresh_generator(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    return ref.sample_next(logits, temperature, top_k, top_p, generator or torch.Generator())


mutant("generate.generate", "test_generation_runs_the_model_once_per_token",
       why="computes the logits after every token, the last one too: one model call nobody uses")(
    _generator("generate_computing_logits_after_the_last_token"))


mutant("generate.generate", "test_generation_sees_the_last_context_length_tokens",
       why="make_cache(window): the window passed as the batch size")(
    _generator("generate_making_the_cache_for_a_batch_of_window", cache_batch=None))
