"""`llmkata train` on the data and the mistakes of someone's first hour with it.

Any reasonable data trains (one long text file, a folder of .txt, .md and .jsonl files), or the command says in one
line what is wrong and with which file; a wrong flag is found before any work; Ctrl-C leaves a run that resumes; a
run folder never holds data prepared for another configuration, and a run that fails to start leaves nothing behind.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmkata import cli
from llmkata.pipeline import CHECKPOINT, Run, checkpoint_step, chunk_document, train
from llmkata.reference.files import atomic_path
from llmkata.run_config import config_from_mapping
from runs import as_flags

TINY = dict(max_documents=0, vocab_size=300, d_model=32, n_layers=2, n_heads=2, context_length=32, batch_size=4,
            steps=6, warmup_steps=2, eval_every=6, checkpoint_every=3, log_every=1, sample_tokens=8,
            progress=False, threads=1)
WORDS = "the model reads a book and learns which word tends to follow which other word in it".split()


def tiny(**changes):
    return config_from_mapping({**TINY, **changes})


def flags(**changes) -> list[str]:
    """The tiny configuration as command-line flags."""
    return as_flags({**TINY, **changes})


def prose(paragraphs: int, seed: int = 0) -> str:
    """Paragraphs of a few sentences of WORDS, separated by blank lines, about 300 characters each."""
    out = []
    for p in range(paragraphs):
        words = [WORDS[(seed + p * 7 + i * i) % len(WORDS)] for i in range(55)]
        out.append(" ".join(words).capitalize() + ".")
    return "\n\n".join(out) + "\n"


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, f"expected one line, got:\n{text}"
    return lines[0]


def error_of(capsys, argv: list[str], code: int = 2) -> str:
    """The one line of stderr after the `llmkata train` line that names the run folder."""
    assert cli.main(argv) == code
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if "run folder" not in line)
    return one_line(err)


# ---------------------------------------------------------------------------------------------- any reasonable data


def test_one_text_file_is_cut_into_chunks_and_trains(tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text(prose(150))  # about 45 KB, one document
    run = tmp_path / "run"
    assert cli.main(["train", "--out", str(run), "--data", str(book), *flags()]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "cut 1 document(s)" in err and "chunks" in err, f"the output must say that the file was cut: {err}"
    info = json.loads((run / "data.json").read_text())
    assert info["train_documents"] > 1 and info["val_documents"] > 0, info
    assert info["train_bytes"] + info["val_bytes"] == len(book.read_bytes().strip()), (
        "the chunks must hold the whole text, once")


@given(st.text(alphabet="ab \n", max_size=400), st.integers(1, 40))
def test_chunks_join_back_to_the_document_and_have_about_the_size_asked(text, size):
    chunks = chunk_document(text, size)
    assert "".join(chunks) == text, "joined, the chunks must give the document back"
    if len(text) <= size:
        assert chunks == [text], "a document no longer than the size stays whole"
    assert all(len(c) >= size for c in chunks[:-1]), f"every chunk but the last holds at least {size} characters"
    assert all(len(c) < 2.5 * size for c in chunks), f"no chunk is far longer than {size} characters"


def test_chunks_are_cut_at_paragraph_breaks():
    assert chunk_document("one\n\ntwo\n\nthree\n\nfour", size=8) == ["one\n\ntwo\n\n", "three\n\nfour"]
    text = prose(40)
    assert all(chunk.endswith("\n\n") for chunk in chunk_document(text, 1000)[:-1])


def test_the_default_corpus_is_split_by_topic_as_it_is(tmp_path):
    """The shipped multiple-choice set comes from the validation side of the default corpus's split by topic."""
    run = Run(tmp_path / "run", tiny(max_documents=40), say=lambda message: None)
    train_docs, val_docs = run.split()
    assert sorted(train_docs + val_docs) == sorted(run.documents())


def test_a_folder_takes_txt_md_and_jsonl_files(tmp_path):
    folder = tmp_path / "notes"
    (folder / "deeper").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "a.txt").write_text("plain text file")
    (folder / "deeper" / "b.md").write_text("# a markdown file")
    (folder / "c.jsonl").write_text(json.dumps({"text": "a json line"}) + "\n")
    (folder / "d.py").write_text("print('not data')")
    (folder / ".hidden" / "e.txt").write_text("hidden")
    docs = list(Run(tmp_path / "run", tiny(data=[str(folder)])).documents())
    assert sorted(docs) == ["# a markdown file", "a json line", "plain text file"], docs


def test_an_empty_folder_is_one_line_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_of(capsys, ["train", "--out", str(tmp_path / "run"), "--data", str(empty), *flags()])
    assert str(empty) in line and ".md" in line, line
    assert not (tmp_path / "run").exists(), "a run that failed to start leaves no folder"


def test_a_file_that_is_not_utf8_is_named_and_errors_replace_reads_it(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "good.txt").write_text(prose(30))
    (folder / "bad.txt").write_bytes(prose(30, seed=3).encode() + b"caf\xe9 au lait\n")
    line = error_of(capsys, ["train", "--out", str(tmp_path / "run"), "--data", str(folder), *flags()])
    assert "bad.txt" in line and "--errors replace" in line, line

    messages = []
    (tmp_path / "run2").mkdir()
    info = Run(tmp_path / "run2", tiny(data=[str(folder)], errors="replace"), say=messages.append).prepare_data()
    assert info["train_documents"] + info["val_documents"] > 2
    assert any("bad.txt" in m and "U+FFFD" in m for m in messages), (
        f"the replaced bytes must be reported in one line naming the file: {messages}")
    with pytest.raises(ValueError, match="errors must be strict or replace"):
        tiny(errors="ignore")


def test_a_bad_json_line_is_named_with_its_file_and_line(tmp_path, capsys):
    lines = tmp_path / "notes.jsonl"
    lines.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "fine too"}) + "\n{not json\n")
    line = error_of(capsys, ["train", "--out", str(tmp_path / "run"), "--data", str(lines), *flags()])
    assert "notes.jsonl:3" in line, line


# ---------------------------------------------------------------------------------------------- wrong flags, early


def test_a_missing_implementation_is_one_line_before_any_work(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "run"), *flags(impl="nonexistent")]) == 2
    assert "nonexistent" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_a_device_this_machine_lacks_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:1", "mps"):
        assert cli.main(["train", "--out", str(tmp_path / "run"), *flags(device=device)]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"device {device}" in line and "cpu" in line, line
        assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- Ctrl-C


def _logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines()[:-1]  # the last may be partial
            if json.loads(line)["split"] == "train"]


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    run, steps = tmp_path / "run", 400
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "llmkata.cli", "train", "--out", str(run),
               *flags(max_documents=12, steps=steps, checkpoint_every=1000, eval_every=1000)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while len(_logged_steps(run)) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    err = err.decode()
    assert process.returncode == 130, f"Ctrl-C must end the run with status 130, got {process.returncode}: {err}"
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert f"llmkata train --resume {run}" in last, last
    stopped = checkpoint_step(run / CHECKPOINT)
    assert stopped is not None and 5 <= stopped < steps, f"a checkpoint must be saved on Ctrl-C, got step {stopped}"
    assert f"step {stopped} " in last, f"the line must say where the run stopped: {last}"

    resumed = subprocess.run([sys.executable, "-m", "llmkata.cli", "train", "--resume", str(run)],
                             capture_output=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert f"resuming {run} at step {stopped}" in resumed.stderr.decode()
    assert checkpoint_step(run / CHECKPOINT) == steps
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, steps + 1))


# ---------------------------------------------------------------------------------------------- run folders


def test_prepared_data_of_another_configuration_is_made_again(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    Run(folder, tiny(max_documents=12, vocab_size=300), say=lambda message: None).prepare_data()  # a failed run's
    messages = []
    train(tiny(max_documents=12, vocab_size=320, steps=3, eval_every=3), folder, say=messages.append)
    info = json.loads((folder / "data.json").read_text())
    assert info["vocab_size"] == 320, f"the run trained on data prepared for another vocab_size: {info}"
    assert len(json.loads((folder / "tokenizer.json").read_text())["merges"]) == 320 - 257
    assert info["made_with"]["vocab_size"] == 320
    assert any("vocab_size: 300 then, 320 now" in m for m in messages), messages


def test_a_failed_start_leaves_nothing_it_made(tmp_path, capsys):
    new = tmp_path / "runs" / "new"
    assert cli.main(["train", "--out", str(new), *flags(impl="exercises")]) == 2
    assert "is not implemented yet" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists(), "the folders a failed start made must go"

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    assert cli.main(["train", "--out", str(mine), *flags(impl="exercises")]) == 2
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"], "only what the run made may go"
    assert (mine / "notes.txt").read_text() == "the user's own file"


# ---------------------------------------------------------------------------------------------- files


def test_atomic_path_gives_an_ordinary_files_mode_even_when_the_writer_replaces_the_file(tmp_path):
    def replacing_writer(path: Path) -> None:
        """Like safetensors' save_file: a private temporary file of its own, renamed over `path`."""
        handle, own = tempfile.mkstemp(dir=path.parent)
        os.write(handle, b"written")
        os.close(handle)
        os.replace(own, path)

    umask = os.umask(0o022)
    try:
        for name, writer in (("plain", lambda p: p.write_bytes(b"written")), ("replaced", replacing_writer)):
            with atomic_path(tmp_path / name) as temporary:
                writer(temporary)
            mode = (tmp_path / name).stat().st_mode & 0o777
            assert mode == 0o644, f"{name}: mode {oct(mode)}, not that of an ordinary file under umask 022"
            assert (tmp_path / name).read_bytes() == b"written"
    finally:
        os.umask(umask)


def test_matplotlib_is_a_dependency():
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert any(d.startswith("matplotlib") for d in dependencies), (
        "`llmkata train` draws loss.png with matplotlib: a plain install must have it")
