"""A sweep's grid -> its cells: one fit each, named by its knobs, with the fit overrides that make it.

    grid: {nmi: [0.1, 0.75], size: [12800], seed: [0, 1], supervision: [language, labels]}
    -> nmi0.1-size12800-seed0-language, nmi0.1-size12800-seed0-labels, ... (8 cells)

A labels or self cell names its CLIP twin (the cell with the same other knobs) so the launcher can
start it after the twin and the fit can check parity against it.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from aotrain.config import UserError

LANGUAGE, LABELS, SELF = "language", "labels", "self"


@dataclass
class Cell:
    id: str
    knobs: dict               # axis -> value, e.g. {"nmi": 0.1, "size": 12800, "seed": 0, "supervision": "labels"}
    overrides: list[str]      # the fit overrides the knobs stand for (after the sweep's base)
    twin: str | None = None   # the CLIP cell this supervised (or self-supervised) cell is compared with


def _label(axis: str, value) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    text = re.sub(r"[^A-Za-z0-9_.]+", "_", text)
    return text if axis in ("supervision", "model") else f"{axis}{text}"


def cell_id(knobs: dict) -> str:
    return "-".join(_label(a, v) for a, v in knobs.items())


def swept_axes(grid: dict, axes: dict) -> dict:
    """{axis: values} for the axes the grid sets (not null), in the grid's order."""
    swept = {}
    for axis, values in grid.items():
        if values is None:
            continue
        if axis not in axes:
            raise UserError(f"grid.{axis}: unknown axis; axes are {', '.join(axes)} (add one under axes:)")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise UserError(f"grid.{axis} is empty: give at least one value, or null to leave it out")
        if len(set(map(str, values))) != len(values):
            raise UserError(f"grid.{axis} repeats a value: {values}")
        swept[axis] = values
    if not swept:
        raise UserError("the grid sets no axis: give a sweep recipe (recipe=NAME) or grid.AXIS=[...]")
    return swept


def expand(grid: dict, axes: dict, twins: bool = True) -> list[Cell]:
    """Every combination of the grid's values, CLIP cells before their supervised twins."""
    swept = swept_axes(grid, axes)
    cells = []
    for values in itertools.product(*swept.values()):
        knobs = dict(zip(swept, values))
        overrides = [f"{axes[a]}={v}" for a, v in knobs.items()]
        cells.append(Cell(cell_id(knobs), knobs, overrides))
    by_id = {c.id: c for c in cells}
    if twins and "supervision" in swept:
        for cell in cells:
            if cell.knobs["supervision"] in (LABELS, SELF):
                twin = cell_id({**cell.knobs, "supervision": LANGUAGE})
                cell.twin = twin if twin in by_id else None
    # Twins first: with N fits at a time, a supervised cell waits for its CLIP cell, never the reverse.
    return sorted(cells, key=lambda c: c.twin is not None)
