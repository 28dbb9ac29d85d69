"""Rank functions for the pipeline / tensor-parallel / reshape tests (importable by the forkserver)."""

from __future__ import annotations

from typing import Any

import torch

LR = 1e-3
CLIP = 1.0


def tiny_model(model_name: str, tokenizer_dir: str) -> Any:
    """The preset model with the same initial weights in every process that calls this."""
    from transformers import AutoTokenizer

    from scaling.engine.state import seed_everything
    from scaling.models import build_model, describe_source

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    seed_everything(0)
    return build_model(describe_source(model_name), task="clm", tokenizer=tokenizer, num_labels=None)


def fixed_batches(step: int, count: int, micro: int, seq: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """`count` micro-batches for one optimizer step, identical in every process; right padding on row 0."""
    gen = torch.Generator().manual_seed(1000 + step)
    out = []
    for _ in range(count):
        ids = torch.randint(4, vocab, (micro, seq), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, seq - 5 :] = 0
        ids = ids.masked_fill(mask == 0, 0)
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def ds_config(micro: int, accum: int, dp: int, zero: int, **extra: Any) -> dict[str, Any]:
    return {
        "train_batch_size": micro * accum * dp,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": CLIP,
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": zero},
        "bf16": {"enabled": False},
        "steps_per_print": 10**9,
        **extra,
    }


def reference_run(model: Any, steps: int, count: int, micro: int, seq: int) -> tuple[list[float], dict]:
    """Plain torch: AdamW + clipping, each step's loss the mean over its `count` micro-batches."""
    ref = reference_losses(model, steps, count, micro, seq, packed=False)
    return ref["losses"], ref["weights"]


def _init() -> Any:
    from scaling.distributed import LaunchEnv
    from scaling.engine import dist as dist_setup

    env = LaunchEnv.from_environ()
    dist_setup.init_process_group(env, timeout_s=120)
    return env


def pipe_parity(
    model_name: str, tokenizer_dir: str, stages: int, zero: int, steps: int, micro: int, accum: int, seq: int,
    checkpoint_interval: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Train the pipelined model on fixed batches; return the step losses and this stage's HF weights."""
    import deepspeed

    from scaling.compat.deepspeed import count_every_pipeline_param_in_clip_norm
    from scaling.distributed import Topology
    from scaling.engine import dist as dist_setup
    from scaling.models.pipe import build_pipeline_module, named_hf_parameters, pipe_inputs

    env = _init()
    topo = Topology(world_size=env.world_size, pipeline_stages=stages)
    try:
        model = tiny_model(model_name, tokenizer_dir)
        module = build_pipeline_module(
            model,
            num_stages=stages,
            partition="parameters",
            activation_checkpoint_interval=checkpoint_interval,
        )
        engine, *_ = deepspeed.initialize(
            model=module,
            model_parameters=[p for p in module.parameters() if p.requires_grad],
            config=ds_config(micro, accum, topo.data_parallel, zero),
            dist_init_required=False,
        )
        if zero == 0:
            count_every_pipeline_param_in_clip_norm(module, env.rank)
        dp_rank = topo.data_rank(env.rank)
        losses = []
        for step in range(steps):
            batches = fixed_batches(step, accum * topo.data_parallel, micro, seq, model.config.vocab_size)
            mine = batches[dp_rank * accum : (dp_rank + 1) * accum]
            losses.append(float(engine.train_batch(iter([pipe_inputs(b) for b in mine]))))
        # numpy, not tensors: torch pickles tensors through shared memory that dies with this process
        weights = {k: v.detach().numpy().copy() for k, v in named_hf_parameters(module, model.config).items()}
    finally:
        dist_setup.teardown()
    return {"losses": losses, "weights": weights}


def tp_parity(
    model_name: str, tokenizer_dir: str, tp: int, zero: int, steps: int, micro: int, accum: int, seq: int
) -> dict[str, Any]:
    """Train under AutoTP on fixed batches; return step losses and (rank 0) the gathered full weights."""
    import deepspeed
    import torch.distributed as dist

    from scaling.compat.deepspeed import consolidated_16bit_state_dict, init_tensor_parallel_groups
    from scaling.distributed import Topology
    from scaling.engine import dist as dist_setup

    env = _init()
    topo = Topology(world_size=env.world_size, tensor_parallel=tp)
    try:
        groups = init_tensor_parallel_groups(tp)
        model = tiny_model(model_name, tokenizer_dir)
        config = ds_config(micro, accum, topo.data_parallel, zero, tensor_parallel={"autotp_size": tp})
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=config,
            mpu=groups,
            dist_init_required=False,
        )
        dp_rank = topo.data_rank(env.rank)
        losses = []
        for step in range(steps):
            batches = fixed_batches(step, accum * topo.data_parallel, micro, seq, model.config.vocab_size)
            total = torch.zeros(1, dtype=torch.float64)
            for batch in batches[dp_rank * accum : (dp_rank + 1) * accum]:
                loss = engine(**batch).loss
                engine.backward(loss)
                engine.step()
                total += loss.item() / accum
            dist.all_reduce(total)  # tensor peers hold the same loss: average over the world
            losses.append(float(total) / env.world_size)
        full = consolidated_16bit_state_dict(engine)
        weights = {k: v.detach().float().numpy().copy() for k, v in full.items()} if env.rank == 0 else None
    finally:
        dist_setup.teardown()
    return {"losses": losses, "weights": weights}


def global_rows(step: int, rows: int, seq: int, vocab: int) -> torch.Tensor:
    """The `rows` samples of one optimizer step, unpadded: every split into micro-batches weighs tokens alike,
    so the mean of micro-batch losses is the same for any data-parallel size."""
    gen = torch.Generator().manual_seed(2000 + step)
    return torch.randint(4, vocab, (rows, seq), generator=gen)


def dp_phase(
    model_name: str, tokenizer_dir: str, ckpt_dir: str, zero: int, rows: int, seq: int,
    first_step: int, last_step: int, load_tag: str | None, save_tag: str | None,
) -> list[float]:  # fmt: skip
    """Plain data-parallel engine (micro-batch rows/world, no accumulation) over steps [first, last):
    optionally load a universal checkpoint first and save a DeepSpeed checkpoint after."""
    import deepspeed
    import torch.distributed as dist

    from scaling.compat.deepspeed import universal_checkpoint_loading
    from scaling.engine import dist as dist_setup

    env = _init()
    world, rank = env.world_size, env.rank
    micro = rows // world
    try:
        model = tiny_model(model_name, tokenizer_dir)
        engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=model.parameters(),
            config=ds_config(micro, 1, world, zero),
            dist_init_required=False,
        )
        if load_tag is not None:
            with universal_checkpoint_loading(engine, True):
                path, _ = engine.load_checkpoint(ckpt_dir, tag=load_tag)
            assert path is not None
        losses = []
        for step in range(first_step, last_step):
            ids = global_rows(step, rows, seq, model.config.vocab_size)[rank * micro : (rank + 1) * micro]
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            total = torch.tensor([loss.item()], dtype=torch.float64)
            dist.all_reduce(total)
            losses.append(float(total) / world)
        if save_tag is not None:
            engine.save_checkpoint(ckpt_dir, tag=save_tag)
    finally:
        dist_setup.teardown()
    return losses


def exported_eval_loss(run_dir: str, token_weighted: bool) -> float:
    """The eval loss the run logged, recomputed with plain transformers from OUTPUT/final on the same batches
    (every data-parallel rank's share), the way the run averages them."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scaling.config.run import RunConfig
    from scaling.data import build_eval_batches
    from scaling.distributed import Topology

    run = RunConfig.load(Path(run_dir) / "run_config.json")
    final = Path(run_dir) / "final"
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    dp = Topology(
        world_size=run.world_size,
        tensor_parallel=run.parallel.tensor_parallel,
        pipeline_stages=run.parallel.pipeline_stages,
        sequence_parallel=run.parallel.sequence_parallel,
    ).data_parallel
    shares = [
        build_eval_batches(
            run.data, tokenizer, task="clm", micro_batch=run.optim.micro_batch, dp_rank=r, dp_size=dp,
            max_batches=run.log.eval_batches,
        )
        for r in range(dp)
    ]  # fmt: skip
    count = min(len(s) for s in shares)
    weighted = torch.zeros(2, dtype=torch.float64)
    per_rank = []
    with torch.no_grad():
        for share in shares:
            losses = []
            for batch in share[:count]:
                loss = float(model(**batch).loss)
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                weighted += torch.tensor([loss * tokens, tokens], dtype=torch.float64)
                losses.append(loss)
            per_rank.append(sum(losses) / len(losses))
    return float(weighted[0] / weighted[1]) if token_weighted else sum(per_rank) / len(per_rank)


def bubble_timings(micro_batches: int, steps: int, hidden: int, layers: int, seq: int, micro: int) -> dict:
    """Per-stage timings of a 2-stage pipelined Llama: compute (forward + backward instructions), the
    optimizer/reduction phase, and the wall time of each train_batch (bench/pipeline_bubble.py)."""
    import time

    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM

    from scaling.engine import dist as dist_setup
    from scaling.models.pipe import build_pipeline_module, pipe_inputs

    _init()
    try:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=512, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq, tie_word_embeddings=False,
        )  # fmt: skip
        module = build_pipeline_module(
            LlamaForCausalLM(config),
            num_stages=2,
            partition="type:LlamaDecoderLayer",
            activation_checkpoint_interval=0,
        )
        engine, *_ = deepspeed.initialize(
            model=module,
            model_parameters=[p for p in module.parameters() if p.requires_grad],
            config=ds_config(micro, micro_batches, 1, 1),
            dist_init_required=False,
        )
        from deepspeed.runtime.pipe import schedule

        spent = {"compute": 0.0, "step": 0.0}
        kind = {schedule.ForwardPass: "compute", schedule.BackwardPass: "compute"}
        kind.update(
            dict.fromkeys((schedule.OptimizerStep, schedule.ReduceGrads, schedule.ReduceTiedGrads), "step")
        )

        def timed(fn: Any, bucket: str | None) -> Any:
            def run(self: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return fn(self, **kwargs)
                finally:
                    if bucket:
                        spent[bucket] += time.perf_counter() - started

            return run

        engine._INSTRUCTION_MAP = {k: timed(v, kind.get(k)) for k, v in type(engine)._INSTRUCTION_MAP.items()}
        batches = [
            pipe_inputs(b) for b in fixed_batches(0, micro_batches, micro, seq, 512)
        ]  # the same micro-batches each step: timing, not learning
        engine.train_batch(iter(batches))  # warm-up (allocations, first-call overheads)
        spent.update(compute=0.0, step=0.0)
        wall = 0.0
        for _ in range(steps):
            torch.distributed.barrier()
            started = time.perf_counter()
            engine.train_batch(iter(batches))
            wall += time.perf_counter() - started
        stage = engine.stage_id
    finally:
        dist_setup.teardown()
    return {
        "stage": stage,
        "wall_s": wall,
        "compute_s": spent["compute"],
        "step_s": spent["step"],
        "steps": steps,
    }


def packed_batches(step: int, count: int, micro: int, seq: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """Like fixed_batches, but packed rows of several documents: positions restart, no attention mask, and
    the first token of each later document is not a target (what scaling.data yields without cross-doc
    attention)."""
    gen = torch.Generator().manual_seed(3000 + step)
    out = []
    for _ in range(count):
        ids = torch.randint(4, vocab, (micro, seq), generator=gen)
        positions = torch.arange(seq).repeat(micro, 1)
        labels = ids.clone()
        for row in range(micro):
            cut = int(torch.randint(3, seq - 3, (1,), generator=gen))
            positions[row, cut:] -= cut
            labels[row, cut] = -100
        out.append({"input_ids": ids, "position_ids": positions, "labels": labels})
    return out


def reference_losses(
    model: Any, steps: int, count: int, micro: int, seq: int, packed: bool
) -> dict[str, Any]:
    """Plain torch on the fixed (padded) or packed batches: AdamW + clipping, each step's loss the mean over its
    `count` micro-batches, and each step's gradient norm (Adam hides a constant gradient scale from the
    weights, the norm does not)."""
    make = packed_batches if packed else fixed_batches
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses, norms = [], []
    for step in range(steps):
        opt.zero_grad()
        total = 0.0
        for batch in make(step, count, micro, seq, model.config.vocab_size):
            loss = model(**batch, use_cache=False).loss / count
            loss.backward()
            total += loss.item()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        losses.append(total)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"losses": losses, "grad_norms": norms, "weights": weights}


def sp_parity(
    model_name: str, tokenizer_dir: str, sp: int, zero: int, steps: int, micro: int, accum: int, seq: int,
    packed: bool, checkpointing: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Train with Ulysses sequence parallelism on fixed batches; return step losses, the first step's global
    gradient norm and (rank 0) the full weights."""
    import deepspeed

    from scaling.compat.deepspeed import consolidated_16bit_state_dict
    from scaling.distributed import Topology
    from scaling.engine import dist as dist_setup
    from scaling.engine.sequence_parallel import (
        gradient_factor,
        group_mean_loss,
        install_ulysses,
        shard_batch,
        token_loss_sum,
    )

    env = _init()
    topo = Topology(world_size=env.world_size, sequence_parallel=sp)
    make = packed_batches if packed else fixed_batches
    try:
        model = tiny_model(model_name, tokenizer_dir)
        if (
            checkpointing
        ):  # recomputation replays the all-to-alls in backward, in the same order on every rank
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mpu = install_ulysses(model, sp_size=sp, micro_batch=micro)
        group, sp_rank = mpu.get_sequence_parallel_group(), mpu.get_sequence_parallel_rank()
        config = ds_config(micro, accum, topo.data_parallel, zero, sequence_parallel_size=sp)
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=config, mpu=mpu, dist_init_required=False
        )
        dp_rank = topo.data_rank(env.rank)
        losses, norms = [], []
        for step in range(steps):
            batches = make(step, accum * topo.data_parallel, micro, seq, model.config.vocab_size)
            total = 0.0
            for batch in batches[dp_rank * accum : (dp_rank + 1) * accum]:
                inputs, shift_labels = shard_batch(batch, sp_rank, sp)
                local_sum, count = token_loss_sum(engine(**inputs, use_cache=False).logits, shift_labels)
                loss = group_mean_loss(local_sum, count, group, grad_factor=gradient_factor(zero, sp))
                engine.backward(loss)
                if zero == 0 and engine.is_gradient_accumulation_boundary():
                    # ZeRO-0 fp32 keeps no global norm; its gradients are whole and reduced by now
                    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
                    norms.append(float(torch.stack(grads).norm()))
                engine.step()
                total += loss.item() / accum
            summed = torch.tensor([total], dtype=torch.float64)
            torch.distributed.all_reduce(summed)  # sequence peers hold the same loss: average over the world
            losses.append(float(summed) / env.world_size)
            if zero > 0:
                norms.append(float(engine.get_global_grad_norm()))
        weights = None
        if zero == 3:
            full = consolidated_16bit_state_dict(engine)
        else:
            full = engine.module.state_dict()
        if env.rank == 0:
            weights = {k: v.detach().float().numpy().copy() for k, v in full.items()}
    finally:
        dist_setup.teardown()
    return {"losses": losses, "grad_norms": norms, "weights": weights}
