"""Wrong implementations of the evaluate chapter that a learner could plausibly write."""

import json
import math
from pathlib import Path

import torch

import llmkata.reference.evaluate as ref

from . import mutant


@mutant("evaluate.evaluate_loss", "test_evaluate_loss_is_the_mean_nll_over_tokens_not_batches",
        why="averages per-batch means")
def loss_as_a_mean_of_batch_means(model, batches):
    means, count = [], 0
    for x, y in batches:
        loss, tokens = ref.evaluate_loss(model, [(x, y)])
        means.append(loss)
        count += tokens
    return sum(means) / len(means), count


@mutant("evaluate.evaluate_loss", "test_evaluate_loss_is_the_mean_nll_over_tokens_not_batches",
        why="counts ignored positions")
def loss_counting_ignored_positions(model, batches):
    batches = list(batches)
    loss, count = ref.evaluate_loss(model, batches)
    everything = sum(y.numel() for _, y in batches)
    return loss * count / everything, everything


@mutant("evaluate.evaluate_loss", "test_evaluation_leaves_the_model_as_it_was",
        why="switches to eval mode and never back")
def loss_leaving_the_model_in_eval_mode(model, batches):
    result = ref.evaluate_loss(model, batches)
    model.eval()
    return result


@mutant("evaluate.evaluate_loss", "test_evaluation_leaves_the_model_as_it_was",
        why="runs backward, leaving gradients in the model")
def loss_with_gradients(model, batches):
    total, count = 0.0, 0
    for x, y in batches:
        logits = model(x)
        counted = y != -100
        nll = -torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0)[..., None]).squeeze(-1)[counted].sum()
        nll.backward()  # "to check the graph": leaves gradients behind
        total += nll.item()
        count += int(counted.sum())
    return total / count, count


@mutant("evaluate.perplexity", "test_perplexity_is_exp_of_the_mean_nll", why="2 ** loss with a loss in nats")
def perplexity_base_two(mean_nll):
    return 2.0**mean_nll


@mutant("evaluate.bits_per_byte", "test_bits_per_byte_is_the_total_nll_in_bits_over_the_bytes",
        "test_bits_per_byte_does_not_depend_on_the_tokenizer",
        why="divides the per-token loss by the bytes, forgetting the token count")
def bits_per_byte_per_token(mean_nll, n_tokens, n_bytes):
    """Forgets the token count: the mean loss in bits, divided by bytes."""
    return mean_nll / math.log(2) / n_bytes * min(n_tokens, 1)


@mutant("evaluate.bits_per_byte", "test_bits_per_byte_is_the_total_nll_in_bits_over_the_bytes",
        "test_bits_per_byte_does_not_depend_on_the_tokenizer",
        why="nats per byte")
def bits_per_byte_in_nats(mean_nll, n_tokens, n_bytes):
    return mean_nll * n_tokens / n_bytes


@mutant("evaluate.continuation_logprob", "test_continuation_logprob_is_the_chain_rule_sum",
        why="scores each token with the logits at its own position")
def logprob_off_by_one(model, context, continuation, context_length=None):
    """Scores each token by the logits at its own position instead of the one before."""
    ids = list(context) + list(continuation)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
    n = len(continuation)
    return float(lp[-n:].gather(-1, torch.tensor(continuation)[:, None]).sum())


@mutant("evaluate.continuation_logprob", "test_single_token_continuations_have_probabilities_summing_to_one",
        why="sums logits, not log-probabilities")
def logprob_of_logits(model, context, continuation, context_length=None):
    """Sums raw logits instead of log-probabilities."""
    ids = list(context) + list(continuation)
    with torch.no_grad():
        z = model(torch.tensor([ids]))[0].double()
    n = len(continuation)
    return float(z[-n - 1:-1].gather(-1, torch.tensor(continuation)[:, None]).sum())


@mutant("evaluate.continuation_logprob", "test_continuation_logprob_crops_the_context_from_the_left",
        why="crops the end instead of the start")
def logprob_cropping_the_continuation(model, context, continuation, context_length=None):
    """Crops from the right: the end of the continuation is lost."""
    limit = model.config.max_seq_len
    ids = (list(context) + list(continuation))[:limit]
    kept = ids[len(context):]
    if not kept:
        return 0.0
    return ref.continuation_logprob(model, context[:limit], kept, context_length)


@mutant("evaluate.continuation_logprob", "test_continuation_logprob_crops_the_context_from_the_left", why="never crops")
def logprob_not_cropping(model, context, continuation, context_length=None):
    return ref.continuation_logprob(model, context, continuation, context_length=10**9)


@mutant("evaluate.continuation_logprob", "test_continuation_logprob_is_the_chain_rule_sum",
        why="scores only the last token")
def logprob_of_the_last_token_only(model, context, continuation, context_length=None):
    return ref.continuation_logprob(model, list(context) + list(continuation[:-1]), continuation[-1:], context_length)


@mutant("evaluate.score_choices", "test_score_choices_scores_each_choice_by_its_log_likelihood",
        why="divides by the token count")
def scores_normalised_by_tokens(model, context, choices):
    return [ref.continuation_logprob(model, context, c) / max(1, len(c)) for c in choices]


@mutant("evaluate.multiple_choice_accuracy", "test_multiple_choice_accuracy_picks_the_likeliest_choice",
        why="normalises by the token count, not the byte length")
def accuracy_normalising_by_tokens(model, tokenizer, tasks):
    right = right_norm = 0
    for task in tasks:
        encoded = [tokenizer.encode(c) for c in task["choices"]]
        scores = ref.score_choices(model, tokenizer.encode(task["context"]), encoded)
        normalised = [s / max(1, len(e)) for s, e in zip(scores, encoded)]
        right += max(range(len(scores)), key=scores.__getitem__) == task["label"]
        right_norm += max(range(len(scores)), key=normalised.__getitem__) == task["label"]
    return {"accuracy": right / len(tasks), "accuracy_norm": right_norm / len(tasks), "n": len(tasks)}


@mutant("evaluate.multiple_choice_accuracy", "test_multiple_choice_accuracy_picks_the_likeliest_choice",
        why="argmin instead of argmax")
def accuracy_picking_the_least_likely(model, tokenizer, tasks):
    right = 0
    for task in tasks:
        scores = ref.score_choices(model, tokenizer.encode(task["context"]),
                                   [tokenizer.encode(c) for c in task["choices"]])
        right += min(range(len(scores)), key=scores.__getitem__) == task["label"]
    result = ref.multiple_choice_accuracy(model, tokenizer, tasks)
    return {**result, "accuracy": right / len(tasks)}


@mutant("evaluate.load_choice_tasks", "test_rejects_a_malformed_task_file", why="accepts malformed lines silently")
def load_tasks_without_checks(path):
    tasks = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                tasks.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return tasks


@mutant("evaluate.load_choice_tasks", "test_load_choice_tasks_reads_json_lines",
        why="turns blank lines into empty tasks")
def load_tasks_keeping_blank_lines(path):
    tasks = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        tasks.append(json.loads(line) if line.strip() else {"context": "", "choices": ["", ""], "label": 0})
    return tasks


@mutant("evaluate.continuation_logprob", "test_continuation_logprob_crops_the_context_from_the_left",
        why="ignores context_length: crops to the model's max_seq_len only")
def logprob_ignoring_context_length(model, context, continuation, context_length=None):
    return ref.continuation_logprob(model, context, continuation)


@mutant("evaluate.continuation_logprob", "test_rejects_a_continuation_that_does_not_fit_and_an_empty_context",
        why="crops a continuation that does not fit instead of refusing it: its first tokens are silently not scored")
def logprob_cropping_a_long_continuation(model, context, continuation, context_length=None):
    limit = context_length or model.config.max_seq_len
    return ref.continuation_logprob(model, context, list(continuation)[-(limit - 1):], context_length)


@mutant("evaluate.continuation_logprob", "test_rejects_a_continuation_that_does_not_fit_and_an_empty_context",
        why="an empty context starts from token 0 silently")
def logprob_of_an_empty_context_from_token_zero(model, context, continuation, context_length=None):
    return ref.continuation_logprob(model, list(context) or [0], continuation, context_length)


@mutant("evaluate.multiple_choice_accuracy", "test_ties_go_to_the_first_choice",
        why="keeps the later of two equal scores (>= in the running maximum)")
def accuracy_giving_ties_to_the_last(model, tokenizer, tasks):
    right = right_norm = 0
    for task in tasks:
        scores = ref.score_choices(model, tokenizer.encode(task["context"]),
                                   [tokenizer.encode(c) for c in task["choices"]])
        normalised = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(scores, task["choices"])]
        for values, hits in ((scores, "right"), (normalised, "right_norm")):
            best = 0
            for i, value in enumerate(values):
                if value >= values[best]:
                    best = i
            if hits == "right":
                right += best == task["label"]
            else:
                right_norm += best == task["label"]
    return {"accuracy": right / len(tasks), "accuracy_norm": right_norm / len(tasks), "n": len(tasks)}


@mutant("evaluate.load_choice_tasks", "test_rejects_a_malformed_task_file",
        why="checks the keys and the label's range, not the types: a bool label, one choice or a number as context "
            "pass")
def load_tasks_checking_only_keys_and_range(path):
    tasks = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
        missing = [key for key in ("context", "choices", "label") if key not in task]
        if missing:
            raise ValueError(f"{path}, line {number}: missing {', '.join(missing)}")
        if isinstance(task["label"], int) and not 0 <= task["label"] < len(task["choices"]):
            raise ValueError(f"{path}, line {number}: label {task['label']} is not an index into the choices")
        tasks.append(task)
    return tasks


# ---------------------------------------------------------------------------------------------- edge cases


@mutant("evaluate.evaluate_loss", "test_evaluate_loss_rejects_batches_without_a_counted_target",
        why="an average over no targets comes back as 0: an empty validation set looks perfect")
def loss_of_nothing_is_zero(model, batches):
    batches = list(batches)
    if sum(int((y != -100).sum()) for _, y in batches) == 0:
        return 0.0, 0
    return ref.evaluate_loss(model, batches)


@mutant("evaluate.bits_per_byte", "test_bits_per_byte_rejects_a_byte_count_that_is_not_positive",
        why="checks n_bytes < 0 only: 0 bytes divides by zero")
def bits_per_byte_checking_only_negative_counts(mean_nll, n_tokens, n_bytes):
    if n_bytes < 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return mean_nll * n_tokens / (n_bytes * math.log(2))


@mutant("evaluate.continuation_logprob", "test_an_empty_continuation_has_log_probability_zero",
        why="refuses an empty continuation like an empty context")
def logprob_refusing_an_empty_continuation(model, context, continuation, context_length=None):
    if not list(continuation):
        raise ValueError("the continuation is empty")
    return ref.continuation_logprob(model, context, continuation, context_length)


@mutant("evaluate.continuation_logprob", "test_a_model_without_max_seq_len_is_scored_uncropped",
        why="reads model.config.max_seq_len without asking whether the model has one")
def logprob_requiring_a_config(model, context, continuation, context_length=None):
    if context_length is None:
        context_length = model.config.max_seq_len
    return ref.continuation_logprob(model, context, continuation, context_length)


@mutant("evaluate.load_choice_tasks", "test_rejects_a_task_line_that_is_not_an_object",
        why="looks the keys up without checking that the line is an object")
def load_tasks_assuming_objects(path):
    tasks = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        task = json.loads(line)
        missing = [key for key in ("context", "choices", "label") if key not in task]
        if missing:
            raise ValueError(f"{path}, line {number}: missing {', '.join(missing)}")
        tasks.append({"context": task["context"], "choices": task["choices"], "label": task["label"]})
    return tasks


@mutant("evaluate.multiple_choice_accuracy", "test_multiple_choice_accuracy_rejects_no_tasks",
        why="no tasks score an accuracy of 0")
def accuracy_of_no_tasks_is_zero(model, tokenizer, tasks):
    if not tasks:
        return {"accuracy": 0.0, "accuracy_norm": 0.0, "n": 0}
    return ref.multiple_choice_accuracy(model, tokenizer, tasks)
