"""From part files to the published summary: merged JSON, the README table and the plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eclip_ray.bench import report, results


def merge_files(paths: Sequence[str | Path], command: str = "") -> dict[str, Any]:
    """The summary of the part files ``paths`` (see :func:`eclip_ray.bench.results.merge`)."""
    docs = [(Path(p).name, results.read(p)) for p in paths]
    return results.merge(docs, command or "eclip-ray bench merge " + " ".join(str(p) for p in paths))


def publish(
    summary: dict[str, Any], readme: str | Path | None = None, plots: str | Path | None = None
) -> dict[str, Any]:
    """Write the plots into ``plots`` and the report block into ``readme``; returns what was written."""
    drawn = {}
    if plots is not None:
        from eclip_ray.bench.plots import draw

        drawn = draw(summary, plots)
    written: dict[str, Any] = {"plots": [str(p) for files in drawn.values() for p in files]}
    if readme is not None:
        readme = Path(readme)
        block = report.markdown(summary, drawn, base=readme.parent)
        written["readme"] = str(report.write_readme(block, readme))
    return written
