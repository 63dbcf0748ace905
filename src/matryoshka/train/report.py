"""The training report: per-dim loss and dev-score curves as JSON and a PNG next to the model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def curves(log_history: list[dict], prefix: str) -> dict[str, list[tuple[float, float]]]:
    """``{key: [(epoch, value), ...]}`` for every logged key starting with ``prefix``."""
    found: dict[str, list[tuple[float, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key.startswith(prefix) and isinstance(value, int | float):
                found.setdefault(key, []).append((float(entry.get("epoch", 0.0)), float(value)))
    return found


def write_report(
    out: Path,
    log_history: list[dict],
    dims: Sequence[int],
    seconds: float,
    steps: int,
    steps_run: int,
    metadata: dict,
) -> dict:
    """Write ``report.json`` and ``report.png`` (loss and dev score per dim over epochs) into ``out``."""
    losses = curves(log_history, "loss_")
    dev = curves(log_history, "eval_dev_")
    report = {
        "dims": list(dims),
        "steps": steps,
        "steps_this_run": steps_run,  # fewer than steps after --resume
        "train_seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / steps_run, 4) if steps_run else None,
        "loss_per_dim": losses,
        "dev_per_dim": dev,
        "final_dev": {key: values[-1][1] for key, values in dev.items()},
        "metadata": metadata,
        "log_history": log_history,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _plot(out / "report.png", losses, dev)
    return report


def _plot(path: Path, losses: dict, dev: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, points in losses.items():
        left.plot(*zip(*points, strict=True), label=key.removeprefix("loss_"))
    left.set(title="training loss per dim", xlabel="epoch", ylabel="loss")
    for key, points in dev.items():
        right.plot(*zip(*points, strict=True), marker="o", label=key.split("_")[-1])
    right.set(title="dev score per dim" if dev else "dev score per dim (no dev set)", xlabel="epoch")
    for axis in (left, right):
        if axis.lines:
            axis.legend(title="dim", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
