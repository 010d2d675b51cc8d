"""Layers: the small pieces every transformer is built from.

softmax and log_softmax (numerically stable), the activations GELU and SiLU, and the modules Linear, Embedding,
LayerNorm, RMSNorm and the SwiGLU feed-forward. Each is written from its definition with plain tensor operations;
torch's own versions (`torch.nn.functional.softmax`, `nn.LayerNorm`, ...) are what the spec is *not* allowed to
assume you used. Parameter names follow the Hugging Face Llama convention (`weight`, `bias`, `gate_proj`, ...).

The reference gives RMSNorm and the SwiGLU product SiLU(gate) · up hand-written backward passes
(`torch.autograd.Function`): autograd of the formula stores and rereads one tensor per operation, while the
derivative written out makes fewer passes over memory and computes the sigmoid once. Plain autograd is just as
correct: the spec compares the gradients with those of the definition.

Left out: dropout (no regularisation is needed at this scale) and fused kernels (see the attention chapter).
"""

import math

import torch
from torch import Tensor, nn


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
    """
    # BEGIN SOLUTION
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
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
    """A lookup table: row `i` of `weight` (num_embeddings, embedding_dim) is the vector of token `i`."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim) * 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        """(...) integer ids -> (..., embedding_dim)."""
        # BEGIN SOLUTION
        return self.weight[ids]
        # END SOLUTION


class LayerNorm(nn.Module):
    """LayerNorm(x) = (x - mean) / sqrt(var + eps) * weight + bias, over the last dimension.

    The variance is the *biased* one (divide by n, not n - 1), as in the original paper and in torch.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # biased
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias
        # END SOLUTION


# BEGIN SOLUTION
class _RMSNormFunction(torch.autograd.Function):
    """y = x̂ · w with x̂ = x · r, r = 1/sqrt(mean(x²) + eps) one number per row, and its backward pass.

    With g = dy · w:  ∂r/∂x_j = −r³ x_j / n, hence
        dx = r · g − x · r³ mean(g · x) = r · (g − x̂ · mean(g · x̂)),    dw = Σ_rows dy · x̂.
    x, w and r are saved, not x̂ (x̂ = x · r is folded into the products), and both sums over p = dy · x are
    matrix-vector products: Σ_rows dy · x̂ = pᵀ r and Σ_j g_j x_j = p w.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        dtype = torch.promote_types(torch.promote_types(x.dtype, torch.float32), weight.dtype)  # float32 at least
        x32 = x.to(dtype)
        n = x.shape[-1]
        # ‖x‖² / n = mean(x²), in one pass over x (no x² tensor)
        rms_inv = torch.linalg.vector_norm(x32, dim=-1, keepdim=True).square_().div_(n).add_(eps).rsqrt_()  # (..., 1)
        ctx.save_for_backward(x, weight, rms_inv)
        y = torch.mul(x32, rms_inv).mul_(weight)
        return y.to(torch.promote_types(x.dtype, weight.dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight, rms_inv = ctx.saved_tensors
        dtype, n = rms_inv.dtype, x.shape[-1]
        x32, grad, w = x.to(dtype), grad.to(dtype), weight.to(dtype)
        p = (grad * x32).reshape(-1, n)  # (rows, n): dy · x
        r = rms_inv.reshape(-1)  # (rows,)
        grad_weight = p.T @ r  # Σ_rows dy · x · r = Σ_rows dy · x̂
        correction = (p @ w).mul_(r * r / -n)  # −r² mean(g · x), per row
        # dx = r · (g − x · r² mean(g · x)), with g = dy · w
        grad_x = torch.mul(x32, correction.view(rms_inv.shape)).addcmul_(grad, w).mul_(rms_inv)
        return grad_x.to(x.dtype), grad_weight.to(weight.dtype), None
# END SOLUTION


class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x²) + eps) * weight, over the last dimension (no mean subtraction, no bias).

    Computed in float32 at least, then cast back: in bfloat16 the mean of squares loses too many digits.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        return _RMSNormFunction.apply(x, self.weight, self.eps)
        # END SOLUTION


# BEGIN SOLUTION
class _SwiGLUFunction(torch.autograd.Function):
    """h = SiLU(gate) · up = gate · s · up with s = σ(gate), and its backward pass.

    σ' = s (1 − s), so SiLU'(gate) = s + gate · s (1 − s) = s + SiLU(gate) · (1 − s), and
        dup = dh · SiLU(gate),    dgate = dh · up · (s + SiLU(gate) · (1 − s)).
    The sigmoid, the one costly (exponential) pass, is computed once and saved; autograd of F.silu computes it
    again in its backward.
    """

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        s = torch.sigmoid(gate)
        ctx.save_for_backward(gate, up, s)
        return torch.mul(gate, s).mul_(up)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        gate, up, s = ctx.saved_tensors
        silu_gate = gate * s
        grad_up = grad * silu_gate
        # SiLU'(gate) = s + SiLU · (1 − s) = lerp(s, 1, SiLU), written over silu_gate, no longer needed
        derivative = torch.lerp(s, s.new_ones(()), silu_gate, out=silu_gate)
        return derivative.mul_(grad).mul_(up), grad_up
# END SOLUTION


class SwiGLU(nn.Module):
    """The Llama feed-forward: down_proj(SiLU(gate_proj(x)) * up_proj(x)), no biases.

    x (..., dim) -> gate and up (..., hidden_dim) -> (..., dim).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = Linear(dim, hidden_dim, bias=False)
        self.up_proj = Linear(dim, hidden_dim, bias=False)
        self.down_proj = Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        # BEGIN SOLUTION
        return self.down_proj(_SwiGLUFunction.apply(self.gate_proj(x), self.up_proj(x)))
        # END SOLUTION
