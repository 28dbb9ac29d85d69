"""`scaling demo`: the whole product on a laptop-sized example, with nothing to download.

Trains a tiny GPT on text that ships with Python (pydoc's topic pages) on 2 CPU ranks through the real
deepspeed launcher (ZeRO-2, bf16), stops half-way, resumes, exports an HF model, generates a sample, then
quantizes the export with INC and prints the before/after report. Each stage is the same command a user
would type, run as a subprocess, and printed before it runs.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import click


def write_demo_corpus(path: Path) -> int:
    """pydoc's topic help (about 465 kB of English), one paragraph per document."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            text = " ".join(block.split())
            if len(text) > 40:
                paragraphs.append(text)
    path.write_text("\n".join(paragraphs) + "\n", encoding="utf-8")
    return len(paragraphs)


def _step(title: str, args: list[str]) -> None:
    click.secho(f"\n== {title}", bold=True)
    click.echo("$ " + shlex.join(["scaling", *args]))
    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "scaling", *args])
    if code != 0:
        raise click.ClickException(f"'{title}' failed with exit code {code}")
    click.echo(f"({time.perf_counter() - started:.0f} s)")


@click.command("demo")
@click.option("--output", default="demo-run", show_default=True, type=click.Path(file_okay=False))
@click.option("--num-gpus", default=2, show_default=True, type=click.IntRange(min=1), help="Ranks to start.")
@click.option("--steps", default=120, show_default=True, type=click.IntRange(min=4))
@click.option("--precision", default="bf16", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]))
@click.option(
    "--compress/--no-compress", default=True, show_default=True, help="Quantize the export with INC."
)
def demo(output: str, num_gpus: int, steps: int, precision: str, compress: bool) -> None:
    """Train -> checkpoint -> resume -> export -> generate -> compress, on bundled text."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    click.echo(f"corpus: {write_demo_corpus(corpus)} paragraphs of pydoc topics -> {corpus}")
    run_dir = out / "run"
    train = [
        "train", "--num-gpus", str(num_gpus), "--model", "tiny-gpt2", "--data", str(corpus),
        "--eval-data", str(corpus), "--output", str(run_dir), "--ds-config", "zero2", "--precision", precision,
        "--seq-len", "128", "--micro-batch", "8", "--lr", "3e-3", "--warmup-steps", str(max(1, steps // 10)),
        "--max-steps", str(steps), "--save-every", str(max(1, steps // 4)), "--log-every", "5",
        "--eval-batches", "4", "--vocab-size", "2048",
    ]  # fmt: skip
    _step("train (stops half-way, as a preempted job would)", [*train, "--halt-at-step", str(steps // 2)])
    _step("resume from the latest checkpoint and finish", [*train, "--resume", "auto"])
    _step("list checkpoints", ["checkpoint", "list", str(run_dir)])
    final = run_dir / "final"
    _generate(final)
    if compress:
        quantized = out / "final-int8"
        _step(
            "quantize the export (INC weight-only RTN int8) and compare",
            ["compress", "quantize", str(final), "--output", str(quantized), "--method", "rtn", "--bits", "8",
             "--group-size", "-1", "--eval-data", str(corpus), "--report", "--overwrite"],
        )  # fmt: skip
    click.secho(f"\ndone: run directory {run_dir}, HF model {final}", bold=True)


def _generate(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    click.secho("\n== generate with plain transformers from the export", bold=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = "The for statement is used to"
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(
        **inputs,
        max_new_tokens=30,
        do_sample=False,
        repetition_penalty=1.3,
        pad_token_id=tokenizer.pad_token_id,
    )
    click.echo(f"{prompt!r} -> {tokenizer.decode(output[0], skip_special_tokens=True)!r}")
