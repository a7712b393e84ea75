// Host check of csrc/cuda/cuda_common.cuh's DivMod (the multiply-high division the
// kernels use) against / and %: int32_t on every divisor below 5000, powers of two and
// their neighbours, 20 000 random divisors, each with small, boundary and random
// numerators in [0, 2^31); int64_t the same way up to 2^63; and index32's limit. No GPU:
//   g++ -O2 -std=c++17 -Itools/cuda_emu/include -Icsrc tools/divmod_check.cpp -o /tmp/dm && /tmp/dm
#include "cuda_runtime.h"
#include "cuda/cuda_common.cuh"

#include <cstdio>
#include <random>

using namespace fastconv::cuda;

int main() {
    std::mt19937_64 rng(1);
    long bad = 0, n = 0;
    auto check = [&](int64_t d) {
        const DivMod<int32_t> dm(d);
        auto one = [&](int64_t x) {
            int32_t q;
            const int32_t r = dm.divmod(int32_t(x), q);
            ++n;
            if ((q != x / d || r != x % d) && bad++ < 5) printf("wrong: %ld / %ld gave %d\n", x, d, q);
        };
        for (int64_t x = 0; x < 3000; ++x) one(x);
        for (int64_t x : {int64_t(INT32_MAX), int64_t(INT32_MAX) - 1, d - 1, d, d + 1, 2 * d - 1,
                          INT32_MAX / d * d, INT32_MAX / d * d - 1})
            if (x >= 0 && x <= INT32_MAX) one(x);
        for (int k = 0; k < 2000; ++k) one(int64_t(rng() % (uint64_t(INT32_MAX) + 1)));
    };
    for (int64_t d = 1; d < 5000; ++d) check(d);
    for (int s = 0; s < 31; ++s)
        for (int64_t d : {(int64_t(1) << s) - 1, int64_t(1) << s, (int64_t(1) << s) + 1})
            if (d >= 1 && d <= INT32_MAX) check(d);
    for (int k = 0; k < 20000; ++k) check(1 + int64_t(rng() % INT32_MAX));
    check(INT32_MAX);
    auto check64 = [&](int64_t d) {
        const DivMod<int64_t> dm(d);
        auto one = [&](int64_t x) {
            int64_t q;
            const int64_t r = dm.divmod(x, q);
            ++n;
            if ((q != x / d || r != x % d) && bad++ < 5) printf("wrong: %ld / %ld gave %ld\n", x, d, q);
        };
        for (int64_t x = 0; x < 300; ++x) one(x);
        for (int64_t x : {INT64_MAX, INT64_MAX - 1, d - 1, d, d + 1, INT64_MAX / d * d, INT64_MAX / d * d - 1})
            if (x >= 0) one(x);
        for (int k = 0; k < 200; ++k) one(int64_t(rng() >> 1));
        for (int k = 0; k < 200; ++k) one(int64_t(rng() >> (1 + rng() % 62)));
    };
    for (int64_t d = 1; d < 2000; ++d) check64(d);
    for (int s = 0; s < 63; ++s)
        for (int64_t d : {(int64_t(1) << s) - 1, int64_t(1) << s, (int64_t(1) << s) + 1})
            if (d >= 1) check64(d);
    for (int k = 0; k < 20000; ++k) check64(1 + int64_t((rng() >> 1) >> (rng() % 62)));
    check64(INT64_MAX);
    // A grid-stride step past the largest 32-bit extent still fits.
    const bool limit_ok = kIndex32Max + kMaxBlocks * 1024 <= INT32_MAX && index32(kIndex32Max) ==
                          !force_index64() && !index32(kIndex32Max + 1) && !index32(int64_t(1) << 31);
    printf("%ld divisions checked, %ld wrong; index32 limit %s\n", n, bad, limit_ok ? "ok" : "WRONG");
    return bad != 0 || !limit_ok;
}
