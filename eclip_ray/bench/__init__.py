"""The co-location benchmark: mixes of models under every sharing policy, measured and reported.

Regime C is the paper's closed-loop table (issue 4); regimes A and B search each
policy's SLO-goodput under open-loop load, latency-critical services beside batch
jobs (issue 14; ``regimes.py``). ``eclip-ray bench`` runs it from the command
line; the same steps are these functions. A run writes a *part* file; ``merge``
joins parts into the summary, and ``report`` turns a summary into Markdown tables
and plots.
"""

from eclip_ray.bench.config import BenchConfig
from eclip_ray.bench.harness import run, run_isolated
from eclip_ray.bench.load import Load, poisson_arrivals
from eclip_ray.bench.mixes import HETERO, MIXES, Instance
from eclip_ray.bench.policies import POLICIES
from eclip_ray.bench.publish import merge_files, publish

__all__ = [
    "HETERO",
    "MIXES",
    "POLICIES",
    "BenchConfig",
    "Instance",
    "Load",
    "merge_files",
    "poisson_arrivals",
    "publish",
    "run",
    "run_isolated",
]
