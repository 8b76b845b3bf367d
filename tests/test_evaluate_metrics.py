"""evaluate.metrics / evaluate.conditions: COCO AP on hand-made data, mPC / rPC on hand-made numbers, splits."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from evaluate.common import EvaluateError
from evaluate.conditions import Condition, build_grid, expand_specs, parse_severities, split_of
from evaluate.metrics import (RestorationAccumulator, coco_metrics, gt_as_detections, make_coco, mpc, psnr_ssim,
                              robustness_summary, rpc)


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


@pytest.fixture(scope="module")
def coco():
    """3 images of 64x64, 2 categories, boxes of all three COCO size ranges, RLE and polygon masks."""
    anns = []
    rng = np.random.default_rng(0)
    for img in (1, 2, 3):
        for k in range(3):
            w = int(rng.integers(6, 40))
            x, y = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - w))
            m = np.zeros((64, 64), np.uint8)
            m[y:y + w, x:x + w] = 1
            seg = _rle(m) if k % 2 == 0 else [[x, y, x + w, y, x + w, y + w, x, y + w]]
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": 1 + k % 2, "bbox": [x, y, w, w],
                         "area": float(w * w), "iscrowd": 0, "segmentation": seg})
    return make_coco({"images": [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in (1, 2, 3)],
                      "annotations": anns,
                      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]})


def test_ground_truth_as_predictions_gives_ap_one(coco):
    dets = gt_as_detections(coco)
    assert len(dets) == 9
    m = coco_metrics(coco, dets, iou_types=("bbox", "segm"))
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert m[k] == pytest.approx(1.0), k
    assert m["n_detections"] == 9 and m["n_images"] == 3


def test_empty_predictions_give_zero_not_a_crash(coco):
    m = coco_metrics(coco, [], iou_types=("bbox", "segm"))
    assert m["bbox_AP"] == 0.0 and m["segm_AP"] == 0.0 and m["n_detections"] == 0


def test_wrong_class_and_shifted_boxes_lower_ap(coco):
    dets = gt_as_detections(coco, with_masks=False)
    wrong = [dict(d, category_id=3 - d["category_id"]) for d in dets]
    assert coco_metrics(coco, wrong)["bbox_AP"] == 0.0
    half = [d for i, d in enumerate(dets) if i % 2 == 0]  # only some objects found: recall < 1
    ap = coco_metrics(coco, half)["bbox_AP"]
    assert 0.0 < ap < 1.0


def test_bad_detections_get_clear_errors(coco):
    d = gt_as_detections(coco, with_masks=False)[0]
    with pytest.raises(EvaluateError, match="image 99"):
        coco_metrics(coco, [dict(d, image_id=99)])
    with pytest.raises(EvaluateError, match="category 7"):
        coco_metrics(coco, [dict(d, category_id=7)])
    with pytest.raises(EvaluateError, match="segmentation"):
        coco_metrics(coco, [d], iou_types=("segm",))


def test_mpc_rpc_on_hand_made_numbers():
    conds = build_grid(["noise", "jpeg"], "1..5", roundtrip=True)
    table = {"clean": {"bbox_AP": 0.5}, "roundtrip": {"bbox_AP": 0.0}}  # a reference: not part of mPC
    noise = [0.45, 0.40, 0.30, 0.20, 0.10]
    jpeg = [0.50, 0.48, 0.44, 0.40, 0.33]
    for s in range(5):
        table[f"noise-{s + 1}"] = {"bbox_AP": noise[s]}
        table[f"jpeg-{s + 1}"] = {"bbox_AP": jpeg[s]}
    out = robustness_summary(table, conds, keys=("bbox_AP",))
    assert out["P"]["bbox_AP"] == 0.5
    assert out["mPC"]["bbox_AP"] == pytest.approx((sum(noise) + sum(jpeg)) / 10)  # = 0.36
    assert out["mPC"]["bbox_AP"] == pytest.approx(0.36)
    assert out["rPC"]["bbox_AP"] == pytest.approx(0.72)
    assert out["n_conditions"] == 10
    assert out["per_degradation"]["noise"]["mean"]["bbox_AP"] == pytest.approx(0.29)
    assert out["per_degradation"]["jpeg"]["rPC"]["bbox_AP"] == pytest.approx(0.43 / 0.5)
    assert out["per_severity"]["5"]["bbox_AP"] == pytest.approx((0.10 + 0.33) / 2)
    assert out["splits"]["seen"]["n_conditions"] == 10 and "unseen" not in out["splits"]
    assert out["roundtrip"]["bbox_AP"] == 0.0


def test_rpc_undefined_and_coco_minus_one():
    assert rpc(0.2, 0.0) is None and rpc(None, 0.5) is None
    assert rpc(0.25, 0.5) == 0.5
    assert mpc([0.2, -1, None, float("nan"), 0.4]) == pytest.approx(0.3)  # undefined values skipped
    assert mpc([-1]) is None


def test_split_membership_follows_isp_sim_splits():
    assert split_of("noise", None, 3) == "seen"            # brooks
    assert split_of("noise", "eld", 3) == "unseen"
    assert split_of("white_balance", "tint", 1) == "unseen"
    assert split_of("gamma", "tone", 2) == "unseen"
    assert split_of("demosaic", None, 4) == "seen"
    assert split_of("demosaic", None, 5) == "unseen"       # nearest-neighbour: held out
    assert split_of("exposure", "under", 2) == "other"
    assert Condition("composite:unseen", 3).split == "unseen" and Condition("composite", 3).split == "seen"
    conds = build_grid(["all"], "4,5")
    table = {c.label: {"bbox_AP": 0.1 if c.split == "unseen" else 0.3} for c in conds}
    table["clean"] = {"bbox_AP": 0.4}
    s = robustness_summary(table, conds, keys=("bbox_AP",))
    assert s["splits"]["unseen"]["mPC"]["bbox_AP"] == pytest.approx(0.1)
    assert s["splits"]["seen"]["mPC"]["bbox_AP"] == pytest.approx(0.3)
    assert s["splits"]["unseen"]["n_conditions"] == 3 * 2 + 1  # 3 held-out variants x 2 + demosaic-5


def test_condition_labels_match_isp_sim_degrade_folders():
    from isp_sim.dataset import Condition as ToolCondition

    for spec in ("noise", "jpeg", "composite", "composite:unseen"):
        assert Condition(spec, 3).label == ToolCondition((spec,), 3).label
    assert Condition("noise:eld", 2).label == "noise-eld-2"
    assert Condition().label == "clean"


def test_unknown_degradation_and_bad_severity_are_clear_errors():
    with pytest.raises(EvaluateError, match="unknown degradation 'blur'"):
        expand_specs(["noise", "blur"])
    with pytest.raises(EvaluateError, match="unknown variant 'foo'"):
        expand_specs("noise:foo")
    with pytest.raises(EvaluateError, match="within 1..5"):
        parse_severities("0..3")
    assert parse_severities("5,1,3") == [1, 3, 5]
    assert expand_specs("seen unseen")[-3:] == ["noise:eld", "white_balance:tint", "gamma:tone"]


def test_psnr_ssim_and_restoration_summary():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert psnr_ssim(a, a) == (math.inf, 1.0)
    b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    c = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    pb, sb = psnr_ssim(a, b)
    pc, sc = psnr_ssim(a, c)
    assert 25 < pb < 40 and pc < pb and sc < sb < 1
    acc = RestorationAccumulator()
    acc.add("x", a, c, b)
    acc.add("x", a, a, a)
    s = acc.summary("x")
    assert s["n_images"] == 2 and s["n_identical"] == 1
    assert s["psnr_degraded"] == pytest.approx((pc + 100) / 2)
    assert s["psnr_restored"] == pytest.approx((pb + 100) / 2)


COCO_TINY = Path(os.environ.get("ISP_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "data" / \
    "coco_tiny" / "annotations" / "instances_val2017.json"


@pytest.mark.skipif(not COCO_TINY.is_file(), reason=f"shared COCO subset not found at {COCO_TINY}")
def test_ground_truth_as_predictions_on_real_coco_images():
    from tasks.data.coco import _load_coco

    coco = _load_coco(COCO_TINY)
    ids = sorted(coco.imgs)[:20]
    m = coco_metrics(coco, gt_as_detections(coco, ids), ids, ("bbox", "segm"))
    assert m["bbox_AP"] == pytest.approx(1.0) and m["segm_AP"] == pytest.approx(1.0)
