#!/usr/bin/env bash
# Builds the CUDA kernels of csrc/cuda/ for the host emulator and runs them against the
# CPU twins. Usage: tools/cuda_emu/run.sh [BUILD_DIR] [SCALE]   (exit 1 on a mismatch)
# SCALE multiplies the random draws (default 1; 0.25 a quarter; 0 the fixed cases only).
# EMU_CXXFLAGS adds compiler and linker flags: -DEMU_UCONTEXT for the portable context
# switch; "-fsanitize=address -DEMU_STACK_KIB=256" for the ASan build (see README.md).
# Every build checks array bounds and alignment (UBSan) and aborts on the first report.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
csrc=$(cd "$here/../../csrc" && pwd)
out=${1:-$(mktemp -d)}
scale=${2:-1}
mkdir -p "$out/gen" "$out/obj"
sanitize=(-fsanitize=bounds,alignment -fno-sanitize-recover=all ${EMU_CXXFLAGS:-})
flags=(-O2 -g1 -std=c++17 -Wno-unknown-pragmas -Wno-unused-parameter -DFASTCONV_CUDA_RUNTIME
       -I"$here/include" -I"$csrc" -I"$csrc/cuda" "${sanitize[@]}")
# The kernel files get ThreadSanitizer's instrumentation, linked to emu.cpp's shared-memory
# race detector instead of its runtime (ASan cannot be combined with it).
races=(-fsanitize=thread --param tsan-instrument-func-entry-exit=0)
# EMU_RACES=0 leaves it out (to measure its cost).
[[ "${EMU_CXXFLAGS:-}" == *address* || "${EMU_RACES:-1}" == 0 ]] && races=()
pids=()
for f in "$csrc"/cuda/*.cuh; do  # found before the originals: gen/ holds the includer
    python3 "$here/translate.py" "$f" "$out/gen/$(basename "$f")"
done
for f in "$csrc"/cuda/*.cu "$here/selftest.cu"; do
    b=$(basename "$f" .cu)
    python3 "$here/translate.py" "$f" "$out/gen/$b.cpp"
    g++ "${flags[@]}" "${races[@]}" -include cuda_runtime.h -c "$out/gen/$b.cpp" -o "$out/obj/cu_$b.o" &
    pids+=($!)
done
for f in "$csrc"/cpu/*.cpp; do
    g++ "${flags[@]}" -fopenmp -c "$f" -o "$out/obj/cpu_$(basename "$f" .cpp).o" & pids+=($!)
done
g++ "${flags[@]}" -c "$here/emu.cpp" -o "$out/obj/emu.o"
g++ "${flags[@]}" -c "$here/test.cpp" -o "$out/obj/test.o"
for p in "${pids[@]}"; do wait "$p"; done
g++ -fopenmp "${sanitize[@]}" "$out"/obj/*.o -o "$out/emu_test"
"$out/emu_test" "$scale"
