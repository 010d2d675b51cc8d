"""Chapter 7 — model: the decoder-only transformer, its parameter and FLOP counts, and the Llama checkpoint format.

Properties: logits of shape (B, T, vocab); Hugging Face Llama parameter names; the parameter count formula and the
FLOPs estimate (checked against torch's FLOP counter); GPT-2 initialisation with scaled residual projections;
pre-norm blocks; causality end to end; cached decoding equal to the full forward; exported weights load back to
identical logits, and `transformers.LlamaForCausalLM` built from the exported files gives the same logits.
"""

import dataclasses
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


def build(impl, kwargs: dict, seed: int, dtype=torch.float64, spread: float = 0.3):
    """The model of a config, every parameter moved away from its initial value (norm weights from 1 too)."""
    torch.manual_seed(seed)
    model = impl.model.Transformer(impl.model.ModelConfig(**kwargs)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64).to(dtype) * spread)
    return model


def token_ids(kwargs: dict, seed: int, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, kwargs["vocab_size"], (batch, length), generator=generator)


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
    unique = {id(p): p.numel() for p in model.parameters()}
    assert counted == sum(unique.values()), (
        f"count_parameters must count every parameter once, a tied matrix once: {sum(unique.values())}, "
        f"got {counted}")
    assert counted == expected, (
        f"the model must have V·d{' (tied)' if kwargs['tie_embeddings'] else ' × 2 (untied)'} + "
        f"L·(attention + MLP + norms) + final norm = {expected} parameters, got {counted}")
    if kwargs["tie_embeddings"]:
        assert model.lm_head.weight is model.model.embed_tokens.weight, (
            "tie_embeddings=True: lm_head.weight must be the same Parameter as model.embed_tokens.weight")


@settings(max_examples=15)  # each example counts FLOPs through a dispatch mode, slower than a plain forward
@given(configs(), seeds, st.integers(1, 16))
def test_flops_per_token_counts_every_matmul(impl, kwargs, seed, length):
    from torch.utils.flop_counter import FlopCounterMode

    config = impl.model.ModelConfig(**kwargs)
    model = impl.model.Transformer(config)
    ids = token_ids(kwargs, seed, 2, length)
    with FlopCounterMode(display=False) as counter:
        model(ids)
    measured = 3 * counter.get_total_flops() / ids.numel()  # training = forward + backward (2× forward)
    estimate = impl.model.flops_per_token(config, seq_len=length)
    assert estimate == measured, (
        f"flops_per_token(seq_len={length}) must be 6·N + 12·L·T·d_attn with N the weights of every matmul "
        f"(lm_head included, embedding lookup not): 3 × the forward FLOPs torch counts per token is {measured:.0f}, "
        f"got {estimate}")


@settings(max_examples=5)  # large matrices, so that a standard deviation is measured to about 2%
@given(st.integers(1, 4), st.sampled_from(["swiglu", "gelu"]), st.sampled_from(["rmsnorm", "layernorm"]), seeds)
def test_initialisation_scales_residual_projections(impl, n_layers, mlp, norm, seed):
    torch.manual_seed(seed)
    config = impl.model.ModelConfig(vocab_size=512, d_model=64, n_layers=n_layers, n_heads=4, d_ff=128, mlp=mlp,
                                    norm=norm, init_std=0.05)
    model = impl.model.Transformer(config)
    residual = 0.05 / math.sqrt(2 * n_layers)
    for name, parameter in model.named_parameters():
        if "norm" in name:
            value = 0.0 if name.endswith("bias") else 1.0
            assert (parameter == value).all(), f"{name} must start at {value}"
            continue
        expected = residual if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.05
        std, mean = parameter.std().item(), parameter.mean().item()
        why = "init_std/√(2·n_layers): it writes into the residual stream" if expected != 0.05 else "init_std"
        assert abs(std / expected - 1) < 0.1 and abs(mean) < 0.2 * expected, (
            f"{name} must start normal(0, {expected:.4f}) ({why}), got mean {mean:.4f}, std {std:.4f}")


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


# ---------------------------------------------------------------- the Llama format


@given(configs(llama=True))
def test_hf_config_round_trips(impl, kwargs):
    config = impl.model.ModelConfig(**kwargs)
    back = impl.model.config_from_hf(impl.model.hf_config(config))
    expected = dataclasses.replace(config, rope_interleaved=False)  # exported as split halves
    assert back == expected, f"config_from_hf(hf_config(c)) must give c back (with split-halves RoPE): {expected}, " \
                             f"got {back}"


@settings(max_examples=15)  # each example writes and reads a checkpoint
@given(configs(llama=True), seeds)
def test_exported_weights_load_back_to_identical_logits(impl, kwargs, seed):
    model = build(impl, kwargs, seed, dtype=torch.float32)
    ids = token_ids(kwargs, seed, 2, 9)
    with tempfile.TemporaryDirectory() as folder:
        impl.model.save_hf(model, folder)
        loaded = impl.model.load_hf(folder)
    with torch.no_grad():
        before, after = model(ids), loaded(ids)
    if kwargs["rope_interleaved"]:  # the weights were permuted to split halves: same function, other sum order
        assert_close(after, before, "an interleaved-RoPE model saved and loaded back must give the same logits",
                     scale=10)
    else:
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
@given(configs(llama=True), seeds)
def test_loads_a_checkpoint_saved_by_transformers(impl, kwargs, seed):
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
        llama.save_pretrained(folder)
        model = _hf_or_fail(lambda: impl.model.load_hf(folder), "load_hf on a checkpoint saved by transformers")
    with torch.no_grad():
        assert_close(model(ids), llama(ids).logits,
                     "load_hf on a LlamaForCausalLM checkpoint must give transformers' logits", scale=10)


# ---------------------------------------------------------------- bad input


def test_rejects_a_sequence_longer_than_the_context(impl):
    model = impl.model.Transformer(impl.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2,
                                                          max_seq_len=12))
    assert_rejects(lambda: model(torch.zeros(1, 13, dtype=torch.long)), 13, 12,
                   what="a model with a context of 12 given 13 tokens")
    cache = model.make_cache(1)
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    assert_rejects(lambda: model(torch.zeros(1, 3, dtype=torch.long), cache=cache), 12,
                   what="3 more tokens after 10 cached ones, context 12")


def test_rejects_inconsistent_configs(impl):
    config = impl.model.ModelConfig
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
