"""Wrong implementations of the text chapter that a learner could plausibly write."""

import dataclasses
import glob
import hashlib
import json
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

import llmkata.reference.text as ref

from . import mutant

# ---------------------------------------------------------------- loading


def _files(paths):
    """The files a path, a folder (its *.txt, recursively), a glob pattern or a list of them names, sorted per entry."""
    for entry in [paths] if isinstance(paths, (str, Path)) else paths:
        entry = Path(entry)
        if entry.is_dir():
            yield from sorted(entry.rglob("*.txt"))
        elif glob.has_magic(str(entry)):
            yield from (Path(match) for match in sorted(glob.glob(str(entry), recursive=True)))
        else:
            yield entry


@mutant("text.default_corpus", "test_default_corpus_is_the_pydoc_topics_one_document_per_topic",
        why="reads the whole corpus eagerly")
def default_corpus_as_a_list():
    return list(ref.default_corpus())


@mutant("text.default_corpus", "test_default_corpus_is_the_pydoc_topics_one_document_per_topic",
        why="one document for all topics")
def default_corpus_as_one_document():
    yield "\n\n".join(ref.default_corpus())


@mutant("text.load_text_files", "test_text_files_load_one_document_per_file_in_sorted_order",
        why="one document per line")
def load_text_files_one_document_per_line(paths, errors="strict"):
    for doc in ref.load_text_files(paths, errors):
        yield from doc.splitlines()


@mutant("text.load_text_files", "test_text_files_load_one_document_per_file_in_sorted_order",
        why="strips the file's text")
def load_text_files_stripped(paths, errors="strict"):
    for doc in ref.load_text_files(paths, errors):
        yield doc.strip()


@mutant("text.load_text_files", "test_loaders_are_lazy", why="reads every file up front")
def load_text_files_eagerly(paths, errors="strict"):
    return iter(list(ref.load_text_files(paths, errors)))


@mutant("text.load_text_files", "test_rejects_invalid_utf8_naming_the_file_and_byte",
        why="drops invalid bytes silently")
def load_text_files_ignoring_bad_bytes(paths, errors="strict"):
    for path in _files(paths):
        yield path.read_bytes().decode("utf-8", errors="ignore")


@mutant("text.load_jsonl", "test_loaders_are_lazy", why="parses the whole file up front")
def load_jsonl_eagerly(paths, field="text", errors="strict"):
    return iter(list(ref.load_jsonl(paths, field, errors)))


@mutant("text.load_jsonl", "test_jsonl_yields_the_field_of_each_line", why="drops documents whose text is empty")
def load_jsonl_skipping_empty_documents(paths, field="text", errors="strict"):
    return (doc for doc in ref.load_jsonl(paths, field, errors) if doc)


@mutant("text.load_jsonl", "test_rejects_a_jsonl_line_without_the_field", why="skips lines without the field silently")
def load_jsonl_skipping_lines_without_the_field(paths, field="text", errors="strict"):
    for path in _files(paths):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if field in record:
                    yield record[field]


@mutant("text.load_hf_dataset", "test_hf_datasets_load_in_memory_and_streaming",
        why="materialises the whole dataset, streaming or not")
def load_hf_dataset_as_a_list(dataset, field="text", split="train", streaming=False, **load_kwargs):
    return list(ref.load_hf_dataset(dataset, field, split, streaming, **load_kwargs))


@mutant("text.load_hf_dataset", "test_hf_dataset_loads_the_split_asked_for", why="always the train split")
def load_hf_dataset_ignoring_the_split(dataset, field="text", split="train", streaming=False, **load_kwargs):
    return ref.load_hf_dataset(dataset, field, "train", streaming, **load_kwargs)


@mutant("text.load_jsonl", "test_invalid_utf8_in_jsonl_names_the_line_or_is_replaced",
        why="errors='replace' is not passed on: invalid UTF-8 always raises")
def load_jsonl_ignoring_errors(paths, field="text", errors="strict"):
    return ref.load_jsonl(paths, field)


@mutant("text.load_jsonl", "test_invalid_utf8_in_jsonl_names_the_line_or_is_replaced",
        why="reads every file with errors='replace', silently")
def load_jsonl_replacing_invalid_bytes_always(paths, field="text", errors="strict"):
    for path in _files(paths):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                yield json.loads(line)[field]


@mutant("text.load_jsonl", "test_rejects_a_jsonl_line_without_the_field",
        why="trusts every line to be an object whose field is a string")
def load_jsonl_yielding_any_value(paths, field="text", errors="strict"):
    for path in _files(paths):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if field not in record:
                raise ValueError(f"{path}:{number}: no field {field!r}")
            yield record[field]


# ---------------------------------------------------------------- cleaning


@mutant("text.normalize_unicode", "test_cleaning_is_idempotent", why="NFD instead of NFC")
def normalize_unicode_decomposing(text, form="NFC"):
    return unicodedata.normalize("NFD" if form == "NFC" else "NFKD", text)


@mutant("text.clean", "test_cleaning_is_idempotent",
        why="normalises before removing controls: a removed control can expose a composable pair")
def clean_normalizing_before_removing_controls(text, form="NFC"):
    return ref.normalize_whitespace(ref.remove_control_characters(ref.normalize_unicode(text, form)))


@mutant("text.clean", "test_clean_fixes_the_usual_mess", why="forgets Unicode normalisation")
def clean_without_unicode_normalization(text, form="NFC"):
    return ref.normalize_whitespace(ref.remove_control_characters(text))


_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines() breaks


def _plain_space(ch):
    """A line break as '\\n', any other whitespace but the tab as ' ', everything else unchanged."""
    if ch in _LINE_BREAKS:
        return "\n"
    return " " if ch.isspace() and ch != "\t" else ch


@mutant("text.normalize_whitespace", "test_cleaning_is_idempotent", why="one replace pass leaves runs of blank lines")
def normalize_whitespace_collapsing_blank_lines_once(text):
    text = "".join(_plain_space(ch) for ch in text.replace("\r\n", "\n"))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return text.replace("\n\n\n", "\n\n").strip(" \t\n")


@mutant("text.normalize_whitespace", "test_cleaning_never_makes_text_longer", why="expands tabs to spaces")
def normalize_whitespace_expanding_tabs(text):
    return ref.normalize_whitespace(text.expandtabs(4))


@mutant("text.normalize_whitespace", "test_whitespace_normalization_keeps_lines_and_indentation",
        why="flattens lines and indentation")
def normalize_whitespace_collapsing_every_run(text):
    return " ".join(text.split())


@mutant("text.normalize_whitespace", "test_whitespace_normalization_keeps_lines_and_indentation",
        why="turns \\r\\n into two line breaks")
def normalize_whitespace_doubling_crlf(text):
    return ref.normalize_whitespace(text.replace("\r\n", "\r\r"))


@mutant("text.remove_control_characters", "test_control_characters_are_removed_and_everything_else_kept",
        why="removes newlines and tabs too")
def remove_every_control_character(text):
    kept = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    return kept.replace("\ufeff", "").replace("\u200b", "")


@mutant("text.remove_control_characters", "test_control_characters_are_removed_and_everything_else_kept",
        why="removes U+200D and other Cf")
def remove_format_characters_too(text):
    return "".join(ch for ch in ref.remove_control_characters(text) if unicodedata.category(ch) != "Cf")


# ---------------------------------------------------------------- quality filters


@mutant("text.mean_word_length", "test_quality_statistics_match_their_definitions",
        why="counts the spaces between words")
def mean_word_length_counting_spaces(text):
    words = text.split()
    return len(text.strip()) / len(words) if words else 0.0


@mutant("text.symbol_to_word_ratio", "test_quality_statistics_match_their_definitions", why="forgets '…'")
def symbol_ratio_forgetting_the_ellipsis_character(text):
    words = text.split()
    return (text.count("#") + text.count("...")) / len(words) if words else 0.0


@mutant("text.alphabetic_word_fraction", "test_quality_statistics_match_their_definitions",
        why="word.isalpha() instead of any letter")
def alphabetic_fraction_requiring_all_letters(text):
    words = text.split()
    return sum(word.isalpha() for word in words) / len(words) if words else 0.0


@mutant("text.duplicate_line_fraction", "test_quality_statistics_match_their_definitions",
        why="counts the first copy of a repeated line too")
def duplicate_lines_counting_first_copies(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    counts = Counter(lines)
    return sum(c for c in counts.values() if c > 1) / len(lines) if lines else 0.0


@mutant("text.failed_rules", "test_each_rule_drops_what_breaks_it_and_keeps_the_rest", why="min_words is exclusive")
def failed_rules_with_exclusive_bounds(text, config=None):
    config = config or ref.QualityConfig()
    failed = ref.failed_rules(text, config)
    if ref.word_count(text) == config.min_words:
        failed.insert(0, "too_few_words")
    return failed


@mutant("text.failed_rules", "test_each_rule_drops_what_breaks_it_and_keeps_the_rest",
        why="always the default thresholds")
def failed_rules_ignoring_the_config(text, config=None):
    return ref.failed_rules(text)


_lines_seen: set = set()


@mutant("text.failed_rules", "test_filters_are_pure", why="remembers lines of earlier documents")
def failed_rules_remembering_lines_across_documents(text, config=None):
    """Counts a line as duplicated when any earlier document had it: the verdict depends on the corpus."""
    failed = ref.failed_rules(text, config)
    lines = {line.strip() for line in text.splitlines() if line.strip()}
    if lines and lines <= _lines_seen and "duplicate_lines" not in failed:
        failed.append("duplicate_lines")
    _lines_seen.update(lines)
    return failed


@mutant("text.quality_filter", "test_report_counts_each_dropped_document_under_its_first_rule",
        why="counts a document under every rule")
def quality_filter_counting_every_broken_rule(docs, config=None, report=None):
    for doc in docs:
        failed = ref.failed_rules(doc, config)
        if not failed:
            yield doc
        elif report is not None:
            report.dropped.update(failed)


def _failed_rules_with_the_default(field):
    """failed_rules that reads one threshold from the defaults instead of the config it is given."""

    def failed_rules(text, config=None):
        config = config or ref.QualityConfig()
        return ref.failed_rules(text, dataclasses.replace(config, **{field: getattr(ref.QualityConfig(), field)}))

    failed_rules.__name__ = f"failed_rules_ignoring_{field}"
    return failed_rules


for _field in ("max_mean_word_length", "max_symbol_word_ratio", "min_alphabetic_fraction",
               "max_duplicate_line_fraction"):
    mutant("text.failed_rules", "test_failed_rules_are_the_statistics_outside_the_config_bounds",
           why=f"config.{_field} is ignored: the default is used")(_failed_rules_with_the_default(_field))


@mutant("text.failed_rules", "test_failed_rules_are_the_statistics_outside_the_config_bounds",
        why="the ratio bounds are exclusive: a statistic equal to its bound fails")
def failed_rules_with_exclusive_ratio_bounds(text, config=None):
    config = config or ref.QualityConfig()
    words = ref.word_count(text)
    checks = [
        ("too_few_words", words >= config.min_words),
        ("too_many_words", words <= config.max_words),
        ("mean_word_length", config.min_mean_word_length < ref.mean_word_length(text) < config.max_mean_word_length),
        ("symbol_to_word_ratio", ref.symbol_to_word_ratio(text) < config.max_symbol_word_ratio),
        ("alphabetic_fraction", ref.alphabetic_word_fraction(text) > config.min_alphabetic_fraction),
        ("duplicate_lines", ref.duplicate_line_fraction(text) < config.max_duplicate_line_fraction),
    ]
    return [name for name, passed in checks if not passed]


@mutant("text.quality_filter", "test_every_stage_streams", why="a list comprehension: reads the whole corpus first")
def quality_filter_as_a_list(docs, config=None, report=None):
    return [doc for doc in ref.quality_filter(docs, config, report)]


# ---------------------------------------------------------------- exact dedup


@mutant("text.dedup_key", "test_dedup_key_ignores_case_whitespace_and_unicode_form_only", why="no normalisation")
def dedup_key_of_the_raw_text(text):
    return text.encode("utf-8", "surrogatepass")


@mutant("text.dedup_key", "test_dedup_key_ignores_case_whitespace_and_unicode_form_only", why="drops punctuation")
def dedup_key_ignoring_punctuation(text):
    return ref.dedup_key(re.sub(r"[^\w\s]", "", text))


@mutant("text.exact_dedup", "test_exact_dedup_keeps_the_first_of_each_duplicate_in_order",
        why="keeps the last occurrence")
def exact_dedup_keeping_the_last(docs, report=None):
    docs = list(docs)
    return reversed(list(ref.exact_dedup(reversed(docs), report)))


@mutant("text.exact_dedup", "test_exact_dedup_keeps_the_first_of_each_duplicate_in_order", why="loses the corpus order")
def exact_dedup_via_a_sorted_set(docs, report=None):
    first = {}
    for doc in docs:
        first.setdefault(ref.dedup_key(doc), doc)
    return iter(sorted(first.values()))


@mutant("text.exact_dedup", "test_exact_dedup_keeps_the_first_of_each_duplicate_in_order",
        why="does not report its drops")
def exact_dedup_without_a_report(docs, report=None):
    return ref.exact_dedup(docs)


@mutant("text.dedup_key", "test_dedup_key_ignores_case_whitespace_and_unicode_form_only",
        why="the normalised text itself as the key: memory grows with the corpus, not 16 bytes a document")
def dedup_key_of_the_normalized_text(text):
    return " ".join(ref.clean(text).casefold().split()).encode("utf-8", "surrogatepass")


@mutant("text.exact_dedup", "test_every_stage_streams", why="collects the first of each key, then yields them")
def exact_dedup_collecting_first(docs, report=None):
    first = {}
    for doc in docs:
        key = ref.dedup_key(doc)
        if key in first:
            if report is not None:
                report.dropped["exact_duplicate"] += 1
        else:
            first[key] = doc
    return iter(first.values())


# ---------------------------------------------------------------- MinHash and LSH


@mutant("text.shingles", "test_shingles_are_the_word_ngrams", why="character n-grams")
def shingles_of_characters(text, ngram=5):
    text = " ".join(text.split())
    return {tuple(text[i:i + ngram]) for i in range(max(len(text) - ngram + 1, 1))}


@mutant("text.shingles", "test_shingles_are_the_word_ngrams", why="off by one")
def shingles_missing_the_last(text, ngram=5):
    words = text.split()
    if len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i:i + ngram]) for i in range(len(words) - ngram)} or {tuple(words[:ngram])}


@mutant("text.jaccard", "test_jaccard_is_intersection_over_union", why="the overlap coefficient")
def jaccard_over_the_smaller_set(a, b):
    smaller = min(len(a), len(b))
    return len(a & b) / smaller if smaller else 1.0


@mutant("text.minhash_signatures", "test_minhash_estimate_is_within_the_hoeffding_bound_of_the_true_jaccard",
        why="the same hash function in every column: the estimate is 0 or 1")
def minhash_with_one_hash_function_repeated(docs, num_perm=128, ngram=5, seed=0):
    one = ref.minhash_signatures(docs, 1, ngram, seed)
    return np.repeat(one, num_perm, axis=1)


@mutant("text.minhash_signatures", "test_minhash_estimate_is_within_the_hoeffding_bound_of_the_true_jaccard",
        why="ignores ngram")
def minhash_on_single_words(docs, num_perm=128, ngram=5, seed=0):
    return ref.minhash_signatures(docs, num_perm, 1, seed)


@mutant("text.minhash_signatures", "test_signatures_are_deterministic_and_independent_of_the_batch",
        why="minimum across documents")
def minhash_with_a_running_minimum_over_documents(docs, num_perm=128, ngram=5, seed=0):
    """A reduce over the whole batch instead of per document: row i is the minimum over documents 0..i."""
    return np.minimum.accumulate(ref.minhash_signatures(docs, num_perm, ngram, seed), axis=0)


@mutant("text.minhash_signatures", "test_signatures_are_deterministic_and_independent_of_the_batch",
        why="new hash functions every call")
def minhash_seeded_by_the_clock(docs, num_perm=128, ngram=5, seed=0):
    return ref.minhash_signatures(docs, num_perm, ngram, seed + time.perf_counter_ns())


@mutant("text.near_dedup", "test_near_dedup_catches_a_one_word_edit_of_a_long_document",
        why="only catches exact copies")
def near_dedup_requiring_identical_signatures(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0,
                                              report=None):
    return ref.near_dedup(docs, 1.0, num_perm, bands, ngram, seed, report)


@mutant("text.near_dedup", "test_near_dedup_catches_a_one_word_edit_of_a_long_document",
        "test_identical_documents_are_always_near_duplicates",
        why="drops nothing")
def near_dedup_never_dropping(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    return iter(docs)


@mutant("text.near_dedup", "test_identical_documents_are_always_near_duplicates", why="compares neighbours only")
def near_dedup_comparing_with_the_previous_document_only(docs, threshold=0.8, num_perm=128, bands=None, ngram=5,
                                                         seed=0, report=None):
    previous = None
    for doc in docs:
        signature = ref.minhash_signatures([doc], num_perm, ngram, seed)[0]
        if previous is None or ref.estimate_jaccard(signature, previous) < threshold:
            yield doc
        previous = signature


def _bands_for(threshold, num_perm):
    """The fewest bands that make a pair at the threshold a candidate with probability 0.99."""
    for bands in range(1, num_perm + 1):
        if 1 - (1 - threshold ** (num_perm // bands)) ** bands >= 0.99:
            return bands
    return num_perm


@mutant("text.near_dedup", "test_near_dedup_keeps_documents_of_low_similarity",
        why="an LSH candidate is not a duplicate")
def near_dedup_trusting_lsh_candidates(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    """Drops every document that shares a band with a kept one, without confirming the estimated Jaccard."""
    bands = bands or _bands_for(threshold, num_perm)
    rows = num_perm // bands
    docs = list(docs)
    signatures = ref.minhash_signatures(docs, num_perm, ngram, seed)
    tables = [set() for _ in range(bands)]
    for doc, signature in zip(docs, signatures):
        keys = [signature[b * rows:(b + 1) * rows].tobytes() for b in range(bands)]
        if any(key in table for table, key in zip(tables, keys)):
            continue
        for table, key in zip(tables, keys):
            table.add(key)
        yield doc


@mutant("text.near_dedup", "test_near_dedup_keeps_the_first_of_each_group_in_order", why="keeps the last of each group")
def near_dedup_keeping_the_last(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    docs = list(docs)
    return reversed(list(ref.near_dedup(reversed(docs), threshold, num_perm, bands, ngram, seed, report)))


@mutant("text.minhash_signatures", "test_signatures_are_deterministic_and_independent_of_the_batch",
        why="int64 signatures: twice the memory, and not the documented dtype")
def minhash_as_int64(docs, num_perm=128, ngram=5, seed=0):
    return ref.minhash_signatures(docs, num_perm, ngram, seed).astype(np.int64)


@mutant("text.estimate_jaccard", "test_estimate_jaccard_is_the_fraction_of_equal_positions",
        why="the Jaccard similarity of the sets of signature values, not the fraction of agreeing positions")
def estimate_jaccard_of_the_value_sets(a, b):
    if a.shape != b.shape:
        raise ValueError(f"signatures of different shapes {a.shape} and {b.shape}")
    return ref.jaccard(set(a.tolist()), set(b.tolist()))


@mutant("text.near_dedup", "test_near_dedup_compares_word_ngrams_of_the_size_given", why="ignores ngram")
def near_dedup_on_five_word_shingles_always(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0,
                                            report=None):
    return ref.near_dedup(docs, threshold, num_perm, bands, 5, seed, report)


@mutant("text.near_dedup", "test_near_dedup_compares_word_ngrams_of_the_size_given", why="n + 1 words per shingle")
def near_dedup_one_word_too_many(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    return ref.near_dedup(docs, threshold, num_perm, bands, ngram + 1, seed, report)


@mutant("text.near_dedup", "test_near_dedup_compares_only_with_kept_documents",
        why="dropped documents go into the LSH tables too: a chain of near duplicates drops documents alike to "
            "nothing that was kept")
def near_dedup_tabling_every_document(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    bands = bands or _bands_for(threshold, num_perm)
    rows = num_perm // bands
    tables = [{} for _ in range(bands)]
    seen = []  # signatures of every document so far, kept or not
    for doc in docs:
        signature = ref.minhash_signatures([doc], num_perm, ngram, seed)[0]
        keys = [signature[b * rows:(b + 1) * rows].tobytes() for b in range(bands)]
        candidates = {c for table, key in zip(tables, keys) for c in table.get(key, ())}
        duplicate = any(ref.estimate_jaccard(signature, seen[c]) >= threshold for c in candidates)
        for table, key in zip(tables, keys):
            table.setdefault(key, []).append(len(seen))
        seen.append(signature)
        if duplicate:
            if report is not None:
                report.dropped["near_duplicate"] += 1
        else:
            yield doc


@mutant("text.near_dedup", "test_every_stage_streams",
        why="signs the whole corpus at once: minhash_signatures takes a list")
def near_dedup_signing_everything_first(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    docs = list(docs)
    ref.minhash_signatures(docs, num_perm, ngram, seed)
    return ref.near_dedup(docs, threshold, num_perm, bands, ngram, seed, report)


@mutant("text.near_dedup", "test_rejects_near_dedup_parameters_out_of_range",
        why="clamps bands into 1..num_perm and takes any threshold")
def near_dedup_clamping_its_parameters(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    threshold = min(max(threshold, 1e-9), 1.0)
    bands = None if bands is None else min(max(bands, 1), num_perm)
    return ref.near_dedup(docs, threshold, num_perm, bands, ngram, seed, report)


@mutant("text.shingles", "test_rejects_near_dedup_parameters_out_of_range", why="ngram=0 gives the empty shingle")
def shingles_of_any_size(text, ngram=5):
    words = text.split()
    if len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}


# ---------------------------------------------------------------- the pipeline and bad input


@mutant("text.clean_corpus", "test_clean_corpus_cleans_filters_and_deduplicates", why="forgets exact dedup")
def clean_corpus_without_exact_dedup(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    report = report if report is not None else ref.FilterReport()

    def counted():
        for doc in docs:
            report.read += 1
            yield ref.clean(doc, form)

    stream = ref.quality_filter((d for d in counted() if d), config, report)
    if near_threshold is not None:
        stream = ref.near_dedup(stream, threshold=near_threshold, report=report)
    for doc in stream:
        report.kept += 1
        yield doc


@mutant("text.clean_corpus", "test_rejects_a_corpus_empty_after_filtering", why="an empty corpus passes silently")
def clean_corpus_yielding_nothing_quietly(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    try:
        yield from ref.clean_corpus(docs, config, near_threshold, form, report)
    except ValueError:
        return


@mutant("text.decode_utf8", "test_replacing_invalid_utf8_reports_the_count", why="counts the genuine U+FFFD too")
def decode_utf8_counting_every_replacement_character(data, source="<bytes>", errors="strict"):
    if errors == "strict":
        return ref.decode_utf8(data, source, errors)
    text = data.decode("utf-8", errors="replace")
    import warnings

    warnings.warn(f"{source}: replaced {text.count(chr(0xFFFD))} invalid UTF-8 sequence(s)", UnicodeWarning)
    return text


@mutant("text.decode_utf8", "test_replacing_invalid_utf8_reports_the_count", why="replaces without a word")
def decode_utf8_replacing_silently(data, source="<bytes>", errors="strict"):
    if errors == "strict":
        return ref.decode_utf8(data, source, errors)
    return data.decode("utf-8", errors="replace")


def _clean_corpus_with(docs, config, near_threshold, form, report):
    """The reference pipeline with the arguments a mutant passes on."""
    return ref.clean_corpus(docs, config, near_threshold, form, report)


@mutant("text.clean_corpus", "test_clean_corpus_is_its_stages_in_order",
        why="near_threshold only switches near dedup on or off: the threshold is always 0.8")
def clean_corpus_with_a_fixed_near_threshold(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    return _clean_corpus_with(docs, config, None if near_threshold is None else 0.8, form, report)


@mutant("text.clean_corpus", "test_clean_corpus_is_its_stages_in_order", why="near dedup always runs")
def clean_corpus_always_near_deduplicating(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    return _clean_corpus_with(docs, config, near_threshold or 0.8, form, report)


@mutant("text.clean_corpus", "test_clean_corpus_is_its_stages_in_order", why="form is not passed on to clean")
def clean_corpus_ignoring_the_form(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    return _clean_corpus_with(docs, config, near_threshold, "NFC", report)


@mutant("text.clean_corpus", "test_clean_corpus_is_its_stages_in_order",
        why="counts only the documents that survive cleaning as read")
def clean_corpus_not_counting_empty_documents(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    report = report if report is not None else ref.FilterReport()
    cleaned = (text for text in (ref.clean(doc, form) for doc in docs) if text)
    stream = ref.exact_dedup(ref.quality_filter(cleaned, config, report), report)
    if near_threshold is not None:
        stream = ref.near_dedup(stream, threshold=near_threshold, report=report)
    for doc in stream:
        report.kept += 1
        yield doc
    report.read = report.kept + sum(report.dropped.values())
    if report.kept == 0:
        raise ValueError(f"the corpus is empty after filtering: {report}")


@mutant("text.clean_corpus", "test_rejects_a_corpus_empty_after_filtering",
        why="the error says the corpus is empty, not how many were read nor what dropped them")
def clean_corpus_with_a_bare_error(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    try:
        yield from ref.clean_corpus(docs, config, near_threshold, form, report)
    except ValueError:
        raise ValueError("the corpus is empty after filtering") from None


@mutant("text.clean_corpus", "test_every_stage_streams", why="cleans the whole corpus before filtering it")
def clean_corpus_cleaning_everything_first(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    report = report if report is not None else ref.FilterReport()
    docs = list(docs)
    return ref.clean_corpus(docs, config, near_threshold, form, report)


# ---------------------------------------------------------------- boundaries, rejections and odd input


@mutant("text.load_hf_dataset", "test_rejects_a_dataset_row_without_a_string_field",
        why="skips rows whose field is missing or not a string, silently")
def load_hf_dataset_skipping_bad_rows(dataset, field="text", split="train", streaming=False, **load_kwargs):
    for row in dataset:
        if isinstance(row.get(field), str):
            yield row[field]


@mutant("text.load_hf_dataset", "test_hf_loader_without_datasets_says_what_to_install",
        why="imports datasets unguarded: the ImportError does not say what to install")
def load_hf_dataset_importing_unguarded(dataset, field="text", split="train", streaming=False, **load_kwargs):
    if isinstance(dataset, str):
        import datasets

        dataset = datasets.load_dataset(dataset, split=split, streaming=streaming, **load_kwargs)
    yield from ref.load_hf_dataset(dataset, field)


@mutant("text.normalize_whitespace", "test_whitespace_normalization_keeps_every_word",
        why="deletes exotic spaces (no-break, ideographic ...) instead of making them ' ': words run together")
def normalize_whitespace_deleting_exotic_spaces(text):
    exotic = {i: None for i, replacement in ref._SPACES.items() if replacement == " "}
    return ref.normalize_whitespace(text.translate(exotic))


@mutant("text.dedup_key", "test_exact_dedup_accepts_any_python_string",
        why="encodes strictly: a lone surrogate raises UnicodeEncodeError")
def dedup_key_encoding_strictly(text):
    normalized = " ".join(ref.clean(text).casefold().split())
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


@mutant("text.minhash_signatures", "test_signature_of_a_document_is_the_elementwise_minimum_over_its_words",
        why="signs only the first 1024 shingles of a long document, to bound memory")
def minhash_signatures_of_the_first_shingles(docs, num_perm=128, ngram=5, seed=0):
    return ref.minhash_signatures([" ".join(doc.split()[:1024]) for doc in docs], num_perm, ngram, seed)


@mutant("text.minhash_signatures", "test_signature_of_a_document_is_the_elementwise_minimum_over_its_words",
        why="signs the first chunk of 512 documents and leaves the rest of the output as allocated")
def minhash_signatures_of_the_first_chunk(docs, num_perm=128, ngram=5, seed=0):
    out = np.zeros((len(docs), num_perm), dtype=np.uint32)
    out[:512] = ref.minhash_signatures(docs[:512], num_perm, ngram, seed)
    return out


@mutant("text.near_dedup", "test_near_dedup_keeps_what_its_signatures_decide",
        why="signs with the default seed: near_dedup(seed=s) ignores s")
def near_dedup_ignoring_the_seed(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    return ref.near_dedup(docs, threshold, num_perm, bands, ngram, 0, report)


@mutant("text.near_dedup", "test_parameters_at_their_bounds_are_accepted",
        why="a near duplicate must be strictly more similar than the threshold: at 1.0 nothing is ever dropped")
def near_dedup_strictly_above_the_threshold(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0,
                                            report=None):
    if threshold >= 1.0:  # `estimate > threshold`: no estimate is above 1.0, so nothing is dropped
        yield from docs
        return
    yield from ref.near_dedup(docs, threshold, num_perm, bands, ngram, seed, report)


@mutant("text.near_dedup", "test_parameters_at_their_bounds_are_accepted",
        why="bands must be fewer than num_perm: bands = num_perm (one row each) is rejected")
def near_dedup_rejecting_one_row_bands(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    if bands is not None and bands >= num_perm:
        raise ValueError(f"bands must be below num_perm={num_perm}, got {bands}")
    return ref.near_dedup(docs, threshold, num_perm, bands, ngram, seed, report)


@mutant("text.clean_corpus", "test_clean_corpus_cleans_filters_and_deduplicates",
        why="drops documents that clean to '' without counting them in the report")
def clean_corpus_without_the_empty_count(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    report = report if report is not None else ref.FilterReport()
    out = ref.clean_corpus(docs, config, near_threshold, form, report)
    try:
        yield from out
    finally:
        report.dropped.pop("empty", None)


@mutant("text.normalize_unicode", "test_every_documented_rejection_names_the_bad_value",
        why="passes any form on to unicodedata: NFD is accepted")
def normalize_unicode_any_form(text, form="NFC"):
    return unicodedata.normalize(form.upper(), text)


@mutant("text.decode_utf8", "test_every_documented_rejection_names_the_bad_value",
        why="anything but 'strict' replaces")
def decode_utf8_replacing_unless_strict(data, source="<bytes>", errors="strict"):
    return ref.decode_utf8(data, source, "strict" if errors == "strict" else "replace")


@mutant("text.minhash_signatures", "test_every_documented_rejection_names_the_bad_value",
        why="ngram=0 is taken as 1 instead of rejected")
def minhash_signatures_taking_ngram_0_as_1(docs, num_perm=128, ngram=5, seed=0):
    return ref.minhash_signatures(docs, num_perm, max(ngram, 1), seed)
