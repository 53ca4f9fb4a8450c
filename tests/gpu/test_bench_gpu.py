"""On the GPU: the benchmark's stream priorities reach the streams, green contexts included, and graphs."""

import pytest
import torch

from eclip_ray.bench.policies import HIGHEST_PRIORITY, WHOLE_PLAN
from eclip_ray.graph.plan import Plan

pytestmark = pytest.mark.gpu


def _priority(stream) -> int:
    from cuda.bindings import driver

    from eclip_ray.partition.cuda import check

    return int(check(driver.cuStreamGetPriority(stream.cuda_stream), "cuStreamGetPriority"))


def test_runner_streams_get_the_devices_highest_priority_on_whole_and_green_partitions():
    from eclip_ray.partition.layout import Layout, PartitionSpec, whole
    from eclip_ray.runtime import Runtime

    def layout(g):
        return Layout(g, (PartitionSpec("s0.64", 0, 64), whole(g)))

    with Runtime(backend="cuda", layout=layout) as rt:
        least, greatest = rt.backend.priority_range()
        assert greatest < least  # CUDA: lower is more urgent
        urgent = rt.load("urgent", "tiny-cnn", priority=HIGHEST_PRIORITY)
        plain = rt.load("plain", "tiny-cnn")
        confined = Plan.single("s0.64")
        for r in (urgent, plain):
            r.capture(WHOLE_PLAN, 4)
            r.capture(confined, 4)
        assert _priority(urgent.stream) == greatest and _priority(plain.stream) == least
        green = rt.pool.stream("s0.64", owner="urgent", priority=HIGHEST_PRIORITY)
        assert _priority(green) == greatest
        x = urgent.example_inputs(4)
        for plan in (WHOLE_PLAN, confined):
            torch.testing.assert_close(urgent.run(x, plan)[0], urgent.eager(x, plan)[0])
        assert rt.describe()["stream_priorities"] == {"least": least, "greatest": greatest}
