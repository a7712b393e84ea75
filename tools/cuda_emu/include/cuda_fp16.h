// __half for the emulated kernels (tools/cuda_emu): IEEE binary16 bits, converted from
// float with round-to-nearest-even (subnormals, infinities and NaN included), as the
// hardware's cvt.rn.f16.f32 does; to float exactly.
#pragma once
#include <cstdint>
#include <cstring>

struct __half;
namespace emu {
inline uint16_t float_to_half_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    x &= 0x7FFFFFFF;
    if (x >= 0x7F800000) return sign | (x > 0x7F800000 ? 0x7E00 : 0x7C00);
    if (x >= 0x477FF000) return sign | 0x7C00;  // >= 65520 rounds to infinity
    if (x < 0x38800000) {                        // below 2^-14: a subnormal (or zero)
        float a;
        std::memcpy(&a, &x, 4);
        const double q = double(a) * 16777216.0;  // in units of 2^-24, exact
        double r = double(int64_t(q));
        const double rem = q - r;
        if (rem > 0.5 || (rem == 0.5 && int64_t(r) % 2 == 1)) r += 1;
        return sign | uint16_t(r);
    }
    uint32_t h = ((x >> 23) - 112) << 10 | (x >> 13 & 0x3FF);
    const uint32_t rem = x & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
    return sign | uint16_t(h);
}
inline float half_bits_to_float(uint16_t h) {
    const int e = h >> 10 & 0x1F, m = h & 0x3FF;
    const float s = (h & 0x8000) ? -1.f : 1.f;
    if (e == 0) return s * float(m) * (1.f / 16777216.f);
    if (e == 31) return m ? __builtin_nanf("") : s * __builtin_inff();
    uint32_t x = uint32_t(h & 0x8000) << 16 | uint32_t(e + 112) << 23 | uint32_t(m) << 13;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
}  // namespace emu

struct __half {
    uint16_t bits_;
    __half() = default;
    __half(float f) : bits_(emu::float_to_half_bits(f)) {}
    __half(double d) : __half(float(d)) {}
    __half(int i) : __half(float(i)) {}
    operator float() const { return emu::half_bits_to_float(bits_); }
};
typedef __half half;
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
