import pytest

from eclip_ray.errors import LayoutError
from eclip_ray.partition.layout import (
    DeviceGeometry,
    Layout,
    PartitionSpec,
    disjoint,
    equal_split,
    from_dict,
    ladder,
)

H100 = DeviceGeometry(132)


def test_two_worker_ladder_grows_from_opposite_ends():
    lay = ladder(H100, 2)
    w0 = [p for p in lay.partitions if p.worker == 0]
    w1 = [p for p in lay.partitions if p.worker == 1]
    assert [p.count for p in w0] == [32, 64, 96]
    assert [p.count for p in w1] == [32, 64, 96]
    assert all(p.start == 0 for p in w0)
    assert all(p.stop == 128 for p in w1)  # top-down, the 4 unaligned SMs left to the whole GPU
    assert lay["w0.32"].overlap(lay["w1.32"]) == 0
    assert lay["w0.64"].overlap(lay["w1.64"]) == 0
    assert lay["whole"].count == 132


def test_three_workers_middle_worker_starts_in_its_share():
    lay = ladder(H100, 3, (0.5,))
    starts = {p.worker: p.start for p in lay.partitions if p.worker is not None}
    assert starts[0] == 0 and 0 < starts[1] < starts[2]


def test_middle_ranges_and_suffixes_are_allowed():
    lay = Layout(H100, (PartitionSpec("mid", 40, 48), PartitionSpec("top", 96, 36)))
    assert lay["mid"].slots() == range(40, 88)
    assert lay.sizes() == {"mid": 48, "top": 36}


@pytest.mark.parametrize(
    "spec, words",
    [
        (PartitionSpec("big", 0, 140), "device has 132"),
        (PartitionSpec("tiny", 0, 4), "minimum is 8"),
        (PartitionSpec("odd", 4, 16), "multiples of 8"),
        (PartitionSpec("ragged", 0, 20), "multiple of 8"),
        (PartitionSpec("neg", -8, 16), ">= 0"),
    ],
)
def test_impossible_partitions_name_the_problem(spec, words):
    with pytest.raises(LayoutError, match=words):
        Layout(H100, (spec,))


def test_duplicate_names_rejected():
    with pytest.raises(LayoutError, match="twice"):
        Layout(H100, (PartitionSpec("a", 0, 8), PartitionSpec("a", 8, 8)))


def test_disjoint_rejects_overlap_and_accepts_rest():
    lay = disjoint(H100, [64, -1], ["a", "b"])
    assert lay["b"].count == 68 and lay["a"].overlap(lay["b"]) == 0
    with pytest.raises(LayoutError, match="132"):
        disjoint(H100, [96, 64])
    with pytest.raises(LayoutError, match="only the last"):
        disjoint(H100, [-1, 8])


def test_overlap_where_disjoint_asked_is_an_error():
    from eclip_ray.partition.layout import validate

    with pytest.raises(LayoutError, match="share 8 SMs"):
        validate(H100, [PartitionSpec("a", 0, 16), PartitionSpec("b", 8, 16)], disjoint=True)


def test_equal_split():
    lay = equal_split(H100, 3)
    assert [p.count for p in lay.partitions] == [40, 40, 52]
    with pytest.raises(LayoutError, match="< 8"):
        equal_split(H100, 20)


def test_from_dict_roundtrip_and_malformed():
    lay = ladder(H100, 2)
    assert from_dict(H100, lay.to_dict()) == lay
    with pytest.raises(LayoutError, match="malformed"):
        from_dict(H100, {"partitions": [{"name": "x"}]})


def test_bad_ladder_arguments():
    with pytest.raises(LayoutError):
        ladder(H100, 0)
    with pytest.raises(LayoutError):
        ladder(H100, 2, (1.5,))


def test_arrange_lays_confined_models_side_by_side_and_shares_whole():
    from eclip_ray.partition.layout import arrange, union

    g = DeviceGeometry(sm_count=132)
    nested = arrange(g, [None, 112])
    assert nested[0] is None and (nested[1].start, nested[1].count, nested[1].name) == (0, 112, "s0.112")
    split = arrange(g, [16, -1])
    assert [(p.start, p.count) for p in split] == [(0, 16), (16, 116)]
    layout = union(g, nested, split)
    assert layout.names == ["s0.112", "s0.16", "s16.116", "whole"]
    with pytest.raises(LayoutError):
        arrange(g, [96, 64])  # 160 SMs on a 132-SM device
    with pytest.raises(LayoutError):
        arrange(g, [-1, 16])
