"""Wrong implementations of the kernels chapter that a learner could plausibly write.

The spec reaches RMSNormFunction, SwiGLUFunction and RotateFunction by name, so their mutants are subclasses with
one wrong pass. It reaches cross-entropy and both attentions through their functions (`kernels.cross_entropy`,
`kernels.attention`, `kernels.tiled_attention`), so a wrong Function there comes wrapped in a function of the same
arguments. The model and the trainer on the kernel path are reached through `model.Transformer` and
`train.train_step`.
"""

import heapq
import math
import os
import warnings
from collections import Counter
from functools import reduce
from operator import or_

import regex
import torch

import llmkata.reference.attention as attention_ref
import llmkata.reference.kernels as ref
import llmkata.reference.layers as layers_ref
import llmkata.reference.model as model_ref
import llmkata.reference.rope as rope_ref
import llmkata.reference.tokenizer as tokenizer_ref
import llmkata.reference.train as train_ref

from . import mutant

HALF = (torch.float16, torch.bfloat16)
LOG2_E = math.log2(math.e)  # e^x = 2^(x·log₂e)


def _named(name, function):
    function.__name__ = function.__qualname__ = name
    return function


# ---------------------------------------------------------------- RMSNorm


@mutant("kernels.RMSNormFunction", "test_rmsnorm_function_equals_the_definition_in_values_and_gradients",
        why="backward dx = r·dy·w, without the term from r's dependence on x")
class RMSNormBackwardWithoutTheMeanTerm(ref.RMSNormFunction):
    """dx = r · dy · w: r treated as a constant, forgetting that every x_j moves it."""

    @staticmethod
    def backward(ctx, grad):
        x, weight, rms_inv = ctx.saved_tensors
        x_hat = x.to(rms_inv.dtype) * rms_inv
        return grad * weight * rms_inv, (grad * x_hat).sum_to_size(weight.shape), None


@mutant("kernels.RMSNormFunction", "test_rmsnorm_function_equals_the_definition_in_values_and_gradients",
        why="backward with Σ g·x̂ where mean(g·x̂) belongs")
class RMSNormBackwardWithASumForTheMean(ref.RMSNormFunction):
    """dx = r · (g − x̂ · Σ g·x̂): a sum over the row where the derivative of mean(x²) gives a mean."""

    @staticmethod
    def backward(ctx, grad):
        x, weight, rms_inv = ctx.saved_tensors
        x_hat, g = x.to(rms_inv.dtype) * rms_inv, grad * weight
        grad_x = rms_inv * (g - x_hat * (g * x_hat).sum(-1, keepdim=True))
        return grad_x, (grad * x_hat).sum_to_size(weight.shape), None


@mutant("kernels.RMSNormFunction", "test_rmsnorm_function_equals_the_definition_in_values_and_gradients",
        why="backward gives the weight Σ dy·x instead of Σ dy·x̂")
class RMSNormBackwardWithWeightGradientOfX(ref.RMSNormFunction):
    """dw = Σ dy · x: the weight multiplies the normalised x̂, not x."""

    @staticmethod
    def backward(ctx, grad):
        grad_x, _, _ = ref.RMSNormFunction.backward(ctx, grad)
        x, weight, _ = ctx.saved_tensors
        return grad_x, (grad * x).sum_to_size(weight.shape), None


@mutant("kernels.RMSNormFunction", "test_rmsnorm_function_equals_the_definition_in_values_and_gradients",
        why="x / (rms + eps) instead of x / sqrt(ms + eps)")
class RMSNormWithEpsOutsideTheSqrt(ref.RMSNormFunction):
    """r = 1 / (sqrt(mean(x²)) + eps): the backward pass is the reference's, the forward a different function."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rms_inv = 1 / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)
        ctx.save_for_backward(x, weight, rms_inv)
        return x * rms_inv * weight


@mutant("kernels.RMSNormFunction", "test_rmsnorm_function_in_half_precision", why="sums the squares in half precision")
class RMSNormInTheInputDtype(ref.RMSNormFunction):
    """Squares, averages and normalises in the dtype of x: float16 squares overflow, bfloat16 ones lose digits."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        squares = x * x
        total = squares[..., 0]
        for j in range(1, x.shape[-1]):  # a running sum in x's own dtype
            total = total + squares[..., j]
        rms_inv = torch.rsqrt(total[..., None] / x.shape[-1] + eps)
        ctx.save_for_backward(x, weight, rms_inv)
        return x * rms_inv * weight


@mutant("kernels.RMSNormFunction", "test_rmsnorm_function_in_half_precision",
        why="returns float32 for half-precision inputs")
class RMSNormReturningFloat32(ref.RMSNormFunction):
    """Computes in float32, as it should, and forgets to cast the result back to the inputs' dtype."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        return ref.RMSNormFunction.forward(ctx, x, weight, eps).float()


# ---------------------------------------------------------------- SwiGLU


@mutant("kernels.SwiGLUFunction", "test_swiglu_function_equals_the_definition_in_values_and_gradients",
        why="backward takes σ(gate) as the derivative of SiLU, missing SiLU·(1 − σ)")
class SwiGLUBackwardWithSigmoidAsTheDerivative(ref.SwiGLUFunction):
    """dgate = dh · up · σ(gate): differentiates gate · σ(gate) as if σ(gate) were a constant."""

    @staticmethod
    def backward(ctx, grad):
        gate, up, s = ctx.saved_tensors
        return grad * up * s, grad * gate * s


@mutant("kernels.SwiGLUFunction", "test_swiglu_function_equals_the_definition_in_values_and_gradients",
        why="backward with σ' = −σ(1 − σ)")
class SwiGLUBackwardWithASignError(ref.SwiGLUFunction):
    """dgate = dh · up · (s − SiLU · (1 − s)): σ' taken as −σ(1 − σ)."""

    @staticmethod
    def backward(ctx, grad):
        gate, up, s = ctx.saved_tensors
        silu = gate * s
        return grad * up * (s - silu * (1 - s)), grad * silu


@mutant("kernels.SwiGLUFunction", "test_swiglu_function_in_half_precision", why="float16 computed in bfloat16")
class SwiGLUInBFloat16ForAnyHalfDtype(ref.SwiGLUFunction):
    """Moves float16 inputs to bfloat16 (to be safe from overflow) and back: three bits of mantissa lost."""

    @staticmethod
    def forward(ctx, gate, up):
        dtype = gate.dtype
        if dtype in HALF:
            gate, up = gate.to(torch.bfloat16), up.to(torch.bfloat16)
        s = torch.sigmoid(gate)
        ctx.save_for_backward(gate, up, s)
        return (gate * s * up).to(dtype)


@mutant("kernels.SwiGLUFunction", "test_half_precision_kernels_round_once",
        why="computes σ(gate) and both products in the inputs' half precision, rounding each step")
class SwiGLUFunctionRoundingEveryStep(ref.SwiGLUFunction):
    """σ(gate), gate · σ and the product with up each rounded to bfloat16 or float16: within the dtype's tolerance,
    but not the value rounded once."""

    @staticmethod
    def forward(ctx, gate, up):
        s = torch.sigmoid(gate)
        ctx.save_for_backward(gate, up, s.float())
        return gate * s * up


# ---------------------------------------------------------------- the RoPE rotation


def _turn(x, cos, sin, interleaved):
    """The pairs of x turned by the angle of (cos, sin): (x₁ cos − x₂ sin, x₁ sin + x₂ cos)."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1)


@mutant("kernels.RotateFunction", "test_rotate_function_equals_the_definition_in_values_and_gradients",
        why="backward turns the gradient by +angle, as the forward does")
class RotateBackwardByThePlusAngle(ref.RotateFunction):
    """Backward turns the gradient by the same angle as the forward: Rᵀ taken to be R."""

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _turn(grad, cos, sin, ctx.interleaved).sum_to_size(ctx.x_shape), None, None, None


@mutant("kernels.RotateFunction", "test_rotate_function_equals_the_definition_in_values_and_gradients",
        why="backward pairs split halves whatever the forward paired")
class RotateBackwardIgnoringTheInterleavedFlag(ref.RotateFunction):
    """Backward turns split halves back even when the forward turned adjacent pairs."""

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _turn(grad, cos, -sin, False).sum_to_size(ctx.x_shape), None, None, None


@mutant("kernels.RotateFunction", "test_rotate_function_equals_the_definition_in_values_and_gradients",
        why="turns by −angle")
class RotateClockwise(ref.RotateFunction):
    """Forward turns by −θ, (x₁ cos + x₂ sin, −x₁ sin + x₂ cos); backward, the reference's, by +θ: consistent, and
    the wrong rotation."""

    @staticmethod
    def forward(ctx, x, cos, sin, interleaved):
        ctx.save_for_backward(cos, -sin)  # the reference's backward turns by (cos, −(−sin)): +θ, consistent
        ctx.interleaved, ctx.x_shape = interleaved, x.shape
        return _turn(x, cos, -sin, interleaved)


# ---------------------------------------------------------------- cross-entropy


def _softmax(exps, sums):
    return exps / sums[:, None]  # the forward keeps e^(z − m) and its row sums


def _one_hot(targets, like):
    return torch.nn.functional.one_hot(targets, like.shape[-1]).to(like.dtype)


def _counted_share(grad, counted):
    return (grad * counted / counted.sum())[:, None]  # (N, 1): g/n on counted rows, 0 on ignored ones


class CrossEntropyBackwardForgettingTheCount(ref.CrossEntropyFunction):
    """(softmax − one-hot) · g without the 1/n."""

    @staticmethod
    def backward(ctx, grad):
        exps, sums, targets, counted = ctx.saved_tensors
        return grad * (_softmax(exps, sums) - _one_hot(targets, exps)) * counted[:, None], None, None


class CrossEntropyBackwardIgnoringTheUpstreamGradient(ref.CrossEntropyFunction):
    """(softmax − one-hot)/n whatever gradient flows in: right for loss.backward() alone, wrong for 3·loss."""

    @staticmethod
    def backward(ctx, grad):
        exps, sums, targets, counted = ctx.saved_tensors
        return (_softmax(exps, sums) - _one_hot(targets, exps)) * _counted_share(1.0, counted), None, None


class CrossEntropyBackwardWithTheSignFlipped(ref.CrossEntropyFunction):
    """(one-hot − softmax)/n: gradient descent would climb the loss."""

    @staticmethod
    def backward(ctx, grad):
        exps, sums, targets, counted = ctx.saved_tensors
        return (_one_hot(targets, exps) - _softmax(exps, sums)) * _counted_share(grad, counted), None, None


class CrossEntropyBackwardKeepingIgnoredRows(ref.CrossEntropyFunction):
    """Gives ignored rows the gradient of their placeholder target."""

    @staticmethod
    def backward(ctx, grad):
        exps, sums, targets, counted = ctx.saved_tensors
        return (_softmax(exps, sums) - _one_hot(targets, exps)) * grad / counted.sum(), None, None


class CrossEntropyBackwardWithoutNormalising(ref.CrossEntropyFunction):
    """Uses e^(z − m) where softmax needs e^(z − m) / Σ e^(z − m)."""

    @staticmethod
    def backward(ctx, grad):
        exps, _, targets, counted = ctx.saved_tensors
        return (exps - _one_hot(targets, exps)) * _counted_share(grad, counted), None, None


class CrossEntropyWithoutTheMaxShift(ref.CrossEntropyFunction):
    """Takes e^z itself, without subtracting the row max first: e^(1e4) overflows even in float32."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        counted = targets != ignore_index
        targets = torch.where(counted, targets, 0)
        exps = torch.exp2(logits * LOG2_E)  # (N, V)
        sums = exps.sum(-1)
        nll = torch.where(counted, sums.log() - logits.gather(-1, targets[:, None]).squeeze(-1), 0.0)
        ctx.save_for_backward(exps, sums, targets, counted)
        return nll.sum() / counted.sum()


class CrossEntropyWithOneMaximumForAllRows(ref.CrossEntropyFunction):
    """Shifts every row by the largest logit of the whole batch: rows far below it underflow to e^(z − m) = 0."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        counted = targets != ignore_index
        targets = torch.where(counted, targets, 0)
        shifted = logits - logits.amax()
        exps = torch.exp(shifted)  # (N, V)
        sums = exps.sum(-1)
        nll = torch.where(counted, sums.log() - shifted.gather(-1, targets[:, None]).squeeze(-1), 0.0)
        ctx.save_for_backward(exps, sums, targets, counted)
        return nll.sum() / counted.sum()


def _flatten(logits, targets, upcast=True):
    if upcast and logits.dtype in HALF:
        logits = logits.float()
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def _cross_entropy_through(function):
    """kernels.cross_entropy with `function` in place of CrossEntropyFunction (and without the checks)."""
    def cross_entropy(logits, targets, ignore_index=-100):
        return function.apply(*_flatten(logits, targets), ignore_index)
    return _named(function.__name__, cross_entropy)


mutant("kernels.cross_entropy", "test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients",
       why=CrossEntropyBackwardForgettingTheCount.__doc__)(
    _cross_entropy_through(CrossEntropyBackwardForgettingTheCount))


mutant("kernels.cross_entropy", "test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients",
       why=CrossEntropyBackwardIgnoringTheUpstreamGradient.__doc__)(
    _cross_entropy_through(CrossEntropyBackwardIgnoringTheUpstreamGradient))


mutant("kernels.cross_entropy", "test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients",
       why=CrossEntropyBackwardWithTheSignFlipped.__doc__)(
    _cross_entropy_through(CrossEntropyBackwardWithTheSignFlipped))


mutant("kernels.cross_entropy", "test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients",
       why=CrossEntropyBackwardKeepingIgnoredRows.__doc__)(
    _cross_entropy_through(CrossEntropyBackwardKeepingIgnoredRows))


mutant("kernels.cross_entropy", "test_cross_entropy_kernel_equals_the_definition_in_values_and_gradients",
       why=CrossEntropyBackwardWithoutNormalising.__doc__)(
    _cross_entropy_through(CrossEntropyBackwardWithoutNormalising))


mutant("kernels.cross_entropy", "test_cross_entropy_kernel_in_half_precision_and_at_large_logits",
       why="exponentiates the logits without subtracting the row max")(
    _cross_entropy_through(CrossEntropyWithoutTheMaxShift))


mutant("kernels.cross_entropy", "test_kernels_shift_each_row_by_its_own_maximum",
       why=CrossEntropyWithOneMaximumForAllRows.__doc__)(_cross_entropy_through(CrossEntropyWithOneMaximumForAllRows))


@mutant("kernels.cross_entropy", "test_cross_entropy_kernel_in_half_precision_and_at_large_logits",
        why="returns the loss in the logits' dtype: a bfloat16 loss")
def cross_entropy_in_the_logits_dtype(logits, targets, ignore_index=-100):
    """Casts the loss back to the logits' dtype, as if it were an activation."""
    return ref.CrossEntropyFunction.apply(*_flatten(logits, targets, upcast=False), ignore_index).to(logits.dtype)


@mutant("kernels.cross_entropy", "test_cross_entropy_kernel_rejects_what_the_definition_rejects",
        why="skips the checks of train.cross_entropy")
def cross_entropy_without_checks(logits, targets, ignore_index=-100):
    """Trusts the caller: a target outside the vocabulary or a shape mismatch meets an index error (or none)."""
    return ref.CrossEntropyFunction.apply(*_flatten(logits, targets), ignore_index)


# ---------------------------------------------------------------- attention


class AttentionBackwardWithoutRowTerm(ref.AttentionFunction):
    """ds = P ⊙ dP: the softmax Jacobian's cross term − P (dout · out) forgotten."""

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probabilities, _ = ctx.saved_tensors
        grad_s = (grad_out @ v.transpose(1, 2)) * probabilities
        return ((grad_s @ k) * ctx.scale, (grad_s.transpose(1, 2) @ q) * ctx.scale,
                probabilities.transpose(1, 2) @ grad_out, None, None)


class AttentionBackwardUnscaledKeys(ref.AttentionFunction):
    """dk = dsᵀ q, forgetting that the scores were q kᵀ times the scale."""

    @staticmethod
    def backward(ctx, grad_out):
        grad_q, grad_k, grad_v, _, _ = ref.AttentionFunction.backward(ctx, grad_out)
        return grad_q, grad_k / ctx.scale, grad_v, None, None


class AttentionBackwardWithTheDefaultScale(ref.AttentionFunction):
    """The backward pass scales by 1/√d, whatever scale the forward pass was given."""

    @staticmethod
    def backward(ctx, grad_out):
        grad_q, grad_k, grad_v, _, _ = ref.AttentionFunction.backward(ctx, grad_out)
        default = 1 / math.sqrt(ctx.saved_tensors[0].shape[-1])
        return grad_q * (default / ctx.scale), grad_k * (default / ctx.scale), grad_v, None, None


class AttentionNaNOnFullyMaskedRows(ref.AttentionFunction):
    """Softmax of a row of −inf only: exp(−inf − (−inf)) = NaN, where the definition gives 0."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        scores = q @ k.transpose(1, 2) * scale
        if bias is not None:
            scores = scores + bias
        probabilities = torch.softmax(scores, -1)
        out = probabilities @ v
        ctx.save_for_backward(q, k, v, probabilities, out)
        ctx.scale = scale
        return out


def _attention_through(function, top_left=False):
    """kernels.attention with `function` in place of AttentionFunction (top_left: is_causal as torch's SDPA
    aligns it, query i with key i, wrong when Tq ≠ Tk)."""
    def attention(q, k, v, mask=None, is_causal=False, scale=None):
        lead, n_queries, n_keys = q.shape[:-2], q.shape[-2], k.shape[-2]
        allowed = torch.ones(n_queries, n_keys, dtype=torch.bool) if mask is None else mask
        if is_causal:
            offset = 0 if top_left else n_keys - n_queries
            allowed = allowed & attention_ref.causal_mask(n_queries, n_keys, offset=offset)
        bias = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
        bias = bias.expand(*lead, n_queries, n_keys).reshape(-1, n_queries, n_keys)
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        out = function.apply(q.reshape(-1, n_queries, q.shape[-1]), k.reshape(-1, n_keys, k.shape[-1]),
                             v.reshape(-1, n_keys, v.shape[-1]), bias, scale)
        return out.reshape(*lead, n_queries, v.shape[-1])
    return _named(function.__name__ + ("AlignedTopLeft" if top_left else ""), attention)


mutant("kernels.attention", "test_attention_kernel_equals_the_definition_in_values_and_gradients",
       why=AttentionBackwardWithoutRowTerm.__doc__)(_attention_through(AttentionBackwardWithoutRowTerm))


mutant("kernels.attention", "test_attention_kernel_equals_the_definition_in_values_and_gradients",
       why=AttentionBackwardUnscaledKeys.__doc__)(_attention_through(AttentionBackwardUnscaledKeys))


mutant("kernels.attention", "test_attention_kernel_equals_the_definition_in_values_and_gradients",
       why=AttentionBackwardWithTheDefaultScale.__doc__)(_attention_through(AttentionBackwardWithTheDefaultScale))


mutant("kernels.attention", "test_attention_kernel_equals_the_definition_in_values_and_gradients",
       why=AttentionNaNOnFullyMaskedRows.__doc__)(_attention_through(AttentionNaNOnFullyMaskedRows))


mutant("kernels.attention", "test_attention_kernel_equals_the_definition_in_values_and_gradients",
       why="is_causal aligns query i with key i even when there are more keys than queries")(
    _attention_through(ref.AttentionFunction, top_left=True))


@mutant("kernels.attention", "test_attention_kernel_rejects_mismatched_inputs", why="casts k and v to q's dtype")
def attention_casting_silently(q, k, v, mask=None, is_causal=False, scale=None):
    return ref.attention(q, k.to(q), v.to(q), mask=mask, is_causal=is_causal, scale=scale)


@mutant("kernels.attention", "test_attention_kernel_rejects_mismatched_inputs", why="reads a float mask as booleans")
def attention_taking_any_mask_as_booleans(q, k, v, mask=None, is_causal=False, scale=None):
    """A float mask (perhaps an additive one of 0 / −inf) silently read as booleans."""
    return ref.attention(q, k, v, mask=None if mask is None else mask.bool(), is_causal=is_causal, scale=scale)


@mutant("kernels.attention", "test_attention_kernel_rejects_mismatched_inputs",
        why="checks q against k only: v in another dtype is cast silently")
def attention_checking_q_against_k_only(q, k, v, mask=None, is_causal=False, scale=None):
    attention_ref._check_same_dtype_and_device(q=q, k=k)
    return ref.attention(q, k, v.to(q.dtype), mask=mask, is_causal=is_causal, scale=scale)


@mutant("kernels.attention", "test_attention_kernel_rejects_mismatched_inputs",
        why="flattens q, k and v to (N, T, d) batches without checking that their shapes fit")
def attention_without_the_shape_check(q, k, v, mask=None, is_causal=False, scale=None):
    """Trusts the caller: leading dimensions that differ, or keys and values of different lengths, meet an error
    inside a matmul (or none) instead of one that names the shapes."""
    attention_ref._check_same_dtype_and_device(q=q, k=k, v=v)
    return _attention_through(ref.AttentionFunction)(q, k, v, mask=mask, is_causal=is_causal, scale=scale)


@mutant("kernels.attention", "test_kernels_run_on_the_device_of_their_inputs_without_reading_numbers_back",
        why="builds the causal bias on the default device, not on q's")
def attention_with_the_causal_bias_on_the_default_device(q, k, v, mask=None, is_causal=False, scale=None):
    lead, n_queries, n_keys = q.shape[:-2], q.shape[-2], k.shape[-2]
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        bias = bias.expand(*lead, n_queries, n_keys).reshape(-1, n_queries, n_keys)
    if is_causal:
        causal = torch.full((n_queries, n_keys), float("-inf"), dtype=q.dtype).triu_(n_keys - n_queries + 1)  # CPU
        bias = causal if bias is None else bias + causal
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = ref.AttentionFunction.apply(q.reshape(-1, n_queries, q.shape[-1]), k.reshape(-1, n_keys, k.shape[-1]),
                                      v.reshape(-1, n_keys, v.shape[-1]), bias, scale)
    return out.reshape(*lead, n_queries, v.shape[-1])


# ---------------------------------------------------------------- tiled (flash) attention


def _tiled_with(function, name):
    """kernels.tiled_attention computed by `function` on (N, T, d) inputs, without the checks."""
    def tiled_attention(q, k, v, is_causal=False, block_size_q=128, block_size_k=256, scale=None):
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        lead = q.shape[:-2]
        out, lse = function(q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]), v.reshape(-1, *v.shape[-2:]),
                            is_causal, block_size_q, block_size_k, scale)
        return out.reshape(*lead, *out.shape[-2:]), lse.reshape(*lead, lse.shape[-1])
    return _named(name, tiled_attention)


def _plain_tiles(rescale=True, last_partial_block=True, top_left=False, ignore_scale=False, shared_max=False):
    """Tiled forward through ordinary autograd, accumulating in the inputs' dtype: right values in float32 and
    float64 (unless told otherwise), and O(T²) saved for the backward pass. shared_max: one running maximum for
    every row of the batch, where each row needs its own."""
    def forward(q, k, v, is_causal, block_q, block_k, scale):
        n, n_queries, _ = q.shape
        n_keys = k.shape[1]
        offset = 0 if top_left else n_keys - n_queries
        key_stop = n_keys if last_partial_block else n_keys - n_keys % block_k
        scale = 1 / math.sqrt(q.shape[-1]) if ignore_scale else scale
        outs, lses = [], []
        for i0 in range(0, n_queries, block_q):
            i1 = min(i0 + block_q, n_queries)
            row_max = torch.full((n, i1 - i0), torch.finfo(q.dtype).min, dtype=q.dtype)
            row_sum = torch.zeros(n, i1 - i0, dtype=q.dtype)
            acc = torch.zeros(n, i1 - i0, v.shape[2], dtype=q.dtype)
            for j0 in range(0, key_stop, block_k):
                j1 = min(j0 + block_k, key_stop)
                scores = (q[:, i0:i1] @ k[:, j0:j1].transpose(1, 2)) * scale
                if is_causal:
                    future = torch.arange(j0, j1)[None, :] > torch.arange(i0, i1)[:, None] + offset
                    scores = scores.masked_fill(future, float("-inf"))
                new_max = torch.maximum(row_max, scores.amax() if shared_max else scores.amax(-1))
                correction = torch.exp(row_max - new_max) if rescale else torch.ones_like(new_max)
                p = torch.exp(scores - new_max[..., None])
                row_sum = row_sum * correction + p.sum(-1)
                acc = acc * correction[..., None] + p @ v[:, j0:j1]
                row_max = new_max
            seen = row_sum > 0
            outs.append(acc / torch.where(seen, row_sum, 1.0)[..., None])
            lses.append(torch.where(seen, row_max + torch.log(torch.where(seen, row_sum, 1.0)), float("-inf")))
        return torch.cat(outs, 1), torch.cat(lses, 1)
    return forward


mutant("kernels.tiled_attention", "test_tiled_attention_equals_naive_values_and_log_sum_exp",
       why="the online softmax forgets to rescale the running sums when the max grows")(
    _tiled_with(_plain_tiles(rescale=False), "tiled_without_rescaling"))


mutant("kernels.tiled_attention", "test_tiled_attention_equals_naive_values_and_log_sum_exp",
       why="the last key block is dropped when the block size does not divide the length")(
    _tiled_with(_plain_tiles(last_partial_block=False),
                                                  "tiled_dropping_the_last_partial_block"))


mutant("kernels.tiled_attention", "test_tiled_attention_equals_naive_values_and_log_sum_exp",
       why="causal from the top left when Tq != Tk")(
    _tiled_with(_plain_tiles(top_left=True), "tiled_causal_from_the_top_left"))


mutant("kernels.tiled_attention", "test_tiled_attention_equals_naive_values_and_log_sum_exp",
       why="always scales by 1/√d")(_tiled_with(_plain_tiles(ignore_scale=True), "tiled_ignoring_the_scale"))


mutant("kernels.tiled_attention", "test_tiled_attention_accumulates_half_precision_in_float32",
       "test_tiled_attention_saves_linear_memory_for_backward",
       why="running max, sum and output kept in the inputs' dtype (bfloat16), and autograd keeps every tile's "
           "probabilities for the backward pass")(_tiled_with(_plain_tiles(), "tiled_accumulating_in_the_input_dtype"))


mutant("kernels.tiled_attention", "test_tiled_attention_multiplies_only_the_tiles_it_needs",
       why="causal attention visits every key block and masks the tiles above the diagonal instead of skipping them")(
    _tiled_with(_plain_tiles(), "tiled_visiting_every_key_block"))


mutant("kernels.tiled_attention", "test_kernels_shift_each_row_by_its_own_maximum",
       why="the running maximum is one number for the whole tile of scores, not one per query")(
    _tiled_with(_plain_tiles(shared_max=True), "tiled_with_one_maximum_for_every_row"))


@mutant("kernels.tiled_attention", "test_tiled_attention_rejects_bad_blocks_and_mismatched_inputs",
        why="flattens q, k and v to (N, T, d) batches without checking that their shapes fit")
def tiled_without_the_shape_check(q, k, v, is_causal=False, block_size_q=128, block_size_k=256, scale=None):
    attention_ref._check_same_dtype_and_device(q=q, k=k, v=v)
    if block_size_q < 1 or block_size_k < 1:
        raise ValueError(f"block_size_q and block_size_k must be positive, got {block_size_q}, {block_size_k}")
    return _tiled_with(ref.TiledAttentionFunction.apply, "tiled")(q, k, v, is_causal, block_size_q, block_size_k,
                                                                  scale)


def _full_matrix(q, k, v, is_causal, block_q, block_k, scale):
    """Right values from the whole T×T matrix: what tiling exists to avoid."""
    n_queries, n_keys = q.shape[1], k.shape[1]
    scores = (q @ k.transpose(1, 2)) * scale
    if is_causal:
        scores = scores.masked_fill(~attention_ref.causal_mask(n_queries, n_keys, n_keys - n_queries), float("-inf"))
    out = attention_ref.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    return out, torch.logsumexp(scores, -1)


mutant("kernels.tiled_attention", "test_tiled_attention_saves_linear_memory_for_backward",
       why="computes the whole T×T matrix")(_tiled_with(_full_matrix, "tiled_from_the_full_matrix"))


class TiledBackwardIgnoringLse(ref.TiledAttentionFunction):
    """The gradient flowing into lse is dropped: right only when lse is not used."""

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        return ref.TiledAttentionFunction.backward(ctx, grad_out, torch.zeros_like(grad_lse))


mutant("kernels.tiled_attention", "test_tiled_attention_gradients_equal_naive",
       why="the backward pass ignores the gradient of lse")(
    _tiled_with(TiledBackwardIgnoringLse.apply, "tiled_backward_ignoring_lse"))


class TiledBackwardWithoutRowTerm(ref.TiledAttentionFunction):
    """ds = P ⊙ (dP + dlse), forgetting − P (dout · out): the softmax Jacobian's cross term."""

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        out = ctx.saved_tensors[3]
        return ref.TiledAttentionFunction.backward(ctx, grad_out, grad_lse + (grad_out * out).sum(-1))


mutant("kernels.tiled_attention", "test_tiled_attention_gradients_equal_naive",
       why="the backward pass forgets the softmax cross term")(
    _tiled_with(TiledBackwardWithoutRowTerm.apply,
                                                  "tiled_backward_without_the_row_term"))


@mutant("kernels.tiled_attention", "test_tiled_attention_rejects_bad_blocks_and_mismatched_inputs",
        why="block sizes below 1 raised to 1")
def tiled_accepting_any_block_size(q, k, v, is_causal=False, block_size_q=128, block_size_k=256, scale=None):
    return ref.tiled_attention(q, k, v, is_causal, max(block_size_q, 1), max(block_size_k, 1), scale)


@mutant("kernels.tiled_attention", "test_tiled_attention_rejects_bad_blocks_and_mismatched_inputs",
        why="casts k and v to q's dtype")
def tiled_casting_silently(q, k, v, is_causal=False, block_size_q=128, block_size_k=256, scale=None):
    return ref.tiled_attention(q, k.to(q), v.to(q), is_causal, block_size_q, block_size_k, scale)


# ---------------------------------------------------------------- the model and the trainer on the kernel path

FLASH_GPU_MODEL = "test_flash_attention_on_the_gpu_in_the_model_equals_the_model_without_kernels"


def _head_split(module, x, q, k, v):
    batch, length, _ = x.shape
    q = q.view(batch, length, module.n_heads, module.head_dim).transpose(1, 2)  # (B, H, T, hd)
    k = k.view(batch, length, module.n_kv_heads, module.head_dim).transpose(1, 2)  # (B, KV, T, hd)
    v = v.view(batch, length, module.n_kv_heads, module.head_dim).transpose(1, 2)
    return q, k, v


def _attend(module, x, q, k, v, cache, top_left=False):
    """RoPE, the cache, GQA and kernels.attention, as CausalSelfAttention(kernels=True) does (top_left: the causal
    mask aligned as torch's is_causal aligns it, query i with key i)."""
    batch, length, _ = x.shape
    offset = 0 if cache is None else cache.length
    positions = torch.arange(offset, offset + length)
    q, k = module.rotary(q, positions), module.rotary(k, positions)
    if cache is not None:
        k, v = cache.update(k, v)
    n_rep = module.n_heads // module.n_kv_heads
    k, v = attention_ref.repeat_kv(k, n_rep), attention_ref.repeat_kv(v, n_rep)
    if top_left:
        out = ref.attention(q, k, v, mask=attention_ref.causal_mask(length, k.shape[-2], offset=0))
    else:
        out = ref.attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(batch, length, -1)  # (B, T, H·hd)


class _FusedProjectionAttention(attention_ref.CausalSelfAttention):
    """One matmul by the stacked q, k, v weights and o_proj's weight used directly: fast, and blind to any module
    that wraps a projection (LoRA, tensor parallel)."""

    def forward(self, x, position_ids=None, cache=None):
        weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        kv_width = self.n_kv_heads * self.head_dim
        q, k, v = (x @ weight.T).split((self.n_heads * self.head_dim, kv_width, kv_width), dim=-1)
        out = _attend(self, x, *_head_split(self, x, q, k, v), cache)
        return out @ self.o_proj.weight.T


class _TopLeftCausalAttention(attention_ref.CausalSelfAttention):
    """Builds the causal mask for kernels.attention from the top left: right for a whole sequence, wrong for the
    queries that follow a cache."""

    def forward(self, x, position_ids=None, cache=None):
        qkv = _head_split(self, x, self.q_proj(x), self.k_proj(x), self.v_proj(x))
        return self.o_proj(_attend(self, x, *qkv, cache, top_left=True))


def _rotated_heads(module, x, cache):
    """q, k, v of x in heads, q and k rotated to the positions that follow what the cache holds."""
    q, k, v = _head_split(module, x, module.q_proj(x), module.k_proj(x), module.v_proj(x))
    offset = 0 if cache is None else cache.length
    positions = torch.arange(offset, offset + x.shape[1], device=x.device)
    return module.rotary(q, positions), module.rotary(k, positions), v


class _FlashOnTheNewKeysOnly(attention_ref.CausalSelfAttention):
    """On the GPU, flash_attention given the keys and values of this call, not everything the cache holds: right
    for a whole sequence, blind to the cached prefix."""

    def forward(self, x, position_ids=None, cache=None):
        q, k, v = _rotated_heads(self, x, cache)
        if cache is not None:
            cache.update(k, v)
        out = ref.flash_attention(q, k, v, is_causal=True)[0]
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class _FlashWithInterleavedKVHeads(attention_ref.CausalSelfAttention):
    """On the GPU, GQA by repeating the kv heads as a whole (head h reads kv head h mod Hkv) before flash_attention,
    where the model's heads go in groups (h // (H / Hkv))."""

    def forward(self, x, position_ids=None, cache=None):
        q, k, v = _rotated_heads(self, x, cache)
        if cache is not None:
            k, v = cache.update(k, v)
        n_rep = self.n_heads // self.n_kv_heads
        out = ref.flash_attention(q, k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1), is_causal=True)[0]
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class _SwiGLUWithGateAndUpSwapped(layers_ref.SwiGLU):
    """Calls SwiGLUFunction.apply(up, gate): SiLU lands on up_proj."""

    def forward(self, x):
        return self.down_proj(ref.SwiGLUFunction.apply(self.up_proj(x), self.gate_proj(x)))


class _RMSNormWithoutTheMeanTerm(layers_ref.RMSNorm):
    def forward(self, x):
        return RMSNormBackwardWithoutTheMeanTerm.apply(x, self.weight, self.eps)


def _kernel_transformer(name, attention=None, mlp=None, norm=None):
    """model.Transformer whose kernels=True layers are of the given classes; kernels=False models are untouched."""
    class Mutated(model_ref.Transformer):
        def __init__(self, config):
            super().__init__(config)
            if not config.kernels:
                return
            for layer in self.model.layers:
                for attribute, cls in (("self_attn", attention), ("mlp", mlp), ("input_layernorm", norm),
                                       ("post_attention_layernorm", norm)):
                    if cls is not None:
                        getattr(layer, attribute).__class__ = cls
            if norm is not None:
                self.model.norm.__class__ = norm
    return _named(name, Mutated)


TransformerWithFusedKernelProjections = _kernel_transformer("TransformerWithFusedKernelProjections",
                                                            attention=_FusedProjectionAttention)
TransformerWithTopLeftKernelMask = _kernel_transformer("TransformerWithTopLeftKernelMask",
                                                       attention=_TopLeftCausalAttention)
TransformerWithSwappedKernelSwiGLU = _kernel_transformer("TransformerWithSwappedKernelSwiGLU",
                                                         mlp=_SwiGLUWithGateAndUpSwapped)
TransformerWithWrongKernelNormBackward = _kernel_transformer("TransformerWithWrongKernelNormBackward",
                                                             norm=_RMSNormWithoutTheMeanTerm)
TransformerWithFlashOnTheNewKeysOnly = _kernel_transformer("TransformerWithFlashOnTheNewKeysOnly",
                                                           attention=_FlashOnTheNewKeysOnly)
TransformerWithFlashOverInterleavedKVHeads = _kernel_transformer("TransformerWithFlashOverInterleavedKVHeads",
                                                                 attention=_FlashWithInterleavedKVHeads)


@mutant("train.train_step", "test_train_step_with_kernels_equals_train_step_without",
        why="a kernels=True model's logits are cast to float32 for the loss", spec="kernels")
def train_step_with_the_kernel_loss_in_float32(model, optimizer, micro_batches, max_norm=1.0, lr=None,
                                               autocast_dtype=None):
    """Casts the logits to float32 for kernels.cross_entropy ("the loss is computed in float32"): a float64 model
    gets a loss, gradients and weights a float32 rounding away from those of the plain path."""
    uses_kernels = getattr(getattr(model, "config", None), "kernels", False)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    total = sum(int((y != -100).sum()) for _, y in micro_batches)
    loss_sum = 0.0
    for x, y in micro_batches:
        logits = model(x)
        if uses_kernels:
            loss = ref.cross_entropy(logits.float(), y)
        else:
            loss = train_ref.cross_entropy(logits, y)
        loss = loss * (int((y != -100).sum()) / total)
        loss.backward()
        loss_sum += float(loss.detach())
    norm = float(train_ref.clip_grad_norm(params, math.inf if max_norm is None else max_norm))
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    optimizer.step()
    return loss_sum, norm


mutant("model.Transformer", "test_model_with_kernels_equals_the_model_without",
       why="the kernel path passes (up, gate) to SwiGLUFunction", spec="kernels")(TransformerWithSwappedKernelSwiGLU)


mutant("model.Transformer", "test_model_with_kernels_equals_the_model_without",
       why="the kernel path's RMSNorm backward forgets r's dependence on x: same logits, other gradients",
       spec="kernels")(TransformerWithWrongKernelNormBackward)


mutant("model.Transformer", "test_model_with_kernels_equals_the_model_without",
       why="the kernel path's causal mask is aligned top left: the full forward is right, cached decoding not",
       spec="kernels")(TransformerWithTopLeftKernelMask)


mutant("model.Transformer", FLASH_GPU_MODEL, why="on the GPU, flash_attention sees only the keys of this call, "
       "not the cached ones", spec="kernels")(TransformerWithFlashOnTheNewKeysOnly)


mutant("model.Transformer", FLASH_GPU_MODEL, why="on the GPU, GQA kv heads repeated as a whole before "
       "flash_attention: head h reads kv head h mod Hkv", spec="kernels")(TransformerWithFlashOverInterleavedKVHeads)


mutant("model.Transformer", "test_wrapped_projections_are_used_on_the_kernel_path",
       why="the kernel path multiplies by the stacked q, k, v weights (and o_proj's) instead of calling the modules",
       spec="kernels")(TransformerWithFusedKernelProjections)


# ---------------------------------------------------------------- half precision and the Functions called directly


@mutant("kernels.RotateFunction", "test_half_precision_kernels_round_once",
        why="rotates half precision term by term in half precision: x₁ cos − x₂ sin cancels")
class RotateFunctionInHalfPrecision(ref.RotateFunction):
    @staticmethod
    def forward(ctx, x, cos, sin, interleaved):
        ctx.save_for_backward(cos.to(x.dtype), sin.to(x.dtype))
        ctx.interleaved, ctx.x_shape = interleaved, x.shape
        half = x.shape[-1] // 2
        x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :half], x[..., half:])
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        r1, r2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        return torch.stack((r1, r2), -1).flatten(-2) if interleaved else torch.cat((r1, r2), -1)


@mutant("kernels.CrossEntropyFunction", "test_cross_entropy_kernel_in_half_precision_and_at_large_logits",
        why="computes half-precision logits in their own dtype: a bfloat16 loss")
class CrossEntropyFunctionWithoutUpcasting(ref.CrossEntropyFunction):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        counted = targets != ignore_index
        nll = -torch.log_softmax(logits, -1).gather(-1, torch.where(counted, targets, 0)[:, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets, counted)
        return torch.where(counted, nll, 0).sum() / counted.sum()

    @staticmethod
    def backward(ctx, grad):
        logits, targets, counted = ctx.saved_tensors
        p = torch.softmax(logits, -1) - torch.nn.functional.one_hot(torch.where(counted, targets, 0), logits.shape[-1])
        return p * (counted[:, None] * grad / counted.sum()), None, None


class AttentionFunctionInHalfPrecision(ref.AttentionFunction):
    """Scores, softmax and gradients in the inputs' half precision: the gradients lose their digits."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        scores = q @ k.transpose(1, 2) * scale
        if bias is not None:
            scores = scores + bias
        sees = torch.isfinite(scores).any(-1, keepdim=True)
        probabilities = torch.softmax(scores.masked_fill(~sees, 0.0), -1) * sees
        out = probabilities @ v
        ctx.save_for_backward(q, k, v, probabilities, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, probabilities, out = ctx.saved_tensors
        grad_s = (grad_out @ v.transpose(1, 2) - (grad_out * out).sum(-1, keepdim=True)) * probabilities
        grad_v = probabilities.transpose(1, 2) @ grad_out
        return grad_s @ k * ctx.scale, grad_s.transpose(1, 2) @ q * ctx.scale, grad_v, None, None


mutant("kernels.AttentionFunction", "test_attention_kernel_in_half_precision",
       why=AttentionFunctionInHalfPrecision.__doc__)(AttentionFunctionInHalfPrecision)
mutant("kernels.attention", "test_attention_kernel_in_half_precision", why=AttentionFunctionInHalfPrecision.__doc__)(
    _attention_through(AttentionFunctionInHalfPrecision))


@mutant("kernels.AttentionFunction", "test_attention_kernel_equals_the_definition_in_values_and_gradients",
        why="dk forgets the scale")
class AttentionFunctionWithUnscaledKeyGradients(ref.AttentionFunction):
    @staticmethod
    def backward(ctx, grad_out):
        grad_q, grad_k, grad_v, _, _ = ref.AttentionFunction.backward(ctx, grad_out)
        return grad_q, grad_k / ctx.scale, grad_v, None, None


@mutant("kernels.TiledAttentionFunction", "test_tiled_attention_gradients_equal_naive",
        why="the backward pass ignores the gradient of the log-sum-exp")
class TiledAttentionFunctionIgnoringTheLseGradient(ref.TiledAttentionFunction):
    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        return ref.TiledAttentionFunction.backward(ctx, grad_out, torch.zeros_like(grad_lse))


@mutant("kernels.TiledAttentionFunction", "test_tiled_attention_equals_naive_values_and_log_sum_exp",
        why="returns the log-sum-exp in base 2, as the kernel computes it")
class TiledAttentionFunctionWithLseInBaseTwo(ref.TiledAttentionFunction):
    @staticmethod
    def forward(ctx, q, k, v, is_causal, block_size_q, block_size_k, scale):
        out, lse = ref.TiledAttentionFunction.forward(ctx, q, k, v, is_causal, block_size_q, block_size_k, scale)
        return out, lse / math.log(2.0)


# ---------------------------------------------------------------- the modules' kernel switch


@mutant("layers.RMSNorm", "test_modules_with_kernels_equal_the_modules_without", spec="kernels",
        why="the kernel path hard-codes eps = 1e-6 instead of the module's eps")
class RMSNormKernelWithItsOwnEps(layers_ref.RMSNorm):
    def forward(self, x):
        if self.kernels:
            return ref.RMSNormFunction.apply(x, self.weight, 1e-6)
        return super().forward(x)


@mutant("layers.SwiGLU", "test_modules_with_kernels_equal_the_modules_without", spec="kernels",
        why="the kernel path passes up and gate in the wrong order")
class SwiGLUKernelWithGateAndUpSwapped(layers_ref.SwiGLU):
    def forward(self, x):
        if self.kernels:
            return self.down_proj(ref.SwiGLUFunction.apply(self.up_proj(x), self.gate_proj(x)))
        return super().forward(x)


@mutant("rope.RotaryEmbedding", "test_modules_with_kernels_equal_the_modules_without", spec="kernels",
        why="the kernel path always pairs split halves")
class RotaryEmbeddingKernelIgnoringInterleaved(rope_ref.RotaryEmbedding):
    def forward(self, x, positions):
        if self.kernels:
            return ref.RotateFunction.apply(x, self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype), False)
        return super().forward(x, positions)


@mutant("attention.CausalSelfAttention", "test_modules_with_kernels_equal_the_modules_without", spec="kernels",
        why="the kernel path forgets the causal mask")
class CausalSelfAttentionKernelWithoutTheMask(attention_ref.CausalSelfAttention):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.kernels:
            self.attend = lambda q, k, v, is_causal: ref.attention(q, k, v)  # the causal flag dropped


# ---------------------------------------------------------------- the incremental BPE trainer

BPE_CHUNK = 1 << 20  # the reference's chunk size: parts of about a million characters


def _texts(data, newline="") -> list[str]:
    """The documents of `data` as strings; newline=None reads files with universal newlines ("\\r\\n" -> "\\n")."""
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    texts = []
    for item in data:
        if isinstance(item, os.PathLike):
            with open(item, encoding="utf-8", newline=newline) as file:
                item = file.read()
        texts.append(item)
    return texts


def _pretoken_counts(texts, special_tokens, pattern) -> Counter:
    pattern = tokenizer_ref.PATTERNS.get(pattern, pattern)
    cut = (regex.compile("|".join(map(regex.escape, sorted(special_tokens, key=len, reverse=True))))
           if special_tokens else None)
    counts = Counter()
    for text in texts:
        for segment in cut.split(text) if cut else [text]:
            counts.update(regex.findall(pattern, segment))
    return counts


def _parts(texts, special_tokens) -> list[str]:
    """Each document cut where the first special token at or past BPE_CHUNK characters starts, again and again."""
    cut = (regex.compile("|".join(map(regex.escape, sorted(special_tokens, key=len, reverse=True))))
           if special_tokens else None)
    parts = []
    for text in texts:
        while cut is not None and len(text) > BPE_CHUNK:
            start = next((m.start() for m in cut.finditer(text) if m.start() >= BPE_CHUNK), None)
            if start is None:
                break
            parts.append(text[:start])
            text = text[start:]
        if text:
            parts.append(text)
    return parts


def _descending(token: bytes) -> tuple[int, ...]:
    return tuple(255 - byte for byte in token) + (256,)


def _heap_merges(counts, vocab_size, special_tokens, pattern, *, recheck=True, tie="bytes", warn=True):
    """An incremental trainer (a heap of pair counts, pushed again when a count rises) from pre-token counts, with
    one knob turned wrong at a time: `recheck=False` trusts the top entry's count without comparing it with the
    current one; `tie="ids"` breaks ties by the greater token ids."""
    special_tokens = list(special_tokens)
    words = [[bytes([byte]) for byte in piece.encode("utf-8")] for piece in counts]
    freqs = list(counts.values())
    vocab = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    ids = {bytes([i]): i for i in range(256)}

    def entry(pair, count):
        if tie == "ids":
            return (-count, -ids[pair[0]], -ids[pair[1]], pair)
        return (-count, _descending(pair[0]), _descending(pair[1]), pair)

    pair_counts = Counter()
    for word, freq in zip(words, freqs):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while len(vocab) < vocab_size and heap:
        top = heapq.heappop(heap)
        pair, count = top[-1], -top[0]
        if recheck and pair_counts[pair] != count:
            if pair_counts[pair] > 0:
                heapq.heappush(heap, entry(pair, pair_counts[pair]))
            continue
        merges.append(pair)
        token = pair[0] + pair[1]
        ids[token] = len(vocab)
        vocab[len(vocab)] = token
        before = dict(pair_counts)
        for k, (word, freq) in enumerate(zip(words, freqs)):
            if pair not in zip(word, word[1:]):
                continue
            for old in zip(word, word[1:]):
                pair_counts[old] -= freq
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(token)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            words[k] = merged
            for new in zip(merged, merged[1:]):
                pair_counts[new] += freq
        for changed, now in pair_counts.items():
            if now > before.get(changed, 0):
                heapq.heappush(heap, entry(changed, now))
        pair_counts = +pair_counts  # drop the pairs that are gone
    if warn and len(vocab) < vocab_size:
        warnings.warn("the corpus ran out of pairs to merge", stacklevel=3)
    return tokenizer_ref.Tokenizer(vocab, merges, special_tokens, pattern)


@mutant("kernels.train_bpe", "test_bpe_kernel_learns_the_textbook_merges",
        why="the heap orders equal counts by token id; after a merge, ids no longer follow the bytes' order")
def train_bpe_breaking_ties_by_id(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    counts = _pretoken_counts(_texts(data), special_tokens, pattern)
    return _heap_merges(counts, vocab_size, special_tokens, pattern, tie="ids")


@mutant("kernels.train_bpe", "test_bpe_kernel_learns_the_textbook_merges",
        why="the top heap entry is merged without checking that its count is still the pair's count")
def train_bpe_trusting_stale_heap_entries(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    counts = _pretoken_counts(_texts(data), special_tokens, pattern)
    return _heap_merges(counts, vocab_size, special_tokens, pattern, recheck=False)


@mutant("kernels.train_bpe", "test_bpe_kernel_learns_the_textbook_merges",
        why="the documents are concatenated, so pre-tokens span two of them")
def train_bpe_joining_documents(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    return ref.train_bpe("".join(_texts(data)), vocab_size, special_tokens, pattern, num_workers)


@mutant("kernels.train_bpe", "test_bpe_kernel_counts_a_corpus_of_many_chunks_like_one_text",
        why="only the first chunk's pre-tokens are counted (one future's result, not all)")
def train_bpe_counting_only_the_first_chunk(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    parts, first, size = _parts(_texts(data), special_tokens), [], 0
    for part in parts:
        first.append(part)
        size += len(part)
        if size >= BPE_CHUNK:
            break
    counts = _pretoken_counts(first, special_tokens, pattern)
    return _heap_merges(counts, vocab_size, special_tokens, pattern)


@mutant("kernels.train_bpe", "test_bpe_kernel_counts_a_corpus_of_many_chunks_like_one_text",
        "test_bpe_kernel_counts_a_long_document_with_no_special_token_to_cut_at",
        why="chunks are cut every million characters, through a special token or a pre-token")
def train_bpe_cutting_chunks_at_fixed_places(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    pieces = [text[i:i + BPE_CHUNK] for text in _texts(data) for i in range(0, len(text), BPE_CHUNK)]
    return _heap_merges(_pretoken_counts(pieces, special_tokens, pattern), vocab_size, special_tokens, pattern)


@mutant("kernels.train_bpe", "test_bpe_kernel_counts_a_corpus_of_many_chunks_like_one_text",
        why="the chunks' counts are combined with Counter | (the larger count) instead of added")
def train_bpe_combining_worker_counts_with_max(data, vocab_size, special_tokens=(), pattern="gpt4",
                                               num_workers=None):
    parts = _parts(_texts(data), special_tokens)
    counts = reduce(or_, (_pretoken_counts([part], special_tokens, pattern) for part in parts), Counter())
    return _heap_merges(counts, vocab_size, special_tokens, pattern)


@mutant("kernels.train_bpe", "test_bpe_kernel_merges_do_not_depend_on_workers_or_how_the_corpus_is_given",
        why="files are opened in text mode with universal newlines: '\\r\\n' becomes '\\n'")
def train_bpe_reading_files_with_universal_newlines(data, vocab_size, special_tokens=(), pattern="gpt4",
                                                    num_workers=None):
    return ref.train_bpe(_texts(data, newline=None), vocab_size, special_tokens, pattern, num_workers)


@mutant("kernels.train_bpe", "test_bpe_kernel_counts_a_corpus_of_many_chunks_like_one_text",
        why="stops short of vocab_size without a warning")
def train_bpe_without_warning(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref.train_bpe(data, vocab_size, special_tokens, pattern, num_workers)


@mutant("kernels.train_bpe", "test_bpe_kernel_rejects_bad_num_workers",
        why="a bad num_workers silently means one per CPU")
def train_bpe_ignoring_bad_num_workers(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    if not isinstance(num_workers, int) or num_workers < 1:
        num_workers = None
    return ref.train_bpe(data, vocab_size, special_tokens, pattern, num_workers)


@mutant("kernels.train_bpe", "test_bpe_kernel_rejects_what_the_textbook_trainer_rejects",
        why="a vocab_size too small for the bytes and special tokens is silently enlarged instead of refused")
def train_bpe_clamping_vocab_size(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    vocab_size = max(vocab_size, 256 + len(special_tokens))
    return ref.train_bpe(data, vocab_size, special_tokens, pattern, num_workers)


@mutant("kernels.train_bpe", "test_bpe_kernel_rejects_what_the_textbook_trainer_rejects",
        why="an empty corpus gives a vocabulary of bytes and special tokens")
def train_bpe_accepting_an_empty_corpus(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    if not "".join(_texts(data)):
        vocab = {i: bytes([i]) for i in range(256)}
        vocab.update({256 + k: token.encode("utf-8") for k, token in enumerate(special_tokens)})
        return tokenizer_ref.Tokenizer(vocab, [], special_tokens, pattern)
    return ref.train_bpe(data, vocab_size, special_tokens, pattern, num_workers)


@mutant("kernels.train_bpe", "test_bpe_kernel_learns_the_textbook_merges",
        why="returns a Tokenizer with the default pattern, not the one it was trained with")
def train_bpe_forgetting_the_pattern(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    trained = ref.train_bpe(data, vocab_size, special_tokens, pattern, num_workers)
    return tokenizer_ref.Tokenizer(trained.vocab, trained.merges, special_tokens)


@mutant("kernels.train_bpe", "test_bpe_kernel_warns_only_when_the_corpus_runs_out_of_pairs",
        why="warns when the vocabulary is exactly full: len(vocab) <= vocab_size")
def train_bpe_warning_at_a_full_vocabulary(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    trained = ref.train_bpe(data, vocab_size, special_tokens, pattern, num_workers)
    if len(trained.vocab) == vocab_size:
        warnings.warn(f"the corpus ran out of pairs to merge: vocab_size={vocab_size}", stacklevel=2)
    return trained


@mutant("kernels.train_bpe", "test_bpe_kernel_rejects_what_the_textbook_trainer_rejects",
        why="reads files with errors='replace': bytes that are not UTF-8 become U+FFFD")
def train_bpe_replacing_what_is_not_utf8(data, vocab_size, special_tokens=(), pattern="gpt4", num_workers=None):
    documents = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    texts = []
    for item in documents:
        if isinstance(item, os.PathLike):
            with open(item, encoding="utf-8", errors="replace", newline="") as file:
                item = file.read()
        texts.append(item)
    return ref.train_bpe(texts, vocab_size, special_tokens, pattern, num_workers)


# ---------------------------------------------------------------- flash attention in Triton
#
# The kernels are Triton functions: a mutant is the reference's kernel with one line of its source changed, written
# to a file of its own (Triton reads a kernel's source) and built by the reference's _triton_kernels. Building
# waits for the first call, so that listing the mutants needs no triton.

_FLASH_MUTANT_FILES = {}
if not torch.cuda.is_available():  # Triton's interpreter, chosen before any test can import triton (see the spec)
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _mutated_kernel(name: str, edits: tuple[tuple[str, str], ...]):
    """The reference's Triton kernel `name` (a plain function) with each (old, new) text edit made."""
    import importlib.util
    import inspect
    import tempfile
    import textwrap

    key = (name, edits)
    if key not in _FLASH_MUTANT_FILES:
        source = textwrap.dedent(inspect.getsource(getattr(ref, name)))
        for old, new in edits:
            assert old in source, f"the mutant's edit {old!r} no longer matches kernels.{name}"
            source = source.replace(old, new)
        folder = tempfile.mkdtemp(prefix="llmkata-flash-mutant-")
        path = os.path.join(folder, f"{name}_mutant_{len(_FLASH_MUTANT_FILES)}.py")
        with open(path, "w", encoding="utf-8") as file:
            file.write(source)
        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _FLASH_MUTANT_FILES[key] = getattr(module, name)
    return _FLASH_MUTANT_FILES[key]


def flash_with(name: str, *edits: tuple[str, str]):
    """kernels.flash_attention whose Triton kernel `name` has the given text edits."""

    def kernels():
        functions = {kernel: getattr(ref, kernel) for kernel in ref._FLASH_KERNELS}
        functions[name] = _mutated_kernel(name, edits)
        return ref._triton_kernels(functions)

    class MutatedFlashAttentionFunction(ref.FlashAttentionFunction):
        @staticmethod
        def forward(ctx, q, k, v, is_causal, scale):
            q, k, v = (t.contiguous() for t in (q, k, v))
            out, lse = ref._flash_forward(kernels(), q, k, v, is_causal, scale)
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.settings = (is_causal, scale)
            return out, lse

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_out, grad_lse):
            q, k, v, out, lse = ctx.saved_tensors
            is_causal, scale = ctx.settings
            return (*ref._flash_backward(kernels(), q, k, v, out, lse, grad_out, grad_lse, is_causal, scale),
                    None, None)

    def flash_attention(q, k, v, is_causal=False, scale=None):
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return MutatedFlashAttentionFunction.apply(q, k, v, is_causal, scale)

    return flash_attention


FLASH_VALUES = "test_flash_attention_equals_the_definition_in_values_and_log_sum_exp"
FLASH_GRADIENTS = "test_flash_attention_gradients_equal_the_definition"
FLASH_GPU_VALUES = "test_flash_attention_on_the_gpu_equals_the_definition"
FLASH_GPU_GRADIENTS = "test_flash_attention_on_the_gpu_gradients_equal_the_definition"

_NO_RESCALE = ("_flash_forward_kernel", ("acc * correction[:, None]", "acc"))
_CAUSAL_END_WITHOUT_OFFSET = ("_flash_forward_kernel", ("(block + 1) * BLOCK_M + offset", "(block + 1) * BLOCK_M"))
_LSE_WITHOUT_MAX = ("_flash_forward_kernel", ("(row_max + tl.math.log2(", "(tl.math.log2("))
_NO_DELTA = ("_flash_dq_kernel", ("p * (grad_p - delta[:, None])", "p * grad_p"))
_KV_HEADS_INTERLEAVED = ("_flash_forward_kernel", ("kv_head = head // group", "kv_head = head % (n_heads // group)"))

for _name, _edit, _why in [
        (*_NO_RESCALE, "the running output is not rescaled by 2^(m − m') when the row max grows"),
        (*_CAUSAL_END_WITHOUT_OFFSET, "causal: the key loop stops at the query's index, not its position Tk − Tq + i"),
        (*_LSE_WITHOUT_MAX, "lse = log ℓ, without the running max it was summed under"),
        (*_KV_HEADS_INTERLEAVED, "GQA: query head h reads kv head h mod Hkv instead of h // (H / Hkv)")]:
    mutant("kernels.flash_attention", FLASH_VALUES, why=_why)(flash_with(_name, _edit))
    mutant("kernels.flash_attention", FLASH_GPU_VALUES, why=_why)(flash_with(_name, _edit))

mutant("kernels.flash_attention", FLASH_VALUES, why="causal: the unmasked key blocks run one block into the diagonal")(
    flash_with("_flash_forward_kernel", ("block * BLOCK_M + offset + 1, 0)", "block * BLOCK_M + offset + BLOCK_N, 0)")))

for _name, _edit, _why in [
        (*_NO_DELTA, "dq: ds = P ⊙ dP, without the term D_i = dout_i · out_i − dlse_i"),
        ("_flash_delta_kernel", ("tl.sum(out * grad_out, 1) - grad_lse", "tl.sum(out * grad_out, 1)"),
         "D_i = dout_i · out_i, without the gradient that reaches lse"),
        ("_flash_dkdv_kernel", ("grad_k = grad_k * scale", "grad_k = grad_k"), "dk = dsᵀ q, without the scale"),
        ("_flash_dkdv_kernel", ("tl.maximum(block * BLOCK_N - offset, 0)", "block * BLOCK_N"),
         "causal dk, dv: the query loop starts at the key's index, not at the first query whose position reaches it"),
        ("_flash_dkdv_kernel", ("for g in range(0, group):", "for g in range(0, 1):"),
         "GQA: dk and dv of a kv head summed over the first query head of its group only")]:
    mutant("kernels.flash_attention", FLASH_GRADIENTS, why=_why)(flash_with(_name, _edit))
mutant("kernels.flash_attention", FLASH_GPU_GRADIENTS, why="dq: ds = P ⊙ dP, without D_i")(flash_with(*_NO_DELTA))


@mutant("kernels.flash_attention", "test_flash_attention_in_half_precision",
        why="half precision computed in float32 and returned in float32")
def flash_attention_returning_float32(q, k, v, is_causal=False, scale=None):
    return ref.flash_attention(q.float(), k.float(), v.float(), is_causal=is_causal, scale=scale)


@mutant("kernels.flash_attention", "test_flash_attention_rejects_what_it_cannot_compute",
        why="no check of the dtype: float64 goes to the kernels")
def flash_attention_without_checks(q, k, v, is_causal=False, scale=None):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return ref.FlashAttentionFunction.apply(q, k, v, is_causal, scale)
