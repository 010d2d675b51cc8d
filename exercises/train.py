# Generated from reference/train.py by `llmkata exercises`. This copy is yours: replace each stub.
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

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100  # the target of a position that does not count (padding); torch uses the same value

# ------------------------------------------------------------------------------------------------ the loss


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
    raise NotImplementedError('`train.cross_entropy` is not implemented yet — chapter 8 (train): see '
                              'test_cross_entropy_equals_minus_log_softmax_at_the_target and 9 more in '
                              'spec/test_train.py.')


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
    raise NotImplementedError('`train.clip_grad_norm` is not implemented yet — chapter 8 (train): see '
                              'test_clipped_global_norm_is_at_most_max_norm, '
                              'test_clipping_scales_every_gradient_by_one_factor and 9 more in spec/test_train.py.')


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
        raise NotImplementedError('`train.AdamW.step` is not implemented yet — chapter 8 (train): see '
                                  'test_adamw_matches_torch_adamw_over_many_steps and 2 more in spec/test_train.py.')


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters into [{"params": decayed, "weight_decay": weight_decay},
    {"params": the rest, "weight_decay": 0.0}] (an empty group is left out), ready for AdamW.

    Weight decay pulls weights towards 0. That suits the matrices of linear layers, but not the gains of norms
    (their neutral value is 1), biases (a shift, not a scale), or embedding tables (a rare token's row would decay
    every step while its gradient is almost always 0). Rule: a parameter is decayed iff it has 2 or more
    dimensions and does not belong to a module whose class name ends in "Embedding". A weight shared by two
    modules (tied embeddings) is listed once, under the module that owns it first.
    """
    raise NotImplementedError('`train.parameter_groups` is not implemented yet — chapter 8 (train): see '
                              'test_parameter_groups_exempt_norms_biases_and_embeddings in spec/test_train.py.')


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
    raise NotImplementedError('`train.lr_schedule` is not implemented yet — chapter 8 (train): see '
                              'test_warmup_rises_linearly_from_zero_to_the_peak, '
                              'test_cosine_decays_from_the_peak_to_the_floor and 4 more in spec/test_train.py.')


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
    raise NotImplementedError('`train.train_step` is not implemented yet — chapter 8 (train): see '
                              'test_accumulating_micro_batches_equals_one_step_on_their_concatenation and 7 more in '
                              'spec/test_train.py.')


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
    raise NotImplementedError('`train.save_checkpoint` is not implemented yet — chapter 8 (train): see '
                              'test_resuming_from_a_checkpoint_continues_bit_exactly, '
                              'test_rejects_a_corrupted_checkpoint and 8 more in spec/test_train.py.')


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
    raise NotImplementedError('`train.load_checkpoint` is not implemented yet — chapter 8 (train): see '
                              'test_resuming_from_a_checkpoint_continues_bit_exactly, '
                              'test_rejects_a_corrupted_checkpoint and 8 more in spec/test_train.py.')
