"""`llmkata train`, `sample` and `eval` end to end, on a tiny configuration (seconds, not minutes).

The kill test is real: a training process is killed with SIGKILL in the middle of its run, resumed by a second
process, and its final weights must be identical, bit for bit, to those of a run that never stopped.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import llmkata.reference
import llmkata.reference.train
from llmkata import cli
from llmkata.pipeline import CHECKPOINT, Run, checkpoint_step, train
from llmkata.run_config import ConfigError, RunConfig, config_from_mapping, read_toml, write_toml
from runs import as_flags

TINY = dict(max_documents=12, vocab_size=300, d_model=32, n_layers=2, n_heads=2, context_length=32, batch_size=4,
            steps=24, warmup_steps=2, eval_every=12, checkpoint_every=5, log_every=1, sample_tokens=8,
            progress=False, threads=1)


def tiny(**changes) -> RunConfig:
    return config_from_mapping({**TINY, **changes})


def flags(**changes) -> list[str]:
    """The tiny configuration as command-line flags."""
    return as_flags({**TINY, **changes})


def weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / CHECKPOINT).items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny(), run, say=lambda message: None)
    return run


# ---------------------------------------------------------------------------------------------- configuration


def test_bad_configuration_values_get_one_message_naming_the_field():
    for field, value in [("steps", -1), ("lr", -0.1), ("d_model", 30), ("dtype", "float8"), ("val_fraction", 1.5),
                         ("warmup_steps", 5000), ("vocab_size", 100), ("n_kv_heads", 3), ("device", "tpu")]:
        with pytest.raises(ConfigError, match=field):
            config_from_mapping({field: value})
    with pytest.raises(ConfigError, match="unknown field 'learning_rate'"):
        config_from_mapping({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="steps must be int"):
        config_from_mapping({"steps": "many"})


def test_the_command_line_names_the_bad_field(capsys, tmp_path):
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--lr", "-1"]) == 2
    assert "lr must be" in capsys.readouterr().err
    config = tmp_path / "bad.toml"
    config.write_text("steps = 0\n")
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_toml_configuration_round_trips(tmp_path):
    config = tiny(data=["a.txt", "b dir/c.md"], lr=1e-4, tie_embeddings=True)
    write_toml(config, tmp_path / "config.toml")
    assert config_from_mapping(read_toml(tmp_path / "config.toml")) == config


def test_flags_override_the_toml_file(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("llmkata.pipeline.train", lambda config, run, resume, say: seen.update(config=config) or {
        "train_seconds": 0, "val_loss": 0, "val_bits_per_byte": 0})
    (tmp_path / "run.toml").write_text("steps = 50\nlr = 0.01\nd_model = 64\n")
    argv = ["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "run.toml"), "--lr", "0.002"]
    assert cli.main(argv) == 0
    assert (seen["config"].steps, seen["config"].lr, seen["config"].d_model) == (50, 0.002, 64)


def test_model_shape_rules_are_the_implementations_own(tmp_path):
    """The run's configuration is checked by the implementation's ModelConfig: a learner's stricter rule applies."""
    folder = tmp_path / "strict_llm"
    shutil.copytree(Path(llmkata.reference.__path__[0]), folder, ignore=shutil.ignore_patterns("__pycache__"))
    with open(folder / "model.py", "a") as file:
        file.write("\n\n_post_init = ModelConfig.__post_init__\n\n\ndef _strict(self):\n    _post_init(self)\n"
                   "    if self.n_layers > 3:\n        raise ValueError('n_layers: at most 3 here')\n\n\n"
                   "ModelConfig.__post_init__ = _strict\n")
    with pytest.raises(ConfigError, match="n_layers: at most 3 here"):
        config_from_mapping({"impl": str(folder), "n_layers": 4})
    assert config_from_mapping({"impl": str(folder), "n_layers": 3}).n_layers == 3


def test_kernels_auto_means_on_for_the_reference_and_off_for_any_other(tmp_path):
    folder = tmp_path / "kernels_llm"
    shutil.copytree(Path(llmkata.reference.__path__[0]), folder, ignore=shutil.ignore_patterns("__pycache__"))
    assert Run(tmp_path / "a", tiny()).config.kernels == "on"
    assert Run(tmp_path / "b", tiny(impl="exercises")).config.kernels == "off"
    assert Run(tmp_path / "c", tiny(impl=str(folder))).config.kernels == "off"
    assert Run(tmp_path / "d", tiny(impl=str(folder), kernels="on")).config.kernels == "on"
    assert Run(tmp_path / "e", tiny(kernels="off")).config.kernels == "off"
    with pytest.raises(ConfigError, match="kernels must be on, off or auto"):
        tiny(kernels="yes")


def test_kernels_choose_the_tokenizer_trainer_and_the_model_path(tmp_path):
    calls = []

    def trainer(name):
        def train_bpe(data, vocab_size, special_tokens=(), pattern="gpt4", **kwargs):
            calls.append((name, vocab_size, list(special_tokens), kwargs))
            raise NotImplementedError("stop here")
        return train_bpe

    for kernels, threads in (("on", 3), ("off", 3), ("on", 0)):
        run = Run(tmp_path / kernels, tiny(kernels=kernels, threads=threads))
        run.impl = run.impl.replacing({"kernels.train_bpe": trainer("kernels"),
                                       "tokenizer.train_bpe": trainer("tokenizer")})
        with pytest.raises(NotImplementedError, match="stop here"):
            run.prepare_data()
        assert run.config.model_config(run.impl, 300).kernels is (kernels == "on")
    assert calls == [("kernels", 300, ["<|endoftext|>"], {"num_workers": 3}),
                     ("tokenizer", 300, ["<|endoftext|>"], {}),
                     ("kernels", 300, ["<|endoftext|>"], {"num_workers": None})], calls


def test_data_comes_from_text_files_folders_and_json_lines(tmp_path):
    folder = tmp_path / "notes"
    (folder / "deeper").mkdir(parents=True)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    for i in range(20):
        (folder / ("deeper" if i % 2 else "") / f"note{i}.txt").write_text(
            " ".join(words[(i + j) % len(words)] for j in range(40 + i)) + "\n")
    (folder / "note0-copy.md").write_text((folder / "note0.txt").read_text())  # an exact duplicate: dropped
    lines = tmp_path / "more.jsonl"
    lines.write_text("".join(json.dumps({"body": f"document number {i} " * 30}) + "\n" for i in range(10)))
    run = tmp_path / "run"
    run.mkdir()
    info = Run(run, tiny(data=[str(folder), str(lines)], data_field="body", max_documents=0),
               say=lambda message: None).prepare_data()
    assert info["train_documents"] + info["val_documents"] == 30, info
    assert info["train_tokens"] > 0 and info["val_bytes"] > 0


def test_data_can_be_a_hugging_face_dataset_name(tmp_path, monkeypatch):
    """A dataset name goes to `datasets.load_dataset` (streaming); the hub is replaced by a dataset made here."""
    datasets = pytest.importorskip("datasets")
    rows = [{"story": f"story number {i}: " + "once upon a time there was a tiny model " * (5 + i)} for i in range(24)]
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        if name != "someone/tiny-stories":
            raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.Dataset.from_list(rows).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    run = tmp_path / "run"
    run.mkdir()
    config = tiny(data=["someone/tiny-stories"], data_field="story", data_split="train", max_documents=0)
    info = Run(run, config, say=lambda message: None).prepare_data()
    assert calls == [("someone/tiny-stories", {"split": "train", "streaming": True})], calls
    assert info["train_documents"] + info["val_documents"] == 24, info

    missing = tiny(data=["nobody/nothing"], max_documents=0)
    with pytest.raises(ConfigError, match="cannot read the Hugging Face dataset 'nobody/nothing'"):
        Run(tmp_path / "run2", missing, say=lambda message: None).prepare_data()


# ---------------------------------------------------------------------------------------------- a whole run


def test_a_run_writes_its_folder(finished_run):
    assert read_toml(finished_run / "config.toml")["kernels"] == "on", "the folder records the kernels decided"
    for name in ("config.toml", "data.json", "tokenizer.json", "train.npy", "val.npy", CHECKPOINT, "metrics.jsonl",
                 "loss.png", "samples.txt", "summary.json", "hf/config.json", "hf/model.safetensors"):
        assert (finished_run / name).exists(), f"the run folder lacks {name}"
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 25))
    assert [r["step"] for r in records if r["split"] == "val"] == [12, 24]
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["val_bits_per_byte"] > 0
    first, last = records[0]["loss"], [r for r in records if r["split"] == "train"][-1]["loss"]
    assert last < first, f"the loss must go down in 24 steps: {first} -> {last}"
    assert summary["multiple_choice"]["n"] > 0


def test_sample_streams_text_and_is_seeded(finished_run, capsys):
    outputs = []
    for _ in range(2):
        assert cli.main(["sample", "--run", str(finished_run), "--prompt", "The", "--max-new-tokens", "12",
                         "--seed", "3"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0].startswith("The") and len(outputs[0]) > len("The\n")
    assert outputs[0] == outputs[1], "the same seed must give the same text"
    assert cli.main(["sample", "--run", str(finished_run), "--prompt", "", "--max-new-tokens", "5"]) == 0, (
        "an empty prompt starts a new document")


def test_eval_prints_the_validation_metrics(finished_run, capsys):
    assert cli.main(["eval", "--run", str(finished_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert result["validation"]["loss"] == pytest.approx(summary["val_loss"], rel=1e-6)
    assert result["validation"]["bits_per_byte"] == pytest.approx(summary["val_bits_per_byte"], rel=1e-6)
    assert cli.main(["eval", "--run", str(finished_run)]) == 0
    assert "bits per byte" in capsys.readouterr().out


def test_resume_with_a_mismatched_config_is_refused(finished_run, capsys):
    assert cli.main(["train", "--resume", str(finished_run), "--d-model", "64"]) == 2
    assert "d_model" in capsys.readouterr().err


def test_a_finished_run_is_extended_by_a_larger_steps(finished_run, tmp_path, capsys):
    run = tmp_path / "extended"
    shutil.copytree(finished_run, run)
    assert cli.main(["train", "--resume", str(run), "--steps", "10"]) == 2
    assert "never shortened" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--steps", "30", "--lr", "0.1"]) == 2
    assert "lr (run: 0.003, flag: 0.1)" in capsys.readouterr().err, "only steps may change when extending"

    assert cli.main(["train", "--resume", str(run), "--steps", "30"]) == 0
    assert "extending" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 31)), "the extended run's steps must be recorded"
    assert read_toml(run / "config.toml")["steps"] == 30
    assert json.loads((run / "summary.json").read_text())["steps"] == 30
    assert checkpoint_step(run / CHECKPOINT) == 30
    schedule = llmkata.reference.train.lr_schedule
    config = read_toml(run / "config.toml")
    expected = [schedule(step - 1, config["lr"], config["warmup_steps"], 30, config["lr"] * config["min_lr_ratio"])
                for step in range(25, 31)]
    assert [r["lr"] for r in train_records[24:]] == pytest.approx(expected), (
        "from the resumed step on, the learning rate follows the schedule of the new total")
    original = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert train_records[:24] == [r for r in original if r["split"] == "train"], (
        "the steps before the extension stay as they were")


def test_eval_with_a_missing_tasks_file_fails_in_one_line(finished_run, capsys):
    assert cli.main(["eval", "--run", str(finished_run), "--tasks", str(finished_run / "missing.jsonl")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "missing.jsonl" in captured.err and len(captured.err.splitlines()) == 1, captured


def test_eval_reports_the_step_of_the_checkpoint_not_of_the_last_log_line(finished_run, tmp_path, capsys):
    """After a kill, metrics.jsonl holds steps past the checkpoint: eval evaluates, and reports, the checkpoint."""
    run = tmp_path / "killed"
    shutil.copytree(finished_run, run)
    with open(run / "metrics.jsonl", "a") as file:
        for step in range(25, 29):
            file.write(json.dumps({"step": step, "split": "train", "loss": 4.0, "tokens": 0}) + "\n")
    assert cli.main(["eval", "--run", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 24


def test_sample_checks_its_flags_before_printing_anything(finished_run, capsys):
    for flag, value in [("--temperature", "nan"), ("--temperature", "-1"), ("--top-p", "2"), ("--top-p", "0"),
                        ("--top-k", "-3"), ("--max-new-tokens", "-1")]:
        assert cli.main(["sample", "--run", str(finished_run), "--prompt", "The", flag, value]) == 2
        captured = capsys.readouterr()
        assert captured.out == "", f"{flag} {value}: nothing may be printed before the flag is refused"
        assert flag in captured.err and len(captured.err.splitlines()) == 1, captured.err


def test_sample_asks_a_lazy_generate_for_its_first_token_before_printing(finished_run, capsys, monkeypatch):
    """An implementation's generate may check its arguments only when the first token is asked for."""
    def lazy_generate(*args, **kwargs):
        raise ValueError("this generate refuses its arguments late")
        yield 0

    run = Run.open(finished_run)
    run.impl = run.impl.replacing({"generate.generate": lazy_generate})
    monkeypatch.setattr(Run, "open", classmethod(lambda cls, folder, impl=None: run))
    assert cli.main(["sample", "--run", str(finished_run), "--prompt", "The"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "refuses its arguments late" in captured.err, captured


def test_the_hf_weights_are_ordinary_files(finished_run):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("hf/model.safetensors", "hf/config.json", CHECKPOINT, "config.toml"):
        mode = (finished_run / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, f"{name} has mode {oct(mode)}, not that of an ordinary file"


def test_without_matplotlib_the_run_says_that_loss_png_was_not_written(finished_run, tmp_path, monkeypatch):
    run = tmp_path / "no_plot"
    shutil.copytree(finished_run, run)
    (run / "loss.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    opened = Run.open(run)
    messages = []
    opened.say = messages.append
    opened.finish(1.0, 0, 0)
    assert not (run / "loss.png").exists()
    assert any("loss.png" in m and "matplotlib" in m for m in messages), messages


def test_resume_from_a_corrupted_checkpoint_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    data = bytearray((run / CHECKPOINT).read_bytes())
    data[-9] ^= 0x01
    (run / CHECKPOINT).write_bytes(bytes(data))
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "nan"
    assert cli.main(["train", "--out", str(run), *flags(lr=1e30, min_lr_ratio=0.0, warmup_steps=0, checkpoint_every=1,
                                                        grad_clip=0.0)]) == 1
    message = capsys.readouterr().err
    assert "stopped" in message and "last good checkpoint" in message, message
    assert re.search(r"\(step \d+\)", message), f"the message must say the checkpoint's step: {message}"
    kept = load_file(run / CHECKPOINT)
    assert all(torch.isfinite(v).all() for k, v in kept.items() if k.startswith("model.")), (
        "the checkpoint left behind must hold the last finite weights")


def test_exercises_fail_with_the_stub_sentence(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "r"), *flags(impl="exercises")]) == 2
    assert "is not implemented yet" in capsys.readouterr().err


def test_a_folder_implementation_trains_with_its_own_components(tmp_path):
    folder = tmp_path / "my_llm"
    shutil.copytree(Path(llmkata.reference.__path__[0]), folder, ignore=shutil.ignore_patterns("__pycache__"))
    with open(folder / "train.py", "a") as file:  # this learner's schedule is constant
        file.write("\n\ndef lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr=0.0):\n    return 1e-3\n")
    run = tmp_path / "run"
    train(tiny(impl=str(folder), steps=6), run, say=lambda message: None)
    lrs = {json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "train"}
    assert lrs == {1e-3}, f"the run must use the folder's own lr_schedule, got learning rates {lrs}"


# ---------------------------------------------------------------------------------------------- kill -9 and resume


def _train_process(run: Path, steps: int) -> subprocess.Popen:
    """A run with the pipeline's default number of threads (threads=0: torch's, one per core), as a user starts it."""
    command = [sys.executable, "-m", "llmkata.cli", "train", "--out", str(run),
               *flags(steps=steps, checkpoint_every=7, eval_every=50, log_every=1, threads=0)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()[:-1]]  # the last may be partial
    return max(steps, default=0)


def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    steps = 150
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    process = _train_process(killed, steps)
    deadline = time.monotonic() + 120
    while _steps_logged(killed) < 20 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, (
        f"the run must still be going when it is killed (it ended with {process.returncode}: "
        f"{process.stderr.read().decode()[-500:]})")
    reached = _steps_logged(killed)
    assert 20 <= reached < steps, f"killed after step {reached}"

    resumed = subprocess.run([sys.executable, "-m", "llmkata.cli", "train", "--resume", str(killed), "--no-progress"],
                             capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert "resuming" in resumed.stderr.decode()
    uninterrupted = _train_process(whole, steps)
    _, err = uninterrupted.communicate()
    assert uninterrupted.returncode == 0, err.decode()[-2000:]

    a, b = weights(killed), weights(whole)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"after kill -9 and resume, these weights differ from the uninterrupted run: {different}"
    logged = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in logged if r["split"] == "train"]
    assert train_steps == list(range(1, steps + 1)), "metrics.jsonl must hold each step once after a resume"
