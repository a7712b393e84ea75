// The emulator's own device features, through selftest_device.cu's kernels, against
// values computed here: 2-D/3-D grids and blocks, dynamic shared memory, warp
// collectives, atomics (and, in their sections, async copies and WMMA). Called by
// test.cpp's main; returns the number of failures and adds to checks.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace fastconv::cuda {
void selftest_coords3d(int* out);
void selftest_reverse_runs(const float* x, float* y, int runs, int n);
void selftest_warp_ops(float* out, int threads);
void selftest_tile_sums(const float* x, float* y, int rows, int n);
void selftest_atomics(const int* v, int items, int per_item, unsigned* hist, float* fsum,
                      double* dsum, int* imax, float* cas_max, int* last);
}  // namespace fastconv::cuda
using namespace fastconv;

static int failures = 0, *checks_out = nullptr;

template <typename A, typename B>
static void expect(const char* what, const A& got, const B& want) {
    ++*checks_out;
    for (size_t i = 0; i < want.size(); ++i)
        if (!(double(got[i]) == double(want[i]))) {
            ++failures;
            printf("FAIL %s at %zu: got %.9g, want %.9g\n", what, i, double(got[i]), double(want[i]));
            return;
        }
}

static void test_grids() {
    const int bx = 8, by = 3, bz = 2, gx = 3, gy = 2, T = bx * by * bz;
    std::vector<int> out(gx * gy * T, -1), want(out.size());
    for (int gyi = 0; gyi < gy; ++gyi)
        for (int gxi = 0; gxi < gx; ++gxi)
            for (int z = 0; z < bz; ++z)
                for (int y = 0; y < by; ++y)
                    for (int x = 0; x < bx; ++x)
                        want[(gyi * gx + gxi) * T + (z * by + y) * bx + x] =
                            x + 16 * (y + 16 * (z + 16 * (gxi + 16 * gyi)));
    cuda::selftest_coords3d(out.data());
    expect("coords3d", out, want);
}

static void test_dynamic_shared(std::mt19937_64& rng) {
    for (int n : {1, 37, 64, 1000, 3000}) {
        const int runs = 4;
        std::vector<float> x(runs * n), y(runs * n, NAN), want(runs * n);
        for (auto& e : x) e = float(int(rng() % 1000) - 500);
        for (int r = 0; r < runs; ++r)
            for (int i = 0; i < n; ++i) want[r * n + i] = x[r * n + n - 1 - i];
        cuda::selftest_reverse_runs(x.data(), y.data(), runs, n);
        expect("reverse_runs (dynamic shared)", y, want);
    }
}

static void test_warp_ops() {
    const int K = 13;
    for (int T : {32, 80}) {
        std::vector<float> out(T * K, NAN), want(T * K);
        for (int t = 0; t < T; ++t) {
            const int base = t / 32 * 32, lane = t % 32, n = std::min(32, T - base);
            float* w = &want[t * K];
            auto in_seg = [&](int src, int width) { return src / width == lane / width; };
            w[0] = 3 * (base + (lane + 5) % n);
            w[1] = lane % 16 >= 3 ? t - 3 : t;
            w[2] = in_seg(lane + 2, 8) && lane + 2 < n ? t + 2 : t;
            w[3] = base + (lane ^ 5);
            unsigned ballot = 0;
            bool any = false, all = true;
            unsigned sum = 0, parity_sum = 0;
            int mn = 1 << 30, mx = -(1 << 30);
            for (int l = 0; l < n; ++l) {
                const int u = base + l;
                if (u % 3 == 0) ballot |= 1u << l;
                any |= u == 40, all &= u < 70;
                sum += u, mn = std::min(mn, 100 - u), mx = std::max(mx, u - 50);
                if (l % 2 == lane % 2) parity_sum += u;
            }
            w[4] = float(ballot & 0xFFFFFF), w[5] = any, w[6] = all, w[7] = sum, w[8] = mn, w[9] = mx;
            w[10] = sum, w[11] = parity_sum, w[12] = base + (lane + 1) % n;
        }
        cuda::selftest_warp_ops(out.data(), T);
        expect(T == 32 ? "warp_ops (1 warp)" : "warp_ops (2.5 warps)", out, want);
    }
}

static void test_atomics(std::mt19937_64& rng) {
    const int items = 5, per_item = 300;
    std::vector<int> v(items * per_item);
    for (auto& e : v) e = int(rng() % 64) - 20;
    std::vector<unsigned> hist(16, 0), hist_want(16, 0);
    float fsum = 0, cas_max = -1000;
    double dsum = 0;
    int imax = -1000, last = 12345;
    double sum = 0;
    int mx = -1000;
    for (int e : v) ++hist_want[e & 15], sum += e, mx = std::max(mx, e);
    cuda::selftest_atomics(v.data(), items, per_item, hist.data(), &fsum, &dsum, &imax, &cas_max, &last);
    expect("atomics: shared histogram", hist, hist_want);
    expect("atomics: float, double, max, CAS max", std::vector<double>{fsum, dsum, double(imax), cas_max},
           std::vector<double>{sum, sum, double(mx), double(mx)});
    ++*checks_out;
    bool found = false;
    for (int e : v) found |= e == last;
    if (!found) ++failures, printf("FAIL atomics: atomicExch left %d, no element's value\n", last);
}

static void test_async_copies(std::mt19937_64& rng) {
    for (int n : {4, 256, 260, 1000, 1536}) {
        const int rows = 3, tiles = (n + 255) / 256;
        std::vector<float> x(rows * n), y(rows * tiles * 64, NAN), want(y.size());
        for (auto& e : x) e = float(int(rng() % 200) - 100);
        for (int r = 0; r < rows; ++r)
            for (int k = 0; k < tiles; ++k)
                for (int t = 0; t < 64; ++t) {
                    double s = 0;
                    for (int i = 0; i < 4; ++i) {
                        const int at = k * 256 + 4 * ((t + 1) % 64) + i;
                        if (at < n) s += x[r * n + at];
                    }
                    want[(r * tiles + k) * 64 + t] = float(s);
                }
        cuda::selftest_tile_sums(x.data(), y.data(), rows, n);
        expect("tile_sums (async copies)", y, want);
    }
}

int test_device_features(int& checks, uint64_t seed) {
    checks_out = &checks;
    std::mt19937_64 rng(seed * 7919 + 1);
    test_grids();
    test_dynamic_shared(rng);
    test_warp_ops();
    test_atomics(rng);
    test_async_copies(rng);
    return failures;
}
