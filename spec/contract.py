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
    Chapter(1, "text", "text", {
        # Every loader and stage takes and yields documents (str) lazily. FilterReport has `read`, `kept` and
        # `dropped` (a Counter: rule -> documents); the rule names are listed in `failed_rules`' docstring.
        "default_corpus": Function("()"),
        "decode_utf8": Function("(data, source='<bytes>', errors='strict')"),
        "load_text_files": Function("(paths, errors='strict')"),
        "load_jsonl": Function("(paths, field='text', errors='strict')"),
        "load_hf_dataset": Function("(dataset, field='text', split='train', streaming=False, **load_kwargs)"),
        "normalize_unicode": Function("(text, form='NFC')"),
        "remove_control_characters": Function("(text)"),
        "normalize_whitespace": Function("(text)"),
        "clean": Function("(text, form='NFC')"),
        "QualityConfig": Class("(min_words=50, max_words=100000, min_mean_word_length=3.0, max_mean_word_length=10.0, "
                               "max_symbol_word_ratio=0.1, min_alphabetic_fraction=0.8, max_duplicate_line_fraction=0.3)"),
        "FilterReport": Class("()"),
        "word_count": Function("(text)"),
        "mean_word_length": Function("(text)"),
        "symbol_to_word_ratio": Function("(text)"),
        "alphabetic_word_fraction": Function("(text)"),
        "duplicate_line_fraction": Function("(text)"),
        "failed_rules": Function("(text, config=None)"),
        "quality_filter": Function("(docs, config=None, report=None)"),
        "dedup_key": Function("(text)"),
        "exact_dedup": Function("(docs, report=None)"),
        "shingles": Function("(text, ngram=5)"),
        "jaccard": Function("(a, b)"),
        "minhash_signatures": Function("(docs, num_perm=128, ngram=5, seed=0)"),
        "estimate_jaccard": Function("(a, b)"),
        "near_dedup": Function("(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None)"),
        "clean_corpus": Function("(docs, config=None, near_threshold=0.8, form='NFC', report=None)"),
    }),
    Chapter(2, "tokenizer", "tokenizer", {
        # Tokenizers also carry `vocab` (id -> bytes) and `special_tokens` (str -> id);
        # Tokenizer carries `merges` and `pattern`, SentencePieceTokenizer `model` (the .model file's bytes).
        "train_bpe": Function("(data, vocab_size, special_tokens=(), pattern='gpt4')"),
        "Tokenizer": Class("(vocab, merges, special_tokens=(), pattern='gpt4')", {
            "encode": "(text, allowed_special='all')", "decode": "(ids)",
            "encode_iterable": "(iterable, allowed_special='all')", "save": "(path)", "load": "(path)"}),
        "train_sentencepiece": Function("(data, vocab_size, special_tokens=())"),
        "SentencePieceTokenizer": Class("(model)", {
            "encode": "(text, allowed_special='all')", "decode": "(ids)",
            "encode_iterable": "(iterable, allowed_special='all')", "save": "(path)", "load": "(path)"}),
        "to_tiktoken": Function("(tokenizer, name='llmkata')"),
        "to_hf_tokenizer": Function("(tokenizer)"),
    }),
    Chapter(3, "data", "data", {
        # Token files are .npy (uint16 when vocab_size <= 65536, else uint32): doc_1 <eot> doc_2 <eot> ... doc_n <eot>.
        # Padded targets in sequential_batches are -100 (data.IGNORE_INDEX).
        "is_validation": Function("(text, val_fraction=0.1, salt='')"),
        "train_val_split": Function("(docs, val_fraction=0.1, salt='')"),
        "token_dtype": Function("(vocab_size)"),
        "tokenize_and_pack": Function("(docs, tokenizer, eot_id, path, vocab_size, num_workers=1)"),
        "load_tokens": Function("(path)"),
        "get_batch": Function("(tokens, batch_size, context_length, generator, device=None)"),
        "sequential_batches": Function("(tokens, batch_size, context_length, device=None)"),
        "document_ids": Function("(x, eot_id)"),
        "document_mask": Function("(x, eot_id)"),
    }),
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
        "RMSNorm": Class("(dim, eps=1e-06, kernels=False)", {"forward": "(x)"}, example={"dim": 4}, state_dict=("weight",)),
        "SwiGLU": Class("(dim, hidden_dim, kernels=False)", {"forward": "(x)"}, example={"dim": 4, "hidden_dim": 6},
                        state_dict=("gate_proj.weight", "up_proj.weight", "down_proj.weight")),
    }),
    Chapter(5, "rope", "rope", {
        "rope_frequencies": Function("(head_dim, theta=10000.0)"),
        "rotate": Function("(x, cos, sin, interleaved=False)"),
        "apply_rope": Function("(x, positions, theta=10000.0, interleaved=False)"),
        "RotaryEmbedding": Class("(head_dim, max_positions=2048, theta=10000.0, interleaved=False, kernels=False)",
                                 {"forward": "(x, positions)"}, example={"head_dim": 4, "max_positions": 8}),
    }),
    Chapter(6, "attention", "attention", {
        # KVCache also carries `k`, `v` (batch, n_kv_heads, max_seq_len, head_dim) and `length` (positions filled).
        "causal_mask": Function("(n_queries, n_keys=None, offset=0, device=None)"),
        "attention_weights": Function("(q, k, mask=None, is_causal=False, scale=None)"),
        "scaled_dot_product_attention": Function("(q, k, v, mask=None, is_causal=False, scale=None)"),
        "repeat_kv": Function("(x, n_rep)"),
        "KVCache": Class("(batch_size, n_kv_heads, head_dim, max_seq_len, dtype=torch.float32, device=None)",
                         {"update": "(k, v)"}),
        "CausalSelfAttention": Class(
            "(d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0, rope_interleaved=False, "
            "use_rope=True, kernels=False)",
            {"forward": "(x, position_ids=None, cache=None)"}, example={"d_model": 8, "n_heads": 2, "n_kv_heads": 1},
            state_dict=("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")),
    }),
    Chapter(7, "model", "model", {
        # Transformer(config) keeps `config` and has `model` (Decoder: embed_tokens, layers, norm) and `lm_head`; keys
        # of its state dict are those of Hugging Face's LlamaForCausalLM (model.layers.0.self_attn.q_proj.weight, ...).
        "ModelConfig": Class("(vocab_size=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=None, d_ff=None, "
                             "max_seq_len=256, norm='rmsnorm', mlp='swiglu', norm_eps=1e-05, rope_theta=10000.0, "
                             "rope_interleaved=False, tie_embeddings=False, init_std=0.02, kernels=False)"),
        "GeluMLP": Class("(dim, hidden_dim)", {"forward": "(x)"}, example={"dim": 4, "hidden_dim": 6},
                         state_dict=("up_proj.weight", "down_proj.weight")),
        "TransformerBlock": Class("(config)", {"forward": "(x, position_ids=None, cache=None)"}),
        "Decoder": Class("(config)", {"forward": "(input_ids, position_ids=None, cache=None)"}),
        "Transformer": Class("(config)", {"forward": "(input_ids, position_ids=None, cache=None)",
                                          "make_cache": "(batch_size, max_seq_len=None)", "reset_parameters": "()"}),
        "count_parameters": Function("(model)"),
        "flops_per_token": Function("(config, seq_len=None)"),
        "hf_config": Function("(config)"),
        "config_from_hf": Function("(hf)"),
        "save_hf": Function("(model, folder)"),
        "load_hf": Function("(folder)"),
    }),
    Chapter(8, "train", "train", {
        "cross_entropy": Function("(logits, targets, ignore_index=-100)"),
        "clip_grad_norm": Function("(parameters, max_norm)"),
        # A torch.optim.Optimizer: state_dict / load_state_dict / zero_grad come from the base class.
        "AdamW": Class("(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)", {"step": "()"}),
        "parameter_groups": Function("(model, weight_decay)"),
        "lr_schedule": Function("(step, max_lr, warmup_steps, total_steps, min_lr=0.0)"),
        "train_step": Function("(model, optimizer, micro_batches, max_norm=1.0, lr=None, autocast_dtype=None)"),
        "save_checkpoint": Function("(path, model, optimizer, step, config=None, generator=None, extra=None)"),
        "load_checkpoint": Function("(path, model, optimizer=None, config=None, generator=None)"),
    }),
    Chapter(9, "generate", "generate", {
        "top_k_filter": Function("(logits, k)"),
        "top_p_filter": Function("(logits, p)"),
        "sample_next": Function("(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None)"),
        "generate": Function("(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, stop_tokens=(), "
                             "context_length=None, generator=None, use_cache=True)"),
    }),
    Chapter(10, "evaluate", "evaluate", {
        "evaluate_loss": Function("(model, batches)"),
        "perplexity": Function("(mean_nll)"),
        "bits_per_byte": Function("(mean_nll, n_tokens, n_bytes)"),
        "continuation_logprob": Function("(model, context, continuation, context_length=None)"),
        "score_choices": Function("(model, context, choices)"),
        "load_choice_tasks": Function("(path)"),
        "multiple_choice_accuracy": Function("(model, tokenizer, tasks)"),
    }),
    Chapter(11, "finetune", "finetune", {
        # A chat tokenizer has the special tokens <|system|>, <|user|>, <|assistant|>, <|end|> (finetune.CHAT_TOKENS).
        # A conversation is a list of {"role": "system" | "user" | "assistant", "content": str}. pack returns
        # (ids, targets, loss_mask, document_ids), each (rows, context_length). LoRALinear wraps a linear layer; its
        # state-dict keys are base_layer.weight (base_layer.bias), lora_A.weight, lora_B.weight (as PEFT's).
        "render": Function("(conversation, tokenizer)"),
        "render_prompt": Function("(conversation, tokenizer)"),
        "chat": Function("(model, conversation, tokenizer, max_new_tokens, temperature=0.0, generator=None)"),
        "sft_loss": Function("(logits, targets, mask, num_loss_tokens=None)"),
        "pack": Function("(examples, context_length, pad_id)"),
        "packed_forward": Function("(model, ids, document_ids)"),
        "LoRALinear": Class("(base, rank, alpha, dropout=0.0)", {"forward": "(x)", "merge": "()", "unmerge": "()"}),
        "apply_lora": Function("(model, targets=('q_proj', 'v_proj'), rank=8, alpha=16.0, dropout=0.0)"),
        "merge_lora": Function("(model)"),
        "lora_state_dict": Function("(model)"),
        "load_lora": Function("(model, state_dict)"),
    }),
    Chapter(12, "align", "align", {
        # Per-token tensors are (B, T) with a mask (B, T), True (or 1) on the tokens that count. RewardModel(config)
        # keeps `config` and has `model` (the chapter-7 Decoder) and `score` (Linear(d_model, 1, bias=False)): the
        # keys of Hugging Face's LlamaForSequenceClassification (model.layers.0.self_attn.q_proj.weight, ...,
        # score.weight).
        "token_logprobs": Function("(logits, targets)"),
        "sequence_logprob": Function("(logits, targets, mask)"),
        "masked_mean": Function("(values, mask)"),
        "RewardModel": Class("(config)", {"forward": "(input_ids, lengths=None)"}),
        "bradley_terry_loss": Function("(chosen, rejected)"),
        "preference_accuracy": Function("(chosen, rejected)"),
        "preference_pairs": Function("(records)"),
        "kl_penalty": Function("(logp, ref_logp, estimator='k1')"),
        "ppo_rewards": Function("(score, logp, ref_logp, mask, kl_coef=0.1, estimator='k1')"),
        "gae": Function("(rewards, values, mask, gamma=1.0, lam=0.95)"),
        "ppo_policy_loss": Function("(logp, old_logp, advantages, mask, clip=0.2)"),
        "ppo_value_loss": Function("(values, old_values, returns, mask, clip=0.2)"),
        "entropy": Function("(logits, mask)"),
        "dpo_loss": Function("(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)"),
        "grpo_advantages": Function("(rewards, group_size, eps=1e-06)"),
        "grpo_loss": Function("(logp, old_logp, advantages, mask, clip=0.2, ref_logp=None, kl_coef=0.0, "
                              "aggregation='token')"),
    }),
    Chapter(13, "parallel", "parallel", {
        # Every layer takes its rank and world size from the default process group (a world of one outside it);
        # a shard's layout (which rows or columns a rank holds) is part of each class's docstring.
        "run_world": Function("(fn, world_size, *args, timeout=60.0)"),
        "broadcast_parameters": Function("(module, src=0)"),
        "DataParallel": Class("(module, bucket_cap_mb=25.0)", {"forward": "(*args, **kwargs)", "no_sync": "()"}),
        "clip_grad_norm_global": Function("(parameters, max_norm)"),
        "copy_to_parallel": Function("(x)"),
        "reduce_from_parallel": Function("(x)"),
        "scatter_to_parallel": Function("(x)"),
        "gather_from_parallel": Function("(x)"),
        "ColumnParallelLinear": Class("(in_features, out_features, bias=True, gather_output=False)",
                                      {"forward": "(x)", "from_dense": "(linear, gather_output=False)"},
                                      example={"in_features": 3, "out_features": 2}, state_dict=("weight", "bias")),
        "RowParallelLinear": Class("(in_features, out_features, bias=True, input_is_parallel=True)",
                                   {"forward": "(x)", "from_dense": "(linear, input_is_parallel=True)"},
                                   example={"in_features": 3, "out_features": 2}, state_dict=("weight", "bias")),
        "ParallelSwiGLU": Class("(dim, hidden_dim)", {"forward": "(x)", "from_dense": "(mlp)"},
                                example={"dim": 4, "hidden_dim": 6},
                                state_dict=("gate_proj.weight", "up_proj.weight", "down_proj.weight")),
        "ParallelAttention": Class("(d_model, n_heads, n_kv_heads=None, max_seq_len=2048, rope_theta=10000.0)",
                                   {"forward": "(x, position_ids=None)", "from_dense": "(attention)"},
                                   example={"d_model": 8, "n_heads": 2, "n_kv_heads": 1},
                                   state_dict=("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")),
        "VocabParallelEmbedding": Class("(num_embeddings, embedding_dim)",
                                        {"forward": "(ids)", "from_dense": "(embedding)"},
                                        example={"num_embeddings": 5, "embedding_dim": 3}, state_dict=("weight",)),
        "vocab_parallel_cross_entropy": Function("(logits, targets, vocab_size, ignore_index=-100)"),
        # A torch.optim.Optimizer: `state[p]` holds exp_avg and exp_avg_sq of this rank's slice of p only.
        "ShardedAdamW": Class("(params, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)", {"step": "()"}),
    }),
    Chapter(14, "kernels", "kernels", {
        # The fast paths of chapters 2, 4, 5, 6 and 8, each equal to its chapter's definition. The autograd Functions
        # are called as `Function.apply(...)` with the arguments of their `forward`, minus ctx.
        "RMSNormFunction": Class("(*args, **kwargs)", {"forward": "(ctx, x, weight, eps)", "backward": "(ctx, grad)"}),
        "SwiGLUFunction": Class("(*args, **kwargs)", {"forward": "(ctx, gate, up)", "backward": "(ctx, grad)"}),
        "RotateFunction": Class("(*args, **kwargs)", {"forward": "(ctx, x, cos, sin, interleaved)",
                                                      "backward": "(ctx, grad)"}),
        "CrossEntropyFunction": Class("(*args, **kwargs)", {"forward": "(ctx, logits, targets, ignore_index)",
                                                            "backward": "(ctx, grad)"}),
        "cross_entropy": Function("(logits, targets, ignore_index=-100)"),
        "AttentionFunction": Class("(*args, **kwargs)", {"forward": "(ctx, q, k, v, bias, scale)",
                                                         "backward": "(ctx, grad_out)"}),
        "attention": Function("(q, k, v, mask=None, is_causal=False, scale=None)"),
        "TiledAttentionFunction": Class("(*args, **kwargs)", {
            "forward": "(ctx, q, k, v, is_causal, block_size_q, block_size_k, scale)",
            "backward": "(ctx, grad_out, grad_lse)"}),
        "tiled_attention": Function("(q, k, v, is_causal=False, block_size_q=128, block_size_k=256, scale=None)"),
        "train_bpe": Function("(data, vocab_size, special_tokens=(), pattern='gpt4', num_workers=None)"),
        # Triton (the `triton` extra): a CUDA GPU, or the CPU through Triton's interpreter (TRITON_INTERPRET=1).
        "FlashAttentionFunction": Class("(*args, **kwargs)", {"forward": "(ctx, q, k, v, is_causal, scale)",
                                                              "backward": "(ctx, grad_out, grad_lse)"}),
        "flash_attention": Function("(q, k, v, is_causal=False, scale=None)"),
    }),
]

BY_MODULE: dict[str, Chapter] = {chapter.module: chapter for chapter in CHAPTERS}


def chapter_of(module: str) -> Chapter:
    try:
        return BY_MODULE[module]
    except KeyError:
        raise KeyError(f"no chapter has the module {module!r}; the contract knows {sorted(BY_MODULE)}") from None
