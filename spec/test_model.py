"""Chapter 7 — model: the decoder-only transformer, its parameter and FLOP counts, and the Llama checkpoint format.

Properties: logits of shape (B, T, vocab); Hugging Face Llama parameter names; the parameter count formula and the
FLOPs estimate (checked against torch's FLOP counter); GPT-2 initialisation with scaled residual projections;
pre-norm blocks; causality end to end; cached decoding equal to the full forward; exported weights load back to
identical logits, and `transformers.LlamaForCausalLM` built from the exported files gives the same logits.
"""

import json
import math
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from .checks import assert_rejects
from .strategies import seeds
from .tolerances import assert_close


@st.composite
def configs(draw, llama: bool = False):
    """Keyword arguments of a tiny ModelConfig; llama=True keeps to RMSNorm + SwiGLU."""
    n_kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n_heads = n_kv_heads * group
    return dict(
        vocab_size=draw(st.integers(5, 40)), d_model=n_heads * 2 * draw(st.integers(1, 3)),
        n_layers=draw(st.integers(1, 3)), n_heads=n_heads, n_kv_heads=n_kv_heads,
        d_ff=draw(st.none() | st.integers(4, 24)), max_seq_len=16,
        norm="rmsnorm" if llama else draw(st.sampled_from(["rmsnorm", "layernorm"])),
        mlp="swiglu" if llama else draw(st.sampled_from(["swiglu", "gelu"])),
        norm_eps=draw(st.sampled_from([1e-5, 1e-6])), rope_theta=draw(st.sampled_from([10000.0, 500.0])),
        rope_interleaved=draw(st.booleans()), tie_embeddings=draw(st.booleans()))


def perturbed(module: nn.Module, seed: int, dtype=torch.float64, spread: float = 0.3) -> nn.Module:
    """`module` in `dtype`, every parameter moved away from its initial value (norm weights from 1 too)."""
    module = module.to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64).to(dtype) * spread)
    return module


def build(impl, kwargs: dict, seed: int, dtype=torch.float64, spread: float = 0.3):
    """The model of a config, every parameter moved away from its initial value (norm weights from 1 too)."""
    torch.manual_seed(seed)
    return perturbed(impl.model.Transformer(impl.model.ModelConfig(**kwargs)), seed, dtype, spread)


def part(impl, name: str, kwargs: dict, seed: int):
    """impl.model.<name>(ModelConfig(**kwargs)) built directly (a TransformerBlock, a Decoder), perturbed, float64."""
    torch.manual_seed(seed)
    return perturbed(getattr(impl.model, name)(impl.model.ModelConfig(**kwargs)), seed)


def token_ids(kwargs: dict, seed: int, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, kwargs["vocab_size"], (batch, length), generator=generator)


def hidden_states(kwargs: dict, seed: int, batch: int, length: int) -> torch.Tensor:
    """A residual stream (batch, length, d_model) in float64, as a block receives it."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, kwargs["d_model"], generator=generator, dtype=torch.float64)


def gapped_positions(seed: int, batch: int, length: int, limit: int = 16) -> torch.Tensor:
    """(batch, length) positions below `limit`, increasing along each row with gaps, and different from row to row:
    a model that ignores them, or uses one row's for all, computes something else."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(limit, generator=generator)[:length].sort().values for _ in range(batch)])


def parameter_formula(c: dict) -> int:
    """V·d (×2 untied) + L·(attention + MLP + 2 norms) + final norm, written out from the architecture."""
    d, h, kv, vocab, layers = c["d_model"], c["n_heads"], c["n_kv_heads"], c["vocab_size"], c["n_layers"]
    head_dim = d // h
    d_ff = c["d_ff"]
    attention = d * h * head_dim + 2 * d * kv * head_dim + h * head_dim * d  # q, k, v, o
    mlp = (3 if c["mlp"] == "swiglu" else 2) * d * d_ff  # gate, up, down / up, down
    norm = d if c["norm"] == "rmsnorm" else 2 * d  # LayerNorm has a bias
    embeddings = vocab * d * (1 if c["tie_embeddings"] else 2)
    return embeddings + layers * (attention + mlp + 2 * norm) + norm


def llama_names(c: dict) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    mlp = ("gate_proj", "up_proj", "down_proj") if c["mlp"] == "swiglu" else ("up_proj", "down_proj")
    for i in range(c["n_layers"]):
        names |= {f"model.layers.{i}.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
        names |= {f"model.layers.{i}.mlp.{p}.weight" for p in mlp}
        names |= {f"model.layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")}
    if c["norm"] == "layernorm":
        names |= {name.replace(".weight", ".bias") for name in names if "norm" in name}
    return names


# ---------------------------------------------------------------- shape, names, counts


@given(configs(), seeds, st.integers(1, 3), st.integers(1, 16))
def test_logits_have_shape_batch_by_length_by_vocab(impl, kwargs, seed, batch, length):
    model = build(impl, kwargs, seed)
    logits = model(token_ids(kwargs, seed, batch, length))
    expected = (batch, length, kwargs["vocab_size"])
    assert tuple(logits.shape) == expected, (
        f"the model must give one row of {kwargs['vocab_size']} logits per input position: expected shape "
        f"{expected}, got {tuple(logits.shape)}")
    assert logits.dtype == torch.float64, f"a float64 model must give float64 logits, got {logits.dtype}"


@given(configs())
def test_parameter_names_follow_hugging_face_llama(impl, kwargs):
    model = impl.model.Transformer(impl.model.ModelConfig(**kwargs))
    names, expected = set(model.state_dict()), llama_names(dict(vars(impl.model.ModelConfig(**kwargs))))
    assert names == expected, (
        f"state-dict keys must follow Hugging Face Llama naming; missing {sorted(expected - names)}, "
        f"unexpected {sorted(names - expected)}")


@given(configs())
def test_parameter_count_matches_the_formula(impl, kwargs):
    config = impl.model.ModelConfig(**kwargs)
    model = impl.model.Transformer(config)
    counted = impl.model.count_parameters(model)
    expected = parameter_formula(dict(vars(config)))
    parameters = list(model.parameters())  # alive while their ids are compared
    unique = {id(p): p.numel() for p in parameters}
    assert counted == sum(unique.values()), (
        f"count_parameters must count every parameter once, a tied matrix once: {sum(unique.values())}, "
        f"got {counted}")
    assert counted == expected, (
        f"the model must have V·d{' (tied)' if kwargs['tie_embeddings'] else ' × 2 (untied)'} + "
        f"L·(attention + MLP + norms) + final norm = {expected} parameters, got {counted}")
    if kwargs["tie_embeddings"]:
        assert model.lm_head.weight is model.model.embed_tokens.weight, (
            "tie_embeddings=True: lm_head.weight must be the same Parameter as model.embed_tokens.weight")


@given(configs(), st.integers(1, 16))
def test_flops_per_token_counts_every_matmul(impl, kwargs, length):
    config = impl.model.ModelConfig(**kwargs)
    model = impl.model.Transformer(config)
    # The matrices the model as built multiplies by: every 2-D weight but the embedding lookup, and lm_head's
    # (the embedding's own matrix, when tied, which named_parameters lists once, as the embedding).
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in name)
    matmul += kwargs["vocab_size"] * kwargs["d_model"] if kwargs["tie_embeddings"] else 0
    attention_dim = kwargs["n_heads"] * (kwargs["d_model"] // kwargs["n_heads"])
    # Forward: 2 per weight and token, and q·kᵀ and p·v over `length` positions; training is 3× the forward.
    expected = 3 * (2 * matmul + 4 * kwargs["n_layers"] * length * attention_dim)
    estimate = impl.model.flops_per_token(config, seq_len=length)
    assert estimate == expected, (
        f"flops_per_token(seq_len={length}) must be 6·N + 12·L·T·d_attn with N the weights of every matmul "
        f"(lm_head included, embedding lookup not): {expected} for this model, got {estimate}")


@given(configs(), st.integers(1, 64))
def test_flops_per_token_defaults_to_the_context_length(impl, kwargs, max_seq_len):
    config = impl.model.ModelConfig(**{**kwargs, "max_seq_len": max_seq_len})
    default, explicit = impl.model.flops_per_token(config), impl.model.flops_per_token(config, seq_len=max_seq_len)
    assert default == explicit, (
        f"flops_per_token(config) must count the attention over the whole context, seq_len = max_seq_len = "
        f"{max_seq_len}: {explicit}, got {default}")


def assert_initialised(model, init_std: float, n_layers: int, when: str) -> None:
    """Every parameter of `model` as GPT-2 starts it: norms 1 (biases 0), o_proj and down_proj normal(0,
    init_std/√(2·n_layers)), every other matrix normal(0, init_std)."""
    __tracebackhide__ = True
    residual = init_std / math.sqrt(2 * n_layers)
    for name, parameter in model.named_parameters():
        if "norm" in name:
            value = 0.0 if name.endswith("bias") else 1.0
            assert (parameter == value).all(), f"{when}, {name} must be {value}"
            continue
        expected = residual if name.endswith(("o_proj.weight", "down_proj.weight")) else init_std
        std, mean = parameter.std().item(), parameter.mean().item()
        why = "init_std/√(2·n_layers): it writes into the residual stream" if expected != init_std else "init_std"
        assert abs(std / expected - 1) < 0.1 and abs(mean) < 0.2 * expected, (
            f"{when}, {name} must be normal(0, {expected:.4f}) ({why}), got mean {mean:.4f}, std {std:.4f}")


@settings(max_examples=5)  # large matrices, so that a standard deviation is measured to about 2%
@given(st.integers(1, 4), st.sampled_from(["swiglu", "gelu"]), st.sampled_from(["rmsnorm", "layernorm"]), seeds)
def test_initialisation_scales_residual_projections(impl, n_layers, mlp, norm, seed):
    torch.manual_seed(seed)
    config = impl.model.ModelConfig(vocab_size=512, d_model=64, n_layers=n_layers, n_heads=4, d_ff=128, mlp=mlp,
                                    norm=norm, init_std=0.05)
    assert_initialised(impl.model.Transformer(config), 0.05, n_layers, "at initialisation")


@settings(max_examples=5)  # large matrices, so that a standard deviation is measured to about 2%
@given(st.integers(1, 4), st.sampled_from(["swiglu", "gelu"]), st.sampled_from(["rmsnorm", "layernorm"]),
       st.booleans(), seeds)
def test_reset_parameters_restores_the_initial_distribution(impl, n_layers, mlp, norm, tie, seed):
    torch.manual_seed(seed)
    config = impl.model.ModelConfig(vocab_size=512, d_model=64, n_layers=n_layers, n_heads=4, d_ff=128, mlp=mlp,
                                    norm=norm, init_std=0.05, tie_embeddings=tie)
    model = impl.model.Transformer(config)
    with torch.no_grad():  # training moved every weight, norm gains and biases included
        for parameter in model.parameters():
            parameter.fill_(3.0)
    model.reset_parameters()
    assert_initialised(model, 0.05, n_layers, "after the weights changed and reset_parameters() ran")
    if tie:
        assert model.lm_head.weight is model.model.embed_tokens.weight, (
            "reset_parameters() must keep a tied lm_head the same Parameter as model.embed_tokens.weight")


@given(st.integers(1, 4), st.integers(1, 24), st.sampled_from(["swiglu", "gelu"]))
def test_config_fills_in_the_kv_heads_and_the_mlp_width(impl, n_heads, half_head_dim, mlp):
    d_model = n_heads * 2 * half_head_dim
    config = impl.model.ModelConfig(d_model=d_model, n_heads=n_heads, mlp=mlp)
    assert config.n_kv_heads == n_heads, (
        f"n_kv_heads=None must mean n_heads = {n_heads} (plain multi-head attention), got {config.n_kv_heads}")
    expected = 4 * d_model if mlp == "gelu" else 8 * -(-d_model // 3)  # 8/3·d rounded up to a multiple of 8
    rule = "4·d_model" if mlp == "gelu" else "8/3·d_model rounded up to a multiple of 8"
    assert config.d_ff == expected, (
        f"d_ff=None with mlp={mlp!r} and d_model={d_model} must mean {rule} = {expected}, got {config.d_ff}")


# ---------------------------------------------------------------- architecture


@given(configs(), seeds)
def test_blocks_are_pre_norm(impl, kwargs, seed):
    model = build(impl, kwargs, seed)
    with torch.no_grad():  # silence every branch: a pre-norm block becomes the identity on the residual stream
        for name, parameter in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                parameter.zero_()
    ids = token_ids(kwargs, seed, 2, 5)
    stream = model.model.embed_tokens.weight[ids]
    expected = model.lm_head(model.model.norm(stream))
    assert_close(model(ids), expected,
                 "with o_proj and down_proj zero, every block must pass the residual stream through unchanged "
                 "(pre-norm: x + f(norm(x)), never norm(x + f(x))), so logits = lm_head(norm(embed(ids)))",
                 scale=10)


@given(st.integers(1, 8), st.integers(1, 16), st.lists(st.integers(1, 4), max_size=2), seeds,
       st.sampled_from([torch.float32, torch.float64]))
def test_gelu_mlp_is_down_proj_of_gelu_of_up_proj(impl, dim, hidden, lead, seed, dtype):
    torch.manual_seed(seed)
    mlp = perturbed(impl.model.GeluMLP(dim, hidden), seed, dtype)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, dim, generator=generator, dtype=torch.float64)
    up, down = mlp.up_proj.weight.double(), mlp.down_proj.weight.double()
    expected = nn.functional.gelu(x @ up.T) @ down.T  # GELU with the exact erf, as in GPT-2's paper
    assert_close(mlp(x.to(dtype)), expected, f"GeluMLP({dim}, {hidden}) must compute down_proj(GELU(up_proj(x))) "
                 "with the exact (erf) GELU, for input of any batch shape", dtype=dtype, scale=10)


@given(configs(), seeds, st.integers(1, 10))
def test_a_block_adds_attention_then_mlp_each_reading_its_own_norm(impl, kwargs, seed, length):
    block = part(impl, "TransformerBlock", kwargs, seed)
    x = hidden_states(kwargs, seed, 2, length)
    positions = gapped_positions(seed, 2, length)
    with torch.no_grad():
        h = x + block.self_attn(block.input_layernorm(x), position_ids=positions)
        expected = h + block.mlp(block.post_attention_layernorm(h))
        got = block(x, position_ids=positions)
    assert_close(got, expected, "a TransformerBlock must compute h = x + self_attn(input_layernorm(x)) at the "
                 "position_ids it is given, then h + mlp(post_attention_layernorm(h))", scale=10)


@given(configs(), seeds, st.integers(2, 12), st.data())
def test_a_block_with_a_cache_continues_the_sequence_the_cache_holds(impl, kwargs, seed, length, data):
    block = part(impl, "TransformerBlock", kwargs, seed)
    config = impl.model.ModelConfig(**kwargs)
    x = hidden_states(kwargs, seed, 2, length)
    split = data.draw(st.integers(1, length - 1), label="split")
    cache = impl.attention.KVCache(2, config.n_kv_heads, config.head_dim, config.max_seq_len, dtype=torch.float64)
    with torch.no_grad():
        full = block(x)
        pieces = torch.cat([block(x[:, :split], cache=cache), block(x[:, split:], cache=cache)], dim=1)
    assert_close(pieces, full, f"a TransformerBlock fed {split} positions and then {length - split} more through one "
                 "KVCache must give what it gives on all of them at once: the cache goes to its attention",
                 scale=100)


@given(configs(), seeds, st.integers(1, 10))
def test_the_decoder_is_the_embedding_then_every_block_then_the_final_norm(impl, kwargs, seed, length):
    decoder = part(impl, "Decoder", kwargs, seed)
    ids = token_ids(kwargs, seed, 2, length)
    positions = gapped_positions(seed, 2, length)
    with torch.no_grad():
        stream = decoder.embed_tokens(ids)
        for layer in decoder.layers:
            stream = layer(stream, position_ids=positions)
        expected = decoder.norm(stream)
        got = decoder(ids, position_ids=positions)
    assert_close(got, expected, f"Decoder(ids, position_ids) must be norm(block_{kwargs['n_layers']}(... "
                 "block_1(embed_tokens(ids)))), every block at the position_ids given", scale=10)


@given(configs(), seeds, st.integers(2, 10), st.data())
def test_the_transformer_is_lm_head_of_the_decoders_hidden_states(impl, kwargs, seed, length, data):
    model = build(impl, kwargs, seed)
    decoder = impl.model.Decoder(impl.model.ModelConfig(**kwargs)).to(torch.float64)
    decoder.load_state_dict(model.model.state_dict())
    ids = token_ids(kwargs, seed, 2, length)
    positions = gapped_positions(seed, 2, length)
    split = data.draw(st.integers(1, length - 1), label="split")
    with torch.no_grad():
        assert_close(model(ids, position_ids=positions), model.lm_head(decoder(ids, position_ids=positions)),
                     "Transformer(ids, position_ids) must be lm_head(Decoder(ids, position_ids)): the positions go "
                     "down to every block", scale=10)
        cache = model.make_cache(2)
        hidden = torch.cat([decoder(ids[:, :split], cache=cache), decoder(ids[:, split:], cache=cache)], dim=1)
        assert_close(model.lm_head(hidden), model(ids),
                     f"a Decoder fed {split} tokens and then {length - split} more through make_cache's cache (one "
                     "KVCache per block) must give the hidden states of the full sequence", scale=100)


@given(configs(), seeds, st.integers(2, 10), st.integers(0, 6))
def test_positions_count_only_through_their_differences_row_by_row(impl, kwargs, seed, length, shift):
    model = build(impl, kwargs, seed)
    ids = token_ids(kwargs, seed, 2, length)
    positions = gapped_positions(seed, 2, length, limit=10)  # + a shift of up to 6: inside the context of 16
    with torch.no_grad():
        assert_close(model(ids, position_ids=torch.arange(length)), model(ids),
                     "position_ids 0 .. T − 1 given explicitly must give what the default positions give")
        logits = model(ids, position_ids=positions)
        for row in range(2):
            assert_close(model(ids[row:row + 1], position_ids=positions[row]), logits[row:row + 1],
                         f"with (batch, T) position_ids, row {row} must be computed at its own positions "
                         f"{positions[row].tolist()}, as when it is run alone", scale=10)
        shifted = positions + torch.tensor([[shift], [6 - shift]])
        assert_close(model(ids, position_ids=shifted), logits,
                     f"adding {shift} to the positions of row 0 and {6 - shift} to those of row 1 must not change "
                     "the logits: RoPE makes attention depend only on differences of positions", scale=100)


class LowRankUpdate(nn.Module):
    """A LoRA-style wrapper: base(x) + x Aᵀ Bᵀ. It exposes the base's `weight`, as wrappers often do, so code that
    reads projection.weight instead of calling projection(x) silently skips the update."""

    def __init__(self, base, rank: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.base, self.weight = base, base.weight
        out_features, in_features = base.weight.shape
        dtype = base.weight.dtype
        self.a = nn.Parameter(torch.randn(rank, in_features, generator=generator, dtype=torch.float64).to(dtype))
        self.b = nn.Parameter(torch.randn(out_features, rank, generator=generator, dtype=torch.float64).to(dtype))

    def forward(self, x):
        return self.base(x) + x @ self.a.T @ self.b.T


PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def wrap_and_merge(wrapped, merged, projection: str, seed: int) -> None:
    """Wrap `projection` of every block of `wrapped` in a LowRankUpdate, and add B·A to its weight in `merged`."""
    for wrapped_block, merged_block in zip(wrapped.model.layers, merged.model.layers):
        owner_name, name = projection.split(".")
        owner = getattr(wrapped_block, owner_name)
        wrapper = LowRankUpdate(getattr(owner, name), 2, seed)
        setattr(owner, name, wrapper)
        with torch.no_grad():
            getattr(getattr(merged_block, owner_name), name).weight.add_(wrapper.b @ wrapper.a)


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_every_projection_goes_through_its_module(impl, projection):
    kwargs = dict(vocab_size=11, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=8)
    wrapped, merged = build(impl, kwargs, 0), build(impl, kwargs, 0)
    wrap_and_merge(wrapped, merged, projection, seed=1)
    ids = token_ids(kwargs, 0, 2, 6)
    assert_close(wrapped(ids), merged(ids),
                 f"with {projection} wrapped in a module that adds x·(BA)ᵀ, the model must compute what it computes "
                 f"with W + BA as the weight: every projection is called as a module (self.{projection}(x)), "
                 "never read through its weight", scale=100)


@given(configs(), seeds, st.integers(2, 16), st.data())
def test_output_at_t_ignores_inputs_after_t(impl, kwargs, seed, length, data):
    model = build(impl, kwargs, seed)
    ids = token_ids(kwargs, seed, 2, length)
    t = data.draw(st.integers(0, length - 2), label="t")
    changed = ids.clone()
    changed[:, t + 1:] = (ids[:, t + 1:] + 1 + torch.arange(length - t - 1)) % kwargs["vocab_size"]
    assert_close(model(changed)[:, : t + 1], model(ids)[:, : t + 1],
                 f"the logits at positions 0..{t} must not change when tokens after {t} change (causal end to end)")


@given(configs(), seeds, st.integers(1, 12), st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_cached_decoding_equals_the_full_forward(impl, kwargs, seed, length, chunks):
    model = build(impl, kwargs, seed)
    ids = token_ids(kwargs, seed, 2, length)
    cache = model.make_cache(2)
    with torch.no_grad():
        full = model(ids)
        pieces, start = [], 0
        for size in chunks + [length]:
            size = min(size, length - start)
            if size:
                pieces.append(model(ids[:, start:start + size], cache=cache))
            start += size
    assert_close(torch.cat(pieces, dim=1), full,
                 f"feeding {length} tokens in pieces of {chunks} (then the rest) through make_cache's cache must give "
                 "the logits of one full forward pass", scale=100)


@given(configs(), seeds, st.integers(1, 16), st.integers(1, 3), st.sampled_from([torch.float32, torch.float64]))
def test_make_cache_holds_max_seq_len_positions_in_the_models_dtype(impl, kwargs, seed, capacity, batch, dtype):
    model = build(impl, kwargs, seed, dtype=dtype)
    config = model.config
    cache = model.make_cache(batch, max_seq_len=capacity)
    assert len(cache) == config.n_layers, f"make_cache must give one KVCache per layer ({config.n_layers}), got " \
                                          f"{len(cache)}"
    expected = (batch, config.n_kv_heads, capacity, config.head_dim)
    for layer in cache:
        assert tuple(layer.k.shape) == expected and tuple(layer.v.shape) == expected, (
            f"make_cache({batch}, max_seq_len={capacity}) must hold (batch, n_kv_heads, max_seq_len, head_dim) = "
            f"{expected} keys and values, got {tuple(layer.k.shape)} and {tuple(layer.v.shape)}")
        assert layer.k.dtype == dtype and layer.v.dtype == dtype, (
            f"the cache of a {dtype} model must be in {dtype}, got {layer.k.dtype}")
        assert layer.length == 0, f"a new cache must be empty, it holds {layer.length} positions"
    ids = token_ids(kwargs, seed, batch, capacity)
    half = capacity // 2
    with torch.no_grad():
        full = model(ids)
        pieces = [model(ids[:, :half], cache=cache)] if half else []
        pieces.append(model(ids[:, half:], cache=cache))
    assert_close(torch.cat(pieces, dim=1), full, f"decoding {capacity} tokens through make_cache(max_seq_len="
                 f"{capacity}) must give the full forward's logits", scale=100)
    assert_rejects(lambda: model(ids[:, :1], cache=cache), capacity,
                   what=f"one more token into a cache made for max_seq_len={capacity} positions, all filled")


# ---------------------------------------------------------------- the Llama format


@given(configs(llama=True), st.sampled_from([0.02, 0.006, 0.1]))
def test_hf_config_round_trips(impl, kwargs, init_std):
    config = impl.model.ModelConfig(**kwargs, init_std=init_std)
    back = impl.model.config_from_hf(impl.model.hf_config(config))
    expected = {**vars(config), "rope_interleaved": False}  # exported as split halves
    assert vars(back) == expected, (
        f"config_from_hf(hf_config(c)) must give c back (with split-halves RoPE): {expected}, got {vars(back)}")


@given(configs(llama=True), st.sampled_from([0.02, 0.006]))
def test_hf_config_states_every_field_a_llama_reader_needs(impl, kwargs, init_std):
    config = impl.model.ModelConfig(**kwargs, init_std=init_std)
    hf = impl.model.hf_config(config)
    # Each field stated, even where it equals transformers' default: other readers (older transformers, vLLM,
    # llama.cpp's converter) have other defaults or none, and choose the model class by model_type / architectures.
    expected = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.d_model, "intermediate_size": config.d_ff, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.d_model // config.n_heads, "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len, "initializer_range": init_std,
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings, "attention_bias": False, "mlp_bias": False,
    }
    for key, value in expected.items():
        assert key in hf and hf[key] == value, (
            f"hf_config must state {key!r}: {value!r} in the Llama config.json (rope_theta both at the top level, "
            f"which older transformers read, and in rope_parameters); got {hf.get(key, 'no such key')!r}")


def test_config_from_hf_fills_in_llama_defaults_and_reads_older_formats(impl):
    config_from_hf = impl.model.config_from_hf
    sizes = {"vocab_size": 11, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
             "num_attention_heads": 2}
    expected = impl.model.ModelConfig(vocab_size=11, d_model=8, d_ff=16, n_layers=1, n_heads=2, max_seq_len=2048,
                                      norm_eps=1e-6, rope_theta=10000.0, tie_embeddings=False, init_std=0.02)
    config = _hf_or_fail(lambda: config_from_hf(dict(sizes)),
                         "config_from_hf of a Llama config.json with the sizes only")
    assert config == expected, (
        "a Llama config.json that leaves a field out means LlamaConfig's default (model_type llama, hidden_act silu, "
        "n_kv_heads = n_heads, 2048 positions, rms_norm_eps 1e-6, untied, initializer_range 0.02, rope_theta "
        f"10000): expected {expected}, got {config}")
    older = {**sizes, "rope_theta": 500000.0, "rope_scaling": None}  # written before rope_parameters existed
    config = _hf_or_fail(lambda: config_from_hf(older), f"config_from_hf of an older Llama config.json {older}")
    assert config.rope_theta == 500000.0, (
        f"config_from_hf must read a top-level rope_theta where there is no rope_parameters: 500000.0, got "
        f"{config.rope_theta}")
    newer = {**sizes, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}  # no top-level rope_theta
    config = _hf_or_fail(lambda: config_from_hf(newer), f"config_from_hf of a newer Llama config.json {newer}")
    assert config.rope_theta == 500000.0, (
        f"config_from_hf must read rope_parameters['rope_theta'] (newer transformers write no top-level rope_theta): "
        f"500000.0, got {config.rope_theta}")
    for scaling in ({"type": "linear", "factor": 2.0}, {"rope_type": "llama3", "factor": 8.0}):
        kind = scaling.get("rope_type", scaling.get("type"))
        assert_rejects(lambda scaling=scaling: config_from_hf({**older, "rope_scaling": scaling}), kind,
                       what=f"config_from_hf of an older config.json with rope_scaling {scaling}: llmkata has no "
                            "RoPE scaling")


@settings(max_examples=15)  # each example writes and reads a checkpoint
@given(configs(llama=True), seeds, st.sampled_from([torch.float32, torch.bfloat16]))
def test_exported_weights_load_back_to_identical_logits(impl, kwargs, seed, dtype):
    model = build(impl, kwargs, seed, dtype=dtype)
    ids = token_ids(kwargs, seed, 2, 9)
    with tempfile.TemporaryDirectory() as folder:
        impl.model.save_hf(model, folder)
        loaded = impl.model.load_hf(folder)
    dtypes = {parameter.dtype for parameter in loaded.parameters()}
    assert dtypes == {dtype}, f"load_hf must give a model in the dtype of the saved weights, {dtype}, got {dtypes}"
    if kwargs["rope_interleaved"]:  # the weights were permuted to split halves: same function, other sum order
        with torch.no_grad():  # compared in float32, which holds bfloat16 weights exactly and sums more precisely
            before, after = model.float()(ids), loaded.float()(ids)
        assert_close(after, before, "an interleaved-RoPE model saved and loaded back must give the same logits",
                     scale=10)
    else:
        with torch.no_grad():
            before, after = model(ids), loaded(ids)
        assert torch.equal(after, before), (
            f"save_hf then load_hf must give back the same model: logits differ by up to "
            f"{(after - before).abs().max().item():.3g}")


def _hf_or_fail(load, what: str):
    try:
        return load()
    except NotImplementedError:
        raise
    except Exception as error:  # a refused checkpoint is a broken property, not a crash of the spec
        raise AssertionError(f"{what} failed: {type(error).__name__}: {error}") from error


@settings(max_examples=10)  # each example builds a transformers model from files
@given(configs(llama=True), seeds)
def test_transformers_llama_from_exported_files_gives_the_same_logits(impl, kwargs, seed):
    transformers = pytest.importorskip("transformers")
    model = build(impl, kwargs, seed, dtype=torch.float32)
    ids = token_ids(kwargs, seed, 2, 11)
    with tempfile.TemporaryDirectory() as folder:
        impl.model.save_hf(model, folder)
        llama = _hf_or_fail(lambda: transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32),
                            "LlamaForCausalLM.from_pretrained on the files save_hf wrote")
    with torch.no_grad():
        expected = llama(ids).logits
        logits = model(ids)
    assert_close(logits, expected, f"transformers' LlamaForCausalLM built from save_hf's config.json and "
                                   f"model.safetensors must give the same logits ({kwargs})", scale=10)


@settings(max_examples=10)  # each example builds a transformers model and saves it
@given(configs(llama=True), seeds, st.sampled_from([None, "4KB"]))
def test_loads_a_checkpoint_saved_by_transformers(impl, kwargs, seed, shard_size):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=kwargs["vocab_size"], hidden_size=kwargs["d_model"], intermediate_size=kwargs["d_ff"] or 16,
        num_hidden_layers=kwargs["n_layers"], num_attention_heads=kwargs["n_heads"],
        num_key_value_heads=kwargs["n_kv_heads"], max_position_embeddings=16, rms_norm_eps=kwargs["norm_eps"],
        rope_theta=kwargs["rope_theta"], tie_word_embeddings=kwargs["tie_embeddings"], initializer_range=0.3))
    with torch.no_grad():
        for name, parameter in llama.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    ids = token_ids(kwargs, seed, 2, 11)
    with tempfile.TemporaryDirectory() as folder:
        if shard_size is None:
            llama.save_pretrained(folder)
        else:  # several model-0000i-of-0000n.safetensors files and model.safetensors.index.json
            llama.save_pretrained(folder, max_shard_size=shard_size)
        sharded = "sharded into files of at most " + shard_size if shard_size else "in one file"
        model = _hf_or_fail(lambda: impl.model.load_hf(folder),
                            f"load_hf on a checkpoint saved by transformers, {sharded},")
    with torch.no_grad():
        assert_close(model(ids), llama(ids).logits,
                     f"load_hf on a LlamaForCausalLM checkpoint ({sharded}) must give transformers' logits", scale=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_hf_writes_the_files_llama_loaders_expect(impl, dtype, tmp_path):
    safetensors = pytest.importorskip("safetensors")
    model = impl.model.Transformer(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2)).to(dtype)
    folder = tmp_path / "runs" / "checkpoint"  # neither exists yet
    _hf_or_fail(lambda: impl.model.save_hf(model, folder), "save_hf into a folder whose parent does not exist yet")
    hf = json.loads((folder / "config.json").read_text())
    name = str(dtype).removeprefix("torch.")
    assert hf.get("dtype") == name, (
        f"config.json must name the dtype of the weights, as transformers writes it: 'dtype': {name!r}, got "
        f"{hf.get('dtype', 'no such key')!r}")
    with safetensors.safe_open(str(folder / "model.safetensors"), "pt") as file:
        metadata = file.metadata() or {}
    assert metadata.get("format") == "pt", (
        f"model.safetensors must carry the metadata {{'format': 'pt'}}, which older transformers require; got "
        f"{metadata}")


def test_load_hf_reads_a_tied_checkpoint_that_also_stores_lm_head(impl, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    config = impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, tie_embeddings=True)
    model = impl.model.Transformer(config)
    impl.model.save_hf(model, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = safetensors_torch.load_file(path)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()  # some exporters write both
    safetensors_torch.save_file(tensors, path, metadata={"format": "pt"})
    loaded = _hf_or_fail(lambda: impl.model.load_hf(tmp_path),
                         "load_hf of a tied checkpoint (tie_word_embeddings) that also stores lm_head.weight")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight, (
        "load_hf of a tied checkpoint must give a tied model: lm_head.weight is model.embed_tokens.weight")
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight), (
        "load_hf of a tied checkpoint must load the saved embedding")


def test_make_cache_is_on_the_models_device(impl):
    # a model moved to `meta` (shapes without values) shows where the cache is made, on a machine without a GPU
    model = impl.model.Transformer(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2)).to("meta")
    for i, layer in enumerate(model.make_cache(1, max_seq_len=4)):
        assert layer.k.device.type == "meta" and layer.v.device.type == "meta", (
            f"make_cache must put the cache on the model's device (meta), got layer {i} on {layer.k.device}")


# ---------------------------------------------------------------- bad input


def test_rejects_a_sequence_longer_than_the_context(impl):
    model = impl.model.Transformer(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2,
                                                          max_seq_len=12))
    assert_rejects(lambda: model(torch.zeros(1, 13, dtype=torch.long)), 13, 12,
                   what="a model with a context of 12 given 13 tokens")
    cache = model.make_cache(1)
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    assert_rejects(lambda: model(torch.zeros(1, 3, dtype=torch.long), cache=cache), 13, 12,
                   what="3 more tokens after 10 cached ones, context 12: the error must say that 10 + 3 = 13 "
                        "positions are needed")


def test_rejects_a_cache_without_one_entry_per_layer(impl):
    model = impl.model.Transformer(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2,
                                                          max_seq_len=12))
    ids = torch.zeros(1, 3, dtype=torch.long)
    assert_rejects(lambda: model(ids, cache=model.make_cache(1)[:1]), 2, 1,
                   what="a 2-layer model given a cache of 1 KVCache")
    assert_rejects(lambda: model(ids, cache=model.make_cache(1) * 2), 2, 4,
                   what="a 2-layer model given a cache of 4 KVCaches")


def test_rejects_inconsistent_configs(impl):
    config = impl.model.ModelConfig
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
        for bad in (0, -4):
            assert_rejects(lambda: config(**{name: bad}), name, bad, what=f"ModelConfig({name}={bad})")
    assert_rejects(lambda: config(d_model=64.0, n_heads=4), "d_model",
                   what="ModelConfig(d_model=64.0): sizes are whole numbers")
    assert_rejects(lambda: config(d_model=10, n_heads=4), 10, 4, what="ModelConfig(d_model=10, n_heads=4)")
    assert_rejects(lambda: config(d_model=24, n_heads=4, n_kv_heads=3), 4, 3,
                   what="ModelConfig(n_heads=4, n_kv_heads=3)")
    assert_rejects(lambda: config(d_model=12, n_heads=4), 3, what="ModelConfig(d_model=12, n_heads=4): head_dim 3")
    assert_rejects(lambda: config(norm="batchnorm"), "batchnorm", what="ModelConfig(norm='batchnorm')")
    assert_rejects(lambda: config(mlp="relu"), "relu", what="ModelConfig(mlp='relu')")


def test_rejects_exporting_what_llama_cannot_express(impl):
    save_hf = impl.model.save_hf
    for norm, mlp in (("layernorm", "swiglu"), ("rmsnorm", "gelu")):
        model = impl.model.Transformer(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2,
                                                              norm=norm, mlp=mlp))
        with tempfile.TemporaryDirectory() as folder:
            assert_rejects(lambda: save_hf(model, folder), norm if norm != "rmsnorm" else mlp,
                           what=f"save_hf of a model with norm={norm!r}, mlp={mlp!r}")


def test_rejects_llama_configs_llmkata_cannot_express(impl):
    hf = impl.model.hf_config(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2))
    cases = [  # the field, the value found there, and the change
        ("model_type", "mistral", {"model_type": "mistral"}),
        ("hidden_act", "gelu", {"hidden_act": "gelu"}),
        ("attention_bias", True, {"attention_bias": True}),
        ("mlp_bias", True, {"mlp_bias": True}),
        ("rope_type", "linear", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}),
        ("head_dim", 8, {"head_dim": 8}),
    ]
    for name, value, change in cases:
        assert_rejects(lambda change=change: impl.model.config_from_hf({**hf, **change}), name, value,
                       what=f"config_from_hf of a Llama config.json with {change}: llmkata cannot build that model, "
                            "and the error names the field and the value found")


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_load_hf_rejects_weights_that_do_not_fit_the_config(impl, change, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = impl.model.Transformer(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=2))
    impl.model.save_hf(model, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = safetensors_torch.load_file(path)
    name = "model.layers.1.mlp.up_proj.weight"
    if change == "missing":
        del tensors[name]
    else:
        name = "model.layers.2.mlp.up_proj.weight"
        tensors[name] = torch.zeros(16, 8)
    safetensors_torch.save_file(tensors, path, metadata={"format": "pt"})
    assert_rejects(lambda: impl.model.load_hf(tmp_path), name,
                   what=f"load_hf of a checkpoint with {name} {change}: names must match the config one to one")
