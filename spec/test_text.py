"""Chapter 1 — text: load a corpus, clean it, filter it for quality, remove exact and near duplicates.

Loaders are lazy and say which file and line is wrong. Cleaning is idempotent and never lengthens a text. Quality
rules are pure functions of one document. Exact dedup keeps the first of each group of equal normalised
documents, in order. MinHash estimates Jaccard similarity within a Hoeffding bound; LSH + MinHash catches a
one-word edit of a long document and keeps documents that are merely alike.

Statistical tests state their bound: a correct implementation fails one with probability below 1e-6 per run.
"""

import itertools
import json
import math
import random
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterator
from itertools import product

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from .checks import assert_rejects
from .strategies import seeds, unicode_text

# 10,000 four-letter words: random documents drawn from them share almost no 5-gram by chance.
VOCABULARY = ["".join(letters) for letters in product("etaoinshrd", repeat=4)]


def random_words(rng: random.Random, count: int) -> list[str]:
    return [rng.choice(VOCABULARY) for _ in range(count)]


# ---------------------------------------------------------------- loading


def test_default_corpus_is_the_pydoc_topics_one_document_per_topic(impl):
    from pydoc_data.topics import topics

    docs = impl.text.default_corpus()
    assert isinstance(docs, Iterator), (
        f"default_corpus() must be a lazy iterator of documents (a generator), not a {type(docs).__name__}")
    docs = list(docs)
    assert len(docs) == len(topics), f"default_corpus() must yield one document per pydoc topic ({len(topics)}), " \
                                     f"got {len(docs)}"
    assert Counter(docs) == Counter(topics.values()), "default_corpus() must yield the text of each pydoc topic as is"


def test_text_files_load_one_document_per_file_in_sorted_order(impl, tmp_path):
    (tmp_path / "sub").mkdir()
    contents = {"b.txt": "second\nfile\n", "a.txt": "first file ✓\n\nwith two paragraphs", "sub/c.txt": "third"}
    for name, text in contents.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    load = impl.text.load_text_files
    assert list(load(str(tmp_path / "*.txt"))) == [contents["a.txt"], contents["b.txt"]], (
        "a glob must load every matching file, one document per file, whole and unchanged, in sorted path order")
    assert list(load(tmp_path)) == [contents["a.txt"], contents["b.txt"], contents["sub/c.txt"]], (
        "a folder must load every *.txt file under it, recursively, in sorted path order")
    assert list(load([tmp_path / "b.txt", str(tmp_path / "a.txt")])) == [contents["b.txt"], contents["a.txt"]], (
        "a list of paths must load those files in the order given")


def test_loaders_are_lazy(impl, tmp_path):
    (tmp_path / "1.txt").write_text("good document", encoding="utf-8")
    (tmp_path / "2.txt").write_bytes(b"bad \xff document")
    try:
        docs = impl.text.load_text_files(str(tmp_path / "*.txt"))
        first = next(docs)
    except ValueError as error:
        raise AssertionError(
            "load_text_files must read a file only when its document is asked for: the first document must come "
            f"out before the broken second file is read, but it failed at once: {error}") from None
    assert first == "good document", f"the first document must be the first file, got {first!r}"
    assert_rejects(lambda: next(docs), "2.txt", what="the second file is not UTF-8")

    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "one"}\n{"text": "two"}\n{"title": "no text here"}\n', encoding="utf-8")
    try:
        docs = impl.text.load_jsonl(path)
        first = [next(docs), next(docs)]
    except ValueError as error:
        raise AssertionError("load_jsonl must yield lines as they are read: the good lines must come out before the "
                             f"bad third line is read, but it failed at once: {error}") from None
    assert first == ["one", "two"], f"the first two documents must be 'one' and 'two', got {first}"
    assert_rejects(lambda: next(docs), 3, what="the third line has no 'text' field")


def test_jsonl_yields_the_field_of_each_line(impl, tmp_path):
    records = [{"content": "Grüße, \"quoted\"\nand a new line", "id": 1}, {"content": "", "id": 2},
               {"content": "😀 third", "text": "not this field"}]
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0) for i, r in enumerate(records)]
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n   \n" + lines[2], encoding="utf-8")  # blank lines, no final \n
    docs = list(impl.text.load_jsonl(path, field="content"))
    assert docs == [r["content"] for r in records], (
        "load_jsonl(path, field='content') must yield the 'content' string of every non-blank line, in order, "
        f"got {docs!r}")


def test_hf_datasets_load_in_memory_and_streaming(impl, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"content": f"document {i} ✓", "id": i} for i in range(5)]
    in_memory = datasets.Dataset.from_list(rows)
    expected = [row["content"] for row in rows]
    assert list(impl.text.load_hf_dataset(in_memory, field="content")) == expected, (
        "load_hf_dataset(dataset, field='content') must yield the 'content' of every row, in order")
    path = tmp_path / "local.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    streamed = impl.text.load_hf_dataset("json", field="content", streaming=True, data_files=str(path))
    assert isinstance(streamed, Iterator), "load_hf_dataset must return a lazy iterator of documents"
    assert list(streamed) == expected, (
        "load_hf_dataset('json', streaming=True, data_files=...) must stream the 'content' of every row, in order")


def test_hf_dataset_loads_the_split_asked_for(impl, tmp_path):
    pytest.importorskip("datasets")
    files = {}
    for split in ("train", "test"):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"text": f"{split} row {i}"}) + "\n" for i in range(3)),
                                encoding="utf-8")
    docs = list(impl.text.load_hf_dataset("json", split="test", streaming=True,
                                          data_files={split: str(path) for split, path in files.items()}))
    assert docs == [f"test row {i}" for i in range(3)], (
        f"load_hf_dataset('json', split='test', data_files={{'train': ..., 'test': ...}}) must yield the rows of the "
        f"test split, got {docs}")


def test_rejects_a_dataset_row_without_a_string_field(impl):
    datasets = pytest.importorskip("datasets")
    rows = datasets.Dataset.from_list([{"text": "first", "n": 1}, {"text": None, "n": 2}])
    assert_rejects(lambda: impl.text.load_hf_dataset(rows), "row 1", "'text'",
                   what="load_hf_dataset over a dataset whose row 1 has no text (None)")
    for field in ("n", "missing"):
        assert_rejects(lambda: impl.text.load_hf_dataset(rows, field=field), "row 0", repr(field),
                       what=f"load_hf_dataset(field={field!r}) where row 0 has no string {field!r}")


def test_hf_loader_without_datasets_says_what_to_install(impl):
    with impl.without("datasets"):  # `import datasets` fails, as where it is not installed
        assert_rejects(lambda: impl.text.load_hf_dataset("json", data_files="corpus.jsonl"), "pip install datasets",
                       error=ImportError, what="load_hf_dataset of a dataset name without the `datasets` package")


# ---------------------------------------------------------------- cleaning

# Characters that cleaning must handle: line breaks of every kind, exotic spaces, controls, invisible characters,
# combining marks, compatibility characters, emoji joined by U+200D.
MESSY = list(" \t\n\r\x0b\x0c\x1c\x85\u2028\u2029\u00a0\u2000\u3000\x00\x07\x1b\x7f\x9f\ufeff\u200b\u200d"
             "e\u0301\u0316\u0308a\u00a8\ufb01\ufb2c\u0958\uff21😀\u1fef.")
messy_text = st.text(st.one_of(st.sampled_from(MESSY), st.characters(codec="utf-8")), max_size=80) | unicode_text
forms = st.sampled_from(["NFC", "NFKC"])


@given(messy_text, forms)
@example("e\x07\u0301", "NFC")  # the control hides a composable pair
@example("a\n\n\n\n\nb", "NFC")
def test_cleaning_is_idempotent(impl, text, form):
    text_ = impl.text
    once = text_.normalize_unicode(text, form)
    assert text_.normalize_unicode(once, form) == once, f"normalize_unicode(·, {form!r}) must be idempotent"
    assert once == unicodedata.normalize(form, text), f"normalize_unicode(text, {form!r}) must be the {form} form"
    once = text_.remove_control_characters(text)
    assert text_.remove_control_characters(once) == once, "remove_control_characters must be idempotent"
    once = text_.normalize_whitespace(text)
    assert text_.normalize_whitespace(once) == once, (
        f"normalize_whitespace must be idempotent: {once!r} changed again to {text_.normalize_whitespace(once)!r}")
    once = text_.clean(text, form)
    assert text_.clean(once, form) == once, (
        f"clean(·, {form!r}) must be idempotent: {text!r} -> {once!r} -> {text_.clean(once, form)!r} "
        "(remove controls before normalising: 'e' + control + accent composes once the control is gone)")


@given(messy_text, forms)
@example("a\tb", "NFC")
def test_cleaning_never_makes_text_longer(impl, text, form):
    assert len(impl.text.remove_control_characters(text)) <= len(text), "remove_control_characters must not add text"
    out = impl.text.normalize_whitespace(text)
    assert len(out) <= len(text), f"normalize_whitespace must not lengthen text: {text!r} -> {out!r}"
    # Unicode normalisation itself may lengthen a text (NFC turns U+FB2C into three code points): clean is compared
    # with the normalised text.
    out = impl.text.clean(text, form)
    assert len(out) <= len(unicodedata.normalize(form, text)), (
        f"clean must never make a text longer than its {form} form: {text!r} -> {out!r}")


@given(messy_text)
@example("👩\u200d💻\ttab\nline\x00")
def test_control_characters_are_removed_and_everything_else_kept(impl, text):
    def removed(ch: str) -> bool:
        return (unicodedata.category(ch) == "Cc" and not ch.isspace()) or ch in "\ufeff\u200b"

    out = impl.text.remove_control_characters(text)
    assert out == "".join(ch for ch in text if not removed(ch)), (
        "remove_control_characters must drop exactly the control characters that are not whitespace, U+FEFF and "
        f"U+200B, and keep everything else in order (line breaks, tabs, U+200D ...): {text!r} -> {out!r}")


def test_whitespace_normalization_keeps_lines_and_indentation(impl):
    cases = {
        "a\r\nb\rc\u2028d\x0ce": "a\nb\nc\nd\ne",
        "no\u00a0break\u3000ideographic\u2003em": "no break ideographic em",
        "trailing   \nspaces\t\n": "trailing\nspaces",
        "para\n\n\n\n\nnext\n \n \t\nlast": "para\n\nnext\n\nlast",
        "  \n\n    indented code\n        more\nx  =  1": "indented code\n        more\nx  =  1",
        "\r\n\r\n\r\nCRLF\r\n\r\n\r\nblank lines\r\n": "CRLF\n\nblank lines",
    }
    for text, expected in cases.items():
        out = impl.text.normalize_whitespace(text)
        assert out == expected, (
            f"normalize_whitespace({text!r}) must be {expected!r}, got {out!r}: line breaks become '\\n', exotic "
            "spaces ' ', line ends and document ends are stripped, blank-line runs become one blank line, "
            "indentation and inner spaces stay")


@given(messy_text.map(lambda t: f"X{t}X") | messy_text)
@example("no\u00a0break\u3000ideographic\u2003em\u2028line")
def test_whitespace_normalization_keeps_every_word(impl, text):
    out = impl.text.normalize_whitespace(text)
    assert out.split() == text.split(), (
        f"normalize_whitespace may change only whitespace: the words of {text!r} (str.split) must stay as they are, "
        f"got {out!r}")


def test_clean_fixes_the_usual_mess(impl):
    text = "\ufeff  Cafe\u0301\x00 au\u00a0lait\x07  \r\n\r\n\r\n\r\nfin\u200b.  "
    assert impl.text.clean(text) == "Café au lait\n\nfin.", (
        f"clean must drop controls and invisible characters, compose accents and normalise whitespace: {text!r} -> "
        f"{impl.text.clean(text)!r}")
    assert impl.text.clean("ﬁne\u00a0Ａ", form="NFKC") == "fine A", "clean(form='NFKC') must fold compatibility forms"


# ---------------------------------------------------------------- quality filters

filter_text = st.lists(st.sampled_from(list("ab xyz#.…1 \n\t") + ["...", "ab\n", "#\n"]), max_size=60).map("".join)


def _words(text):
    return text.split()


@given(filter_text)
@example("ab x\n#  1\nab x\n\n  ab x\n... …")
def test_quality_statistics_match_their_definitions(impl, text):
    t, words = impl.text, _words(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    expected = {
        "word_count": len(words),
        "mean_word_length": sum(map(len, words)) / len(words) if words else 0.0,
        "symbol_to_word_ratio": (text.count("#") + text.count("...") + text.count("…")) / len(words) if words else 0.0,
        "alphabetic_word_fraction": sum(any(c.isalpha() for c in w) for w in words) / len(words) if words else 0.0,
        "duplicate_line_fraction": (len(lines) - len(set(lines))) / len(lines) if lines else 0.0,
    }
    for name, value in expected.items():
        actual = getattr(t, name)(text)
        assert math.isclose(actual, value, rel_tol=1e-12, abs_tol=1e-12), (
            f"{name}({text!r}) must be {value}, got {actual} (see its docstring for the definition)")


def _doc(words: int, word: str = "word") -> str:
    """`words` words on lines of 10, every line different."""
    tokens = [f"{word}{chr(97 + i % 26)}" for i in range(words)]
    return "\n".join(" ".join(tokens[i:i + 10]) + f" line{chr(97 + i // 10 % 26)}{i // 260}" for i in range(0, words, 10))


def test_each_rule_drops_what_breaks_it_and_keeps_the_rest(impl):
    config = impl.text.QualityConfig(min_words=20, max_words=200)
    good = _doc(30)
    assert impl.text.failed_rules(good, config) == [], f"a plain 30-word document must pass every rule, got " \
                                                       f"{impl.text.failed_rules(good, config)}"
    exactly = " ".join(["alpha"] * 20)
    assert impl.text.failed_rules(exactly, config) == [], "the bounds are inclusive: 20 words pass min_words=20"
    cases = {
        "too_few_words": "just a few words here",
        "too_many_words": _doc(250),
        "mean_word_length": " ".join(["ab"] * 30),
        "symbol_to_word_ratio": _doc(30) + " ### ... …",
        "alphabetic_fraction": " ".join(["12345"] * 10 + ["words"] * 20),
        "duplicate_lines": "\n".join(["the same line of several words again"] * 5),
    }
    for rule, text in cases.items():
        failed = impl.text.failed_rules(text, config)
        assert failed and failed[0] == rule and (rule == "too_few_words" or len(failed) == 1), (
            f"a document built to break only {rule!r} must fail {rule!r} first, got {failed}")
    assert impl.text.failed_rules(" ".join(["ab"] * 30), impl.text.QualityConfig(min_words=20, min_mean_word_length=2.0)) == [], (
        "failed_rules must use the thresholds of the config it is given")


def fractions(low: int, high: int) -> st.SearchStrategy:
    """n / d between low and high with d <= 6: the statistics of short texts take such values, so bounds are hit."""
    return st.integers(1, 6).flatmap(lambda d: st.integers(low * d, high * d).map(lambda n: n / d))


thresholds = st.fixed_dictionaries({
    "min_words": st.integers(0, 8), "max_words": st.integers(1, 30),
    "min_mean_word_length": fractions(0, 3), "max_mean_word_length": fractions(1, 4),
    "max_symbol_word_ratio": fractions(0, 1), "min_alphabetic_fraction": fractions(0, 1),
    "max_duplicate_line_fraction": fractions(0, 1),
})
# Six words, two equal lines: mean length 4/3, symbols 1/3 per word, alphabetic 1/3, duplicate lines 1/2.
AT_THE_BOUNDS = {"min_words": 6, "max_words": 6, "min_mean_word_length": 4 / 3, "max_mean_word_length": 4 / 3,
                 "max_symbol_word_ratio": 1 / 3, "min_alphabetic_fraction": 1 / 3, "max_duplicate_line_fraction": 1 / 2}


@given(filter_text, thresholds)
@example("ab # 1\nab # 1", AT_THE_BOUNDS)  # every statistic equals its bound: every rule passes
@example("ab # 1\nab # 1", {**AT_THE_BOUNDS, "max_words": 5, "max_mean_word_length": 1.0})
def test_failed_rules_are_the_statistics_outside_the_config_bounds(impl, text, bounds):
    t, words = impl.text, _words(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    mean = sum(map(len, words)) / len(words) if words else 0.0
    symbols = (text.count("#") + text.count("...") + text.count("…")) / len(words) if words else 0.0
    alphabetic = sum(any(c.isalpha() for c in w) for w in words) / len(words) if words else 0.0
    duplicates = (len(lines) - len(set(lines))) / len(lines) if lines else 0.0
    rules = [
        ("too_few_words", len(words) >= bounds["min_words"]),
        ("too_many_words", len(words) <= bounds["max_words"]),
        ("mean_word_length", bounds["min_mean_word_length"] <= mean <= bounds["max_mean_word_length"]),
        ("symbol_to_word_ratio", symbols <= bounds["max_symbol_word_ratio"]),
        ("alphabetic_fraction", alphabetic >= bounds["min_alphabetic_fraction"]),
        ("duplicate_lines", duplicates <= bounds["max_duplicate_line_fraction"]),
    ]
    expected = [name for name, passed in rules if not passed]
    failed = t.failed_rules(text, t.QualityConfig(**bounds))
    assert failed == expected, (
        f"failed_rules({text!r}, QualityConfig(**{bounds})) must list, in the documented order, exactly the rules "
        f"whose statistic lies outside the config's bounds (bounds are inclusive): expected {expected}, got {failed}")


@given(st.lists(filter_text | st.builds(_doc, st.integers(40, 80)), max_size=8), st.integers(0, 8))
def test_filters_are_pure(impl, docs, cut):
    config = impl.text.QualityConfig(min_words=3, max_words=500, min_mean_word_length=1.0)
    before = list(docs)
    whole = list(impl.text.quality_filter(docs, config))
    assert docs == before, "quality_filter must not modify the list it is given"
    expected = [doc for doc in docs if not impl.text.failed_rules(doc, config)]
    assert whole == expected, "quality_filter must keep exactly the documents that break no rule, in order"
    halves = list(impl.text.quality_filter(docs[:cut], config)) + list(impl.text.quality_filter(docs[cut:], config))
    assert halves == whole, "whether a document passes must not depend on the documents before it"
    again = [doc for doc in docs if not impl.text.failed_rules(doc, config)]
    assert again == expected, "failed_rules must give the same answer when asked twice"


def test_report_counts_each_dropped_document_under_its_first_rule(impl):
    config = impl.text.QualityConfig(min_words=20, max_words=200)
    docs = [_doc(30), "few words", _doc(30, "other"), "\n".join(["1 2 3 4 5"] * 5), "tiny", _doc(300)]
    report = impl.text.FilterReport()
    kept = list(impl.text.quality_filter(docs, config, report=report))
    assert kept == [docs[0], docs[2]], "quality_filter must keep the two good documents"
    expected = Counter(impl.text.failed_rules(doc, config)[0] for doc in docs if impl.text.failed_rules(doc, config))
    assert dict(report.dropped) == dict(expected), (
        f"report.dropped must count each dropped document once, under the first rule it breaks: expected "
        f"{dict(expected)}, got {dict(report.dropped)}")


# ---------------------------------------------------------------- exact dedup


def test_dedup_key_ignores_case_whitespace_and_unicode_form_only(impl):
    key = impl.text.dedup_key
    same = ["Hello  World", "hello\nworld", "HELLO world\n\n", " hello\tworld "]
    assert len({key(text) for text in same}) == 1, f"{same} must share one dedup key (case and whitespace differ)"
    assert key("café au lait") == key("cafe\u0301 au lait"), "NFC-equal texts must share a dedup key"
    different = ["Hello, World", "Hello World!", "Hello Word", "hello world world"]
    keys = {key(text) for text in different + same[:1]}
    assert len(keys) == len(different) + 1, f"{different} and {same[0]!r} must all have different dedup keys"
    long_key = key("a long document " * 1000)
    assert isinstance(long_key, bytes) and len(long_key) == 16, (
        "dedup_key must be a 128-bit hash (16 bytes) whatever the length of the text, so that exact_dedup keeps 16 "
        f"bytes per distinct document; got {type(long_key).__name__} of length {len(long_key)}")


# Variants that must count as the same document: case and whitespace changes.
VARIANTS = [lambda s: s, str.upper, str.title, lambda s: "  " + s.replace(" ", "\n  ") + "\t"]
BASES = ["the cat sat", "The dog ran off", "a b c", "A, b c", "ünïcödé text", "cafe\u0301", "café", ""]


@given(st.lists(st.tuples(st.sampled_from(BASES), st.sampled_from(VARIANTS)), max_size=20))
def test_exact_dedup_keeps_the_first_of_each_duplicate_in_order(impl, picks):
    docs = [variant(base) for base, variant in picks]

    def normal(text):  # the normalisation the key hashes, for these texts
        return " ".join(unicodedata.normalize("NFC", text).casefold().split())

    seen, expected = set(), []
    for doc in docs:
        if normal(doc) not in seen:
            seen.add(normal(doc))
            expected.append(doc)
    out = list(impl.text.exact_dedup(docs))
    assert out == expected, (
        "exact_dedup must keep the first occurrence of each document (equal up to case, whitespace and Unicode form)"
        f" in corpus order: expected {expected!r}, got {out!r}")
    assert list(impl.text.exact_dedup(out)) == out, "exact_dedup must be idempotent"
    report = impl.text.FilterReport()
    list(impl.text.exact_dedup(docs, report=report))
    assert report.dropped["exact_duplicate"] == len(docs) - len(expected), (
        "exact_dedup must count its drops in report.dropped['exact_duplicate']")


def test_exact_dedup_accepts_any_python_string(impl):
    docs = ["a\ud800b", "A\ud800B", "a\udc00b", "\udfff"]  # lone surrogates: a str, but no valid UTF-8
    try:
        keys = [impl.text.dedup_key(doc) for doc in docs]
        out = list(impl.text.exact_dedup(docs))
    except NotImplementedError:
        raise
    except UnicodeError as error:
        raise AssertionError(
            "exact_dedup and dedup_key must accept any Python str, lone surrogates included (encode the key with "
            f"errors='surrogatepass'): {type(error).__name__}: {error}") from None
    assert keys[0] == keys[1] and len(set(keys)) == 3, (
        f"dedup_key of {docs} must give the first two (equal up to case) one key and the others keys of their own")
    assert out == ["a\ud800b", "a\udc00b", "\udfff"], (
        f"exact_dedup of {docs} must drop only the upper-case copy of the first document, got {out}")


# ---------------------------------------------------------------- MinHash and LSH


@given(st.lists(st.sampled_from(["a", "b", "c", "dd"]), max_size=12), st.integers(1, 4))
def test_shingles_are_the_word_ngrams(impl, words, n):
    text = " \n ".join(words)
    expected = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)} if len(words) >= n else {tuple(words)}
    out = impl.text.shingles(text, ngram=n)
    assert out == expected, (
        f"shingles({text!r}, ngram={n}) must be the set of {n}-grams of whitespace-separated words (one shingle of "
        f"all words when there are fewer than {n}): expected {expected}, got {out}")


@given(st.sets(st.integers(0, 9)), st.sets(st.integers(0, 9)))
def test_jaccard_is_intersection_over_union(impl, a, b):
    expected = len(a & b) / len(a | b) if a | b else 1.0
    assert impl.text.jaccard(a, b) == pytest.approx(expected), f"jaccard({a}, {b}) must be |a ∩ b| / |a ∪ b|"


@st.composite
def similar_pairs(draw, min_words=30, max_words=300):
    """Two documents: the second has a drawn fraction of the first's words replaced, so J spans [0, 1]."""
    rng = random.Random(draw(seeds))
    first = random_words(rng, draw(st.integers(min_words, max_words)))
    changed = draw(st.floats(0.0, 0.6))
    second = [rng.choice(VOCABULARY) if rng.random() < changed else word for word in first]
    return " ".join(first), " ".join(second)


# With k hash functions, P[|Ĵ - J| >= eps] <= 2 exp(-2 k eps²) (Hoeffding): k = 512 and eps = 0.137 give 1e-8 per
# example.
K, EPS = 512, 0.137


@given(similar_pairs(), seeds)
def test_minhash_estimate_is_within_the_hoeffding_bound_of_the_true_jaccard(impl, pair, seed):
    a, b = pair
    true = len(impl.text.shingles(a, 3) & impl.text.shingles(b, 3)) / len(impl.text.shingles(a, 3) | impl.text.shingles(b, 3))
    signatures = impl.text.minhash_signatures([a, b], num_perm=K, ngram=3, seed=seed)
    assert signatures.shape == (2, K), f"minhash_signatures of 2 documents with num_perm={K} must have shape (2, {K})"
    estimate = impl.text.estimate_jaccard(signatures[0], signatures[1])
    assert abs(estimate - true) <= EPS, (
        f"the MinHash estimate {estimate:.3f} must be within {EPS} of the true Jaccard {true:.3f} of the 3-gram "
        f"shingles with {K} hash functions (a correct MinHash misses by that much with probability < 1e-8)")


@given(st.integers(1, 64), seeds)
def test_estimate_jaccard_is_the_fraction_of_equal_positions(impl, num_perm, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, num_perm).astype(np.uint32)  # few distinct values: equal values in unequal positions
    b = np.where(rng.random(num_perm) < 0.5, a, rng.integers(0, 4, num_perm)).astype(np.uint32)
    expected = float(np.mean(a == b))
    estimate = impl.text.estimate_jaccard(a, b)
    assert math.isclose(estimate, expected, rel_tol=1e-12, abs_tol=1e-12), (
        f"estimate_jaccard must be the fraction of the {num_perm} positions where the two signatures agree, "
        f"{expected}, got {estimate} (a value shared at different positions is no agreement)")
    assert_rejects(lambda: impl.text.estimate_jaccard(a, np.concatenate([b, b])), num_perm, 2 * num_perm,
                   what=f"signatures of {num_perm} and {2 * num_perm} values (made with different num_perm)")


@given(st.lists(st.text(st.sampled_from(list("ab c\n")), max_size=30), min_size=1, max_size=6), seeds)
def test_signatures_are_deterministic_and_independent_of_the_batch(impl, docs, seed):
    signatures = impl.text.minhash_signatures(docs, num_perm=16, ngram=2, seed=seed)
    assert signatures.shape == (len(docs), 16), f"one row of 16 per document, got shape {signatures.shape}"
    assert signatures.dtype == np.uint32, f"signatures must be uint32 (4 bytes a value), got {signatures.dtype}"
    for i, doc in enumerate(docs):
        alone = impl.text.minhash_signatures([doc], num_perm=16, ngram=2, seed=seed)[0]
        assert np.array_equal(signatures[i], alone), (
            f"the signature of document {i} must not depend on the other documents signed with it")
        twin = docs.index(doc)
        assert np.array_equal(signatures[i], signatures[twin]), "identical documents must have identical signatures"
    again = impl.text.minhash_signatures(docs[::-1], num_perm=16, ngram=2, seed=seed)
    assert np.array_equal(again[::-1], signatures), "the same seed must give the same signatures"


# With ngram=1 the shingles of a document are its words, so its signature is the elementwise minimum of the
# signatures of its words, each signed as a one-word document. 4096 hash functions make numpy's blocks small (about
# a thousand shingles): a document of 3000 words is signed in several pieces, and 1202 documents take several blocks
# and several chunks, paths that a small corpus never takes.
@settings(max_examples=3)  # slow by nature: 1202 documents signed with 4096 hash functions, and each word alone
@given(seeds)
def test_signature_of_a_document_is_the_elementwise_minimum_over_its_words(impl, seed):
    rng = random.Random(seed)
    words = rng.sample(VOCABULARY, 1200)
    long_docs = [" ".join(rng.choices(words, k=3000)) for _ in range(2)]  # words repeat: shingles with repeats
    corpus = words[:512] + [long_docs[0]] + words[512:1000] + [long_docs[1]] + words[1000:]
    signatures = impl.text.minhash_signatures(corpus, num_perm=4096, ngram=1, seed=seed)
    assert signatures.shape == (len(corpus), 4096), (
        f"minhash_signatures of {len(corpus)} documents with num_perm=4096 must have shape ({len(corpus)}, 4096), "
        f"got {signatures.shape}")
    row = {doc: i for i, doc in enumerate(corpus)}
    for word in words:
        alone = impl.text.minhash_signatures([word], num_perm=4096, ngram=1, seed=seed)[0]
        assert np.array_equal(signatures[row[word]], alone), (
            f"document {row[word]} of {len(corpus)} ({word!r}) must have the signature it has alone: sign every "
            "document, also past the first few hundred")
    for doc in long_docs:
        expected = signatures[[row[word] for word in doc.split()]].min(axis=0)
        wrong = int(np.count_nonzero(signatures[row[doc]] != expected))
        assert wrong == 0, (
            f"the signature of a document of 3000 words (document {row[doc]}, ngram=1) must be, for each hash "
            f"function, the minimum over all its words; {wrong} of 4096 values differ (sign a long document's "
            "shingles piece by piece if you must, but keep the running minimum over every piece)")


# With bands = num_perm every band is one row: two signatures share a band exactly when they agree somewhere, which
# any estimate >= threshold > 0 implies. near_dedup then keeps exactly what its signatures decide.
@given(seeds, st.sampled_from([0.3, 0.5, 0.7]))
def test_near_dedup_keeps_what_its_signatures_decide(impl, seed, threshold):
    rng = random.Random(seed)
    base = random_words(rng, 12)
    docs = [" ".join(_edited(rng, base, rng.randrange(0, 6))) for _ in range(12)]
    signatures = impl.text.minhash_signatures(docs, num_perm=16, ngram=2, seed=seed)
    kept, expected = [], []
    for doc, signature in zip(docs, signatures):
        if not any(np.mean(signature == other) >= threshold for other in kept):
            kept.append(signature)
            expected.append(doc)
    out = list(impl.text.near_dedup(docs, threshold=threshold, num_perm=16, bands=16, ngram=2, seed=seed))
    assert out == expected, (
        f"near_dedup(threshold={threshold}, num_perm=16, bands=16, ngram=2, seed={seed}) must keep each document "
        "unless the signature minhash_signatures(docs, 16, 2, seed) gives it agrees with a kept one's in at least "
        f"{threshold:.0%} of the positions: kept {len(out)}, the signatures keep {len(expected)} (pass the seed on)")


def test_parameters_at_their_bounds_are_accepted(impl):
    docs = ["the cat sat on the mat", "the cat sat on the mat", "a dog ran off"]
    try:
        one = impl.text.minhash_signatures(docs, num_perm=1, ngram=2)
    except NotImplementedError:
        raise
    except ValueError as error:
        raise AssertionError(f"minhash_signatures(num_perm=1) must be accepted: one hash function is a signature, "
                             f"got ValueError: {error}") from None
    assert one.shape == (3, 1), f"minhash_signatures(num_perm=1) of 3 documents must have shape (3, 1), got {one.shape}"
    cases = {"threshold=1.0": {"threshold": 1.0}, "bands=1": {"bands": 1}, "bands=num_perm=128": {"bands": 128},
             "num_perm=1, bands=1": {"num_perm": 1, "bands": 1}}
    for name, kwargs in cases.items():
        try:
            out = list(impl.text.near_dedup(docs, **kwargs))
        except NotImplementedError:
            raise
        except ValueError as error:
            raise AssertionError(f"near_dedup({name}) must be accepted: a threshold lies in (0, 1] and bands between "
                                 f"1 and num_perm, bounds included; got ValueError: {error}") from None
        assert out == [docs[0], docs[2]], (
            f"near_dedup({name}) must drop the exact copy (estimate 1.0 >= any threshold) and keep the unrelated "
            f"document, got {out}")


def _one_word_edit(rng: random.Random, words: list[str]) -> list[str]:
    edited, i = list(words), rng.randrange(1, len(words) - 1)
    kind = rng.choice(["replace", "insert", "delete"])
    if kind == "replace":
        edited[i] = "EDITED"
    elif kind == "insert":
        edited.insert(i, "INSERTED")
    else:
        del edited[i]
    return edited


# A one-word edit of an L-word document changes at most 5 of its 5-gram shingles: J >= (L - 9)/(L + 1) >= 0.99 for
# L >= 1000. With 16 bands of 8 rows it is missed when no band agrees, (1 - 0.99^8)^16 < 2e-18, or when the
# estimate falls below 0.8, P[Binomial(128, 0.01) >= 26] < 1e-25.
@given(seeds, st.integers(1000, 1300))
def test_near_dedup_catches_a_one_word_edit_of_a_long_document(impl, seed, length):
    rng = random.Random(seed)
    words = random_words(rng, length)
    original, edited = " ".join(words), " ".join(_one_word_edit(rng, words))
    other = " ".join(random_words(rng, length))
    out = list(impl.text.near_dedup([original, other, edited], threshold=0.8, num_perm=128, bands=16, seed=seed))
    assert out == [original, other], (
        f"near_dedup must drop a copy of a {length}-word document with one word edited (Jaccard >= 0.99) and keep "
        f"the original and an unrelated document; it kept {len(out)} of 3")


@given(st.lists(st.text(st.sampled_from(list("ab c\n")), max_size=40), max_size=8), st.data())
def test_identical_documents_are_always_near_duplicates(impl, docs, data):
    corpus = list(docs)
    for doc in docs:  # every document again, somewhere after its first copy
        corpus.insert(data.draw(st.integers(corpus.index(doc) + 1, len(corpus))), doc)
    out = list(impl.text.near_dedup(corpus, threshold=0.9, num_perm=32))
    assert len(out) == len(set(out)), f"near_dedup must never keep two identical documents: kept {out}"
    without_copies = list(impl.text.near_dedup(list(dict.fromkeys(docs)), threshold=0.9, num_perm=32))
    assert out == without_copies, (
        "copies of documents seen before must change nothing: near_dedup(corpus) must equal near_dedup of the "
        f"corpus without its copies, got {out} and {without_copies}")


# Pairs that share about half their words (J about 0.48 on 5-grams) must both be kept. P[Ĵ >= 0.8 | J <= 0.55] <=
# exp(-2 · 256 · 0.25²) < 2e-14 per pair (Hoeffding), so a correct implementation drops none of the 100 pairs
# with probability above 1 - 1e-11. Candidates from LSH alone are no proof: with 32 bands of 8 rows a pair at
# J = 0.48 shares a band with probability about 0.08.
@settings(max_examples=10)  # slow by nature: 200 documents per example, and each example has 100 chances to fail
@given(seeds)
def test_near_dedup_keeps_documents_of_low_similarity(impl, seed):
    rng = random.Random(seed)
    docs = []
    for _ in range(100):
        shared = random_words(rng, 48)
        docs += [" ".join(shared + random_words(rng, 20)), " ".join(shared + random_words(rng, 20))]
    shingles = [impl.text.shingles(doc, 5) for doc in docs[:2]]
    assert len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1]) <= 0.55, "test construction: J <= 0.55"
    report = impl.text.FilterReport()
    out = list(impl.text.near_dedup(docs, threshold=0.8, num_perm=256, bands=32, seed=seed, report=report))
    assert out == docs, (
        f"near_dedup(threshold=0.8) must keep all 200 documents of 100 pairs with Jaccard about 0.5, it dropped "
        f"{len(docs) - len(out)}: confirm each LSH candidate by its estimated Jaccard >= threshold")


@given(seeds, st.integers(2, 6))
def test_near_dedup_keeps_the_first_of_each_group_in_order(impl, seed, groups):
    rng = random.Random(seed)
    originals = [random_words(rng, 300) for _ in range(groups)]
    corpus = [(g, " ".join(words)) for g, words in enumerate(originals)]
    for _ in range(2 * groups):  # edited copies, each after its original
        g = rng.randrange(groups)
        corpus.insert(rng.randrange(g + 1, len(corpus) + 1), (g, " ".join(_one_word_edit(rng, originals[g]))))
    first = {}
    for g, doc in corpus:
        first.setdefault(g, doc)
    expected = [doc for g, doc in corpus if first[g] == doc]
    report = impl.text.FilterReport()
    out = list(impl.text.near_dedup([doc for _, doc in corpus], threshold=0.7, num_perm=128, report=report))
    assert out == expected, "near_dedup must keep the first document of each group of near duplicates, in order"
    assert report.dropped["near_duplicate"] == len(corpus) - len(expected), (
        "near_dedup must count its drops in report.dropped['near_duplicate']")


# A document and its words in reverse order have the same words (ngram=1: the same shingles, so the same signature,
# a sure duplicate) and no n-gram in common for n >= 2 (J = 0 up to chance repeats of words: P[Ĵ >= 0.8] is below
# exp(-2 · 128 · 0.79²) < 1e-60).
@given(seeds, st.integers(1, 4))
@example(0, 1)
@example(0, 2)
def test_near_dedup_compares_word_ngrams_of_the_size_given(impl, seed, n):
    rng = random.Random(seed)
    words = random_words(rng, 300)
    forwards, backwards = " ".join(words), " ".join(reversed(words))
    out = list(impl.text.near_dedup([forwards, backwards], threshold=0.8, ngram=n, seed=seed))
    expected = [forwards] if n == 1 else [forwards, backwards]
    assert out == expected, (
        f"near_dedup(ngram={n}) must compare shingles of {n} word(s): a document with its words reversed is "
        f"{'a duplicate (the same words)' if n == 1 else f'no duplicate (no {n}-gram in common)'}; "
        f"it kept {len(out)} of 2")


# A, B, C: 140 distinct words, A = words 0..99, B = 20..119, C = 40..139, compared word by word (ngram=1):
# J(A, B) = J(B, C) = 80/120 = 0.67, J(A, C) = 60/140 = 0.43, threshold 0.55. With 1024 hash functions an estimate
# lands on the wrong side of 0.55 with probability below exp(-2 · 1024 · 0.117²) < 1e-12 (Hoeffding); with 256 bands
# of 4 rows, A and B share no band with probability (1 - 0.67^4)^256 < 1e-24.
@given(seeds)
def test_near_dedup_compares_only_with_kept_documents(impl, seed):
    rng = random.Random(seed)
    words = rng.sample(VOCABULARY, 140)
    a, b, c = (" ".join(words[start:start + 100]) for start in (0, 20, 40))
    report = impl.text.FilterReport()
    out = list(impl.text.near_dedup([a, b, c], threshold=0.55, num_perm=1024, bands=256, ngram=1, seed=seed,
                                    report=report))
    assert out == [a, c], (
        f"near_dedup must drop B (J(A, B) = 0.67 >= 0.55) and keep C: C is alike only to B (0.67), which was "
        f"dropped, not to A (0.43); only kept documents go into the LSH tables. It kept {len(out)} of 3: "
        f"{['ABC'[[a, b, c].index(doc)] for doc in out]}")
    assert report.dropped["near_duplicate"] == 1, f"one document was dropped, the report says {report}"


# ---------------------------------------------------------------- the pipeline


def test_clean_corpus_cleans_filters_and_deduplicates(impl):
    config = impl.text.QualityConfig(min_words=20)
    rng = random.Random(0)
    long_words = random_words(rng, 200)
    good = _doc(30)
    docs = [
        "\ufeff" + good.replace("\n", "\r\n") + "  \x00",  # dirty: cleaned, kept
        "too short",  # too_few_words
        good.upper(),  # exact duplicate of the first, once cleaned
        " ".join(long_words),  # kept
        " ".join(long_words[:100] + ["changed"] + long_words[101:]),  # near duplicate
        " \n\t ",  # empty once cleaned
    ]
    report = impl.text.FilterReport()
    out = list(impl.text.clean_corpus(docs, config=config, report=report))
    assert out == [good, " ".join(long_words)], (
        "clean_corpus must clean each document, then drop the short one, the exact and the near duplicate and "
        f"the empty one: kept {len(out)} documents")
    assert (report.read, report.kept) == (6, 2), f"the report must say 6 read, 2 kept; it says {report}"
    for rule in ("too_few_words", "exact_duplicate", "near_duplicate", "empty"):
        assert report.dropped[rule] == 1, f"the report must count one document dropped by {rule}: {report}"


def _edited(rng: random.Random, words: list[str], changes: int) -> list[str]:
    edited = list(words)
    for i in rng.sample(range(len(words)), changes):
        edited[i] = rng.choice(VOCABULARY)
    return edited


def _dress(text: str, how: str) -> str:
    """The same document for exact dedup, written another way: upper case, dirt that cleaning removes, or a first
    word with compatibility characters that NFKC folds ('ﬁ' -> 'fi', full-width 'Ａ' -> 'A') and NFC keeps."""
    if how == "upper":
        return text.upper()
    if how == "dirty":
        return "\ufeff " + text.replace(" ", " \x00 \r\n", 1) + "\t\n\n"
    if how == "compatible":
        return "\ufb01\uff21" + text
    return text


@st.composite
def corpora(draw):
    """Documents that give every stage of clean_corpus work: new ones, copies, near copies (1, 3 or 8 of 100 words
    changed: 5-gram Jaccard about 0.9, 0.7, 0.4), short and blank ones, each dressed by _dress."""
    rng = random.Random(draw(seeds))
    originals, docs = [], []
    for kind in draw(st.lists(st.sampled_from(["new", "copy", "near", "short", "blank"]), max_size=10)):
        if kind == "short":
            docs.append(" ".join(random_words(rng, 5)))
            continue
        if kind == "blank":
            docs.append(" \n\t\x00\u200b ")
            continue
        if kind == "new" or not originals:
            originals.append(random_words(rng, 100))
            words = originals[-1]
        else:
            words = rng.choice(originals)
            words = _edited(rng, words, rng.choice([1, 3, 8])) if kind == "near" else words
        docs.append(_dress(" ".join(words), draw(st.sampled_from(["", "upper", "dirty", "compatible"]))))
    return docs


_rng = random.Random(1)
_base, _other = random_words(_rng, 100), random_words(_rng, 100)
# One document and its copies with 1, 3 and 8 words changed, a document that only NFKC changes, a short and a
# blank one: near_threshold None, 0.5 and 0.8 keep different documents, and the forms give different texts.
LADDER = [" ".join(_base), *(" ".join(_edited(_rng, _base, k)) for k in (1, 3, 8)),
          _dress(" ".join(_other), "compatible"), "too short", " \n "]


@given(corpora(), forms, st.sampled_from([None, 0.3, 0.5, 0.8, 0.95]), st.booleans())
@example(LADDER, "NFKC", 0.5, False)
@example(LADDER, "NFC", None, True)
def test_clean_corpus_is_its_stages_in_order(impl, docs, form, near_threshold, short_ones_pass):
    t = impl.text
    config = t.QualityConfig(min_words=3) if short_ones_pass else None
    cleaned = [text for text in (t.clean(doc, form) for doc in docs) if text]
    stream = t.exact_dedup(t.quality_filter(cleaned, config))
    expected = list(stream if near_threshold is None else t.near_dedup(stream, threshold=near_threshold))
    report = t.FilterReport()

    def run():
        return list(t.clean_corpus(iter(docs), config=config, near_threshold=near_threshold, form=form, report=report))

    if expected:
        out = run()
        assert out == expected, (
            f"clean_corpus(config, near_threshold={near_threshold}, form={form!r}) must be clean(·, form) -> drop "
            "empty -> quality_filter(config) -> exact_dedup -> near_dedup(threshold=near_threshold), the last "
            f"skipped when near_threshold is None: expected {len(expected)} documents, got {len(out)}"
            + (" (different texts)" if len(out) == len(expected) else ""))
    else:
        assert_rejects(run, "empty", what=f"clean_corpus of {len(docs)} documents of which none is kept")
    assert report.read == len(docs) and report.kept == len(expected), (
        f"the report must say {len(docs)} read and {len(expected)} kept, it says {report!r}")
    assert report.read == report.kept + sum(report.dropped.values()), (
        f"every document read must be kept or counted once under the reason it was dropped: {report!r}")


@pytest.mark.parametrize("stage", ["quality_filter", "exact_dedup", "near_dedup", "clean_corpus"])
def test_every_stage_streams(impl, stage):
    rng, read, limit = random.Random(0), 0, 5000

    def documents():
        nonlocal read
        for read in itertools.count(1):
            assert read <= limit, (
                f"{stage} read {limit} documents without yielding 3: a stage must yield documents as they come "
                "(near_dedup may sign a chunk of a few hundred at a time), so that a corpus larger than memory "
                "streams through")
            yield f"document {read}: " + " ".join(random_words(rng, 60))

    t = impl.text
    stages = {"quality_filter": lambda docs: t.quality_filter(docs, t.QualityConfig(min_words=10)),
              "exact_dedup": t.exact_dedup, "near_dedup": t.near_dedup, "clean_corpus": t.clean_corpus}
    out = stages[stage](documents())
    assert isinstance(out, Iterator), f"{stage} must return a lazy iterator, not a {type(out).__name__}"
    first = list(itertools.islice(out, 3))
    assert len(first) == 3 and all(doc.startswith(f"document {i + 1}: ") for i, doc in enumerate(first)), (
        f"{stage} must yield the first 3 of an endless stream of distinct good documents, in order")


# ---------------------------------------------------------------- bad input


def test_rejects_invalid_utf8_naming_the_file_and_byte(impl, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok: ".encode() + "café".encode("latin-1"))  # é as the single byte 0xE9 at offset 7
    assert_rejects(lambda: list(impl.text.load_text_files(path)), "latin1.txt", 7,
                   what="a text file with the byte 0xE9 at offset 7 (not UTF-8)")
    assert_rejects(lambda: impl.text.decode_utf8(b"ab\xffcd", source="blob"), "blob", 2,
                   what="decode_utf8(b'ab\\xffcd', source='blob')")


def test_replacing_invalid_utf8_reports_the_count(impl, tmp_path):
    data = b"a\xffb\xc3(c" + "\ufffd".encode() + b"\xe9"  # 3 invalid sequences and one genuine U+FFFD
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = impl.text.decode_utf8(data, source="blob", errors="replace")
    assert text == "a\ufffdb\ufffd(c\ufffd\ufffd", f"each invalid sequence must become one U+FFFD, got {text!r}"
    counted = [str(w.message) for w in caught if issubclass(w.category, UnicodeWarning)]
    assert counted, "decode_utf8(errors='replace') must report what it replaced in a UnicodeWarning"
    assert "3" in " ".join(counted).replace("(", " ").replace(")", " ").split(), (
        f"the warning must count the 3 replaced sequences (not the genuine U+FFFD already there): {counted}")
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(impl.text.load_text_files(path, errors="replace"))
    assert docs == [text], "load_text_files(errors='replace') must replace invalid sequences by U+FFFD"
    assert any("bad.txt" in str(w.message) for w in caught), "the warning must name the file"


def test_rejects_a_jsonl_line_without_the_field(impl, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n{"body": "c"}\n', encoding="utf-8")
    assert_rejects(lambda: list(impl.text.load_jsonl(path)), "corpus.jsonl", 4, "text",
                   what="line 4 of corpus.jsonl has no 'text' field")
    path.write_text('{"text": "a"}\n{"text": oops}\n', encoding="utf-8")
    assert_rejects(lambda: list(impl.text.load_jsonl(path)), "corpus.jsonl", 2, what="line 2 is not JSON")
    path.write_text('{"text": "a"}\n\n["text", "b"]\n', encoding="utf-8")
    assert_rejects(lambda: list(impl.text.load_jsonl(path)), "corpus.jsonl", 3,
                   what="line 3 of corpus.jsonl is a JSON list, not an object")
    path.write_text('{"text": "a"}\n{"text": 12.5}\n', encoding="utf-8")
    assert_rejects(lambda: list(impl.text.load_jsonl(path)), "corpus.jsonl", 2, "text",
                   what="line 2 of corpus.jsonl has a number in its 'text' field, not a string")


def test_invalid_utf8_in_jsonl_names_the_line_or_is_replaced(impl, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 \xff"}\n{"text": "genuine \xef\xbf\xbd"}\n')
    assert_rejects(lambda: list(impl.text.load_jsonl(path)), "mixed.jsonl", 2,
                   what="line 2 of mixed.jsonl is not UTF-8 (load_jsonl with errors='strict', the default)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            docs = list(impl.text.load_jsonl(path, errors="replace"))
        except ValueError as error:
            raise AssertionError(
                f"load_jsonl(errors='replace') must replace invalid UTF-8, not raise: {error}") from None
    assert docs == ["fine", "caf\ufffd \ufffd", "genuine \ufffd"], (
        f"load_jsonl(errors='replace') must turn each invalid sequence into one U+FFFD and keep the rest, got {docs!r}")
    warned = [str(w.message) for w in caught if issubclass(w.category, UnicodeWarning)]
    assert any("mixed.jsonl" in message for message in warned), (
        f"load_jsonl(errors='replace') must say in a UnicodeWarning which file had invalid UTF-8, got {warned}")


def test_rejects_near_dedup_parameters_out_of_range(impl):
    docs = ["a b c d e f", "a b c d e g"]
    for threshold in (0.0, -0.5, 1.5):
        assert_rejects(lambda: impl.text.near_dedup(docs, threshold=threshold), threshold,
                       what=f"near_dedup(threshold={threshold}): a Jaccard threshold lies in (0, 1]")
    for bands in (0, 129):
        assert_rejects(lambda: impl.text.near_dedup(docs, num_perm=128, bands=bands), bands,
                       what=f"near_dedup(num_perm=128, bands={bands}): bands lie between 1 and num_perm")
    assert_rejects(lambda: impl.text.shingles("a b c", ngram=0), 0, what="shingles(ngram=0): no word 0-grams")
    assert_rejects(lambda: impl.text.minhash_signatures(docs, num_perm=0), 0,
                   what="minhash_signatures(num_perm=0): a signature needs a hash function")


def test_rejects_a_corpus_empty_after_filtering(impl):
    docs = ["too short", "   ", "also far too short to pass"]
    assert_rejects(lambda: list(impl.text.clean_corpus(docs)), "empty", 3, "too_few_words",
                   what="clean_corpus of 3 documents that all fail the filters (the error must say how many were "
                        "read and what dropped them)")
    assert_rejects(lambda: list(impl.text.clean_corpus(iter([]))), "empty", 0, what="clean_corpus of no documents")


def test_every_documented_rejection_names_the_bad_value(impl):
    assert_rejects(lambda: impl.text.decode_utf8(b"text", errors="ignore"), "ignore",
                   what="decode_utf8(errors='ignore'): errors is 'strict' or 'replace'")
    for form in ("NFD", "nfc"):
        assert_rejects(lambda: impl.text.normalize_unicode("text", form=form), form,
                       what=f"normalize_unicode(form={form!r}): the form is 'NFC' or 'NFKC'")
    assert_rejects(lambda: impl.text.minhash_signatures(["a b c"], ngram=0), "ngram", 0,
                   what="minhash_signatures(ngram=0): no word 0-grams")
