"""PyNET data: Zurich RAW-to-RGB layout, stored-value reading, normalisation, packing order, synthetic pairs."""
import numpy as np
import pytest
import torch
from PIL import Image

from pynet.data import (PYNET_ORDER, SKIMAGE_TRAIN, SKIMAGE_VAL, ZRR_NORM, DataError, NamedImage, SyntheticPairs,
                        ZurichFullResolution, ZurichPatches, embedded_datasets, folder_images, pack_pynet,
                        read_zurich_raw)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread



def _write_zrr(root, split, n, size=32, sixteen=(True,), seed=0):
    rng = np.random.default_rng(seed)
    (root / split / "huawei_raw").mkdir(parents=True, exist_ok=True)
    (root / split / "canon").mkdir(parents=True, exist_ok=True)
    mosaics = []
    for i in range(n):
        if sixteen[i % len(sixteen)]:
            m = rng.integers(64, 1024, size=(size, size)).astype(np.uint16)
            Image.fromarray(m).save(root / split / "huawei_raw" / f"{i}.png")  # 16-bit PNG (mode I;16)
        else:
            m = rng.integers(64, 256, size=(size, size)).astype(np.uint8)
            Image.fromarray(m, mode="L").save(root / split / "huawei_raw" / f"{i}.png")  # 8-bit PNG
        rgb = rng.integers(0, 256, size=(size, size, 3)).astype(np.uint8)
        Image.fromarray(rgb).save(root / split / "canon" / f"{i}.jpg", quality=95)
        mosaics.append(m)
    return mosaics


def test_packing_order_and_normalisation():
    # RGGB mosaic with a distinct value per site: R(0,0)=1, G(0,1)=2, G(1,0)=3, B(1,1)=4
    m = np.tile(np.array([[1, 2], [3, 4]], dtype=np.uint16), (2, 3))
    p = pack_pynet(m)
    assert p.shape == (4, 2, 3) and p.dtype == np.float32
    assert PYNET_ORDER == ("B", "Gr", "R", "Gb")
    np.testing.assert_allclose(p[:, 0, 0] * ZRR_NORM, [4, 2, 1, 3])  # [B, G(0,1), R, G(1,0)]
    assert ZRR_NORM == 1020


def test_zurich_patches_8_and_16_bit(tmp_path):
    mosaics = _write_zrr(tmp_path, "train", 3, sixteen=(True, False))
    ds = ZurichPatches(tmp_path, "train", level=1)
    assert len(ds) == 3
    for i in range(3):
        raw, target = ds[i]
        assert raw.shape == (4, 16, 16) and target.shape == (3, 16, 16)
        # stored values, never rescaled by the container depth
        np.testing.assert_allclose(raw[2].numpy() * ZRR_NORM, mosaics[i][0::2, 0::2], atol=1e-3)
        assert 0 <= float(target.min()) and float(target.max()) <= 1
    assert read_zurich_raw(ds.paths(1)[0]).dtype == np.uint8
    assert read_zurich_raw(ds.paths(0)[0]).dtype == np.uint16
    ds.set_level(0)
    assert ds[0][1].shape == (3, 32, 32)


def test_zurich_errors_name_files(tmp_path):
    _write_zrr(tmp_path, "train", 2)
    (tmp_path / "train" / "canon" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"1\.png.*no matching DSLR target"):
        ZurichPatches(tmp_path, "train")
    with pytest.raises(DataError, match="huawei_raw"):
        ZurichPatches(tmp_path, "test")
    (tmp_path / "train" / "huawei_raw" / "1.png").unlink()
    (tmp_path / "train" / "huawei_raw" / "0.png").write_bytes(b"garbage")
    ds = ZurichPatches(tmp_path, "train")
    with pytest.raises(DataError, match=r"0\.png"):
        ds[0]


def test_zurich_size_mismatch(tmp_path):
    _write_zrr(tmp_path, "test", 1)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "test" / "canon" / "0.jpg")
    with pytest.raises(DataError, match="0.jpg.*equal size"):
        ZurichPatches(tmp_path, "test")[0]


def test_full_resolution_folder(tmp_path):
    d = tmp_path / "test" / "huawei_full_resolution"
    d.mkdir(parents=True)
    Image.fromarray(np.full((48, 64), 500, np.uint16)).save(d / "a.png")
    (d / "notes.txt").write_text("not a RAW")
    ds = ZurichFullResolution(d)
    raw, name = ds[0]
    assert len(ds) == 1 and name == "a" and raw.shape == (4, 24, 32)
    assert float(raw.max()) == pytest.approx(500 / 1020)


def _images():
    rng = np.random.default_rng(0)
    return [NamedImage(f"im{i}", rng.integers(0, 256, (80, 96, 3)).astype(np.uint8)) for i in range(2)]


def test_synthetic_pairs_deterministic_and_zrr_like():
    ds = SyntheticPairs(_images(), patch=16, length=5, seed=3, level=0)
    raw, target = ds[2]
    raw2, target2 = SyntheticPairs(_images(), patch=16, length=5, seed=3, level=0)[2]
    assert torch.equal(raw, raw2) and torch.equal(target, target2)
    assert raw.shape == (4, 16, 16) and target.shape == (3, 32, 32)
    counts = raw.numpy() * ZRR_NORM
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)  # integer 10-bit counts
    assert counts.min() >= 64 - 1e-3 and counts.max() <= 1023 + 1e-3  # black level 64, white 1023
    info = ds.sample_info(2)
    assert {"image", "y", "x", "rot90", "flip", "camera"} <= set(info)
    assert not torch.equal(ds[0][0], ds[1][0])
    ds.set_level(2)
    assert ds[2][1].shape == (3, 8, 8)


def test_synthetic_fixed_camera_and_grid():
    grid = SyntheticPairs(_images(), patch=16, seed=0, camera="fixed", grid=True)
    assert len(grid) == 2 * (80 // 32) * (96 // 32)
    assert grid.sample_info(0)["camera"] == grid.sample_info(3)["camera"]
    with pytest.raises(DataError, match="smaller"):
        SyntheticPairs(_images(), patch=64)
    with pytest.raises(DataError, match="multiple of 16"):
        SyntheticPairs(_images(), patch=20)


def test_embedded_default_holds_out_images():
    assert not set(SKIMAGE_TRAIN) & set(SKIMAGE_VAL)
    train, val = embedded_datasets(patch=32, train_length=4, seed=0, level=3)
    assert {im.name for im in val.images} == set(SKIMAGE_VAL)
    assert len(val) > 0 and val[0][1].shape == (3, 8, 8)
    assert train[0][0].shape == (4, 32, 32)


def test_folder_images_errors(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.jpg"):
        folder_images(tmp_path)
    with pytest.raises(DataError, match="not found"):
        folder_images(tmp_path / "missing")
