"""The packed-attention kernel in C (`packed_attention.c`), built once per machine and loaded with ctypes.

Packed attention (see `attention`) is tiny in arithmetic but, in torch, a dozen gathers and scatters
around a flash-attention call on [children, heads, n, n] blocks; the kernel reads each token's keys
straight from its parent and the packed row (docs/performance.md#packed-attention-kernel). It is built with the
system's C compiler (`CC`, else `cc`) into the cache directory on first use; where there is no compiler, the
build fails, or REVERIE_NATIVE=0, `kernel()` is None and attention runs in torch, with the same
results within fp32 rounding.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..lm.model import cache_dir

SOURCE = Path(__file__).with_name("packed_attention.c")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-shared", "-fPIC", "-pthread"]


def kernel():
    """The loaded `packed_attention` function, or None where it is not available or REVERIE_NATIVE=0."""
    if os.environ.get("REVERIE_NATIVE", "1") == "0":
        return None
    return built()


@functools.cache
def built():
    """The kernel, built (once per machine) and loaded (once per process); None where it cannot be built."""
    try:
        return _load(build())
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu() -> str:
    """What -march=native compiles for: the CPU's model and flags (a cache shared across machines keeps
    one build per kind of CPU)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({line for line in info.splitlines() if line.startswith(("model name", "flags"))}))


def compiler() -> str | None:
    """The C compiler the kernel is built with: `CC`, else `cc` (None if there is none)."""
    return shutil.which(os.environ.get("CC", "cc"))


def private(path: Path) -> bool:
    """Whether only the current user can change `path`: owned by them, not writable by group or others."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def build() -> Path:
    """The kernel's shared library for this source, flags, CPU and compiler: from the cache directory
    where only the current user can change it (the folder and the file), else built anew. Where the
    cache folder is not private, the library is built into a private temporary folder instead, so
    that nobody else can plant code that this process then loads."""
    compiler_path = compiler()
    if compiler_path is None:
        raise OSError("no C compiler")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [source, " ".join(FLAGS).encode(), platform.machine().encode(), _cpu().encode(), compiler_path.encode()]
        )
    ).hexdigest()[:16]
    folder = cache_dir() / "native"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not private(folder):
        folder = Path(tempfile.mkdtemp(prefix="reverie-native-"))
    library = folder / f"packed_attention-{key}.so"
    if library.exists() and private(library):
        return library
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(fd)
    try:
        subprocess.run([compiler_path, *FLAGS, str(SOURCE), "-o", tmp], check=True, capture_output=True, timeout=120)
        os.chmod(tmp, 0o755)
        os.replace(tmp, library)  # atomic: processes building at once each write their own file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return library


def _load(library: Path):
    fn = ctypes.CDLL(str(library)).packed_attention
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    fn.argtypes = [
        ptr,
        ptr,
        ptr,
        ctypes.c_int,
        i64,
        i64,
        i64,
        i64,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        f32,
        f32,
        i64,
        ctypes.c_int,
    ]
    fn.restype = ctypes.c_int
    return fn


def packed_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    parent_keys: torch.Tensor,
    parent_values: torch.Tensor,
    entry: torch.Tensor,
    position: torch.Tensor,
    start: torch.Tensor,
    mutated: torch.Tensor,
    parent: torch.Tensor,
    scaling: float,
    softcap: float | None,
    sliding_window: int | None,
) -> torch.Tensor | None:
    """[1, T, heads, d] output of packed attention, or None where the kernel is not available or does not
    take these tensors (then the caller computes it in torch). query [1, heads, T, d], key and value
    [1, kv heads, T, d] as the attention interface passes them; the parents' keys and values fp32
    [M, kv heads, n, d]; per token its entry and position, per entry its first own token in the row,
    mutated position and parent (int64)."""
    fn = kernel()
    q, k, v = query[0], key[0], value[0]
    if (
        fn is None
        or q.device.type != "cpu"
        or q.dtype not in (torch.float32, torch.bfloat16)
        or not q.dtype == k.dtype == v.dtype
        or k.stride() != v.stride()
        or q.stride(-1) != 1
        or k.stride(-1) != 1
    ):
        return None
    H, T, d = q.shape
    kp, vp = parent_keys.float().contiguous(), parent_values.float().contiguous()
    index = [t.to(torch.int64).contiguous() for t in (entry, position, start, mutated, parent)]
    M, KH, N = kp.shape[:3]
    if not (
        k.shape == v.shape == (KH, T, d)
        and kp.shape == vp.shape == (M, KH, N, d)
        and len(entry) == len(position) == T
        and len(start) == len(mutated) == len(parent)
    ):
        raise ValueError(f"packed attention: {T} queries, {k.shape[1]} keys, {len(entry)} tokens in the layout")
    out = torch.empty(1, T, H, d, dtype=q.dtype)
    status = fn(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        int(q.dtype == torch.bfloat16),
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        kp.data_ptr(),
        vp.data_ptr(),
        *(t.data_ptr() for t in index),
        out.data_ptr(),
        T,
        len(start),
        M,
        H,
        KH,
        N,
        d,
        scaling,
        softcap or 0.0,
        sliding_window or 0,
        torch.get_num_threads(),
    )
    if status == 2:
        raise ValueError("packed attention: the layout points outside the row or the parents")
    return out if status == 0 else None
