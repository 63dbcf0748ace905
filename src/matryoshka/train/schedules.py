"""Which dims are trained when: a trainer callback that sets the loss's active dims each step.

* ``all``: every dim every step.
* ``progressive``: the classic recipe, smallest dims first (the two smallest), larger ones added phase
  by phase until all are active.
* ``sequential``: the reverse (SMEC, EMNLP 2025): the full dim alone first, then each phase adds the
  next smaller prefixes.

A phase is an equal share of training; by default one phase per epoch, so with 4 epochs and
dims 384..8 ``progressive`` trains {16, 8}, then {64..8}, then {256..8}, then all seven.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from transformers import TrainerCallback

from matryoshka.errors import MatryoshkaError

SCHEDULES = ("all", "progressive", "sequential")


class DimSchedule(TrainerCallback):
    """Active dims per phase; as a callback it updates ``loss.active_dims`` before every step."""

    def __init__(self, kind: str, dims: Sequence[int], phases: int, loss=None) -> None:
        if kind not in SCHEDULES:
            raise MatryoshkaError(f"unknown schedule {kind!r}: use {', '.join(SCHEDULES)}")
        if phases < 1:
            raise MatryoshkaError(f"a schedule needs at least one phase, got {phases}")
        self.kind = kind
        self.dims = sorted(dims, reverse=True)
        self.phases = phases
        self.loss = loss

    def active(self, phase: int) -> list[int]:
        """Dims trained during ``phase`` (0-based; phases past the last keep the last phase's dims)."""
        n, last = len(self.dims), self.phases - 1
        phase = min(max(phase, 0), last)
        if self.kind == "all" or last == 0:
            return list(self.dims)
        start = 1 if self.kind == "sequential" else min(2, n)
        count = start + math.ceil((n - start) * phase / last)
        return self.dims[:count] if self.kind == "sequential" else self.dims[n - count :]

    def phase_at(self, epoch: float, total_epochs: float) -> int:
        """Phase of training progress ``epoch`` (fractional) out of ``total_epochs``."""
        if total_epochs <= 0:
            return 0
        return min(int(epoch / total_epochs * self.phases + 1e-9), self.phases - 1)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.loss is not None:
            total = state.num_train_epochs or args.num_train_epochs
            self.loss.active_dims = self.active(self.phase_at(state.epoch or 0.0, total))
        return control

    def describe(self) -> list[list[int]]:
        return [self.active(phase) for phase in range(self.phases)]
