// Placement probe: each block writes the id of the SM it ran on (%smid).
// Blocks spin for `spin_cycles` so that a launch of many blocks spreads over every
// SM the stream may use instead of finishing on the first few.
// Compiled at run time with NVRTC by eclip_ray/partition/placement.py.
extern "C" __global__ void eclip_smid(int* out, int n_blocks, long long spin_cycles) {
    unsigned int sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    if (threadIdx.x == 0 && blockIdx.x < n_blocks) {
        out[blockIdx.x] = (int)sm;
    }
    long long t0 = clock64();
    while (clock64() - t0 < spin_cycles) {
    }
}
