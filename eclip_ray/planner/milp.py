"""A small sparse MILP builder over ``scipy.optimize.milp`` (HiGHS).

Variables are added in blocks and addressed by index arrays; rows are sparse
``lb <= sum(vals * v[cols]) <= ub``. The optimizer's formulation lives in
``formulation.py``; this module knows nothing about plans.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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

    def var(self, shape: int | tuple[int, ...], lb: float = 0.0, ub: float = np.inf, integer: bool = False) -> np.ndarray:
        """Add ``prod(shape)`` variables; returns their indices in that shape."""
        n = int(np.prod(shape))
        idx = np.arange(self.size, self.size + n).reshape(shape)
        self._lb += [lb] * n
        self._ub += [ub] * n
        self._int += [int(integer)] * n
        self._cost += [0.0] * n
        return idx

    def cost(self, cols: np.ndarray | Sequence[int], vals: np.ndarray | Sequence[float] | float) -> None:
        """Add ``vals`` to the objective coefficients of ``cols``."""
        cols = np.asarray(cols).ravel()
        vals = np.broadcast_to(np.asarray(vals, dtype=float), cols.shape).ravel()
        for c, v in zip(cols.tolist(), vals.tolist(), strict=True):
            self._cost[c] += v

    def row(self, cols: np.ndarray | Sequence[int], vals: np.ndarray | Sequence[float] | float, lb: float, ub: float) -> None:
        """Add the constraint ``lb <= sum(vals * v[cols]) <= ub`` (a column may repeat: coefficients add)."""
        cols = np.asarray(cols).ravel()
        vals = np.broadcast_to(np.asarray(vals, dtype=float), cols.shape).ravel()
        r = len(self._row_lb)
        self._r += [r] * len(cols)
        self._c += cols.tolist()
        self._v += vals.tolist()
        self._row_lb.append(lb)
        self._row_ub.append(ub)

    def solve(self, time_limit_s: float = 10.0, scale: float = 1.0) -> np.ndarray | None:
        """The optimal variable values (objective divided by ``scale``), or None when infeasible."""
        # Imported here: the serving layer imports the planner for PlanTable and never solves.
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_array

        n = self.size
        a = coo_array((self._v, (self._r, self._c)), shape=(len(self._row_lb), n)).tocsr()
        res = milp(
            np.asarray(self._cost) / scale,
            constraints=LinearConstraint(a, self._row_lb, self._row_ub),
            integrality=np.asarray(self._int),
            bounds=Bounds(np.asarray(self._lb), np.asarray(self._ub)),
            options={"time_limit": time_limit_s, "mip_rel_gap": 1e-9},
        )
        return res.x
