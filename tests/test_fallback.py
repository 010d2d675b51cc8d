"""`llmkata train --fallback reference`: a learner's written chapters train, with the reference's for the rest.

The learners here are copies of exercises/ with some chapters filled in by the reference's own modules (the two
are packages with the same module names, so their relative imports hold).
"""

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

import llmkata.exercises
import llmkata.exercises.layers
import llmkata.reference
import llmkata.reference.attention
import llmkata.reference.layers
from llmkata import cli, fallback
from llmkata.pipeline import CHECKPOINT, SOURCES, Run, train
from llmkata.run_config import ConfigError, config_from_mapping, read_toml
from llmkata.spec.contract import CHAPTERS
from llmkata.spec.impl import load
from runs import as_flags

TINY = dict(max_documents=12, vocab_size=300, d_model=32, n_layers=2, n_heads=2, context_length=32, batch_size=4,
            steps=4, warmup_steps=1, eval_every=4, checkpoint_every=4, log_every=1, sample_tokens=8,
            progress=False, threads=1)
WRITTEN = ("text", "tokenizer", "data", "layers")  # the chapters the main learner here has done


def flags(**changes) -> list[str]:
    """The tiny configuration as command-line flags."""
    return as_flags({**TINY, **changes})


def learner(parent: Path, written: tuple[str, ...]) -> Path:
    """A copy of exercises/ whose `written` modules are the reference's, under a name no other test uses (an
    implementation is imported under its folder's name)."""
    folder = parent / re.sub(r"\W", "_", f"learner_{parent.name}")
    shutil.copytree(Path(llmkata.exercises.__path__[0]), folder, ignore=shutil.ignore_patterns("__pycache__"))
    for module in written:
        shutil.copyfile(Path(llmkata.reference.__path__[0]) / f"{module}.py", folder / f"{module}.py")
    return folder


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> tuple[Path, Path]:
    """(learner folder, run folder) of a run with --fallback reference, trained through the command line."""
    folder = learner(tmp_path_factory.mktemp("mixed"), WRITTEN)
    run = folder.parent / "run"
    assert cli.main(["train", "--out", str(run), *flags(impl=str(folder), fallback="reference")]) == 0
    return folder, run


# ---------------------------------------------------------------------------------------------- reading stubs


def first(source: str) -> ast.AST:
    return ast.parse(source).body[0]


def test_a_stub_is_a_not_implemented_error_raised_at_the_top_of_a_body():
    assert fallback.is_stub(first("def f(x):\n    '''doc'''\n    raise NotImplementedError('`m.f` is not')")), (
        "the generated stub form is a stub")
    assert fallback.is_stub(first("def f(x):\n    if fast:\n        return g(x)\n    raise NotImplementedError")), (
        "a stub after a branch the learner does not write (the kernels path) is still a stub")
    assert not fallback.is_stub(first("def f(x):\n    if x < 0:\n        raise NotImplementedError('no')\n"
                                      "    return x")), "a raise inside an if is the learner's own refusal of a case"
    assert not fallback.is_stub(first("def f(x):\n    return x")), "a written function is no stub"
    assert fallback.is_stub(first("class C:\n    def __init__(self):\n        self.a = 1\n"
                                  "    def forward(self, x):\n        raise NotImplementedError")), (
        "a class with one stub method is not written: a class is taken whole from one side")
    assert not fallback.is_stub(first("class C:\n    def forward(self, x):\n        return x")), (
        "a class whose methods are all written is written")


def test_every_stub_of_the_exercises_is_found_and_no_name_of_the_reference(tmp_path):
    mix = fallback.compose(load("exercises"), load("reference"))
    stubs = {name for name, why in mix.why.items() if why == fallback.STUB}
    assert {"layers.softmax", "layers.RMSNorm", "attention.CausalSelfAttention", "model.ModelConfig",
            "tokenizer.Tokenizer", "kernels.RMSNormFunction"} <= stubs, sorted(stubs)
    assert mix.sources["text.QualityConfig"] == fallback.YOURS, (
        "a class the exercise gives whole (no stub in it) is the learner's")
    finished = load(str(learner(tmp_path, tuple(chapter.module for chapter in CHAPTERS))))
    written = fallback.compose(finished, load("reference"))
    assert not written.mixes and set(written.sources.values()) == {fallback.YOURS}, (
        "the reference's own source, read as a learner's, has no stub: "
        f"{[n for n, s in written.sources.items() if s != fallback.YOURS]}")
    assert written.impl is finished, "a finished implementation is used as it is"


# ---------------------------------------------------------------------------------------------- the granularity


def test_stubs_are_replaced_wherever_the_learners_modules_hold_them():
    mix = fallback.compose(load("exercises"), load("reference"))
    copy = mix.impl.module("model")
    assert mix.impl.layers.RMSNorm is llmkata.reference.layers.RMSNorm
    assert copy.RMSNorm is llmkata.reference.layers.RMSNorm, (
        "model.py imported the stub RMSNorm from .layers: that global must be the reference's too")
    assert copy.CausalSelfAttention is llmkata.reference.attention.CausalSelfAttention
    assert llmkata.exercises.layers.RMSNorm is not llmkata.reference.layers.RMSNorm, (
        "the learner's own package must be left as it was: only a fresh copy is patched")


def test_a_missing_name_and_a_missing_module_come_from_the_reference(tmp_path):
    folder = learner(tmp_path, ("layers",))
    (folder / "rope.py").unlink()
    with open(folder / "layers.py", "a") as file:
        file.write("\n\ndel gelu\n")
    mix = fallback.compose(load(str(folder)), load("reference"))
    assert mix.why["layers.gelu"] == fallback.MISSING and mix.sources["layers.softmax"] == fallback.YOURS
    assert {mix.why[f"rope.{name}"] for name in ("rotate", "RotaryEmbedding")} == {fallback.NO_MODULE}
    assert mix.impl.rope.RotaryEmbedding is llmkata.reference.rope.RotaryEmbedding
    assert "you have no such module" in mix.table() and "gelu (missing)" in mix.table(), mix.table()


def test_the_learners_model_trains_with_their_layers_and_the_references_attention(tmp_path):
    written = ("text", "tokenizer", "data", "layers", "model", "train", "generate", "evaluate")
    folder = learner(tmp_path, written)
    run = tmp_path / "run"
    train(config_from_mapping({**TINY, "impl": str(folder), "fallback": "reference", "steps": 6, "eval_every": 6,
                               "checkpoint_every": 6}), run, say=lambda message: None)
    opened = Run.open(run)
    block = opened.model.model.layers[0]
    assert type(block.self_attn) is llmkata.reference.attention.CausalSelfAttention, (
        "the learner's model.py must build its attention from the reference's CausalSelfAttention")
    package = opened.impl.package
    for module, part in (("model", block), ("layers", block.input_layernorm), ("layers", block.mlp)):
        assert type(part).__module__ == f"{package}.{module}", (
            f"{type(part).__qualname__} must be the learner's own (written) {module} code, not {type(part).__module__}")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]
    assert len(losses) == 6 and losses[-1] < losses[0], f"the mixed model must train: {losses}"
    sources = json.loads((run / SOURCES).read_text())
    assert sources["chapters"]["attention"] == "reference" and sources["chapters"]["model"] == "yours", sources


# ---------------------------------------------------------------------------------------------- the command line


def test_a_run_with_fallback_records_which_chapter_came_from_where(mixed_run):
    _, run = mixed_run
    assert (run / CHECKPOINT).exists() and read_toml(run / "config.toml")["fallback"] == "reference"
    sources = json.loads((run / SOURCES).read_text())
    expected = {chapter: ("yours" if chapter in WRITTEN else "reference") for chapter in sources["chapters"]}
    assert sources["chapters"] == expected, f"sources.json must say which chapter came from where: {sources}"
    assert sources["names"]["layers.RMSNorm"] == "yours" and sources["names"]["model.Transformer"] == "reference"
    assert sources["why"]["model.Transformer"] == fallback.STUB
    assert json.loads((run / "summary.json").read_text())["sources"] == expected
    assert json.loads((run / "data.json").read_text())["made_with"]["fallback"] == "reference"


def test_sample_and_eval_use_the_mix_the_run_was_trained_with(mixed_run, capsys):
    folder, run = mixed_run
    assert cli.main(["sample", "--run", str(run), "--max-new-tokens", "4", "--seed", "1"]) == 0
    assert cli.main(["eval", "--run", str(run), "--json"]) == 0
    err = capsys.readouterr().err
    assert err.count("--fallback reference, as the run was trained") == 2, err
    shutil.copyfile(Path(llmkata.reference.__path__[0]) / "rope.py", folder / "rope.py")  # written since
    opened = Run.open(run)
    assert opened.mix.sources["rope.RotaryEmbedding"] == "reference", (
        "a part written after the run was trained must still come from the reference when the run is opened")
    assert opened.mix.why["rope.RotaryEmbedding"] == fallback.RECORDED and not opened.changed


def test_resume_keeps_the_fallback_of_the_run(mixed_run, capsys):
    _, run = mixed_run
    assert cli.main(["train", "--resume", str(run), "--fallback", ""]) == 2
    assert "fallback" in capsys.readouterr().err


def test_without_fallback_the_first_part_not_written_stops_the_run_in_one_line(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "run"), *flags(impl="exercises")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "`text.default_corpus` is not implemented yet" in last and "--fallback reference" in last, last


def test_fallback_with_the_reference_changes_nothing(tmp_path):
    run = Run(tmp_path / "run", config_from_mapping({**TINY, "fallback": "reference"}))
    assert run.impl.package == "llmkata.reference" and run.config.kernels == "on", (
        "the reference with --fallback reference must be the reference, fast paths and all")
    assert run.mix.is_reference and not run.mix.mixes
    assert "nothing is mixed" in run.mix.table()


def test_fallback_takes_reference_or_nothing():
    with pytest.raises(ConfigError, match="fallback"):
        config_from_mapping({"fallback": "exercises"})


def test_a_part_that_is_a_stub_again_stops_a_resume_and_is_named_by_sample(mixed_run, capsys):
    folder, run = mixed_run
    written = (folder / "layers.py").read_text()
    shutil.copyfile(Path(llmkata.exercises.__path__[0]) / "layers.py", folder / "layers.py")
    try:
        assert cli.main(["train", "--resume", str(run), "--steps", "5"]) == 2
        err = capsys.readouterr().err
        assert "cannot resume" in err and "layers.RMSNorm" in err, err
        assert cli.main(["sample", "--run", str(run), "--max-new-tokens", "2", "--seed", "1"]) == 0
        err = capsys.readouterr().err
        assert "not written any more" in err and "layers.RMSNorm" in err, err
    finally:
        (folder / "layers.py").write_text(written)
