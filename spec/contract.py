"""The contract: every module, public name and signature an implementation of llmkata provides.

Written once, here. `spec/test_contract.py` checks any implementation against it name by name, and
`tests/test_contract.py` checks that `reference` and `exercises` expose exactly it.

Signatures are written as `str(inspect.signature(obj))` prints them with annotations dropped: parameter names,
kinds and defaults, which is all that callers rely on. Classes give their constructor's signature, the signatures
of the methods the spec calls, and, for `nn.Module`s, the state-dict keys of one example instance, named after
the Hugging Face Llama convention so that weights move to and from the ecosystem without a renaming table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Function:
    signature: str


@dataclass(frozen=True)
class Class:
    init: str
    methods: dict[str, str] = field(default_factory=dict)
    # For nn.Modules: the state-dict keys of Class(**example).
    example: dict[str, Any] | None = None
    state_dict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chapter:
    number: int
    module: str
    title: str
    names: dict[str, Function | Class]

    @property
    def spec_file(self) -> str:
        return f"spec/test_{self.module}.py"

    def where(self, name: str) -> str:
        """Where a learner goes for `name`.  Example: 'chapter 4 (layers): read spec/test_layers.py'"""
        return f"chapter {self.number} ({self.title}): read {self.spec_file}"


CHAPTERS: list[Chapter] = [
    # --- chapter 1: text ---
    Chapter(2, "tokenizer", "tokenizer", {
        # Tokenizers also carry `vocab` (id -> bytes), `special_tokens` (str -> id) and a classmethod `load(path)`;
        # Tokenizer carries `merges` and `pattern`, SentencePieceTokenizer `model` (the .model file's bytes).
        "train_bpe": Function("(data, vocab_size, special_tokens=(), pattern='gpt4', num_workers=None)"),
        "Tokenizer": Class("(vocab, merges, special_tokens=(), pattern='gpt4')", {
            "encode": "(text, allowed_special='all')", "decode": "(ids)",
            "encode_iterable": "(iterable, allowed_special='all')", "save": "(path)"}),
        "train_sentencepiece": Function("(data, vocab_size, special_tokens=())"),
        "SentencePieceTokenizer": Class("(model)", {
            "encode": "(text, allowed_special='all')", "decode": "(ids)",
            "encode_iterable": "(iterable, allowed_special='all')", "save": "(path)"}),
        "to_tiktoken": Function("(tokenizer, name='llmkata')"),
        "to_hf_tokenizer": Function("(tokenizer)"),
    }),
    # --- chapter 3: data ---
    Chapter(4, "layers", "layers", {
        "softmax": Function("(x, dim=-1)"),
        "log_softmax": Function("(x, dim=-1)"),
        "gelu": Function("(x, approximate='none')"),
        "silu": Function("(x)"),
        "Linear": Class("(in_features, out_features, bias=True)", {"forward": "(x)"},
                        example={"in_features": 3, "out_features": 2}, state_dict=("weight", "bias")),
        "Embedding": Class("(num_embeddings, embedding_dim)", {"forward": "(ids)"},
                           example={"num_embeddings": 5, "embedding_dim": 3}, state_dict=("weight",)),
        "LayerNorm": Class("(dim, eps=1e-05, bias=True)", {"forward": "(x)"},
                           example={"dim": 4}, state_dict=("weight", "bias")),
        "RMSNorm": Class("(dim, eps=1e-06)", {"forward": "(x)"}, example={"dim": 4}, state_dict=("weight",)),
        "SwiGLU": Class("(dim, hidden_dim)", {"forward": "(x)"}, example={"dim": 4, "hidden_dim": 6},
                        state_dict=("gate_proj.weight", "up_proj.weight", "down_proj.weight")),
    }),
    Chapter(5, "rope", "rope", {
        "rope_frequencies": Function("(head_dim, theta=10000.0)"),
        "rotate": Function("(x, cos, sin, interleaved=False)"),
        "apply_rope": Function("(x, positions, theta=10000.0, interleaved=False)"),
        "RotaryEmbedding": Class("(head_dim, max_positions=2048, theta=10000.0, interleaved=False)",
                                 {"forward": "(x, positions)"}, example={"head_dim": 4, "max_positions": 8}),
    }),
    # --- chapter 6: attention ---
    # --- chapter 7: model ---
    # --- chapter 8: train ---
    # --- chapter 9: generate ---
    # --- chapter 10: evaluate ---
]

BY_MODULE: dict[str, Chapter] = {chapter.module: chapter for chapter in CHAPTERS}


def chapter_of(module: str) -> Chapter:
    try:
        return BY_MODULE[module]
    except KeyError:
        raise KeyError(f"no chapter has the module {module!r}; the contract knows {sorted(BY_MODULE)}") from None
