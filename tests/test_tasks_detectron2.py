"""tasks.detectron2_backbone: runs whenever detectron2 is importable (build it from source), skips otherwise."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

detectron2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (build it from source to run "
                                                      "the Detectron2 backbone tests)")
pytestmark = pytest.mark.detectron2

from detectron2.modeling import BACKBONE_REGISTRY, build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from tasks.data.coco import CocoDetection  # noqa: E402
from tasks.data.procedural import make_dataset  # noqa: E402
from tasks.detectron2_backbone import DiRD2Backbone, get_dir_cfg, main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", 6, "MODEL.DIR.CHANNELS", [8, 16, 32, 64],
        "MODEL.DIR.GN_GROUPS", 4, "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ANCHOR_GENERATOR.SIZES",
        [[8], [16], [32], [64], [128]], "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 30]


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("proc") / "d", n_train=4, n_val=2, seed=0, image_size=64,
                        object_size=(12, 40))


def _d2_batch(proc, with_masks: bool) -> list[dict]:
    ds = CocoDetection(proc["train"]["images"], proc["train"]["annotations"])
    out = []
    for i in range(2):
        img, t = ds[i]
        inst = Instances(tuple(img.shape[1:]))
        inst.gt_boxes = Boxes(t["boxes"])
        inst.gt_classes = t["labels"] - 1
        if with_masks:
            inst.gt_masks = BitMasks(t["masks"].bool())
        out.append({"image": img * 255.0, "instances": inst, "height": 64, "width": 64})
    return out


def test_registered_backbones_and_output_shape():
    assert "build_dir_backbone" in BACKBONE_REGISTRY and "build_dir_fpn_backbone" in BACKBONE_REGISTRY
    cfg = get_dir_cfg(str(REPO / "configs/detectron2/faster_rcnn_dir_fpn.yaml"),
                      TINY + ["MODEL.BACKBONE.NAME", "build_dir_backbone"])
    from detectron2.modeling import build_backbone

    bb = build_backbone(cfg)
    assert isinstance(bb, DiRD2Backbone)
    shapes = bb.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "s4": (8, 4), "s8": (16, 8), "s16": (32, 16), "s32": (64, 32)}
    feats = bb(torch.rand(1, 3, 64, 96))
    assert feats["s16"].shape == (1, 32, 4, 6)
    fpn = build_backbone(get_dir_cfg(str(REPO / "configs/detectron2/faster_rcnn_dir_fpn.yaml"), TINY))
    assert {k: s.stride for k, s in fpn.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


@pytest.mark.parametrize("name,masks", [("faster_rcnn_dir_fpn", False), ("mask_rcnn_dir_fpn", True)])
def test_yaml_model_trains_one_step(name, masks, proc):
    torch.manual_seed(0)
    cfg = get_dir_cfg(str(REPO / f"configs/detectron2/{name}.yaml"), TINY)
    assert cfg.MODEL.MASK_ON == masks and cfg.INPUT.FORMAT == "RGB"
    model = build_model(cfg)
    net = model.backbone.bottom_up.net
    align_before = [p.detach().clone() for p in net.alignment_parameters()]
    enc_before = [p.detach().clone() for p in net.encoder.parameters()]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    with EventStorage(0):
        losses = model(_d2_batch(proc, masks))
    assert ("loss_mask" in losses) == masks and {"loss_cls", "loss_box_reg", "loss_rpn_cls"} <= set(losses)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    # task-aligned refinement: the alignment moved, the (frozen) encoder did not
    assert any(not torch.equal(a, p) for a, p in zip(align_before, net.alignment_parameters()))
    assert all(torch.equal(a, p) for a, p in zip(enc_before, net.encoder.parameters()))
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64}])[0]["instances"]
    assert out.has("pred_masks") == masks and out.pred_boxes.tensor.shape[1] == 4


def test_default_trainer_runs(proc, tmp_path):
    root = Path(proc["train"]["images"]).parent
    assert main(["--config-file", str(REPO / "configs/detectron2/mask_rcnn_dir_fpn.yaml"), "--procedural", str(root),
                 *map(str, TINY), "DATASETS.TRAIN", "('procedural_train',)", "DATASETS.TEST", "()",
                 "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001",
                 "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "DATALOADER.NUM_WORKERS", "0",
                 "OUTPUT_DIR", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model_final.pth").is_file()
