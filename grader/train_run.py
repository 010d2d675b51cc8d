"""`llmkata train`, `llmkata sample` and `llmkata eval`: the whole pipeline, end to end, with any implementation.

    llmkata train                               # default corpus, default model, a few minutes on 2 CPU cores
    llmkata train --impl exercises              # the same, with your own components
    llmkata train --data notes/ --steps 2000    # your files (.txt, .md, .jsonl, folders), or a Hugging Face dataset
    llmkata train --config run.toml --lr 1e-3   # a TOML file, then flags on top
    llmkata train --resume runs/20250101-120000 # continue a run where its last checkpoint left it
    llmkata sample --prompt "The with statement"
    llmkata eval --run runs/20250101-120000

Every step is done by the implementation under test, reached through `llmkata.impl.load`: the text chapter loads
and cleans the corpus, the tokenizer chapter learns a byte-level BPE on the training split, the data chapter packs
both splits into token files and draws the batches, the model chapter builds the transformer, the train chapter
steps it (AdamW, schedule, clipping, checkpoints), the evaluate chapter measures it, and the generate chapter
writes the samples. A run folder holds everything:

    config.toml              the configuration, complete (reload it with --config)
    data.json                documents, tokens and bytes of each split
    tokenizer.json           the tokenizer;  train.npy, val.npy: the packed token streams
    checkpoint.safetensors   weights + optimizer + step + random states, rewritten atomically
    metrics.jsonl            one JSON object per log line: train loss, lr, grad norm, tokens/s; val loss, bits/byte
    loss.png                 the loss curves;  samples.txt: text the model wrote at the end
    summary.json             the final numbers: wall time, validation loss and bits/byte, accuracy, throughput
    hf/                      the model in the Hugging Face Llama format (Llama-shaped configurations only)

Resuming loads the checkpoint and continues bit-exactly: the same weights, after the same number of steps, as a
run that never stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from llmkata.reference.files import write_text_atomic

EOT = "<|endoftext|>"
CHECKPOINT = "checkpoint.safetensors"
# Fields that may differ when a run is resumed: they change where and how fast it runs, not what it computes.
RESUMABLE = ("device", "threads", "progress")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


def _not_yet() -> tuple[type[BaseException], ...]:
    from llmkata.impl import Missing

    return NotImplementedError, Missing


@dataclass
class RunConfig:
    """Everything a run depends on. The defaults train a ~1M-parameter Llama-style model on the default corpus."""

    impl: str = "reference"  # reference, exercises, a folder or a module name
    data: list[str] = field(default_factory=list)  # files or folders (.txt, .md, .jsonl), or a HF dataset name
    data_field: str = "text"  # the text field of .jsonl lines and dataset rows
    data_split: str = "train"  # the split of a Hugging Face dataset
    max_documents: int = 0  # read at most this many documents (0: all)
    val_fraction: float = 0.1
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: as many as n_heads (plain multi-head attention)
    context_length: int = 128
    tie_embeddings: bool = False
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
    threads: int = 0  # torch CPU threads (0: torch's default)
    progress: bool = True

    def check(self) -> None:
        """Raise ConfigError naming the first field whose value cannot work."""
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
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of an even "
                              "size (RoPE rotates pairs)")
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    def numerics(self) -> dict:
        """The fields that decide what the run computes (all but RESUMABLE): a checkpoint must agree on them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE}


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
HELP = {
    "impl": "implementation: reference (default), exercises, a folder or a module name",
    "data": "text files or folders (.txt, .md, .jsonl), or a Hugging Face dataset name (default: the pydoc corpus)",
    "steps": "optimizer steps", "lr": "peak learning rate",
    "min_lr_ratio": "the final learning rate as a fraction of lr",
    "dtype": "float32, or bfloat16 (autocast)", "device": "auto, cpu, cuda, cuda:N or mps",
    "grad_clip": "clip the global gradient norm to this (0: no clipping)",
}


def _field_type(name: str):
    kind = FIELDS[name].type
    return {"int": int, "float": float, "str": str, "bool": bool, "list[str]": list}[kind]


def config_from_mapping(values: dict, base: RunConfig | None = None, where: str = "the configuration") -> RunConfig:
    """base (default RunConfig()) with `values` applied, each converted to its field's type and checked."""
    config = dataclasses.replace(base or RunConfig())
    for name, value in values.items():
        if name not in FIELDS:
            raise ConfigError(f"unknown field {name!r} in {where}; the fields are {', '.join(FIELDS)}")
        kind = _field_type(name)
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


def read_toml(path) -> dict:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"no configuration file {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def write_toml(config: RunConfig, path: Path) -> None:
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


# ---------------------------------------------------------------------------------------------------- the pipeline


def _device(config: RunConfig):
    import torch

    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _documents(impl, config: RunConfig):
    """The corpus as documents: the default one, files, or a Hugging Face dataset; cleaned, exact duplicates out."""
    text = impl.text
    if not config.data:
        docs = text.default_corpus()
    else:
        paths = [Path(p).expanduser() for p in config.data]
        if all(p.exists() for p in paths):
            jsonl = [p for p in paths if p.suffix == ".jsonl"]
            rest = [p for p in paths if p.suffix != ".jsonl"]
            docs = _chain(text.load_jsonl(jsonl, field=config.data_field) if jsonl else (),
                          text.load_text_files(rest) if rest else ())
        elif len(config.data) == 1 and not _looks_like_a_path(config.data[0]):
            docs = _hf_documents(text, config)
        else:
            missing = [str(p) for p in paths if not p.exists()]
            raise ConfigError(f"data: no such file or folder: {', '.join(missing)}")
    if config.max_documents:
        docs = _take(docs, config.max_documents)
    return text.exact_dedup(d for d in map(text.clean, docs) if d.strip())


def _looks_like_a_path(name: str) -> bool:
    """'notes/a.txt', './x', 'a.jsonl' are paths; 'roneneldan/TinyStories' or 'wikitext' are dataset names."""
    return name.startswith((".", "/", "~")) or Path(name).suffix in (".txt", ".md", ".jsonl", ".json", ".text")


def _hf_documents(text, config: RunConfig):
    """The rows of a Hugging Face dataset, streamed; a dataset that cannot be loaded is a ConfigError."""
    try:
        yield from text.load_hf_dataset(config.data[0], field=config.data_field, split=config.data_split,
                                        streaming=True)
    except _not_yet():
        raise
    except Exception as error:  # datasets raises many kinds: not found, no network, no such split or field
        raise ConfigError(f"data: cannot read the Hugging Face dataset {config.data[0]!r} "
                          f"(split {config.data_split!r}, field {config.data_field!r}): {error}") from None


def _chain(*iterables):
    for iterable in iterables:
        yield from iterable


def _take(iterable, n):
    for i, item in enumerate(iterable):
        if i >= n:
            return
        yield item


def prepare_data(impl, config: RunConfig, run: Path, say) -> dict:
    """Split, train the tokenizer, pack both splits; skipped when the run folder already has them (resume)."""
    info_path = run / "data.json"
    if info_path.exists() and (run / "tokenizer.json").exists() and (run / "train.npy").exists():
        return json.loads(info_path.read_text())
    started = time.perf_counter()
    train_docs, val_docs = impl.data.train_val_split(_documents(impl, config), config.val_fraction, "")
    if not train_docs or not val_docs:
        raise ConfigError(f"the corpus has {len(train_docs)} training and {len(val_docs)} validation documents; "
                          "both need at least one (more data, or another val_fraction)")
    say(f"corpus: {len(train_docs)} training and {len(val_docs)} validation documents; training a tokenizer of "
        f"{config.vocab_size} tokens")
    tokenizer = impl.tokenizer.train_bpe(train_docs, config.vocab_size, special_tokens=[EOT])
    tokenizer.save(run / "tokenizer.json")
    eot = tokenizer.special_tokens[EOT]
    vocab = len(tokenizer.vocab)
    train = impl.data.tokenize_and_pack(train_docs, tokenizer, eot, run / "train.npy", vocab)
    val = impl.data.tokenize_and_pack(val_docs, tokenizer, eot, run / "val.npy", vocab)
    info = {"train_documents": len(train_docs), "val_documents": len(val_docs), "vocab_size": vocab,
            "train_tokens": int(len(train)), "val_tokens": int(len(val)),
            "train_bytes": sum(len(d.encode("utf-8")) for d in train_docs),
            "val_bytes": sum(len(d.encode("utf-8")) for d in val_docs), "eot_id": eot,
            "seconds": round(time.perf_counter() - started, 2)}
    if info["val_tokens"] < 2:
        raise ConfigError("the validation split has fewer than 2 tokens: nothing to evaluate")
    write_text_atomic(info_path, json.dumps(info, indent=1) + "\n")
    return info


def build_model(impl, config: RunConfig, vocab_size: int):
    import torch

    torch.manual_seed(config.seed)
    model_config = impl.model.ModelConfig(
        vocab_size=vocab_size, d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads or None, max_seq_len=config.context_length,
        tie_embeddings=config.tie_embeddings)
    return impl.model.Transformer(model_config)


def validate(impl, model, val_tokens, config: RunConfig, info: dict, device) -> dict:
    """Validation loss, perplexity and bits per byte over the first eval_tokens targets (default: all)."""
    tokens = val_tokens if not config.eval_tokens else val_tokens[: config.eval_tokens + 1]
    batches = impl.data.sequential_batches(tokens, config.batch_size, config.context_length, device=device)
    loss, count = impl.evaluate.evaluate_loss(model, batches)
    # The bytes the counted targets spell: all of the split's bytes when the whole split is evaluated,
    # else the same share of them (an estimate: bytes per token vary along the text).
    n_bytes = info["val_bytes"] * count / max(1, info["val_tokens"] - 1)
    return {"loss": loss, "perplexity": impl.evaluate.perplexity(loss),
            "bits_per_byte": impl.evaluate.bits_per_byte(loss, count, n_bytes), "targets": count}


class Metrics:
    """metrics.jsonl, appended one record per line and flushed, so a killed run keeps what it logged."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        kept = []
        if path.exists():  # drop what was logged after the checkpoint: the resumed run logs it again
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        write_text_atomic(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a", encoding="utf-8")

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def plot_losses(run: Path) -> Path | None:
    """loss.png: training loss (and its running mean) and validation loss against tokens seen."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(run)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    if not train:
        return None
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = [r["tokens"] / 1e6 for r in train]
    y = [r["loss"] for r in train]
    axis.plot(x, y, color="#9ecae1", linewidth=1, label="train")
    window = max(1, len(y) // 20)
    smooth = [sum(y[max(0, i - window + 1): i + 1]) / len(y[max(0, i - window + 1): i + 1]) for i in range(len(y))]
    axis.plot(x, smooth, color="#3182bd", linewidth=1.8, label="train (running mean)")
    if val:
        axis.plot([r["tokens"] / 1e6 for r in val], [r["loss"] for r in val], "o-", color="#e6550d",
                  label="validation")
    axis.set_xlabel("tokens seen (millions)")
    axis.set_ylabel("cross-entropy (nats per token)")
    axis.set_title(f"llmkata train — {run.name}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = run / "loss.png"
    figure.savefig(path)
    plt.close(figure)
    return path


def _progress(config: RunConfig, start: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, unit="step", dynamic_ncols=True, desc="train")


def train(config: RunConfig, run: Path, resume: bool = False, say=print) -> dict:
    """Run (or resume) training in the folder `run`; return the summary. FloatingPointError on a NaN loss."""
    import torch

    from llmkata.impl import load

    if config.threads:
        torch.set_num_threads(config.threads)
    impl = load(config.impl)
    run.mkdir(parents=True, exist_ok=True)
    write_toml(config, run / "config.toml")
    device = _device(config)
    info = prepare_data(impl, config, run, say)
    train_tokens = impl.data.load_tokens(run / "train.npy")
    val_tokens = impl.data.load_tokens(run / "val.npy")
    if len(train_tokens) < config.context_length + 1:
        raise ConfigError(f"context_length ({config.context_length}) is longer than the training split "
                          f"({len(train_tokens)} tokens)")

    model = build_model(impl, config, info["vocab_size"]).to(device)
    optimizer = impl.train.AdamW(impl.train.parameter_groups(model, config.weight_decay), lr=config.lr,
                                 betas=(config.beta1, config.beta2))
    generator = torch.Generator().manual_seed(config.seed)  # draws the batches: the position in the data
    checkpoint = run / CHECKPOINT
    start, elapsed_before = 0, 0.0
    if resume and checkpoint.exists():
        try:
            state = impl.train.load_checkpoint(checkpoint, model, optimizer, config=config.numerics(),
                                               generator=generator)
        except ValueError as error:
            raise ConfigError(f"cannot resume: {error}") from None
        start, elapsed_before = state["step"], state["extra"].get("elapsed", 0.0)
        say(f"resuming {run} at step {start} of {config.steps}")
    parameters = impl.model.count_parameters(model)
    flops = impl.model.flops_per_token(model.config, config.context_length)
    if start == 0:
        say(f"model: {parameters / 1e6:.2f}M parameters, {config.n_layers} layers, d_model {config.d_model}, "
            f"context {config.context_length}; {info['train_tokens']:,} training tokens; device {device}")

    metrics = Metrics(run / "metrics.jsonl", start)
    autocast = torch.bfloat16 if config.dtype == "bfloat16" else None
    tokens_per_step = config.batch_size * config.grad_accum * config.context_length
    bar = _progress(config, start)
    started = time.perf_counter()
    window_start, window_tokens = started, 0
    last_val = None
    try:
        for step in range(start, config.steps):
            lr = impl.train.lr_schedule(step, config.lr, config.warmup_steps, config.steps,
                                        config.lr * config.min_lr_ratio)
            micro = [impl.data.get_batch(train_tokens, config.batch_size, config.context_length, generator,
                                         device=device) for _ in range(config.grad_accum)]
            try:
                loss, norm = impl.train.train_step(model, optimizer, micro, config.grad_clip or None, lr, autocast)
            except FloatingPointError as error:
                raise FloatingPointError(f"step {step + 1}: {error}") from None
            done = step + 1
            window_tokens += tokens_per_step
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                speed = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                metrics.write(step=done, split="train", loss=loss, lr=lr, grad_norm=norm, tokens=done * tokens_per_step,
                              tokens_per_s=round(speed, 1), time=round(elapsed_before + now - started, 3))
                if bar is not None:
                    bar.set_postfix_str(f"loss {loss:.3f}  {speed:,.0f} tok/s  lr {lr:.2e}"
                                        + (f"  val {last_val['loss']:.3f}" if last_val else ""), refresh=False)
            if done % config.eval_every == 0 or done == config.steps:
                last_val = validate(impl, model, val_tokens, config, info, device)
                metrics.write(step=done, split="val", tokens=done * tokens_per_step, **last_val)
                if bar is None:
                    say(f"step {done}: train loss {loss:.4f}, val loss {last_val['loss']:.4f}, "
                        f"{last_val['bits_per_byte']:.3f} bits/byte")
            if done % config.checkpoint_every == 0 or done == config.steps:
                impl.train.save_checkpoint(checkpoint, model, optimizer, done, config=config.numerics(),
                                           generator=generator,
                                           extra={"elapsed": elapsed_before + time.perf_counter() - started})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
    train_seconds = elapsed_before + time.perf_counter() - started
    return finish(impl, config, run, model, info, device, train_seconds, parameters, flops, say)


def finish(impl, config: RunConfig, run: Path, model, info: dict, device, train_seconds: float, parameters: int,
           flops: int, say) -> dict:
    """After the last step: samples, multiple-choice accuracy, the plot, the HF export and summary.json."""
    tokenizer = impl.tokenizer.Tokenizer.load(run / "tokenizer.json")
    records = read_metrics(run)
    val = [r for r in records if r.get("split") == "val"]
    train_records = [r for r in records if r.get("split") == "train"]
    speeds = [r["tokens_per_s"] for r in train_records[len(train_records) // 5:]]  # skip the warm-up
    samples = write_samples(impl, config, run, model, tokenizer, device)
    accuracy = multiple_choice(impl, model, tokenizer)
    plot_losses(run)
    export_hf(impl, model, run)
    summary = {
        "run": str(run), "impl": config.impl, "parameters": parameters, "steps": config.steps,
        "tokens": config.steps * config.batch_size * config.grad_accum * config.context_length,
        "train_seconds": round(train_seconds, 1),
        "data_seconds": info.get("seconds"),
        "tokens_per_s": round(sorted(speeds)[len(speeds) // 2], 1) if speeds else None,
        "flops_per_token": flops,
        "final_train_loss": train_records[-1]["loss"] if train_records else None,
        "val_loss": val[-1]["loss"] if val else None,
        "val_perplexity": val[-1]["perplexity"] if val else None,
        "val_bits_per_byte": val[-1]["bits_per_byte"] if val else None,
        "multiple_choice": accuracy,
        "sample": samples[0] if samples else None,
    }
    write_text_atomic(run / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def write_samples(impl, config: RunConfig, run: Path, model, tokenizer, device) -> list[str]:
    """samples.txt: continuations of the opening words of a few validation documents, and one from scratch."""
    import torch

    import numpy as np

    val = impl.data.load_tokens(run / "val.npy")
    eot = tokenizer.special_tokens[EOT]
    starts = [0] + [int(i) + 1 for i in np.flatnonzero(np.asarray(val[:-1]) == eot)[:2]]
    prompts = [[eot]] + [[int(t) for t in val[s: s + 8]] for s in starts]
    generator = torch.Generator().manual_seed(config.seed)
    texts = []
    for prompt in prompts:
        ids = list(impl.generate.generate(model, prompt, config.sample_tokens, temperature=0.8, top_k=40,
                                          stop_tokens=[eot], generator=generator))
        shown = "" if prompt == [eot] else tokenizer.decode(prompt)
        texts.append(f"{shown}\u2192{tokenizer.decode(ids)}" if shown else tokenizer.decode(ids))
    sep = "\n" + "-" * 72 + "\n"
    write_text_atomic(run / "samples.txt", sep.join(texts) + "\n")
    return texts[1:] or texts


def default_tasks_path() -> Path:
    from importlib.resources import files

    return Path(str(files("llmkata") / "data" / "choices.jsonl"))


def multiple_choice(impl, model, tokenizer, path=None) -> dict | None:
    """Accuracy on a multiple-choice file (default: the shipped set), over the tasks whose choices fit the context.

    The shipped set, choices.jsonl, holds sentences of held-out documents of the default corpus (the validation
    side of the split): the context is a sentence's first half, the right choice its true ending, the three
    others the endings of other sentences of about the same length.
    """
    path = path or default_tasks_path()
    if not Path(path).exists():
        return None
    tasks = impl.evaluate.load_choice_tasks(path)
    limit = model.config.max_seq_len
    fitting = [t for t in tasks if max(len(tokenizer.encode(c)) for c in t["choices"]) < limit]
    if not fitting:
        return None
    result = impl.evaluate.multiple_choice_accuracy(model, tokenizer, fitting)
    result["chance"] = sum(1 / len(t["choices"]) for t in fitting) / len(fitting)
    result["tasks"] = str(Path(path).name)
    result["skipped"] = len(tasks) - len(fitting)  # a choice longer than the context
    return result


def export_hf(impl, model, run: Path) -> None:
    config = model.config
    if getattr(config, "norm", "rmsnorm") == "rmsnorm" and getattr(config, "mlp", "swiglu") == "swiglu":
        try:
            impl.model.save_hf(model, run / "hf")
        except NotImplementedError:
            pass


# ------------------------------------------------------------------------------------------- loading a finished run


def find_run(run: str | None) -> Path:
    """The run folder given, or the newest one under ./runs that has a checkpoint."""
    if run:
        path = Path(run).expanduser()
        if not (path / CHECKPOINT).exists():
            raise ConfigError(f"{path} is not a run folder with a checkpoint ({CHECKPOINT} is missing)")
        return path
    candidates = sorted((p for p in Path("runs").glob("*") if (p / CHECKPOINT).exists()),
                        key=lambda p: (p / CHECKPOINT).stat().st_mtime)
    if not candidates:
        raise ConfigError("no run found under ./runs: train one with `llmkata train`, or pass --run FOLDER")
    return candidates[-1]


def load_run(run: Path, impl_name: str | None = None, device=None):
    """(impl, config, model, tokenizer, info) of a finished or interrupted run, the model on `device`."""
    from llmkata.impl import load

    config = config_from_mapping(read_toml(run / "config.toml"), where=str(run / "config.toml"))
    if impl_name:
        config.impl = impl_name
    impl = load(config.impl)
    info = json.loads((run / "data.json").read_text())
    model = build_model(impl, config, info["vocab_size"])
    impl.train.load_checkpoint(run / CHECKPOINT, model)
    model = model.to(device or _device(config))
    tokenizer = impl.tokenizer.Tokenizer.load(run / "tokenizer.json")
    return impl, config, model, tokenizer, info


# ---------------------------------------------------------------------------------------------------- commands


def register(sub) -> None:
    """Add the train, sample and eval subcommands to the `llmkata` command line."""
    train_parser = sub.add_parser("train", help="train a small model end to end (default corpus, a few CPU minutes)")
    add_train_arguments(train_parser)
    train_parser.set_defaults(run=cmd_train)
    sample_parser = sub.add_parser("sample", help="continue a prompt with a trained run, streaming the text")
    add_sample_arguments(sample_parser)
    sample_parser.set_defaults(run=cmd_sample)
    eval_parser = sub.add_parser("eval", help="validation loss, bits per byte and multiple-choice accuracy of a run")
    add_eval_arguments(eval_parser)
    eval_parser.set_defaults(run=cmd_eval)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="a TOML file of fields (flags given here override it)")
    parser.add_argument("--out", default=None, help="the run folder (default: runs/<date-time>)")
    parser.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
    for name, spec in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        kind = _field_type(name)
        text = HELP.get(name, name.replace("_", " "))
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{text} (default: {spec.default})")
        elif kind is list:
            parser.add_argument(flag, dest=name, nargs="+", default=argparse.SUPPRESS, help=text)
        else:
            default = spec.default
            parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, metavar=name.upper(),
                                help=f"{text} (default: {default})")


def _quiet_threads() -> None:
    """Threads that sleep while they wait. OpenMP's default is to spin, which costs little on an idle machine but,
    on one shared with other processes every small op waits for a descheduled thread (benchmarks/results/
    attention.md: tiled attention fell from about 0.6x to 0.19x of SDPA that way). Read once, when torch loads."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_train(args) -> int:
    _quiet_threads()
    flags = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    try:
        if args.resume:
            run = Path(args.resume)
            if not (run / "config.toml").exists():
                raise ConfigError(f"--resume {run}: there is no run there (config.toml is missing)")
            if args.config:
                raise ConfigError("--resume takes its configuration from the run folder: drop --config")
            saved = config_from_mapping(read_toml(run / "config.toml"), where=str(run / "config.toml"))
            changed = [f"{k} (run: {getattr(saved, k)!r}, flag: {v!r})" for k, v in flags.items()
                       if k not in RESUMABLE and getattr(saved, k) != v]
            if changed:
                raise ConfigError(f"--resume {run}: the run was configured differently: {'; '.join(changed)}. "
                                  "A resumed run must compute what the original would have; start a new run instead")
            config = config_from_mapping({k: v for k, v in flags.items() if k in RESUMABLE}, base=saved)
        else:
            base = config_from_mapping(read_toml(args.config), where=args.config) if args.config else RunConfig()
            config = config_from_mapping(flags, base=base, where="the flags")
            run = Path(args.out) if args.out else Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            if (run / CHECKPOINT).exists():
                raise ConfigError(f"{run} already holds a run: --resume {run} continues it, or choose another --out")
    except ConfigError as error:
        print(f"llmkata train: {error}", file=sys.stderr)
        return 2
    say = (lambda message: print(message, file=sys.stderr, flush=True))
    say(f"llmkata train: run folder {run}, implementation {config.impl}")
    try:
        summary = train(config, run, resume=bool(args.resume), say=say)
    except ConfigError as error:
        print(f"llmkata train: {error}", file=sys.stderr)
        return 2
    except _not_yet() as error:
        print(f"llmkata train --impl {config.impl}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        checkpoint = run / CHECKPOINT
        last = "no checkpoint was written yet"
        if checkpoint.exists():
            last = f"the last good checkpoint is {checkpoint} ({_checkpoint_step(checkpoint)})"
        print(f"llmkata train: the loss stopped being a number at {error}. Training stopped; {last}. "
              "Try a lower --lr or a longer --warmup-steps in a new run.", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    say(f"done in {summary['train_seconds']:.0f} s of training: validation loss {summary['val_loss']:.3f}, "
        f"{summary['val_bits_per_byte']:.3f} bits/byte. Next: llmkata sample --run {run} --prompt \"...\"")
    return 0


def _checkpoint_step(path: Path) -> str:
    data = path.read_bytes()[:1 << 20]
    try:
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        return f"step {json.loads(header['__metadata__']['llmkata'])['step']}"
    except Exception:
        return "step unknown"


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", dest="run_folder", default=None, help="run folder (default: the newest under ./runs)")
    parser.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0: no top-k filter")
    parser.add_argument("--top-p", type=float, default=1.0, help="1: no top-p filter")
    parser.add_argument("--seed", type=int, default=None, help="seed of the sampler (default: random)")
    parser.add_argument("--impl", default=None, help="implementation (default: the run's)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every position at every step")


def cmd_sample(args) -> int:
    _quiet_threads()
    import torch

    try:
        run = find_run(args.run_folder)
        impl, config, model, tokenizer, _ = load_run(run, args.impl)
        eot = tokenizer.special_tokens[EOT]
        prompt = tokenizer.encode(args.prompt) if args.prompt else []
        if not prompt:
            prompt = [eot]  # an empty prompt starts a new document
        seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
        generator = torch.Generator().manual_seed(seed)
        tokens = impl.generate.generate(model, prompt, args.max_new_tokens, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, stop_tokens=[eot], generator=generator,
                                        use_cache=not args.no_cache)
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        produced, shown = [], ""
        for token in tokens:
            produced.append(token)
            text = tokenizer.decode(produced)
            if text.endswith("\ufffd"):
                continue  # a character cut between tokens: wait for its other bytes
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
        sys.stdout.write(tokenizer.decode(produced)[len(shown):] + "\n")
        sys.stdout.flush()
    except (ValueError, *_not_yet()) as error:
        print(f"llmkata sample: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"[{len(produced)} tokens, seed {seed}, run {run}]", file=sys.stderr)
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", dest="run_folder", default=None, help="run folder (default: the newest under ./runs)")
    parser.add_argument("--tasks", default=None, help="a multiple-choice JSONL file (default: the shipped example set)")
    parser.add_argument("--impl", default=None, help="implementation (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def cmd_eval(args) -> int:
    _quiet_threads()
    try:
        run = find_run(args.run_folder)
        impl, config, model, tokenizer, info = load_run(run, args.impl)
        device = next(model.parameters()).device
        val = validate(impl, model, impl.data.load_tokens(run / "val.npy"), dataclasses.replace(config, eval_tokens=0),
                       info, device)
        choice = multiple_choice(impl, model, tokenizer, args.tasks)
    except (ValueError, *_not_yet()) as error:
        print(f"llmkata eval: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    history = [r for r in read_metrics(run) if r.get("split") == "train"]
    result = {"run": str(run), "step": history[-1]["step"] if history else None, "validation": val,
              "multiple_choice": choice}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    rows = [("run", str(run)), ("steps trained", str(result["step"])),
            ("validation tokens", f"{val['targets']:,}"), ("validation loss", f"{val['loss']:.4f} nats/token"),
            ("perplexity", f"{val['perplexity']:.2f}"), ("bits per byte", f"{val['bits_per_byte']:.4f}")]
    if choice:
        skipped = f", {choice['skipped']} longer than the context left out" if choice["skipped"] else ""
        rows += [(f"multiple choice ({choice['tasks']}, {choice['n']} tasks{skipped})",
                  f"accuracy {choice['accuracy']:.3f}, per byte {choice['accuracy_norm']:.3f}, "
                  f"chance {choice['chance']:.3f}")]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name.ljust(width)}  {value}" for name, value in rows))
    return 0
