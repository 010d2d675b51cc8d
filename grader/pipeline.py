"""The pipeline behind `llmkata train`, `sample` and `eval`: one run, end to end, with any implementation.

    Run(folder, config).train()              # a new run;  .train(resume=True) continues one
    run = Run.open(folder);  run.model       # a finished (or interrupted) run, its model loaded

Every step is done by the implementation under test, reached through `llmkata.spec.impl.load`: the text chapter
loads and cleans the corpus, the tokenizer chapter learns a byte-level BPE on the training split, the data chapter
packs both splits into token files and draws the batches, the model chapter builds the transformer, the train
chapter steps it (AdamW, schedule, clipping, checkpoints), the evaluate chapter measures it, and the generate
chapter writes the samples. With `kernels` on (the default for the reference) the model and the tokenizer trainer
take chapter 14's fast paths. A run folder holds everything:

    config.toml              the configuration, complete, kernels decided (reload it with --config)
    data.json                documents, tokens and bytes of each split, and the fields the data was made with
    tokenizer.json           the tokenizer;  train.npy, val.npy: the packed token streams
    checkpoint.safetensors   weights + optimizer + step + random states, rewritten atomically
    metrics.jsonl            one JSON object per log line: train loss, lr, grad norm, tokens/s; val loss, bits/byte
    loss.png                 the loss curves;  samples.txt: text the model wrote at the end
    summary.json             the final numbers: wall time, validation loss and bits/byte, accuracy, throughput
    sources.json             with --fallback reference: which chapter, and which names, came from the reference
    hf/                      the model in the Hugging Face Llama format (Llama-shaped configurations only)

With `fallback` set to reference, the run takes the implementation's names where they are written and the
reference's for the rest (llmkata.fallback), prints a table of which came from where and records it in
sources.json; resuming, sampling and evaluating that run take the same names from the reference again.

Resuming loads the checkpoint and continues bit-exactly: the same weights, after the same number of steps, as a
run that never stopped. Ctrl-C stops a run after the step in progress and saves a checkpoint there (a second
Ctrl-C stops it at once, keeping the last checkpoint written). A run that fails before its first step leaves
nothing behind that it made; prepared data made with other fields (data.json says which) is made again.

Data: a folder given as data is read for its .txt, .md and .jsonl files, hidden ones left out. The split is by
document, so a document longer than CHUNK_CHARS characters (a book in one file) is cut at paragraph breaks into
chunks of about that size first; the default corpus is split as it is, by topic, which the shipped
multiple-choice set relies on (its tasks come from the validation side).

Under torchrun or accelerate launch the run is data parallel (llmkata.distributed): rank 0 alone writes the folder.

Left out: tensor and pipeline parallel training, and data that does not fit in memory before it is packed (the
packed token files are memory-mapped; the documents of the split are not).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import time
import warnings
from itertools import chain, islice
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from llmkata import fallback
from llmkata.atomic import write_text_atomic
from llmkata.distributed import NoMetrics, TrainingWorld, leave_world
from llmkata.run_config import EOT, ConfigError, RunConfig, config_from_mapping, read_toml, write_toml
from llmkata.run_metrics import Metrics, plot_losses, read_metrics
from llmkata.spec.impl import Implementation, Missing, load

CHECKPOINT = "checkpoint.safetensors"
SOURCES = "sources.json"  # the table of a run with --fallback reference
# What an implementation raises for a part it has not written yet: a stub, or a name that is missing.
NOT_YET = (NotImplementedError, Missing)
# The files a run writes in its folder (hf/ is a folder): what a failed start removes again, if it made them.
RUN_FILES = ("config.toml", "data.json", "tokenizer.json", "train.npy", "val.npy", CHECKPOINT, "metrics.jsonl",
             "loss.png", "samples.txt", "summary.json", "hf", SOURCES)
DATA_SUFFIXES = (".txt", ".md", ".jsonl")  # what a data folder is read for
CHUNK_CHARS = 4000  # a longer document of --data is cut into chunks of about this many characters for the split


class _CtrlC:
    """Ctrl-C while training, from the moment it is made until restore(): the first sets `pressed`, and the loop
    stops after the step in progress, checkpointed; a second raises KeyboardInterrupt at once."""

    def __init__(self):
        self.pressed = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._press)
        except ValueError:  # not the main thread: Ctrl-C keeps its usual meaning
            self.previous = False

    def _press(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def restore(self) -> None:
        if self.previous is not False:
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after step `step`, and a checkpoint was saved there."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """`name`, or for "auto" the first of cuda, mps and cpu that this machine has. A device this machine lacks is
    a ConfigError, before any work is done."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name}: this machine has no CUDA device, or this torch was built without "
                              "CUDA (torch.cuda.is_available() is false); use device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device {name}: this machine has no Apple MPS device; use device cpu or auto")
    return device


def build_model(impl: Implementation, config: RunConfig, vocab_size: int):
    """The implementation's Transformer for `config`, initialised from config.seed (on the CPU)."""
    torch.manual_seed(config.seed)
    return impl.model.Transformer(config.model_config(impl, vocab_size))


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint was saved at, read from its safetensors metadata; None if the file does not say."""
    try:
        with safe_open(str(path), "pt") as file:
            return int(json.loads(file.metadata()["llmkata"])["step"])
    except Exception:  # a torn file, or an implementation whose checkpoints keep their step elsewhere
        return None


def find_run(folder: str | None) -> Path:
    """The run folder given, or the newest one under ./runs that has a checkpoint."""
    if folder:
        path = Path(folder).expanduser()
        if not (path / CHECKPOINT).exists():
            raise ConfigError(f"{path} is not a run folder with a checkpoint ({CHECKPOINT} is missing)")
        return path
    candidates = sorted((p for p in Path("runs").glob("*") if (p / CHECKPOINT).exists()),
                        key=lambda p: (p / CHECKPOINT).stat().st_mtime)
    if not candidates:
        raise ConfigError("no run found under ./runs: train one with `llmkata train`, or pass --run FOLDER")
    return candidates[-1]


def default_tasks_path() -> Path:
    from importlib.resources import files

    return Path(str(files("llmkata") / "data" / "choices.jsonl"))


def data_files(entries: list[Path]) -> list[Path]:
    """The files to read for `entries`: a file as it is; a folder's .txt, .md and .jsonl files, all the way down,
    in sorted order, hidden files and folders left out. A folder without any is a ConfigError."""
    files = []
    for entry in entries:
        if not entry.is_dir():
            files.append(entry)
            continue
        found = sorted(path for path in entry.rglob("*") if path.suffix.lower() in DATA_SUFFIXES and path.is_file()
                       and not any(part.startswith(".") for part in path.relative_to(entry).parts))
        if not found:
            raise ConfigError(f"data: the folder {entry} holds no .txt, .md or .jsonl file")
        files += found
    return files


def chunk_document(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """`text` cut at paragraph breaks into chunks of at least `size` characters; joined, they give `text` back.

    Paragraphs are taken in order until a chunk holds `size` characters; a last piece under size // 2 joins the
    chunk before it. A paragraph longer than `size` is cut at line ends, a line longer than `size` every `size`
    characters. A text of at most `size` characters stays whole.
    Example: chunk_document("one\\n\\ntwo\\n\\nthree\\n\\nfour", size=8) -> ["one\\n\\ntwo\\n\\n", "three\\n\\nfour"]
    """
    if len(text) <= size:
        return [text]
    pieces = []
    for paragraph in re.split(r"(?<=\n\n)", text):
        for line in re.split(r"(?<=\n)", paragraph) if len(paragraph) > size else [paragraph]:
            pieces += [line[i: i + size] for i in range(0, len(line), size)]
    chunks, current = [], ""
    for piece in pieces:
        current += piece
        if len(current) >= size:
            chunks.append(current)
            current = ""
    if current and chunks and len(current) < size // 2:
        chunks[-1] += current
    elif current:
        chunks.append(current)
    return chunks


def _differences(recorded: dict | None, wanted: dict) -> str:
    """Example: ({"vocab_size": 1024, "seed": 1}, {"vocab_size": 512, "seed": 1}) -> 'vocab_size: 1024 then, 512 now'"""
    if recorded is None:
        return "they were not recorded"
    return ", ".join(f"{name}: {recorded.get(name)!r} then, {value!r} now" for name, value in wanted.items()
                     if recorded.get(name) != value)


def _looks_like_a_path(name: str) -> bool:
    """'notes/a.txt', './x', 'a.jsonl' are paths; 'roneneldan/TinyStories' or 'wikitext' are dataset names."""
    return name.startswith((".", "/", "~")) or Path(name).suffix in (".txt", ".md", ".jsonl", ".json", ".text")


def read_sources(folder: Path) -> dict | None:
    """The recorded table of a run with --fallback reference (sources.json); None if it has none."""
    try:
        recorded = json.loads((Path(folder) / SOURCES).read_text())
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def train(config: RunConfig, folder: Path, resume: bool = False, say=print) -> dict:
    """Run (or resume) training in `folder`; return the summary. FloatingPointError on a NaN loss."""
    summary = Run(folder, config, say, recorded=read_sources(folder) if resume else None).train(resume)
    leave_world()  # in a world of processes: all of them end it together, once rank 0 has written the run
    return summary


class Run:
    """One run folder and what a run works with: the implementation, the configuration (kernels decided for that
    implementation), the device, and, once made or loaded, the data's numbers, the tokenizer and the model.

    With config.fallback set, `impl` is the mix of the implementation's written names and the reference's (`mix`
    says which came from where); `recorded`, the sources.json of the run, takes the same names from the reference.
    """

    def __init__(self, folder: Path, config: RunConfig, say=print, device: torch.device | None = None,
                 recorded: dict | None = None):
        self.folder = Path(folder)
        self.impl = load(config.impl)
        self.mix: fallback.Mix | None = None
        self.changed: list[str] = []  # names whose side differs from `recorded` (a stub now, that was written)
        self.as_recorded = recorded is not None  # the mix follows the run's sources.json
        if config.fallback:
            try:
                self.mix = fallback.compose(self.impl, load(config.fallback), recorded)
            except fallback.FallbackError as error:
                raise ConfigError(f"fallback: {error}") from None
            self.impl = self.mix.impl
            self.changed = self.mix.changed_from(recorded) if recorded else []
        self.config = config.resolved(self.impl)
        self.say = say
        self.device = device or pick_device(self.config.device)
        self.info: dict | None = None  # data.json
        self.tokenizer = None
        self.model = None
        self.step: int | None = None  # the step of the checkpoint a finished or interrupted run was opened at

    @classmethod
    def open(cls, folder: Path, impl: str | None = None, device: torch.device | None = None) -> Run:
        """A finished or interrupted run with its tokenizer, and its model loaded from the checkpoint onto `device`
        (default: the run's). `impl` replaces the run's implementation."""
        folder = Path(folder)
        values = read_toml(folder / "config.toml")
        recorded = read_sources(folder)  # the mix the run was trained with, when it is the run's implementation
        if impl and impl != values.get("impl"):
            recorded = None
            # The weights are the same on either path; whether to take the fast ones is the new implementation's.
            values = {**values, "impl": impl, "kernels": "auto"}
        config = config_from_mapping(values, where=str(folder / "config.toml"))
        if device is None:
            try:
                device = pick_device(config.device)
            except ConfigError:  # trained on a device this machine lacks: the weights load anywhere
                device = pick_device("auto")
        run = cls(folder, config, say=lambda message: None, device=device, recorded=recorded)
        run.info = json.loads((folder / "data.json").read_text())
        run.model = build_model(run.impl, run.config, run.info["vocab_size"])
        state = run.impl.train.load_checkpoint(folder / CHECKPOINT, run.model)
        step = state.get("step") if isinstance(state, dict) else None
        run.step = step if isinstance(step, int) else checkpoint_step(folder / CHECKPOINT)
        run.model = run.model.to(run.device)
        run.tokenizer = run.impl.tokenizer.Tokenizer.load(folder / "tokenizer.json")
        return run

    def tokens(self, split: str):
        """The packed token stream of a split ("train" or "val"), as the data chapter loads it."""
        return self.impl.data.load_tokens(self.folder / f"{split}.npy")

    # ------------------------------------------------------------------------------------------------ data

    def documents(self):
        """The corpus as documents: the default one, files, or a Hugging Face dataset; cleaned, exact duplicates
        out."""
        text, config = self.impl.text, self.config
        if config.corpus == "tasks":
            from llmkata.tasks import corpus_documents

            docs = iter(corpus_documents())
        elif not config.data:
            docs = text.default_corpus()
        else:
            paths = [Path(p).expanduser() for p in config.data]
            if all(p.exists() for p in paths):
                docs = chain.from_iterable(self._read(path) for path in data_files(paths))
            elif len(config.data) == 1 and not _looks_like_a_path(config.data[0]):
                docs = self._hf_documents()
            else:
                missing = [str(p) for p in paths if not p.exists()]
                raise ConfigError(f"data: no such file or folder: {', '.join(missing)}")
        if config.max_documents:
            docs = islice(docs, config.max_documents)
        return text.exact_dedup(d for d in map(text.clean, docs) if d.strip())

    def split(self) -> tuple[list[str], list[str]]:
        """(training, validation) documents, by the data chapter's hash split; the documents of --data are cut
        into chunks first, so that a single long file gives both sides some text."""
        impl, config = self.impl, self.config
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnicodeWarning)
            docs, cut = self.documents(), []
            if config.data:
                docs = (chunk for doc in docs for chunk in self._chunks(doc, cut))
            train_docs, val_docs = impl.data.train_val_split(docs, config.val_fraction, "")
        for warning in caught:  # errors="replace": one line per file that had bytes replaced
            if issubclass(warning.category, UnicodeWarning):
                self.say(f"data: {warning.message}")
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if cut:
            self.say(f"data: cut {len(cut)} document(s) longer than {CHUNK_CHARS:,} characters into {sum(cut):,} "
                     f"chunks at paragraph breaks, so that the split by document gives both sides some text")
        n = len(train_docs) + len(val_docs)
        if not train_docs or not val_docs:
            raise ConfigError(f"the corpus has {len(train_docs)} training and {len(val_docs)} validation documents "
                              f"(or chunks); both need at least one: give more data"
                              + (", or another val_fraction" if n >= 2 else ""))
        return train_docs, val_docs

    @staticmethod
    def _chunks(doc: str, cut: list[int]) -> list[str]:
        chunks = chunk_document(doc)
        if len(chunks) > 1:
            cut.append(len(chunks))
        return chunks

    def _read(self, path: Path):
        """The documents of one file, by the implementation's loader; a file it cannot read is a ConfigError of one
        line that names it (and the line of a JSONL file, as the loader says)."""
        text, config = self.impl.text, self.config
        name = glob.escape(str(path))  # loaders take glob patterns: a '[' in a file name is not one
        if path.suffix.lower() == ".jsonl":
            docs = text.load_jsonl([name], field=config.data_field, errors=config.errors)
        else:
            docs = text.load_text_files([name], errors=config.errors)
        try:
            yield from docs
        except NOT_YET:
            raise
        except (ValueError, OSError) as error:  # UnicodeDecodeError is a ValueError
            message = (str(error).splitlines() or [type(error).__name__])[0]
            if str(path) not in message:
                message = f"{path}: {message}"
            if config.errors == "strict" and (isinstance(error, UnicodeError) or "utf-8" in message.lower()):
                message += ". `--errors replace` reads each invalid byte sequence as U+FFFD"
            raise ConfigError(f"data: {message}") from None

    def _hf_documents(self):
        """The rows of a Hugging Face dataset, streamed; a dataset that cannot be loaded is a ConfigError."""
        config = self.config
        try:
            yield from self.impl.text.load_hf_dataset(config.data[0], field=config.data_field,
                                                      split=config.data_split, streaming=True)
        except NOT_YET:
            raise
        except Exception as error:  # datasets raises many kinds: not found, no network, no such split or field
            raise ConfigError(f"data: cannot read the Hugging Face dataset {config.data[0]!r} "
                              f"(split {config.data_split!r}, field {config.data_field!r}): {error}") from None

    def train_tokenizer(self, documents: list[str]):
        """A byte-level BPE of config.vocab_size tokens with EOT (and the chat tokens, with chat_tokens), by
        chapter 14's trainer when kernels are on."""
        special = self.config.special_tokens()
        if self.config.kernels == "on":
            return self.impl.kernels.train_bpe(documents, self.config.vocab_size, special_tokens=special,
                                               num_workers=self.config.threads or None)
        return self.impl.tokenizer.train_bpe(documents, self.config.vocab_size, special_tokens=special)

    def prepare_data(self, resume: bool = False) -> dict:
        """Split, train the tokenizer, pack both splits; skipped when the run folder already has them, made with
        the same fields (data.json records them; a run made before it did is taken as it is when resumed)."""
        info_path = self.folder / "data.json"
        made_with = {**self.config.data_fields(), "chunk_chars": CHUNK_CHARS}
        if info_path.exists() and all((self.folder / name).exists() for name in ("tokenizer.json", "train.npy",
                                                                                   "val.npy")):
            info = json.loads(info_path.read_text())
            recorded = info.get("made_with")
            if recorded == made_with or (resume and recorded is None):
                self.info = info
                return info
            if resume:
                raise ConfigError(f"cannot resume: the prepared data in {self.folder} was made with other fields "
                                  f"({_differences(recorded, made_with)})")
            self.say(f"data: the prepared data in {self.folder} was made with other fields "
                     f"({_differences(recorded, made_with)}); preparing it again")
        started = time.perf_counter()
        impl, config = self.impl, self.config
        train_docs, val_docs = self.split()
        self.say(f"corpus: {len(train_docs)} training and {len(val_docs)} validation documents; training a tokenizer "
                 f"of {config.vocab_size} tokens")
        tokenizer = self.train_tokenizer(train_docs)
        tokenizer.save(self.folder / "tokenizer.json")
        eot = tokenizer.special_tokens[EOT]
        vocab = len(tokenizer.vocab)
        train = impl.data.tokenize_and_pack(train_docs, tokenizer, eot, self.folder / "train.npy", vocab)
        val = impl.data.tokenize_and_pack(val_docs, tokenizer, eot, self.folder / "val.npy", vocab)
        info = {"train_documents": len(train_docs), "val_documents": len(val_docs), "vocab_size": vocab,
                "train_tokens": len(train), "val_tokens": len(val),
                "train_bytes": sum(len(d.encode("utf-8")) for d in train_docs),
                "val_bytes": sum(len(d.encode("utf-8")) for d in val_docs), "eot_id": eot,
                "seconds": round(time.perf_counter() - started, 2), "made_with": made_with}
        if info["val_tokens"] < 2:
            raise ConfigError("the validation split has fewer than 2 tokens: nothing to evaluate")
        write_text_atomic(info_path, json.dumps(info, indent=1) + "\n")
        self.info = info
        return info

    # ------------------------------------------------------------------------------------------------ training

    def validate(self, val_tokens, limit: int = 0) -> dict:
        """Validation loss, perplexity and bits per byte over the first `limit` targets (0: all of them)."""
        impl, config = self.impl, self.config
        tokens = val_tokens[: limit + 1] if limit else val_tokens
        batches = impl.data.sequential_batches(tokens, config.batch_size, config.context_length, device=self.device)
        loss, count = impl.evaluate.evaluate_loss(self.model, batches)
        # The bytes the counted targets spell: all of the split's bytes when the whole split is evaluated,
        # else the same share of them (an estimate: bytes per token vary along the text).
        n_bytes = self.info["val_bytes"] * count / max(1, self.info["val_tokens"] - 1)
        return {"loss": loss, "perplexity": impl.evaluate.perplexity(loss),
                "bits_per_byte": impl.evaluate.bits_per_byte(loss, count, n_bytes), "targets": count}

    def train(self, resume: bool = False) -> dict:
        """Run (or resume) training; return the summary. FloatingPointError on a NaN loss; Interrupted (a
        KeyboardInterrupt) after the checkpoint that Ctrl-C asked for.

        A new run that fails before its first step (bad data, a stub, Ctrl-C) removes what it made: the run
        folder if it made it, else the run files it added to the folder.
        """
        impl, config, device = self.impl, self.config, self.device
        # Under torchrun or accelerate launch: this process's rank of the world (llmkata.distributed).
        world = TrainingWorld.start(config.parallel, device, config.batch_size, resume)
        device = self.device = world.device(device)
        if not world.main:
            self.say = lambda message: None  # rank 0 alone speaks, and writes the run folder
        if config.threads:
            torch.set_num_threads(config.threads)
        if self.mix is not None:
            if resume and self.changed:
                raise ConfigError(f"cannot resume: these were yours when the run began and are not written now, so "
                                  f"the run would go on with other code: {', '.join(self.changed)}")
            self.say(self.mix.table())
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder} is a file: the run folder must be a folder")
        made, folder = [], self.folder  # the folders this run makes, the run folder first
        while not folder.exists() and folder != folder.parent:
            made.append(folder)
            folder = folder.parent
        before = None if made else set(os.listdir(self.folder))  # what was in a folder that was there
        try:
            if world.main:
                self.folder.mkdir(parents=True, exist_ok=True)
                info = self.prepare_data(resume)
            world.barrier()
            if not world.main:
                info = self.prepare_data(resume=True)  # what rank 0 prepared
            train_tokens, val_tokens = self.tokens("train"), self.tokens("val")
            if len(train_tokens) < config.context_length + 1:
                raise ConfigError(f"context_length ({config.context_length}) is longer than the training split "
                                  f"({len(train_tokens)} tokens)")
            self.model = model = build_model(impl, config, info["vocab_size"]).to(device)
            training = world.wrap(impl, model)  # DataParallel(model), or model with its blocks sharded (fsdp)
            optimizer = impl.train.AdamW(impl.train.parameter_groups(model, config.weight_decay), lr=config.lr,
                                         betas=(config.beta1, config.beta2))
            generator = torch.Generator().manual_seed(config.seed)  # draws the batches: the position in the data
            start, elapsed_before = self._resume(model, optimizer, generator) if resume else (0, 0.0)
            if world.main:
                write_toml(config, self.folder / "config.toml")
            if self.mix is not None and world.main:
                write_text_atomic(self.folder / SOURCES, json.dumps(self.mix.record(), indent=1) + "\n")
        except BaseException:
            if not resume and world.main:
                self._undo_start(made, before)
            raise
        checkpoint = self.folder / CHECKPOINT
        parameters = impl.model.count_parameters(model)
        flops = impl.model.flops_per_token(model.config, config.context_length)
        if start == 0:
            self.say(f"model: {parameters / 1e6:.2f}M parameters, {config.n_layers} layers, d_model {config.d_model}, "
                     f"context {config.context_length}, kernels {config.kernels}; {info['train_tokens']:,} training "
                     f"tokens; device {device}")

        metrics = Metrics(self.folder / "metrics.jsonl", start) if world.main else NoMetrics()
        autocast = torch.bfloat16 if config.dtype == "bfloat16" else None
        tokens_per_step = config.batch_size * config.grad_accum * config.context_length
        bar = self._progress_bar(start) if world.main else None
        started = time.perf_counter()
        window_start, window_tokens = started, 0
        last_val, saved = None, start

        def save(done: int) -> None:
            whole, whole_optimizer = world.whole(lambda: build_model(impl, config, info["vocab_size"]), impl, model,
                                                 optimizer, config.weight_decay)  # fsdp: gathered on rank 0
            if not world.main:
                return
            impl.train.save_checkpoint(checkpoint, whole, whole_optimizer, done, config=config.numerics(),
                                       generator=generator,
                                       extra={"elapsed": elapsed_before + time.perf_counter() - started})

        ctrl_c = _CtrlC()
        try:
            for step in range(start, config.steps):
                lr = impl.train.lr_schedule(step, config.lr, config.warmup_steps, config.steps,
                                            config.lr * config.min_lr_ratio)
                micro = [world.rows(impl.data.get_batch(train_tokens, config.batch_size, config.context_length,
                                                        generator, device=device)) for _ in range(config.grad_accum)]
                try:
                    loss, norm = impl.train.train_step(training, optimizer, micro, config.grad_clip or None, lr,
                                                       autocast)
                except FloatingPointError as error:
                    raise FloatingPointError(f"step {step + 1}: {error}") from None
                loss = world.mean(loss)  # this rank's rows -> the whole batch
                done = step + 1
                window_tokens += tokens_per_step
                if done % config.log_every == 0 or done == config.steps:
                    now = time.perf_counter()
                    speed = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    metrics.write(step=done, split="train", loss=loss, lr=lr, grad_norm=norm,
                                  tokens=done * tokens_per_step, tokens_per_s=round(speed, 1),
                                  time=round(elapsed_before + now - started, 3))
                    if bar is not None:
                        bar.set_postfix_str(f"loss {loss:.3f}  {speed:,.0f} tok/s  lr {lr:.2e}"
                                            + (f"  val {last_val['loss']:.3f}" if last_val else ""), refresh=False)
                if done % config.eval_every == 0 or done == config.steps:
                    last_val = self.validate(val_tokens, config.eval_tokens)
                    metrics.write(step=done, split="val", tokens=done * tokens_per_step, **last_val)
                    if bar is None:
                        self.say(f"step {done}: train loss {loss:.4f}, val loss {last_val['loss']:.4f}, "
                                 f"{last_val['bits_per_byte']:.3f} bits/byte")
                if done % config.checkpoint_every == 0 or done == config.steps:
                    save(done)
                    saved = done
                if bar is not None:
                    bar.update(1)
                if ctrl_c.pressed:
                    if saved != done:
                        save(done)
                    raise Interrupted(done)
        finally:
            ctrl_c.restore()
            if bar is not None:
                bar.close()
            metrics.close()
        train_seconds = elapsed_before + time.perf_counter() - started
        self.model = world.whole(lambda: build_model(impl, config, info["vocab_size"]), impl, model, optimizer,
                                 config.weight_decay)[0]
        if not world.main:
            return {}  # rank 0 reports
        return self.finish(train_seconds, parameters, flops)

    def _resume(self, model, optimizer, generator) -> tuple[int, float]:
        """Load the run's checkpoint, if it has one, into the model, optimizer and batch generator; return its step
        and the training seconds before it. A checkpoint of another configuration is a ConfigError; one of fewer
        steps is extended (the configuration's steps grew)."""
        checkpoint, config = self.folder / CHECKPOINT, self.config
        if not checkpoint.exists():
            return 0, 0.0
        try:
            # The configuration is compared here rather than by load_checkpoint, because `steps` may grow.
            state = self.impl.train.load_checkpoint(checkpoint, model, optimizer, generator=generator)
        except ValueError as error:
            raise ConfigError(f"cannot resume: {error}") from None
        saved = state.get("config")
        differing = config.differences_from_checkpoint(saved) if isinstance(saved, dict) else []
        if differing:
            raise ConfigError(f"cannot resume: {checkpoint} was written with a different configuration: "
                              f"{'; '.join(differing)}")
        start = state["step"]
        if isinstance(saved, dict) and saved.get("steps", config.steps) < config.steps:
            self.say(f"extending {self.folder} from {saved['steps']} to {config.steps} steps, at step {start}: the "
                     f"learning-rate schedule is now the one of a {config.steps}-step run")
        else:
            self.say(f"resuming {self.folder} at step {start} of {config.steps}")
        return start, state.get("extra", {}).get("elapsed", 0.0)

    def _undo_start(self, made: list[Path], before: set[str] | None) -> None:
        """After a failed start: remove the folders in `made` (the run folder first; a folder above it only if
        it is empty now), or, in a run folder that was there, the run files that were not (`before`)."""
        if made:
            shutil.rmtree(made[0], ignore_errors=True)
            for folder in made[1:]:
                try:
                    folder.rmdir()
                except OSError:  # something else is in it now
                    break
            return
        for name in RUN_FILES:
            path = self.folder / name
            if name not in before and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif name not in before:
                path.unlink(missing_ok=True)

    def _progress_bar(self, start: int):
        if not self.config.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.steps, initial=start, unit="step", dynamic_ncols=True, desc="train")

    # ------------------------------------------------------------------------------------------------ after training

    def finish(self, train_seconds: float, parameters: int, flops: int) -> dict:
        """After the last step: samples, multiple-choice accuracy, the plot, the HF export and summary.json."""
        config, info = self.config, self.info
        self.tokenizer = self.impl.tokenizer.Tokenizer.load(self.folder / "tokenizer.json")
        records = read_metrics(self.folder)
        val = [r for r in records if r.get("split") == "val"]
        train_records = [r for r in records if r.get("split") == "train"]
        speeds = [r["tokens_per_s"] for r in train_records[len(train_records) // 5:]]  # skip the warm-up
        samples = self.write_samples()
        accuracy = self.multiple_choice() if config.corpus == "text" else None  # the shipped set is English
        try:
            plot_losses(self.folder)
        except ImportError:
            self.say("loss.png was not written: it needs matplotlib (pip install matplotlib)")
        self.export_hf()
        summary = {
            "run": str(self.folder), "impl": config.impl, "kernels": config.kernels, "parameters": parameters,
            "steps": config.steps,
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
        if self.mix is not None:  # each chapter's side; sources.json names every name
            summary["sources"] = self.mix.chapters()
        write_text_atomic(self.folder / "summary.json", json.dumps(summary, indent=1) + "\n")
        return summary

    def write_samples(self) -> list[str]:
        """samples.txt: continuations of the opening words of a few validation documents, and one from scratch."""
        tokenizer = self.tokenizer
        val = self.tokens("val")
        eot = tokenizer.special_tokens[EOT]
        starts = [0] + [int(i) + 1 for i in np.flatnonzero(np.asarray(val[:-1]) == eot)[:2]]
        prompts = [[eot]] + [[int(t) for t in val[s: s + 8]] for s in starts]
        generator = torch.Generator().manual_seed(self.config.seed)
        texts = []
        for prompt in prompts:
            ids = list(self.impl.generate.generate(self.model, prompt, self.config.sample_tokens, temperature=0.8,
                                                   top_k=40, stop_tokens=[eot], generator=generator))
            shown = "" if prompt == [eot] else tokenizer.decode(prompt)
            texts.append(f"{shown}\u2192{tokenizer.decode(ids)}" if shown else tokenizer.decode(ids))
        sep = "\n" + "-" * 72 + "\n"
        write_text_atomic(self.folder / "samples.txt", sep.join(texts) + "\n")
        return texts[1:] or texts

    def multiple_choice(self, path=None) -> dict | None:
        """Accuracy on a multiple-choice file (default: the shipped set), over the tasks whose choices fit the
        context.

        The shipped set, choices.jsonl, holds sentences of held-out documents of the default corpus (the validation
        side of the split): the context is a sentence's first half, the right choice its true ending, the three
        others the endings of other sentences of about the same length.
        """
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"no multiple-choice file {path}")
        path = path or default_tasks_path()
        if not Path(path).exists():  # a copy of llmkata without its data files
            return None
        evaluate = self.impl.evaluate
        tasks = evaluate.load_choice_tasks(path)
        limit = self.model.config.max_seq_len
        fitting = [t for t in tasks if max(len(self.tokenizer.encode(c)) for c in t["choices"]) < limit]
        if not fitting:
            return None
        result = evaluate.multiple_choice_accuracy(self.model, self.tokenizer, fitting)
        result["chance"] = sum(1 / len(t["choices"]) for t in fitting) / len(fitting)
        result["tasks"] = str(Path(path).name)
        result["skipped"] = len(tasks) - len(fitting)  # a choice longer than the context
        return result

    def export_hf(self) -> None:
        """hf/: the model in the Hugging Face Llama format, when its configuration is Llama-shaped."""
        config = self.model.config
        if getattr(config, "norm", "rmsnorm") == "rmsnorm" and getattr(config, "mlp", "swiglu") == "swiglu":
            try:
                self.impl.model.save_hf(self.model, self.folder / "hf")
            except NotImplementedError:
                pass
