# Generated from reference/layers.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Layers: the small pieces every transformer is built from.

softmax and log_softmax (numerically stable), the activations GELU and SiLU, and the modules Linear, Embedding,
LayerNorm, RMSNorm and the SwiGLU feed-forward. Each is written from its definition with plain tensor operations;
torch's own versions (`torch.nn.functional.softmax`, `nn.LayerNorm`, ...) are what the spec is *not* allowed to
assume you used. Parameter names follow the Hugging Face Llama convention (`weight`, `bias`, `gate_proj`, ...).

Autograd differentiates every one of them. RMSNorm and SwiGLU also take `kernels=True`, which sends them through
the hand-written backward passes of chapter 14 (`kernels`): the same numbers, fewer passes over memory.

Left out: dropout (no regularisation is needed at this scale).
"""

import math

import torch
from torch import Tensor, nn

from . import kernels


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """softmax(x)_i = exp(x_i) / sum_j exp(x_j), along `dim`.

    Subtracting the maximum first changes nothing mathematically (the factor exp(-max) cancels) and keeps every
    exponent <= 0, so exp never overflows, even at x = 1e4 in float32.
    """
    raise NotImplementedError('`layers.softmax` is not implemented yet — chapter 4 (layers): see '
                              'test_softmax_equals_its_definition_along_any_dim, '
                              'test_softmax_rows_are_probability_distributions and 3 more in spec/test_layers.py.')


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """log softmax(x)_i = x_i - logsumexp(x), with logsumexp(x) = max + log sum_j exp(x_j - max).

    Never `softmax(x).log()`: a probability that underflows to 0 would give -inf where the true value is finite.
    """
    raise NotImplementedError('`layers.log_softmax` is not implemented yet — chapter 4 (layers): see '
                              'test_log_softmax_equals_its_definition and 2 more in spec/test_layers.py.')


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU(x) = x Φ(x) = x/2 (1 + erf(x/√2)).

    approximate="tanh" gives the GPT-2 form x/2 (1 + tanh(√(2/π) (x + 0.044715 x³))).
    Accurate to the precision of x also for x < 0, where 1 + erf and 1 + tanh cancel: bfloat16 numbers near 1 are
    2⁻⁸ apart, so 1 + erf(−3/√2) = 0.0027 keeps one bit of Φ(−3), and 1 + erf(−4/√2) is 0. The same numbers
    without the cancellation: 1 + erf(x/√2) = erfc(−x/√2), and (1 + tanh(u)) / 2 = σ(2u).
    """
    raise NotImplementedError('`layers.gelu` is not implemented yet — chapter 4 (layers): see '
                              'test_gelu_equals_x_times_normal_cdf, test_gelu_tanh_matches_the_gpt2_approximation and '
                              '1 more in spec/test_layers.py.')


def silu(x: Tensor) -> Tensor:
    """SiLU(x) = x σ(x) = x / (1 + exp(-x)), also called swish."""
    raise NotImplementedError('`layers.silu` is not implemented yet — chapter 4 (layers): see '
                              'test_silu_equals_x_times_sigmoid in spec/test_layers.py.')


class Linear(nn.Module):
    """y = x Wᵀ + b for x of shape (..., in_features); W is (out_features, in_features), as in torch and HF."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        # Uniform(-1/√in, 1/√in) keeps the output variance close to the input variance.
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError('`layers.Linear.forward` is not implemented yet — chapter 4 (layers): see '
                                  'test_linear_equals_x_times_w_transposed_plus_b in spec/test_layers.py.')


class Embedding(nn.Module):
    """A lookup table: row `i` of `weight` (num_embeddings, embedding_dim) is the vector of token `i`.

    The gradient of row `i` is the sum of the output gradients at every place id `i` occurs. It must be added up in
    the same order every time, whatever the number of threads, or two identical training runs drift apart.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim) * 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        """(...) integer ids -> (..., embedding_dim)."""
        raise NotImplementedError('`layers.Embedding.forward` is not implemented yet — chapter 4 (layers): see '
                                  'test_embedding_returns_the_row_of_each_id and 1 more in spec/test_layers.py.')


class LayerNorm(nn.Module):
    """LayerNorm(x) = (x - mean) / sqrt(var + eps) * weight + bias, over the last dimension.

    The variance is the *biased* one (divide by n, not n - 1), as in the original paper and in torch, and it is the
    mean of (x - mean)², never E[x²] - E[x]²: for rows far from 0 (mean 1e3, spread 1) that difference of two large
    numbers cancels, in float32, to noise or to a negative variance. Computed in float32 at least, then cast to the
    promoted dtype of x and weight: in bfloat16, the mean itself is rounded by more than a small spread.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError('`layers.LayerNorm.forward` is not implemented yet — chapter 4 (layers): see '
                                  'test_layernorm_output_has_zero_mean_and_unit_biased_variance and 4 more in '
                                  'spec/test_layers.py.')


class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x²) + eps) * weight, over the last dimension (no mean subtraction, no bias).

    Computed in float32 at least, then cast to the promoted dtype of x and weight: in bfloat16 the mean of squares
    loses too many digits. kernels=True computes the same through chapter 14's hand-written backward pass.
    """

    def __init__(self, dim: int, eps: float = 1e-6, kernels: bool = False):
        super().__init__()
        self.eps, self.kernels = eps, kernels
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if self.kernels:
            return kernels.RMSNormFunction.apply(x, self.weight, self.eps)
        raise NotImplementedError('`layers.RMSNorm.forward` is not implemented yet — chapter 4 (layers): see '
                                  'test_rmsnorm_output_has_unit_rms_over_the_last_dimension and 4 more in '
                                  'spec/test_layers.py.')


class SwiGLU(nn.Module):
    """The Llama feed-forward: down_proj(SiLU(gate_proj(x)) * up_proj(x)), no biases.

    x (..., dim) -> gate and up (..., hidden_dim) -> (..., dim). kernels=True computes the product SiLU(gate) · up
    through chapter 14's hand-written backward pass.
    """

    def __init__(self, dim: int, hidden_dim: int, kernels: bool = False):
        super().__init__()
        self.kernels = kernels
        self.gate_proj = Linear(dim, hidden_dim, bias=False)
        self.up_proj = Linear(dim, hidden_dim, bias=False)
        self.down_proj = Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.kernels:
            return self.down_proj(kernels.SwiGLUFunction.apply(self.gate_proj(x), self.up_proj(x)))
        raise NotImplementedError('`layers.SwiGLU.forward` is not implemented yet — chapter 4 (layers): see '
                                  'test_swiglu_equals_down_of_silu_gate_times_up and '
                                  'test_swiglu_gradients_equal_those_of_its_definition in spec/test_layers.py.')
