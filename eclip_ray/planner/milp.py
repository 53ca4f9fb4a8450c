"""A small sparse MILP builder over ``scipy.optimize.milp`` (HiGHS).

Variables are added in blocks and addressed by index arrays; rows are sparse
``lb <= sum(vals * v[cols]) <= ub``. The optimizer's formulation lives in
``formulation.py``; this module knows nothing about plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eclip_ray.errors import PlanError

OPTIMAL, INFEASIBLE = 0, 2  # scipy.optimize.milp status codes
GAP = 1e-6  # relative optimality gap at which HiGHS stops: optimal for any practical purpose

Columns = np.ndarray | Sequence[int]
Values = np.ndarray | Sequence[float] | float


@dataclass(frozen=True)
class Solution:
    """Variable values; ``optimal`` is False when the time limit stopped the search (``gap``: how far off)."""

    values: np.ndarray
    optimal: bool
    gap: float


class Program:
    """A mixed-integer linear program: minimise ``cost . v`` subject to sparse rows and bounds."""

    def __init__(self) -> None:
        self._lb: list[float] = []
        self._ub: list[float] = []
        self._int: list[int] = []
        self._cost: list[float] = []
        self._r: list[int] = []
        self._c: list[int] = []
        self._v: list[float] = []
        self._row_lb: list[float] = []
        self._row_ub: list[float] = []

    @property
    def size(self) -> int:
        return len(self._cost)

    def var(
        self, shape: int | tuple[int, ...], lb: float = 0.0, ub: float = np.inf, integer: bool = False
    ) -> np.ndarray:
        """Add ``prod(shape)`` variables; returns their indices in that shape."""
        n = int(np.prod(shape))
        idx = np.arange(self.size, self.size + n).reshape(shape)
        self._lb += [lb] * n
        self._ub += [ub] * n
        self._int += [int(integer)] * n
        self._cost += [0.0] * n
        return idx

    def cost(self, cols: Columns, vals: Values) -> None:
        """Add ``vals`` to the objective coefficients of ``cols``."""
        cols, vals = _flat(cols, vals)
        for c, v in zip(cols.tolist(), vals.tolist(), strict=True):
            self._cost[c] += v

    def row(self, cols: Columns, vals: Values, lb: float, ub: float) -> None:
        """Add the constraint ``lb <= sum(vals * v[cols]) <= ub`` (a column may repeat: coefficients add)."""
        cols, vals = _flat(cols, vals)
        r = len(self._row_lb)
        self._r += [r] * len(cols)
        self._c += cols.tolist()
        self._v += vals.tolist()
        self._row_lb.append(lb)
        self._row_ub.append(ub)

    def solve(self, time_limit_s: float = 10.0) -> Solution | None:
        """The best variable values found, or None when infeasible.

        Raises PlanError when the time limit passes before any solution is found.
        """
        # Imported here: the serving layer imports the planner for PlanTable and never solves.
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_array

        n = self.size
        a = coo_array((self._v, (self._r, self._c)), shape=(len(self._row_lb), n)).tocsr()
        res = milp(
            np.asarray(self._cost),
            constraints=LinearConstraint(a, self._row_lb, self._row_ub),
            integrality=np.asarray(self._int),
            bounds=Bounds(np.asarray(self._lb), np.asarray(self._ub)),
            options={"time_limit": time_limit_s, "mip_rel_gap": GAP},
        )
        if res.status == INFEASIBLE:
            return None
        if res.x is None:
            raise PlanError(f"the MILP found no solution ({res.message}); raise the time limit ({time_limit_s} s)")
        return Solution(res.x, res.status == OPTIMAL, float(getattr(res, "mip_gap", 0.0) or 0.0))


def _flat(cols: Columns, vals: Values) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(cols)
    return c.ravel(), np.broadcast_to(np.asarray(vals, dtype=float), c.shape).ravel()
