"""Which batch row plays which part: labels "<role>.<group>" announced with controller.set_branch.

All donors are rows of the same batch (the processor keeps nothing across steps). A group is one
output with its donors; the start and end frames of a sign can run as groups 0 and 1 of one batch.

>>> labels = row_labels([("out", "content", "edges", "style")])
>>> labels
('out.0', 'content.0', 'edges.0', 'style.0')
>>> groups(labels)
{0: {'out': 0, 'content': 1, 'edges': 2, 'style': 3}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Role = Literal[
    "out",  # the row being stylised (its own query, or the fused one)
    "content",  # the content image's inversion trajectory (Q_img)
    "edges",  # the content's edges image's inversion trajectory (Q_edges)
    "style",  # the style image's inversion trajectory (K, V)
    "q1",  # stage 2: the start illustration's trajectory (Q1)
    "q2",  # stage 2: the end illustration's trajectory (Q2)
]
ROLES: tuple[str, ...] = ("out", "content", "edges", "style", "q1", "q2")


def row_labels(groups_roles: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """One label per row, groups in order: [("out", "style"), ("out", "style")] -> out.0, style.0, ..."""
    labels = []
    for g, roles in enumerate(groups_roles):
        for role in roles:
            if role not in ROLES:
                raise ValueError(f"row role {role!r}; use one of {ROLES}")
            labels.append(f"{role}.{g}")
    return tuple(labels)


def groups(labels: Sequence[str | None]) -> dict[int, dict[str, int]]:
    """{group: {role: row}} of our labelled rows; rows labelled otherwise (e.g. "cond") are ignored."""
    out: dict[int, dict[str, int]] = {}
    for i, lab in enumerate(labels):
        if not lab or "." not in lab:
            continue
        role, _, g = lab.partition(".")
        if role in ROLES and g.isdigit():
            out.setdefault(int(g), {})[role] = i
    return out
