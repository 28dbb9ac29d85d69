"""Measure the model-state bytes DeepSpeed really holds per rank, to check `scaling estimate` against.

    python bench/memory_measure.py --world-size 2 [--stages 0 1 2 3] [--precision bf16 fp32] [--json]

Each rank trains a tiny GPT-2 (2 layers, h=64) for one step on CPU/gloo, runs the next step's forward and
backward, and then - before that optimizer step, when parameters, gradients and optimizer states all exist, and
also just before the end-of-backward gradient reduction (where ZeRO-1 still holds every full gradient) - sums the
bytes of every distinct tensor storage alive in the process (all tensors the garbage collector tracks,
plus each parameter's `.grad`, deduplicated by storage, so flat buffers and the views into them count once).
Tensors alive before the model was built (earlier cases' engines, which `destroy()` does not all free) are
subtracted, and so is the batch; activations are gone after backward. What remains is params + grads + optimizer states + DeepSpeed's buckets, which is the
"model states" figure of the estimate (buckets are tiny here: reduce_bucket_size = h*h = 4096 elements).

Chosen over RSS/tracemalloc: RSS on CPU mixes in the allocator's caching and the 500 MB of imported code, and
tracemalloc does not see torch's C++ allocations. Counting storages is exact for what tensors hold.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import warnings
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 256, "n_positions": 64}
MICRO, SEQ = 2, 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def live_tensor_bytes(exclude: list[Any]) -> int:
    import torch

    gc.collect()
    seen: dict[int, int] = {}
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    with warnings.catch_warnings():
        # isinstance() on some torch module proxies in gc's list raises deprecation warnings; not ours.
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        # Only leaves carry a .grad (asking a non-leaf warns); gradients of parameters live there.
        for t in (obj, obj.grad if obj.is_leaf else None):
            if t is None or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr and ptr not in skip:
                seen[ptr] = storage.nbytes()
    return sum(seen.values())


def init_dist(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import deepspeed

    from scaling.compat.deepspeed import skip_shm_comm_build

    skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def measure(stage: int, precision: str, world: int, offload: bool = False) -> dict[str, Any]:
    """One engine in an initialised process group: measured bytes of rank-local model states."""
    import deepspeed
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from scaling.config.deepspeed import RunValues, resolve_deepspeed

    # Engines of earlier cases in this process are not all freed by destroy(): count only what this one adds.
    baseline = live_tensor_bytes(exclude=[])
    torch.manual_seed(0)
    preset = {0: "zero0", 1: "zero1", 2: "zero2", 3: "zero3"}[stage]
    if offload:
        preset = {2: "zero2_offload", 3: "zero3_offload"}[stage]
    run = RunValues(micro_batch=MICRO, precision=precision, world_size=world, hidden_size=SHAPE["n_embd"])
    resolved = resolve_deepspeed(preset, [], run)
    model = GPT2LMHeadModel(GPT2Config(**SHAPE))
    psi = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, SHAPE["vocab_size"], (MICRO, SEQ))
    engine, *_ = deepspeed.initialize(
        model=model, config=resolved.config, model_parameters=model.parameters()
    )
    del model
    # Where the ZeRO formulas hold: ZeRO-1 keeps every full gradient (2Ψ) until the end of backward and only
    # then reduces them into its partition and frees them, so its model states peak just before that
    # reduction. ZeRO-2/3 reduce bucket by bucket during backward; before their final flush the last bucket's
    # unreduced gradients are alive too, a transient the estimate counts as a buffer, not as model states.
    before_reduce: list[int] = []
    reduce = engine.allreduce_gradients

    def measured_reduce(*args: Any, **kwargs: Any) -> Any:
        if losses:  # the measured (second) micro-step
            before_reduce.append(live_tensor_bytes(exclude=[ids]) - baseline)
        return reduce(*args, **kwargs)

    engine.allreduce_gradients = measured_reduce
    losses: list[float] = []
    for _ in range(2):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        losses.append(loss.item())
        if len(losses) == 2:
            break
        engine.step()
    loss = None
    after_backward = live_tensor_bytes(exclude=[ids]) - baseline
    measured = max(after_backward, *before_reduce) if stage <= 1 else after_backward
    engine.step()
    out = {
        "stage": stage,
        "precision": precision,
        "offload": offload,
        "world_size": world,
        "rank": int(os.environ["RANK"]),
        "params": psi,
        "measured": measured,
        "after_backward": after_backward,
        "before_final_reduction": before_reduce[0] if before_reduce else None,
        "losses": losses,
    }
    engine.destroy()
    del engine
    gc.collect()
    return out


def _worker(rank: int, world: int, port: int, cases: list[tuple[int, str, bool]], queue: Any) -> None:
    sys.path.insert(0, ROOT)
    init_dist(rank, world, port)
    import torch.distributed as dist

    try:
        for stage, precision, offload in cases:
            queue.put(measure(stage, precision, world, offload))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def run(world: int, cases: list[tuple[int, str, bool]]) -> list[dict[str, Any]]:
    """Spawn `world` ranks and return every rank's measurement of every case."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, cases, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in range(world * len(cases))]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"rank exited with {p.exitcode}")
    return sorted(results, key=lambda r: (r["stage"], r["precision"], r["offload"], r["rank"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--offload", action="store_true", help="also ZeRO-2/3 with CPU offload")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cases = [(s, p, False) for p in args.precision for s in args.stages]
    if args.offload:
        cases += [(s, p, True) for p in args.precision for s in (2, 3)]
    results = run(args.world_size, cases)
    from scaling.config.estimate import model_states

    for r in results:
        dev = "cpu" if r["offload"] else "none"
        gpu, off = model_states(r["params"], r["stage"], r["world_size"], r["precision"], dev, dev)
        r["estimate"] = sum(gpu.values()) + sum(off.values())
        r["ratio"] = r["measured"] / r["estimate"]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{'stage':>5} {'prec':>5} {'off':>4} {'rank':>4} {'measured':>10} {'estimate':>10} {'ratio':>6}")
    for r in results:
        print(
            f"{r['stage']:>5} {r['precision']:>5} {r['offload']!s:>4} {r['rank']:>4} "
            f"{r['measured']:>10,} {r['estimate']:>10,} {r['ratio']:>6.3f}"
        )


if __name__ == "__main__":
    main()
