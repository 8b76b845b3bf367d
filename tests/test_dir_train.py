"""Training stages: determinism, resume, decreasing losses, checkpoints, the CLI, evaluation."""
import json

import pytest
import torch

from dir.checkpoint import DiRCheckpointError, atomic_save, load_dirnet
from dir.config import config_from_dict, load_config
from dir.data import PatchDataset, PhotometricDegrader, batch_stream, load_images
from dir.train import build_stage, output_path, train_stage

TOY = PhotometricDegrader()


def tiny_cfg(out_dir, steps=6, **over):
    d = {
        "run": {"out_dir": str(out_dir), "seed": 7, "threads": 1},
        "model": {"channels": [8, 16, 32, 64], "proj_dim": 16},
        "data": {"patch_size": 32, "epoch_size": 24, "views": 2, "max_side": 128},
        "loss": {"local_samples": 8},
    }
    for st in ("mmi", "dfr", "align", "restore"):
        d[st] = {"steps": steps, "batch_size": 4, "log_every": 1, "ckpt_every": 3}
    d["plain"] = {"batch_size": 4, "log_every": 1, "ckpt_every": 3}
    for k, v in over.items():
        d.setdefault(k, {}).update(v)
    return config_from_dict(d)


def losses(path):
    return [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in path.read_text().splitlines()]


def test_same_seed_same_curve_and_resume(tmp_path):
    a = tiny_cfg(tmp_path / "a")
    b = tiny_cfg(tmp_path / "b")
    train_stage(a, "mmi", TOY, progress=False)
    train_stage(b, "mmi", TOY, progress=False, stop_after=3)  # interrupted after a checkpoint ...
    assert not output_path(b, "mmi").exists()
    train_stage(b, "mmi", TOY, progress=False)  # ... and resumed
    la, lb = losses(tmp_path / "a/mmi/log.jsonl"), losses(tmp_path / "b/mmi/log.jsonl")
    assert len(la) == 6 and la == lb
    sa = torch.load(output_path(a, "mmi"), weights_only=True)["state_dict"]
    sb = torch.load(output_path(b, "mmi"), weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a different seed gives a different curve
    c = tiny_cfg(tmp_path / "c", run={"seed": 8})
    train_stage(c, "mmi", TOY, progress=False, stop_after=3)
    assert losses(tmp_path / "c/mmi/log.jsonl")[:3] != la[:3]
    # re-running a finished stage does nothing; a changed config is refused
    mtime = output_path(a, "mmi").stat().st_mtime_ns
    train_stage(a, "mmi", TOY, progress=False)
    assert output_path(a, "mmi").stat().st_mtime_ns == mtime
    changed = tiny_cfg(tmp_path / "a", loss={"temperature": 0.5})
    with pytest.raises(RuntimeError, match="different config"):
        train_stage(changed, "mmi", TOY, progress=False)


def test_align_restore_same_curve_and_resume(tmp_path):
    """The later stages are reproducible too: the channel statistics measured before stage align, the pilot started
    from E*, and a resume (statistics and pilot come back from last.pt, not re-measured) give the same loss log."""
    import shutil

    from dir.model import SCALES, floor_std
    from dir.train import feature_statistics, prepare_align
    src = tiny_cfg(tmp_path / "src", steps=4)
    for st in ("mmi", "dfr"):
        train_stage(src, st, TOY, progress=False)
    runs = []
    for name in ("a", "b"):
        cfg = tiny_cfg(tmp_path / name, steps=4)
        (tmp_path / name).mkdir()
        for st in ("mmi", "dfr"):
            shutil.copy(output_path(src, st), output_path(cfg, st))
        runs.append(cfg)
    a, b = runs
    train_stage(a, "align", TOY, progress=False)
    train_stage(a, "restore", TOY, progress=False)
    train_stage(b, "align", TOY, progress=False, stop_after=2)
    train_stage(b, "align", TOY, progress=False)
    train_stage(b, "restore", TOY, progress=False, stop_after=2)
    train_stage(b, "restore", TOY, progress=False)
    for st in ("align", "restore"):
        la, lb = losses(tmp_path / f"a/{st}/log.jsonl"), losses(tmp_path / f"b/{st}/log.jsonl")
        assert len(la) == 4 and la == lb
        sa = torch.load(output_path(a, st), weights_only=True)["state_dict"]
        sb = torch.load(output_path(b, st), weights_only=True)["state_dict"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # before the first align step: floored statistics stored, and r-> = E*(x) exactly (pilot from the stored stats)
    mod = build_stage(a, "align")
    imgs = [x for _, x in load_images(max_side=128)]
    prepare_align(mod, imgs, a, torch.device("cpu"), TOY)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rp, rstar = mod.net.pilot_features(x), mod.dfr.encoder(x)
    raw = feature_statistics(mod.dfr.encoder, imgs, a, torch.device("cpu"), "stats/ref")[1]
    for k in SCALES:
        assert torch.equal(getattr(mod.net, f"ref_std_{k}"), floor_std(raw[k]))
        torch.testing.assert_close(rp[k], rstar[k], atol=1e-4, rtol=1e-4)


def test_losses_decrease(tmp_path):
    cfg = tiny_cfg(tmp_path, steps=40, dfr={"batch_size": 8}, mmi={"batch_size": 8})
    train_stage(cfg, "dfr", TOY, progress=False)
    train_stage(cfg, "mmi", TOY, progress=False)
    # DfR reconstruction error on a fixed batch of clean patches: trained vs. initial weights
    imgs = [x for _, x in load_images(names=["coffee", "chelsea"], split="eval", max_side=128)]
    x = PatchDataset(imgs, 32, 8, 0, None, 1, "probe")
    x = torch.stack([x.item(0, i)["clean"] for i in range(8)])
    ae0 = build_stage(cfg, "dfr").ae
    ae1 = build_stage(cfg, "dfr").ae
    ae1.load_state_dict(torch.load(output_path(cfg, "dfr"), weights_only=True)["state_dict"])
    with torch.no_grad():
        l0, l1 = float((ae0(x)[0] - x).abs().mean()), float((ae1(x)[0] - x).abs().mean())
    assert l1 < 0.85 * l0
    mmi = [r["mi_local"] for r in losses(tmp_path / "mmi/log.jsonl")]
    assert sum(mmi[-10:]) / 10 > sum(mmi[:10]) / 10 + 0.3  # the MI bound rises while training


def test_pipeline_checkpoints_and_mismatch(tmp_path):
    cfg = tiny_cfg(tmp_path, steps=3)
    with pytest.raises(FileNotFoundError, match="--stage mmi"):
        train_stage(cfg, "align", TOY, progress=False)
    for st in ("mmi", "dfr", "align", "restore"):
        train_stage(cfg, st, TOY, progress=False)
    net = load_dirnet(output_path(cfg, "restore"))
    assert bool(net.ref_stats_valid)
    # R's start: re-initialised (decoder_init: scratch, the default) or D*'s layers (dfr); both start as y = x
    from dir.evaluate import load_dfr
    dstar = load_dfr(output_path(cfg, "dfr")).decoder
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for init, same in (("scratch", False), ("dfr", True)):
        r = build_stage(tiny_cfg(tmp_path, steps=3, restore={"decoder_init": init}), "restore").net
        assert torch.equal(r.decoder.up1.conv.weight, dstar.up1.conv.weight) is same
        with torch.no_grad():
            torch.testing.assert_close(r.restore(probe, clamp=False), probe, atol=1e-6, rtol=0)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = net.forward_features(x)
        assert f["s32"].shape == (2, 64, 2, 2)
    # the stored model config is checked
    with pytest.raises(DiRCheckpointError, match="trained with model config"):
        load_dirnet(output_path(cfg, "restore"), expect_config={"channels": [16, 32, 64, 128]})
    # tensors that do not fit the stored config
    obj = torch.load(output_path(cfg, "restore"), weights_only=True)
    obj["model_config"]["channels"] = [16, 32, 64, 128]
    atomic_save(obj, tmp_path / "bad.pt")
    with pytest.raises(DiRCheckpointError, match="does not match DiRNet"):
        load_dirnet(tmp_path / "bad.pt")
    with pytest.raises(DiRCheckpointError, match="expected 'dirnet-v2'"):
        load_dirnet(output_path(cfg, "dfr"))
    # a v1 file (written before R had its input branch) still loads, with the old feature-only decoder
    obj = torch.load(output_path(cfg, "restore"), weights_only=True)
    old_cfg = {k: v for k, v in obj["model_config"].items() if k != "restore_skip"}
    old_cfg["restore_skip"] = False
    from dir.model import build_dirnet
    old_net = build_dirnet(old_cfg, seed=1)
    old_state = {k: v for k, v in old_net.state_dict().items()}
    del old_cfg["restore_skip"]
    atomic_save({"format": "dirnet-v1", "model_config": old_cfg, "state_dict": old_state, "meta": {}},
                tmp_path / "v1.pt")
    v1 = load_dirnet(tmp_path / "v1.pt")
    assert v1.cfg.restore_skip is False and not v1.decoder.input_skip
    assert all(torch.equal(v, v1.state_dict()[k]) for k, v in old_state.items())
    # a v1 training checkpoint cannot be resumed: clear error
    ck = torch.load(tmp_path / "restore/last.pt", weights_only=True)
    ck["format"] = "dir-train-v1"
    atomic_save(ck, tmp_path / "restore/last.pt")
    with pytest.raises(RuntimeError, match="dir-train-v2"):
        train_stage(cfg, "restore", TOY, progress=False)
    with pytest.raises(DiRCheckpointError, match="not found"):
        load_dirnet(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DiRCheckpointError, match="cannot read"):
        load_dirnet(tmp_path / "junk.pt")


def test_batches_independent_of_resume_point():
    imgs = [x for _, x in load_images(max_side=96, names=["astronaut", "coffee"])]
    ds = PatchDataset(imgs, 32, 16, 2, TOY, 0, "t")
    full = list(batch_stream(ds, 4, 0, 10, seed=0))
    part = list(batch_stream(ds, 4, 6, 10, seed=0))
    assert [s for s, _ in full] == list(range(10))
    for (s1, b1), (s2, b2) in zip(full[6:], part):
        assert s1 == s2 and torch.equal(b1["views"], b2["views"]) and torch.equal(b1["clean"], b2["clean"])
    # the two ranks of a 2-process run split each global batch
    r0 = next(iter(batch_stream(ds, 4, 0, 1, seed=0, rank=0, world_size=2)))[1]
    r1 = next(iter(batch_stream(ds, 4, 0, 1, seed=0, rank=1, world_size=2)))[1]
    assert r0["clean"].shape[0] == 2 and not torch.equal(r0["clean"], r1["clean"])


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"mmi": {"stepz": 3}})
    with pytest.raises(ValueError, match="unknown config section"):
        config_from_dict({"training": {}})
    with pytest.raises(ValueError, match="multiple of 32"):
        config_from_dict({"data": {"patch_size": 50}})
    with pytest.raises(ValueError, match="estimator"):
        config_from_dict({"loss": {"estimator": "mine"}})
    p = tmp_path / "c.yaml"
    p.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(p)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")
    assert config_from_dict({}).plain_steps() == 4 * 300


def test_evaluate_report_and_cli(tmp_path):
    import subprocess
    import sys

    from dir.evaluate import METHODS, evaluate

    cfg = tiny_cfg(tmp_path, steps=2, eval={"crop": 64, "crops_per_image": 1, "views": 2, "single": ["jpeg"]})
    for st in ("mmi", "dfr", "align", "restore", "plain"):
        train_stage(cfg, st, TOY, progress=False)
    assert len(losses(tmp_path / "plain/log.jsonl")) == 8  # the plain baseline gets the 4 stages' budget
    rep = evaluate(cfg, progress=False)
    assert set(rep["restoration"]) == {"composite:seen", "composite:unseen", "jpeg@3"}
    for cond in rep["restoration"].values():
        assert set(cond) == set(METHODS)
        assert all(0 < cond[m]["psnr"]["mean"] < 100 and -1 <= cond[m]["ssim"]["mean"] <= 1 for m in METHODS)
    rp = rep["representation"]["composite:seen"]
    assert set(rp) == {"dir_rplus", "dir_r0", "dir_pilot", "plain_encoder"}
    assert all(-1 <= rp[k]["mean"]["same_image"] <= 1 for k in rp)
    md = (tmp_path / "eval/report.md").read_text()
    assert "| DiR (full) |" in md and json.loads((tmp_path / "eval/report.json").read_text()) == rep
    r = subprocess.run([sys.executable, "-m", "dir", "train", "--help"], capture_output=True, text=True, check=True)
    assert "--stage" in r.stdout
    r = subprocess.run([sys.executable, "-m", "dir", "train", "--stage", "mmi", "--config",
                        str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert r.returncode != 0 and "config file not found" in r.stderr


def test_representation_scores():
    """The representation check: identical features across degradations score 1 for "same image"; the
    "different images" reference compares the same view index across crops."""
    from dir.evaluate import _representation_scores
    from dir.model import SCALES
    g = torch.Generator().manual_seed(0)
    base = [torch.rand(1, 10, generator=g) for _ in range(3)]       # 3 crops, one feature vector each
    same = [{s: b.expand(2, -1) for s in SCALES} for b in base]     # 2 views with identical features
    noisy = [{s: b + 0.5 * torch.randn(2, 10, generator=g) for s in SCALES} for b in base]
    rep = _representation_scores({"invariant": same, "noisy": noisy}, views=2)
    assert rep["invariant"]["mean"]["same_image"] == pytest.approx(1.0)
    assert rep["noisy"]["mean"]["same_image"] < 1.0
    pairs = [torch.nn.functional.cosine_similarity(base[i], base[j]).item() for i, j in ((0, 1), (0, 2), (1, 2))]
    assert rep["invariant"]["s4"]["different_images"] == pytest.approx(sum(pairs) / 3, abs=1e-6)


def test_isp_sim_views_are_deterministic():
    from dir.data import make_degrader

    imgs = [x for _, x in load_images(names=["astronaut"], max_side=96)]
    for split in ("seen", "unseen"):
        ds = PatchDataset(imgs, 32, 4, 2, make_degrader(split), 3, "det")
        a, b = ds.item(0, 1), ds.item(0, 1)
        assert torch.equal(a["views"], b["views"]) and a["views"].shape == (2, 3, 32, 32)
        assert not torch.equal(a["views"][0], a["views"][1])  # two different ISP chains
        assert float(a["views"].min()) >= 0 and float(a["views"].max()) <= 1
