# Generated from reference/finetune.py by `llmkata exercises`. This copy is yours: replace each stub.
"""Fine-tuning: chat conversations as training data, a loss on the assistant's tokens only, packing, and LoRA.

Supervised fine-tuning (SFT) trains a pre-trained model on conversations. A conversation is a list of turns
{"role": "system" | "user" | "assistant", "content": str}, rendered into one token sequence with four special
tokens (CHAT_TOKENS), each turn as

    <|role|> content tokens <|end|>

and a loss mask that is 1 exactly on the assistant's content tokens and the `<|end|>` that closes each assistant
turn: the model learns to answer, and to stop, but not to imitate the user. Content is encoded as text
(`allowed_special="none"`), so a user who types "<|end|>" gets the characters, not a control token.

The SFT loss is the cross-entropy summed over the N positions whose target is a loss token, divided by N:

    L = (1/N) Σ_{i: mask_i = 1} (logsumexp(z_i) − z_i[y_i])

With gradient accumulation over micro-batches that hold N_1, ..., N_k loss tokens, each micro-batch must be
divided by the total N = Σ N_k (`num_loss_tokens`), not by its own N_k: the mean of the micro-batch means weights
a token of a short answer more than a token of a long one, and is not the loss of the whole batch.

Packing puts several short conversations into one row of `context_length` tokens, so that no compute is spent on
padding. Attention stops at document boundaries (a query sees keys of its own document only, causally), and then
each conversation is computed as if it were alone: RoPE's scores depend only on distances between positions, not
on where in the row a document starts. Targets are the next token of the same document; a document's last token
has none.

LoRA (low-rank adaptation) freezes a linear layer y = x Wᵀ (W: out × in) and learns a low-rank change of it,

    y = x Wᵀ + (α/r) · x Aᵀ Bᵀ,     A: r × in (random),  B: out × r (zeros),  r ≪ min(in, out)

so that the model starts exactly where it was (B = 0) while A's random directions give B a gradient from the
first step. The scale α/r keeps the size of the update roughly independent of the rank. Trained, W' = W + (α/r)·BA
can be merged into the weight: the same function with no extra cost at inference.

Left out: multi-turn tool calls, chat templates in Jinja, QLoRA (quantised base weights), DoRA, several adapters
on one model, LoRA on embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100  # a target that does not count, as in the data and train chapters

# The special tokens of a chat: one per role, then the end of a turn. A tokenizer used for chat is trained with them
# as special tokens (train_bpe(..., special_tokens=CHAT_TOKENS)), so each is one id.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROLES = ("system", "user", "assistant")
END = "<|end|>"

# ------------------------------------------------------------------------------------------------ rendering


def render(conversation, tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its loss mask, two lists of the same length.

    Each turn is <|role|>, tokenizer.encode(content, allowed_special="none"), <|end|>. The mask is 1 on the content
    tokens of every assistant turn and on the <|end|> that closes it, 0 elsewhere (role tokens, system and user
    turns). Example, with "hi" and "yo" one token each:

        [user] hi [end] [assistant] yo [end]
          0    0    0       0       1    1

    Refused, so that a conversation never trains on nothing (an all-zero mask) without a word: a conversation
    without an assistant turn, a turn whose role is not system/user/assistant, a turn without "role" or "content"
    (ValueError); a conversation that is not a list of dicts, content that is not a str (TypeError); a tokenizer
    without the four CHAT_TOKENS among its special tokens (ValueError naming the missing ones).
    """
    raise NotImplementedError('`finetune.render` is not implemented yet — chapter 11 (finetune): see '
                              'test_render_masks_exactly_the_assistant_content_and_its_end_token and 6 more in '
                              'spec/test_finetune.py.')


def render_prompt(conversation, tokenizer) -> list[int]:
    """The ids a model continues to answer: every turn rendered as `render` does, then <|assistant|>.

    The reply the model writes ends with <|end|> (`chat` stops there). The conversation needs no assistant turn;
    otherwise it is checked as `render` checks it.
    Example: [{"role": "user", "content": "hi"}] -> [user] hi [end] [assistant]
    """
    raise NotImplementedError('`finetune.render_prompt` is not implemented yet — chapter 11 (finetune): see '
                              'test_chat_tokens_typed_in_content_stay_text and 4 more in spec/test_finetune.py.')


def chat(model: nn.Module, conversation, tokenizer, max_new_tokens: int, temperature: float = 0.0,
         generator: torch.Generator | None = None) -> str:
    """The model's reply to `conversation`, as text: it continues render_prompt(conversation) with `generate`
    (chapter 9), with <|end|> as the stop token, which is not part of the reply. At most max_new_tokens tokens;
    temperature 0 (the default) is greedy, otherwise the tokens are sampled with `generator`."""
    raise NotImplementedError('`finetune.chat` is not implemented yet — chapter 11 (finetune): see '
                              'test_a_model_fine_tuned_on_an_answer_gives_it_and_stops_at_end and 1 more in '
                              'spec/test_finetune.py.')


# ------------------------------------------------------------------------------------------------ the loss


def sft_loss(logits: Tensor, targets: Tensor, mask: Tensor, num_loss_tokens: int | None = None) -> Tensor:
    """Σ over positions with mask = 1 of −log softmax(logits)[target], divided by num_loss_tokens; a scalar.

    logits (..., V), targets (...) ids, mask (...) of 0/1 or booleans. num_loss_tokens defaults to the number of
    ones in the mask (the mean over loss tokens). Give the total of all micro-batches when accumulating gradients:
    then the losses of the micro-batches add up to the loss of their concatenation, and so do their gradients.
    A micro-batch without loss tokens then contributes 0. Targets where the mask is 0 are not read (they may be
    IGNORE_INDEX). Computed in float32 at least (half-precision logits are upcast first).

    Refused with a ValueError: nothing to divide by (no loss token and no num_loss_tokens, or num_loss_tokens <= 0),
    num_loss_tokens smaller than the loss tokens of this batch, shapes that do not fit (logits must be targets'
    shape plus one vocabulary dimension, the mask targets' shape), a target outside 0..V−1 where the mask is 1.
    """
    raise NotImplementedError('`finetune.sft_loss` is not implemented yet — chapter 11 (finetune): see '
                              'test_a_model_fine_tuned_on_an_answer_gives_it_and_stops_at_end and 7 more in '
                              'spec/test_finetune.py.')


# ------------------------------------------------------------------------------------------------ packing


def pack(examples, context_length: int, pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pack rendered conversations, (ids, mask) pairs as `render` returns them, into rows of context_length tokens.

    Returns (ids, targets, loss_mask, document_ids), each (R, context_length) int64:

        ids           the documents one after another, in order; a document goes to the current row if it fits in
                      what is left of it, else it starts a new row; the rest of a row is pad_id
        targets       the next token of the same document; IGNORE_INDEX at a document's last token and on padding
        loss_mask     the mask of that next token (1 where it is a loss token), 0 where there is no target
        document_ids  0, 1, 2, ... for the documents of a row, in order; −1 on padding

    Example, context_length 6, documents [a b c] (mask [0 1 1]) and [d e] (mask [0 1]):
        ids [a b c d e pad], targets [b c −100 e −100 −100], loss_mask [1 1 0 1 0 0], document_ids [0 0 0 1 1 −1]
    `packed_forward` runs a model on such rows as if each document were alone. A document longer than
    context_length, an empty one, or one whose ids and mask differ in length is a ValueError that names it; so is
    an empty list of examples.
    """
    raise NotImplementedError('`finetune.pack` is not implemented yet — chapter 11 (finetune): see '
                              'test_pack_lays_documents_in_order_with_next_token_targets and 2 more in '
                              'spec/test_finetune.py.')


def packed_forward(model: nn.Module, ids: Tensor, document_ids: Tensor) -> Tensor:
    """model(ids) for packed rows (B, T), each document as if alone: logits (B, T, V).

    Query i may attend to key j iff j <= i and document_ids[i] == document_ids[j] (padding, −1, attends to padding
    only). The positions need not restart at each document: with RoPE, q·k depends only on the distance between
    two positions, so a document at positions s .. s+n−1 attends as it would at 0 .. n−1 (a model with absolute
    position embeddings would need position_ids that restart). The model takes no mask of its own:
    its attention modules attend through `self.attend` (chapter 6), which takes one, so for this call each of them
    is handed the document mask, and given back its own `attend` afterwards. A model without such a module is a
    ValueError: its documents would see each other.
    """
    raise NotImplementedError('`finetune.packed_forward` is not implemented yet — chapter 11 (finetune): see '
                              'test_packed_documents_see_only_themselves and 1 more in spec/test_finetune.py.')


# ---------------------------------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: base(x) + (alpha/rank) · lora_B(lora_A(dropout(x))).

    base: a linear layer with `weight` (out, in) and `bias` or None (layers.Linear or nn.Linear); it is kept as
    `base_layer` and its parameters are frozen. lora_A: Linear(in, rank), initialised like a Linear (kaiming
    uniform, entries in ±1/√in); lora_B: Linear(rank, out), zeros, so that the layer starts as `base` exactly. Both
    have no bias and take the base weight's dtype and device. State-dict keys (as PEFT writes them):
    base_layer.weight (base_layer.bias), lora_A.weight, lora_B.weight. Dropout (probability `dropout`, in training
    mode only) applies to the input of the low-rank path, never to the base path.

    merge() adds (alpha/rank) · B A into the base weight, after which forward is base(x) alone (the same function);
    unmerge() puts back the weight as it was before merge, bit for bit (a copy is kept while merged); `merged` says
    which of the two the layer is. Merging twice, or unmerging what is not merged, is a ValueError. A rank that is
    not a positive integer, or a dropout outside [0, 1), is a ValueError.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        raise NotImplementedError('`finetune.LoRALinear.__init__` is not implemented yet — chapter 11 (finetune): see '
                                  'test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters and 8 '
                                  'more in spec/test_finetune.py.')

    @property
    def merged(self) -> bool:
        """Whether the update is in the base weight (merge() was called, and unmerge() not since)."""
        raise NotImplementedError('`finetune.LoRALinear.merged` is not implemented yet — chapter 11 (finetune): see '
                                  'test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters and 8 '
                                  'more in spec/test_finetune.py.')

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out)."""
        raise NotImplementedError('`finetune.LoRALinear.forward` is not implemented yet — chapter 11 (finetune): see '
                                  'test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters and 8 '
                                  'more in spec/test_finetune.py.')

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + (alpha/rank) · B A; forward is then base(x) alone."""
        raise NotImplementedError('`finetune.LoRALinear.merge` is not implemented yet — chapter 11 (finetune): see '
                                  'test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters and 8 '
                                  'more in spec/test_finetune.py.')

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the base weight as it was before merge(), bit for bit."""
        raise NotImplementedError('`finetune.LoRALinear.unmerge` is not implemented yet — chapter 11 (finetune): see '
                                  'test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters and 8 '
                                  'more in spec/test_finetune.py.')


def apply_lora(model: nn.Module, targets=("q_proj", "v_proj"), rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> list[str]:
    """Wrap every linear layer of `model` whose name ends with one of `targets` in a LoRALinear, in place, and
    freeze every parameter that is not a LoRA parameter; return the names of the wrapped layers, in model order.

    A name matches a target when it is the target or ends with "." + target ("model.layers.0.self_attn.q_proj"
    matches "q_proj", not "proj"). A linear layer is a layers.Linear or an nn.Linear. Afterwards only the lora_A
    and lora_B weights have requires_grad; the model's state-dict keys of a wrapped layer become
    <name>.base_layer.weight, <name>.lora_A.weight, <name>.lora_B.weight.
    Targets that match no linear layer are a ValueError naming the targets and the names of the linear layers
    there are, raised before anything changes (as is a bad rank or dropout). Leave a tied lm_head out of the
    targets: its weight is the embedding's, and merging would change both.
    """
    raise NotImplementedError('`finetune.apply_lora` is not implemented yet — chapter 11 (finetune): see '
                              'test_apply_lora_wraps_exactly_the_targeted_linear_layers_and_freezes_the_rest and 4 '
                              'more in spec/test_finetune.py.')


def merge_lora(model: nn.Module) -> list[str]:
    """Merge every LoRALinear of `model` and put its base layer back in its place, in place; return their names.

    The result computes the same function with plain linear layers and the state-dict keys of the model before
    apply_lora (ready for save_hf). Its parameters stay frozen, as apply_lora left them.
    """
    raise NotImplementedError('`finetune.merge_lora` is not implemented yet — chapter 11 (finetune): see '
                              'test_a_trained_lora_model_merges_into_the_same_function_with_the_base_untouched in '
                              'spec/test_finetune.py.')


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors of `model` and nothing else: {"<layer>.lora_A.weight": A, "<layer>.lora_B.weight": B}
    for every LoRALinear, as copies (training on does not change them). A few MB where the model is GBs."""
    raise NotImplementedError('`finetune.lora_state_dict` is not implemented yet — chapter 11 (finetune): see '
                              'test_lora_state_dict_holds_only_the_adapters_and_round_trips_through_a_file and 1 more '
                              'in spec/test_finetune.py.')


def load_lora(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Copy adapter tensors (as lora_state_dict gives them) into the LoRA layers of `model`, in place.

    Strict: the keys must be exactly those of lora_state_dict(model) and every shape the same; otherwise a
    ValueError names the missing keys, the unexpected keys, or the shapes that differ, and nothing is modified.
    """
    raise NotImplementedError('`finetune.load_lora` is not implemented yet — chapter 11 (finetune): see '
                              'test_lora_state_dict_holds_only_the_adapters_and_round_trips_through_a_file and 1 more '
                              'in spec/test_finetune.py.')
