#!/usr/bin/env python3
"""Mutation testing of the CPU backend: does the test suite catch the bugs it exists for?

Plants each bug of a fixed list (MUTANTS) in a scratch copy of the repository, one at a
time: apply, rebuild the CPU extension, run the tests named for it, revert. Prints a
table (mutant, class, caught or MISSED, the first failing test, seconds) and exits 1 if
any mutant is missed or fails to build, so it cannot pass by accident.

    python tools/mutate.py               all mutants; hypothesis tests run with seed 0
    python tools/mutate.py --fixed-only  hypothesis tests deselected: fixed shapes alone
    python tools/mutate.py -k pool       mutants whose name or class contains "pool"
    python tools/mutate.py --list        the table of mutants, nothing built

Every mutant's original text must occur exactly once in its file; the script checks them
all before building anything and stops with the offenders named, so an edit to the
kernels cannot make a mutant silently stop applying. Adding one (e.g. for an AVX-512 or
Winograd path) is one Mutant row: the file, its exact text, the buggy text, a name, a
class, and the test files expected to catch it. A mutant that lives on one ISA path of
csrc/cpu/isa.h (needs="avx512") is reported skipped where the CPU lacks that path; on a
CPU with AVX-512 the default-path tests run avx512, so the avx2 and portable paths' bugs
list tests/test_isa.py, which forces each path in a child process.

Rebuilds use ccache when it is installed (`apt-get install ccache`): only the translation
units a mutant touches recompile. Without it every rebuild compiles everything (slower,
same result). The scratch copy holds `git ls-files` (tracked and untracked, not ignored).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONV = ("tests/test_conv2d.py", "tests/test_block.py")
POOL = ("tests/test_pool.py",)
SHAPES = ("tests/test_shapes.py",)
FILTERS = ("tests/test_filters.py",)
ERRORS = ("tests/test_errors.py",)
ISA = ("tests/test_isa.py",)  # each ISA path this CPU has, in a child process


@dataclass(frozen=True)
class Mutant:
    name: str
    cls: str          # the kind of bug, as a reviewer would name it
    path: str         # relative to the repository root
    original: str     # exact text, exactly once in the file
    replacement: str  # the bug
    tests: tuple      # pytest arguments: the tests that must catch it
    needs: str = ""   # the ISA path (csrc/cpu/isa.h) the bug lives on; skipped where the CPU lacks it


FWD, BWD, COMMON = "csrc/cpu/conv2d_fwd.cpp", "csrc/cpu/conv2d_bwd.cpp", "csrc/cpu/conv2d_common.h"
WINO_H, WINO = "csrc/common/winograd.h", "csrc/cpu/winograd.cpp"
WINO_TESTS = ("tests/test_conv2d.py", "tests/test_winograd.py")
POOL_CPP, SHAPES_H = "csrc/cpu/pool.cpp", "csrc/common/shapes.h"
CACHE, CACHE_TESTS = "csrc/cpu/output_cache.cpp", ("tests/test_output_cache.py",)

MUTANTS = [
    # The seven that the mutation run at 8533058 found missed (issue 18).
    Mutant("leftover-image", "images per GEMM", FWD,
           "blocks = ceil_div(p.N, batch), tasks", "blocks = p.N / batch, tasks", CONV),
    Mutant("grouped-1x1-nhwc", "grouped 1x1 offset", FWD,
           "T(0), y + g * s.Kg, p.K);", "T(0), y + g * s.Cg, p.K);", CONV),
    Mutant("grad-weight-last-chunk", "im2col chunks", BWD,
           "++g)\n            for (int64_t j0 = 0; j0 < s.PQ; j0 += s.chunk) {",
           "++g)\n            for (int64_t j0 = 0; j0 < s.PQ / s.chunk * s.chunk; j0 += s.chunk) {",
           CONV),
    Mutant("nhwc-max-drops-nan", "NaN propagation", POOL_CPP,
           "best[c] = takes(v[c], best[c]) ? v[c] : best[c];", "best[c] = std::max(best[c], v[c]);",
           POOL),
    Mutant("nhwc-empty-window-index", "empty pooling window", POOL_CPP,
           "std::fill(idx + o, idx + o + p.C, int64_t(-1));",
           "std::fill(idx + o, idx + o + p.C - 1, int64_t(-1));", POOL),
    Mutant("tanh-accuracy", "activation accuracy", "csrc/cpu/activation_cpu.h",
           "a < 0.25f ? small : big", "a < 0.1f ? small : big", ("tests/test_conv2d.py",)),
    Mutant("grouped-weight-accepted", "argument check", "fastconv/_args.py",
           "    if Cg != C // groups:", "    if groups == 1 and Cg != C // groups:", ERRORS),
    # The two caught by one hypothesis draw or one edge case.
    Mutant("ceil-mode-include-pad", "pool divisor", SHAPES_H,
           "const int64_t w1 = min64(w0 + p.kw, p.W + p.pad_w_end);",
           "const int64_t w1 = w0 + p.kw;", POOL),
    Mutant("blocked-k-limit", "blocked channel limit", COMMON,
           "kBlockedMaxK = 24;", "kBlockedMaxK = 32;", CONV + ISA),  # a bug on avx2 only
    # Typical slips, one per kind.
    Mutant("same-split-at-begin", "padding / 'same' split", SHAPES_H,
           "return same_pad_total(in, k, stride, dil) / 2;",
           "return (same_pad_total(in, k, stride, dil) + 1) / 2;", SHAPES),
    Mutant("depthwise-dilation", "dilation", FWD,
           "const int64_t off = s * p.dil_w - p.pad_w;", "const int64_t off = s - p.pad_w;", CONV),
    Mutant("grad-input-stride-hw", "stride", BWD,
           "const int64_t rr = h + p.pad_h - oh * p.stride_h;",
           "const int64_t rr = h + p.pad_h - oh * p.stride_w;", CONV),
    Mutant("block-bwd-window-counter", "pooled gradient spread", BWD,
           "if (++j == bp.pool_w) j = 0, ++qi;", "if (++j > bp.pool_w) j = 0, ++qi;", CONV),
    Mutant("grad-bias-tail", "grad bias sum", BWD,
           "for (int l = 0; j < PQ; ++j, ++l) acc[l] += base[j * step];",
           "for (int l = 0; j + 1 < PQ; ++j, ++l) acc[l] += base[j * step];", CONV),
    Mutant("nhwc-one-bias", "bias add", COMMON,
           "activate_span(p.act, y + j * p.K, p.K, b);",
           "activate_span(p.act, y + j * p.K, p.K, b[0]);", CONV),
    Mutant("tanh-derivative", "activation derivative", "csrc/common/activation.h",
           "case Activation::Tanh: return T(1) - y * y;", "case Activation::Tanh: return T(1) - y;",
           CONV),
    Mutant("avg-divisor-left-clip", "pool divisor", SHAPES_H,
           "(min64(w0 + p.kw, p.W) - max64(w0, 0))", "(min64(w0 + p.kw, p.W) - w0)", POOL),
    Mutant("max-backward-overwrites", "max-pool backward routing", POOL_CPP,
           "dxp[at] += g[o];", "dxp[at] = g[o];", POOL),
    Mutant("max-backward-gather-overwrites", "max-pool backward routing", POOL_CPP,
           "d[c] += m ? g[c] : T(0);", "d[c] = m ? g[c] : d[c];", POOL),
    Mutant("reflect-as-mirror", "sobel border mode", SHAPES_H,
           "if (near) return i < 0 ? I(-1 - i) : I(2 * n - 1 - i);",
           "if (near) return i < 0 ? I(-1 - i) : I(2 * n - 2 - i);",
           FILTERS + SHAPES),
    Mutant("sobel-mirror-within-one", "sobel border mode", SHAPES_H,
           "case Border::Mirror: return n == 1 ? I(0) : i < 0 ? I(1) : I(n - 2);",
           "case Border::Mirror: return n == 1 ? I(0) : i < 0 ? I(1) : I(n - 1);",
           FILTERS + SHAPES),
    Mutant("far-wrap-off-by-one", "filter border mode (far)", SHAPES_H,
           "case Border::Wrap: return floor_mod(i, n);",
           "case Border::Wrap: return floor_mod(I(i + 1), n);",
           FILTERS + SHAPES),
    # An image that needs no padding, read in place (blocked_vk): every image read as the first.
    Mutant("blocked-in-place-image", "image offset", FWD,
           "rows(wt, x + n * in, b, n, 0, p.P);", "rows(wt, x, b, n, 0, p.P);", CONV + ISA),
    Mutant("blocked-pixel-tail", "blocked tail", FWD,
           "if (q0 == p.Q) continue;", "if (q0 >= 0) continue;", CONV + ISA),
    # The AVX2 tail run of 4 (blocked_runs' PT): its input from the row's start at stride 1.
    Mutant("blocked-tail-run-input", "blocked tail", FWD,
           "run_block<S, VK, (PT > 0 ? PT : PB), KS, SW>(p, b, row + q0 * SW,",
           "run_block<S, VK, (PT > 0 ? PT : PB), KS, SW>(p, b, row + q0,", CONV + ISA),
    # The filters packed as GEMM slivers (blocked_vk): each block's rows read from the first.
    Mutant("pack-filters-block", "filter packing", FWD,
           "pack_sliver(KV, w + kb * KV * taps, taps,", "pack_sliver(KV, w + kb * taps, taps,",
           CONV + ISA),
    # AVX2 edge tiles short of rows but whole in width (gemm.cpp, Avx2Path::edge): a row left out.
    Mutant("avx2-gemm-edge-rows", "gemm edge tile", "csrc/cpu/gemm.cpp",
           "case 3: return kernel_avx2<S, 3>(kc, a, b, beta, c, ldc);",
           "case 3: return kernel_avx2<S, 2>(kc, a, b, beta, c, ldc);", ISA),
    Mutant("gemm-edge-tile-beta", "gemm edge tile", "csrc/cpu/gemm.cpp",
           ": tile[i * NR + j] + beta * out;", ": tile[i * NR + j];", CONV + ISA),  # avx2, portable
    # Thresholds of the kernel variants (each side has a test in test_conv2d THRESHOLDS).
    Mutant("forward-last-chunk", "im2col chunks", COMMON,
           "chunks = ceil_div(PQ, chunk);", "chunks = PQ / chunk;", CONV),
    # (blocked-width-8, K = 9 sent to the 8-wide kernel, retired: since the blocked forward
    # runs any K in filter blocks, that is a correct if slower choice. Its successor: every
    # block through the first block's weights.)
    Mutant("blocked-filter-block-weights", "weight offset", FWD,
           "image_fn(q, bb, xp, wt + kb * taps * KV,", "image_fn(q, bb, xp, wt,",
           CONV + ISA),
    # Batch 1, each thread its own rows from a band it pads itself (blocked_vk): the band one
    # row short (the last output row reads past it), and started at the first row.
    Mutant("blocked-band-height", "halo off by one", FWD,
           "band.Hp = (r1 - r0 - 1) * p.stride_h + (p.R - 1) * p.dil_h + 1;",
           "band.Hp = (r1 - r0 - 1) * p.stride_h + (p.R - 1) * p.dil_h;", CONV + ISA),
    Mutant("blocked-band-origin", "band offset", FWD,
           "pad_band(p, band, x + n * in, xp, r0 * p.stride_h);",
           "pad_band(p, band, x + n * in, xp, r0);", CONV + ISA),
    # One image's GEMM split by filters (gemm_by_filters): a thread's part copied back from
    # the wrong column of its tile, and the second part starting one micro-tile late.
    Mutant("gemm-split-copy", "transpose index", FWD,
           "y[(k0 + k) * s.PQ + j] = part[j * nk + k];", "y[(k0 + k) * s.PQ + j] = part[j * nk];",
           CONV + ISA),
    Mutant("gemm-split-parts", "work split", FWD,
           "const int64_t k0 = std::min(s.Kg, units * t / nt * unit);",
           "const int64_t k0 = std::min(s.Kg, (units * t / nt + t) * unit);", CONV + ISA),
    # Winograd at batch 1 split by filters (tiles_by_filters): the thread's products on the
    # wrong slivers, and its channels scattered to the first ones.
    Mutant("winograd-split-columns", "work split", WINO,
           "U + (g * a2 + e) * filter_stride<T>(layout), k0, k1,",
           "U + (g * a2 + e) * filter_stride<T>(layout), 0, k1 - k0,", WINO_TESTS + ISA),
    Mutant("winograd-split-scatter", "output offset", WINO,
           "scatter_band(q, band, n, g, th * m, tw0 * m, m, cols, k0, nk, y);",
           "scatter_band(q, band, n, g, th * m, tw0 * m, m, cols, 0, nk, y);", WINO_TESTS + ISA),
    Mutant("conv1d-last-tap", "off-by-one reduction", "csrc/cpu/conv1d.cpp",
           "for (int64_t t = 0; t < p.n; ++t) acc += s[t] * w[t];",
           "for (int64_t t = 0; t + 1 < p.n; ++t) acc += s[t] * w[t];", FILTERS),
    # The AVX-512 path (each planted by hand once when it landed, and caught).
    Mutant("avx512-gemm-last-k", "off-by-one reduction", "csrc/cpu/gemm.cpp",
           "for (int64_t k = 0; k < kc; ++k, a += MR, b += NR) {\n        V bv[NV];",
           "for (int64_t k = 0; k + 1 < kc; ++k, a += MR, b += NR) {\n        V bv[NV];", ISA,
           "avx512"),
    Mutant("avx512-gemm-edge-mask", "gemm edge tile", "csrc/cpu/gemm.cpp",
           "S::mask(Masked ? last : L)", "S::mask(Masked ? (last > 1 ? last - 1 : last) : L)", ISA,
           "avx512"),
    Mutant("avx512-gemm-edge-rows", "gemm edge tile", "csrc/cpu/gemm.cpp",
           "table[(nv - 1) * B::MR + mr - 1]", "table[(nv - 1) * B::MR + mr - (mr > 1 ? 2 : 1)]",
           ISA, "avx512"),
    Mutant("avx512-blocked-two-zmm", "blocked channel limit", FWD,
           "blocked_pb(p, 8, 12);\n            blocked_vk<32>(p, k512_2[pb - kMinPB], pb, x, w, y);",
           "blocked_pb(p, 8, 12);\n            blocked_vk<32>(p, k512_1[pb - kMinPB], pb, x, w, y);",
           ISA, "avx512"),
    # The rowvec kernel's skipped filter rows (those that read the zero rows around the
    # image): a band's first row taken for the image's, and the last image row skipped.
    Mutant("rowvec-band-row", "halo off by one", FWD,
           "band.i0 = r0 * p.stride_h;", "band.i0 = 0;", CONV + ISA),
    Mutant("rowvec-skip-rows", "halo off by one", FWD,
           "r_hi = valid_out_end(h0, p.dil_h, p.H, p.R);", "r_hi = valid_out_end(h0, p.dil_h, p.H - 1, p.R);",
           CONV + ISA),
    Mutant("blocked-rowvec-last", "blocked tail", FWD,
           "const int last = int(p.Q - (VQ - 1) * L);",
           "const int last = int(p.Q - (VQ - 1) * L) - 1;", CONV + ISA),
    Mutant("avx512-blocked-transpose-store", "blocked store", FWD,
           "S::store(out + k * PQ, m, r[k - L * v]);",
           "S::store(out + k * PQ, m, r[(k - L * v) ^ 1]);", ISA, "avx512"),
    Mutant("blocked-run-stride", "blocked tap offsets", FWD,
           "const V xv = S::bcast(base + j * SW);", "const V xv = S::bcast(base + j);",
           ISA),
    Mutant("avx512-blocked-dw-two-zmm", "blocked channel limit", BWD,
           "bwd_filter_blocked_vk<32>(p, bwd_filter_blocked_chunk_avx512<2>, dy, x, dw);",
           "bwd_filter_blocked_vk<32>(p, bwd_filter_blocked_chunk_avx512<1>, dy, x, dw);", ISA,
           "avx512"),
    # NHWC pooling's AVX-512 blocks (pool.cpp): NaN no longer taken; the masked last vector
    # one channel short; every output of a row divided by its first column's divisor.
    Mutant("avx512-nhwc-max-nan", "NaN propagation", "csrc/cpu/pool.cpp",
           "const __mmask16 t = _mm512_cmp_ps_mask(x, acc[v], _CMP_GT_OQ) |\n"
           "                                    _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);",
           "const __mmask16 t = _mm512_cmp_ps_mask(x, acc[v], _CMP_GT_OQ);", POOL, "avx512"),
    Mutant("avx512-nhwc-max-tail", "tail mask", "csrc/cpu/pool.cpp",
           "return uint16_t((1u << (rest % 16 ? rest % 16 : 16)) - 1);",
           "return uint16_t((1u << (rest % 16 ? rest % 16 - 1 : 15)) - 1);",
           POOL, "avx512"),
    Mutant("avx512-nhwc-avg-divisor", "pool divisor", "csrc/cpu/pool.cpp",
           "const float div = kMax ? 1.f : float(pool_avg_divisor(p, oh, ow));",
           "const float div = kMax ? 1.f : float(pool_avg_divisor(p, oh, 0));", POOL, "avx512"),
    # Grad input through the rowvec forward (conv2d_bwd.cpp, bwd_data_rowvec): the filters
    # transposed but not flipped.
    Mutant("rowvec-grad-input-unflipped", "filter flip", BWD,
           "wt[(c * p.K + k) * RS + t] = w[(k * p.C + c) * RS + RS - 1 - t];",
           "wt[(c * p.K + k) * RS + t] = w[(k * p.C + c) * RS + t];", CONV, "avx512"),
    # Two rows a block (conv2d_fwd.cpp, blocked_runs2): the second row through the same
    # filter row as the first.
    Mutant("avx512-runs2-filter-row", "filter row", FWD,
           "wc + (rr - 1) * KS * KV);", "wc + rr * KS * KV);", CONV, "avx512"),
    # Winograd (csrc/common/winograd.h, csrc/cpu/winograd.cpp): a sign in one entry of
    # F(4, 3)'s B^T; the last image column of each input band read as padding (an
    # off-by-one at the right edge); grad input padded at the left as at the top.
    Mutant("winograd4-bt-sign", "transform matrix entry", WINO_H,
           "{0, -1, -2, 1, 2, 0},", "{0, -1, -2, 1, -2, 0},", WINO_TESTS),
    Mutant("winograd-right-edge", "tile edge", WINO,
           "const int64_t hi = std::max(lo, std::min(cols, q.W - w0));",
           "const int64_t hi = std::max(lo, std::min(cols, q.W - w0 - 1));", WINO_TESTS),
    Mutant("winograd-bwd-pad-w", "grad input padding", WINO_H,
           "q.pad_h = p.R - 1 - p.pad_h, q.pad_w = p.S - 1 - p.pad_w;",
           "q.pad_h = p.R - 1 - p.pad_h, q.pad_w = p.R - 1 - p.pad_h;", WINO_TESTS),
    # Grad weight by Winograd (winograd.cpp, bwd_filter_tiles) and the packed filters: each
    # chunk overwriting dU instead of adding to it; G^T du read along rows instead of
    # columns; a short last reduction block of the packed operand laid out as a full one.
    Mutant("winograd-dw-chunk-sum", "accumulation across chunks", WINO,
           "u0 == 0 ? T(0) : T(1), dU + e * u_stride, Cg);", "T(0), dU + e * u_stride, Cg);",
           WINO_TESTS),
    Mutant("winograd-dw-transform-stride", "transform operand stride", WINO_H,
           "apply<TransposeOf<GOf<m>>>(du + j * dus, a * dus, t + j, a);",
           "apply<TransposeOf<GOf<m>>>(du + j * dus, dus, t + j, a);", WINO_TESTS),
    # One layer's GEMM computed transposed (conv2d_fwd.cpp, gemm_variant): the tile read
    # along the wrong side. The blocked forward's filter blocks: every block's output
    # written to the first block's channels.
    Mutant("gemm-transposed-copy", "transpose index", FWD,
           "out[k * s.PQ + j] = tile[j * s.Kg + k];", "out[k * s.PQ + j] = tile[k * (j1 - j0) + j];",
           CONV),
    # The AVX2 blocked kernels' store (store_block_avx2, simd.h store_first): a run's last
    # two pixels of a half written as one; the second vector of channels stored over the first.
    Mutant("avx2-store-first-pair", "partial store", "csrc/cpu/simd.h",
           "        if (m >= 2) {\n            _mm_storel_pi(", "        if (m > 2) {\n            _mm_storel_pi(",
           ISA),
    Mutant("avx2-store-block-vector", "output offset", FWD,
           "S::store_first(out + k * PQ + half * L, r[k - L * v], m);",
           "S::store_first(out + (k - L * v) * PQ + half * L, r[k - L * v], m);", ISA),
    # Grad bias in chunks of images (conv2d_bwd_bias): a chunk skipping its first image.
    Mutant("grad-bias-image-chunks", "grad bias sum", BWD,
           "part[c * p.K + k] = sum(k, c * kImages, std::min(p.N, (c + 1) * kImages));",
           "part[c * p.K + k] = sum(k, c * kImages + 1, std::min(p.N, (c + 1) * kImages));",
           CONV),
    # The block's backward, 2-wide windows (avgpool_act_rows): the second pixel of each
    # window left with the previous pair's gradient.
    Mutant("avgpool-pair-second", "pooling window", BWD,
           "d[i] = d[i + 1] = double(g[(i0 + i) / 2]) / area;",
           "d[i] = double(g[(i0 + i) / 2]) / area;", CONV),
    Mutant("blocked-filter-block-offset", "output offset", FWD,
           "y + (n * p.K + kb * KV) * PQ + r0 * p.Q, 0, r1 - r0);",
           "y + n * p.K * PQ + r0 * p.Q, 0, r1 - r0);", CONV, "avx512"),
    # NHWC global average pooling (pool.cpp, nhwc_means_simd): a run of 64 rows replacing
    # the sums of the runs before it.
    Mutant("gap-nhwc-runs", "accumulation across runs", POOL_CPP,
           "for (int j = 0; j < NV * L; ++j) acc[c + j] += double(part[j]);",
           "for (int j = 0; j < NV * L; ++j) acc[c + j] = double(part[j]);", POOL),
    # Average pooling's grad input where windows tile the plane (pool.cpp, NCHW): the second
    # of each pair of columns left unwritten; the other window widths' columns all from the
    # row's first output.
    Mutant("avg-bwd-tiles-pair", "unwritten output", POOL_CPP,
           "d[2 * ow] = d[2 * ow + 1] = q[ow];", "d[2 * ow] = q[ow];", POOL),
    Mutant("avg-bwd-tiles-width", "gather index", POOL_CPP,
           "for (int64_t j = 0; j < p.kw; ++j) d[ow * p.kw + j] = q[ow];",
           "for (int64_t j = 0; j < p.kw; ++j) d[ow * p.kw + j] = q[0];", POOL),
    # The same in NHWC: the window's later dx rows not copied from its first; each pixel's
    # channels all from the first window's.
    Mutant("avg-bwd-nhwc-tiles-rows", "unwritten output", POOL_CPP,
           "for (int64_t i = 1; i < p.kh; ++i) std::copy_n(d0, p.W * p.C, d0 + i * p.W * p.C);",
           "for (int64_t i = 2; i < p.kh; ++i) std::copy_n(d0, p.W * p.C, d0 + i * p.W * p.C);",
           POOL),
    Mutant("avg-bwd-nhwc-tiles-source", "gather index", POOL_CPP,
           "const T* src = row.data() + ow * p.C;", "const T* src = row.data();", POOL),
    # NHWC max-pool grad input (max_bwd_nhwc_row_t): each output's indices counted by every
    # pixel of its window's first row, not by the window's first pixel alone (the count
    # checks the indices: valid ones refused).
    Mutant("max-bwd-nhwc-named-once", "count", POOL_CPP,
           "if (first_row && cols.first[cols.out[k]] == w)", "if (first_row)", POOL + ERRORS),
    # The NHWC max-pool gradient's written-out rows: the two halves of a mask swapped
    # (avx512), the part vector's dead lanes counted as named, the narrowed lanes left out
    # of order (avx2), the single channels keeping one winner's gradient of several.
    Mutant("max-bwd-avx512-halves", "lane order", POOL_CPP,
           "_mm512_kunpackb(_mm512_cmpeq_epi64_mask(hi, at),\n"
           "                                                    _mm512_cmpeq_epi64_mask(lo, at))",
           "_mm512_kunpackb(_mm512_cmpeq_epi64_mask(lo, at),\n"
           "                                                    _mm512_cmpeq_epi64_mask(hi, at))",
           POOL, needs="avx512"),
    Mutant("max-bwd-avx512-dead-lanes", "count", POOL_CPP,
           "_mm512_cmpneq_epi64_mask(lo, none)) & lanes);", "_mm512_cmpneq_epi64_mask(lo, none)));",
           POOL, needs="avx512"),
    Mutant("max-bwd-avx2-narrow-order", "lane order", POOL_CPP, "0x88)),\n        0xD8));",
           "0x88)),\n        0xE4));", ISA, needs="avx2"),
    # The NCHW depthwise by channels (small planes): each plane's residual taken from the
    # block's first plane, the image's last row left out of the scratch, a column read from
    # the vertical padding's offset.
    Mutant("depthwise-channels-residual", "offset", FWD,
           "add_residual(out, residual ? residual + at : nullptr, PQ);",
           "add_residual(out, residual ? residual + (n * p.K + c0) * PQ : nullptr, PQ);",
           ("tests/test_residual.py",)),
    Mutant("depthwise-channels-rows", "bounds", FWD,
           "h1 = std::min(Hp, p.H + p.pad_h);", "h1 = std::min(Hp, p.H + p.pad_h - 1);", CONV),
    Mutant("depthwise-channels-column", "index", FWD,
           "xs[(hp * Wp + wp) * L + l] = plane[(hp - p.pad_h) * p.W + wp - p.pad_w];",
           "xs[(hp * Wp + wp) * L + l] = plane[(hp - p.pad_h) * p.W + wp - p.pad_h];", CONV),
    # The NCHW depthwise rows in registers: a chunk's last part vector dropped; the plane's
    # padding read one row off (its scratch is pad_band's, whose bugs are planted above).
    Mutant("depthwise-regs-tail", "tail", FWD, "} else if (q < p.Q) {", "} else if (false) {",
           CONV),
    Mutant("depthwise-regs-row", "index", FWD,
           "const float* src = xs + (oh * p.stride_h + r * p.dil_h) * Wp + q0;",
           "const float* src = xs + (oh * p.stride_h + r * p.dil_h + (r > 0)) * Wp + q0;", CONV),
    # The NHWC depthwise channels in registers: the avx512 path's 8-wide chunk skipped.
    Mutant("depthwise-nhwc-eight", "tail", FWD,
           "if (vec > wide) depthwise_nhwc_chunks_t<Avx2Float>", "if (false) depthwise_nhwc_chunks_t<Avx2Float>",
           CONV, needs="avx512"),
    # The NCHW max-pool grad input along 2-wide windows: indices cut to 32 bits rather than
    # saturated (avx512), even and odd pixels swapped (avx2), the last step's pixels masked
    # as outputs (avx512), negative indices other than -1 left uncounted.
    # NCHW max-pool grad input, 3-wide windows at stride 2 (max_bwd_w3s2_plane_avx512): the
    # padding columns' guards dropped (an index one position before or after the row taken),
    # and the odd column's right-tap carry between steps lost.
    Mutant("w3s2-left-guard", "window check", POOL_CPP,
           "const __mmask16 left = live & _mm512_cmpgt_epi32_mask(j, _mm512_setzero_si512());",
           "const __mmask16 left = live;", ERRORS, needs="avx512"),
    Mutant("w3s2-right-guard", "window check", POOL_CPP,
           "const __mmask16 right = live & _mm512_cmplt_epi32_mask(_mm512_add_epi32(jj, one),",
           "const __mmask16 right = live | _mm512_cmplt_epi32_mask(_mm512_add_epi32(jj, one),",
           ERRORS, needs="avx512"),
    Mutant("w3s2-carry", "lane order", POOL_CPP,
           "                                    _mm512_maskz_mov_ps(m0, gv));\n                c = t2;",
           "                                    _mm512_maskz_mov_ps(m0, gv));\n                c = _mm512_setzero_ps();",
           POOL + ISA, needs="avx512"),
    Mutant("w3s2-avx2-left-guard", "window check", POOL_CPP,
           "const __m256i left = _mm256_and_si256(live, _mm256_cmpgt_epi32(j, _mm256_setzero_si256()));",
           "const __m256i left = live;", ISA, needs="avx2"),
    Mutant("w3s2-avx2-right-guard", "window check", POOL_CPP,
           "const __m256i right = _mm256_and_si256(\n                live,",
           "const __m256i right = _mm256_or_si256(\n                live,", ISA, needs="avx2"),
    Mutant("w3s2-avx2-last-column", "tail", POOL_CPP,
           "            if (n == 0)  // past the last output", "            if (false)  // past the last output",
           POOL + ISA, needs="avx2"),
    Mutant("w3s2-avx2-narrow", "narrowing", POOL_CPP,
           "half[k] = _mm256_permutevar8x32_epi32(_mm256_blendv_epi8(none, v, in), pick);",
           "half[k] = _mm256_permutevar8x32_epi32(v, pick);", ISA + ERRORS, needs="avx2"),
    Mutant("max-pairs-truncate", "narrowing", POOL_CPP, "_mm512_maskz_cvtsepi64_epi32(0xFF, v64)",
           "_mm512_maskz_cvtepi64_epi32(0xFF, v64)", ERRORS, needs="avx512"),
    Mutant("max-pairs-avx2-blend", "lane order", POOL_CPP, "_mm256_cmpeq_epi64(v, odd), 0xAA));",
           "_mm256_cmpeq_epi64(v, odd), 0x55));", ISA, needs="avx2"),
    Mutant("max-pairs-tail-pixels", "tail mask", POOL_CPP,
           "const __mmask16 pixels = __mmask16((1u << (2 * left)) - 1);",
           "const __mmask16 pixels = __mmask16((1u << left) - 1);", POOL, needs="avx512"),
    Mutant("max-pairs-named", "count", POOL_CPP, "for (int64_t o = 0; o < n; ++o) named += ix[o] != -1;",
           "for (int64_t o = 0; o < n; ++o) named += ix[o] >= 0;", ERRORS + ISA),
    # The NHWC average pool along whole rows (few channels): a pixel's sums read a tap's
    # stride too short; the last pixel's first tap left out of the row.
    Mutant("avg-tiles-pixel-stride", "index", POOL_CPP,
           "out[q * p.C + c] = u[q * p.kw * p.C + c];", "out[q * p.C + c] = u[q * p.C + c];",
           POOL),
    Mutant("avg-tiles-row-length", "bounds", POOL_CPP,
           "const int64_t L = (p.Q * p.kw - p.kw + 1) * p.C;",
           "const int64_t L = (p.Q * p.kw - p.kw) * p.C;", POOL),
    Mutant("max-bwd-avx2-tail-sum", "accumulation", POOL_CPP, "sum += m ? dy[o] : 0.f;",
           "sum = m ? dy[o] : sum;", ISA, needs="avx2"),
    # The output cache (csrc/cpu/output_cache.cpp): a block handed out but left on the kept
    # list (two live outputs on one block); a block taken for a larger request.
    Mutant("output-cache-kept-twice", "ownership", CACHE,
           "            c.kept.erase(c.kept.begin() + best);\n", "", CACHE_TESTS),
    Mutant("output-cache-too-small", "size check", CACHE,
           "if (s >= want && s <= want + want / 4", "if (s >= want / 2 && s <= want + want / 4",
           CACHE_TESTS),
    Mutant("packed-b-last-block", "packed layout offset", "csrc/cpu/gemm.h",
           "const int64_t pc = k / KC * KC, kc = K - pc < KC ? K - pc : KC;",
           "const int64_t pc = k / KC * KC, kc = KC;", WINO_TESTS),
]


def sh(cmd, cwd, env=None, timeout=None):
    return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)


def check_mutants(mutants, root):
    """Every original text exactly once in its file, or stop naming the offenders."""
    bad = []
    for m in mutants:
        n = (root / m.path).read_text().count(m.original)
        if n != 1:
            bad.append(f"  {m.name}: {m.path} holds its original text {n} times, not once")
    if bad:
        sys.exit("mutate.py: mutants that no longer apply:\n" + "\n".join(bad))


def copy_tree(dst):
    files = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    if files.returncode:
        sys.exit(f"mutate.py: git ls-files failed: {files.stderr}")
    for rel in filter(None, files.stdout.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def build_env(scratch):
    env = dict(os.environ, FASTCONV_CUDA="0", PYTHONPATH=str(scratch))
    if shutil.which("ccache"):
        env.update(CC="ccache gcc", CXX="ccache g++", CCACHE_BASEDIR=str(scratch),
                   CCACHE_NOHASHDIR="1")
    return env


def build(scratch, env):
    r = sh([sys.executable, "setup.py", "build_ext", "--inplace", "--force", "-q"], scratch, env)
    return r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def run_tests(scratch, env, tests, args):
    """(outcome, detail): 'caught' with the first failing test, 'missed', or 'error'."""
    shutil.rmtree(scratch / ".hypothesis", ignore_errors=True)  # no replayed examples
    marks = "not gpu and not hypothesis" if args.fixed_only else "not gpu"
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider",
           "--hypothesis-seed=0", "-m", marks]
    try:
        r = sh(cmd, scratch, env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return "caught", f"timeout after {args.timeout} s (a hang)"
    out = r.stdout + r.stderr
    if r.returncode == 0:
        return "missed", ""
    if r.returncode < 0:
        return "caught", f"crash (signal {-r.returncode})"
    failed = [ln.split(" - ")[0][len("FAILED "):] for ln in out.splitlines() if ln.startswith("FAILED ")]
    if r.returncode == 1 and failed:
        return "caught", failed[0]
    if r.returncode == 1 and "Fatal Python error" not in out:
        errors = [ln for ln in out.splitlines() if ln.startswith("ERROR ")]
        return "error", (errors[0] if errors else out[-300:]).strip()
    if r.returncode == 1 or r.returncode >= 128:
        return "caught", "crash"
    return "error", f"pytest exit {r.returncode}: {out[-300:].strip()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--fixed-only", action="store_true",
                    help="deselect hypothesis tests: fixed-shape tests alone must catch each")
    ap.add_argument("-k", dest="select", default="", help="mutants whose name or class contains this")
    ap.add_argument("--scratch", help="scratch directory (default: a new temporary one, removed)")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per test run")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip checking that the selected tests pass on unmutated code")
    args = ap.parse_args()
    mutants = [m for m in MUTANTS if args.select in m.name or args.select in m.cls]
    check_mutants(MUTANTS, ROOT)
    if args.list:
        for m in mutants:
            print(f"{m.name:26} {m.cls:26} {m.path:28} {' '.join(m.tests)}")
        return 0
    if not mutants:
        sys.exit(f"mutate.py: no mutant matches {args.select!r}")

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="fastconv-mutate-")).resolve()
    try:
        copy_tree(scratch)
        env = build_env(scratch)
        print(f"mutate.py: scratch {scratch}; ccache {'on' if 'CC' in env else 'off (full rebuilds)'}; "
              f"{'fixed-shape tests only' if args.fixed_only else 'hypothesis at seed 0 included'}",
              flush=True)
        ok, log = build(scratch, env)
        if not ok:
            sys.exit(f"mutate.py: the unmutated tree does not build:\n{log}")
        where = sh([sys.executable, "-c", "import fastconv; print(fastconv.__file__)"], scratch, env)
        if not where.stdout.startswith(str(scratch)):
            sys.exit(f"mutate.py: fastconv imports from {where.stdout.strip()}, not the scratch copy")
        if not args.no_baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            t0 = time.time()
            outcome, detail = run_tests(scratch, env, tests, args)
            if outcome != "missed":  # i.e. something failed on correct code
                sys.exit(f"mutate.py: the tests fail on unmutated code: {detail}")
            print(f"baseline: {' '.join(tests)} pass on unmutated code ({time.time() - t0:.0f} s)",
                  flush=True)

        have = sh([sys.executable, "-c", "from fastconv import _cpu; print(*_cpu.supported_isas())"],
                  scratch, env).stdout.split()
        rows, so_dirty = [], False
        for m in mutants:
            if m.needs and m.needs not in have:
                rows.append((m, "skipped", f"this CPU lacks the {m.needs} path", 0.0))
                print(f"  {m.name:26} skipped (this CPU lacks the {m.needs} path)", flush=True)
                continue
            t0 = time.time()
            f = scratch / m.path
            text = f.read_text()
            native = not m.path.endswith(".py")
            f.write_text(text.replace(m.original, m.replacement))
            try:
                ok, log = (build(scratch, env) if native or so_dirty else (True, ""))
                so_dirty = native
                if not ok:
                    outcome, detail = "error", "does not build: " + log.strip().splitlines()[-1][:80]
                else:
                    outcome, detail = run_tests(scratch, env, m.tests, args)
            finally:
                f.write_text(text)
            rows.append((m, outcome, detail, time.time() - t0))
            print(f"  {m.name:26} {outcome:7} {detail} ({time.time() - t0:.0f} s)", flush=True)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{'mutant':26} {'class':26} {'result':7} {'seconds':>7}  caught by")
    for m, outcome, detail, secs in rows:
        print(f"{m.name:26} {m.cls:26} {outcome:7} {secs:7.0f}  {detail}")
    caught = sum(r[1] == "caught" for r in rows)
    skipped = sum(r[1] == "skipped" for r in rows)
    print(f"\n{caught} of {len(rows) - skipped} caught, {skipped} skipped for an ISA path this CPU lacks"
          f" ({'fixed-shape tests only' if args.fixed_only else 'hypothesis seed 0 included'})")
    return 0 if caught == len(rows) - skipped else 1


if __name__ == "__main__":
    sys.exit(main())
