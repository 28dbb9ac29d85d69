"""OUTPUT/plots/loss.png: train and eval loss against the step, with the learning rate below, drawn from
metrics.jsonl (at the end of every run on rank 0, and by `scaling plot RUN`)."""

from __future__ import annotations

import math
from pathlib import Path

from scaling.errors import UserError

PLOTS_DIR = "plots"
LOSS_PLOT = "loss.png"


def plot_run(run_dir: Path) -> Path | None:
    """Draw the run's loss plot; None when metrics.jsonl holds no train loss yet."""
    from scaling.engine.metrics import read_metrics

    records = read_metrics(run_dir)
    train = [(r["step"], r["loss"]) for r in records if _finite(r.get("loss"))]
    evals = [(r["step"], r["eval_loss"]) for r in records if _finite(r.get("eval_loss"))]
    lrs = [(r["step"], r["lr"]) for r in records if _finite(r.get("lr"))]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit imported on a cluster node
    import matplotlib.pyplot as plt

    fig, (loss_ax, lr_ax) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    if train:
        loss_ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if evals:
        loss_ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", markersize=4)
        best_step, best = min(evals, key=lambda point: point[1])
        loss_ax.annotate(
            f"best {best:.4f} @ {best_step}",
            (best_step, best),
            fontsize=8,
            xytext=(4, 8),
            textcoords="offset points",
        )
    loss_ax.set_ylabel("loss")
    loss_ax.set_title(Path(run_dir).resolve().name)
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()
    if lrs:
        lr_ax.plot(*zip(*lrs, strict=True), color="tab:green", linewidth=1.0)
    lr_ax.set_ylabel("lr")
    lr_ax.set_xlabel("step")
    lr_ax.grid(alpha=0.3)
    fig.tight_layout()
    target = Path(run_dir) / PLOTS_DIR / LOSS_PLOT
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(target)
    return target


def plot_command_target(run_dir: Path) -> Path:
    """`scaling plot RUN`: the plot's path, or a UserError saying why there is none."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (expected a run directory of scaling train)")
    target = plot_run(Path(run_dir))
    if target is None:
        raise UserError(f"{run_dir}/metrics.jsonl holds no loss records yet")
    return target


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
