import pytest
import torch

from eclip_ray.errors import PlanError
from eclip_ray.graph import ModelRunner, Plan, block_cuts, leaf_cuts, trace_calls
from eclip_ray.models import get
from eclip_ray.partition import StreamPool
from eclip_ray.partition.cpu import CpuBackend
from eclip_ray.partition.layout import ladder


@pytest.fixture(scope="module")
def pool():
    be = CpuBackend()
    with StreamPool(be, ladder(be.geometry(), 2)) as p:
        yield p


def test_plan_switches_and_compact():
    p = Plan(("a#0", "b#0", "c#0"), ("x", "x", "y", "x"))
    assert p.switches == 2
    assert p.compact() == Plan(("b#0", "c#0"), ("x", "y", "x"))
    assert Plan.from_dict(p.to_dict()) == p
    assert Plan.of([(None, "x"), ("b#0", "y")]) == Plan(("b#0",), ("x", "y"))


def test_plan_shape_errors():
    with pytest.raises(PlanError, match="need 2 partitions"):
        Plan(("a#0",), ("x",))
    with pytest.raises(PlanError, match="twice"):
        Plan(("a#0", "a#0"), ("x", "y", "z"))
    with pytest.raises(PlanError, match="input"):
        Plan.of([("a#0", "x")])


def test_trace_counts_repeated_calls_of_a_shared_module():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)

        def forward(self, x):
            for _ in range(3):
                x = self.layer(x)
            return x

    calls = trace_calls(Shared(), (torch.randn(2, 4),))
    assert [c.id for c in calls] == ["layer#0", "layer#1", "layer#2"]


def test_runner_on_cpu_same_output_on_every_plan(pool):
    spec = get("tiny-cnn")
    torch.manual_seed(0)
    r = ModelRunner("cnn", spec.build(), spec.make_inputs, pool)
    x = r.example_inputs(3)
    blocks = block_cuts(r.calls, 1)
    leaves = leaf_cuts(r.calls)
    ref = r.run(x, Plan.single("whole"))[0]
    plans = [
        Plan((blocks[1].id,), ("w0.32", "whole")),
        Plan(tuple(c.id for c in leaves[1:]), tuple(["w0.32", "w0.64"] * 10)[: len(leaves)]),
    ]
    for plan in plans:
        out = r.run(x, plan)[0]
        assert out.shape == (3, 10)
        torch.testing.assert_close(out, ref)


def test_runner_rejects_bad_plans(pool):
    spec = get("tiny-cnn")
    r = ModelRunner("cnn2", spec.build(), spec.make_inputs, pool)
    x = r.example_inputs(1)
    with pytest.raises(PlanError, match="not module calls"):
        r.run(x, Plan(("nope#0",), ("whole", "w0.32")))
    with pytest.raises(PlanError, match="lacks"):
        r.run(x, Plan.single("w7.8"))
    leaves = leaf_cuts(r.calls)
    with pytest.raises(PlanError, match="out of execution order"):
        r.run(x, Plan((leaves[3].id, leaves[1].id), ("whole", "w0.32", "whole")))
    with pytest.raises(PlanError, match="cuda backend"):
        r.capture(Plan.single("whole"), 1)


def test_transformer_encoder_runs_on_a_split_plan(pool):
    spec = get("tiny-bert")
    r = ModelRunner("bert", spec.build(), spec.make_inputs, pool)
    x = r.example_inputs(2)
    layers = [c for c in r.calls if c.module.endswith("layer.1")]
    ref = r.run(x, Plan.single("whole"))[0]
    out = r.run(x, Plan((layers[0].id,), ("w1.32", "w1.96")))[0]
    assert out.shape == (2, 16, 64)
    torch.testing.assert_close(out, ref)


def test_pool_reports_partitions(pool):
    rep = pool.report()
    assert rep["backend"] == "cpu"
    assert {p["name"] for p in rep["partitions"]} == set(pool.layout.names)
    with pytest.raises(KeyError, match="no partition named"):
        pool["nope"]


def test_runtime_takes_a_layout_made_from_the_device_geometry():
    from eclip_ray.partition.layout import equal_split
    from eclip_ray.runtime import Runtime

    seen = []

    def make(geometry):
        seen.append(geometry)
        return equal_split(geometry, 2)

    with Runtime(backend="cpu", layout=make) as rt:
        assert seen == [rt.backend.geometry()]
        assert rt.layout.names == ["p0", "p1"]
        assert "whole" in rt.pool
