"""Small helpers every layer uses: atomic writes, file hashing, an error's first line, peak memory.

This module sits below ``graph/``, ``data/`` and everything else and imports nothing of the package.

Atomic writes: the data goes to a temporary file in the target's own folder (same file system, so
the final ``os.replace`` is atomic) and is renamed into place only when writing succeeded. On an
exception the temporary file is removed and nothing is left at the target path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds.

    The caller writes the complete file to the yielded path. The parent folder of ``path``
    is created if missing. An existing file at ``path`` is replaced only on success.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_line(exc: BaseException | None) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none:
    what a one-line error says about a failure inside a library."""
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0].strip() if text else type(exc).__name__


_PEAK_BEFORE_RESET = 0.0  # the process's peak when ``section_peak`` last reset the kernel's high-water mark


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB; NaN where the platform does not say.

    ``getrusage`` gives kilobytes on Linux and bytes on macOS; Windows has no ``resource`` module,
    so its peak working set is asked of the OS through ctypes instead. On Linux the kernel's mark
    can be reset by ``section_peak`` (which also lowers ``ru_maxrss``); the peak from before the
    last reset is kept here, so this stays the whole process's peak.
    """
    try:
        import resource
    except ImportError:
        return _windows_peak_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(_PEAK_BEFORE_RESET, peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0)


def _vm_hwm_mb() -> float | None:
    """Linux's high-water mark of this process's resident memory (VmHWM), in MiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


class section_peak:  # noqa: N801 (used as a context manager, like a function)
    """The peak resident memory (MiB) reached inside a ``with`` block: ``.mb`` after the block.

    On Linux the kernel's high-water mark is reset at the start (``/proc/self/clear_refs``, "5"),
    so ``.mb`` is the block's own peak, not an earlier phase's. Where that cannot be done it is the
    process's peak so far, and ``.own`` is False, so a report can say which it is.
    """

    def __enter__(self) -> section_peak:
        global _PEAK_BEFORE_RESET
        before = peak_rss_mb()
        self.own = False
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
            self.own = _vm_hwm_mb() is not None
        except OSError:
            pass
        if self.own:
            _PEAK_BEFORE_RESET = max(_PEAK_BEFORE_RESET, before)
        self.mb = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        hwm = _vm_hwm_mb() if self.own else None
        self.mb = hwm if hwm is not None else peak_rss_mb()


def _windows_peak_mb() -> float:
    try:
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD),
                        ("PeakWorkingSetSize", ctypes.c_size_t), ("WorkingSetSize", ctypes.c_size_t),
                        ("QuotaPeakPagedPoolUsage", ctypes.c_size_t), ("QuotaPagedPoolUsage", ctypes.c_size_t),
                        ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
                        ("QuotaNonPagedPoolUsage", ctypes.c_size_t), ("PagefileUsage", ctypes.c_size_t),
                        ("PeakPagefileUsage", ctypes.c_size_t)]

        counters = Counters()
        counters.cb = ctypes.sizeof(Counters)
        process = ctypes.windll.kernel32.GetCurrentProcess()
        if not ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return float("nan")
        return counters.PeakWorkingSetSize / (1024.0 * 1024.0)
    except (AttributeError, OSError, ImportError):  # not Windows either, or the call is refused
        return float("nan")


def class_scores(scores):
    """A classifier's output as (batch, classes): an (N, C, 1, ..., 1) output (model-zoo DenseNet,
    SqueezeNet end in a global pool) is squeezed; any other shape is returned as it is, for the
    caller to refuse. Works on numpy arrays and torch tensors alike."""
    shape = tuple(scores.shape)
    if len(shape) > 2 and all(int(d) == 1 for d in shape[2:]):
        return scores.reshape(shape[0], shape[1])
    return scores
