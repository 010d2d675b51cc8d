"""Wrong implementations of the text chapter that a learner could plausibly write."""

import glob
import json
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

import llmkata.reference.text as ref

from . import Mutant

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


def default_corpus_as_a_list():
    return list(ref.default_corpus())


def default_corpus_as_one_document():
    yield "\n\n".join(ref.default_corpus())


def load_text_files_one_document_per_line(paths, errors="strict"):
    for doc in ref.load_text_files(paths, errors):
        yield from doc.splitlines()


def load_text_files_stripped(paths, errors="strict"):
    for doc in ref.load_text_files(paths, errors):
        yield doc.strip()


def load_text_files_eagerly(paths, errors="strict"):
    return iter(list(ref.load_text_files(paths, errors)))


def load_text_files_ignoring_bad_bytes(paths, errors="strict"):
    for path in _files(paths):
        yield path.read_bytes().decode("utf-8", errors="ignore")


def load_jsonl_eagerly(paths, field="text", errors="strict"):
    return iter(list(ref.load_jsonl(paths, field, errors)))


def load_jsonl_skipping_empty_documents(paths, field="text", errors="strict"):
    return (doc for doc in ref.load_jsonl(paths, field, errors) if doc)


def load_jsonl_skipping_lines_without_the_field(paths, field="text", errors="strict"):
    for path in _files(paths):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if field in record:
                    yield record[field]


def load_hf_dataset_as_a_list(dataset, field="text", split="train", streaming=False, **load_kwargs):
    return list(ref.load_hf_dataset(dataset, field, split, streaming, **load_kwargs))


# ---------------------------------------------------------------- cleaning


def normalize_unicode_decomposing(text, form="NFC"):
    return unicodedata.normalize("NFD" if form == "NFC" else "NFKD", text)


def clean_normalizing_before_removing_controls(text, form="NFC"):
    return ref.normalize_whitespace(ref.remove_control_characters(ref.normalize_unicode(text, form)))


def clean_without_unicode_normalization(text, form="NFC"):
    return ref.normalize_whitespace(ref.remove_control_characters(text))


_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines() breaks


def _plain_space(ch):
    """A line break as '\\n', any other whitespace but the tab as ' ', everything else unchanged."""
    if ch in _LINE_BREAKS:
        return "\n"
    return " " if ch.isspace() and ch != "\t" else ch


def normalize_whitespace_collapsing_blank_lines_once(text):
    text = "".join(_plain_space(ch) for ch in text.replace("\r\n", "\n"))
    text = re.sub(r"[ \t]+\n", "\n", text)
    return text.replace("\n\n\n", "\n\n").strip(" \t\n")


def normalize_whitespace_expanding_tabs(text):
    return ref.normalize_whitespace(text.expandtabs(4))


def normalize_whitespace_collapsing_every_run(text):
    return " ".join(text.split())


def normalize_whitespace_doubling_crlf(text):
    return ref.normalize_whitespace(text.replace("\r\n", "\r\r"))


def remove_every_control_character(text):
    kept = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    return kept.replace("\ufeff", "").replace("\u200b", "")


def remove_format_characters_too(text):
    return "".join(ch for ch in ref.remove_control_characters(text) if unicodedata.category(ch) != "Cf")


# ---------------------------------------------------------------- quality filters


def mean_word_length_counting_spaces(text):
    words = text.split()
    return len(text.strip()) / len(words) if words else 0.0


def symbol_ratio_forgetting_the_ellipsis_character(text):
    words = text.split()
    return (text.count("#") + text.count("...")) / len(words) if words else 0.0


def alphabetic_fraction_requiring_all_letters(text):
    words = text.split()
    return sum(word.isalpha() for word in words) / len(words) if words else 0.0


def duplicate_lines_counting_first_copies(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    counts = Counter(lines)
    return sum(c for c in counts.values() if c > 1) / len(lines) if lines else 0.0


def failed_rules_with_exclusive_bounds(text, config=None):
    config = config or ref.QualityConfig()
    failed = ref.failed_rules(text, config)
    if ref.word_count(text) == config.min_words:
        failed.insert(0, "too_few_words")
    return failed


def failed_rules_ignoring_the_config(text, config=None):
    return ref.failed_rules(text)


_lines_seen: set = set()


def failed_rules_remembering_lines_across_documents(text, config=None):
    """Counts a line as duplicated when any earlier document had it: the verdict depends on the corpus."""
    failed = ref.failed_rules(text, config)
    lines = {line.strip() for line in text.splitlines() if line.strip()}
    if lines and lines <= _lines_seen and "duplicate_lines" not in failed:
        failed.append("duplicate_lines")
    _lines_seen.update(lines)
    return failed


def quality_filter_counting_every_broken_rule(docs, config=None, report=None):
    for doc in docs:
        failed = ref.failed_rules(doc, config)
        if not failed:
            yield doc
        elif report is not None:
            report.dropped.update(failed)


# ---------------------------------------------------------------- exact dedup


def dedup_key_of_the_raw_text(text):
    return text.encode("utf-8", "surrogatepass")


def dedup_key_ignoring_punctuation(text):
    return ref.dedup_key(re.sub(r"[^\w\s]", "", text))


def exact_dedup_keeping_the_last(docs, report=None):
    docs = list(docs)
    return reversed(list(ref.exact_dedup(reversed(docs), report)))


def exact_dedup_via_a_sorted_set(docs, report=None):
    first = {}
    for doc in docs:
        first.setdefault(ref.dedup_key(doc), doc)
    return iter(sorted(first.values()))


def exact_dedup_without_a_report(docs, report=None):
    return ref.exact_dedup(docs)


# ---------------------------------------------------------------- MinHash and LSH


def shingles_of_characters(text, ngram=5):
    text = " ".join(text.split())
    return {tuple(text[i:i + ngram]) for i in range(max(len(text) - ngram + 1, 1))}


def shingles_missing_the_last(text, ngram=5):
    words = text.split()
    if len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i:i + ngram]) for i in range(len(words) - ngram)} or {tuple(words[:ngram])}


def jaccard_over_the_smaller_set(a, b):
    smaller = min(len(a), len(b))
    return len(a & b) / smaller if smaller else 1.0


def minhash_with_one_hash_function_repeated(docs, num_perm=128, ngram=5, seed=0):
    one = ref.minhash_signatures(docs, 1, ngram, seed)
    return np.repeat(one, num_perm, axis=1)


def minhash_on_single_words(docs, num_perm=128, ngram=5, seed=0):
    return ref.minhash_signatures(docs, num_perm, 1, seed)


def minhash_with_a_running_minimum_over_documents(docs, num_perm=128, ngram=5, seed=0):
    """A reduce over the whole batch instead of per document: row i is the minimum over documents 0..i."""
    return np.minimum.accumulate(ref.minhash_signatures(docs, num_perm, ngram, seed), axis=0)


def minhash_seeded_by_the_clock(docs, num_perm=128, ngram=5, seed=0):
    return ref.minhash_signatures(docs, num_perm, ngram, seed + time.perf_counter_ns())


def near_dedup_requiring_identical_signatures(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0,
                                              report=None):
    return ref.near_dedup(docs, 1.0, num_perm, bands, ngram, seed, report)


def near_dedup_never_dropping(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    return iter(docs)


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


def near_dedup_keeping_the_last(docs, threshold=0.8, num_perm=128, bands=None, ngram=5, seed=0, report=None):
    docs = list(docs)
    return reversed(list(ref.near_dedup(reversed(docs), threshold, num_perm, bands, ngram, seed, report)))


# ---------------------------------------------------------------- the pipeline and bad input


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


def clean_corpus_yielding_nothing_quietly(docs, config=None, near_threshold=0.8, form="NFC", report=None):
    try:
        yield from ref.clean_corpus(docs, config, near_threshold, form, report)
    except ValueError:
        return


def decode_utf8_counting_every_replacement_character(data, source="<bytes>", errors="strict"):
    if errors == "strict":
        return ref.decode_utf8(data, source, errors)
    text = data.decode("utf-8", errors="replace")
    import warnings

    warnings.warn(f"{source}: replaced {text.count(chr(0xFFFD))} invalid UTF-8 sequence(s)", UnicodeWarning)
    return text


def decode_utf8_replacing_silently(data, source="<bytes>", errors="strict"):
    if errors == "strict":
        return ref.decode_utf8(data, source, errors)
    return data.decode("utf-8", errors="replace")


MUTANTS = [
    Mutant("text.default_corpus", default_corpus_as_a_list,
           ("test_default_corpus_is_the_pydoc_topics_one_document_per_topic",), "reads the whole corpus eagerly"),
    Mutant("text.default_corpus", default_corpus_as_one_document,
           ("test_default_corpus_is_the_pydoc_topics_one_document_per_topic",), "one document for all topics"),
    Mutant("text.load_text_files", load_text_files_one_document_per_line,
           ("test_text_files_load_one_document_per_file_in_sorted_order",), "one document per line"),
    Mutant("text.load_text_files", load_text_files_stripped,
           ("test_text_files_load_one_document_per_file_in_sorted_order",), "strips the file's text"),
    Mutant("text.load_text_files", load_text_files_eagerly, ("test_loaders_are_lazy",), "reads every file up front"),
    Mutant("text.load_text_files", load_text_files_ignoring_bad_bytes,
           ("test_rejects_invalid_utf8_naming_the_file_and_byte",), "drops invalid bytes silently"),
    Mutant("text.load_jsonl", load_jsonl_eagerly, ("test_loaders_are_lazy",), "parses the whole file up front"),
    Mutant("text.load_jsonl", load_jsonl_skipping_empty_documents, ("test_jsonl_yields_the_field_of_each_line",),
           "drops documents whose text is empty"),
    Mutant("text.load_jsonl", load_jsonl_skipping_lines_without_the_field,
           ("test_rejects_a_jsonl_line_without_the_field",), "skips lines without the field silently"),
    Mutant("text.load_hf_dataset", load_hf_dataset_as_a_list, ("test_hf_datasets_load_in_memory_and_streaming",),
           "materialises the whole dataset, streaming or not"),
    Mutant("text.normalize_unicode", normalize_unicode_decomposing, ("test_cleaning_is_idempotent",),
           "NFD instead of NFC"),
    Mutant("text.clean", clean_normalizing_before_removing_controls, ("test_cleaning_is_idempotent",),
           "normalises before removing controls: a removed control can expose a composable pair"),
    Mutant("text.normalize_whitespace", normalize_whitespace_collapsing_blank_lines_once,
           ("test_cleaning_is_idempotent",), "one replace pass leaves runs of blank lines"),
    Mutant("text.normalize_whitespace", normalize_whitespace_expanding_tabs,
           ("test_cleaning_never_makes_text_longer",), "expands tabs to spaces"),
    Mutant("text.normalize_whitespace", normalize_whitespace_collapsing_every_run,
           ("test_whitespace_normalization_keeps_lines_and_indentation",), "flattens lines and indentation"),
    Mutant("text.normalize_whitespace", normalize_whitespace_doubling_crlf,
           ("test_whitespace_normalization_keeps_lines_and_indentation",), "turns \\r\\n into two line breaks"),
    Mutant("text.remove_control_characters", remove_every_control_character,
           ("test_control_characters_are_removed_and_everything_else_kept",), "removes newlines and tabs too"),
    Mutant("text.remove_control_characters", remove_format_characters_too,
           ("test_control_characters_are_removed_and_everything_else_kept",), "removes U+200D and other Cf"),
    Mutant("text.clean", clean_without_unicode_normalization, ("test_clean_fixes_the_usual_mess",),
           "forgets Unicode normalisation"),
    Mutant("text.mean_word_length", mean_word_length_counting_spaces,
           ("test_quality_statistics_match_their_definitions",), "counts the spaces between words"),
    Mutant("text.symbol_to_word_ratio", symbol_ratio_forgetting_the_ellipsis_character,
           ("test_quality_statistics_match_their_definitions",), "forgets '…'"),
    Mutant("text.alphabetic_word_fraction", alphabetic_fraction_requiring_all_letters,
           ("test_quality_statistics_match_their_definitions",), "word.isalpha() instead of any letter"),
    Mutant("text.duplicate_line_fraction", duplicate_lines_counting_first_copies,
           ("test_quality_statistics_match_their_definitions",), "counts the first copy of a repeated line too"),
    Mutant("text.failed_rules", failed_rules_with_exclusive_bounds,
           ("test_each_rule_drops_what_breaks_it_and_keeps_the_rest",), "min_words is exclusive"),
    Mutant("text.failed_rules", failed_rules_ignoring_the_config,
           ("test_each_rule_drops_what_breaks_it_and_keeps_the_rest",), "always the default thresholds"),
    Mutant("text.failed_rules", failed_rules_remembering_lines_across_documents, ("test_filters_are_pure",),
           "remembers lines of earlier documents"),
    Mutant("text.quality_filter", quality_filter_counting_every_broken_rule,
           ("test_report_counts_each_dropped_document_under_its_first_rule",), "counts a document under every rule"),
    Mutant("text.dedup_key", dedup_key_of_the_raw_text,
           ("test_dedup_key_ignores_case_whitespace_and_unicode_form_only",), "no normalisation"),
    Mutant("text.dedup_key", dedup_key_ignoring_punctuation,
           ("test_dedup_key_ignores_case_whitespace_and_unicode_form_only",), "drops punctuation"),
    Mutant("text.exact_dedup", exact_dedup_keeping_the_last,
           ("test_exact_dedup_keeps_the_first_of_each_duplicate_in_order",), "keeps the last occurrence"),
    Mutant("text.exact_dedup", exact_dedup_via_a_sorted_set,
           ("test_exact_dedup_keeps_the_first_of_each_duplicate_in_order",), "loses the corpus order"),
    Mutant("text.exact_dedup", exact_dedup_without_a_report,
           ("test_exact_dedup_keeps_the_first_of_each_duplicate_in_order",), "does not report its drops"),
    Mutant("text.shingles", shingles_of_characters, ("test_shingles_are_the_word_ngrams",), "character n-grams"),
    Mutant("text.shingles", shingles_missing_the_last, ("test_shingles_are_the_word_ngrams",), "off by one"),
    Mutant("text.jaccard", jaccard_over_the_smaller_set, ("test_jaccard_is_intersection_over_union",),
           "the overlap coefficient"),
    Mutant("text.minhash_signatures", minhash_with_one_hash_function_repeated,
           ("test_minhash_estimate_is_within_the_hoeffding_bound_of_the_true_jaccard",),
           "the same hash function in every column: the estimate is 0 or 1"),
    Mutant("text.minhash_signatures", minhash_on_single_words,
           ("test_minhash_estimate_is_within_the_hoeffding_bound_of_the_true_jaccard",), "ignores ngram"),
    Mutant("text.minhash_signatures", minhash_with_a_running_minimum_over_documents,
           ("test_signatures_are_deterministic_and_independent_of_the_batch",), "minimum across documents"),
    Mutant("text.minhash_signatures", minhash_seeded_by_the_clock,
           ("test_signatures_are_deterministic_and_independent_of_the_batch",), "new hash functions every call"),
    Mutant("text.near_dedup", near_dedup_requiring_identical_signatures,
           ("test_near_dedup_catches_a_one_word_edit_of_a_long_document",), "only catches exact copies"),
    Mutant("text.near_dedup", near_dedup_never_dropping,
           ("test_near_dedup_catches_a_one_word_edit_of_a_long_document",
            "test_identical_documents_are_always_near_duplicates"), "drops nothing"),
    Mutant("text.near_dedup", near_dedup_comparing_with_the_previous_document_only,
           ("test_identical_documents_are_always_near_duplicates",), "compares neighbours only"),
    Mutant("text.near_dedup", near_dedup_trusting_lsh_candidates,
           ("test_near_dedup_keeps_documents_of_low_similarity",), "an LSH candidate is not a duplicate"),
    Mutant("text.near_dedup", near_dedup_keeping_the_last,
           ("test_near_dedup_keeps_the_first_of_each_group_in_order",), "keeps the last of each group"),
    Mutant("text.clean_corpus", clean_corpus_without_exact_dedup,
           ("test_clean_corpus_cleans_filters_and_deduplicates",), "forgets exact dedup"),
    Mutant("text.clean_corpus", clean_corpus_yielding_nothing_quietly,
           ("test_rejects_a_corpus_empty_after_filtering",), "an empty corpus passes silently"),
    Mutant("text.decode_utf8", decode_utf8_counting_every_replacement_character,
           ("test_replacing_invalid_utf8_reports_the_count",), "counts the genuine U+FFFD too"),
    Mutant("text.decode_utf8", decode_utf8_replacing_silently,
           ("test_replacing_invalid_utf8_reports_the_count",), "replaces without a word"),
]
