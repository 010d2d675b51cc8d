"""Wrong implementations of the train chapter that a learner could plausibly write."""

import json
import math
import shutil
from pathlib import Path

import torch

import llmkata.reference.train as ref

from . import mutant


# ---------------------------------------------------------------------------------------------- cross-entropy


@mutant("train.cross_entropy", "test_cross_entropy_equals_minus_log_softmax_at_the_target",
        "test_cross_entropy_of_uniform_logits_is_log_of_the_vocabulary_size",
        why="sums instead of averaging")
def ce_summing(logits, targets, ignore_index=-100):
    counted = (targets != ignore_index).sum()
    return ref.cross_entropy(logits, targets, ignore_index) * counted


@mutant("train.cross_entropy", "test_cross_entropy_equals_minus_log_softmax_at_the_target",
        "test_cross_entropy_of_uniform_logits_is_log_of_the_vocabulary_size",
        why="log base 2 instead of e")
def ce_in_bits(logits, targets, ignore_index=-100):
    return ref.cross_entropy(logits, targets, ignore_index) / math.log(2)


@mutant("train.cross_entropy", "test_cross_entropy_is_invariant_to_adding_a_constant_per_row",
        "test_cross_entropy_is_finite_at_logits_of_1e4",
        why="clamps logits to ±30 to avoid overflow")
def ce_clamping_logits(logits, targets, ignore_index=-100):
    return ref.cross_entropy(logits.clamp(-30, 30), targets, ignore_index)


@mutant("train.cross_entropy", "test_cross_entropy_is_finite_at_logits_of_1e4",
        why="log Σ exp without subtracting the max: overflows")
def ce_without_max_subtraction(logits, targets, ignore_index=-100):
    z = logits.reshape(-1, logits.shape[-1])
    y = targets.reshape(-1)
    keep = y != ignore_index
    z, y = z[keep], y[keep]
    return (z.exp().sum(-1).log() - z.gather(-1, y[:, None]).squeeze(-1)).mean()


@mutant("train.cross_entropy", "test_cross_entropy_leaves_out_ignored_targets",
        why="drops ignored positions from the sum but not from the count")
def ce_counting_ignored_positions(logits, targets, ignore_index=-100):
    counted = (targets != ignore_index).sum()
    return ref.cross_entropy(logits, targets, ignore_index) * counted / targets.numel()


@mutant("train.cross_entropy", "test_cross_entropy_leaves_out_ignored_targets",
        why="ignores negative targets, not ignore_index")
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


@mutant("train.cross_entropy", "test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n",
        "test_cross_entropy_gradient_equals_autograd_of_the_definition_times_the_upstream_gradient",
        why="logsumexp detached: the gradient is −one-hot/N, without the softmax")
def ce_with_a_detached_log_sum_exp(logits, targets, ignore_index=-100):
    """logsumexp(z) − z[y] with logsumexp taken as a constant (a "normaliser"): d loss / dz = −one-hot / n, the
    softmax term gone."""
    z, counted, y = _rows(logits, targets, ignore_index)
    shifted = z - z.amax(-1, keepdim=True).detach()  # (N, V): z − m
    log_total = shifted.exp().sum(-1).log().detach()  # (N,): logsumexp(z) − m, as a constant
    nll = log_total - shifted.gather(-1, y[:, None]).squeeze(-1)
    return torch.where(counted, nll, 0.0).sum() / counted.sum()


@mutant("train.cross_entropy", "test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n",
        "test_cross_entropy_gradient_equals_autograd_of_the_definition_times_the_upstream_gradient",
        why="the target logit picked from detached logits: the gradient is softmax/N, without the −one-hot")
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


@mutant("train.clip_grad_norm", "test_clipped_global_norm_is_at_most_max_norm",
        "test_clipping_scales_every_gradient_by_one_factor",
        why="clips each parameter's gradient to max_norm on its own")
def clip_each_parameter_alone(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    for g in grads:
        norm = g.norm()
        if norm > max_norm:
            g.mul_(max_norm / norm)
    return total


@mutant("train.clip_grad_norm", "test_clipping_scales_every_gradient_by_one_factor",
        why="clamps each coordinate: the direction changes")
def clip_by_value(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    for g in grads:
        g.clamp_(-max_norm, max_norm)
    return total


@mutant("train.clip_grad_norm", "test_clipping_changes_nothing_below_max_norm",
        why="rescales to max_norm even when the norm is below it")
def clip_always_rescaling(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    for g in grads:
        g.mul_(max_norm / total)
    return total


@mutant("train.clip_grad_norm", "test_clip_returns_the_norm_before_clipping", why="returns the norm after clipping")
def clip_returning_the_norm_after(parameters, max_norm):
    parameters = list(parameters)
    ref.clip_grad_norm(parameters, max_norm)
    return torch.stack([g.pow(2).sum() for g in _grads(parameters)]).sum().sqrt()


@mutant("train.clip_grad_norm", "test_clipping_skips_parameters_without_gradient",
        why="fills missing gradients with zeros")
def clip_giving_frozen_parameters_a_zero_gradient(parameters, max_norm):
    parameters = list(parameters)
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return ref.clip_grad_norm(parameters, max_norm)


@mutant("train.clip_grad_norm", "test_clipping_reports_a_non_finite_norm",
        why="replaces inf and NaN by 0 before measuring")
def clip_hiding_non_finite_gradients(parameters, max_norm):
    parameters = list(parameters)
    for g in _grads(parameters):
        g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return ref.clip_grad_norm(parameters, max_norm)


# ------------------------------------------------------------------------------------------------------ AdamW


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps",
        why="L2 regularisation through the gradient instead of decoupled decay")
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


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps", why="no bias correction")
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


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps", why="one step count for all parameters")
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


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps", why="sqrt(v̂ + ε) instead of sqrt(v̂) + ε")
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


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps",
        why="one bias correction per group, from the first parameter's step count")
class AdamWCorrectingByTheFirstParametersStep(ref.AdamW):
    """Multi-tensor update with one bias correction for the whole group, from its first parameter's step count."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = _advance(self, group)
            _foreach_update(group, params, grads, exp_avgs, exp_avg_sqs, steps[:1] * len(steps))


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps",
        why="updates parameters without a gradient as if it were 0")
class AdamWMovingParametersWithoutGradient(ref.AdamW):
    """Multi-tensor update over every parameter, a missing gradient taken as 0: it still decays and coasts on m."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            _foreach_update(group, *_advance(self, group, with_missing_gradients=True))


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps",
        why="adds ε to √v before dividing by √(1 − β₂ᵗ)")
class AdamWAddingEpsBeforeTheBiasCorrection(ref.AdamW):
    """(√v + ε)/√(1 − β₂ᵗ): ε is scaled up along with √v, early steps most."""

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            _foreach_update(group, *_advance(self, group), eps_before_correction=True)


@mutant("train.parameter_groups", "test_parameter_groups_exempt_norms_biases_and_embeddings",
        why="decays norms, biases and embeddings")
def groups_decaying_everything(model, weight_decay):
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


@mutant("train.parameter_groups", "test_parameter_groups_exempt_norms_biases_and_embeddings",
        why="decays the embedding table (it is 2-D)")
def groups_decaying_embeddings(model, weight_decay):
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


@mutant("train.parameter_groups", "test_parameter_groups_exempt_norms_biases_and_embeddings",
        why="lists parameters that do not train")
def groups_listing_frozen_parameters(model, weight_decay):
    groups = ref.parameter_groups(model, weight_decay)
    groups[0]["params"] = groups[0]["params"] + [p for p in model.parameters() if not p.requires_grad]
    return groups


@mutant("train.parameter_groups", "test_parameter_groups_exempt_norms_biases_and_embeddings",
        why="lists a tied weight once per module")
def groups_listing_tied_weights_twice(model, weight_decay):
    groups = ref.parameter_groups(model, weight_decay)
    names = dict(model.named_parameters(remove_duplicate=False))
    if "lm_head.weight" in names and names["lm_head.weight"] is names.get("embed_tokens.weight"):
        groups[-1]["params"] = groups[-1]["params"] + [names["lm_head.weight"]]
    return groups


# ------------------------------------------------------------------------------------------------- the schedule


@mutant("train.lr_schedule", "test_warmup_rises_linearly_from_zero_to_the_peak", why="warmup (step + 1) / w: never 0")
def schedule_warming_up_from_one_step(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


@mutant("train.lr_schedule", "test_cosine_decays_from_the_peak_to_the_floor", why="linear decay instead of cosine")
def schedule_decaying_linearly(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if warmup_steps <= step <= total_steps:
        return max_lr - (max_lr - min_lr) * (step - warmup_steps) / (total_steps - warmup_steps)
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


@mutant("train.lr_schedule", "test_schedule_is_constant_at_the_floor_after_total_steps",
        why="the cosine keeps going past total_steps and rises again")
def schedule_cosine_forever(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step > total_steps:
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
        return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


@mutant("train.lr_schedule", "test_schedule_is_continuous", "test_cosine_decays_from_the_peak_to_the_floor",
        why="the cosine ends at 0, then jumps to min_lr")
def schedule_cosine_to_zero_then_floor(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if warmup_steps <= step <= total_steps:
        return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, 0.0)
    return ref.lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr)


@mutant("train.lr_schedule", "test_rejects_a_schedule_whose_warmup_is_not_shorter_than_training",
        why="accepts warmup_steps >= total_steps silently")
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


@mutant("train.train_step", "test_accumulating_micro_batches_equals_one_step_on_their_concatenation",
        why="weights every micro-batch by 1/k, wrong when they count different numbers of targets")
def step_dividing_by_the_number_of_micro_batches(model, optimizer, micro_batches, max_norm=1.0, lr=None,
                                                 autocast_dtype=None):
    return _step(model, optimizer, micro_batches, max_norm, lr, [1 / len(micro_batches)] * len(micro_batches))


@mutant("train.train_step", "test_accumulating_micro_batches_equals_one_step_on_their_concatenation",
        why="zeroes the gradients before each micro-batch: only the last one counts")
def step_zeroing_gradients_per_micro_batch(model, optimizer, micro_batches, max_norm=1.0, lr=None,
                                           autocast_dtype=None):
    counts = [int((y != -100).sum()) for _, y in micro_batches]
    return _step(model, optimizer, micro_batches, max_norm, lr, [c / sum(counts) for c in counts], zero_each=True)


@mutant("train.train_step", "test_accumulating_micro_batches_equals_one_step_on_their_concatenation",
        why="never zeroes the gradients: each step adds the previous step's")
def step_never_zeroing_gradients(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    zero_grad = optimizer.zero_grad
    optimizer.zero_grad = lambda set_to_none=True: None
    try:
        return ref.train_step(model, optimizer, micro_batches, max_norm, lr, autocast_dtype)
    finally:
        optimizer.zero_grad = zero_grad


@mutant("train.train_step", "test_train_step_returns_the_loss_and_the_norm_before_clipping_and_uses_lr",
        why="returns the norm after clipping")
def step_returning_the_clipped_norm(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    loss, norm = ref.train_step(model, optimizer, micro_batches, max_norm, lr, autocast_dtype)
    return loss, min(norm, math.inf if max_norm is None else max_norm)


@mutant("train.train_step", "test_train_step_returns_the_loss_and_the_norm_before_clipping_and_uses_lr",
        why="does not set the scheduled lr")
def step_ignoring_lr(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    return ref.train_step(model, optimizer, micro_batches, max_norm, None, autocast_dtype)


@mutant("train.train_step", "test_train_step_runs_the_forward_pass_under_bfloat16_autocast",
        why="ignores autocast_dtype")
def step_ignoring_autocast(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    return ref.train_step(model, optimizer, micro_batches, max_norm, lr, None)


@mutant("train.train_step", "test_rejects_a_nan_loss_and_keeps_the_last_good_weights",
        why="steps on a NaN loss, and the weights become NaN")
def step_stepping_on_nan(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    counts = [int((y != -100).sum()) for _, y in micro_batches]
    return _step(model, optimizer, micro_batches, max_norm, lr, [c / sum(counts) for c in counts])


# ------------------------------------------------------------------------------------------------- checkpoints


@mutant("train.save_checkpoint", "test_resuming_from_a_checkpoint_continues_bit_exactly",
        why="saves the weights but not the AdamW moments")
def save_without_optimizer_state(path, model, optimizer, step, config=None, generator=None, extra=None):
    fresh = type(optimizer)(optimizer.param_groups)  # the same groups, no moments and no step counts
    ref.save_checkpoint(path, model, fresh, step, config, generator, extra)


@mutant("train.save_checkpoint", "test_resuming_from_a_checkpoint_continues_bit_exactly",
        why="saves the weights in bfloat16")
def save_weights_in_bfloat16(path, model, optimizer, step, config=None, generator=None, extra=None):
    copy = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        for value in model.state_dict().values():
            value.copy_(value.to(torch.bfloat16))
    try:
        ref.save_checkpoint(path, model, optimizer, step, config, generator, extra)
    finally:
        model.load_state_dict(copy)


@mutant("train.load_checkpoint", "test_resuming_from_a_checkpoint_continues_bit_exactly",
        why="does not restore the batch generator")
def load_without_the_generator(path, model, optimizer=None, config=None, generator=None):
    return ref.load_checkpoint(path, model, optimizer, config, None)


@mutant("train.load_checkpoint", "test_resuming_from_a_checkpoint_continues_bit_exactly",
        why="does not restore torch's global RNG")
def load_without_the_global_random_state(path, model, optimizer=None, config=None, generator=None):
    state = torch.get_rng_state()
    info = ref.load_checkpoint(path, model, optimizer, config, generator)
    torch.set_rng_state(state)
    return info


@mutant("train.load_checkpoint", "test_resuming_from_a_checkpoint_continues_bit_exactly",
        why="does not restore the optimizer")
def load_without_the_optimizer(path, model, optimizer=None, config=None, generator=None):
    return ref.load_checkpoint(path, model, None, config, generator)


@mutant("train.load_checkpoint", "test_rejects_a_checkpoint_with_a_different_config",
        why="resumes under any configuration")
def load_ignoring_the_config(path, model, optimizer=None, config=None, generator=None):
    return ref.load_checkpoint(path, model, optimizer, None, generator)


@mutant("train.load_checkpoint", "test_rejects_a_corrupted_checkpoint", why="no checksum: a flipped bit loads silently")
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


@mutant("train.save_checkpoint", "test_saving_replaces_the_checkpoint_file_atomically",
        why="rewrites the file in place")
def save_in_place(path, model, optimizer, step, config=None, generator=None, extra=None):
    """Rewrites the existing file (same inode) instead of renaming a new one over it."""
    temporary = Path(path).with_name("elsewhere.bin")
    ref.save_checkpoint(temporary, model, optimizer, step, config, generator, extra)
    shutil.copyfile(temporary, path)
    temporary.unlink()


# ---------------------------------------------------------------------------------------------- more kinds of input


@mutant("train.cross_entropy", "test_cross_entropy_of_bfloat16_logits_is_computed_in_float32",
        why="computes the log-softmax in the logits' dtype: bfloat16 keeps 3 digits of the loss")
def ce_in_the_logits_dtype(logits, targets, ignore_index=-100):
    z, y = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    counted = y != ignore_index
    nll = -torch.log_softmax(z, dim=-1).gather(-1, torch.where(counted, y, 0)[:, None]).squeeze(-1)
    return nll[counted].mean()


@mutant("train.cross_entropy", "test_cross_entropy_with_every_target_ignored_is_nan",
        why="divides by max(count, 1): no counted target gives a loss of 0")
def ce_dividing_by_at_least_one(logits, targets, ignore_index=-100):
    counted = int((targets != ignore_index).sum())
    if counted == 0:
        return torch.zeros((), dtype=torch.float32)
    return ref.cross_entropy(logits, targets, ignore_index)


@mutant("train.clip_grad_norm", "test_clipping_takes_any_iterable_of_parameters",
        why="iterates the parameters twice: a generator (model.parameters()) is empty the second time")
def clip_iterating_twice(parameters, max_norm):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    squares = [p.grad.double().pow(2).sum() for p in parameters if p.grad is not None]
    norm = torch.stack(squares).sum().sqrt() if squares else torch.tensor(0.0, dtype=torch.float64)
    if norm > max_norm:
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(max_norm / (float(norm) + 1e-6))
    return norm.float()


@mutant("train.clip_grad_norm", "test_clipping_takes_any_iterable_of_parameters",
        why="a single tensor is iterated like a list: its rows have no .grad, so nothing counts")
def clip_iterating_a_tensor(parameters, max_norm):
    return ref.clip_grad_norm(list(parameters), max_norm)


@mutant("train.clip_grad_norm", "test_gradient_norm_of_many_small_bfloat16_gradients_is_accumulated_in_float32",
        why="norms in the gradients' dtype: a bfloat16 norm keeps 3 digits")
def clip_in_the_gradients_dtype(parameters, max_norm):
    grads = _grads(parameters)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))
    return norm


@mutant("train.clip_grad_norm", "test_gradient_norm_of_many_small_bfloat16_gradients_is_accumulated_in_float32",
        why="adds up the squares one parameter at a time in a bfloat16 total, which stops growing")
def clip_summing_squares_in_bfloat16(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.zeros((), dtype=grads[0].dtype)
    for g in grads:
        total = total + g.float().pow(2).sum().to(g.dtype)
    norm = total.float().sqrt()
    if norm > max_norm:
        for g in grads:
            g.mul_((max_norm / (norm + 1e-6)).to(g.dtype))
    return norm


@mutant("train.parameter_groups", "test_parameter_groups_exempt_norms_biases_and_embeddings",
        why="keeps an empty group")
def groups_keeping_an_empty_group(model, weight_decay):
    groups = ref.parameter_groups(model, weight_decay)
    if len(groups) == 1:
        empty = {"params": [], "weight_decay": weight_decay if groups[0]["weight_decay"] == 0.0 else 0.0}
        groups = [groups[0], empty] if groups[0]["weight_decay"] else [empty, groups[0]]
    return groups


# ---------------------------------------------------------------------------------------------- refused steps


@mutant("train.train_step", "test_a_refused_step_leaves_the_weights_and_the_optimizer_state_as_they_were",
        why="checks the loss but not the gradient norm: an infinite gradient steps, and every moment becomes inf")
def step_checking_only_the_loss(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    counts = [int((y != -100).sum()) for _, y in micro_batches]
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for (x, y), count in zip(micro_batches, counts):
        part = ref.cross_entropy(model(x), y) * (count / sum(counts))
        part.backward()
        loss += part.item()
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {loss}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = float(ref.clip_grad_norm(params, math.inf if max_norm is None else max_norm))
    optimizer.step()
    return loss, norm


@mutant("train.train_step", "test_a_refused_step_leaves_the_weights_and_the_optimizer_state_as_they_were",
        why="steps first and checks after: the error comes, but the bad step was taken")
def step_checking_after_stepping(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    counts = [int((y != -100).sum()) for _, y in micro_batches]
    loss, norm = _step(model, optimizer, micro_batches, max_norm, lr, [c / sum(counts) for c in counts])
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise FloatingPointError(f"the loss is {loss} and the gradient norm {norm}: not a good step")
    return loss, norm


# ---------------------------------------------------------------------------------------------- checkpoints


@mutant("train.save_checkpoint", "test_a_checkpoint_gives_back_its_step_extra_and_config", why="drops `extra`")
def save_without_extra(path, model, optimizer, step, config=None, generator=None, extra=None):
    ref.save_checkpoint(path, model, optimizer, step, config, generator, None)


@mutant("train.load_checkpoint", "test_a_checkpoint_gives_back_its_step_extra_and_config",
        why="returns the config argument, None when none was given, instead of the saved one")
def load_returning_the_config_argument(path, model, optimizer=None, config=None, generator=None):
    info = ref.load_checkpoint(path, model, optimizer, config, generator)
    return {**info, "config": None if config is None else info["config"]}


@mutant("train.load_checkpoint", "test_a_refused_checkpoint_changes_nothing",
        why="restores the random states first, then finds that the checkpoint does not fit")
def load_restoring_the_random_states_first(path, model, optimizer=None, config=None, generator=None):
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as error:
        raise ValueError(f"{path} is not a complete checkpoint: {error}") from None
    torch.set_rng_state(tensors["rng.torch"])
    if generator is not None and "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    return ref.load_checkpoint(path, model, optimizer, config, generator)


@mutant("train.load_checkpoint", "test_a_refused_checkpoint_changes_nothing",
        why="lets model.load_state_dict find missing names: torch copies every weight that fits before it raises")
def load_letting_torch_check_the_names(path, model, optimizer=None, config=None, generator=None):
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except Exception as error:
        raise ValueError(f"{path} is not a complete checkpoint: {error}") from None
    try:
        model.load_state_dict({name.removeprefix("model."): value for name, value in tensors.items()
                               if name.startswith("model.")})
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit this model: {error}") from None
    return ref.load_checkpoint(path, model, optimizer, config, generator)


# ------------------------------------------------------------------------------------- refusals and edge cases


@mutant("train.cross_entropy", "test_cross_entropy_rejects_mismatched_shapes_and_targets_outside_the_vocabulary",
        why="no checks: mismatched shapes and a target outside the vocabulary reach reshape and gather")
def ce_without_checks(logits, targets, ignore_index=-100):
    z, counted, y = _rows(logits, targets, ignore_index)
    y = torch.where(counted, targets.reshape(-1), 0).clamp(0, z.shape[-1] - 1)
    nll = torch.logsumexp(z, -1) - z.gather(-1, y[:, None]).squeeze(-1)
    return torch.where(counted, nll, 0.0).sum() / counted.sum()


@mutant("train.clip_grad_norm", "test_clipping_rejects_a_max_norm_that_is_not_positive_and_changes_nothing",
        why="checks max_norm >= 0: max_norm = 0 zeroes every gradient")
def clip_accepting_a_zero_max_norm(parameters, max_norm):
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    return ref.clip_grad_norm(parameters, max_norm) if max_norm > 0 else _clip_to_zero(parameters)


def _clip_to_zero(parameters):
    grads = _grads(parameters)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for g in grads:
        g.mul_(0.0)
    return total


@mutant("train.clip_grad_norm", "test_clipping_parameters_without_any_gradient_returns_zero",
        why="returns nothing when no parameter has a gradient")
def clip_returning_none_without_gradients(parameters, max_norm):
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    if not _grads(parameters):
        return None
    return ref.clip_grad_norm(parameters, max_norm)


@mutant("train.clip_grad_norm", "test_clipping_at_exactly_max_norm_changes_nothing",
        why="rescales when the norm is >= max_norm: at exactly max_norm, max_norm / (norm + 1e-6) still shrinks it")
def clip_at_or_above_max_norm(parameters, max_norm):
    grads = _grads(parameters)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))
    if total >= max_norm:
        for g in grads:
            g.mul_((max_norm / (total + 1e-6)).to(g.dtype))
    return total


@mutant("train.AdamW", "test_adamw_matches_torch_adamw_over_many_steps",
        why="stops at the first group without gradients (break instead of continue): later groups never step")
class AdamWStoppingAtAGroupWithoutGradients(ref.AdamW):
    @torch.no_grad()
    def step(self):
        groups = self.param_groups
        for index, group in enumerate(groups):
            if not any(p.grad is not None for p in group["params"]):
                self.param_groups = groups[:index]
                break
        try:
            super().step()
        finally:
            self.param_groups = groups


@mutant("train.parameter_groups", "test_parameter_groups_exempt_norms_biases_and_embeddings",
        why="stops at a module's first frozen or already-listed parameter (break instead of continue)")
def groups_stopping_at_a_skipped_parameter(model, weight_decay):
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_embedding = type(module).__name__.endswith("Embedding")
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                break
            seen.add(id(p))
            (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


@mutant("train.lr_schedule", "test_rejects_a_negative_step_and_a_floor_outside_zero_to_the_peak",
        why="checks only the warmup: a negative step gives a negative lr, a floor above the peak a rising cosine")
def schedule_checking_only_the_warmup(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step > total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@mutant("train.train_step", "test_train_step_without_a_counted_target_is_refused_and_changes_nothing",
        why="steps anyway with a loss of 0 when there is no counted target")
def step_on_no_targets(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    if sum(int((y != -100).sum()) for _, y in micro_batches) == 0:
        optimizer.zero_grad(set_to_none=True)
        optimizer.step()
        return 0.0, 0.0
    return ref.train_step(model, optimizer, micro_batches, max_norm, lr, autocast_dtype)


@mutant("train.train_step", "test_train_step_leaves_alone_a_parameter_without_gradient_this_step",
        why="zero_grad(set_to_none=False): an unused parameter gets a gradient of 0, and AdamW still moves it")
def step_zeroing_gradients_to_zero(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None):
    zero_grad = optimizer.zero_grad
    optimizer.zero_grad = lambda set_to_none=True: zero_grad(set_to_none=False)
    try:
        return ref.train_step(model, optimizer, micro_batches, max_norm, lr, autocast_dtype)
    finally:
        optimizer.zero_grad = zero_grad


@mutant("train.train_step", "test_train_step_runs_the_forward_pass_in_the_autocast_dtype_it_is_given",
        why="torch.autocast without the dtype: the device's default (bfloat16 on the CPU)")
def step_autocasting_to_the_default_dtype(model, optimizer, micro_batches, max_norm=1.0, lr=None,
                                          autocast_dtype=None):
    default = torch.get_autocast_dtype("cpu")
    return ref.train_step(model, optimizer, micro_batches, max_norm, lr, None if autocast_dtype is None else default)


@mutant("train.load_checkpoint", "test_a_checkpoint_of_tied_weights_resumes_bit_exactly_and_tied",
        why="load_state_dict(assign=True): new tensors replace the parameters, and tied weights come apart")
def load_assigning_new_tensors(path, model, optimizer=None, config=None, generator=None):
    info = ref.load_checkpoint(path, model, optimizer, config, generator)
    from safetensors.torch import load_file

    weights = {name.removeprefix("model."): value for name, value in load_file(path).items()
               if name.startswith("model.")}
    model.load_state_dict(weights, assign=True)
    return info


@mutant("train.save_checkpoint", "test_saving_creates_the_missing_folders_of_the_path",
        why="writes to the path without creating its folders")
def save_without_creating_folders(path, model, optimizer, step, config=None, generator=None, extra=None):
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"no such folder: {Path(path).parent}")
    ref.save_checkpoint(path, model, optimizer, step, config, generator, extra)


@mutant("train.load_checkpoint", "test_rejects_a_path_that_is_not_an_llmkata_checkpoint",
        why="lets a missing file's FileNotFoundError through")
def load_letting_a_missing_file_through(path, model, optimizer=None, config=None, generator=None):
    if not Path(path).exists():
        raise FileNotFoundError(path)
    return ref.load_checkpoint(path, model, optimizer, config, generator)


@mutant("train.load_checkpoint", "test_rejects_a_path_that_is_not_an_llmkata_checkpoint",
        why="trusts any safetensors file with llmkata metadata: no check of its format")
def load_without_a_format_check(path, model, optimizer=None, config=None, generator=None):
    from safetensors import safe_open

    if Path(path).exists():
        with safe_open(str(path), "pt") as file:
            meta = json.loads((file.metadata() or {}).get("llmkata", "{}"))
        if meta.get("format", "llmkata-checkpoint/1") != "llmkata-checkpoint/1":
            return {"step": meta.get("step", 0), "config": None, "extra": {}}
    return ref.load_checkpoint(path, model, optimizer, config, generator)


@mutant("train.load_checkpoint", "test_rejects_a_config_field_that_only_one_side_has",
        why="compares only the fields both configurations have")
def load_comparing_shared_config_fields(path, model, optimizer=None, config=None, generator=None):
    from safetensors import safe_open

    if config is not None:
        with safe_open(str(path), "pt") as file:
            saved = json.loads(file.metadata()["llmkata"])["config"] or {}
        ours = json.loads(json.dumps(dict(config), default=str))
        config = {**saved, **{k: v for k, v in ours.items() if k in saved}}
    return ref.load_checkpoint(path, model, optimizer, config, generator)


@mutant("train.load_checkpoint", "test_the_generator_is_optional_on_either_side_of_a_checkpoint",
        why="restores the generator whenever the checkpoint holds one, given or not")
def load_restoring_a_generator_that_was_not_given(path, model, optimizer=None, config=None, generator=None):
    from safetensors import safe_open

    info = ref.load_checkpoint(path, model, optimizer, config, generator)
    with safe_open(str(path), "pt") as file:
        if "rng.generator" in file.keys():
            generator.set_state(file.get_tensor("rng.generator"))
    return info
