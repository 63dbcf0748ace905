"""Fuzz: flip random bytes of every file of a small index and require a clean outcome each time.

Each trial XORs one byte (fixed seed) of the manifest, a chunk file, the int8 or sign codes, the chunk
energies or the SQLite file, then opens the index, runs funnels that read every one of those files,
looks up the ids and texts, and runs ``verify()``. Allowed outcomes:

- a ``MatryoshkaError`` (what the CLI prints as one ``error:`` line) from any of those steps;
- the same results as before the flip (rows, ids, texts, scores), e.g. a byte the searches never read
  (a row outside every shortlist, SQLite free space);
- different results, but only if ``verify()`` then reports the damage: a flipped value inside a data
  file or a SQLite record cannot be seen without reading checksums (as a search does not), so a
  search may score from it; ``verify`` (``info --verify``) must always find it.

Anything else fails: another exception type (a traceback), or different results that verify passes.
A flip anywhere in the manifest is always caught on open (it carries a checksum of itself).
"""

import collections
from pathlib import Path

import numpy as np
import pytest

from matryoshka import MatryoshkaError, truncate
from matryoshka.index import MatryoshkaIndex

TRIALS = 320
K = 10
FUNNELS = ["binary@64:60,int8@64:40,24:20", "16:50,32:20"]  # every file: chunks, codes, energies


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, full_vectors, sentences):
    root = tmp_path_factory.mktemp("fuzz") / "idx"
    vectors = truncate(full_vectors[:, :64])  # real 64-dim prefixes, float16 chunks 16 | 32 | 64
    index = MatryoshkaIndex.create(root, full_dim=64, chunks=[16, 32])
    ids = [f"s{i}" for i in range(len(vectors))]
    meta = [{"n": i} if i % 3 else None for i in range(len(vectors))]
    index.add(vectors[:150], ids=ids[:150], texts=sentences[:150], metadata=meta[:150])
    index.add(vectors[150:], ids=ids[150:], texts=sentences[150:], metadata=meta[150:])
    index.delete(["s7", "s100"])
    index.close()
    queries = vectors[::25] + 0.01
    return root, queries, answers(MatryoshkaIndex.open(root), queries)


def answers(index: MatryoshkaIndex, queries: np.ndarray) -> list[tuple]:
    found = []
    for funnel in FUNNELS:
        result = index.search(queries, K, funnel=funnel)
        found.append((result.rows.tolist(), result.ids, result.texts, result.scores))
    return found


def same(found: list[tuple], expected: list[tuple]) -> bool:
    return all(
        a[:3] == b[:3] and np.allclose(a[3], b[3], atol=1e-6, equal_nan=False)
        for a, b in zip(found, expected, strict=True)
    )


def trial(root: Path, queries: np.ndarray, expected: list[tuple]) -> str:
    try:
        index = MatryoshkaIndex.open(root)
        found = answers(index, queries)
    except MatryoshkaError:
        return "error"
    try:
        index.store.verify()
        verified = True
    except MatryoshkaError:
        verified = False
    finally:
        index.close()
    if same(found, expected):
        return "same" if verified else "same, verify found it"
    assert not verified, "the results changed and verify() passed"
    return "changed, verify found it"


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # a flipped energy below zero
def test_flipped_bytes_give_an_error_or_the_right_answer(pristine):
    root, queries, expected = pristine
    files = sorted(p for p in root.iterdir() if p.is_file())
    assert [p.name for p in files] == [
        "g0-binary-64.u8",
        "g0-chunk-0000-0016.float16",
        "g0-chunk-0016-0032.float16",
        "g0-chunk-0032-0064.float16",
        "g0-energy.f32",
        "g0-int8-64.i8",
        "g0-rows.sqlite",
        "manifest.json",
    ]
    rng = np.random.default_rng(28)
    outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for number in range(TRIALS):
        path = files[number % len(files)]
        original = path.read_bytes()
        offset = int(rng.integers(len(original)))
        damaged = bytearray(original)
        damaged[offset] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        try:
            outcome = trial(root, queries, expected)
        except AssertionError as exc:
            raise AssertionError(f"{path.name} byte {offset}: {exc}") from None
        except Exception as exc:
            raise AssertionError(f"{path.name} byte {offset}: {type(exc).__name__}: {exc}") from exc
        finally:
            path.write_bytes(original)
        outcomes[path.name][outcome] += 1
    assert set(outcomes["manifest.json"]) == {"error"}  # the manifest's own checksum
    assert sum(sum(c.values()) for c in outcomes.values()) == TRIALS
    for name in ("g0-chunk-0000-0016.float16", "g0-binary-64.u8", "g0-rows.sqlite"):
        assert outcomes[name]["same"] < sum(outcomes[name].values())  # damage that was found
    print(dict(outcomes))
