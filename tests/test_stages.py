"""The stages after pre-training (`llmkata train --stage sft|reward|ppo|dpo|grpo --from RUN`) and the task family
they learn, on a tiny model (a few seconds a stage): each stage runs, writes its folder and metrics, measures its
start and end, and refuses bad input with one message, leaving nothing behind."""

import json
import random
import shutil
from pathlib import Path

import llmkata.reference
import pytest
from llmkata import cli, tasks
from llmkata.pipeline import CHECKPOINT, Run
from runs import as_flags
from safetensors.torch import load_file

# A model of a few thousand parameters on the task text: just enough for every stage to run its loop.
BASE = dict(corpus="tasks", max_documents=120, vocab_size=261, d_model=32, n_layers=2, n_heads=2, context_length=64,
            batch_size=8, steps=12, warmup_steps=2, eval_every=12, checkpoint_every=12, log_every=4, sample_tokens=4,
            progress=False, threads=1)
QUICK = dict(steps=4, eval_every=2, log_every=1, eval_tasks=6, train_tasks=40, max_new_tokens=6, progress=False,
             threads=1)
PPO = dict(batch_size=4, group_size=2, epochs=1, minibatches=2)


def train(*argv) -> int:
    return cli.main(["train", *argv])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("stages") / "base"
    assert train("--out", str(run), *as_flags(BASE)) == 0
    return run


@pytest.fixture(scope="module")
def sft(base) -> Path:
    run = base.parent / "sft"
    assert train("--stage", "sft", "--from", str(base), "--out", str(run), *as_flags(QUICK)) == 0
    return run


@pytest.fixture(scope="module")
def reward_run(sft) -> Path:
    run = sft.parent / "reward"
    assert train("--stage", "reward", "--from", str(sft), "--out", str(run), *as_flags(QUICK)) == 0
    return run


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- the task family


def test_the_checker_computes_each_answer_from_the_question():
    assert tasks.Task("add", "12 + 34").answer == "46"
    assert tasks.Task("add", "99 + 99").answer == "198"
    assert tasks.Task("reverse", "cat").answer == "tac"
    assert tasks.Task("sort", "dcbad").answer == "abcdd"
    task = tasks.Task("add", "12 + 34", form=1)
    assert task.question == "Compute 12 + 34."
    assert tasks.check(task, " 46 ") and not tasks.check(task, "47") and not tasks.check(task, "")
    assert tasks.reward(task, "46") == 1.0
    assert tasks.reward(task, "47") == 0.25, "one of two characters in place: half of the half credit"
    assert tasks.reward(task, "") == 0.0 and 0 <= tasks.reward(task, "4666666") < 0.5
    assert tasks.Task("reverse", "cat").plain() == "Reverse the letters of cat. tac"
    for kind, argument in (("add", "12 - 3"), ("add", "a + 1"), ("reverse", "Cat"), ("sort", ""), ("mul", "2")):
        with pytest.raises(ValueError):
            tasks.Task(kind, argument)


def test_the_generator_is_deterministic_and_splits_by_hash():
    train_side = tasks.make_tasks(300, seed=1)
    assert train_side == tasks.make_tasks(300, seed=1), "the same seed must give the same tasks"
    assert tasks.make_tasks(100, seed=1) == train_side[:100], "a shorter list is the start of a longer one"
    held_out = tasks.make_tasks(100, seed=1, held_out=True)
    assert len({t.key for t in train_side}) == 300, "tasks are distinct"
    assert not {t.key for t in train_side} & {t.key for t in held_out}, "the two sides never share a task"
    assert all(tasks.is_held_out(t) for t in held_out) and not any(tasks.is_held_out(t) for t in train_side)
    assert {t.kind for t in train_side} == set(tasks.KINDS)
    share = sum(tasks.is_held_out(tasks.Task("add", f"{a} + {b}")) for a in range(100) for b in range(100)) / 1e4
    assert 0.07 < share < 0.13, f"about a tenth of the tasks are held out, got {share}"
    corpus = "".join(tasks.corpus_documents(2000))
    assert not any(t.plain() in corpus.splitlines() for t in tasks.make_tasks(200, held_out=True)), (
        "pre-training text never holds a held-out task")
    chat = tasks.conversation(held_out[0])
    assert chat[-1] == {"role": "assistant", "content": held_out[0].answer}
    assert tasks.conversation(held_out[0], answer="")[-1]["role"] == "user"


def test_preference_pairs_hold_a_right_and_a_different_wrong_answer():
    rng = random.Random(0)
    edge = [tasks.Task("reverse", "aaa"), tasks.Task("sort", "abc"), tasks.Task("add", "0 + 0"),
            tasks.Task("reverse", "aba"), *tasks.make_tasks(300)]
    for task in edge:
        pair = tasks.preference_pair(task, rng)
        assert tasks.check(task, pair.chosen) and not tasks.check(task, pair.rejected), pair
    assert tasks.slip(tasks.Task("add", "12 + 7")) == "12" and tasks.slip(tasks.Task("sort", "dcb")) == "dcb"
    assert tasks.slip(tasks.Task("sort", "abc")) is None and tasks.slip(tasks.Task("reverse", "aba")) is None
    demonstrations = [tasks.demonstration(tasks.Task("reverse", "cat"), rng, 0.3) for _ in range(2000)]
    assert set(demonstrations) == {"tac", "cat"} and 0.25 < demonstrations.count("cat") / 2000 < 0.35, (
        "a share `slips` of the demonstrations holds the slip, the rest the right answer")
    assert tasks.demonstration(tasks.Task("sort", "abc"), rng, 1.0) == "abc", "no slip where it would be right"
    with pytest.raises(ValueError, match="two different answers"):
        tasks.PreferencePair(tasks.Task("add", "1 + 1"), "2", " 2")
    assert tasks.make_pairs(20, seed=3) == tasks.make_pairs(20, seed=3)


# ---------------------------------------------------------------------------------------------- each stage


def test_pretraining_on_tasks_gives_a_tokenizer_with_the_chat_tokens(base):
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    text = json.dumps(tokenizer)
    for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"):
        assert token in text, f"the tokenizer lacks {token}"
    assert json.loads((base / "data.json").read_text())["made_with"]["corpus"] == "tasks"


def test_sft_writes_its_folder_and_measures_start_and_end(sft):
    for name in ("config.toml", "stage.toml", "tokenizer.json", CHECKPOINT, "metrics.jsonl", "curves.png",
                 "samples.txt", "summary.json"):
        assert (sft / name).exists(), f"the stage's folder lacks {name}"
    logged = records(sft)
    assert [r["step"] for r in logged if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in logged if r["split"] == "eval"] == [0, 2, 4], "measured before, during and after"
    summary = json.loads((sft / "summary.json").read_text())
    assert summary["stage"] == "sft" and summary["steps"] == 4
    for side in ("start", "end"):
        assert 0 <= summary[side]["accuracy"] <= 1 and summary[side]["loss"] > 0
    assert summary["end"]["loss"] < summary["start"]["loss"], "four steps of SFT lower the held-out chat loss"
    opened = Run.open(sft)  # a stage's folder is a run: `llmkata sample` and `eval` open it
    assert opened.model.config.vocab_size == 261


def test_sft_with_lora_trains_adapters_and_saves_them_apart(base):
    run = base.parent / "sft_lora"
    assert train("--stage", "sft", "--from", str(base), "--out", str(run), "--lora", "4", *as_flags(QUICK)) == 0
    adapters = load_file(run / "lora.safetensors")
    assert adapters and all(".lora_A." in k or ".lora_B." in k for k in adapters), sorted(adapters)
    assert any(k.endswith("q_proj.lora_B.weight") for k in adapters)
    trained = {k: v for k, v in load_file(run / CHECKPOINT).items() if k.startswith("model.")}
    start = {k: v for k, v in load_file(base / CHECKPOINT).items() if k.startswith("model.")}
    assert trained.keys() == start.keys(), "the checkpoint has the adapters merged: a plain Transformer"
    changed = {k for k in start if not (trained[k] == start[k]).all()}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed


def test_the_reward_model_is_measured_on_held_out_pairs(reward_run):
    summary = json.loads((reward_run / "summary.json").read_text())
    for side in ("start", "end"):
        assert 0 <= summary[side]["pair_accuracy"] <= 1
    assert any("score.weight" in k for k in load_file(reward_run / CHECKPOINT)), "the checkpoint is a RewardModel"


@pytest.mark.parametrize("stage, extra", [("dpo", []), ("grpo", as_flags(PPO)), ("ppo", as_flags(PPO))])
def test_the_alignment_stages_run_and_log_their_curves(sft, stage, extra):
    run = sft.parent / stage
    assert train("--stage", stage, "--from", str(sft), "--out", str(run), *as_flags(QUICK), *extra) == 0
    logged = [r for r in records(run) if r["split"] == "train"]
    assert len(logged) == 4
    wanted = {"dpo": ("loss", "margin", "pair_accuracy"), "grpo": ("reward", "kl", "clip_fraction", "loss"),
              "ppo": ("reward", "kl", "clip_fraction", "policy_loss", "value_loss", "entropy")}[stage]
    for key in wanted:
        assert all(key in r for r in logged), f"{stage} must log {key}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["start"].keys() == summary["end"].keys() and (run / "curves.png").exists()


def test_ppo_can_score_with_a_reward_model(sft, reward_run):
    run = sft.parent / "ppo_rm"
    assert train("--stage", "ppo", "--from", str(sft), "--reward-model", str(reward_run), "--out", str(run),
                 *as_flags({**QUICK, "steps": 2}), *as_flags(PPO)) == 0
    assert all("score" in r for r in records(run) if r["split"] == "train"), "the reward model's score is logged"


# ---------------------------------------------------------------------------------------------- bad input


def refused(capsys, *argv, match: str, out: Path | None = None) -> None:
    assert train(*argv) == 2
    err = capsys.readouterr().err
    problem = [line for line in err.splitlines() if line.startswith("llmkata train")]
    assert problem and match in problem[-1], err
    if out is not None:
        assert not out.exists(), f"a refused stage must leave nothing behind, found {sorted(out.iterdir())}"


def test_a_missing_source_run_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, "--stage", "sft", "--from", str(tmp_path / "nothing"), "--out", str(out),
            match="there is no run there", out=out)
    refused(capsys, "--stage", "sft", "--out", str(out), match="give --from RUN", out=out)
    refused(capsys, "--from", str(tmp_path), "--out", str(out), match="go with --stage", out=out)


def test_a_source_without_chat_tokens_or_with_another_vocabulary_is_refused(base, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, "--stage", "sft", "--from", str(base), "--out", str(out), "--vocab-size", "300",
            match="another vocabulary", out=out)
    plain = tmp_path / "plain"
    shutil.copytree(base, plain)
    llmkata.reference.tokenizer.train_bpe(["plain text"], 257, special_tokens=["<|endoftext|>"]).save(
        plain / "tokenizer.json")
    refused(capsys, "--stage", "sft", "--from", str(plain), "--out", str(out), *as_flags(QUICK),
            match="has no chat tokens", out=out)


def test_a_reward_model_of_another_vocabulary_or_kind_is_refused(sft, reward_run, tmp_path, capsys):
    out = tmp_path / "out"
    other = tmp_path / "other_reward"
    shutil.copytree(reward_run, other)
    special = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    llmkata.reference.tokenizer.train_bpe(["aa aa aa"], 262, special_tokens=special).save(other / "tokenizer.json")
    (other / "data.json").write_text(json.dumps({**json.loads((other / "data.json").read_text()), "vocab_size": 262}))
    refused(capsys, "--stage", "ppo", "--from", str(sft), "--reward-model", str(other), "--out", str(out),
            *as_flags(QUICK), *as_flags(PPO), match="another vocabulary", out=out)
    refused(capsys, "--stage", "ppo", "--from", str(sft), "--reward-model", str(sft), "--out", str(out),
            *as_flags(QUICK), *as_flags(PPO), match="needs a reward model", out=out)
    refused(capsys, "--stage", "dpo", "--from", str(reward_run), "--out", str(out), *as_flags(QUICK),
            match="needs a language model", out=out)


def test_bad_lora_settings_are_refused_before_anything_is_written(base, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, "--stage", "sft", "--from", str(base), "--out", str(out), "--lora", "4", "--lora-targets",
            "w_qkv", *as_flags(QUICK), match="matches the targets ['w_qkv']", out=out)
    refused(capsys, "--stage", "sft", "--from", str(base), "--out", str(out), "--lora", "-2", *as_flags(QUICK),
            match="rank must be a positive integer", out=out)
    refused(capsys, "--stage", "sft", "--from", str(base), "--out", str(out), "--lora", "0", *as_flags(QUICK),
            match="rank must be a positive integer", out=out)
    refused(capsys, "--stage", "reward", "--from", str(base), "--out", str(out), "--lora", "4", *as_flags(QUICK),
            match="--lora goes with", out=out)


def test_a_stage_run_is_not_resumed(sft, capsys):
    refused(capsys, "--resume", str(sft), match="not resumed")


def test_a_stage_trains_with_the_implementations_own_code(sft, tmp_path):
    """--impl: the stage reaches align (and every chapter) through the implementation, here a copy of the
    reference whose grpo_advantages leaves a mark."""
    folder = tmp_path / "my_aligned_llm"
    shutil.copytree(Path(llmkata.reference.__path__[0]), folder, ignore=shutil.ignore_patterns("__pycache__"))
    mark = tmp_path / "called"
    with open(folder / "align.py", "a") as file:
        file.write(f"\n\n_own = grpo_advantages\n\n\ndef grpo_advantages(rewards, group_size, eps=1e-6):\n"
                   f"    open({str(mark)!r}, 'a').write('x')\n    return _own(rewards, group_size, eps)\n")
    run = tmp_path / "grpo"
    assert train("--stage", "grpo", "--from", str(sft), "--out", str(run), "--impl", str(folder),
                 *as_flags({**QUICK, "steps": 2}), *as_flags(PPO)) == 0
    assert mark.read_text() == "xx", "each GRPO step must use the implementation's grpo_advantages"
    assert json.loads((run / "summary.json").read_text())["impl"] == str(folder)


def test_unwritten_chapters_stop_with_the_stub_sentence_or_fall_back(sft, tmp_path, capsys):
    out = tmp_path / "out"
    assert train("--stage", "dpo", "--from", str(sft), "--out", str(out), "--impl", "exercises",
                 *as_flags({**QUICK, "steps": 1})) == 2
    assert "not implemented yet" in capsys.readouterr().err
    assert not out.exists(), "a stage stopped by a stub before its first step leaves nothing behind"
    assert train("--stage", "dpo", "--from", str(sft), "--out", str(out), "--impl", "exercises", "--fallback",
                 "reference", *as_flags({**QUICK, "steps": 1})) == 0
    assert json.loads((out / "summary.json").read_text())["sources"]
