"""The reference model's kernel path on a GPU: CausalSelfAttention(kernels=True) hands its heads to
`kernels.flash_attention` when `_flash_runs` says the Triton kernels can take them (a CUDA tensor, Triton
installed). Without a GPU the same calls run here in Triton's interpreter, with `_flash_runs` told that the CPU
will do: in a child process, since TRITON_INTERPRET=1 must be set before anything imports triton."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

CHILD = textwrap.dedent("""
    import os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from llmkata.reference import kernels
    from llmkata.reference.model import ModelConfig, Transformer

    calls = []
    flash = kernels.flash_attention

    def counted(q, k, v, is_causal=False, scale=None):
        calls.append((tuple(q.shape), tuple(k.shape), q.dtype, k.dtype, is_causal))
        return flash(q, k, v, is_causal=is_causal, scale=scale)

    kernels.flash_attention = counted
    kernels._flash_runs = lambda q: True  # the CPU, in Triton's interpreter, stands in for the GPU

    config = dict(vocab_size=23, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
    torch.manual_seed(0)
    plain = Transformer(ModelConfig(**config))
    fast = Transformer(ModelConfig(**config, kernels=True))
    fast.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 23, (2, 7), generator=torch.Generator().manual_seed(1))

    logits_plain, logits_fast = plain(ids), fast(ids)
    assert calls and calls[0] == ((2, 4, 7, 8), (2, 2, 7, 8), torch.float32, torch.float32, True), calls
    assert torch.allclose(logits_fast, logits_plain, atol=1e-5, rtol=1e-4), (logits_fast - logits_plain).abs().max()
    grad = torch.randn(logits_plain.shape, generator=torch.Generator().manual_seed(2))
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        (ga,), (gb,) = torch.autograd.grad(logits_plain, a, grad, retain_graph=True), \\
            torch.autograd.grad(logits_fast, b, grad, retain_graph=True)
        assert torch.allclose(gb, ga, atol=1e-5, rtol=1e-3), (name, (gb - ga).abs().max())

    calls.clear()
    with torch.no_grad():  # cached decoding: 5 queries against 5 keys, then 2 against 7 (Tq != Tk, causal)
        cache = fast.make_cache(2)
        pieces = torch.cat([fast(ids[:, :5], cache=cache), fast(ids[:, 5:], cache=cache)], 1)
    assert [c[:2] for c in calls[::2]] == [((2, 4, 5, 8), (2, 2, 5, 8)), ((2, 4, 2, 8), (2, 2, 7, 8))], calls
    assert torch.allclose(pieces, logits_plain, atol=1e-5, rtol=1e-4)

    kernels._flash_runs = lambda q: False  # where flash cannot run, the kernel path is what it was
    calls.clear()
    assert torch.allclose(fast(ids), logits_plain, atol=1e-5, rtol=1e-4) and not calls
    print("ok")
""")


def test_the_model_with_kernels_attends_through_flash_attention_where_it_runs():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-3000:] + done.stderr[-3000:]


def test_flash_runs_only_for_cuda_tensors_of_its_dtypes_with_triton(monkeypatch):
    import types

    import torch

    from llmkata.reference import kernels

    def on_a_gpu(dtype, numel=8):  # what _flash_runs reads of a CUDA tensor, without a GPU
        return types.SimpleNamespace(is_cuda=True, dtype=dtype, numel=lambda: numel)

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert kernels._flash_runs(on_a_gpu(dtype)), f"a CUDA tensor in {dtype} goes to flash_attention"
        assert not kernels._flash_runs(torch.ones(1, 1, 2, 4, dtype=dtype)), "a CPU tensor stays on the kernel path"
    assert not kernels._flash_runs(on_a_gpu(torch.float64)), "float64: the kernels do not take it"
    assert not kernels._flash_runs(on_a_gpu(torch.float32, numel=0)), "nothing to attend to"
    assert not kernels._flash_runs(torch.ones(1, 1, 2, 4, device="meta"))
    monkeypatch.setattr(kernels, "_triton_installed", lambda: False)
    assert not kernels._flash_runs(on_a_gpu(torch.float32)), "without Triton, the kernel path"
