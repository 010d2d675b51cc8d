"""Wrong implementations of the rope chapter that a learner could plausibly write."""

import torch

import llmkata.reference.rope as ref

from . import mutant


@mutant("rope.rope_frequencies", "test_frequencies_are_theta_to_the_minus_2i_over_d",
        why="θ^(−i/d) instead of θ^(−2i/d)")
def frequencies_without_the_factor_two(head_dim, theta=10000.0):
    ref.rope_frequencies(head_dim, theta)  # keeps the checks
    return theta ** (-torch.arange(head_dim // 2, dtype=torch.float64) / head_dim)


@mutant("rope.rope_frequencies", "test_rejects_an_odd_head_dimension",
        why="an odd head dimension silently drops a coordinate")
def frequencies_accepting_odd_dims(head_dim, theta=10000.0):
    return theta ** (-torch.arange(0, head_dim - head_dim % 2, 2, dtype=torch.float64) / head_dim)


@mutant("rope.rope_frequencies", "test_rejects_a_head_dimension_that_is_not_a_positive_integer",
        why="checks only that head_dim is even: 0 and -2 give no frequencies, 4.0 passes as a size")
def frequencies_checking_only_oddness(head_dim, theta=10000.0):
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


@mutant("rope.rope_frequencies", "test_any_positive_theta_is_a_valid_base",
        why="requires a base above 1, as if θ were a logarithm's base: θ = 1 and θ = 0.5 are refused")
def frequencies_requiring_theta_above_one(head_dim, theta=10000.0):
    if not theta > 1:
        raise ValueError(f"theta must be greater than 1, got {theta}")
    return ref.rope_frequencies(head_dim, theta)


def _rope_with(rotation):
    def apply_rope(x, positions, theta=10000.0, interleaved=False):
        positions = torch.as_tensor(positions)
        angles = positions.double()[..., None] * ref.rope_frequencies(x.shape[-1], theta)
        return rotation(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), interleaved)
    apply_rope.__name__ = "rope" + rotation.__name__
    return apply_rope


def _halves(x):
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def _clockwise(x, cos, sin, interleaved):
    x1, x2 = _halves(x)
    return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)


mutant("rope.apply_rope", "test_rope_rotates_pair_i_by_position_times_theta_i",
       why="rotates clockwise (by −m): every relative property still holds, only the definition catches it")(
    _rope_with(_clockwise))


def _sign_error(x, cos, sin, interleaved):
    x1, x2 = _halves(x)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos - x1 * sin), dim=-1)


mutant("rope.apply_rope", "test_rope_rotates_pair_i_by_position_times_theta_i",
       "test_rotation_preserves_the_norm_of_every_pair", "test_scores_depend_only_on_the_relative_position",
       "test_rotating_by_minus_m_inverts",
       why="x₂ cos − x₁ sin: a sign error that makes it no rotation at all")(_rope_with(_sign_error))


def _ignoring_the_flag(x, cos, sin, interleaved):
    return ref.rotate(x, cos, sin, interleaved=False)


mutant("rope.apply_rope", "test_pairing_conventions_agree_under_the_permutation",
       "test_rope_rotates_pair_i_by_position_times_theta_i",
       why="interleaved=True still pairs split halves")(_rope_with(_ignoring_the_flag))


@mutant("rope.rotate", "test_rotate_turns_each_pair_by_the_given_angle", why="x₂ cos − x₁ sin")
def rotate_with_a_sign_error(x, cos, sin, interleaved=False):
    return _sign_error(x, cos, sin, interleaved)


@mutant("rope.rotate", "test_rotate_turns_each_pair_by_the_given_angle",
        why="interleaved=True still pairs split halves")
def rotate_ignoring_the_flag(x, cos, sin, interleaved=False):
    return ref.rotate(x, cos, sin, interleaved=False)


@mutant("rope.apply_rope", "test_position_zero_is_the_identity", "test_rope_rotates_pair_i_by_position_times_theta_i",
        why="positions counted from 1")
def rope_off_by_one_position(x, positions, theta=10000.0, interleaved=False):
    return ref.apply_rope(x, torch.as_tensor(positions) + 1, theta, interleaved)


@mutant("rope.apply_rope", "test_rotating_by_minus_m_inverts", why="negative positions clamped to 0")
def rope_clamping_negative_positions(x, positions, theta=10000.0, interleaved=False):
    return ref.apply_rope(x, torch.as_tensor(positions).clamp(min=0), theta, interleaved)


@mutant("rope.RotaryEmbedding", "test_cached_tables_equal_the_direct_computation_at_any_positions",
        why="uses rows 0..T-1 of the table instead of the given positions")
class RotaryIgnoringPositions(ref.RotaryEmbedding):
    """Looks up rows 0..T-1 whatever the positions: right for a prompt, wrong for cached decoding."""

    def forward(self, x, positions):
        return super().forward(x, torch.arange(x.shape[-2]).expand_as(torch.as_tensor(positions)))


@mutant("rope.RotaryEmbedding", "test_cached_tables_equal_the_direct_computation_at_any_positions",
        why="saves the cos/sin tables in the state dict, so checkpoints carry (and can disagree on) them")
class RotaryWithPersistentTables(ref.RotaryEmbedding):
    def __init__(self, head_dim, max_positions=2048, theta=10000.0, interleaved=False):
        super().__init__(head_dim, max_positions, theta, interleaved)
        cos, sin = self.cos, self.sin
        del self.cos, self.sin
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)


@mutant("rope.RotaryEmbedding", "test_rejects_positions_outside_the_table", why="clamps positions past the table")
class RotaryClampingPositions(ref.RotaryEmbedding):
    """Clamps positions into the table instead of saying the sequence is too long."""

    def forward(self, x, positions):
        return super().forward(x, positions.clamp(0, self.max_positions - 1))


@mutant("rope.rotate", "test_rotate_passes_back_the_gradient_turned_by_minus_the_angle",
        why="the partner (−x₂, x₁) detached: the gradient is dy·cos, not dy turned by −angle")
def rotate_with_a_detached_partner(x, cos, sin, interleaved=False):
    """Builds the partner vector (−x₂, x₁) of every pair as a detached copy, as if swapping coordinates were
    bookkeeping: the right values, but the gradient comes back through the cos term only."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        partner = torch.stack((-x2, x1), -1).flatten(-2).detach()
        return x * cos.repeat_interleave(2, -1) + partner * sin.repeat_interleave(2, -1)
    x1, x2 = _halves(x)
    partner = torch.cat((-x2, x1), -1).detach()
    return x * torch.cat((cos, cos), -1) + partner * torch.cat((sin, sin), -1)


@mutant("rope.RotaryEmbedding", "test_rotary_embedding_gradient_is_that_of_the_rotation",
        why="the partner (−x₂, x₁) detached: the gradient is dy·cos, not dy turned by −angle")
class RotaryWithADetachedPartner(ref.RotaryEmbedding):
    def forward(self, x, positions):
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
        return rotate_with_a_detached_partner(x, cos, sin, self.interleaved)


# ---------------------------------------------------------------- precision, positions, bad input


@mutant("rope.apply_rope", "test_rope_rotates_pair_i_by_position_times_theta_i",
        why="the angles m·θ_i in float32: off by about m·2⁻²⁴ radians, 1e-4 at m = 2000")
def rope_with_float32_angles(x, positions, theta=10000.0, interleaved=False):
    angles = torch.as_tensor(positions).float()[..., None] * ref.rope_frequencies(x.shape[-1], theta).float()
    return ref.rotate(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), interleaved)


@mutant("rope.apply_rope", "test_rope_in_bfloat16_gives_bfloat16_close_to_the_float64_rotation",
        why="the angles in x's dtype: in bfloat16, position 2000 is rounded to a multiple of 8")
def rope_with_angles_in_the_dtype_of_x(x, positions, theta=10000.0, interleaved=False):
    angles = torch.as_tensor(positions).to(x.dtype)[..., None] * ref.rope_frequencies(x.shape[-1], theta).to(x.dtype)
    return ref.rotate(x, angles.cos(), angles.sin(), interleaved)


@mutant("rope.apply_rope", "test_rope_rotates_pair_i_by_position_times_theta_i",
        why="positions converted to integers: a fractional position loses its fraction")
def rope_truncating_positions_to_integers(x, positions, theta=10000.0, interleaved=False):
    return ref.apply_rope(x, torch.as_tensor(positions, dtype=torch.long), theta, interleaved)


@mutant("rope.rotate", "test_rope_in_bfloat16_gives_bfloat16_close_to_the_float64_rotation",
        why="rotates in float32 for precision and returns float32")
def rotate_returning_float32(x, cos, sin, interleaved=False):
    return ref.rotate(x.float(), cos.float(), sin.float(), interleaved)


@mutant("rope.RotaryEmbedding", "test_rope_in_bfloat16_gives_bfloat16_close_to_the_float64_rotation",
        "test_cached_tables_equal_the_direct_computation_at_any_positions",
        why="casts its tables to float32 instead of x's dtype: bfloat16 comes back float32, float64 loses digits")
class RotaryWithFloat32Tables(ref.RotaryEmbedding):
    def forward(self, x, positions):
        return ref.rotate(x, self.cos[positions].float(), self.sin[positions].float(), self.interleaved)


@mutant("rope.rotate", "test_rotate_passes_no_gradient_to_the_angle_tables",
        why="cos and sin used as given: a table that requires grad receives one")
def rotate_without_detaching_the_tables(x, cos, sin, interleaved=False):
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    x1, x2 = _halves(x)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@mutant("rope.rope_frequencies", "test_rejects_a_theta_that_is_not_positive",
        why="theta = 0 gives infinite frequencies, a negative one NaN, without a word")
def frequencies_accepting_any_theta(head_dim, theta=10000.0):
    ref.rope_frequencies(head_dim)  # keeps the check of head_dim
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


@mutant("rope.apply_rope", "test_rejects_positions_and_vectors_that_do_not_fit",
        why="no check that positions broadcast against x: torch's shape error instead of one naming both")
def rope_without_checking_the_positions(x, positions, theta=10000.0, interleaved=False):
    angles = torch.as_tensor(positions).double()[..., None] * ref.rope_frequencies(x.shape[-1], theta)
    return ref.rotate(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), interleaved)


@mutant("rope.RotaryEmbedding", "test_rejects_positions_and_vectors_that_do_not_fit",
        why="no check of x's size against head_dim: torch's shape error instead of one naming both")
class RotaryWithoutCheckingTheSize(ref.RotaryEmbedding):
    def forward(self, x, positions):
        return ref.rotate(x, self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype), self.interleaved)


@mutant("rope.rope_frequencies", "test_frequencies_are_theta_to_the_minus_2i_over_d",
        why="the frequencies in float32, torch's default dtype")
def frequencies_in_float32(head_dim, theta=10000.0):
    return ref.rope_frequencies(head_dim, theta).float()


@mutant("rope.apply_rope", "test_apply_rope_computes_on_the_device_of_x",
        why="the angles computed on the default device: RoPE of a tensor on a GPU fails")
def rope_with_angles_on_the_default_device(x, positions, theta=10000.0, interleaved=False):
    angles = torch.as_tensor(positions).double()[..., None] * ref.rope_frequencies(x.shape[-1], theta)
    return ref.rotate(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), interleaved)
