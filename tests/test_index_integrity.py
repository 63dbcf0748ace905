"""Index integrity under faults: concurrent writers (real processes), damaged files (real byte edits),
stale readers, read-only directories, and re-ranking at dims inside a chunk."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from matryoshka import DimensionError, MatryoshkaError, truncate
from matryoshka.index import MatryoshkaIndex, Stage, exact_search
from matryoshka.index.store import MANIFEST, Store

SRC = str(Path(__file__).parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
K = 10


def small_index(root: Path, rows: int = 301, dim: int = 64) -> tuple[MatryoshkaIndex, np.ndarray]:
    vectors = truncate(np.random.default_rng(3).standard_normal((rows, dim)).astype(np.float32))
    index = MatryoshkaIndex.create(root, full_dim=dim, chunks=[16, 32])
    index.add(vectors[:200], ids=[f"v{i}" for i in range(200)], texts=[f"text {i}" for i in range(200)])
    index.add(
        vectors[200:], ids=[f"v{i}" for i in range(200, rows)], texts=[f"text {i}" for i in range(200, rows)]
    )
    return index, vectors


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


# ---- 1: one writer at a time ------------------------------------------------------------------------
ADDER = textwrap.dedent(
    """
    import sys, numpy as np
    from matryoshka.index import MatryoshkaIndex
    index = MatryoshkaIndex.open(sys.argv[1])
    name, batches = sys.argv[2], int(sys.argv[3])
    for batch in range(batches):
        rows = np.random.default_rng([ord(name), batch]).standard_normal((1000, 64)).astype(np.float32)
        index.add(rows, ids=[f"{name}{batch}-{i}" for i in range(len(rows))])
    print("done", flush=True)
    """
)


def expected_rows(name: str, batch: int) -> np.ndarray:
    return truncate(np.random.default_rng([ord(name), batch]).standard_normal((1000, 64)).astype(np.float32))


def test_two_writer_processes_keep_every_row_intact(tmp_path):
    root = tmp_path / "idx"
    MatryoshkaIndex.create(root, full_dim=64, chunks=[16, 32])
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", ADDER, str(root), name, "6"],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in "ab"
    ]
    outputs = [writer.communicate(timeout=120) for writer in writers]
    for writer, (_out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err.decode()[-2000:]
    index = MatryoshkaIndex.open(root)
    assert index.store.rows == 12000
    index.store.verify()  # every file's CRC and the SQLite rows agree with the manifest
    for name in "ab":
        for batch in range(6):
            ids = [f"{name}{batch}-{i}" for i in range(1000)]
            rows = index.store.rows_of(ids)
            assert len(rows) == 1000
            stored = index.store.read_prefix(np.array([rows[i] for i in ids]), 64)
            np.testing.assert_allclose(stored, expected_rows(name, batch), atol=1e-3)  # float16 storage


HOLDER = textwrap.dedent(
    """
    import sys, time
    from matryoshka.index.store import Store
    store = Store(sys.argv[1])
    with store.writing():
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_second_writer_waits_for_the_first_then_fails_naming_it(tmp_path, monkeypatch):
    index, vectors = small_index(tmp_path / "idx")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(index.store.root), "60"], env=ENV, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        before = snapshot(index.store.root)
        monkeypatch.setenv("MATRYOSHKA_LOCK_TIMEOUT", "0.5")
        started = time.monotonic()
        with pytest.raises(MatryoshkaError, match=rf"is being written by PID {holder.pid} \(waited 0.5 s\)"):
            index.add(vectors[:1], ids=["late"])
        assert time.monotonic() - started >= 0.5
        for change in (lambda: index.delete(["v1"]), index.compact):
            with pytest.raises(MatryoshkaError, match=f"being written by PID {holder.pid}"):
                change()
        assert snapshot(index.store.root) == before
    finally:
        holder.kill()
        holder.wait()
    assert index.add(vectors[:1], ids=["late"]) == 302  # the lock died with its holder


def test_a_waiting_writer_goes_ahead_when_the_first_finishes(tmp_path, monkeypatch):
    index, vectors = small_index(tmp_path / "idx")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(index.store.root), "1.0"], env=ENV, stdout=subprocess.PIPE
    )
    assert holder.stdout.readline() == b"locked\n"
    monkeypatch.setenv("MATRYOSHKA_LOCK_TIMEOUT", "60")
    started = time.monotonic()
    assert index.add(vectors[:2], ids=["x", "y"]) == 303
    assert time.monotonic() - started > 0.3
    holder.wait()
    index.store.verify()


# ---- 2: writes refuse a damaged index -----------------------------------------------------------
@pytest.mark.parametrize(
    "damage, message",
    [
        ("delete-chunk", r"g0-chunk-0016-0032.float16 is missing"),
        ("truncate-chunk", r"g0-chunk-0016-0032.float16 is truncated"),
        ("delete-codes", r"g0-int8-64.i8 is missing"),
        ("delete-sqlite", r"missing g0-rows.sqlite"),
    ],
)
def test_writes_refuse_a_damaged_index_and_change_nothing(tmp_path, damage, message):
    index, vectors = small_index(tmp_path / "idx")
    root = index.store.root
    kind, _, what = damage.partition("-")
    name = {"chunk": "g0-chunk-0016-0032.float16", "codes": "g0-int8-64.i8", "sqlite": "g0-rows.sqlite"}[what]
    if kind == "delete":
        (root / name).unlink()
    else:
        data = (root / name).read_bytes()
        (root / name).write_bytes(data[: len(data) // 2])
    before = snapshot(root)
    writer = MatryoshkaIndex.open(root)
    for change in (
        lambda: writer.add(vectors[:1], ids=["new"]),
        lambda: writer.delete(["v3"]),
        writer.compact,
    ):
        with pytest.raises(MatryoshkaError, match=f"is damaged: .*{message}"):
            change()
    assert snapshot(root) == before


# ---- 3 and 9: a damaged manifest or SQLite file is an error, found on open or by verify ------------
def edit_manifest(root: Path, old: str, new: str) -> None:
    text = (root / MANIFEST).read_text()
    assert text.count(old) == 1, old
    (root / MANIFEST).write_text(text.replace(old, new))


def unchecked_manifest(root: Path) -> None:
    """Rewrite the manifest as format 1 wrote it, with no checksum of its own (still readable)."""
    manifest = json.loads((root / MANIFEST).read_text())
    manifest.pop("checksum", None)
    (root / MANIFEST).write_text(json.dumps(manifest | {"format_version": 1}, indent=1))


@pytest.mark.parametrize("rows", ["300", "381", "3010"])
def test_a_flipped_row_count_is_refused_on_open(tmp_path, rows):
    index, _ = small_index(tmp_path / "idx")
    root = index.store.root
    edit_manifest(root, '"rows": 301', f'"rows": {rows}')
    with pytest.raises(MatryoshkaError, match=r"manifest\.json is damaged: checksum mismatch"):
        MatryoshkaIndex.open(root)
    edit_manifest(root, f'"rows": {rows}', '"rows": 301')
    unchecked_manifest(root)  # an index written before manifests held a checksum: sizes still tell
    assert MatryoshkaIndex.open(root).store.rows == 301
    edit_manifest(root, '"rows": 301', f'"rows": {rows}')
    with pytest.raises(
        MatryoshkaError, match=rf"damaged: {rows} rows, but g0-chunk-0000-0016.float16 is recorded"
    ):
        MatryoshkaIndex.open(root)


@pytest.mark.parametrize(
    "old, new",
    [
        ('"dtype"', '"dtypf"'),
        ('"files"', '"filet"'),
        ('"float16"', '"float36"'),
        ('"chunks": [', '"chunks": 7, "x": ['),
    ],
)
def test_a_damaged_manifest_key_is_an_error_not_a_traceback(tmp_path, old, new):
    index, _ = small_index(tmp_path / "idx")
    root = index.store.root
    unchecked_manifest(root)
    text = (root / MANIFEST).read_text()
    (root / MANIFEST).write_text(text.replace(old, new, 1))
    with pytest.raises(MatryoshkaError, match=r"manifest\.json is damaged"):
        MatryoshkaIndex.open(root).search(np.ones((1, 64), np.float32), K)


def test_verify_checks_the_sqlite_rows(tmp_path):
    index, vectors = small_index(tmp_path / "idx")
    root = index.store.root
    index.store.verify()
    db = sqlite3.connect(root / "g0-rows.sqlite")
    with db:
        db.execute("UPDATE rows SET id = 'v7x' WHERE row = 7")
    with pytest.raises(MatryoshkaError, match="checksum mismatch in the ids, texts or metadata of g0-rows"):
        MatryoshkaIndex.open(root).store.verify()
    with db:
        db.execute("UPDATE rows SET id = 'v7' WHERE row = 7")
        db.execute("DELETE FROM rows WHERE row = 300")
    db.close()
    reopened = MatryoshkaIndex.open(root)
    with pytest.raises(
        MatryoshkaError, match=r"g0-rows\.sqlite holds 300 rows numbered 0\.\.299, the manifest 301"
    ):
        reopened.store.verify()
    result = reopened.search(vectors[300:301], 3, funnel="64")
    assert result.rows[0][0] == 300
    with pytest.raises(MatryoshkaError, match=r"damaged: rows 300 missing from g0-rows\.sqlite"):
        result.ids  # noqa: B018 - the lookup is the point


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_a_damaged_sqlite_file_is_an_error(tmp_path, damage):
    index, vectors = small_index(tmp_path / "idx")
    path = index.store.root / "g0-rows.sqlite"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 3], "garbage": b"x" * len(data)}[damage])
    reopened = MatryoshkaIndex.open(path.parent)
    with pytest.raises(MatryoshkaError, match=r"is damaged: g0-rows\.sqlite"):
        reopened.search(vectors[:2], K, funnel="64").ids  # noqa: B018
    with pytest.raises(MatryoshkaError, match="is damaged"):
        MatryoshkaIndex.open(path.parent).store.verify()
    with pytest.raises(MatryoshkaError, match="is damaged"):
        MatryoshkaIndex.open(path.parent).add(vectors[:1], ids=["new"])


READ_ONLY = textwrap.dedent(
    """
    import sys, numpy as np
    from matryoshka.errors import MatryoshkaError
    from matryoshka.index import MatryoshkaIndex
    index = MatryoshkaIndex.open(sys.argv[1])
    print(index.search(np.ones((1, 64), np.float32), 3, funnel="64").ids[0])
    for name, change in [
        ("add", lambda: index.add(np.ones((1, 64), np.float32), ids=["new"])),
        ("delete", lambda: index.delete(["v1"])),
        ("compact", index.compact),
    ]:
        try:
            change()
            print(name, "succeeded")
        except MatryoshkaError as exc:
            print(name, "error:", exc)
    """
)


def test_writes_to_a_read_only_index_are_clear_errors_and_change_nothing(tmp_path):
    index, _ = small_index(tmp_path / "idx")
    root = index.store.root
    index.delete(["v5"])
    for path in [*root.iterdir(), root]:
        path.chmod(0o444 if path.is_file() else 0o555)
    command = [sys.executable, "-c", READ_ONLY, str(root)]
    if os.geteuid() == 0:  # root ignores permission bits unless it gives up that capability
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permission bits cannot be enforced")
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *command]
    before = snapshot(root)
    try:
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=60)
    finally:
        for path in [root, *root.iterdir()]:
            path.chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("['v"), done.stdout  # reading works
    for line, verb in zip(lines[1:], ("add", "delete", "compact"), strict=True):
        assert line.startswith(f"{verb} error: index {root} is read-only"), line
    assert snapshot(root) == before


# ---- 4: an open index notices another writer's commits ------------------------------------------
def test_an_open_index_sees_deletes_appends_and_compaction_by_another(tmp_path, full_vectors, sentences):
    root = tmp_path / "idx"
    corpus, queries = full_vectors[40:], full_vectors[:5]
    writer = MatryoshkaIndex.create(root, full_dim=384)
    writer.add(corpus, ids=[f"s{i}" for i in range(len(corpus))], texts=sentences[40:])
    reader = MatryoshkaIndex.open(root)  # a server's long-lived index
    funnel = "32:100,128:30"
    first = reader.search(queries, K, funnel=funnel)
    gone = [ids[0] for ids in first.ids]
    writer.delete(gone)
    after_delete = reader.search(queries, K, funnel=funnel)
    assert not set(gone) & {i for ids in after_delete.ids for i in ids}
    writer.add(queries, ids=[f"q{i}" for i in range(5)], texts=sentences[:5])
    after_add = reader.search(queries, K, funnel=funnel)
    assert [ids[0] for ids in after_add.ids] == [f"q{i}" for i in range(5)]
    writer.compact()  # renumbers the rows into a new generation; the old files are deleted
    after_compact = reader.search(queries, K, funnel=funnel)
    fresh = MatryoshkaIndex.open(root).search(queries, K, funnel=funnel)
    assert after_compact.ids == fresh.ids and after_compact.texts == fresh.texts
    np.testing.assert_array_equal(after_compact.rows, fresh.rows)
    assert reader.store.manifest["generation"] == 1 and reader.info()["deleted"] == 0


def test_a_manifest_update_from_a_stale_store_keeps_another_writers_rows(tmp_path):
    index, vectors = small_index(tmp_path / "idx")
    stale = Store(index.store.root)  # e.g. a server that then saves a plan or a funnel
    index.add(vectors[:3], ids=["x", "y", "z"])
    stale.update_manifest(funnel="16:50,64:10")
    reopened = MatryoshkaIndex.open(index.store.root)
    assert reopened.store.rows == 304 and reopened.store.manifest["funnel"] == "16:50,64:10"
    reopened.store.verify()
    with pytest.raises(ValueError, match="cannot change"):
        stale.update_manifest(rows=0)


# ---- 5: float re-rank stages at dims inside a chunk ---------------------------------------------
@pytest.mark.parametrize(
    "first, rerank",
    [
        (Stage(32, 260), 48),
        (Stage(16, 260), 100),
        (Stage(384, 260, "binary"), 300),
        (Stage(64, 260, "int8"), 100),
    ],
)
def test_rerank_inside_a_chunk_equals_exact_search_at_that_dim(tmp_path, full_vectors, first, rerank):
    corpus, queries = full_vectors[40:], full_vectors[:40]
    index = MatryoshkaIndex.create(tmp_path / "idx", full_dim=384)  # float16 chunks 32, 64, 128, 256
    index.add(corpus)
    result = index.search(queries, K, funnel=[first, Stage(rerank, K)])  # the shortlist holds every row
    stored = corpus.astype(np.float16).astype(np.float32)
    scores, rows = exact_search(queries, stored, K, dim=rerank)
    np.testing.assert_allclose(result.scores, scores, atol=1e-5)
    np.testing.assert_array_equal(result.rows, rows)


@pytest.mark.parametrize(
    "funnel", ["32:100,48:10", "16:100,100:10", "binary@384:100,300:10", "int8@64:50,100:10"]
)
def test_the_reported_funnels_search(tmp_path, full_vectors, funnel):
    corpus, queries = full_vectors[40:], full_vectors[:40]
    index = MatryoshkaIndex.create(tmp_path / "idx", full_dim=384)
    index.add(corpus)
    result = index.search(queries, K, funnel=funnel)
    assert [s.stage for s in result.stages] == [*funnel.split(","), "384:10"]
    picked = truncate(queries) @ truncate(corpus.astype(np.float16).astype(np.float32)).T
    np.testing.assert_allclose(result.scores, np.take_along_axis(picked, result.rows, 1), atol=1e-5)


# ---- 14: chunk boundaries are validated where every path creates an index --------------------------
def test_bad_chunk_boundaries_are_refused(tmp_path):
    for chunks in ([0, -5, 9999], [32, 64, 384], [32, 400]):
        with pytest.raises(DimensionError, match="chunk boundaries must be integers between 1 and 383"):
            MatryoshkaIndex.create(tmp_path / "bad", full_dim=384, chunks=chunks)
        with pytest.raises(DimensionError, match="chunk boundaries"):
            Store.create(tmp_path / "bad", 384, chunks)
    assert not (tmp_path / "bad" / MANIFEST).exists()
    assert MatryoshkaIndex.create(tmp_path / "small", full_dim=64).store.chunks == [[0, 32], [32, 64]]


# ---- 9: the CLI prints one error line and exits 2 -----------------------------------------------------
def test_the_cli_reports_damage_as_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from matryoshka.cli import app

    index, vectors = small_index(tmp_path / "idx")
    root = index.store.root
    np.save(tmp_path / "v.npy", vectors[:2])
    db = sqlite3.connect(root / "g0-rows.sqlite")
    with db:
        db.execute("DELETE FROM rows WHERE row = 5")
    db.close()
    runner = CliRunner()
    verified = runner.invoke(app, ["index", "info", str(root), "--verify"])
    assert verified.exit_code == 2
    assert verified.output.strip().splitlines() == [
        f"error: index {root} is damaged: g0-rows.sqlite holds 300 rows numbered 0..300, the manifest 301;"
        " checksum mismatch in the ids, texts or metadata of g0-rows.sqlite"
    ]
    edit_manifest(root, '"rows": 301', '"rows": 300')
    opened = runner.invoke(app, ["index", "info", str(root)])
    assert opened.exit_code == 2
    assert opened.output.strip() == f"error: {root / MANIFEST} is damaged: checksum mismatch"
