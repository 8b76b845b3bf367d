"""evaluate.grid / report / CLI on a tiny dataset with tiny untrained detectors: outputs, resume, bad input."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluate.common import EvaluateError, atomic_write_json
from evaluate.grid import GridConfig, GridData, ModelSpec, run_grid
from evaluate.conditions import Condition

CLASSES = {"names": ["disc", "square", "triangle", "star", "ring", "cross"], "cat_ids": [1, 2, 3, 4, 5, 6]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-image 64 px procedural val set and two tiny random-weight detectors (mask + box-only)."""
    from tasks.backbones import build_detector
    from tasks.checkpoint import save_detector
    from tasks.data.procedural import make_dataset

    root = tmp_path_factory.mktemp("tiny")
    paths = make_dataset(root / "proc", n_train=2, n_val=4, seed=0, image_size=64)
    kw = dict(fpn_channels=16, box_head_dim=32, mask_head_channels=8, anchor_sizes=[8, 16, 32, 64, 128],
              resnet_width=8, detector_kwargs={"box_detections_per_img": 20, "rpn_post_nms_top_n_test": 50,
                                               "rpn_pre_nms_top_n_test": 100})
    torch.manual_seed(0)
    mask = build_detector("mask", "resnet", 6, 64, 64, **kw)
    save_detector(mask, root / "mask.pt", classes=CLASSES)
    torch.manual_seed(1)
    box = build_detector("faster", "resnet", 6, 64, 64, **kw)
    save_detector(box, root / "box.pt", classes=CLASSES)
    return {"root": root, "ann": paths["val"]["annotations"], "images": paths["val"]["images"],
            "mask": root / "mask.pt", "box": root / "box.pt"}


def test_grid_outputs_resume_and_report(tiny, tmp_path):
    out = tmp_path / "run"
    cfg = GridConfig(degradations=["noise", "gamma:tone"], severities="2,5", sample_images=2)
    models = [f"m={tiny['mask']}", f"b={tiny['box']}"]
    res = run_grid(models, tiny["ann"], out, cfg, progress=False)
    labels = [c["label"] for c in res["conditions"]]
    assert labels == ["clean", "roundtrip", "noise-2", "noise-5", "gamma-tone-2", "gamma-tone-5"]
    for f in ("results.json", "report.md", "ap_vs_severity_bbox_AP.png", "ap_vs_severity_segm_AP.png",
              "samples.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["models"]["m"]["iou_types"] == ["bbox", "segm"]
    assert on_disk["models"]["b"]["iou_types"] == ["bbox"]
    s = on_disk["models"]["m"]["summary"]
    assert s["n_conditions"] == 4 and set(s["splits"]) == {"seen", "unseen"}
    assert s["splits"]["unseen"]["n_conditions"] == 2
    pc = on_disk["models"]["m"]["per_condition"]
    vals = [pc[lab]["bbox_AP"] for lab in labels[2:]]
    assert s["roundtrip"]["bbox_AP"] == pc["roundtrip"]["bbox_AP"]
    assert s["mPC"]["bbox_AP"] == pytest.approx(np.mean(vals))
    # one cached prediction file per (model, condition)
    for tag in ("m", "b"):
        assert sorted(p.stem for p in (out / "predictions" / tag).glob("*.json")) == sorted(labels)
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.json"))
    text = (out / "report.md").read_text()
    assert "mPC" in text and "gamma:tone" in text and "![samples](samples.png)" in text

    # resume: a second run reads every condition from the cache and gives identical metrics
    (out / "results.json").unlink()
    res2 = run_grid(models, tiny["ann"], out, cfg, progress=False, report=False)
    assert sorted(res2["models"]["m"]["cached_conditions"]) == sorted(labels)
    assert res2["models"]["m"]["predict_seconds"] == {}
    assert res2["models"]["m"]["per_condition"] == res["models"]["m"]["per_condition"]
    # a changed seed invalidates the degraded conditions' caches but not the clean one
    res3 = run_grid(models[:1], tiny["ann"], out, GridConfig(degradations=["noise"], severities="2", seed=5),
                    progress=False, report=False)
    assert res3["models"]["m"]["cached_conditions"] == ["clean"]  # roundtrip and noise-2 depend on the seed


def test_on_the_fly_matches_isp_sim_degraded_copy(tiny, tmp_path):
    from isp_sim.dataset import degrade_dataset

    degrade_dataset(tiny["ann"], tmp_path / "deg", ["jpeg"], [3], seed=0, workers=1, image_root=tiny["images"],
                    progress=False)
    fly = GridData(tiny["ann"], tiny["images"], seed=0)
    copy = GridData(tiny["ann"], tiny["images"], seed=0, degraded_root=tmp_path / "deg")
    c = Condition("jpeg", 3)
    assert fly.source(c) == "on-the-fly" and copy.source(c).startswith("copy:")
    for i in range(len(fly.ids)):
        assert np.array_equal(fly.image(c, i), copy.image(c, i))  # PNG copies: bit-identical
    # predictions cached on a degraded copy are not reused once the copy has been rewritten
    out, cfg = tmp_path / "run", GridConfig(degradations=["jpeg"], severities="3", degraded_root=str(tmp_path / "deg"),
                                            roundtrip=False, sample_images=0)
    models = [f"m={tiny['mask']}"]
    run_grid(models, tiny["ann"], out, cfg, tiny["images"], progress=False, report=False)
    again = run_grid(models, tiny["ann"], out, cfg, tiny["images"], progress=False, report=False)
    assert again["models"]["m"]["cached_conditions"] == ["clean", "jpeg-3"]
    assert again["data"]["sources"]["jpeg-3"].startswith("copy:")
    import shutil

    shutil.rmtree(tmp_path / "deg" / "jpeg-3")
    degrade_dataset(tiny["ann"], tmp_path / "deg", ["jpeg"], [3], seed=7, workers=1, image_root=tiny["images"],
                    progress=False)
    rewritten = run_grid(models, tiny["ann"], out, cfg, tiny["images"], progress=False, report=False)
    assert rewritten["models"]["m"]["cached_conditions"] == ["clean"]
    # an incomplete copy is a clear error
    os.remove(tmp_path / "deg" / "jpeg-3" / fly.files[0])
    with pytest.raises(EvaluateError, match="lacks 1 of 4"):
        copy.check_source(c)


def test_bad_inputs_give_clear_errors(tiny, tmp_path):
    cfg = GridConfig(degradations=["noise"], severities="1")
    with pytest.raises(EvaluateError, match="unknown degradation 'fog'"):
        run_grid([str(tiny["mask"])], tiny["ann"], tmp_path / "a", GridConfig(degradations=["fog"]), progress=False)
    with pytest.raises(EvaluateError, match="not found"):
        run_grid([str(tmp_path / "nope.pt")], tiny["ann"], tmp_path / "b", cfg, progress=False)
    # a checkpoint whose weights do not match its config
    from tasks.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny["mask"])
    ck["model_config"] = dict(ck["model_config"], fpn_channels=24)
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(EvaluateError, match="do not match"):
        run_grid([str(tmp_path / "bad.pt")], tiny["ann"], tmp_path / "c", cfg, progress=False)
    # a checkpoint trained on other categories
    ck = load_checkpoint(tiny["mask"])
    ck["classes"] = {"names": CLASSES["names"], "cat_ids": [11, 12, 13, 14, 15, 16]}
    torch.save(ck, tmp_path / "other.pt")
    with pytest.raises(EvaluateError, match="other data"):
        run_grid([str(tmp_path / "other.pt")], tiny["ann"], tmp_path / "d", cfg, progress=False)
    # missing images: error naming the file, or skipped with --missing skip
    ann = json.loads(Path(tiny["ann"]).read_text())
    ann["images"].append({"id": 99, "file_name": "gone.png", "width": 64, "height": 64})
    bad_ann = tmp_path / "missing.json"
    bad_ann.write_text(json.dumps(ann))
    with pytest.raises(EvaluateError, match="gone.png"):
        GridData(bad_ann, tiny["images"])
    assert GridData(bad_ann, tiny["images"], missing="skip").missing == ["gone.png"]


def test_results_file_is_never_partial(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}\n')

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(out / "results.json", {"x": Unserialisable()})
    assert json.loads((out / "results.json").read_text()) == {"old": True}

    # a failure while the file is being written leaves the previous file and no temporary file
    import evaluate.common as common

    real_write = Path.write_text

    def boom(self, text, *a, **k):
        real_write(self, text[: len(text) // 2], *a, **k)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        common.atomic_write_json(out / "results.json", {"new": list(range(100))})
    monkeypatch.undo()
    assert json.loads((out / "results.json").read_text()) == {"old": True}
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_empty_predictions_score_zero_with_a_clear_warning(tiny, tmp_path, monkeypatch, caplog):
    import tasks.coco_eval

    monkeypatch.setattr(tasks.coco_eval, "predict", lambda *a, **k: [])
    # evaluate.common.setup_logging (run by earlier CLI tests) stops 'evaluate' records at its own handlers; let
    # them reach caplog's root handler for this test
    monkeypatch.setattr(logging.getLogger("evaluate"), "propagate", True)
    out = tmp_path / "e"
    with caplog.at_level("WARNING", logger="evaluate.grid"):
        res = run_grid([str(tiny["mask"])], tiny["ann"], out, GridConfig(degradations=["jpeg"], severities="1",
                                                                         sample_images=1), progress=False)
    m = res["models"]["mask"]
    assert m["per_condition"]["clean"]["bbox_AP"] == 0.0 and m["per_condition"]["jpeg-1"]["segm_AP"] == 0.0
    assert m["summary"]["mPC"]["bbox_AP"] == 0.0 and m["summary"]["rPC"]["bbox_AP"] is None
    # not silent: results.json, the log and the report say that the model detected nothing, and where
    [w] = json.loads((out / "results.json").read_text())["warnings"]
    assert "'mask' returned no detections on 3 of 3 conditions (clean, roundtrip, jpeg-1)" in w
    assert "detects nothing on any condition" in w and "check the checkpoint" in w
    assert w in caplog.text
    assert f"**Warning:** {w}." in (out / "report.md").read_text()


def test_empty_prediction_warnings_name_only_the_empty_conditions():
    from evaluate.grid import empty_prediction_warnings

    conds = [Condition(), Condition("noise", 5)]
    pm = {"a": {"per_condition": {"clean": {"n_detections": 4}, "noise-5": {"n_detections": 0}}},
          "b": {"per_condition": {"clean": {"n_detections": 2}, "noise-5": {"n_detections": 1}}}}
    [w] = empty_prediction_warnings(pm, conds)
    assert w.startswith("model 'a' returned no detections on 1 of 2 conditions (noise-5)")
    assert "check the checkpoint" not in w  # it does detect on the clean set


def test_interrupted_run_leaves_no_results_and_resumes(tiny, tmp_path, monkeypatch):
    import tasks.coco_eval

    real_predict = tasks.coco_eval.predict
    calls = []

    def flaky(model, images, ids, **kw):
        calls.append(len(images))
        if len(calls) == 3:  # clean and roundtrip done, the third condition is interrupted
            raise KeyboardInterrupt
        return real_predict(model, images, ids, **kw)

    monkeypatch.setattr(tasks.coco_eval, "predict", flaky)
    out = tmp_path / "run"
    cfg = GridConfig(degradations=["white_balance"], severities="1,4", sample_images=0)
    with pytest.raises(KeyboardInterrupt):
        run_grid([f"m={tiny['mask']}"], tiny["ann"], out, cfg, progress=False)
    assert not (out / "results.json").exists()
    assert sorted(p.name for p in (out / "predictions" / "m").iterdir()) == ["clean.json", "roundtrip.json"]
    res = run_grid([f"m={tiny['mask']}"], tiny["ann"], out, cfg, progress=False, report=False)
    assert sorted(res["models"]["m"]["cached_conditions"]) == ["clean", "roundtrip"]
    assert len(calls) == 5 and (out / "results.json").is_file()


def test_cli_run_and_compare(tiny, tmp_path, capsys):
    from evaluate.__main__ import main

    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--data", tiny["ann"], "--degradations", "exposure", "--severities", "3", "--no-progress",
            "--sample-images", "0"]
    assert main(["run", "--model", f"x={tiny['mask']}", "--out", str(a)] + args) == 0
    assert main(["run", "--model", f"y={tiny['box']}", "--out", str(b)] + args) == 0
    assert main(["compare", str(a / "results.json"), str(b), "--out", str(tmp_path / "cmp")]) == 0
    comp = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [e["model"] for e in comp["entries"]] == ["x", "y"]
    assert comp["entries"][0]["P"] == json.loads((a / "results.json").read_text())["models"]["x"]["summary"]["P"][
        "bbox_AP"]
    assert "| a | x |" in (tmp_path / "cmp" / "comparison.md").read_text()
    capsys.readouterr()
    assert main(["run", "--model", str(tiny["mask"]), "--out", str(tmp_path / "z"), "--data", tiny["ann"],
                 "--degradations", "sepia"]) == 2
    assert "unknown degradation 'sepia'" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "c2")]) == 2
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--key", "bbox_ap", "--out", str(tmp_path / "c3")]) == 2  # a typo
    assert "metric 'bbox_ap' is in none of the results; choose from bbox_AP, bbox_AP50" in capsys.readouterr().err
    assert not (tmp_path / "c3" / "comparison.json").exists()
    assert main(["compare", str(a), str(b), "--key", "segm_AP", "--out", str(tmp_path / "c4")]) == 0
    seg = json.loads((tmp_path / "c4" / "comparison.json").read_text())["entries"]
    assert seg[0]["P"] is not None and seg[1]["P"] is None  # y is a box-only model: n/a, not an error
    assert not (tmp_path / "z" / "results.json").exists()
