"""Ours vs `transformers.Trainer` with its DeepSpeed integration, the same DeepSpeed JSON, model, batch,
optimizer and learning rate, on two tasks, counting useful (non-pad) tokens:

- clm on tinyshakespeare: ours packs lines into full rows (`--packing --no-cross-doc-attention`: each line
  still sees only itself, positions restart); HF the usual recipe, each line padded to max length.
- seq-cls on SST-2: ours groups by length and pads each batch to its longest row; HF pads to max length
  (run_glue's default `pad_to_max_length`).

    python -m bench vs_hf_trainer [--steps-clm 120] [--steps-cls 120] [--eval-every 20] [--repeats 2]

transformers 5.24's Trainer does run DeepSpeed on CPU (accelerate's DeepSpeed plugin, gloo, `torch_adam`),
so both arms are DeepSpeed engines (ZeRO-2, fp32, one rank, one thread; one process, arms alternating).
HF's inputs are tokenized up front (its tokenization is not timed, ours is: it runs inside our stream).
Both arms are evaluated by the same function on the same held-out data (per-line LM loss on unseen lines;
SST-2 dev loss), every `--eval-every` steps, with evaluation time excluded from the training clock.
Reported: useful tokens/s ratio (steady state) and time-to-target ratio, where the target is the final eval
loss of the arm that ends worse (both reach it). Goal: >= 1.5x on each.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    SHAKESPEARE,
    SST2,
    alternate,
    fmt_ratio,
    paired_ratios,
    plot,
    run_ranks,
    summary,
    write_result,
)

GOAL = 1.5
SEQ, MICRO = 128, 8
GPT = {"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": SEQ, "vocab_size": 2000,
       "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # fmt: skip
BERT = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
        "num_attention_heads": 4, "max_position_embeddings": SEQ, "vocab_size": 2000,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # fmt: skip
TRAIN_LINES, EVAL_LINES = 30000, 400
LR = {"clm": "1e-3", "seq-cls": "2e-3"}  # the HF arm takes the lr from the same resolved JSON


def prepare(work: Path) -> dict[str, Any]:
    from scaling.data import DataConfig, build_tokenizer

    lines = [x for x in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if x.strip()]
    corpus = work / "train.txt"
    corpus.write_text("\n".join(lines[:TRAIN_LINES]) + "\n", encoding="utf-8")
    held = work / "heldout.txt"
    held.write_text("\n".join(lines[-EVAL_LINES:]) + "\n", encoding="utf-8")
    paths: dict[str, Any] = {"clm": {"train": str(corpus), "eval": str(held)}, "seq-cls": {}}
    for task, preset, data, shape in (
        ("clm", "tiny-gpt2", DataConfig(train=[str(corpus)]), GPT),
        ("seq-cls", "tiny-bert", DataConfig(train=[f"{SST2 / 'train.tsv'}:sentence"]), BERT),
    ):
        tok_dir = work / f"tok-{task}"
        build_tokenizer(preset, None, data, task=task, vocab_size=2000, save_dir=tok_dir).save_pretrained(
            tok_dir
        )
        model_dir = work / f"model-{task}"
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps(shape), encoding="utf-8")
        paths[task].update(tokenizer=str(tok_dir), model=str(model_dir))
    return paths


# -- the shared evaluation ---------------------------------------------------------------------------------


def eval_batches(task: str, paths: dict[str, Any], tokenizer: Any) -> list[dict[str, Any]]:
    import torch

    if task == "clm":
        texts = Path(paths["eval"]).read_text(encoding="utf-8").splitlines()
        labels = None
    else:
        rows = [x.split("\t") for x in (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
        texts, labels = [r[0] for r in rows], [int(r[1]) for r in rows]
    out = []
    for i in range(0, len(texts), 32):
        chunk = texts[i : i + 32]
        if task == "clm":
            ids = [
                [*tokenizer(t, add_special_tokens=False)["input_ids"][: SEQ - 1], tokenizer.eos_token_id]
                for t in chunk
            ]
        else:
            ids = tokenizer(chunk, truncation=True, max_length=SEQ)["input_ids"]
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        if task == "clm":
            lab = input_ids.masked_fill(mask == 0, -100)
        else:
            lab = torch.tensor(labels[i : i + 32])
        out.append({"input_ids": input_ids, "attention_mask": mask, "labels": lab})
    return out


def evaluate(model: Any, batches: list[dict[str, Any]], task: str) -> float:
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            loss = float(model(**b).loss)
            n = int((b["labels"][:, 1:] != -100).sum()) if task == "clm" else len(b["labels"])
            total += loss * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


# -- the arms ----------------------------------------------------------------------------------------------


def our_args(task: str, paths: dict[str, Any], out: Path, steps: int) -> list[str]:
    p = paths[task]
    common = ["--model", p["model"], "--tokenizer", p["tokenizer"], "--output", str(out), "--ds-config", "zero2",
              "--precision", "fp32", "--seq-len", str(SEQ), "--micro-batch", str(MICRO), "--lr", LR[task],
              "--max-steps", str(steps), "--log-every", "10", "--no-progress", "--no-tensorboard", "--no-export",
              "--seed", "0"]  # fmt: skip
    if task == "clm":
        return [*common, "--data", p["train"], "--packing", "--no-cross-doc-attention"]
    return [*common, "--task", "seq-cls", "--data", f"{SST2 / 'train.tsv'}:sentence"]


def arm_ours(task: str, paths: dict[str, Any], out: Path, steps: int, every: int) -> dict[str, Any]:
    from bench.trainer_overhead import _resolve
    from scaling.distributed import LaunchEnv
    from scaling.engine.trainer import Trainer

    env = LaunchEnv.from_environ()
    run = _resolve(our_args(task, paths, out, steps), env)
    state: dict[str, Any] = {"marks": [], "useful": [], "curve": [], "eval_time": 0.0}
    stream_pad: list[float] = []

    class Timed(Trainer):
        def train_step(self, step: int, window: Any, sigterm: Any) -> bool:
            if step == 0:
                state["batches"] = eval_batches(task, paths[task], self.tokenizer)
                state["t0"] = time.perf_counter()
            stop = super().train_step(step, window, sigterm)
            state["marks"].append(time.perf_counter() - state["eval_time"])
            state["useful"].append(window.last_tokens_local)
            if (step + 1) % every == 0:
                started = time.perf_counter()
                loss = evaluate(self.engine.module, state["batches"], task)
                state["curve"].append((state["marks"][-1] - state["t0"], loss))
                state["eval_time"] += time.perf_counter() - started
            return stop

    training = Timed(run, env)
    training.fit()
    stream_pad.append(training.stream.metrics()["data/pad_fraction"])
    return {**{k: state[k] for k in ("marks", "useful", "curve")}, "pad_fraction": stream_pad[0]}


def hf_dataset(task: str, paths: dict[str, Any], tokenizer: Any) -> Any:
    """What a typical HF script builds: every example padded to max_length."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if task == "clm":
        texts = [x for x in Path(paths["train"]).read_text(encoding="utf-8").splitlines() if x.strip()]
        enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=SEQ - 1)["input_ids"]
        ids = [[*x, tokenizer.eos_token_id] for x in enc]
        labels = None
    else:
        rows = [x.split("\t") for x in (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]]
        ids = tokenizer([r[0] for r in rows], truncation=True, max_length=SEQ)["input_ids"]
        labels = [int(r[1]) for r in rows]
    lengths = torch.tensor([len(x) for x in ids])
    input_ids = torch.full((len(ids), SEQ), pad, dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
    mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()

    class Padded(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(input_ids)

        def __getitem__(self, i: int) -> dict[str, Any]:
            lab = input_ids[i].masked_fill(mask[i] == 0, -100) if labels is None else torch.tensor(labels[i])
            return {"input_ids": input_ids[i], "attention_mask": mask[i], "labels": lab}

    return Padded()


def arm_hf(
    task: str, paths: dict[str, Any], out: Path, steps: int, every: int, ds_config: dict
) -> dict[str, Any]:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    p = paths[task]
    tokenizer = AutoTokenizer.from_pretrained(p["tokenizer"], local_files_only=True)
    data = hf_dataset(task, p, tokenizer)
    batches = eval_batches(task, p, tokenizer)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(p["model"])
    if task == "clm":
        model = AutoModelForCausalLM.from_config(config)
    else:
        config.num_labels = 2
        model = AutoModelForSequenceClassification.from_config(config)
    state: dict[str, Any] = {"marks": [], "useful": [], "curve": [], "eval_time": 0.0}
    useful = []  # non-pad (label-bearing) tokens per step, read from the batches the Trainer draws
    padded = []  # all tokens of those batches

    class Clock(TrainerCallback):
        def on_train_begin(self, args: Any, st: Any, control: Any, **kw: Any) -> None:
            state["t0"] = time.perf_counter()

        def on_step_end(self, args: Any, st: Any, control: Any, model: Any = None, **kw: Any) -> None:
            state["marks"].append(time.perf_counter() - state["eval_time"])
            if st.global_step % every == 0:
                started = time.perf_counter()
                loss = evaluate(model, batches, task)
                state["curve"].append((state["marks"][-1] - state["t0"], loss))
                state["eval_time"] += time.perf_counter() - started

    class Counting(Trainer):
        def compute_loss(self, model: Any, inputs: dict, *a: Any, **kw: Any) -> Any:
            useful.append(int(inputs["attention_mask"].sum()))
            padded.append(int(inputs["attention_mask"].numel()))
            return super().compute_loss(model, inputs, *a, **kw)

    opt = ds_config["optimizer"]["params"]
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=MICRO, max_steps=steps, learning_rate=opt["lr"],
        weight_decay=opt["weight_decay"], adam_beta1=opt["betas"][0], adam_beta2=opt["betas"][1],
        adam_epsilon=opt["eps"], max_grad_norm=ds_config.get("gradient_clipping", 1.0), warmup_steps=0,
        lr_scheduler_type="linear", deepspeed=copy.deepcopy(ds_config), report_to=[], use_cpu=True,
        logging_steps=10**9, save_strategy="no", disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Counting(model=model, args=args, train_dataset=data, callbacks=[Clock()])
    trainer.train()
    state["useful"] = useful
    state["pad_fraction"] = 1 - sum(useful) / max(sum(padded), 1)
    engine = trainer.model_wrapped
    if hasattr(engine, "destroy"):
        engine.destroy()
    return {k: state[k] for k in ("marks", "useful", "curve", "pad_fraction")}


def rank_main(
    paths: dict[str, Any], work: str, steps: dict[str, int], repeats: int, every: int
) -> dict[str, Any]:
    from bench.common import init_group
    from bench.trainer_overhead import _resolve
    from scaling.engine import dist as dist_setup

    env = init_group()
    runs = []
    try:
        for task in ("clm", "seq-cls"):
            # The exact DeepSpeed JSON our run resolves, handed to the HF Trainer as its `deepspeed` config.
            ds_config = _resolve(
                our_args(task, paths, Path(work) / f"resolve-{task}", steps[task]), env
            ).deepspeed
            for i, arm in alternate(["ours", "hf"], repeats):
                out = Path(work) / f"{task}-{arm}-{i}"
                if arm == "ours":
                    result = arm_ours(task, paths, out, steps[task], every)
                else:
                    result = arm_hf(task, paths, out, steps[task], every, ds_config)
                runs.append({"task": task, "arm": arm, "round": i, **result})
    finally:
        dist_setup.teardown()
    return {"runs": runs}


def _useful_rate(run: dict[str, Any], warmup: int) -> float:
    marks, useful = run["marks"], run["useful"]
    if len(marks) <= warmup + 1:
        return float("nan")
    return sum(useful[warmup + 1 :]) / (marks[-1] - marks[warmup])


def _time_to(curve: list[tuple[float, float]], target: float) -> float:
    for t, loss in curve:
        if loss <= target:
            return t
    return float("inf")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench vs_hf_trainer")
    parser.add_argument("--steps-clm", type=int, default=120)
    parser.add_argument("--steps-cls", type=int, default=240)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    steps = {"clm": args.steps_clm, "seq-cls": args.steps_cls}
    with tempfile.TemporaryDirectory(prefix="bench-vs-hf-") as tmp:
        paths = prepare(Path(tmp))
        result = run_ranks(rank_main, 1, paths, tmp, steps, args.repeats, args.eval_every)[0]
    tasks: dict[str, Any] = {}
    for task in ("clm", "seq-cls"):
        by = {
            a: sorted(
                (r for r in result["runs"] if r["task"] == task and r["arm"] == a), key=lambda r: r["round"]
            )
            for a in ("ours", "hf")
        }
        rate = {a: [_useful_rate(r, args.warmup) for r in by[a]] for a in by}
        finals = [r["curve"][-1][1] for a in by for r in by[a] if r["curve"]]
        target = max(finals)
        ttt = {a: [_time_to(r["curve"], target) for r in by[a]] for a in by}
        pad = {a: summary([r["pad_fraction"] for r in by[a]]) for a in by}
        ratio = paired_ratios(rate["ours"], rate["hf"])
        ratio_ttt = paired_ratios(ttt["hf"], ttt["ours"])
        tasks[task] = {
            "useful_tokens_per_s": {a: summary(v) for a, v in rate.items()},
            "ratio_useful_tokens_per_s": ratio,
            "pad_fraction_of_batch_tokens": pad,
            "target_eval_loss": target,
            "time_to_target_s": {a: summary(v) for a, v in ttt.items()},
            "ratio_time_to_target": ratio_ttt,
            "final_eval_loss": {a: summary([r["curve"][-1][1] for r in by[a]]) for a in by},
            "curves": {a: [r["curve"] for r in by[a]] for a in by},
            "met": ratio["median"] >= GOAL and ratio_ttt["median"] >= GOAL,
        }
    payload = {
        "goal": f"useful tokens/s and time-to-target-loss ours/HF >= {GOAL}x",
        "setup": {
            "hf_trainer": "transformers.Trainer + DeepSpeed (accelerate plugin) on CPU/gloo, same resolved JSON",
            "zero": 2,
            "ranks": 1,
            "threads": 1,
            "precision": "fp32",
            "seq_len": SEQ,
            "micro_batch": MICRO,
            "steps": steps,
            "eval_every": args.eval_every,
            "repeats": args.repeats,
            "clm_model": GPT,
            "seq_cls_model": BERT,
            "note": "tokens/s ratio pad-insensitive arms would be ~1.0: the gain is the padding HF computes on",
        },
        "tasks": tasks,
        "met": all(t["met"] for t in tasks.values()),
    }
    write_result("vs_hf_trainer", payload)

    def draw(ax: Any) -> None:
        styles = {"ours": "-", "hf": "--"}
        for task, color in (("clm", "tab:blue"), ("seq-cls", "tab:orange")):
            for arm in ("ours", "hf"):
                curve = tasks[task]["curves"][arm][0] if tasks[task]["curves"][arm] else []
                if curve:
                    ax.plot([c[0] for c in curve], [c[1] for c in curve], styles[arm], color=color,
                            label=f"{task} {arm}")  # fmt: skip
        ax.set_xlabel("training seconds (eval excluded)")
        ax.set_ylabel("held-out loss")
        ax.set_title("scaling train vs HF Trainer (+DeepSpeed), first round")
        ax.legend()

    plot("vs_hf_trainer", draw)
    for task, t in tasks.items():
        print(f"{task}: useful tok/s ours/hf {fmt_ratio(t['ratio_useful_tokens_per_s'])}  "
              f"time-to-target hf/ours {fmt_ratio(t['ratio_time_to_target'])}")  # fmt: skip
    return payload


if __name__ == "__main__":
    main()
