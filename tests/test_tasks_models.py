"""tasks.backbones / coco_eval / checkpoint: detectors build and train, refinement flags, evaluation, checkpoints."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from tasks.backbones import (DetectorConfig, aux_losses, build_detector, build_detector_from_config,
                             parameter_report)
from tasks.checkpoint import CheckpointError, atomic_save, load_detector, save_detector
from tasks.coco_eval import evaluate_coco, predict
from tasks.data.coco import CocoDetection
from tasks.data.procedural import make_dataset

TINY = dict(min_size=64, max_size=64, fpn_channels=32, box_head_dim=64, mask_head_channels=32,
            anchor_sizes=(8, 16, 32, 64, 128), dir_model={"channels": [8, 16, 32, 64], "gn_groups": 4},
            resnet_width=8, detector_kwargs={"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                                             "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 30,
                                             "box_batch_size_per_image": 32})


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("proc") / "d", n_train=4, n_val=3, seed=0, image_size=64,
                        object_size=(12, 40))


@pytest.fixture(scope="module")
def batch(proc):
    ds = CocoDetection(proc["train"]["images"], proc["train"]["annotations"])
    imgs, targets = zip(*[ds[i] for i in range(2)])
    return list(imgs), list(targets)


@pytest.mark.parametrize("kind,backbone", [("mask", "dir"), ("faster", "dir"), ("mask", "resnet"),
                                           ("faster", "resnet")])
def test_detector_trains_and_predicts(kind, backbone, batch):
    torch.manual_seed(0)
    model = build_detector(kind, backbone, num_classes=6, **TINY)
    assert model.backbone.out_channels == 32
    imgs, targets = batch
    if kind == "faster":
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    model.train()
    losses = model(imgs, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert expected | ({"loss_mask"} if kind == "mask" else set()) == set(losses)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    head_grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(imgs[:1])[0]
    assert out["boxes"].shape[1] == 4 and all(1 <= int(lab) <= 6 for lab in out["labels"])
    assert ("masks" in out) == (kind == "mask")
    if kind == "mask":
        assert out["masks"].shape[1:] == (1, 64, 64)


def _grad_norm(params) -> float:
    return float(sum(p.grad.abs().sum() for p in params if p.grad is not None))


@pytest.mark.parametrize("train_encoder", [False, True])
def test_task_aligned_refinement_updates_only_chosen_dir_parts(train_encoder, batch):
    torch.manual_seed(0)
    model = build_detector("mask", "dir", 6, train_alignment=True, train_encoder=train_encoder, **TINY)
    dirnet = model.backbone.body
    g = torch.Generator().manual_seed(0)
    for blk in dirnet.align.values():  # DiR zero-initialises the last alignment layers; a trained DiR has not
        for m in blk.modules():
            if getattr(m, "_zero_init", False):
                with torch.no_grad():
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
    assert all(not p.requires_grad for p in dirnet.decoder.parameters())
    assert all(not p.requires_grad for p in dirnet.pilot.parameters())
    assert all(p.requires_grad == train_encoder for p in dirnet.encoder.parameters())
    model.train()
    imgs, targets = batch
    sum(model(imgs, targets).values()).backward()
    assert _grad_norm(dirnet.alignment_parameters()) > 0
    assert (_grad_norm(dirnet.encoder.parameters()) > 0) == train_encoder
    assert _grad_norm(dirnet.pilot.parameters()) == 0 and _grad_norm(dirnet.decoder.parameters()) == 0


def test_refinement_distribution_regulariser(batch):
    """dist_reg_weight adds DiR's distribution-level regulariser on r+ to the training losses (only in training,
    only with DfR reference statistics); its gradient reaches the refined alignment, not the frozen encoder."""
    torch.manual_seed(0)
    model = build_detector("mask", "dir", 6, dist_reg_weight=0.5, **TINY)
    dirnet = model.backbone.body
    imgs, targets = batch
    model.train()
    model(imgs, targets)
    assert aux_losses(model) == {}  # an untrained DiR has no reference statistics to align to
    ch = {k: int(dirnet.out_channels[k]) for k in ("s4", "s8", "s16", "s32")}
    dirnet.set_reference_stats({k: torch.full((c,), 0.5) for k, c in ch.items()},
                               {k: torch.full((c,), 2.0) for k, c in ch.items()})
    model(imgs, targets)
    aux = aux_losses(model)
    assert set(aux) == {"loss_dir_dist"} and float(aux["loss_dir_dist"].detach()) > 0
    expected = 0.5 * dirnet.distribution_regularizer(dirnet.forward_features(torch.stack(imgs)))
    assert float(aux["loss_dir_dist"].detach()) == pytest.approx(float(expected.detach()), rel=1e-4)  # weight x regulariser
    model.zero_grad()
    aux["loss_dir_dist"].backward()
    assert _grad_norm(dirnet.alignment_parameters()) > 0
    assert _grad_norm(dirnet.encoder.parameters()) == 0 and _grad_norm(model.roi_heads.parameters()) == 0
    model.eval()
    with torch.no_grad():
        model(imgs[:1])
    assert aux_losses(model) == {}  # inference adds nothing
    plain = build_detector("mask", "dir", 6, **TINY)  # weight 0 (the default): off
    plain.backbone.body.load_state_dict(dirnet.state_dict())
    plain.train()
    plain(imgs, targets)
    assert aux_losses(plain) == {}


def test_frozen_dir_trunk_and_parameter_report():
    model = build_detector("mask", "dir", 6, train_alignment=False, train_encoder=False, **TINY)
    rep = parameter_report(model)
    dirnet = model.backbone.body
    assert rep["trainable"] == rep["total"] - rep["trunk"]
    unused = sum(p.numel() for p in dirnet.decoder.parameters())  # the restoration decoder is not on the path
    assert rep["trunk_used"] == rep["trunk"] - unused
    res = build_detector("mask", "resnet", 6, **TINY)
    rr = parameter_report(res)
    assert rr["trunk_used"] == rr["trunk"] and rr["heads"] == rep["heads"] and rr["trainable"] == rr["total"]


def test_resnet_from_local_weights(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    cfg = dict(TINY, resnet_width=64)
    model = build_detector("faster", "resnet", 3, resnet_weights=str(path), resnet_norm="frozen_bn",
                           resnet_trainable_layers=2, **{k: v for k, v in cfg.items()})
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert torch.equal(body.bn1.running_mean, ref.bn1.running_mean)
    assert not body.conv1.weight.requires_grad and not body.layer2[0].conv1.weight.requires_grad
    assert body.layer3[0].conv1.weight.requires_grad and body.layer4[1].conv2.weight.requires_grad
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_detector("faster", "resnet", 3, resnet_weights=str(tmp_path / "nope.pth"), **cfg)
    with pytest.raises(ValueError, match="width 64"):
        build_detector("faster", "resnet", 3, resnet_weights=str(path), **dict(cfg, resnet_width=32))
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="does not match ResNet-18"):
        build_detector("faster", "resnet", 3, resnet_weights=str(tmp_path / "r34.pth"), resnet_norm="frozen_bn",
                       **cfg)


class Oracle(nn.Module):
    """Returns the ground truth of the dataset image it is given (optionally shifted): an exact AP reference."""

    def __init__(self, ds: CocoDetection, shift: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.ds, self.shift = ds, shift
        self.roi_heads = type("H", (), {"has_mask": staticmethod(lambda: True)})()
        self.lookup = {}
        for i in range(len(ds)):
            img, t = ds[i]
            self.lookup[img.sum().item()] = t

    def forward(self, images):
        outs = []
        for img in images:
            t = self.lookup[img.sum().item()]
            n = len(t["boxes"])
            masks = t["masks"].float()[:, None]
            if self.shift:
                masks = torch.roll(masks, int(self.shift), dims=-1)
            outs.append({"boxes": t["boxes"] + self.shift, "labels": t["labels"],
                         "scores": torch.linspace(1.0, 0.5, n), "masks": masks})
        return outs


def test_evaluate_coco_is_exact_on_ground_truth(proc):
    ds = CocoDetection(proc["val"]["images"], proc["val"]["annotations"])
    m = evaluate_coco(Oracle(ds), ds, batch_size=2, progress=False)
    assert m["bbox_AP"] == pytest.approx(1.0) and m["segm_AP"] == pytest.approx(1.0)
    assert m["n_images"] == 3 and m["n_detections"] == sum(len(ds[i][1]["boxes"]) for i in range(3))
    shifted = evaluate_coco(Oracle(ds, shift=6.0), ds, batch_size=2, progress=False)
    assert shifted["bbox_AP"] < 0.9 and shifted["segm_AP"] < 0.9
    one = evaluate_coco(Oracle(ds), ds, max_images=1, progress=False)
    assert one["n_images"] == 1 and one["bbox_AP"] == pytest.approx(1.0)


def test_predict_and_checkpoint_roundtrip(proc, tmp_path):
    torch.manual_seed(0)
    model = build_detector("mask", "dir", 6, **dict(TINY, detector_kwargs=dict(TINY["detector_kwargs"],
                                                                                 box_score_thresh=0.0)))
    path = save_detector(model, tmp_path / "det.pt", classes={"names": list("abcdef"), "cat_ids": [1, 2, 3, 4, 5, 7]})
    loaded = load_detector(path)
    assert loaded.class_names == list("abcdef") and loaded.label_to_cat_id[6] == 7
    from dataclasses import fields

    from dir.config import ModelConfig

    # the stored DiR architecture is complete, so the checkpoint does not depend on dir's defaults
    assert set(loaded.config.dir_model) == {f.name for f in fields(ModelConfig)}
    files = sorted(Path(proc["val"]["images"]).glob("*.png"))[:2]
    arr = np.asarray(Image.open(files[1]).convert("RGB"))
    model.eval()
    dets_a = predict(loaded, [files[0], arr], image_ids=[11, 12])  # a path and a uint8 array
    dets_b = predict(model, [torch.from_numpy(arr).permute(2, 0, 1).float() / 255],
                     label_to_cat_id=loaded.label_to_cat_id)  # the original model, a float tensor
    assert dets_a and {d["image_id"] for d in dets_a} == {11, 12}
    a12 = [d for d in dets_a if d["image_id"] == 12]
    assert len(a12) == len(dets_b) > 0
    for d, e in zip(a12, dets_b):  # same weights -> same detections, whatever the input type
        assert d["category_id"] == e["category_id"] in loaded.label_to_cat_id.values()
        assert np.allclose(d["bbox"], e["bbox"], atol=1e-3) and d["score"] == pytest.approx(e["score"], abs=1e-5)
        assert d["bbox"][2] >= 0 and d["bbox"][3] >= 0
        assert mask_utils.decode(d["segmentation"]).shape == (64, 64)
    # mismatching weights / config / file kinds are clear errors
    bad = torch.load(path, weights_only=True)
    bad["model_config"]["fpn_channels"] = 16
    atomic_save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_detector(tmp_path / "bad.pt")
    atomic_save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a detector checkpoint"):
        load_detector(tmp_path / "foreign.pt")
    (tmp_path / "trunc.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_detector(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_detector(tmp_path / "none.pt")


def test_config_validation_messages():
    with pytest.raises(ValueError, match="unknown key"):
        DetectorConfig.from_dict({"kind": "mask", "fpn_chanels": 3})
    with pytest.raises(ValueError, match="'faster' or 'mask'"):
        DetectorConfig(kind="retina")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build_detector_from_config(DetectorConfig(num_classes=0))


def test_frozen_batchnorm_statistics_do_not_drift(batch):
    torch.manual_seed(0)
    model = build_detector("mask", "dir", 6, **dict(TINY, dir_model={"channels": [8, 16, 32, 64], "norm": "bn"}))
    dirnet = model.backbone.body
    enc_stats = {k: v.clone() for k, v in dirnet.encoder.state_dict().items() if "running_mean" in k}
    assert enc_stats
    model.train()
    imgs, targets = batch
    model(imgs, targets)
    for k, v in dirnet.encoder.state_dict().items():
        if k in enc_stats:
            assert torch.equal(v, enc_stats[k]), k  # frozen encoder: running statistics untouched
    align_bn = [m for m in dirnet.align.modules() if isinstance(m, nn.BatchNorm2d)]
    assert align_bn and all(m.training for m in align_bn)  # the refined alignment keeps training its norms
