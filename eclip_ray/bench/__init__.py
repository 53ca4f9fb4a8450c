"""The co-location benchmark (issue 4): mixes of models under every sharing policy, measured and reported.

``eclip-ray bench`` runs it from the command line; the same steps are these
functions. A run writes a *part* file; ``merge`` joins parts into the
summary, and ``report`` turns a summary into a Markdown table and plots.
"""

from eclip_ray.bench.config import BenchConfig
from eclip_ray.bench.harness import run, run_isolated
from eclip_ray.bench.load import Load, poisson_arrivals
from eclip_ray.bench.mixes import MIXES
from eclip_ray.bench.policies import POLICIES
from eclip_ray.bench.publish import merge_files, publish

__all__ = [
    "MIXES",
    "POLICIES",
    "BenchConfig",
    "Load",
    "merge_files",
    "poisson_arrivals",
    "publish",
    "run",
    "run_isolated",
]
