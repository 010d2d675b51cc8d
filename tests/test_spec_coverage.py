"""The spec exercises the whole contract: every parameter gets a value other than its default from some property,
every boolean flag is tried both ways, and every function that accepts half precision is called in bfloat16.

One run of `pytest spec` against the reference, with the recorder of spec/coverage.py on, answers both; the
tests below it check the recorder itself: a recording implementation behaves as the one it records.
"""

import copy
import dataclasses
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llmkata.spec

from llmkata.spec import test_contract
from llmkata.spec.contract import CHAPTERS
from llmkata.spec.coverage import RECORD_VAR, Recorder, RecordingImplementation, missing_dtype, parameter_gaps
from llmkata.spec.impl import load

SPEC_DIR = Path(llmkata.spec.__path__[0])
HERE = Path(__file__).resolve().parent

# The only parameters the spec may leave at their default, each with its reason. Keys are written as the test
# prints them: `module.function(param)`, `module.Class(param)` for a constructor, `module.Class.method(param)`,
# and `module.name(flag=True)` for one way of a boolean.
EXEMPT = {
    "attention.KVCache(device)": "reached through model.make_cache on the meta device "
                                 "(test_make_cache_is_on_the_models_device), which builds the caches itself",
}

# The numeric callables that accept half precision: the spec calls each with bfloat16 at least once (and compares
# it with float64 under the bfloat16 tolerance of spec/tolerances.py, which this test cannot see).
HALF_PRECISION = (
    "layers.softmax", "layers.log_softmax", "layers.gelu", "layers.silu",
    "layers.Linear.forward", "layers.LayerNorm.forward", "layers.RMSNorm.forward", "layers.SwiGLU.forward",
    "rope.rotate", "rope.apply_rope", "rope.RotaryEmbedding.forward",
    "attention.attention_weights", "attention.scaled_dot_product_attention", "attention.CausalSelfAttention.forward",
    "train.cross_entropy", "train.clip_grad_norm",
    "align.token_logprobs", "align.sequence_logprob", "align.masked_mean", "align.bradley_terry_loss",
    "align.kl_penalty", "align.ppo_rewards", "align.gae", "align.ppo_policy_loss", "align.ppo_value_loss",
    "align.entropy", "align.dpo_loss", "align.grpo_advantages", "align.grpo_loss",
    "finetune.sft_loss", "finetune.LoRALinear.forward",
    "kernels.RMSNormFunction.apply", "kernels.SwiGLUFunction.apply", "kernels.RotateFunction.apply",
    "kernels.CrossEntropyFunction.apply", "kernels.cross_entropy", "kernels.AttentionFunction.apply",
    "kernels.attention", "kernels.TiledAttentionFunction.apply", "kernels.tiled_attention",
)

# ------------------------------------------------------------------------------------------------ the spec run


@pytest.fixture(scope="module")
def spec_record(tmp_path_factory) -> dict:
    """The record of one `pytest spec` run against the reference: CI settings (derandomized), no -x."""
    path = tmp_path_factory.mktemp("coverage") / "record.json"
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMKATA_IMPL", "LLMKATA_HYPOTHESIS_PROFILE", "PYTEST_ADDOPTS")}
    env.update({"CI": "true", RECORD_VAR: str(path)})
    run = subprocess.run([sys.executable, "-m", "pytest", str(SPEC_DIR), "--impl", "reference", "-q",
                          "-p", "no:randomly"], cwd=SPEC_DIR.parent, env=env, capture_output=True, text=True,
                         timeout=1800, check=False)
    output = (run.stdout + run.stderr).strip()
    assert run.returncode in (0, 1) and path.exists(), (
        f"`pytest spec` with {RECORD_VAR} set must run and write its record (exit {run.returncode}):\n"
        f"{output[-4000:]}")
    record = json.loads(path.read_text(encoding="utf-8"))
    lines = output.splitlines()
    record["spec_run"] = lines[-1] if lines else "no output"
    return record


def run_note(record: dict) -> str:
    """A word on the spec run when some of its tests failed: a failed test may have stopped before its calls."""
    summary = record["spec_run"]
    return f"\n(the spec run ended: {summary} — a failing test may stop before its calls)" if "failed" in summary else ""


def test_every_contract_parameter_is_passed_a_non_default_value(spec_record):
    gaps = [gap for gap in parameter_gaps(spec_record) if gap not in EXEMPT]
    assert not gaps, (
        f"{len(gaps)} contract parameters never get a value other than their default from any spec property "
        "(flags: never that way): write a property that passes each, or add it to EXEMPT with the reason:\n  "
        + "\n  ".join(gaps) + run_note(spec_record))


def test_every_half_precision_function_is_called_with_bfloat16(spec_record):
    missing = missing_dtype(spec_record, HALF_PRECISION, torch.bfloat16)
    assert not missing, (
        f"{len(missing)} functions that accept half precision are never called with bfloat16 by the spec: write a "
        "property that compares each in bfloat16 with float64 (tolerances from spec/tolerances.py):\n  "
        + "\n  ".join(missing) + run_note(spec_record))


def test_exemptions_name_parameters_the_spec_leaves_out(spec_record):
    known = set(parameter_gaps({"callables": {key: {**site, "calls": 0, "seen": {}}
                                              for key, site in spec_record["callables"].items()}}))
    unknown = sorted(set(EXEMPT) - known)
    assert not unknown, f"EXEMPT names parameters the contract does not have: {unknown}"
    covered = sorted(set(EXEMPT) - set(parameter_gaps(spec_record)))
    assert not covered, f"the spec now passes these exempted parameters: remove them from EXEMPT: {covered}"


def test_half_precision_list_names_contract_callables(spec_record):
    unknown = [key for key in HALF_PRECISION if key not in spec_record["callables"]]
    assert not unknown, f"HALF_PRECISION names callables the contract does not have: {unknown}"


# ------------------------------------------------------------------------------------------------ the recorder


@pytest.fixture
def recording() -> RecordingImplementation:
    """The reference, recording the calls this file makes (it stands for the spec here)."""
    reference = load("reference")
    return RecordingImplementation.of(reference, Recorder(callers=[HERE], implementation=reference.location))


def gaps(recording: RecordingImplementation) -> set[str]:
    return set(parameter_gaps(recording.record()))


def test_recording_implementation_meets_the_contract_as_the_reference_does(recording):
    for chapter in CHAPTERS:
        for name, entry in chapter.names.items():
            test_contract.test_signature_matches_the_contract(recording, chapter, name, entry)
    assert recording.layers.softmax.__name__ == "softmax" and recording.layers.softmax is recording.layers.softmax


def test_recording_classes_answer_isinstance_as_the_originals(recording):
    reference = load("reference")
    config = recording.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=8)
    torch.manual_seed(0)
    model = recording.model.Transformer(config)
    torch.manual_seed(0)
    plain = reference.model.Transformer(reference.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1,
                                                                   n_heads=2, max_seq_len=8))
    assert isinstance(model, reference.model.Transformer) and isinstance(plain, recording.model.Transformer)
    assert isinstance(model.model.norm, recording.layers.RMSNorm), "an RMSNorm the model built is an RMSNorm"
    assert issubclass(reference.layers.Linear, recording.layers.Linear)
    assert isinstance(recording.train.AdamW(model.parameters()), torch.optim.Optimizer)
    assert type(model).__name__ == "Transformer" and repr(config) == repr(reference.model.ModelConfig(
        vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=8))
    assert list(model.state_dict()) == list(plain.state_dict())
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids), plain(ids))


def test_recording_dataclasses_equal_and_hash_as_the_originals(recording):
    reference = load("reference")
    assert recording.model.ModelConfig(d_model=8) == reference.model.ModelConfig(d_model=8)
    assert reference.model.ModelConfig(d_model=8) == recording.model.ModelConfig(d_model=8)
    assert recording.model.ModelConfig(d_model=8) != reference.model.ModelConfig(d_model=16)
    config = recording.text.QualityConfig(min_words=3)
    assert hash(config) == hash(reference.text.QualityConfig(min_words=3))
    assert dataclasses.replace(config, min_words=4).min_words == 4


def test_recording_instances_pickle_and_copy(recording):
    reference = load("reference")
    linear = recording.layers.Linear(3, 2)
    restored = pickle.loads(pickle.dumps(linear))
    assert type(restored) is reference.layers.Linear and torch.equal(restored.weight, linear.weight)
    config = recording.model.ModelConfig(d_model=8)
    assert pickle.loads(pickle.dumps(config)) == config and copy.deepcopy(config) == config
    assert torch.equal(copy.deepcopy(linear).bias, linear.bias)


def test_records_values_other_than_the_default(recording):
    x = torch.randn(2, 3)
    recording.layers.softmax(x)
    recording.layers.softmax(x, dim=-1)  # passed, but the default value
    assert "layers.softmax(dim)" in gaps(recording)
    recording.layers.softmax(x, 0)
    assert "layers.softmax(dim)" not in gaps(recording)
    recording.text.minhash_signatures(["a b c d e f"], 16, ngram=3)
    assert not {"text.minhash_signatures(num_perm)", "text.minhash_signatures(ngram)"} & gaps(recording)
    assert "text.minhash_signatures(seed)" in gaps(recording)


def test_records_each_way_of_a_flag(recording):
    recording.layers.LayerNorm(4)
    assert "layers.LayerNorm(bias=False)" in gaps(recording)
    assert "layers.LayerNorm(bias=True)" not in gaps(recording), "leaving a flag at its default is one way"
    recording.layers.LayerNorm(4, bias=False)
    assert not {"layers.LayerNorm(bias=False)", "layers.LayerNorm(bias=True)"} & gaps(recording)
    x, cos, sin = torch.randn(1, 2, 4), torch.ones(2, 2), torch.zeros(2, 2)
    recording.kernels.RotateFunction.apply(x, cos, sin, True)  # a flag without a default
    assert "kernels.RotateFunction.apply(interleaved=False)" in gaps(recording)
    assert "kernels.RotateFunction.apply(interleaved=True)" not in gaps(recording)


def test_records_methods_classmethods_and_autograd_functions(recording, tmp_path):
    norm = recording.layers.RMSNorm(4)
    norm(torch.randn(2, 4, dtype=torch.bfloat16))
    tokenizer = recording.tokenizer.train_bpe("hello hello world", 258)
    tokenizer.save(tmp_path / "tok.json")
    loaded = recording.tokenizer.Tokenizer.load(tmp_path / "tok.json")
    assert isinstance(loaded, recording.tokenizer.Tokenizer) and loaded.encode("hello") == tokenizer.encode("hello")
    x, weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True), torch.ones(4, dtype=torch.float64)
    recording.kernels.RMSNormFunction.apply(x, weight, 1e-5).sum().backward()
    assert x.grad is not None, "apply still runs the Function, backward included"
    sites = recording.recorder.callsites
    assert sites["layers.RMSNorm.forward"].calls == 1 and sites["layers.RMSNorm"].calls == 1
    assert sites["tokenizer.Tokenizer.load"].seen["path"] == {"set"}
    assert sites["kernels.RMSNormFunction.apply"].seen == {"x": {"set"}, "weight": {"set"}, "eps": {"set"}}
    record = recording.record()
    assert missing_dtype(record, ["layers.RMSNorm.forward", "layers.softmax"], torch.bfloat16) == ["layers.softmax"]


def test_records_the_dtypes_inside_a_list_argument(recording):
    parameter = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    parameter.grad = torch.ones(3, dtype=torch.bfloat16)
    recording.train.clip_grad_norm([parameter], 1.0)
    assert recording.recorder.callsites["train.clip_grad_norm"].dtypes == {"torch.bfloat16"}


def test_calls_made_by_the_implementation_are_not_recorded(recording):
    config = recording.model.ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=8)
    assert recording.layers.RMSNorm  # wrapped now, so its calls would be recorded
    norm_site = recording.recorder.callsites["layers.RMSNorm"]
    recording.model.Transformer(config)  # builds RMSNorms, attention and MLPs of its own
    dataclasses.replace(config, n_layers=2)  # a copy, not a call written here
    assert norm_site.calls == 0
    assert recording.recorder.callsites["model.ModelConfig"].calls == 1
    assert recording.recorder.callsites["model.Transformer"].calls == 1


def test_calls_through_torch_count_as_the_callers(recording):
    torch.func.vmap(recording.layers.silu)(torch.randn(2, 3))  # torch's frames sit between this file and silu
    assert recording.recorder.callsites["layers.silu"].calls == 1


def test_gaps_are_written_as_calls():
    record = {"callables": {
        "m.f": {"calls": 2, "params": [
            {"name": "x", "required": True, "boolean": False}, {"name": "k", "required": False, "boolean": False},
            {"name": "flag", "required": False, "boolean": True}, {"name": "kwargs", "required": False,
                                                                   "boolean": False}],
            "seen": {"x": ["set"], "k": ["default"], "flag": ["False"], "kwargs": ["default"]}, "dtypes": []},
        "m.C.reset": {"calls": 0, "params": [], "seen": {}, "dtypes": []},
        "m.g": {"calls": 0, "params": [{"name": "y", "required": True, "boolean": False}], "seen": {}, "dtypes": []},
    }}
    assert parameter_gaps(record) == ["m.C.reset()", "m.f(k)", "m.f(flag=True)", "m.f(kwargs)", "m.g(y)"]
    assert all(re.fullmatch(r"[\w.]+\((\w+(=(True|False))?)?\)", gap) for gap in parameter_gaps(record))
