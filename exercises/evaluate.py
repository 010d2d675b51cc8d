# Generated from reference/evaluate.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Evaluation: how well a language model predicts held-out text, and how often it picks the right answer.

Held-out loss. Over N target tokens with probabilities p_i under the model, the mean negative log-likelihood is
L = −(1/N) Σ log p_i (nats per token), and

    perplexity      = exp(L)                        "as unsure as a uniform choice among exp(L) tokens"
    bits per byte   = N · L / (B · ln 2)            B = the number of UTF-8 bytes of the text the N tokens spell

Loss and perplexity depend on the tokenizer (a tokenizer with longer tokens has fewer, harder predictions), so
models with different tokenizers cannot be compared by them. Bits per byte can: it is the total code length the
model would need to compress the text, divided by the text's length in bytes, whatever the tokens were.
A model that knows nothing (uniform over 256 byte values) scores exactly 8 bits per byte.

Multiple choice (HellaSwag-style). A task is a context and a few candidate continuations, one right. The model
scores each continuation c by its log-likelihood given the context, log p(c | context) = Σ_j log p(c_j | context,
c_<j), and picks the highest: `accuracy`. Longer continuations collect more negative terms, so `accuracy_norm`
divides each score by the continuation's length in UTF-8 bytes first. Tasks are JSON Lines, one per line:

    {"context": "The capital of France is", "choices": [" Paris.", " a river."], "label": 0}

Continuations are tokenized on their own and appended to the context's tokens, so a choice should start with the
space that separates it from the context.

Left out: generation-based benchmarks (exact match on sampled answers), few-shot prompting, calibration, and
evaluation across several processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100  # targets that do not count, as in the data and train chapters


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """No gradients, and the model in eval mode for the duration (its mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def evaluate_loss(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, int]:
    """(mean negative log-likelihood per counted target, number of counted targets) over all `batches`.

    Each batch is (x, y) as the data chapter makes them, y = the next tokens, IGNORE_INDEX (-100) where a position
    does not count. The mean is over tokens, not batches: a short last batch weighs as many tokens as it has.
    The sum is kept in float64, so millions of tokens add up without losing digits.
    """
    raise NotImplementedError('`evaluate.evaluate_loss` is not implemented yet — chapter 10 (evaluate): see '
                              'test_evaluate_loss_is_the_mean_nll_over_tokens_not_batches and 2 more in '
                              'spec/test_evaluate.py.')


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood in nats).  Example: perplexity(math.log(50)) -> 50.0"""
    raise NotImplementedError('`evaluate.perplexity` is not implemented yet — chapter 10 (evaluate): see '
                              'test_perplexity_is_exp_of_the_mean_nll in spec/test_evaluate.py.')


def bits_per_byte(mean_nll: float, n_tokens: int, n_bytes: int) -> float:
    """The total negative log-likelihood in bits, n_tokens · mean_nll / ln 2, divided by the n_bytes it encodes.

    Example: a uniform model over 256 single-byte tokens: bits_per_byte(math.log(256), 1000, 1000) -> 8.0
    """
    raise NotImplementedError('`evaluate.bits_per_byte` is not implemented yet — chapter 10 (evaluate): see '
                              'test_bits_per_byte_is_the_total_nll_in_bits_over_the_bytes and 2 more in '
                              'spec/test_evaluate.py.')


def continuation_logprob(model: nn.Module, context: Sequence[int], continuation: Sequence[int],
                         context_length: int | None = None) -> float:
    """log p(continuation | context) = Σ_j log p(continuation_j | context, continuation_<j), in nats.

    One forward pass over context + continuation: the logits at position t predict token t + 1, so the
    continuation's tokens are scored by the logits one position before each of them (the first by the context's
    last position). The context must not be empty. If the whole does not fit the model's context_length (default
    model.config.max_seq_len), the context is cropped from the left; a continuation that alone does not fit is a
    ValueError.
    """
    raise NotImplementedError('`evaluate.continuation_logprob` is not implemented yet — chapter 10 (evaluate): see '
                              'test_evaluation_leaves_the_model_as_it_was and 7 more in spec/test_evaluate.py.')


def score_choices(model: nn.Module, context: Sequence[int], choices: Sequence[Sequence[int]]) -> list[float]:
    """[continuation_logprob(model, context, choice) for each choice]: the log-likelihood of each candidate."""
    raise NotImplementedError('`evaluate.score_choices` is not implemented yet — chapter 10 (evaluate): see '
                              'test_score_choices_scores_each_choice_by_its_log_likelihood in spec/test_evaluate.py.')


def load_choice_tasks(path) -> list[dict]:
    """Read a multiple-choice file: JSON Lines of {"context": str, "choices": [str, ...], "label": int}.

    Blank lines are skipped. A malformed line is a ValueError that names the file, the line number and the field:
    a missing key, a context that is not a string, fewer than two choices, a label outside 0..len(choices) − 1.
    """
    raise NotImplementedError('`evaluate.load_choice_tasks` is not implemented yet — chapter 10 (evaluate): see '
                              'test_load_choice_tasks_reads_json_lines, test_rejects_a_malformed_task_file and 1 more '
                              'in spec/test_evaluate.py.')


def multiple_choice_accuracy(model: nn.Module, tokenizer, tasks: Sequence[dict]) -> dict:
    """Score every task; return {"accuracy", "accuracy_norm", "n"}.

    accuracy: how often the choice with the highest log-likelihood is the label; accuracy_norm: the same with
    each log-likelihood divided by the choice's length in UTF-8 bytes. Ties go to the first choice. The tokenizer
    needs encode(str) -> list[int].
    """
    raise NotImplementedError('`evaluate.multiple_choice_accuracy` is not implemented yet — chapter 10 (evaluate): '
                              'see test_multiple_choice_accuracy_picks_the_likeliest_choice and 2 more in '
                              'spec/test_evaluate.py.')
