"""Training: the loss, the gradient clip, the optimizer, the learning-rate schedule, one step, and checkpoints.

Pre-training minimises the cross-entropy of the next token,

    L = −(1/N) Σ_{i counted} log softmax(z_i)[y_i] = (1/N) Σ_i (logsumexp(z_i) − z_i[y_i]),

over the N positions whose target is not `ignore_index`. Its gradient with respect to the logits of row i is
(softmax(z_i) − onehot(y_i)) / N: the model is pushed towards the target by exactly the probability it is missing.

One optimizer step, as `train_step` does it:
1. gradients of the mean loss over all micro-batches (gradient accumulation: several small forward/backward passes
   add up to the gradient of one large batch, each micro-batch weighted by its share of the counted targets);
2. `clip_grad_norm`: if the global L2 norm of all gradients exceeds max_norm, scale them all by one factor;
3. `AdamW`: Adam's per-coordinate step with weight decay applied directly to the weights (decoupled), at the
   learning rate `lr_schedule` gives for this step: linear warmup, then a cosine down to a floor.

`save_checkpoint` / `load_checkpoint` keep everything a run needs to continue bit-exactly: weights, the optimizer's
moments and step counts, the step number (which fixes the schedule), the random number generators (the global
one and the one that draws batches, which is the position in the data), and the run's configuration.

Left out: loss scaling for float16 (bfloat16 needs none), a fused optimizer kernel, other optimizers
(Lion, Muon, Adafactor), z-loss and label smoothing, distributed training (see the parallel chapter).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import kernels
from .files import write_bytes_atomic
from .layers import log_softmax

IGNORE_INDEX = -100  # the target of a position that does not count (padding); torch uses the same value

# ------------------------------------------------------------------------------------------------ the loss

# BEGIN SOLUTION
def _flat_logits_and_targets(logits: Tensor, targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Check logits (..., V) against targets (...) and flatten them to (N, V) and (N,); half precision -> float32."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus one vocabulary "
                         "dimension")
    vocab = logits.shape[-1]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bad.any():
        raise ValueError(f"target {int(targets[bad][0])} is outside the vocabulary 0..{vocab - 1} "
                         f"(and is not ignore_index={ignore_index})")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits.reshape(-1, vocab), targets.reshape(-1)
# END SOLUTION


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of `targets` under softmax(`logits`), a scalar.

    logits (..., V), targets (...) integer ids. For each counted position, with m = max_j z_j,

        −log softmax(z)[y] = logsumexp(z) − z[y] = log Σ_j exp(z_j − m) − (z[y] − m).

    Every exponent is <= 0, so no exp overflows; and both terms are small numbers, so float32 keeps its digits even
    for logits of 1e4 (computing logsumexp(z) ≈ 1e4 first and subtracting z[y] after would round the loss to
    about 1e-3, the spacing of float32 numbers near 1e4). Positions whose target is `ignore_index` are
    left out of both the sum and the count. Computed in float32 at least (bfloat16 logits are upcast first).
    If every target is ignored there is nothing to average and the result is NaN (0/0), as in torch.
    Logits whose shape is not targets' plus one dimension, and a target outside 0..V−1 that is not `ignore_index`,
    are ValueErrors that name them.
    Example: logits [[0., 0.]], targets [1] -> log 2 ≈ 0.6931
    """
    # BEGIN SOLUTION
    logits, targets = _flat_logits_and_targets(logits, targets, ignore_index)  # (N, V) at least float32, (N,)
    counted = targets != ignore_index
    log_probabilities = log_softmax(logits, dim=-1)  # (N, V)
    safe_targets = torch.where(counted, targets, 0)  # any valid id on ignored rows: they are dropped below
    nll = -log_probabilities.gather(-1, safe_targets[:, None]).squeeze(-1)  # (N,)
    return torch.where(counted, nll, 0.0).sum() / counted.sum()  # 0/0 = NaN when every target is ignored
    # END SOLUTION


# --------------------------------------------------------------------------------------------- gradient clipping


def clip_grad_norm(parameters, max_norm: float) -> Tensor:
    """Scale all gradients by one factor so that their global L2 norm is at most `max_norm`; return the norm before.

    The global norm is ‖g‖ = sqrt(Σ_p Σ_i g_p,i²) over every parameter that has a gradient (frozen parameters,
    with grad None, are skipped). If ‖g‖ > max_norm every gradient is multiplied by max_norm / ‖g‖, which keeps the
    direction of the update and only shortens it; otherwise nothing changes. `parameters` is any iterable of
    parameters (a list, or a generator such as model.parameters(), read once) or a single tensor. The norm of
    half-precision gradients is accumulated in float32: in bfloat16 a sum of many small squares stops growing.

    A non-finite norm (an inf or NaN somewhere in a gradient) is returned as it is and the gradients are left alone:
    scaling by NaN would spread the damage to every weight, and a finite-looking result would hide it. The caller
    decides (train_step refuses to step). A max_norm that is not positive is a ValueError.
    """
    # BEGIN SOLUTION
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    # ‖g‖ = ‖(‖g_1‖, ‖g_2‖, ...)‖: one norm per parameter, then the norm of those. Accumulated in float32
    # at least: in bfloat16 the sum of many small squares loses its digits.
    wide = lambda g: torch.float32 if g.dtype in (torch.float16, torch.bfloat16) else None  # noqa: E731
    norms = [torch.linalg.vector_norm(g.detach(), dtype=wide(g)).to(grads[0].device) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    if torch.isfinite(total) and total > max_norm:
        factor = max_norm / (total + 1e-6)
        for g in grads:
            g.mul_(factor.to(g.dtype))
    return total
    # END SOLUTION


# ------------------------------------------------------------------------------------------------------ AdamW


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), written out; the same numbers as torch.optim.AdamW.

    For each parameter θ with gradient g, at step t = 1, 2, ... with the group's lr, (β₁, β₂), ε and λ:

        θ ← θ − lr·λ·θ                           decoupled decay: shrink the weight itself, not via the gradient
        m ← β₁ m + (1 − β₁) g                    first moment (a running mean of the gradient)
        v ← β₂ v + (1 − β₂) g²                   second moment (a running mean of its square)
        m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)    bias correction: m and v start at 0, early means are too small
        θ ← θ − lr · m̂ / (√v̂ + ε)

    Each parameter keeps its own step count t in its state (a parameter that gets no gradient in some step does not
    advance). Parameter groups may set their own lr and weight_decay (see `parameter_groups`). The state is what
    torch.optim.Optimizer keeps: `optimizer.state[p]` = {"step", "exp_avg", "exp_avg_sq"}; state_dict() and
    load_state_dict() come from the base class.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW update of every parameter that has a gradient."""
        # BEGIN SOLUTION
        # The loop form, one parameter at a time, as the docstring writes it:
        #
        #     for p in params:                     # t = state[p]["step"] after its increment
        #         p.mul_(1 − lr·λ)
        #         m.lerp_(g, 1 − β₁)               # m + (1 − β₁)(g − m) = β₁ m + (1 − β₁) g
        #         v.mul_(β₂).addcmul_(g, g, value=1 − β₂)
        #         p.addcdiv_(m, v.sqrt() / √(1 − β₂ᵗ) + ε, value=−lr / (1 − β₁ᵗ))   # = −lr·m̂/(√v̂ + ε)
        #
        # Below, each line does one of those operations for the whole group at once (torch._foreach_*: one call
        # instead of one small kernel per parameter), in the same order as torch.optim.AdamW, so the numbers are
        # the same, bit for bit. The bias corrections are per parameter: lists of scalars, one per step count.
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            steps = [s["step"] for s in states]

            if decay != 0:  # multiplying by 1 changes nothing: skip the pass
                torch._foreach_mul_(params, 1 - lr * decay)
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            denominators = torch._foreach_sqrt(exp_avg_sqs)  # √v, then √v̂ = √v / √(1 − β₂ᵗ), then √v̂ + ε
            torch._foreach_div_(denominators, [math.sqrt(1 - beta2**t) for t in steps])
            torch._foreach_add_(denominators, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denominators, [-lr / (1 - beta1**t) for t in steps])
        # END SOLUTION


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters into [{"params": decayed, "weight_decay": weight_decay},
    {"params": the rest, "weight_decay": 0.0}] (an empty group is left out), ready for AdamW.

    Weight decay pulls weights towards 0. That suits the matrices of linear layers, but not the gains of norms
    (their neutral value is 1), biases (a shift, not a scale), or embedding tables (a rare token's row would decay
    every step while its gradient is almost always 0). Rule: a parameter is decayed iff it has 2 or more
    dimensions and does not belong to a module whose class name ends in "Embedding". A weight shared by two
    modules (tied embeddings) is listed once, under the module that owns it first.
    """
    # BEGIN SOLUTION
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_embedding = type(module).__name__.endswith("Embedding")
        for p in module.parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
    # END SOLUTION


# ------------------------------------------------------------------------------------------------- the schedule


def lr_schedule(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate at `step` (counted from 0): linear warmup, cosine decay, then a floor.

        step < w:       max_lr · step / w                                        (0 at step 0)
        w ≤ step ≤ T:   min_lr + (max_lr − min_lr) · (1 + cos(π (step − w) / (T − w))) / 2
                                                                   (max_lr at step w, min_lr at step T)
        step > T:       min_lr

    with w = warmup_steps and T = total_steps. Continuous everywhere: warmup reaches max_lr exactly where the cosine
    starts, and the cosine reaches min_lr exactly where the floor starts.
    A negative step, warmup_steps outside 0..total_steps − 1, or min_lr outside 0..max_lr is a ValueError.
    Example: lr_schedule(5, 1.0, 10, 110) -> 0.5;  lr_schedule(60, 1.0, 10, 110) -> 0.5;
             lr_schedule(200, 1.0, 10, 110) -> 0.0
    """
    # BEGIN SOLUTION
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}")
    if not 0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step > total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 .. 1
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # END SOLUTION


# ------------------------------------------------------------------------------------------------ one step


def train_step(model: nn.Module, optimizer, micro_batches: Sequence[tuple[Tensor, Tensor]],
               max_norm: float | None = 1.0, lr: float | None = None,
               autocast_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """One optimizer step on the concatenation of `micro_batches`; returns (mean loss, gradient norm before clipping).

    model(x) must return logits (B, T, V) for ids x (B, T); each micro-batch is (x, y) with targets y (B, T).
    Gradient accumulation: the loss of micro-batch i is weighted by n_i / N (its counted targets over those of all
    micro-batches) before its backward pass, so the summed gradients are exactly those of the mean loss over the
    concatenation. Dividing by the number of micro-batches instead is only right when every micro-batch counts the
    same number of targets; with ignored (padded) targets it is not.

    max_norm: clip the global gradient norm to it (None: no clipping, the norm is still returned). lr: set on every
    parameter group before stepping (None: leave the groups' lr as it is). autocast_dtype: run the forward pass
    under torch.autocast in that dtype (e.g. torch.bfloat16); the loss is always computed in float32.

    A non-finite loss or gradient norm raises FloatingPointError *before* the optimizer steps, so the weights stay
    those of the last good step. A step with no counted target (no micro-batch, or every target ignore_index) is a
    ValueError, raised before anything changes.
    """
    # BEGIN SOLUTION
    total = sum(int((y != IGNORE_INDEX).sum()) for _, y in micro_batches)  # counted targets of the whole step
    if total == 0:  # no micro-batch at all, or every target ignored: refuse before touching the gradients
        raise ValueError("this step has no target to train on: no micro-batch, or every target is ignore_index")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # A model built with kernels (ModelConfig(kernels=True)) gets chapter 14's loss too: the same numbers.
    uses_kernels = getattr(getattr(model, "config", None), "kernels", False)
    loss_function = kernels.cross_entropy if uses_kernels else cross_entropy
    optimizer.zero_grad(set_to_none=True)
    loss_sum = None
    for x, y in micro_batches:
        counted = int((y != IGNORE_INDEX).sum())
        if counted == 0:
            continue  # nothing to learn from, and its mean loss would be 0/0
        if autocast_dtype is None:
            context = contextlib.nullcontext()
        else:
            context = torch.autocast(device_type=x.device.type, dtype=autocast_dtype)
        with context:
            logits = model(x)  # (B, T, V)
        loss = loss_function(logits, y) * (counted / total)
        loss.backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    loss_value = float(loss_sum)
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"the loss is {loss_value}: not stepping, the weights are those of the last good step")
    norm = float(clip_grad_norm(params, math.inf if max_norm is None else max_norm))
    if not math.isfinite(norm):
        raise FloatingPointError(f"the gradient norm is {norm}: not stepping, the weights are those of the last good "
                                 "step")
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.step()
    return loss_value, norm
    # END SOLUTION


# ------------------------------------------------------------------------------------------------- checkpoints

_FORMAT = "llmkata-checkpoint/1"


def _as_dict(config) -> dict:
    return asdict(config) if is_dataclass(config) else dict(config)


def _jsonable(config) -> dict | None:
    if config is None:
        return None
    return json.loads(json.dumps(_as_dict(config), default=str))  # tuples become lists, as they will after loading


def _digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order: a flipped bit anywhere changes it."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _split_optimizer_state(optimizer) -> tuple[dict[str, Tensor], dict]:
    """optimizer.state_dict() as (tensors for safetensors, everything else for JSON)."""
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, entries in state["state"].items():
        plain[str(index)] = {}
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().clone()
            else:
                plain[str(index)][key] = value
    return tensors, {"state": plain, "param_groups": state["param_groups"]}


def _join_optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    state = {int(index): dict(entries) for index, entries in meta["state"].items()}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path, model: nn.Module, optimizer, step: int, config=None, generator: torch.Generator | None = None,
                    extra: dict | None = None) -> None:
    """Write one safetensors file holding everything needed to resume training bit-exactly:

        model.<name>         every tensor of model.state_dict(), in its own dtype
        optimizer.<i>.<key>  the optimizer's tensors (AdamW: exp_avg, exp_avg_sq) for parameter i
        rng.torch            torch's global random state;  rng.generator: `generator`'s (the batch sampler's)
        metadata["llmkata"]  JSON: format, step, config, extra, the optimizer's non-tensor state (step counts,
                             param_groups with lr, betas, ...), and a SHA-256 of all tensors

    Atomic: written to a temporary file in the same folder, flushed to disk, then renamed over `path`, so `path`
    is always a complete checkpoint, the old one or the new one, even if the process is killed mid-write.
    The folders of `path` are created if missing. The schedule needs no state of its own: the learning rate is a
    function of `step` and the config.
    """
    # BEGIN SOLUTION
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {}
    seen_storage: set[int] = set()
    for name, value in model.state_dict().items():
        value = value.detach().contiguous()
        if value.untyped_storage().data_ptr() in seen_storage:
            value = value.clone()  # tied weights share memory, which safetensors refuses to write twice
        seen_storage.add(value.untyped_storage().data_ptr())
        tensors[f"model.{name}"] = value.cpu()
    optimizer_tensors, optimizer_meta = _split_optimizer_state(optimizer)
    tensors.update({name: value.cpu() for name, value in optimizer_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if generator is not None:
        tensors["rng.generator"] = generator.get_state()
    meta = {"format": _FORMAT, "step": int(step), "config": _jsonable(config), "extra": extra or {},
            "optimizer": optimizer_meta, "sha256": _digest(tensors)}
    data = save(tensors, metadata={"llmkata": json.dumps(meta)})

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)  # a new file renamed over the old: never half a checkpoint
    # END SOLUTION


def load_checkpoint(path, model: nn.Module, optimizer=None, config=None,
                    generator: torch.Generator | None = None) -> dict:
    """Restore what `save_checkpoint` wrote, in place; return {"step": int, "config": dict | None, "extra": dict}.

    Afterwards optimizer.state_dict() equals the saved optimizer's, value for value and type for type (betas come
    back a tuple). The returned config is `config` as a dict when one is given (it was checked equal to the saved
    one), else the saved one as JSON holds it.

    The model's weights are always restored; the optimizer, torch's global random state and `generator` when
    given (the global state always, since the run it resumes used it). Refuses, with a ValueError that names the
    problem, a path that is not a complete llmkata checkpoint (no file there, another format, truncated, or any
    tensor byte changed: the SHA-256 no longer matches), a checkpoint whose config differs from `config` (each
    differing field is named, with both values; a field only one side has differs too), and
    weights whose names or shapes do not fit `model`. Nothing is modified when it refuses.
    """
    # BEGIN SOLUTION
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as file:  # one open: the metadata and the tensors of the same file
            meta = json.loads(file.metadata()["llmkata"])
            tensors = {name: file.get_tensor(name) for name in file.keys()}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
    except FileNotFoundError:
        raise ValueError(f"no checkpoint at {path}") from None
    except Exception as error:  # safetensors raises its own error types on a truncated or garbled header
        raise ValueError(f"{path} is not a complete llmkata checkpoint (corrupted or truncated?): {error}") from None
    if _digest(tensors) != meta["sha256"]:
        raise ValueError(f"{path} is corrupted: its tensors no longer match the SHA-256 written with them")
    if config is not None and meta["config"] is not None:
        ours, theirs = _jsonable(config), meta["config"]
        differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differing:
            details = ", ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {ours.get(k)!r}" for k in differing)
            raise ValueError(f"{path} was written with a different configuration ({details})")

    weights = {name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")}
    expected = model.state_dict()
    if set(weights) != set(expected):
        raise ValueError(f"{path} does not fit this model: missing {sorted(set(expected) - set(weights))}, "
                         f"unexpected {sorted(set(weights) - set(expected))}")
    wrong = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if weights[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path} does not fit this model: shapes differ ({'; '.join(wrong)})")
    if optimizer is not None:  # before the model: torch checks the groups before it changes anything
        optimizer_tensors = {name: value for name, value in tensors.items() if name.startswith("optimizer.")}
        state = _join_optimizer_state(optimizer_tensors, meta["optimizer"])
        # JSON has no tuples: a value that is a tuple in the optimizer's own groups (betas) comes back as one.
        for group, current in zip(state["param_groups"], optimizer.param_groups):
            group.update({key: tuple(value) for key, value in group.items()
                          if isinstance(value, list) and isinstance(current.get(key), tuple)})
        optimizer.load_state_dict(state)
    model.load_state_dict(weights)
    torch.set_rng_state(tensors["rng.torch"])
    if generator is not None and "rng.generator" in tensors:
        generator.set_state(tensors["rng.generator"])
    # The config as it was given when it was checked (JSON would turn its tuples into lists), else as saved.
    saved_config = meta["config"] if config is None or meta["config"] is None else _as_dict(config)
    return {"step": meta["step"], "config": saved_config, "extra": meta["extra"]}
    # END SOLUTION
