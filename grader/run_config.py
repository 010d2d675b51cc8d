"""The configuration of a `llmkata train` run: its fields, their rules, the TOML file and the command-line flags.

    RunConfig()                                       the defaults: a ~1M-parameter Llama-style model, default corpus
    config_from_mapping({"steps": 50}, base=config)   fields applied, converted and checked
    config_from_mapping(read_toml("run.toml"))        a TOML file of fields;  write_toml(config, path) writes one

Every field is a flag of `llmkata train` (`lr` is `--lr`, `tie_embeddings` is `--tie-embeddings/--no-tie-embeddings`)
and a key of the TOML file; flags given with `--config` override the file. A value that cannot work is a
ConfigError whose message names the field. The model's shape rules (heads divide d_model, an even head size, kv
heads divide heads) are the model's own: the check asks the implementation's `ModelConfig`.

Left out: nested tables, environment variables, and any field that is not one of RunConfig's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field

from llmkata.atomic import write_text_atomic
from llmkata.spec.impl import Implementation, Missing, load

EOT = "<|endoftext|>"
# Fields that may differ when a run is resumed: they change where and how fast it runs, not what it computes.
# `steps` may also grow: the run is extended (see resumed_config).
RESUMABLE = ("device", "threads", "progress", "parallel")
# The fields that shape a run's prepared data (tokenizer.json, train.npy, val.npy): data.json records them, and a
# run folder whose data was made with other values has it made again.
DATA_FIELDS = ("impl", "fallback", "kernels", "data", "data_field", "data_split", "errors", "max_documents",
               "val_fraction", "vocab_size", "corpus", "chat_tokens")
# Data fields recorded in data.json only when they differ from their defaults, so that data prepared before they
# existed is still taken as made with the same fields.
RECORDED_IF_SET = {"fallback": "", "corpus": "text", "chat_tokens": False}
KERNELS = ("on", "off", "auto")
FALLBACKS = ("", "reference")  # --fallback: stop at the first part not written yet, or take the reference's
ERRORS = ("strict", "replace")
CORPORA = ("text", "tasks")  # --corpus: the text of --data (or the default corpus), or llmkata's synthetic tasks
# The chat tokens of the fine-tuning chapter, which a run with chat_tokens adds to its tokenizer after EOT.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
REFERENCE_PACKAGE = "llmkata.reference"


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


@dataclass
class RunConfig:
    """Everything a run depends on. The defaults train a ~1M-parameter Llama-style model on the default corpus."""

    impl: str = "reference"  # reference, exercises, a folder or a module name
    fallback: str = ""  # "": stop at a part of impl not written yet; reference: take the reference's for it
    data: list[str] = field(default_factory=list)  # files or folders (.txt, .md, .jsonl), or a HF dataset name
    data_field: str = "text"  # the text field of .jsonl lines and dataset rows
    data_split: str = "train"  # the split of a Hugging Face dataset
    corpus: str = "text"  # text: data (or the default corpus); tasks: llmkata.tasks as plain text, chat tokens on
    chat_tokens: bool = False  # the tokenizer also gets CHAT_TOKENS, so that the run can be fine-tuned on chats
    errors: str = "strict"  # bytes of a file that are not UTF-8: strict (stop, naming the file) or replace (U+FFFD)
    max_documents: int = 0  # read at most this many documents (0: all)
    val_fraction: float = 0.1
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: as many as n_heads (plain multi-head attention)
    context_length: int = 128
    tie_embeddings: bool = False
    kernels: str = "auto"  # chapter 14's fast paths: on, off, or auto (on for the reference, off for any other)
    batch_size: int = 16
    grad_accum: int = 1  # micro-batches per optimizer step
    steps: int = 600
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr · min_lr_ratio
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0: no clipping
    dtype: str = "float32"  # float32, or bfloat16 (autocast for the forward pass)
    seed: int = 1337
    eval_every: int = 100
    eval_tokens: int = 0  # validation tokens per evaluation (0: the whole split)
    checkpoint_every: int = 100
    log_every: int = 10
    sample_tokens: int = 120
    device: str = "auto"  # auto, cpu, cuda, mps
    parallel: str = "ddp"  # under torchrun or accelerate launch: ddp (chapter 13's DataParallel) or fsdp
    threads: int = 0  # torch CPU threads, and processes of the fast tokenizer trainer (0: their defaults)
    progress: bool = True

    def check(self, impl: Implementation | None = None) -> None:
        """Raise ConfigError naming the first field whose value cannot work.

        The model's shape is checked by the implementation's own ModelConfig (`impl`, default: the one `self.impl`
        names); an implementation whose model chapter is not written yet is checked when the run reaches it.
        """
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "context_length", "batch_size", "grad_accum",
                    "steps", "eval_every", "checkpoint_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_documents", "n_kv_heads", "warmup_steps", "eval_tokens", "sample_tokens", "threads", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "val_fraction", "beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ConfigError("lr must be positive, got 0")
        if self.min_lr_ratio > 1:
            raise ConfigError(f"min_lr_ratio must be between 0 and 1, got {self.min_lr_ratio}")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps})")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        for name in ("beta1", "beta2"):
            if not getattr(self, name) < 1:
                raise ConfigError(f"{name} must be below 1, got {getattr(self, name)}")
        if self.vocab_size < 257:
            raise ConfigError(f"vocab_size must be at least 257 (256 bytes + {EOT}), got {self.vocab_size}")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"fallback must be reference or empty (no fallback), got {self.fallback!r}")
        if self.kernels not in KERNELS:
            raise ConfigError(f"kernels must be on, off or auto, got {self.kernels!r}")
        if self.corpus not in CORPORA:
            raise ConfigError(f"corpus must be text or tasks, got {self.corpus!r}")
        if self.corpus == "tasks" and self.data:
            raise ConfigError("corpus tasks is llmkata's synthetic task text: drop data, or use corpus text")
        if len(self.special_tokens()) > 1 and self.vocab_size < 256 + len(self.special_tokens()):
            raise ConfigError(f"vocab_size must be at least {256 + len(self.special_tokens())} (256 bytes + "
                              f"{', '.join(self.special_tokens())}), got {self.vocab_size}")
        if self.errors not in ERRORS:
            raise ConfigError(f"errors must be strict or replace, got {self.errors!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ConfigError(f"parallel must be ddp or fsdp, got {self.parallel!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if impl is None:
            try:
                impl = load(self.impl)
            except ValueError as error:
                raise ConfigError(f"impl: {error}") from None
        try:
            self.model_config(impl, self.vocab_size)
        except ValueError as error:
            raise ConfigError(f"the model's shape cannot work: {error}") from None
        except (NotImplementedError, Missing):
            pass

    def special_tokens(self) -> list[str]:
        """The tokenizer's special tokens: EOT, then the chat tokens with chat_tokens or the tasks corpus."""
        return [EOT, *CHAT_TOKENS] if self.chat_tokens or self.corpus == "tasks" else [EOT]

    def uses_kernels(self, impl: Implementation) -> bool:
        """Whether the run takes chapter 14's fast paths: `kernels`, with auto meaning "only for the reference" (a
        learner's own code trains with their own plain chapters)."""
        if self.kernels == "auto":
            return impl.package == REFERENCE_PACKAGE
        return self.kernels == "on"

    def resolved(self, impl: Implementation) -> RunConfig:
        """A copy with `kernels` decided for `impl` (auto becomes on or off): what a run folder records."""
        return dataclasses.replace(self, kernels="on" if self.uses_kernels(impl) else "off")

    def model_config(self, impl: Implementation, vocab_size: int):
        """The implementation's ModelConfig for this run (which applies the model's own shape rules)."""
        return impl.model.ModelConfig(
            vocab_size=vocab_size, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads or None, max_seq_len=self.context_length,
            tie_embeddings=self.tie_embeddings, kernels=self.uses_kernels(impl))

    def numerics(self) -> dict:
        """The fields that decide what the run computes (all but RESUMABLE): a checkpoint must agree on them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE}

    def data_fields(self) -> dict:
        """The fields that shape the prepared data (DATA_FIELDS), as data.json records them; those of
        RECORDED_IF_SET only when they are set, so that data prepared before they existed is still taken as made
        with the same fields."""
        return {k: getattr(self, k) for k in DATA_FIELDS
                if k not in RECORDED_IF_SET or getattr(self, k) != RECORDED_IF_SET[k]}

    def differences_from_checkpoint(self, saved: dict) -> list[str]:
        """The fields on which a checkpoint's saved configuration (numerics() as JSON) disagrees with this one.

        `steps` may differ (an extended run); a field the checkpoint lacks (one added to llmkata since) agrees when
        it has its default value; a field llmkata no longer has is ignored.
        """
        ours, defaults = (json.loads(json.dumps(config.numerics())) for config in (self, RunConfig()))
        return [f"{name} (checkpoint: {saved.get(name, defaults[name])!r}, now: {value!r})"
                for name, value in ours.items() if name != "steps" and saved.get(name, defaults[name]) != value]


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
HELP = {
    "impl": "implementation: reference (default), exercises, a folder or a module name",
    "data": "text files, folders (their .txt, .md and .jsonl files) or a Hugging Face dataset name (default: the "
            "pydoc corpus); a long document, such as a book in one file, is cut at paragraph breaks for the split",
    "fallback": "reference: take every part of --impl that is written, and the reference's for each one that is "
                "not (a stub or missing), printing and recording in the run folder which came from where; "
                "none: the first part not written yet stops the run",
    "kernels": "the hand-written fast paths of chapter 14 (kernels): on, off, or auto: on for the reference, "
               "off for any other implementation",
    "corpus": "text: the text of --data, or the default corpus; tasks: llmkata's synthetic tasks (sums, reversed "
              "and sorted words) as plain text, held-out tasks left out, with the chat tokens in the tokenizer: "
              "the start of `--stage sft`",
    "chat_tokens": "add the chat tokens <|system|> <|user|> <|assistant|> <|end|> to the tokenizer, so that the run "
                   "can be fine-tuned (--stage sft)",
    "errors": "bytes of a file that are not UTF-8: strict (stop, naming the file and byte) or replace "
              "(each invalid sequence becomes U+FFFD)",
    "steps": "optimizer steps; with --resume, a larger number extends the run, and the learning-rate schedule is "
             "recomputed for the new total from the resumed step on",
    "lr": "peak learning rate",
    "min_lr_ratio": "the final learning rate as a fraction of lr",
    "dtype": "float32, or bfloat16 (autocast)", "device": "auto, cpu, cuda, cuda:N or mps",
    "grad_clip": "clip the global gradient norm to this (0: no clipping)",
    "parallel": "in a world of processes (torchrun, accelerate launch): ddp, the parallel chapter's "
                "DataParallel, or fsdp, torch's fully_shard; batch_size is then the global batch",
    "threads": "torch CPU threads, and processes of the kernels chapter's tokenizer trainer (0: their defaults)",
}
METAVAR = {"parallel": "ddp|fsdp",
           "kernels": "|".join(KERNELS), "errors": "|".join(ERRORS), "fallback": "reference", "corpus": "text|tasks"}


def field_type(name: str) -> type:
    """The Python type of a field.  Example: field_type("lr") -> float, field_type("data") -> list"""
    return {"int": int, "float": float, "str": str, "bool": bool, "list[str]": list}[FIELDS[name].type]


def config_from_mapping(values: dict, base: RunConfig | None = None, where: str = "the configuration") -> RunConfig:
    """base (default RunConfig()) with `values` applied, each converted to its field's type and checked."""
    config = dataclasses.replace(base or RunConfig())
    for name, value in values.items():
        if name not in FIELDS:
            raise ConfigError(f"unknown field {name!r} in {where}; the fields are {', '.join(FIELDS)}")
        kind = field_type(name)
        if kind is list:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{name} must be {kind.__name__}, got {value!r} in {where}")
        setattr(config, name, value)
    config.check()
    return config


def resumed_config(saved: RunConfig, flags: dict, where: str) -> RunConfig:
    """The saved configuration of a run to resume, with the flags that only change where and how fast it runs,
    and `steps` when it grows.

    A larger `steps` extends the run: it continues from its checkpoint to the new total, every other field fixed.
    The learning-rate schedule is a function of the total, so from the resumed step on it is the schedule of a run
    of the new total (after a finished run the rate climbs from its floor back onto that cosine, then anneals
    again). Any other flag that changes what the run computes is a ConfigError: a resumed run must compute what
    the original would have.
    """
    changed = [f"{k} (run: {getattr(saved, k)!r}, flag: {v!r})" for k, v in flags.items()
               if k not in (*RESUMABLE, "steps") and getattr(saved, k) != v]
    if changed:
        raise ConfigError(f"{where}: the run was configured differently: {'; '.join(changed)}. "
                          "A resumed run must compute what the original would have; start a new run instead")
    steps = flags.get("steps", saved.steps)
    if isinstance(steps, int) and not isinstance(steps, bool) and steps < saved.steps:
        raise ConfigError(f"{where}: --steps {steps} is fewer than the run's {saved.steps}: a run can be extended "
                          "to more steps, never shortened (its checkpoint may be past that step already)")
    return config_from_mapping({k: v for k, v in flags.items() if k in (*RESUMABLE, "steps")}, base=saved)


def read_toml(path) -> dict:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"no configuration file {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def write_toml(config: RunConfig, path) -> None:
    lines = ["# llmkata run configuration: `llmkata train --config this-file` runs it again"]
    for name, value in dataclasses.asdict(config).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:  # str or list[str]: JSON strings are TOML basic strings
            text = json.dumps(value, ensure_ascii=False)
        lines.append(f"{name} = {text}")
    write_text_atomic(path, "\n".join(lines) + "\n")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field, absent from the parsed arguments unless given (so that a TOML file's value stays)."""
    for name, spec in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        kind = field_type(name)
        text = HELP.get(name, name.replace("_", " "))
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{text} (default: {spec.default})")
        elif kind is list:
            parser.add_argument(flag, dest=name, nargs="+", default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS,
                                metavar=METAVAR.get(name, name.upper()),
                                help=f"{text} (default: {spec.default if spec.default != '' else 'none'})")


def flags_given(args: argparse.Namespace) -> dict:
    """The fields set on the command line.  Example: `--lr 0.01` -> {"lr": 0.01}"""
    return {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
