// __nv_bfloat16 for the emulated kernels (tools/cuda_emu): the top 16 bits of a float,
// converted with round-to-nearest-even (NaN kept quiet), as cvt.rn.bf16.f32 does.
#pragma once
#include <cstdint>
#include <cstring>

namespace emu {
inline uint16_t float_to_bf16_bits(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7FFFFFFF) > 0x7F800000) return uint16_t(x >> 16 | 0x40);
    return uint16_t((x + 0x7FFF + (x >> 16 & 1)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
    const uint32_t x = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
}  // namespace emu

struct __nv_bfloat16 {
    uint16_t bits_;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : bits_(emu::float_to_bf16_bits(f)) {}
    __nv_bfloat16(double d) : __nv_bfloat16(float(d)) {}
    __nv_bfloat16(int i) : __nv_bfloat16(float(i)) {}
    operator float() const { return emu::bf16_bits_to_float(bits_); }
};
typedef __nv_bfloat16 nv_bfloat16;
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
