"""Command line: ``python -m tasks {train,predict,eval,make-data,params} --help``.

* ``train --config configs/tasks/<name>.yaml [--set run.max_steps=50 ...] [--no-resume]`` (DDP: launch with
  ``torchrun --nproc_per_node N -m tasks train ...``);
* ``predict --checkpoint run/model_final.pt --images DIR_OR_FILES... --out detections.json [--ann instances.json]``;
* ``eval --checkpoint ... --images DIR --ann instances.json [--degrade noise,jpeg --severity 3 | --degraded-dir D]``;
* ``make-data --out DIR [--n-train 400 --n-val 100 --seed 0 --size 160]`` (the procedural dataset);
* ``params --config ...`` (parameter counts of the configured detector).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _write_json(path: str, obj) -> None:
    from isp_sim.io import atomic_write_json  # temporary file + os.replace

    atomic_write_json(path, obj)


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.set)
    metrics = train(cfg, resume=not args.no_resume)
    if metrics:
        print(json.dumps({k: v for k, v in metrics.items() if k != "detections"}, indent=1))
    return 0


def _image_list(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"image or folder not found: {p}")
    if not out:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in {items}")
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    from .checkpoint import load_detector
    from .coco_eval import predict

    model = load_detector(args.checkpoint, args.device)
    files = _image_list(args.images)
    if args.ann:
        from .data.coco import _load_coco

        coco = _load_coco(args.ann)
        by_name = {Path(im["file_name"]).name: i for i, im in coco.imgs.items()}
        missing = [f.name for f in files if f.name not in by_name]
        if missing:
            raise ValueError(f"{len(missing)} image(s) are not in {args.ann}, e.g. {missing[:3]}")
        ids = [by_name[f.name] for f in files]
    else:
        ids = list(range(1, len(files) + 1))
    dets = predict(model, files, ids, score_threshold=args.score_thr, batch_size=args.batch_size, progress=True)
    _write_json(args.out, dets)
    if not args.ann:
        _write_json(str(Path(args.out).with_suffix(".images.json")),
                    [{"id": i, "file_name": str(f)} for i, f in zip(ids, files)])
    print(f"{len(dets)} detections on {len(files)} images -> {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_detector
    from .coco_eval import evaluate_coco
    from .data.coco import CocoDetection, DegradationConfig

    model = load_detector(args.checkpoint, args.device)
    deg = DegradationConfig(names=[n for n in (args.degrade or "").split(",") if n], severity=args.severity,
                            composite=args.composite or "", seed=args.seed)
    ds = CocoDetection(args.images, args.ann, degradation=deg, degraded_dir=args.degraded_dir,
                       missing=args.missing, with_masks=False)
    if sorted(ds.label_to_cat_id.values()) != sorted(model.label_to_cat_id.values()):
        raise ValueError(f"{args.ann} has category ids {sorted(ds.label_to_cat_id.values())[:8]}, the checkpoint "
                         f"{args.checkpoint} predicts {sorted(model.label_to_cat_id.values())[:8]}")
    metrics = evaluate_coco(model, ds, batch_size=args.batch_size, max_images=args.max_images or None)
    metrics["missing_images"] = ds.missing
    if args.out:
        _write_json(args.out, metrics)
    print(json.dumps(metrics, indent=1))
    return 0


def cmd_make_data(args: argparse.Namespace) -> int:
    from .data.procedural import make_dataset

    paths = make_dataset(args.out, n_train=args.n_train, n_val=args.n_val, seed=args.seed, image_size=args.size,
                         overwrite=args.overwrite)
    print(json.dumps(paths, indent=1))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from .backbones import build_detector_from_config, parameter_report
    from .config import load_config

    cfg = load_config(args.config, args.set)
    m = cfg.model
    if m.num_classes == 0:
        m.num_classes = args.num_classes
    print(json.dumps(parameter_report(build_detector_from_config(m)), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks", description="DiR / ResNet detectors: train, predict, eval")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train or resume a detector from a YAML config")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    p.add_argument("--no-resume", action="store_true", help="start over even if run.out_dir/last.pt exists")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("predict", help="COCO-style detections for images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--out", required=True, help="output JSON (a list of COCO result dicts)")
    p.add_argument("--ann", help="COCO JSON whose image ids to use (matched by file name)")
    p.add_argument("--score-thr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("eval", help="COCO box/mask AP of a checkpoint on a COCO-format dataset")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--ann", required=True)
    p.add_argument("--degrade", help="comma-separated isp_sim degradation names (on the fly)")
    p.add_argument("--severity", type=int, default=0)
    p.add_argument("--composite", choices=["seen", "unseen"], help="isp_sim CompositeISP split (on the fly)")
    p.add_argument("--degraded-dir", help="read images from this degraded copy instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--missing", choices=["error", "skip"], default="error")
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="write the metrics JSON here")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("make-data", help="generate the procedural instance-segmentation dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_make_data)

    p = sub.add_parser("params", help="parameter counts of a configured detector")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--num-classes", type=int, default=6, help="used when model.num_classes is 0")
    p.set_defaults(fn=cmd_params)

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if os.environ.get("TASKS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
