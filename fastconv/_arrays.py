"""Array libraries: which one an input comes from, its pointer, device and stream, and
allocation of outputs through the same library.

The caller never names a backend: the arrays decide. NumPy arrays and PyTorch CPU
tensors run on the CPU backend (fastconv._cpu); CuPy arrays, PyTorch CUDA tensors and
other objects exposing __cuda_array_interface__ or DLPack on a CUDA device run on the
GPU backend (fastconv._cuda), on the caller's current stream. Outputs are of the
caller's library, allocated by that library's allocator, on the inputs' device; one
exception: CPU outputs of 64 KiB and more (NumPy arrays, and PyTorch CPU tensors through
torch.from_numpy) are over blocks of the CPU backend's output cache
(csrc/cpu/output_cache.h: fresh pages cost a fault each).
Inputs are used in place when C-contiguous; other views are copied to a contiguous
array by their own library first.
"""

import os
import sys
import threading

import numpy as np

CPU_DTYPES = ("float32", "float64")
GPU_DTYPES = ("float32",)
# conv2d's forward on the GPU also takes half precision (its tensor-core implicit GEMM):
# float16 (CuPy, torch) and bfloat16 (torch; CuPy has none).
GPU_CONV_DTYPES = ("float32", "float16", "bfloat16")
HALF_DTYPES = ("float16", "bfloat16")

# Tests turn this on so every output starts as NaN (integer outputs as -7): an element
# a kernel forgets to write then fails the comparison instead of passing as a zero.
_poison = os.environ.get("FASTCONV_POISON", "") == "1"


def set_poison(on):
    """Fill every output fastconv allocates with NaN before the kernel runs (for tests)."""
    global _poison
    previous, _poison = _poison, bool(on)
    return previous


# ----------------------------------------------------------------------- libraries

# dtype.name runs Python code in NumPy (3.6 us a call, several per op); a dict is 0.1 us.
_DTYPE_NAMES = {np.dtype(n): n for n in ("float32", "float64", "float16", "int64", "int32", "uint8")}


def _dtype_name(dtype):
    return _DTYPE_NAMES.get(dtype) or dtype.name



def _cached_empty(shape, dtype):
    """An ndarray over a block of the CPU backend's output cache (csrc/cpu/output_cache.h
    says why: fresh pages cost a fault each), or None below the size it keeps (64 KiB)."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    cpu = sys.modules.get("fastconv._cpu")
    if cpu is None or nbytes < cpu.output_cache_min_bytes:
        return None
    return cpu.empty(nbytes).view(dtype).reshape(shape)


_CACHED_TORCH_DTYPES = ("float32", "float64", "int64")  # those NumPy has too


class _NumPy:
    name = "numpy"

    @staticmethod
    def owns(a):
        return isinstance(a, np.ndarray)

    @staticmethod
    def dtype(a):
        return _dtype_name(a.dtype)

    @staticmethod
    def device(a):
        return "cpu"

    @staticmethod
    def contiguous(a):
        return np.ascontiguousarray(a)

    @staticmethod
    def empty(shape, dtype, like):
        a = _cached_empty(shape, dtype)
        return np.empty(shape, dtype=dtype) if a is None else a

    @staticmethod
    def fill(a, value):
        a.fill(value)

    @staticmethod
    def pointer(a):
        return a.__array_interface__["data"][0]

    @staticmethod
    def stream(device):
        return 0

    @staticmethod
    def kind(a):
        return a.shape, a.dtype


class _Torch:
    name = "torch"

    @staticmethod
    def owns(a):
        torch = _module("torch")
        return torch is not None and isinstance(a, torch.Tensor)

    @staticmethod
    def dtype(a):
        return str(a.dtype).replace("torch.", "")

    @staticmethod
    def device(a):
        return "cpu" if a.device.type == "cpu" else (a.device.type, a.device.index)

    @staticmethod
    def contiguous(a):
        return a if a.is_contiguous() else a.detach().contiguous()

    @staticmethod
    def empty(shape, dtype, like):
        torch = _module("torch")
        if like.device.type == "cpu" and dtype in _CACHED_TORCH_DTYPES:
            # CPU outputs of 64 KiB and more from the output cache too, as NumPy's are: a
            # LeNet-5 training step at batch 128 took 234 page faults a step through
            # torch.empty. (The tensor's storage is the block's; it cannot be resized.)
            a = _cached_empty(shape, dtype)
            if a is not None:
                return torch.from_numpy(a)
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)

    @staticmethod
    def fill(a, value):
        a.fill_(value)

    @staticmethod
    def pointer(a):
        return a.data_ptr()

    @staticmethod
    def stream(device):
        torch = _module("torch")
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # 0.2 us; the public call 2-3
        return raw(device[1]) if raw else torch.cuda.current_stream(device[1]).cuda_stream

    @staticmethod
    def kind(a):
        return a.shape, a.dtype, a.device


class _CuPy:
    name = "cupy"

    @staticmethod
    def owns(a):
        cupy = _module("cupy")
        return cupy is not None and isinstance(a, cupy.ndarray)

    @staticmethod
    def dtype(a):
        return _dtype_name(a.dtype)

    @staticmethod
    def device(a):
        return ("cuda", a.device.id)

    @staticmethod
    def contiguous(a):
        return _module("cupy").ascontiguousarray(a)

    @staticmethod
    def empty(shape, dtype, like):
        cupy = _module("cupy")
        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=dtype)

    @staticmethod
    def fill(a, value):
        a.fill(value)

    @staticmethod
    def pointer(a):
        return a.data.ptr

    @staticmethod
    def stream(device):
        cupy = _module("cupy")
        with cupy.cuda.Device(device[1]):
            return cupy.cuda.get_current_stream().ptr

    @staticmethod
    def kind(a):
        return a.shape, a.dtype, a.device.id


_LIBRARIES = (_NumPy, _Torch, _CuPy)


def _module(name):
    """An array library if the caller has imported it; fastconv never imports one for them."""
    return sys.modules.get(name)


def _library_of(op, name, a):
    for lib in _LIBRARIES:
        if lib.owns(a):
            return lib, a
    cupy = _module("cupy")
    if cupy is not None and (hasattr(a, "__cuda_array_interface__") or hasattr(a, "__dlpack__")):
        try:
            return _CuPy, cupy.asarray(a) if hasattr(a, "__cuda_array_interface__") else cupy.from_dlpack(a)
        except Exception:  # not a CUDA array after all: fall through to NumPy
            pass
    if isinstance(a, (list, tuple, int, float, np.generic)) or hasattr(a, "__array__"):
        return _NumPy, np.asarray(a)
    raise TypeError(f"{op}: {name} must be a NumPy, CuPy or PyTorch array, got {type(a).__name__}")


# ----------------------------------------------------------------------- call plans
#
# Checking a call's arguments costs more than a small kernel: a LeNet-sized conv2d on
# PyTorch tensors took 70 us on the development VM, 55 of them in Arrays, _args and
# allocation, where PyTorch's whole conv2d + tanh took 9. A call whose arrays are of the
# same kinds (library, shape, dtype, device) as an earlier call's, with equal other
# arguments, reuses that call's plan: its checked params, output shapes and Backend.
# Those kinds are everything the checks looked at, so a reused plan is as checked.

_PLANS = {}
_PLAN_LIMIT = 1024
_KINDS = {}  # array type -> library, learned on first sight


def plan_key(op, arrays, args):
    """A hashable key for a call of op on these arrays (None allowed) and other
    arguments, or None where there is none (an array type fastconv converts, an
    unhashable argument): such calls take the full path every time."""
    key = [op, args]
    for a in arrays:
        if a is None:
            key.append(None)
            continue
        lib = _KINDS.get(type(a))
        if lib is None:
            lib = next((lib for lib in _LIBRARIES if lib.owns(a)), None)
            if lib is None:
                return None
            _KINDS[type(a)] = lib
        key.append((lib, *lib.kind(a)))
    key = tuple(key)
    try:
        hash(key)
    except TypeError:
        return None
    return key


#
# Threads share the cache. A plan is never changed once kept (its params, shapes and
# Backend are read-only; each call allocates its own outputs), so a reader needs no lock:
# dict.get is atomic. Writers take _PLANS_LOCK so the bound check, the eviction and the
# insertion happen as one step (two threads could otherwise both clear, or one insert
# into a cache another is clearing past the bound).

_PLANS_LOCK = threading.Lock()


def find_plan(key):
    return None if key is None else _PLANS.get(key)


def keep_plan(key, plan):
    if key is not None:
        with _PLANS_LOCK:
            if len(_PLANS) >= _PLAN_LIMIT:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


# ----------------------------------------------------------------------- a call's arrays


_PARAMS_CLASSES = {"conv2d": "Conv2dParams", "conv2d_avgpool": "Conv2dPoolParams",
                   "pool2d": "Pool2dParams"}


class Backend:
    """Where one call runs: the binding module, the dtype, the device and the stream."""

    def __init__(self, module, lib, dtype, device):
        self.module, self.lib, self.dtype, self.device = module, lib, dtype, device
        self.is_cuda = device != "cpu"

    def call(self, fn, *params, arrays):
        """module.fn(*params, dtype, [device, stream,] *pointers); None gives a null pointer;
        the stream is the caller's current one at this moment. Returns what the binding
        returns (most return None)."""
        ctx = (self.device[1], self.lib.stream(self.device)) if self.is_cuda else ()
        ptrs = [0 if a is None else self.lib.pointer(a) for a in arrays]
        return getattr(self.module, fn)(*params, self.dtype, *ctx, *ptrs)

    def params(self, params, kind="conv2d"):
        """The params built once as the binding's struct (kind: "conv2d",
        "conv2d_avgpool" or "pool2d"): a call plan then skips parsing the dict."""
        return getattr(self.module, _PARAMS_CLASSES[kind])(params)

    def ready(self, a):
        """a as the kernels read it: C-contiguous (a copy by its own library if not)."""
        return None if a is None else self.lib.contiguous(a)

    def zeros(self, shape, like):
        """A zero-filled output (the parameters' gradients of an empty batch)."""
        out = self.lib.empty(shape, self.dtype, like)
        self.lib.fill(out, 0)
        return out

    def empty(self, shape, like, dtype=None):
        """An output of this call's library on like's device (NaN-filled for the tests)."""
        dtype = dtype or self.dtype
        out = self.lib.empty(shape, dtype, like)
        if _poison:
            self.lib.fill(out, -7 if dtype.startswith("int") else float("nan"))
        return out


class Arrays:
    """The arrays of one call, checked to share a library, a device and a dtype."""

    def __init__(self, op, **named):
        self.op = op
        self.arrays = {}
        lib = device = dtype = first = None
        for name, a in named.items():
            if a is None:
                continue
            a_lib, a = _library_of(op, name, a)
            a_dev, a_dtype = a_lib.device(a), a_lib.dtype(a)
            if lib is None:
                lib, device, dtype, first = a_lib, a_dev, a_dtype, name
            elif a_lib is not lib:
                raise TypeError(f"{op}: {name} is a {a_lib.name} array but {first} is a "
                                f"{lib.name} array; pass arrays from one library")
            elif a_dev != device:
                raise ValueError(f"{op}: {name} is on {_device_name(a_dev)} but {first} is on "
                                 f"{_device_name(device)}; move them to one device")
            elif a_dtype != dtype:
                raise TypeError(f"{op}: {name} has dtype {a_dtype} but {first} has dtype "
                                f"{dtype}; pass arrays of one dtype")
            self.arrays[name] = a
        self.lib, self.device, self.dtype = lib, device, dtype
        self.backend = None

    def values(self, *names):
        """The arrays as checked (converted to their library's array type), by name."""
        return tuple(self.arrays.get(n) for n in names)

    def shape(self, name):
        a = self.arrays.get(name)
        return None if a is None else tuple(int(d) for d in a.shape)

    def select_backend(self, gpu_dtypes=GPU_DTYPES, cpu_dtypes=CPU_DTYPES):
        """Picks the binding by device and checks the dtype; returns the Backend."""
        if self.device == "cpu":
            from . import _cpu as module

            allowed = cpu_dtypes
        else:
            module = _cuda_module(self.op)
            allowed = gpu_dtypes
        if self.dtype not in allowed:
            op, dtype = self.op, self.dtype
            if self.device != "cpu" and dtype in HALF_DTYPES:
                raise ValueError(f"{op}: the GPU backend has no {dtype} kernel for {op} ({dtype} "
                                 f"arrays run conv2d's forward only); pass float32 arrays")
            where = "the CPU backend" if self.device == "cpu" else "the GPU backend"
            gpu = (f"; the GPU backend takes {dtype} arrays"
                   if self.device == "cpu" and dtype in gpu_dtypes else "")
            raise TypeError(f"{op}: {where} takes {' or '.join(allowed)} arrays, got {dtype}{gpu}")
        self.backend = Backend(module, self.lib, self.dtype, self.device)
        return self.backend

    def contiguous(self, name):
        a = self.arrays.get(name)
        return None if a is None else self.lib.contiguous(a)

    def empty(self, shape, dtype=None):
        return self.backend.empty(tuple(shape), next(iter(self.arrays.values())), dtype)


def _device_name(device):
    return "the CPU" if device == "cpu" else f"{device[0]}:{device[1]}"


def _cuda_module(op):
    try:
        from . import _cuda
    except ImportError as e:
        raise RuntimeError(f"{op}: the inputs are CUDA arrays but fastconv was built without "
                           f"the CUDA backend ({e}); reinstall with nvcc on PATH") from None
    return _cuda
