"""Comparison of models: a markdown table, JSON, and a PNG of size vs quality and latency vs quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaling.compress.config import EvalConfig
from scaling.compress.errors import CompressUserError

QUALITY_KEYS = ("perplexity", "accuracy")


def quality_key(rows: list[dict[str, Any]]) -> str | None:
    for key in QUALITY_KEYS:
        if all(key in r for r in rows):
            return key
    return None


def display_names(models: list[str]) -> list[str]:
    """Short labels that still tell the models apart: the directory name, with parents added only where names
    collide (`teacher/final` and `student/final` rather than `final` twice)."""
    parts = [Path(m).parts for m in models]
    depth = [1] * len(parts)

    def label(i: int) -> str:
        return "/".join(parts[i][-depth[i] :])

    while True:
        names = [label(i) for i in range(len(parts))]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            return names
        for i in clashing:
            depth[i] += 1


def evaluate_all(paths: list[Path], cfg: EvalConfig) -> list[dict[str, Any]]:
    from scaling.compress.evaluate import evaluate_path

    return [evaluate_path(p, cfg) for p in paths]


def markdown(rows: list[dict[str, Any]]) -> str:
    """Table relative to the first row (the baseline)."""
    q = quality_key(rows)
    base = rows[0]
    head = ["model", "method", "size MB", "size ×", "params", "nonzero"]
    if q:
        head += [q, f"Δ {q}"]
    timed = all("latency_ms" in r for r in rows)
    if timed:
        head += ["latency ms: median [min, max]", "latency ×", "tokens/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, name in zip(rows, display_names([r["model"] for r in rows]), strict=True):
        cells = [
            name,
            str(r.get("method", "float")),
            f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['size_bytes'] / max(base['size_bytes'], 1):.3f}",
            f"{r.get('parameters', 0):,}",
            f"{r['nonzero_parameters']:,}" if "nonzero_parameters" in r else "–",
        ]
        if q:
            cells += [f"{r[q]:.4f}", f"{(r[q] - base[q]) / base[q]:+.2%}"]
        if timed:
            cells += [latency_cell(r), speed_ratio(r, base), f"{r['throughput_tokens_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    settings = base.get("settings", {})
    if timed:
        how = (
            f" of {settings.get('runs')} runs after {settings.get('warmup')} warm-up, batch "
            f"{settings.get('batch_size')} × {settings.get('seq_len')} tokens, CPU, "
            f"{base.get('threads', '?')} thread(s)"
            if settings
            else ""
        )
        lines += [
            "",
            f"Latency: median [min, max]{how}. A ratio marked `~` is inside the noise: the two models' "
            "[min, max] ranges overlap, so this host cannot tell them apart (rerun with more --runs).",
        ]
    return "\n".join(lines) + "\n"


def latency_cell(row: dict[str, Any]) -> str:
    if "latency_min_ms" not in row:  # a report written before ranges were measured
        return f"{row['latency_ms']:.1f}"
    return f"{row['latency_ms']:.1f} [{row['latency_min_ms']:.1f}, {row['latency_max_ms']:.1f}]"


def within_noise(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether two latency measurements overlap (min..max), i.e. their difference is not measurable here."""
    lo, hi = row.get("latency_min_ms", row["latency_ms"]), row.get("latency_max_ms", row["latency_ms"])
    base_lo = base.get("latency_min_ms", base["latency_ms"])
    base_hi = base.get("latency_max_ms", base["latency_ms"])
    return lo <= base_hi and base_lo <= hi


def speed_ratio(row: dict[str, Any], base: dict[str, Any]) -> str:
    """Median latency relative to the baseline; `~` when the difference is inside the noise."""
    if row is base:
        return "1.00"
    ratio = row["latency_ms"] / max(base["latency_ms"], 1e-9)
    return f"~{ratio:.2f}" if within_noise(row, base) else f"{ratio:.2f}"


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Two scatter plots; returns False (and writes nothing) when there is no quality metric."""
    q = quality_key(rows)
    if q is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_latency = all("latency_ms" in r for r in rows)
    fig, axes = plt.subplots(
        1, 2 if have_latency else 1, figsize=(11 if have_latency else 6, 4.5), squeeze=False
    )
    panels = [("size_bytes", "on-disk weights (MB)", 1e-6)]
    if have_latency:
        panels.append(("latency_ms", "CPU latency (ms)", 1.0))
    names = display_names([r["model"] for r in rows])
    for ax, (key, label, scale) in zip(axes[0], panels, strict=True):
        for r, name in zip(rows, names, strict=True):
            x = r[key] * scale
            ax.scatter([x], [r[q]])
            ax.annotate(name, (x, r[q]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(q + (" (lower is better)" if q == "perplexity" else " (higher is better)"))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """report.md, report.json and (with a quality metric) report.png in out_dir."""
    if not rows:
        raise CompressUserError("nothing to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out_dir / "report.md", "json": out_dir / "report.json"}
    files["markdown"].write_text(markdown(rows))
    files["json"].write_text(json.dumps(rows, indent=2, default=str) + "\n")
    if plot(rows, out_dir / "report.png"):
        files["png"] = out_dir / "report.png"
    return files
