"""DiR training under torchrun: two CPU processes (gloo) train every stage (mmi, dfr, align, restore and the plain
baseline) and write the same kind of checkpoint and log as a single process."""
import json
import os
import subprocess
import sys

import yaml
from conftest import REPO

import torch

from dir.checkpoint import load_dirnet


def test_ddp_two_cpu_processes(tmp_path):
    cfg = {
        "run": {"out_dir": str(tmp_path / "run"), "seed": 3, "threads": 1},
        "model": {"channels": [8, 16, 32, 64], "proj_dim": 16},
        "data": {"patch_size": 32, "epoch_size": 16, "views": 2, "max_side": 128},
        "loss": {"local_samples": 8},
        "mmi": {"steps": 3, "batch_size": 4, "log_every": 1, "ckpt_every": 2},
        "dfr": {"steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 2},
        "align": {"steps": 2, "batch_size": 4, "log_every": 1, "ckpt_every": 2},
        "restore": {"steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 2, "finetune_alignment": True},
        "plain": {"steps": 2, "batch_size": 2, "log_every": 1, "ckpt_every": 2},
    }
    stages = {"mmi": 3, "dfr": 2, "align": 2, "restore": 2, "plain": 2}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for stage in stages:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dir", "train", "--stage", stage, "--config", str(path), "--no-progress"]
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    for stage, steps in stages.items():
        recs = [json.loads(x) for x in (run / stage / "log.jsonl").read_text().splitlines()]
        train = [r for r in recs if "step" in r]
        assert [r["step"] for r in train] == list(range(1, steps + 1))   # only rank 0 logs, once per step
        assert all(r.get("loss") is not None and r["loss"] == r["loss"] for r in train)
    net = load_dirnet(run / "dirnet.pt")   # the restored DiRNet exported by rank 0 loads and runs
    assert net.restore(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert (run / "plain.pt").is_file()
    # a global batch that leaves one image per process cannot give the MI bound its negatives: a clear error
    cfg["mmi"]["batch_size"] = 2
    cfg["run"]["out_dir"] = str(tmp_path / "bad")
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dir", "train", "--stage", "mmi", "--config", str(path), "--no-progress"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "leaves 1 image(s) per process" in res.stderr
