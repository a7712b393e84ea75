"""Build of fastconv's two extensions.

fastconv._cpu   C++17 + OpenMP, always built.
fastconv._cuda  kernels in csrc/cuda/*.cu compiled by nvcc, binding csrc/bind_cuda.cpp;
                built when nvcc is found, skipped cleanly when it is not.

Environment:
  FASTCONV_CUDA=1 / 0        force the CUDA extension on (fail without nvcc) or off.
  FASTCONV_CUDA_ARCHS="80;90"  SM architectures to build SASS for (default below); the
                             last one also embeds PTX, so newer GPUs can JIT it.
  CUDA_HOME                  where to look for bin/nvcc first (then PATH, /usr/local/cuda).
  FASTCONV_BUILD_JOBS=N      parallel compile jobs (default: the machine's cores).

Nothing here touches the network or git.
"""

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

DEFAULT_CUDA_ARCHS = "80;90"  # A100, H100 / H200; documented in the README
ROOT = Path(__file__).parent.resolve()
JOBS = int(os.environ.get("FASTCONV_BUILD_JOBS", os.cpu_count() or 1))

ParallelCompile("FASTCONV_BUILD_JOBS", default=JOBS).install()


def find_nvcc():
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    if shutil.which("nvcc"):
        candidates.append(Path(shutil.which("nvcc")))
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    return next((c.resolve() for c in candidates if c.is_file()), None)


def want_cuda(nvcc):
    flag = os.environ.get("FASTCONV_CUDA", "").strip().lower()
    if flag in ("0", "off", "false", "no"):
        return False
    if flag in ("1", "on", "true", "yes"):
        if nvcc is None:
            sys.exit("FASTCONV_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
        return True
    if flag:
        sys.exit(f"FASTCONV_CUDA must be 1 or 0, got {flag!r}")
    return nvcc is not None


def cuda_archs():
    archs = [a.strip() for a in os.environ.get("FASTCONV_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).split(";")]
    archs = [a.replace("sm_", "") for a in archs if a]
    if not archs or not all(a.isdigit() for a in archs):
        sys.exit(f"FASTCONV_CUDA_ARCHS must look like '80;90', got {os.environ['FASTCONV_CUDA_ARCHS']!r}")
    return archs


def cuda_gencode_flags():
    archs = cuda_archs()
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


class BuildExt(build_ext):
    """Compiles the .cu sources of an extension with nvcc, then links as usual."""

    def build_extension(self, ext):
        cu_sources = getattr(ext, "cu_sources", [])
        if cu_sources:
            ext.extra_objects = self.compile_cuda(cu_sources) + list(ext.extra_objects or [])
        super().build_extension(ext)

    def compile_cuda(self, sources):
        out_dir = Path(self.build_temp) / "cuda"
        out_dir.mkdir(parents=True, exist_ok=True)
        flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-lineinfo",
                 "-I" + str(ROOT / "csrc"), *cuda_gencode_flags()]

        def one(src):
            obj = out_dir / (Path(src).stem + ".o")
            cmd = [str(NVCC), *flags, "-c", str(ROOT / src), "-o", str(obj)]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            return str(obj)

        with ThreadPoolExecutor(max_workers=JOBS) as pool:
            return list(pool.map(one, sources))


NVCC = find_nvcc()
cpu_ext = Pybind11Extension(
    "fastconv._cpu",
    ["csrc/bind_cpu.cpp", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cpu").glob("*.cpp"))],
    include_dirs=["csrc"],
    cxx_std=17,
    # -fno-math-errno: sqrt and friends vectorise (fastconv never reads errno).
    # -fno-trapping-math: loops with selects and float->int conversions (the epilogue's
    # tanh / sigmoid) are if-converted and vectorise; fastconv unmasks no FP traps.
    # NaN and infinity semantics are unchanged by both.
    extra_compile_args=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
    extra_link_args=["-fopenmp"],
)
extensions = [cpu_ext]

def find_cuda_home(nvcc):
    """The toolkit root holding include/cuda_runtime_api.h (nvcc may be a wrapper script)."""
    candidates = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += [nvcc.parent.parent, Path("/usr/local/cuda")]
    home = next((c for c in candidates if (c / "include" / "cuda_runtime_api.h").is_file()), None)
    if home is None:
        sys.exit(f"found nvcc at {nvcc} but no CUDA headers; set CUDA_HOME to the toolkit root")
    return home


if want_cuda(NVCC):
    cuda_home = find_cuda_home(NVCC)
    lib_dir = next((cuda_home / d for d in ("lib64", "lib", "targets/x86_64-linux/lib")
                    if (cuda_home / d / "libcudart_static.a").is_file()), cuda_home / "lib64")
    cuda_ext = Pybind11Extension(
        "fastconv._cuda",
        ["csrc/bind_cuda.cpp"],
        include_dirs=["csrc", str(cuda_home / "include")],
        cxx_std=17,
        define_macros=[("FASTCONV_CUDA_RUNTIME", "1"),
                       ("FASTCONV_CUDA_ARCHS", '"' + ";".join(cuda_archs()) + '"')],
        extra_compile_args=["-O3"],
        library_dirs=[str(lib_dir)],
        # The static runtime: importing fastconv._cuda needs no libcudart.so, and on a
        # machine without a driver only the first CUDA call fails (cuda_available()).
        libraries=["cudart_static", "dl", "rt", "pthread"],
    )
    cuda_ext.cu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cuda").glob("*.cu"))
    extensions.append(cuda_ext)
    print(f"fastconv: building the CUDA extension with {NVCC}", flush=True)
else:
    print("fastconv: nvcc not found or FASTCONV_CUDA=0: building the CPU backend only", flush=True)

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
