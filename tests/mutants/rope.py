"""Wrong implementations of the rope chapter that a learner could plausibly write."""

import torch

import llmkata.reference.rope as ref

from . import Mutant


def frequencies_without_the_factor_two(head_dim, theta=10000.0):
    ref.rope_frequencies(head_dim, theta)  # keeps the checks
    return theta ** (-torch.arange(head_dim // 2, dtype=torch.float64) / head_dim)


def frequencies_accepting_odd_dims(head_dim, theta=10000.0):
    return theta ** (-torch.arange(0, head_dim - head_dim % 2, 2, dtype=torch.float64) / head_dim)


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


def _sign_error(x, cos, sin, interleaved):
    x1, x2 = _halves(x)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos - x1 * sin), dim=-1)


def _ignoring_the_flag(x, cos, sin, interleaved):
    return ref.rotate(x, cos, sin, interleaved=False)


def rotate_with_a_sign_error(x, cos, sin, interleaved=False):
    return _sign_error(x, cos, sin, interleaved)


def rotate_ignoring_the_flag(x, cos, sin, interleaved=False):
    return ref.rotate(x, cos, sin, interleaved=False)


def rope_off_by_one_position(x, positions, theta=10000.0, interleaved=False):
    return ref.apply_rope(x, torch.as_tensor(positions) + 1, theta, interleaved)


def rope_clamping_negative_positions(x, positions, theta=10000.0, interleaved=False):
    return ref.apply_rope(x, torch.as_tensor(positions).clamp(min=0), theta, interleaved)


class RotaryIgnoringPositions(ref.RotaryEmbedding):
    """Looks up rows 0..T-1 whatever the positions: right for a prompt, wrong for cached decoding."""

    def forward(self, x, positions):
        return super().forward(x, torch.arange(x.shape[-2]).expand_as(torch.as_tensor(positions)))


class RotaryWithPersistentTables(ref.RotaryEmbedding):
    def __init__(self, head_dim, max_positions=2048, theta=10000.0, interleaved=False):
        super().__init__(head_dim, max_positions, theta, interleaved)
        cos, sin = self.cos, self.sin
        del self.cos, self.sin
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)


class RotaryClampingPositions(ref.RotaryEmbedding):
    """Clamps positions into the table instead of saying the sequence is too long."""

    def forward(self, x, positions):
        return super().forward(x, positions.clamp(0, self.max_positions - 1))


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


class RotaryWithADetachedPartner(ref.RotaryEmbedding):
    def forward(self, x, positions):
        cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
        return rotate_with_a_detached_partner(x, cos, sin, self.interleaved)


MUTANTS = [
    Mutant("rope.rope_frequencies", frequencies_without_the_factor_two,
           ("test_frequencies_are_theta_to_the_minus_2i_over_d",), "θ^(−i/d) instead of θ^(−2i/d)"),
    Mutant("rope.rope_frequencies", frequencies_accepting_odd_dims,
           ("test_rejects_an_odd_head_dimension",), "an odd head dimension silently drops a coordinate"),
    Mutant("rope.apply_rope", _rope_with(_clockwise),
           ("test_rope_rotates_pair_i_by_position_times_theta_i",), "rotates clockwise (by −m): every "
           "relative property still holds, only the definition catches it"),
    Mutant("rope.apply_rope", _rope_with(_sign_error),
           ("test_rope_rotates_pair_i_by_position_times_theta_i", "test_rotation_preserves_the_norm_of_every_pair",
            "test_scores_depend_only_on_the_relative_position", "test_rotating_by_minus_m_inverts"),
           "x₂ cos − x₁ sin: a sign error that makes it no rotation at all"),
    Mutant("rope.apply_rope", _rope_with(_ignoring_the_flag),
           ("test_pairing_conventions_agree_under_the_permutation",
            "test_rope_rotates_pair_i_by_position_times_theta_i"),
           "interleaved=True still pairs split halves"),
    Mutant("rope.rotate", rotate_with_a_sign_error, ("test_rotate_turns_each_pair_by_the_given_angle",),
           "x₂ cos − x₁ sin"),
    Mutant("rope.rotate", rotate_ignoring_the_flag, ("test_rotate_turns_each_pair_by_the_given_angle",),
           "interleaved=True still pairs split halves"),
    Mutant("rope.apply_rope", rope_off_by_one_position,
           ("test_position_zero_is_the_identity", "test_rope_rotates_pair_i_by_position_times_theta_i"),
           "positions counted from 1"),
    Mutant("rope.apply_rope", rope_clamping_negative_positions,
           ("test_rotating_by_minus_m_inverts",), "negative positions clamped to 0"),
    Mutant("rope.RotaryEmbedding", RotaryIgnoringPositions,
           ("test_cached_tables_equal_the_direct_computation_at_any_positions",),
           "uses rows 0..T-1 of the table instead of the given positions"),
    Mutant("rope.RotaryEmbedding", RotaryWithPersistentTables,
           ("test_cached_tables_equal_the_direct_computation_at_any_positions",),
           "saves the cos/sin tables in the state dict, so checkpoints carry (and can disagree on) them"),
    Mutant("rope.RotaryEmbedding", RotaryClampingPositions,
           ("test_rejects_positions_outside_the_table",), "clamps positions past the table"),
    Mutant("rope.rotate", rotate_with_a_detached_partner,
           ("test_rotate_passes_back_the_gradient_turned_by_minus_the_angle",),
           "the partner (−x₂, x₁) detached: the gradient is dy·cos, not dy turned by −angle"),
    Mutant("rope.RotaryEmbedding", RotaryWithADetachedPartner,
           ("test_rotary_embedding_gradient_is_that_of_the_rotation",),
           "the partner (−x₂, x₁) detached: the gradient is dy·cos, not dy turned by −angle"),
]
