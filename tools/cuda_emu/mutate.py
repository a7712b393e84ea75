"""The emulator proves itself: plants each bug class it claims to catch into a copy of
the real kernels (csrc/cuda) or of its selftest kernels, builds, runs the emulator on
several seeds, and asserts that every mutant is caught on every seed.

Usage: python3 tools/cuda_emu/mutate.py [--seeds 1,2] [--only NAME[,NAME]] [--fast] [--list]
Prints a catch table; exit status 1 if any mutant survives a seed, or no longer applies
(its original text must occur exactly once: csrc/cuda changes under this table, and a
stale mutant fails loudly rather than testing nothing).

A mutant is caught on a seed when the run aborts with an emulator or sanitizer report
(a race, a barrier or warp divergence, an out-of-bounds or misaligned access, a canary,
an async copy never waited for), or prints a FAIL line the unmutated build does not
print on that seed (a wrong result). Builds are incremental (run.sh keys each object on
its flags, source and headers), so each mutant recompiles one or a few files.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# name, bug class, file (from the repository root), [(original, replacement)], SCALE.
# Each original must occur exactly once in its file.
SOBEL, FWD, BWD, POOL = 'csrc/cuda/sobel.cu', 'csrc/cuda/conv2d_fwd.cu', 'csrc/cuda/conv2d_bwd.cu', 'csrc/cuda/pool.cu'
COMMON, CONV1D, DW = 'csrc/cuda/cuda_common.cuh', 'csrc/cuda/conv1d.cu', 'csrc/cuda/depthwise.cu'
IGEMM = 'csrc/cuda/implicit_gemm.cuh'
WINO, WINO_H = 'csrc/cuda/winograd.cu', 'csrc/common/winograd.h'
DEV, WMMA = 'tools/cuda_emu/selftest_device.cu', 'tools/cuda_emu/selftest_wmma.cu'
TC, FWDTC, BWDTC = 'csrc/cuda/tc_gemm.cuh', 'csrc/cuda/conv2d_fwd_tc.cu', 'csrc/cuda/conv2d_bwd_tc.cu'
MUTANTS = [
    ('filter2d-barrier-deleted', 'deleted barrier', SOBEL,
     [('        __syncthreads();\n        float acc[kRowPixels]', '        float acc[kRowPixels]')], '0.1'),
    ('filter2d-reuse-barrier-deleted', 'deleted barrier', SOBEL,
     [('        __syncthreads();  // the previous tile is no longer being read\n', '')], '0.1'),
    ('igemm-barrier-deleted', 'deleted barrier', FWD,
     [('            __syncthreads();\n#pragma unroll\n            for (int kk = 0; kk < kBK; ++kk) {',
       '#pragma unroll\n            for (int kk = 0; kk < kBK; ++kk) {')], '0.1'),
    ('igemm-barrier-moved', 'moved barrier', FWD,
     [('            __syncthreads();  // the tiles are overwritten by the next slice\n', ''),
      ('            __syncthreads();\n#pragma unroll\n            for (int kk = 0; kk < kBK; ++kk) {',
       '            __syncthreads();\n            __syncthreads();\n#pragma unroll\n'
       '            for (int kk = 0; kk < kBK; ++kk) {')], '0.1'),
    ('grad-weight-barrier-deleted', 'deleted barrier', BWD,
     [('            __syncthreads();\n#pragma unroll\n            for (int q = 0; q < kFBK; ++q) {',
       '#pragma unroll\n            for (int q = 0; q < kFBK; ++q) {')], '0.1'),
    # The grad-input GEMM (conv2d_bwd.cu's bwd_data_gemm, implicit_gemm.cuh's dgrad_*).
    ('dgrad-barrier-deleted', 'deleted barrier', BWD,
     [('                    __syncthreads();\n#pragma unroll\n                    for (int kk = 0; kk < kDBK; ++kk) {',
       '#pragma unroll\n                    for (int kk = 0; kk < kDBK; ++kk) {')], '0.1'),
    ('dgrad-reuse-barrier-deleted', 'deleted barrier', BWD,
     [('                    __syncthreads();  // the tiles are overwritten by the next slice\n', '')], '0.1'),
    # (The taps of the next phase for a phase's pixels. A permutation of whole phases
    # among the tiles would be no bug: every phase would still be computed once.)
    ('dgrad-phase-off-by-one', 'phase index off by one', IGEMM,
     [('const I num = a + pad - r * dil;', 'const I num = a + 1 + pad - r * dil;')], '0.1'),
    ('dgrad-tap-stride-off-by-one', 'stride index off by one', IGEMM,
     [('return {ph.h.r0 + tr * I(ds.rstep),', 'return {ph.h.r0 + tr * I(ds.rstep + 1),')], '0.1'),
    ('dgrad-divisor-off-by-one', 'wrong division constant', BWD,
     [('        const DgradDiv<I> dv(ds);\n',
       '        DgradDiv<I> dv(ds);\n        dv.w = DivMod<I>(ds.Ws > 1 ? ds.Ws - 1 : 2);\n')], '0.1'),
    ('block-sum-barrier-deleted', 'deleted barrier', COMMON,
     [('    __syncthreads();  // sh is free again', '    // sh is free again')], '0'),
    ('conv1d-load-off-by-one', 'off-by-one global load', CONV1D,
     [('acc += s[t] * w[t];', 'acc += s[t + 1] * w[t];')], '0'),
    ('conv1d-store-off-by-one', 'off-by-one global store', CONV1D,
     [('        y[i] = acc;', '        y[i + 1 < count ? i + 1 : i] = acc;')], '0'),
    # The 32-bit index kernels' division constants and strength-reduced counters.
    ('conv1d-divisor-off-by-one', 'wrong division constant', CONV1D,
     [('p, DivMod<I>(out), x, w, y);', 'p, DivMod<I>(out - 1), x, w, y);')], '0'),
    ('depthwise-tap-counter-reset', 'strength-reduced counter reset', DW,
     [('        I r = 0, s = 0;  // tap t = r * S + s, carried from chunk to chunk\n'
       '        for (I t0 = 0; t0 < RS; t0 += I(kTapChunk)) {\n',
       '        for (I t0 = 0; t0 < RS; t0 += I(kTapChunk)) {\n            I r = 0, s = 0;\n')], '0'),
    ('block-sum-shared-store-off-by-one', 'off-by-one shared store', COMMON,
     [('    sh[t] = v;', '    sh[t + 1] = v;')], '0'),
    ('filter2d-tile-store-off-by-one', 'off-by-one shared store', SOBEL,
     [('            tile[r][c] = im.at(', '            tile[r][c + 1] = im.at(')], '0.1'),
    ('filter2d-local-overrun', 'local array overrun', SOBEL,
     [('float seg[kMaxTaps1d + kRowPixels - 1];', 'float seg[kMaxTaps1d + kRowPixels - 2];')], '0.1'),
    ('pool2x2-misaligned', 'misaligned vector access', POOL,
     [('reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }', 'true; }')], '0.1'),
    ('dynamic-shared-one-short', 'off-by-one shared store (dynamic)', DEV,
     [('n * sizeof(float), nullptr>>>', '(n - 1) * sizeof(float), nullptr>>>')], '0'),
    ('dynamic-shared-no-opt-in', 'dynamic shared memory over its limit', DEV,
     [('        cudaFuncSetAttribute(reverse_runs,', '        (void)(reverse_runs,')], '0'),
    ('warp-lane-missing', 'warp collective with a lane missing', DEV,
     [('    o[4] = float(__ballot_sync(', '    if (lane != 7) o[4] = float(__ballot_sync(')], '0'),
    ('warp-lane-returns', 'warp collective with a lane missing', DEV,
     [('    sh[t] = int(t);\n    __syncwarp(m);', '    if (lane == 31) return;\n    sh[t] = int(t);\n    __syncwarp(m);')], '0'),
    ('warp-race-syncwarp-deleted', 'race between two threads of a warp', DEV,
     [('    sh[t] = int(t);\n    __syncwarp(m);\n', '    sh[t] = int(t);\n')], '0'),
    ('warp-race-readers-then-write', 'race between two threads of a warp', DEV,
     [('    o[13] = sh[t - lane];  // every lane reads lane 0\'s word ...\n    __syncwarp(m);\n',
       '    o[13] = sh[t - lane];  // every lane reads lane 0\'s word ...\n')], '0'),
    ('shared-atomic-made-plain', 'race between two threads of a warp', DEV,
     [('atomicAdd(&local[e & 15], 1u);', 'local[e & 15] += 1u;')], '0'),
    ('atomics-then-read-barrier-deleted', 'deleted barrier', DEV,
     [('        __syncthreads();\n        if (threadIdx.x < 16) atomicAdd(&hist',
       '        if (threadIdx.x < 16) atomicAdd(&hist')], '0'),
    ('async-wait-missing', 'missing async wait', DEV,
     [('            async_wait<1>();  // this thread', '            // this thread')], '0'),
    ('async-wait-too-weak', 'missing async wait', DEV,
     [('            async_wait<1>();  // this thread', '            async_wait<2>();  // this thread')], '0'),
    ('async-refill-barrier-deleted', 'deleted barrier', DEV,
     [('            __syncthreads();  // buf[k % 2] is refilled by tile k + 2\n', '')], '0'),
    # Winograd (winograd.cu, and the transform tables it shares with the CPU: the emulator's
    # reference is the CPU's direct convolution, so a table error shows on both backends).
    ('winograd-transform-coefficient', 'wrong transform coefficient', WINO_H,
     [('{0, 1, 1, 4, 1.0 / 4, 0},', '{0, 1, 1, 4, 1.0 / 2, 0},')], '0.1'),
    ('winograd-tile-edge-off-by-one', 'off-by-one tile edge', WINO,
     [('col_in[j] = w0 + j >= 0 && w0 + j < W;', 'col_in[j] = w0 + j >= 0 && w0 + j <= W;')], '0.1'),
    ('winograd-filter-not-rotated', 'wrong filter tap order', WINO,
     [('taps[t] = S(src[(f.reversed ? 8 - t : t) * ts]);', 'taps[t] = S(src[t * ts]);')], '0.1'),
    ('winograd-gemm-barrier-deleted', 'deleted barrier', WINO,
     [('            __syncthreads();\n#pragma unroll\n            for (int cc = 0; cc < kWC; ++cc) {',
       '#pragma unroll\n            for (int cc = 0; cc < kWC; ++cc) {')], '0.1'),
    ('wmma-lane-missing', 'warp collective with a lane missing', WMMA,
     [('            wmma::mma_sync(acc, fa, fb, acc);', '            if (threadIdx.x % 32 != 9) wmma::mma_sync(acc, fa, fb, acc);')], '0'),
    ('wmma-pointer-not-uniform', 'warp collective, arguments not uniform', WMMA,
     [('wmma::load_matrix_sync(fb, tile, 16);', 'wmma::load_matrix_sync(fb, tile + (threadIdx.x == 3 ? 8 : 0), 16);')], '0'),
    ('wmma-staging-barrier-deleted', 'race between two threads of a warp', WMMA,
     [('    for (int i = threadIdx.x; i < 256; i += blockDim.x) tile[i] = c0[i];\n    __syncthreads();\n',
       '    for (int i = threadIdx.x; i < 256; i += blockDim.x) tile[i] = c0[i];\n')], '0'),
    # The tensor-core implicit GEMM (tc_gemm.cuh's tile, conv2d_fwd_tc.cu's gathers).
    ('tc-pipeline-barrier-deleted', 'deleted barrier', TC,
     [('        __syncthreads();              // everyone\'s; and no warp still reads stage `write`\n', '')], '0'),
    ('tc-async-wait-too-weak', 'missing async wait', TC,
     [('async_wait<kTcStages - 2>();', 'async_wait<kTcStages - 1>();')], '0'),
    ('tc-mma-k-step-skipped', 'wrong result (a k-step not multiplied)', TC,
     [('            Policy::mma(acc, a, b);', '            if (ks != Policy::kK) Policy::mma(acc, a, b);')], '0'),
    ('tc-fragment-offset', 'wrong result (fragment offset)', TC,
     [('Bs + Tile::b_index(ks, wn + 16 * j)', 'Bs + Tile::b_index(ks, wn)')], '0'),
    ('tc-staging-barrier-deleted', 'deleted barrier', TC,
     [('    __syncthreads();  // the whole tile is staged', '    // the whole tile is staged')], '0'),
    ('tc-tf32x3-correction-dropped', 'wrong result (precision)', TC,
     [('                nvcuda::wmma::mma_sync(acc[i][j], a_lo[i], b[j], acc[i][j]);\n'
       '                nvcuda::wmma::mma_sync(acc[i][j], a[i], b_lo[j], acc[i][j]);\n', '')], '0'),
    ('tc-tile-reuse-barrier-deleted', 'deleted barrier', FWDTC,
     [('        __syncthreads();  // the staging tile is the next tile\'s pipeline\n', '')], '0'),
    # Each load path reached: the 16-byte copies' zero fill, the element loads' tap counter.
    ('tc-copy-zero-fill-dropped', 'wrong result (padding)', FWDTC,
     [('                                in ? xg + px[i].base + (h * W + w) * I(p.C) + c : xg, in ? 16 : 0);',
       '                                in ? xg + px[i].base + (h * W + w) * I(p.C) + c : xg, 16);')], '0'),
    ('tc-element-tap-counter', 'strength-reduced counter reset', FWDTC,
     [('                if (++s == S) s = 0, ++r;', '                if (++s == S) s = 0;')], '0'),
    ('tc-weight-copy-offset', 'wrong result (weight gather)', FWDTC,
     [('in ? wg + (nchw ? j * ld + kk : kk * ld + j) : wg', 'in ? wg + (nchw ? j * ld + (kk ^ V) : kk * ld + j) : wg')], '0'),
    # The tensor-core grad input and grad weight (conv2d_bwd_tc.cu). (A permutation of the
    # grad weight's chunks is no bug: each is still summed once, in a fixed order; the
    # chunk rows below make a chunk summed twice or overlapping the next.)
    ('tc-dgrad-tap-off-by-one', 'phase tap off by one', BWDTC,
     [('        const DgradTap<I> tap = dgrad_tap(cx.ds, cx.ph, cur.tr, cur.ts);\n        const I k = cur.k + I(col * V);',
       '        const DgradTap<I> tap = dgrad_tap(cx.ds, cx.ph, cur.tr, cur.ts + 1);\n        const I k = cur.k + I(col * V);')],
     '0'),
    ('tc-dgrad-tile-reuse-barrier-deleted', 'deleted barrier', BWDTC,
     [('        __syncthreads();  // the next tile\'s stages overwrite the staging tile\n', '')], '0'),
    ('tc-wgrad-tile-reuse-barrier-deleted', 'deleted barrier', BWDTC,
     [('        __syncthreads();  // the staging tile is the next tile\'s pipeline\n', '')], '0'),
    ('tc-wgrad-chunk-bound', 'wrong split chunk bound', BWDTC,
     [('M - m_begin < split_pixels ? M : m_begin + split_pixels;',
       'M - m_begin < split_pixels ? M : m_begin + split_pixels + I(kTcBK);')], '0'),
    ('tc-wgrad-chunk-index', 'wrong split chunk', BWDTC,
     [('const I m_begin = split * split_pixels;', 'const I m_begin = split / 2 * split_pixels;')], '0'),
    # The 16-byte copies' zero fill, where a tap misses dy (grad input) or x (grad weight).
    ('tc-dgrad-copy-zero-fill-dropped', 'wrong result (padding)', BWDTC,
     [('async_copy_cg16(dst, in ? dyg + at + k : dyg, in ? 16 : 0);',
       'async_copy_cg16(dst, in ? dyg + at + k : dyg, 16);')], '0'),
    ('tc-wgrad-copy-zero-fill-dropped', 'wrong result (padding)', BWDTC,
     [('in ? xg + px.base + (h * W + w) * I(p.C) + c : xg, in ? 16 : 0);',
       'in ? xg + px.base + (h * W + w) * I(p.C) + c : xg, 16);')], '0'),
    ('tc-wgrad-tf32x3-correction-dropped', 'wrong result (precision)', BWDTC,
     [('launch_bwd_filter_tc<TcTf32x3>(p, split_pixels', 'launch_bwd_filter_tc<TcTf32>(p, split_pixels')], '0'),
]

# --fast (tests/test_cuda_emulated.py): one mutant of each class that rebuilds a single
# small file and runs the fixed cases only (SCALE 0).
FAST = ['conv1d-load-off-by-one', 'conv1d-divisor-off-by-one', 'async-wait-missing',
        'warp-lane-missing', 'warp-race-syncwarp-deleted', 'shared-atomic-made-plain',
        'wmma-lane-missing', 'tc-tile-reuse-barrier-deleted']


def apply(text, edits, name):
    for orig, repl in edits:
        if isinstance(orig, re.Pattern):
            n = len(orig.findall(text))
            if n != 1:
                raise ValueError(f'{name}: pattern {orig.pattern!r} matches {n} times, not once')
            text = orig.sub(repl, text)
        else:
            n = text.count(orig)
            if n != 1:
                raise ValueError(f'{name}: original text occurs {n} times, not once: {orig!r}')
            text = text.replace(orig, repl)
    return text


def run(build, scale, seed):
    env = dict(os.environ, EMU_SEED=str(seed))
    r = subprocess.run([str(build / 'emu_test'), scale], capture_output=True, text=True, env=env,
                       timeout=900)
    fails = {l.split(' rel=')[0].split(' at ')[0] for l in r.stdout.splitlines() if l.startswith('FAIL')}
    report = next((l for l in r.stderr.splitlines() if l.startswith(('cuda_emu:', '=='))
                   or 'runtime error' in l), '')
    return r.returncode, fails, report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--seeds', default='1,2')
    ap.add_argument('--only', default='')
    ap.add_argument('--list', action='store_true')
    ap.add_argument('--fast', action='store_true', help='only the FAST rows')
    ap.add_argument('--keep', help='scratch directory to use and keep')
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(',')]
    names = a.only.split(',') if a.only else FAST if a.fast else None
    mutants = [m for m in MUTANTS if names is None or m[0] in names]
    if a.list:
        for m in mutants:
            print(f'{m[0]:36} {m[1]:38} {m[2]}')
        return 0
    scratch = Path(a.keep or tempfile.mkdtemp(prefix='cuda_emu_mutate_'))
    for sub in ('csrc', 'tools/cuda_emu'):
        shutil.rmtree(scratch / sub, ignore_errors=True)
        shutil.copytree(ROOT / sub, scratch / sub)
    run_sh, build = scratch / 'tools/cuda_emu/run.sh', scratch / 'build'

    def make():
        r = subprocess.run(['bash', str(run_sh), str(build), 'build'], capture_output=True, text=True)
        return r.returncode == 0, r.stderr[-3000:]

    ok, err = make()
    if not ok:
        print(err)
        sys.exit('mutate.py: the unmutated build failed')
    baseline = {}
    for scale in sorted({m[4] for m in mutants}):
        for seed in seeds:
            rc, fails, report = run(build, scale, seed)
            if rc not in (0, 1) or report:
                sys.exit(f'mutate.py: the unmutated run aborts (SCALE {scale}, seed {seed}): {report}')
            baseline[scale, seed] = fails
    rows, missed = [], 0
    for name, cls, rel, edits, scale in mutants:
        path = scratch / rel
        pristine = path.read_text()
        try:
            path.write_text(apply(pristine, edits, name))
        except ValueError as e:
            rows.append((name, cls, ['STALE'] * len(seeds), str(e)))
            missed += 1
            continue
        ok, err = make()
        results, how = [], ''
        for seed in seeds:
            if not ok:
                results.append('NO BUILD')
                how = err.strip().splitlines()[-1] if err.strip() else ''
                continue
            rc, fails, report = run(build, scale, seed)
            new = sorted(fails - baseline[scale, seed])
            if rc != 0 and report:  # (UBSan halts with status 1, the emulator aborts)
                results.append('caught')
                how = how or report[:110]
            elif new:
                results.append('caught')
                how = how or 'wrong result: ' + new[0][:96]
            else:
                results.append('MISSED')
        missed += any(r != 'caught' for r in results)
        rows.append((name, cls, results, how))
        path.write_text(pristine)
    make()  # leave the scratch build unmutated
    print(f'{"mutant":36} {"class":38} ' + ' '.join(f'seed {s:<4}' for s in seeds) + '  how')
    for name, cls, results, how in rows:
        print(f'{name:36} {cls:38} ' + ' '.join(f'{r:9}' for r in results) + f'  {how}')
    total = len(rows)
    print(f'{total - missed} of {total} mutants caught on every seed ({", ".join(map(str, seeds))})')
    if not a.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if missed else 0


if __name__ == '__main__':
    sys.exit(main())
