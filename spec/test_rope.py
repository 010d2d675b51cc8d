"""Chapter 5 — rope: rotary position embeddings.

RoPE rotates pair i of a vector at position m by the angle m·θ_i, θ_i = θ^(−2i/d). The spec checks that definition
against complex multiplication in float64, then the properties attention relies on: lengths are kept, position 0
changes nothing, scores depend only on relative positions, rotating back undoes, the two pairing conventions are
one rotation up to a permutation, and the cached tables agree with the direct computation. In bfloat16 only the
cos and sin are rounded: the angles are float64. Last, the gradient that reaches x is that of the rotation: the
output's gradient turned back by minus the angle, and none reaches the tables of angles.
"""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from .checks import assert_rejects, grads_of
from .strategies import float_dtypes, seeds, shapes, tensors
from .tolerances import assert_close, assert_close_to_the_terms

thetas = st.sampled_from([10000.0, 500.0, 1e6])
half_dims = st.integers(1, 8)


@st.composite
def rope_cases(draw, dtype=None, max_position=2000, any_positions=False):
    """(x of shape (*lead, T, d), positions of shape (T,), theta, interleaved).

    x is sometimes a copy laid out in memory in another order (same values, other strides), as the transposed
    heads of attention are. any_positions: positions may also be negative, fractional (a float tensor), or one row
    per leading index (shape (*lead, T), or 1 where it broadcasts).
    """
    d = 2 * draw(half_dims)
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    length = draw(st.integers(1, 6))
    x = draw(tensors(shape=(*lead, length, d), dtype=dtype or draw(float_dtypes)))
    if draw(st.booleans()):
        x = x.transpose(0, -1).contiguous().transpose(0, -1)  # the last dimension is no longer contiguous
    if not any_positions:
        positions = torch.tensor(draw(st.lists(st.integers(0, max_position), min_size=length, max_size=length)))
        return x, positions, draw(thetas), draw(st.booleans())
    shape = (length,)
    if lead and draw(st.booleans()):  # one row of positions per leading index, or 1 to broadcast
        shape = (*(draw(st.sampled_from([1, side])) for side in lead), length)
    generator = torch.Generator().manual_seed(draw(seeds))
    positions = torch.randint(-max_position, max_position + 1, shape, generator=generator)
    kind = draw(st.sampled_from(["integers", "float32", "float64"]))
    if kind != "integers":  # fractional positions, as in position interpolation: m + k/4
        positions = (positions + torch.randint(0, 4, shape, generator=generator) / 4).to(getattr(torch, kind))
    return x, positions, draw(thetas), draw(st.booleans())


def pair_terms(x: torch.Tensor, angles: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """The size of the terms of each rotated coordinate: |x₁ cos| + |x₂ sin| and |x₁ sin| + |x₂ cos|, in float64."""
    z = pairs_of(x, interleaved)
    cos, sin = angles.cos().abs(), angles.sin().abs()
    return from_pairs(torch.complex(z.real.abs() * cos + z.imag.abs() * sin, z.real.abs() * sin + z.imag.abs() * cos),
                      interleaved)


def pairs_of(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """The d/2 rotated pairs of x as complex numbers x₁ + i·x₂, in float64: (..., d/2)."""
    x = x.double()
    if interleaved:
        return torch.complex(x[..., 0::2], x[..., 1::2])
    half = x.shape[-1] // 2
    return torch.complex(x[..., :half], x[..., half:])


def from_pairs(z: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if interleaved:
        return torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    return torch.cat((z.real, z.imag), dim=-1)


def rope64(x: torch.Tensor, positions: torch.Tensor, theta: float, interleaved: bool) -> torch.Tensor:
    """The definition: pair i times e^(i·m·θ_i), with θ_i = θ^(−2i/d), in float64."""
    d = x.shape[-1]
    frequencies = torch.tensor([theta ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angles = positions.double()[..., None] * frequencies
    return from_pairs(pairs_of(x, interleaved) * torch.polar(torch.ones_like(angles), angles), interleaved)


# ---------------------------------------------------------------- the definition


@given(half_dims, thetas)
def test_frequencies_are_theta_to_the_minus_2i_over_d(impl, half, theta):
    d = 2 * half
    frequencies = impl.rope.rope_frequencies(d, theta=theta)
    assert frequencies.dtype == torch.float64, (
        f"rope_frequencies must be float64, got {frequencies.dtype}: an angle m·θ_i at m = 1e5 needs its digits")
    expected = torch.tensor([theta ** (-2 * i / d) for i in range(half)], dtype=torch.float64)
    assert_close(frequencies, expected, f"rope_frequencies({d}, theta={theta}) must be θ^(−2i/d) for i = 0..{half - 1}",
                 dtype=torch.float64, scale=100)


@pytest.mark.parametrize("theta", [1.0, 0.5])
def test_any_positive_theta_is_a_valid_base(impl, theta):
    try:
        frequencies = impl.rope.rope_frequencies(6, theta=theta)
    except ValueError as error:
        raise AssertionError(f"rope_frequencies(6, theta={theta}) must accept any positive base (θ = 1 turns every "
                             f"pair at one radian per position, θ < 1 makes the later pairs the faster ones); it "
                             f"raised: {error}") from None
    expected = torch.tensor([theta ** (-2 * i / 6) for i in range(3)], dtype=torch.float64)
    assert_close(frequencies, expected, f"rope_frequencies(6, theta={theta}) must be θ^(−2i/d) for i = 0..2",
                 dtype=torch.float64, scale=100)


@given(rope_cases(any_positions=True))
def test_rope_rotates_pair_i_by_position_times_theta_i(impl, case):
    x, positions, theta, interleaved = case
    out = impl.rope.apply_rope(x, positions, theta=theta, interleaved=interleaved)
    assert out.dtype == x.dtype, f"apply_rope must keep the dtype of x ({x.dtype}), got {out.dtype}"
    convention = "adjacent pairs (x_2i, x_2i+1)" if interleaved else "split halves (x_i, x_i+d/2)"
    assert_close(out, rope64(x, positions, theta, interleaved),
                 f"apply_rope (interleaved={interleaved}) must turn each pair of {convention} at position m by the "
                 f"angle m·θ_i, counterclockwise: (x₁ cos − x₂ sin, x₁ sin + x₂ cos), for any positions "
                 f"(here {positions.dtype} of shape {tuple(positions.shape)}), with the angles in float64",
                 scale=10)


@given(rope_cases(), st.booleans(), seeds)
def test_rotate_turns_each_pair_by_the_given_angle(impl, case, per_row, seed):
    x, _, _, interleaved = case
    generator = torch.Generator().manual_seed(seed)
    table = x.shape[:-1] if per_row else x.shape[-2:-1]  # one angle per vector, or per position for every row
    angles = torch.rand(*table, x.shape[-1] // 2, generator=generator, dtype=torch.float64) * 20 - 10
    out = impl.rope.rotate(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), interleaved=interleaved)
    assert out.dtype == x.dtype, f"rotate must keep the dtype of x ({x.dtype}), got {out.dtype}"
    expected = from_pairs(pairs_of(x, interleaved) * torch.polar(torch.ones_like(angles), angles), interleaved)
    assert_close(out, expected, f"rotate(x, cos, sin, interleaved={interleaved}) must turn pair i by the angle of "
                                "column i of cos/sin: (x₁ cos − x₂ sin, x₁ sin + x₂ cos)", scale=10)


@pytest.mark.parametrize("entry", ["rotate", "apply_rope", "RotaryEmbedding"])
@given(rope_cases(dtype=torch.bfloat16))
def test_rope_in_bfloat16_gives_bfloat16_close_to_the_float64_rotation(impl, entry, case):
    x, positions, theta, interleaved = case
    d = x.shape[-1]
    frequencies = torch.tensor([theta ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angles = positions.double()[..., None] * frequencies  # (T, d/2), in float64
    if entry == "rotate":
        out = impl.rope.rotate(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), interleaved=interleaved)
    elif entry == "apply_rope":
        out = impl.rope.apply_rope(x, positions, theta=theta, interleaved=interleaved)
    else:
        out = impl.rope.RotaryEmbedding(d, max_positions=2001, theta=theta, interleaved=interleaved)(x, positions)
    assert out.dtype == torch.bfloat16, f"{entry} of a bfloat16 x must return bfloat16, got {out.dtype}"
    assert_close_to_the_terms(out, rope64(x, positions, theta, interleaved), pair_terms(x, angles, interleaved),
                              f"{entry} in bfloat16 (interleaved={interleaved}) must turn each pair to bfloat16 "
                              f"precision of x₁ cos − x₂ sin and x₁ sin + x₂ cos at positions {positions.tolist()}: "
                              "the angles in float64, only their cos and sin rounded to bfloat16")


@given(rope_cases(dtype=torch.float64))
def test_rotate_passes_no_gradient_to_the_angle_tables(impl, case):
    x, positions, theta, interleaved = case
    d = x.shape[-1]
    angles = positions.double()[..., None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = angles.cos().requires_grad_(), angles.sin().requires_grad_()
    x = x.detach().clone().requires_grad_()
    out = impl.rope.rotate(x, cos, sin, interleaved=interleaved)
    grads = torch.autograd.grad(out.sum(), (cos, sin), allow_unused=True)
    for name, grad in zip(("cos", "sin"), grads):
        assert grad is None or not grad.any(), (
            f"rotate must pass no gradient to {name}: the tables hold fixed angles (detach them), got {grad}")


# ---------------------------------------------------------------- the properties attention relies on


@given(rope_cases())
def test_rotation_preserves_the_norm_of_every_pair(impl, case):
    x, positions, theta, interleaved = case
    out = impl.rope.apply_rope(x, positions, theta=theta, interleaved=interleaved)
    assert_close(pairs_of(out, interleaved).abs(), pairs_of(x, interleaved).abs(),
                 "RoPE must keep the length of every rotated pair (a rotation, not a scaling)",
                 dtype=x.dtype, scale=10)


@given(rope_cases())
def test_position_zero_is_the_identity(impl, case):
    x, positions, theta, interleaved = case
    out = impl.rope.apply_rope(x, torch.zeros_like(positions), theta=theta, interleaved=interleaved)
    assert_close(out, x, "RoPE at position 0 must leave the vector unchanged (angle 0·θ_i = 0)")


@given(half_dims, st.integers(0, 1000), st.integers(0, 1000), st.integers(-500, 500), thetas, st.booleans(), seeds)
def test_scores_depend_only_on_the_relative_position(impl, half, m, n, shift, theta, interleaved, seed):
    d = 2 * half
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, d, generator=generator, dtype=torch.float64)

    def score(a: int, b: int) -> torch.Tensor:
        rq = impl.rope.apply_rope(q, torch.tensor([a]), theta=theta, interleaved=interleaved)
        rk = impl.rope.apply_rope(k, torch.tensor([b]), theta=theta, interleaved=interleaved)
        return (rq * rk).sum()

    assert_close(score(m + shift, n + shift), score(m, n),
                 f"⟨R(m)q, R(n)k⟩ must depend only on n − m: positions ({m}, {n}) and ({m + shift}, {n + shift}) "
                 "must give the same score", scale=1000)


@given(rope_cases(max_position=1000))
def test_rotating_by_minus_m_inverts(impl, case):
    x, positions, theta, interleaved = case
    there = impl.rope.apply_rope(x, positions, theta=theta, interleaved=interleaved)
    back = impl.rope.apply_rope(there, -positions, theta=theta, interleaved=interleaved)
    assert_close(back, x, "rotating by −m after rotating by m must give back the vector (negative positions rotate "
                          "backwards)", scale=10)


@given(rope_cases())
def test_pairing_conventions_agree_under_the_permutation(impl, case):
    x, positions, theta, _ = case
    d = x.shape[-1]
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))  # adjacent pairs -> split halves
    adjacent = impl.rope.apply_rope(x, positions, theta=theta, interleaved=True)
    halves = impl.rope.apply_rope(x[..., perm], positions, theta=theta, interleaved=False)
    assert_close(adjacent[..., perm], halves,
                 f"adjacent-pairs RoPE must equal split-halves RoPE on the permuted coordinates {perm.tolist()}",
                 scale=10)


def test_apply_rope_computes_on_the_device_of_x(impl):
    # `meta` tensors have a device and a shape but no values: on any machine they show where a tensor was made
    x = torch.zeros(2, 3, 8, device="meta")
    try:
        out = impl.rope.apply_rope(x, torch.arange(3))
    except NotImplementedError:
        raise
    except RuntimeError as error:
        raise AssertionError("apply_rope of x on a device (here meta) must compute its angles on that device, the "
                             f"frequencies and positions moved there; it failed with: {error}") from None
    assert out.device.type == "meta" and tuple(out.shape) == (2, 3, 8), (
        f"apply_rope of a (2, 3, 8) x on meta must give (2, 3, 8) on meta, got {tuple(out.shape)} on {out.device}")


# ---------------------------------------------------------------- the cached tables


@given(rope_cases(max_position=63), st.booleans(), seeds)
def test_cached_tables_equal_the_direct_computation_at_any_positions(impl, case, per_row, seed):
    x, positions, theta, interleaved = case
    d = x.shape[-1]
    if per_row and x.dim() >= 3:  # one row of positions per leading index, as in batched decoding with offsets
        generator = torch.Generator().manual_seed(seed)
        positions = torch.randint(0, 64, x.shape[:-1], generator=generator)
    rotary = impl.rope.RotaryEmbedding(d, max_positions=64, theta=theta, interleaved=interleaved)
    out = rotary(x, positions)
    assert out.dtype == x.dtype, f"RotaryEmbedding must keep the dtype of x ({x.dtype}), got {out.dtype}"
    assert_close(out, rope64(x, positions, theta, interleaved),
                 f"RotaryEmbedding(x, positions) must rotate each vector to its own position "
                 f"{positions.tolist()}, as apply_rope does", scale=10)
    assert list(rotary.state_dict()) == [], (
        "RoPE learns nothing: its cos/sin tables must be buffers left out of the state dict (persistent=False)")


# ---------------------------------------------------------------- gradients


@given(rope_cases(dtype=torch.float64), seeds)
def test_rotate_passes_back_the_gradient_turned_by_minus_the_angle(impl, case, seed):
    x, _, _, interleaved = case
    generator = torch.Generator().manual_seed(seed)
    angles = torch.rand(x.shape[-2], x.shape[-1] // 2, generator=generator, dtype=torch.float64) * 20 - 10  # (T, d/2)
    grad_output = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    x = x.detach().clone().requires_grad_()
    # tables of shape (T, d/2) broadcast over the leading dimensions of x, as over (batch, heads) in attention
    out = impl.rope.rotate(x, angles.cos(), angles.sin(), interleaved=interleaved)
    expected = from_pairs(pairs_of(x, interleaved) * torch.polar(torch.ones_like(angles), angles), interleaved)
    assert_close(grads_of(out, [x], grad_output)[0], grads_of(expected, [x], grad_output)[0],
                 f"the gradient of rotate (interleaved={interleaved}) with respect to x must be that of the rotation: "
                 "the output's gradient turned by minus the angle (a rotation's transpose is its inverse)", scale=10)


_AWAY_FROM_ZERO = (torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                   torch.tensor([1, 2, 3]), 10000.0, False)  # x (2, 3, 4) at positions 1..3: every angle nonzero


@given(rope_cases(dtype=torch.float64, max_position=63), st.booleans(), seeds)
@example(case=_AWAY_FROM_ZERO, per_row=False, seed=0)
def test_rotary_embedding_gradient_is_that_of_the_rotation(impl, case, per_row, seed):
    x, positions, theta, interleaved = case
    generator = torch.Generator().manual_seed(seed)
    if per_row and x.dim() >= 3:  # one row of positions per leading index, as in batched decoding with offsets
        positions = torch.randint(0, 64, x.shape[:-1], generator=generator)
    grad_output = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    x = x.detach().clone().requires_grad_()
    out = impl.rope.RotaryEmbedding(x.shape[-1], max_positions=64, theta=theta, interleaved=interleaved)(x, positions)
    expected = rope64(x, positions, theta, interleaved)
    assert_close(grads_of(out, [x], grad_output)[0], grads_of(expected, [x], grad_output)[0],
                 f"the gradient of RotaryEmbedding (interleaved={interleaved}) with respect to x must be that of the "
                 f"rotation to positions {positions.tolist()}: the output's gradient turned back by minus the angle",
                 scale=10)


# ---------------------------------------------------------------- bad input


def test_rejects_an_odd_head_dimension(impl):
    rope_frequencies, apply_rope, rotary = impl.rope.rope_frequencies, impl.rope.apply_rope, impl.rope.RotaryEmbedding
    assert_rejects(lambda: rope_frequencies(5), 5, what="rope_frequencies(5): RoPE needs pairs")
    assert_rejects(lambda: apply_rope(torch.ones(3, 7), torch.arange(3)), 7, what="apply_rope on vectors of size 7")
    assert_rejects(lambda: rotary(9, max_positions=16), 9, what="RotaryEmbedding(9)")


def test_rejects_a_head_dimension_that_is_not_a_positive_integer(impl):
    rope_frequencies, rotary = impl.rope.rope_frequencies, impl.rope.RotaryEmbedding
    for head_dim in (0, -2):
        assert_rejects(lambda head_dim=head_dim: rope_frequencies(head_dim), head_dim,
                       what=f"rope_frequencies({head_dim}): a head needs at least one pair of coordinates")
    assert_rejects(lambda: rope_frequencies(4.0), 4.0, what="rope_frequencies(4.0): a head dimension is a whole number")
    assert_rejects(lambda: rotary(0, max_positions=16), 0, what="RotaryEmbedding(0)")


def test_rejects_a_theta_that_is_not_positive(impl):
    rope_frequencies = impl.rope.rope_frequencies
    for theta in (0.0, -10000.0):
        assert_rejects(lambda theta=theta: rope_frequencies(8, theta=theta), theta,
                       what=f"rope_frequencies(8, theta={theta}): θ^(−2i/d) needs a positive base")


def test_rejects_positions_and_vectors_that_do_not_fit(impl):
    apply_rope, rotary = impl.rope.apply_rope, impl.rope.RotaryEmbedding
    assert_rejects(lambda: apply_rope(torch.ones(2, 3, 4), torch.arange(5)), 5,
                   what="apply_rope on x of shape (2, 3, 4) (3 positions per row) given 5 positions")
    assert_rejects(lambda: rotary(4, max_positions=16)(torch.ones(2, 6), torch.arange(2)), 4, 6,
                   what="RotaryEmbedding(4) given vectors of size 6")


def test_rejects_positions_outside_the_table(impl):
    rotary = impl.rope.RotaryEmbedding(4, max_positions=16)
    x = torch.ones(2, 4)
    assert_rejects(lambda: rotary(x, torch.tensor([3, 16])), 16,
                   what="RotaryEmbedding(4, max_positions=16) at position 16")
    assert_rejects(lambda: rotary(x, torch.tensor([-1, 0])), -1,
                   what="RotaryEmbedding(4, max_positions=16) at position -1")
