"""Read image data from .npz files, image folders and zips of image folders.

Every reader returns an :class:`ImageSet` (float32 NCHW in [0, 1], int64 labels). Bad input
raises :class:`DataError` with one line naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..util import atomic_output, sha256_file
from .images import UNLABELED, ImageSet
from .sample import sample, sample_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
_CACHE_VERSION = "1"


def load_images(
    path: str | os.PathLike,
    split: str | None = None,
    layout: str | None = None,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    pick: tuple[int | None, int] | None = None,
) -> ImageSet:
    """Load images from an ``.npz`` file, an image folder or a ``.zip`` of an image folder.

    ``split`` picks ``x_<split>``/``y_<split>`` in an npz, or the ``<split>`` subfolder of a
    folder/zip; a source without splits is returned whole. ``layout`` ("NCHW"/"NHWC") overrides
    the layout inference for 4-D npz arrays. ``limit`` keeps at most that many images (the first
    ones of an npz; for folders and zips, taken round-robin over the classes). ``cache_dir``, if
    given, stores decoded folders/zips as .npz keyed by path, size, mtime, split and limit.
    ``pick`` = (n, seed) returns ``data.sample.sample(images, n, seed)`` of the whole set, and where
    the pixels are stored as integers (an npz of uint8, the cache) only the picked ones become
    float32: a 500-image sample of CIFAR-10's training split then holds 6 MB of floats, not 614.
    """
    images = _load(path, split, layout, limit, cache_dir, pick)
    return images if pick is None else sample(images, *pick)


def _load(path, split, layout, limit, cache_dir, pick) -> ImageSet:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if layout is not None and layout.upper() not in ("NCHW", "NHWC"):
        raise DataError(f"layout {layout!r} is not NCHW or NHWC")
    if limit is not None and limit <= 0:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    if p.is_dir():
        return _load_cached(p, split, limit, cache_dir, lambda: _load_tree(p, split, limit), pick)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _load_npz(p, split, layout, limit, pick)
    if suffix == ".zip":
        return _load_cached(p, split, limit, cache_dir, lambda: _load_zip(p, split, limit), pick)
    raise DataError(f"data file {p} has unknown extension {p.suffix!r} (expected .npz, .zip or a folder)")


EVALUATION_SPLITS = ("test",)


def load_defender_images(path: str | os.PathLike, split: str | None = None, **options) -> ImageSet:
    """``load_images`` for the defender's side (repair, scan): the test split is evaluation data,
    which no defence or detector may see, so asking for it is refused."""
    if split is not None and split.strip().lower() in EVALUATION_SPLITS:
        raise DataError(f"--split {split} is evaluation data: repair and scan see only the defender's clean "
                        "images (a clean set of their own, or the train split)")
    return load_images(path, split=split, **options)


# --------------------------------------------------------------------------- npz


def _picked(x: np.ndarray, y: np.ndarray, pick: tuple[int | None, int] | None, source: str):
    """``x``, ``y`` cut to ``pick``'s sample when the pixels are integers (float pixels are
    converted whole: whether they are in [0, 1] or [0, 255] is judged on all of them)."""
    if pick is None or not np.issubdtype(x.dtype, np.integer):
        return x, y
    idx = sample_indices(len(x), pick[0], pick[1], source)
    return (x, y) if idx is None else (x[idx], y[idx])


def _load_npz(p: Path, split: str | None, layout: str | None, limit: int | None,
              pick: tuple[int | None, int] | None = None) -> ImageSet:
    try:
        archive = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {p} as .npz: {exc}") from None
    with archive:
        keys = sorted(archive.files)
        x_key, y_key = _npz_keys(p, keys, split)
        if y_key not in keys:
            raise DataError(f"{p} has images under {x_key!r} but no labels under {y_key!r} (keys: {', '.join(keys)})")
        try:
            x = archive[x_key]
            y = archive[y_key]
            classes = [str(c) for c in archive["classes"].tolist()] if "classes" in keys else None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read arrays of {p}: {exc}") from None
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x = _to_nchw(x, layout, f"{p}:{x_key}")
    y = _check_labels(y, len(x), f"{p}:{y_key}")
    if classes is not None and len(y) and int(y.max()) >= len(classes):
        raise DataError(f"{p}: label {int(y.max())} but only {len(classes)} names under 'classes'")
    x, y = _picked(x, y, pick, str(p))
    return ImageSet(x=_to_unit_float(x, f"{p}:{x_key}"), y=y, classes=classes, source=str(p))


def _npz_keys(p: Path, keys: list[str], split: str | None) -> tuple[str, str]:
    if split is not None and f"x_{split}" in keys:
        return f"x_{split}", f"y_{split}"
    if "x" in keys:
        return "x", "y"
    available = ", ".join(keys) or "none"
    if split is None:
        splits = sorted(k[2:] for k in keys if k.startswith("x_"))
        if splits:
            raise DataError(f"{p} holds splits {', '.join(splits)} (keys: {available}); choose one with --split")
    raise DataError(f"{p} has no images under {'x_' + split if split else 'x'!r} (keys: {available})")


def _to_nchw(x: np.ndarray, layout: str | None, where: str) -> np.ndarray:
    """Bring a 3-D (grey NHW) or 4-D array into NCHW."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim != 4:
        raise DataError(f"{where} has shape {tuple(x.shape)}; expected NHW, NCHW or NHWC images")
    if layout is None:
        first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
        if first and last:
            raise DataError(f"{where} has shape {tuple(x.shape)}: cannot tell NCHW from NHWC; pass --layout")
        if not first and not last:
            raise DataError(f"{where} has shape {tuple(x.shape)}: no channel axis of size 1 or 3 at dim 1 or 3")
        layout = "NCHW" if first else "NHWC"
    if layout.upper() == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def _to_unit_float(x: np.ndarray, where: str) -> np.ndarray:
    """Pixels as float32 in [0, 1]: uint8 / integers are divided by 255, floats only if max > 1."""
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{where} has dtype {x.dtype}; expected uint8 or float pixels")
    if x.size == 0:
        raise DataError(f"{where} holds no images")
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{where} contains NaN or infinite pixel values")
    if lo < 0 or hi > 255:
        raise DataError(f"{where} has pixel values in [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255] (unnormalised)")
    out = x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer) or hi > 1.0:
        np.divide(out, 255.0, out=out)
    return out


def _check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where} has shape {tuple(y.shape)}; expected one integer label per image")
    if len(y) != n:
        raise DataError(f"{where} has {len(y)} labels for {n} images")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where} has non-integer labels (dtype {y.dtype})")
    elif not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise DataError(f"{where} has dtype {y.dtype}; expected integer labels")
    if len(y) and y.min() < 0:
        raise DataError(f"{where} has negative label {int(y.min())}")
    return y.astype(np.int64)


# --------------------------------------------------------------------------- folders and zips

# An entry is (path parts relative to the tree root, display name, function returning the bytes).
_Entry = tuple[tuple[str, ...], str, Callable[[], bytes]]


def _load_tree(root: Path, split: str | None, limit: int | None) -> ImageSet:
    return _decode_entries(_tree_entries(root), str(root), split, limit)


def _tree_entries(root: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                full = Path(dirpath) / name
                entries.append((rel + (name,), str(full), full.read_bytes))
    if not entries:
        raise DataError(f"folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return entries


def _open_zip(p: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(p)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot open {p} as a zip archive: {exc}") from None


def _load_zip(p: Path, split: str | None, limit: int | None) -> ImageSet:
    with _open_zip(p) as archive:
        return _decode_entries(_zip_entries(archive, p), str(p), split, limit)


def _zip_entries(archive: zipfile.ZipFile, p: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    for info in archive.infolist():
        parts = tuple(part for part in info.filename.split("/") if part)
        if info.is_dir() or not parts or parts[0] == "__MACOSX" or any(q.startswith(".") for q in parts):
            continue
        if parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            entries.append((parts, f"{p}:{info.filename}", lambda i=info: archive.read(i)))
    if not entries:
        raise DataError(f"zip {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return entries


def _split_level(entries: list[_Entry], source: str) -> int | None:
    """Index of the split folder level in the entries' paths, or None; checks the folder layout."""
    depth = len(entries[0][0])
    for parts, name, _ in entries:
        if len(parts) != depth:
            raise DataError(f"{name} is not at the same folder depth as {entries[0][1]}; "
                            "expected <class>/<image> files")
    if depth < 2:
        return None  # images without class subfolders: an unlabeled set
    has_split = depth >= 3 and all(parts[depth - 3] in SPLIT_NAMES for parts, _, _ in entries)
    prefix_len = depth - (3 if has_split else 2)
    prefixes = {parts[:prefix_len] for parts, _, _ in entries}
    if len(prefixes) > 1:
        a, b = sorted(prefixes)[:2]
        raise DataError(f"{source} has images under both {'/'.join(a)} and {'/'.join(b)}; point at one image folder")
    return depth - 3 if has_split else None


def list_splits(path: str | os.PathLike) -> list[str]:
    """Names of the splits a data source holds (e.g. ["test", "train"]); [] if it is one set."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if p.is_dir():
        entries = _tree_entries(p)
    elif p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as archive:
                keys = archive.files
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {p} as .npz: {exc}") from None
        return sorted(k[2:] for k in keys if k.startswith("x_") and f"y_{k[2:]}" in keys)
    elif p.suffix.lower() == ".zip":
        with _open_zip(p) as archive:
            entries = _zip_entries(archive, p)
    else:
        raise DataError(f"data file {p} has unknown extension {p.suffix!r} (expected .npz, .zip or a folder)")
    level = _split_level(entries, str(p))
    return [] if level is None else sorted({parts[level] for parts, _, _ in entries})


def _decode_entries(entries: list[_Entry], source: str, split: str | None, limit: int | None) -> ImageSet:
    """Pick the split, assign labels from class folder names and decode the images."""
    level = _split_level(entries, source)
    if len(entries[0][0]) == 1:  # no class folders: unlabeled images
        if split is not None:
            raise DataError(f"{source} holds images without class or split folders; there is no split {split!r}")
        chosen = sorted(entries, key=lambda e: e[0])[:limit]
        x = _decode_images(chosen, source)
        return ImageSet(x=_to_unit_float(x, source), y=np.full(len(chosen), UNLABELED, dtype=np.int64),
                        classes=None, source=source)
    classes = sorted({parts[-2] for parts, _, _ in entries})
    if level is not None:
        splits = sorted({parts[level] for parts, _, _ in entries})
        if split is None:
            raise DataError(f"{source} holds splits {', '.join(splits)}; choose one with --split")
        if split not in splits:
            raise DataError(f"{source} has no split {split!r} (available: {', '.join(splits)})")
        entries = [e for e in entries if e[0][level] == split]
    label_of = {c: i for i, c in enumerate(classes)}
    per_class: dict[str, list[_Entry]] = {c: [] for c in classes}
    for e in sorted(entries, key=lambda e: e[0]):
        per_class[e[0][-2]].append(e)
    chosen = _round_robin(per_class, classes, limit)
    x = _decode_images([e for e in chosen], source)
    y = np.array([label_of[e[0][-2]] for e in chosen], dtype=np.int64)
    return ImageSet(x=_to_unit_float(x, source), y=y, classes=classes, source=source)


def _round_robin(per_class: dict[str, list[_Entry]], classes: list[str], limit: int | None) -> list[_Entry]:
    """All entries in class order, or ``limit`` of them taken one per class in turn."""
    if limit is None:
        return [e for c in classes for e in per_class[c]]
    taken = {c: 0 for c in classes}
    total, remaining = 0, sum(len(v) for v in per_class.values())
    while total < min(limit, remaining):
        for c in classes:
            if total < limit and taken[c] < len(per_class[c]):
                taken[c] += 1
                total += 1
    return [e for c in classes for e in per_class[c][: taken[c]]]


def _decode_images(entries: list[_Entry], source: str) -> np.ndarray:
    """Decode to uint8 NCHW: one channel if every image is greyscale, else RGB."""
    arrays: list[np.ndarray] = []
    size = None
    for parts, name, read in entries:
        try:
            with Image.open(io.BytesIO(read())) as im:
                im.load()
                if im.mode in ("1", "LA", "L"):
                    arr = np.asarray(im.convert("L"))
                else:
                    arr = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read image {name}: {exc}") from None
        if size is None:
            size, first = arr.shape[:2], name
        elif arr.shape[:2] != size:
            raise DataError(
                f"image {name} is {arr.shape[1]}x{arr.shape[0]} but {first} is {size[1]}x{size[0]}; "
                "all images must share one size"
            )
        arrays.append(arr)
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[:, None, :, :]
    rgb = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in arrays]
    return np.ascontiguousarray(np.stack(rgb).transpose(0, 3, 1, 2))


def data_digest(path: str | os.PathLike) -> str:
    """sha256 of a data file's bytes, or of a folder's every file (relative path and sha256): the
    same for the same data wherever it lies or however often it was copied, unlike the cache key."""
    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(f for f in p.rglob("*") if f.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\0".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- cache


def _load_cached(
    p: Path, split: str | None, limit: int | None, cache_dir: str | os.PathLike | None, load: Callable[[], ImageSet],
    pick: tuple[int | None, int] | None = None,
) -> ImageSet:
    """Return ``load()``, going through an .npz cache in ``cache_dir`` when one is given."""
    if cache_dir is None:
        return load()
    cache_file = Path(cache_dir).expanduser() / f"{p.stem}-{split or 'all'}-{_cache_key(p, split, limit)}.npz"
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                x8, y = _picked(cached["x"], cached["y"], pick, str(p))
                classes = [str(c) for c in cached["classes"].tolist()]
                return ImageSet(x=x8.astype(np.float32) / np.float32(255.0), y=y.astype(np.int64),
                                classes=classes or None, source=str(p))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache entry is rebuilt below
    images = load()
    x8 = np.rint(images.x * 255.0).astype(np.uint8)
    try:
        with atomic_output(cache_file) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x8, y=images.y, classes=np.array(images.classes or [], dtype=str))
    except OSError:
        pass  # an unwritable cache only costs speed
    return images


def _cache_key(p: Path, split: str | None, limit: int | None) -> str:
    h = hashlib.sha256()
    h.update(f"{_CACHE_VERSION}|{p.resolve()}|{split}|{limit}".encode())
    if p.is_dir():
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"|{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        st = p.stat()
        h.update(f"|{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
