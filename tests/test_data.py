"""Data layer: loading in every supported form, preprocessing checks, splits, the demo sample."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from backdoor_audit.data import (
    ImageSet,
    Preprocess,
    defender_split,
    demo_sample_path,
    fit_preprocess,
    holdout_split,
    list_splits,
    load_images,
)
from backdoor_audit.errors import DataError
from backdoor_audit.util import atomic_output, atomic_write_bytes

RNG = np.random.default_rng(0)
X8 = RNG.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)  # NHWC
Y = np.array([0, 1, 2, 0, 1, 2], dtype=np.int64)
EXPECTED = X8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    "x, layout",
    [
        (X8, None),  # NHWC inferred
        (X8.transpose(0, 3, 1, 2), None),  # NCHW inferred
        (X8.astype(np.float32) / 255.0, None),  # float in [0, 1] kept
        (X8.astype(np.float32), None),  # float in [0, 255] divided
        (X8, "NHWC"),
    ],
)
def test_npz_layouts_give_nchw_unit_floats(tmp_path, x, layout):
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=Y)
    images = load_images(path, layout=layout)
    assert images.x.dtype == np.float32 and images.y.dtype == np.int64
    assert images.shape == (3, 8, 8) and len(images) == 6 and images.num_classes == 3
    np.testing.assert_allclose(images.x, EXPECTED, atol=1e-6)


def test_npz_grey_nhw_gets_a_channel(tmp_path):
    np.savez(tmp_path / "g.npz", x=X8[..., 0], y=Y)
    images = load_images(tmp_path / "g.npz")
    assert images.x.shape == (6, 1, 8, 8)


def test_npz_splits_and_limit(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, x_train=X8, y_train=Y, x_test=X8[:2], y_test=Y[:2])
    assert list_splits(path) == ["test", "train"]
    assert len(load_images(path, split="test")) == 2
    assert len(load_images(path, split="train", limit=4)) == 4
    with pytest.raises(DataError, match="x_test, x_train"):
        load_images(path)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": X8}, "no labels"),
        ({"x": X8, "y": Y[:5]}, "5 labels for 6 images"),
        ({"x": X8, "y": Y + 0.5}, "non-integer"),
        ({"x": X8, "y": Y - 1}, "negative label"),
        ({"x": X8[:, :, :, :2], "y": Y}, r"\(6, 8, 8, 2\)"),
        ({"x": np.zeros((6, 3, 8, 3), np.uint8), "y": Y}, "--layout"),
        ({"x": np.zeros((6, 8), np.uint8), "y": Y}, r"\(6, 8\)"),
        ({"x": -X8.astype(np.float32), "y": Y}, "pixel values"),
    ],
)
def test_npz_bad_content_raises_data_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_images(path)


def test_bad_paths_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "missing.npz")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(DataError, match="d.csv"):
        load_images(tmp_path / "d.csv")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.npz"):
        load_images(tmp_path / "broken.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_images(tmp_path / "empty")


# --------------------------------------------------------------------------- folders and zips


def _write_folder(root, grey=False, ext="png"):
    for i, (img, label) in enumerate(zip(X8, Y)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(img[..., 0] if grey else img)
        pil.save(folder / f"{i:03d}.{ext}")


def test_image_folder_round_trip(tmp_path):
    _write_folder(tmp_path / "data")
    images = load_images(tmp_path / "data")
    assert images.classes == ["class0", "class1", "class2"]
    order = np.argsort(Y, kind="stable")  # folders come out in class order
    np.testing.assert_array_equal(images.y, Y[order])
    np.testing.assert_allclose(images.x, EXPECTED[order], atol=1e-6)  # PNG is lossless


def test_grey_folder_gives_one_channel(tmp_path):
    _write_folder(tmp_path / "g", grey=True)
    assert load_images(tmp_path / "g").shape == (1, 8, 8)


def test_folder_with_splits_and_unreadable_image(tmp_path):
    _write_folder(tmp_path / "d" / "train")
    _write_folder(tmp_path / "d" / "test")
    assert list_splits(tmp_path / "d") == ["test", "train"]
    with pytest.raises(DataError, match="--split"):
        load_images(tmp_path / "d")
    assert len(load_images(tmp_path / "d", split="test")) == 6
    (tmp_path / "d" / "test" / "class0" / "zzz.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="zzz.png"):
        load_images(tmp_path / "d", split="test")


def test_zip_of_folder_with_splits_and_cache(tmp_path):
    _write_folder(tmp_path / "src" / "ds" / "train", ext="bmp")
    _write_folder(tmp_path / "src" / "ds" / "test", ext="bmp")
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "src").rglob("*.bmp")):
            zf.write(f, f.relative_to(tmp_path / "src").as_posix())
    images = load_images(archive, split="train", cache_dir=tmp_path / "cache")
    assert images.classes == ["class0", "class1", "class2"] and images.shape == (3, 8, 8)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_images(archive, split="train", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.x, images.x)
    np.testing.assert_array_equal(again.y, images.y)
    limited = load_images(archive, split="test", limit=3)
    assert sorted(limited.y.tolist()) == [0, 1, 2]  # round-robin over classes


def test_a_picked_sample_is_the_sample_of_the_whole_set_from_every_source(tmp_path):
    from backdoor_audit.data.sample import sample

    big8 = np.random.default_rng(1).integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 3
    np.savez(tmp_path / "u8.npz", x=big8, y=labels)
    np.savez(tmp_path / "f32.npz", x=big8.astype(np.float32), y=labels)  # floats in [0, 255]: judged whole
    _write_folder(tmp_path / "src" / "ds" / "train", ext="bmp")
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((tmp_path / "src").rglob("*.bmp")):
            zf.write(f, f.relative_to(tmp_path / "src").as_posix())
    cases = [(tmp_path / "u8.npz", {}), (tmp_path / "f32.npz", {}), (archive, {"split": "train"})]
    for path, kw in cases:
        whole = load_images(path, cache_dir=tmp_path / "cache", **kw)
        for n, seed in ((7, 0), (7, 3), (2, 1), (None, 0), (500, 0)):
            n = None if n is None else min(n, len(whole) - 1) if n < 500 else n
            want = sample(whole, n, seed)
            got = load_images(path, cache_dir=tmp_path / "cache", pick=(n, seed), **kw)  # the zip: from the cache
            np.testing.assert_array_equal(got.x, want.x)
            np.testing.assert_array_equal(got.y, want.y)
            assert got.x.dtype == np.float32 and got.classes == whole.classes
    with pytest.raises(DataError, match="positive"):
        load_images(tmp_path / "u8.npz", pick=(0, 0))


def test_demo_sample_loads():
    train = load_images(demo_sample_path(), split="train")
    test = load_images(demo_sample_path(), split="test")
    assert len(train) == 6000 and len(test) == 1000 and train.shape == (1, 28, 28)
    assert set(np.unique(test.y)) == set(range(10))
    assert demo_sample_path().stat().st_size < 3_000_000


# --------------------------------------------------------------------------- preprocess


def _set(c=3, h=32, w=32, n=4, source="clean.npz"):
    return ImageSet(x=np.zeros((n, c, h, w), np.float32), y=np.zeros(n, np.int64), source=source)


def test_fit_preprocess_infers_layout_and_applies():
    assert fit_preprocess(_set(), ["batch", 3, 32, 32]).layout == "NCHW"
    pre = fit_preprocess(_set(), [None, 32, 32, 3], mean=[0.5] * 3, std=[0.25] * 3)
    assert pre.layout == "NHWC"
    out = pre.apply(np.ones((2, 3, 32, 32), np.float32))
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0)
    assert Preprocess.from_json(pre.to_json()) == pre


def test_fit_preprocess_reads_model_metadata():
    meta = {"backdoor_audit.preprocess": Preprocess("NCHW", (0.1,), (0.3,)).to_json()}
    pre = fit_preprocess(_set(c=1, h=28, w=28), [1, 1, 28, 28], metadata=meta)
    assert pre.mean == (0.1,) and pre.std == (0.3,)
    assert fit_preprocess(_set(c=1, h=28, w=28), [1, 1, 28, 28], mean=[0.0], metadata=meta).mean == (0.0,)


@pytest.mark.parametrize(
    "data, shape, kwargs, message",
    [
        (_set(), [1, 1, 28, 28], {},
         "data clean.npz has images of shape 3x32x32 but model input 'input' expects 1x28x28 \\(NCHW\\)"),
        (_set(c=1), ["n", 3, 32, 32], {}, "grey images for an RGB model"),
        (_set(), ["n", 3, 28, 28], {}, "3x32x32 .* expects 3x28x28"),
        (_set(), ["n", 3, 32, 32], {"mean": [0.5]}, "mean has 1 values"),
        (_set(), ["n", 3, 32, 32], {"std": [1, 1, 0]}, "positive"),
        (_set(), ["n", 3, 32], {}, "4-D"),
    ],
)
def test_fit_preprocess_rejects_misfits(data, shape, kwargs, message):
    with pytest.raises(DataError, match=message):
        fit_preprocess(data, shape, **kwargs)


# --------------------------------------------------------------------------- splits and atomic writes


def test_defender_split_protocol():
    att, dfn = defender_split(1000, 50, seed=3)
    assert len(att) == 900 and len(dfn) == 50 and not set(att) & set(dfn)
    att2, dfn2 = defender_split(1000, 50, seed=3)
    np.testing.assert_array_equal(dfn, dfn2)
    assert set(defender_split(1000, 20, seed=3)[1]) <= set(dfn)  # nested by construction
    with pytest.raises(DataError, match="101 clean images"):
        defender_split(1000, 101)
    keep, hold = holdout_split(100, 0.2, seed=1)
    assert len(hold) == 20 and len(keep) == 80 and not set(keep) & set(hold)


def test_atomic_output_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(target, b"ok")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"ok" and list(tmp_path.iterdir()) == [target]
