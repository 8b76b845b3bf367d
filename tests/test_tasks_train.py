"""tasks.train and the CLI: exact resume, resume after a kill, 2-process DDP (gloo), predict/eval commands."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tasks.__main__ import main as cli
from tasks.checkpoint import load_checkpoint, load_detector
from tasks.config import load_config
from tasks.train import train

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp: Path, out: str, **run) -> Path:
    """A YAML config for a tiny DiR Mask R-CNN on an 8-image 64 px procedural dataset."""
    cfg = {
        "model": {"kind": "mask", "backbone": "dir", "min_size": 64, "max_size": 64, "fpn_channels": 32,
                  "box_head_dim": 64, "mask_head_channels": 32, "anchor_sizes": [8, 16, 32, 64, 128],
                  "dir_model": {"channels": [8, 16, 32, 64], "gn_groups": 4}, "train_encoder": True,
                  "detector_kwargs": {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                                      "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 30,
                                      "box_batch_size_per_image": 32}},
        "data": {"root": str(tmp / "data"), "n_train": 8, "n_val": 3, "image_size": 64},
        "optim": {"lr": 0.01, "warmup_steps": 0, "schedule": "constant"},
        "run": {"out_dir": str(tmp / out), "max_steps": 4, "batch_size": 2, "log_every": 1, "ckpt_every": 0,
                "progress": False, "final_eval": False, "threads": 1, **run},
    }
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_records(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_resume_reproduces_uninterrupted_training(tmp_path):
    # run "a" also evaluates during training (step 2, on 2 images); that must not change its training batches
    straight = tiny_config(tmp_path, "a", final_eval=True, eval_batch_size=3, eval_every=2, eval_max_images=2)
    metrics = train(load_config(straight), resume=False)
    assert 0.0 <= metrics["bbox_AP"] <= 1.0 and "segm_AP" in metrics and metrics["n_images"] == 3
    evals = [r for r in map(json.loads, (tmp_path / "a" / "log.jsonl").read_text().splitlines())
             if r["type"] == "eval"]
    assert [(r["step"], r["n_images"]) for r in evals] == [(2, 2), (4, 3)]  # during training, then the final one
    assert all(0.0 <= r["bbox_AP"] <= 1.0 and 0.0 <= r["segm_AP"] <= 1.0 for r in evals)
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["step"] == 4
    n_lines = len((tmp_path / "a" / "log.jsonl").read_text().splitlines())
    assert train(load_config(straight)) == metrics  # a finished run is not trained or evaluated again
    assert len((tmp_path / "a" / "log.jsonl").read_text().splitlines()) == n_lines
    split = tiny_config(tmp_path, "b")
    train(load_config(split, ["run.max_steps=2"]), resume=False)
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # a record written after the checkpoint, then "killed"
        f.write(json.dumps({"step": 3, "type": "train", "loss": -1.0}) + "\n")
    train(load_config(split))  # resumes at step 2 (constant lr, so max_steps does not change the schedule)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra, rb = _train_records(tmp_path / "a"), _train_records(tmp_path / "b")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]  # the stale step-3 record was dropped
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    # a changed model config is refused instead of silently loading mismatched weights
    with pytest.raises(Exception, match="different model config"):
        train(load_config(split, ["model.fpn_channels=16", "run.max_steps=5"]))


def test_resume_after_kill(tmp_path):
    cfg = tiny_config(tmp_path, "k", max_steps=12, ckpt_every=1)
    cmd = [sys.executable, "-m", "tasks", "train", "--config", str(cfg)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = tmp_path / "k" / "last.pt"
    deadline = time.time() + 120
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = load_checkpoint(ck)["step"]
    assert 1 <= killed_at < 12
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from {ck} at step" in (tmp_path / "k" / "train.log").read_text()
    assert load_checkpoint(ck)["step"] == 12
    steps = [r["step"] for r in _train_records(tmp_path / "k")]
    assert steps == list(range(1, 13))  # no gap and no duplicate around the kill
    assert load_detector(tmp_path / "k" / "model_final.pt").checkpoint_step == 12


def test_ddp_two_cpu_processes(tmp_path):
    cfg = tiny_config(tmp_path, "ddp", max_steps=3, ckpt_every=2)
    train_cfg = load_config(cfg)
    from tasks.data.procedural import make_dataset

    d = train_cfg.data
    make_dataset(d.root, n_train=d.n_train, n_val=d.n_val, seed=d.seed, image_size=d.image_size)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tasks", "train", "--config", str(cfg)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ck["step"] == 3 and ck["config"]["run"]["batch_size"] == 2
    recs = _train_records(tmp_path / "ddp")
    assert [r["step"] for r in recs] == [1, 2, 3]  # only rank 0 logs; 8 images / (2 x 2) = 2 steps per epoch
    assert [r["epoch"] for r in recs] == [0, 0, 1]


def test_cli_predict_eval_and_errors(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "c", max_steps=2)
    assert cli(["train", "--config", str(cfg)]) == 0
    final = tmp_path / "c" / "model_final.pt"
    images = tmp_path / "data" / "val"
    ann = tmp_path / "data" / "annotations" / "instances_val.json"
    out = tmp_path / "dets.json"
    assert cli(["predict", "--checkpoint", str(final), "--images", str(images), "--ann", str(ann),
                "--out", str(out), "--score-thr", "0"]) == 0
    dets = json.loads(out.read_text())
    assert dets and {d["image_id"] for d in dets} <= {1, 2, 3} and "segmentation" in dets[0]
    metrics_path = tmp_path / "m.json"
    assert cli(["eval", "--checkpoint", str(final), "--images", str(images), "--ann", str(ann),
                "--out", str(metrics_path)]) == 0
    m = json.loads(metrics_path.read_text())
    assert m["n_images"] == 3 and 0 <= m["bbox_AP"] <= 1 and 0 <= m["segm_AP"] <= 1
    capsys.readouterr()
    assert cli(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  max_step: 3\n")
    assert cli(["train", "--config", str(bad)]) == 2
    assert "unknown key(s) in config section 'run'" in capsys.readouterr().err


def test_shipped_configs_are_valid():
    names = sorted((REPO / "configs" / "tasks").glob("*.yaml"))
    assert len(names) >= 3
    for path in names:
        cfg = load_config(path)
        assert cfg.model.kind in ("faster", "mask") and cfg.run.max_steps > 0
        assert cfg.to_dict()["model"]["anchor_sizes"] == list(cfg.model.anchor_sizes)
