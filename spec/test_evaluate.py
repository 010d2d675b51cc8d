"""Chapter 10 — evaluate: held-out loss, perplexity, bits per byte, and multiple-choice scoring by log-likelihood.

Every number is checked against its definition computed here in float64 on a toy model whose logits depend on the
token and its position: the loss is a mean over tokens (not over batches), bits per byte is the total code length
over the byte count (8 for a model that knows nothing, whatever the tokenizer), and a continuation's score is the
chain-rule sum of its tokens' log-probabilities, each predicted from everything before it.
"""

import json
import math
from types import SimpleNamespace

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from .checks import assert_rejects
from .strategies import token_batches

seeds = st.integers(0, 255)  # a short range: failing examples shrink in a few steps


class PositionalBigram(nn.Module):
    """logits at position t = A[x_t] + P[t], in float64; refuses more positions than its context."""

    def __init__(self, vocab=9, max_seq_len=8, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.a = nn.Parameter(torch.randn(vocab, vocab, generator=generator, dtype=torch.float64) * 2)
        self.p = nn.Parameter(torch.randn(max_seq_len, vocab, generator=generator, dtype=torch.float64))

    def forward(self, input_ids):
        length = input_ids.shape[-1]
        assert length <= self.config.max_seq_len, (
            f"the model was fed {length} positions; its context holds {self.config.max_seq_len}: crop the context "
            "from the left")
        return self.a[input_ids] + self.p[:length]  # (B, T, V)


def log_probs64(model, ids: list[int]) -> torch.Tensor:
    """log softmax of the model's logits at every position of ids: (T, V)."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)


def eval_batches():
    return token_batches(vocab=9, length=8)


# ---------------------------------------------------------------------------------------------- held-out loss


@given(eval_batches(), seeds)
def test_evaluate_loss_is_the_mean_nll_over_tokens_not_batches(impl, batches, seed):
    model = PositionalBigram(seed=seed)
    nll, count = [], 0
    for x, y in batches:
        lp = torch.log_softmax(model(x).detach(), -1)
        counted = y != -100
        nll.append(-lp.gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)[counted])
        count += int(counted.sum())
    expected = torch.cat(nll).mean().item()
    loss, tokens = impl.evaluate.evaluate_loss(model, iter(batches))
    assert tokens == count, f"evaluate_loss must count the {count} targets that are not -100, got {tokens}"
    assert math.isclose(loss, expected, rel_tol=1e-9), (
        f"evaluate_loss must be the mean negative log-likelihood over all {count} counted tokens ({expected}), not "
        f"a mean of per-batch means; got {loss}")


def test_evaluation_leaves_the_model_as_it_was(impl):
    model = PositionalBigram()
    batches = [(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))]
    for mode in (True, False):
        model.train(mode)
        impl.evaluate.evaluate_loss(model, batches)
        impl.evaluate.continuation_logprob(model, [1, 2], [3])
        assert model.training == mode, f"evaluation must put the model back in {'train' if mode else 'eval'} mode"
        assert all(p.grad is None for p in model.parameters()), "evaluation must not compute or keep gradients"


@given(st.floats(0.0, 20.0))
def test_perplexity_is_exp_of_the_mean_nll(impl, nll):
    got = impl.evaluate.perplexity(nll)
    assert math.isclose(got, math.exp(nll), rel_tol=1e-12), f"perplexity({nll}) must be exp({nll}) = {math.exp(nll)}"


@given(st.floats(0.0, 12.0), st.integers(1, 10**6), st.integers(1, 10**7))
def test_bits_per_byte_is_the_total_nll_in_bits_over_the_bytes(impl, nll, tokens, n_bytes):
    expected = nll * tokens / math.log(2) / n_bytes
    got = impl.evaluate.bits_per_byte(nll, tokens, n_bytes)
    assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-300), (
        f"bits_per_byte({nll}, {tokens} tokens, {n_bytes} bytes) must be {tokens}·{nll}/ln 2 / {n_bytes} = {expected}")


def test_bits_per_byte_does_not_depend_on_the_tokenizer(impl):
    text_bytes = 6000
    # A model that knows nothing, over single bytes (256 tokens, one per byte) and over byte pairs (65536 tokens,
    # one per two bytes): both spend exactly 8 bits per byte.
    one = impl.evaluate.bits_per_byte(math.log(256), text_bytes, text_bytes)
    two = impl.evaluate.bits_per_byte(math.log(65536), text_bytes // 2, text_bytes)
    for got, what in ((one, "256 single-byte tokens"), (two, "65536 two-byte tokens")):
        assert math.isclose(got, 8.0, rel_tol=1e-12), (
            f"a uniform model over {what} must score 8 bits per byte, got {got}")


# ---------------------------------------------------------------------------------------------- multiple choice


tokens = st.lists(st.integers(0, 8), min_size=1, max_size=4)


@given(tokens, tokens, seeds)
def test_continuation_logprob_is_the_chain_rule_sum(impl, context, continuation, seed):
    model = PositionalBigram(seed=seed)
    expected = 0.0
    for j, token in enumerate(continuation):  # the definition: each token predicted from everything before it
        expected += log_probs64(model, context + continuation[:j])[-1, token].item()
    got = impl.evaluate.continuation_logprob(model, context, continuation)
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9), (
        f"log p({continuation} | {context}) must be Σ_j log p(c_j | context, c_<j) = {expected}, each token scored "
        f"by the logits one position before it; got {got}")


@given(tokens, seeds)
def test_single_token_continuations_have_probabilities_summing_to_one(impl, context, seed):
    model = PositionalBigram(seed=seed)
    total = sum(math.exp(impl.evaluate.continuation_logprob(model, context, [token])) for token in range(9))
    assert math.isclose(total, 1.0, rel_tol=1e-9), (
        f"p(c | context) over every single-token continuation c must sum to 1, got {total}: use log-probabilities "
        "(log_softmax), not raw logits")


@given(st.lists(st.integers(0, 8), min_size=2, max_size=12), tokens, seeds, st.data())
def test_continuation_logprob_crops_the_context_from_the_left(impl, context, continuation, seed, data):
    model = PositionalBigram(seed=seed)  # a context of 8 positions
    context_length = data.draw(st.none() | st.integers(len(continuation) + 1, 8), label="context_length")
    window = context_length or 8
    ids = (context + continuation)[-window:]
    start = len(ids) - len(continuation)
    lp = log_probs64(model, ids)
    expected = sum(lp[start - 1 + j, token].item() for j, token in enumerate(continuation))
    got = impl.evaluate.continuation_logprob(model, context, continuation, context_length=context_length)
    as_given = "the model's max_seq_len = 8" if context_length is None else f"context_length={context_length}"
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9), (
        f"with {len(context)} + {len(continuation)} tokens and {as_given}, the model must see the last {window} "
        f"tokens: the context is cropped from the left (its end, next to the continuation, stays): expected "
        f"{expected}, got {got}")


def test_rejects_a_continuation_that_does_not_fit_and_an_empty_context(impl):
    model = PositionalBigram()  # a context of 8 positions
    logprob = impl.evaluate.continuation_logprob
    assert_rejects(lambda: logprob(model, [1, 2], [3] * 8), 8,
                   what="a continuation of 8 tokens for a model with a context of 8: the first needs a token before it")
    assert_rejects(lambda: logprob(model, [1, 2], [3] * 5, context_length=5), 5,
                   what="a continuation of 5 tokens with context_length=5")
    assert_rejects(lambda: logprob(model, [], [3, 4]), "empty",
                   what="an empty context: the first continuation token has nothing to be predicted from")


@given(tokens, st.lists(tokens, min_size=2, max_size=4), seeds)
def test_score_choices_scores_each_choice_by_its_log_likelihood(impl, context, choices, seed):
    model = PositionalBigram(seed=seed)
    got = impl.evaluate.score_choices(model, context, choices)
    expected = [impl.evaluate.continuation_logprob(model, context, choice) for choice in choices]
    assert len(got) == len(choices), f"score_choices must return one score per choice, got {len(got)}"
    for g, e, choice in zip(got, expected, choices):
        assert math.isclose(g, e, rel_tol=1e-9, abs_tol=1e-12), (
            f"the score of choice {choice} must be its log-likelihood given the context ({e}), got {g}")


class CharTokenizer:
    """One token per character of a small alphabet whose characters take 1, 2 or 3 bytes in UTF-8: the number of
    tokens of a choice is not its length in bytes."""

    ALPHABET = "ab é€"

    def encode(self, text):
        return [self.ALPHABET.index(c) for c in text]


@given(seeds, st.data())
def test_multiple_choice_accuracy_picks_the_likeliest_choice(impl, seed, data):
    model = PositionalBigram(vocab=len(CharTokenizer.ALPHABET), max_seq_len=32, seed=seed)
    tokenizer = CharTokenizer()
    words = st.text(alphabet=CharTokenizer.ALPHABET, min_size=1, max_size=8)
    tasks = []
    for _ in range(6):
        context = data.draw(words)
        choices = data.draw(st.lists(words, min_size=2, max_size=4, unique=True))
        scores = [sum(log_probs64(model, tokenizer.encode(context + choice[:j]))[-1, tokenizer.encode(choice[j])[0]]
                      .item() for j in range(len(choice))) for choice in choices]
        normalised = [s / len(c.encode("utf-8")) for s, c in zip(scores, choices)]
        best = max(range(len(scores)), key=scores.__getitem__)
        best_norm = max(range(len(scores)), key=normalised.__getitem__)
        tasks.append(({"context": context, "choices": choices}, best, best_norm))
    by_score = [{**task, "label": best} for task, best, _ in tasks]
    by_norm = [{**task, "label": best_norm} for task, _, best_norm in tasks]
    agree = sum(best == best_norm for _, best, best_norm in tasks) / len(tasks)
    result = impl.evaluate.multiple_choice_accuracy(model, tokenizer, by_score)
    assert result["n"] == 6, f"multiple_choice_accuracy must report n = 6 tasks, got {result['n']}"
    assert result["accuracy"] == 1.0, (
        f"when every label is the choice of highest log-likelihood, accuracy must be 1, got {result['accuracy']}")
    assert math.isclose(result["accuracy_norm"], agree), (
        f"accuracy_norm divides each log-likelihood by the choice's length in UTF-8 bytes (not tokens): it must be "
        f"{agree} here, got {result['accuracy_norm']}")
    result = impl.evaluate.multiple_choice_accuracy(model, tokenizer, by_norm)
    assert result["accuracy_norm"] == 1.0, (
        "when every label is the choice of highest log-likelihood per UTF-8 byte, accuracy_norm must be 1, got "
        f"{result['accuracy_norm']}")


def test_ties_go_to_the_first_choice(impl):
    model = PositionalBigram(vocab=len(CharTokenizer.ALPHABET), max_seq_len=32)
    tied = {"context": "ab", "choices": [" a", " a"]}  # the same text twice: the same score, per token and per byte
    for label in range(2):
        result = impl.evaluate.multiple_choice_accuracy(model, CharTokenizer(), [{**tied, "label": label}])
        expected = float(label == 0)
        for key in ("accuracy", "accuracy_norm"):
            assert result[key] == expected, (
                f"two choices with equal scores: the first must win, so {key} with label {label} must be {expected}, "
                f"got {result[key]}")


def test_load_choice_tasks_reads_json_lines(impl, tmp_path):
    tasks = [{"context": "The sky is", "choices": [" blue.", " made of cheese."], "label": 0},
             {"context": "2 + 2 =", "choices": [" 3", " 4", " 5"], "label": 1}]
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(tasks[0]) + "\n\n" + json.dumps(tasks[1]) + "\n", encoding="utf-8")
    got = impl.evaluate.load_choice_tasks(path)
    assert [{k: t[k] for k in ("context", "choices", "label")} for t in got] == tasks, (
        f"load_choice_tasks must return each line's context, choices and label, skipping blank lines; got {got}")


def test_rejects_a_malformed_task_file(impl, tmp_path):
    good = json.dumps({"context": "a", "choices": [" b", " c"], "label": 1})
    cases = [
        ("label", json.dumps({"context": "a", "choices": [" b", " c"], "label": 2})),
        ("label", json.dumps({"context": "a", "choices": [" b", " c"], "label": True})),
        ("label", json.dumps({"context": "a", "choices": [" b", " c"], "label": "0"})),
        ("choices", json.dumps({"context": "a", "label": 0})),
        ("choices", json.dumps({"context": "a", "choices": [" b"], "label": 0})),
        ("choices", json.dumps({"context": "a", "choices": " b c", "label": 0})),
        ("context", json.dumps({"context": 3, "choices": [" b", " c"], "label": 0})),
        ("JSON", "{not json"),
    ]
    for number, (word, bad) in enumerate(cases):
        path = tmp_path / f"bad_{number}.jsonl"
        path.write_text(f"{good}\n{good}\n{bad}\n", encoding="utf-8")
        assert_rejects(lambda: impl.evaluate.load_choice_tasks(path), "line 3", word,
                       what=f"a task file whose line 3 has a bad {word}: {bad}")


# ---------------------------------------------------------------------------------------------- edge cases


@given(st.sampled_from(["no batches", "every target ignored"]), seeds)
def test_evaluate_loss_rejects_batches_without_a_counted_target(impl, case, seed):
    model = PositionalBigram(seed=seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(9, (2, 8), generator=generator)
    batches = [] if case == "no batches" else [(x, torch.full_like(x, -100)), (x[:1], torch.full_like(x[:1], -100))]
    assert_rejects(lambda: impl.evaluate.evaluate_loss(model, iter(batches)),
                   what=f"evaluate_loss of {case}: a mean over no targets is 0/0, not a loss")


def test_bits_per_byte_rejects_a_byte_count_that_is_not_positive(impl):
    for n_bytes in (0, -3):
        assert_rejects(lambda: impl.evaluate.bits_per_byte(2.0, 100, n_bytes), n_bytes,
                       what=f"bits_per_byte over n_bytes={n_bytes}: bits per byte needs at least one byte")


@given(tokens, seeds)
def test_an_empty_continuation_has_log_probability_zero(impl, context, seed):
    model = PositionalBigram(seed=seed)
    try:
        got = impl.evaluate.continuation_logprob(model, context, [])
    except NotImplementedError:
        raise
    except Exception as error:
        raise AssertionError(f"an empty continuation must score 0 (it has probability 1: the empty product), not "
                             f"raise {type(error).__name__}: {error}") from None
    assert got == 0.0, f"log p(nothing | {context}) must be 0 (probability 1, the empty product), got {got}"


class WithoutContextLength(nn.Module):
    """A PositionalBigram seen through a wrapper that has no `config`, or a config without max_seq_len."""

    def __init__(self, inner, config):
        super().__init__()
        self.inner = inner
        if config is not None:
            self.config = config

    def forward(self, input_ids):
        return self.inner(input_ids)


@given(st.lists(st.integers(0, 8), min_size=1, max_size=8), st.sampled_from(["no config", "no max_seq_len"]), seeds,
       st.data())
def test_a_model_without_max_seq_len_is_scored_uncropped(impl, ids, case, seed, data):
    split = data.draw(st.integers(1, max(1, len(ids) - 1)), label="split")
    context, continuation = ids[:split], ids[split:]
    inner = PositionalBigram(seed=seed)
    model = WithoutContextLength(inner, None if case == "no config" else SimpleNamespace())
    expected = sum(log_probs64(inner, ids)[split - 1 + j, token].item() for j, token in enumerate(continuation))
    try:
        got = impl.evaluate.continuation_logprob(model, context, continuation)
    except NotImplementedError:
        raise
    except (AttributeError, TypeError) as error:
        raise AssertionError(f"a model with {case} has no context length to crop to: continuation_logprob must score "
                             f"the whole sequence, not raise {type(error).__name__}: {error}") from None
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9), (
        f"a model with {case} (and no context_length given) must be scored on the whole sequence, uncropped: "
        f"expected {expected}, got {got}")


def test_rejects_a_task_line_that_is_not_an_object(impl, tmp_path):
    good = json.dumps({"context": "a", "choices": [" b", " c"], "label": 1})
    for number, bad in enumerate(["3", "null", json.dumps("context choices label")]):
        path = tmp_path / f"bad_{number}.jsonl"
        path.write_text(f"{good}\n{good}\n{bad}\n", encoding="utf-8")
        assert_rejects(lambda: impl.evaluate.load_choice_tasks(path), "line 3",
                       what=f"a task file whose line 3 is JSON but not an object: {bad}")


def test_multiple_choice_accuracy_rejects_no_tasks(impl):
    model = PositionalBigram(vocab=len(CharTokenizer.ALPHABET), max_seq_len=32)
    assert_rejects(lambda: impl.evaluate.multiple_choice_accuracy(model, CharTokenizer(), []),
                   what="multiple_choice_accuracy of no tasks: an accuracy over nothing is 0/0")
