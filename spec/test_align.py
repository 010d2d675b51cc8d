"""Chapter 12 — align: log-probabilities of responses, the Bradley–Terry reward model, KL estimators, generalized
advantage estimation, PPO's clipped losses, DPO and GRPO.

Each loss is checked against its definition computed in float64 (GAE against the brute-force discounted sum of TD
residuals), and against the properties training relies on: log 2 where nothing is preferred yet, a loss that falls
as the right answer pulls ahead, KL estimators whose average under the policy is the exact KL of two categorical
distributions, a clip that gives exactly zero gradient once the ratio has left its band on the side the advantage
favours, group-normalised advantages with mean 0 and sample std 1, rewards read at the last real token whatever
padding follows, and masked positions that change nothing anywhere. Half-precision inputs are computed in float32.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .checks import assert_rejects
from .strategies import tensors
from .tolerances import assert_close

# Seeds from a short range: a failing example shrinks in a few steps (the full 32-bit range takes dozens).
seeds = st.integers(0, 255)
dtypes = st.sampled_from([torch.bfloat16, torch.float32, torch.float64])  # half precision first: every property tries it
lengths = st.integers(1, 6)
batches = st.integers(1, 3)


def check(actual, expected, input_dtype: torch.dtype, what: str, scale: float = 10) -> None:
    """`actual` equals the float64 `expected`: to the precision of the inputs' dtype, and to float32's for bfloat16
    inputs, which must be computed (and returned) in float32 at least."""
    __tracebackhide__ = True
    assert isinstance(actual, torch.Tensor), f"{what}: expected a tensor, got {type(actual).__name__}"
    if input_dtype in (torch.float16, torch.bfloat16):
        assert actual.dtype in (torch.float32, torch.float64), (
            f"{what}: bfloat16 inputs must be computed, and returned, in float32 at least; got {actual.dtype}")
        assert_close(actual, expected, what, dtype=torch.float32, scale=scale)
    else:
        assert_close(actual, expected, what, dtype=input_dtype, scale=scale)


@st.composite
def masks(draw, batch: int, length: int, as_numbers: bool = False):
    """A (batch, length) mask with at least one True per row: all True; a prompt, a response, then padding; or
    random holes. as_numbers=True draws it as bool, 0/1 integers or 0/1 floats."""
    kind = draw(st.sampled_from(["all", "prompt, response, padding", "holes"]))
    generator = torch.Generator().manual_seed(draw(seeds))
    if kind == "all":
        mask = torch.ones(batch, length, dtype=torch.bool)
    elif kind == "holes":
        mask = torch.rand(batch, length, generator=generator) < 0.6
        mask[torch.arange(batch), torch.randint(length, (batch,), generator=generator)] = True
    else:
        mask = torch.zeros(batch, length, dtype=torch.bool)
        for row in range(batch):
            start = int(torch.randint(length, (), generator=generator))
            end = int(torch.randint(start + 1, length + 1, (), generator=generator))
            mask[row, start:end] = True
    if as_numbers:
        mask = mask.to(draw(st.sampled_from([torch.bool, torch.int64, torch.float32])))
    return mask


def per_token(seed: int, batch: int, length: int, scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """A (batch, length) normal(0, scale) tensor from `seed`, rounded to `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, length, generator=generator, dtype=torch.float64) * scale).to(dtype)


def masked_mean64(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.bool()
    return values.double()[mask].mean()


def log_ratios(seed: int, batch: int, length: int, clip: float) -> torch.Tensor:
    """log π/π_old per token, each ratio inside the clip band or clearly outside it on either side, never on
    its edge (where the two terms of the min are equal and either gradient is right)."""
    generator = torch.Generator().manual_seed(seed)
    ratios = torch.tensor([0.4, 1 - 1.5 * clip, 1 - clip / 2, 1.0, 1 + clip / 2, 1 + 1.5 * clip, 2.5],
                          dtype=torch.float64)
    return ratios[torch.randint(len(ratios), (batch, length), generator=generator)].log()


# ------------------------------------------------------------------------------------------ log-probabilities


def log_probs64(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in float64 (targets must be valid ids)."""
    return torch.log_softmax(logits.double(), -1).gather(-1, targets[..., None]).squeeze(-1)


@st.composite
def logits_and_targets(draw, scale: float = 3.0):
    """logits (*lead, V) in a drawn dtype and targets (*lead) with ids in [0, V)."""
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    vocab = draw(st.integers(1, 10))
    logits = draw(tensors(shape=(*lead, vocab), scale=scale, dtype=draw(dtypes)))
    generator = torch.Generator().manual_seed(draw(seeds))
    return logits, torch.randint(vocab, lead, generator=generator)


@given(logits_and_targets())
def test_token_logprobs_equal_log_softmax_at_the_target(impl, case):
    logits, targets = case
    check(impl.align.token_logprobs(logits, targets), log_probs64(logits, targets), logits.dtype,
          "token_logprobs must be log softmax(logits)[target] at every position")


@given(logits_and_targets(scale=1.0), st.sampled_from([1e4, -1e4, 3e4]))
def test_token_logprobs_are_finite_at_logits_of_1e4(impl, case, big):
    logits, targets = case
    logits = torch.cat([logits.float() + big, logits.float() * big])  # far from 0, and far from each other
    targets = torch.cat([targets, targets])
    result = impl.align.token_logprobs(logits, targets)
    assert torch.isfinite(result).all(), (
        f"token_logprobs must stay finite at logits of {big} in float32: log_softmax, never softmax(...).log()")
    assert_close(result, log_probs64(logits, targets), f"token_logprobs at logits of {big} must still equal "
                 "log softmax(logits)[target]", scale=10)


@given(logits_and_targets(), st.sampled_from(["one position too few", "one position too many", "no batch"]))
def test_token_logprobs_reject_logits_that_do_not_fit_the_targets(impl, case, how):
    logits, targets = case
    flat = targets.reshape(-1)
    targets = {"one position too few": flat[:-1], "one position too many": torch.cat([flat, flat[:1]]),
               "no batch": flat[:, None, None]}[how]
    assert_rejects(lambda: impl.align.token_logprobs(logits, targets), tuple(logits.shape), tuple(targets.shape),
                   what=f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} ({how}) do not line up: "
                        "token_logprobs must say so with a ValueError that names both shapes")


@given(batches, lengths, st.integers(1, 8), seeds, dtypes)
def test_sequence_logprob_sums_token_logprobs_over_the_mask(impl, batch, length, vocab, seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(vocab, (batch, length), generator=generator)
    mask = torch.rand(batch, length, generator=generator) < 0.6
    if seed % 2:
        mask = mask.long()  # a mask of 0/1 integers means the same
    targets = torch.where(mask.bool(), targets, -100)  # padding's targets are no ids: they must not be looked up
    expected = torch.where(mask.bool(), log_probs64(logits, torch.where(mask.bool(), targets, 0)), 0.0).sum(-1)
    check(impl.align.sequence_logprob(logits, targets, mask), expected, dtype,
          "sequence_logprob must be the sum over the masked positions of log softmax(logits)[target], one number "
          "per row (targets outside the mask, here -100, are never looked up)")


@given(batches, lengths, seeds, dtypes, st.data())
def test_masked_mean_averages_only_the_entries_in_the_mask(impl, batch, length, seed, dtype, data):
    values = per_token(seed, batch, length, scale=3.0, dtype=dtype)
    mask = data.draw(masks(batch, length, as_numbers=True))
    check(impl.align.masked_mean(values, mask), masked_mean64(values, mask), dtype,
          "masked_mean must be the mean of the entries where the mask is True (or 1): their sum over their count")


# ----------------------------------------------------------------------------------------------- reward model


@st.composite
def reward_configs(draw):
    """Keyword arguments of a tiny ModelConfig."""
    n_heads = draw(st.integers(1, 2))
    return dict(vocab_size=draw(st.integers(5, 20)), d_model=n_heads * 2 * draw(st.integers(1, 2)),
                n_layers=draw(st.integers(1, 2)), n_heads=n_heads, max_seq_len=8,
                norm=draw(st.sampled_from(["rmsnorm", "layernorm"])), mlp=draw(st.sampled_from(["swiglu", "gelu"])))


def reward_model(impl, kwargs: dict, seed: int):
    """impl.align.RewardModel(ModelConfig(**kwargs)) in float64, every parameter moved from its initial value."""
    torch.manual_seed(seed)
    model = impl.align.RewardModel(impl.model.ModelConfig(**kwargs)).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.3)
    return model


@given(reward_configs(), seeds, batches, st.integers(1, 8), st.booleans())
def test_reward_is_the_score_of_the_hidden_state_at_the_last_real_token(impl, kwargs, seed, batch, length, full):
    model = reward_model(impl, kwargs, seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(kwargs["vocab_size"], (batch, length), generator=generator)
    real = torch.randint(1, length + 1, (batch,), generator=generator)
    rewards = model(ids) if full else model(ids, real)
    if full:
        real = torch.full((batch,), length)
    names = set(model.state_dict())
    expected_names = {f"model.{name}" for name in model.model.state_dict()} | {"score.weight"}
    assert names == expected_names, (
        "a RewardModel holds the decoder as `model` and the head as `score` (Hugging Face's "
        f"LlamaForSequenceClassification names); missing {sorted(expected_names - names)}, unexpected "
        f"{sorted(names - expected_names)}")
    assert tuple(model.score.weight.shape) == (1, kwargs["d_model"]), (
        f"score must be Linear(d_model, 1, bias=False): weight of shape (1, {kwargs['d_model']}), got "
        f"{tuple(model.score.weight.shape)}")
    with torch.no_grad():
        hidden = model.model(ids)  # (B, T, d_model)
        expected = (hidden[torch.arange(batch), real - 1] @ model.score.weight.T).squeeze(-1)
    assert_close(rewards, expected, "the reward of a row is score(h) for the decoder's hidden state h at its last "
                 f"real token (position length − 1; lengths {real.tolist()}{' by default' if full else ''}), one "
                 "number per row", scale=100)


@given(reward_configs(), seeds, batches, st.integers(1, 6), st.integers(1, 2))
def test_padding_after_the_last_token_changes_no_reward(impl, kwargs, seed, batch, longest, extra):
    model = reward_model(impl, kwargs, seed)
    generator = torch.Generator().manual_seed(seed)
    real = torch.randint(1, longest + 1, (batch,), generator=generator)
    ids = torch.randint(kwargs["vocab_size"], (batch, longest + extra), generator=generator)  # random padding
    rewards = model(ids, real)
    for row in range(batch):
        alone = model(ids[row:row + 1, :int(real[row])])
        assert_close(rewards[row], alone[0], f"row {row} has {int(real[row])} real tokens and {longest + extra} in "
                     "all: its reward must be that of the row alone, unpadded (read at the last real token, not at "
                     "position −1)", scale=100)


@given(reward_configs(), seeds, st.integers(1, 4),
       st.sampled_from(["0", "T + 1", "beyond the context", "one length for two rows"]))
def test_reward_model_rejects_a_length_outside_1_to_t(impl, kwargs, seed, length, bad):
    model = reward_model(impl, kwargs, seed)
    if bad == "one length for two rows":
        ids = torch.zeros(2, length, dtype=torch.long)
        assert_rejects(lambda: model(ids, torch.tensor([length])), (2,), (1,), what="lengths must hold one length "
                       "per row, shape (2,): a single length, shape (1,), for a batch of 2 rows is ambiguous")
        return
    if bad == "beyond the context":
        ids = torch.zeros(1, kwargs["max_seq_len"] + 1, dtype=torch.long)
        assert_rejects(lambda: model(ids), kwargs["max_seq_len"] + 1, kwargs["max_seq_len"],
                       what=f"a sequence of {kwargs['max_seq_len'] + 1} tokens does not fit a context of "
                            f"max_seq_len = {kwargs['max_seq_len']}")
        return
    ids = torch.zeros(2, length, dtype=torch.long)
    wrong = 0 if bad == "0" else length + 1
    assert_rejects(lambda: model(ids, torch.tensor([length, wrong])), wrong,
                   what=f"a row of length {wrong} in a batch of {length} positions has no last real token to read "
                        "a reward at")


# ------------------------------------------------------------------------------------------- Bradley–Terry


def bt64(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """−mean log σ(c − r) = mean softplus(r − c), in float64."""
    return torch.nn.functional.softplus(rejected.double() - chosen.double()).mean()


@st.composite
def reward_pairs(draw, scale: float = 3.0):
    n = draw(st.integers(1, 6))
    dtype = draw(dtypes)
    return draw(tensors(shape=(n,), scale=scale, dtype=dtype)), draw(tensors(shape=(n,), scale=scale, dtype=dtype))


@given(st.integers(1, 6), seeds, st.sampled_from([1.0, 1e3]))
def test_bradley_terry_loss_is_log_2_at_equal_rewards(impl, n, seed, scale):
    rewards = per_token(seed, 1, n, scale=scale)[0]
    loss = impl.align.bradley_terry_loss(rewards, rewards.clone())
    assert_close(loss, torch.tensor(math.log(2), dtype=torch.float64), "a pair with equal rewards is a coin toss: "
                 "σ(0) = 1/2, the loss must be log 2")


@given(reward_pairs())
def test_bradley_terry_loss_equals_minus_log_sigmoid_of_the_margin(impl, pair):
    chosen, rejected = pair
    check(impl.align.bradley_terry_loss(chosen, rejected), bt64(chosen, rejected), chosen.dtype,
          "bradley_terry_loss must be −mean log σ(chosen − rejected)")


@given(st.integers(1, 6), seeds, st.integers(0, 5), st.sampled_from([0.1, 1.0, 3.0]))
def test_bradley_terry_loss_decreases_as_the_margin_grows(impl, n, seed, which, step):
    chosen, rejected = per_token(seed, 2, n, scale=3.0)
    which = which % n
    wider = chosen.clone()
    wider[which] += step
    before, after = impl.align.bradley_terry_loss(chosen, rejected), impl.align.bradley_terry_loss(wider, rejected)
    assert after < before, (
        f"raising the chosen reward of pair {which} by {step} widens its margin: the loss must fall, went from "
        f"{float(before)} to {float(after)}")


@given(reward_pairs())
def test_swapping_chosen_and_rejected_mirrors_the_loss(impl, pair):
    chosen, rejected = (x.double() for x in pair)
    forwards = impl.align.bradley_terry_loss(chosen, rejected)
    backwards = impl.align.bradley_terry_loss(rejected, chosen)
    assert_close(forwards - backwards, -(chosen - rejected).mean(), "−log σ(m) + log σ(−m) = −m: the loss with "
                 "chosen and rejected swapped must differ by the mean margin", scale=10)


@given(st.integers(1, 6), seeds, st.sampled_from([1e4, -1e4, 3e4]))
def test_bradley_terry_loss_is_stable_at_margins_of_1e4(impl, n, seed, big):
    chosen = (per_token(seed, 1, n)[0] * big).float()
    rejected = torch.zeros(n, dtype=torch.float32).requires_grad_()
    chosen.requires_grad_()
    loss = impl.align.bradley_terry_loss(chosen, rejected)
    assert torch.isfinite(loss), f"bradley_terry_loss must stay finite at margins of {big} (use logsigmoid)"
    assert_close(loss, bt64(chosen, rejected), f"at margins of {big} the loss must still be −mean log σ(margin): "
                 "|margin| for a pair ranked wrong, 0 for one ranked right", scale=10)
    loss.backward()
    margin = chosen.detach().double()
    assert_close(chosen.grad, -torch.sigmoid(-margin) / n, f"at margins of {big} the gradient of the loss with "
                 "respect to each chosen reward must be −σ(−margin)/N, finite", scale=10)


@given(st.integers(1, 8), seeds)
def test_preference_accuracy_counts_pairs_ranked_right(impl, n, seed):
    chosen, rejected = per_token(seed, 2, n).round()  # whole numbers: some pairs tie
    accuracy = impl.align.preference_accuracy(chosen, rejected)
    expected = float((chosen > rejected).double().mean())
    assert math.isclose(float(accuracy), expected, abs_tol=1e-6), (
        f"preference_accuracy must be the share of pairs whose chosen reward is strictly above the rejected one "
        f"(a tie ranks nothing): {expected} for chosen {chosen.tolist()} and rejected {rejected.tolist()}, got "
        f"{float(accuracy)}")


answers = st.text(max_size=8) | st.lists(st.integers(0, 50), max_size=5)


@given(st.lists(st.tuples(answers, answers, answers), max_size=5))
def test_preference_pairs_keep_valid_records_in_order(impl, triples):
    triples = [(p, c, r) for p, c, r in triples if c != r]
    records = [{"prompt": p, "chosen": c, "rejected": r, "source": "extra fields are allowed"} for p, c, r in triples]
    pairs = impl.align.preference_pairs(records)
    assert [tuple(pair) for pair in pairs] == triples, (
        f"preference_pairs must return each record as (prompt, chosen, rejected), in order: expected {triples}, got "
        f"{pairs}")


@given(st.lists(st.tuples(answers, answers, answers), max_size=4), answers,
       st.sampled_from(["identical answers", "prompt", "chosen", "rejected"]))
def test_preference_pairs_reject_identical_answers_and_missing_fields(impl, triples, answer, problem):
    records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples if c != r]
    bad = {"prompt": "q", "chosen": answer, "rejected": answer}
    if problem != "identical answers":
        bad = {"prompt": "q", "chosen": [1], "rejected": [2]}
        del bad[problem]
    index = len(records)
    records.append(bad)
    named = (index,) if problem == "identical answers" else (index, problem)
    assert_rejects(lambda: impl.align.preference_pairs(records), *named,
                   what=f"record {index} has {problem if problem == 'identical answers' else 'no ' + problem}: "
                        "preference_pairs must refuse it and name the record")


# ---------------------------------------------------------------------------------------------------- the KL


def kl64(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    d = logp.double() - ref_logp.double()
    return {"k1": d, "k2": d**2 / 2, "k3": torch.exp(-d) - 1 + d}[estimator]


estimators = st.sampled_from(["k1", "k2", "k3"])


@given(batches, lengths, seeds, dtypes, estimators, st.booleans())
def test_kl_estimators_match_their_definitions(impl, batch, length, seed, dtype, estimator, by_default):
    logp, ref_logp = per_token(seed, batch, length, 2.0, dtype), per_token(seed + 1, batch, length, 2.0, dtype)
    if estimator == "k1" and by_default:
        result = impl.align.kl_penalty(logp, ref_logp)
    else:
        result = impl.align.kl_penalty(logp, ref_logp, estimator)
    default = " (the default)" if by_default and estimator == "k1" else ""
    check(result, kl64(logp, ref_logp, estimator), dtype, f"kl_penalty {estimator!r}{default} with d = logp − ref_logp "
          "must be k1 = d, k2 = d²/2, k3 = exp(−d) − 1 + d", scale=100)


@given(batches, lengths, seeds, estimators)
def test_kl_estimators_are_zero_when_the_policies_agree(impl, batch, length, seed, estimator):
    logp = per_token(seed, batch, length, 3.0) - 3.0
    result = impl.align.kl_penalty(logp, logp.clone(), estimator)
    assert_close(result, torch.zeros_like(logp), f"kl_penalty {estimator!r} of two equal log-probabilities must "
                 "be 0: the policies agree")


@given(batches, lengths, seeds, st.sampled_from(["k2", "k3"]), st.sampled_from([1e-4, 1.0, 5.0]))
def test_k2_and_k3_are_never_negative(impl, batch, length, seed, estimator, scale):
    logp, ref_logp = per_token(seed, batch, length, scale), per_token(seed + 1, batch, length, scale)
    result = impl.align.kl_penalty(logp, ref_logp, estimator)
    assert (result >= -1e-12).all(), (
        f"kl_penalty {estimator!r} must never be negative (e^x ≥ 1 + x; a square ≥ 0), got {result.min().item()}")


@given(st.integers(2, 8), seeds, st.sampled_from(["k1", "k3"]), st.sampled_from([0.5, 2.0]))
def test_k1_and_k3_average_to_the_exact_kl_under_the_policy(impl, vocab, seed, estimator, scale):
    generator = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(vocab, generator=generator, dtype=torch.float64) * scale, -1)
    ref_logp = torch.log_softmax(torch.randn(vocab, generator=generator, dtype=torch.float64) * scale, -1)
    exact = (logp.exp() * (logp - ref_logp)).sum()  # KL(p ‖ q) over the whole vocabulary
    average = (logp.exp() * impl.align.kl_penalty(logp, ref_logp, estimator)).sum()  # E_{v ~ p}[estimate(v)]
    assert_close(average, exact, f"tokens are sampled from the policy p: weighted by p, the {estimator!r} estimates "
                 f"of {vocab} tokens must average to the exact KL(p ‖ q) = Σ p log(p/q)", scale=10)


@given(st.sampled_from(["k4", "K1", "kl", ""]))
def test_kl_penalty_rejects_an_unknown_estimator(impl, name):
    logp = torch.zeros(2, 3)
    assert_rejects(lambda: impl.align.kl_penalty(logp, logp, name), repr(name),
                   what=f"{name!r} is no KL estimator (k1, k2, k3): kl_penalty must name it in a ValueError")


# ------------------------------------------------------------------------------------------------------- GAE


def gae64(rewards, values, mask, gamma: float, lam: float):
    """The brute force: for every masked position t, Σ_l (γλ)^l δ_{t+l} over the rest of t's run of masked
    positions, with δ_k = r_k + γ V_{k+1} − V_k and V after the run's last token 0; returns = advantages + values.
    """
    rewards, values, mask = rewards.double(), values.double(), mask.bool()
    batch, length = mask.shape
    advantages = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        for t in range(length):
            if not mask[b, t]:
                continue
            end = t
            while end + 1 < length and mask[b, end + 1]:
                end += 1
            total = 0.0
            for k in range(t, end + 1):
                next_value = values[b, k + 1] if k < end else 0.0
                delta = rewards[b, k] + gamma * next_value - values[b, k]
                total = total + (gamma * lam) ** (k - t) * delta
            advantages[b, t] = total
    return advantages, torch.where(mask, advantages + values, 0.0)


discounts = st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])


@given(batches, st.integers(1, 7), seeds, dtypes, discounts, discounts, st.data())
def test_gae_equals_the_discounted_sum_of_td_residuals(impl, batch, length, seed, dtype, gamma, lam, data):
    rewards, values = per_token(seed, batch, length, dtype=dtype), per_token(seed + 1, batch, length, dtype=dtype)
    mask = data.draw(masks(batch, length, as_numbers=True))
    advantages, returns = impl.align.gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected_advantages, expected_returns = gae64(rewards, values, mask, gamma, lam)
    rule = (f"with γ = {gamma}, λ = {lam} and the mask {mask.long().tolist()}, A_t must be Σ_l (γλ)^l δ_(t+l) "
            "over the rest of t's run of masked positions (computed backwards; no value after a run's last token), "
            "and 0 outside the mask")
    check(advantages, expected_advantages, dtype, "gae advantages: " + rule)
    check(returns, expected_returns, dtype, "gae returns must be advantages + values on the mask, 0 outside it")


@given(batches, st.integers(1, 7), seeds, discounts, st.data())
def test_gae_with_lambda_1_gives_discounted_returns_minus_values(impl, batch, length, seed, gamma, data):
    rewards, values = per_token(seed, batch, length), per_token(seed + 1, batch, length)
    mask = data.draw(masks(batch, length))
    advantages, returns = impl.align.gae(rewards, values, mask, gamma=gamma, lam=1.0)
    expected = torch.zeros(batch, length, dtype=torch.float64)  # Σ_k γ^(k−t) r_k to the end of t's run
    for b in range(batch):
        running = 0.0
        for t in reversed(range(length)):
            running = rewards[b, t] + gamma * running if mask[b, t] else 0.0
            expected[b, t] = running
    assert_close(returns, expected, f"with λ = 1 the returns must be the discounted sums of rewards to the end of "
                 f"each run of the mask (γ = {gamma}): the values cancel", scale=10)
    assert_close(advantages, torch.where(mask, expected - values, 0.0), "with λ = 1 the advantages must be the "
                 "discounted returns minus the values", scale=10)


# ------------------------------------------------------------------------------------------------------- PPO


def surrogate64(logp, old_logp, advantages, mask, clip: float):
    """(−masked mean of min(ρA, clip(ρ)A), share of masked tokens where the clipped term is the smaller), float64."""
    ratio = torch.exp(logp.double() - old_logp.double())
    advantages = advantages.double()
    unclipped, clipped = ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages
    return -masked_mean64(torch.minimum(unclipped, clipped), mask), masked_mean64((clipped < unclipped).double(), mask)


clips = st.sampled_from([0.1, 0.2, 0.3])


@given(batches, lengths, seeds, dtypes, clips, st.data())
def test_ppo_policy_loss_equals_the_clipped_surrogate(impl, batch, length, seed, dtype, clip, data):
    old_logp = per_token(seed, batch, length, dtype=dtype) - 2
    logp = (old_logp.double() + log_ratios(seed, batch, length, clip)).to(dtype)
    advantages = per_token(seed + 1, batch, length, dtype=dtype)
    mask = data.draw(masks(batch, length, as_numbers=True))
    loss, clip_fraction = impl.align.ppo_policy_loss(logp, old_logp, advantages, mask, clip=clip)
    expected_loss, expected_fraction = surrogate64(logp, old_logp, advantages, mask, clip)
    check(loss, expected_loss, dtype, f"ppo_policy_loss must be −masked mean of min(ρA, clip(ρ, 1 − {clip}, "
          f"1 + {clip})A) with ρ = exp(logp − old_logp)")
    check(clip_fraction, expected_fraction, dtype, "clip_fraction must be the share of masked tokens whose clipped "
          "term is the smaller one")


@given(batches, lengths, seeds, st.data())
def test_ppo_policy_loss_at_ratio_1_is_minus_the_mean_advantage(impl, batch, length, seed, data):
    logp = (per_token(seed, batch, length) - 2).requires_grad_()
    advantages = per_token(seed + 1, batch, length)
    mask = data.draw(masks(batch, length))
    loss, clip_fraction = impl.align.ppo_policy_loss(logp, logp.detach().clone(), advantages, mask)
    assert_close(loss, -masked_mean64(advantages, mask), "at ratio 1 (the policy that sampled the data) the clip is "
                 "inactive and the loss must be −mean(advantage) over the mask", scale=10)
    assert float(clip_fraction) == 0, f"at ratio 1 no token is clipped, clip_fraction must be 0, got {clip_fraction}"
    loss.backward()
    assert_close(logp.grad, torch.where(mask, -advantages / mask.sum(), 0.0), "at ratio 1 the gradient of the loss "
                 "with respect to logp must be −A/N on the N masked tokens (the policy gradient), 0 elsewhere",
                 scale=10)


@given(batches, lengths, seeds, clips, st.data())
def test_clipped_tokens_get_exactly_zero_policy_gradient(impl, batch, length, seed, clip, data):
    old_logp = per_token(seed, batch, length) - 2
    ratio_logs = log_ratios(seed, batch, length, clip)
    logp = (old_logp + ratio_logs).requires_grad_()
    advantages = per_token(seed + 1, batch, length)
    mask = data.draw(masks(batch, length))
    loss, _ = impl.align.ppo_policy_loss(logp, old_logp, advantages, mask, clip=clip)
    loss.backward()
    ratio = ratio_logs.exp()
    stopped = ((ratio > 1 + clip) & (advantages > 0)) | ((ratio < 1 - clip) & (advantages < 0))
    expected = torch.where(mask & ~stopped, -ratio * advantages / mask.sum(), 0.0)
    assert (logp.grad[stopped & mask] == 0).all(), (
        f"a token whose ratio has left [1 − {clip}, 1 + {clip}] on the side its advantage favours (ratio "
        f"{ratio[stopped & mask].tolist()}, advantage {advantages[stopped & mask].tolist()}) must get exactly zero "
        f"gradient, got {logp.grad[stopped & mask].tolist()}")
    assert_close(logp.grad, expected, "every other masked token must get the unclipped gradient −ρA/N (a ratio "
                 "outside the band on the side the advantage does not favour is not clipped), 0 outside the mask",
                 scale=10)


@given(batches, lengths, seeds, clips, st.data())
def test_clip_fraction_is_the_share_of_tokens_the_clip_stops(impl, batch, length, seed, clip, data):
    old_logp = per_token(seed, batch, length) - 2
    ratio_logs = log_ratios(seed, batch, length, clip)
    advantages = per_token(seed + 1, batch, length)
    mask = data.draw(masks(batch, length))
    _, clip_fraction = impl.align.ppo_policy_loss(old_logp + ratio_logs, old_logp, advantages, mask, clip=clip)
    ratio = ratio_logs.exp()
    stopped = (((ratio > 1 + clip) & (advantages > 0)) | ((ratio < 1 - clip) & (advantages < 0))) & mask
    expected = stopped.sum().item() / mask.sum().item()
    assert math.isclose(float(clip_fraction), expected, abs_tol=1e-6), (
        f"clip_fraction must count the masked tokens whose ratio left [1 − {clip}, 1 + {clip}] on the side their "
        f"advantage favours: {stopped.sum().item()} of {mask.sum().item()} = {expected}, got {float(clip_fraction)}")


def value_loss64(values, old_values, returns, mask, clip: float):
    values, old_values, returns = values.double(), old_values.double(), returns.double()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean64(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


@given(batches, lengths, seeds, dtypes, clips, st.data())
def test_ppo_value_loss_equals_the_clipped_definition(impl, batch, length, seed, dtype, clip, data):
    old_values = per_token(seed, batch, length, dtype=dtype)
    values = (old_values.double() + per_token(seed + 1, batch, length, scale=0.4)).to(dtype)
    returns = per_token(seed + 2, batch, length, dtype=dtype)
    mask = data.draw(masks(batch, length, as_numbers=True))
    check(impl.align.ppo_value_loss(values, old_values, returns, mask, clip=clip),
          value_loss64(values, old_values, returns, mask, clip), dtype,
          f"ppo_value_loss must be ½ · masked mean of max((V − R)², (V_old + clip(V − V_old, ±{clip}) − R)²)",
          scale=10)


@given(batches, lengths, seeds, clips, st.data())
def test_value_clip_stops_the_gradient_beyond_the_band(impl, batch, length, seed, clip, data):
    old_values = per_token(seed, batch, length)
    steps = torch.tensor([-2.0, -0.5, 0.5, 2.0], dtype=torch.float64)[  # inside the band, or clearly outside
        torch.randint(4, (batch, length), generator=torch.Generator().manual_seed(seed))] * clip
    values = (old_values + steps).requires_grad_()
    returns = per_token(seed + 2, batch, length, scale=2.0)
    mask = data.draw(masks(batch, length))
    impl.align.ppo_value_loss(values, old_values, returns, mask, clip=clip).backward()
    clipped = old_values + steps.clamp(-clip, clip)
    stopped = (clipped - returns) ** 2 > (values.detach() - returns) ** 2  # the clipped error is the larger
    expected = torch.where(mask & ~stopped, (values.detach() - returns) / mask.sum(), 0.0)
    assert (values.grad[stopped & mask] == 0).all(), (
        f"a value that moved more than {clip} from its old value towards the return is charged as if it had "
        f"stopped at the edge of the band: its gradient must be exactly 0, got {values.grad[stopped & mask].tolist()}")
    assert_close(values.grad, expected, "every other masked value must get the gradient (V − R)/N of ½(V − R)²",
                 scale=10)


def entropy64(logits, mask):
    log_probs = torch.log_softmax(logits.double(), -1)
    return masked_mean64(-(log_probs.exp() * log_probs).sum(-1), mask)


@given(batches, lengths, st.integers(1, 8), seeds, dtypes, st.data())
def test_entropy_is_the_masked_mean_of_minus_sum_p_log_p(impl, batch, length, vocab, seed, dtype, data):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64) * 3).to(dtype)
    mask = data.draw(masks(batch, length, as_numbers=True))
    check(impl.align.entropy(logits, mask), entropy64(logits, mask), dtype,
          "entropy must be the mean over masked tokens of −Σ_v p_v log p_v, p = softmax(logits)")


@given(batches, lengths, st.integers(1, 50), st.sampled_from([0.0, 1e4, -1e4]), st.data())
def test_entropy_of_equal_logits_is_log_v(impl, batch, length, vocab, value, data):
    mask = data.draw(masks(batch, length))
    result = impl.align.entropy(torch.full((batch, length, vocab), value), mask)
    assert_close(result, torch.tensor(math.log(vocab), dtype=torch.float64), f"equal logits ({value}) over {vocab} "
                 f"tokens are uniform: the entropy must be log {vocab}", dtype=torch.float32, scale=10)


@given(batches, lengths, st.integers(2, 8), seeds, st.data())
def test_entropy_is_finite_at_logits_of_1e4(impl, batch, length, vocab, seed, data):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=generator) * 1e4  # almost one-hot: p underflows to 0
    mask = data.draw(masks(batch, length))
    result = impl.align.entropy(logits, mask)
    assert torch.isfinite(result), ("a probability that underflows to 0 adds 0 to the entropy, not 0 · log 0 = NaN: "
                                    "take log p from log_softmax")
    assert_close(result, entropy64(logits, mask), "entropy at logits of 1e4 must still be its definition", scale=10)


@given(batches, lengths, seeds, dtypes, st.sampled_from([0.0, 0.05, 0.1, 1.0]),
       st.sampled_from([None, "k1", "k2", "k3"]), st.data())
def test_ppo_rewards_are_the_kl_penalty_plus_the_score_on_the_last_response_token(
        impl, batch, length, seed, dtype, kl_coef, estimator, data):
    logp, ref_logp = per_token(seed, batch, length, dtype=dtype), per_token(seed + 1, batch, length, dtype=dtype)
    score = per_token(seed + 2, 1, batch, scale=3.0, dtype=dtype)[0]
    mask = data.draw(masks(batch, length, as_numbers=True))
    options = ({} if kl_coef == 0.1 else {"kl_coef": kl_coef}) | ({} if estimator is None else {"estimator": estimator})
    rewards = impl.align.ppo_rewards(score, logp, ref_logp, mask, **options)
    on = mask.bool()
    last = torch.where(on, torch.arange(length), -1).amax(-1)
    expected = torch.where(on, -kl_coef * kl64(logp, ref_logp, estimator or "k1"), 0.0)
    expected[torch.arange(batch), last] += score.double()
    check(rewards, expected, dtype, f"ppo_rewards must be −{kl_coef} · KL_t ({estimator or 'k1'}) on every "
          f"response token, plus the score on the last one of each row (positions {last.tolist()}), 0 elsewhere",
          scale=100)


@given(st.integers(2, 3), lengths, seeds)
def test_ppo_rewards_reject_a_row_without_response_tokens(impl, batch, length, seed):
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[seed % batch] = False
    logp = per_token(seed, batch, length)
    assert_rejects(lambda: impl.align.ppo_rewards(torch.ones(batch), logp, logp, mask), f"row {seed % batch}",
                   what=f"row {seed % batch} has no response token: there is no last token to pay its score on")


# ----------------------------------------------------------------------------------- masked positions, all losses


MASKED = ["sequence_logprob", "masked_mean", "gae", "ppo_policy_loss", "ppo_value_loss", "entropy", "ppo_rewards",
          "grpo_loss"]


def masked_call(impl, name: str, inputs: dict):
    """Call `name` on the (B, T) tensors a, b, c, the logits (B, T, V), targets and mask of `inputs`; its outputs."""
    a, b, c, mask, align = inputs["a"], inputs["b"], inputs["c"], inputs["mask"], impl.align
    if name == "sequence_logprob":
        return (align.sequence_logprob(inputs["logits"], inputs["targets"], mask),)
    if name == "masked_mean":
        return (align.masked_mean(a, mask),)
    if name == "gae":
        return align.gae(a, b, mask, gamma=0.9, lam=0.8)
    if name == "ppo_policy_loss":
        return align.ppo_policy_loss(a, b, c, mask)
    if name == "ppo_value_loss":
        return (align.ppo_value_loss(a, b, c, mask),)
    if name == "entropy":
        return (align.entropy(inputs["logits"], mask),)
    if name == "ppo_rewards":
        return (align.ppo_rewards(inputs["score"], a, b, mask, kl_coef=0.2, estimator="k3"),)
    return align.grpo_loss(a, b, c, mask, ref_logp=c, kl_coef=0.1, aggregation="sequence")


@pytest.mark.parametrize("name", MASKED)
@given(batches, lengths, st.integers(1, 6), seeds, st.data())
def test_masked_positions_change_nothing(impl, name, batch, length, vocab, seed, data):
    mask = data.draw(masks(batch, length))
    generator = torch.Generator().manual_seed(seed)
    noise = lambda: torch.randn(batch, length, generator=generator, dtype=torch.float64)  # noqa: E731
    inputs = dict(a=noise() - 1, b=noise() - 1, c=noise(), mask=mask, score=torch.randn(batch, generator=generator),
                  logits=torch.randn(batch, length, vocab, generator=generator, dtype=torch.float64),
                  targets=torch.randint(vocab, (batch, length), generator=generator))
    changed = dict(inputs)
    for key in ("a", "b", "c"):  # other numbers where the mask is off
        changed[key] = torch.where(mask, inputs[key], noise() * 3)
    changed["logits"] = torch.where(mask[..., None], inputs["logits"], inputs["logits"] * 5 + 2)
    changed["targets"] = torch.where(mask, inputs["targets"], -100)
    for key in ("a", "b", "c", "logits"):
        changed[key] = changed[key].clone().requires_grad_()
    before, after = masked_call(impl, name, inputs), masked_call(impl, name, changed)
    for i, (x, y) in enumerate(zip(before, after)):
        assert_close(y, x, f"{name}: output {i} must not change when the values (and targets) at masked positions "
                     f"do (mask {mask.long().tolist()})", scale=10)
    outputs = [y.sum() for y in after if y.requires_grad]
    if outputs:
        grads = torch.autograd.grad(sum(outputs), [changed[k] for k in ("a", "b", "c", "logits")], allow_unused=True)
        for key, grad in zip(("a", "b", "c", "logits"), grads):
            if grad is None:
                continue
            off = ~mask[..., None].expand_as(grad) if key == "logits" else ~mask
            assert (grad[off] == 0).all(), (
                f"{name}: an input at a masked position must get exactly zero gradient; {key} got "
                f"{grad[off].tolist()}")


# ------------------------------------------------------------------------------------------------------- DPO


def dpo64(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    chosen = beta * (policy_chosen.double() - ref_chosen.double())
    rejected = beta * (policy_rejected.double() - ref_rejected.double())
    return torch.nn.functional.softplus(rejected - chosen).mean(), chosen, rejected


@st.composite
def sequence_logprobs(draw, dtype=None):
    """Four (N,) tensors of sequence log-probabilities: policy chosen, policy rejected, reference chosen, rejected."""
    n, seed = draw(st.integers(1, 5)), draw(seeds)
    dtype = dtype or draw(dtypes)
    return tuple((per_token(seed + i, 1, n, scale=5.0)[0] - 20).to(dtype) for i in range(4))


betas = st.sampled_from([0.01, 0.1, 0.5, 2.0])


@given(sequence_logprobs(torch.float64), betas)
def test_dpo_loss_is_log_2_when_the_policy_is_the_reference(impl, logprobs, beta):
    policy_chosen, policy_rejected, _, _ = logprobs
    loss, chosen_rewards, rejected_rewards = impl.align.dpo_loss(policy_chosen, policy_rejected, policy_chosen.clone(),
                                                                 policy_rejected.clone(), beta=beta)
    assert_close(loss, torch.tensor(math.log(2), dtype=torch.float64), "before training the policy is the "
                 "reference: every implicit reward β·(log π − log π_ref) is 0 and the loss must be log 2, whatever "
                 "the log-probabilities")
    assert_close(chosen_rewards, torch.zeros_like(policy_chosen), "the implicit rewards of the policy that is the "
                 "reference must be 0")
    assert_close(rejected_rewards, torch.zeros_like(policy_rejected), "the implicit rewards of the policy that is "
                 "the reference must be 0")


@given(sequence_logprobs(), betas, st.booleans())
def test_dpo_loss_is_bradley_terry_on_the_implicit_rewards(impl, logprobs, beta, by_default):
    dtype = logprobs[0].dtype
    if by_default:
        beta = 0.1
        loss, chosen_rewards, rejected_rewards = impl.align.dpo_loss(*logprobs)
    else:
        loss, chosen_rewards, rejected_rewards = impl.align.dpo_loss(*logprobs, beta=beta)
    expected_loss, expected_chosen, expected_rejected = dpo64(*logprobs, beta)
    check(loss, expected_loss, dtype, f"dpo_loss must be −mean log σ(r̂_c − r̂_r) with r̂ = β·(log π − log π_ref), "
          f"β = {beta}", scale=100)
    check(chosen_rewards, expected_chosen, dtype, f"the chosen rewards must be β·(log π − log π_ref), β = {beta}",
          scale=100)
    check(rejected_rewards, expected_rejected, dtype, f"the rejected rewards must be β·(log π − log π_ref), "
          f"β = {beta}", scale=100)


@given(sequence_logprobs(torch.float64), betas, st.integers(0, 4), st.sampled_from([0.5, 2.0]),
       st.sampled_from(["chosen up", "rejected down"]))
def test_dpo_loss_decreases_as_the_chosen_margin_grows(impl, logprobs, beta, which, step, how):
    _, _, ref_chosen, ref_rejected = logprobs
    # The policy a few nats from the reference: no pair's loss so small that float64 cannot see it fall.
    policy_chosen, policy_rejected = ref_chosen + logprobs[0] / 5 + 4, ref_rejected + logprobs[1] / 5 + 4
    which = which % len(policy_chosen)
    moved_chosen, moved_rejected = policy_chosen.clone(), policy_rejected.clone()
    if how == "chosen up":
        moved_chosen[which] += step
    else:
        moved_rejected[which] -= step
    before, *_ = impl.align.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    after, *_ = impl.align.dpo_loss(moved_chosen, moved_rejected, ref_chosen, ref_rejected, beta=beta)
    assert after < before, (
        f"making pair {which}'s chosen answer more likely, or its rejected one less likely ({how} by {step}), "
        f"widens the margin: the loss must fall, went from {float(before)} to {float(after)}")


@given(sequence_logprobs(torch.float64), betas, st.sampled_from([0.5, 3.0]))
def test_beta_scales_the_implicit_rewards(impl, logprobs, beta, factor):
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = logprobs
    loss, chosen, rejected = impl.align.dpo_loss(*logprobs, beta=beta * factor)
    # The same log-ratios, stretched by `factor`, at the first β:
    stretched = (ref_chosen + (policy_chosen - ref_chosen) * factor, ref_rejected + (policy_rejected - ref_rejected)
                 * factor)
    same_loss, same_chosen, same_rejected = impl.align.dpo_loss(stretched[0], stretched[1], ref_chosen, ref_rejected,
                                                                beta=beta)
    assert_close(loss, same_loss, f"β multiplies the log-ratios: β = {beta * factor} must give the loss of "
                 f"β = {beta} with log-ratios {factor} times larger", scale=100)
    assert_close(chosen, same_chosen, "β multiplies the log-ratios: the chosen rewards must scale with it", scale=100)
    assert_close(rejected, same_rejected, "β multiplies the log-ratios: the rejected rewards must scale with it",
                 scale=100)


# ------------------------------------------------------------------------------------------------------ GRPO


def grpo_advantages64(rewards, group_size: int, eps: float):
    groups = rewards.double().reshape(-1, group_size)
    return ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + eps)).reshape(-1)


@given(st.integers(2, 5), st.integers(1, 4), seeds, st.sampled_from([1.0, 100.0]))
def test_grpo_advantages_have_zero_mean_and_unit_sample_std_in_each_group(impl, group_size, groups, seed, scale):
    rewards = per_token(seed, 1, group_size * groups, scale=scale)[0]
    rewards[::group_size] += scale  # every group's rewards spread by at least about the scale
    advantages = impl.align.grpo_advantages(rewards, group_size).reshape(groups, group_size)
    assert_close(advantages.mean(-1), torch.zeros(groups, dtype=torch.float64), "the advantages of each group must "
                 "average to 0: each reward minus its group's mean", scale=1e4)
    spread = rewards.reshape(groups, group_size).std(-1)
    assert_close(advantages.std(-1), spread / (spread + 1e-6), "the advantages of each group must have sample "
                 "standard deviation 1 (divide by the group's sample std, n − 1, plus eps; so std / (std + eps))",
                 scale=1e4)


@given(st.integers(2, 5), st.integers(1, 4), seeds, dtypes, st.sampled_from([None, 1e-3, 0.5]))
def test_grpo_advantages_equal_the_definition(impl, group_size, groups, seed, dtype, eps):
    rewards = per_token(seed, 1, group_size * groups, scale=2.0, dtype=dtype)[0]
    if eps is None:
        advantages, eps = impl.align.grpo_advantages(rewards, group_size), 1e-6
    else:
        advantages = impl.align.grpo_advantages(rewards, group_size, eps=eps)
    check(advantages, grpo_advantages64(rewards, group_size, eps), dtype, f"grpo_advantages must be (r − group "
          f"mean) / (group sample std + {eps}) for consecutive groups of {group_size}", scale=100)


@given(st.integers(2, 5), st.integers(1, 4), seeds, st.sampled_from([0.0, 0.1, 1 / 3, 7.0, -1e3]))
def test_equal_rewards_in_a_group_give_zero_advantages(impl, group_size, groups, seed, value):
    rewards = per_token(seed, 1, group_size * groups)[0]
    rewards[:group_size] = value  # the first group's answers all scored the same
    advantages = impl.align.grpo_advantages(rewards, group_size)
    assert torch.isfinite(advantages).all(), f"a group of equal rewards must not give NaN: {advantages.tolist()}"
    assert (advantages[:group_size].abs() <= 1e-6).all(), (
        f"a group whose rewards are all {value} prefers nothing: its advantages must be 0, got "
        f"{advantages[:group_size].tolist()}")


@given(st.sampled_from([(5, 2), (7, 3), (4, 1), (1, 1), (6, 4)]))
def test_grpo_advantages_reject_a_batch_that_is_not_whole_groups(impl, sizes):
    count, group_size = sizes
    assert_rejects(lambda: impl.align.grpo_advantages(torch.arange(count, dtype=torch.float32), group_size),
                   group_size, what=f"{count} rewards in groups of {group_size}: a group needs 2 responses at least "
                                    "(the sample std of one is 0/0) and the rewards must split into whole groups")


def grpo_loss64(logp, old_logp, advantages, mask, clip, ref_logp, kl_coef, aggregation):
    mask = mask.bool()
    advantages = advantages.double()
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand(mask.shape)
    ratio = torch.exp(logp.double() - old_logp.double())
    unclipped, clipped = ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages
    objective = torch.minimum(unclipped, clipped)
    if kl_coef:
        objective = objective - kl_coef * kl64(logp, ref_logp, "k3")
    if aggregation == "token":
        loss = -objective[mask].mean()
    else:
        loss = -(torch.where(mask, objective, 0.0).sum(-1) / mask.sum(-1)).mean()
    return loss, masked_mean64((clipped < unclipped).double(), mask)


@given(batches, lengths, seeds, dtypes, clips, st.sampled_from([0.0, 0.04, 0.5]),
       st.sampled_from(["token", "sequence"]), st.booleans(), st.data())
def test_grpo_loss_equals_the_clipped_objective(impl, batch, length, seed, dtype, clip, kl_coef, aggregation,
                                                per_response, data):
    old_logp = per_token(seed, batch, length, dtype=dtype) - 2
    logp = (old_logp.double() + log_ratios(seed, batch, length, clip)).to(dtype)
    ref_logp = per_token(seed + 1, batch, length, dtype=dtype) - 2
    advantages = per_token(seed + 2, 1, batch, dtype=dtype)[0] if per_response else per_token(seed + 2, batch, length,
                                                                                              dtype=dtype)
    mask = data.draw(masks(batch, length, as_numbers=True))
    options = dict(clip=clip, aggregation=aggregation) | (dict(ref_logp=ref_logp, kl_coef=kl_coef) if kl_coef else {})
    if aggregation == "token" and data.draw(st.booleans()):
        del options["aggregation"]  # the default
    loss, clip_fraction = impl.align.grpo_loss(logp, old_logp, advantages, mask, **options)
    expected_loss, expected_fraction = grpo_loss64(logp, old_logp, advantages, mask, clip, ref_logp, kl_coef,
                                                   aggregation)
    over = "every masked token" if aggregation == "token" else "each response's tokens, then over the responses"
    given_as = "one advantage per response" if per_response else "one advantage per token"
    check(loss, expected_loss, dtype, f"grpo_loss must be −(the mean over {over}) of min(ρA, clip(ρ, 1 ± {clip})A) − "
          f"{kl_coef} · k3, given {given_as}", scale=100)
    check(clip_fraction, expected_fraction, dtype, "grpo_loss's clip_fraction must be the share of masked tokens "
          "whose clipped term is the smaller one")


@given(st.integers(1, 3), st.integers(2, 4), lengths, seeds, st.sampled_from(["token", "sequence"]), st.data())
def test_grpo_loss_at_ratio_1_is_about_0_but_its_gradient_is_not(impl, groups, group_size, length, seed, aggregation,
                                                                  data):
    batch = groups * group_size
    rewards = per_token(seed, 1, batch, scale=2.0)[0]
    advantages = grpo_advantages64(rewards, group_size, 1e-6)  # mean 0 in every group
    logp = (per_token(seed + 1, batch, length) - 2).requires_grad_()
    mask = data.draw(masks(batch, length))
    loss, _ = impl.align.grpo_loss(logp, logp.detach().clone(), advantages, mask, aggregation=aggregation)
    counts = mask.sum(-1, keepdim=True).double()
    weights = 1 / (counts.sum() if aggregation == "token" else batch * counts)  # each token's share of the mean
    expected = -(torch.where(mask, advantages[:, None] * weights, 0.0)).sum()
    zero = ", 0 here: group-normalised advantages sum to 0 in every group" if aggregation == "sequence" else ""
    assert_close(loss, expected, f"at ratio 1 the loss must be −(the {aggregation}-level mean of the advantages)"
                 f"{zero}", scale=100)
    if aggregation == "sequence":
        assert abs(loss.item()) < 1e-9, f"with sequence aggregation, the loss at ratio 1 must be 0, got {loss.item()}"
    loss.backward()
    assert_close(logp.grad, torch.where(mask, -advantages[:, None] * weights, 0.0), "at ratio 1 the loss is about 0, "
                 "but its gradient must be the policy gradient: −A_i times the token's weight in the mean",
                 scale=100)


@given(st.sampled_from(["no reference", "tokens", "mean", ""]))
def test_grpo_loss_rejects_a_kl_penalty_without_reference_and_unknown_aggregations(impl, problem):
    logp, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    advantages = torch.tensor([1.0, -1.0])
    if problem == "no reference":
        assert_rejects(lambda: impl.align.grpo_loss(logp, logp, advantages, mask, kl_coef=0.1), "ref_logp",
                       what="kl_coef > 0 without ref_logp has no reference to penalise against")
    else:
        assert_rejects(lambda: impl.align.grpo_loss(logp, logp, advantages, mask, aggregation=problem), repr(problem),
                       what=f"{problem!r} is no aggregation (token, sequence): grpo_loss must name it in a ValueError")
