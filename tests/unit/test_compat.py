"""Smoke tests of scaling.compat: each private third-party API we rely on still exists with the signature
we call it with, and still does what we use it for on a tiny case. A failure here after a torch, DeepSpeed,
transformers or torchao upgrade names the wrapper to update."""

from __future__ import annotations

import inspect
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from harness import free_port

from scaling.compat import deepspeed as ds_compat
from scaling.compat import inc as inc_compat
from scaling.compat import torch_dist
from scaling.compat import transformers as hf_compat
from scaling.engine import dist as dist_setup


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


@pytest.fixture(scope="module")
def gloo_world():
    """A gloo process group of one rank (created here unless the process already has one)."""
    import torch.distributed as dist

    port = str(free_port())
    with pytest.MonkeyPatch.context() as patch:
        # What a launcher exports; DeepSpeed reads them (zero.Init the local rank).
        launch = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
        for key, value in {**launch, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
            patch.setenv(key, value)
        created = not dist.is_initialized()
        if created:
            # Through DeepSpeed's own init, as the product does: it replaces deepspeed.comm's backend object,
            # which an earlier in-process run (a CLI test) left holding its destroyed groups.
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, rank=0, world_size=1)
        previous = torch_dist.default_group_timeout()
        yield dist.group.WORLD
        torch_dist.set_default_group_timeout(previous)
        if created:
            dist_setup.teardown()


def _group_timeout(group) -> timedelta:
    return group._get_backend(torch.device("cpu")).options._timeout


# ---------------------------------------------------------------- torch.distributed


def test_c10d_private_names_keep_their_signatures():
    import torch.distributed.distributed_c10d as c10d

    assert _params(c10d._set_pg_timeout) == ["timeout", "group"]
    assert _params(c10d._rank_not_in_group) == ["group"]
    assert isinstance(c10d._world.pg_map, dict)
    assert isinstance(c10d.default_pg_timeout, timedelta)


def test_live_group_timeouts_change_a_gloo_group(gloo_world):
    torch_dist.set_live_group_timeouts(timedelta(seconds=7))
    assert _group_timeout(gloo_world) == timedelta(seconds=7)
    assert torch_dist.set_live_group_timeouts(timedelta(seconds=1800)) >= 1
    assert _group_timeout(gloo_world) == timedelta(seconds=1800)


def test_default_group_timeout_reaches_groups_created_later(gloo_world):
    import torch.distributed as dist

    torch_dist.set_default_group_timeout(timedelta(seconds=11))
    assert torch_dist.default_group_timeout() == timedelta(seconds=11)
    group = dist.new_group([0])  # no timeout given, as DeepSpeed creates its sub-groups
    assert _group_timeout(group) == timedelta(seconds=11)
    dist.destroy_process_group(group)


# ---------------------------------------------------------------- DeepSpeed


def test_shm_comm_build_is_skipped():
    import deepspeed.comm.torch  # noqa: F401

    module = sys.modules["deepspeed.comm.torch"]
    assert _params(module.build_shm_op) == []
    ds_compat.skip_shm_comm_build()
    assert module.build_shm_op() is None


def test_deepspeed_config_validation_sees_the_given_world_size():
    config = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2}
    ds_compat.validate_config(dict(config), world_size=2)
    with pytest.raises(AssertionError, match="train_batch_size"):
        ds_compat.validate_config(dict(config), world_size=3)
    # Ulysses: DeepSpeed divides the world by the sequence-parallel size itself
    ds_compat.validate_config({**config, "sequence_parallel_size": 2}, world_size=4)


@pytest.fixture(scope="module")
def zero3_engine(gloo_world):
    """A ZeRO-3 DeepSpeed engine over one rank holding a tiny two-layer model."""
    import deepspeed

    torch.manual_seed(0)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True,
    }
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    loss = engine(torch.ones(2, 4)).sum()
    engine.backward(loss)
    engine.step()
    yield engine
    engine.destroy()


def test_universal_loading_switch_is_set_and_restored(zero3_engine):
    assert isinstance(zero3_engine._config.load_universal_checkpoint, bool)
    before = zero3_engine._config.load_universal_checkpoint
    with ds_compat.universal_checkpoint_loading(zero3_engine, True):
        assert zero3_engine._config.load_universal_checkpoint is True
    assert zero3_engine._config.load_universal_checkpoint is before
    with pytest.raises(RuntimeError), ds_compat.universal_checkpoint_loading(zero3_engine, True):
        raise RuntimeError("load failed")
    assert zero3_engine._config.load_universal_checkpoint is before


def test_consolidated_state_dict_gathers_zero3_partitions(zero3_engine):
    import deepspeed

    assert _params(zero3_engine._consolidated_16bit_state_dict) == ["exclude_frozen_parameters"]
    state = ds_compat.consolidated_16bit_state_dict(zero3_engine)
    assert state is not None
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "0.weight": (6, 4),
        "0.bias": (6,),
        "1.weight": (3, 6),
        "1.bias": (3,),
    }
    weight = zero3_engine.module[1].weight
    with deepspeed.zero.GatheredParameters([weight]):
        torch.testing.assert_close(state["1.weight"].float(), weight.detach().float())


def test_local_partition_is_the_zero3_shard_a_finite_check_can_read(zero3_engine):
    # Large parameters are empty placeholders outside a gather (small ones persist whole); every one keeps its
    # shard in ds_tensor, which is what a finite-weights check must read.
    for param in zero3_engine.module.parameters():
        shard = ds_compat.local_partition(param)
        assert shard.data_ptr() == param.ds_tensor.data_ptr()
        assert shard.numel() >= param.ds_numel  # one rank: the whole parameter, flat (padded)
        assert torch.isfinite(shard).all()
    plain = torch.nn.Parameter(torch.ones(3))
    assert ds_compat.local_partition(plain).data_ptr() == plain.data_ptr()


def test_zero3_checkpoint_partitions_merge_into_whole_parameters(zero3_engine, tmp_path: Path):
    import deepspeed
    from deepspeed.utils import zero_to_fp32 as z2f

    assert _params(z2f._zero3_merge_trainable_params) == [
        "state_dict",
        "world_size",
        "fp32_flat_groups",
        "zero_model_states",
    ]
    zero3_engine.save_checkpoint(str(tmp_path), tag="t")
    checkpoint = ds_compat.Zero3Checkpoint.read(tmp_path / "t")
    assert len(checkpoint.optim_files) == 1
    assert checkpoint.shared_params == []
    optim = torch.load(checkpoint.optim_files[0], map_location="cpu", weights_only=False)
    merged = checkpoint.merge([optim["optimizer_state_dict"]["fp32_flat_groups"]])
    assert sorted(merged) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    params = list(zero3_engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        for name, param in zero3_engine.module.named_parameters():
            torch.testing.assert_close(merged[name], param.detach().float())


def test_tensor_parallel_groups_become_the_mpu(gloo_world, monkeypatch):
    from deepspeed.utils import groups

    assert _params(groups._init_tp_mesh_device) == ["tensor_model_parallel_size", "data_parallel_size"]
    # The mesh is process-global in DeepSpeed; give it back unset to later tests in this process.
    for name in ("_TENSOR_MODEL_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP", "_MODEL_PARALLEL_GROUP"):
        monkeypatch.setattr(groups, name, None)
    mpu = ds_compat.init_tensor_parallel_groups(1)
    assert mpu is groups
    assert mpu.get_tensor_model_parallel_world_size() == 1
    assert mpu.get_data_parallel_world_size() == 1


def test_ulysses_attention_accepts_a_shorter_batch(gloo_world):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    heads, size = 2, 4
    ulysses = ds_compat.any_batch_ulysses(
        attn=lambda module, q, k, v, mask, *args, **kwargs: sdpa_attention_forward(
            module, q, k, v, None, **kwargs
        ),
        batch_size=2,
        attn_head_count=heads,
        attn_head_size=size,
        kv_head_count=heads,
        num_hidden_layers=1,
        process_group=gloo_world,
        seq_length_is_variable=True,
    )
    for name in ("batch_size", "attn_head_count", "global_kv_head_count", "attn_head_size", "world_size"):
        assert hasattr(ulysses, name), name
    module = torch.nn.Module()
    module.is_causal = True
    rows, seq = 1, 3
    query, key, value = (torch.randn(rows, heads, seq, size) for _ in range(3))
    output, _ = ulysses(module, query, key, value, None, position_ids=torch.arange(seq).unsqueeze(0))
    assert ulysses.batch_size == rows
    assert output.shape[:2] == (rows, seq)
    assert output.numel() == rows * seq * heads * size


def test_sequence_parallel_state_is_the_mpu_deepspeed_takes(gloo_world):
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as state

    assert _params(state.initialize_sequence_parallel) == ["sequence_parallel_size"]
    for name in (
        "get_sequence_parallel_group",
        "get_sequence_parallel_rank",
        "get_sequence_data_parallel_group",
    ):
        assert callable(getattr(state, name, None)), name
    # A 1-rank world cannot hold a group of 2 (the SP tests in tests/distributed build real ones); the call
    # still reaches DeepSpeed's own check.
    with pytest.raises(RuntimeError, match="less than sequence_parallel_size"):
        ds_compat.sequence_parallel_state(2)


def test_pipeline_clip_norm_marks_counted_params_the_way_deepspeed_reads_them():
    from deepspeed.runtime import utils
    from deepspeed.runtime.pipe.module import PipelineModule

    # DeepSpeed's norm counts a parameter by its `model_parallel` attribute; the pipeline keeps tied groups.
    assert "model_parallel" in inspect.getsource(utils)
    assert "self.tied_comms" in inspect.getsource(PipelineModule)
    tied = torch.nn.Linear(2, 2)
    module = torch.nn.Module()
    module.stage = torch.nn.Linear(2, 2)
    module.tied_modules = torch.nn.ModuleDict({"embed": tied})
    module.tied_comms = {"embed": {"ranks": [0, 1]}}
    ds_compat.count_every_pipeline_param_in_clip_norm(module, rank=1)
    assert all(p.model_parallel for p in module.stage.parameters())
    assert not any(p.model_parallel for p in tied.parameters())  # counted on rank 0 only
    ds_compat.count_every_pipeline_param_in_clip_norm(module, rank=0)
    assert all(p.model_parallel for p in tied.parameters())


# ---------------------------------------------------------------- transformers


def test_model_from_config_builds_a_concrete_class_in_the_dtype():
    from transformers import GPT2Config, GPT2LMHeadModel

    assert "config" in _params(GPT2LMHeadModel._from_config)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8)
    model = hf_compat.model_from_config(GPT2LMHeadModel, config, dtype=torch.float32)
    assert type(model) is GPT2LMHeadModel
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_causal_lm_class_and_attention_backend_support():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, ViTConfig

    assert hf_compat.causal_lm_class(LlamaConfig()) is LlamaForCausalLM
    assert hf_compat.causal_lm_class(GPT2Config()) is GPT2LMHeadModel
    assert hf_compat.causal_lm_class(ViTConfig()) is None
    # The flag itself must still exist: a missing one would read as "unsupported" for every model.
    assert LlamaForCausalLM._supports_attention_backend is True
    assert hf_compat.supports_attention_backend(LlamaForCausalLM)
    assert not hf_compat.supports_attention_backend(torch.nn.Linear)


# ---------------------------------------------------------------- INC (torchao's X86 quantizer)


def test_unannotatable_linears_are_skipped(monkeypatch):
    xiq = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    quantizer = xiq.X86InductorQuantizer
    real = inspect.unwrap(quantizer._annotate_linear_unary)
    assert _params(real) == ["self", "gm", "quantization_config", "filter_fn"]

    def failing(self, gm, cfg, filter_fn=None):
        raise IndexError("list index out of range")

    monkeypatch.setattr(quantizer, "_annotate_linear_unary", failing)
    monkeypatch.setattr(quantizer, "_scaling_patched", False, raising=False)
    assert inc_compat.skip_unannotatable_linears()
    assert quantizer._annotate_linear_unary(quantizer(), None, None) is None
    assert inc_compat.skip_unannotatable_linears()  # idempotent: does not wrap twice
    assert inspect.unwrap(quantizer._annotate_linear_unary) is failing


def test_safe_load_allowlist_names_exist_and_deepspeed_loads_through_the_patch(tmp_path):
    """scaling.compat.safe_load: every allowlisted DeepSpeed class still exists where DeepSpeed pickles it from,
    torch.load is replaced only inside the block (DeepSpeed calls it through the module attribute), and a
    DeepSpeed object round-trips through the weights-only loader."""
    import importlib

    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from scaling.compat import safe_load

    for module, name in safe_load.DEEPSPEED_CLASSES:
        assert isinstance(getattr(importlib.import_module(module), name), type)
    original = torch.load
    torch.save({"scaler": LossScaler(2.0), "stage": ZeroStageEnum(2), "w": torch.ones(2)}, tmp_path / "s.pt")
    with safe_load.restricted_torch_load(), safe_load.restricted_torch_load():  # nests
        assert torch.load is not original
        loaded = torch.load(tmp_path / "s.pt", weights_only=False)  # what DeepSpeed passes
    assert torch.load is original
    assert loaded["scaler"].cur_scale == 2.0 and loaded["stage"] == ZeroStageEnum(2)
    assert safe_load.unsafe_globals(tmp_path / "s.pt") == []
