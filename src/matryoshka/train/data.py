"""Training data formats, read into the columns sentence-transformers' trainer expects.

* ``stsb``: STS-style scored pairs, tab-separated, score (0-5) in column 5, sentences in 6 and 7
  (extra trailing columns are ignored). Scores are scaled to [0, 1]. Columns: sentence1, sentence2, score.
* ``pairs``: (anchor, positive[, negative]) as TSV (a header naming ``anchor``/``positive``
  [/``negative``] columns, or 2-3 unnamed columns) or JSONL records with those keys. A ``split``
  column (as in the Flickr8k caption pairs) keeps only the rows of the requested split.
* ``beir``: a BEIR directory; train queries (``queries_train.jsonl``, else ``queries.jsonl``) and
  ``qrels/train.tsv`` become (query, passage) pairs for every relevant document.

Every problem (missing columns, an empty file, a bad score, an unknown format) is a MatryoshkaError.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from matryoshka.datasets import load_beir
from matryoshka.errors import MatryoshkaError

FORMATS = ("stsb", "pairs", "beir")
STS_MAX_SCORE = 5.0


@dataclass
class TrainingData:
    """Named text columns (in order) and, for scored pairs, a ``score`` column."""

    columns: dict[str, list]
    kind: str  # "scored" or "pairs"
    source: str
    info: dict = field(default_factory=dict)
    corpus: list[str] | None = None  # a BEIR corpus: every document, relevant to a training query or not

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def texts(self) -> list[str]:
        """Every distinct text, in first-seen order (e.g. to fit a PCA on)."""
        columns = [v for k, v in self.columns.items() if k != "score"]
        return list(dict.fromkeys(text for column in columns for text in column))

    def head(self, limit: int | None) -> TrainingData:
        if not limit or limit >= len(self):
            return self
        columns = {name: values[:limit] for name, values in self.columns.items()}
        return TrainingData(columns, self.kind, self.source, {**self.info, "limit": limit}, self.corpus)

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict(self.columns)


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "beir" if (path / "qrels").is_dir() else "stsb"
    if path.name.startswith("sts-") and path.suffix == ".csv":
        return "stsb"
    if path.suffix in (".tsv", ".jsonl", ".json", ".txt"):
        return "pairs"
    raise MatryoshkaError(f"cannot tell the format of {path}: pass --format {'|'.join(FORMATS)}")


def load_training_data(path: str | Path, fmt: str | None = None, split: str = "train") -> TrainingData:
    """Read ``path`` in ``fmt`` (detected from the path when None)."""
    path = Path(path)
    if not path.exists():
        raise MatryoshkaError(f"no such data file or directory: {path}")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise MatryoshkaError(f"unknown data format {fmt!r}: use {', '.join(FORMATS)}")
    if fmt == "stsb":
        return read_sts(path / f"sts-{split}.csv" if path.is_dir() else path)
    if fmt == "beir":
        return read_beir_pairs(path, split)
    return read_pairs(path, split)


def _lines(path: Path) -> list[str]:
    if path.is_dir():
        raise MatryoshkaError(f"{path} is a directory: expected a data file")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise MatryoshkaError(f"cannot read {path}: {exc}") from exc
    if not lines:
        raise MatryoshkaError(f"{path} is empty: no training examples")
    return lines


def read_sts(path: Path) -> TrainingData:
    """STS-B style: score in column 5, sentences in 6 and 7 (1-based), tab-separated."""
    first, second, scores = [], [], []
    for number, row in enumerate(csv.reader(_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE), 1):
        if len(row) < 7:
            raise MatryoshkaError(
                f"{path}:{number}: expected at least 7 tab-separated columns (score in 5, sentences in 6 "
                f"and 7), got {len(row)}"
            )
        try:
            score = float(row[4])
        except ValueError:
            raise MatryoshkaError(f"{path}:{number}: score {row[4]!r} is not a number") from None
        if not 0 <= score <= STS_MAX_SCORE:
            raise MatryoshkaError(f"{path}:{number}: score {score} is outside 0..{STS_MAX_SCORE:g}")
        first.append(row[5])
        second.append(row[6])
        scores.append(score / STS_MAX_SCORE)
    return TrainingData({"sentence1": first, "sentence2": second, "score": scores}, "scored", str(path))


def read_pairs(path: Path, split: str = "train") -> TrainingData:
    """(anchor, positive[, negative]) from TSV or JSONL."""
    lines = _lines(path)
    if path.suffix in (".jsonl", ".json") or lines[0].lstrip().startswith("{"):
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MatryoshkaError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise MatryoshkaError(f"{path}:{number}: expected a JSON object")
            records.append((number, record))
        header = [k for k in ("anchor", "positive", "negative", "split") if k in records[0][1]]
        rows = [(n, [r.get(k) for k in header]) for n, r in records]
    else:
        table = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
        if {"anchor", "positive"} & set(table[0]):
            header, rows = table[0], list(enumerate(table[1:], 2))
        elif len(table[0]) in (2, 3):
            header, rows = ["anchor", "positive", "negative"][: len(table[0])], list(enumerate(table, 1))
        else:
            raise MatryoshkaError(
                f"{path}: expected a header with 'anchor' and 'positive' columns, "
                "or 2-3 tab-separated columns"
            )
    for name in ("anchor", "positive"):
        if name not in header:
            raise MatryoshkaError(f"{path}: missing column {name!r} (found: {', '.join(header) or 'none'})")
    names = [n for n in ("anchor", "positive", "negative") if n in header]
    split_at = header.index("split") if "split" in header else None
    columns: dict[str, list] = {name: [] for name in names}
    for number, row in rows:
        if split_at is not None and split_at < len(row) and row[split_at] != split:
            continue
        for name in names:
            index = header.index(name)
            value = row[index] if index < len(row) else None
            if not isinstance(value, str) or not value.strip():
                raise MatryoshkaError(f"{path}:{number}: missing or empty {name!r}")
            columns[name].append(value)
    if not columns["anchor"]:
        raise MatryoshkaError(f"{path}: no rows" + (f" in split {split!r}" if split_at is not None else ""))
    return TrainingData(columns, "pairs", str(path), {"split": split} if split_at is not None else {})


def read_beir_pairs(directory: Path, split: str = "train") -> TrainingData:
    """(query, relevant passage) pairs from a BEIR directory's ``split`` queries and qrels."""
    queries_file = directory / f"queries_{split}.jsonl"
    beir = load_beir(directory, split) if not queries_file.exists() else _beir_with_queries(directory, split)
    texts = dict(zip(beir.doc_ids, beir.doc_texts, strict=True))
    anchors, positives = [], []
    for query_id, query_text in zip(beir.query_ids, beir.query_texts, strict=True):
        for doc_id, relevance in beir.qrels[query_id].items():
            if relevance > 0 and doc_id in texts:
                anchors.append(query_text)
                positives.append(texts[doc_id])
    if not anchors:
        raise MatryoshkaError(f"{directory}: no (query, relevant document) pairs in the {split} qrels")
    columns = {"anchor": anchors, "positive": positives}
    return TrainingData(columns, "pairs", str(directory), {"split": split}, list(beir.doc_texts))


def _beir_with_queries(directory: Path, split: str):
    """load_beir reads ``queries.jsonl``; here the split has its own queries file."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as staging:
        root = Path(staging)
        (root / "qrels").mkdir()
        (root / "corpus.jsonl").symlink_to((directory / "corpus.jsonl").resolve())
        (root / "queries.jsonl").symlink_to((directory / f"queries_{split}.jsonl").resolve())
        shutil.copy(directory / "qrels" / f"{split}.tsv", root / "qrels" / f"{split}.tsv")
        return load_beir(root, split)
