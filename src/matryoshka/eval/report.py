"""Writing a retention report: a rich terminal table, ``report.json``, ``report.md`` and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from matryoshka.eval.plots import write_plots

COLUMNS = (
    "series",
    "dim",
    "score",
    "retention %",
    "gap ratio",
    "f32 B",
    "int8 B",
    "bin B",
    "search ms/q",
    "flag",
)
SHORT_COLUMNS = ("dim", "score", "ret %", "gap", "f32 B", "i8 B", "bin B", "ms/q", "flag")
LEGEND = (
    "ret %: retention of the full-dim score; gap: related-minus-random cosine / full dim's; "
    "B: bytes per vector; ms/q: brute-force search time per query; flag: below a smaller dim"
)


def table_rows(report: dict) -> list[list[str]]:
    """One row of text cells per (series, dim), in the order of :data:`COLUMNS`."""
    rows = []
    for series in report["series"]:
        for row in series["rows"]:
            flag = f"< {row['below_smaller_dim']}d" if "below_smaller_dim" in row else ""
            sizes = row["bytes"]
            rows.append(
                [
                    series["name"],
                    str(row["dim"]),
                    f"{row['score']:.2f}",
                    f"{row['retention']:.1f}",
                    f"{row['gap_ratio']:.3f}",
                    str(sizes["float32"]),
                    str(sizes["int8"]),
                    str(sizes["binary"]),
                    f"{row['search_ms_per_query']:.4f}",
                    flag,
                ]
            )
    return rows


def title(report: dict) -> str:
    return f"{report['task']} ({report['task_size']}): {report['metric']} x100 per dimension"


def print_table(report: dict, console=None) -> None:
    """One rich table per series (so each fits an 80-column terminal), then the notes."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{title(report)}[/]")
    for series in report["series"]:
        table = Table(title=f"{series['name']} ({series['kind']})")
        for column in SHORT_COLUMNS:
            table.add_column(column, justify="right")
        for row in table_rows(report):
            if row[0] == series["name"]:
                table.add_row(*row[1:])
        console.print(table)
    console.print(LEGEND, style="dim")
    for note in report["notes"]:
        console.print(f"note: {note}")


def to_markdown(report: dict, heading_level: int = 2) -> str:
    """The report as markdown: a heading, the table and the notes (plots are linked by file name)."""
    lines = [f"{'#' * heading_level} {title(report)}", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    search = report["search"]
    lines += [
        "",
        f"Retention: % of the series' reference score (a model's own full-dim score; for a baseline, the "
        f"base model's). Gap ratio: (mean cosine of related pairs - random pairs) at dim / at full dim. "
        f"Search: brute-force top-{search['k']} of {search['queries']} queries over {search['corpus']} "
        f"vectors. Flag: scores below a smaller dim. Hardware: {report['hardware']}.",
    ]
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _clean(value):
    """JSON-safe: NaN becomes null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def to_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2)


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """``report.json``, ``report.md`` and (by default) the PNG plots, written into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(to_json(report) + "\n")
    (out_dir / "report.md").write_text(to_markdown(report))
    written = [out_dir / "report.json", out_dir / "report.md"]
    return written + (write_plots(report, out_dir) if plots else [])
