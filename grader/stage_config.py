"""The configuration of the stages after pre-training (`llmkata train --stage sft|reward|ppo|dpo|grpo --from RUN`).

A stage starts from another run (`--from`): it keeps that run's model, tokenizer and implementation, and trains
with the run fields that say how (steps, lr, batch_size, seed, ... and impl, fallback, kernels when given), from
STAGE_DEFAULTS for the stage unless a flag says otherwise. A flag that would change the model or its vocabulary
(d_model, vocab_size, corpus, ...) cannot: the weights are the source run's. The stage's own fields (StageConfig)
are flags too, and the run folder keeps them in stage.toml next to config.toml.

Left out: resuming a stage (a stage run is minutes; it is run again), and stage fields in a --config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from llmkata.atomic import write_text_atomic
from llmkata.run_config import (
    DATA_FIELDS,
    ConfigError,
    RunConfig,
    config_from_mapping,
    read_toml,
)

STAGES = ("pretrain", "sft", "reward", "ppo", "dpo", "grpo")
POLICY_STAGES = ("sft", "ppo", "dpo", "grpo")  # stages that train a language model (and may use LoRA)
LANGUAGE_MODELS = ("pretrain", "sft", "ppo", "dpo", "grpo")  # runs whose checkpoint is a Transformer
KL_ESTIMATORS = ("k1", "k2", "k3")
# Fields a stage takes from its source run and never changes: the model's shape and the data it was made from.
MODEL_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "context_length", "tie_embeddings",
                *(name for name in DATA_FIELDS if name not in ("impl", "fallback", "kernels", "vocab_size")))
# The training fields of each stage, unless a flag gives them. Tuned for the tiny model of `--corpus tasks` on a
# 2-core CPU: each stage moves its number in about a minute (see the README's measured runs).
# The policy stages use a learning rate 10-20x below SFT's: one Adam step moves every weight by about lr, and at
# 3e-4 a single step already takes this model's answers far from the reference (KL of several nats per token).
STAGE_DEFAULTS = {
    "sft": dict(steps=400, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, batch_size=32, weight_decay=0.0,
                eval_every=100, log_every=5, checkpoint_every=400),
    "reward": dict(steps=300, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, batch_size=32, weight_decay=0.0,
                   eval_every=100, log_every=5, checkpoint_every=300),
    "ppo": dict(steps=60, lr=6e-5, warmup_steps=5, min_lr_ratio=1.0, batch_size=64, weight_decay=0.0,
                eval_every=20, log_every=1, checkpoint_every=60),
    "dpo": dict(steps=100, lr=3e-5, warmup_steps=5, min_lr_ratio=0.1, batch_size=16, weight_decay=0.0,
                eval_every=25, log_every=5, checkpoint_every=100),
    "grpo": dict(steps=60, lr=6e-5, warmup_steps=5, min_lr_ratio=1.0, batch_size=64, weight_decay=0.0,
                 eval_every=20, log_every=1, checkpoint_every=60),
}
# Stage fields whose default differs by stage: GRPO needs larger groups for its baseline, and one pass over a
# rollout (its advantages are per response and go stale fast); PPO's value model gives it a per-token baseline.
STAGE_FIELD_DEFAULTS = {"ppo": dict(group_size=4, epochs=2), "grpo": dict(group_size=8, epochs=1)}


@dataclass
class StageConfig:
    """What a stage does besides the run's training fields. Every field is a flag (`--group-size 8`)."""

    stage: str = "sft"
    source: str = ""  # --from: the run this stage starts from
    reward_model: str = ""  # ppo: a reward stage's run scores the rollouts (default: the task checker)
    lora: int = 0  # rank of LoRA adapters on lora_targets (0: train every weight)
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    train_tasks: int = 4000  # training-side tasks (conversations, pairs, prompts) the stage draws from
    slips: float = 0.3  # sft: share of demonstrations that hold the typical slip (llmkata.tasks.demonstration)
    eval_tasks: int = 150  # held-out tasks every number is measured on
    max_new_tokens: int = 8  # the longest answer generated (rollouts and evaluation)
    temperature: float = 1.0  # of the rollouts (evaluation is greedy)
    group_size: int = 4  # responses per prompt in a rollout (grpo: the group, default 8; ppo: samples per prompt)
    epochs: int = 2  # ppo, grpo: passes over each rollout (grpo default: 1)
    minibatches: int = 2  # ppo, grpo: gradient steps per pass
    clip: float = 0.2  # ppo, grpo: ε of the clipped ratio
    value_clip: float = 0.2  # ppo: ε of the clipped value loss
    vf_coef: float = 0.5  # ppo: weight of the value loss (the value model's own optimizer steps on it)
    kl_coef: float = 0.05  # ppo: β of the KL penalty in the reward; grpo: of the k3 term in the loss
    kl_estimator: str = "k1"  # ppo: k1, k2 or k3
    gamma: float = 1.0  # ppo: discount
    lam: float = 0.95  # ppo: GAE λ
    beta: float = 0.1  # dpo: strength of the implicit KL constraint

    def check(self) -> None:
        """Raise ConfigError naming the first field whose value cannot work."""
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.stage != "pretrain" and not self.source:
            raise ConfigError(f"--stage {self.stage} starts from a run: give --from RUN")
        if isinstance(self.lora, bool) or not isinstance(self.lora, int) or self.lora < 0:
            raise ConfigError(f"--lora {self.lora!r}: a LoRA rank must be a positive integer (leave out --lora to "
                              "train every weight)")
        if self.lora and self.stage not in POLICY_STAGES:
            raise ConfigError(f"--lora goes with --stage {', '.join(POLICY_STAGES)}, not {self.stage}")
        if self.lora and not self.lora_targets:
            raise ConfigError("lora_targets is empty: name the layers to adapt (q_proj, v_proj, ...)")
        for name in ("train_tasks", "eval_tasks", "max_new_tokens", "epochs", "minibatches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ConfigError(f"group_size must be a positive integer, got {self.group_size!r}")
        if self.stage == "grpo" and self.group_size < 2:
            raise ConfigError(f"group_size must be at least 2 for grpo (a group of one has no baseline), "
                              f"got {self.group_size}")
        if not 0 <= self.slips <= 1:
            raise ConfigError(f"slips must be between 0 and 1, got {self.slips}")
        for name in ("lora_alpha", "slips", "temperature", "clip", "value_clip", "vf_coef", "kl_coef", "gamma", "lam", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.stage in ("ppo", "grpo") and self.temperature == 0:
            raise ConfigError("temperature must be positive for rollouts: greedy answers of a group are all alike")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must be between 0 and 1, got {self.gamma} and {self.lam}")
        if self.stage == "dpo" and self.beta == 0:
            raise ConfigError("beta must be positive for dpo")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ConfigError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        if self.reward_model and self.stage != "ppo":
            raise ConfigError(f"--reward-model goes with --stage ppo, not {self.stage}")


FIELDS = {f.name: f for f in dataclasses.fields(StageConfig)}
FLAGS = {"source": "--from"}
HELP = {
    "stage": "pretrain (default: train a model from scratch), or a stage that starts from --from RUN: sft "
             "(supervised fine-tuning on chats), reward (a reward model from preference pairs), ppo, dpo, grpo",
    "source": "the run a stage starts from (a run with the chat tokens: --corpus tasks or --chat-tokens)",
    "reward_model": "ppo: score the rollouts with this reward stage's run instead of the task checker",
    "lora": "train LoRA adapters of this rank instead of every weight (0: none); merged into the checkpoint at "
            "the end, and kept apart in lora.safetensors",
    "lora_targets": "the linear layers LoRA adapts, by name",
    "train_tasks": "training-side tasks the stage draws its conversations, pairs or prompts from",
    "eval_tasks": "held-out tasks every number is measured on",
    "slips": "sft: the share of demonstrations that hold the typical slip (the question's input repeated instead "
             "of transformed), as people's demonstrations hold mistakes; 0: all right",
    "group_size": "responses sampled per prompt: GRPO's group, PPO's samples per prompt",
    "epochs": "ppo, grpo: passes over each rollout", "minibatches": "ppo, grpo: minibatches per pass",
    "kl_coef": "ppo: β of the KL penalty in the reward; grpo: weight of the k3 KL term in the loss",
    "beta": "dpo: β, the strength of the implicit KL constraint",
}


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per StageConfig field, absent from the parsed arguments unless given."""
    for name, spec in FIELDS.items():
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        text = HELP.get(name, name.replace("_", " "))
        if name == "stage":
            parser.add_argument(flag, dest=name, choices=STAGES, default=argparse.SUPPRESS, help=text)
        elif spec.type == "list[str]":
            parser.add_argument(flag, dest=name, nargs="+", default=argparse.SUPPRESS,
                                help=f"{text} (default: {' '.join(default)})")
        else:
            kind = {"int": int, "float": float, "str": str}[spec.type]
            by_stage = {stage: values[name] for stage, values in STAGE_FIELD_DEFAULTS.items() if name in values}
            shown = ", ".join(f"{stage} {value}" for stage, value in by_stage.items()) or (default if default != ""
                                                                                              else "none")
            parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                                metavar="RUN" if name in ("source", "reward_model") else name.upper(),
                                help=f"{text} (default: {shown})")


def stage_flags_given(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}


def stage_config(values: dict) -> StageConfig:
    """StageConfig() with the stage's own defaults (STAGE_FIELD_DEFAULTS) and `values` applied, converted and
    checked."""
    config = StageConfig(**STAGE_FIELD_DEFAULTS.get(values.get("stage"), {}))
    lora = values.get("lora", 1)
    if isinstance(lora, int) and not isinstance(lora, bool) and lora <= 0:  # given, and not a rank
        raise ConfigError(f"--lora {lora}: a LoRA rank must be a positive integer (leave out --lora to train every "
                          "weight)")
    for name, value in values.items():
        if name not in FIELDS:
            raise ConfigError(f"unknown stage field {name!r}; the fields are {', '.join(FIELDS)}")
        if FIELDS[name].type == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        setattr(config, name, value)
    config.check()
    return config


def source_config(source: Path, what: str = "--from") -> RunConfig:
    """The configuration of the run a stage starts from; a ConfigError that names it when there is none."""
    if not (source / "config.toml").is_file():
        raise ConfigError(f"{what} {source}: there is no run there (config.toml is missing)")
    if not (source / "checkpoint.safetensors").is_file():
        raise ConfigError(f"{what} {source}: the run has no checkpoint (checkpoint.safetensors is missing)")
    return config_from_mapping(read_toml(source / "config.toml"), where=str(source / "config.toml"))


def source_stage(source: Path) -> str:
    """The stage that made a run: stage.toml says; a run without one is a pre-training run."""
    path = source / "stage.toml"
    return str(read_toml(path).get("stage", "pretrain")) if path.is_file() else "pretrain"


def stage_run_config(source: RunConfig, stage: str, flags: dict, where: str) -> RunConfig:
    """The run configuration of a stage: the source's, with the stage's training defaults, then the flags.

    A flag for a field of MODEL_FIELDS that differs from the source's is a ConfigError: the stage trains the
    source's weights, with its vocabulary. A new implementation decides its own kernels unless --kernels says.
    """
    differing = [f"{name} (run: {getattr(source, name)!r}, flag: {value!r})" for name, value in flags.items()
                 if name in MODEL_FIELDS and getattr(source, name) != value]
    if differing:
        vocabulary = any(name.startswith(("vocab_size", "corpus", "chat_tokens")) for name in differing)
        raise ConfigError(f"{where} has another {'vocabulary' if vocabulary else 'model'}: {'; '.join(differing)}. "
                          "A stage trains the weights of the run it starts from: drop these flags")
    values = {**STAGE_DEFAULTS[stage], **flags}
    if "warmup_steps" not in flags:  # a short run (--steps 10) warms up for a tenth of it at most
        values["warmup_steps"] = min(values["warmup_steps"], values["steps"] // 10 if isinstance(values["steps"], int)
                                     else 0)
    if "impl" in flags and flags["impl"] != source.impl and "kernels" not in flags:
        values["kernels"] = "auto"
    return config_from_mapping(values, base=source, where="the flags")


def write_stage_toml(config: StageConfig, path: Path) -> None:
    lines = ["# llmkata stage configuration (the run's training fields are in config.toml)"]
    for name, value in dataclasses.asdict(config).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"{name} = {value!r}")
        else:
            lines.append(f"{name} = {json.dumps(value, ensure_ascii=False)}")
    write_text_atomic(path, "\n".join(lines) + "\n")
