"""Chapter 4 — layers: softmax, log_softmax, GELU, SiLU, Linear, Embedding, LayerNorm, RMSNorm, SwiGLU.

Every function is checked against its definition computed in float64, for any shape, and against the properties
that make it safe to use (no overflow, invariances, gradients).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .checks import grads_of
from .strategies import seeds, shapes, tensors
from .tolerances import assert_close

# ---------------------------------------------------------------- softmax and log_softmax


def softmax64(x: torch.Tensor, dim: int) -> torch.Tensor:
    x = x.double()
    return (x - x.amax(dim, keepdim=True)).exp() / (x - x.amax(dim, keepdim=True)).exp().sum(dim, keepdim=True)


@st.composite
def tensor_and_dim(draw, scale=1.0, dtype=torch.float32):
    x = draw(tensors(dtype=dtype, scale=scale, max_dims=4))
    return x, draw(st.integers(-x.dim(), x.dim() - 1))


@given(tensor_and_dim(scale=5.0))
def test_softmax_equals_its_definition_along_any_dim(impl, case):
    x, dim = case
    out = impl.layers.softmax(x, dim=dim)
    assert_close(out, softmax64(x, dim), f"softmax(x, dim={dim}) must equal exp(x) / sum(exp(x)) along dim {dim}")


@given(tensor_and_dim(scale=10.0))
def test_softmax_rows_are_probability_distributions(impl, case):
    x, dim = case
    out = impl.layers.softmax(x, dim=dim)
    assert (out >= 0).all(), "softmax must never be negative"
    assert_close(out.sum(dim), torch.ones_like(out.sum(dim)), f"softmax along dim {dim} must sum to 1")


@given(tensors(shape=(3, 7), scale=3.0), st.floats(-100, 100))
def test_softmax_is_invariant_to_adding_a_constant(impl, x, c):
    assert_close(impl.layers.softmax(x + c), impl.layers.softmax(x),
                 f"softmax(x + c) must equal softmax(x) (here c = {c})", scale=20)


@given(tensors(shape=(4, 9)), st.sampled_from([1e4, -1e4, 3e4]))
def test_softmax_survives_large_logits(impl, x, big):
    one_far = x.clone()
    one_far[:, 0] = big  # one logit far from the others: a naive exp overflows to inf
    x = torch.cat([one_far, x + big])  # all logits far from 0: a naive exp overflows, or underflows to 0/0
    out = impl.layers.softmax(x)
    assert torch.isfinite(out).all(), f"softmax must stay finite with a logit of {big} in float32 (subtract the max first)"
    assert_close(out, softmax64(x, -1), f"softmax with a logit of {big} must still equal its definition")


@given(tensor_and_dim(scale=5.0))
def test_log_softmax_equals_its_definition(impl, case):
    x, dim = case
    expected = x.double() - torch.logsumexp(x.double(), dim, keepdim=True)
    assert_close(impl.layers.log_softmax(x, dim=dim), expected,
                 f"log_softmax(x, dim={dim}) must equal x - logsumexp(x) along dim {dim}", scale=10)


@given(tensors(shape=(3, 6)))
def test_log_softmax_is_finite_where_probabilities_underflow(impl, x):
    x = x.clone()
    x[:, 0] = 1e4  # every other probability underflows to 0, but its log is finite (about -1e4)
    out = impl.layers.log_softmax(x)
    assert torch.isfinite(out).all(), "log_softmax must be finite even where softmax underflows to 0: never log(softmax(x))"
    expected = x.double() - torch.logsumexp(x.double(), -1, keepdim=True)
    assert_close(out, expected, "log_softmax at extreme logits must equal x - logsumexp(x)", scale=10)


@given(tensor_and_dim(scale=3.0))
def test_softmax_equals_exp_of_log_softmax(impl, case):
    x, dim = case
    assert_close(impl.layers.softmax(x, dim=dim), impl.layers.log_softmax(x, dim=dim).exp(),
                 "softmax(x) must equal exp(log_softmax(x))", scale=10)


# ---------------------------------------------------------------- activations


@given(tensors(scale=4.0))
def test_gelu_equals_x_times_normal_cdf(impl, x):
    expected = 0.5 * x.double() * (1 + torch.erf(x.double() / math.sqrt(2)))
    assert_close(impl.layers.gelu(x), expected, "gelu(x) must equal x/2 (1 + erf(x/√2)) (the exact form)")


@given(tensors(scale=4.0))
def test_gelu_tanh_matches_the_gpt2_approximation(impl, x):
    x64 = x.double()
    expected = 0.5 * x64 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    assert_close(impl.layers.gelu(x, approximate="tanh"), expected,
                 "gelu(x, approximate='tanh') must equal x/2 (1 + tanh(√(2/π)(x + 0.044715 x³)))")


@given(tensors(scale=4.0))
def test_silu_equals_x_times_sigmoid(impl, x):
    assert_close(impl.layers.silu(x), x.double() * torch.sigmoid(x.double()), "silu(x) must equal x σ(x)")


# ---------------------------------------------------------------- Linear and Embedding


@given(shapes(min_dims=0, max_dims=3), st.integers(1, 6), st.integers(1, 6), st.booleans(), seeds)
def test_linear_equals_x_times_w_transposed_plus_b(impl, lead, d_in, d_out, bias, seed):
    torch.manual_seed(seed)
    layer = impl.layers.Linear(d_in, d_out, bias=bias)
    x = torch.randn(*lead, d_in)
    expected = x.double() @ layer.weight.double().T
    if bias:
        expected = expected + layer.bias.double()
    assert tuple(layer.weight.shape) == (d_out, d_in), "Linear.weight must have shape (out_features, in_features)"
    assert ("bias" in dict(layer.named_parameters())) == bias, f"Linear(bias={bias}) must {'' if bias else 'not '}have a bias"
    assert_close(layer(x), expected, f"Linear on input of shape {tuple(x.shape)} must equal x Wᵀ + b", scale=10)


@given(shapes(min_dims=0, max_dims=3), st.integers(1, 20), st.integers(1, 6), seeds)
def test_embedding_returns_the_row_of_each_id(impl, lead, vocab, dim, seed):
    torch.manual_seed(seed)
    table = impl.layers.Embedding(vocab, dim)
    ids = torch.randint(0, vocab, lead)
    out = table(ids)
    assert tuple(out.shape) == (*lead, dim), f"Embedding of ids of shape {tuple(lead)} must have shape {(*lead, dim)}"
    assert_close(out, table.weight.detach()[ids.reshape(-1)].reshape(*lead, dim), "Embedding(ids) must be weight[ids]")


# ---------------------------------------------------------------- normalisation


def norm_inputs(**kwargs):
    """Inputs whose rows are far from constant, so that normalising them is well conditioned."""
    return tensors(min_dims=1, max_dims=3, min_side=2, scale=3.0, **kwargs).filter(
        lambda x: bool((x.double().std(-1, unbiased=False) > 0.1).all()))


@given(norm_inputs())
def test_layernorm_output_has_zero_mean_and_unit_biased_variance(impl, x):
    out = impl.layers.LayerNorm(x.shape[-1], eps=0.0)(x).double().reshape(-1, x.shape[-1])
    assert_close(out.mean(-1), torch.zeros(out.shape[0]), "LayerNorm output must have mean 0 over the last dimension", dtype=x.dtype, scale=10)
    assert_close(out.var(-1, unbiased=False), torch.ones(out.shape[0]),
                 "LayerNorm output must have variance 1 over the last dimension (biased variance: divide by n)",
                 dtype=x.dtype, scale=10)


@given(norm_inputs(), st.floats(0.5, 50), st.floats(-50, 50))
def test_layernorm_is_invariant_to_scaling_and_shifting_the_input(impl, x, scale, shift):
    norm = impl.layers.LayerNorm(x.shape[-1], eps=0.0)
    assert_close(norm(x * scale + shift), norm(x), f"LayerNorm(x * {scale} + {shift}) must equal LayerNorm(x)", scale=300)


@given(norm_inputs(dtype=torch.float64), seeds)
def test_layernorm_equals_its_definition_with_weight_and_bias(impl, x, seed):
    torch.manual_seed(seed)
    norm = impl.layers.LayerNorm(x.shape[-1])
    with torch.no_grad():
        norm.weight.copy_(torch.randn(x.shape[-1]))
        norm.bias.copy_(torch.randn(x.shape[-1]))
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight.double() + norm.bias.double()
    assert_close(norm.double()(x), expected, "LayerNorm must equal (x - mean)/sqrt(var + eps) * weight + bias, biased var")


@given(norm_inputs())
def test_rmsnorm_output_has_unit_rms_over_the_last_dimension(impl, x):
    out = impl.layers.RMSNorm(x.shape[-1], eps=0.0)(x).double()
    rms = out.pow(2).mean(-1).sqrt()
    assert_close(rms, torch.ones_like(rms), "RMSNorm output must have root-mean-square 1 over the last dimension",
                 dtype=x.dtype, scale=10)


@given(norm_inputs(), st.floats(0.01, 100))
def test_rmsnorm_is_invariant_to_scaling_the_input(impl, x, scale):
    norm = impl.layers.RMSNorm(x.shape[-1], eps=0.0)
    assert_close(norm(x * scale), norm(x), f"RMSNorm(x * {scale}) must equal RMSNorm(x)", scale=10)


@given(norm_inputs(dtype=torch.float64), seeds, st.sampled_from([1e-6, 1e-2, 1.0]))
def test_rmsnorm_equals_its_definition_with_weight_and_eps(impl, x, seed, eps):
    torch.manual_seed(seed)
    norm = impl.layers.RMSNorm(x.shape[-1], eps=eps).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(x.shape[-1]))
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight
    assert_close(norm(x), expected, f"RMSNorm must equal x / sqrt(mean(x²) + eps) * weight (eps = {eps}, inside the sqrt)")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rmsnorm_keeps_the_input_dtype_in_half_precision(impl, dtype):
    x = torch.randn(4, 64).to(dtype) * 1000  # squares reach 1e6: past float16's largest value (65504)
    out = impl.layers.RMSNorm(64)(x)
    assert out.dtype in (dtype, torch.float32), f"RMSNorm of a {dtype} input must return {dtype} (or float32)"
    expected = x.double() / x.double().pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    assert_close(out, expected, f"RMSNorm in {dtype} must match the float64 definition to {dtype} precision", dtype=dtype)


# ---------------------------------------------------------------- SwiGLU


@given(tensors(min_dims=2, max_dims=3, max_side=6), st.integers(1, 8), seeds)
def test_swiglu_equals_down_of_silu_gate_times_up(impl, x, hidden, seed):
    torch.manual_seed(seed)
    mlp = impl.layers.SwiGLU(x.shape[-1], hidden)
    names = {name for name, _ in mlp.named_parameters()}
    assert names == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}, (
        f"SwiGLU parameters must be gate_proj, up_proj, down_proj without biases (Llama names), got {sorted(names)}")
    g, u, d = (mlp.get_parameter(f"{n}.weight").double() for n in ("gate_proj", "up_proj", "down_proj"))
    x64 = x.double()
    gate = x64 @ g.T
    expected = (gate * torch.sigmoid(gate) * (x64 @ u.T)) @ d.T
    assert_close(mlp(x), expected, "SwiGLU(x) must equal down_proj(silu(gate_proj(x)) * up_proj(x))", scale=10)


# ---------------------------------------------------------------- gradients


GRADIENT_CASES = {
    "softmax": lambda L, x: L.softmax(x, dim=-1),
    "log_softmax": lambda L, x: L.log_softmax(x, dim=-1),
    "gelu": lambda L, x: L.gelu(x),
    "silu": lambda L, x: L.silu(x),
    "LayerNorm": lambda L, x: L.LayerNorm(x.shape[-1]).double()(x),
    "RMSNorm": lambda L, x: L.RMSNorm(x.shape[-1]).double()(x),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradients_match_finite_differences(impl, name):
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    layers = impl.layers
    try:
        ok = torch.autograd.gradcheck(lambda t: GRADIENT_CASES[name](layers, t), (x,), raise_exception=False)
    except NotImplementedError:
        raise
    except RuntimeError as error:  # e.g. an op without a backward
        raise AssertionError(f"{name}: gradients could not be computed: {error}") from None
    assert ok, f"the gradient of {name} must match finite differences (torch.autograd.gradcheck in float64)"


@given(norm_inputs(dtype=torch.float64), seeds, st.sampled_from([1e-6, 1e-2, 1.0]))
def test_rmsnorm_gradients_equal_those_of_its_definition(impl, x, seed, eps):
    torch.manual_seed(seed)
    norm = impl.layers.RMSNorm(x.shape[-1], eps=eps).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(x.shape[-1]))
    grad_output = torch.randn(x.shape, dtype=torch.float64)
    x = x.detach().clone().requires_grad_()
    grad_x, grad_weight = grads_of(norm(x), (x, norm.weight), grad_output)
    weight = norm.weight.detach().clone().requires_grad_()
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    expected_x, expected_weight = grads_of(expected, (x, weight), grad_output)
    assert_close(grad_x, expected_x, "the gradient of RMSNorm with respect to x must be that of "
                 "x / sqrt(mean(x²) + eps) * weight: r·(g − x̂·mean(g·x̂)) with g = dy·weight, x̂ = x·r", scale=100)
    assert_close(grad_weight, expected_weight, "the gradient of RMSNorm with respect to its weight must be the sum of "
                 "dy · x / sqrt(mean(x²) + eps) over every leading dimension", scale=100)


@given(tensors(min_dims=2, max_dims=3, max_side=6, dtype=torch.float64, scale=2.0), st.integers(1, 8), seeds)
def test_swiglu_gradients_equal_those_of_its_definition(impl, x, hidden, seed):
    torch.manual_seed(seed)
    mlp = impl.layers.SwiGLU(x.shape[-1], hidden).double()
    names = ("gate_proj", "up_proj", "down_proj")
    weights = [mlp.get_parameter(f"{name}.weight") for name in names]
    x = x.detach().clone().requires_grad_()
    out = mlp(x)
    grad_output = torch.randn(out.shape, dtype=torch.float64)
    got = grads_of(out, (x, *weights), grad_output)
    g, u, d = (w.detach().clone().requires_grad_() for w in weights)
    gate = x @ g.T
    expected = grads_of((gate * torch.sigmoid(gate) * (x @ u.T)) @ d.T, (x, g, u, d), grad_output)
    for name, actual, wanted in zip(("the input", *names), got, expected):
        assert_close(actual, wanted, f"the gradient of SwiGLU with respect to {name} must be that of "
                     "down_proj(silu(gate_proj(x)) * up_proj(x)), with silu'(a) = σ(a)·(1 + a·(1 − σ(a)))",
                     scale=100)
