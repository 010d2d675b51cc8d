# Generated from reference/rope.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Rotary position embeddings (RoPE): a token's position enters attention as a rotation of its query and key.

The head dimension d is cut into d/2 pairs of coordinates. At position m, pair i is rotated by the angle m·θ_i,

    θ_i = θ^(−2i/d),   i = 0 .. d/2 − 1   (θ = 10000 by default),

so the first pairs turn fast (one radian per position) and the last ones slowly (θ^(−(d−2)/d) per position).
A pair (x₁, x₂) becomes (x₁ cos mθ_i − x₂ sin mθ_i,  x₁ sin mθ_i + x₂ cos mθ_i). Rotations keep lengths and
compose, R(m)ᵀ R(n) = R(n − m), hence for a query at position m and a key at position n

    ⟨R(m) q, R(n) k⟩ = ⟨q, R(n − m) k⟩:

the attention score sees the two positions only through their difference. Nothing is added to the token
embeddings, and no parameter is learned.

Two ways of pairing the d coordinates are in use; one flag chooses:
- split halves (`interleaved=False`, the default; Hugging Face Llama, GPT-NeoX): pair i is (x_i, x_{i+d/2});
- adjacent pairs (`interleaved=True`; the RoPE paper, Meta's original Llama code): pair i is (x_{2i}, x_{2i+1}).
They compute the same rotation on permuted coordinates: adjacent-pairs RoPE of x equals split-halves RoPE of
x[perm] put back in place, with perm = [0, 2, 4, ..., 1, 3, 5, ...]. A checkpoint trained with one convention runs
under the other once the rows of its query and key projections are permuted (see `model.save_hf`).

Left out: RoPE scaling for contexts longer than the training one (linear, NTK, YaRN, Llama 3 frequency bands) and
rotating only part of the head dimension.
"""

import torch
from torch import Tensor, nn

from . import kernels


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> Tensor:
    """The d/2 angular frequencies θ_i = θ^(−2i/d), in float64, fastest first.

    Example: rope_frequencies(4, theta=100.0) -> tensor([1.0, 0.1])
    """
    raise NotImplementedError('`rope.rope_frequencies` is not implemented yet — chapter 5 (rope): see '
                              'test_frequencies_are_theta_to_the_minus_2i_over_d, '
                              'test_any_positive_theta_is_a_valid_base and 3 more in spec/test_rope.py.')


def rotate(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate every pair of coordinates of x by the angles whose cosines and sines are given.

    x: (..., d); cos, sin: (..., d/2), broadcastable against x[..., :d/2]; pair i turns by the angle of column i.
    Split halves pair x_i with x_{i+d/2}; adjacent pairs (interleaved) pair x_{2i} with x_{2i+1}.
    Gradients flow to x only: cos and sin are tables of fixed angles, and get none.
    Example (d = 2, one pair, a quarter turn): rotate([1., 0.], cos=[0.], sin=[1.]) -> [0., 1.]
    """
    raise NotImplementedError('`rope.rotate` is not implemented yet — chapter 5 (rope): see '
                              'test_rotate_turns_each_pair_by_the_given_angle and 3 more in spec/test_rope.py.')


def apply_rope(x: Tensor, positions: Tensor, theta: float = 10000.0, interleaved: bool = False) -> Tensor:
    """Rotate x (..., T, d) as if its vectors sat at `positions`, computing the angles directly.

    positions: integers (or floats) broadcastable against x.shape[:-1], e.g. (T,) for every row alike, or
    (B, 1, T) for x of shape (B, H, T, d). Any value is allowed: negative positions rotate backwards, so
    apply_rope(apply_rope(x, p), -p) == x. The angles are computed in float64, the rotation in x's dtype.
    """
    positions = torch.as_tensor(positions, device=x.device)
    try:
        torch.broadcast_shapes(positions.shape, x.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"positions of shape {tuple(positions.shape)} do not broadcast against the {tuple(x.shape[:-1])} "
            f"vectors of x (shape {tuple(x.shape)})") from None
    frequencies = rope_frequencies(x.shape[-1], theta)
    raise NotImplementedError('`rope.apply_rope` is not implemented yet — chapter 5 (rope): see '
                              'test_rope_rotates_pair_i_by_position_times_theta_i and 9 more in spec/test_rope.py.')


class RotaryEmbedding(nn.Module):
    """RoPE with the cosines and sines of positions 0 .. max_positions − 1 computed once and looked up.

    The tables are buffers that are not saved in the state dict (they follow from the constructor's arguments);
    they are kept in float64 and cast to the input's dtype on use. forward(x, positions) equals
    apply_rope(x, positions, theta, interleaved) for positions inside the table, and raises for any other.
    kernels=True turns the pairs with chapter 14's hand-written backward pass (the same rotation).
    """

    def __init__(self, head_dim: int, max_positions: int = 2048, theta: float = 10000.0, interleaved: bool = False,
                 kernels: bool = False):
        super().__init__()
        self.kernels = kernels
        if not isinstance(max_positions, int) or max_positions <= 0:
            raise ValueError(f"max_positions must be a positive number of positions, got {max_positions}")
        self.head_dim, self.max_positions, self.theta, self.interleaved = head_dim, max_positions, theta, interleaved
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), rope_frequencies(head_dim, theta))
        self.register_buffer("cos", angles.cos(), persistent=False)  # (max_positions, d/2)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x (..., T, d) rotated to `positions` (integers in [0, max_positions), broadcastable to x.shape[:-1])."""
        raise NotImplementedError('`rope.RotaryEmbedding.forward` is not implemented yet — chapter 5 (rope): see '
                                  'test_rope_in_bfloat16_gives_bfloat16_close_to_the_float64_rotation and 6 more in '
                                  'spec/test_rope.py.')
        if self.kernels:  # chapter 14: the same rotation with a hand-written backward pass
            return kernels.RotateFunction.apply(x, cos, sin, self.interleaved)
        return rotate(x, cos, sin, self.interleaved)
