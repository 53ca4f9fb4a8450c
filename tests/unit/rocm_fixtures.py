"""KFD topology text of an MI50 and of a CPU node, for the ROCm tests."""

# A KFD topology node of an MI50, as /sys/class/kfd/kfd/topology/nodes/1/properties shows it (abridged).
MI50_PROPERTIES = """\
cpu_cores_count 0
simd_count 240
mem_banks_count 1
caches_count 104
io_links_count 1
simd_id_base 2147487744
max_waves_per_simd 10
lds_size_in_kb 64
wave_front_size 64
array_count 4
simd_arrays_per_engine 1
cu_per_simd_array 16
simd_per_cu 4
max_slots_scratch_cu 32
gfx_target_version 90006
vendor_id 4098
device_id 26273
location_id 768
domain 0
drm_render_minor 128
num_sdma_engines 2
num_cp_queues 24
"""
CPU_PROPERTIES = "cpu_cores_count 16\nsimd_count 0\nlocation_id 0\ndomain 0\n"
