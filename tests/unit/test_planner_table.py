"""Plan tables: plans per co-location mix, sub-mixes precomputed, JSON round trip (no GPU)."""

from __future__ import annotations

import json

import pytest
from planner_fixtures import POWER, layout, random_mix, switchy_pair

from eclip_ray.errors import InfeasibleSLO, PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import WHOLE
from eclip_ray.planner import PlanTable, build_plan_table, synthetic
from eclip_ray.planner.table import mix_key, sub_mixes


@pytest.fixture(scope="module")
def table() -> PlanTable:
    profs = random_mix(2, 3, units=12)
    # model m1 is profiled at two batch sizes
    profs_by_name = {**profs, "m1": [profs["m1"], synthetic.profile("m1", 12, batch_size=4, seed=77, whole_ms=3.0)]}
    return build_plan_table(profs_by_name, layout(3), {"m0": 50.0}, power=POWER)


def test_every_sub_mix_at_every_batch_size_has_plans(table):
    # subsets of {m0, m1, m2} with m1 at batch 1 or 4: 2 (m1 alone) + 1 + 1 + 2 + 2 + 1 + 2 = 11
    assert len(table) == len(list(sub_mixes({"m0": [1], "m1": [1, 4], "m2": [1]}))) == 11
    for key, entry in table.entries.items():
        assert set(entry.plans) == {n for n, _ in key}


def test_lookup_returns_the_active_models_plans_or_none(table):
    full = table.lookup({"m0": 1, "m1": 4, "m2": 1})
    assert set(full) == {"m0", "m1", "m2"} and all(isinstance(p, Plan) for p in full.values())
    assert set(table.lookup({"m2": 1})) == {"m2"}
    assert table.lookup({"m1": 8}) is None  # batch 8 was never profiled
    assert table.lookup({"m3": 1}) is None
    assert table.lookup({}) is None


def test_a_model_keeps_its_worker_partitions_in_every_sub_mix(table):
    for entry in table.entries.values():
        for name, plan in entry.plans.items():
            slot = table.slots[name]
            assert all(p == WHOLE or p.startswith(f"w{slot}.") for p in plan.partitions)


def test_lookup_does_not_depend_on_the_order_of_the_active_set(table):
    assert table.lookup({"m2": 1, "m0": 1}) == table.lookup({"m0": 1, "m2": 1})
    assert mix_key({"a": 1, "b": 2}) == mix_key({"b": 2, "a": 1})


def test_save_and_load_round_trip(table, tmp_path):
    path = table.save(tmp_path / "plans" / "table.json")
    back = PlanTable.load(path)
    assert back.entries == table.entries
    assert back.slots == table.slots and back.objective == table.objective and back.layout == table.layout
    assert back.matches(layout(3)) and not back.matches(layout(2))
    assert json.loads(path.read_text())["schema"] == 2


def test_captures_list_every_plan_and_batch_each_model_needs(table):
    caps = table.captures()
    assert set(caps) == {"m0", "m1", "m2"}
    assert {b for _, b in caps["m1"]} == {1, 4}
    for key, entry in table.entries.items():
        batch = dict(key)
        assert all((p, batch[n]) in caps[n] for n, p in entry.plans.items())


def test_predictions_are_kept_with_the_plans(table):
    pred = table.predicted({"m0": 1, "m1": 1})
    assert pred["throughput"] > 0 and set(pred["latency_ms"]) == {"m0", "m1"} and pred["energy_j"] > 0


def test_infeasible_mixes_raise_or_are_recorded():
    slo = {"heavy": 0.5}  # heavy needs 1 ms even alone on the whole GPU
    with pytest.raises(InfeasibleSLO):
        build_plan_table(switchy_pair(), layout(2), slo)
    table = build_plan_table(switchy_pair(), layout(2), slo, skip_infeasible=True)
    assert table.lookup({"switchy": 1}) is not None
    assert table.lookup({"heavy": 1, "switchy": 1}) is None
    assert "heavy" in table.skipped[mix_key({"heavy": 1})]


def test_a_table_from_another_schema_is_refused():
    with pytest.raises(PlanError, match="schema"):
        PlanTable.from_dict({"schema": 99})


def test_schema_1_tables_still_load_and_schema_2_keeps_what_was_measured(table, tmp_path):
    old = table.to_dict()
    old["schema"] = 1
    del old["measured"]
    back = PlanTable.from_dict(old)
    assert back.entries == table.entries and back.measured == {}
    assert back.candidate_set({"m0": 1}) is None and back.selections({"m0": 1}) == {}
    cands = {"layout": table.layout, "batch": {"m0": 1, "m2": 1}, "candidates": []}
    sel = {"chosen": "multi-stream", "reason": "why", "met": True, "trials": []}
    back.record({"m0": 1, "m2": 1}, cands, "closed1", {"m0": None, "m2": None}, sel)
    again = PlanTable.load(back.save(tmp_path / "t2.json"))
    assert again.candidate_set({"m2": 1, "m0": 1}) == cands
    assert again.selections({"m0": 1, "m2": 1}) == {"closed1": ({"m0": None, "m2": None}, sel)}
    again.record({"m0": 1, "m2": 1}, {**cands, "batch": {"m0": 1, "m2": 2}})  # other candidates: selections go
    assert again.selections({"m0": 1, "m2": 1}) == {}
