"""evaluate.demo: presets match the YAML files; the whole demo path on a very reduced configuration; the CLI."""
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from evaluate.common import EvaluateError
from evaluate.demo import DemoConfig, config_from_dict, load_config, quick_config, run_demo, train_data_text

REPO = Path(__file__).resolve().parents[1]


def test_yaml_configs_equal_the_built_in_presets():
    assert load_config(REPO / "configs/evaluate/demo.yaml").to_dict() == DemoConfig().to_dict()
    assert load_config(REPO / "configs/evaluate/demo_quick.yaml").to_dict() == quick_config().to_dict()
    assert load_config(None, quick=True).to_dict() == quick_config().to_dict()


def test_bad_demo_configs_are_clear_errors(tmp_path):
    with pytest.raises(EvaluateError, match="unknown key.*'detector'.*'stepz'"):
        config_from_dict({"detector": {"stepz": 3}})
    with pytest.raises(EvaluateError, match="unknown key"):
        config_from_dict({"typo": 1})
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(EvaluateError, match="mapping"):
        load_config(p)
    with pytest.raises(EvaluateError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(EvaluateError, match="unknown degradation"):
        config_from_dict({"grid": {"degradations": ["wobble"]}}).grid.conditions()


def test_report_describes_the_training_data_as_configured():
    d = DemoConfig().to_dict()
    assert train_data_text(d) == ("the procedural training split (200 images, 128 px) degraded on the fly by isp_sim "
                                  "CompositeISP('seen') chains on 50 % of the images (fresh draws every epoch)")
    d["detector"]["train_degradation"] = {"names": ["noise"], "severity": 3}
    assert train_data_text(d) == ("the procedural training split (200 images, 128 px) degraded on the fly by isp_sim "
                                  "['noise'] at severity 3 on 100 % of the images (one fixed draw per image)")
    d["detector"]["train_degradation"] = {}
    assert train_data_text(d) == "the clean procedural training split (200 images, 128 px)"


def test_reduced_demo_end_to_end_and_resume(tmp_path):
    cfg = config_from_dict({
        "seed": 0, "threads": 1, "workers": 2,
        "data": {"n_train": 8, "n_val": 2, "image_size": 64},
        "dir": {"channels": [8, 16, 16, 16], "patch_size": 32, "batch_size": 2, "mmi_steps": 1, "dfr_steps": 1,
                "align_steps": 1, "restore_steps": 1},
        "detector": {"max_steps": 2, "batch_size": 2, "warmup_steps": 1, "fpn_channels": 16, "box_head_dim": 32,
                     "mask_head_channels": 8, "resnet_width": 8, "anchor_sizes": [8, 16, 32, 64, 128],
                     "detections_per_image": 10},
        "grid": {"degradations": ["jpeg", "noise:eld"], "severities": "5", "sample_images": 1},
        "pynet": {"width": 0.125, "patch": 32, "batch_size": 2, "steps": [0, 0, 0, 0, 1, 2]},
        "real": {"raw_dir": str(tmp_path / "no_raws"), "max_side": 64, "libraw": ["AHD"], "simulator": ["menon"],
                 "pynet": True, "gt_images": 1},
    })
    out = tmp_path / "demo"
    s = run_demo(cfg, out, progress=False)
    for f in ("report.md", "demo_summary.json", "demo_config.yaml", "grid/results.json", "grid/samples.png",
              "grid/ap_vs_severity_bbox_AP.png", "real_camera/real_camera.json", "models/resnet/model_final.pt",
              "models/dir/model_final.pt", "models/resnet-clean-trained/model_final.pt", "dir/dirnet.pt", "degraded/jpeg-5/manifest.jsonl"):
        assert (out / f).is_file(), f
    assert set(s["headline"]) == {"baseline-resnet", "dir", "resnet-clean-trained"}
    assert set(s["timing_s"]) >= {"1 data", "3 DiR pretraining", "5 robustness grid", "6 real-camera outputs",
                                  "4 train 3 detectors + PyNET (2 processes in parallel)", "total"}
    # baseline and DiR train on the same degraded data; the clean-trained baseline on clean images
    run_cfg = {t: yaml.safe_load((out / "models" / d / "demo_config.yaml").read_text())["data"]["train_degradation"]
               for t, d in (("base", "resnet"), ("dir", "dir"), ("clean", "resnet-clean-trained"))}
    assert run_cfg["base"] == run_cfg["dir"] and run_cfg["base"]["composite"] == "seen" and run_cfg["clean"] == {}
    res = json.loads((out / "grid/results.json").read_text())
    assert res["data"]["sources"]["jpeg-5"].startswith("copy:")        # isp_sim's degraded copy
    assert res["data"]["sources"]["noise-eld-5"] == "on-the-fly"      # a variant the tool cannot name
    assert res["restoration"]["per_condition"]["jpeg-5"]["psnr_restored"] is not None
    for tag in ("baseline-resnet", "dir"):
        h = s["headline"][tag]["bbox"]
        assert h["P"] == res["models"][tag]["summary"]["P"]["bbox_AP"]   # the report shows the measured numbers
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "## Measured time" in report and "load average" in report
    assert "Real RAW files: skipped" in report
    # the demo's own PyNET (levels 1 and 0 here) renders the real-camera set, with its validation numbers
    assert (out / "pynet/pynet_level_0.pth").is_file()
    assert s["pynet"]["checkpoint"].endswith("pynet_level_0.pth")
    assert s["pynet"]["validation"]["trained"]["psnr"] > 0
    real = json.loads((out / "real_camera/real_camera.json").read_text())
    assert "pynet:pynet_level_0" in json.dumps(real)
    assert yaml.safe_load((out / "demo_config.yaml").read_text())["detector"]["max_steps"] == 2
    # resume (in one process this time): nothing is retrained or re-predicted
    s2 = run_demo(dataclasses.replace(cfg, workers=1), out, progress=False)
    assert {"4a train baseline-resnet", "4b train dir", "4c train resnet-clean-trained", "4p train PyNET"} <= \
        set(s2["timing_s"])
    res2 = json.loads((out / "grid/results.json").read_text())
    assert sorted(res2["models"]["dir"]["cached_conditions"]) == ["clean", "jpeg-5", "noise-eld-5", "roundtrip"]
    assert s2["headline"] == s["headline"] and s2["pynet"] == s["pynet"]
    assert not s["resumed"] and len(s2["resumed"]) == 6  # 3 trainings + 3 models' cached grids
    assert "resumed from earlier outputs" in (out / "report.md").read_text()
