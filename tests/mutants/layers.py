"""Wrong implementations of the layers chapter that a learner could plausibly write."""

import math

import torch

import llmkata.reference.layers as ref

from . import Mutant


def softmax_without_max_subtraction(x, dim=-1):
    exp = x.exp()
    return exp / exp.sum(dim=dim, keepdim=True)


def softmax_clamping_logits(x, dim=-1):
    exp = x.clamp(-50, 50).exp()
    return exp / exp.sum(dim=dim, keepdim=True)


def softmax_ignoring_dim(x, dim=-1):
    return ref.softmax(x, dim=-1)


def softmax_with_axis_keyword(x, axis=-1):
    return ref.softmax(x, dim=axis)


def log_softmax_as_log_of_softmax(x, dim=-1):
    return ref.softmax(x, dim=dim).log()


def log_softmax_without_max_in_logsumexp(x, dim=-1):
    return x - x.exp().sum(dim=dim, keepdim=True).log()


def log_softmax_ignoring_dim(x, dim=-1):
    return ref.log_softmax(x, dim=-1)


class _SoftmaxForgettingTheJacobianCrossTerm(torch.autograd.Function):
    """A hand-written backward that returns s * g and forgets - s * <s, g>."""

    @staticmethod
    def forward(ctx, x):
        s = ref.softmax(x)
        ctx.save_for_backward(s)
        return s

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        return s * grad


def softmax_with_wrong_backward(x, dim=-1):
    return _SoftmaxForgettingTheJacobianCrossTerm.apply(x)


def gelu_always_tanh(x, approximate="none"):
    return ref.gelu(x, approximate="tanh")


def gelu_tanh_missing_cubic_term(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * x))
    return ref.gelu(x)


def silu_as_sigmoid(x):
    return torch.sigmoid(x)


class LinearWithoutBias(ref.Linear):
    def forward(self, x):
        return x @ self.weight.T


class LinearWithUntransposedWeight(ref.Linear):
    def forward(self, x):
        w = self.weight if self.weight.shape[0] == self.weight.shape[1] else self.weight.T
        y = x @ w  # correct shape only by accident: W used as (in, out)
        return y if self.bias is None else y + self.bias


class EmbeddingOffByOne(ref.Embedding):
    def forward(self, ids):
        return self.weight[(ids + 1) % self.weight.shape[0]]


class LayerNormWithUnbiasedVariance(ref.LayerNorm):
    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        y = (x - mean) / torch.sqrt(x.var(-1, unbiased=True, keepdim=True) + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


class LayerNormWithoutMeanSubtraction(ref.LayerNorm):
    def forward(self, x):
        var = x.var(-1, unbiased=False, keepdim=True)
        y = x / torch.sqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


class LayerNormIgnoringBias(ref.LayerNorm):
    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight


class RMSNormOverTheWrongAxis(ref.RMSNorm):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + self.eps) * self.weight


class RMSNormWithEpsOutsideTheSqrt(ref.RMSNorm):
    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight


class RMSNormWithoutTheSqrt(ref.RMSNorm):
    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormSubtractingTheMean(ref.RMSNorm):
    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormSquaringInHalfPrecision(ref.RMSNorm):
    """Accumulates the mean of squares in fp16/bf16: overflows (fp16) or loses digits (bf16)."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight.to(x.dtype)


class SwiGLUWithGateAndUpSwapped(ref.SwiGLU):
    def forward(self, x):
        return self.down_proj(ref.silu(self.up_proj(x)) * self.gate_proj(x))


class SwiGLUWithBiases(ref.SwiGLU):
    def __init__(self, dim, hidden_dim, kernels=False):
        super().__init__(dim, hidden_dim, kernels)
        self.gate_proj = ref.Linear(dim, hidden_dim, bias=True)


class SwiGLUWithBiasesInItsStateDict(SwiGLUWithBiases):
    """The same module, as the contract sees it: an extra state-dict key, gate_proj.bias."""


class RMSNormWithADetachedRms(ref.RMSNorm):
    """Takes the rms from x.detach(), as a statistic: the right values, but the gradient forgets that every x_j
    moves the rms (dx = r·dy·w)."""

    def forward(self, x):
        rms_inv = torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + self.eps)
        return x * rms_inv * self.weight


class RMSNormScalingByWeightData(ref.RMSNorm):
    """Multiplies by self.weight.data: the right values, and the weight never learns."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.data


class SwiGLUWithADetachedSigmoid(ref.SwiGLU):
    """SiLU(a) = a · σ(a) with σ(a) detached: the gate's gradient is σ(a), missing a · σ'(a)."""

    def forward(self, x):
        gate = self.gate_proj(x)
        return self.down_proj(gate * torch.sigmoid(gate).detach() * self.up_proj(x))


class _SiLUWithASignError(torch.autograd.Function):
    """A hand-written SiLU whose derivative takes σ' as −σ(1 − σ): σ(a)·(1 − a·(1 − σ(a)))."""

    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a * torch.sigmoid(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved_tensors
        s = torch.sigmoid(a)
        return grad * s * (1 - a * (1 - s))


class SwiGLUWithAHandWrittenSiLUSignError(ref.SwiGLU):
    def forward(self, x):
        return self.down_proj(_SiLUWithASignError.apply(self.gate_proj(x)) * self.up_proj(x))


MUTANTS = [
    Mutant("layers.softmax", softmax_without_max_subtraction, ("test_softmax_survives_large_logits",),
           "exp(x) / sum(exp(x)) without subtracting the max overflows"),
    Mutant("layers.softmax", softmax_ignoring_dim,
           ("test_softmax_equals_its_definition_along_any_dim", "test_softmax_rows_are_probability_distributions"),
           "always normalises the last dimension"),
    Mutant("layers.softmax", softmax_with_axis_keyword, ("test_signature_matches_the_contract",),
           "names the parameter axis instead of dim", spec="contract"),
    Mutant("layers.softmax", softmax_with_wrong_backward,
           ("test_gradients_match_finite_differences", "test_softmax_equals_exp_of_log_softmax"),
           "hand-written backward forgets the cross term (and ignores dim)"),
    Mutant("layers.log_softmax", log_softmax_as_log_of_softmax, ("test_log_softmax_is_finite_where_probabilities_underflow",),
           "log(softmax(x)) is -inf where a probability underflows"),
    Mutant("layers.log_softmax", log_softmax_without_max_in_logsumexp, ("test_log_softmax_is_finite_where_probabilities_underflow",),
           "logsumexp without subtracting the max overflows at large logits"),
    Mutant("layers.log_softmax", log_softmax_ignoring_dim,
           ("test_log_softmax_equals_its_definition", "test_softmax_equals_exp_of_log_softmax"),
           "always normalises the last dimension"),
    Mutant("layers.gelu", gelu_always_tanh, ("test_gelu_equals_x_times_normal_cdf",), "the tanh approximation when exact is asked"),
    Mutant("layers.gelu", gelu_tanh_missing_cubic_term, ("test_gelu_tanh_matches_the_gpt2_approximation",),
           "tanh form without the 0.044715 x³ term"),
    Mutant("layers.silu", silu_as_sigmoid, ("test_silu_equals_x_times_sigmoid",), "σ(x) instead of x σ(x)"),
    Mutant("layers.Linear", LinearWithoutBias, ("test_linear_equals_x_times_w_transposed_plus_b",), "never adds the bias"),
    Mutant("layers.Linear", LinearWithUntransposedWeight, ("test_linear_equals_x_times_w_transposed_plus_b",),
           "x W instead of x Wᵀ"),
    Mutant("layers.Embedding", EmbeddingOffByOne, ("test_embedding_returns_the_row_of_each_id",), "looks up row id + 1"),
    Mutant("layers.LayerNorm", LayerNormWithUnbiasedVariance,
           ("test_layernorm_output_has_zero_mean_and_unit_biased_variance", "test_layernorm_equals_its_definition_with_weight_and_bias"),
           "divides the variance by n - 1"),
    Mutant("layers.LayerNorm", LayerNormWithoutMeanSubtraction,
           ("test_layernorm_output_has_zero_mean_and_unit_biased_variance", "test_layernorm_is_invariant_to_scaling_and_shifting_the_input"),
           "forgets to subtract the mean"),
    Mutant("layers.LayerNorm", LayerNormIgnoringBias, ("test_layernorm_equals_its_definition_with_weight_and_bias",),
           "never adds the bias"),
    Mutant("layers.RMSNorm", RMSNormOverTheWrongAxis,
           ("test_rmsnorm_output_has_unit_rms_over_the_last_dimension", "test_rmsnorm_equals_its_definition_with_weight_and_eps"),
           "normalises over the first dimension"),
    Mutant("layers.RMSNorm", RMSNormWithEpsOutsideTheSqrt, ("test_rmsnorm_equals_its_definition_with_weight_and_eps",),
           "x / (rms + eps) instead of x / sqrt(ms + eps)"),
    Mutant("layers.RMSNorm", RMSNormSubtractingTheMean,
           ("test_rmsnorm_equals_its_definition_with_weight_and_eps",), "subtracts the mean like LayerNorm"),
    Mutant("layers.RMSNorm", RMSNormSquaringInHalfPrecision, ("test_rmsnorm_keeps_the_input_dtype_in_half_precision",),
           "computes the mean of squares in half precision"),
    Mutant("layers.SwiGLU", SwiGLUWithGateAndUpSwapped, ("test_swiglu_equals_down_of_silu_gate_times_up",),
           "applies SiLU to up_proj instead of gate_proj"),
    Mutant("layers.SwiGLU", SwiGLUWithBiases, ("test_swiglu_equals_down_of_silu_gate_times_up",),
           "gives gate_proj a bias (not Llama's layout)"),
    Mutant("layers.SwiGLU", SwiGLUWithBiasesInItsStateDict, ("test_signature_matches_the_contract",),
           "gives gate_proj a bias (not Llama's layout)", spec="contract"),
    Mutant("layers.softmax", softmax_clamping_logits, ("test_softmax_is_invariant_to_adding_a_constant",),
           "clamps logits to avoid overflow instead of subtracting the max"),
    Mutant("layers.RMSNorm", RMSNormWithoutTheSqrt,
           ("test_rmsnorm_is_invariant_to_scaling_the_input", "test_rmsnorm_output_has_unit_rms_over_the_last_dimension"),
           "divides by the mean square instead of its root"),
    Mutant("layers.RMSNorm", RMSNormWithADetachedRms,
           ("test_rmsnorm_gradients_equal_those_of_its_definition", "test_gradients_match_finite_differences"),
           "the rms taken from x.detach(): dx = r·dy·w, without the term from r's dependence on x"),
    Mutant("layers.RMSNorm", RMSNormScalingByWeightData, ("test_rmsnorm_gradients_equal_those_of_its_definition",),
           "multiplies by weight.data: the weight gets no gradient"),
    Mutant("layers.SwiGLU", SwiGLUWithADetachedSigmoid, ("test_swiglu_gradients_equal_those_of_its_definition",),
           "σ(gate) detached: the derivative of SiLU taken as σ, missing SiLU·(1 − σ)"),
    Mutant("layers.SwiGLU", SwiGLUWithAHandWrittenSiLUSignError,
           ("test_swiglu_gradients_equal_those_of_its_definition",),
           "a hand-written SiLU backward with σ' = −σ(1 − σ)"),
]
