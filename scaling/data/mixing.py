"""Source weights: the temperature rule at start, and the loss-driven update of dynamic mixing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scaling.errors import ConfigError, Problem


def temperature_weights(sizes: Sequence[float], temperature: float) -> list[float]:
    """p_i ∝ n_i^(1/T): T=1 keeps natural proportions, larger T flattens towards uniform."""
    if temperature <= 0:
        raise ConfigError([Problem("--mix-temperature", "must be > 0", temperature)])
    base = np.asarray(sizes, dtype=np.float64)
    scaled = np.power(base / base.max(), 1.0 / temperature)
    return (scaled / scaled.sum()).tolist()


def initial_weights(
    explicit: Sequence[float | None], sizes: Sequence[float], temperature: float, raws: Sequence[str]
) -> list[float]:
    given = [w is not None for w in explicit]
    if any(given) and not all(given):
        missing = [raw for raw, g in zip(raws, given, strict=True) if not g]
        raise ConfigError([Problem("--data", "give every source a weight (@w) or none", ", ".join(missing))])
    base = [float(w) for w in explicit] if all(given) else [float(s) for s in sizes]  # type: ignore[arg-type]
    return temperature_weights(base, temperature)


def dynamic_update(
    initial: Sequence[float], losses: Sequence[float], *, step_size: float, max_ratio: float
) -> list[float]:
    """Shift weight towards the sources with the highest loss, each within [p0/r, p0*r], then renormalise."""
    p0 = np.asarray(initial, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    raw = p0 * np.exp(step_size * (loss - loss.mean()))
    raw = raw / raw.sum()
    bounded = np.clip(raw, p0 / max_ratio, p0 * max_ratio)
    return (bounded / bounded.sum()).tolist()
