#!/usr/bin/env bash
# Builds the CUDA kernels of csrc/cuda/ for the host emulator and runs them against the
# CPU twins. Usage: tools/cuda_emu/run.sh [BUILD_DIR] [SCALE]   (exit 1 on a mismatch)
# SCALE multiplies the random draws (default 1; 0.25 a quarter; 0 the fixed cases only;
# 'build' builds and stops).
# EMU_CXXFLAGS adds compiler and linker flags: -DEMU_UCONTEXT for the portable context
# switch; "-fsanitize=address -DEMU_STACK_KIB=256" for the ASan build (see README.md).
# Every build checks array bounds and alignment (UBSan) and aborts on the first report.
# EMU_JOBS caps the compiles run at once (default: the CPU count).
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
# Incremental: an object is rebuilt only when its flags, its source or any header changed
# (the key, a hash of all three, sits beside it), so mutate.py rebuilds one file a mutant.
for f in "$csrc"/cuda/*.cuh; do  # found before the originals: gen/ holds the includer
    python3 "$here/translate.py" "$f" "$out/gen/$(basename "$f")"
done
headers=$(cat "$here"/include/*.h "$csrc"/common/*.h "$csrc"/cuda/*.h "$csrc"/cpu/*.h "$out"/gen/*.cuh | sha256sum)
build() {  # build OBJ SRC FLAGS...
    local obj=$1 src=$2 key
    shift 2
    key=$( { echo "$*"; echo "$headers"; cat "$src"; } | sha256sum | cut -c1-64)
    [[ -f $obj && -f $obj.key && $(cat "$obj.key") == "$key" ]] && return 0
    rm -f "$obj" "$obj.key"
    g++ "$@" -c "$src" -o "$obj" && echo "$key" > "$obj.key"
}
# At most EMU_JOBS compiles at once: a shared machine's other work keeps its cores, and
# twenty g++ at once on two cores finish no sooner than two at a time.
jobs=${EMU_JOBS:-$(nproc 2>/dev/null || echo 2)}
pids=()
spawn() {  # spawn CMD...: run it in the background once fewer than $jobs are running
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || true; done
    "$@" & pids+=($!)
}
for f in "$csrc"/cuda/*.cu "$here"/selftest*.cu; do
    b=$(basename "$f" .cu)
    python3 "$here/translate.py" "$f" "$out/gen/$b.cpp"
    spawn build "$out/obj/cu_$b.o" "$out/gen/$b.cpp" "${flags[@]}" "${races[@]}" -include cuda_runtime.h
done
for f in "$csrc"/cpu/*.cpp; do
    spawn build "$out/obj/cpu_$(basename "$f" .cpp).o" "$f" "${flags[@]}" -fopenmp
done
spawn build "$out/obj/emu.o" "$here/emu.cpp" "${flags[@]}"
for f in "$here"/test*.cpp; do
    spawn build "$out/obj/$(basename "$f" .cpp).o" "$f" "${flags[@]}"
done
for p in "${pids[@]}"; do wait "$p"; done
g++ -fopenmp "${sanitize[@]}" "$out"/obj/*.o -o "$out/emu_test"
[[ "$scale" == build ]] && exit 0  # build only (mutate.py)
"$out/emu_test" "$scale"
