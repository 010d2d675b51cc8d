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

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .attention import CausalSelfAttention, KVCache
from .files import atomic_path, write_text_atomic
from .layers import Embedding, LayerNorm, Linear, RMSNorm, SwiGLU, gelu

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
        # BEGIN SOLUTION
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model = {self.d_model} must split evenly into n_heads = {self.n_heads} heads")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads = {self.n_heads} query heads must split evenly into groups over "
                             f"n_kv_heads = {self.n_kv_heads} key/value heads")
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension; d_model = {self.d_model} / n_heads = "
                             f"{self.n_heads} gives {self.head_dim}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        # END SOLUTION

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
        # BEGIN SOLUTION
        return self.down_proj(gelu(self.up_proj(x)))
        # END SOLUTION


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
        # BEGIN SOLUTION
        x = x + self.self_attn(self.input_layernorm(x), position_ids=position_ids, cache=cache)
        return x + self.mlp(self.post_attention_layernorm(x))
        # END SOLUTION


class Decoder(nn.Module):
    """Embeddings, blocks and the final norm: ids (B, T) -> hidden states (B, T, d_model). (HF: LlamaModel.)"""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = _norm(config)

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None,
                cache: list[KVCache] | None = None) -> Tensor:
        # BEGIN SOLUTION
        x = self.embed_tokens(input_ids)  # (B, T, d_model)
        for i, layer in enumerate(self.layers):
            x = layer(x, position_ids=position_ids, cache=None if cache is None else cache[i])
        return self.norm(x)
        # END SOLUTION


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
        # BEGIN SOLUTION
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        with torch.no_grad():
            for name, parameter in self.named_parameters():  # a tied matrix appears once, as embed_tokens
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    parameter.normal_(0.0, residual_std)
                elif name.endswith("layernorm.weight") or name == "model.norm.weight":
                    parameter.fill_(1.0)
                elif name.endswith(".bias"):
                    parameter.zero_()
                else:
                    parameter.normal_(0.0, std)
        # END SOLUTION

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None,
                cache: list[KVCache] | None = None) -> Tensor:
        """input_ids (B, T) -> logits (B, T, vocab_size). With a cache (one KVCache per layer, see make_cache), the
        T tokens continue the sequence the cache holds, at positions cache_length .. cache_length + T − 1."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        # BEGIN SOLUTION
        length = input_ids.shape[1]
        cached = 0 if cache is None else cache[0].length
        if cache is not None and len(cache) != self.config.n_layers:
            raise ValueError(f"the cache must hold one KVCache per layer: {self.config.n_layers}, got {len(cache)}")
        if cached + length > self.config.max_seq_len:
            raise ValueError(f"a sequence of {length} tokens after {cached} cached ones needs {cached + length} "
                             f"positions; the context holds max_seq_len = {self.config.max_seq_len}")
        return self.lm_head(self.model(input_ids, position_ids=position_ids, cache=cache))
        # END SOLUTION

    def make_cache(self, batch_size: int, max_seq_len: int | None = None) -> list[KVCache]:
        """One empty KVCache per layer, for max_seq_len positions (default: the context), in the model's dtype."""
        # BEGIN SOLUTION
        config, weight = self.config, self.lm_head.weight
        length = config.max_seq_len if max_seq_len is None else max_seq_len
        return [KVCache(batch_size, config.n_kv_heads, config.head_dim, length, dtype=weight.dtype,
                        device=weight.device) for _ in range(config.n_layers)]
        # END SOLUTION


def count_parameters(model: nn.Module) -> int:
    """The number of trainable numbers in `model`, a tied matrix counted once.

    For a Transformer: V·d (+ V·d untied) + L·(2·d·H·hd + 2·d·KV·hd + m·d·d_ff + norms) + final norm, with m = 3 for
    SwiGLU and 2 for GELU, and a norm of d numbers (RMSNorm) or 2·d (LayerNorm, weight and bias).
    """
    # BEGIN SOLUTION
    return sum(parameter.numel() for parameter in model.parameters())  # parameters() skips repeats
    # END SOLUTION


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward) at context length seq_len (default: max_seq_len):

        6·N + 12·n_layers·seq_len·(n_heads·head_dim)

    N counts the weights of every matrix multiplication, lm_head included (even when tied) and the embedding lookup
    excluded: a forward pass costs 2 FLOPs (a multiply and an add) per weight and token, the backward twice that.
    Attention adds q·kᵀ and p·v: 2·seq_len·n_heads·head_dim each per token and layer in the forward pass, counted
    in full, as a dense implementation computes them (a causal kernel can skip half).
    """
    # BEGIN SOLUTION
    seq_len = config.max_seq_len if seq_len is None else seq_len
    d, attention_dim, kv_dim = config.d_model, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    mlp_matrices = 3 if config.mlp == "swiglu" else 2
    per_layer = d * attention_dim * 2 + d * kv_dim * 2 + mlp_matrices * d * config.d_ff  # q, o, k, v, mlp
    matmul_weights = config.n_layers * per_layer + d * config.vocab_size  # + lm_head
    return 6 * matmul_weights + 12 * config.n_layers * seq_len * attention_dim
    # END SOLUTION


# ---------------------------------------------------------------- the Hugging Face Llama format


def hf_config(config: ModelConfig) -> dict:
    """The `config.json` of a `LlamaForCausalLM` with this shape. Only RMSNorm + SwiGLU models are Llamas.

    RoPE is written as split halves (Llama's convention): `save_hf` permutes the weights of an interleaved model.
    """
    # BEGIN SOLUTION
    if config.norm != "rmsnorm" or config.mlp != "swiglu":
        raise ValueError(f"the Llama format has RMSNorm and a SwiGLU MLP; this model has norm={config.norm!r} and "
                         f"mlp={config.mlp!r}")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # older transformers read this key, newer ones rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
    }
    # END SOLUTION


def config_from_hf(hf: dict) -> ModelConfig:
    """A ModelConfig from a Llama `config.json` (as a dict); what llmkata cannot express is refused by name."""
    # BEGIN SOLUTION
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"expected a Llama checkpoint (model_type 'llama'), got {hf.get('model_type')!r}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"a Llama MLP uses SiLU; this checkpoint has hidden_act={hf['hidden_act']!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"llmkata models have no biases; this checkpoint has {flag}=True")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}  # the older name; "type" the older key
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"RoPE scaling is not supported; this checkpoint has rope_type={rope_type!r}")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, d_model // n_heads):
        raise ValueError(f"head_dim must be hidden_size / num_attention_heads = {d_model // n_heads}, got "
                         f"{hf['head_dim']}")
    return ModelConfig(
        vocab_size=hf["vocab_size"], d_model=d_model, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048), norm="rmsnorm", mlp="swiglu",
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_interleaved=False,
        tie_embeddings=hf.get("tie_word_embeddings", False), init_std=hf.get("initializer_range", 0.02))
    # END SOLUTION


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
    # BEGIN SOLUTION
    config = model.config
    hf = hf_config(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    if config.tie_embeddings:
        del tensors["lm_head.weight"]  # the same storage as embed_tokens: safetensors refuses shared tensors
    if config.rope_interleaved:
        for name in tensors:
            if name.endswith("q_proj.weight"):
                tensors[name] = _halves_from_adjacent(tensors[name], config.n_heads, config.head_dim)
            elif name.endswith("k_proj.weight"):
                tensors[name] = _halves_from_adjacent(tensors[name], config.n_kv_heads, config.head_dim)
    hf["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    with atomic_path(folder / "model.safetensors") as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    write_text_atomic(folder / "config.json", json.dumps(hf, indent=2) + "\n")
    # END SOLUTION


def load_hf(folder) -> Transformer:
    """A Transformer from a Llama checkpoint folder (config.json + model.safetensors, or sharded safetensors with
    model.safetensors.index.json), in the dtype of its weights. Names must match one to one."""
    # BEGIN SOLUTION
    folder = Path(folder)
    config = config_from_hf(json.loads((folder / "config.json").read_text()))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        tensors = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_file(folder / shard))
    else:
        tensors = load_file(folder / "model.safetensors")
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # tied: the embedding is the head
    model = Transformer(config).to(next(iter(tensors.values())).dtype)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if config.tie_embeddings else set())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"the checkpoint in {folder} does not fit the model: missing {missing}, "
                         f"unexpected {unexpected}")
    model.load_state_dict(tensors, strict=False)
    return model
    # END SOLUTION
