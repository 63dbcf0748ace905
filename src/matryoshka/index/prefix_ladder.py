"""Per-query first-stage depth: scan a short prefix, go on to a longer one only for queries that need it.

A prefix ladder ``16|32|128:100,384:10`` runs the funnel ``D:K,384:10`` with the first stage at
D = 16 (K = 800) for every query, then at 32 (K = 400) and at 128 (K = 100) only for the queries a
depth rule (margin or predictor, ``adaptive.py``) sends on. Going deeper costs only the new
coordinates: the scan at 32 adds coordinates 16..32 to the 16-dim partial dot products (for
``binary@128|384:300``, the Hamming distance of bits 128..384 to that of bits 0..128), so a query
that needs the longest prefix reads what the fixed funnel reads and one that stops early reads a
fraction of it. Nested coordinates are what make this free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.eval.metrics import recall_per_query
from matryoshka.index.rank_rule import CHECK_DIM, CHECK_KEEP, OPTIONS, WIDTHS, StopModel, stop_features
from matryoshka.index.search import few_threads, rerank, top_k
from matryoshka.index.stages import Stage, StageStats, parse_funnel

if TYPE_CHECKING:
    from matryoshka.index.api import MatryoshkaIndex
    from matryoshka.index.planner import Calibration

QUERY_BLOCK = 64  # queries scored at once: bounds the (queries x rows) partial-score matrix


@dataclass
class PrefixLadder:
    """First-stage prefixes, shortest first, and the funnel at the longest (``stages[0].dim``)."""

    dims: tuple[int, ...]
    stages: list[Stage]

    def first(self, dim: int) -> Stage:
        """The first stage at prefix ``dim``: a shorter, noisier prefix hands on a wider shortlist,
        ``keep * longest / dim`` rows, so its top-k is as likely to be inside it."""
        longest = self.stages[0]
        return Stage(dim, longest.keep * longest.dim // dim, longest.precision)

    def check(self, option: int, position: int) -> tuple[int, list[Stage]]:
        """A rung's shortlist and the stages that finish it under a check option (``rank_rule.OPTIONS``):
        the fixed plan's later stages, or the quick check's ``CHECK_DIM`` prefix then the last stage."""
        factor, quick = OPTIONS[option]
        keep = self.first(self.dims[position]).keep * factor
        final = self.stages[-1]
        if not quick or final.dim <= CHECK_DIM or len(self.stages) < 2:
            return keep, self.stages[1:]
        return keep, [Stage(CHECK_DIM, CHECK_KEEP * final.keep), final]


def rung_name(ladder: PrefixLadder, position: int, option: int = 0) -> str:
    """A rung's first stage as text, at the shortlist a check option widens it to, with the quick
    check's stage after it (``binary@64:1200,64:30``)."""
    keep, finish = ladder.check(option, position)
    names = [str(Stage(ladder.dims[position], keep, ladder.stages[0].precision))]
    if finish != ladder.stages[1:]:  # a quick check: its prefix stage before the last
        names += [str(stage) for stage in finish[:-1]]
    return ",".join(names)


def rung_names(ladder: PrefixLadder, rank_limits: list[list | None] | None = None) -> list[str]:
    """Each rung's name (:func:`rung_name`) under the rank rule's choices; the last keeps the plan's."""
    choices = [*(rank_limits or []), None]
    choices += [None] * (len(ladder.dims) - len(choices))
    return [rung_name(ladder, p, 0 if choice is None else choice[0]) for p, choice in enumerate(choices)]


def parse_prefix_ladder(text: str, full_dim: int, k: int) -> PrefixLadder | None:
    """``"16|32|128:100,384:10"`` (or ``"binary@128|384:300"``) -> a ladder; None for a plain funnel."""
    first, _, rest = text.partition(",")
    precision, at, body = first.rpartition("@")
    dims_text, colon, keep = body.partition(":")
    if "|" not in dims_text:
        return None
    try:
        dims = tuple(int(d) for d in dims_text.split("|"))
    except ValueError:
        raise MatryoshkaError(f"bad prefix ladder {text!r}: expected dims like 16|32|128:100") from None
    if list(dims) != sorted(set(dims)) or dims[0] < 1:
        raise MatryoshkaError(f"bad prefix ladder {text!r}: the dims must increase")
    if (precision or "float") not in ("float", "binary") or (precision and any(d % 8 for d in dims)):
        raise MatryoshkaError(f"bad prefix ladder {text!r}: float dims, or binary dims in multiples of 8")
    longest = f"{precision}{at}{dims[-1]}{colon}{keep}" + (f",{rest}" if rest else "")
    return PrefixLadder(dims, parse_funnel(longest, full_dim, k))


def ladder_over(stages: list[Stage]) -> str:
    """A funnel's prefix ladder: its first stage tried at 1/4, 1/2 and 3/4 of its prefix first (for
    binary, in whole bytes); the funnel itself when its first stage is int8 or too short to split.
    Quarters rather than 1/8, 1/4, 1/2: the rank rule saved 27.7% against 15.3% of the bytes of the
    synthetic set's binary@128:300 plan, 33.7% against 30.1% of real MiniLM's 64:1000 (held-out)."""
    first = stages[0]
    step = 8 if first.precision == "binary" else 1
    shorter = sorted({first.dim * part // 4 // step * step for part in (1, 2, 3)} - {0, first.dim})
    if first.precision == "int8" or not shorter:
        return ",".join(str(stage) for stage in stages)
    prefix = "" if first.precision == "float" else f"{first.precision}@"
    head = prefix + "|".join(str(d) for d in [*shorter, first.dim]) + f":{first.keep}"
    return ",".join([head, *(str(stage) for stage in stages[1:])])


class PrefixScan:
    """Scores of some queries against every row at growing prefixes, each extending the last."""

    def __init__(self, index: MatryoshkaIndex, queries: np.ndarray, ladder: PrefixLadder) -> None:
        self.index, self.queries, self.ladder = index, queries, ladder
        self.binary = ladder.stages[0].precision == "binary"
        self.done = 0
        if self.binary:
            self.query_codes = np.packbits(queries[:, : ladder.dims[-1]] > 0, axis=1)
            self.partial = np.zeros((len(queries), index.store.rows), np.int32)
        else:
            index.load(ladder.dims[-1])
            self.partial = np.zeros((len(queries), index.store.rows), np.float32)

    def keep_only(self, mask: np.ndarray) -> None:
        self.queries, self.partial = self.queries[mask], self.partial[mask]
        if self.binary:
            self.query_codes = self.query_codes[mask]

    def extend(self, dim: int, keep: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Best ``keep`` rows per query at prefix ``dim``: ``(scores, rows, bytes read)``."""
        start, self.done = self.done, dim
        store = self.index.store
        if self.binary:
            import faiss

            codes = store.binary_codes(dim, start)
            query_codes = np.ascontiguousarray(self.query_codes[:, start // 8 : dim // 8])
            distances = np.empty(self.partial.shape, np.int32)
            pointers = (faiss.swig_ptr(query_codes), faiss.swig_ptr(codes), faiss.swig_ptr(distances))
            with few_threads(faiss, len(query_codes)):
                faiss.hammings(*pointers[:2], len(query_codes), len(codes), codes.shape[1], pointers[2])
            self.partial += distances
            scores, read = 1 - self.partial.astype(np.float32) * (2 / dim), codes.nbytes
        else:
            prefix = self.index.resident[self.ladder.dims[-1]]
            self.partial += self.queries[:, start:dim] @ prefix[:, start:dim].T
            query_norms = np.linalg.norm(self.queries[:, :dim], axis=1, keepdims=True)
            scores = self.partial * self._inverse_row_norms(prefix, dim) / np.maximum(query_norms, 1e-12)
            read = len(prefix) * (dim - start) * 4
        scores[:, store.deleted_rows()] = -np.inf
        best, rows = top_k(scores, keep)
        return best, np.where(np.isfinite(best), rows, -1), read

    def _inverse_row_norms(self, prefix: np.ndarray, dim: int) -> np.ndarray:
        """1 / |row[:dim]| of the rows re-normalised at the longest prefix (cached per prefix array)."""
        cache = self.index.__dict__.setdefault("_ladder_norms", {})
        if cache.get("prefix") is not prefix:  # the index reloaded its prefix (rows were added)
            cache.clear()
            cache["prefix"] = prefix
        if dim not in cache:
            norms = np.linalg.norm(prefix[:, :dim], axis=1)
            cache[dim] = (1 / np.where(norms == 0, 1, norms)).astype(np.float32)
        return cache[dim]


def _finish(
    index: MatryoshkaIndex, queries: np.ndarray, scores: np.ndarray, rows: np.ndarray, stages: list[Stage]
):
    """The funnel's later stages over a first-stage shortlist (``scores``, ``rows``): ``(scores, rows,
    stats)``; the shortlist itself when there are none."""
    stats = []
    for stage in stages:
        started = time.perf_counter()
        scores, rows, read = rerank(index.store, queries, rows, stage)
        stats.append(StageStats(str(stage), scores.shape[1], time.perf_counter() - started, read))
    return scores, rows, stats


def prefix_depth_search(
    index: MatryoshkaIndex,
    queries: np.ndarray,
    ladder: PrefixLadder,
    k: int,
    decide: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
    rank_limits: list[list | None] | None = None,
    stop_model: StopModel | None = None,
) -> tuple[np.ndarray, np.ndarray, list[StageStats], np.ndarray]:
    """Run the ladder; after each prefix but the last, ``decide(queries, first-stage scores, position)``
    says which queries finish the funnel from there. With ``rank_limits`` (``rank_rule.py``) the rank
    rule decides instead: a rung with a choice ``(option, limit)`` keeps its shortlist as wide and finishes
    every query still going as ``PrefixLadder.check`` says, and stops those whose chance of a miss
    (``stop_model``) is within the limit; a rung without one is only scanned. Returns top-k scores and rows,
    stats, and the position that answered each query."""
    queries = truncate(np.atleast_2d(np.asarray(queries, np.float32)))
    out_scores = np.full((len(queries), k), -np.inf, np.float32)
    out_rows = np.full((len(queries), k), -1, np.int64)
    answered = np.full(len(queries), len(ladder.dims) - 1)
    scan, active, stats = PrefixScan(index, queries, ladder), np.arange(len(queries)), []
    for position, dim in enumerate(ladder.dims):
        last = position == len(ladder.dims) - 1
        choice = None if rank_limits is None or last else rank_limits[position]
        if rank_limits is not None and choice is None and not last:
            continue  # a rung the rank rule passes: the next scan adds its coordinates in the same call
        started = time.perf_counter()
        keep, finish = ladder.check(0 if choice is None else choice[0], position)
        first_scores, first_rows, read = scan.extend(dim, keep)
        seconds = time.perf_counter() - started
        name = str(Stage(dim, keep, ladder.stages[0].precision))
        stats.append(StageStats(name, first_rows.shape[1], seconds, read))
        if choice is not None:  # the rank rule: finish every query, stop those answered from the head
            assert stop_model is not None, "the rank rule needs its stop model"
            option, limit = choice
            scores, rows, later = _finish(index, scan.queries, first_scores, first_rows, finish)
            features = stop_features(first_scores, first_rows, rows, k)
            stop = stop_model.missed(option, position, features) <= limit
            scores, rows = scores[stop], rows[stop]
        else:
            stop = np.ones(len(active), bool) if last else decide(scan.queries, first_scores, position)
            scores, rows, later = None, None, []
            if stop.any():
                scores, rows, later = _finish(
                    index, scan.queries[stop], first_scores[stop], first_rows[stop], finish
                )
        stats += later
        if stop.any():
            width = min(k, scores.shape[1])
            out_scores[active[stop], :width] = scores[:, :width]
            out_rows[active[stop], :width] = rows[:, :width]
            answered[active[stop]] = position
        active = active[~stop]
        scan.keep_only(~stop)
        if len(active) == 0:
            break
    return out_scores, out_rows, stats, answered


@dataclass
class LadderCosts:
    """What the rank rule is fitted on (``rank_rule``): per check option, rung and calibration query,
    the stop features and the share of the exact top-k found; bytes scanned up to each rung and of
    re-ranking one query's shortlist under each option at each rung."""

    features: np.ndarray
    hits: np.ndarray
    scan_bytes: np.ndarray
    check_bytes: np.ndarray


def ladder_answers(
    index: MatryoshkaIndex, calibration: Calibration, ladder: PrefixLadder
) -> tuple[np.ndarray, list[np.ndarray], LadderCosts]:
    """First-prefix scores (own row dropped), every position's answer, and the rank rule's inputs, for
    all calibration queries (what ``adaptive.fit_rules`` and the rank rule are fitted on)."""
    from matryoshka.index.adaptive import without_own_rows

    width, count, rungs = calibration.width, len(calibration.queries), len(ladder.dims)
    first_parts = []
    answers = [[[] for _ in ladder.dims] for _ in OPTIONS]
    shortlists = [[[] for _ in ladder.dims] for _ in OPTIONS]
    scan_bytes, check_bytes = np.zeros(rungs), np.zeros((len(OPTIONS), rungs))
    for start in range(0, count, QUERY_BLOCK):
        block = truncate(calibration.queries[start : start + QUERY_BLOCK])
        scan = PrefixScan(index, block, ladder)
        for position, dim in enumerate(ladder.dims):
            keep = ladder.first(dim).keep
            scores, rows, scan_bytes[position] = scan.extend(dim, max(keep * max(WIDTHS), width))
            if position == 0:
                first_parts.append((scores[:, : max(keep, width)], rows[:, : max(keep, width)]))
            for option in range(len(OPTIONS)):
                kept, stages = ladder.check(option, position)
                if stages:  # the last stage keeps extra rows for held-in queries
                    stages = [*stages[:-1], Stage(stages[-1].dim, width, stages[-1].precision)]
                shortlist = max(kept, width)
                _, found, later = _finish(index, block, scores[:, :shortlist], rows[:, :shortlist], stages)
                answers[option][position].append(found)
                shortlists[option][position].append((scores[:, :kept], rows[:, :kept]))
                check_bytes[option, position] += sum(stat.bytes_read for stat in later) / count
    first = without_own_rows(
        np.concatenate([s for s, _ in first_parts]), np.concatenate([r for _, r in first_parts]), calibration
    )
    answers = [[calibration.answers(np.concatenate(parts)) for parts in per_width] for per_width in answers]
    k, truth = calibration.k, calibration.truth

    def features(parts: list[tuple[np.ndarray, np.ndarray]], found: np.ndarray) -> np.ndarray:
        scores, rows = np.concatenate([s for s, _ in parts]), np.concatenate([r for _, r in parts])
        return stop_features(without_own_rows(scores, rows, calibration), rows, found, k)

    stops = [
        [features(parts, found) for parts, found in zip(lists, found_lists, strict=True)]
        for lists, found_lists in zip(shortlists, answers, strict=True)
    ]
    hits = [[recall_per_query(found, truth, k) for found in found_lists] for found_lists in answers]
    costs = LadderCosts(np.array(stops), np.array(hits), np.cumsum(scan_bytes), check_bytes)
    return first, answers[0], costs
