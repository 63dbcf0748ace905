"""Reading the staged public data sets and users' text files.

Data sets are read in place from ``$MATRYOSHKA_DATA`` or ``../shared/data`` (never copied).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from matryoshka.errors import MatryoshkaError


def data_dir() -> Path:
    """Root of the staged data sets: $MATRYOSHKA_DATA, else ../shared/data from here or from the repo."""
    if env := os.environ.get("MATRYOSHKA_DATA"):
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd().parent / "shared" / "data", repo_root.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise MatryoshkaError("no data directory: set MATRYOSHKA_DATA or place the data sets in ../shared/data")


def data_path(*parts: str) -> Path:
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise MatryoshkaError(f"missing data: {path} (set MATRYOSHKA_DATA to the data sets' root)")
    return path


@dataclass
class ScoredPairs:
    """Sentence pairs with a gold similarity score (STS style)."""

    first: list[str]
    second: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)


def load_stsb(split: str = "test") -> ScoredPairs:
    """STS benchmark split (train/dev/test): tab-separated, score in field 5, sentences in 6 and 7."""
    if split not in ("train", "dev", "test"):
        raise MatryoshkaError(f"unknown STS-B split {split!r}: use train, dev or test")
    pairs = ScoredPairs([], [], [])
    with data_path("stsb", f"sts-{split}.csv").open(encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            pairs.first.append(row[5])
            pairs.second.append(row[6])
            pairs.scores.append(float(row[4]))
    return pairs


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts from a file: JSONL with a ``field`` (``.jsonl``/``.json`` or a first line starting with '{'),
    else one text per non-empty line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise MatryoshkaError(f"cannot read {path}: {reason}") from exc
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise MatryoshkaError(f"{path} is empty: expected one text per line or JSONL with a {field!r} field")
    if path.suffix in (".jsonl", ".json") or lines[0].lstrip().startswith("{"):
        return [_jsonl_field(line, field, path, number) for number, line in enumerate(lines, 1)]
    return lines


def _jsonl_field(line: str, field: str, path: Path, number: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MatryoshkaError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise MatryoshkaError(f"{path}:{number}: no string field {field!r}")
    return record[field]
