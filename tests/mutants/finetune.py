"""Wrong implementations of the finetune chapter that a learner could plausibly write."""

import torch
from torch import nn

import llmkata.reference.finetune as ref

from . import mutant


def named(name: str, replacement):
    """`replacement`, called `name` in the mutant's test id."""
    replacement.__name__ = replacement.__qualname__ = name
    return replacement

# ------------------------------------------------------------------------------------------------ rendering


def _render_with(mask_of, allowed_special="none", check_assistant=True, end_id=None):
    """A render whose mask for (role, part) comes from mask_of(role, part), part in 'role', 'content', 'end'."""

    def render(conversation, tokenizer):
        turns = ref._turns(conversation)
        chat = ref._chat_ids(tokenizer)
        if check_assistant and not any(role == "assistant" for role, _ in turns):
            raise ValueError("the conversation has no assistant turn")
        ids, mask = [], []
        for role, content in turns:
            content_ids = tokenizer.encode(content, allowed_special=allowed_special)
            ids += [chat[role], *content_ids, chat["end"]]
            mask += [mask_of(role, "role")] + [mask_of(role, "content")] * len(content_ids) + [mask_of(role, "end")]
        return ids, mask

    return render


mutant("finetune.render", "test_render_masks_exactly_the_assistant_content_and_its_end_token",
       why="the mask also covers the user's content: the model learns to imitate the user")(
    named("render_masking_user_turns", _render_with(lambda role, part: int(role != "system" and part != "role"))))
mutant("finetune.render", "test_render_masks_exactly_the_assistant_content_and_its_end_token",
       "test_a_model_fine_tuned_on_an_answer_gives_it_and_stops_at_end",
       why="the <|end|> of an assistant turn is left out of the mask: the model never learns to stop")(
    named("render_without_the_end_token",
          _render_with(lambda role, part: int(role == "assistant" and part == "content"))))
mutant("finetune.render", "test_render_masks_exactly_the_assistant_content_and_its_end_token",
       why="the mask also covers the <|assistant|> token, which the prompt gives")(
    named("render_masking_the_assistant_token", _render_with(lambda role, part: int(role == "assistant"))))
mutant("finetune.render", "test_render_masks_exactly_the_assistant_content_and_its_end_token",
       "test_chat_tokens_typed_in_content_stay_text",
       why="content encoded with special tokens allowed: a user's '<|end|>' becomes a control token")(
    named("render_allowing_specials", _render_with(lambda role, part: int(role == "assistant" and part != "role"),
                                                   allowed_special="all")))
mutant("finetune.render", "test_render_refuses_a_conversation_without_an_assistant_turn",
       why="no check for an assistant turn: an all-zero mask trains on nothing, silently")(
    named("render_without_an_assistant_check",
          _render_with(lambda role, part: int(role == "assistant" and part != "role"), check_assistant=False)))


@mutant("finetune.render", "test_render_refuses_malformed_turns_by_name",
        why="an unknown role is rendered as a user turn; a turn is read with .get")
def render_lenient(conversation, tokenizer):
    chat = ref._chat_ids(tokenizer)
    turns = [(turn.get("role") if turn.get("role") in ref.ROLES else "user", turn.get("content") or "")
             for turn in conversation]
    if not any(role == "assistant" for role, _ in turns):
        raise ValueError("the conversation has no assistant turn")
    ids, mask = [], []
    for role, content in turns:
        content_ids = tokenizer.encode(str(content), allowed_special="none")
        learned = int(role == "assistant")
        ids += [chat[role], *content_ids, chat["end"]]
        mask += [0] + [learned] * (len(content_ids) + 1)
    return ids, mask


@mutant("finetune.render", "test_render_refuses_a_tokenizer_without_the_chat_tokens",
        why="a chat token the tokenizer lacks is encoded as text instead of refused")
def render_encoding_missing_chat_tokens(conversation, tokenizer):
    turns = ref._turns(conversation)
    if not any(role == "assistant" for role, _ in turns):
        raise ValueError("the conversation has no assistant turn")

    def token(text):
        return [tokenizer.special_tokens[text]] if text in tokenizer.special_tokens else tokenizer.encode(text)

    ids, mask = [], []
    for role, content in turns:
        head, end = token(f"<|{role}|>"), token("<|end|>")
        content_ids = tokenizer.encode(content, allowed_special="none")
        learned = int(role == "assistant")
        ids += head + content_ids + end
        mask += [0] * len(head) + [learned] * (len(content_ids) + len(end))
    return ids, mask


@mutant("finetune.render_prompt", "test_render_refuses_malformed_turns_by_name",
        why="no checks: a bad turn fails somewhere inside with a KeyError or the tokenizer's own message")
def render_prompt_unchecked(conversation, tokenizer):
    chat = ref._chat_ids(tokenizer)
    ids = []
    for turn in conversation:
        ids += [chat[turn["role"]], *tokenizer.encode(turn["content"], allowed_special="none"), chat["end"]]
    return ids + [chat["assistant"]]


@mutant("finetune.render_prompt", "test_render_refuses_a_tokenizer_without_the_chat_tokens",
        why="looks the chat tokens up with .get: a missing one becomes None in the ids")
def render_prompt_with_get(conversation, tokenizer):
    turns = ref._turns(conversation)
    get = tokenizer.special_tokens.get
    ids = []
    for role, content in turns:
        ids += [get(f"<|{role}|>"), *tokenizer.encode(content, allowed_special="none"), get("<|end|>")]
    return ids + [get("<|assistant|>")]


@mutant("finetune.render_prompt", "test_the_prompt_is_the_rendered_conversation_up_to_the_reply",
        why="the prompt ends with the conversation: no <|assistant|> to start the reply")
def render_prompt_without_the_assistant_token(conversation, tokenizer):
    return ref.render_prompt(conversation, tokenizer)[:-1]


@mutant("finetune.render_prompt", "test_the_prompt_is_the_rendered_conversation_up_to_the_reply",
        "test_chat_tokens_typed_in_content_stay_text",
        why="the prompt encodes content with special tokens allowed")
def render_prompt_allowing_specials(conversation, tokenizer):
    chat = ref._chat_ids(tokenizer)
    ids = []
    for role, content in ref._turns(conversation):
        ids += [chat[role], *tokenizer.encode(content), chat["end"]]
    return ids + [chat["assistant"]]


@mutant("finetune.chat", "test_a_model_fine_tuned_on_an_answer_gives_it_and_stops_at_end",
        why="no stop token: the reply runs on past <|end|> to max_new_tokens")
def chat_without_stop(model, conversation, tokenizer, max_new_tokens, temperature=0.0, generator=None):
    tokens = ref.generate(model, ref.render_prompt(conversation, tokenizer), max_new_tokens,
                          temperature=temperature, generator=generator)
    return tokenizer.decode(list(tokens))


@mutant("finetune.chat", "test_chat_samples_with_the_temperature_and_generator_it_is_given",
        why="always greedy: temperature is ignored")
def chat_always_greedy(model, conversation, tokenizer, max_new_tokens, temperature=0.0, generator=None):
    return ref.chat(model, conversation, tokenizer, max_new_tokens, temperature=0.0, generator=generator)


@mutant("finetune.chat", "test_chat_samples_with_the_temperature_and_generator_it_is_given",
        why="samples from the global random state, not the generator")
def chat_ignoring_the_generator(model, conversation, tokenizer, max_new_tokens, temperature=0.0, generator=None):
    return ref.chat(model, conversation, tokenizer, max_new_tokens, temperature=temperature)


# ------------------------------------------------------------------------------------------------ the loss


def _nll(logits, targets, mask):
    mask = mask.bool()
    log_probabilities = torch.log_softmax(logits.float() if logits.dtype == torch.bfloat16 else logits, -1)
    return -log_probabilities.gather(-1, torch.where(mask, targets, 0)[..., None]).squeeze(-1), mask


@mutant("finetune.sft_loss", "test_sft_loss_is_the_cross_entropy_summed_over_masked_positions_over_the_count",
        why="the mean over every position: the masked-out terms are 0 but still counted")
def sft_loss_over_all_positions(logits, targets, mask, num_loss_tokens=None):
    nll, mask = _nll(logits, targets, mask)
    return torch.where(mask, nll, 0.0).sum() / (mask.numel() if num_loss_tokens is None else num_loss_tokens)


@mutant("finetune.sft_loss", "test_sft_loss_is_the_cross_entropy_summed_over_masked_positions_over_the_count",
        "test_accumulated_micro_batches_with_unequal_loss_tokens_equal_one_batch",
        why="num_loss_tokens ignored: accumulation adds up per-micro-batch means")
def sft_loss_ignoring_num_loss_tokens(logits, targets, mask, num_loss_tokens=None):
    return ref.sft_loss(logits, targets, mask)


@mutant("finetune.sft_loss", "test_accumulated_micro_batches_with_unequal_loss_tokens_equal_one_batch",
        why="mean of the micro-batch means: each micro-batch's mean divided by the number of micro-batches, guessed "
            "from num_loss_tokens / its own count")
def sft_loss_mean_of_means(logits, targets, mask, num_loss_tokens=None):
    count = int(mask.bool().sum())
    if num_loss_tokens is None or count == 0:
        return ref.sft_loss(logits, targets, mask, num_loss_tokens)
    batches = round(num_loss_tokens / count)
    return ref.sft_loss(logits, targets, mask) / max(batches, 1)


@mutant("finetune.sft_loss", "test_sft_loss_refuses_to_divide_by_nothing",
        why="no checks: an all-zero mask gives NaN (0/0), a bad shape fails inside")
def sft_loss_unchecked(logits, targets, mask, num_loss_tokens=None):
    nll, mask = _nll(logits, targets.clamp(0, logits.shape[-1] - 1), mask)
    total = mask.sum() if num_loss_tokens is None else num_loss_tokens
    return torch.where(mask, nll, 0.0).sum() / total


@mutant("finetune.sft_loss", "test_sft_loss_of_bfloat16_logits_is_computed_in_float32",
        why="the loss computed in the logits' bfloat16")
def sft_loss_in_bfloat16(logits, targets, mask, num_loss_tokens=None):
    mask = mask.bool()
    nll = -torch.log_softmax(logits, -1).gather(-1, torch.where(mask, targets, 0)[..., None]).squeeze(-1)
    total = int(mask.sum()) if num_loss_tokens is None else num_loss_tokens
    return torch.where(mask, nll, 0.0).sum() / total


# ------------------------------------------------------------------------------------------------ packing


@mutant("finetune.pack", "test_pack_lays_documents_in_order_with_next_token_targets",
        why="the loss mask of the position itself, not of the token it predicts")
def pack_mask_not_shifted(examples, context_length, pad_id):
    ids, targets, loss_mask, document_ids = ref.pack(examples, context_length, pad_id)
    own = torch.zeros_like(loss_mask)
    for r in range(ids.shape[0]):
        start = 0
        for d in range(int(document_ids[r].max()) + 1):
            length = int((document_ids[r] == d).sum())
            own[r, start:start + length - 1] = loss_mask[r, start + 1:start + length]  # shifted back by one
            start += length
    return ids, targets, torch.where(targets != -100, own, 0), document_ids


@mutant("finetune.pack", "test_pack_lays_documents_in_order_with_next_token_targets",
        why="targets are the next token of the row, across document boundaries")
def pack_targets_across_documents(examples, context_length, pad_id):
    ids, _, loss_mask, document_ids = ref.pack(examples, context_length, pad_id)
    shifted = torch.full_like(ids, -100)
    shifted[:, :-1] = ids[:, 1:]
    shifted[document_ids == -1] = -100
    return ids, shifted, loss_mask, document_ids


@mutant("finetune.pack", "test_pack_lays_documents_in_order_with_next_token_targets",
        "test_packed_documents_see_only_themselves",
        why="one document id per row: attention crosses from one conversation into the next")
def pack_one_document_per_row_id(examples, context_length, pad_id):
    ids, targets, loss_mask, document_ids = ref.pack(examples, context_length, pad_id)
    return ids, targets, loss_mask, torch.where(document_ids >= 0, 0, -1)


@mutant("finetune.pack", "test_pack_lays_documents_in_order_with_next_token_targets",
        why="a row per document: padding instead of packing")
def pack_a_row_per_document(examples, context_length, pad_id):
    parts = [ref.pack([example], context_length, pad_id) for example in examples]
    return tuple(torch.cat([part[i] for part in parts]) for i in range(4))


@mutant("finetune.pack", "test_pack_refuses_documents_it_cannot_place",
        why="a document longer than the context is cut to fit, losing its end (and the assistant's answer)")
def pack_truncating(examples, context_length, pad_id):
    examples = [(list(ids)[:context_length], list(mask)[:context_length]) for ids, mask in examples]
    examples = [(ids or [pad_id], mask or [0]) for ids, mask in examples]
    return ref.pack(examples, max(context_length, 1), pad_id)


def _packed_forward_with(mask_documents=True, restore=True, need_attend=True):
    def packed_forward(model, ids, document_ids):
        if ids.shape != document_ids.shape:
            raise ValueError(f"ids {tuple(ids.shape)} and document_ids {tuple(document_ids.shape)} differ")
        length = ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        same = document_ids[:, :, None] == document_ids[:, None, :]
        mask = ((same & causal) if mask_documents else causal.expand_as(same))[:, None]
        modules = [m for m in model.modules() if callable(getattr(m, "attend", None))]
        if need_attend and not modules:
            raise ValueError("no attention module with an attend")
        originals = [m.attend for m in modules]

        def masked(attend):
            return lambda q, k, v, is_causal=False: attend(q, k, v, mask=mask, is_causal=is_causal)

        for module, attend in zip(modules, originals):
            module.attend = masked(attend)
        out = model(ids)
        if restore:
            for module, attend in zip(modules, originals):
                module.attend = attend
        return out

    return packed_forward


mutant("finetune.packed_forward", "test_packed_documents_see_only_themselves",
       why="causal attention only: a document sees the documents before it in the row")(
    named("packed_forward_causal_only", _packed_forward_with(mask_documents=False)))
mutant("finetune.packed_forward", "test_packed_documents_see_only_themselves",
       why="the document mask is left on the model's attention modules after the call")(
    named("packed_forward_leaving_the_mask_on", _packed_forward_with(restore=False)))
mutant("finetune.packed_forward", "test_packed_forward_refuses_a_model_without_attention_modules",
       why="a model without attention modules runs unmasked, silently")(
    named("packed_forward_without_attention_modules", _packed_forward_with(need_attend=False)))


# ---------------------------------------------------------------------------------------------------- LoRA


class LoRAWithRandomBAndZeroA(ref.LoRALinear):
    """Initialisations swapped: B random, A zero (the layer no longer starts as its base)."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        with torch.no_grad():
            self.lora_B.weight.uniform_(-1 / rank**0.5, 1 / rank**0.5)
            self.lora_A.weight.zero_()


class LoRAWithBothZero(ref.LoRALinear):
    """A and B both zero: the output is right, but no gradient ever reaches either."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        with torch.no_grad():
            self.lora_A.weight.zero_()


class LoRAWithANormal(ref.LoRALinear):
    """A drawn from normal(0, 1): updates far too large for a wide layer."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        with torch.no_grad():
            self.lora_A.weight.normal_()


class LoRAWithBaseTrainable(ref.LoRALinear):
    """Forgets to freeze the base layer."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__(base, rank, alpha, dropout)
        for parameter in base.parameters():
            parameter.requires_grad_(True)


def _scaled(scale_of):
    class LoRAScaledWrongly(ref.LoRALinear):
        def __init__(self, base, rank, alpha, dropout=0.0):
            super().__init__(base, rank, alpha, dropout)
            self.scale = scale_of(alpha, rank)

    return LoRAScaledWrongly


class LoRAMergingWithoutScale(ref.LoRALinear):
    """merge adds B A without alpha / rank."""

    @torch.no_grad()
    def merge(self):
        self._weight_before_merge = self.base_layer.weight.detach().clone()
        self.base_layer.weight += self.lora_B.weight @ self.lora_A.weight


class LoRAAddingTheUpdateWhenMerged(ref.LoRALinear):
    """forward adds the low-rank update even when it is merged into the weight already."""

    def forward(self, x):
        return self.base_layer(x) + self.scale * self.lora_B(self.lora_A(self.dropout(x)))


class LoRAUnmergingBySubtraction(ref.LoRALinear):
    """unmerge subtracts the update: (W + Δ) − Δ, which rounds."""

    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            raise ValueError("not merged")
        self.base_layer.weight -= self.scale * (self.lora_B.weight @ self.lora_A.weight)
        self._weight_before_merge = None


class LoRAMergingAnyNumberOfTimes(ref.LoRALinear):
    """merge and unmerge without looking at whether the layer is merged."""

    @torch.no_grad()
    def merge(self):
        if self._weight_before_merge is None:
            self._weight_before_merge = self.base_layer.weight.detach().clone()
        self.base_layer.weight += self.scale * (self.lora_B.weight @ self.lora_A.weight)

    @torch.no_grad()
    def unmerge(self):
        if self._weight_before_merge is not None:
            self.base_layer.weight.copy_(self._weight_before_merge)
        self._weight_before_merge = None


class LoRAWithoutChecks(ref.LoRALinear):
    """No rank or dropout check: rank 0 gives an empty adapter, dropout 1 drops everything."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        nn.Module.__init__(self)
        weight = base.weight
        self.base_layer = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.scale = alpha / rank if rank else 0.0
        self.lora_A = ref.Linear(weight.shape[1], int(rank), bias=False) if rank >= 0 else nn.Identity()
        self.lora_B = ref.Linear(int(rank), weight.shape[0], bias=False) if rank >= 0 else nn.Identity()
        self.dropout = nn.Dropout(min(max(dropout, 0.0), 1.0))
        self._weight_before_merge = None


class LoRADroppingTheBasePathToo(ref.LoRALinear):
    """Dropout on the input of the whole layer."""

    def forward(self, x):
        x = self.dropout(x)
        return self.base_layer(x) + self.scale * self.lora_B(self.lora_A(x))


class LoRADroppingInEvalMode(ref.LoRALinear):
    """Dropout with training=True always."""

    def forward(self, x):
        dropped = nn.functional.dropout(x, self.dropout.p, training=True)
        return self.base_layer(x) + self.scale * self.lora_B(self.lora_A(dropped))


class LoRAWithoutDropout(ref.LoRALinear):
    """The dropout argument is accepted and ignored."""

    def forward(self, x):
        return self.base_layer(x) + self.scale * self.lora_B(self.lora_A(x))


class LoRAReturningFloat32(ref.LoRALinear):
    """The update computed in float32 "for accuracy", and the sum returned in float32."""

    def forward(self, x):
        update = x.float() @ self.lora_A.weight.float().T @ self.lora_B.weight.float().T
        return self.base_layer(x).float() + self.scale * update


for replacement, tests, why in [
    (LoRAWithRandomBAndZeroA, ("test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters",),
     "B random and A zero: the layer does not start as its base"),
    (LoRAWithBothZero, ("test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters",),
     "A and B zero: no gradient reaches B"),
    (LoRAWithANormal, ("test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters",),
     "A normal(0, 1) instead of kaiming uniform"),
    (LoRAWithBaseTrainable, ("test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters",),
     "the base layer is not frozen"),
    (named("LoRAScaledByAlpha", _scaled(lambda alpha, rank: alpha)),
     ("test_lora_adds_alpha_over_rank_times_b_a_x_to_the_base",
      "test_merged_lora_computes_what_the_unmerged_layer_computes"),
     "scale alpha instead of alpha / rank"),
    (named("LoRAScaledByRankOverAlpha", _scaled(lambda alpha, rank: rank / alpha)),
     ("test_lora_adds_alpha_over_rank_times_b_a_x_to_the_base",),
     "scale rank / alpha"),
    (LoRAMergingWithoutScale, ("test_merged_lora_computes_what_the_unmerged_layer_computes",),
     "merge adds B A unscaled"),
    (LoRAAddingTheUpdateWhenMerged, ("test_merged_lora_computes_what_the_unmerged_layer_computes",),
     "the update counted twice once merged"),
    (LoRAUnmergingBySubtraction, ("test_unmerge_gives_back_the_base_weight_bit_for_bit",),
     "unmerge subtracts the update, which is not exact"),
    (LoRAMergingAnyNumberOfTimes, ("test_merging_twice_or_unmerging_an_unmerged_layer_is_refused",),
     "merging twice adds the update twice"),
    (LoRAWithoutChecks, ("test_lora_rejects_a_rank_that_is_not_positive_and_a_dropout_outside_0_1",),
     "no check of rank or dropout"),
    (LoRADroppingTheBasePathToo, ("test_lora_dropout_drops_inputs_of_the_low_rank_path_in_training_only",),
     "dropout applied to the base path too"),
    (LoRADroppingInEvalMode, ("test_lora_dropout_drops_inputs_of_the_low_rank_path_in_training_only",),
     "dropout also in eval mode"),
    (LoRAWithoutDropout, ("test_lora_dropout_drops_inputs_of_the_low_rank_path_in_training_only",),
     "dropout ignored"),
    (LoRAReturningFloat32, ("test_lora_layer_in_bfloat16_matches_float64",),
     "a bfloat16 layer that returns float32"),
]:
    mutant("finetune.LoRALinear", *tests, why=why)(replacement)


# ------------------------------------------------------------------------------------------------ LoRA on a model


def _apply_with(match=None, freeze="all", order=None, check_first=True):
    def apply_lora(model, targets=("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.0):
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        matching = match or (lambda name, t: name == t or name.endswith("." + t))
        chosen = [(name, m) for name, m in model.named_modules()
                  if isinstance(m, (ref.Linear, nn.Linear)) and any(matching(name, t) for t in targets)]
        if not check_first and freeze == "all":
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        if not chosen:
            raise ValueError(f"no linear layer matches {list(targets)}")
        if order is not None:
            chosen = order(chosen)
        wrapped = [(name, ref.LoRALinear(m, rank, alpha, dropout)) for name, m in chosen]
        if check_first and freeze == "all":
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        for name, lora in wrapped:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, lora)
            lora.lora_A.weight.requires_grad_(True)
            lora.lora_B.weight.requires_grad_(True)
        return [name for name, _ in wrapped]

    return apply_lora


mutant("finetune.apply_lora", "test_apply_lora_wraps_exactly_the_targeted_linear_layers_and_freezes_the_rest",
       "test_a_trained_lora_model_merges_into_the_same_function_with_the_base_untouched",
       why="only the wrapped layers are frozen: embeddings, norms and the head still train")(
    named("apply_lora_freezing_only_the_wrapped_layers", _apply_with(freeze="wrapped only")))
mutant("finetune.apply_lora", "test_apply_lora_wraps_exactly_the_targeted_linear_layers_and_freezes_the_rest",
       why="wraps only the first layer that matches")(
    named("apply_lora_wrapping_only_the_first_match", _apply_with(order=lambda chosen: chosen[:1])))
mutant("finetune.apply_lora", "test_apply_lora_wraps_exactly_the_targeted_linear_layers_and_freezes_the_rest",
       why="returns the names sorted, not in model order")(
    named("apply_lora_returning_sorted_names",
          _apply_with(order=lambda chosen: sorted(chosen, key=lambda item: item[0]))))
mutant("finetune.apply_lora", "test_apply_lora_refuses_targets_that_match_no_linear_layer_and_changes_nothing",
       why="a plain endswith: 'proj' wraps every projection")(
    named("apply_lora_with_a_plain_endswith", _apply_with(match=lambda name, t: name.endswith(t))))
mutant("finetune.apply_lora", "test_apply_lora_refuses_targets_that_match_no_linear_layer_and_changes_nothing",
       why="freezes the model before checking the targets: a refused call leaves it frozen; the error names nothing")(
    named("apply_lora_freezing_before_checking", _apply_with(check_first=False)))


@mutant("finetune.merge_lora", "test_a_trained_lora_model_merges_into_the_same_function_with_the_base_untouched",
        why="puts the base layers back without merging: the training is lost")
def merge_lora_forgetting_the_update(model):
    names = [name for name, m in model.named_modules() if isinstance(m, ref.LoRALinear)]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, model.get_submodule(name).base_layer)
    return names


@mutant("finetune.merge_lora", "test_a_trained_lora_model_merges_into_the_same_function_with_the_base_untouched",
        why="merges in place but leaves the LoRA layers there: the keys are not the plain model's")
def merge_lora_keeping_the_wrappers(model):
    names = [name for name, m in model.named_modules() if isinstance(m, ref.LoRALinear)]
    for name in names:
        model.get_submodule(name).merge()
    return names


@mutant("finetune.lora_state_dict", "test_lora_state_dict_holds_only_the_adapters_and_round_trips_through_a_file",
        why="the whole state dict: gigabytes of frozen weights saved with every adapter")
def lora_state_dict_of_everything(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@mutant("finetune.lora_state_dict", "test_lora_state_dict_holds_only_the_adapters_and_round_trips_through_a_file",
        why="returns the parameters themselves: training on changes what was saved")
def lora_state_dict_by_reference(model):
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


@mutant("finetune.load_lora", "test_lora_state_dict_holds_only_the_adapters_and_round_trips_through_a_file",
        why="load_state_dict(strict=False) with keys it does not check: nothing is loaded into the model")
def load_lora_into_the_wrong_names(model, state_dict):
    model.load_state_dict({k.replace(".lora_", ".lora."): v for k, v in state_dict.items()}, strict=False)


@mutant("finetune.load_lora", "test_load_lora_refuses_adapters_that_do_not_fit_and_changes_nothing",
        why="loads whatever fits and skips the rest, silently")
def load_lora_lenient(model, state_dict):
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in state_dict.items():
            if key in parameters and parameters[key].shape == value.shape:
                parameters[key].copy_(value)
