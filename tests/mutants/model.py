"""Wrong implementations of the model chapter that a learner could plausibly write."""

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

import llmkata.reference.attention as attention
import llmkata.reference.layers as layers
import llmkata.reference.model as ref

from . import mutant


def _named(name, cls):
    cls.__name__ = cls.__qualname__ = name
    return cls


# ---------------------------------------------------------------- the model


class _NonCausalAttention(attention.CausalSelfAttention):
    def forward(self, x, position_ids=None, cache=None):
        batch, length, _ = x.shape
        positions = torch.arange(length)
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        n_rep = self.n_heads // self.n_kv_heads
        out = attention.scaled_dot_product_attention(q, attention.repeat_kv(k, n_rep), attention.repeat_kv(v, n_rep))
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class _PositionsFromZeroAttention(attention.CausalSelfAttention):
    def forward(self, x, position_ids=None, cache=None):
        return super().forward(x, torch.arange(x.shape[1]), cache)


def _with_attention(name, attention_class):
    class Mutated(ref.Transformer):
        def __init__(self, config):
            super().__init__(config)
            for layer in self.model.layers:
                layer.self_attn.__class__ = attention_class
    return _named(name, Mutated)


TransformerNotCausal = _with_attention("TransformerNotCausal", _NonCausalAttention)
TransformerRestartingPositions = _with_attention("TransformerRestartingPositions", _PositionsFromZeroAttention)


class _PostNormBlock(ref.TransformerBlock):
    def forward(self, x, position_ids=None, cache=None):
        x = self.input_layernorm(x + self.self_attn(x, position_ids=position_ids, cache=cache))
        return self.post_attention_layernorm(x + self.mlp(x))


@mutant("model.Transformer", "test_blocks_are_pre_norm", why="post-norm blocks")
class TransformerPostNorm(ref.Transformer):
    """The original transformer's post-norm blocks: norm(x + f(x))."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.__class__ = _PostNormBlock


@mutant("model.Transformer", "test_initialisation_scales_residual_projections",
        why="o_proj and down_proj not scaled by 1/√(2L)")
class TransformerWithoutResidualScaling(ref.Transformer):
    def reset_parameters(self):
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if "norm" in name:
                    parameter.fill_(0.0 if name.endswith("bias") else 1.0)
                else:
                    parameter.normal_(0.0, self.config.init_std)


@mutant("model.Transformer", "test_initialisation_scales_residual_projections", why="scaled by 1/√L instead of 1/√(2L)")
class TransformerScalingByLayers(ref.Transformer):
    """Divides by √n_layers, forgetting that each layer adds two branches."""

    def reset_parameters(self):
        super().reset_parameters()
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    parameter.mul_(math.sqrt(2))


@mutant("model.Transformer", "test_parameter_count_matches_the_formula", why="tie_embeddings copies instead of sharing")
class TransformerNeverTied(ref.Transformer):
    """Copies the embedding into lm_head instead of sharing it."""

    def __init__(self, config):
        super().__init__(dataclasses.replace(config, tie_embeddings=False))
        self.config = config
        if config.tie_embeddings:
            with torch.no_grad():
                self.lm_head.weight.copy_(self.model.embed_tokens.weight)


@mutant("model.Transformer", "test_parameter_names_follow_hugging_face_llama", why="attn instead of self_attn")
class TransformerWithShortNames(ref.Transformer):
    """nanoGPT-style names: attn instead of self_attn, ln_1 instead of input_layernorm."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.attn = layer.self_attn
            del layer.self_attn
            layer.self_attn = layer.attn  # forward still works through the attribute

    def state_dict(self, *args, **kwargs):
        return {k.replace("self_attn.", "attn."): v for k, v in super().state_dict(*args, **kwargs).items()}


@mutant("model.Transformer", "test_logits_have_shape_batch_by_length_by_vocab", why="logits of the last position only")
class TransformerLastPositionOnly(ref.Transformer):
    """Returns the logits of the last position only, as generation needs them."""

    def forward(self, input_ids, position_ids=None, cache=None):
        return super().forward(input_ids, position_ids, cache)[:, -1]


class _FusedGateAndUp(layers.SwiGLU):
    """One matmul by the stacked gate_proj and up_proj weights: fast, and blind to a module that wraps either."""

    def forward(self, x):
        gate, up = (x @ torch.cat((self.gate_proj.weight, self.up_proj.weight)).T).chunk(2, dim=-1)
        return self.down_proj(layers.silu(gate) * up)


@mutant("model.Transformer", "test_every_projection_goes_through_its_module",
        why="the MLP multiplies by the stacked gate and up weights instead of calling gate_proj and up_proj")
class TransformerFusingGateAndUp(ref.Transformer):
    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            if isinstance(layer.mlp, layers.SwiGLU):
                layer.mlp.__class__ = _FusedGateAndUp


@mutant("model.Transformer", "test_rejects_a_sequence_longer_than_the_context",
        why="crops the input to the context instead of refusing it")
class TransformerCroppingTheContext(ref.Transformer):
    """Keeps the last max_seq_len tokens instead of refusing a longer sequence."""

    def forward(self, input_ids, position_ids=None, cache=None):
        room = self.config.max_seq_len - (0 if cache is None else cache[0].length)
        return super().forward(input_ids[:, -max(room, 1):], position_ids, cache)


@mutant("model.ModelConfig", "test_rejects_inconsistent_configs", why="no validation of head counts and names")
@dataclasses.dataclass
class ConfigWithoutChecks(ref.ModelConfig):
    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model


# ---------------------------------------------------------------- counts


@mutant("model.count_parameters", "test_parameter_count_matches_the_formula", why="a tied matrix counted twice")
def count_with_tied_twice(model):
    return sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))


@mutant("model.count_parameters", "test_parameter_count_matches_the_formula", why="norm weights left out")
def count_weights_only(model):
    return sum(p.numel() for name, p in model.named_parameters() if "norm" not in name)


def _attention_term(config, seq_len):
    return 12 * config.n_layers * (seq_len or config.max_seq_len) * config.d_model


@mutant("model.flops_per_token", "test_flops_per_token_counts_every_matmul", why="6N only, no attention term")
def flops_without_attention(config, seq_len=None):
    return ref.flops_per_token(config, seq_len) - _attention_term(config, seq_len)


@mutant("model.flops_per_token", "test_flops_per_token_counts_every_matmul",
        why="N includes the input embedding, which is a lookup")
def flops_counting_the_embedding(config, seq_len=None):
    """6·(all parameters): counts the embedding lookup as a matmul."""
    extra = 0 if config.tie_embeddings else config.vocab_size * config.d_model
    return ref.flops_per_token(config, seq_len) + 6 * extra


@mutant("model.flops_per_token", "test_flops_per_token_counts_every_matmul",
        why="the attention term halved, though the dense computation does all of it")
def flops_with_causal_half(config, seq_len=None):
    return ref.flops_per_token(config, seq_len) - _attention_term(config, seq_len) // 2


# ---------------------------------------------------------------- the Llama format


@mutant("model.hf_config", "test_hf_config_round_trips",
        why="num_key_value_heads not written: Llama assumes plain multi-head attention")
def hf_config_without_kv_heads(config):
    hf = ref.hf_config(config)
    del hf["num_key_value_heads"]
    return hf


@mutant("model.hf_config", "test_hf_config_round_trips", why="rope_theta left at its default")
def hf_config_with_default_theta(config):
    hf = ref.hf_config(config)
    hf["rope_theta"] = 10000.0
    hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    return hf


@mutant("model.config_from_hf", "test_hf_config_round_trips", why="rms_norm_eps not read")
def config_from_hf_without_eps(hf):
    return dataclasses.replace(ref.config_from_hf(hf), norm_eps=1e-5)


@mutant("model.config_from_hf", "test_hf_config_round_trips", why="num_key_value_heads not read")
def config_from_hf_ignoring_kv_heads(hf):
    return dataclasses.replace(ref.config_from_hf(hf), n_kv_heads=hf["num_attention_heads"])


@mutant("model.save_hf", "test_exported_weights_load_back_to_identical_logits",
        why="interleaved-RoPE weights exported without the permutation to split halves")
def save_hf_without_permuting(model, folder):
    """Exports an interleaved-RoPE model as is: Llama pairs the coordinates differently."""
    config = model.config
    ref.save_hf(_Shell(dataclasses.replace(config, rope_interleaved=False), model), folder)


class _Shell:
    def __init__(self, config, model):
        self.config, self.state_dict = config, model.state_dict


@mutant("model.save_hf", "test_rejects_exporting_what_llama_cannot_express",
        why="LayerNorm/GELU models exported as Llamas")
def save_hf_ignoring_what_llama_cannot_express(model, folder):
    config = model.config
    ref.save_hf(_Shell(dataclasses.replace(config, norm="rmsnorm", mlp="swiglu"), model), folder)


@mutant("model.save_hf", "test_exported_weights_load_back_to_identical_logits",
        "test_transformers_llama_from_exported_files_gives_the_same_logits",
        why="rms_norm_eps not exported")
def save_hf_with_default_eps(model, folder):
    ref.save_hf(_Shell(dataclasses.replace(model.config, norm_eps=1e-6), model), folder)


@mutant("model.load_hf", "test_exported_weights_load_back_to_identical_logits",
        "test_loads_a_checkpoint_saved_by_transformers",
        why="a tied lm_head left at its random initialisation")
def load_hf_ignoring_tied_weights(folder):
    """Builds an untied model and loads what is there: lm_head keeps its random initialisation."""
    hf = json.loads((Path(folder) / "config.json").read_text())
    config = ref.config_from_hf(hf)
    model = ref.Transformer(dataclasses.replace(config, tie_embeddings=False))
    model.load_state_dict(load_file(Path(folder) / "model.safetensors"), strict=False)
    return model


mutant("model.Transformer", "test_output_at_t_ignores_inputs_after_t", why="attention without the causal mask")(
    TransformerNotCausal)


mutant("model.Transformer", "test_cached_decoding_equals_the_full_forward",
       why="each call rotates its tokens from position 0")(TransformerRestartingPositions)
