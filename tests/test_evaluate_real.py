"""evaluate.real_camera: renderings (LibRaw / simulator / PyNET), the label-free consistency score, real RAW files."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate.common import EvaluateError
from evaluate.metrics import make_coco
from evaluate.real_camera import (RealCameraConfig, consistency_scores, list_raw_files, render_all, run_real_camera,
                                  synthetic_raw)

SHARED = Path(os.environ.get("ISP_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
REAL_RAW = SHARED / "data" / "real_raw"
rawpy = pytest.importorskip("rawpy")


def _photo(size=64):
    from skimage import data

    im = data.astronaut()
    return np.ascontiguousarray(im[100:100 + size * 2:2, 180:180 + size * 2:2])


def test_synthetic_raw_renders_close_to_the_original_with_every_pipeline():
    img = _photo(64)
    raw = synthetic_raw(img, seed=3)
    assert raw.counts.dtype == np.uint16 and raw.counts.max() <= 4095 and raw.wb_gains is not None
    names = ["libraw:AHD", "libraw:LINEAR", "libraw:AHD+autowb", "libraw:DCB+fbdd", "sim:menon", "sim:bilinear"]
    r = render_all(raw, names)
    assert all(v.shape == img.shape and v.dtype == np.uint8 for v in r.values())
    from evaluate.metrics import psnr_ssim

    p = {k: psnr_ssim(img, v)[0] for k, v in r.items()}
    assert p["sim:menon"] > 28  # the simulator ISP inverts unprocessing (up to demosaicing)
    assert p["sim:menon"] > p["sim:bilinear"]
    assert all(v > 12 for v in p.values()), p  # LibRaw's own tone curve differs, but it is the same scene
    assert not np.array_equal(r["libraw:AHD"], r["libraw:LINEAR"])


def test_composited_objects_render_back_to_their_colours():
    """Objects written through the inverse simulator ISP come back (sim:menon) close to their sRGB texture."""
    from scipy.ndimage import binary_erosion

    from evaluate.real_camera import composite_objects, render
    from pycocotools import mask as mask_utils

    raw = synthetic_raw(_photo(96), seed=2)
    craw, anns = composite_objects(raw, seed=5)
    assert len(anns) >= 2 and craw.counts.dtype == raw.counts.dtype and craw.shape == raw.shape
    changed = craw.counts != raw.counts
    union = np.zeros(raw.shape, bool)
    for a in anns:
        m = mask_utils.decode(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode()))
        assert m.sum() == a["area"] > 0
        union |= m.astype(bool)
    assert not changed[~union].any()  # only object pixels are written
    before, after = render(raw, "sim:menon").astype(int), render(craw, "sim:menon").astype(int)
    inner = binary_erosion(union, iterations=3)
    assert np.abs(after - before)[inner].mean() > 10  # the objects are visible
    from tasks.data.procedural import ProceduralSpec, render_image  # the same texture, drawn directly

    spec = ProceduralSpec(n_train=1, n_val=1, image_size=96, min_objects=2, max_objects=5, object_size=(10, 43))
    img, _ = render_image(spec, np.random.default_rng([5, 0x0B7EC7]))
    err = np.abs(after - img.astype(int))[inner].mean()
    assert err < 4, err  # inverse ISP + real WB/CCM + Menon demosaic + 12-bit quantisation


def test_consistency_score_on_hand_made_predictions():
    images = [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 64}]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    ref = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9},
           {"image_id": 1, "category_id": 2, "bbox": [30, 30, 20, 20], "score": 0.3},  # below 0.5: not pseudo-GT
           {"image_id": 2, "category_id": 2, "bbox": [10, 30, 24, 16], "score": 0.8}]
    same_boxes_lower_scores = [dict(d, score=d["score"] / 2) for d in ref]
    shifted = [dict(d, bbox=[d["bbox"][0] + 12, d["bbox"][1], 20, 20]) for d in ref]
    dets = {"ref": ref, "same": same_boxes_lower_scores, "shifted": shifted, "none": []}
    out = consistency_scores(dets, images, cats, "ref", 0.5, ("bbox",))
    assert out["ref"]["bbox_AP"] == pytest.approx(1.0)  # the reference against itself
    assert out["same"]["bbox_AP"] == pytest.approx(1.0)  # AP depends on ranking, not on the score scale
    assert out["shifted"]["bbox_AP"] < 0.2
    assert out["none"]["bbox_AP"] == 0.0
    assert out["ref"]["n_pseudo_gt"] == 2 and out["ref"]["n_images_scored"] == 2
    # no reference prediction above the threshold: not scorable (None), not a crash
    low = consistency_scores({"ref": [dict(d, score=0.1) for d in ref], "x": ref}, images, cats, "ref", 0.5,
                             ("bbox",))
    assert low["x"]["bbox_AP"] is None and low["x"]["n_images_scored"] == 0


def test_bad_rendering_names_are_clear_errors():
    with pytest.raises(EvaluateError, match="unknown LibRaw demosaic"):
        RealCameraConfig(libraw=["AHD", "FOO"]).rendering_names()
    with pytest.raises(EvaluateError, match="unknown simulator demosaic"):
        RealCameraConfig(simulator=["magic"]).rendering_names()
    with pytest.raises(EvaluateError, match="reference rendering"):
        RealCameraConfig(libraw=["LINEAR"])
    with pytest.raises(EvaluateError, match="PyNET checkpoint not found"):
        from evaluate.real_camera import build_pynet

        build_pynet(RealCameraConfig(pynet_checkpoint="/nonexistent/pynet.pth"))


def test_run_real_camera_with_a_dng_folder_and_annotated_set(tmp_path):
    from isp_sim.io import write_dng
    from tasks.backbones import build_detector
    from tasks.checkpoint import save_detector
    from tasks.data.procedural import make_dataset

    paths = make_dataset(tmp_path / "proc", n_train=1, n_val=2, seed=0, image_size=64)
    raw_dir = tmp_path / "raws"
    write_dng(synthetic_raw(_photo(64), seed=1), raw_dir / "a.dng")
    (raw_dir / "notes.txt").write_text("not a RAW file")
    torch.manual_seed(0)
    m = build_detector("mask", "resnet", 6, 64, 64, fpn_channels=16, box_head_dim=32, mask_head_channels=8,
                       anchor_sizes=[8, 16, 32, 64, 128], resnet_width=8,
                       detector_kwargs={"box_detections_per_img": 10})
    from tasks.data.procedural import CLASSES

    save_detector(m, tmp_path / "m.pt", classes={"names": list(CLASSES), "cat_ids": [1, 2, 3, 4, 5, 6]})
    cfg = RealCameraConfig(raw_dir=str(raw_dir), max_side=64, libraw=["AHD", "LINEAR"], simulator=["menon"],
                           pynet=True, pseudo_gt_score=0.05)
    res = run_real_camera([f"tiny={tmp_path / 'm.pt'}"], tmp_path / "out", cfg, paths["val"]["annotations"],
                          progress=False)
    rr = res["real_raw"]
    assert rr["status"] == "ok" and [f["file"] for f in rr["raw_files"]] == ["a.dng"]
    assert rr["renderings"] == ["libraw:AHD", "libraw:LINEAR", "sim:menon", "pynet:untrained"]
    rows = rr["models"]["tiny"]
    if rows["libraw:AHD"]["n_pseudo_gt"]:
        assert rows["libraw:AHD"]["bbox_AP"] == pytest.approx(1.0)
    assert "UNTRAINED" in rr["pynet"]
    comp = rr["composited"]
    assert comp["status"] == "ok" and comp["n_objects"] >= 2
    assert all(0.0 <= v["true"]["bbox_AP"] <= 1.0 for v in comp["models"]["tiny"].values())
    gt = res["gt_renderings"]
    assert gt["status"] == "ok" and gt["n_images"] == 2
    assert set(gt["models"]["tiny"]) == {"original", "libraw:AHD", "libraw:LINEAR", "sim:menon", "pynet:untrained"}
    assert all(0.0 <= v["true"]["bbox_AP"] <= 1.0 for v in gt["models"]["tiny"].values())
    on_disk = json.loads((tmp_path / "out" / "real_camera.json").read_text())
    assert on_disk["real_raw"]["models"]["tiny"]["libraw:LINEAR"]["n_images"] == 1
    md = (tmp_path / "out" / "real_camera.md").read_text()
    assert "label-free consistency" in md and "true box AP" in md
    assert (tmp_path / "out" / "real_camera_samples.png").is_file()
    # an absent RAW folder is skipped cleanly
    cfg2 = RealCameraConfig(raw_dir=str(tmp_path / "missing"), max_side=64, libraw=["AHD"], simulator=[], pynet=False)
    res2 = run_real_camera([str(tmp_path / "m.pt")], tmp_path / "out2", cfg2, progress=False)
    assert res2["real_raw"]["status"] == "skipped" and res2["gt_renderings"]["status"] == "skipped"


@pytest.mark.skipif(not REAL_RAW.exists(), reason=f"shared real RAW data not found at {REAL_RAW}")
def test_real_raw_files_render_through_libraw_and_the_simulator():
    from isp_sim.io import read_raw

    from evaluate.real_camera import centre_crop

    files = list_raw_files(REAL_RAW)
    assert len(files) >= 1 and not any(f.suffix == ".json" for f in files)
    for f in files:
        raw = centre_crop(read_raw(f, on_overflow="clip"), 64)
        r = render_all(raw, ["libraw:AHD", "sim:menon"])
        assert r["libraw:AHD"].shape == r["sim:menon"].shape == (64, 64, 3)
        assert 5 < r["libraw:AHD"].mean() < 250, f  # an image, not a black or white frame
