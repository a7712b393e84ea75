// The CUDA kernels, translated by translate.py and run on the CPU by emu.cpp, against
// their CPU twins on random shapes and parameters (see README.md). Exit status 1 on
// any mismatch; the last line says how many checks ran.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/activation.h"
#include "common/shapes.h"
#include "cpu/cpu_ops.h"
#include "cuda/cuda_ops.h"

using namespace fastconv;
namespace fastconv::cuda {
void selftest_block_sum(int64_t items, int rounds, float* out);  // selftest.cu
}
int test_device_features(int& checks, uint64_t seed);  // test_device.cpp
// The data follow the emulator's seed too, so one EMU_SEED reproduces a whole run.
static std::seed_seq data_seed{uint64_t(12345), emu_seed()};
static std::mt19937_64 rng(data_seed);
static int failures = 0, checks = 0;

static int64_t ri(int64_t a, int64_t b) { return std::uniform_int_distribution<int64_t>(a, b)(rng); }

template <typename T>
static std::vector<T> fill(int64_t n, bool integer) {
    std::vector<T> v(n);
    std::uniform_real_distribution<double> u(-1, 1);
    for (auto& e : v) e = integer ? T(ri(-3, 3)) : T(u(rng));
    return v;
}

static std::vector<double> to_d(const std::vector<float>& v) { return {v.begin(), v.end()}; }

static void compare(const char* what, const std::string& cfg, const std::vector<float>& got,
                    const std::vector<double>& ref, bool exact, double tol = 2e-6) {
    ++checks;
    double num = 0, den = 0;
    int64_t bad = -1;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double g = got[i], r = ref[i];
        if (std::isnan(r) != std::isnan(g) || (std::isinf(r) && g != r)) { bad = i; break; }
        if (std::isnan(r) || std::isinf(r)) continue;
        if (exact && g != float(r)) { bad = i; break; }
        num += (g - r) * (g - r), den += r * r;
    }
    const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
    if (bad >= 0 || rel > tol) {
        ++failures;
        printf("FAIL %s %s rel=%g bad=%lld", what, cfg.c_str(), rel, (long long)bad);
        if (bad >= 0) printf(" got=%g ref=%g", got[bad], ref[bad]);
        printf("\n");
    }
}

static std::string conv_str(const Conv2dParams& p) {
    char buf[400];
    snprintf(buf, sizeof buf,
             "[%s N%ld C%ld H%ld W%ld K%ld R%ld S%ld P%ld Q%ld s%ld,%ld p%ld,%ld d%ld,%ld g%ld act%d b%d]",
             p.layout == Layout::NCHW ? "NCHW" : "NHWC", p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.P,
             p.Q, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dil_h, p.dil_w, p.groups, int(p.act),
             int(p.has_bias));
    return buf;
}

// The window (dilation, padding, output size) and the epilogue (layout, activation, bias)
// of a drawn convolution; false when the output is empty.
static bool draw_window(Conv2dParams& p) {
    p.dil_h = ri(1, 2), p.dil_w = ri(1, 2);
    p.pad_h = ri(0, 2), p.pad_w = ri(0, 2);
    p.P = conv_out_size(p.H, p.R, p.stride_h, p.pad_h, p.pad_h + ri(0, 1), p.dil_h);
    p.Q = conv_out_size(p.W, p.S, p.stride_w, p.pad_w, p.pad_w + ri(0, 1), p.dil_w);
    p.layout = ri(0, 1) ? Layout::NCHW : Layout::NHWC;
    p.act = Activation(ri(0, 3));
    p.has_bias = ri(0, 1);
    return p.P >= 1 && p.Q >= 1;
}

static bool make_conv(Conv2dParams& p, bool depthwise, bool big) {
    p = Conv2dParams{};
    p.groups = depthwise ? ri(1, 6) : (ri(0, 4) < 3 ? 1 : ri(2, 3));
    const int64_t Cg = depthwise ? 1 : ri(1, big ? 9 : 4);
    const int64_t Kg = depthwise ? ri(1, 2) : (big ? ri(50, 140) : ri(1, 4));
    p.N = ri(1, 3), p.C = Cg * p.groups, p.K = Kg * p.groups;
    const int64_t sizes[] = {1, 2, 3, 5, 7, 8, 11, 13};
    p.H = big ? ri(6, 17) : sizes[ri(0, 7)], p.W = big ? ri(6, 17) : sizes[ri(0, 7)];
    p.R = ri(1, 5), p.S = ri(1, 5);
    p.stride_h = ri(1, 4), p.stride_w = ri(0, 1) ? p.stride_h : ri(1, 4);
    if (big) p.stride_h = ri(1, 2), p.stride_w = ri(1, 2);
    return draw_window(p);
}

// The forward's reference in double: the CPU twin without the activation, then
// + residual (y-shaped, or empty), then the activation, as the kernels order them.
static std::vector<double> conv_ref(Conv2dParams p, const std::vector<double>& x,
                                    const std::vector<double>& w, const std::vector<double>& b,
                                    const std::vector<double>& res) {
    const Activation act = p.act;
    p.act = Activation::None;
    std::vector<double> y(p.N * p.K * p.P * p.Q);
    cpu::conv2d_fwd<double>(p, cpu::ConvVariant::Direct, x.data(), w.data(), p.has_bias ? b.data() : nullptr,
                            y.data());
    for (size_t i = 0; i < y.size(); ++i) y[i] = activate(act, res.empty() ? y[i] : y[i] + res[i]);
    return y;
}

static void test_conv(int iters, bool depthwise, bool big) {
    for (int it = 0; it < iters; ++it) {
        Conv2dParams p;
        if (!make_conv(p, depthwise, big)) { --it; continue; }
        const bool integer = it % 2 == 1;
        if (integer) p.act = ri(0, 1) ? Activation::None : Activation::Relu;
        const int64_t Cg = p.C / p.groups;
        auto x = fill<float>(p.N * p.C * p.H * p.W, integer);
        auto w = fill<float>(p.K * Cg * p.R * p.S, integer);
        auto b = fill<float>(p.K, integer);
        const int64_t ny = p.N * p.K * p.P * p.Q;
        // A residual on every third draw (y-shaped, added before the activation).
        const bool with_res = it % 3 == 2;
        const auto res = with_res ? fill<float>(ny, integer) : std::vector<float>();
        auto xd = to_d(x), wd = to_d(w), bd = to_d(b);
        const std::vector<double> yref = conv_ref(p, xd, wd, bd, to_d(res));
        const std::string cfg = conv_str(p) + (with_res ? " +res" : "");
        std::vector<cuda::ConvVariant> vs = {cuda::ConvVariant::Direct, cuda::ConvVariant::ImplicitGemm,
                                             cuda::ConvVariant::Auto};
        if (p.C == p.groups) vs.push_back(cuda::ConvVariant::Depthwise);
        for (auto v : vs) {
            std::vector<float> y(ny, NAN);
            cuda::conv2d_fwd(p, v, x.data(), w.data(), p.has_bias ? b.data() : nullptr, y.data(), nullptr,
                             with_res ? res.data() : nullptr);
            const char* names[] = {"fwd-auto", "fwd-direct", "fwd-igemm", "fwd-depthwise"};
            compare(names[int(v)], cfg, y, yref, integer);
        }
        // backward (act none: dy is the gradient of z)
        auto dy = fill<float>(ny, integer);
        auto dyd = to_d(dy);
        std::vector<double> dxr(x.size()), dwr(w.size()), dbr(p.K);
        cpu::conv2d_bwd_data<double>(p, cpu::ConvVariant::Direct, dyd.data(), wd.data(), dxr.data());
        cpu::conv2d_bwd_filter<double>(p, cpu::ConvVariant::Direct, dyd.data(), xd.data(), dwr.data());
        cpu::conv2d_bwd_bias<double>(p, dyd.data(), dbr.data());
        std::vector<float> dx(x.size(), NAN), dw(w.size(), NAN), db(p.K, NAN);
        for (auto v : {cuda::ConvVariant::Auto, cuda::ConvVariant::Direct, cuda::ConvVariant::ImplicitGemm}) {
            std::fill(dx.begin(), dx.end(), NAN);
            cuda::conv2d_bwd_data(p, v, dy.data(), w.data(), dx.data(), nullptr);
            compare(v == cuda::ConvVariant::ImplicitGemm ? "bwd-data-gemm" : "bwd-data", cfg, dx,
                    dxr, integer, 5e-6);
        }
        cuda::conv2d_bwd_bias(p, dy.data(), db.data(), nullptr);
        for (auto v : {cuda::ConvVariant::Auto, cuda::ConvVariant::Direct, cuda::ConvVariant::ImplicitGemm}) {
            std::fill(dw.begin(), dw.end(), NAN);
            cuda::conv2d_bwd_filter(p, v, dy.data(), x.data(), dw.data(), nullptr);
            compare(v == cuda::ConvVariant::ImplicitGemm ? "bwd-filter-gemm" : "bwd-filter", cfg, dw,
                    dwr, integer, 5e-6);
        }
        compare("bwd-bias", cfg, db, dbr, integer, 5e-6);
    }
}

// ------------------------------------------------------------------ tensor cores
// The tensor-core implicit GEMM (conv2d_fwd_tc.cu): float32 in TF32 and TF32x3, float16
// and bfloat16, against the double reference on the values the kernel multiplies.

// __float_to_tf32's rounding: nearest, ties away from zero, 10 mantissa bits.
static float tf32_round(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7F800000) != 0x7F800000) u = (u + 0x1000) & ~0x1FFFu;
    std::memcpy(&f, &u, 4);
    return f;
}

template <typename T>
static std::vector<T> to_t(const std::vector<float>& v) { return {v.begin(), v.end()}; }
template <typename T>
static std::vector<float> to_f(const std::vector<T>& v) {
    std::vector<float> f(v.size());
    for (size_t i = 0; i < v.size(); ++i) f[i] = float(v[i]);
    return f;
}

// Shapes whose GEMM spans several tiles and leaves ragged ones (M, Kg and Cg*R*S not
// multiples of 128, 64, 32), with channel counts that take the 16-byte copies (Cg, Kg
// multiples of 8) and the element loads (odd ones).
static bool make_conv_tc(Conv2dParams& p) {
    p = Conv2dParams{};
    p.groups = ri(0, 3) ? 1 : ri(2, 3);
    const int64_t cgs[] = {1, 3, 4, 5, 8, 16, 24};
    const int64_t Cg = cgs[ri(0, 6)];
    const int64_t kgs[] = {ri(1, 7), 8, 16, ri(9, 40), 64, ri(65, 90)};
    const int64_t Kg = kgs[ri(0, p.groups > 1 ? 3 : 5)];
    p.N = ri(1, 2), p.C = Cg * p.groups, p.K = Kg * p.groups;
    p.H = ri(3, 14), p.W = ri(3, 14);
    p.R = ri(1, 3), p.S = ri(1, 3);
    p.stride_h = ri(1, 2), p.stride_w = ri(1, 2);
    return draw_window(p);
}

// Each draw runs TF32, TF32x3, float16 and bfloat16. Integer draws (x, w, b, residual in
// [-8, 7]; sums far inside float's exact range, every value exact in TF32, fp16 and
// bf16) compare bit for bit: float outputs with the exact sum, fp16 / bf16 outputs with
// it rounded once to the type. Random draws: TF32 against the reference on inputs
// rounded as __float_to_tf32 rounds (2e-6), TF32x3 against the float inputs' (1e-5: the
// dropped small*small term is ~2^-22 relative), fp16 / bf16 against the reference on the
// converted inputs within the output type's rounding (2^-11, 2^-8, plus 1e-5). Outputs
// start as NaN. On one draw in three x or w is shifted one element off 16-byte
// alignment: the element loads then run in place of the copies. The first four draws are
// fixed (they run at SCALE 0 too, for mutate.py --fast): both layouts, the copies and the
// element loads, several tiles in M, Kg and the reduction.
static Conv2dParams fixed_conv_tc(int i) {
    Conv2dParams p{};
    // layout, N, C, H, W, K, R, S, stride, pad, dilation, groups, act
    const int64_t f[4][15] = {{1, 2, 8, 11, 9, 72, 3, 3, 1, 1, 1, 1, 1, 1, 1},
                              {0, 1, 6, 13, 12, 10, 2, 3, 2, 1, 1, 0, 2, 2, 2},
                              {1, 1, 3, 12, 12, 16, 3, 3, 1, 1, 1, 1, 1, 1, 0},
                              {0, 2, 8, 10, 10, 69, 2, 2, 1, 1, 1, 1, 1, 1, 3}};
    p.layout = Layout(f[i][0]), p.N = f[i][1], p.C = f[i][2], p.H = f[i][3], p.W = f[i][4];
    p.K = f[i][5], p.R = f[i][6], p.S = f[i][7], p.stride_h = f[i][8], p.stride_w = f[i][9];
    p.pad_h = f[i][10], p.pad_w = f[i][11], p.dil_h = f[i][12], p.dil_w = 1, p.groups = f[i][13];
    p.act = Activation(f[i][14]), p.has_bias = true;
    p.P = conv_out_size(p.H, p.R, p.stride_h, p.pad_h, p.pad_h, p.dil_h);
    p.Q = conv_out_size(p.W, p.S, p.stride_w, p.pad_w, p.pad_w, p.dil_w);
    return p;
}

static void test_conv_tc(int iters) {
    constexpr int kFixed = 4;
    for (int it = 0; it < kFixed + iters; ++it) {
        Conv2dParams p;
        if (it < kFixed) p = fixed_conv_tc(it);
        else if (!make_conv_tc(p)) { --it; continue; }
        const bool integer = it % 2 == 0;
        if (integer && it >= kFixed) p.act = ri(0, 1) ? Activation::None : Activation::Relu;
        const int64_t Cg = p.C / p.groups, nx = p.N * p.C * p.H * p.W, nw = p.K * Cg * p.R * p.S;
        const int64_t ny = p.N * p.K * p.P * p.Q;
        const bool with_res = it < kFixed ? it != 1 : ri(0, 2) != 0;
        const int shift_x = it % 3 == 1 ? 1 : 0, shift_w = it % 3 == 2 ? 1 : 0;
        std::vector<float> x(nx + shift_x), w(nw + shift_w), b(p.K), res(with_res ? ny : 0);
        std::uniform_real_distribution<float> u(-1, 1);
        for (auto* v : {&x, &w, &b, &res})
            for (auto& e : *v) e = integer ? float(ri(-8, 7)) : u(rng);
        const std::vector<double> resd = to_d(res), bd = to_d(b);
        std::vector<double> xd(x.begin() + shift_x, x.end()), wd(w.begin() + shift_w, w.end());
        char tag[64];
        snprintf(tag, sizeof tag, "%s%s%s", with_res ? " +res" : "", shift_x ? " x+1" : "", shift_w ? " w+1" : "");
        const std::string cfg = conv_str(p) + tag;
        const float* bias = p.has_bias ? b.data() : nullptr;
        const float* rp = with_res ? res.data() : nullptr;
        // float32 on tensor cores: TF32, TF32x3.
        // (Auto on a layer it gives to direct or depthwise runs that kernel in float32.)
        const auto v = it % 4 < 2 ? cuda::ConvVariant::ImplicitGemm : cuda::ConvVariant::Auto;
        const bool tc = cuda::conv2d_auto_variant(p) == cuda::ConvVariant::ImplicitGemm ||
                        v == cuda::ConvVariant::ImplicitGemm;
        for (Precision prec : {Precision::TF32, Precision::TF32x3}) {
            p.precision = prec;
            std::vector<double> xr = xd, wr = wd;
            if (prec == Precision::TF32 && !integer && tc) {
                for (auto& e : xr) e = tf32_round(float(e));
                for (auto& e : wr) e = tf32_round(float(e));
            }
            const std::vector<double> ref = conv_ref(p, xr, wr, bd, resd);
            std::vector<float> y(ny, NAN);
            cuda::conv2d_fwd(p, v, x.data() + shift_x, w.data() + shift_w, bias, y.data(), nullptr, rp);
            compare(!tc ? "fwd-tc-auto-simt" : prec == Precision::TF32 ? "fwd-tc-tf32" : "fwd-tc-tf32x3", cfg,
                    y, ref, integer, prec == Precision::TF32 ? 2e-6 : 1e-5);
        }
        p.precision = Precision::Strict;
        // float16 and bfloat16: the reference on the converted values; the output rounded
        // once from the float result.
        const auto run16 = [&](auto zero, const char* what, double unit) {
            using T = decltype(zero);
            const auto xt = to_t<T>(x), wt = to_t<T>(w), bt = to_t<T>(b), rt = to_t<T>(res);
            std::vector<double> xr(xt.begin() + shift_x, xt.end()), wr(wt.begin() + shift_w, wt.end());
            const std::vector<double> br(bt.begin(), bt.end()), rr(rt.begin(), rt.end());
            std::vector<double> ref = conv_ref(p, xr, wr, br, rr);
            if (integer)
                for (auto& e : ref) e = float(T(float(e)));
            std::vector<T> y(ny, T(NAN));
            cuda::conv2d_fwd(p, v, xt.data() + shift_x, wt.data() + shift_w, p.has_bias ? bt.data() : nullptr,
                             y.data(), nullptr, with_res ? rt.data() : nullptr);
            compare(what, cfg, to_f(y), ref, integer, unit + 1e-5);
        };
        run16(__half(0.f), "fwd-tc-fp16", std::ldexp(1.0, -11));
        run16(__nv_bfloat16(0.f), "fwd-tc-bf16", std::ldexp(1.0, -8));
    }
    // float16 / bfloat16 refuse every variant but auto and implicit_gemm, naming it.
    Conv2dParams p{};
    p.N = 1, p.C = 1, p.K = 1, p.groups = 1, p.H = p.W = 3, p.R = p.S = 1, p.P = p.Q = 3;
    p.stride_h = p.stride_w = p.dil_h = p.dil_w = 1;
    const std::pair<cuda::ConvVariant, const char*> refused[] = {
        {cuda::ConvVariant::Direct, "direct"}, {cuda::ConvVariant::Depthwise, "depthwise"},
        {cuda::ConvVariant::Winograd2, "winograd2"}};
    for (const auto& [v, name] : refused) {
        std::string msg16, msgbf;
        try {
            const __half* none = nullptr;
            cuda::conv2d_fwd(p, v, none, none, none, nullptr, nullptr);
        } catch (const std::invalid_argument& e) { msg16 = e.what(); }
        try {
            const __nv_bfloat16* none = nullptr;
            cuda::conv2d_fwd(p, v, none, none, none, nullptr, nullptr);
        } catch (const std::invalid_argument& e) { msgbf = e.what(); }
        ++checks;
        if (msg16.find("float16") == std::string::npos || msg16.find(name) == std::string::npos ||
            msgbf.find("bfloat16") == std::string::npos || msgbf.find(name) == std::string::npos)
            ++failures, printf("FAIL fwd-tc variant %s not refused by name: '%s' '%s'\n", name, msg16.c_str(),
                               msgbf.c_str());
    }
}

// The tensor-core grad input and grad weight (conv2d_bwd_tc.cu), TF32 and TF32x3, against
// the CPU twin in double: exact on integer draws (dy, w, x in [-8, 7]: every value exact
// in TF32, every sum exact in float), on random ones TF32 against the reference on inputs
// rounded as __float_to_tf32 rounds (5e-6, the SIMT backward's bound: the grad weight's
// sums run over thousands of pixels) and TF32x3 against the float inputs' (1e-5); outputs
// NaN-filled, and the bits of two calls identical (the grad weight's second call through
// a NaN-filled workspace of conv2d_bwd_filter_workspace bytes). On one draw in three dy,
// or x and w, sit one element off 16-byte alignment: the element loads then run in place
// of the copies. The first five draws are fixed (SCALE 0 runs them): stride 2 with two
// k-tiles a tap and the copies, stride 3 x 1 with dilation and two channel tiles (NCHW),
// groups with odd channel counts, and two draws of over 2048 pixels (two split-K chunks).
static Conv2dParams fixed_bwd_tc(int i) {
    Conv2dParams p{};
    // layout, N, C, H, W, K, R, S, stride h, w, pad h, w, dilation h, w, groups
    const int64_t f[5][15] = {{1, 2, 24, 13, 12, 40, 3, 3, 2, 2, 1, 1, 1, 1, 1},
                              {0, 1, 70, 9, 11, 36, 3, 2, 3, 1, 2, 0, 2, 1, 1},
                              {1, 2, 10, 11, 9, 138, 2, 3, 1, 2, 1, 1, 1, 2, 2},
                              {0, 3, 4, 33, 32, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1},
                              {1, 3, 8, 32, 33, 132, 3, 3, 1, 1, 1, 1, 1, 1, 1}};
    p.layout = Layout(f[i][0]), p.N = f[i][1], p.C = f[i][2], p.H = f[i][3], p.W = f[i][4];
    p.K = f[i][5], p.R = f[i][6], p.S = f[i][7], p.stride_h = f[i][8], p.stride_w = f[i][9];
    p.pad_h = f[i][10], p.pad_w = f[i][11], p.dil_h = f[i][12], p.dil_w = f[i][13], p.groups = f[i][14];
    p.P = conv_out_size(p.H, p.R, p.stride_h, p.pad_h, p.pad_h, p.dil_h);
    p.Q = conv_out_size(p.W, p.S, p.stride_w, p.pad_w, p.pad_w, p.dil_w);
    return p;
}

// Several tiles and ragged ones each way (M of a phase past 128, Cg past 64, Kg past 32
// and 128, Cg*R*S past 64), strides 1-3, dilation, padding, groups, both layouts; channel
// counts that take the copies (multiples of 4) and the element loads.
static bool draw_bwd_tc(Conv2dParams& p) {
    p = Conv2dParams{};
    p.layout = ri(0, 1) ? Layout::NCHW : Layout::NHWC;
    p.groups = ri(0, 3) ? 1 : ri(2, 3);
    const int64_t cgs[] = {1, 3, 4, 8, 16, 24, ri(60, 72)};
    const int64_t Cg = cgs[ri(0, 6)];
    const int64_t kgs[] = {ri(1, 7), 8, 16, ri(9, 40), 64, ri(65, 140)};
    const int64_t Kg = kgs[ri(0, p.groups > 1 ? 3 : 5)];
    p.N = ri(1, 2), p.C = Cg * p.groups, p.K = Kg * p.groups;
    p.H = ri(3, 16), p.W = ri(3, 16), p.R = ri(1, 3), p.S = ri(1, 3);
    p.stride_h = ri(1, 3), p.stride_w = ri(0, 1) ? p.stride_h : ri(1, 3);
    p.dil_h = ri(1, 2), p.dil_w = ri(1, 2), p.pad_h = ri(0, 2), p.pad_w = ri(0, 2);
    p.P = conv_out_size(p.H, p.R, p.stride_h, p.pad_h, p.pad_h + ri(0, 1), p.dil_h);
    p.Q = conv_out_size(p.W, p.S, p.stride_w, p.pad_w, p.pad_w + ri(0, 1), p.dil_w);
    return p.P >= 1 && p.Q >= 1;
}

static void test_bwd_tc(int iters) {
    constexpr int kFixed = 5;
    for (int it = 0; it < kFixed + iters; ++it) {
        Conv2dParams p;
        if (it < kFixed) p = fixed_bwd_tc(it);
        else if (!draw_bwd_tc(p)) { --it; continue; }
        const bool integer = it % 2 == 0;
        const int64_t Cg = p.C / p.groups, nx = p.N * p.C * p.H * p.W, nw = p.K * Cg * p.R * p.S;
        const int64_t ny = p.N * p.K * p.P * p.Q;
        const int s_dy = it % 3 == 1 ? 1 : 0, s_xw = it % 3 == 2 ? 1 : 0;
        std::vector<float> x(nx + s_xw), w(nw + s_xw), dy(ny + s_dy);
        std::uniform_real_distribution<float> u(-1, 1);
        for (auto* v : {&x, &w, &dy})
            for (auto& e : *v) e = integer ? float(ri(-8, 7)) : u(rng);
        const float *xp = x.data() + s_xw, *wp = w.data() + s_xw, *dyp = dy.data() + s_dy;
        const std::vector<double> xd(xp, xp + nx), wd(wp, wp + nw), dyd(dyp, dyp + ny);
        const std::string cfg = conv_str(p) + (s_dy ? " dy+1" : "") + (s_xw ? " x,w+1" : "");
        // Grad input as ImplicitGemm (the fixed draws) or Auto (which may give the layer to
        // the gather, in float32); grad weight as ImplicitGemm.
        const auto vd = it < kFixed || it % 4 < 2 ? cuda::ConvVariant::ImplicitGemm : cuda::ConvVariant::Auto;
        const bool tc_data = vd == cuda::ConvVariant::ImplicitGemm ||
                             cuda::conv2d_bwd_data_auto_variant(p) == cuda::ConvVariant::ImplicitGemm;
        for (Precision prec : {Precision::TF32, Precision::TF32x3}) {
            p.precision = prec;
            const bool tf32 = prec == Precision::TF32 && !integer;
            const auto rounded = [&](std::vector<double> v, bool round) {
                if (round)
                    for (auto& e : v) e = tf32_round(float(e));
                return v;
            };
            const double tol = prec == Precision::TF32 ? 5e-6 : 1e-5;
            {
                std::vector<double> ref(nx);
                cpu::conv2d_bwd_data<double>(p, cpu::ConvVariant::Direct, rounded(dyd, tf32 && tc_data).data(),
                                             rounded(wd, tf32 && tc_data).data(), ref.data());
                std::vector<float> dx(nx, NAN), dx2(nx, NAN);
                cuda::conv2d_bwd_data(p, vd, dyp, wp, dx.data(), nullptr);
                cuda::conv2d_bwd_data(p, vd, dyp, wp, dx2.data(), nullptr);
                const char* what = !tc_data ? "bwd-data-tc-auto-simt"
                                   : prec == Precision::TF32 ? "bwd-data-tc-tf32" : "bwd-data-tc-tf32x3";
                compare(what, cfg, dx, ref, integer, tol);
                ++checks;
                if (std::memcmp(dx.data(), dx2.data(), nx * sizeof(float)) != 0)
                    ++failures, printf("FAIL %s not deterministic %s\n", what, cfg.c_str());
            }
            {
                std::vector<double> ref(nw);
                cpu::conv2d_bwd_filter<double>(p, cpu::ConvVariant::Direct, rounded(dyd, tf32).data(),
                                               rounded(xd, tf32).data(), ref.data());
                std::vector<float> dw(nw, NAN), dw2(nw, NAN);
                cuda::conv2d_bwd_filter(p, cuda::ConvVariant::ImplicitGemm, dyp, xp, dw.data(), nullptr);
                const int64_t ws_bytes = cuda::conv2d_bwd_filter_workspace(p, cuda::ConvVariant::ImplicitGemm);
                std::vector<float> ws(ws_bytes / sizeof(float), NAN);
                cuda::conv2d_bwd_filter(p, cuda::ConvVariant::ImplicitGemm, dyp, xp, dw2.data(), nullptr,
                                        ws.data());
                const char* what = prec == Precision::TF32 ? "bwd-filter-tc-tf32" : "bwd-filter-tc-tf32x3";
                compare(what, cfg, dw, ref, integer, tol);
                ++checks;
                if (std::memcmp(dw.data(), dw2.data(), nw * sizeof(float)) != 0)
                    ++failures, printf("FAIL %s not deterministic %s\n", what, cfg.c_str());
            }
        }
    }
}

// The grad-weight GEMM with several split-K chunks (N * P * Q > 2048 pixels), both
// layouts, groups, strides and padding; and its bits identical from run to run.
static void test_bwd_filter_splits() {
    for (int it = 0; it < 4; ++it) {
        Conv2dParams p{};
        p.layout = it % 2 ? Layout::NCHW : Layout::NHWC;
        p.groups = it < 2 ? 1 : 2;
        p.N = 3, p.C = 2 * p.groups, p.K = 3 * p.groups, p.H = 32, p.W = 31 + it, p.R = 3, p.S = 2;
        p.stride_h = 1, p.stride_w = it == 3 ? 2 : 1, p.dil_h = p.dil_w = 1, p.pad_h = 1, p.pad_w = 0;
        p.P = conv_out_size(p.H, p.R, p.stride_h, 1, 1, 1);
        p.Q = conv_out_size(p.W, p.S, p.stride_w, 0, 0, 1);
        const bool integer = it % 2 == 0;
        auto x = fill<float>(p.N * p.C * p.H * p.W, integer);
        auto dy = fill<float>(p.N * p.K * p.P * p.Q, integer);
        const int64_t nw = p.K * (p.C / p.groups) * p.R * p.S;
        std::vector<double> dwr(nw);
        auto xd = to_d(x), dyd = to_d(dy);
        cpu::conv2d_bwd_filter<double>(p, cpu::ConvVariant::Direct, dyd.data(), xd.data(), dwr.data());
        std::vector<float> dw(nw, NAN), dw2(nw, NAN);
        cuda::conv2d_bwd_filter(p, cuda::ConvVariant::ImplicitGemm, dy.data(), x.data(), dw.data(), nullptr);
        // The second run's partials in a caller's workspace (as the Python layer passes
        // one from torch's or CuPy's allocator), NaN-filled: the same bits. (A draw
        // with one split needs none: the size is then 0 and the pointer unused.)
        const int64_t ws_bytes = cuda::conv2d_bwd_filter_workspace(p, cuda::ConvVariant::ImplicitGemm);
        std::vector<float> ws(ws_bytes / sizeof(float), NAN);
        cuda::conv2d_bwd_filter(p, cuda::ConvVariant::ImplicitGemm, dy.data(), x.data(), dw2.data(), nullptr,
                                ws.data());
        compare("bwd-filter-splits", conv_str(p), dw, dwr, integer, 5e-6);
        ++checks;
        if (dw != dw2) ++failures, printf("FAIL bwd-filter-splits not deterministic %s\n", conv_str(p).c_str());
    }
}

// The grad-input GEMM (and the gather beside it) on shapes that fill several tiles:
// more than 64 pixels a phase and more than 64 channels a group (ragged last tiles),
// Kg not a multiple of the 16-deep slice, strides 1-4 (phases without taps when the
// stride exceeds the dilated kernel or shares a factor with the dilation), dilation,
// padding up to beyond the kernel with a bottom / right one more or less, groups, both
// layouts; exact on small integers, within 5e-6 on random floats; dx NaN-filled before
// each call; and the bits of two calls identical.
static bool draw_bwd_data(Conv2dParams& p, int it) {
    p = Conv2dParams{};
    p.layout = it % 2 ? Layout::NCHW : Layout::NHWC;
    p.groups = ri(0, 2) ? 1 : 2;
    const int64_t Cg = ri(0, 1) ? ri(1, 20) : ri(60, 75), Kg = ri(1, 40);
    p.N = ri(1, 3), p.C = Cg * p.groups, p.K = Kg * p.groups;
    p.H = ri(1, 19), p.W = ri(1, 19), p.R = ri(1, 4), p.S = ri(1, 4);
    p.stride_h = ri(1, 4), p.stride_w = ri(0, 1) ? p.stride_h : ri(1, 4);
    p.dil_h = ri(1, 3), p.dil_w = ri(1, 3);
    p.pad_h = ri(0, 3), p.pad_w = ri(0, 3);
    p.P = conv_out_size(p.H, p.R, p.stride_h, p.pad_h, max64(0, p.pad_h + ri(-1, 1)), p.dil_h);
    p.Q = conv_out_size(p.W, p.S, p.stride_w, p.pad_w, max64(0, p.pad_w + ri(-1, 1)), p.dil_w);
    return p.P >= 1 && p.Q >= 1;
}

// it -2 and -1: ResNet's strided 3x3 (stride 2, pad 1) and grouped 1x1 (stride 2)
// downsampling shapes at a small size, the fixed cases (SCALE 0 runs them).
static void fixed_bwd_data(Conv2dParams& p, int it) {
    const bool three = it == -2;  // both Auto's GEMM (Cg 70 / 33, Kg 20 / 17)
    p = Conv2dParams{};
    p.layout = three ? Layout::NCHW : Layout::NHWC, p.groups = three ? 1 : 2;
    p.N = 2, p.C = (three ? 70 : 33) * p.groups, p.K = (three ? 20 : 17) * p.groups;
    p.H = 13, p.W = three ? 14 : 9, p.R = p.S = three ? 3 : 1;
    p.stride_h = p.stride_w = 2, p.dil_h = p.dil_w = 1, p.pad_h = p.pad_w = three ? 1 : 0;
    p.P = conv_out_size(p.H, p.R, 2, p.pad_h, p.pad_h, 1);
    p.Q = conv_out_size(p.W, p.S, 2, p.pad_w, p.pad_w, 1);
}

static void test_bwd_data_gemm(int iters) {
    for (int it = -2; it < iters; ++it) {
        Conv2dParams p;
        if (it < 0)
            fixed_bwd_data(p, it);
        else if (!draw_bwd_data(p, it)) {
            --it;
            continue;
        }
        const int64_t Cg = p.C / p.groups;
        const bool integer = (it + 2) % 4 < 2;
        auto dy = fill<float>(p.N * p.K * p.P * p.Q, integer);
        auto w = fill<float>(p.K * Cg * p.R * p.S, integer);
        const int64_t nx = p.N * p.C * p.H * p.W;
        std::vector<double> dxr(nx);
        auto dyd = to_d(dy), wd = to_d(w);
        cpu::conv2d_bwd_data<double>(p, cpu::ConvVariant::Direct, dyd.data(), wd.data(), dxr.data());
        const std::string cfg = conv_str(p);
        ++checks;
        if (it < 0 && cuda::conv2d_bwd_data_auto_variant(p) != cuda::ConvVariant::ImplicitGemm)
            ++failures, printf("FAIL bwd-data auto does not take the GEMM %s\n", cfg.c_str());
        for (auto v : {cuda::ConvVariant::ImplicitGemm, cuda::ConvVariant::Direct, cuda::ConvVariant::Auto}) {
            std::vector<float> dx(nx, NAN), dx2(nx, NAN);
            cuda::conv2d_bwd_data(p, v, dy.data(), w.data(), dx.data(), nullptr);
            const bool gemm = (v == cuda::ConvVariant::Auto ? cuda::conv2d_bwd_data_auto_variant(p) : v) ==
                              cuda::ConvVariant::ImplicitGemm;
            compare(v == cuda::ConvVariant::Auto ? "bwd-data-auto-tiles"
                    : gemm                        ? "bwd-data-gemm-tiles"
                                                  : "bwd-data-gather-tiles",
                    cfg, dx, dxr, integer, 5e-6);
            cuda::conv2d_bwd_data(p, v, dy.data(), w.data(), dx2.data(), nullptr);
            ++checks;
            if (std::memcmp(dx.data(), dx2.data(), nx * sizeof(float)) != 0)
                ++failures, printf("FAIL bwd-data not deterministic (%s) %s\n", gemm ? "gemm" : "gather",
                                   cfg.c_str());
        }
    }
}

static void test_conv_special() {
    // Depthwise with more taps than one shared chunk; NaN propagation.
    for (Layout L : {Layout::NCHW, Layout::NHWC}) {
        Conv2dParams p{};
        p.N = 1, p.C = 2, p.K = 4, p.groups = 2, p.H = 20, p.W = 19, p.R = 33, p.S = 33;
        p.stride_h = p.stride_w = 1, p.dil_h = p.dil_w = 1, p.pad_h = p.pad_w = 16;
        p.P = conv_out_size(p.H, p.R, 1, 16, 16, 1), p.Q = conv_out_size(p.W, p.S, 1, 16, 16, 1);
        p.layout = L, p.act = Activation::Tanh, p.has_bias = true;
        auto x = fill<float>(p.N * p.C * p.H * p.W, false);
        auto w = fill<float>(p.K * p.R * p.S, false);
        auto b = fill<float>(p.K, false);
        x[5] = NAN;
        std::vector<double> yref(p.N * p.K * p.P * p.Q);
        auto xd = to_d(x), wd = to_d(w), bd = to_d(b);
        cpu::conv2d_fwd<double>(p, cpu::ConvVariant::Direct, xd.data(), wd.data(), bd.data(), yref.data());
        for (auto v : {cuda::ConvVariant::Direct, cuda::ConvVariant::ImplicitGemm, cuda::ConvVariant::Depthwise}) {
            std::vector<float> y(yref.size(), 0.f);
            cuda::conv2d_fwd(p, v, x.data(), w.data(), b.data(), y.data(), nullptr);
            compare("fwd-33x33-nan", conv_str(p), y, yref, false);
        }
    }
    // Depthwise requested with C != groups throws.
    Conv2dParams p{};
    p.N = 1, p.C = 4, p.K = 4, p.groups = 2, p.H = p.W = 3, p.R = p.S = 1, p.P = p.Q = 3;
    p.stride_h = p.stride_w = p.dil_h = p.dil_w = 1;
    bool threw = false;
    try {
        const float* none = nullptr;
        cuda::conv2d_fwd(p, cuda::ConvVariant::Depthwise, none, none, none, nullptr, nullptr);
    } catch (const std::invalid_argument&) { threw = true; }
    ++checks;
    if (!threw) ++failures, printf("FAIL depthwise with C != groups did not throw\n");
}

// The LeNet-5 block: every variant's pooled output, the fused kernel's saved activation,
// and avgpool_act_bwd (same formula in double as the CPU's: exact).
static void test_block(int iters) {
    for (int it = 0; it < iters; ++it) {
        Conv2dPoolParams bp{};
        if (!make_conv(bp.conv, false, false)) { --it; continue; }
        Conv2dParams& p = bp.conv;
        bp.pool_h = ri(1, 3), bp.pool_w = ri(1, 3);
        if (p.P < bp.pool_h || p.Q < bp.pool_w) { --it; continue; }
        const int64_t Cg = p.C / p.groups, PP = p.P / bp.pool_h, QQ = p.Q / bp.pool_w;
        auto x = fill<float>(p.N * p.C * p.H * p.W, false);
        auto w = fill<float>(p.K * Cg * p.R * p.S, false);
        auto b = fill<float>(p.K, false);
        const float* bias = p.has_bias ? b.data() : nullptr;
        const int64_t na = p.N * p.K * p.P * p.Q, ny = p.N * p.K * PP * QQ;
        auto xd = to_d(x), wd = to_d(w), bd = to_d(b);
        std::vector<double> yref(ny), aref(na);
        cpu::conv2d_avgpool_fwd<double>(bp, cpu::ConvVariant::Direct, xd.data(), wd.data(),
                                        p.has_bias ? bd.data() : nullptr, yref.data(), aref.data());
        char extra[64];
        snprintf(extra, sizeof extra, " pool %ldx%ld", bp.pool_h, bp.pool_w);
        const std::string cfg = conv_str(p) + extra;
        for (auto v : {cuda::ConvVariant::Fused, cuda::ConvVariant::Direct,
                       cuda::ConvVariant::ImplicitGemm, cuda::ConvVariant::Auto}) {
            bp.save_activation = true;
            std::vector<float> y(ny, NAN), a(na, NAN);
            cuda::conv2d_avgpool_fwd(bp, v, x.data(), w.data(), bias, y.data(), a.data(), nullptr);
            compare("block-fwd", cfg, y, yref, false);
            compare("block-act", cfg, a, aref, false);
        }
        bp.save_activation = false;  // the fused kernel must then leave a alone
        std::vector<float> y(ny, NAN), a(na, 123.f);
        cuda::conv2d_avgpool_fwd(bp, cuda::ConvVariant::Fused, x.data(), w.data(), bias, y.data(),
                                 a.data(), nullptr);
        compare("block-fwd-nosave", cfg, y, yref, false);
        ++checks;
        for (float e : a)
            if (e != 123.f) { ++failures, printf("FAIL block-nosave wrote a %s\n", cfg.c_str()); break; }
        // Backward, first step.
        auto dy = fill<float>(ny, false);
        std::vector<float> af(aref.begin(), aref.end()), dz(na, NAN), dzr(na);
        for (const float* act : {(const float*)af.data(), (const float*)nullptr}) {
            cuda::avgpool_act_bwd(bp, dy.data(), act, dz.data(), nullptr);
            cpu::avgpool_act_bwd<float>(bp, dy.data(), act, dzr.data());
            compare("block-bwd", cfg, dz, to_d(dzr), true);
        }
    }
}

// The 2x2 / stride 2 fast paths of pool.cu (even sides, W % 4 == 0 in NCHW, C % 4 == 0
// in NHWC, 16-byte aligned arrays) against the CPU twin, bit for bit; and the same
// shapes through the generic kernels (an input one float off alignment).
static void test_pool2x2(int iters) {
    for (int it = 0; it < iters; ++it) {
        Pool2dParams p{};
        p.layout = it % 2 ? Layout::NCHW : Layout::NHWC;
        const bool nchw = p.layout == Layout::NCHW;
        p.N = ri(1, 2), p.C = nchw ? ri(1, 3) : 4 * ri(1, 3);
        p.H = 2 * ri(1, 6), p.W = nchw ? 4 * ri(1, 4) : 2 * ri(1, 6);
        p.kh = p.kw = p.stride_h = p.stride_w = 2, p.dil_h = p.dil_w = 1;
        p.P = p.H / 2, p.Q = p.W / 2;
        p.count_include_pad = ri(0, 1), p.divisor = ri(0, 2) == 0 ? ri(1, 7) : 0;
        char cfg[160];
        snprintf(cfg, sizeof cfg, "[2x2 %s N%ld C%ld H%ld W%ld div%ld]", nchw ? "NCHW" : "NHWC",
                 p.N, p.C, p.H, p.W, p.divisor);
        const int64_t nx = p.N * p.C * p.H * p.W, ny = p.N * p.C * p.P * p.Q;
        std::vector<float> xs = fill<float>(nx + 4, it % 4 < 2);  // small integers: ties
        if (it % 3 == 0) xs[ri(0, nx - 1)] = NAN;
        if (it % 5 == 0) xs[ri(0, nx - 1)] = -INFINITY;
        auto dy = fill<float>(ny, false);
        for (int shift : {0, 1}) {  // 1: misaligned, the generic kernels
            const float* x = xs.data() + shift;
            std::vector<float> y(ny, NAN), yr(ny), y2(ny, NAN), a(ny, NAN), ar(ny);
            std::vector<int64_t> idx(ny, 77), idxr(ny);
            cuda::max_pool_fwd(p, x, y.data(), idx.data(), nullptr);
            cpu::max_pool_fwd<float>(p, x, yr.data(), idxr.data());
            compare(shift ? "max2x2-generic" : "max2x2-fwd", cfg, y, to_d(yr), true);
            ++checks;
            if (idx != idxr) ++failures, printf("FAIL max2x2-idx %s shift %d\n", cfg, shift);
            cuda::max_pool_fwd(p, x, y2.data(), nullptr, nullptr);
            compare("max2x2-noidx", cfg, y2, to_d(yr), true);
            std::vector<float> dx(nx, NAN), dxr(nx);
            cuda::max_pool_bwd(p, dy.data(), idxr.data(), dx.data(), nullptr);
            cpu::max_pool_bwd<float>(p, dy.data(), idxr.data(), dxr.data());
            compare("max2x2-bwd", cfg, dx, to_d(dxr), true);
            cuda::avg_pool_fwd(p, x, a.data(), nullptr);
            cpu::avg_pool_fwd<float>(p, x, ar.data());
            compare("avg2x2-fwd", cfg, a, to_d(ar), true);
            std::fill(dx.begin(), dx.end(), NAN);
            cuda::avg_pool_bwd(p, dy.data(), dx.data(), nullptr);
            cpu::avg_pool_bwd<float>(p, dy.data(), dxr.data());
            compare("avg2x2-bwd", cfg, dx, to_d(dxr), true);
        }
    }
}

static void test_activation_bwd() {
    for (int a = 0; a < 4; ++a) {
        auto y = fill<float>(1000, false), dy = fill<float>(1000, false);
        y[3] = NAN;
        std::vector<float> dz(1000), ref(1000);
        cuda::activation_bwd(Activation(a), 1000, y.data(), dy.data(), dz.data(), nullptr);
        cpu::activation_bwd<float>(Activation(a), 1000, y.data(), dy.data(), ref.data());
        compare("activation_bwd", std::to_string(a), dz, to_d(ref), true);
    }
}

// Global average pooling, NCHW: each output is the mean of one plane of n values. The
// two backends round differently, so each is held to the error its summation order
// allows, per output, against the exact mean m (long double) with S = sum |x|:
//   kernel (pool.cu)  sums in double (a strided chain per thread, then block_sum's tree:
//                     at most n additions per term, so <= n u_d S with u_d = 2^-53),
//                     divides in double and rounds once to float (<= u |m|, u = 2^-24);
//   twin (pool.cpp, plane_means_block and its AVX2 clone) sums in float: 16 chains of
//                     at most floor(n/16) + 1 terms from zero, then a + b, a three-level
//                     tree, and last the serial tail of at most 7 terms, so every term
//                     passes at most d = floor(n/16) + 7 float additions and the sum is
//                     off by <= gamma_d S, gamma_d = d u / (1 - d u) (Higham, ch. 4);
//                     then 1/n and the product in double and one rounding to float.
// Checked: |kernel - m| <= e_kernel, and kernel against twin |kernel - twin| <=
// e_kernel + e_twin. (A flat relative bound on the whole vector failed on other data at
// 2.4e-6 against 2e-6 from the twin's float sums, not from a kernel bug.)
// twin_adds: the most float additions in a row on one of the twin's partial sums (NCHW:
// 16 lanes' sums and their fold; NHWC: runs of 64 rows, csrc/cpu/pool.cpp nhwc_means).
static void check_plane_means(const std::string& cfg, const std::vector<float>& x, int64_t n,
                              const std::vector<float>& got, const std::vector<float>& twin,
                              double twin_adds) {
    const double u = std::ldexp(1.0, -24), ud = std::ldexp(1.0, -53);
    const double d = twin_adds, gamma_d = d * u / (1 - d * u);
    for (size_t plane = 0; plane < got.size(); ++plane) {
        long double sum = 0, abs_sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += x[plane * n + j], abs_sum += std::fabs(x[plane * n + j]);
        const double m = double(sum / n), S = double(abs_sum);
        const double e_kernel = u * std::fabs(m) + (n + 2) * ud * S / n + 4 * ud * std::fabs(m);
        const double twin_sum_err = gamma_d * S / n;
        const double e_twin = twin_sum_err + (u + 4 * ud) * (std::fabs(m) + twin_sum_err);
        ++checks;
        const double g = got[plane], t = twin[plane];
        if (!(std::fabs(g - m) <= e_kernel) || !(std::fabs(g - t) <= e_kernel + e_twin)) {
            ++failures;
            printf("FAIL gap-fwd %s plane %zu n=%ld: kernel %.9g twin %.9g exact %.9g "
                   "(bounds %.3g, %.3g)\n", cfg.c_str(), plane, long(n), g, t, m, e_kernel,
                   e_kernel + e_twin);
            return;
        }
    }
}

static void test_pool(int iters) {
    for (int it = 0; it < iters; ++it) {
        Pool2dParams p{};
        p.N = ri(1, 2), p.C = ri(1, 5), p.H = ri(1, 13), p.W = ri(1, 13);
        p.kh = ri(1, 4), p.kw = ri(1, 4);
        p.stride_h = ri(1, 3), p.stride_w = ri(1, 3);
        const bool is_max = it % 2 == 0;
        p.dil_h = is_max ? ri(1, 2) : 1, p.dil_w = is_max ? ri(1, 2) : 1;
        // Pads up to the kernel (beyond PyTorch's k/2) so all-padding windows occur.
        p.pad_h = ri(0, p.kh), p.pad_w = ri(0, p.kw);
        const bool ceil_mode = ri(0, 1);
        p.pad_h_end = p.pad_h + ri(0, 1), p.pad_w_end = p.pad_w + ri(0, 1);
        p.P = pool_out_size(p.H, p.kh, p.stride_h, p.pad_h, p.pad_h_end, p.dil_h, ceil_mode);
        p.Q = pool_out_size(p.W, p.kw, p.stride_w, p.pad_w, p.pad_w_end, p.dil_w, ceil_mode);
        if (p.P < 1 || p.Q < 1) { --it; continue; }
        p.count_include_pad = ri(0, 1);
        p.divisor = ri(0, 3) == 0 ? ri(1, 7) : 0;
        p.layout = ri(0, 1) ? Layout::NCHW : Layout::NHWC;
        char cfg[300];
        snprintf(cfg, sizeof cfg, "[%s N%ld C%ld H%ld W%ld P%ld Q%ld k%ld,%ld s%ld,%ld p%ld,%ld,%ld,%ld d%ld,%ld cip%d div%ld]",
                 p.layout == Layout::NCHW ? "NCHW" : "NHWC", p.N, p.C, p.H, p.W, p.P, p.Q, p.kh, p.kw,
                 p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.pad_h_end, p.pad_w_end, p.dil_h, p.dil_w,
                 int(p.count_include_pad), p.divisor);
        const int64_t nx = p.N * p.C * p.H * p.W, ny = p.N * p.C * p.P * p.Q;
        auto x = fill<float>(nx, it % 4 < 2);  // small integers: many ties
        if (it % 3 == 0) x[ri(0, nx - 1)] = NAN;
        auto dy = fill<float>(ny, false);
        if (is_max) {
            std::vector<float> y(ny, 0), yr(ny);
            std::vector<int64_t> idx(ny, 77), idxr(ny), idx2(ny, 77);
            cuda::max_pool_fwd(p, x.data(), y.data(), idx.data(), nullptr);
            cpu::max_pool_fwd<float>(p, x.data(), yr.data(), idxr.data());
            compare("maxpool-fwd", cfg, y, to_d(yr), true);
            ++checks;
            if (idx != idxr) ++failures, printf("FAIL maxpool-idx %s\n", cfg);
            std::vector<float> y2(ny, 0);
            cuda::max_pool_fwd(p, x.data(), y2.data(), nullptr, nullptr);
            compare("maxpool-fwd-noidx", cfg, y2, to_d(yr), true);
            std::vector<float> dx(nx, NAN), dxr(nx);
            cuda::max_pool_bwd(p, dy.data(), idxr.data(), dx.data(), nullptr);
            cpu::max_pool_bwd<float>(p, dy.data(), idxr.data(), dxr.data());
            compare("maxpool-bwd", cfg, dx, to_d(dxr), true);
            // The forward's own indices are all accepted; one moved to a pixel outside
            // its window (or out of the plane) is counted, and the CPU twin refuses it.
            ++checks;
            if (cuda::max_pool_bad_indices(p, idxr.data(), nullptr) != 0)
                ++failures, printf("FAIL maxpool-bad-indices (own) %s\n", cfg);
            std::vector<int64_t> moved(idxr);
            const int64_t o = ri(0, ny - 1);
            moved[o] = (it % 2) ? p.H * p.W : (moved[o] + p.W * (p.kh * p.dil_h + 1)) % (p.H * p.W + 1);
            const bool outside = !pool_window_holds(p, (o / (p.layout == Layout::NCHW ? 1 : p.C)) % (p.P * p.Q) / p.Q,
                                                    (o / (p.layout == Layout::NCHW ? 1 : p.C)) % p.Q, moved[o]);
            bool cpu_refused = false;
            try {
                cpu::max_pool_bwd<float>(p, dy.data(), moved.data(), dxr.data());
            } catch (const std::invalid_argument&) {
                cpu_refused = true;
            }
            ++checks;
            if (cuda::max_pool_bad_indices(p, moved.data(), nullptr) != (outside ? 1 : 0) ||
                cpu_refused != outside)
                ++failures, printf("FAIL maxpool-bad-indices (moved) %s\n", cfg);
            // Every output's index drawn around its window (a tap, a pixel between taps
            // or beside the window, the row or plane edge, -1, out of the plane): the
            // kernel's count against pool_window_holds, the rule it restates.
            std::vector<int64_t> drawn(ny);
            int64_t expect = 0;
            for (int64_t o = 0; o < ny; ++o) {
                const int64_t pq = (o / (p.layout == Layout::NCHW ? 1 : p.C)) % (p.P * p.Q);
                const int64_t oh = pq / p.Q, ow = pq % p.Q;
                const int64_t h = oh * p.stride_h - p.pad_h + ri(-1, p.kh * p.dil_h);
                const int64_t w = ow * p.stride_w - p.pad_w + ri(-1, p.kw * p.dil_w);
                const int64_t kind = ri(0, 9);
                drawn[o] = kind == 0 ? -1 : kind == 1 ? ri(-3, p.H * p.W + 2) : h * p.W + w;
                expect += drawn[o] != -1 && !pool_window_holds(p, oh, ow, drawn[o]);
            }
            ++checks;
            const int64_t got = cuda::max_pool_bad_indices(p, drawn.data(), nullptr);
            if (got != expect)
                ++failures, printf("FAIL maxpool-bad-indices (drawn) %s: %ld, expected %ld\n", cfg,
                                   long(got), long(expect));
        } else {
            std::vector<float> y(ny, NAN), yr(ny);
            cuda::avg_pool_fwd(p, x.data(), y.data(), nullptr);
            cpu::avg_pool_fwd<float>(p, x.data(), yr.data());
            compare("avgpool-fwd", cfg, y, to_d(yr), true);
            std::vector<float> dx(nx, NAN), dxr(nx);
            cuda::avg_pool_bwd(p, dy.data(), dx.data(), nullptr);
            cpu::avg_pool_bwd<float>(p, dy.data(), dxr.data());
            compare("avgpool-bwd", cfg, dx, to_d(dxr), true);
        }
    }
    for (int it = 0; it < 20; ++it) {
        GlobalPoolParams p{};
        p.N = ri(1, 3), p.C = ri(1, 7), p.H = ri(1, 40), p.W = ri(1, 40);
        p.layout = it % 2 ? Layout::NCHW : Layout::NHWC;
        const int64_t nx = p.N * p.C * p.H * p.W, ny = p.N * p.C;
        auto x = fill<float>(nx, false);
        std::vector<float> y(ny, NAN), yr(ny);
        cuda::global_avg_pool_fwd(p, x.data(), y.data(), nullptr);
        cpu::global_avg_pool_fwd<float>(p, x.data(), yr.data());
        const int64_t hw = p.H * p.W;
        if (p.layout == Layout::NHWC) {  // the kernel sums in double, the twin in float runs
            std::vector<float> planes(nx);
            for (int64_t n = 0; n < p.N; ++n)
                for (int64_t i = 0; i < hw; ++i)
                    for (int64_t c = 0; c < p.C; ++c)
                        planes[(n * p.C + c) * hw + i] = x[(n * hw + i) * p.C + c];
            check_plane_means(std::to_string(it), planes, hw, y, yr, double(std::min<int64_t>(hw, 64) + 1));
        } else {
            check_plane_means(std::to_string(it), x, hw, y, yr, double(hw / 16 + 7));
        }
        auto dy = fill<float>(ny, false);
        std::vector<float> dx(nx, NAN), dxr(nx);
        cuda::global_avg_pool_bwd(p, dy.data(), dx.data(), nullptr);
        cpu::global_avg_pool_bwd<float>(p, dy.data(), dxr.data());
        compare("gap-bwd", std::to_string(it), dx, to_d(dxr), true);
    }
}

static void test_filters(int iters) {
    for (int it = 0; it < iters; ++it) {
        Filter2dParams p{};
        p.N = ri(1, 2), p.C = ri(1, 3), p.H = ri(1, 9), p.W = ri(1, 9);
        p.kh = ri(1, 7), p.kw = ri(1, 7);
        if (it % 10 == 0) p.kh = 35, p.kw = 31, p.H = ri(1, 4), p.W = ri(1, 4), p.N = 1, p.C = 2;
        // Planes spanning several of filter2d_tiled's 16 x 64 tiles and many Sobel row groups.
        if (it % 10 == 5) p.H = ri(17, 40), p.W = ri(65, 140), p.N = 1, p.C = ri(1, 2);
        p.mode = Border(ri(0, 4));
        p.cval = 0.25 * ri(-4, 4);
        p.layout = ri(0, 1) ? Layout::NCHW : Layout::NHWC;
        p.axis = int(ri(-1, 1));
        char cfg[200];
        snprintf(cfg, sizeof cfg, "[%s N%ld C%ld H%ld W%ld k%ld,%ld mode%d axis%d]",
                 p.layout == Layout::NCHW ? "NCHW" : "NHWC", p.N, p.C, p.H, p.W, p.kh, p.kw,
                 int(p.mode), p.axis);
        const int64_t n = p.N * p.C * p.H * p.W;
        const bool integer = it % 2;
        auto x = fill<float>(n, integer);
        auto k = fill<float>(p.kh * p.kw, integer);
        std::vector<float> y(n, NAN), yr(n);
        cuda::sobel(p, x.data(), y.data(), nullptr);
        cpu::sobel(p, x.data(), yr.data());
        compare("sobel", cfg, y, to_d(yr), integer && p.axis >= 0, 1e-6);
        std::vector<float> f(n, NAN), fr(n);
        cuda::filter2d(p, x.data(), k.data(), f.data(), nullptr);
        cpu::filter2d(p, x.data(), k.data(), fr.data());
        compare("filter2d", cfg, f, to_d(fr), integer, 1e-6);
        // The same image as 8 bits (0..255): uint8 in, float32 out, on both backends.
        std::vector<uint8_t> x8(n);
        for (int64_t e = 0; e < n; ++e) x8[e] = uint8_t(ri(0, 255));
        std::vector<float> y8(n, NAN), y8r(n), f8(n, NAN), f8r(n);
        cuda::sobel(p, x8.data(), y8.data(), nullptr);
        cpu::sobel(p, x8.data(), y8r.data());
        compare("sobel-u8", cfg, y8, to_d(y8r), p.axis >= 0, 1e-6);
        cuda::filter2d(p, x8.data(), k.data(), f8.data(), nullptr);
        cpu::filter2d(p, x8.data(), k.data(), f8r.data());
        compare("filter2d-u8", cfg, f8, to_d(f8r), integer, 1e-6);
    }
}

static void test_conv1d() {
    for (int it = 0; it < 20; ++it) {
        Conv1dParams p{ri(1, 4), ri(1, 300), 0};
        p.n = ri(1, p.M);
        const int64_t out = p.M - p.n + 1;
        auto x = fill<float>(p.B * p.M, it % 2), w = fill<float>(p.n, it % 2);
        std::vector<float> y(p.B * out, NAN), yr(p.B * out);
        cuda::conv1d(p, x.data(), w.data(), y.data(), nullptr);
        cpu::conv1d<float>(p, x.data(), w.data(), yr.data());
        compare("conv1d", std::to_string(it), y, to_d(yr), true);
    }
}

// Winograd F(2x2, 3x3) and F(4x4, 3x3) (winograd.cu), forward and grad input, against the
// CPU twin's direct convolution in double on the same inputs: 3x3, stride 1, padding 0-2 on
// each side independently (ragged tiles: H, W, P, Q anything), groups, both layouts, bias,
// every activation, and a y-shaped residual added before it. F(2x2)'s matrices are binary
// fractions: exact on small integers. F(4x4)'s G holds 1/6, 1/15, 1/30: on small integers
// each output must round to the exact integer (off by < 0.1, as tests/test_conv2d.py's
// INEXACT_ON_INTEGERS); on random floats both within tests/conftest.py's float32 bound.
static void compare_wino(const char* what, int m, const std::string& cfg, const std::vector<float>& got,
                         const std::vector<double>& ref, bool integer) {
    if (m == 2 || !integer) return compare(what, cfg, got, ref, integer, 1e-5);
    std::vector<float> rounded(got);
    bool near = true;
    for (size_t i = 0; i < got.size(); ++i) {
        near = near && std::fabs(double(got[i]) - ref[i]) < 0.1;
        rounded[i] = std::rint(got[i]);
    }
    if (!near) {
        ++checks, ++failures;
        printf("FAIL %s %s off the integers by 0.1 or more\n", what, cfg.c_str());
        return;
    }
    compare(what, cfg, rounded, ref, true);
}

// One draw: the forward (with a residual on half of them) and the grad input, both m.
static void check_winograd(const Conv2dParams& p, bool integer, bool with_residual) {
    const int64_t Cg = p.C / p.groups, ny = p.N * p.K * p.P * p.Q;
    auto x = fill<float>(p.N * p.C * p.H * p.W, integer);
    auto w = fill<float>(p.K * Cg * 9, integer);
    auto b = fill<float>(p.K, integer);
    auto r = fill<float>(ny, integer);
    auto dy = fill<float>(ny, integer);
    auto xd = to_d(x), wd = to_d(w), bd = to_d(b), dyd = to_d(dy);
    // act(conv + b + residual), the activation applied in double to the twin's sum.
    Conv2dParams linear = p;
    linear.act = Activation::None;
    std::vector<double> yref(ny), dxref(x.size());
    cpu::conv2d_fwd<double>(linear, cpu::ConvVariant::Direct, xd.data(), wd.data(),
                            p.has_bias ? bd.data() : nullptr, yref.data());
    for (int64_t i = 0; i < ny; ++i)
        yref[i] = activate(p.act, yref[i] + (with_residual ? double(r[i]) : 0.0));
    cpu::conv2d_bwd_data<double>(p, cpu::ConvVariant::Direct, dyd.data(), wd.data(), dxref.data());
    const std::string cfg = conv_str(p) + (with_residual ? " residual" : "");
    for (int m : {2, 4}) {
        const auto v = m == 2 ? cuda::ConvVariant::Winograd2 : cuda::ConvVariant::Winograd4;
        std::vector<float> y(ny, NAN), dx(x.size(), NAN);
        cuda::conv2d_fwd(p, v, x.data(), w.data(), p.has_bias ? b.data() : nullptr, y.data(), nullptr,
                         with_residual ? r.data() : nullptr);
        compare_wino(m == 2 ? "fwd-winograd2" : "fwd-winograd4", m, cfg, y, yref, integer);
        cuda::conv2d_bwd_data(p, v, dy.data(), w.data(), dx.data(), nullptr);
        compare_wino(m == 2 ? "bwd-data-winograd2" : "bwd-data-winograd4", m, cfg, dx, dxref, integer);
    }
}

static Conv2dParams wino_params(int64_t N, int64_t C, int64_t K, int64_t groups, int64_t H, int64_t W,
                                int64_t pad_h, int64_t pad_w, int64_t pad_h_end, int64_t pad_w_end,
                                Layout L) {
    Conv2dParams p{};
    p.N = N, p.C = C, p.K = K, p.groups = groups, p.H = H, p.W = W, p.R = p.S = 3;
    p.stride_h = p.stride_w = p.dil_h = p.dil_w = 1, p.pad_h = pad_h, p.pad_w = pad_w;
    p.P = conv_out_size(H, 3, 1, pad_h, pad_h_end, 1), p.Q = conv_out_size(W, 3, 1, pad_w, pad_w_end, 1);
    p.layout = L;
    return p;
}

static void test_winograd(int iters, bool big) {
    const int64_t sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13};
    for (int it = 0; it < iters; ++it) {
        const int64_t groups = ri(0, 3) == 0 ? ri(2, 3) : 1;
        // big: more than one 16-channel slice and one 64-filter or 64-tile GEMM block.
        const int64_t Cg = big ? ri(17, 40) : ri(1, 5), Kg = big ? ri(1, 2) * ri(20, 70) : ri(1, 5);
        const int64_t H = big ? ri(9, 20) : sizes[ri(0, 10)], W = big ? ri(9, 20) : sizes[ri(0, 10)];
        Conv2dParams p = wino_params(ri(1, big ? 2 : 3), Cg * groups, Kg * groups, groups, H, W, ri(0, 2),
                                     ri(0, 2), ri(0, 2), ri(0, 2), ri(0, 1) ? Layout::NCHW : Layout::NHWC);
        if (p.P < 1 || p.Q < 1) { --it; continue; }
        const bool integer = it % 2 == 1;
        p.act = integer ? (ri(0, 1) ? Activation::None : Activation::Relu) : Activation(ri(0, 3));
        p.has_bias = ri(0, 1);
        check_winograd(p, integer, ri(0, 1));
    }
}

// Fixed cases: a variant refused where it does not apply; a patch of padding around one
// pixel; padding 3 above (the grad input's convolution pads -1: it crops); and the float32
// accuracy of tests/test_winograd.py's ResNet-like case (2 x 256 x 14 x 14 -> 32 filters,
// He-scaled, relu'd normal inputs, padding 1): within the bounds that test holds the CPU to,
// 2e-6 (F(2x2)) and 5e-6 (F(4x4)). The emulator does not contract a * b + c into an FMA as
// nvcc does, so the GPU's figures differ in the last bits.
static void test_winograd_fixed() {
    Conv2dParams bad = wino_params(1, 2, 2, 1, 5, 5, 1, 1, 1, 1, Layout::NCHW);
    bad.stride_w = 2, bad.Q = 3;
    for (auto v : {cuda::ConvVariant::Winograd2, cuda::ConvVariant::Winograd4}) {
        bool threw = false;
        try {
            cuda::conv2d_fwd(bad, v, (const float*)nullptr, nullptr, nullptr, nullptr, nullptr);
        } catch (const std::invalid_argument&) { threw = true; }
        ++checks;
        if (!threw) ++failures, printf("FAIL winograd with stride 2 did not throw\n");
    }
    for (Layout L : {Layout::NCHW, Layout::NHWC}) {
        Conv2dParams p = wino_params(2, 3, 4, 1, 1, 1, 1, 1, 1, 1, L);
        p.act = Activation::Tanh, p.has_bias = true;
        check_winograd(p, false, false);
        p = wino_params(2, 4, 6, 2, 5, 10, 3, 0, 3, 0, L);
        check_winograd(p, true, true);
    }
    std::normal_distribution<double> normal(0, 1);
    Conv2dParams p = wino_params(2, 256, 32, 1, 14, 14, 1, 1, 1, 1, Layout::NCHW);
    std::vector<float> x(p.N * p.C * p.H * p.W), w(p.K * p.C * 9);
    for (auto& e : x) e = float(std::max(0.0, normal(rng)));
    for (auto& e : w) e = float(normal(rng) * std::sqrt(2.0 / (9 * 256)));
    std::vector<double> ref(p.N * p.K * p.P * p.Q);
    auto xd = to_d(x), wd = to_d(w);
    cpu::conv2d_fwd<double>(p, cpu::ConvVariant::Direct, xd.data(), wd.data(), nullptr, ref.data());
    for (int m : {2, 4}) {
        std::vector<float> y(ref.size(), NAN);
        cuda::conv2d_fwd(p, m == 2 ? cuda::ConvVariant::Winograd2 : cuda::ConvVariant::Winograd4, x.data(),
                         w.data(), nullptr, y.data(), nullptr);
        compare(m == 2 ? "winograd2-resnet-accuracy" : "winograd4-resnet-accuracy", conv_str(p), y, ref,
                false, m == 2 ? 2e-6 : 5e-6);
    }
}

// `emu_test winograd-accuracy`: the float32 error of the emulated winograd2 / winograd4 and
// implicit GEMM against the twin's direct convolution in double, as
// benchmarks/winograd_accuracy.py prints it for the CPU (1 x C x 14 x 14 -> 32 He-scaled
// filters, padding 1; norm-wise relative error / largest element error over the largest
// reference element), then tiny outputs (1 x C x 1 x 1 -> 1, padding 1: F(4x4) runs in
// double there) as the largest norm-wise error over 300 draws. No FMA contraction here
// (README.md): the card's last bits differ. Prints; checks nothing.
static void winograd_accuracy() {
    std::normal_distribution<double> normal(0, 1);
    const auto errors = [](const std::vector<float>& y, const std::vector<double>& ref, double& norm, double& mx) {
        double num = 0, den = 0, emax = 0, rmax = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
            const double d = y[i] - ref[i];
            num += d * d, den += ref[i] * ref[i];
            emax = std::max(emax, std::fabs(d)), rmax = std::max(rmax, std::fabs(ref[i]));
        }
        norm = std::sqrt(num / den), mx = emax / rmax;
    };
    const cuda::ConvVariant vs[] = {cuda::ConvVariant::ImplicitGemm, cuda::ConvVariant::Winograd2,
                                    cuda::ConvVariant::Winograd4};
    printf("%5s  %-13s %19s  %19s  %19s\n", "C", "input", "implicit_gemm", "winograd2", "winograd4");
    for (int64_t C : {64, 256, 512, 2048})
        for (int relu = 0; relu < 2; ++relu) {
            Conv2dParams p = wino_params(1, C, 32, 1, 14, 14, 1, 1, 1, 1, Layout::NCHW);
            std::vector<float> x(C * 196), w(32 * C * 9);
            for (auto& e : x) e = float(relu ? std::max(0.0, normal(rng)) : normal(rng));
            for (auto& e : w) e = float(normal(rng) * std::sqrt(2.0 / (9 * C)));
            auto xd = to_d(x), wd = to_d(w);
            std::vector<double> ref(32 * 196);
            cpu::conv2d_fwd<double>(p, cpu::ConvVariant::Direct, xd.data(), wd.data(), nullptr, ref.data());
            printf("%5ld  %-13s", long(C), relu ? "relu(normal)" : "normal");
            for (auto v : vs) {
                std::vector<float> y(ref.size(), NAN);
                cuda::conv2d_fwd(p, v, x.data(), w.data(), nullptr, y.data(), nullptr);
                double norm, mx;
                errors(y, ref, norm, mx);
                printf("  %.2e / %.2e", norm, mx);
            }
            printf("\n");
        }
    for (int64_t C : {1, 16, 256}) {
        double worst[3] = {0, 0, 0};
        for (int it = 0; it < 300; ++it) {
            Conv2dParams p = wino_params(1, C, 1, 1, 1, 1, 1, 1, 1, 1, Layout::NCHW);
            std::vector<float> x(C), w(C * 9);
            for (auto& e : x) e = float(normal(rng));
            for (auto& e : w) e = float(normal(rng));
            auto xd = to_d(x), wd = to_d(w);
            std::vector<double> ref(1);
            cpu::conv2d_fwd<double>(p, cpu::ConvVariant::Direct, xd.data(), wd.data(), nullptr, ref.data());
            for (int j = 0; j < 3; ++j) {
                std::vector<float> y(1, NAN);
                cuda::conv2d_fwd(p, vs[j], x.data(), w.data(), nullptr, y.data(), nullptr);
                double norm, mx;
                errors(y, ref, norm, mx);
                worst[j] = std::max(worst[j], norm);
            }
        }
        printf("1 x %ld x 1 x 1 -> 1, padding 1, worst of 300: %.2e  %.2e  %.2e\n", long(C), worst[0],
               worst[1], worst[2]);
    }
}

// block_sum's total in every thread, over consecutive calls (sums of small integers:
// exact in float).
static void test_block_sum() {
    const int64_t items = 5;
    const int rounds = 3, T = 256;
    std::vector<float> out(items * rounds * T, NAN);
    cuda::selftest_block_sum(items, rounds, out.data());
    std::vector<double> ref(out.size());
    for (int64_t i = 0; i < items; ++i)
        for (int r = 0; r < rounds; ++r)
            for (int t = 0; t < T; ++t) ref[(i * rounds + r) * T + t] = T * (T - 1) / 2 + T * (r + i);
    compare("block_sum-every-thread", "", out, ref, true);
}

int main(int argc, char** argv) {
    // SCALE multiplies the random draws of each family (0.25: a quarter; 0: the fixed
    // cases alone).
    if (argc > 1 && std::string(argv[1]) == "winograd-accuracy") {
        winograd_accuracy();
        return 0;
    }
    const double scale_arg = argc > 1 ? atof(argv[1]) : 1;
    const auto scale = [&](int n) { return int(std::ceil(n * scale_arg)); };
    test_block_sum();
    failures += test_device_features(checks, emu_seed());
    test_activation_bwd();
    test_conv1d();
    test_filters(scale(200));
    test_pool(scale(300));
    test_pool2x2(scale(80));
    test_conv_special();
    test_bwd_filter_splits();
    test_bwd_data_gemm(scale(40));
    test_block(scale(60));
    test_conv(scale(150), false, false);
    test_conv(scale(100), true, false);
    test_conv(scale(12), false, true);
    test_winograd_fixed();
    test_winograd(scale(120), false);
    test_winograd(scale(8), true);
    test_conv_tc(scale(80));
    test_bwd_tc(scale(40));
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
