"""Chapter 11 — finetune: chat rendering with a loss mask, the SFT loss, packing, and LoRA.

What is pinned: a rendered conversation trains on exactly the assistant's tokens and the end of each assistant turn;
bad conversations are refused by name instead of training on nothing; the SFT loss is the cross-entropy over the
masked positions, and micro-batches with unequal token counts accumulate to one batch; packed documents do not see
each other; a fresh LoRA layer is its base layer, only the adapters train, merging changes nothing and unmerging
gives back the weight bit for bit; adapters save and load on their own; a model fine-tuned on one answer gives it
and stops at <|end|>.

The tokenizer is trained with the implementation's own `train_bpe` (once per module), the models are its own
`Transformer`s, small and in float64 where values are compared.
"""

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from .checks import assert_rejects
from .strategies import tensors
from .tolerances import assert_close

CHAT = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
ROLES = ("system", "user", "assistant")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Seeds from a short range: a failing example shrinks in a few steps.
seeds = st.integers(0, 255)

# ------------------------------------------------------------------------------------------------ helpers

_TOKENIZERS: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _tokenizers_built_afresh():
    """Tokenizers built from the implementation live for one run of this module."""
    _TOKENIZERS.clear()
    yield
    _TOKENIZERS.clear()


def corpus() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[name][:1500] for name in sorted(topics)[:4])


def chat_tokenizer(impl, special_tokens=CHAT):
    """A byte-level BPE tokenizer of the implementation, with the chat tokens (or `special_tokens`) as specials."""
    key = (impl.package, tuple(special_tokens))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = impl.tokenizer.train_bpe(corpus(), 256 + len(special_tokens) + 40, list(special_tokens))
    return _TOKENIZERS[key]


def special(tokenizer, token: str) -> int:
    return tokenizer.special_tokens[token]


def expected_render(tokenizer, conversation) -> tuple[list[int], list[int]]:
    """The definition: each turn is <|role|> content <|end|>; the mask is 1 on assistant content and its <|end|>."""
    ids, mask = [], []
    for turn in conversation:
        content = tokenizer.encode(turn["content"], allowed_special="none")
        learned = int(turn["role"] == "assistant")
        ids += [special(tokenizer, f"<|{turn['role']}|>"), *content, special(tokenizer, "<|end|>")]
        mask += [0] + [learned] * len(content) + [learned]
    return ids, mask


def tiny_model(impl, vocab, seed=0, kernels=False, n_layers=1, dtype=torch.float64, max_seq_len=64):
    """A small Transformer of the implementation with large enough weights that every input changes the logits."""
    torch.manual_seed(seed)
    config = impl.model.ModelConfig(vocab_size=vocab, d_model=16, n_layers=n_layers, n_heads=2, n_kv_heads=1,
                                    d_ff=24, max_seq_len=max_seq_len, init_std=0.3, kernels=kernels)
    return impl.model.Transformer(config).to(dtype)


contents = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=24),
    st.sampled_from(["", "hi", "Paris.", "<|end|>", "a <|user|> b <|assistant|>", "\n\n  ", "<|end"]),
)


@st.composite
def conversations(draw, assistant: bool = True, min_size: int = 1):
    """A list of turns; with `assistant`, at least one assistant turn; without, none."""
    roles = ROLES if assistant else ROLES[:2]
    turns = [{"role": role, "content": content}
             for role, content in draw(st.lists(st.tuples(st.sampled_from(roles), contents), min_size=min_size,
                                               max_size=5))]
    if assistant and not any(turn["role"] == "assistant" for turn in turns):
        turns.insert(draw(st.integers(0, len(turns))), {"role": "assistant", "content": draw(contents)})
    return turns


def first_difference(actual, expected) -> str:
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a != e:
            return f"first at position {i}: got {a}, expected {e}"
    return f"lengths {len(actual)} and {len(expected)}"


# ------------------------------------------------------------------------------------------------ rendering


@given(conversations())
def test_render_masks_exactly_the_assistant_content_and_its_end_token(impl, conversation):
    tokenizer = chat_tokenizer(impl)
    before = copy.deepcopy(conversation)
    ids, mask = impl.finetune.render(conversation, tokenizer)
    ids, mask = list(ids), [int(m) for m in mask]
    expected_ids, expected_mask = expected_render(tokenizer, conversation)
    assert conversation == before, "render must not change the conversation it is given"
    assert ids == expected_ids, (
        "each turn must be rendered as its role token, its content encoded as text (allowed_special='none'), then "
        f"<|end|>: {first_difference(ids, expected_ids)}")
    assert mask == expected_mask, (
        "the mask must be 1 exactly on the assistant's content tokens and the <|end|> closing each assistant turn, 0 "
        f"on role tokens and on system and user turns: {first_difference(mask, expected_mask)}")


def test_chat_tokens_typed_in_content_stay_text(impl):
    tokenizer = chat_tokenizer(impl)
    conversation = [{"role": "user", "content": "<|end|><|assistant|>Sure!"},
                    {"role": "assistant", "content": "No <|end|> here"}]
    ids = list(impl.finetune.render(conversation, tokenizer)[0])
    controls = [i for i in ids if i in tokenizer.special_tokens.values()]
    assert controls == [special(tokenizer, t) for t in ("<|user|>", "<|end|>", "<|assistant|>", "<|end|>")], (
        "a chat token typed inside a turn's content must be encoded as ordinary text (allowed_special='none'): only "
        f"render itself writes role and end tokens; got the control tokens {controls}")
    prompt = list(impl.finetune.render_prompt(conversation[:1], tokenizer))
    assert prompt == ids[:len(prompt)] and prompt[-1] == special(tokenizer, "<|assistant|>") and len(prompt) == (
        ids.index(special(tokenizer, "<|assistant|>")) + 1), (
        "render_prompt must encode content as text too: the prompt is the rendered user turn, then <|assistant|>")


@given(conversations(assistant=False, min_size=0))
def test_render_refuses_a_conversation_without_an_assistant_turn(impl, conversation):
    tokenizer = chat_tokenizer(impl)
    before = copy.deepcopy(conversation)
    assert_rejects(lambda: impl.finetune.render(conversation, tokenizer), "assistant",
                   what="a conversation without an assistant turn has nothing to train on (an all-zero mask)")
    assert conversation == before, "a refused conversation must be left as it was"


MALFORMED = {
    "an unknown role": ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], ValueError,
                        ("tool", 0)),
    "a turn without content": ([{"role": "user", "content": "x"}, {"role": "assistant"}], ValueError,
                               ("content", 1)),
    "a turn without a role": ([{"content": "x"}, {"role": "assistant", "content": "y"}], ValueError, ("role", 0)),
    "content that is not text": ([{"role": "user", "content": "x"}, {"role": "assistant", "content": 42}],
                                 TypeError, ("int", 1)),
    "a turn that is not a dict": (["hello", {"role": "assistant", "content": "y"}], TypeError, ("str", 0)),
    "a string for a conversation": ("assistant: hello", TypeError, ("str",)),
    "bytes for a conversation": (b"assistant: hello", TypeError, ("bytes",)),
    "one turn for a conversation": ({"role": "assistant", "content": "y"}, TypeError, ("dict",)),
    "a number for a conversation": (7, TypeError, ("int",)),
}


@pytest.mark.parametrize("function", ["render", "render_prompt"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_render_refuses_malformed_turns_by_name(impl, function, case):
    tokenizer = chat_tokenizer(impl)
    conversation, error, fragments = MALFORMED[case]
    before = copy.deepcopy(conversation)
    assert_rejects(lambda: getattr(impl.finetune, function)(conversation, tokenizer), *fragments, error=error,
                   what=f"{function} of a conversation with {case} (the error names what and which turn)")
    assert conversation == before, "a refused conversation must be left as it was"


class BytesTokenizer:
    """A tokenizer without special tokens: one id per UTF-8 byte."""

    def encode(self, text, allowed_special="all"):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("function", ["render", "render_prompt"])
@pytest.mark.parametrize("lacking", ["<|end|>", "every special token"])
def test_render_refuses_a_tokenizer_without_the_chat_tokens(impl, function, lacking):
    if lacking == "<|end|>":
        tokenizer = chat_tokenizer(impl, special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"))
    else:
        tokenizer = BytesTokenizer()
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert_rejects(lambda: getattr(impl.finetune, function)(conversation, tokenizer), "<|end|>",
                   what=f"{function} with a tokenizer that lacks {lacking} (the error names the missing chat token)")


@given(conversations(min_size=0), contents)
def test_the_prompt_is_the_rendered_conversation_up_to_the_reply(impl, conversation, reply):
    tokenizer = chat_tokenizer(impl)
    prompt = list(impl.finetune.render_prompt(conversation, tokenizer))
    ids, _ = impl.finetune.render(conversation + [{"role": "assistant", "content": reply}], tokenizer)
    reply_ids = tokenizer.encode(reply, allowed_special="none")
    assert list(ids) == prompt + reply_ids + [special(tokenizer, "<|end|>")], (
        "render_prompt(conversation) must be the rendered conversation followed by <|assistant|>: the ids a model "
        "continues with the reply and <|end|>")


def sft_steps(impl, model, conversation, tokenizer, steps, lr):
    """Train `model` on one conversation with the SFT loss: Adam, full batch."""
    ids, mask = impl.finetune.render(conversation, tokenizer)
    ids, mask = torch.tensor([list(ids)]), torch.tensor([[int(m) for m in mask]])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = impl.finetune.sft_loss(model(ids[:, :-1]), ids[:, 1:], mask[:, 1:])
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def test_a_model_fine_tuned_on_an_answer_gives_it_and_stops_at_end(impl):
    tokenizer = chat_tokenizer(impl)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    conversation = question + [{"role": "assistant", "content": "Paris, of course."}]
    model = tiny_model(impl, len(tokenizer.vocab), seed=1, dtype=torch.float32)
    loss = sft_steps(impl, model, conversation, tokenizer, steps=150, lr=0.01)
    reply = impl.finetune.chat(model, question, tokenizer, 30)
    assert reply == "Paris, of course.", (
        f"after SFT on one conversation (final loss {loss:.3g}) the greedy reply must be its answer, without the "
        f"<|end|> that stops it: got {reply!r} (chat generates from render_prompt with <|end|> as the stop token; "
        "the model learns to stop only if the mask covers the <|end|> of the assistant turn)")


@given(conversations(min_size=0), seeds, st.sampled_from([0.7, 1.0, 2.0]))
def test_chat_samples_with_the_temperature_and_generator_it_is_given(impl, conversation, seed, temperature):
    tokenizer = chat_tokenizer(impl)
    model = tiny_model(impl, len(tokenizer.vocab), seed=seed % 4, max_seq_len=256)
    prompt = list(impl.finetune.render_prompt(conversation, tokenizer))
    tokens = list(impl.generate.generate(model, prompt, 6, temperature=temperature,
                                         stop_tokens=[special(tokenizer, "<|end|>")],
                                         generator=torch.Generator().manual_seed(seed)))
    reply = impl.finetune.chat(model, conversation, tokenizer, 6, temperature=temperature,
                               generator=torch.Generator().manual_seed(seed))
    assert reply == tokenizer.decode(tokens), (
        f"chat(temperature={temperature}, generator) must be the decoded tokens generate draws from the prompt with "
        f"that temperature and generator and <|end|> as the stop token: got {reply!r}, expected "
        f"{tokenizer.decode(tokens)!r}")


# ------------------------------------------------------------------------------------------------ the SFT loss


def masked_nll64(logits, targets, mask, count=None) -> torch.Tensor:
    """The definition in float64: Σ_{mask} logsumexp(z) − z[y], over count (default: the mask's ones)."""
    z = logits.double().reshape(-1, logits.shape[-1])
    keep = mask.reshape(-1).bool()
    y = targets.reshape(-1)[keep]
    z = z[keep]
    total = (torch.logsumexp(z, -1) - z.gather(-1, y[:, None]).squeeze(-1)).sum()
    return total / (int(keep.sum()) if count is None else count)


@st.composite
def masked_logits(draw, dtype=torch.float32, max_rows=6):
    """logits (*lead, V), targets (*lead) (IGNORE_INDEX where the mask is 0, sometimes), a 0/1 mask with a 1."""
    lead = tuple(draw(st.lists(st.integers(1, max_rows), min_size=1, max_size=2)))
    vocab = draw(st.integers(1, 12))
    logits = draw(tensors(shape=(*lead, vocab), scale=3.0)).to(dtype)
    generator = torch.Generator().manual_seed(draw(seeds))
    targets = torch.randint(vocab, lead, generator=generator)
    mask = (torch.rand(lead, generator=generator) < draw(st.sampled_from([0.2, 0.6, 1.0]))).long()
    mask.view(-1)[0] = 1
    if draw(st.booleans()):
        targets = torch.where(mask.bool(), targets, -100)  # targets where the mask is 0 are not read
    if draw(st.booleans()):
        mask = mask.bool()
    return logits, targets, mask


@given(masked_logits(), st.sampled_from([None, 0, 5]))
def test_sft_loss_is_the_cross_entropy_summed_over_masked_positions_over_the_count(impl, case, extra):
    logits, targets, mask = case
    count = int(mask.sum())
    total = None if extra is None else count + extra
    loss = impl.finetune.sft_loss(logits, targets, mask, num_loss_tokens=total)
    assert loss.dim() == 0, f"sft_loss must return a scalar, got shape {tuple(loss.shape)}"
    assert_close(loss, masked_nll64(logits, targets, mask, total), "sft_loss must be Σ over positions with mask 1 of "
                 f"−log softmax(logits)[target], divided by num_loss_tokens={total} (by default the mask's {count} "
                 "ones)", dtype=torch.float32, scale=10)


class TinyLM(nn.Module):
    """Embedding + tanh + head, float64: a model with per-position logits, fast to differentiate."""

    def __init__(self, vocab=11, dim=6):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(vocab, dim, generator=generator, dtype=torch.float64))
        self.head = nn.Parameter(torch.randn(vocab, dim, generator=generator, dtype=torch.float64))

    def forward(self, ids):
        return torch.tanh(self.embed[ids]) @ self.head.T


@st.composite
def micro_batches(draw, vocab=11):
    """2 to 4 micro-batches (x, y, mask) of one length, with different numbers of loss tokens (one may have none)."""
    length = draw(st.integers(1, 6))
    generator = torch.Generator().manual_seed(draw(seeds))
    batches = []
    for _ in range(draw(st.integers(2, 4))):
        rows = draw(st.integers(1, 3))
        x, y = torch.randint(vocab, (rows, length), generator=generator), torch.randint(vocab, (rows, length),
                                                                                        generator=generator)
        mask = (torch.rand(rows, length, generator=generator) < draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))).long()
        batches.append((x, y, mask))
    batches[0][2].view(-1)[0] = 1  # some loss token in the step
    return batches


@given(micro_batches())
def test_accumulated_micro_batches_with_unequal_loss_tokens_equal_one_batch(impl, batches):
    total = sum(int(m.sum()) for _, _, m in batches)
    model, whole = TinyLM(), TinyLM()
    summed = 0.0
    for x, y, m in batches:
        loss = impl.finetune.sft_loss(model(x), y, m, num_loss_tokens=total)
        loss.backward()
        summed += float(loss.detach())
    x, y, m = (torch.cat(parts) for parts in zip(*batches))
    one = impl.finetune.sft_loss(whole(x), y, m)
    one.backward()
    counts = [int(m.sum()) for _, _, m in batches]
    assert math.isclose(summed, float(one.detach()), rel_tol=1e-9), (
        f"the losses of micro-batches with {counts} loss tokens, each divided by num_loss_tokens={total}, must add up "
        f"to the loss of their concatenation ({float(one.detach())}), got {summed} (not the mean of per-batch means)")
    for name in ("embed", "head"):
        assert_close(getattr(model, name).grad, getattr(whole, name).grad,
                     f"gradients accumulated over micro-batches with {counts} loss tokens must equal those of one "
                     f"batch: divide each micro-batch's sum by the step's total, {total}")


def test_sft_loss_refuses_to_divide_by_nothing(impl):
    logits, targets = torch.randn(2, 3, 5), torch.randint(5, (2, 3))
    nothing = torch.zeros(2, 3, dtype=torch.long)
    assert_rejects(lambda: impl.finetune.sft_loss(logits, targets, nothing), "loss tokens",
                   what="sft_loss with an all-zero mask has no loss token to average over")
    some = torch.tensor([[1, 0, 1], [0, 0, 1]])
    assert_rejects(lambda: impl.finetune.sft_loss(logits, targets, some, num_loss_tokens=0), 0,
                   what="sft_loss(num_loss_tokens=0) would divide by zero")
    assert_rejects(lambda: impl.finetune.sft_loss(logits, targets, some, num_loss_tokens=2), 2, 3,
                   what="sft_loss(num_loss_tokens=2) of a batch with 3 loss tokens: the total counts every micro-batch")
    assert_rejects(lambda: impl.finetune.sft_loss(logits, targets, some[:, :2]), "(2, 2)",
                   what="sft_loss with a mask of another shape than the targets")
    assert_rejects(lambda: impl.finetune.sft_loss(logits, targets.T, some), "(3, 2)",
                   what="sft_loss with logits that are not targets' shape plus a vocabulary dimension")
    wrong = targets.clone()
    wrong[0, 0] = 5
    assert_rejects(lambda: impl.finetune.sft_loss(logits, wrong, some), 5,
                   what="sft_loss with the target 5 outside the vocabulary 0..4 where the mask is 1")
    wrong[0, 0] = -100
    assert_rejects(lambda: impl.finetune.sft_loss(logits, wrong, some), -100,
                   what="sft_loss with the target -100 where the mask is 1 (a padding target the mask does not hide)")


@given(masked_logits(max_rows=64))
def test_sft_loss_of_bfloat16_logits_is_computed_in_float32(impl, case):
    logits, targets, mask = case
    loss = impl.finetune.sft_loss(logits.to(torch.bfloat16), targets, mask)
    assert loss.dtype in (torch.float32, torch.float64), (
        f"sft_loss of bfloat16 logits must be computed, and returned, in float32 at least; got {loss.dtype}")
    assert_close(loss, masked_nll64(logits.to(torch.bfloat16), targets, mask), "bfloat16 logits are exact in "
                 "float32: sft_loss must upcast them first, and then agrees with the float64 definition",
                 dtype=torch.float32, scale=10)


# ------------------------------------------------------------------------------------------------ packing


@st.composite
def documents(draw, vocab=40, max_length=9):
    """1 to 6 rendered documents (ids, mask), 1 to max_length tokens each."""
    generator = torch.Generator().manual_seed(draw(seeds))
    docs = []
    for length in draw(st.lists(st.integers(1, max_length), min_size=1, max_size=6)):
        ids = torch.randint(vocab, (length,), generator=generator).tolist()
        mask = (torch.rand(length, generator=generator) < 0.5).long().tolist()
        docs.append((ids, mask))
    return docs


def expected_pack(docs, context_length, pad_id):
    """The definition: greedy in order; next token of the same document, else -100; -1 documents on padding."""
    rows, used = [], context_length
    for ids, mask in docs:
        if used + len(ids) > context_length:
            rows.append([])
            used = 0
        rows[-1].append((ids, mask))
        used += len(ids)
    out = {name: [] for name in ("ids", "targets", "loss_mask", "document_ids")}
    for row in rows:
        ids_row, targets, loss, document = [], [], [], []
        for d, (ids, mask) in enumerate(row):
            ids_row += ids
            targets += ids[1:] + [-100]
            loss += mask[1:] + [0]
            document += [d] * len(ids)
        pad = context_length - len(ids_row)
        out["ids"].append(ids_row + [pad_id] * pad)
        out["targets"].append(targets + [-100] * pad)
        out["loss_mask"].append(loss + [0] * pad)
        out["document_ids"].append(document + [-1] * pad)
    return out


@given(documents(), st.integers(9, 20), st.sampled_from([0, 39]))
def test_pack_lays_documents_in_order_with_next_token_targets(impl, docs, context_length, pad_id):
    before = copy.deepcopy(docs)
    packed = impl.finetune.pack(docs, context_length, pad_id)
    assert docs == before, "pack must not change the documents it is given"
    expected = expected_pack(docs, context_length, pad_id)
    rules = {
        "ids": "the documents one after another, a new row only when the next one does not fit, padded with pad_id",
        "targets": "the next token of the same document, -100 at a document's last token and on padding",
        "loss_mask": "the mask of the token each position predicts (the target's), 0 where there is no target",
        "document_ids": "0, 1, 2, ... for the documents of a row, -1 on padding",
    }
    assert len(packed) == 4, f"pack returns (ids, targets, loss_mask, document_ids), got {len(packed)} values"
    for (name, rule), actual in zip(rules.items(), packed):
        want = torch.tensor(expected[name])
        assert tuple(actual.shape) == tuple(want.shape), (
            f"pack's {name} must have shape (rows, context_length) = {tuple(want.shape)}, got {tuple(actual.shape)}")
        assert actual.dtype == torch.int64, f"pack's {name} must be int64, got {actual.dtype}"
        assert torch.equal(actual, want), f"pack's {name} must be {rule}:\n{actual}\nexpected\n{want}"


@pytest.mark.parametrize("kernels", [False, True])
@given(documents(), st.integers(9, 24), seeds)
def test_packed_documents_see_only_themselves(impl, kernels, docs, context_length, seed):
    model = tiny_model(impl, 40, seed=seed % 4, kernels=kernels, n_layers=2)
    ids, targets, loss_mask, document_ids = impl.finetune.pack(docs, context_length, 0)
    plain_before = model(ids)
    alone = [model(torch.tensor([doc]))[0] for doc, _ in docs]
    logits = impl.finetune.packed_forward(model, ids, document_ids)
    assert torch.equal(model(ids), plain_before), (
        "after packed_forward the model must compute as before: give every attention module its own attend back")
    row, start = -1, context_length
    for index, (doc, mask) in enumerate(docs):  # each document where the definition puts it
        if start + len(doc) > context_length:
            row, start = row + 1, 0
        assert_close(logits[row, start:start + len(doc)], alone[index],
                     f"the logits of document {index} packed in row {row} at {start} must equal those of the "
                     f"document alone: attention stops at document boundaries (kernels={kernels})")
        start += len(doc)
    if int(loss_mask.sum()):
        loss = impl.finetune.sft_loss(logits, targets, loss_mask)
        by_document = sum(masked_nll64(logits_alone[:-1], torch.tensor(doc[1:]), torch.tensor(mask[1:]), 1)
                          for logits_alone, (doc, mask) in zip(alone, docs) if len(doc) > 1)
        assert_close(loss, by_document / int(loss_mask.sum()), "the SFT loss of packed rows must be the loss of the "
                     "documents alone, summed over their loss tokens, over the count")


def test_pack_refuses_documents_it_cannot_place(impl):
    fits = ([1, 2, 3], [0, 1, 1])
    assert_rejects(lambda: impl.finetune.pack([fits, (list(range(9)), [1] * 9)], 8, 0), 1, 9, 8,
                   what="pack of a document of 9 tokens (example 1) into rows of 8 (name the example and the sizes)")
    assert_rejects(lambda: impl.finetune.pack([fits, ([], [])], 8, 0), 1,
                   what="pack of an empty document (example 1)")
    assert_rejects(lambda: impl.finetune.pack([([1, 2, 3], [0, 1])], 8, 0), 3, 2,
                   what="pack of a document with 3 ids and 2 mask values")
    assert_rejects(lambda: impl.finetune.pack([fits], 0, 0), 3, 0, what="pack into rows of context_length 0")
    assert_rejects(lambda: impl.finetune.pack([], 8, 0), "no examples", what="pack of no examples at all")


def test_packed_forward_refuses_a_model_without_attention_modules(impl):
    ids, document_ids = torch.tensor([[1, 2, 3]]), torch.tensor([[0, 0, 1]])
    assert_rejects(lambda: impl.finetune.packed_forward(TinyLM(), ids, document_ids), "attend",
                   what="packed_forward of a model with no attention module to give the document mask to (its "
                        "documents would see each other)")
    assert_rejects(lambda: impl.finetune.packed_forward(tiny_model(impl, 11), ids, document_ids[:, :2]), "(1, 2)",
                   what="packed_forward with document_ids of another shape than ids")
    assert_rejects(lambda: impl.finetune.packed_forward(tiny_model(impl, 11), ids[0], document_ids[0]), "(3,)",
                   what="packed_forward of one row without its batch dimension: ids are (batch, length)")


# ---------------------------------------------------------------------------------------------------- LoRA


def linear(impl, kind, in_features, out_features, bias, seed, dtype=torch.float64):
    """A base layer: the implementation's layers.Linear or torch's nn.Linear, with drawn weights."""
    torch.manual_seed(seed)
    layer = (impl.layers.Linear if kind == "layers.Linear" else nn.Linear)(in_features, out_features, bias=bias)
    return layer.to(dtype)


def base64(x, base):
    y = x.double() @ base.weight.double().T
    return y if base.bias is None else y + base.bias.double()


layer_cases = st.tuples(st.sampled_from(["layers.Linear", "nn.Linear"]), st.integers(1, 9), st.integers(1, 9),
                        st.booleans(), st.integers(1, 6), seeds)


@given(layer_cases)
def test_a_new_lora_layer_computes_its_base_layer_and_trains_only_the_adapters(impl, case):
    kind, n_in, n_out, bias, rank, seed = case
    base = linear(impl, kind, 64 * n_in, n_out, bias, seed)
    weight = base.weight.detach().clone()
    lora = impl.finetune.LoRALinear(base, rank, 16.0)
    keys = {"base_layer.weight", "lora_A.weight", "lora_B.weight"} | ({"base_layer.bias"} if bias else set())
    assert set(lora.state_dict()) == keys, f"a LoRALinear's state-dict keys must be {sorted(keys)}, got " \
                                           f"{sorted(lora.state_dict())}"
    a, b = lora.lora_A.weight, lora.lora_B.weight
    assert tuple(a.shape) == (rank, 64 * n_in) and tuple(b.shape) == (n_out, rank), (
        f"lora_A must be (rank, in) = {(rank, 64 * n_in)} and lora_B (out, rank) = {(n_out, rank)}; got "
        f"{tuple(a.shape)} and {tuple(b.shape)}")
    assert a.dtype == weight.dtype and b.dtype == weight.dtype, "the adapters take the base weight's dtype"
    bound = 1 / math.sqrt(64 * n_in)
    assert torch.all(b == 0), "lora_B must start at zero, so that the layer starts as its base layer"
    assert a.abs().max() <= bound and a.std() > bound / 3, (
        f"lora_A must start random, kaiming-uniform as a Linear starts (entries spread over ±1/√in = ±{bound:.3g}), "
        f"got entries up to {float(a.detach().abs().max()):.3g} with std {float(a.detach().std()):.3g}: with A = 0 "
        "B never learns")
    trainable = sorted(name for name, p in lora.named_parameters() if p.requires_grad)
    assert trainable == ["lora_A.weight", "lora_B.weight"], (
        f"only lora_A and lora_B may train; the base layer is frozen; trainable: {trainable}")
    x = torch.randn(5, 64 * n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = lora(x)
    assert torch.equal(out, base(x)), "with B = 0 a LoRA layer must compute exactly its base layer"
    out.square().sum().backward()
    assert base.weight.grad is None and (base.bias is None or base.bias.grad is None), (
        "the base layer must get no gradient")
    assert b.grad is not None and b.grad.abs().sum() > 0, "lora_B must get a gradient from the first step"
    assert torch.equal(base.weight, weight), "wrapping must not change the base weight"
    on_meta = impl.finetune.LoRALinear(linear(impl, kind, n_in, n_out, bias, seed).to("meta"), rank, 16.0)
    devices = {on_meta.lora_A.weight.device.type, on_meta.lora_B.weight.device.type}
    assert devices == {"meta"}, f"the adapters must be made on the base weight's device (meta), got {devices}"


@st.composite
def trained_layers(draw):
    """(the base layer's case, alpha, A, B, x): drawn nonzero A and B, as after some training."""
    kind, n_in, n_out, bias, rank, seed = draw(layer_cases)
    alpha = draw(st.sampled_from([1.0, 8.0, 16.0, 3.5]))
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, n_in, generator=generator, dtype=torch.float64)
    b = torch.randn(n_out, rank, generator=generator, dtype=torch.float64)
    x = torch.randn(draw(st.integers(1, 4)), n_in, generator=generator, dtype=torch.float64)
    return (kind, n_in, n_out, bias, rank, seed), alpha, a, b, x


def lora_with(impl, case, alpha, a, b, dtype=torch.float64, dropout=0.0):
    kind, n_in, n_out, bias, rank, seed = case
    base = linear(impl, kind, n_in, n_out, bias, seed, dtype)
    lora = impl.finetune.LoRALinear(base, rank, alpha, dropout=dropout)
    with torch.no_grad():
        lora.lora_A.weight.copy_(a)
        lora.lora_B.weight.copy_(b)
    return lora, base


@given(trained_layers())
def test_lora_adds_alpha_over_rank_times_b_a_x_to_the_base(impl, drawn):
    case, alpha, a, b, x = drawn
    lora, base = lora_with(impl, case, alpha, a, b)
    rank = case[4]
    expected = base64(x, base) + (alpha / rank) * (x @ a.T @ b.T)
    assert_close(lora(x), expected, f"a LoRA layer of rank {rank} and alpha {alpha} must compute "
                 "base(x) + (alpha / rank) · x Aᵀ Bᵀ")


@given(trained_layers())
def test_merged_lora_computes_what_the_unmerged_layer_computes(impl, drawn):
    case, alpha, a, b, x = drawn
    lora, base = lora_with(impl, case, alpha, a, b)
    unmerged = lora(x).detach()
    weight = base.weight.detach().clone()
    lora.merge()
    rank = case[4]
    assert_close(base.weight, weight + (alpha / rank) * (b @ a), "merge must add (alpha / rank) · B A to the base "
                 "weight")
    assert_close(lora(x), unmerged, "a merged LoRA layer must compute what it computed unmerged (the update is in "
                 "the weight now: do not add it a second time)")
    lora.unmerge()
    assert_close(lora(x), unmerged, "an unmerged layer computes base(x) + (alpha / rank) · x Aᵀ Bᵀ again")


@pytest.mark.parametrize("kind", ["layers.Linear", "nn.Linear"])
def test_unmerge_gives_back_the_base_weight_bit_for_bit(impl, kind):
    for seed in range(4):
        base = linear(impl, kind, 32, 24, True, seed, torch.float32)
        weight = base.weight.detach().clone()
        lora = impl.finetune.LoRALinear(base, 4, 16.0)
        with torch.no_grad():
            lora.lora_B.weight.normal_(0, 0.37)
        lora.merge()
        assert not torch.equal(base.weight, weight), "merge must change the base weight by the update"
        lora.unmerge()
        assert torch.equal(base.weight, weight), (
            "unmerge must give back the weight as it was before merge, bit for bit ((W + Δ) − Δ rounds: keep a copy)")


def test_merging_twice_or_unmerging_an_unmerged_layer_is_refused(impl):
    base = linear(impl, "layers.Linear", 6, 5, False, 0)
    lora = impl.finetune.LoRALinear(base, 2, 4.0)
    with torch.no_grad():
        lora.lora_B.weight.normal_()
    weight = base.weight.detach().clone()
    assert_rejects(lora.unmerge, "merged", what="unmerge of a layer that is not merged")
    assert torch.equal(base.weight, weight), "a refused unmerge must leave the weight as it was"
    lora.merge()
    merged = base.weight.detach().clone()
    assert_rejects(lora.merge, "merged", what="merge of a layer that is merged already (the update would count twice)")
    assert torch.equal(base.weight, merged), "a refused merge must leave the weight as it was"


@pytest.mark.parametrize("rank, dropout, fragment", [(0, 0.0, 0), (-2, 0.0, -2), (2.5, 0.0, 2.5), (True, 0.0, True),
                                                      (2, 1.0, 1.0), (2, -0.1, -0.1)])
def test_lora_rejects_a_rank_that_is_not_positive_and_a_dropout_outside_0_1(impl, rank, dropout, fragment):
    base = linear(impl, "layers.Linear", 4, 3, False, 0)
    assert_rejects(lambda: impl.finetune.LoRALinear(base, rank, 8.0, dropout=dropout), fragment,
                   what=f"LoRALinear(rank={rank}, dropout={dropout}): a rank is a positive integer, dropout in [0, 1)")
    assert all(p.requires_grad for p in base.parameters()), "a refused LoRALinear must not freeze its base layer"


@given(trained_layers(), st.sampled_from([0.1, 0.5, 0.9]), seeds)
def test_lora_dropout_drops_inputs_of_the_low_rank_path_in_training_only(impl, drawn, p, seed):
    case, alpha, a, b, x = drawn
    x = x.repeat(1, 8)
    case = (case[0], case[1] * 8, *case[2:])
    a = a.repeat(1, 8)
    lora, base = lora_with(impl, case, alpha, a, b, dropout=p)
    rank = case[4]
    lora.eval()
    expected = base64(x, base) + (alpha / rank) * (x @ a.T @ b.T)
    assert_close(lora(x), expected, f"in eval mode dropout={p} must do nothing")
    lora.train()
    torch.manual_seed(seed)
    outputs = [lora(x) for _ in range(4)]
    assert any(not torch.allclose(out, expected) for out in outputs), (
        f"in training mode dropout={p} must drop inputs of the low-rank path")
    with torch.no_grad():
        lora.lora_B.weight.zero_()
    assert torch.equal(lora(x), base(x)), (
        f"in training mode dropout={p} applies to the input of lora_A only, never to the base path")


@given(trained_layers())
def test_lora_layer_in_bfloat16_matches_float64(impl, drawn):
    case, alpha, a, b, x = drawn
    lora, base = lora_with(impl, case, alpha, a.to(torch.bfloat16), b.to(torch.bfloat16), dtype=torch.bfloat16)
    x16 = x.to(torch.bfloat16)
    out = lora(x16)
    assert out.dtype == torch.bfloat16, f"a bfloat16 LoRA layer must compute in bfloat16, got {out.dtype}"
    rank = case[4]
    a64, b64 = lora.lora_A.weight.double(), lora.lora_B.weight.double()
    expected = base64(x16, base) + (alpha / rank) * (x16.double() @ a64.T @ b64.T)
    terms = (x16.double().abs() @ base.weight.double().abs().T
             + (alpha / rank) * (x16.double().abs() @ a64.abs().T @ b64.abs().T) + 1)
    assert_close(out / terms, expected / terms, "a bfloat16 LoRA layer must agree with the float64 definition to "
                 "bfloat16's precision, relative to the size of its terms", dtype=torch.bfloat16, scale=4)


# ------------------------------------------------------------------------------------------------ LoRA on a model


def matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


targets_drawn = st.lists(st.sampled_from(PROJECTIONS + ("lm_head",)), min_size=1, max_size=3, unique=True).map(tuple)


@pytest.mark.parametrize("kernels", [False, True])
@given(targets_drawn, st.integers(1, 4), st.sampled_from([2.0, 16.0]), seeds)
def test_apply_lora_wraps_exactly_the_targeted_linear_layers_and_freezes_the_rest(impl, kernels, targets, rank,
                                                                                    alpha, seed):
    model = tiny_model(impl, 23, seed=seed % 4, kernels=kernels, n_layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    linears = [name for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in PROJECTIONS + ("lm_head",)]
    expected = [name for name in linears if matches(name, targets)]
    ids = torch.randint(23, (2, 7), generator=torch.Generator().manual_seed(seed))
    base_logits = model(ids).detach()
    given = targets[0] if len(targets) == 1 and seed % 2 else targets  # one target may be given as a str
    names = list(impl.finetune.apply_lora(model, targets=given, rank=rank, alpha=alpha))
    assert names == expected, f"apply_lora(targets={targets}) must wrap exactly {expected}, in model order; got {names}"
    keys = set()
    for key in before:
        layer = key.rsplit(".", 1)[0]
        keys |= {f"{layer}.base_layer.weight", f"{layer}.lora_A.weight", f"{layer}.lora_B.weight"} \
            if layer in expected else {key}
    assert set(model.state_dict()) == keys, (
        f"the wrapped layers' keys must be <name>.base_layer.weight, .lora_A.weight, .lora_B.weight; unexpected "
        f"{sorted(set(model.state_dict()) - keys)}, missing {sorted(keys - set(model.state_dict()))}")
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    adapters = sorted(f"{layer}.{part}.weight" for layer in expected for part in ("lora_A", "lora_B"))
    assert trainable == adapters, (
        f"after apply_lora only the adapters may train; trainable but frozen by rule: "
        f"{sorted(set(trainable) - set(adapters))}; adapters that do not train: "
        f"{sorted(set(adapters) - set(trainable))}")
    logits = model(ids)
    assert_close(logits, base_logits, f"with B = 0 the model with LoRA must compute the model without "
                 f"(kernels={kernels})")
    logits.square().mean().backward()
    with_grad = sorted(name for name, p in model.named_parameters() if p.grad is not None)
    assert set(with_grad) <= set(adapters), f"frozen parameters must get no gradient, got one: {with_grad}"
    assert any(float(model.get_parameter(f"{layer}.lora_B.weight").grad.abs().sum()) > 0 for layer in expected), (
        f"the adapters of the model must get gradients (kernels={kernels}): the model calls its projections as "
        "modules on both paths")


@pytest.mark.parametrize("targets", [("proj",), ("self_attn",), ("attn.q_proj", "wq")])
def test_apply_lora_refuses_targets_that_match_no_linear_layer_and_changes_nothing(impl, targets):
    model = tiny_model(impl, 11)
    keys = list(model.state_dict())
    assert_rejects(lambda: impl.finetune.apply_lora(model, targets=targets), *targets,
                   "model.layers.0.self_attn.q_proj",
                   what=f"apply_lora(targets={targets}) matches no linear layer by its last name parts: the error "
                        "names the targets and the linear layers there are")
    assert list(model.state_dict()) == keys and all(p.requires_grad for p in model.parameters()), (
        "a refused apply_lora must leave the model as it was: no layer wrapped, nothing frozen")
    assert_rejects(lambda: impl.finetune.apply_lora(model, rank=0), 0, what="apply_lora(rank=0)")
    assert list(model.state_dict()) == keys and all(p.requires_grad for p in model.parameters()), (
        "apply_lora with a bad rank must leave the model as it was: no layer wrapped, nothing frozen")


def random_sft_batch(vocab, seed, rows=2, length=9):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (rows, length), generator=generator)
    mask = (torch.rand(rows, length - 1, generator=generator) < 0.6).long()
    mask[0, 0] = 1
    return ids, mask


def train_adapters(impl, model, vocab, seed, steps=3):
    ids, mask = random_sft_batch(vocab, seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        impl.finetune.sft_loss(model(ids[:, :-1]), ids[:, 1:], mask).backward()
        optimizer.step()
    model.eval()
    return ids


@pytest.mark.parametrize("kernels", [False, True])
@given(targets_drawn, st.sampled_from([0.0, 0.2]), seeds)
def test_a_trained_lora_model_merges_into_the_same_function_with_the_base_untouched(impl, kernels, targets, dropout,
                                                                                      seed):
    model = tiny_model(impl, 23, seed=seed % 4, kernels=kernels)
    original_keys = list(model.state_dict())
    names = list(impl.finetune.apply_lora(model, targets=targets, rank=2, alpha=4.0, dropout=dropout))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    ids = train_adapters(impl, model, 23, seed)
    changed = [k for k, v in model.state_dict().items() if k in frozen and not torch.equal(v, frozen[k])]
    assert not changed, f"training the adapters must leave every other weight as it was, bit for bit: {changed}"
    trained = model(ids).detach()
    model.train()
    assert torch.equal(model(ids), model(ids)) == (dropout == 0), (
        f"apply_lora(dropout={dropout}) must give every adapter that dropout (in training mode, two forward passes "
        "differ exactly when it is positive)")
    model.eval()
    assert not torch.allclose(trained, tiny_model(impl, 23, seed=seed % 4, kernels=kernels)(ids)), (
        "training the adapters must change what the model computes")
    merged = copy.deepcopy(model)
    merged_names = list(impl.finetune.merge_lora(merged))
    assert merged_names == names, f"merge_lora must return the merged layers {names}, got {merged_names}"
    assert list(merged.state_dict()) == original_keys, (
        "after merge_lora the model must have its keys of before apply_lora (plain linear layers)")
    assert_close(merged(ids), trained, f"the merged model must compute what the model with LoRA computes "
                 f"(kernels={kernels})")


def test_lora_state_dict_holds_only_the_adapters_and_round_trips_through_a_file(impl, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model(impl, 23, seed=2)
    names = impl.finetune.apply_lora(model, targets=("q_proj", "down_proj"), rank=3, alpha=6.0)
    ids = train_adapters(impl, model, 23, 5)
    adapters = impl.finetune.lora_state_dict(model)
    expected = sorted(f"{n}.{part}.weight" for n in names for part in ("lora_A", "lora_B"))
    assert sorted(adapters) == expected, f"lora_state_dict must hold the adapters and nothing else: {expected}; got " \
                                         f"{sorted(adapters)}"
    for key, value in adapters.items():
        assert torch.equal(value, model.get_parameter(key)), f"lora_state_dict()[{key!r}] must be the adapter's value"
    snapshot = {k: v.clone() for k, v in adapters.items()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    assert all(torch.equal(adapters[k], snapshot[k]) for k in adapters), (
        "lora_state_dict must return copies: training on must not change what was saved")
    layer = impl.finetune.LoRALinear(nn.Linear(3, 2), 1, 1.0)
    assert sorted(impl.finetune.lora_state_dict(layer)) == ["lora_A.weight", "lora_B.weight"], (
        "lora_state_dict of a LoRALinear itself holds lora_A.weight and lora_B.weight (no leading dot)")
    save_file(adapters, str(tmp_path / "adapters.safetensors"))
    fresh = tiny_model(impl, 23, seed=2)
    torch.manual_seed(99)
    impl.finetune.apply_lora(fresh, targets=("q_proj", "down_proj"), rank=3, alpha=6.0)
    impl.finetune.load_lora(fresh, load_file(str(tmp_path / "adapters.safetensors")))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.sub_(1.0)
    assert_close(fresh(ids), model(ids), "a model given the saved adapters with load_lora must compute what the "
                 "trained model computes")


@pytest.mark.parametrize("fault", ["a missing key", "an unexpected key", "a shape that differs"])
def test_load_lora_refuses_adapters_that_do_not_fit_and_changes_nothing(impl, fault):
    model = tiny_model(impl, 23, seed=1)
    impl.finetune.apply_lora(model, rank=2)
    adapters = {k: torch.ones_like(v) for k, v in impl.finetune.lora_state_dict(model).items()}
    key = "model.layers.0.self_attn.v_proj.lora_B.weight"
    if fault == "a missing key":
        del adapters[key]
    elif fault == "an unexpected key":
        key = "model.layers.0.self_attn.k_proj.lora_A.weight"
        adapters[key] = torch.ones(2, 16)
    else:
        adapters[key] = torch.ones(8, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert_rejects(lambda: impl.finetune.load_lora(model, adapters), key,
                   what=f"load_lora of adapters with {fault} (the error names the key)")
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"a refused load_lora must change nothing; changed: {changed}"
