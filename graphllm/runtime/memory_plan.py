"""Memory planning: which activation values share one buffer.

Liveness comes from the plan's step order: a value lives from the step that writes it to the last
step that reads it (directly or through a view). A new value takes a free buffer of its size, or,
when its kernel may write over one of its inputs (``inplace``: each element is read before the
same thread writes it, e.g. a residual add) and that input dies at this very step, the input's
own buffer (an in-place update). The result is reported as planned vs naive bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..plan import BufferValue, HostStep, Step, Value, ViewValue


@dataclass
class MemoryPlan:
    """Buffer index of every planned value, each buffer's byte size, and what it saved."""

    buffer_of: dict[str, int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    naive_bytes: int = 0
    in_place: int = 0  # values that reuse an input's buffer

    @property
    def planned_bytes(self) -> int:
        return sum(self.sizes)


def base_values(values: Mapping[str, Value]) -> dict[str, str]:
    """Each value's storage owner: views resolve to the buffer they view."""
    base = {}
    for v in values:
        b = v
        while isinstance(values[b], ViewValue):
            b = values[b].of
        base[v] = b
    return base


def plan_memory(steps: Sequence[Step | HostStep], values: Mapping[str, Value], output: str,
                nbytes: Callable[[str], int]) -> MemoryPlan:
    """Assign every buffer value written by a kernel step to a buffer (see the module doc)."""
    base = base_values(values)
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for a in step.value_ids():
            last[base[a]] = i
    last[base[output]] = len(steps)
    plan = MemoryPlan()
    free: dict[int, list[int]] = {}
    for i, step in enumerate(steps):
        node = step.node
        if isinstance(step, Step) and isinstance(values.get(node), BufferValue) and node not in plan.buffer_of:
            size = nbytes(node)
            plan.naive_bytes += size
            donor = base.get(step.inplace or "")
            if donor in plan.buffer_of and last.get(donor) == i and plan.sizes[plan.buffer_of[donor]] == size:
                plan.buffer_of[node] = plan.buffer_of[donor]
                plan.in_place += 1
                del last[donor]
            elif free.get(size):
                plan.buffer_of[node] = free[size].pop()
            else:
                plan.buffer_of[node] = len(plan.sizes)
                plan.sizes.append(size)
        for v, end in list(last.items()):
            if end == i and v in plan.buffer_of:
                free.setdefault(plan.sizes[plan.buffer_of[v]], []).append(plan.buffer_of[v])
                del last[v]
    return plan
