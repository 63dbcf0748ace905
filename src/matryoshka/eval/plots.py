"""PNG plots of a retention report: quality and retention vs dim, quality vs bytes, similarity gap.

Uses matplotlib's Agg backend, so plots render on machines without a display.
"""

from __future__ import annotations

from pathlib import Path

PLOT_FILES = ("quality_vs_dim.png", "retention_vs_dim.png", "quality_vs_bytes.png", "similarity_gap.png")


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both fewer bytes and higher score, by bytes."""
    front, best = [], float("-inf")
    for size, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if score > best:
            front.append((size, score))
            best = score
    return front


def _dim_axis(axes, dims: list[int]) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(dims))
    axes.set_xticklabels([str(d) for d in sorted(dims)])
    axes.set_xlabel("dimension (log 2)")
    axes.grid(True, alpha=0.3)


def write_plots(report: dict, out_dir: str | Path) -> list[Path]:
    """Write the four plots of ``report`` into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    title, metric, dims = report["task"], report["metric"], report["dims"]
    written = []

    def per_dim(key: str, ylabel: str, filename: str, suffix: str) -> None:
        figure, axes = plt.subplots(figsize=(6.4, 4.2))
        for series in report["series"]:
            rows = series["rows"]
            style = "-o" if series["kind"] == "model" else "--s"
            axes.plot([r["dim"] for r in rows], [r[key] for r in rows], style, label=series["name"])
        _dim_axis(axes, dims)
        axes.set_ylabel(ylabel)
        axes.set_title(f"{title}: {suffix}")
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out_dir / filename, dpi=110)
        plt.close(figure)
        written.append(out_dir / filename)

    per_dim("score", f"{metric} (x100)", PLOT_FILES[0], f"{metric} vs dimension")
    per_dim("retention", "% of full-dim score", PLOT_FILES[1], "retention vs dimension")

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    points = []
    for series in report["series"]:
        sizes = [r["bytes"]["float32"] for r in series["rows"]]
        scores = [r["score"] for r in series["rows"]]
        points += zip(sizes, scores, strict=True)
        axes.plot(sizes, scores, "o", label=series["name"], alpha=0.8)
    front = _pareto(points)
    axes.step([p[0] for p in front], [p[1] for p in front], "k-", where="post", lw=1, label="Pareto front")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("bytes per vector (float32, log 2)")
    axes.set_ylabel(f"{metric} (x100)")
    axes.set_title(f"{title}: quality vs memory")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out_dir / PLOT_FILES[2], dpi=110)
    plt.close(figure)
    written.append(out_dir / PLOT_FILES[2])

    per_dim("gap_ratio", "related - random cosine, / full dim", PLOT_FILES[3], "similarity gap vs dimension")
    return written
