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
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

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
    # BEGIN SOLUTION
    total, count = 0.0, 0
    with _evaluating(model):
        for x, y in batches:
            logits = model(x).double()  # (B, T, V)
            counted = y != IGNORE_INDEX  # (B, T)
            log_probs = torch.log_softmax(logits, dim=-1)
            picked = log_probs.gather(-1, torch.where(counted, y, 0)[..., None]).squeeze(-1)  # (B, T)
            total -= float(picked[counted].sum())
            count += int(counted.sum())
    if count == 0:
        raise ValueError("there are no targets to evaluate: the batches are empty or every target is ignored")
    return total / count, count
    # END SOLUTION


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood in nats).  Example: perplexity(math.log(50)) -> 50.0"""
    # BEGIN SOLUTION
    return math.exp(mean_nll)
    # END SOLUTION


def bits_per_byte(mean_nll: float, n_tokens: int, n_bytes: int) -> float:
    """The total negative log-likelihood in bits, n_tokens · mean_nll / ln 2, divided by the n_bytes it encodes.

    Example: a uniform model over 256 single-byte tokens: bits_per_byte(math.log(256), 1000, 1000) -> 8.0
    """
    # BEGIN SOLUTION
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return mean_nll * n_tokens / (n_bytes * math.log(2))
    # END SOLUTION


def continuation_logprob(model: nn.Module, context: Sequence[int], continuation: Sequence[int],
                         context_length: int | None = None) -> float:
    """log p(continuation | context) = Σ_j log p(continuation_j | context, continuation_<j), in nats.

    One forward pass over context + continuation: the logits at position t predict token t + 1, so the
    continuation's tokens are scored by the logits one position before each of them (the first by the context's
    last position). The context must not be empty. If the whole does not fit the model's context_length (default
    model.config.max_seq_len), the context is cropped from the left; a continuation that alone does not fit is a
    ValueError.
    """
    # BEGIN SOLUTION
    context, continuation = list(context), list(continuation)
    if not context:
        raise ValueError("the context is empty: the first continuation token needs something to be predicted from")
    if not continuation:
        return 0.0
    if context_length is None:
        context_length = getattr(getattr(model, "config", None), "max_seq_len", None)
    ids = context + continuation
    if context_length is not None:
        if len(continuation) + 1 > context_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens (plus one token of context) does not "
                             f"fit a context of {context_length}")
        ids = ids[-context_length:]  # crop the context from the left
    device = next(model.parameters()).device
    with _evaluating(model):
        logits = model(torch.tensor([ids], device=device))[0].double()  # (T, V)
    log_probs = torch.log_softmax(logits[-len(continuation) - 1:-1], dim=-1)  # (n, V): predictions of each token
    targets = torch.tensor(continuation, device=log_probs.device)
    return float(log_probs.gather(-1, targets[:, None]).sum())
    # END SOLUTION


def score_choices(model: nn.Module, context: Sequence[int], choices: Sequence[Sequence[int]]) -> list[float]:
    """[continuation_logprob(model, context, choice) for each choice]: the log-likelihood of each candidate."""
    # BEGIN SOLUTION
    return [continuation_logprob(model, context, choice) for choice in choices]
    # END SOLUTION


def load_choice_tasks(path) -> list[dict]:
    """Read a multiple-choice file: JSON Lines of {"context": str, "choices": [str, ...], "label": int}.

    Blank lines are skipped. A malformed line is a ValueError that names the file, the line number and the field:
    a missing key, a context that is not a string, fewer than two choices, a label outside 0..len(choices) − 1.
    """
    # BEGIN SOLUTION
    tasks = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            task = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error})") from None
        if not isinstance(task, dict):
            raise ValueError(f"{where}: expected an object with context, choices and label")
        missing = [key for key in ("context", "choices", "label") if key not in task]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        context, choices, label = task["context"], task["choices"], task["label"]
        if not isinstance(context, str):
            raise ValueError(f"{where}: context must be a string, got {type(context).__name__}")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: choices must be a list of at least two strings")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise ValueError(f"{where}: label must be an index into the {len(choices)} choices, got {label!r}")
        tasks.append({"context": context, "choices": choices, "label": label})
    return tasks
    # END SOLUTION


def multiple_choice_accuracy(model: nn.Module, tokenizer, tasks: Sequence[dict]) -> dict:
    """Score every task; return {"accuracy", "accuracy_norm", "n"}.

    accuracy: how often the choice with the highest log-likelihood is the label; accuracy_norm: the same with
    each log-likelihood divided by the choice's length in UTF-8 bytes. Ties go to the first choice. The tokenizer
    needs encode(str) -> list[int].
    """
    # BEGIN SOLUTION
    if not tasks:
        raise ValueError("there are no tasks to score")
    right = right_norm = 0
    for task in tasks:
        scores = score_choices(model, tokenizer.encode(task["context"]),
                               [tokenizer.encode(choice) for choice in task["choices"]])
        normalised = [score / max(1, len(choice.encode("utf-8"))) for score, choice in zip(scores, task["choices"])]
        right += max(range(len(scores)), key=scores.__getitem__) == task["label"]
        right_norm += max(range(len(normalised)), key=normalised.__getitem__) == task["label"]
    return {"accuracy": right / len(tasks), "accuracy_norm": right_norm / len(tasks), "n": len(tasks)}
    # END SOLUTION
