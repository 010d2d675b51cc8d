"""Wrong implementations of the model chapter that a learner could plausibly write."""

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

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


# ---------------------------------------------------------------- the parts: GeluMLP, TransformerBlock, Decoder


@mutant("model.GeluMLP", "test_gelu_mlp_is_down_proj_of_gelu_of_up_proj",
        why="the tanh approximation of GELU, where the definition uses erf")
class GeluMLPWithTheTanhApproximation(ref.GeluMLP):
    def forward(self, x):
        return self.down_proj(layers.gelu(self.up_proj(x), approximate="tanh"))


@mutant("model.GeluMLP", "test_gelu_mlp_is_down_proj_of_gelu_of_up_proj", why="SiLU instead of GELU")
class GeluMLPWithSiLU(ref.GeluMLP):
    def forward(self, x):
        return self.down_proj(layers.silu(self.up_proj(x)))


@mutant("model.TransformerBlock", "test_a_block_adds_attention_then_mlp_each_reading_its_own_norm",
        why="position_ids not passed on to the attention")
class BlockIgnoringPositions(ref.TransformerBlock):
    def forward(self, x, position_ids=None, cache=None):
        return super().forward(x, None, cache)


@mutant("model.TransformerBlock", "test_a_block_adds_attention_then_mlp_each_reading_its_own_norm",
        why="one norm for both branches: post_attention_layernorm is never used")
class BlockWithOneNorm(ref.TransformerBlock):
    def forward(self, x, position_ids=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), position_ids=position_ids, cache=cache)
        return x + self.mlp(self.input_layernorm(x))


@mutant("model.TransformerBlock", "test_a_block_with_a_cache_continues_the_sequence_the_cache_holds",
        why="the cache is not passed on to the attention: every call starts a new sequence")
class BlockIgnoringTheCache(ref.TransformerBlock):
    def forward(self, x, position_ids=None, cache=None):
        return super().forward(x, position_ids, None)


@mutant("model.Decoder", "test_the_decoder_is_the_embedding_then_every_block_then_the_final_norm",
        why="no final norm: the hidden states are the raw residual stream")
class DecoderWithoutTheFinalNorm(ref.Decoder):
    def forward(self, input_ids, position_ids=None, cache=None):
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, position_ids=position_ids, cache=None if cache is None else cache[i])
        return x


@mutant("model.Decoder", "test_the_decoder_is_the_embedding_then_every_block_then_the_final_norm",
        why="position_ids reach the first block only")
class DecoderPositioningTheFirstBlockOnly(ref.Decoder):
    def forward(self, input_ids, position_ids=None, cache=None):
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, position_ids=position_ids if i == 0 else None, cache=None if cache is None else cache[i])
        return self.norm(x)


@mutant("model.Decoder", "test_the_transformer_is_lm_head_of_the_decoders_hidden_states",
        why="the cache is not passed on to the blocks")
class DecoderIgnoringTheCache(ref.Decoder):
    def forward(self, input_ids, position_ids=None, cache=None):
        return super().forward(input_ids, position_ids, None)


# ---------------------------------------------------------------- the Transformer's positions, cache and reset


@mutant("model.Transformer", "test_the_transformer_is_lm_head_of_the_decoders_hidden_states",
        why="position_ids not passed on to the decoder")
class TransformerIgnoringPositions(ref.Transformer):
    def forward(self, input_ids, position_ids=None, cache=None):
        return super().forward(input_ids, None, cache)


@mutant("model.Transformer", "test_positions_count_only_through_their_differences_row_by_row",
        why="(batch, T) position_ids: the first row's positions used for every row")
class TransformerWithTheFirstRowsPositions(ref.Transformer):
    def forward(self, input_ids, position_ids=None, cache=None):
        if position_ids is not None and position_ids.dim() == 2:
            position_ids = position_ids[0]
        return super().forward(input_ids, position_ids, cache)


@mutant("model.Transformer", "test_make_cache_holds_max_seq_len_positions_in_the_models_dtype",
        why="make_cache ignores max_seq_len and always holds the whole context")
class TransformerCachingTheWholeContext(ref.Transformer):
    def make_cache(self, batch_size, max_seq_len=None):
        return super().make_cache(batch_size)


@mutant("model.Transformer", "test_make_cache_holds_max_seq_len_positions_in_the_models_dtype",
        why="make_cache in float32 whatever the model's dtype")
class TransformerCachingInFloat32(ref.Transformer):
    def make_cache(self, batch_size, max_seq_len=None):
        config = self.config
        length = config.max_seq_len if max_seq_len is None else max_seq_len
        return [attention.KVCache(batch_size, config.n_kv_heads, config.head_dim, length)
                for _ in range(config.n_layers)]


@mutant("model.Transformer", "test_reset_parameters_restores_the_initial_distribution",
        why="reset_parameters redraws the matrices and leaves norm gains and biases as training left them")
class TransformerResettingMatricesOnly(ref.Transformer):
    def reset_parameters(self):
        std = self.config.init_std
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if "norm" in name:
                    continue  # at construction they are 1 and 0 already
                residual = name.endswith(("o_proj.weight", "down_proj.weight"))
                parameter.normal_(0.0, std / math.sqrt(2 * self.config.n_layers) if residual else std)


@mutant("model.Transformer", "test_reset_parameters_restores_the_initial_distribution",
        why="initialises once, in the constructor; later calls do nothing")
class TransformerInitialisingOnce(ref.Transformer):
    def reset_parameters(self):
        if getattr(self, "_initialised", False):
            return
        super().reset_parameters()
        self._initialised = True


@mutant("model.Transformer", "test_rejects_a_cache_without_one_entry_per_layer",
        why="no check that the cache has one KVCache per layer")
class TransformerTrustingTheCacheLength(ref.Transformer):
    def forward(self, input_ids, position_ids=None, cache=None):
        cached = 0 if cache is None else cache[0].length
        if cached + input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{cached + input_ids.shape[1]} positions; the context holds {self.config.max_seq_len}")
        return self.lm_head(self.model(input_ids, position_ids=position_ids, cache=cache))


# ---------------------------------------------------------------- the configuration


@mutant("model.ModelConfig", "test_config_fills_in_the_kv_heads_and_the_mlp_width",
        why="the SwiGLU width 8/3·d_model not rounded up to a multiple of 8")
@dataclasses.dataclass
class ConfigWithAnUnroundedSwigluWidth(ref.ModelConfig):
    def __post_init__(self):
        if self.d_ff is None and self.mlp == "swiglu":
            self.d_ff = 8 * self.d_model // 3
        super().__post_init__()


@mutant("model.ModelConfig", "test_rejects_inconsistent_configs",
        why="checks how the heads divide d_model, not that every size is a positive whole number")
@dataclasses.dataclass
class ConfigCheckingOnlyTheHeads(ref.ModelConfig):
    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else 8 * math.ceil(self.d_model / 3)
        if self.n_heads and self.d_model % self.n_heads:
            raise ValueError(f"d_model = {self.d_model} must split evenly into n_heads = {self.n_heads} heads")
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads = {self.n_heads} must split evenly over n_kv_heads = {self.n_kv_heads}")
        if self.n_heads and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model = {self.d_model} / n_heads = {self.n_heads} gives an odd head dimension 3")
        if self.norm not in ref.NORMS or self.mlp not in ref.MLPS:
            raise ValueError(f"unknown norm {self.norm!r} or mlp {self.mlp!r}")


# ---------------------------------------------------------------- the Llama format: what does not fit


@mutant("model.config_from_hf", "test_rejects_llama_configs_llmkata_cannot_express",
        why="reads the sizes and ignores what llmkata cannot build (biases, GELU, RoPE scaling, other models)")
def config_from_hf_without_checks(hf):
    return ref.ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads"), d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048), norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(hf.get("rope_theta", 10000.0)), tie_embeddings=hf.get("tie_word_embeddings", False),
        init_std=hf.get("initializer_range", 0.02))


@mutant("model.load_hf", "test_load_hf_rejects_weights_that_do_not_fit_the_config",
        why="loads whatever names fit and leaves the rest at their initialisation")
def load_hf_not_strict(folder):
    folder = Path(folder)
    config = ref.config_from_hf(json.loads((folder / "config.json").read_text()))
    model = ref.Transformer(config)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
    return model


@mutant("model.load_hf", "test_exported_weights_load_back_to_identical_logits",
        why="always builds a float32 model: bfloat16 weights are widened")
def load_hf_in_float32(folder):
    return ref.load_hf(folder).float()


@mutant("model.load_hf", "test_loads_a_checkpoint_saved_by_transformers",
        why="reads model.safetensors only: a sharded checkpoint (index + shards) is not found")
def load_hf_from_one_file_only(folder):
    folder = Path(folder)
    config = ref.config_from_hf(json.loads((folder / "config.json").read_text()))
    tensors = load_file(folder / "model.safetensors")
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    model = ref.Transformer(config).to(next(iter(tensors.values())).dtype)
    model.load_state_dict(tensors, strict=not config.tie_embeddings)
    return model


# ---------------------------------------------------------------- defaults, older formats, the files written


@mutant("model.flops_per_token", "test_flops_per_token_defaults_to_the_context_length",
        why="without seq_len the attention term is left out (seq_len taken as 0)")
def flops_with_no_attention_by_default(config, seq_len=None):
    return ref.flops_per_token(config, 0 if seq_len is None else seq_len)


@mutant("model.hf_config", "test_hf_config_states_every_field_a_llama_reader_needs",
        why="writes the sizes only and leaves the rest to transformers' defaults: no model_type, architectures, "
            "hidden_act, head_dim, bias flags, initializer_range or rope_parameters")
def hf_config_with_the_sizes_only(config):
    hf = ref.hf_config(config)
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings")
    return {key: hf[key] for key in keep}


@mutant("model.hf_config", "test_hf_config_states_every_field_a_llama_reader_needs",
        why="rope_theta written in rope_parameters only: older transformers read the top-level key, and fall back "
            "to 10000")
def hf_config_with_rope_parameters_only(config):
    hf = ref.hf_config(config)
    del hf["rope_theta"]
    return hf


@mutant("model.config_from_hf", "test_config_from_hf_fills_in_llama_defaults_and_reads_older_formats",
        why="reads only the newest format: a top-level rope_theta is ignored, rope_scaling is not looked at")
def config_from_hf_reading_rope_parameters_only(hf):
    rope = hf.get("rope_parameters") or {}
    config = ref.config_from_hf({key: value for key, value in hf.items() if key not in ("rope_theta", "rope_scaling")})
    return dataclasses.replace(config, rope_theta=float(rope.get("rope_theta", 10000.0)))


@mutant("model.config_from_hf", "test_config_from_hf_fills_in_llama_defaults_and_reads_older_formats",
        why="requires every field: a config.json that leaves max_position_embeddings or rms_norm_eps to LlamaConfig's "
            "defaults fails with a KeyError")
def config_from_hf_requiring_every_field(hf):
    config = ref.config_from_hf(hf)
    return dataclasses.replace(config, max_seq_len=hf["max_position_embeddings"], norm_eps=hf["rms_norm_eps"])


@mutant("model.config_from_hf", "test_hf_config_round_trips",
        why="initializer_range not read: every loaded model reinitialises with std 0.02")
def config_from_hf_ignoring_initializer_range(hf):
    return dataclasses.replace(ref.config_from_hf(hf), init_std=0.02)


@mutant("model.save_hf", "test_save_hf_writes_the_files_llama_loaders_expect",
        why="mkdir without parents: saving into runs/checkpoint fails until runs/ exists")
def save_hf_without_parents(model, folder):
    Path(folder).mkdir(exist_ok=True)
    ref.save_hf(model, folder)


@mutant("model.save_hf", "test_save_hf_writes_the_files_llama_loaders_expect",
        why="config.json without the weights' dtype, and model.safetensors without its format metadata")
def save_hf_without_dtype_or_metadata(model, folder):
    ref.save_hf(model, folder)
    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text())
    del hf["dtype"]
    (folder / "config.json").write_text(json.dumps(hf))
    tensors = load_file(folder / "model.safetensors")
    save_file(tensors, folder / "model.safetensors")


@mutant("model.load_hf", "test_load_hf_reads_a_tied_checkpoint_that_also_stores_lm_head",
        why="a tied checkpoint that also stores lm_head.weight refused as having an unexpected weight")
def load_hf_refusing_a_stored_tied_head(folder):
    tensors = load_file(Path(folder) / "model.safetensors")
    if "lm_head.weight" in tensors and ref.config_from_hf(
            json.loads((Path(folder) / "config.json").read_text())).tie_embeddings:
        raise ValueError(f"the checkpoint in {folder} does not fit the model: unexpected ['lm_head.weight']")
    return ref.load_hf(folder)


@mutant("model.Transformer", "test_make_cache_is_on_the_models_device",
        why="the cache made on the default device: decoding on a GPU fails at the first cache update")
class TransformerWithCacheOnTheDefaultDevice(ref.Transformer):
    def make_cache(self, batch_size, max_seq_len=None):
        config = self.config
        length = config.max_seq_len if max_seq_len is None else max_seq_len
        return [attention.KVCache(batch_size, config.n_kv_heads, config.head_dim, length,
                                  dtype=self.lm_head.weight.dtype) for _ in range(config.n_layers)]


@mutant("model.Transformer", "test_rejects_a_sequence_longer_than_the_context",
        why="checks the new tokens alone against the context: past the cache, the cache's own error says only that "
            "3 more do not fit, not that 13 positions are needed")
class TransformerCheckingTheNewTokensOnly(ref.Transformer):
    def forward(self, input_ids, position_ids=None, cache=None):
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{input_ids.shape[1]} tokens; the context holds {self.config.max_seq_len}")
        return self.lm_head(self.model(input_ids, position_ids=position_ids, cache=cache))


@mutant("model.config_from_hf", "test_rejects_llama_configs_llmkata_cannot_express",
        why="refuses what it cannot build without saying what it found: 'unsupported model_type'")
def config_from_hf_not_naming_the_value(hf):
    try:
        return ref.config_from_hf(hf)
    except ValueError as error:
        field = next(name for name in ("model_type", "hidden_act", "attention_bias", "mlp_bias", "rope_type",
                                       "head_dim") if name in str(error))
        raise ValueError(f"this checkpoint's {field} is not supported") from None


@mutant("model.config_from_hf", "test_config_from_hf_fills_in_llama_defaults_and_reads_older_formats",
        why="reads the top-level rope_theta only: a newer config.json, with the theta in rope_parameters alone, "
            "loads with the default 10000")
def config_from_hf_reading_the_top_level_theta_only(hf):
    return dataclasses.replace(ref.config_from_hf(hf), rope_theta=float(hf.get("rope_theta", 10000.0)))
