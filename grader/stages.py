"""The stages after pre-training, end to end: `llmkata train --stage sft|reward|ppo|dpo|grpo --from RUN`.

    pretrain   llmkata train --corpus tasks --out runs/base        (the pipeline: plain task text, chat tokens)
    sft        chats of the task family (llmkata.tasks), loss on the assistant's tokens     held-out exact match
    reward     a reward model from pairs of a right and a wrong answer (Bradley–Terry)     held-out pair accuracy
    ppo        rollouts, a frozen reference, KL penalty, GAE, clipped losses, value model   mean checker reward
    dpo        pairs, a frozen reference, the DPO loss                                     held-out margin, accuracy
    grpo       groups of rollouts per prompt, group-normalised checker rewards             mean checker reward

Every part is the implementation's (`--impl`, `--fallback reference` as for pre-training): finetune (render,
sft_loss, LoRA), align (log-probabilities, reward model, KL, GAE, the PPO, DPO and GRPO losses), model, train
(AdamW, schedule, clipping, checkpoints) and generate (sample_next: the rollouts are sampled by it, a batch of
prompts of one length at a time, through the model's KV cache). The task family and its checker are llmkata's.

Each stage measures its number on held-out tasks before its first step and after its last, in the same run, and
reports both. Its run folder:

    config.toml, stage.toml       the run's fields (the source's model), the stage's fields
    tokenizer.json, data.json, val.npy   copied from the source, so that `llmkata sample` and `eval` work here
    checkpoint.safetensors        the trained model (a Transformer; for reward, the RewardModel)
    lora.safetensors              with --lora: the adapters alone (the checkpoint has them merged)
    metrics.jsonl                 train records (loss, reward, KL, clip fraction, ...) and eval records
    curves.png                    the training curves;  samples.txt: held-out questions and the model's answers
    summary.json                  start and end of each number, wall time

A stage that fails before its first step leaves nothing behind that it made.

Left out: resuming a stage, data-parallel stages, preference pairs from files, and pairs labelled from the
policy's own samples (the pairs come from the task family: a right answer and a slip or near miss).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch
from llmkata import tasks as task_family
from llmkata.atomic import write_text_atomic
from llmkata.pipeline import CHECKPOINT, Interrupted, Run, _CtrlC, build_model
from llmkata.run_config import CHAT_TOKENS, ConfigError, RunConfig, write_toml
from llmkata.run_metrics import Metrics, read_metrics, running_mean
from llmkata.stage_config import (
    LANGUAGE_MODELS,
    StageConfig,
    source_stage,
    write_stage_toml,
)
from safetensors.torch import save

COPIED = ("tokenizer.json", "data.json", "val.npy")  # from the source run
STAGE_FILES = ("config.toml", "stage.toml", *COPIED, CHECKPOINT, "lora.safetensors", "metrics.jsonl",
               "curves.png", "samples.txt", "summary.json")
END = "<|end|>"


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` in a temporary file beside `path`, on disk, then renamed over it: the whole old file or the new."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)


def number(x) -> float:
    """A Python float of a number or a one-element tensor (detached first)."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Rows of ids, right-padded with `value` to the longest: (B, T) int64.  Example: [[1, 2], [3]] -> [[1, 2], [3, v]]"""
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [value] * (width - len(row)) for row in rows], dtype=torch.long)


class Stage:
    """One stage run: its folder, configurations, implementation and device, the source run's tokenizer, and the
    loop every stage shares (schedule, progress bar, metrics, evaluation before, during and after, checkpoint).
    A subclass loads its models in `setup`, measures in `measure`, and trains one step in `train_step`."""

    headline: tuple[str, ...] = ()  # the measured numbers the summary line shows, start → end

    def __init__(self, folder: Path, config: RunConfig, stage: StageConfig, say=print):
        self.folder, self.stage, self.say = Path(folder), stage, say
        self.source = Path(stage.source)
        run = Run(self.folder, config, say)  # the implementation (with --fallback, the mix), device, kernels
        self.run, self.impl, self.config, self.device = run, run.impl, run.config, run.device
        self.generator = torch.Generator().manual_seed(self.config.seed)  # batches and rollouts
        self.tokenizer = None
        self.vocab_size = 0
        self.end_id = 0

    # -------------------------------------------------------------------------------------------- loading

    def check_source(self, folder: Path, what: str, kinds=LANGUAGE_MODELS) -> None:
        made_by = source_stage(folder)
        if made_by not in kinds:
            wanted = "a reward model (a --stage reward run)" if kinds == ("reward",) else "a language model"
            raise ConfigError(f"{what} {folder} is a {made_by} run; --stage {self.stage.stage} needs {wanted}")

    def load_tokenizer(self, folder: Path, what: str = "--from"):
        """The run's tokenizer, which must have the chat tokens and the model's vocabulary."""
        for name in ("tokenizer.json", "data.json"):
            if not (folder / name).is_file():
                raise ConfigError(f"{what} {folder}: the run has no {name}")
        tokenizer = self.impl.tokenizer.Tokenizer.load(folder / "tokenizer.json")
        missing = [token for token in CHAT_TOKENS if token not in tokenizer.special_tokens]
        if missing:
            raise ConfigError(f"{what} {folder}: its tokenizer has no chat tokens ({' '.join(missing)}); fine-tuning "
                              "needs a run pre-trained with them: llmkata train --corpus tasks (or --chat-tokens)")
        info = json.loads((folder / "data.json").read_text())
        if len(tokenizer.vocab) != info["vocab_size"]:
            raise ConfigError(f"{what} {folder}: its tokenizer has {len(tokenizer.vocab)} tokens but its model "
                              f"{info['vocab_size']}: another vocabulary")
        return tokenizer, info["vocab_size"]

    def load_language_model(self, folder: Path, what: str = "--from"):
        model = build_model(self.impl, self.config, self.vocab_size)
        try:
            self.impl.train.load_checkpoint(folder / CHECKPOINT, model)
        except ValueError as error:
            raise ConfigError(f"{what} {folder}: {error}") from None
        return model.to(self.device)

    def load_reward_model(self, folder: Path, what: str):
        self.check_source(folder, what, ("reward",))
        tokenizer, vocab_size = self.load_tokenizer(folder, what)
        if tokenizer.vocab != self.tokenizer.vocab or tokenizer.special_tokens != self.tokenizer.special_tokens:
            raise ConfigError(f"{what} {folder} has another vocabulary than --from {self.source}: a reward model "
                              "scores the policy's tokens, so both must come from one pre-training run")
        model = self.impl.align.RewardModel(self.config.model_config(self.impl, vocab_size))
        try:
            self.impl.train.load_checkpoint(folder / CHECKPOINT, model)
        except ValueError as error:
            raise ConfigError(f"{what} {folder}: {error}") from None
        return model.to(self.device)

    def load_policy(self):
        """The source's language model, with LoRA adapters when --lora asks (their targets checked here)."""
        model = self.load_language_model(self.source)
        if self.stage.lora:
            try:
                self.lora_layers = self.impl.finetune.apply_lora(model, targets=tuple(self.stage.lora_targets),
                                                                 rank=self.stage.lora, alpha=self.stage.lora_alpha)
            except ValueError as error:
                raise ConfigError(f"--lora-targets: {error}") from None
        return model

    def frozen_copy(self, model):
        reference = copy.deepcopy(model)
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
        return reference.eval()

    def setup(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------- data

    def prompt_ids(self, task) -> list[int]:
        return list(self.impl.finetune.render_prompt(task_family.conversation(task, answer=""), self.tokenizer))

    def chat_ids(self, task, answer: str | None = None) -> tuple[list[int], list[int]]:
        ids, mask = self.impl.finetune.render(task_family.conversation(task, answer), self.tokenizer)
        return list(ids), [int(m) for m in mask]

    def fitting(self, tasks: list, longest_answer: int = 0) -> list:
        """The tasks whose prompt and answer (the longest one generated, when sampling) fit the context."""
        limit = self.config.context_length
        room = max(longest_answer, 0)
        kept = [t for t in tasks if len(self.chat_ids(t)[0]) <= limit and len(self.prompt_ids(t)) + room <= limit]
        if not kept:
            raise ConfigError(f"no task fits the context of {limit} tokens (with {room} tokens to answer)")
        return kept

    def targets(self, rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, mask) rows -> x (B, T−1) inputs, y (B, T−1) next tokens, m (B, T−1) the mask of each target."""
        ids = pad([r[0] for r in rows], self.end_id)
        mask = pad([r[1] for r in rows], 0)
        return (ids[:, :-1].to(self.device), ids[:, 1:].to(self.device), mask[:, 1:].bool().to(self.device))

    def draw(self, n: int, k: int) -> list[int]:
        """k indices in 0..n−1, drawn from the stage's generator."""
        return torch.randint(n, (k,), generator=self.generator).tolist()

    # -------------------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def sample(self, model, prompts: list[list[int]], temperature: float) -> list[list[int]]:
        """One response per prompt, each its tokens up to and with <|end|> (or max_new_tokens of them).

        Prompts of one length go together through the model's KV cache, and the generate chapter's sample_next
        draws each next token (temperature 0: greedy) from the stage's generator."""
        responses: list[list[int]] = [[] for _ in prompts]
        by_length = defaultdict(list)
        for i, prompt in enumerate(prompts):
            by_length[len(prompt)].append(i)
        steps = self.stage.max_new_tokens
        for length, rows in by_length.items():
            x = torch.tensor([prompts[i] for i in rows], device=self.device)  # (B, length)
            cache = model.make_cache(len(rows), length + steps)
            with self.autocast():
                logits = model(x, cache=cache)[:, -1]  # (B, V)
            done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
            for step in range(steps):
                token = self.impl.generate.sample_next(logits.float(), temperature, generator=self.generator)
                for j, i in enumerate(rows):
                    if not done[j]:
                        responses[i].append(int(token[j]))
                done |= token == self.end_id
                if bool(done.all()) or step == steps - 1:
                    break
                with self.autocast():
                    logits = model(token[:, None].to(self.device), cache=cache)[:, -1]
        return responses

    def answer_text(self, response: list[int]) -> str:
        return self.tokenizer.decode([t for t in response if t != self.end_id])

    def exact_match(self, model, tasks: list) -> dict:
        """Greedy answers to held-out tasks: exact-match accuracy (also per kind) and the mean checker reward."""
        answers = [self.answer_text(r) for r in self.sample(model, [self.prompt_ids(t) for t in tasks], 0.0)]
        right = [task_family.check(t, a) for t, a in zip(tasks, answers)]
        result = {"accuracy": sum(right) / len(tasks),
                  "reward": sum(task_family.reward(t, a) for t, a in zip(tasks, answers)) / len(tasks)}
        for kind in task_family.KINDS:
            of_kind = [r for t, r in zip(tasks, right) if t.kind == kind]
            if of_kind:
                result[f"accuracy_{kind}"] = sum(of_kind) / len(of_kind)
        self.last_answers = list(zip(tasks, answers))
        return result

    def sampled(self, model, tasks: list) -> dict:
        """Answers to held-out tasks sampled as a rollout samples them (at the stage's temperature), from one fixed
        seed at every measurement: their mean checker reward and exact-match accuracy."""
        generator, self.generator = self.generator, torch.Generator().manual_seed(self.config.seed + 1)
        try:
            answers = [self.answer_text(r) for r in self.sample(model, [self.prompt_ids(t) for t in tasks],
                                                                 self.stage.temperature or 1.0)]
        finally:
            self.generator = generator
        return {"sampled_reward": sum(task_family.reward(t, a) for t, a in zip(tasks, answers)) / len(tasks),
                "sampled_accuracy": sum(task_family.check(t, a) for t, a in zip(tasks, answers)) / len(tasks)}

    def sequences(self, prompts: list[list[int]], responses: list[list[int]]):
        """Prompt + response rows -> x, y (B, T−1) and the mask of the response's targets (B, T−1)."""
        rows = [(p + r, [0] * len(p) + [1] * len(r)) for p, r in zip(prompts, responses)]
        return self.targets(rows)

    def logprobs(self, model, x, y):
        """log π(y_t) for every target (B, T−1), and the logits."""
        with self.autocast():
            logits = model(x)
        return self.impl.align.token_logprobs(logits, y), logits

    # -------------------------------------------------------------------------------------------- training

    def autocast(self):
        if self.config.dtype == "bfloat16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def optimizer(self, model, lr_scale: float = 1.0):
        groups = self.impl.train.parameter_groups(model, self.config.weight_decay)
        return self.impl.train.AdamW(groups, lr=self.config.lr * lr_scale,
                                     betas=(self.config.beta1, self.config.beta2))

    def lr(self, step: int) -> float:
        config = self.config
        return self.impl.train.lr_schedule(step, config.lr, config.warmup_steps, config.steps,
                                           config.lr * config.min_lr_ratio)

    def optimize(self, optimizer, loss: torch.Tensor, lr: float) -> float:
        """Backward, clip (config.grad_clip), step at `lr`; the gradient norm. A loss that is not a number stops the
        stage before the step (FloatingPointError)."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {number(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = number(self.impl.train.clip_grad_norm(params, self.config.grad_clip or math.inf))
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        optimizer.step()
        return norm

    def measure(self) -> dict:
        raise NotImplementedError

    def train_step(self, step: int, lr: float) -> dict:
        raise NotImplementedError

    def trained(self):
        """The model to save, and its optimizer."""
        return self.policy, self.policy_optimizer

    # -------------------------------------------------------------------------------------------- the run

    def execute(self) -> dict:
        """Check, set up, measure, train, measure again, save; return the summary. ConfigError before anything
        is written for a bad source or flag; a failure before the first step removes what the stage made."""
        config = self.config
        if config.threads:
            torch.set_num_threads(config.threads)
        if self.run.mix is not None:
            self.say(self.run.mix.table())
        self.check_source(self.source, "--from")
        self.tokenizer, self.vocab_size = self.load_tokenizer(self.source)
        self.end_id = self.tokenizer.special_tokens[END]
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder} is a file: the run folder must be a folder")
        made = not self.folder.exists()
        before = set() if made else {p.name for p in self.folder.iterdir()}
        try:
            self.setup()
            torch.manual_seed(config.seed)
            self.folder.mkdir(parents=True, exist_ok=True)
            for name in COPIED:
                if (self.source / name).exists():
                    shutil.copyfile(self.source / name, self.folder / name)
            write_toml(config, self.folder / "config.toml")
            write_stage_toml(self.stage, self.folder / "stage.toml")
            if self.run.mix is not None:
                write_text_atomic(self.folder / "sources.json", json.dumps(self.run.mix.record(), indent=1) + "\n")
            self.say(f"{self.stage.stage}: from {self.source}, {config.steps} steps; measuring the start on "
                     f"{self.stage.eval_tasks} held-out tasks")
            start = self.measure()
        except BaseException:
            if made:
                shutil.rmtree(self.folder, ignore_errors=True)
            else:
                for name in STAGE_FILES + ("sources.json",):
                    if name not in before:
                        (self.folder / name).unlink(missing_ok=True)
            raise
        metrics = Metrics(self.folder / "metrics.jsonl", 0)
        metrics.write(step=0, split="eval", **start)
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, unit="step", dynamic_ncols=True, desc=self.stage.stage)
        started, done, last = time.perf_counter(), 0, start
        ctrl_c = _CtrlC()
        try:
            for step in range(config.steps):
                lr = self.lr(step)
                try:
                    record = self.train_step(step, lr)
                except FloatingPointError as error:
                    raise FloatingPointError(f"step {step + 1}: {error}") from None
                done = step + 1
                if done % config.log_every == 0 or done == config.steps:
                    metrics.write(step=done, split="train", lr=lr, time=round(time.perf_counter() - started, 3),
                                  **record)
                if done % config.eval_every == 0 and done != config.steps:
                    last = self.measure()
                    metrics.write(step=done, split="eval", **last)
                if bar is not None:
                    shown = "  ".join(f"{k} {v:.3f}" for k, v in record.items() if k in self.shown)
                    bar.set_postfix_str(shown + "".join(f"  val {k} {last[k]:.3f}" for k in self.headline[:1]),
                                        refresh=False)
                    bar.update(1)
                elif done % config.eval_every == 0 and done != config.steps:
                    self.say(f"step {done}: " + ", ".join(f"{k} {last[k]:.3f}" for k in self.headline))
                if ctrl_c.pressed:
                    break
            end = self.measure()
            metrics.write(step=done, split="eval", **end)
        finally:
            ctrl_c.restore()
            if bar is not None:
                bar.close()
            metrics.close()
        seconds = time.perf_counter() - started
        summary = self.finish(start, end, done, seconds)
        if ctrl_c.pressed:
            raise Interrupted(done)
        return summary

    shown: tuple[str, ...] = ("loss",)  # train-record fields on the progress bar

    def finish(self, start: dict, end: dict, done: int, seconds: float) -> dict:
        model, optimizer = self.trained()
        extra = {"stage": self.stage.stage, "from": str(self.source)}
        if self.stage.lora and self.stage.stage != "reward":
            adapters = self.impl.finetune.lora_state_dict(model)
            _write_bytes_atomic(self.folder / "lora.safetensors",
                                save({k: v.detach().contiguous().cpu() for k, v in adapters.items()}))
            self.impl.finetune.merge_lora(model)  # the checkpoint is a plain Transformer, adapters merged
        self.impl.train.save_checkpoint(self.folder / CHECKPOINT, model, optimizer, done,
                                        config=self.config.numerics(), extra=extra)
        if getattr(self, "last_answers", None):
            lines = [f"{t.question}  ->  {a!r}  ({'right' if task_family.check(t, a) else 'wrong: ' + t.answer})"
                     for t, a in self.last_answers[:20]]
            write_text_atomic(self.folder / "samples.txt", "\n".join(lines) + "\n")
        try:
            plot_stage(self.folder, self.stage.stage)
        except ImportError:
            self.say("curves.png was not written: it needs matplotlib (pip install matplotlib)")
        summary = {"run": str(self.folder), "stage": self.stage.stage, "from": str(self.source),
                   "impl": self.config.impl, "kernels": self.config.kernels, "lora": self.stage.lora,
                   "steps": done, "train_seconds": round(seconds, 1), "start": start, "end": end,
                   "held_out_tasks": self.stage.eval_tasks}
        rewards = [r["reward"] for r in read_metrics(self.folder) if r.get("split") == "train" and "reward" in r]
        if rewards:  # the rollouts' mean checker reward, over the first and the last tenth of the steps
            k = max(1, len(rewards) // 10)
            summary["rollout_reward"] = {"first": sum(rewards[:k]) / k, "last": sum(rewards[-k:]) / k, "steps": k}
        if self.run.mix is not None:
            summary["sources"] = self.run.mix.chapters()
        write_text_atomic(self.folder / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary


# ------------------------------------------------------------------------------------------------ the stages


class SFT(Stage):
    """Supervised fine-tuning: the task family's chats, the finetune chapter's loss on the assistant's tokens."""

    headline = ("accuracy", "sampled_accuracy", "loss")

    def setup(self) -> None:
        stage = self.stage
        self.policy = self.load_policy()
        rng = random.Random(self.config.seed)
        self.examples = [self.chat_ids(t, task_family.demonstration(t, rng, stage.slips))
                         for t in self.fitting(task_family.make_tasks(stage.train_tasks, self.config.seed))]
        self.held_out = self.fitting(task_family.make_tasks(stage.eval_tasks, 0, held_out=True),
                                     stage.max_new_tokens)
        self.held_out_chats = [self.chat_ids(t) for t in self.held_out]
        self.policy_optimizer = self.optimizer(self.policy)

    def measure(self) -> dict:
        x, y, m = self.targets(self.held_out_chats)
        with torch.no_grad(), self.autocast():
            loss = number(self.impl.finetune.sft_loss(self.policy(x), y, m))
        return {**self.exact_match(self.policy, self.held_out), "loss": loss,
                **self.sampled(self.policy, self.held_out)}

    def train_step(self, step: int, lr: float) -> dict:
        x, y, m = self.targets([self.examples[i] for i in self.draw(len(self.examples), self.config.batch_size)])
        with self.autocast():
            logits = self.policy(x)
        loss = self.impl.finetune.sft_loss(logits, y, m)
        norm = self.optimize(self.policy_optimizer, loss, lr)
        return {"loss": number(loss), "grad_norm": norm}


class RewardStage(Stage):
    """A reward model: the source's decoder with a scalar head, fitted to pairs (right ≻ wrong) by Bradley–Terry."""

    headline = ("pair_accuracy", "loss", "margin")
    shown = ("loss", "pair_accuracy")

    def pair_rows(self, pairs) -> list[tuple[list[int], list[int]]]:
        records = [{"prompt": p.task.question, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
        self.impl.align.preference_pairs(records)  # the align chapter's own check of the pairs
        rows = []
        for pair in pairs:
            rows.append(self.chat_ids(pair.task, pair.chosen)[0])
            rows.append(self.chat_ids(pair.task, pair.rejected)[0])
        return rows

    def setup(self) -> None:
        stage = self.stage
        backbone = self.load_language_model(self.source)
        torch.manual_seed(self.config.seed)
        self.policy = self.impl.align.RewardModel(self.config.model_config(self.impl, self.vocab_size))
        self.policy.model.load_state_dict(backbone.model.state_dict())  # the decoder of the fine-tuned model
        self.policy.to(self.device)
        train = task_family.make_pairs(stage.train_tasks, self.config.seed)
        held_out = task_family.make_pairs(stage.eval_tasks, 0, held_out=True)
        fits = set(self.fitting([p.task for p in train]))
        self.train_rows = self.pair_rows([p for p in train if p.task in fits])
        self.held_out_rows = self.pair_rows(held_out)
        self.policy_optimizer = self.optimizer(self.policy)

    def rewards(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of chosen and rejected (each (N,)) for rows that alternate chosen, rejected."""
        ids = pad(rows, self.end_id).to(self.device)
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        with self.autocast():
            scores = self.policy(ids, lengths).float()
        return scores[0::2], scores[1::2]

    def measure(self) -> dict:
        align = self.impl.align
        with torch.no_grad():
            chosen, rejected = self.rewards(self.held_out_rows)
        return {"pair_accuracy": number(align.preference_accuracy(chosen, rejected)),
                "loss": number(align.bradley_terry_loss(chosen, rejected)),
                "margin": number((chosen - rejected).mean())}

    def train_step(self, step: int, lr: float) -> dict:
        picked = self.draw(len(self.train_rows) // 2, self.config.batch_size)
        chosen, rejected = self.rewards([row for i in picked for row in self.train_rows[2 * i: 2 * i + 2]])
        loss = self.impl.align.bradley_terry_loss(chosen, rejected)
        norm = self.optimize(self.policy_optimizer, loss, lr)
        return {"loss": number(loss), "pair_accuracy": number(self.impl.align.preference_accuracy(chosen, rejected)),
                "margin": number((chosen - rejected).mean()), "grad_norm": norm}


class DPO(Stage):
    """Direct preference optimisation on the same pairs, against a frozen copy of the starting policy."""

    headline = ("pair_accuracy", "margin", "prefers_chosen", "accuracy", "sampled_accuracy")
    shown = ("loss", "margin")

    def setup(self) -> None:
        stage = self.stage
        self.policy = self.load_policy()
        self.reference = self.frozen_copy(self.load_language_model(self.source))
        train = task_family.make_pairs(stage.train_tasks, self.config.seed)
        fits = set(self.fitting([p.task for p in train]))
        self.train_pairs = self.rows([p for p in train if p.task in fits])
        self.held_out_tasks = self.fitting(task_family.make_tasks(stage.eval_tasks, 0, held_out=True),
                                           stage.max_new_tokens)
        self.held_out_pairs = self.rows(task_family.make_pairs(stage.eval_tasks, 0, held_out=True))
        self.policy_optimizer = self.optimizer(self.policy)

    def rows(self, pairs) -> list:
        self.impl.align.preference_pairs({"prompt": p.task.question, "chosen": p.chosen, "rejected": p.rejected}
                                         for p in pairs)
        return [(self.chat_ids(p.task, p.chosen), self.chat_ids(p.task, p.rejected)) for p in pairs]

    def logps(self, model, pairs) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(chosen), log π(rejected), each (N,): the answer's tokens and its <|end|>."""
        x, y, m = self.targets([row for pair in pairs for row in pair])
        with self.autocast():
            logits = model(x)
        logp = self.impl.align.sequence_logprob(logits, y, m)
        return logp[0::2], logp[1::2]

    def implicit(self, pairs):
        with torch.no_grad():
            reference = self.logps(self.reference, pairs)
        policy = self.logps(self.policy, pairs)
        return self.impl.align.dpo_loss(policy[0], policy[1], reference[0], reference[1], self.stage.beta), policy

    def measure(self) -> dict:
        with torch.no_grad():
            (loss, chosen, rejected), (logp_chosen, logp_rejected) = self.implicit(self.held_out_pairs)
        align = self.impl.align
        return {"pair_accuracy": number(align.preference_accuracy(chosen, rejected)),
                "margin": number((chosen - rejected).mean()), "loss": number(loss),
                "prefers_chosen": number(align.preference_accuracy(logp_chosen, logp_rejected)),
                **self.exact_match(self.policy, self.held_out_tasks), **self.sampled(self.policy, self.held_out_tasks)}

    def train_step(self, step: int, lr: float) -> dict:
        pairs = [self.train_pairs[i] for i in self.draw(len(self.train_pairs), self.config.batch_size)]
        (loss, chosen, rejected), _ = self.implicit(pairs)
        norm = self.optimize(self.policy_optimizer, loss, lr)
        return {"loss": number(loss), "margin": number((chosen - rejected).mean()),
                "pair_accuracy": number(self.impl.align.preference_accuracy(chosen, rejected)),
                "chosen_reward": number(chosen.mean()), "rejected_reward": number(rejected.mean()), "grad_norm": norm}


class Rollouts(Stage):
    """What PPO and GRPO share: prompts drawn from the training side, a group of sampled answers per prompt, the
    checker's reward, a frozen reference, and held-out measures (greedy exact match, and the mean reward of
    answers sampled as in the rollouts)."""

    headline = ("sampled_reward", "sampled_accuracy", "accuracy")
    shown = ("reward", "kl", "clip_fraction")

    def setup_rollouts(self) -> None:
        stage = self.stage
        if self.config.batch_size % stage.group_size:
            raise ConfigError(f"batch_size ({self.config.batch_size}) must be a multiple of group_size "
                              f"({stage.group_size}): a rollout is batch_size answers, group_size per prompt")
        if self.config.batch_size < stage.minibatches:
            raise ConfigError(f"minibatches ({stage.minibatches}) cannot exceed batch_size ({self.config.batch_size})")
        self.policy = self.load_policy()
        self.reference = self.frozen_copy(self.load_language_model(self.source))
        self.prompts = self.fitting(task_family.make_tasks(stage.train_tasks, self.config.seed), stage.max_new_tokens)
        self.held_out = self.fitting(task_family.make_tasks(stage.eval_tasks, 0, held_out=True), stage.max_new_tokens)
        self.policy_optimizer = self.optimizer(self.policy)

    def measure(self) -> dict:
        return {**self.exact_match(self.policy, self.held_out), **self.sampled(self.policy, self.held_out)}

    def rollout(self):
        """batch_size answers, group_size per prompt: the tasks, prompts, responses and checker rewards."""
        groups = self.config.batch_size // self.stage.group_size
        tasks = [self.prompts[i] for i in self.draw(len(self.prompts), groups) for _ in range(self.stage.group_size)]
        prompts = [self.prompt_ids(t) for t in tasks]
        responses = self.sample(self.policy, prompts, self.stage.temperature)
        answers = [self.answer_text(r) for r in responses]
        rewards = torch.tensor([task_family.reward(t, a) for t, a in zip(tasks, answers)], device=self.device)
        right = sum(task_family.check(t, a) for t, a in zip(tasks, answers)) / len(tasks)
        return tasks, prompts, responses, rewards, right

    def minibatches(self, size: int):
        """Every pass over the rollout: `minibatches` disjoint index sets covering it, in a fresh order."""
        for _ in range(self.stage.epochs):
            order = torch.randperm(size, generator=self.generator)
            yield from order.chunk(self.stage.minibatches)


class PPO(Rollouts):
    """PPO with a value model (the align chapter's RewardModel read at every position), per-token KL penalty
    towards the reference in the reward, GAE, and several clipped passes over each rollout."""

    def setup(self) -> None:
        self.setup_rollouts()
        config, align = self.config, self.impl.align
        self.scorer = None
        if self.stage.reward_model:
            self.scorer = self.frozen_copy(self.load_reward_model(Path(self.stage.reward_model), "--reward-model"))
        torch.manual_seed(config.seed)
        self.critic = align.RewardModel(config.model_config(self.impl, self.vocab_size)).to(self.device)
        if self.scorer is not None:  # the value model starts from the reward model, as in InstructGPT
            self.critic.load_state_dict(self.scorer.state_dict())
        else:  # from the policy's decoder, with a head that starts at 0
            self.critic.model.load_state_dict(self.reference.model.state_dict())
            with torch.no_grad():
                self.critic.score.weight.zero_()
        self.critic_optimizer = self.optimizer(self.critic)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """V at every position (B, T): the value model's head on each hidden state."""
        with self.autocast():
            return self.critic.score(self.critic.model(x)).squeeze(-1).float()

    def train_step(self, step: int, lr: float) -> dict:
        align, stage = self.impl.align, self.stage
        tasks, prompts, responses, checker, right = self.rollout()
        x, y, mask = self.sequences(prompts, responses)
        with torch.no_grad():
            old_logp, _ = self.logprobs(self.policy, x, y)
            ref_logp, _ = self.logprobs(self.reference, x, y)
            old_values = self.values(x)
            if self.scorer is None:
                score = checker
            else:
                rows = [p + r for p, r in zip(prompts, responses)]
                lengths = torch.tensor([len(r) for r in rows], device=self.device)
                score = self.scorer(pad(rows, self.end_id).to(self.device), lengths).float()
            rewards = align.ppo_rewards(score, old_logp, ref_logp, mask, stage.kl_coef, stage.kl_estimator)
            advantages, returns = align.gae(rewards, old_values, mask, stage.gamma, stage.lam)
            # Whitened over the rollout's tokens: the step size stops depending on the scale of the rewards.
            mean = align.masked_mean(advantages, mask)
            std = align.masked_mean((advantages - mean) ** 2, mask).sqrt()
            advantages = torch.where(mask, (advantages - mean) / (std + 1e-8), 0.0)
        totals = defaultdict(float)
        count = 0
        for index in self.minibatches(len(tasks)):
            logp, logits = self.logprobs(self.policy, x[index], y[index])
            policy_loss, clip_fraction = align.ppo_policy_loss(logp, old_logp[index], advantages[index], mask[index],
                                                               stage.clip)
            entropy = align.entropy(logits.detach(), mask[index])
            grad_norm = self.optimize(self.policy_optimizer, policy_loss, lr)
            value_loss = align.ppo_value_loss(self.values(x[index]), old_values[index], returns[index], mask[index],
                                              stage.value_clip)
            self.optimize(self.critic_optimizer, stage.vf_coef * value_loss, lr)
            for name, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                                ("clip_fraction", clip_fraction), ("entropy", entropy), ("grad_norm", grad_norm)):
                totals[name] += number(value)
            count += 1
        sequence_kl = torch.where(mask, old_logp - ref_logp, 0.0).sum(-1).mean()
        record = {"reward": number(checker.mean()), "accuracy": right, "kl": number(sequence_kl),
                  "response_length": sum(map(len, responses)) / len(responses),
                  **{name: value / count for name, value in totals.items()}}
        record["loss"] = record["policy_loss"] + stage.vf_coef * record["value_loss"]
        if self.scorer is not None:
            record["score"] = number(score.mean())
        return record


class GRPO(Rollouts):
    """GRPO: no value model; each answer's advantage is its checker reward against its group's, and the clipped
    loss carries a k3 penalty towards the reference."""

    def setup(self) -> None:
        self.setup_rollouts()

    def train_step(self, step: int, lr: float) -> dict:
        align, stage = self.impl.align, self.stage
        tasks, prompts, responses, rewards, right = self.rollout()
        x, y, mask = self.sequences(prompts, responses)
        advantages = align.grpo_advantages(rewards, stage.group_size)
        with torch.no_grad():
            old_logp, _ = self.logprobs(self.policy, x, y)
            ref_logp, _ = self.logprobs(self.reference, x, y)
        totals = defaultdict(float)
        count = 0
        for index in self.minibatches(len(tasks)):
            logp, _ = self.logprobs(self.policy, x[index], y[index])
            loss, clip_fraction = align.grpo_loss(logp, old_logp[index], advantages[index], mask[index], stage.clip,
                                                  ref_logp=ref_logp[index], kl_coef=stage.kl_coef)
            grad_norm = self.optimize(self.policy_optimizer, loss, lr)
            with torch.no_grad():
                kl = align.masked_mean(align.kl_penalty(logp, ref_logp[index], "k3"), mask[index])
            for name, value in (("loss", loss), ("clip_fraction", clip_fraction), ("kl", kl),
                                ("grad_norm", grad_norm)):
                totals[name] += number(value)
            count += 1
        solved = rewards.reshape(-1, stage.group_size)
        return {"reward": number(rewards.mean()), "accuracy": right,
                "response_length": sum(map(len, responses)) / len(responses),
                "groups_with_signal": number((solved.max(-1).values > solved.min(-1).values).float().mean()),
                **{name: value / count for name, value in totals.items()}}


STAGE_CLASSES = {"sft": SFT, "reward": RewardStage, "ppo": PPO, "dpo": DPO, "grpo": GRPO}


def run_stage(folder: Path, config: RunConfig, stage: StageConfig, say=print) -> dict:
    """Run one stage in `folder`; return its summary."""
    return STAGE_CLASSES[stage.stage](folder, config, stage, say).execute()


# ------------------------------------------------------------------------------------------------ curves

CURVES = ("loss", "reward", "kl", "clip_fraction", "accuracy", "pair_accuracy", "margin", "value_loss")
# A rollout's reward and accuracy are those of sampled answers: the held-out dots beside them are too.
HELD_OUT = {"reward": "sampled_reward", "accuracy": "sampled_accuracy"}


def plot_stage(folder: Path, title: str) -> Path | None:
    """curves.png: one panel per logged quantity of CURVES, training records against the step, with the held-out
    measurements (eval records) of the same quantity as dots (of sampled answers, beside the rollouts' reward
    and accuracy). ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(folder)
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    keys = [k for k in CURVES if any(k in r for r in train)]
    if not keys:
        return None
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), dpi=100, squeeze=False)
    for axis, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in train if key in r]
        steps, values = zip(*points)
        axis.plot(steps, values, color="#9ecae1", linewidth=1, label="train")
        axis.plot(steps, running_mean(list(values), max(1, len(values) // 10)), color="#3182bd", linewidth=1.6,
                  label="train (running mean)")
        measured = HELD_OUT[key] if key in HELD_OUT and any(HELD_OUT[key] in r for r in evals) else key
        held = [(r["step"], r[measured]) for r in evals if measured in r]
        if held:
            axis.plot(*zip(*held), "o-", color="#e6550d", label="held out" + (", sampled" if measured != key
                                                                                 else ""))
        axis.set_title(key.replace("_", " "))
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(keys):]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"llmkata train --stage {title} — {folder.name}")
    figure.tight_layout()
    path = folder / "curves.png"
    temporary = folder / ".curves.png.tmp.png"
    figure.savefig(temporary)
    plt.close(figure)
    temporary.replace(path)
    return path


# ------------------------------------------------------------------------------------------------ the command


def command(args, flags: dict) -> int:
    """`llmkata train --stage STAGE --from RUN [flags]`: check everything, run the stage, print its summary.
    `flags` are the stage's flags given (stage_flags_given)."""
    import datetime
    import sys

    from llmkata.pipeline import NOT_YET, pick_device
    from llmkata.run_config import flags_given, read_toml
    from llmkata.stage_config import (
        FLAGS,
        source_config,
        stage_config,
        stage_run_config,
    )

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if flags.get("stage", "pretrain") == "pretrain":
            names = ", ".join(FLAGS.get(name, "--" + name.replace("_", "-")) for name in flags if name != "stage")
            raise ConfigError(f"{names}: these go with --stage sft, reward, ppo, dpo or grpo")
        if args.resume:
            raise ConfigError("--resume continues a pre-training run; a --stage run is run again instead")
        stage = stage_config(flags)
        source = Path(stage.source)
        run_flags = {**(read_toml(args.config) if args.config else {}), **flags_given(args)}
        config = stage_run_config(source_config(source), stage.stage, run_flags, where=f"--from {source}")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = Path(args.out) if args.out else Path("runs") / f"{stamp}-{stage.stage}"
        if (folder / CHECKPOINT).exists():
            raise ConfigError(f"{folder} already holds a run: choose another --out")
        pick_device(config.device)
    except ConfigError as error:
        print(f"llmkata train: {error}", file=sys.stderr)
        return 2
    say(f"llmkata train --stage {stage.stage}: run folder {folder}, from {source}, implementation {config.impl}")
    try:
        summary = run_stage(folder, config, stage, say)
    except ConfigError as error:
        print(f"llmkata train: {error}", file=sys.stderr)
        return 2
    except Interrupted as interrupt:
        print(f"llmkata train: stopped after step {interrupt.step}; the model of that step, its numbers and "
              f"summary.json are in {folder}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("llmkata train: stopped", file=sys.stderr)
        return 130
    except NOT_YET as error:
        hint = "" if config.fallback else (" To train now with the reference's code for every part not written "
                                           "yet: --fallback reference")
        print(f"llmkata train --impl {config.impl}: {str(error).splitlines()[0]}{hint}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"llmkata train: the loss stopped being a number at {error}. Try a lower --lr.", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    headline = STAGE_CLASSES[stage.stage].headline
    say(f"{stage.stage} done in {summary['train_seconds']:.0f} s, measured on {stage.eval_tasks} held-out tasks: "
        + ", ".join(f"{k} {summary['start'][k]:.3f} -> {summary['end'][k]:.3f}" for k in headline)
        + ("" if "rollout_reward" not in summary else
           f"; rollouts' mean reward {summary['rollout_reward']['first']:.3f} (first tenth of the steps) -> "
           f"{summary['rollout_reward']['last']:.3f} (last tenth)"))
    return 0
