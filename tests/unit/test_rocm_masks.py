"""CU masks from a topology, topology parsing and the masked-stream budget: pure functions, no HIP."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rocm_fixtures import CPU_PROPERTIES, MI50_PROPERTIES

from eclip_ray.errors import LayoutError
from eclip_ray.partition import cumask
from eclip_ray.partition.layout import disjoint, ladder

MI50 = cumask.Topology(cu_count=60, shader_engines=4, gfx_target_version=90006)


def bits(words):
    return {32 * i + b for i, w in enumerate(words) for b in range(32) if w >> b & 1}


def test_driver_spreads_mask_bits_over_shader_engines_round_robin():
    order = cumask.bit_order(MI50)
    assert order[:5] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (0, 0, 1)]
    assert len(order) == 60


def test_one_shader_engine_of_an_mi50_is_every_fourth_bit():
    assert cumask.mask_words(MI50, 0, 15) == [0x11111111, 0x01111111]
    assert cumask.mask_words(MI50, 45, 15) == [0x88888888, 0x08888888]
    assert cumask.mask_words(MI50, 0, 60) == [0xFFFFFFFF, 0x0FFFFFFF]  # bits past CU 59 stay clear


def test_ladder_on_an_mi50_is_eclips_placement():
    layout = ladder(cumask.geometry(MI50), workers=2)
    engines = {p.name: set(cumask.engines_of(MI50, p.start, p.count)) for p in layout.partitions}
    assert engines["w0.15"] == {0} and engines["w1.15"] == {3}
    assert engines["w0.30"] == {0, 1} and engines["w1.30"] == {2, 3}
    assert len(engines["w0.45"]) == len(engines["w1.45"]) == 3
    # The two workers' small masks never share a shader engine; only 45 + 45 must overlap (by 2 SEs, as in ECLIP).
    for a in ("w0.15", "w0.30"):
        for b in ("w1.15", "w1.30"):
            assert not engines[a] & engines[b], (a, b)
    assert len(engines["w0.45"] & engines["w1.45"]) == 2
    for p in layout.partitions:  # every mask is whole shader engines
        assert all(n == 15 for n in cumask.engines_of(MI50, p.start, p.count).values())


def test_three_workers_get_30_and_45_cu_masks_within_the_queue_limit():
    layout = ladder(cumask.geometry(MI50), workers=3, fractions=(0.5, 0.75))
    assert sorted({p.count for p in layout.partitions if p.name != "whole"}) == [30, 45]
    limit, source = cumask.masked_stream_limit("gfx906:sramecc+:xnack-")
    assert (limit, source) == (7, "measured on gfx906 (ECLIP)")
    assert cumask.check_budget(layout, limit) == 6


def test_a_layout_over_the_queue_limit_is_a_clear_error():
    layout = ladder(cumask.geometry(MI50), workers=3)
    with pytest.raises(LayoutError, match=r"needs 9 CU-masked streams .* GPU takes 7 \(measured on gfx906"):
        cumask.check_budget(layout, *cumask.masked_stream_limit("gfx906"))


def test_queue_limit_is_read_per_architecture_or_configured():
    assert cumask.masked_stream_limit("gfx906", configured=3) == (3, "configured")
    limit, source = cumask.masked_stream_limit("gfx90a:sramecc+:xnack-")
    assert limit == cumask.DEFAULT_MASKED_STREAMS and "not measured on gfx90a" in source
    with pytest.raises(LayoutError, match=">= 1"):
        cumask.masked_stream_limit("gfx906", configured=0)


def test_geometry_steps_in_whole_shader_engines_unless_configured():
    g = cumask.geometry(MI50)
    assert (g.sm_count, g.min_sms, g.granularity) == (60, 15, 15)
    assert cumask.geometry(MI50, granularity=1).granularity == 1
    uneven = cumask.Topology(60, 4, cus_per_array=(16, 16, 14, 14))
    assert cumask.geometry(uneven).granularity == 1
    with pytest.raises(LayoutError, match="granularity"):
        cumask.geometry(MI50, granularity=61)


def test_partial_shader_engine_spreads_over_its_arrays_and_is_named():
    two_arrays = cumask.Topology(cu_count=64, shader_engines=4, arrays_per_engine=2)
    # The kernel's example: with 2 arrays per SE, bit 4 is SE0 SH1 CU0 and bit 8 is SE0 SH0 CU1.
    order = cumask.bit_order(two_arrays)
    assert order[4] == (0, 1, 0) and order[8] == (0, 0, 1)
    assert cumask.slot_order(two_arrays)[:3] == [(0, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert cumask.describe_range(MI50, 15, 23) == "23 CUs (slots 15..37): SE1, SE2 (8 of 15)"


def test_uneven_harvest_needs_the_counts_per_array():
    with pytest.raises(LayoutError, match="configure cus_per_array"):
        cumask.mask_words(cumask.Topology(cu_count=110, shader_engines=8), 0, 14)
    uneven = cumask.Topology(cu_count=110, shader_engines=8, cus_per_array=(14,) * 6 + (13, 13))
    order = cumask.bit_order(uneven)
    assert len(order) == 110
    assert order[-1] == (5, 0, 13)  # CU 13 exists only on SE0..SE5, so the last bits skip SE6 and SE7
    with pytest.raises(LayoutError, match="summing to 110"):
        cumask.Topology(110, 8, cus_per_array=(14,) * 8).per_array()
    with pytest.raises(LayoutError, match="at most 16"):
        cumask.Topology(68, 4, cus_per_array=(17, 17, 17, 17)).per_array()


def test_out_of_range_slots_are_refused():
    with pytest.raises(LayoutError, match="outside the device's 60 CUs"):
        cumask.mask_words(MI50, 45, 30)


def test_gpus_whose_mask_layout_is_not_known_are_refused():
    cumask.check_maskable(MI50)
    with pytest.raises(LayoutError, match="8 XCCs"):
        cumask.check_maskable(cumask.Topology(304, 32, gfx_target_version=90402, xcc_count=8))
    with pytest.raises(LayoutError, match="WGP"):
        cumask.check_maskable(cumask.Topology(96, 6, 2, gfx_target_version=110000))


def test_arch_names_from_kfd_versions():
    assert [cumask.arch_name(v) for v in (90006, 90008, 90010, 90402, 110000)] == [
        "gfx906",
        "gfx908",
        "gfx90a",
        "gfx942",
        "gfx1100",
    ]


@given(
    engines=st.integers(1, 8),
    per_array=st.integers(1, 16),
    arrays=st.integers(1, 2),
    data=st.data(),
)
def test_any_split_of_the_slots_is_a_split_of_the_cus(engines, per_array, arrays, data):
    topo = cumask.Topology(engines * arrays * per_array, engines, arrays)
    cut = data.draw(st.integers(1, topo.cu_count - 1)) if topo.cu_count > 1 else None
    full = bits(cumask.mask_words(topo, 0, topo.cu_count))
    assert full == set(range(topo.cu_count))
    if cut is not None:
        low, high = bits(cumask.mask_words(topo, 0, cut)), bits(cumask.mask_words(topo, cut, topo.cu_count - cut))
        assert len(low) == cut and not low & high and low | high == full
    for se in range(engines):  # an aligned SE-sized range is exactly that shader engine
        per_se = arrays * per_array
        assert set(cumask.engines_of(topo, se * per_se, per_se)) == {se}


def test_kfd_properties_give_the_topology_of_the_gpu_at_a_pci_address():
    nodes = [cumask.parse_kfd_properties(CPU_PROPERTIES), cumask.parse_kfd_properties(MI50_PROPERTIES)]
    node = cumask.kfd_node_for(nodes, "0000:03:00.0")  # location_id 768 = bus 3
    topo = cumask.topology_from_kfd(node)
    assert (topo.cu_count, topo.shader_engines, topo.arrays_per_engine) == (60, 4, 1)
    assert cumask.arch_name(topo.gfx_target_version) == "gfx906" and topo.xcc_count == 1
    with pytest.raises(LayoutError, match=r"no KFD GPU node at 0000:04:00.0; KFD lists GPUs at \['0000:03'\]"):
        cumask.kfd_node_for(nodes, "0000:04:00.0")
    with pytest.raises(LayoutError, match="lack 'simd_per_cu'"):
        cumask.topology_from_kfd({"simd_count": 240})
    with pytest.raises(LayoutError, match="not a GPU"):
        cumask.topology_from_kfd(
            cumask.parse_kfd_properties(CPU_PROPERTIES + "simd_per_cu 0\narray_count 0\nsimd_arrays_per_engine 0\n")
        )


def test_pci_addresses_parse_with_or_without_domain():
    assert cumask.parse_bdf("0000:03:00.0") == (0, 3, 0, 0)
    assert cumask.parse_bdf("0001:c1:1f.7\n") == (1, 0xC1, 0x1F, 7)
    assert cumask.parse_bdf("03:00.0") == (0, 3, 0, 0)
    with pytest.raises(ValueError, match="not a PCI address"):
        cumask.parse_bdf("gpu0")


def test_two_hip_runtimes_in_one_process_are_seen():
    maps = (
        "7f00-7f10 r-xp 00000000 08:01 1 /opt/venv/lib/python3.11/site-packages/torch/lib/libamdhip64.so\n"
        "7f20-7f30 r--p 00010000 08:01 1 /opt/venv/lib/python3.11/site-packages/torch/lib/libamdhip64.so\n"
        "7f40-7f50 r-xp 00000000 08:01 2 /opt/rocm-6.2.0/lib/libamdhip64.so.6.2.60200\n"
        "7f60-7f70 rw-p 00000000 00:00 0\n"
    )
    assert len(cumask.hip_runtimes(maps)) == 2
    assert cumask.hip_runtimes(maps.splitlines()[0]) == {
        "/opt/venv/lib/python3.11/site-packages/torch/lib/libamdhip64.so"
    }


def test_static_slices_are_disjoint_masks():
    layout = disjoint(cumask.geometry(MI50), [30, 15, 15])
    masks = [bits(cumask.mask_words(MI50, p.start, p.count)) for p in layout.partitions]
    assert sum(len(m) for m in masks) == 60 and len(set().union(*masks)) == 60
