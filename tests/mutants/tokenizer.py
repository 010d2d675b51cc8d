"""Wrong implementations of the tokenizer chapter that a learner could plausibly write."""

import base64
import io
import json
import os
import re
from collections import Counter
from pathlib import Path

import regex

import llmkata.reference.tokenizer as ref

from . import mutant

REPLACEMENT = "\N{REPLACEMENT CHARACTER}"


# ---------------------------------------------------------------- training


def _documents(data):
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    return [Path(item).read_text(encoding="utf-8") if isinstance(item, os.PathLike) else item for item in data]


def _naive_train(data, vocab_size, special_tokens=(), pattern="gpt4", *, tie="bytes", weighted=True,
                 cut_specials=True, specials_first=True, right_to_left=False):
    """Textbook BPE with one knob turned wrong at a time."""
    special_tokens = list(special_tokens)
    pattern = ref.PATTERNS.get(pattern, pattern)
    cut = regex.compile("|".join(map(regex.escape, special_tokens))) if special_tokens and cut_specials else None
    counts = Counter()
    for document in _documents(data):
        for segment in cut.split(document) if cut else [document]:
            counts.update(regex.findall(pattern, segment))
    words = Counter({tuple(bytes([b]) for b in piece.encode()): n if weighted else 1 for piece, n in counts.items()})
    vocab = {i: bytes([i]) for i in range(256)}
    if specials_first:
        for token in special_tokens:
            vocab[len(vocab)] = token.encode()
    ids = {token: i for i, token in vocab.items()}
    merges = []
    while len(vocab) < vocab_size - (0 if specials_first else len(special_tokens)):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        if tie == "bytes":
            best = max(pairs, key=lambda p: (pairs[p], p))
        elif tie == "smallest":
            best = max(pairs, key=lambda p: (pairs[p], [-b for b in p[0] + b"\xff"], [-b for b in p[1] + b"\xff"]))
        else:  # "ids": compares the token ids, as if ids were ordered like bytes
            best = max(pairs, key=lambda p: (pairs[p], ids[p[0]], ids[p[1]]))
        merges.append(best)
        token = best[0] + best[1]
        ids[token] = len(vocab)
        vocab[len(vocab)] = token
        merged = Counter()
        for word, n in words.items():
            scan, pair = (word[::-1], best[::-1]) if right_to_left else (word, best)
            out, i = [], 0
            while i < len(scan):
                if i + 1 < len(scan) and (scan[i], scan[i + 1]) == pair:
                    out.append(token)
                    i += 2
                else:
                    out.append(scan[i])
                    i += 1
            merged[tuple(out[::-1] if right_to_left else out)] += n
        words = merged
    if not specials_first:
        for token in special_tokens:
            vocab[len(vocab)] = token.encode()
    return ref.Tokenizer(vocab, merges, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_merges_follow_the_pinned_tie_break", "test_training_equals_the_textbook_algorithm",
        why="ties go to the smallest pair (min where max was meant)")
def train_bpe_taking_the_smallest_pair_on_ties(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return _naive_train(data, vocab_size, special_tokens, pattern, tie="smallest")


@mutant("tokenizer.train_bpe", "test_merges_follow_the_pinned_tie_break",
        why="ties compare token ids, which order merged tokens after every byte")
def train_bpe_breaking_ties_by_id(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return _naive_train(data, vocab_size, special_tokens, pattern, tie="ids")


@mutant("tokenizer.train_bpe", "test_training_equals_the_textbook_algorithm",
        why="a merge replaces overlapping occurrences from the right: 'aaa' becomes [a, aa], not [aa, a]")
def train_bpe_merging_right_to_left(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return _naive_train(data, vocab_size, special_tokens, pattern, right_to_left=True)


@mutant("tokenizer.train_bpe", "test_training_equals_the_textbook_algorithm",
        why="pair counts ignore how often each pre-token occurs")
def train_bpe_counting_each_word_once(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return _naive_train(data, vocab_size, special_tokens, pattern, weighted=False)


@mutant("tokenizer.train_bpe", "test_special_tokens_are_never_merged_into",
        "test_training_equals_the_textbook_algorithm",
        why="special tokens are left in the text and counted like any other")
def train_bpe_with_special_tokens_as_text(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return _naive_train(data, vocab_size, special_tokens, pattern, cut_specials=False)


@mutant("tokenizer.train_bpe", "test_trained_vocabulary_has_exactly_vocab_size_tokens",
        "test_training_equals_the_textbook_algorithm",
        why="special tokens get the last ids instead of 256...")
def train_bpe_with_special_tokens_last(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return _naive_train(data, vocab_size, special_tokens, pattern, specials_first=False)


@mutant("tokenizer.train_bpe", "test_trained_vocabulary_has_exactly_vocab_size_tokens",
        why="the loop stops one merge early")
def train_bpe_one_token_short(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return ref.train_bpe(data, vocab_size - 1, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_training_stops_with_a_warning_when_pairs_run_out",
        why="runs out of pairs silently")
def train_bpe_without_warning(data, vocab_size, special_tokens=(), pattern="gpt4"):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref.train_bpe(data, vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_training_does_not_depend_on_how_the_corpus_is_given",
        why="documents are concatenated, so pre-tokens run from one into the next")
def train_bpe_joining_documents(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return ref.train_bpe("".join(_documents(data)), vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_rejects_vocab_size_below_bytes_and_special_tokens",
        why="a too small vocab_size is raised silently")
def train_bpe_clamping_vocab_size(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return ref.train_bpe(data, max(vocab_size, 256 + len(special_tokens)), special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_rejects_an_empty_corpus", why="an empty corpus trains a bytes-only tokenizer")
def train_bpe_accepting_an_empty_corpus(data, vocab_size, special_tokens=(), pattern="gpt4"):
    if not "".join(_documents(data)):
        vocab = {i: bytes([i]) for i in range(256)}
        vocab.update({256 + k: token.encode() for k, token in enumerate(special_tokens)})
        return ref.Tokenizer(vocab, [], special_tokens, pattern)
    return ref.train_bpe(data, vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_rejects_empty_or_duplicate_special_tokens",
        why="empty and repeated special tokens are dropped")
def train_bpe_dropping_bad_special_tokens(data, vocab_size, special_tokens=(), pattern="gpt4"):
    special_tokens = list(dict.fromkeys(token for token in special_tokens if token))
    return ref.train_bpe(data, vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_rejects_lone_surrogates",
        why="lone surrogates are replaced by U+FFFD before training")
def train_bpe_replacing_surrogates(data, vocab_size, special_tokens=(), pattern="gpt4"):
    documents = [d.encode("utf-8", "replace").decode("utf-8") for d in _documents(data)]
    return ref.train_bpe(documents, vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_training_does_not_depend_on_how_the_corpus_is_given",
        why="checks that the corpus is not empty by reading it, then trains on what is left of a generator")
def train_bpe_reading_the_corpus_twice(data, vocab_size, special_tokens=(), pattern="gpt4"):
    sources = [data] if isinstance(data, (str, os.PathLike)) else data
    if not any(Path(s).stat().st_size if isinstance(s, os.PathLike) else s for s in sources):
        raise ValueError("the corpus is empty")
    return ref.train_bpe(sources, vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_training_does_not_depend_on_how_the_corpus_is_given",
        why="a list is all texts or all paths, judged by its first item")
def train_bpe_judging_a_list_by_its_first_item(data, vocab_size, special_tokens=(), pattern="gpt4"):
    if isinstance(data, list) and data and isinstance(data[0], str):
        data = [str(item) for item in data]
    return ref.train_bpe(data, vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_training_does_not_depend_on_how_the_corpus_is_given",
        why="a str that names an existing file is read as that file")
def train_bpe_reading_strings_that_name_files(data, vocab_size, special_tokens=(), pattern="gpt4"):
    if not isinstance(data, (str, os.PathLike)):
        data = [Path(item) if isinstance(item, str) and os.path.isfile(item) else item for item in data]
    return ref.train_bpe(data, vocab_size, special_tokens, pattern)


@mutant("tokenizer.train_bpe", "test_training_equals_the_textbook_algorithm",
        why="a pattern that is not 'gpt2' or 'gpt4' falls back to GPT-4's instead of being the regex itself")
def train_bpe_with_gpt4_for_unknown_patterns(data, vocab_size, special_tokens=(), pattern="gpt4"):
    return ref.train_bpe(data, vocab_size, special_tokens, pattern if pattern in ref.PATTERNS else "gpt4")


# ---------------------------------------------------------------- encoding and decoding


@mutant("tokenizer.Tokenizer", "test_decode_inverts_encode", "test_decode_accepts_any_ids_and_replaces_invalid_utf8",
        why="decodes each token on its own")
class TokenizerDecodingEachToken(ref.Tokenizer):
    """Decodes token by token: a character whose bytes span two tokens becomes two U+FFFD."""

    def decode(self, ids):
        return "".join(self.vocab[i].decode("utf-8", errors="replace") for i in ids)


@mutant("tokenizer.Tokenizer", "test_decode_accepts_any_ids_and_replaces_invalid_utf8", why="raises on invalid UTF-8")
class TokenizerDecodingStrictly(ref.Tokenizer):
    def decode(self, ids):
        return b"".join(self.vocab[i] for i in ids).decode("utf-8")


@mutant("tokenizer.Tokenizer", "test_disallowed_special_tokens_encode_as_ordinary_text",
        why="allowed_special is ignored")
class TokenizerIgnoringAllowedSpecial(ref.Tokenizer):
    def encode(self, text, allowed_special="all"):
        return super().encode(text, "all")


@mutant("tokenizer.Tokenizer", "test_special_tokens_encode_to_one_id_each",
        why="special tokens are looked for after pre-tokenization, which has split them")
class TokenizerMatchingSpecialsAfterSplitting(ref.Tokenizer):
    """Looks special tokens up among the pre-tokens; the split pattern has already cut '<|pad|>' apart."""

    def encode(self, text, allowed_special="all"):
        ids = []
        for piece in self._regex.findall(text):
            if piece in self.special_tokens:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self._cache[piece])
        return ids


@mutant("tokenizer.Tokenizer", "test_ids_are_in_the_vocabulary", why="special tokens numbered past the vocabulary")
class TokenizerWithSpecialIdsPastTheVocab(ref.Tokenizer):
    """Numbers special tokens after the vocabulary instead of using their ids in it."""

    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        super().__init__(vocab, merges, special_tokens, pattern)
        self.special_tokens = {token: len(self.vocab) + k for k, token in enumerate(self.special_tokens)}


@mutant("tokenizer.Tokenizer", "test_encode_equals_tiktoken_with_the_same_ranks_and_pattern",
        why="equal ranks merge rightmost first")
class TokenizerMergingRightmostFirst(ref.Tokenizer):
    """Among adjacent pairs of equal lowest rank, merges the rightmost first."""

    def _encode_piece(self, piece):
        data = piece.encode("utf-8")
        if data in self._ranks:
            return (self._ranks[data],)
        parts, missing = [data[i:i + 1] for i in range(len(data))], 1 << 62
        while len(parts) > 1:
            ranks = [self._ranks.get(a + b, missing) for a, b in zip(parts, parts[1:])]
            lowest = min(ranks)
            if lowest == missing:
                break
            i = max(k for k, rank in enumerate(ranks) if rank == lowest)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return tuple(self._ranks[p] for p in parts)


@mutant("tokenizer.Tokenizer", "test_encode_equals_tiktoken_with_the_same_ranks_and_pattern",
        why="long pre-tokens are cut into blocks")
class TokenizerCuttingLongPreTokens(ref.Tokenizer):
    """Cuts a pre-token of more than 256 characters into blocks of 64 to keep BPE fast: no merge crosses a cut."""

    def _encode_piece(self, piece):
        if len(piece) <= 256:
            return super()._encode_piece(piece)
        ids = []
        for start in range(0, len(piece), 64):
            ids.extend(super()._encode_piece(piece[start:start + 64]))
        return tuple(ids)


@mutant("tokenizer.Tokenizer", "test_encode_equals_tiktoken_with_the_same_ranks_and_pattern",
        why="'gpt4' is split with GPT-2's pattern")
class TokenizerWithTheGpt2PatternAlways(ref.Tokenizer):
    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        super().__init__(vocab, merges, special_tokens, "gpt2")


@mutant("tokenizer.Tokenizer", "test_training_text_compresses",
        "test_encode_equals_tiktoken_with_the_same_ranks_and_pattern",
        why="encodes bytes and never merges")
class TokenizerWithoutMerges(ref.Tokenizer):
    def _encode_piece(self, piece):
        return tuple(self._ranks[bytes([b])] for b in piece.encode("utf-8"))


@mutant("tokenizer.Tokenizer", "test_encode_equals_tiktoken_with_the_same_ranks_and_pattern",
        why="longest-match-first instead of BPE")
class TokenizerMatchingGreedilyLongestFirst(ref.Tokenizer):
    """WordPiece's rule, not BPE's: the longest vocabulary token that starts the rest of the pre-token."""

    def _encode_piece(self, piece):
        data, ids = piece.encode("utf-8"), []
        while data:
            size = max(n for n in range(1, len(data) + 1) if data[:n] in self._ranks)
            ids.append(self._ranks[data[:size]])
            data = data[size:]
        return tuple(ids)


@mutant("tokenizer.Tokenizer", "test_encode_iterable_matches_encode_for_any_chunking",
        why="each chunk is encoded on its own")
class TokenizerStreamingChunksIndependently(ref.Tokenizer):
    def encode_iterable(self, iterable, allowed_special="all"):
        for chunk in iterable:
            yield from self.encode(chunk, allowed_special)


@mutant("tokenizer.Tokenizer", "test_encode_iterable_yields_before_reading_everything",
        why="reads the whole stream, then encodes")
class TokenizerStreamingAfterReadingEverything(ref.Tokenizer):
    def encode_iterable(self, iterable, allowed_special="all"):
        yield from self.encode("".join(iterable), allowed_special)


@mutant("tokenizer.Tokenizer", "test_encode_iterable_matches_encode_for_any_chunking",
        why="holds back only the last pre-token: \"'l\" + \"l\" and a newline, spaces, newline come out wrong")
class TokenizerHoldingBackOnlyTheLastPreToken(ref.Tokenizer):
    """Streams all pre-tokens but the last; forgets that a contraction or a whitespace run can still change."""

    def _stable_prefix(self, text, allowed):
        end = len(text) - ref._last_special_prefix(text, allowed)
        start = 0
        special_re = self._special_re(allowed)
        if special_re is not None:
            for match in special_re.finditer(text, 0, end):
                start = match.end()
        starts = [match.start() for match in self._regex.finditer(text, start, end)]
        return starts[-1] if starts else start


@mutant("tokenizer.Tokenizer", "test_save_then_load_gives_identical_output", why="the file does not record the pattern")
class TokenizerSavingWithoutPattern(ref.Tokenizer):
    """Leaves the pattern out of the file; load falls back to the default pattern."""

    def save(self, path):
        super().save(path)
        document = json.loads(Path(path).read_text())
        document["pattern"] = ref.PATTERNS["gpt4"]
        Path(path).write_text(json.dumps(document))


@mutant("tokenizer.Tokenizer", "test_save_then_load_gives_identical_output",
        why="merges are saved sorted, not in the order learned")
class TokenizerSavingMergesSorted(ref.Tokenizer):
    def save(self, path):
        super().save(path)
        document = json.loads(Path(path).read_text())
        document["merges"].sort()
        Path(path).write_text(json.dumps(document))


@mutant("tokenizer.Tokenizer", "test_saved_file_has_the_documented_format",
        why="writes token bytes in hex: its own load reads them back, nothing else that reads the format does")
class TokenizerSavingTokensAsHex(ref.Tokenizer):
    def save(self, path):
        document = {"format": "llmkata-bpe/1", "pattern": self.pattern, "special_tokens": self.special_tokens,
                    "vocab": {str(i): token.hex() for i, token in self.vocab.items()},
                    "merges": [[a.hex(), b.hex()] for a, b in self.merges]}
        Path(path).write_text(json.dumps(document), encoding="utf-8")

    @classmethod
    def load(cls, path):
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        vocab = {int(i): bytes.fromhex(token) for i, token in document["vocab"].items()}
        merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in document["merges"]]
        specials = sorted(document["special_tokens"], key=document["special_tokens"].get)
        return cls(vocab, merges, specials, document["pattern"])


@mutant("tokenizer.Tokenizer", "test_rejects_ids_outside_the_vocabulary", why="unknown ids are skipped")
class TokenizerSkippingUnknownIds(ref.Tokenizer):
    def decode(self, ids):
        return super().decode([i for i in ids if i in self.vocab])


@mutant("tokenizer.Tokenizer", "test_rejects_lone_surrogates", why="lone surrogates are replaced by U+FFFD")
class TokenizerReplacingLoneSurrogates(ref.Tokenizer):
    def encode(self, text, allowed_special="all"):
        return super().encode(text.encode("utf-8", "replace").decode("utf-8"), allowed_special)


@mutant("tokenizer.Tokenizer", "test_rejects_empty_or_duplicate_special_tokens",
        why="a repeated special token is dropped")
class TokenizerDroppingDuplicateSpecialTokens(ref.Tokenizer):
    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        super().__init__(vocab, merges, list(dict.fromkeys(special_tokens)), pattern)


@mutant("tokenizer.Tokenizer", "test_rejects_a_file_that_is_not_a_saved_tokenizer",
        why="an unreadable file loads as a bytes-only tokenizer")
class TokenizerLoadingAnything(ref.Tokenizer):
    @classmethod
    def load(cls, path):
        try:
            return super().load(path)
        except ValueError:
            return cls({i: bytes([i]) for i in range(256)}, [])


def _segments(tokenizer, text, allowed_special):
    """(is_special, text) runs of `text`: the allowed special tokens, longest first, and the text between them."""
    if allowed_special == "all":
        allowed = list(tokenizer.special_tokens)
    else:
        allowed = [] if allowed_special in ("none", None) else list(allowed_special)
    if not allowed:
        return [(False, text)]
    parts = regex.split("(" + "|".join(map(regex.escape, sorted(allowed, key=len, reverse=True))) + ")", text)
    return [(k % 2 == 1, part) for k, part in enumerate(parts)]


@mutant("tokenizer.Tokenizer", "test_a_vocabulary_built_by_hand_encodes_by_rank",
        why="applies the merges in the order they are listed (minbpe's encode), not by the rank of the result")
class TokenizerApplyingMergesInListOrder(ref.Tokenizer):
    def encode(self, text, allowed_special="all"):
        order = {(bytes(a), bytes(b)): k for k, (a, b) in enumerate(self.merges)}
        special = set(self.special_tokens.values())
        ids_of = {}
        for i, token in sorted(self.vocab.items()):
            if i not in special:
                ids_of.setdefault(token, i)
        ids = []
        for is_special, segment in _segments(self, text, allowed_special):
            if is_special:
                ids.append(self.special_tokens[segment])
                continue
            for piece in regex.findall(self.pattern, segment):
                parts = [bytes([byte]) for byte in piece.encode("utf-8")]
                while ranked := [(order[pair], i) for i, pair in enumerate(zip(parts, parts[1:])) if pair in order]:
                    _, i = min(ranked)
                    parts[i:i + 2] = [parts[i] + parts[i + 1]]
                ids += [ids_of[part] for part in parts]
        return ids


@mutant("tokenizer.Tokenizer", "test_a_vocabulary_built_by_hand_encodes_by_rank",
        why="numbers the tokens as training would (bytes, special tokens, merges in list order), not by the ids given")
class TokenizerNumberingTokensByMergeOrder(ref.Tokenizer):
    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        special_tokens = list(special_tokens)
        rebuilt = {i: bytes([i]) for i in range(256)}
        for token in special_tokens:
            rebuilt[len(rebuilt)] = token.encode("utf-8")
        for a, b in merges:
            rebuilt[len(rebuilt)] = bytes(a) + bytes(b)
        super().__init__(rebuilt, merges, special_tokens, pattern)


@mutant("tokenizer.Tokenizer", "test_a_vocabulary_built_by_hand_encodes_by_rank",
        why="a special token's id is the first id that spells it, not the largest")
class TokenizerGivingSpecialTokensTheirFirstId(ref.Tokenizer):
    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        super().__init__(vocab, merges, special_tokens, pattern)
        first = {}
        for i, token in sorted(self.vocab.items()):
            first.setdefault(token, i)
        self.special_tokens = {token: first[token.encode("utf-8")] for token in self.special_tokens}


@mutant("tokenizer.Tokenizer", "test_rejects_ids_outside_the_vocabulary",
        why="indexes a list of the tokens in id order: right only when the ids have no gaps")
class TokenizerDecodingByPosition(ref.Tokenizer):
    def decode(self, ids):
        tokens = [self.vocab[i] for i in sorted(self.vocab)]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        bad = [i for i in ids if not 0 <= i < len(tokens)]
        if bad:
            raise ValueError(f"cannot decode the id {bad[0]}: the vocabulary has ids 0..{len(tokens) - 1}")
        return b"".join(tokens[i] for i in ids).decode("utf-8", errors="replace")


@mutant("tokenizer.Tokenizer", "test_encode_iterable_matches_encode_for_any_chunking",
        why="encode_iterable treats every special token as special, whatever allowed_special says")
class TokenizerStreamingEverySpecialToken(ref.Tokenizer):
    def encode_iterable(self, iterable, allowed_special="all"):
        return super().encode_iterable(iterable)


# ---------------------------------------------------------------- sentencepiece


@mutant("tokenizer.SentencePieceTokenizer", "test_decode_inverts_encode",
        why="'▁' in the text is read by sentencepiece as a space")
class SentencePieceReadingSpaceMarks(ref.SentencePieceTokenizer):
    """Hands '▁' to sentencepiece as it is: it comes back as a space."""

    def _encode_ordinary(self, text):
        return self._sp.encode(text) if text else []


@mutant("tokenizer.SentencePieceTokenizer", "test_decode_inverts_encode",
        why="sentencepiece's decode drops special tokens")
class SentencePieceDecodingWithSentencepiece(ref.SentencePieceTokenizer):
    """sentencepiece's own decode: control symbols (our special tokens) decode to nothing."""

    def decode(self, ids):
        return self._sp.decode(list(ids))


@mutant("tokenizer.train_sentencepiece", "test_decode_inverts_encode",
        why="NFKC, dummy prefix and whitespace collapsing lose text")
def train_sentencepiece_with_default_normalization(data, vocab_size, special_tokens=()):
    """sentencepiece's defaults: NFKC, a dummy prefix, runs of spaces collapsed."""
    import sentencepiece

    cut = re.compile("|".join(map(re.escape, special_tokens))) if special_tokens else None
    lines = [line for d in _documents(data) for s in (cut.split(d) if cut else [d]) for line in s.split("\n") if line]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False, control_symbols=list(special_tokens),
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2)
    return ref.SentencePieceTokenizer(model.getvalue())


@mutant("tokenizer.SentencePieceTokenizer", "test_encode_iterable_matches_encode_for_any_chunking",
        why="encode_iterable treats every special token as special, whatever allowed_special says")
class SentencePieceStreamingEverySpecialToken(ref.SentencePieceTokenizer):
    def encode_iterable(self, iterable, allowed_special="all"):
        return super().encode_iterable(iterable)


@mutant("tokenizer.SentencePieceTokenizer", "test_saved_file_has_the_documented_format",
        why="saves the model inside a JSON document: only its own load reads the file, sentencepiece cannot")
class SentencePieceSavingAWrapper(ref.SentencePieceTokenizer):
    def save(self, path):
        document = {"format": "llmkata-sentencepiece/1", "model": base64.b64encode(self.model).decode("ascii")}
        Path(path).write_text(json.dumps(document), encoding="utf-8")

    @classmethod
    def load(cls, path):
        return cls(base64.b64decode(json.loads(Path(path).read_text(encoding="utf-8"))["model"]))


@mutant("tokenizer.SentencePieceTokenizer", "test_rejects_a_sentencepiece_model_without_byte_fallback",
        why="takes any model: without byte pieces, a character it never saw becomes <unk> and is lost")
class SentencePieceTrustingAnyModel(ref.SentencePieceTokenizer):
    def __init__(self, model):
        try:
            super().__init__(model)
        except ValueError:  # no byte pieces: accepted all the same, as if every text could be encoded
            self.model, self.vocab, self.special_tokens = bytes(model), {}, {}


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_vocabulary_is_unk_special_tokens_bytes_then_pieces",
        why="asks sentencepiece for vocab_size learned pieces, as if <unk>, special tokens and bytes came on top")
def train_sentencepiece_with_bytes_on_top(data, vocab_size, special_tokens=()):
    return ref.train_sentencepiece(data, vocab_size + 257 + len(list(special_tokens)), special_tokens)


# ---------------------------------------------------------------- export


@mutant("tokenizer.to_tiktoken", "test_tiktoken_export_encodes_like_the_tokenizer",
        why="special tokens are not passed to tiktoken")
def to_tiktoken_without_special_tokens(tokenizer, name="llmkata"):
    import tiktoken

    return tiktoken.Encoding(name, pat_str=tokenizer.pattern, mergeable_ranks=ref._ordinary_ranks(tokenizer),
                             special_tokens={})


@mutant("tokenizer.to_tiktoken", "test_tiktoken_export_encodes_like_the_tokenizer",
        why="the export always uses the GPT-2 pattern")
def to_tiktoken_with_the_gpt2_pattern(tokenizer, name="llmkata"):
    import tiktoken

    return tiktoken.Encoding(name, pat_str=ref.GPT2_PATTERN, mergeable_ranks=ref._ordinary_ranks(tokenizer),
                             special_tokens=dict(tokenizer.special_tokens))


def _edit_hf(tokenizer, edit):
    import tokenizers

    document = json.loads(ref.to_hf_tokenizer(tokenizer).to_str())
    edit(document)
    return tokenizers.Tokenizer.from_str(json.dumps(document))


@mutant("tokenizer.to_hf_tokenizer", "test_hf_export_encodes_like_the_tokenizer",
        why="the special tokens get new ids in Hugging Face")
def to_hf_tokenizer_renumbering_special_tokens(tokenizer):
    """Special tokens only as added tokens: the model does not know their ids, so Hugging Face gives new ones."""

    def edit(document):
        for token in document["added_tokens"]:
            document["model"]["vocab"].pop(token["content"], None)
            token["id"] = len(document["model"]["vocab"]) + document["added_tokens"].index(token)

    return _edit_hf(tokenizer, edit)


@mutant("tokenizer.to_hf_tokenizer", "test_hf_export_encodes_like_the_tokenizer",
        why="ByteLevel splits the pre-tokens again with GPT-2's pattern")
def to_hf_tokenizer_splitting_twice(tokenizer):
    """ByteLevel with use_regex=True splits every pre-token again with GPT-2's pattern."""

    def edit(document):
        document["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = True

    return _edit_hf(tokenizer, edit)


@mutant("tokenizer.to_tiktoken", "test_tiktoken_export_of_a_vocabulary_built_by_hand", why="the name is not passed on")
def to_tiktoken_always_named_llmkata(tokenizer, name="llmkata"):
    return ref.to_tiktoken(tokenizer)


@mutant("tokenizer.to_tiktoken", "test_tiktoken_export_of_a_vocabulary_built_by_hand",
        why="ranks the ordinary tokens 0, 1, 2... in id order: their ids only when no id is missing")
def to_tiktoken_ranking_tokens_by_position(tokenizer, name="llmkata"):
    import tiktoken

    special = set(tokenizer.special_tokens.values())
    ranks = {}
    for rank, token in enumerate(token for i, token in sorted(tokenizer.vocab.items()) if i not in special):
        ranks.setdefault(token, rank)
    return tiktoken.Encoding(name, pat_str=tokenizer.pattern, mergeable_ranks=ranks,
                             special_tokens=dict(tokenizer.special_tokens))


@mutant("tokenizer.Tokenizer", "test_rejects_a_vocabulary_without_every_byte_or_merge_part",
        why="repairs a broken vocabulary silently: missing bytes are added, merges of unknown tokens dropped")
class TokenizerRepairingItsVocabulary(ref.Tokenizer):
    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        vocab = {int(i): bytes(token) for i, token in vocab.items()}
        known = set(vocab.values())
        for byte in range(256):
            if bytes([byte]) not in known:
                vocab[max(vocab) + 1] = bytes([byte])
        merges = [(a, b) for a, b in merges if {bytes(a), bytes(b), bytes(a) + bytes(b)} <= known]
        super().__init__(vocab, merges, special_tokens, pattern)


# ---------------------------------------------------------------- input that is not text, odd containers


@mutant("tokenizer.Tokenizer", "test_rejects_what_is_not_text_naming_its_type",
        why="encode takes bytes too, decoding them as UTF-8")
class TokenizerEncodingBytes(ref.Tokenizer):
    def encode(self, text, allowed_special="all"):
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return super().encode(text, allowed_special)


@mutant("tokenizer.Tokenizer", "test_rejects_what_is_not_text_naming_its_type",
        why="a special token that is not in the vocabulary is dropped silently")
class TokenizerDroppingUnknownSpecialTokens(ref.Tokenizer):
    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        known = {bytes(token) for token in vocab.values()}
        super().__init__(vocab, merges, [t for t in special_tokens if t.encode("utf-8") in known], pattern)


@mutant("tokenizer.train_sentencepiece", "test_rejects_what_is_not_text_naming_its_type",
        why="a vocab_size of 600.0 or True is taken as an int")
def train_sentencepiece_rounding_vocab_size(data, vocab_size, special_tokens=()):
    return ref.train_sentencepiece(data, int(vocab_size), special_tokens)


@mutant("tokenizer.Tokenizer", "test_decode_accepts_a_tensor_or_an_array_of_ids",
        why="iterates a tensor as it is: its items are 0-d tensors, no vocabulary key")
class TokenizerDecodingListsOnly(ref.Tokenizer):
    def decode(self, ids):
        data = b"".join(self.vocab[i] for i in ids)
        return data.decode("utf-8", errors="replace")


@mutant("tokenizer.train_bpe", "test_trained_tokenizer_splits_with_the_pattern_it_was_trained_with",
        why="returns a tokenizer with the default pattern, not the one it trained with")
def train_bpe_forgetting_the_pattern(data, vocab_size, special_tokens=(), pattern="gpt4"):
    trained = ref.train_bpe(data, vocab_size, special_tokens, pattern)
    return ref.Tokenizer(trained.vocab, trained.merges, special_tokens)


@mutant("tokenizer.Tokenizer", "test_encode_iterable_matches_encode_for_any_chunking",
        why="streams without holding back the end of a chunk that could begin a special token")
class TokenizerStreamingThroughSpecialPrefixes(ref.Tokenizer):
    def _stable_prefix(self, text, allowed):
        return super()._stable_prefix(text, frozenset())


def _sentencepiece_on(sentences, vocab_size, special_tokens):
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=False,
        character_coverage=1.0, hard_vocab_limit=False, control_symbols=list(special_tokens),
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2)
    return ref.SentencePieceTokenizer(model.getvalue())


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_learns_from_the_lines_between_special_tokens",
        why="learns from whole documents: pieces span line breaks")
def train_sentencepiece_across_line_breaks(data, vocab_size, special_tokens=()):
    pattern = "|".join(map(re.escape, special_tokens))
    parts = [part for doc in _documents(data) for part in re.split(pattern, doc) if part]
    try:
        return _sentencepiece_on(parts, vocab_size, special_tokens)
    except RuntimeError as error:
        raise ValueError(f"sentencepiece could not train with vocab_size={vocab_size}: {error}") from None


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_learns_from_the_lines_between_special_tokens",
        why="sentencepiece's own RuntimeError reaches the caller instead of a ValueError naming vocab_size")
def train_sentencepiece_letting_errors_through(data, vocab_size, special_tokens=()):
    sentences = [line for doc in _documents(data) for part in re.split("|".join(map(re.escape, special_tokens)), doc)
                 for line in part.split("\n") if line]
    return _sentencepiece_on(sentences, vocab_size, special_tokens)


# ---------------------------------------------------------------- the sentencepiece trainer's options


def _sentencepiece_trained(data, vocab_size, special_tokens, **changes):
    """train_sentencepiece as the reference configures it, with some of sentencepiece's options changed."""
    import sentencepiece

    special_tokens = list(special_tokens)
    cut = re.compile("|".join(map(re.escape, special_tokens))) if special_tokens else None
    lines = [line for d in _documents(data) for s in (cut.split(d) if cut else [d]) for line in s.split("\n") if line]
    options = {
        "model_type": "bpe", "byte_fallback": True, "normalization_rule_name": "identity", "add_dummy_prefix": False,
        "remove_extra_whitespaces": False, "allow_whitespace_only_pieces": True, "split_digits": False,
        "character_coverage": 1.0, "hard_vocab_limit": False, "control_symbols": special_tokens,
        "unk_id": 0, "bos_id": -1, "eos_id": -1, "pad_id": -1, "minloglevel": 2,
    }
    options.update(changes)  # None: the option is left to sentencepiece's default
    options = {name: value for name, value in options.items() if value is not None}
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                                 vocab_size=vocab_size, **options)
    except RuntimeError as error:
        raise ValueError(f"sentencepiece could not train with vocab_size={vocab_size}: {error}") from None
    return ref.SentencePieceTokenizer(model.getvalue())


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_vocabulary_is_unk_special_tokens_bytes_then_pieces",
        why="keeps sentencepiece's default <s> and </s> pieces (ids 1 and 2): the special tokens come after them")
def train_sentencepiece_with_bos_and_eos(data, vocab_size, special_tokens=()):
    return _sentencepiece_trained(data, vocab_size, special_tokens, bos_id=1, eos_id=2)


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_learns_every_character_and_runs_of_spaces_or_digits",
        why="sentencepiece's default character coverage (0.9995): the rarest characters get no piece")
def train_sentencepiece_with_default_coverage(data, vocab_size, special_tokens=()):
    return _sentencepiece_trained(data, vocab_size, special_tokens, character_coverage=None)


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_learns_every_character_and_runs_of_spaces_or_digits",
        why="sentencepiece's default: no piece made only of whitespace, so indentation is never one piece")
def train_sentencepiece_without_whitespace_pieces(data, vocab_size, special_tokens=()):
    return _sentencepiece_trained(data, vocab_size, special_tokens, allow_whitespace_only_pieces=None)


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_learns_every_character_and_runs_of_spaces_or_digits",
        why="split_digits=True, as in Llama's tokenizer: digits never merge")
def train_sentencepiece_splitting_digits(data, vocab_size, special_tokens=()):
    return _sentencepiece_trained(data, vocab_size, special_tokens, split_digits=True)


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_vocab_size_bounds_the_vocabulary_from_above",
        why="sentencepiece's default hard vocabulary limit: a corpus with fewer pieces than vocab_size is refused")
def train_sentencepiece_with_a_hard_vocab_limit(data, vocab_size, special_tokens=()):
    return _sentencepiece_trained(data, vocab_size, special_tokens, hard_vocab_limit=None)


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_vocab_size_bounds_the_vocabulary_from_above",
        why="asks for one token more than the minimum: <unk>, the special tokens and the bytes, plus two")
def train_sentencepiece_refusing_the_smallest_size(data, vocab_size, special_tokens=()):
    if vocab_size <= 258 + len(list(special_tokens)):
        raise ValueError(f"vocab_size={vocab_size} is too small")
    return ref.train_sentencepiece(data, vocab_size, special_tokens)


# ---------------------------------------------------------------- long pre-tokens, duplicate ids, loading


@mutant("tokenizer.Tokenizer", "test_a_long_pre_token_merges_like_a_short_one",
        why="the heap of a long pre-token starts without its last pair")
class TokenizerSkippingTheLastPairOfLongPieces(ref.Tokenizer):
    def _encode_long_piece(self, data):
        import heapq

        parts = [bytes([byte]) for byte in data]
        nxt = list(range(1, len(parts))) + [-1]
        prev = list(range(-1, len(parts) - 1))
        heap = [(self._ranks[parts[i] + parts[i + 1]], i) for i in range(len(parts) - 2)
                if parts[i] + parts[i + 1] in self._ranks]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if parts[i] is None or j < 0 or self._ranks.get(parts[i] + parts[j]) != rank:
                continue
            parts[i], parts[j] = parts[i] + parts[j], None
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prev[nxt[j]] = i
            for left, right in ((prev[i], i), (i, nxt[i])):
                if left >= 0 and right >= 0 and parts[left] + parts[right] in self._ranks:
                    heapq.heappush(heap, (self._ranks[parts[left] + parts[right]], left))
        return tuple(self._ranks[part] for part in parts if part is not None)


@mutant("tokenizer.Tokenizer", "test_bytes_spelt_by_two_ordinary_ids_encode_as_the_smaller_id",
        why="ranks built from the vocabulary in id order, a later id overwriting an earlier one: the largest wins")
class TokenizerRankingDuplicatesByTheirLargestId(ref.Tokenizer):
    def __init__(self, vocab, merges, special_tokens=(), pattern="gpt4"):
        super().__init__(vocab, merges, special_tokens, pattern)
        special = set(self.special_tokens.values())
        self._ranks = {token: i for i, token in sorted(self.vocab.items()) if i not in special}
        self._cache.clear()


@mutant("tokenizer.Tokenizer", "test_load_rejects_special_token_ids_that_disagree_with_the_vocabulary",
        why="load takes the special token ids from the vocabulary and never compares them with the file's")
class TokenizerLoadingWithoutCheckingSpecialIds(ref.Tokenizer):
    @classmethod
    def load(cls, path):
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        vocab = {int(i): token.encode("latin-1") for i, token in document["vocab"].items()}
        merges = [(a.encode("latin-1"), b.encode("latin-1")) for a, b in document["merges"]]
        return cls(vocab, merges, list(document["special_tokens"]), document["pattern"])


@mutant("tokenizer.Tokenizer", "test_load_rejects_special_token_ids_that_disagree_with_the_vocabulary",
        why="load repairs a file whose special token ids disagree, writing the ids of the vocabulary back")
class TokenizerRepairingTheFileItLoads(ref.Tokenizer):
    @classmethod
    def load(cls, path):
        try:
            return super().load(path)
        except ValueError:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
            vocab = {int(i): token.encode("latin-1") for i, token in document["vocab"].items()}
            merges = [(a.encode("latin-1"), b.encode("latin-1")) for a, b in document["merges"]]
            repaired = cls(vocab, merges, list(document["special_tokens"]), document["pattern"])
            repaired.save(path)
            raise


# ---------------------------------------------------------------- export of a vocabulary built by hand


@mutant("tokenizer.to_hf_tokenizer", "test_hf_export_of_a_vocabulary_built_by_hand",
        why="lists the merges in the given order: Hugging Face applies them in that order, not by rank")
def to_hf_tokenizer_in_the_given_merge_order(tokenizer):
    table = ref._bytes_to_unicode()

    def edit(document):
        document["model"]["merges"] = [["".join(table[x] for x in a), "".join(table[x] for x in b)]
                                       for a, b in tokenizer.merges]

    return _edit_hf(tokenizer, edit)


@mutant("tokenizer.to_hf_tokenizer", "test_hf_export_of_a_vocabulary_built_by_hand",
        why="ignore_merges left at its default (False): a pre-token that is a token but that no merge makes is split")
def to_hf_tokenizer_merging_every_pre_token(tokenizer):
    def edit(document):
        document["model"]["ignore_merges"] = False

    return _edit_hf(tokenizer, edit)


@mutant("tokenizer.to_hf_tokenizer", "test_hf_export_of_a_vocabulary_built_by_hand",
        why="special tokens exported with rstrip: the spaces after one are swallowed")
def to_hf_tokenizer_stripping_after_special_tokens(tokenizer):
    def edit(document):
        for token in document["added_tokens"]:
            token["rstrip"] = True

    return _edit_hf(tokenizer, edit)


# ---------------------------------------------------------------- streaming: how much is held back


@mutant("tokenizer.Tokenizer", "test_encode_iterable_holds_back_no_more_than_the_last_chunk",
        why="streams only at special tokens: text without one is held back whole")
class TokenizerCuttingOnlyAfterSpecialTokens(ref.Tokenizer):
    def _stable_prefix(self, text, allowed):
        special_re = self._special_re(allowed)
        end = len(text) - ref._last_special_prefix(text, allowed)
        ends = [match.end() for match in special_re.finditer(text, 0, end)] if special_re else []
        return ends[-1] if ends else 0


@mutant("tokenizer.SentencePieceTokenizer", "test_encode_iterable_holds_back_no_more_than_the_last_chunk",
        why="cuts at the first line break of the buffer, not the last: the buffer grows by every chunk's lines")
class SentencePieceCuttingAtTheFirstLineBreak(ref.SentencePieceTokenizer):
    def encode_iterable(self, iterable, allowed_special="all"):
        allowed = ref._allowed_set(allowed_special, self.special_tokens)
        buffer = ""
        for chunk in iterable:
            buffer += chunk
            cut = buffer.find("\n") + 1
            if cut:
                yield from self.encode(buffer[:cut], allowed)
                buffer = buffer[cut:]
        yield from self.encode(buffer, allowed)


@mutant("tokenizer.Tokenizer", "test_encode_iterable_waits_while_a_longer_special_token_may_follow",
        why="a special token at the very end of a chunk is taken as final, though a longer one may begin with it")
class TokenizerTakingTheFirstSpecialTokenThatFits(ref.Tokenizer):
    def _stable_prefix(self, text, allowed):
        special_re = self._special_re(allowed)
        ends = [match.end() for match in special_re.finditer(text)] if special_re else []
        if ends and ends[-1] == len(text):
            return len(text)
        return super()._stable_prefix(text, allowed)


@mutant("tokenizer.SentencePieceTokenizer", "test_encode_iterable_waits_while_a_longer_special_token_may_follow",
        why="the text left at the end is taken for the beginning of a special token and encoded as ordinary text")
class SentencePieceEndingWithOrdinaryText(ref.SentencePieceTokenizer):
    def encode_iterable(self, iterable, allowed_special="all"):
        allowed = ref._allowed_set(allowed_special, self.special_tokens)
        special_re = self._special_re(allowed)
        buffer = ""
        for chunk in iterable:
            buffer += chunk
            end = len(buffer) - ref._last_special_prefix(buffer, allowed)
            cut = max([0, *(match.end() for match in special_re.finditer(buffer, 0, end))] if special_re else [0])
            cut = max(cut, buffer.rfind("\n", cut, end) + 1)
            if cut:
                yield from self.encode(buffer[:cut], allowed)
                buffer = buffer[cut:]
        yield from self.encode(buffer, "none")


@mutant("tokenizer.train_sentencepiece", "test_sentencepiece_pieces_are_merges_of_earlier_pieces",
        why="model_type left at sentencepiece's default, the unigram model, whose pieces are not merges")
def train_sentencepiece_with_the_unigram_model(data, vocab_size, special_tokens=()):
    return _sentencepiece_trained(data, vocab_size, special_tokens, model_type=None)


@mutant("tokenizer.SentencePieceTokenizer", "test_encode_iterable_waits_while_a_longer_special_token_may_follow",
        why="cuts at the last line break even when it lies in the beginning of a special token that may go on")
class SentencePieceCuttingAtAnyLineBreak(ref.SentencePieceTokenizer):
    def encode_iterable(self, iterable, allowed_special="all"):
        allowed = ref._allowed_set(allowed_special, self.special_tokens)
        special_re = self._special_re(allowed)
        buffer = ""
        for chunk in iterable:
            buffer += chunk
            end = len(buffer) - ref._last_special_prefix(buffer, allowed)
            cut = buffer.rfind("\n") + 1
            for match in special_re.finditer(buffer, cut, end) if special_re else ():
                cut = match.end()
            if cut:
                yield from self.encode(buffer[:cut], allowed)
                buffer = buffer[cut:]
        yield from self.encode(buffer, allowed)


@mutant("tokenizer.Tokenizer", "test_rejects_a_file_that_is_not_a_saved_tokenizer",
        why="load reads any JSON document with the right keys, whatever its 'format' says")
class TokenizerLoadingAnyFormat(ref.Tokenizer):
    @classmethod
    def load(cls, path):
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(document, dict) and "format" in document:
            document["format"] = "llmkata-bpe/1"
        fixed = Path(path).with_name(Path(path).name + ".read")
        fixed.write_text(json.dumps(document), encoding="utf-8")
        try:
            return super().load(fixed)
        finally:
            fixed.unlink()
