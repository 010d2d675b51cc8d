"""Wrong implementations of the train chapter that a learner could plausibly write."""

import math
import shutil
from pathlib import Path

import torch

import llmkata.reference.train as ref

from . import Mutant


# ---------------------------------------------------------------------------------------------- cross-entropy


def ce_summing(logits, targets, ignore_index=-100):
    counted = (targets != ignore_index).sum()
    return ref.cross_entropy(logits, targets, ignore_index) * counted


def ce_in_bits(logits, targets, ignore_index=-100):
    return ref.cross_entropy(logits, targets, ignore_index) / math.log(2)


def ce_clamping_logits(logits, targets, ignore_index=-100):
    return ref.cross_entropy(logits.clamp(-30, 30), targets, ignore_index)


def ce_without_max_subtraction(logits, targets, ignore_index=-100):
    z = logits.reshape(-1, logits.shape[-1])
    y = targets.reshape(-1)
    keep = y != ignore_index
    z, y = z[keep], y[keep]
    return (z.exp().sum(-1).log() - z.gather(-1, y[:, None]).squeeze(-1)).mean()


def ce_counting_ignored_positions(logits, targets, ignore_index=-100):
    counted = (targets != ignore_index).sum()
    return ref.cross_entropy(logits, targets, ignore_index) * counted / targets.numel()


def ce_ignoring_negative_targets(logits, targets, ignore_index=-100):
    """Treats every negative target as ignored, whatever ignore_index says."""
    return ref.cross_entropy(logits, torch.where(targets < 0, -100, targets), -100)


# Gradients: the right loss, differentiated wrongly because part of it was taken out of the graph.


def _rows(logits, targets, ignore_index):
    """(N, V) logits at least float32, which of the N rows count, and the (N,) targets with ignored ones set to 0."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    z, y = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    counted = y != ignore_index
    return z, counted, torch.where(counted, y, 0)


def ce_with_a_detached_log_sum_exp(logits, targets, ignore_index=-100):
    """logsumexp(z) − z[y] with logsumexp taken as a constant (a "normaliser"): d loss / dz = −one-hot / n, the
    softmax term gone."""
    z, counted, y = _rows(logits, targets, ignore_index)
    shifted = z - z.amax(-1, keepdim=True).detach()  # (N, V): z − m
    log_total = shifted.exp().sum(-1).log().detach()  # (N,): logsumexp(z) − m, as a constant
    nll = log_total - shifted.gather(-1, y[:, None]).squeeze(-1)
    return torch.where(counted, nll, 0.0).sum() / counted.sum()


def ce_with_the_target_logit_detached(logits, targets, ignore_index=-100):
    """Picks z[y] out of z.detach() (indexing "needs no gradient"): d loss / dz = softmax / n, the −one-hot gone."""
    z, counted, y = _rows(logits, targets, ignore_index)
    target_logits = z.detach().gather(-1, y[:, None]).squeeze(-1)
    nll = torch.logsumexp(z, -1) - target_logits
    return torch.where(counted, nll, 0.0).sum() / counted.sum()


# --------------------------------------------------------------------------------------------- gradient clipping


def _grads(parameters):
    return [p.grad for p in ([parameters] if isinstance(parameters, torch.Tensor) else parameters)
            if p.grad is not None]


def clip_each_parameter_alone(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    for g in grads:
        norm = g.norm()
        if norm > max_norm:
            g.mul_(max_norm / norm)
    return total


def clip_by_value(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    for g in grads:
        g.clamp_(-max_norm, max_norm)
    return total


def clip_always_rescaling(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    for g in grads:
        g.mul_(max_norm / total)
    return total


def clip_returning_the_norm_after(parameters, max_norm):
    parameters = list(parameters)
    ref.clip_grad_norm(parameters, max_norm)
    return torch.stack([g.pow(2).sum() for g in _grads(parameters)]).sum().sqrt()


def clip_giving_frozen_parameters_a_zero_gradient(parameters, max_norm):
    parameters = list(parameters)
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return ref.clip_grad_norm(parameters, max_norm)


def clip_hiding_non_finite_gradients(parameters, max_norm):
    parameters = list(parameters)
    for g in _grads(parameters):
        g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return ref.clip_grad_norm(parameters, max_norm)


# ------------------------------------------------------------------------------------------------------ AdamW


class AdamWithL2Decay(ref.AdamW):
    """Adam + L2: the decay goes into the gradient, so Adam's normalisation rescales it (not decoupled)."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(p, alpha=group["weight_decay"])
        decays = [group["weight_decay"] for group in self.param_groups]
        for group in self.param_groups:
            group["weight_decay"] = 0.0
        super().step()
        for group, decay in zip(self.param_groups, decays):
            group["weight_decay"] = decay


class AdamWWithoutBiasCorrection(ref.AdamW):
    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                p.mul_(1 - lr * decay)
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                p.addcdiv_(state["exp_avg"], state["exp_avg_sq"].sqrt().add_(eps), value=-lr)


class AdamWWithOneGlobalStepCount(ref.AdamW):
    """Counts steps for the optimizer, not per parameter: a parameter that skipped a step is bias-corrected wrongly."""

    @torch.no_grad()
    def step(self):
        self._global = getattr(self, "_global", 0) + 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and self.state[p]:
                    self.state[p]["step"] = self._global - 1
        super().step()


class AdamWWithEpsInsideTheRoot(ref.AdamW):
    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t = state["step"]
                p.mul_(1 - lr * decay)
                state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = state["exp_avg"] / (1 - beta1**t)
                v_hat = state["exp_avg_sq"] / (1 - beta2**t)
                p.add_(-lr * m_hat / (v_hat + eps).sqrt())


def _advance(optimizer, group, with_missing_gradients=False):
    """The group's (params, grads, exp_avgs, exp_avg_sqs, steps), each step count advanced, as AdamW.step does."""
    params = [p for p in group["params"] if with_missing_gradients or p.grad is not None]
    for p in params:
        state = optimizer.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
    states = [optimizer.state[p] for p in params]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    return params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]


def _foreach_update(group, params, grads, exp_avgs, exp_avg_sqs, steps, eps_before_correction=False):
    lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not params:
        return
    torch._foreach_mul_(params, 1 - lr * decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    if eps_before_correction:
        torch._foreach_add_(denominators, eps)
    torch._foreach_div_(denominators, [math.sqrt(1 - beta2**t) for t in steps])
    if not eps_before_correction:
        torch._foreach_add_(denominators, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, [-lr / (1 - beta1**t) for t in steps])


class AdamWCorrectingByTheFirstParametersStep(ref.AdamW):
    """Multi-tensor update with one bias correction for the whole group, from its first parameter's step count."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = _advance(self, group)
            _foreach_update(group, params, grads, exp_avgs, exp_avg_sqs, steps[:1] * len(steps))


class AdamWMovingParametersWithoutGradient(ref.AdamW):
    """Multi-tensor update over every parameter, a missing gradient taken as 0: it still decays and coasts on m."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            _foreach_update(group, *_advance(self, group, with_missing_gradients=True))


class AdamWAddingEpsBeforeTheBiasCorrection(ref.AdamW):
    """(√v + ε)/√(1 − β₂ᵗ): ε is scaled up along with √v, early steps most."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            _foreach_update(group, *_advance(self, group), eps_before_correction=True)


def groups_decaying_everything(model, weight_decay):
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


def groups_decaying_embeddings(model, weight_decay):
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def groups_listing_frozen_parameters(model, weight_decay):
    groups = ref.parameter_groups(model, weight_decay)
    groups[0]["params"] = groups[0]["params"] + [p for p in model.parameters() if not p.requires_grad]
    return groups


def groups_listing_tied_weights_twice(model, weight_decay):
    groups = ref.parameter_groups(model, weight_decay)
    names = dict(model.named_parameters(remove_duplicate=False))
    if "lm_head.weight" in names and names["lm_head.weight"] is names.get("embed_tokens.weight"):
        groups[-1]["params"] = groups[-1]["params"] + [names["lm_head.weight"]]
    return groups


# ------------------------------------------------------------------------------------------------- the schedule


def schedule_warming_up_from_one_step(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


def schedule_decaying_linearly(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if warmup_steps <= step <= total_steps:
        return max_lr - (max_lr - min_lr) * (step - warmup_steps) / (total_steps - warmup_steps)
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


def schedule_cosine_forever(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step > total_steps:
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


def schedule_cosine_to_zero_then_floor(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if warmup_steps <= step <= total_steps:
        return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, 0.0)
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


def schedule_without_checks(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return min_lr


# ---------------------------------------------------------------------------------------------- the training step


def _step(model, optimizer, micro_batches, max_norm, lr, weights, zero_each=False):
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for (x, y), weight in zip(micro_batches, weights):
        if zero_each:
            optimizer.zero_grad(set_to_none=True)
        loss = ref.cross_entropy(model(x), y) * weight
        loss.backward()
        total += loss.item()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = float(ref.clip_grad_norm(params, math.inf if max_norm is None else max_norm))
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.step()
    return total, norm


def step_dividing_by_the_number_of_micro_batches(model, optimizer, micro_batches, max_norm=1.0, lr=None,
                                                 autocast_dtype=None):
    return _step(model, optimizer, micro_batches, max_norm, lr, [1 / len(micro_batches)] * len(micro_batches))


def step_zeroing_gradients_per_micro_batch(model, optimizer, micro_batches, max_norm=1.0, lr=None,
                                           autocast_dtype=None):
    counts = [int((y != -100).sum()) for _, y in micro_batches]
    return _step(model, optimizer, micro_batches, max_norm, lr, [c / sum(counts) for c in counts], zero_each=True)


def step_never_zeroing_gradients(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    zero_grad = optimizer.zero_grad
    optimizer.zero_grad = lambda set_to_none=True: None
    try:
        return ref.train_step(model, optimizer, micro_batches, max_norm, lr, autocast_dtype)
    finally:
        optimizer.zero_grad = zero_grad


def step_returning_the_clipped_norm(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    loss, norm = ref.train_step(model, optimizer, micro_batches, max_norm, lr, autocast_dtype)
    return loss, min(norm, math.inf if max_norm is None else max_norm)


def step_ignoring_lr(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    return ref.train_step(model, optimizer, micro_batches, max_norm, None, autocast_dtype)


def step_ignoring_autocast(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    return ref.train_step(model, optimizer, micro_batches, max_norm, lr, None)


def step_stepping_on_nan(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    counts = [int((y != -100).sum()) for _, y in micro_batches]
    return _step(model, optimizer, micro_batches, max_norm, lr, [c / sum(counts) for c in counts])


# ------------------------------------------------------------------------------------------------- checkpoints


def save_without_optimizer_state(path, model, optimizer, step, config=None, generator=None, extra=None):
    fresh = type(optimizer)(optimizer.param_groups)  # the same groups, no moments and no step counts
    ref.save_checkpoint(path, model, fresh, step, config, generator, extra)


def save_weights_in_bfloat16(path, model, optimizer, step, config=None, generator=None, extra=None):
    copy = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        for value in model.state_dict().values():
            value.copy_(value.to(torch.bfloat16))
    try:
        ref.save_checkpoint(path, model, optimizer, step, config, generator, extra)
    finally:
        model.load_state_dict(copy)


def load_without_the_generator(path, model, optimizer=None, config=None, generator=None):
    return ref.load_checkpoint(path, model, optimizer, config, None)


def load_without_the_global_random_state(path, model, optimizer=None, config=None, generator=None):
    state = torch.get_rng_state()
    info = ref.load_checkpoint(path, model, optimizer, config, generator)
    torch.set_rng_state(state)
    return info


def load_without_the_optimizer(path, model, optimizer=None, config=None, generator=None):
    return ref.load_checkpoint(path, model, None, config, generator)


def load_ignoring_the_config(path, model, optimizer=None, config=None, generator=None):
    return ref.load_checkpoint(path, model, optimizer, None, generator)


def load_trusting_the_bytes(path, model, optimizer=None, config=None, generator=None):
    """No checksum: whatever safetensors can parse loads, so a flipped bit in a weight loads silently."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as error:
        raise ValueError(f"{path} is not a complete checkpoint: {error}") from None
    model.load_state_dict({name.removeprefix("model."): value for name, value in tensors.items()
                           if name.startswith("model.")})
    return {"step": 0, "config": None, "extra": {}}


def save_in_place(path, model, optimizer, step, config=None, generator=None, extra=None):
    """Rewrites the existing file (same inode) instead of renaming a new one over it."""
    temporary = Path(path).with_name("elsewhere.bin")
    ref.save_checkpoint(temporary, model, optimizer, step, config, generator, extra)
    shutil.copyfile(temporary, path)
    temporary.unlink()


MUTANTS = [
    Mutant("train.cross_entropy", ce_summing,
           ("test_cross_entropy_equals_minus_log_softmax_at_the_target",
            "test_cross_entropy_of_uniform_logits_is_log_of_the_vocabulary_size"), "sums instead of averaging"),
    Mutant("train.cross_entropy", ce_in_bits,
           ("test_cross_entropy_equals_minus_log_softmax_at_the_target",
            "test_cross_entropy_of_uniform_logits_is_log_of_the_vocabulary_size"), "log base 2 instead of e"),
    Mutant("train.cross_entropy", ce_clamping_logits,
           ("test_cross_entropy_is_invariant_to_adding_a_constant_per_row",
            "test_cross_entropy_is_finite_at_logits_of_1e4"),
           "clamps logits to ±30 to avoid overflow"),
    Mutant("train.cross_entropy", ce_without_max_subtraction, ("test_cross_entropy_is_finite_at_logits_of_1e4",),
           "log Σ exp without subtracting the max: overflows"),
    Mutant("train.cross_entropy", ce_counting_ignored_positions, ("test_cross_entropy_leaves_out_ignored_targets",),
           "drops ignored positions from the sum but not from the count"),
    Mutant("train.cross_entropy", ce_ignoring_negative_targets, ("test_cross_entropy_leaves_out_ignored_targets",),
           "ignores negative targets, not ignore_index"),
    Mutant("train.cross_entropy", ce_with_a_detached_log_sum_exp,
           ("test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n",
            "test_cross_entropy_gradient_equals_autograd_of_the_definition_times_the_upstream_gradient"),
           "logsumexp detached: the gradient is −one-hot/N, without the softmax"),
    Mutant("train.cross_entropy", ce_with_the_target_logit_detached,
           ("test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n",
            "test_cross_entropy_gradient_equals_autograd_of_the_definition_times_the_upstream_gradient"),
           "the target logit picked from detached logits: the gradient is softmax/N, without the −one-hot"),
    Mutant("train.clip_grad_norm", clip_each_parameter_alone,
           ("test_clipped_global_norm_is_at_most_max_norm", "test_clipping_scales_every_gradient_by_one_factor"),
           "clips each parameter's gradient to max_norm on its own"),
    Mutant("train.clip_grad_norm", clip_by_value, ("test_clipping_scales_every_gradient_by_one_factor",),
           "clamps each coordinate: the direction changes"),
    Mutant("train.clip_grad_norm", clip_always_rescaling, ("test_clipping_changes_nothing_below_max_norm",),
           "rescales to max_norm even when the norm is below it"),
    Mutant("train.clip_grad_norm", clip_returning_the_norm_after, ("test_clip_returns_the_norm_before_clipping",),
           "returns the norm after clipping"),
    Mutant("train.clip_grad_norm", clip_giving_frozen_parameters_a_zero_gradient,
           ("test_clipping_skips_parameters_without_gradient",), "fills missing gradients with zeros"),
    Mutant("train.clip_grad_norm", clip_hiding_non_finite_gradients, ("test_clipping_reports_a_non_finite_norm",),
           "replaces inf and NaN by 0 before measuring"),
    Mutant("train.AdamW", AdamWithL2Decay, ("test_adamw_matches_torch_adamw_over_many_steps",),
           "L2 regularisation through the gradient instead of decoupled decay"),
    Mutant("train.AdamW", AdamWWithoutBiasCorrection, ("test_adamw_matches_torch_adamw_over_many_steps",),
           "no bias correction"),
    Mutant("train.AdamW", AdamWWithOneGlobalStepCount, ("test_adamw_matches_torch_adamw_over_many_steps",),
           "one step count for all parameters"),
    Mutant("train.AdamW", AdamWWithEpsInsideTheRoot, ("test_adamw_matches_torch_adamw_over_many_steps",),
           "sqrt(v̂ + ε) instead of sqrt(v̂) + ε"),
    Mutant("train.AdamW", AdamWCorrectingByTheFirstParametersStep, ("test_adamw_matches_torch_adamw_over_many_steps",),
           "one bias correction per group, from the first parameter's step count"),
    Mutant("train.AdamW", AdamWMovingParametersWithoutGradient, ("test_adamw_matches_torch_adamw_over_many_steps",),
           "updates parameters without a gradient as if it were 0"),
    Mutant("train.AdamW", AdamWAddingEpsBeforeTheBiasCorrection, ("test_adamw_matches_torch_adamw_over_many_steps",),
           "adds ε to √v before dividing by √(1 − β₂ᵗ)"),
    Mutant("train.parameter_groups", groups_decaying_everything,
           ("test_parameter_groups_exempt_norms_biases_and_embeddings",), "decays norms, biases and embeddings"),
    Mutant("train.parameter_groups", groups_decaying_embeddings,
           ("test_parameter_groups_exempt_norms_biases_and_embeddings",), "decays the embedding table (it is 2-D)"),
    Mutant("train.parameter_groups", groups_listing_frozen_parameters,
           ("test_parameter_groups_exempt_norms_biases_and_embeddings",), "lists parameters that do not train"),
    Mutant("train.parameter_groups", groups_listing_tied_weights_twice,
           ("test_parameter_groups_exempt_norms_biases_and_embeddings",), "lists a tied weight once per module"),
    Mutant("train.lr_schedule", schedule_warming_up_from_one_step,
           ("test_warmup_rises_linearly_from_zero_to_the_peak",), "warmup (step + 1) / w: never 0"),
    Mutant("train.lr_schedule", schedule_decaying_linearly, ("test_cosine_decays_from_the_peak_to_the_floor",),
           "linear decay instead of cosine"),
    Mutant("train.lr_schedule", schedule_cosine_forever, ("test_schedule_is_constant_at_the_floor_after_total_steps",),
           "the cosine keeps going past total_steps and rises again"),
    Mutant("train.lr_schedule", schedule_cosine_to_zero_then_floor,
           ("test_schedule_is_continuous", "test_cosine_decays_from_the_peak_to_the_floor"),
           "the cosine ends at 0, then jumps to min_lr"),
    Mutant("train.lr_schedule", schedule_without_checks,
           ("test_rejects_a_schedule_whose_warmup_is_not_shorter_than_training",),
           "accepts warmup_steps >= total_steps silently"),
    Mutant("train.train_step", step_dividing_by_the_number_of_micro_batches,
           ("test_accumulating_micro_batches_equals_one_step_on_their_concatenation",),
           "weights every micro-batch by 1/k, wrong when they count different numbers of targets"),
    Mutant("train.train_step", step_zeroing_gradients_per_micro_batch,
           ("test_accumulating_micro_batches_equals_one_step_on_their_concatenation",),
           "zeroes the gradients before each micro-batch: only the last one counts"),
    Mutant("train.train_step", step_never_zeroing_gradients,
           ("test_accumulating_micro_batches_equals_one_step_on_their_concatenation",),
           "never zeroes the gradients: each step adds the previous step's"),
    Mutant("train.train_step", step_returning_the_clipped_norm,
           ("test_train_step_returns_the_loss_and_the_norm_before_clipping_and_uses_lr",),
           "returns the norm after clipping"),
    Mutant("train.train_step", step_ignoring_lr,
           ("test_train_step_returns_the_loss_and_the_norm_before_clipping_and_uses_lr",),
           "does not set the scheduled lr"),
    Mutant("train.train_step", step_ignoring_autocast,
           ("test_train_step_runs_the_forward_pass_under_bfloat16_autocast",),
           "ignores autocast_dtype"),
    Mutant("train.train_step", step_stepping_on_nan, ("test_rejects_a_nan_loss_and_keeps_the_last_good_weights",),
           "steps on a NaN loss, and the weights become NaN"),
    Mutant("train.save_checkpoint", save_without_optimizer_state,
           ("test_resuming_from_a_checkpoint_continues_bit_exactly",), "saves the weights but not the AdamW moments"),
    Mutant("train.save_checkpoint", save_weights_in_bfloat16,
           ("test_resuming_from_a_checkpoint_continues_bit_exactly",), "saves the weights in bfloat16"),
    Mutant("train.load_checkpoint", load_without_the_generator,
           ("test_resuming_from_a_checkpoint_continues_bit_exactly",), "does not restore the batch generator"),
    Mutant("train.load_checkpoint", load_without_the_global_random_state,
           ("test_resuming_from_a_checkpoint_continues_bit_exactly",), "does not restore torch's global RNG"),
    Mutant("train.load_checkpoint", load_without_the_optimizer,
           ("test_resuming_from_a_checkpoint_continues_bit_exactly",), "does not restore the optimizer"),
    Mutant("train.load_checkpoint", load_trusting_the_bytes, ("test_rejects_a_corrupted_checkpoint",),
           "no checksum: a flipped bit loads silently"),
    Mutant("train.load_checkpoint", load_ignoring_the_config, ("test_rejects_a_checkpoint_with_a_different_config",),
           "resumes under any configuration"),
    Mutant("train.save_checkpoint", save_in_place, ("test_saving_replaces_the_checkpoint_file_atomically",),
           "rewrites the file in place"),
]
