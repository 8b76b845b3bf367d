"""Speed of the DiR Mask R-CNN vs torchvision's ResNet-50-FPN Mask R-CNN (weights=None), same input size, same run.

Measures, per model: inference latency (eval mode, batch 1, no grad) and one training step (forward + backward +
SGD step, batch ``--train-batch`` with synthetic targets). Measurements alternate between the two models each
iteration (so background load hits both alike) and report the median. Prints the ratios DiR / ResNet-50
(target: DiR inference within 1.25x).

    python benchmarks/tasks_bench.py --size 512 --iters 5 [--dir-checkpoint runs/dir_small/dirnet.pt] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torchvision

from tasks.backbones import build_detector, count_parameters, used_backbone_parameters


def synthetic_targets(n: int, size: int, num_classes: int, g: torch.Generator) -> list[dict]:
    """``n`` targets with 4 random boxes (and box-filled masks) each on a ``size`` x ``size`` image."""
    out = []
    for _ in range(n):
        xy = torch.rand(4, 2, generator=g) * size * 0.6
        wh = torch.rand(4, 2, generator=g) * size * 0.3 + size * 0.05
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=size - 1)
        masks = torch.zeros(4, size, size, dtype=torch.uint8)
        for i, b in enumerate(boxes.round().int().tolist()):
            masks[i, b[1]:b[3], b[0]:b[2]] = 1
        out.append({"boxes": boxes, "labels": torch.randint(1, num_classes + 1, (4,), generator=g), "masks": masks})
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="input side (min_size = max_size = size)")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dir-checkpoint", default="", help="trained DiR (else a random DiR of dir's default size)")
    ap.add_argument("--no-train", action="store_true", help="inference only")
    ap.add_argument("--all-detections", action="store_true",
                    help="box_score_thresh 0: always 100 detections (mask head included, NMS-dominated)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # torchvision's default post-processing for both; --all-detections keeps 100 detections per image whatever
    # their score (random weights score ~1/K, under the 0.05 default), so the mask head runs too, but then the
    # class-wise NMS over proposals x classes candidates dominates the time of both models.
    common = dict(box_score_thresh=0.0, box_detections_per_img=100) if args.all_detections else {}
    models = {
        "dir": build_detector("mask", "dir", args.num_classes, args.size, args.size, dir_checkpoint=args.dir_checkpoint,
                              train_alignment=True, train_encoder=True, train_pilot=True, detector_kwargs=common),
        "r50": torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                   num_classes=args.num_classes + 1,
                                                                   min_size=args.size, max_size=args.size, **common),
    }
    params = {}
    for k, m in models.items():
        m.to(device)
        params[k] = {"total": count_parameters(m), "trunk_used": used_backbone_parameters(m) if k == "dir"
                     else count_parameters(m.backbone.body)}
    img = torch.rand(3, args.size, args.size, generator=g).to(device)
    imgs_train = [torch.rand(3, args.size, args.size, generator=g).to(device) for _ in range(args.train_batch)]
    targets = [{k: v.to(device) for k, v in t.items()}
               for t in synthetic_targets(args.train_batch, args.size, args.num_classes, g)]
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}

    n_dets: dict[str, int] = {}

    def infer(k: str) -> float:
        m = models[k].eval()
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            out = m([img])
        sync(device)
        n_dets[k] = len(out[0]["boxes"])  # the mask head's work grows with it
        return time.perf_counter() - t

    def train_step(k: str) -> float:
        m = models[k].train()
        sync(device)
        t = time.perf_counter()
        losses = m(imgs_train, targets)
        opts[k].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opts[k].step()
        sync(device)
        return time.perf_counter() - t

    times: dict[str, dict[str, list[float]]] = {k: {"infer": [], "train": []} for k in models}
    for it in range(args.warmup + args.iters):
        for k in models:  # alternate models every iteration
            ti = infer(k)
            tt = None if args.no_train else train_step(k)
            if it >= args.warmup:
                times[k]["infer"].append(ti)
                if tt is not None:
                    times[k]["train"].append(tt)
    res = {"size": args.size, "device": str(device), "threads": torch.get_num_threads(), "iters": args.iters,
           "all_detections": args.all_detections,
           "torch": torch.__version__, "torchvision": torchvision.__version__, "machine": platform.machine(),
           "params": params}
    for k in models:
        res[k] = {m: statistics.median(v) for m, v in times[k].items() if v}
        res[k]["detections"] = n_dets[k]
    res["ratio_infer"] = res["dir"]["infer"] / res["r50"]["infer"]
    if not args.no_train:
        res["ratio_train"] = res["dir"]["train"] / res["r50"]["train"]
    print(f"input {args.size}x{args.size}, device {device}, {res['threads']} threads, median of {args.iters}")
    print(f"{'model':<28}{'params':>12}{'infer ms':>11}{'detections':>12}{'train step ms':>15}")
    for k, name in (("dir", "DiR Mask R-CNN"), ("r50", "ResNet-50-FPN Mask R-CNN")):
        tr = f"{res[k]['train'] * 1e3:15.1f}" if "train" in res[k] else f"{'-':>15}"
        print(f"{name:<28}{params[k]['total']:>12,}{res[k]['infer'] * 1e3:11.1f}{n_dets[k]:>12}{tr}")
    print(f"ratio DiR / R50: inference {res['ratio_infer']:.3f}x (target <= 1.25x)"
          + (f", training step {res['ratio_train']:.3f}x" if "ratio_train" in res else ""))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
