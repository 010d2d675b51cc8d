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

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .generate import generate
from .layers import Linear, log_softmax

IGNORE_INDEX = -100  # a target that does not count, as in the data and train chapters

# The special tokens of a chat: one per role, then the end of a turn. A tokenizer used for chat is trained with them
# as special tokens (train_bpe(..., special_tokens=CHAT_TOKENS)), so each is one id.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROLES = ("system", "user", "assistant")
END = "<|end|>"

# ------------------------------------------------------------------------------------------------ rendering

# BEGIN SOLUTION
def _chat_ids(tokenizer) -> dict[str, int]:
    """{"system": id, "user": id, "assistant": id, "end": id} from the tokenizer's special tokens."""
    special = getattr(tokenizer, "special_tokens", None) or {}
    missing = [token for token in CHAT_TOKENS if token not in special]
    if missing:
        raise ValueError(f"the tokenizer lacks the chat tokens {missing}: train it with "
                         f"special_tokens={list(CHAT_TOKENS)}")
    return {**{role: special[f"<|{role}|>"] for role in ROLES}, "end": special[END]}


def _turns(conversation) -> list[tuple[str, str]]:
    """Check a conversation and return its turns as (role, content) pairs."""
    if isinstance(conversation, (str, bytes, dict)) or not isinstance(conversation, Sequence):
        raise TypeError(f"a conversation is a list of turns (dicts), not a {type(conversation).__name__}")
    turns = []
    for index, turn in enumerate(conversation):
        if not isinstance(turn, dict):
            raise TypeError(f"turn {index} must be a dict with 'role' and 'content', not a {type(turn).__name__}")
        for key in ("role", "content"):
            if key not in turn:
                raise ValueError(f"turn {index} has no {key!r}")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise ValueError(f"turn {index} has the unknown role {role!r}; a role is one of {list(ROLES)}")
        if not isinstance(content, str):
            raise TypeError(f"the content of turn {index} must be a str, not a {type(content).__name__}")
        turns.append((role, content))
    return turns
# END SOLUTION


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
    # BEGIN SOLUTION
    turns = _turns(conversation)
    chat = _chat_ids(tokenizer)
    if not any(role == "assistant" for role, _ in turns):
        raise ValueError("the conversation has no assistant turn: there would be nothing to train on")
    ids, mask = [], []
    for role, content in turns:
        content_ids = tokenizer.encode(content, allowed_special="none")  # "<|end|>" typed by a user stays text
        learned = 1 if role == "assistant" else 0
        ids += [chat[role], *content_ids, chat["end"]]
        mask += [0] + [learned] * len(content_ids) + [learned]  # the role token is given, the end is learned
    return ids, mask
    # END SOLUTION


def render_prompt(conversation, tokenizer) -> list[int]:
    """The ids a model continues to answer: every turn rendered as `render` does, then <|assistant|>.

    The reply the model writes ends with <|end|> (`chat` stops there). The conversation needs no assistant turn;
    otherwise it is checked as `render` checks it.
    Example: [{"role": "user", "content": "hi"}] -> [user] hi [end] [assistant]
    """
    # BEGIN SOLUTION
    turns = _turns(conversation)
    chat = _chat_ids(tokenizer)
    ids = []
    for role, content in turns:
        ids += [chat[role], *tokenizer.encode(content, allowed_special="none"), chat["end"]]
    return ids + [chat["assistant"]]
    # END SOLUTION


def chat(model: nn.Module, conversation, tokenizer, max_new_tokens: int, temperature: float = 0.0,
         generator: torch.Generator | None = None) -> str:
    """The model's reply to `conversation`, as text: it continues render_prompt(conversation) with `generate`
    (chapter 9), with <|end|> as the stop token, which is not part of the reply. At most max_new_tokens tokens;
    temperature 0 (the default) is greedy, otherwise the tokens are sampled with `generator`."""
    # BEGIN SOLUTION
    prompt = render_prompt(conversation, tokenizer)
    end = _chat_ids(tokenizer)["end"]
    tokens = generate(model, prompt, max_new_tokens, temperature=temperature, stop_tokens=[end],
                      generator=generator)
    return tokenizer.decode(list(tokens))
    # END SOLUTION


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
    # BEGIN SOLUTION
    if logits.shape[:-1] != targets.shape or mask.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus a vocabulary "
                         f"dimension, and the mask {tuple(mask.shape)} must have targets' shape")
    mask = mask.bool()
    count = int(mask.sum())
    total = count if num_loss_tokens is None else int(num_loss_tokens)
    if total <= 0:
        raise ValueError(f"there are no loss tokens to average over (num_loss_tokens={num_loss_tokens}, "
                         f"{count} ones in the mask): a batch without assistant tokens trains on nothing")
    if total < count:
        raise ValueError(f"num_loss_tokens={total} is less than the {count} loss tokens of this batch: it must count "
                         "the loss tokens of every micro-batch of the step")
    vocab = logits.shape[-1]
    counted = targets[mask]
    outside = (counted < 0) | (counted >= vocab)
    if outside.any():
        raise ValueError(f"target {int(counted[outside][0])} where the mask is 1 is outside the vocabulary of "
                         f"{vocab} ids")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_probabilities = log_softmax(logits, dim=-1)  # (..., V)
    safe = torch.where(mask, targets, 0)  # any valid id where the mask is 0: those terms are dropped
    nll = -log_probabilities.gather(-1, safe[..., None]).squeeze(-1)  # (...)
    return torch.where(mask, nll, 0.0).sum() / total
    # END SOLUTION


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
    # BEGIN SOLUTION
    rows: list[tuple[list[int], list[int], list[int], list[int]]] = []  # (ids, targets, loss_mask, document_ids)
    for index, (ids, mask) in enumerate(examples):
        ids, mask = [int(i) for i in ids], [int(m) for m in mask]
        if len(ids) != len(mask):
            raise ValueError(f"example {index} has {len(ids)} ids but {len(mask)} mask values")
        if not 0 < len(ids) <= context_length:
            raise ValueError(f"example {index} has {len(ids)} tokens; a document must have 1 to "
                             f"context_length={context_length}")
        if not rows or len(rows[-1][0]) + len(ids) > context_length:
            rows.append(([], [], [], []))  # the document does not fit in what is left: a new row
        row_ids, row_targets, row_loss_mask, row_documents = rows[-1]
        document = row_documents[-1] + 1 if row_documents else 0
        row_ids += ids
        row_targets += ids[1:] + [IGNORE_INDEX]  # the next token of the same document; the last one predicts nothing
        row_loss_mask += mask[1:] + [0]  # whether that next token is a loss token
        row_documents += [document] * len(ids)
    if not rows:
        raise ValueError("there is nothing to pack: no examples")

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (context_length - len(values))

    fills = (pad_id, IGNORE_INDEX, 0, -1)
    return tuple(torch.tensor([padded(row[i], fill) for row in rows]) for i, fill in enumerate(fills))  # (R, T) int64
    # END SOLUTION


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
    # BEGIN SOLUTION
    if ids.shape != document_ids.shape or ids.dim() != 2:
        raise ValueError(f"ids {tuple(ids.shape)} and document_ids {tuple(document_ids.shape)} must be the same "
                         "(batch, length)")
    length = ids.shape[1]
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    causal = same.new_ones(length, length).tril()  # (T, T), booleans on ids' device
    mask = (same & causal)[:, None]  # (B, 1, T, T): one mask for every head

    attention_modules = [m for m in model.modules() if callable(getattr(m, "attend", None))]
    if not attention_modules:
        raise ValueError("the model has no attention module with an `attend` to give the document mask to")
    originals = [m.attend for m in attention_modules]

    def masked(attend):
        return lambda q, k, v, **_: attend(q, k, v, mask=mask)  # the mask is causal already: is_causal adds nothing

    try:
        for module, attend in zip(attention_modules, originals):
            module.attend = masked(attend)
        return model(ids)
    finally:
        for module, attend in zip(attention_modules, originals):
            module.attend = attend
    # END SOLUTION


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
        # BEGIN SOLUTION
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise ValueError(f"the LoRA rank must be a positive integer, got {rank!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        weight = base.weight
        out_features, in_features = weight.shape
        self.base_layer = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = Linear(in_features, rank, bias=False).to(dtype=weight.dtype, device=weight.device)
        self.lora_B = Linear(rank, out_features, bias=False).to(dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            self.lora_B.weight.zero_()  # B = 0: the layer starts as the base layer
        self.dropout = nn.Dropout(dropout)
        self._weight_before_merge: Tensor | None = None  # the base weight as it was before merge(), while merged
        # END SOLUTION

    @property
    def merged(self) -> bool:
        """Whether the update is in the base weight (merge() was called, and unmerge() not since)."""
        # BEGIN SOLUTION
        return self._weight_before_merge is not None
        # END SOLUTION

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out)."""
        # BEGIN SOLUTION
        if self.merged:
            return self.base_layer(x)  # the update is in the weight already
        return self.base_layer(x) + self.scale * self.lora_B(self.lora_A(self.dropout(x)))
        # END SOLUTION

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + (alpha/rank) · B A; forward is then base(x) alone."""
        # BEGIN SOLUTION
        if self.merged:
            raise ValueError("this LoRA layer is merged already: merging again would add the update twice")
        weight = self.base_layer.weight
        self._weight_before_merge = weight.detach().clone()
        weight += self.scale * (self.lora_B.weight @ self.lora_A.weight)  # (out, r) @ (r, in) = (out, in)
        # END SOLUTION

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the base weight as it was before merge(), bit for bit."""
        # BEGIN SOLUTION
        if not self.merged:
            raise ValueError("this LoRA layer is not merged: there is nothing to unmerge")
        # Not W − (alpha/rank)·BA: (W + Δ) − Δ rounds, and differs from W in the last bits.
        self.base_layer.weight.copy_(self._weight_before_merge)
        self._weight_before_merge = None
        # END SOLUTION


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
    # BEGIN SOLUTION
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, (Linear, nn.Linear))]
    chosen = [(name, module) for name, module in linears
              if any(name == target or name.endswith("." + target) for target in targets)]
    if not chosen:
        raise ValueError(f"no linear layer of the model matches the targets {list(targets)}; its linear layers are "
                         f"{[name for name, _ in linears]}")
    wrapped = [(name, LoRALinear(module, rank, alpha, dropout)) for name, module in chosen]  # may raise: nothing
    for parameter in model.parameters():  # has changed yet. The adapters are not in the model yet: they stay trainable
        parameter.requires_grad_(False)
    for name, lora in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, lora)  # get_submodule("") is the model itself
    return [name for name, _ in wrapped]
    # END SOLUTION


def merge_lora(model: nn.Module) -> list[str]:
    """Merge every LoRALinear of `model` and put its base layer back in its place, in place; return their names.

    The result computes the same function with plain linear layers and the state-dict keys of the model before
    apply_lora (ready for save_hf). Its parameters stay frozen, as apply_lora left them.
    """
    # BEGIN SOLUTION
    names = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name in names:
        lora = model.get_submodule(name)
        if not lora.merged:
            lora.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, lora.base_layer)
    return names
    # END SOLUTION


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors of `model` and nothing else: {"<layer>.lora_A.weight": A, "<layer>.lora_B.weight": B}
    for every LoRALinear, as copies (training on does not change them). A few MB where the model is GBs."""
    # BEGIN SOLUTION
    adapters = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            prefix = f"{name}." if name else ""
            adapters[f"{prefix}lora_A.weight"] = module.lora_A.weight.detach().clone()
            adapters[f"{prefix}lora_B.weight"] = module.lora_B.weight.detach().clone()
    return adapters
    # END SOLUTION


def load_lora(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Copy adapter tensors (as lora_state_dict gives them) into the LoRA layers of `model`, in place.

    Strict: the keys must be exactly those of lora_state_dict(model) and every shape the same; otherwise a
    ValueError names the missing keys, the unexpected keys, or the shapes that differ, and nothing is modified.
    """
    # BEGIN SOLUTION
    expected = lora_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"these adapters do not fit the model: missing {missing}, unexpected {unexpected}")
    wrong = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}" for key, value in expected.items()
             if tuple(state_dict[key].shape) != tuple(value.shape)]
    if wrong:
        raise ValueError(f"these adapters do not fit the model: shapes differ ({'; '.join(wrong)})")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state_dict.items():
            parameters[key].copy_(value)
    # END SOLUTION
