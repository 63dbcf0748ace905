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


@dataclass
class BeirData:
    """A BEIR-format retrieval set: corpus, test queries and graded qrels (all ids are strings)."""

    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


def load_beir(directory: str | Path, split: str = "test") -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``; a document's text is its
    title and text joined by a space (as BEIR encodes it). Only queries with qrels are kept."""
    directory = Path(directory)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (directory / name).is_file():
            raise MatryoshkaError(f"{directory} is not a BEIR data set: missing {name}")
    qrels: dict[str, dict[str, int]] = {}
    with (directory / "qrels" / f"{split}.tsv").open(encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), 1):
            if number == 1 and row and not row[-1].lstrip("-").isdigit():
                continue  # header
            if len(row) < 3 or not row[2].lstrip("-").isdigit():
                raise MatryoshkaError(
                    f"{directory}/qrels/{split}.tsv:{number}: expected query-id, corpus-id, score"
                )
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    corpus = _read_records(directory / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in _read_records(directory / "queries.jsonl") if q["_id"] in qrels}
    return BeirData(
        doc_ids=[doc["_id"] for doc in corpus],
        doc_texts=[f"{doc.get('title') or ''} {doc['text']}".strip() for doc in corpus],
        query_ids=list(queries),
        query_texts=list(queries.values()),
        qrels={qid: qrels[qid] for qid in queries},
    )


def _read_records(path: Path) -> list[dict]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise MatryoshkaError(f"{path} is empty")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("_id"), str) or "text" not in record:
            raise MatryoshkaError(f"{path}:{number}: expected a JSON object with string '_id' and 'text'")
        records.append(record)
    return records


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
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise MatryoshkaError(f"{path}:{number}: not valid JSON ({reason})") from exc
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise MatryoshkaError(f"{path}:{number}: no string field {field!r}")
    text = record[field]
    surrogate = lone_surrogate(text)
    if surrogate is not None:
        raise MatryoshkaError(
            f"{path}:{number}: field {field!r} is not valid Unicode: lone surrogate "
            f"U+{ord(text[surrogate]):04X} at character {surrogate} (\\uD800-\\uDFFF escapes must pair up)"
        )
    return text


def lone_surrogate(text: str) -> int | None:
    """Position of the first unpaired surrogate in ``text``, or None.

    JSON's ``\\ud800`` escapes decode to such characters, which no tokenizer or UTF-8 writer accepts,
    so readers of JSON text refuse them where they enter.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


FLICKR_DIR = "flickr8k_caption_pairs"


def flickr_captions(split: str = "heldout") -> dict[str, list[str]]:
    """Each Flickr8k image's distinct captions, in caption order, for the images of ``split``.

    ``split`` is ``train`` (the 6,000 images of the standard train list) or ``heldout`` (the other
    2,092: the standard dev and test images together; their separate lists are not staged). Read from
    ``pairs.tsv``, whose captions are cleaned (whitespace collapsed, trailing " ." removed).
    """
    if split not in ("train", "heldout"):
        raise MatryoshkaError(f"unknown Flickr8k split {split!r}: use train or heldout")
    captions: dict[str, dict[str, None]] = {}
    path = data_path(FLICKR_DIR, "pairs.tsv")
    with path.open(encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle, delimiter="\t"), 2):
            if not {"anchor", "positive", "image_id", "split"} <= row.keys() or None in row.values():
                raise MatryoshkaError(f"{path}:{number}: expected anchor, positive, image_id, split")
            if row["split"] == split:
                image = captions.setdefault(row["image_id"], {})
                image.setdefault(row["anchor"])
                image.setdefault(row["positive"])
    return {image: list(texts) for image, texts in captions.items()}


def load_flickr_retrieval(split: str = "heldout") -> BeirData:
    """Caption-to-caption retrieval on Flickr8k images: each image's first caption is a query, the
    other captions of every image of the split are the corpus, and a query's relevant documents are
    the other captions of its own image (relevance 1). No query text is in the corpus."""
    doc_ids, doc_texts, query_ids, query_texts, qrels = [], [], [], [], {}
    for image, texts in flickr_captions(split).items():
        if len(texts) < 2:
            continue
        query_ids.append(f"{image}#0")
        query_texts.append(texts[0])
        ids = [f"{image}#{n}" for n in range(1, len(texts))]
        doc_ids.extend(ids)
        doc_texts.extend(texts[1:])
        qrels[f"{image}#0"] = dict.fromkeys(ids, 1)
    return BeirData(doc_ids, doc_texts, query_ids, query_texts, qrels)
