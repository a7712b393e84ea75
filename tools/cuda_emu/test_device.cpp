// The emulator's own device features, through selftest_device.cu's kernels, against
// values computed here: 2-D/3-D grids and blocks, dynamic shared memory, warp
// collectives, atomics (and, in their sections, async copies and WMMA). Called by
// test.cpp's main; returns the number of failures and adds to checks.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

namespace fastconv::cuda {
void selftest_coords3d(int* out);
void selftest_reverse_runs(const float* x, float* y, int runs, int n);
void selftest_warp_ops(float* out, int threads);
void selftest_tile_sums(const float* x, float* y, int rows, int n);
void selftest_wmma_gemm(int precision, const void* a, const void* b, const float* c0, float* d, int M,
                        int N, int K, bool col_out, bool to_tf32);
void selftest_wmma_shared(const float* c0, float* d);
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
    for (int n : {1, 37, 64, 1000, 3000, 20000}) {  // 20000 floats: over 48 KiB
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
    const int K = 15;
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
            w[13] = base, w[14] = base + 1000;
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

// 64-byte aligned storage (WMMA pointers must be 32-byte aligned; std::vector's are 16).
template <typename T>
struct Aligned {
    T* p;
    size_t n;
    explicit Aligned(size_t count) : p(static_cast<T*>(std::aligned_alloc(64, (count * sizeof(T) + 63) / 64 * 64))), n(count) {}
    ~Aligned() { std::free(p); }
    T& operator[](size_t i) const { return p[i]; }
    size_t size() const { return n; }
};

// The conversions, on values whose rounding is known: ties to even (half, bf16), ties
// away from zero (TF32), subnormal halves, overflow to infinity.
static void test_conversions() {
    const float one = 1.f, e11 = std::ldexp(1.f, -11), e10 = std::ldexp(1.f, -10);
    std::vector<double> got = {float(__half(one + e11)), float(__half(one + 3 * e11)),
                               float(__half(std::ldexp(1.f, -25) * 3)), float(__half(65520.f)),
                               float(__half(65519.f)), float(__nv_bfloat16(1.f + std::ldexp(1.f, -8))),
                               float(__nv_bfloat16(1.f + 3 * std::ldexp(1.f, -8))),
                               nvcuda::wmma::__float_to_tf32(one + e11), nvcuda::wmma::__float_to_tf32(-(one + e11)),
                               nvcuda::wmma::__float_to_tf32(one + e11 - std::ldexp(1.f, -20))};
    std::vector<double> want = {1, 1 + 4 * e11, std::ldexp(1.0, -23), INFINITY, 65504,
                                // 1 + 3 * 2^-8: the tie between 1 + 2^-7 and 1 + 2^-6 goes to even
                                1, 1 + std::ldexp(1.0, -6), 1 + e10, -(1 + e10), 1};
    expect("half / bf16 / tf32 conversions", got, want);
}

static void test_wmma(std::mt19937_64& rng) {
    const int M = 32, N = 48, K = 32;
    for (int precision = 0; precision < 3; ++precision)
        for (bool col_out : {false, true}) {
            // Integers in [-8, 7]: exact in TF32, half and bf16; every sum exact in float.
            std::vector<int> ai(M * K), bi(K * N);
            for (auto& e : ai) e = int(rng() % 16) - 8;
            for (auto& e : bi) e = int(rng() % 16) - 8;
            Aligned<float> af(M * K), bf(K * N), c0(M * N), d(M * N);
            Aligned<__half> ah(M * K), bh(K * N);
            Aligned<__nv_bfloat16> ab(M * K), bb(K * N);
            // The kernel's layouts: tf32 A row, B col; half A col, B row; bf16 both row.
            const bool a_row = precision != 1, b_row = precision != 0;
            for (int m = 0; m < M; ++m)
                for (int k = 0; k < K; ++k) {
                    const size_t at = a_row ? m * K + k : k * M + m;
                    af[at] = float(ai[m * K + k]), ah[at] = __half(ai[m * K + k]), ab[at] = __nv_bfloat16(ai[m * K + k]);
                }
            for (int k = 0; k < K; ++k)
                for (int n = 0; n < N; ++n) {
                    const size_t at = b_row ? k * N + n : n * K + k;
                    bf[at] = float(bi[k * N + n]), bh[at] = __half(bi[k * N + n]), bb[at] = __nv_bfloat16(bi[k * N + n]);
                }
            std::vector<double> want(M * N), got(M * N);
            for (int m = 0; m < M; ++m)
                for (int n = 0; n < N; ++n) {
                    c0[m * N + n] = float(int(rng() % 100) - 50);
                    double s = c0[m * N + n];
                    for (int k = 0; k < K; ++k) s += double(ai[m * K + k]) * bi[k * N + n];
                    want[col_out ? n * M + m : m * N + n] = 2 * s;
                }
            for (size_t i = 0; i < d.size(); ++i) d[i] = NAN;
            const void* a = precision == 0 ? (const void*)af.p : precision == 1 ? (const void*)ah.p : (const void*)ab.p;
            const void* b = precision == 0 ? (const void*)bf.p : precision == 1 ? (const void*)bh.p : (const void*)bb.p;
            cuda::selftest_wmma_gemm(precision, a, b, c0.p, d.p, M, N, K, col_out, true);
            for (size_t i = 0; i < got.size(); ++i) got[i] = d[i];
            const char* names[] = {"wmma gemm tf32", "wmma gemm half", "wmma gemm bf16"};
            expect(names[precision], got, want);
        }
    // TF32 on fractions: the inputs rounded by __float_to_tf32 (to nearest, ties away)
    // or, not converted, truncated by the tensor core; each m16n16k8 step sums in
    // double from its float C and rounds once (the emulator's model, mma.h).
    for (bool to_tf32 : {true, false}) {
        const int n = 16, k2 = 16;
        Aligned<float> a(n * k2), b(k2 * n), c(n * n), d(n * n);  // a row-major, b column-major
        std::uniform_real_distribution<float> u(-1, 1);
        for (size_t i = 0; i < a.size(); ++i) a[i] = u(rng), b[i] = u(rng);
        for (size_t i = 0; i < c.size(); ++i) c[i] = u(rng), d[i] = NAN;
        const auto r = [&](float v) {
            return to_tf32 ? nvcuda::wmma::__float_to_tf32(v) : nvcuda::wmma::detail::tf32_truncate(v);
        };
        std::vector<double> got(n * n), want(n * n);
        for (int m = 0; m < n; ++m)
            for (int j = 0; j < n; ++j) {
                float acc = c[m * n + j];
                for (int k0 = 0; k0 < k2; k0 += 8) {
                    double s = acc;
                    for (int k = k0; k < k0 + 8; ++k) s += double(r(a[m * k2 + k])) * r(b[j * k2 + k]);
                    acc = float(s);
                }
                want[m * n + j] = 2.0 * acc;
            }
        cuda::selftest_wmma_gemm(0, a.p, b.p, c.p, d.p, n, n, k2, false, to_tf32);
        for (int i = 0; i < n * n; ++i) got[i] = d[i];
        expect(to_tf32 ? "wmma tf32 rounding (__float_to_tf32)" : "wmma tf32 truncation (unconverted)", got, want);
    }
    // A tile staged in shared memory: d = 0 * tile + tile, stored column-major.
    Aligned<float> c0(256), d(256);
    std::vector<double> got(256), want(256);
    for (int i = 0; i < 256; ++i) c0[i] = float(i % 17) - 8, want[(i % 16) * 16 + i / 16] = c0[i];
    cuda::selftest_wmma_shared(c0.p, d.p);
    for (int i = 0; i < 256; ++i) got[i] = d[i];
    expect("wmma from shared memory, fill_fragment", got, want);
}

int test_device_features(int& checks, uint64_t seed) {
    checks_out = &checks;
    std::mt19937_64 rng(seed * 7919 + 1);
    test_grids();
    test_dynamic_shared(rng);
    test_warp_ops();
    test_atomics(rng);
    test_async_copies(rng);
    test_conversions();
    test_wmma(rng);
    return failures;
}
