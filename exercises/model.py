# Generated from reference/model.py by `llmkata exercises`. This copy is yours: replace each stub.
"""The decoder-only transformer, its parameter and FLOP counts, and the Hugging Face Llama checkpoint format.

    ids (B, T) -> embed_tokens -> n_layers × block -> norm -> lm_head -> logits (B, T, vocab_size)

    block:  h = x + self_attn(input_layernorm(x))            (causal, RoPE, grouped-query)
            y = h + mlp(post_attention_layernorm(h))          (SwiGLU, or GELU)

The blocks are *pre-norm*: each branch reads a normalised copy of the residual stream and adds its result back, so
the stream itself is never normalised until the final `norm`, and a block whose branches output 0 is the identity.
Module and parameter names are those of Hugging Face's `LlamaForCausalLM` (`model.layers.0.self_attn.q_proj.weight`,
..., `lm_head.weight`), so a Llama-style configuration (RMSNorm, SwiGLU, split-halves RoPE) is saved and loaded
without a renaming table: `save_hf` / `load_hf` read and write `config.json` + `model.safetensors`.

Initialisation follows GPT-2: every matrix normal(0, init_std), except the two that write into the residual
stream in each block (`o_proj`, `down_proj`), whose std is divided by √(2·n_layers): the stream is a sum of
2·n_layers branch outputs, and this keeps its variance at initialisation independent of depth.

Left out: dropout, biases in linear layers, padding masks, mixture-of-experts, sliding-window attention, and
sharded saving (`save_hf` writes one safetensors file; `load_hf` reads sharded checkpoints too).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import CausalSelfAttention, KVCache
from .layers import Embedding, LayerNorm, Linear, RMSNorm, SwiGLU

NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu")


@dataclass
class ModelConfig:
    """The shape of a model. n_kv_heads=None means n_heads (plain multi-head attention); d_ff=None means
    4·d_model for the GELU MLP, and for SwiGLU 8/3·d_model rounded up to a multiple of 8 (three matrices of
    8/3·d² hold as many parameters as two of 4·d²). kernels=True computes the same function through the
    hand-written backward passes of chapter 14 (RMSNorm, SwiGLU, RoPE, attention, and the loss in train_step).

    Construction checks the shape: every size a positive int, heads that divide d_model into an even head_dim,
    kv heads that divide the heads, a known norm and MLP; each violation is one ValueError naming it."""

    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    max_seq_len: int = 256
    norm: str = "rmsnorm"
    mlp: str = "swiglu"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_interleaved: bool = False
    tie_embeddings: bool = False
    init_std: float = 0.02
    kernels: bool = False

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else 8 * math.ceil(8 * self.d_model / 3 / 8)
        raise NotImplementedError('`model.ModelConfig.__post_init__` is not implemented yet — chapter 7 (model): see '
                                  'test_logits_have_shape_batch_by_length_by_vocab and 31 more in spec/test_model.py.')

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class GeluMLP(nn.Module):
    """The GPT-2 feed-forward without biases: down_proj(GELU(up_proj(x))), (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.up_proj = Linear(dim, hidden_dim, bias=False)
        self.down_proj = Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError('`model.GeluMLP.forward` is not implemented yet — chapter 7 (model): see '
                                  'test_gelu_mlp_is_down_proj_of_gelu_of_up_proj in spec/test_model.py.')


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, eps=config.norm_eps, kernels=config.kernels)
    return LayerNorm(config.d_model, eps=config.norm_eps)


class TransformerBlock(nn.Module):
    """One pre-norm block: x + attention(norm(x)), then + mlp(norm(·)). (B, T, d_model) -> (B, T, d_model)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = _norm(config)
        self.self_attn = CausalSelfAttention(config.d_model, config.n_heads, config.n_kv_heads, config.max_seq_len,
                                             config.rope_theta, config.rope_interleaved, kernels=config.kernels)
        self.post_attention_layernorm = _norm(config)
        if config.mlp == "swiglu":
            self.mlp = SwiGLU(config.d_model, config.d_ff, kernels=config.kernels)
        else:
            self.mlp = GeluMLP(config.d_model, config.d_ff)

    def forward(self, x: Tensor, position_ids: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        raise NotImplementedError('`model.TransformerBlock.forward` is not implemented yet — chapter 7 (model): see '
                                  'test_a_block_adds_attention_then_mlp_each_reading_its_own_norm and 1 more in '
                                  'spec/test_model.py.')


class Decoder(nn.Module):
    """Embeddings, blocks and the final norm: ids (B, T) -> hidden states (B, T, d_model). (HF: LlamaModel.)"""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = _norm(config)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None,
                cache: list[KVCache] | None = None) -> Tensor:
        raise NotImplementedError('`model.Decoder.forward` is not implemented yet — chapter 7 (model): see '
                                  'test_the_decoder_is_the_embedding_then_every_block_then_the_final_norm and 1 more '
                                  'in spec/test_model.py.')


class Transformer(nn.Module):
    """The language model: token ids (B, T) -> next-token logits (B, T, vocab_size). (HF: LlamaForCausalLM.)

    With tie_embeddings, lm_head.weight *is* model.embed_tokens.weight: one matrix, counted and trained once.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """normal(0, init_std) for embeddings and matrices, /√(2·n_layers) for o_proj and down_proj; norms 1 and 0."""
        raise NotImplementedError('`model.Transformer.reset_parameters` is not implemented yet — chapter 7 (model): '
                                  'see test_logits_have_shape_batch_by_length_by_vocab and 21 more in '
                                  'spec/test_model.py.')

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None,
                cache: list[KVCache] | None = None) -> Tensor:
        """input_ids (B, T) -> logits (B, T, vocab_size). With a cache (one KVCache per layer, see make_cache), the
        T tokens continue the sequence the cache holds, at positions cache_length .. cache_length + T − 1."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        raise NotImplementedError('`model.Transformer.forward` is not implemented yet — chapter 7 (model): see '
                                  'test_logits_have_shape_batch_by_length_by_vocab and 21 more in spec/test_model.py.')

    def make_cache(self, batch_size: int, max_seq_len: int | None = None) -> list[KVCache]:
        """One empty KVCache per layer, for max_seq_len positions (default: the context), in the model's dtype."""
        raise NotImplementedError('`model.Transformer.make_cache` is not implemented yet — chapter 7 (model): see '
                                  'test_logits_have_shape_batch_by_length_by_vocab and 21 more in spec/test_model.py.')


def count_parameters(model: nn.Module) -> int:
    """The number of trainable numbers in `model`, a tied matrix counted once.

    For a Transformer: V·d (+ V·d untied) + L·(2·d·H·hd + 2·d·KV·hd + m·d·d_ff + norms) + final norm, with m = 3 for
    SwiGLU and 2 for GELU, and a norm of d numbers (RMSNorm) or 2·d (LayerNorm, weight and bias).
    """
    raise NotImplementedError('`model.count_parameters` is not implemented yet — chapter 7 (model): see '
                              'test_parameter_count_matches_the_formula in spec/test_model.py.')


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward) at context length seq_len (default: max_seq_len):

        6·N + 12·n_layers·seq_len·(n_heads·head_dim)

    N counts the weights of every matrix multiplication, lm_head included (even when tied) and the embedding lookup
    excluded: a forward pass costs 2 FLOPs (a multiply and an add) per weight and token, the backward twice that.
    Attention adds q·kᵀ and p·v: 2·seq_len·n_heads·head_dim each per token and layer in the forward pass, counted
    in full, as a dense implementation computes them (a causal kernel can skip half).
    """
    raise NotImplementedError('`model.flops_per_token` is not implemented yet — chapter 7 (model): see '
                              'test_flops_per_token_counts_every_matmul and '
                              'test_flops_per_token_defaults_to_the_context_length in spec/test_model.py.')


# ---------------------------------------------------------------- the Hugging Face Llama format


def hf_config(config: ModelConfig) -> dict:
    """The `config.json` of a `LlamaForCausalLM` with this shape. Only RMSNorm + SwiGLU models are Llamas.

    RoPE is written as split halves (Llama's convention): `save_hf` permutes the weights of an interleaved model.
    """
    raise NotImplementedError('`model.hf_config` is not implemented yet — chapter 7 (model): see '
                              'test_hf_config_round_trips, test_hf_config_states_every_field_a_llama_reader_needs and '
                              '1 more in spec/test_model.py.')


def config_from_hf(hf: dict) -> ModelConfig:
    """A ModelConfig from a Llama `config.json` (as a dict); what llmkata cannot express is refused by name."""
    raise NotImplementedError('`model.config_from_hf` is not implemented yet — chapter 7 (model): see '
                              'test_hf_config_round_trips, '
                              'test_config_from_hf_fills_in_llama_defaults_and_reads_older_formats and 1 more in '
                              'spec/test_model.py.')


def _halves_from_adjacent(weight: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """Reorder the output rows of a q or k projection, head by head, from adjacent-pair RoPE to split halves.

    Within a head, new row j < hd/2 is old row 2j and new row hd/2 + j is old row 2j + 1. Queries and keys are
    permuted alike, so q·k is unchanged, and the rotation of each pair is the same rotation on the new rows.
    """
    order = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    return weight.view(n_heads, head_dim, -1)[:, order].reshape(n_heads * head_dim, -1)


def save_hf(model: Transformer, folder) -> None:
    """Write `config.json` and `model.safetensors` that `transformers.LlamaForCausalLM.from_pretrained(folder)` loads.

    A tied lm_head is left out (the config says tie_word_embeddings); an interleaved-RoPE model has the rows of its
    q_proj and k_proj permuted to split halves, so that Llama computes the same function.
    """
    raise NotImplementedError('`model.save_hf` is not implemented yet — chapter 7 (model): see '
                              'test_exported_weights_load_back_to_identical_logits and 5 more in spec/test_model.py.')


def load_hf(folder) -> Transformer:
    """A Transformer from a Llama checkpoint folder (config.json + model.safetensors, or sharded safetensors with
    model.safetensors.index.json), in the dtype of its weights. Names must match one to one."""
    raise NotImplementedError('`model.load_hf` is not implemented yet — chapter 7 (model): see '
                              'test_exported_weights_load_back_to_identical_logits, '
                              'test_loads_a_checkpoint_saved_by_transformers and 2 more in spec/test_model.py.')
