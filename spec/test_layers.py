"""Chapter 4 — layers: softmax, log_softmax, GELU, SiLU, Linear, Embedding, LayerNorm, RMSNorm, SwiGLU.

Every function is checked against its definition computed in float64, for any shape, and against the properties
that make it safe to use (no overflow, invariances, gradients). In bfloat16 each must return bfloat16 within
bfloat16's precision of the terms it sums: no cancellation the definition does not have, norms computed in float32.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .checks import assert_rejects, grads_of
from .strategies import seeds, shapes, tensors
from .tolerances import assert_close, assert_close_to_the_terms


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


def test_gelu_rejects_an_unknown_approximation(impl):
    gelu = impl.layers.gelu
    assert_rejects(lambda: gelu(torch.ones(3), approximate="erf"), "erf",
                   what="gelu(x, approximate='erf'): only 'none' and 'tanh' exist")


@given(tensors(scale=4.0))
def test_silu_equals_x_times_sigmoid(impl, x):
    assert_close(impl.layers.silu(x), x.double() * torch.sigmoid(x.double()), "silu(x) must equal x σ(x)")


# ---------------------------------------------------------------- Linear and Embedding


@given(shapes(min_dims=0, max_dims=3, min_side=0), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.booleans(),
       seeds)
def test_linear_equals_x_times_w_transposed_plus_b(impl, lead, d_in, d_out, bias, strided, seed):
    torch.manual_seed(seed)
    layer = impl.layers.Linear(d_in, d_out, bias=bias)
    x = torch.randn(*lead, d_in)  # lead may hold a 0: an empty batch
    if strided:  # the same values laid out in memory in reverse order of dimensions, as after a transpose
        x = x.permute(*reversed(range(x.dim()))).contiguous().permute(*reversed(range(x.dim())))
    expected = x.double() @ layer.weight.double().T
    if bias:
        expected = expected + layer.bias.double()
    assert tuple(layer.weight.shape) == (d_out, d_in), "Linear.weight must have shape (out_features, in_features)"
    assert ("bias" in dict(layer.named_parameters())) == bias, f"Linear(bias={bias}) must {'' if bias else 'not '}have a bias"
    try:
        out = layer(x)
    except NotImplementedError:
        raise
    except RuntimeError as error:  # e.g. x.view(-1, in_features): no view of a strided x, no -1 for 0 elements
        raise AssertionError(f"Linear must accept any x of shape (..., in_features), also a strided view or an empty "
                             f"batch; on shape {tuple(x.shape)} with strides {x.stride()} it raised: {error}") from None
    assert_close(out, expected, f"Linear on input of shape {tuple(x.shape)} must equal x Wᵀ + b", scale=10)


@given(shapes(min_dims=0, max_dims=3), st.integers(1, 20), st.integers(1, 6), seeds)
def test_embedding_returns_the_row_of_each_id(impl, lead, vocab, dim, seed):
    torch.manual_seed(seed)
    table = impl.layers.Embedding(vocab, dim)
    ids = torch.randint(0, vocab, lead)
    out = table(ids)
    assert tuple(out.shape) == (*lead, dim), f"Embedding of ids of shape {tuple(lead)} must have shape {(*lead, dim)}"
    assert_close(out, table.weight.detach()[ids.reshape(-1)].reshape(*lead, dim), "Embedding(ids) must be weight[ids]")


def test_embedding_gradient_is_the_same_every_time_with_several_threads(impl):
    # A fixed example rather than drawn ones: the failure is a race between threads, so it needs many occurrences of
    # few ids (4,096 lookups of 4 rows) and rows long enough that torch splits the work and both threads run at once.
    torch.manual_seed(0)
    table = impl.layers.Embedding(4, 1024)
    ids = torch.randint(0, 4, (4, 1024))
    grad_output = torch.randn(4, 1024, 1024)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = grads_of(table(ids), [table.weight], grad_output)[0]
        for repeat in range(1, 5):
            again = grads_of(table(ids), [table.weight], grad_output)[0]
            assert torch.equal(first, again), (
                f"Embedding's gradient must be the same, bit for bit, every time the same ids are looked up, or two "
                f"identical training runs drift apart; with 2 threads, repeat {repeat} differed from the first by up "
                f"to {(first - again).abs().max().item():.2e}. The gradient of a row sums the output gradients of "
                f"every place its id occurs: add them in a fixed order (weight[ids] backpropagates with atomic adds "
                f"from several threads, in whatever order they arrive; torch.nn.functional.embedding does not)")
    finally:
        torch.set_num_threads(threads)


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


@given(norm_inputs(dtype=torch.float64), seeds, st.sampled_from([1e-5, 1e-2, 1.0]), st.booleans())
def test_layernorm_equals_its_definition_with_weight_bias_and_eps(impl, x, seed, eps, bias):
    torch.manual_seed(seed)
    norm = impl.layers.LayerNorm(x.shape[-1], eps=eps, bias=bias)
    names = sorted(name for name, _ in norm.named_parameters())
    assert names == (["bias", "weight"] if bias else ["weight"]), (
        f"LayerNorm(bias={bias}) must have the parameters {'weight and bias' if bias else 'weight only'}, got {names}")
    with torch.no_grad():
        norm.weight.copy_(torch.randn(x.shape[-1]))
        if bias:
            norm.bias.copy_(torch.randn(x.shape[-1]))
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + eps) * norm.weight.double()
    if bias:
        expected = expected + norm.bias.double()
    assert_close(norm.double()(x), expected, f"LayerNorm(eps={eps}, bias={bias}) must equal (x - mean)/sqrt(var + eps) "
                 f"* weight{' + bias' if bias else ''}, with the biased variance and eps inside the sqrt")


@given(tensors(min_dims=2, max_dims=2, min_side=2, dtype=torch.float64), st.sampled_from([1e2, -1e3, 1e4]),
       st.floats(0.1, 10))
def test_layernorm_is_accurate_for_rows_far_from_zero(impl, z, mean, spread):
    x = (mean + spread * z).float()  # rows of float32 numbers around `mean`, `spread` apart
    x64 = x.double()
    centred = x64 - x64.mean(-1, keepdim=True)
    std = centred.pow(2).mean(-1, keepdim=True).sqrt()
    # The float32 mean of numbers near c is itself rounded, by about c·2⁻²⁴, and (x − mean)/std carries that error
    # divided by std: the tolerance grows with c/std. The shortcut E[x²] − E[x]² loses c²·2⁻²⁴ of a variance of
    # std², c/std times more: at c/std = 1e3 it is noise, or negative.
    condition = float((x64.mean(-1, keepdim=True).abs() / std).max())
    out = impl.layers.LayerNorm(x.shape[-1], eps=0.0)(x)
    assert_close(out, centred / std, f"LayerNorm of float32 rows around {mean} with spread {spread:.3g} must equal "
                 "(x − mean)/std to float32 precision: the variance is the mean of (x − mean)², never "
                 "E[x²] − E[x]², which cancels catastrophically far from 0", scale=condition)


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


NORMS64 = {
    "RMSNorm": lambda x, eps: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps),
    "LayerNorm": lambda x, eps: ((x - x.mean(-1, keepdim=True))
                                 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", sorted(NORMS64))
def test_norms_compute_in_float32_in_half_precision(impl, norm, dtype):
    # Rows of 4096 numbers of size 1000, as wide as a model's: in float16 their squares (1e6) overflow past 65504,
    # and a running sum kept in bfloat16 stalls once it is 2⁸ times the square it adds. torch's CPU reductions
    # (sum, mean) of half-precision tensors accumulate in float32 inside, so x.pow(2).mean(-1) in bfloat16 passes
    # here; a sum looped in half precision, or squares that overflow float16, do not.
    torch.manual_seed(0)
    x = (torch.randn(4, 4096) * 1000).to(dtype)
    module = getattr(impl.layers, norm)(4096, eps=1e-6)
    mixed = module(x)
    assert mixed.dtype == torch.float32, (
        f"{norm} of a {dtype} input with float32 weights must return their promoted dtype float32, got {mixed.dtype}")
    out = module.to(dtype)(x)
    assert out.dtype == dtype, f"{norm} in {dtype} (input and weights) must return {dtype}, got {out.dtype}"
    expected = NORMS64[norm](x.double(), 1e-6)
    assert_close(out, expected, f"{norm} in {dtype} must match the float64 definition to {dtype} precision: compute "
                 "in float32, then cast", dtype=dtype)


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


# ---------------------------------------------------------------- bfloat16

# Each case: (impl.layers, z of shape (..., n) in float64, a seeded generator) -> (output of bfloat16 inputs and
# weights, the float64 definition of those same inputs and weights, the size of the terms it is computed from).


def _bfloat16_weights(module, generator) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))


def _softmax_case(layers, z, generator):
    x = (5 * z).to(torch.bfloat16)
    expected = softmax64(x, -1)
    return layers.softmax(x, dim=-1), expected, expected  # positive terms: their size is the value


def _log_softmax_case(layers, z, generator):
    x = (5 * z).to(torch.bfloat16)
    shifted = x.double() - x.double().amax(-1, keepdim=True)
    log_total = shifted.exp().sum(-1, keepdim=True).log()
    # log turns the relative rounding of the sum into an absolute error: the log counts as a term of size 1 + log
    return layers.log_softmax(x, dim=-1), shifted - log_total, shifted.abs() + log_total + 1


def _gelu_case(approximate):
    def case(layers, z, generator):
        x = (4 * z).to(torch.bfloat16)
        x64 = x.double()
        if approximate == "tanh":
            expected = 0.5 * x64 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
        else:
            expected = 0.5 * x64 * (1 + torch.erf(x64 / math.sqrt(2)))
        return layers.gelu(x, approximate=approximate), expected, expected.abs()  # a product: no cancellation
    return case


def _silu_case(layers, z, generator):
    x = (4 * z).to(torch.bfloat16)
    expected = x.double() * torch.sigmoid(x.double())
    return layers.silu(x), expected, expected.abs()


def _linear_case(layers, z, generator):
    x = z.to(torch.bfloat16)
    layer = layers.Linear(x.shape[-1], 5).to(torch.bfloat16)
    _bfloat16_weights(layer, generator)
    w, b, x64 = layer.weight.double(), layer.bias.double(), x.double()
    return layer(x), x64 @ w.T + b, x64.abs() @ w.abs().T + b.abs()


def _norm_case(name):
    def case(layers, z, generator):
        # rows around a mean up to 64 times their spread (3) away from 0: bfloat16 rounds a mean near 192 by up to
        # 1/2, a sixth of the spread, where float32 keeps every digit
        offset = float(torch.randint(-64, 65, (), generator=generator)) * 3
        x = (3 * z + offset).to(torch.bfloat16)
        norm = getattr(layers, name)(x.shape[-1], eps=1e-5).to(torch.bfloat16)
        _bfloat16_weights(norm, generator)
        parameters = dict(norm.named_parameters())
        normalized = NORMS64[name](x.double(), 1e-5) * parameters["weight"].double()
        bias = parameters["bias"].double() if "bias" in parameters else torch.zeros(())
        return norm(x), normalized + bias, normalized.abs() + bias.abs()
    return case


def _swiglu_case(layers, z, generator):
    x = z.to(torch.bfloat16)
    mlp = layers.SwiGLU(x.shape[-1], 6).to(torch.bfloat16)
    _bfloat16_weights(mlp, generator)
    g, u, d = (mlp.get_parameter(f"{name}.weight").double() for name in ("gate_proj", "up_proj", "down_proj"))
    x64 = x.double()
    gate, up = x64 @ g.T, x64 @ u.T
    # |silu(a)| ≤ |a|, and silu's rounding error is within bfloat16's of a
    return mlp(x), (gate * torch.sigmoid(gate) * up) @ d.T, (gate.abs() * up.abs()) @ d.abs().T


BFLOAT16_CASES = {
    "softmax": _softmax_case, "log_softmax": _log_softmax_case, "gelu": _gelu_case("none"),
    "gelu(approximate='tanh')": _gelu_case("tanh"), "silu": _silu_case, "Linear": _linear_case,
    "LayerNorm": _norm_case("LayerNorm"), "RMSNorm": _norm_case("RMSNorm"), "SwiGLU": _swiglu_case,
}


@pytest.mark.parametrize("name", list(BFLOAT16_CASES))
@given(tensors(min_dims=1, max_dims=3, min_side=2, dtype=torch.float64), seeds)
def test_bfloat16_gives_bfloat16_close_to_the_float64_definition(impl, name, z, seed):
    torch.manual_seed(seed)
    out, expected, terms = BFLOAT16_CASES[name](impl.layers, z, torch.Generator().manual_seed(seed))
    assert out.dtype == torch.bfloat16, f"{name} of bfloat16 inputs (and weights) must return bfloat16, got {out.dtype}"
    assert_close_to_the_terms(out, expected, terms,
                              f"{name} in bfloat16 must equal its float64 definition to bfloat16 precision (a sum to "
                              "that of its terms): no cancellation such as 1 + erf(x) for x < 0, norms in float32")
