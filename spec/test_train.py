"""Chapter 8 — train: cross-entropy, gradient clipping, AdamW, the learning-rate schedule, one training step with
gradient accumulation, and checkpoints that resume exactly.

Each piece is checked against its definition computed in float64 (cross-entropy, the schedule), against torch's
own implementation over many steps (AdamW), and against the properties training relies on: a clip that keeps the
direction, accumulation that equals one large batch, a NaN that stops a step instead of spreading, and a resumed
run that continues with the same bits as one that never stopped.
"""

import copy
import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from .checks import assert_rejects
from .strategies import tensors, token_batches
from .tolerances import assert_close

# Seeds from a short range: a failing example shrinks in a few steps (the full 32-bit range takes dozens).
seeds = st.integers(0, 255)


# ---------------------------------------------------------------------------------------------- cross-entropy


def nll64(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """The definition in float64: mean over counted positions of logsumexp(z) − z[y]."""
    z = logits.double().reshape(-1, logits.shape[-1])
    y = targets.reshape(-1)
    keep = y != ignore_index
    z, y = z[keep], y[keep]
    return (torch.logsumexp(z, -1) - z.gather(-1, y[:, None]).squeeze(-1)).mean()


@st.composite
def logits_and_targets(draw, scale=3.0, max_vocab=12):
    """logits (*lead, V) and targets (*lead) with ids in [0, V)."""
    lead = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
    vocab = draw(st.integers(1, max_vocab))
    logits = draw(tensors(shape=(*lead, vocab), scale=scale))
    generator = torch.Generator().manual_seed(draw(seeds))
    return logits, torch.randint(vocab, lead, generator=generator)


@given(logits_and_targets())
def test_cross_entropy_equals_minus_log_softmax_at_the_target(impl, case):
    logits, targets = case
    loss = impl.train.cross_entropy(logits, targets)
    assert loss.dim() == 0, f"cross_entropy must return a scalar, got shape {tuple(loss.shape)}"
    assert_close(loss, nll64(logits, targets), "cross_entropy must equal the mean over positions of "
                 "−log softmax(logits)[target]", scale=10)


@given(logits_and_targets(), seeds)
def test_cross_entropy_is_invariant_to_adding_a_constant_per_row(impl, case, seed):
    logits, targets = case
    generator = torch.Generator().manual_seed(seed)
    shift = (torch.rand(*logits.shape[:-1], 1, generator=generator) - 0.5) * 200  # one constant per row, |c| <= 100
    assert_close(impl.train.cross_entropy(logits + shift, targets), impl.train.cross_entropy(logits, targets),
                 "adding a constant to every logit of a row must not change the loss", scale=100)


@given(st.integers(1, 1000), st.integers(1, 20), st.floats(-50, 50))
def test_cross_entropy_of_uniform_logits_is_log_of_the_vocabulary_size(impl, vocab, n, value):
    logits = torch.full((n, vocab), value)
    targets = torch.arange(n) % vocab
    loss = impl.train.cross_entropy(logits, targets)
    assert_close(loss, torch.tensor(math.log(vocab), dtype=loss.dtype),
                 f"equal logits over {vocab} tokens give each token probability 1/{vocab}: the loss must be "
                 f"log {vocab}",
                 scale=10)


@given(logits_and_targets(scale=1.0), st.sampled_from([1e4, -1e4, 3e4]))
def test_cross_entropy_is_finite_at_logits_of_1e4(impl, case, big):
    logits, targets = case
    logits = torch.cat([logits + big, logits * big])  # all logits far from 0, and logits far from each other
    targets = torch.cat([targets, targets])
    loss = impl.train.cross_entropy(logits, targets)
    assert torch.isfinite(loss), f"cross_entropy must stay finite at logits of {big} in float32 (subtract the max)"
    assert_close(loss, nll64(logits, targets), f"cross_entropy at logits of {big} must still equal its definition",
                 scale=10)


@given(logits_and_targets(), seeds, st.sampled_from(["-100", "-1", "the last id"]))
def test_cross_entropy_leaves_out_ignored_targets(impl, case, seed, which):
    logits, targets = case
    vocab = logits.shape[-1]
    ignore_index = vocab - 1 if which == "the last id" else int(which)
    generator = torch.Generator().manual_seed(seed)
    ignored = torch.rand(targets.shape, generator=generator) < 0.4
    ignored.view(-1)[0] = False  # at least one target counts
    if ignore_index >= 0:  # an ignore_index inside the vocabulary: only the positions marked are ignored
        targets = torch.where(targets == ignore_index, 0, targets)
        if vocab == 1:
            ignored[:] = False
            ignore_index = -100
    targets = torch.where(ignored, ignore_index, targets)
    loss = impl.train.cross_entropy(logits, targets, ignore_index=ignore_index)
    assert_close(loss, nll64(logits, targets, ignore_index),
                 f"targets equal to ignore_index={ignore_index} must be left out of the sum and of the count",
                 scale=10)


@given(logits_and_targets(), seeds)
def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n(impl, case, seed):
    logits, targets = case
    targets = targets.clone()
    targets.view(-1)[torch.randperm(targets.numel(), generator=torch.Generator().manual_seed(seed))[:1]] = -100
    if (targets != -100).sum() == 0:
        targets.view(-1)[0] = 0
    z = logits.double().requires_grad_()
    impl.train.cross_entropy(z, targets).backward()
    counted = (targets != -100)
    one_hot = torch.zeros_like(z)
    one_hot[counted] = nn.functional.one_hot(targets[counted], z.shape[-1]).double()
    expected = (torch.softmax(z.detach(), -1) - one_hot) * counted[..., None] / counted.sum()
    assert_close(z.grad, expected, "d loss / d logits must be (softmax − one-hot(target)) / N, and 0 on ignored "
                 "positions", scale=10)


@given(logits_and_targets(), seeds, st.sampled_from([-100, -1]), st.sampled_from([-3.0, 0.5]))
def test_cross_entropy_gradient_equals_autograd_of_the_definition_times_the_upstream_gradient(
        impl, case, seed, ignore_index, upstream):
    logits, targets = case
    generator = torch.Generator().manual_seed(seed)
    ignored = torch.rand(targets.shape, generator=generator) < 0.4
    ignored.view(-1)[0] = False  # at least one target counts
    targets = torch.where(ignored, ignore_index, targets)
    z = logits.double().requires_grad_()
    (impl.train.cross_entropy(z, targets, ignore_index=ignore_index) * upstream).backward()
    z64 = logits.double().requires_grad_()
    (nll64(z64, targets, ignore_index) * upstream).backward()
    assert_close(z.grad, z64.grad, f"the gradient of {upstream} · cross_entropy must be {upstream} times that of "
                 "the definition (a backward multiplies by the gradient flowing in), and 0 at targets equal to "
                 f"ignore_index={ignore_index}", scale=10)


@st.composite
def bfloat16_logits_and_targets(draw):
    """bfloat16 logits (N, V), up to 512 rows, and targets with some ignored (-100)."""
    rows, vocab = draw(st.integers(1, 512)), draw(st.integers(2, 64))
    logits = draw(tensors(shape=(rows, vocab), scale=3.0)).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(draw(seeds))
    targets = torch.randint(vocab, (rows,), generator=generator)
    targets[torch.rand(rows, generator=generator) < draw(st.sampled_from([0.0, 0.3]))] = -100
    targets[0] = 0  # at least one target counts
    return logits, targets


@given(bfloat16_logits_and_targets())
def test_cross_entropy_of_bfloat16_logits_is_computed_in_float32(impl, case):
    logits, targets = case
    loss = impl.train.cross_entropy(logits, targets)
    assert loss.dtype in (torch.float32, torch.float64), (
        f"cross_entropy of bfloat16 logits must be computed, and returned, in float32 at least; got {loss.dtype}")
    assert_close(loss, nll64(logits, targets), f"bfloat16 logits are exact in float32: cross_entropy of {len(targets)} "
                 "rows must upcast them first, and then agrees with the float64 definition to float32's precision",
                 dtype=torch.float32, scale=10)


@given(logits_and_targets(), st.sampled_from([-100, -1]))
def test_cross_entropy_with_every_target_ignored_is_nan(impl, case, ignore_index):
    logits, targets = case
    loss = impl.train.cross_entropy(logits, torch.full_like(targets, ignore_index), ignore_index=ignore_index)
    assert loss.dim() == 0 and torch.isnan(loss), (
        f"with every target equal to ignore_index={ignore_index} there is nothing to average: the loss must be NaN "
        f"(0/0, as in torch), not {loss}, which would pass for a real loss")


# --------------------------------------------------------------------------------------------- gradient clipping


@st.composite
def gradients(draw):
    """A list of parameters with gradients of various shapes and sizes (norms from about 1e-3 to 1e3)."""
    count = draw(st.integers(1, 4))
    scale = 10.0 ** draw(st.integers(-3, 3))
    params = []
    for _ in range(count):
        p = nn.Parameter(torch.zeros(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))))
        p.grad = draw(tensors(shape=p.shape, scale=scale))
        params.append(p)
    return params


def global_norm(params) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None))


@given(gradients(), st.floats(1e-3, 1e2))
def test_clipped_global_norm_is_at_most_max_norm(impl, params, max_norm):
    impl.train.clip_grad_norm(params, max_norm)
    after = global_norm(params)
    assert after <= max_norm * (1 + 1e-5), (
        f"after clip_grad_norm(max_norm={max_norm}) the global norm of all gradients together is {after}")


@given(gradients(), st.floats(1e-3, 1e2))
def test_clipping_scales_every_gradient_by_one_factor(impl, params, max_norm):
    before = [p.grad.clone() for p in params]
    impl.train.clip_grad_norm(params, max_norm)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in before))
    factor = min(1.0, max_norm / norm)
    for old, p in zip(before, params):
        assert_close(p.grad, old * factor, "clipping must multiply every gradient by the same factor "
                     "max_norm / global norm (one norm over all parameters, not one per parameter)", scale=10)


@given(gradients())
def test_clipping_changes_nothing_below_max_norm(impl, params):
    before = [p.grad.clone() for p in params]
    max_norm = global_norm(params) * 1.5
    impl.train.clip_grad_norm(params, max_norm)
    for old, p in zip(before, params):
        assert torch.equal(p.grad, old), "a global norm below max_norm must leave every gradient exactly as it was"


@given(gradients(), st.floats(1e-3, 1e2))
def test_clip_returns_the_norm_before_clipping(impl, params, max_norm):
    expected = global_norm(params)
    returned = float(impl.train.clip_grad_norm(params, max_norm))
    assert math.isclose(returned, expected, rel_tol=1e-5), (
        f"clip_grad_norm must return the global norm before clipping ({expected}), not {returned}")


def test_clipping_skips_parameters_without_gradient(impl):
    frozen = nn.Parameter(torch.ones(3), requires_grad=False)  # grad stays None
    no_grad_yet = nn.Parameter(torch.ones(2))
    live = nn.Parameter(torch.zeros(4))
    live.grad = torch.tensor([3.0, 0.0, 4.0, 0.0])  # norm 5
    norm = float(impl.train.clip_grad_norm([frozen, no_grad_yet, live], 1.0))
    assert math.isclose(norm, 5.0, rel_tol=1e-6), f"parameters whose grad is None count as nothing; norm {norm} != 5"
    assert frozen.grad is None and no_grad_yet.grad is None, "clipping must not give a gradient to a frozen parameter"
    assert_close(live.grad, torch.tensor([0.6, 0.0, 0.8, 0.0]), "a norm of 5 clipped to 1 must scale by 1/5")


def test_clipping_reports_a_non_finite_norm(impl):
    for bad in (math.inf, math.nan):
        good = nn.Parameter(torch.zeros(2))
        good.grad = torch.tensor([1.0, 2.0])
        broken = nn.Parameter(torch.zeros(2))
        broken.grad = torch.tensor([bad, 1.0])
        norm = float(impl.train.clip_grad_norm([good, broken], 1.0))
        assert not math.isfinite(norm), (
            f"a gradient holding {bad} must give a non-finite norm, reported to the caller, not {norm}")


ITERABLES = ("a list", "a tuple", "a generator", "model.parameters()", "one tensor")


@given(gradients(), st.floats(1e-3, 1e2), st.sampled_from(ITERABLES), st.integers(0, 2))
def test_clipping_takes_any_iterable_of_parameters(impl, params, max_norm, kind, frozen):
    if kind == "one tensor":  # clip_grad_norm(p, ...) for a single parameter p
        params, frozen = params[:1], 0
    without_grad = [nn.Parameter(torch.ones(3)) for _ in range(frozen)]  # grad None, mixed in among the others
    everything = [p for pair in zip(params, without_grad) for p in pair] + params[frozen:]
    holder = nn.ParameterList(everything)
    argument = {"a list": lambda: list(everything), "a tuple": lambda: tuple(everything),
                "a generator": lambda: (p for p in everything), "model.parameters()": holder.parameters,
                "one tensor": lambda: params[0]}[kind]()
    before, expected = [p.grad.clone() for p in params], global_norm(params)
    norm = float(impl.train.clip_grad_norm(argument, max_norm))
    assert math.isclose(norm, expected, rel_tol=1e-5), (
        f"clip_grad_norm given {kind} must return the global norm of the gradients, {expected}, got {norm}")
    factor = min(1.0, max_norm / expected)
    for old, p in zip(before, params):
        assert_close(p.grad, old * factor, f"clip_grad_norm given {kind} must scale every gradient by "
                     f"min(1, max_norm / norm) = {factor:.4g} (a generator can be read only once: keep what it gives)",
                     scale=10)
    assert all(p.grad is None for p in without_grad), "a parameter without a gradient must keep grad None"


@given(st.integers(100, 400), seeds, st.sampled_from([1e-3, 1e-2]))
def test_gradient_norm_of_many_small_bfloat16_gradients_is_accumulated_in_float32(impl, count, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    params = []
    for size in torch.randint(1, 65, (count,), generator=generator).tolist():
        p = nn.Parameter(torch.zeros(size, dtype=torch.bfloat16))
        p.grad = (torch.randn(size, generator=generator, dtype=torch.float64) * scale).to(torch.bfloat16)
        params.append(p)
    expected = torch.tensor(global_norm(params), dtype=torch.float64)
    before = [p.grad.clone() for p in params]
    norm = impl.train.clip_grad_norm(params, float(expected) * 4)
    assert_close(torch.as_tensor(norm), expected, f"the global norm of {count} bfloat16 gradients must be accumulated "
                 "in float32 at least (bfloat16 keeps 3 digits: a sum of many small squares stops growing)",
                 dtype=torch.float32, scale=10)
    assert all(torch.equal(p.grad, old) for p, old in zip(params, before)), (
        "a global norm below max_norm must leave bfloat16 gradients exactly as they were")
    impl.train.clip_grad_norm(params, float(expected) / 4)
    for old, p in zip(before, params):
        assert p.grad.dtype == torch.bfloat16, f"clipping must keep the gradients' dtype, got {p.grad.dtype}"
        assert_close(p.grad, old.double() / 4, "clipping bfloat16 gradients to a quarter of their global norm must "
                     "scale each by 1/4, to bfloat16's precision")


# ------------------------------------------------------------------------------------------------------ AdamW


class TwoLayer(nn.Module):
    """A tiny float64 network with a matrix, a bias, a norm gain and an embedding: every kind of parameter."""

    def __init__(self, vocab=7, dim=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.double()

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.proj(self.norm(self.embed_tokens(ids)))))  # (B, T, vocab)


# Hyperparameters from short lists rather than float ranges: a failure shrinks in a few steps, not hundreds.
@given(st.sampled_from([1e-3, 1e-2, 0.1]), st.sampled_from([0.0, 0.8, 0.9]), st.sampled_from([0.9, 0.95, 0.999]),
       st.sampled_from([1e-8, 1e-6, 1e-3]), st.sampled_from([0.0, 0.1, 0.5, 1.0]), seeds)
def test_adamw_matches_torch_adamw_over_many_steps(impl, lr, beta1, beta2, eps, weight_decay, seed):
    ours, theirs = TwoLayer(seed=seed), TwoLayer(seed=seed)
    groups = lambda m: [  # noqa: E731
        {"params": [m.proj.weight, m.lm_head.weight], "weight_decay": weight_decay},
        {"params": [m.proj.bias, m.norm.weight, m.norm.bias, m.embed_tokens.weight], "weight_decay": 0.0,
         "lr": lr / 2},
    ]
    settings = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    optimizers = impl.train.AdamW(groups(ours), **settings), torch.optim.AdamW(groups(theirs), **settings)
    generator = torch.Generator().manual_seed(seed)
    for step in range(8):
        ids = torch.randint(7, (2, 3), generator=generator)
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad(set_to_none=True)
            model(ids).pow(2).mean().backward()
            if step % 4 == 3:
                model.norm.bias.grad = None  # a parameter without a gradient this step: it must not move
            if step == 5:  # a whole group without gradients, before one with: the next group still steps
                model.proj.weight.grad = model.lm_head.weight.grad = None
            optimizer.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(a, b, f"after 8 steps, AdamW(lr={lr}, betas=({beta1}, {beta2}), eps={eps}, "
                     f"weight_decay={weight_decay}) must equal torch.optim.AdamW on {name} (decoupled decay "
                     "lr·λ·θ, bias-corrected moments, per-parameter step count, every group that has gradients)",
                     scale=1e3)


def test_parameter_groups_exempt_norms_biases_and_embeddings(impl):
    model = TwoLayer()
    model.lm_head.weight = model.embed_tokens.weight  # tied: one tensor, two modules
    frozen = nn.Linear(5, 5).double()
    frozen.weight.requires_grad_(False)  # its bias, listed after it, still trains
    model.frozen = frozen
    groups = impl.train.parameter_groups(model, 0.1)
    listed = [p for group in groups for p in group["params"]]
    assert len(listed) == len({id(p) for p in listed}), (
        "each parameter must be in exactly one group, once (tied weights are one parameter)")
    assert id(frozen.weight) not in {id(p) for p in listed}, "parameters with requires_grad=False must not be listed"
    by_decay = {id(p): group["weight_decay"] for group in groups for p in group["params"]}
    expected = {"proj.weight": 0.1, "proj.bias": 0.0, "norm.weight": 0.0, "norm.bias": 0.0, "embed_tokens.weight": 0.0,
                "frozen.bias": 0.0}
    for name, decay in expected.items():
        p = model.get_parameter(name)
        assert id(p) in by_decay, f"the trainable parameter {name} is missing from the groups"
        assert by_decay[id(p)] == decay, (
            f"{name} must get weight_decay {decay} (decay matrices; not norms, biases or embeddings), "
            f"got {by_decay[id(p)]}")
    groups = impl.train.parameter_groups(nn.LayerNorm(4), 0.1)  # no matrix: nothing to decay
    assert [group["weight_decay"] for group in groups] == [0.0] and len(groups[0]["params"]) == 2, (
        "a model without matrices must give one group, without decay, holding its 2 parameters: an empty group is "
        f"left out; got groups with weight_decay {[group['weight_decay'] for group in groups]}")


# ------------------------------------------------------------------------------------------------ the schedule


@st.composite
def schedules(draw):
    warmup = draw(st.integers(0, 50))
    total = warmup + draw(st.integers(1, 200))
    max_lr = draw(st.floats(1e-5, 1.0))
    min_lr = max_lr * draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    return dict(max_lr=max_lr, warmup_steps=warmup, total_steps=total, min_lr=min_lr)


@given(schedules())
def test_warmup_rises_linearly_from_zero_to_the_peak(impl, schedule):
    w, peak = schedule["warmup_steps"], schedule["max_lr"]
    lr = lambda step: impl.train.lr_schedule(step, **schedule)  # noqa: E731
    for step in range(w + 1):
        assert math.isclose(lr(step), peak * step / w if w else peak, rel_tol=1e-9, abs_tol=1e-15), (
            f"during warmup ({w} steps) the lr at step {step} must be max_lr·{step}/{w}, got {lr(step)}")
    assert math.isclose(lr(w), peak, rel_tol=1e-12), f"the lr must peak at max_lr exactly at step warmup_steps={w}"


@given(schedules())
def test_cosine_decays_from_the_peak_to_the_floor(impl, schedule):
    w, total, peak, floor = (schedule[k] for k in ("warmup_steps", "total_steps", "max_lr", "min_lr"))
    for step in range(w, total + 1):
        progress = (step - w) / (total - w)
        expected = floor + (peak - floor) * (1 + math.cos(math.pi * progress)) / 2
        got = impl.train.lr_schedule(step, **schedule)
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-15), (
            f"after warmup the lr follows a half cosine from max_lr to min_lr: at step {step} of {total} "
            f"it must be {expected}, got {got}")


@given(schedules(), st.integers(1, 10_000))
def test_schedule_is_constant_at_the_floor_after_total_steps(impl, schedule, after):
    got = impl.train.lr_schedule(schedule["total_steps"] + after, **schedule)
    assert got == schedule["min_lr"], f"after total_steps the lr must stay at min_lr={schedule['min_lr']}, got {got}"


@given(schedules())
def test_schedule_is_continuous(impl, schedule):
    w, total, peak = schedule["warmup_steps"], schedule["total_steps"], schedule["max_lr"]
    # The largest step between neighbours: peak/w on the warmup ramp, at most peak·π/(2(T − w)) on the cosine.
    largest = peak * max(1 / w if w else 0.0, math.pi / (2 * (total - w))) * (1 + 1e-9)
    values = [impl.train.lr_schedule(step, **schedule) for step in range(total + 3)]
    jumps = [abs(b - a) for a, b in zip(values, values[1:])]
    worst = max(range(len(jumps)), key=jumps.__getitem__)
    assert jumps[worst] <= largest, (
        f"the schedule jumps by {jumps[worst]} between steps {worst} and {worst + 1}: warmup must end at max_lr "
        "where the cosine starts, and the cosine must end at min_lr where the floor starts")


def test_rejects_a_schedule_whose_warmup_is_not_shorter_than_training(impl):
    assert_rejects(lambda: impl.train.lr_schedule(0, 1.0, 100, 100), 100,
                   what="lr_schedule with warmup_steps = total_steps = 100 has no room for the decay")
    assert_rejects(lambda: impl.train.lr_schedule(0, 1.0, 10, 5), 10, 5,
                   what="lr_schedule with warmup_steps=10 > total_steps=5")


# ---------------------------------------------------------------------------------------------- the training step


class TinyLM(nn.Module):
    """logits = lm_head(tanh(embed_tokens(ids))): a language model small enough to step in microseconds."""

    def __init__(self, vocab=11, dim=6, seed=0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab)
        self.to(dtype)
        self.seen_dtype = None

    def forward(self, ids):
        logits = self.lm_head(torch.tanh(self.embed_tokens(ids)))  # (B, T, vocab)
        self.seen_dtype = logits.dtype
        return logits

    def poison_the_logits(self):
        """From now on every logit is NaN, and so is the loss."""
        self.register_forward_hook(lambda module, inputs, logits: logits * math.nan)

    def overflow_the_gradient(self):
        """From now on the loss stays finite, but lm_head.bias's gradient is infinite."""
        self.lm_head.bias.register_hook(lambda grad: torch.full_like(grad, math.inf))


def micro_batch_lists(vocab=11):
    """1 to 4 micro-batches (x, y) of one length and various batch sizes, some targets ignored (-100)."""
    return token_batches(vocab=vocab, length=st.integers(1, 5), ignore_rates=(0.0, 0.3, 0.7))


def sgd_step_by_hand(model, x, y, lr, max_norm):
    """One SGD step on the mean loss of (x, y), clipped as torch clips; returns (loss, norm before clipping)."""
    model.zero_grad(set_to_none=True)
    loss = nll64(model(x), y)
    loss.backward()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    factor = 1.0 if max_norm is None else min(1.0, max_norm / (norm + 1e-6))
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * factor * p.grad
    return loss.item(), norm


def assert_same_weights(model, expected, what):
    for (name, a), b in zip(model.named_parameters(), expected.parameters()):
        # float32's tolerance: clipping may divide by norm + 1e-6 (as torch does) or by the norm itself
        assert_close(a, b, f"{what}: {name} moved wrongly", dtype=torch.float32)


@given(micro_batch_lists(), st.sampled_from([None, 0.05]), st.sampled_from(["a list of tuples", "a tuple of lists"]))
def test_accumulating_micro_batches_equals_one_step_on_their_concatenation(impl, batches, max_norm, kind):
    model, expected = TinyLM(), TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # SGD: the update is linear in the gradient
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    if kind == "a tuple of lists":  # any sequence of (x, y) pairs
        batches = tuple([x, y] for x, y in batches)
    for step in range(2):  # two steps: the second must not see the first step's gradients
        loss, norm = impl.train.train_step(model, optimizer, batches, max_norm=max_norm)
        expected_loss, expected_norm = sgd_step_by_hand(expected, x, y, 0.5, max_norm)
        assert math.isclose(loss, expected_loss, rel_tol=1e-9), (
            f"step {step + 1}: the loss over {len(batches)} micro-batches ({loss}) must be the mean over all their "
            f"counted targets ({expected_loss}): weight each micro-batch by its share of the counted targets")
        assert math.isclose(norm, expected_norm, rel_tol=1e-9), (
            f"step {step + 1}: the accumulated gradient norm ({norm}) must be that of the concatenated batch "
            f"({expected_norm}), before clipping")
        assert_same_weights(model, expected, f"step {step + 1} over {len(batches)} accumulated micro-batches must "
                            "equal one step over their concatenation (zero the gradients once per step, weight each "
                            "micro-batch by its counted targets / all counted targets)")


@given(micro_batch_lists(), st.sampled_from([1e-3, 0.1, 1.0, 100.0]), st.sampled_from([0.01, 0.3, 1.0]))
def test_train_step_returns_the_loss_and_the_norm_before_clipping_and_uses_lr(impl, batches, max_norm, lr):
    model, expected = TinyLM(), TinyLM()
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)  # the lr argument must override this
    loss, norm = impl.train.train_step(model, optimizer, [(x, y)], max_norm=max_norm, lr=lr)
    expected_loss, expected_norm = sgd_step_by_hand(expected, x, y, lr, max_norm)
    assert math.isclose(loss, expected_loss, rel_tol=1e-9), (
        f"train_step must return the mean cross-entropy {expected_loss}, got {loss}")
    assert math.isclose(norm, expected_norm, rel_tol=1e-9), (
        f"train_step must return the gradient norm before clipping, {expected_norm}, got {norm}")
    assert_same_weights(model, expected, f"train_step(lr={lr}, max_norm={max_norm}) must clip the gradients, set "
                        "lr on every group, then step")


def test_train_step_runs_the_forward_pass_under_bfloat16_autocast(impl):
    model, plain = impl.alongside(TinyLM, dtype=torch.float32), TinyLM(dtype=torch.float32)  # model notes its dtype
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(11, (4, 8), generator=generator), torch.randint(11, (4, 8), generator=generator))]
    loss, _ = impl.train.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batches,
                                    autocast_dtype=torch.bfloat16)
    assert model.seen_dtype == torch.bfloat16, (
        f"with autocast_dtype=torch.bfloat16 the model's matmuls must run in bfloat16, they ran in {model.seen_dtype}")
    expected, _ = impl.train.train_step(plain, torch.optim.SGD(plain.parameters(), lr=0.1), batches)
    assert math.isfinite(loss) and abs(loss - expected) < 0.05 * expected, (
        f"the bfloat16 loss ({loss}) must stay close to the float32 one ({expected}): compute the loss in float32")


def test_rejects_a_nan_loss_and_keeps_the_last_good_weights(impl):
    model = TinyLM()
    before = copy.deepcopy(model.state_dict())
    model.lm_head.bias.data[3] = math.nan  # every logit row now holds a NaN: the loss is NaN
    before["lm_head.bias"] = model.lm_head.bias.detach().clone()
    batches = [(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))]
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1), impl.train.AdamW(model.parameters())):
        assert_rejects(lambda: impl.train.train_step(model, optimizer, batches), "nan",
                       what="train_step with a NaN loss must stop with a FloatingPointError naming it",
                       error=FloatingPointError)
        for name, value in model.state_dict().items():
            assert torch.equal(value.nan_to_num(7.0), before[name].nan_to_num(7.0)), (
                f"a NaN loss must not step: {name} changed, so the last good weights are lost")


@pytest.mark.parametrize("cause", ["a NaN loss", "an infinite gradient"])
def test_a_refused_step_leaves_the_weights_and_the_optimizer_state_as_they_were(impl, cause):
    model = impl.alongside(TinyLM)  # poisoned below where it runs
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(11, (2, 5), generator=generator), torch.randint(11, (2, 5), generator=generator))]
    impl.train.train_step(model, optimizer, batches)  # a good step: the optimizer now holds moments and step counts
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    if cause == "a NaN loss":
        model.poison_the_logits()
    else:  # a finite loss whose gradient overflows
        model.overflow_the_gradient()
    assert_rejects(lambda: impl.train.train_step(model, optimizer, batches), "nan" if "NaN" in cause else "inf",
                   what=f"train_step with {cause} must stop with a FloatingPointError naming it",
                   error=FloatingPointError)
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), (
            f"after train_step refused {cause}, {name} changed: check the loss and the gradient norm before "
            "optimizer.step(), so that the weights stay those of the last good step")
    difference = first_difference(optimizer.state_dict(), state)
    assert difference is None, (
        f"after train_step refused {cause}, the optimizer's state must be that of the last good step: {difference}")


# ------------------------------------------------------------------------------------------------- checkpoints


OPTIMIZERS = {"torch.optim.AdamW": torch.optim.AdamW, "AdamW": None}


def make_optimizer(impl, which, model):
    if OPTIMIZERS[which] is None:
        return impl.train.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    return impl.alongside(OPTIMIZERS[which], model.parameters(), lr=0.01, weight_decay=0.1)


def first_difference(actual, expected, where: str = "state_dict") -> str | None:
    """Where two nested structures of dicts, lists, tuples, tensors and numbers first differ (types included)."""
    if type(actual) is not type(expected):
        return f"{where} is a {type(actual).__name__}, expected a {type(expected).__name__} ({expected!r})"
    if isinstance(expected, torch.Tensor):
        same = actual.dtype == expected.dtype and actual.shape == expected.shape and torch.equal(actual, expected)
        return None if same else f"{where} differs: {actual} vs {expected}"
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            return f"{where} has the keys {sorted(map(str, actual))}, expected {sorted(map(str, expected))}"
        items = [(actual[key], expected[key], f"{where}[{key!r}]") for key in expected]
    elif isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            return f"{where} has {len(actual)} items, expected {len(expected)}"
        items = [(a, e, f"{where}[{i}]") for i, (a, e) in enumerate(zip(actual, expected))]
    else:
        return None if actual == expected else f"{where} is {actual!r}, expected {expected!r}"
    return next((d for a, e, w in items if (d := first_difference(a, e, w)) is not None), None)


def run_steps(impl, model, optimizer, generator, steps):
    for _ in range(steps):
        ids = torch.randint(11, (2, 5), generator=generator)
        noise = torch.randn(1, generator=generator)  # the global RNG must come back too: a run may use it (dropout)
        noise = noise + torch.randn(1)
        optimizer.zero_grad()
        (nll64(model(ids[:, :-1]), ids[:, 1:]) * (1 + 1e-3 * noise.double())).sum().backward()
        optimizer.step()


@pytest.mark.parametrize("which", list(OPTIMIZERS))
def test_resuming_from_a_checkpoint_continues_bit_exactly(impl, which, tmp_path):
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(5)
    model = TinyLM(seed=1)
    optimizer = make_optimizer(impl, which, model)
    run_steps(impl, model, optimizer, generator, 3)
    path = tmp_path / "checkpoint.safetensors"
    config = {"dim": 6, "vocab": 11, "betas": (0.9, 0.95)}
    impl.train.save_checkpoint(path, model, optimizer, 3, config=config, generator=generator)
    saved_state = copy.deepcopy(optimizer.state_dict())
    run_steps(impl, model, optimizer, generator, 4)  # the run that never stopped

    torch.manual_seed(99)  # a fresh process: other weights, another global random state
    resumed_generator = torch.Generator().manual_seed(123)
    resumed = TinyLM(seed=2)
    resumed_optimizer = make_optimizer(impl, which, resumed)
    info = impl.train.load_checkpoint(path, resumed, resumed_optimizer, config=config, generator=resumed_generator)
    assert info["step"] == 3, f"load_checkpoint must return the step it was saved at (3), got {info['step']}"
    assert info["config"] == config and type(info["config"]["betas"]) is tuple, (
        f"load_checkpoint(config=...) must return the configuration as it was given, {config}, got {info['config']}")
    difference = first_difference(resumed_optimizer.state_dict(), saved_state)
    assert difference is None, (
        f"after load_checkpoint the optimizer's state_dict() must equal the saved one, value for value and type for "
        f"type ({which}): {difference}")
    run_steps(impl, resumed, resumed_optimizer, resumed_generator, 4)
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), (
            f"{name} differs between a run resumed from a checkpoint and one that never stopped ({which}): save the "
            "weights in their own dtype, the optimizer state (moments and step counts), the global random state and "
            "the batch generator's")


def test_rejects_a_corrupted_checkpoint(impl, tmp_path):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters())
    run_steps(impl, model, optimizer, torch.Generator().manual_seed(0), 1)
    path = tmp_path / "checkpoint.safetensors"
    impl.train.save_checkpoint(path, model, optimizer, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    assert_rejects(lambda: impl.train.load_checkpoint(path, TinyLM(),
                                                      impl.alongside(torch.optim.AdamW, TinyLM().parameters())),
                   "checkpoint.safetensors", what="a truncated checkpoint")
    flipped = bytearray(data)
    flipped[-20] ^= 0x10  # one bit of one weight
    path.write_bytes(bytes(flipped))
    victim = TinyLM(seed=4)
    untouched = copy.deepcopy(victim.state_dict())
    assert_rejects(lambda: impl.train.load_checkpoint(path, victim), "checkpoint.safetensors",
                   what="a checkpoint with one bit flipped in its tensors (keep a checksum of them)")
    for name, value in untouched.items():
        assert torch.equal(victim.state_dict()[name], value), f"a refused checkpoint must not change the model ({name})"


@dataclasses.dataclass
class RunConfig:
    """A run's configuration as a dataclass (a ModelConfig is one), with a tuple, which JSON turns into a list."""

    n_layers: int = 4
    dim: int = 6
    betas: tuple = (0.9, 0.95)


def test_rejects_a_checkpoint_with_a_different_config(impl, tmp_path):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters())
    path = tmp_path / "checkpoint.safetensors"
    impl.train.save_checkpoint(path, model, optimizer, 0, config={"n_layers": 4, "dim": 6, "lr": 0.01})
    assert_rejects(lambda: impl.train.load_checkpoint(path, TinyLM(), config={"n_layers": 2, "dim": 6, "lr": 0.01}),
                   "n_layers", 4, 2, what="resuming a checkpoint written with n_layers=4 under n_layers=2 (name the "
                   "field and both values)")
    impl.train.save_checkpoint(path, model, optimizer, 0, config=RunConfig())
    assert_rejects(lambda: impl.train.load_checkpoint(path, TinyLM(), config=RunConfig(dim=7)), "dim",
                   what="resuming a checkpoint written with the dataclass RunConfig(dim=6) under RunConfig(dim=7)")


def test_a_checkpoint_gives_back_its_step_extra_and_config(impl, tmp_path):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters())
    path = tmp_path / "checkpoint.safetensors"
    extra = {"tokens_seen": 123456, "best_val_loss": 2.25, "run": "tiny", "losses": [3.5, 2.75],
             "data": {"epoch": 1, "files": ["a.txt"]}}
    impl.train.save_checkpoint(path, model, optimizer, 7, config={"dim": 6, "betas": (0.9, 0.95)}, extra=extra)
    info = impl.train.load_checkpoint(path, TinyLM(seed=3))
    assert info["step"] == 7, f"load_checkpoint must return the step it was saved at (7), got {info['step']}"
    assert info["extra"] == extra, (
        f"load_checkpoint must return the extra dict save_checkpoint was given, {extra}, got {info['extra']}")
    assert info["config"] == {"dim": 6, "betas": [0.9, 0.95]}, (
        "load_checkpoint without a config must return the saved configuration as JSON holds it (tuples become lists), "
        f"got {info['config']}")
    impl.train.save_checkpoint(path, model, optimizer, 8, config=RunConfig())
    info = impl.train.load_checkpoint(path, TinyLM(seed=3), config=RunConfig())
    assert info["extra"] == {}, f"a checkpoint saved without extra must give back an empty dict, got {info['extra']}"
    assert info["config"] == dataclasses.asdict(RunConfig()) and type(info["config"]["betas"]) is tuple, (
        "load_checkpoint(config=a dataclass) must return that configuration as a dict, as it was given, "
        f"{dataclasses.asdict(RunConfig())}, got {info['config']}")


class TinyLMWithABias(TinyLM):
    """TinyLM with one more parameter: a checkpoint of a TinyLM lacks it."""

    def __init__(self, seed=0):
        super().__init__(seed=seed)
        self.output_bias = nn.Parameter(torch.zeros(11, dtype=torch.float64))

    def forward(self, ids):
        return super().forward(ids) + self.output_bias


REFUSALS = ("truncated", "one bit flipped", "another config", "a weight missing", "other shapes")


@pytest.mark.parametrize("reason", REFUSALS)
def test_a_refused_checkpoint_changes_nothing(impl, reason, tmp_path):
    torch.manual_seed(1)
    model = TinyLM(seed=1)
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters(), lr=0.01)
    run_steps(impl, model, optimizer, torch.Generator().manual_seed(5), 2)
    path = tmp_path / "checkpoint.safetensors"
    impl.train.save_checkpoint(path, model, optimizer, 2, config={"dim": 6}, generator=torch.Generator().manual_seed(5))
    data = path.read_bytes()
    if reason == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif reason == "one bit flipped":
        flipped = bytearray(data)
        flipped[-20] ^= 0x10
        path.write_bytes(bytes(flipped))
    victim = {"a weight missing": TinyLMWithABias, "other shapes": lambda seed: TinyLM(vocab=12, seed=seed)}.get(
        reason, lambda seed: TinyLM(seed=seed))(seed=4)
    victim_optimizer = impl.alongside(torch.optim.AdamW, victim.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(77)
    run_steps(impl, victim, victim_optimizer, generator, 1)  # a run in progress: moments, step counts, used RNGs
    before = (copy.deepcopy(victim.state_dict()), copy.deepcopy(victim_optimizer.state_dict()),
              torch.get_rng_state(), generator.get_state())
    config = {"dim": 7} if reason == "another config" else {"dim": 6}
    assert_rejects(lambda: impl.train.load_checkpoint(path, victim, victim_optimizer, config=config,
                                                      generator=generator),
                   what=f"load_checkpoint of a checkpoint with {reason}")
    after = (victim.state_dict(), victim_optimizer.state_dict(), torch.get_rng_state(), generator.get_state())
    for what, old, new in zip(("the model's weights", "the optimizer's state", "torch's global random state",
                               "the generator's state"), before, after):
        difference = first_difference(new, old, what)
        assert difference is None, (
            f"a checkpoint refused for {reason} must change nothing (check everything before restoring anything): "
            f"{difference}")


def test_saving_replaces_the_checkpoint_file_atomically(impl, tmp_path):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters())
    path = tmp_path / "checkpoint.safetensors"
    impl.train.save_checkpoint(path, model, optimizer, 1)
    old = path.read_bytes()
    with open(path, "rb") as reader:  # a reader that opened the old checkpoint before the next save
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        impl.train.save_checkpoint(path, model, optimizer, 2)
        seen = reader.read()
    assert seen == old, ("saving must write a new file and rename it over the old one (os.replace), never rewrite "
                         "the old file in place: a reader, or a process killed mid-write, would see half a checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"], (
        f"saving must leave no temporary files behind, found {sorted(p.name for p in tmp_path.iterdir())}")


# ------------------------------------------------------------------------------------- refusals and edge cases


def test_cross_entropy_rejects_mismatched_shapes_and_targets_outside_the_vocabulary(impl):
    logits = torch.zeros(3, 7)
    assert_rejects(lambda: impl.train.cross_entropy(logits, torch.zeros(5, dtype=torch.long)), 3, 5,
                   what="cross_entropy of logits (3, 7) and targets (5,): logits are targets' shape plus V")
    assert_rejects(lambda: impl.train.cross_entropy(logits, torch.zeros(3, 7, dtype=torch.long)), 7,
                   what="cross_entropy of logits (3, 7) and targets (3, 7): logits are targets' shape plus V")
    for bad in (7, -1, 100):
        targets = torch.tensor([0, bad, 6])
        assert_rejects(lambda: impl.train.cross_entropy(logits, targets), bad,
                       what=f"cross_entropy with a target {bad} outside the vocabulary 0..6 (ignore_index is -100)")


@pytest.mark.parametrize("max_norm", [0.0, -1.5])
def test_clipping_rejects_a_max_norm_that_is_not_positive_and_changes_nothing(impl, max_norm):
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert_rejects(lambda: impl.train.clip_grad_norm([p], max_norm), max_norm,
                   what=f"clip_grad_norm(max_norm={max_norm}): a norm can only be clipped to a positive bound")
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0])), (
        f"a refused max_norm={max_norm} must leave the gradients alone")


def test_clipping_parameters_without_any_gradient_returns_zero(impl):
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2), requires_grad=False)]
    norm = impl.train.clip_grad_norm(params, 1.0)
    assert isinstance(norm, torch.Tensor) and norm.dim() == 0 and float(norm) == 0.0, (
        f"the global norm of no gradients is 0: clip_grad_norm must return a 0-d tensor 0, got {norm!r}")
    assert all(p.grad is None for p in params), "clipping must not give a gradient to a parameter that has none"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_clipping_at_exactly_max_norm_changes_nothing(impl, dtype):
    for shapes in ([(2,)], [(1,), (1,)], [(2, 1)]):
        params = [nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape in shapes]
        values = iter([3.0, 4.0])
        for p in params:
            p.grad = torch.tensor([next(values) for _ in range(p.numel())], dtype=dtype).reshape(p.shape)
        before = [p.grad.clone() for p in params]
        norm = float(impl.train.clip_grad_norm(params, 5.0))
        assert norm == 5.0, f"gradients 3 and 4 have the global norm 5 exactly, got {norm}"
        for old, p in zip(before, params):
            assert torch.equal(p.grad, old), (
                f"a global norm equal to max_norm (5) is not above it: the {dtype} gradients must stay bit for bit as "
                f"they were, got {p.grad.tolist()} instead of {old.tolist()}")


def test_rejects_a_negative_step_and_a_floor_outside_zero_to_the_peak(impl):
    assert_rejects(lambda: impl.train.lr_schedule(-1, 1.0, 10, 100), -1,
                   what="lr_schedule at step -1: steps count from 0")
    assert_rejects(lambda: impl.train.lr_schedule(50, 0.1, 10, 100, min_lr=0.5), 0.5, 0.1,
                   what="lr_schedule with min_lr=0.5 above max_lr=0.1: the cosine would climb")
    assert_rejects(lambda: impl.train.lr_schedule(50, 0.1, 10, 100, min_lr=-0.25), -0.25,
                   what="lr_schedule with min_lr=-0.25: a negative learning rate climbs the loss")


@pytest.mark.parametrize("case", ["no micro-batch", "every target ignored"])
def test_train_step_without_a_counted_target_is_refused_and_changes_nothing(impl, case):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters(), lr=0.01, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(11, (2, 5), generator=generator)
    impl.train.train_step(model, optimizer, [(x, torch.randint(11, (2, 5), generator=generator))])  # a good step
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    batches = [] if case == "no micro-batch" else [(x, torch.full_like(x, -100)), (x[:1], torch.full_like(x[:1], -100))]
    assert_rejects(lambda: impl.train.train_step(model, optimizer, batches),
                   what=f"train_step with {case}: there is no loss to train on")
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[name]), f"a step refused for {case} must not change {name}"
    difference = first_difference(optimizer.state_dict(), state)
    assert difference is None, f"a step refused for {case} must leave the optimizer's state alone: {difference}"


class TwoHeads(TinyLM):
    """TinyLM with a second output head; `head` says which one the forward pass uses."""

    def __init__(self, seed=0):
        super().__init__(seed=seed)
        self.other_head = nn.Linear(6, 11).double()
        self.head = "lm_head"

    def forward(self, ids):
        return getattr(self, self.head)(torch.tanh(self.embed_tokens(ids)))


def test_train_step_leaves_alone_a_parameter_without_gradient_this_step(impl):
    model = TwoHeads()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters(), lr=0.01, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)

    def batch():
        return [(torch.randint(11, (2, 5), generator=generator), torch.randint(11, (2, 5), generator=generator))]

    impl.train.train_step(model, optimizer, batch())  # lm_head gets a gradient, moments and a step count
    before = copy.deepcopy(model.lm_head.state_dict())
    model.head = "other_head"
    impl.train.train_step(model, optimizer, batch())  # lm_head is not used: no gradient this step
    for name, value in model.lm_head.state_dict().items():
        assert torch.equal(value, before[name]), (
            f"lm_head.{name} was not used in this step, yet it moved: clear the gradients to None "
            "(zero_grad(set_to_none=True)), not to 0, or AdamW steps it with its old momentum and decays it")
    assert model.lm_head.weight.grad is None, "a parameter the step did not use must have no gradient after it"


def test_train_step_runs_the_forward_pass_in_the_autocast_dtype_it_is_given(impl):
    model = impl.alongside(TinyLM, dtype=torch.float32)  # it notes the dtype it ran in
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(11, (4, 8), generator=generator), torch.randint(11, (4, 8), generator=generator))]
    loss, _ = impl.train.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batches,
                                    autocast_dtype=torch.float16)
    assert model.seen_dtype == torch.float16, (
        f"with autocast_dtype=torch.float16 the model's matmuls must run in float16 (pass the dtype to autocast: "
        f"its default on the CPU is bfloat16), they ran in {model.seen_dtype}")
    assert math.isfinite(loss), f"the float16 forward pass must give a finite loss, got {loss}"


class TiedLM(TinyLM):
    """TinyLM whose lm_head shares its weight with embed_tokens (tied embeddings): one tensor, two names."""

    def __init__(self, seed=0):
        super().__init__(seed=seed)
        self.lm_head.weight = self.embed_tokens.weight


def test_a_checkpoint_of_tied_weights_resumes_bit_exactly_and_tied(impl, tmp_path):
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(5)
    model = TiedLM(seed=1)
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters(), lr=0.01, weight_decay=0.1)
    run_steps(impl, model, optimizer, generator, 2)
    path = tmp_path / "checkpoint.safetensors"
    impl.train.save_checkpoint(path, model, optimizer, 2, generator=generator)
    run_steps(impl, model, optimizer, generator, 3)  # the run that never stopped

    resumed_generator = torch.Generator().manual_seed(123)
    resumed = TiedLM(seed=2)
    resumed_optimizer = impl.alongside(torch.optim.AdamW, resumed.parameters(), lr=0.01, weight_decay=0.1)
    impl.train.load_checkpoint(path, resumed, resumed_optimizer, generator=resumed_generator)
    assert resumed.lm_head.weight is resumed.embed_tokens.weight, (
        "after load_checkpoint, tied weights must still be one parameter: copy the saved values into the model's "
        "own tensors (load_state_dict), do not put new tensors in their place")
    run_steps(impl, resumed, resumed_optimizer, resumed_generator, 3)
    for name, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), (
            f"{name} differs between a tied model resumed from a checkpoint and one that never stopped")


def test_saving_creates_the_missing_folders_of_the_path(impl, tmp_path):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters())
    path = tmp_path / "runs" / "tiny" / "checkpoint.safetensors"
    try:
        impl.train.save_checkpoint(path, model, optimizer, 1)
    except NotImplementedError:
        raise
    except OSError as error:
        raise AssertionError(f"save_checkpoint into folders that do not exist yet must create them: {error}") from None
    assert impl.train.load_checkpoint(path, TinyLM(seed=3))["step"] == 1, "the checkpoint saved there must load back"


def test_rejects_a_path_that_is_not_an_llmkata_checkpoint(impl, tmp_path):
    from safetensors.torch import save_file

    victim = TinyLM(seed=4)
    untouched = copy.deepcopy(victim.state_dict())
    missing = tmp_path / "nothing_here.safetensors"
    assert_rejects(lambda: impl.train.load_checkpoint(missing, victim), "nothing_here.safetensors",
                   what="load_checkpoint of a path with no file")
    other = tmp_path / "other_tool.safetensors"
    save_file({"model.lm_head.bias": torch.zeros(11, dtype=torch.float64)}, str(other),
              metadata={"llmkata": json.dumps({"format": "other-tool/2", "step": 0})})
    assert_rejects(lambda: impl.train.load_checkpoint(other, victim), "other-tool/2",
                   what="load_checkpoint of a safetensors file in another format (name the format it found)")
    plain = tmp_path / "plain_weights.safetensors"
    save_file({"lm_head.bias": torch.zeros(11, dtype=torch.float64)}, str(plain))
    assert_rejects(lambda: impl.train.load_checkpoint(plain, victim), "plain_weights.safetensors",
                   what="load_checkpoint of a safetensors file without llmkata's metadata")
    for name, value in untouched.items():
        assert torch.equal(victim.state_dict()[name], value), f"a refused path must not change the model ({name})"


def test_rejects_a_config_field_that_only_one_side_has(impl, tmp_path):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters())
    path = tmp_path / "checkpoint.safetensors"
    impl.train.save_checkpoint(path, model, optimizer, 0, config={"dim": 6})
    assert_rejects(lambda: impl.train.load_checkpoint(path, TinyLM(), config={"dim": 6, "n_kv_heads": 2}),
                   "n_kv_heads", what="resuming a checkpoint written without n_kv_heads under n_kv_heads=2")
    impl.train.save_checkpoint(path, model, optimizer, 0, config={"dim": 6, "n_kv_heads": 2})
    assert_rejects(lambda: impl.train.load_checkpoint(path, TinyLM(), config={"dim": 6}), "n_kv_heads",
                   what="resuming a checkpoint written with n_kv_heads=2 under a config without it")


def test_the_generator_is_optional_on_either_side_of_a_checkpoint(impl, tmp_path):
    model = TinyLM()
    optimizer = impl.alongside(torch.optim.AdamW, model.parameters())
    path = tmp_path / "checkpoint.safetensors"
    for saved_with, loaded_with in ((True, False), (False, True)):
        generator = torch.Generator().manual_seed(5)
        torch.manual_seed(7)
        global_state = torch.get_rng_state()
        impl.train.save_checkpoint(path, model, optimizer, 3, generator=generator if saved_with else None)
        torch.rand(3)
        other = torch.Generator().manual_seed(9)
        other_state = other.get_state()
        try:
            info = impl.train.load_checkpoint(path, TinyLM(seed=2), generator=other if loaded_with else None)
        except NotImplementedError:
            raise
        except Exception as error:
            raise AssertionError(
                f"a checkpoint saved {'with' if saved_with else 'without'} a generator must load "
                f"{'with' if loaded_with else 'without'} one (the generator is optional): {type(error).__name__}: "
                f"{error}") from None
        assert info["step"] == 3, f"load_checkpoint must return the saved step 3, got {info['step']}"
        assert torch.equal(torch.get_rng_state(), global_state), "load_checkpoint must restore torch's global state"
        if loaded_with:
            assert torch.equal(other.get_state(), other_state), (
                "a checkpoint saved without a generator has no state for one: the generator given must stay as it was")
