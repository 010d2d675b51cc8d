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
    # BEGIN SOLUTION
    shifted = x - x.amax(dim=dim, keepdim=True)
    exp = shifted.exp()
    return exp / exp.sum(dim=dim, keepdim=True)
    # END SOLUTION


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """log softmax(x)_i = x_i - logsumexp(x), with logsumexp(x) = max + log sum_j exp(x_j - max).

    Never `softmax(x).log()`: a probability that underflows to 0 would give -inf where the true value is finite.
    """
    # BEGIN SOLUTION
    shifted = x - x.amax(dim=dim, keepdim=True)
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()
    # END SOLUTION


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU(x) = x Φ(x) = x/2 (1 + erf(x/√2)).

    approximate="tanh" gives the GPT-2 form x/2 (1 + tanh(√(2/π) (x + 0.044715 x³))).
    Accurate to the precision of x also for x < 0, where 1 + erf and 1 + tanh cancel: bfloat16 numbers near 1 are
    2⁻⁸ apart, so 1 + erf(−3/√2) = 0.0027 keeps one bit of Φ(−3), and 1 + erf(−4/√2) is 0. The same numbers
    without the cancellation: 1 + erf(x/√2) = erfc(−x/√2), and (1 + tanh(u)) / 2 = σ(2u).
    """
    # BEGIN SOLUTION
    if approximate == "none":
        return 0.5 * x * torch.erfc(-x / math.sqrt(2.0))
    if approximate == "tanh":
        u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return x * torch.sigmoid(2.0 * u)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    # END SOLUTION


def silu(x: Tensor) -> Tensor:
    """SiLU(x) = x σ(x) = x / (1 + exp(-x)), also called swish."""
    # BEGIN SOLUTION
    return x * torch.sigmoid(x)
    # END SOLUTION


class Linear(nn.Module):
    """y = x Wᵀ + b for x of shape (..., in_features); W is (out_features, in_features), as in torch and HF."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        # Uniform(-1/√in, 1/√in) keeps the output variance close to the input variance.
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        y = x @ self.weight.T  # (..., out_features)
        return y if self.bias is None else y + self.bias
        # END SOLUTION


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
        # BEGIN SOLUTION
        # Row ids[...] of the table. Not self.weight[ids]: the same rows, but on the CPU the backward of that indexing
        # adds the gradients of repeated ids with atomic adds from several threads, in whatever order they get there;
        # float addition is not associative, so two identical training runs differ in the last bits after one step
        # and everywhere after a few. Not self.weight.index_select(0, ids) either: torch documents its backward as
        # nondeterministic on CUDA. The embedding op's backward adds them in a fixed order on both.
        return torch.nn.functional.embedding(ids, self.weight)  # (..., embedding_dim)
        # END SOLUTION


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
        # BEGIN SOLUTION
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        mean = x32.mean(dim=-1, keepdim=True)
        var = (x32 - mean).pow(2).mean(dim=-1, keepdim=True)  # biased
        y = (x32 - mean) * torch.rsqrt(var + self.eps) * self.weight
        y = y if self.bias is None else y + self.bias
        return y.to(torch.promote_types(x.dtype, self.weight.dtype))
        # END SOLUTION


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
        # BEGIN SOLUTION
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        normalized = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normalized * self.weight).to(torch.promote_types(x.dtype, self.weight.dtype))
        # END SOLUTION


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
        # BEGIN SOLUTION
        return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))
        # END SOLUTION
