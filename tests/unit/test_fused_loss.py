"""The fused (chunked linear + cross-entropy) causal-LM loss equals HF's loss and gradients, and its peak
memory at a 32k vocabulary is a fraction of the plain loss's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from scaling.engine import fused_loss
from scaling.engine.fused_loss import enable_fused_loss, fused_linear_cross_entropy, fused_loss_blocker

VOCAB = 300


def _gpt2(tie: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    config.tie_word_embeddings = tie
    config.use_cache = False  # as scaling.models.load sets it: packed rows are then kept apart
    return GPT2LMHeadModel(config).eval()  # no dropout: both arms see the same network


def _llama(tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        use_cache=False,
    )
    return LlamaForCausalLM(config).eval()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (3, 20), generator=gen)
    labels = input_ids.clone()
    labels[0, 12:] = -100  # right padding
    labels[1, :7] = -100  # a masked prompt (SFT)
    positions = torch.cat([torch.arange(9), torch.arange(11)]).expand(3, 20).clone()  # packed rows
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize(
    "build", [_gpt2, _llama, lambda: _llama(tie=True)], ids=["gpt2-tied", "llama", "llama-tied"]
)
def test_loss_and_every_gradient_match_hf(build, monkeypatch):
    torch.manual_seed(0)
    model = build()
    batch = _batch()
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", VOCAB * 7)  # several chunks, a ragged last one
    enable_fused_loss(model)
    fused, fused_grads = _loss_and_grads(model, batch)
    assert model(**batch).logits is None  # the full logits were never built
    torch.testing.assert_close(fused, plain_loss, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_without_labels_the_model_keeps_its_own_forward():
    model = _llama()
    batch = _batch()
    expected = model(input_ids=batch["input_ids"]).logits
    enable_fused_loss(model)
    torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits, expected)


def test_no_grad_eval_matches_and_frozen_head_gets_no_gradient():
    torch.manual_seed(1)
    hidden = torch.randn(2, 9, 16)
    weight = torch.randn(50, 16)
    labels = torch.randint(0, 50, (2, 9))
    expected = torch.nn.functional.cross_entropy(
        (hidden[:, :-1] @ weight.t()).reshape(-1, 50), labels[:, 1:].reshape(-1)
    )
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(hidden, weight, None, labels), expected)
    hidden.requires_grad_(True)
    loss = fused_linear_cross_entropy(hidden, weight, None, labels)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None


def test_bf16_stays_close_to_hf():
    torch.manual_seed(0)
    model = _llama().to(torch.bfloat16)
    batch = _batch(3)
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    enable_fused_loss(model)
    fused, fused_grads = _loss_and_grads(model, batch)
    # HF rounds the weight gradient to bf16 per matmul; the fused loss accumulates it in fp32.
    torch.testing.assert_close(fused.float(), plain_loss.float(), rtol=1e-3, atol=1e-3)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name].float(), grad.float(), rtol=2e-2, atol=2e-3, msg=name)


def test_blockers_name_why():
    model = _llama()
    assert fused_loss_blocker(model, task="clm", zero_stage=2, tensor_parallel=1, pipeline=False) is None
    assert "ZeRO-3" in fused_loss_blocker(model, task="sft", zero_stage=3, tensor_parallel=1, pipeline=False)
    assert "AutoTP" in fused_loss_blocker(model, task="clm", zero_stage=0, tensor_parallel=2, pipeline=False)
    assert "pipeline" in fused_loss_blocker(model, task="clm", zero_stage=0, tensor_parallel=1, pipeline=True)
    assert "seq-cls" in fused_loss_blocker(
        model, task="seq-cls", zero_stage=0, tensor_parallel=1, pipeline=False
    )
    model.config.final_logit_softcapping = 30.0
    assert "softcapping" in fused_loss_blocker(
        model, task="clm", zero_stage=0, tensor_parallel=1, pipeline=False
    )
    model.config.final_logit_softcapping = None
    model.config.model_type = "gemma2"
    assert "gemma2" in fused_loss_blocker(model, task="clm", zero_stage=0, tensor_parallel=1, pipeline=False)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading, time, torch
    from scaling.engine.fused_loss import fused_linear_cross_entropy
    torch.set_num_threads(1)
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page_kib

    vocab, dim, tokens = 32768, 256, 2048
    torch.manual_seed(0)
    hidden = torch.randn(1, tokens + 1, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens + 1))
    # Touch the gradient buffers first so both arms start from the same resident set.
    hidden.grad = torch.zeros_like(hidden); weight.grad = torch.zeros_like(weight)
    # The resident set sampled while the loss runs (the process's high-water mark may predate it: imports).
    before = rss_kib()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample); sampler.start()
    if sys.argv[1] == "fused":
        loss = fused_linear_cross_entropy(hidden, weight, None, labels)
    else:
        logits = hidden[:, :-1] @ weight.t()
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), labels[:, 1:].reshape(-1))
    loss.backward()
    peak[0] = max(peak[0], rss_kib())
    done.set(); sampler.join()
    print(json.dumps({"peak_kib": peak[0] - before, "loss": float(loss.detach())}))
    """
)


def test_peak_memory_at_32k_vocab_is_under_a_quarter_of_the_plain_loss(tmp_path):
    figures = {}
    for arm in ("plain", "fused"):
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, arm], capture_output=True, text=True, check=True, timeout=120
        )
        figures[arm] = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["fused"]["loss"] == pytest.approx(figures["plain"]["loss"], rel=1e-5)
    assert figures["plain"]["peak_kib"] > 500_000, figures  # the plain logits alone are 256 MiB per copy
    ratio = figures["fused"]["peak_kib"] / figures["plain"]["peak_kib"]
    assert ratio <= 0.25, figures


def test_a_lora_model_gets_the_fused_loss_under_its_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        _llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    batch = _batch(5)
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    assert fused_loss_blocker(model, task="sft", zero_stage=2, tensor_parallel=1, pipeline=False) is None
    enable_fused_loss(model)
    fused, fused_grads = _loss_and_grads(model, batch)
    assert model(**batch).logits is None
    torch.testing.assert_close(fused, plain_loss, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys() and all("lora" in name for name in plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
