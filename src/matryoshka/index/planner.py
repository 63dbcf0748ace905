"""Budget planner: turn "2 GB of RAM", "answer within 20 ms" or "recall 0.95" into a funnel; and the
default funnel an index records when it is built.

Every candidate funnel (first-stage dim and precision, shortlist sizes, whether the first stage's
prefix is held in RAM or scanned from the mapped chunks) is *measured* on a calibration sample of the
index's own data: recall@k against exact full-dim search on the sample queries (a query log when one
is given, else held-in rows with their own row dropped from the truth), the median single-query
latency, and the bytes it keeps in RAM. The plan is the best point of the measured Pareto frontier
that fits the budgets; it is saved in the manifest with the frontier it came from, and flagged stale
once the index has grown past ``STALE_GROWTH`` since. A plan resolves budgets before a search:
``plan.chosen``, ``plan.for_recall(0.98)`` or ``plan.for_latency(2.0)`` is a :class:`Candidate` that
``index.search(..., funnel=candidate)`` runs.

The default funnel (:func:`default_funnel`) is a quick calibration of the same kind: held-in rows as
queries, the cheapest candidate (bytes read per query) whose recall@k reaches ``DEFAULT_RECALL``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from matryoshka.dims import truncate
from matryoshka.errors import MatryoshkaError
from matryoshka.eval.metrics import recall_per_query
from matryoshka.index.search import funnel_search, load_prefix, rerank, scan
from matryoshka.index.stages import Stage, parse_funnel, scaled_funnel, stages_text

if TYPE_CHECKING:
    from matryoshka.index.store import Store

# queries a plan is measured on: the prediction's error is about 0.13 * sqrt(1 / CALIBRATION_QUERIES + 1 /
# queries it is used on) at recall 0.9 (per-query recall spread 0.13), 0.006 against 1000 others
CALIBRATION_QUERIES = 1000
TIMING_QUERIES = 25
QUERY_BLOCK = 64  # calibration queries re-ranked at once
STALE_GROWTH = 0.2  # a plan is stale once live rows grew by more than this fraction
SHORTLIST_FACTORS = (5, 10, 30, 100)
GB = 1e9
RECALL_TIE = 0.005  # recalls this close on a calibration sample count as equal when choosing
RECALL_Z = 1.96  # a 95% interval on a sample mean
DEFAULT_QUERIES = 100  # the default funnel's quick calibration
DEFAULT_RECALL = 0.99


class PlanError(MatryoshkaError):
    """No measured configuration meets the budgets; names the nearest feasible plan."""


@dataclass
class Candidate:
    """One measured configuration: stages, prefix dims held in RAM, and what it measured."""

    funnel: str
    resident: list[int]
    memory_bytes: int
    recall: float = 0.0
    latency_ms: float = 0.0
    bytes_read: int = 0
    recall_error: float = 0.0  # half-width of the 95% interval of ``recall`` over the sample's queries

    def stages(self, full_dim: int, k: int) -> list[Stage]:
        """The funnel for top-``k``: shortlists widen with k beyond the k it was measured at."""
        return scaled_funnel(self.funnel, full_dim, k)

    def describe(self) -> str:
        where = f"RAM {self.memory_bytes / 1e6:.1f} MB" if self.resident else "mapped"
        return (
            f"{self.funnel} ({where}): recall@k {self.recall:.3f} +- {self.recall_error:.3f},"
            f" {self.latency_ms:.2f} ms/query, "
            f"{self.bytes_read / 1e6:.2f} MB read/query"
        )


@dataclass
class Plan:
    """The chosen candidate, the budgets it was chosen for, and the measured frontier beside it."""

    chosen: Candidate
    k: int
    budgets: dict
    frontier: list[Candidate]
    rows: int
    calibration: str
    made: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        data = dict(data)
        data["chosen"] = Candidate(**data["chosen"])
        data["frontier"] = [Candidate(**c) for c in data["frontier"]]
        return cls(**data)

    def is_stale(self, live_rows: int) -> bool:
        return live_rows > self.rows * (1 + STALE_GROWTH)

    def for_recall(self, recall: float) -> Candidate:
        """The fastest measured funnel reaching ``recall`` (a :class:`PlanError` names the nearest)."""
        return choose(self.frontier, recall=recall)

    def for_latency(self, latency_ms: float) -> Candidate:
        """The most accurate measured funnel within ``latency_ms`` per query."""
        return choose(self.frontier, latency_ms=latency_ms)


@dataclass
class Calibration:
    """Sample queries (full-dim unit vectors), their exact top-k rows, and which row each query is."""

    queries: np.ndarray
    truth: np.ndarray
    self_rows: np.ndarray | None
    k: int
    source: str

    def recall_interval(self, found: np.ndarray) -> tuple[float, float]:
        """Mean recall@k over the sample, and the half-width of its 95% interval: how far the recall
        of other queries like these may stray from it (1000 queries leave about +-0.005 at 0.95)."""
        per_query = recall_per_query(self.answers(found), self.truth, self.k)
        spread = per_query.std(ddof=1) / np.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
        return float(per_query.mean()), float(RECALL_Z * spread)

    def answers(self, found: np.ndarray) -> np.ndarray:
        """Each query's top-k without its own row (held-in queries are rows of the index)."""
        if self.self_rows is None:
            return found[:, : self.k]
        return np.stack([f[f != row][: self.k] for f, row in zip(found, self.self_rows, strict=True)])

    @property
    def width(self) -> int:
        """Results to ask for so that k remain after dropping the query's own row."""
        return self.k + (self.self_rows is not None)


def calibration_sample(
    store: Store, k: int, queries: np.ndarray | None = None, size: int = CALIBRATION_QUERIES, seed: int = 0
) -> Calibration:
    """Exact full-dim truth for a query log, or for a random sample of the index's own rows."""
    self_rows = None
    if queries is None:
        live = store.live_row_numbers()
        rng = np.random.default_rng(seed)
        self_rows = np.sort(rng.choice(live, size=min(size, len(live)), replace=False))
        queries = store.read_prefix(self_rows, store.full_dim)
        source = f"{len(self_rows)} held-in rows"
    else:
        queries = np.asarray(queries, np.float32)[:size]
        source = f"{len(queries)} logged queries"
    queries = truncate(np.asarray(queries, np.float32))
    width = k + (self_rows is not None)
    _, exact, _ = funnel_search(store, queries, [Stage(store.full_dim, width)])
    calibration = Calibration(queries, exact, self_rows, k, source)
    calibration.truth = calibration.answers(exact)
    return calibration


def candidate_funnels(store: Store, k: int) -> list[tuple[list[Stage], bool]]:
    """(stages, first stage held in RAM) for float, int8 and binary first stages over the chunk ends up
    to half the full dim (binary: and all its coded dims), two and three stages, shortlists of
    ``SHORTLIST_FACTORS`` x k, and exact."""
    full = store.full_dim
    ends = [end for _, end in store.chunks]
    first_dims = [end for end in ends if end <= full // 2] or [ends[0]]
    live = max(1, store.live_rows)
    out: list[tuple[list[Stage], bool]] = [([Stage(full, k)], False), ([Stage(full, k)], True)]
    seen = set()
    for precision in ("float", "int8", "binary"):
        limit = full if precision == "float" else store.manifest[f"{precision}_dim"]
        # a popcount scan of every sign bit costs less than a float scan of a 32-dim prefix
        dims = [*first_dims, limit] if precision == "binary" and limit not in first_dims else first_dims
        for dim in dims:
            if dim > limit or (precision == "binary" and dim % 8):
                continue
            for factor in SHORTLIST_FACTORS:
                keep = min(k * factor, live)
                shapes = [[Stage(dim, keep, precision), Stage(full, k)]]
                middle = [end for end in ends if dim < end < full]
                if middle and factor >= 30:
                    narrow = Stage(middle[-1], max(2 * k, keep // 10))
                    shapes.append([Stage(dim, keep, precision), narrow, Stage(full, k)])
                for stages in shapes:
                    key = tuple(stages)
                    if key in seen:
                        continue
                    seen.add(key)
                    for resident in (True, False) if precision == "float" else (False,):
                        out.append((stages, resident))
    return out


def resident_bytes(store: Store, stages: list[Stage], resident: bool) -> int:
    """RAM a funnel keeps: the float32 prefix of every row for a resident float first stage; the
    contiguous copy of every row's sign bits for a binary first stage over part of the coded dims (all
    of them are scanned straight from the mapped file)."""
    first = stages[0]
    if first.precision == "binary" and first.dim < store.manifest["binary_dim"]:
        return store.rows * -(-first.dim // 8)
    if not resident or first.precision != "float":
        return 0
    return store.rows * first.dim * 4


def measure(
    store: Store,
    calibration: Calibration,
    memory: dict[int, np.ndarray],
    candidates: list[tuple[list[Stage], bool]] | None = None,
    timing_queries: int = TIMING_QUERIES,
) -> list[Candidate]:
    """Recall of every candidate on every sample query (candidates sharing a first stage share one
    batch scan at their widest shortlist, then run their later stages per query), and its median
    latency over ``timing_queries`` whole single-query searches, timed round-robin (every candidate in
    turn, each on another query) so a change in machine load hits every candidate alike."""
    groups: dict[tuple, list[list[Stage]]] = {}
    for stages, resident in candidates or candidate_funnels(store, calibration.k):
        resident = resident and stages[0].precision == "float"
        groups.setdefault((stages[0].dim, stages[0].precision, resident), []).append(stages)
    measured, searches = [], []
    for (dim, precision, resident), members in groups.items():
        if resident and dim not in memory:
            memory[dim] = load_prefix(store, dim)
        held = {dim: memory[dim]} if resident else {}
        widest = Stage(dim, max(max(s[0].keep for s in members), calibration.width), precision)
        _, shortlist, scan_bytes = scan(store, calibration.queries, widest, held.get(dim))
        for stages in members:  # recall: later stages over blocks of queries (each keeps its own rows)
            found, later_bytes = [], 0
            for start in range(0, len(calibration.queries), QUERY_BLOCK):
                block = slice(start, start + QUERY_BLOCK)
                rows, read = _later_stages(store, calibration.queries[block], shortlist[block], stages)
                later_bytes += read
                found.append(rows[:, : calibration.width])
            recall, error = calibration.recall_interval(np.concatenate(found))
            measured.append(
                Candidate(
                    stages_text(stages, store.full_dim),
                    [dim] if resident else [],
                    resident_bytes(store, stages, resident),
                    recall,
                    0.0,
                    scan_bytes + later_bytes // len(calibration.queries),
                    error,
                )
            )
            searches.append((stages, held))
    count = len(calibration.queries)
    seconds = np.zeros((len(measured), min(timing_queries, count)))
    for column in range(seconds.shape[1]):
        for row, (stages, held) in enumerate(searches):
            # each candidate in turn gets another query: one query through many alike candidates in a
            # row finds its shortlisted rows already in the CPU caches, a new query does not (a funnel
            # re-ranking many rows is timed too fast that way)
            query = calibration.queries[(column + row) % count]
            started = time.perf_counter()
            funnel_search(store, query[None], stages, held)
            seconds[row, column] = time.perf_counter() - started
    for candidate, times in zip(measured, seconds, strict=True):
        candidate.latency_ms = float(np.median(times) * 1000) if times.size else 0.0
    return measured


def _later_stages(
    store: Store, queries: np.ndarray, shortlist: np.ndarray, stages: list[Stage]
) -> tuple[np.ndarray, int]:
    """Rows after every stage past the first, from the first stage's (widest) shortlist; bytes read.
    A single-stage funnel's answer is its shortlist."""
    rows, read = shortlist[:, : stages[0].keep] if len(stages) > 1 else shortlist, 0
    for position, stage in enumerate(stages[1:], start=1):
        if position == len(stages) - 1:  # the last stage keeps extra rows for held-in queries
            stage = Stage(stage.dim, stage.keep + 1, stage.precision)
        _, rows, stage_bytes = rerank(store, queries, rows, stage)
        read += stage_bytes
    return rows, read


def pareto_frontier(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other candidate beats on latency, recall and memory at once, fastest first."""
    ordered = sorted(candidates, key=lambda c: (c.latency_ms, -c.recall, c.memory_bytes))
    frontier = []
    for candidate in ordered:
        dominated = any(
            other.latency_ms <= candidate.latency_ms
            and other.recall >= candidate.recall
            and other.memory_bytes <= candidate.memory_bytes
            and (other.recall, other.latency_ms, other.memory_bytes)
            != (candidate.recall, candidate.latency_ms, candidate.memory_bytes)
            for other in ordered
        )
        if not dominated:
            frontier.append(candidate)
    return frontier


def choose(
    candidates: list[Candidate],
    memory_gb: float | None = None,
    latency_ms: float | None = None,
    recall: float | None = None,
) -> Candidate:
    """The fastest candidate meeting a recall target, else the fastest of those within ``RECALL_TIE``
    of the most accurate within the other budgets (a full mapped scan far slower for 0.002 more recall
    on a calibration sample is not a better plan).

    Raises :class:`PlanError` naming the nearest feasible plan when no candidate meets every budget.
    """
    fits = [
        c
        for c in candidates
        if (memory_gb is None or c.memory_bytes <= memory_gb * GB)
        and (latency_ms is None or c.latency_ms <= latency_ms)
        and (recall is None or c.recall >= recall)
    ]
    if fits:
        if recall is not None:
            return min(fits, key=lambda c: (c.latency_ms, c.memory_bytes, -c.recall))
        best = max(c.recall for c in fits)
        tied = [c for c in fits if c.recall >= best - RECALL_TIE]
        return min(tied, key=lambda c: (c.latency_ms, c.memory_bytes))
    asked = ", ".join(
        f"{name} {value}"
        for name, value in (("memory_gb", memory_gb), ("latency_ms", latency_ms), ("recall", recall))
        if value is not None
    )

    def shortfall(c: Candidate) -> float:
        gaps = [
            max(0.0, c.memory_bytes / (memory_gb * GB) - 1) if memory_gb else 0.0,
            max(0.0, c.latency_ms / latency_ms - 1) if latency_ms else 0.0,
            max(0.0, (recall - c.recall) / max(recall, 1e-9)) if recall else 0.0,
        ]
        return sum(gaps)

    in_memory = [c for c in candidates if memory_gb is None or c.memory_bytes <= memory_gb * GB]
    nearest = min(in_memory or candidates, key=shortfall)
    raise PlanError(f"no measured plan meets {asked}; nearest feasible plan: {nearest.describe()}")


def make_plan(
    store: Store,
    memory: dict[int, np.ndarray],
    k: int = 10,
    memory_gb: float | None = None,
    latency_ms: float | None = None,
    recall: float | None = None,
    queries: np.ndarray | None = None,
    timing_queries: int = TIMING_QUERIES,
    sample: int = CALIBRATION_QUERIES,
) -> Plan:
    """Measure every candidate on a calibration sample and choose within the budgets."""
    if store.live_rows <= k + 1:
        raise MatryoshkaError(f"the index holds too few rows to plan a top-{k} search")
    check_budgets(memory_gb, latency_ms, recall)
    calibration = calibration_sample(store, k, queries, sample)
    measured = measure(store, calibration, memory, timing_queries=timing_queries)
    chosen = choose(measured, memory_gb, latency_ms, recall)
    budgets = {"memory_gb": memory_gb, "latency_ms": latency_ms, "recall": recall}
    return Plan(chosen, k, budgets, pareto_frontier(measured), store.live_rows, calibration.source)


def check_budgets(memory_gb: float | None, latency_ms: float | None, recall: float | None) -> None:
    for name, value in (("memory_gb", memory_gb), ("latency_ms", latency_ms)):
        if value is not None and not 0 <= value < float("inf"):
            raise MatryoshkaError(f"{name} must be a finite number, not negative, got {value}")
    if recall is not None and not 0 < recall <= 1:
        raise MatryoshkaError(f"recall must be in (0, 1], got {recall}")


def funnel_cost(stages: list[Stage], rows: int, dtype: str) -> int:
    """Bytes read per query: the first stage scans every row's resident float32 prefix (or its codes),
    later ones gather the shortlist's rows as stored in ``dtype`` (or their codes)."""
    later = sum(before.keep * stage.bytes_per_vector(dtype) for before, stage in itertools.pairwise(stages))
    return rows * stages[0].bytes_per_vector("float32") + later


def default_funnel(store: Store, memory: dict[int, np.ndarray], k: int = 10) -> list[Stage]:
    """Cheapest (bytes read) funnel with a resident float or a binary first stage reaching
    ``DEFAULT_RECALL`` recall@k on ``DEFAULT_QUERIES`` held-in rows; the most accurate when none does.
    Exact search when the index holds too few rows to sample."""
    if store.live_rows <= k + 1:
        return [Stage(store.full_dim, k)]
    calibration = calibration_sample(store, k, size=DEFAULT_QUERIES)
    funnels = [
        (stages, True)
        for stages, resident_first in candidate_funnels(store, k)
        if len(stages) > 1 and (resident_first or stages[0].precision == "binary")
    ]
    measured = measure(store, calibration, memory, funnels, timing_queries=0)
    reaching = [parse_funnel(c.funnel, store.full_dim, k) for c in measured if c.recall >= DEFAULT_RECALL]
    if reaching:
        return min(reaching, key=lambda stages: funnel_cost(stages, store.rows, store.manifest["dtype"]))
    return parse_funnel(max(measured, key=lambda c: c.recall).funnel, store.full_dim, k)
