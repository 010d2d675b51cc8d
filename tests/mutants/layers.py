"""Wrong implementations of the layers chapter that a learner could plausibly write."""

import math

import torch

import llmkata.reference.layers as ref

from . import mutant


@mutant("layers.softmax", "test_softmax_survives_large_logits",
        why="exp(x) / sum(exp(x)) without subtracting the max overflows")
def softmax_without_max_subtraction(x, dim=-1):
    exp = x.exp()
    return exp / exp.sum(dim=dim, keepdim=True)


@mutant("layers.softmax", "test_softmax_is_invariant_to_adding_a_constant",
        why="clamps logits to avoid overflow instead of subtracting the max")
def softmax_clamping_logits(x, dim=-1):
    exp = x.clamp(-50, 50).exp()
    return exp / exp.sum(dim=dim, keepdim=True)


@mutant("layers.softmax", "test_softmax_equals_its_definition_along_any_dim",
        "test_softmax_rows_are_probability_distributions",
        why="always normalises the last dimension")
def softmax_ignoring_dim(x, dim=-1):
    return ref.softmax(x, dim=-1)


@mutant("layers.softmax", "test_signature_matches_the_contract",
        why="names the parameter axis instead of dim", spec="contract")
def softmax_with_axis_keyword(x, axis=-1):
    return ref.softmax(x, dim=axis)


@mutant("layers.log_softmax", "test_log_softmax_is_finite_where_probabilities_underflow",
        why="log(softmax(x)) is -inf where a probability underflows")
def log_softmax_as_log_of_softmax(x, dim=-1):
    return ref.softmax(x, dim=dim).log()


@mutant("layers.log_softmax", "test_log_softmax_is_finite_where_probabilities_underflow",
        why="logsumexp without subtracting the max overflows at large logits")
def log_softmax_without_max_in_logsumexp(x, dim=-1):
    return x - x.exp().sum(dim=dim, keepdim=True).log()


@mutant("layers.log_softmax", "test_log_softmax_equals_its_definition", "test_softmax_equals_exp_of_log_softmax",
        why="always normalises the last dimension")
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


@mutant("layers.softmax", "test_gradients_match_finite_differences", "test_softmax_equals_exp_of_log_softmax",
        why="hand-written backward forgets the cross term (and ignores dim)")
def softmax_with_wrong_backward(x, dim=-1):
    return _SoftmaxForgettingTheJacobianCrossTerm.apply(x)


@mutant("layers.gelu", "test_gelu_equals_x_times_normal_cdf", why="the tanh approximation when exact is asked")
def gelu_always_tanh(x, approximate="none"):
    return ref.gelu(x, approximate="tanh")


@mutant("layers.gelu", "test_gelu_tanh_matches_the_gpt2_approximation", why="tanh form without the 0.044715 x³ term")
def gelu_tanh_missing_cubic_term(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * x))
    return ref.gelu(x)


@mutant("layers.gelu", "test_bfloat16_gives_bfloat16_close_to_the_float64_definition",
        why="x/2 (1 + erf(x/√2)) and x/2 (1 + tanh(u)) as written: for x < 0 the sum cancels, in bfloat16 to nothing")
def gelu_with_one_plus_erf(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


@mutant("layers.gelu", "test_gelu_rejects_an_unknown_approximation",
        why="any approximate other than 'tanh' silently gives the exact form")
def gelu_accepting_any_approximation(x, approximate="none"):
    return ref.gelu(x, approximate="tanh" if approximate == "tanh" else "none")


@mutant("layers.softmax", "test_bfloat16_gives_bfloat16_close_to_the_float64_definition",
        why="computes in float32 for stability and returns float32")
def softmax_returning_float32(x, dim=-1):
    return ref.softmax(x.float(), dim=dim)


@mutant("layers.log_softmax", "test_bfloat16_gives_bfloat16_close_to_the_float64_definition",
        why="computes in float32 for stability and returns float32")
def log_softmax_returning_float32(x, dim=-1):
    return ref.log_softmax(x.float(), dim=dim)


@mutant("layers.silu", "test_silu_equals_x_times_sigmoid", why="σ(x) instead of x σ(x)")
def silu_as_sigmoid(x):
    return torch.sigmoid(x)


@mutant("layers.Linear", "test_linear_equals_x_times_w_transposed_plus_b", why="never adds the bias")
class LinearWithoutBias(ref.Linear):
    def forward(self, x):
        return x @ self.weight.T


@mutant("layers.Linear", "test_linear_equals_x_times_w_transposed_plus_b", why="x W instead of x Wᵀ")
class LinearWithUntransposedWeight(ref.Linear):
    def forward(self, x):
        w = self.weight if self.weight.shape[0] == self.weight.shape[1] else self.weight.T
        y = x @ w  # correct shape only by accident: W used as (in, out)
        return y if self.bias is None else y + self.bias


@mutant("layers.Linear", "test_linear_equals_x_times_w_transposed_plus_b",
        why="flattens the batch with view(-1, in_features) and back with view(*lead, -1): no view of a strided x, "
            "and no -1 for an empty batch")
class LinearFlatteningWithView(ref.Linear):
    def forward(self, x):
        y = x.view(-1, x.shape[-1]) @ self.weight.T
        y = y.view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


@mutant("layers.Linear", "test_bfloat16_gives_bfloat16_close_to_the_float64_definition",
        why="multiplies in float32 and returns float32 for bfloat16 input and weights")
class LinearInFloat32(ref.Linear):
    def forward(self, x):
        y = x.float() @ self.weight.float().T
        return y if self.bias is None else y + self.bias.float()


@mutant("layers.Embedding", "test_embedding_returns_the_row_of_each_id", why="looks up row id + 1")
class EmbeddingOffByOne(ref.Embedding):
    def forward(self, ids):
        return self.weight[(ids + 1) % self.weight.shape[0]]


@mutant("layers.Embedding", "test_embedding_gradient_is_the_same_every_time_with_several_threads",
        why="indexes weight[ids]: the right rows, but its backward adds repeated ids with atomic adds across threads")
class EmbeddingByAdvancedIndexing(ref.Embedding):
    def forward(self, ids):
        return self.weight[ids]


@mutant("layers.LayerNorm", "test_layernorm_output_has_zero_mean_and_unit_biased_variance",
        "test_layernorm_equals_its_definition_with_weight_bias_and_eps",
        why="divides the variance by n - 1")
class LayerNormWithUnbiasedVariance(ref.LayerNorm):
    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        y = (x - mean) / torch.sqrt(x.var(-1, unbiased=True, keepdim=True) + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


@mutant("layers.LayerNorm", "test_layernorm_output_has_zero_mean_and_unit_biased_variance",
        "test_layernorm_is_invariant_to_scaling_and_shifting_the_input",
        why="forgets to subtract the mean")
class LayerNormWithoutMeanSubtraction(ref.LayerNorm):
    def forward(self, x):
        var = x.var(-1, unbiased=False, keepdim=True)
        y = x / torch.sqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


@mutant("layers.LayerNorm", "test_layernorm_equals_its_definition_with_weight_bias_and_eps", why="never adds the bias")
class LayerNormIgnoringBias(ref.LayerNorm):
    def forward(self, x):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight


@mutant("layers.LayerNorm", "test_layernorm_equals_its_definition_with_weight_bias_and_eps",
        why="LayerNorm(bias=False) still has a bias")
class LayerNormAlwaysWithABias(ref.LayerNorm):
    def __init__(self, dim, eps=1e-5, bias=True):
        super().__init__(dim, eps, bias=True)


@mutant("layers.LayerNorm", "test_layernorm_equals_its_definition_with_weight_bias_and_eps",
        why="(x − mean) / (std + eps) instead of / sqrt(var + eps)")
class LayerNormWithEpsOutsideTheSqrt(ref.LayerNorm):
    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        y = (x - mean) / ((x - mean).pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


@mutant("layers.LayerNorm", "test_layernorm_is_accurate_for_rows_far_from_zero",
        why="the variance as E[x²] − E[x]²: cancels for rows far from 0")
class LayerNormWithVarianceAsMeanOfSquaresMinusSquaredMean(ref.LayerNorm):
    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.pow(2).mean(-1, keepdim=True) - mean.pow(2)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


@mutant("layers.LayerNorm", "test_bfloat16_gives_bfloat16_close_to_the_float64_definition",
        why="computes in the input's dtype: in bfloat16 the mean of a row far from 0 is rounded by a good part of "
            "its spread")
class LayerNormInTheInputDtype(ref.LayerNorm):
    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


@mutant("layers.RMSNorm", "test_rmsnorm_output_has_unit_rms_over_the_last_dimension",
        "test_rmsnorm_equals_its_definition_with_weight_and_eps",
        why="normalises over the first dimension")
class RMSNormOverTheWrongAxis(ref.RMSNorm):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + self.eps) * self.weight


@mutant("layers.RMSNorm", "test_rmsnorm_equals_its_definition_with_weight_and_eps",
        why="x / (rms + eps) instead of x / sqrt(ms + eps)")
class RMSNormWithEpsOutsideTheSqrt(ref.RMSNorm):
    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight


@mutant("layers.RMSNorm", "test_rmsnorm_is_invariant_to_scaling_the_input",
        "test_rmsnorm_output_has_unit_rms_over_the_last_dimension",
        why="divides by the mean square instead of its root")
class RMSNormWithoutTheSqrt(ref.RMSNorm):
    def forward(self, x):
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@mutant("layers.RMSNorm", "test_rmsnorm_equals_its_definition_with_weight_and_eps",
        why="subtracts the mean like LayerNorm")
class RMSNormSubtractingTheMean(ref.RMSNorm):
    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


@mutant("layers.RMSNorm", "test_norms_compute_in_float32_in_half_precision",
        why="computes the mean of squares in half precision")
class RMSNormSquaringInHalfPrecision(ref.RMSNorm):
    """Accumulates the mean of squares in fp16/bf16: overflows (fp16) or loses digits (bf16)."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight.to(x.dtype)


@mutant("layers.RMSNorm", "test_norms_compute_in_float32_in_half_precision",
        why="sums the squares in a loop, in the input's dtype: in bfloat16 the running sum stalls")
class RMSNormSummingSquaresInALoop(ref.RMSNorm):
    """An explicit running sum: torch's reductions would accumulate in float32, this one keeps bfloat16."""

    def forward(self, x):
        total = torch.zeros(x.shape[:-1], dtype=x.dtype)
        for i in range(x.shape[-1]):
            total = total + x[..., i] ** 2
        normalized = x * torch.rsqrt(total[..., None] / x.shape[-1] + self.eps)
        return (normalized * self.weight).to(torch.promote_types(x.dtype, self.weight.dtype))


@mutant("layers.RMSNorm", "test_norms_compute_in_float32_in_half_precision",
        why="returns the input's dtype, not the promoted dtype of input and weight")
class RMSNormReturningTheInputDtype(ref.RMSNorm):
    def forward(self, x):
        return super().forward(x).to(x.dtype)


@mutant("layers.SwiGLU", "test_swiglu_equals_down_of_silu_gate_times_up",
        why="applies SiLU to up_proj instead of gate_proj")
class SwiGLUWithGateAndUpSwapped(ref.SwiGLU):
    def forward(self, x):
        return self.down_proj(ref.silu(self.up_proj(x)) * self.gate_proj(x))


@mutant("layers.SwiGLU", "test_swiglu_equals_down_of_silu_gate_times_up",
        why="gives gate_proj a bias (not Llama's layout)")
class SwiGLUWithBiases(ref.SwiGLU):
    def __init__(self, dim, hidden_dim, kernels=False):
        super().__init__(dim, hidden_dim, kernels)
        self.gate_proj = ref.Linear(dim, hidden_dim, bias=True)


@mutant("layers.SwiGLU", "test_signature_matches_the_contract",
        why="gives gate_proj a bias (not Llama's layout)", spec="contract")
class SwiGLUWithBiasesInItsStateDict(SwiGLUWithBiases):
    """The same module, as the contract sees it: an extra state-dict key, gate_proj.bias."""


@mutant("layers.RMSNorm", "test_rmsnorm_gradients_equal_those_of_its_definition",
        "test_gradients_match_finite_differences",
        why="the rms taken from x.detach(): dx = r·dy·w, without the term from r's dependence on x")
class RMSNormWithADetachedRms(ref.RMSNorm):
    """Takes the rms from x.detach(), as a statistic: the right values, but the gradient forgets that every x_j
    moves the rms (dx = r·dy·w)."""

    def forward(self, x):
        rms_inv = torch.rsqrt(x.detach().pow(2).mean(-1, keepdim=True) + self.eps)
        return x * rms_inv * self.weight


@mutant("layers.RMSNorm", "test_rmsnorm_gradients_equal_those_of_its_definition",
        why="multiplies by weight.data: the weight gets no gradient")
class RMSNormScalingByWeightData(ref.RMSNorm):
    """Multiplies by self.weight.data: the right values, and the weight never learns."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.data


@mutant("layers.SwiGLU", "test_swiglu_gradients_equal_those_of_its_definition",
        why="σ(gate) detached: the derivative of SiLU taken as σ, missing SiLU·(1 − σ)")
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


@mutant("layers.SwiGLU", "test_swiglu_gradients_equal_those_of_its_definition",
        why="a hand-written SiLU backward with σ' = −σ(1 − σ)")
class SwiGLUWithAHandWrittenSiLUSignError(ref.SwiGLU):
    def forward(self, x):
        return self.down_proj(_SiLUWithASignError.apply(self.gate_proj(x)) * self.up_proj(x))
