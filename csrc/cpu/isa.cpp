// isa.cpp: CPU feature detection and FASTCONV_CPU_ISA (see isa.h for the semantics).
#include "isa.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <stdexcept>

namespace fastconv {
namespace cpu {

namespace {

constexpr const char* kVariable = "FASTCONV_CPU_ISA";

// What the path needs that this CPU lacks ("" when nothing), by feature name, so that
// the error says what is missing rather than only that the path is.
std::string missing_features(Isa path) {
#if FC_X86_ISA
    __builtin_cpu_init();
    std::string missing;
    auto need = [&](bool has, const char* name) {
        if (!has) missing += (missing.empty() ? "" : ", ") + std::string(name);
    };
    if (path >= Isa::Avx2) {
        need(__builtin_cpu_supports("avx2"), "avx2");
        need(__builtin_cpu_supports("fma"), "fma");
    }
    if (path >= Isa::Avx512) {
        need(__builtin_cpu_supports("avx512f"), "avx512f");
        need(__builtin_cpu_supports("avx512bw"), "avx512bw");
        need(__builtin_cpu_supports("avx512vl"), "avx512vl");
        need(__builtin_cpu_supports("avx512dq"), "avx512dq");
    }
    return missing;
#else
    return path == Isa::Portable ? "" : "x86-64";
#endif
}

Isa detect() {
    const char* env = std::getenv(kVariable);
    std::string want = env ? env : "";
    want.erase(std::remove_if(want.begin(), want.end(), [](unsigned char c) { return std::isspace(c); }),
               want.end());
    std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
    const std::vector<Isa> have = supported_isas();
    if (want.empty() || want == "auto") return have.front();
    for (Isa path : {Isa::Avx512, Isa::Avx2, Isa::Portable}) {
        if (want != isa_name(path)) continue;
        const std::string missing = missing_features(path);
        if (!missing.empty()) {
#if FC_X86_ISA
            std::string names;
            for (Isa h : have) names += (names.empty() ? "" : ", ") + std::string(isa_name(h));
            throw std::invalid_argument(std::string(kVariable) + "=" + want + " but this CPU lacks " +
                                        missing + " (it supports " + names + ")");
#else
            throw std::invalid_argument(std::string(kVariable) + "=" + want +
                                        " but this build is not for x86-64: portable is its only path");
#endif
        }
        return path;
    }
    throw std::invalid_argument(std::string(kVariable) +
                                " must be one of avx512, avx2, portable or auto (unset: the best "
                                "this CPU supports), got '" + std::string(env) + "'");
}

}  // namespace

const char* isa_name(Isa path) {
    switch (path) {
        case Isa::Avx512: return "avx512";
        case Isa::Avx2: return "avx2";
        default: return "portable";
    }
}

std::vector<Isa> supported_isas() {
    std::vector<Isa> out;
    for (Isa path : {Isa::Avx512, Isa::Avx2})
        if (missing_features(path).empty()) out.push_back(path);
    out.push_back(Isa::Portable);
    return out;
}

Isa isa() {
    static const Isa chosen = detect();
    return chosen;
}

}  // namespace cpu
}  // namespace fastconv
