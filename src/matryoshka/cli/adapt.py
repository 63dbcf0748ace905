"""`matryoshka adapt`: fit a post-hoc adapter on a corpus (or any provider's vectors) and apply it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from matryoshka.cli._common import parse_dims, user_errors
from matryoshka.errors import MatryoshkaError

adapt = typer.Typer(
    help="Post-hoc Matryoshka adapters: make existing embeddings nest without retraining the encoder.",
    no_args_is_help=True,
)


def load_npy(path: Path, what: str = "vectors") -> np.ndarray:
    """A 2-D array from a ``.npy`` file, or a clear error."""
    from matryoshka.adapter import check_vectors

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MatryoshkaError(f"cannot read {what} from {path}: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise MatryoshkaError(f"{path} is not a .npy array")
    return check_vectors(array, what=f"{what} in {path}")


def read_corpus_texts(path: Path, field: str = "text", title_field: str | None = "title") -> list[str]:
    """The texts of ``path`` (as ``encode``/``index`` read them, ``field`` of each JSONL record); a
    record's non-empty ``title_field`` goes first, joined by a space, as BEIR builds a document's text
    (``matryoshka.datasets.load_beir``), so a BEIR corpus keeps its titles."""
    import json

    from matryoshka.datasets import read_texts

    texts = read_texts(path, field)
    if title_field is None:
        return texts
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not (path.suffix in (".jsonl", ".json") or lines[0].lstrip().startswith("{")):
        return texts  # plain text lines: no titles
    titles = [json.loads(line).get(title_field) for line in lines]
    return [
        f"{title} {text}".strip() if isinstance(title, str) and title.strip() else text
        for title, text in zip(titles, texts, strict=True)
    ]


def read_pairs(path: Path) -> tuple[list[str], list[str]]:
    """(query, positive) text pairs: one tab-separated pair per line (a header 'anchor/query' is skipped)."""
    from matryoshka.datasets import read_texts

    first, second = [], []
    for number, line in enumerate(read_texts(path), 1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise MatryoshkaError(f"{path}:{number}: expected a query and a positive separated by a tab")
        if number == 1 and fields[0].lower() in ("anchor", "query"):
            continue
        first.append(fields[0])
        second.append(fields[1])
    return first, second


@adapt.command()
@user_errors
def fit(
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write matryoshka-adapter.npz into."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model that encodes --corpus."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Texts (one per line, or JSONL)."),
    field: str = typer.Option("text", "--field", help="JSONL field holding the text."),
    title_field: str = typer.Option(
        "title", "--title-field", help="JSONL field put before the text (BEIR titles); '' for none."
    ),
    vectors: Path | None = typer.Option(None, "--vectors", help="A .npy of full-dim vectors (any provider)."),
    pairs: Path | None = typer.Option(
        None, "--pairs", help="(query, positive) pairs: TSV texts with --corpus, .npz with --vectors."
    ),
    dims: str = typer.Option("384,256,128,64,32,16,8", "--dims", help="Prefix dims to optimise."),
    kind: str = typer.Option("linear", "--kind", help="linear, mlp, pca or select."),
    pseudo_queries: bool = typer.Option(
        True, "--pseudo-queries/--no-pseudo-queries", help="Use corpus sentences as query-like anchors."
    ),
    source: str | None = typer.Option(None, "--source", help="Provider/model name of --vectors."),
    epochs: float = typer.Option(10.0, "--epochs", min=0.01),
    threads: int = typer.Option(1, "--threads", min=1),
    holdout: float = typer.Option(
        0.1, "--holdout", min=0.0, max=0.5, help="Share of the vectors held out to choose the map (0: none)."
    ),
) -> None:
    """Fit an adapter so that prefixes of the adapted vectors keep the full-dim neighbours.

    A linear/mlp fit is affine: it centres the vectors on the fitting mean (queries alike), then
    rotates. It holds out part of the vectors and keeps whichever of the trained map and its start,
    centred PCA, keeps most of the held-out rows' centred full-dim neighbours (printed, and saved in the
    adapter's metadata)."""
    from matryoshka.adapter import KINDS
    from matryoshka.train.adapter import fit_adapter, sentence_sources

    if kind not in KINDS:
        raise MatryoshkaError(f"unknown adapter kind {kind!r}: use one of {', '.join(KINDS)}")
    if (corpus is None) == (vectors is None):
        raise MatryoshkaError("give either --corpus (with --model) or --vectors")
    query_vectors = pair_vectors = sources = None
    if corpus is not None:
        from matryoshka.encoder import Encoder

        encoder = Encoder(model, show_progress=True, adapter=False)
        texts = read_corpus_texts(corpus, field, title_field or None)
        full = encoder.encode_full(texts)
        if pseudo_queries and kind in ("linear", "mlp", "select"):
            sentences, sources = sentence_sources(texts)
            query_vectors = encoder.encode_full(sentences) if sentences else None
        if pairs is not None:
            first, second = read_pairs(pairs)
            pair_vectors = (encoder.encode_full(first), encoder.encode_full(second))
        origin = {"model": encoder.info.name, "fingerprint": encoder.info.fingerprint}
    else:
        full = load_npy(vectors)
        if pairs is not None:
            with np.load(pairs, allow_pickle=False) as data:
                if not {"queries", "positives"} <= set(data.files):
                    raise MatryoshkaError(f"{pairs} must be an .npz with arrays 'queries' and 'positives'")
                pair_vectors = (data["queries"], data["positives"])
        origin = {"provider": source or "unknown", "file": vectors.name}
    adapter = fit_adapter(
        full, kind, parse_dims(dims), queries=query_vectors, pairs=pair_vectors, source=origin,
        query_sources=sources if query_vectors is not None else None,
        progress=True, threads=threads, epochs=epochs, holdout=holdout,
    )  # fmt: skip
    written = adapter.save(out)
    selection = adapter.meta.get("selection")
    if selection:
        typer.echo(selection_table(selection), err=True)
    kept = f" ({selection['held_out']} held out), kept {selection['chosen']}" if selection else ""
    typer.echo(
        f"fitted a {kind} adapter on {len(full)} vectors in {adapter.meta['fit_seconds']:.1f}s{kept}"
        f" ({adapter.kind}) -> {written}",
        err=True,
    )


def selection_table(selection: dict) -> str:
    """The held-out neighbour recall of each candidate map by dim, and which one was kept."""
    names = list(selection["recall_by_dim"])
    dims = list(selection["recall_by_dim"][names[0]])
    lines = [
        f"held-out {selection['criterion']} ({selection['held_out']} rows):",
        "candidate " + " ".join(f"{d:>6}" for d in dims) + "   mean",
    ]
    for name in names:
        marker = " <- kept" if name == selection["chosen"] else ""
        recalls = " ".join(f"{selection['recall_by_dim'][name][d]:6.3f}" for d in dims)
        lines.append(f"{name:<9} {recalls} {selection['mean_recall'][name]:6.3f}{marker}")
    return "\n".join(lines)


@adapt.command()
@user_errors
def apply(
    adapter_path: Path = typer.Argument(..., metavar="ADAPTER", help="Adapter file or directory."),
    input: Path = typer.Argument(..., metavar="IN.npy", help="Full-dim vectors from the adapter's source."),
    output: Path = typer.Argument(..., metavar="OUT.npy", help="Where the adapted vectors go."),
    model: str | None = typer.Option(None, "--model", "-m", help="Refuse unless fitted for this model."),
) -> None:
    """Transform vectors computed elsewhere (an API's, say) with a fitted adapter."""
    from matryoshka.adapter import Adapter

    adapter = Adapter.load(adapter_path)
    if model is not None:
        from matryoshka.models import resolve_model

        info = resolve_model(model)
        adapter.check_source(info.name, info.fingerprint)
    vectors = load_npy(input)
    adapted = adapter.transform(vectors)
    np.save(output, adapted)
    typer.echo(f"adapted {len(adapted)} vectors ({adapter.kind}) -> {output}", err=True)
