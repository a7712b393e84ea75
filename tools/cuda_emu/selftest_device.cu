// selftest_device.cu: kernels that exercise what the emulator models beyond today's
// library kernels (2-D/3-D grids and blocks, dynamic shared memory, warp collectives,
// atomics), translated and run like the kernels; test_device.cpp checks their outputs
// against values computed on the host, and mutate.py plants bugs in copies of them.
#include "async_copy.cuh"
#include "cuda_common.cuh"

namespace fastconv {
namespace cuda {

// Every thread of a 2-D grid of 3-D blocks writes its coordinates, 4 bits each.
__global__ void coords3d(int* out) {
    const int threads = blockDim.x * blockDim.y * blockDim.z;
    const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    out[block * threads + t] =
        threadIdx.x + 16 * (threadIdx.y + 16 * (threadIdx.z + 16 * (blockIdx.x + 16 * (blockIdx.y + 16 * blockIdx.z))));
}

// Each block reverses its n-element run of x through dynamic shared memory (n floats,
// the launch's size), with a 2-D block.
__global__ void reverse_runs(const float* x, float* y, int runs, int n) {
    extern __shared__ float buf[];
    const int t = threadIdx.y * blockDim.x + threadIdx.x, T = blockDim.x * blockDim.y;
    for (int r = blockIdx.x; r < runs; r += gridDim.x) {
        for (int i = t; i < n; i += T) buf[i] = x[r * n + i];
        __syncthreads();
        for (int i = t; i < n; i += T) y[r * n + i] = buf[n - 1 - i];
        __syncthreads();  // buf is refilled by the next run
    }
}

// The lanes of this thread's warp (the last warp of a block may be partial).
__device__ __forceinline__ unsigned warp_mask() {
    const unsigned first = threadIdx.x / 32 * 32, n = min(32u, blockDim.x - first);
    return n == 32 ? 0xFFFFFFFFu : (1u << n) - 1;
}

constexpr int kWarpOut = 15;

// One block of the warp collectives, kWarpOut results per thread (test_device.cpp holds
// the expected values).
__global__ void warp_ops(float* out) {
    __shared__ int sh[128];
    const unsigned t = threadIdx.x, lane = t % 32, m = warp_mask(), n = __popc(m);
    float* o = out + t * kWarpOut;
    o[0] = __shfl_sync(m, int(3 * t), int((lane + 5) % n));
    o[1] = __shfl_up_sync(m, int(t), 3, 16);
    o[2] = __shfl_down_sync(m, int(t), 2, 8);
    o[3] = __shfl_xor_sync(m, int(t), 5);
    o[4] = float(__ballot_sync(m, t % 3 == 0) & 0xFFFFFF);
    o[5] = __any_sync(m, t == 40);
    o[6] = __all_sync(m, t < 70);
    o[7] = __reduce_add_sync(m, t);
    o[8] = __reduce_min_sync(m, int(100 - t));
    o[9] = __reduce_max_sync(m, int(t) - 50);
    float s = float(t);
    for (int d = 1; d < int(n); d <<= 1) s += __shfl_xor_sync(m, s, d);
    o[10] = s;
    const unsigned parity = (lane % 2 ? 0xAAAAAAAAu : 0x55555555u) & m;
    o[11] = __reduce_add_sync(parity, t);
    sh[t] = int(t);
    __syncwarp(m);
    o[12] = sh[t - lane + (lane + 1) % n];
    o[13] = sh[t - lane];  // every lane reads lane 0's word ...
    __syncwarp(m);
    if (lane == 0) sh[t] = int(t) + 1000;  // ... before lane 0 rewrites it
    __syncwarp(m);
    o[14] = sh[t - lane];
}

// Atomics: a shared histogram (atomics on shared memory, then plain reads after the
// barrier), folded into a global one; global float, double, max, CAS and exchange.
__global__ void atomics(const int* v, int items, int per_item, unsigned* hist, float* fsum,
                        double* dsum, int* imax, float* cas_max, int* last) {
    __shared__ unsigned local[16];
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
        if (threadIdx.x < 16) local[threadIdx.x] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < per_item; i += blockDim.x) {
            const int e = v[item * per_item + i];
            atomicAdd(&local[e & 15], 1u);
            atomicAdd(fsum, float(e));
            atomicAdd(dsum, double(e));
            atomicMax(imax, e);
            float seen = *cas_max;  // a float max through atomicCAS on its bits
            while (seen < float(e)) {
                const int old = atomicCAS(reinterpret_cast<int*>(cas_max), __float_as_int(seen),
                                          __float_as_int(float(e)));
                if (old == __float_as_int(seen)) break;
                seen = __int_as_float(old);
            }
            atomicExch(last, e);
        }
        __syncthreads();
        if (threadIdx.x < 16) atomicAdd(&hist[threadIdx.x], local[threadIdx.x]);
        __syncthreads();  // local is zeroed for the next item
    }
}

// A double-buffered tile loop through async_copy.cuh: row r of x (n floats, n % 4 == 0)
// in tiles of 256 floats, each thread copying 16 bytes of the next tile while the block
// reads the current one; past the row's end the copies zero-fill. Thread t of tile k
// writes the sum of the 4 floats thread t + 1 copied (so the barrier matters).
constexpr int kCopyThreads = 64, kTileFloats = 4 * kCopyThreads;

__global__ void tile_sums(const float* x, float* y, int rows, int n) {
    __shared__ __align__(16) float buf[2][kTileFloats];
    const int t = threadIdx.x, tiles = (n + kTileFloats - 1) / kTileFloats;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* row = x + size_t(r) * n;
        const auto issue = [&](int k) {  // this thread's 16 bytes of tile k
            const int at = k * kTileFloats + 4 * t, valid = max(0, min(4, n - at));
            async_copy_cg16(&buf[k % 2][4 * t], valid ? row + at : row, 4 * valid);
        };
        issue(0);
        async_commit();
        for (int k = 0; k < tiles; ++k) {
            if (k + 1 < tiles) issue(k + 1);
            async_commit();
            async_wait<1>();  // this thread's part of tile k has landed
            __syncthreads();  // and every thread's
            const float* s = &buf[k % 2][4 * ((t + 1) % kCopyThreads)];
            y[(size_t(r) * tiles + k) * kCopyThreads + t] = s[0] + s[1] + s[2] + s[3];
            __syncthreads();  // buf[k % 2] is refilled by tile k + 2
        }
        async_wait<0>();
    }
}

void selftest_coords3d(int* out) {
    coords3d<<<dim3(3, 2), dim3(8, 3, 2), 0, nullptr>>>(out);
}
void selftest_reverse_runs(const float* x, float* y, int runs, int n) {
    if (n * sizeof(float) > 48 * 1024)  // over the default limit: the kernel's opt-in
        cudaFuncSetAttribute(reverse_runs, cudaFuncAttributeMaxDynamicSharedMemorySize, int(n * sizeof(float)));
    reverse_runs<<<blocks_for(runs, 1), dim3(16, 4), n * sizeof(float), nullptr>>>(x, y, runs, n);
}
void selftest_tile_sums(const float* x, float* y, int rows, int n) {
    tile_sums<<<blocks_for(rows, 1), kCopyThreads, 0, nullptr>>>(x, y, rows, n);
}
void selftest_warp_ops(float* out, int threads) { warp_ops<<<1, threads, 0, nullptr>>>(out); }
void selftest_atomics(const int* v, int items, int per_item, unsigned* hist, float* fsum,
                      double* dsum, int* imax, float* cas_max, int* last) {
    atomics<<<blocks_for(items, 1), 96, 0, nullptr>>>(v, items, per_item, hist, fsum, dsum, imax,
                                                      cas_max, last);
}

}  // namespace cuda
}  // namespace fastconv
