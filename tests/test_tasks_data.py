"""tasks.data: the procedural dataset and the COCO loader (procedural data, the shared coco_tiny, isp_sim)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tasks.data.coco import CocoDetection, DatasetError, DegradationConfig, hflip
from tasks.data.procedural import CLASSES, make_dataset

REPO = Path(__file__).resolve().parents[1]
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"
needs_coco_tiny = pytest.mark.skipif(not (COCO_TINY / "annotations" / "instances_val2017.json").is_file(),
                                     reason=f"shared test data {COCO_TINY} not present")


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("proc") / "d", n_train=6, n_val=3, seed=3, image_size=64,
                        object_size=(12, 40))


def test_procedural_masks_are_exact_and_consistent(proc):
    coco = COCO(proc["train"]["annotations"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.imgs) == 6 and len(coco.anns) >= 6
    for img_id in coco.imgs:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros((0, 64, 64))
        if len(anns) > 1:  # occlusion is resolved: visible masks never overlap
            assert masks.sum(0).max() == 1
        for a, m in zip(anns, masks):
            assert a["area"] == int(m.sum()) >= 12
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                 float(ys.max() - ys.min() + 1)]
            assert a["iscrowd"] == 0


def test_procedural_is_seeded_per_image(proc, tmp_path):
    small = make_dataset(tmp_path / "a", n_train=2, n_val=1, seed=3, image_size=64, object_size=(12, 40))
    other = make_dataset(tmp_path / "b", n_train=2, n_val=1, seed=4, image_size=64, object_size=(12, 40))
    for name in ("000000.png", "000001.png"):
        same = (Path(small["train"]["images"]) / name).read_bytes()
        assert same == (Path(proc["train"]["images"]) / name).read_bytes()  # independent of n_train
        assert same != (Path(other["train"]["images"]) / name).read_bytes()
    # an up-to-date dataset is reused, not rewritten
    ann = Path(small["train"]["annotations"])
    before = ann.stat().st_mtime_ns
    make_dataset(tmp_path / "a", n_train=2, n_val=1, seed=3, image_size=64, object_size=(12, 40))
    assert ann.stat().st_mtime_ns == before


def test_coco_dataset_targets_and_hflip(proc):
    ds = CocoDetection(proc["train"]["images"], proc["train"]["annotations"], hflip=False)
    img, t = ds[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert t["masks"].shape[0] == t["boxes"].shape[0] == t["labels"].shape[0] > 0
    assert t["labels"].min() >= 1 and t["labels"].max() <= ds.num_classes
    for box, m in zip(t["boxes"], t["masks"]):  # boxes are the tight xyxy boxes of the masks
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    fimg, ft = hflip(img, t)
    assert torch.equal(fimg, img.flip(-1))
    for box, m in zip(ft["boxes"], ft["masks"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    # the random flip is a function of (seed, epoch, index)
    aug = CocoDetection(proc["train"]["images"], proc["train"]["annotations"], hflip=True, seed=1)
    flips = []
    for epoch in range(6):
        aug.set_epoch(epoch)
        flips.append(torch.equal(aug[0][0], img.flip(-1)))
        assert torch.equal(aug[0][0], aug[0][0])
    assert any(flips) and not all(flips)


def test_missing_images_error_or_skip(proc, tmp_path):
    d = json.loads(Path(proc["val"]["annotations"]).read_text())
    d["images"][1]["file_name"] = "not_there.png"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(d))
    with pytest.raises(FileNotFoundError, match="not_there.png"):
        CocoDetection(proc["val"]["images"], ann)
    ds = CocoDetection(proc["val"]["images"], ann, missing="skip")
    assert len(ds) == 2 and ds.missing == ["not_there.png"]
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoDetection(proc["val"]["images"], tmp_path / "nope.json")


def test_degraded_copy_size_mismatch_is_reported(proc, tmp_path):
    from PIL import Image

    deg = tmp_path / "deg"
    deg.mkdir()
    for p in Path(proc["val"]["images"]).iterdir():
        Image.open(p).resize((32, 32)).save(deg / p.name)
    ds = CocoDetection(proc["val"]["images"], proc["val"]["annotations"], degraded_dir=deg)
    with pytest.raises(DatasetError, match="is 32x32"):
        ds[0]


def test_on_the_fly_degradation_matches_isp_sim_degrade(proc, tmp_path):
    dataset_tool = pytest.importorskip("isp_sim.dataset", reason="isp_sim.dataset (python -m isp_sim degrade) absent")
    ann, images = proc["val"]["annotations"], proc["val"]["images"]
    dataset_tool.degrade_dataset(ann, tmp_path / "deg", ["noise"], [3], 0, 1, False, images, progress=False)
    copy = CocoDetection(images, ann, degraded_dir=tmp_path / "deg" / "noise-3")
    live = CocoDetection(images, ann, degradation=DegradationConfig(names=["noise"], severity=3, key_prefix="noise-3"))
    clean = CocoDetection(images, ann)
    for i in range(len(clean)):
        s = live.load(i)
        assert s["record"] is not None and s["record"].degradations[0].name == "noise"
        assert (s["image"] - copy[i][0]).abs().max() <= 2.5 / 255  # same parameters, up to uint8 rounding
        assert (s["image"] - clean[i][0]).abs().mean() > 0.005  # and it is really degraded
        assert torch.equal(s["image"], live[i][0])  # deterministic per image
    # the default key is the file name: a different seed per image, a different image per base seed
    other = CocoDetection(images, ann, degradation=DegradationConfig(names=["noise"], severity=3, seed=1))
    assert not torch.allclose(other[0][0], live[0][0])


@needs_coco_tiny
def test_coco_tiny_polygons_rle_and_crowd():
    ann = COCO_TINY / "annotations" / "instances_val2017.json"
    raw = json.loads(ann.read_text())
    crowd_img = next(a["image_id"] for a in raw["annotations"] if a["iscrowd"])
    poly_img = next(a["image_id"] for a in raw["annotations"] if isinstance(a["segmentation"], list))
    n_all = sum(a["image_id"] == crowd_img for a in raw["annotations"])
    n_crowd = sum(a["image_id"] == crowd_img and a["iscrowd"] for a in raw["annotations"])
    ids = [crowd_img, poly_img]
    drop = CocoDetection(COCO_TINY / "val2017", ann, image_ids=ids)
    keep = CocoDetection(COCO_TINY / "val2017", ann, image_ids=ids, crowd="keep")
    assert drop.num_classes == 80 and max(drop.label_to_cat_id.values()) == 90  # COCO ids are not contiguous
    img, t = drop[0]
    _, tk = keep[0]
    assert len(tk["boxes"]) - len(t["boxes"]) == n_crowd and len(tk["boxes"]) <= n_all
    assert tk["iscrowd"].sum() == n_crowd and t["iscrowd"].sum() == 0
    assert t["masks"].shape[1:] == img.shape[1:]
    # the crowd mask is the decoded uncompressed RLE (COCO's "area" field of crowds is not the RLE area)
    crowd = next(a for a in raw["annotations"] if a["image_id"] == crowd_img and a["iscrowd"])
    h, w = crowd["segmentation"]["size"]
    rle = mask_utils.frPyObjects(crowd["segmentation"], h, w)
    idx = int(torch.nonzero(tk["iscrowd"])[0])
    assert torch.equal(tk["masks"][idx], torch.from_numpy(mask_utils.decode(rle)))
    # polygons rasterise inside their boxes
    _, tp = drop[1]
    for box, m in zip(tp["boxes"], tp["masks"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1


def test_bad_degradation_settings_fail_at_construction(proc):
    """A typo in a degradation config is reported when the config / dataset is built, not at the first batch (or at
    the first evaluation after the training steps)."""
    from tasks.config import config_from_dict

    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        DegradationConfig(names=["fog"], severity=2)
    with pytest.raises(ValueError, match="severity must be an integer 1..5"):
        DegradationConfig(names=["noise"], severity=9)
    with pytest.raises(ValueError, match="need a severity 1..5"):
        DegradationConfig(names=["noise"])  # severity 0 used to be a silent no-op
    with pytest.raises(ValueError, match="unknown split 'sen'"):
        DegradationConfig(composite="sen")
    with pytest.raises(ValueError, match="not both"):
        DegradationConfig(names=["noise"], severity=2, composite="seen")
    with pytest.raises(ValueError, match="prob_clean"):
        DegradationConfig(composite="seen", prob_clean=1.5)
    with pytest.raises(ValueError, match="val_degradation.*unknown degradation 'fog'"):
        config_from_dict({"data": {"val_degradation": {"names": ["fog"], "severity": 2}}})
    assert DegradationConfig(names="noise, jpeg", severity=2).names == ["noise", "jpeg"]
    assert not DegradationConfig().enabled  # the default (clean) is valid
