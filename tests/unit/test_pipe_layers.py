"""The pipeline layers, run one after another in one process, compute the HF model's loss; names map back;
unsupported layouts are refused before launch."""

from __future__ import annotations

import pytest
import torch

from scaling.errors import ConfigError


def _model(name: str, clm_tokenizer):
    from ranks_parallel import tiny_model

    return tiny_model(name, str(clm_tokenizer)).eval()


def _run_layers(model, inputs):
    from deepspeed.pipe import TiedLayerSpec

    from scaling.models.pipe import build_pipeline_layers, tied_head

    built = {}
    x = inputs
    for spec in build_pipeline_layers(model):
        layer = spec.build(log=False)
        if isinstance(spec, TiedLayerSpec):
            if spec.key in built:  # the head: the first stage's module, through its forward_fn
                x = tied_head(built[spec.key], x)
                continue
            built[spec.key] = layer
        x = layer(x)
    return x


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_layers_in_sequence_equal_the_hf_model(name, clm_tokenizer):
    from scaling.models.pipe import causal_lm_loss, pipe_inputs

    model = _model(name, clm_tokenizer)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    padded = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    # packed: two documents in row 0, restarting positions and no mask
    pos = torch.cat([torch.arange(5), torch.arange(7)]).expand(3, -1).contiguous()
    packed = {"input_ids": ids, "position_ids": pos, "labels": ids}
    with torch.no_grad():
        for batch in (padded, packed):
            inputs, labels = pipe_inputs(batch)
            logits = _run_layers(model, inputs)
            want = model(**batch)
            assert torch.allclose(logits, want.logits, atol=1e-5, rtol=0)
            got = causal_lm_loss(logits, labels)
            assert abs(got.item() - want.loss.item()) <= 1e-6 * want.loss.item()


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_layer_names_cover_the_hf_state_dict(name, clm_tokenizer):
    from scaling.models.pipe import hf_prefixes, pipe_to_hf_name

    model = _model(name, clm_tokenizer)
    layout = hf_prefixes(model.config)
    hf_params = dict(model.named_parameters())  # tied weights appear once
    covered = {
        f"{prefix}.{rest}"
        for prefix in filter(None, layout.prefixes)
        for rest, _ in model.get_submodule(prefix).named_parameters()
    }
    assert set(hf_params) <= covered
    assert layout.tied == (name == "tiny-gpt2")
    assert pipe_to_hf_name("tied_modules.embed.inner.weight", layout) == layout.prefixes[0] + ".weight"
    assert pipe_to_hf_name(
        "2.inner.mlp.c_fc.weight" if name == "tiny-gpt2" else "1.inner.mlp.up_proj.weight", layout
    ).endswith(".0.mlp." + ("c_fc.weight" if name == "tiny-gpt2" else "up_proj.weight"))


def test_partition_methods(clm_tokenizer):
    from scaling.models.pipe import BLOCK_TYPE, partition_method

    config = _model("tiny-llama", clm_tokenizer).config
    assert partition_method("type:LlamaDecoderLayer", config) == f"type:{BLOCK_TYPE}"
    assert partition_method("parameters", config) == "parameters"
    with pytest.raises(ConfigError, match="no layer type GPT2Block"):
        partition_method("type:GPT2Block", config)
    with pytest.raises(ConfigError, match="parameters, uniform or type"):
        partition_method("profile", config)


def _validate(args: list[str], world_size: int):
    from scaling.cli.train import train as command
    from scaling.cli.train_options import explicit_options, run_request_from_options
    from scaling.engine.prepare import validate

    ctx = command.make_context("scaling train", args)
    request = run_request_from_options(ctx.params, world_size=world_size, explicit=explicit_options(ctx))
    return validate(request)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "tiny-gpt2", "--ds-config", "autotp", "--tensor-parallel", "2"], "AutoTP rejects GPT-2"),
        (["--model", "tiny-bert", "--task", "mlm", "--ds-config", "pipeline", "--pipeline-stages", "2"],
         "causal LMs"),
        (["--model", "tiny-llama", "--ds-config", "pipeline", "--pipeline-stages", "2", "--tensor-parallel", "2"],
         "cannot be combined with --pipeline-stages"),
        (["--model", "tiny-llama", "--ds-config", "pipeline", "--pipeline-stages", "2", "--on-nan", "skip"],
         "cannot skip one"),
        (["--model", "tiny-llama", "--ds-config", "zero2", "--pipeline-stages", "2"], "ZeRO-2/3 cannot be combined"),
        (["--model", "tiny-llama", "--ds-config", "pipeline", "--pipeline-stages", "2",
          "--partition-method", "type:GPT2Block"], "no layer type GPT2Block"),
        (["--model", "tiny-bert", "--task", "mlm", "--sequence-parallel", "2"], "causal LMs \\(clm\\) only"),
        (["--model", "tiny-llama", "--ds-config", "autotp", "--tensor-parallel", "2", "--sequence-parallel", "2"],
         "not with tensor or pipeline parallelism"),
        (["--model", "tiny-llama", "--sequence-parallel", "3"], "does not divide the model's 4 attention heads"),
        (["--model", "tiny-llama", "--ds-config", "zero3", "--sequence-parallel", "2",
          "--set", "zero_optimization.reduce_scatter=false"], "must stay true"),
        (["--model", "tiny-llama", "--ds-config", "zero0", "--precision", "bf16", "--sequence-parallel", "2"],
         "miscount the gradient norm"),
        # a degree only the JSON sets is checked against the model and task too
        (["--model", "tiny-bert", "--task", "mlm", "--set", "sequence_parallel_size=2"], "causal LMs \\(clm\\) only"),
    ],
)  # fmt: skip
def test_unsupported_layouts_are_refused_before_launch(tmp_path, small_corpus, extra, message):
    args = ["--data", str(small_corpus), "--output", str(tmp_path / "o"), "--max-steps", "2", "--grad-accum", "2",
            *extra]  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        _validate(args, world_size=4)


def test_supported_layouts_validate(tmp_path, small_corpus):
    base = [
        "--data",
        str(small_corpus),
        "--output",
        str(tmp_path / "o"),
        "--max-steps",
        "2",
        "--grad-accum",
        "2",
    ]
    pp = _validate([*base, "--model", "tiny-gpt2", "--ds-config", "pipeline", "--pipeline-stages", "2"], 4)
    assert (
        pp.deepspeed["pipeline"]["stages"] == 2 and pp.deepspeed["train_batch_size"] == 8 * 2 * 2
    )  # micro x accum x dp 2
    tp = _validate([*base, "--model", "tiny-llama", "--ds-config", "autotp", "--tensor-parallel", "2"], 4)
    assert tp.deepspeed["tensor_parallel"]["autotp_size"] == 2


def test_degrees_written_in_the_json_lay_out_the_run(tmp_path, small_corpus):
    args = ["--data", str(small_corpus), "--output", str(tmp_path / "o"), "--max-steps", "2", "--grad-accum", "2",
            "--model", "tiny-llama"]  # fmt: skip
    pp = _validate([*args, "--ds-config", "pipeline", "--set", "pipeline.stages=2"], world_size=4)
    assert (
        pp.parallel.pipeline_stages == 2 and pp.deepspeed["train_batch_size"] == pp.optim.micro_batch * 2 * 2
    )
    sp = _validate([*args, "--ds-config", "zero2", "--set", "sequence_parallel_size=2"], world_size=4)
    assert (
        sp.parallel.sequence_parallel == 2
        and sp.deepspeed["train_batch_size"] == sp.optim.micro_batch * 2 * 2
    )


def test_sliding_window_models_are_refused_for_sequence_parallelism(tmp_path, small_corpus):
    from transformers import MistralConfig

    config = MistralConfig(
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=512, sliding_window=16,
    )  # fmt: skip
    config.save_pretrained(tmp_path / "mistral")
    args = ["--data", str(small_corpus), "--output", str(tmp_path / "o"), "--max-steps", "2",
            "--model", str(tmp_path / "mistral" / "config.json"), "--sequence-parallel", "2"]  # fmt: skip
    with pytest.raises(ConfigError, match="sliding-window attention"):
        _validate(list(args), world_size=2)
    config.sliding_window = None
    config.save_pretrained(tmp_path / "mistral")
    assert _validate(args, world_size=2).parallel.sequence_parallel == 2
