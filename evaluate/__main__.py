"""Command line: ``python -m evaluate {run,compare,real,demo} --help``.

* ``run --model [NAME=]CKPT [--model ...] --data COCO_JSON --degradations default --severities 1..5 --out DIR``:
  the robustness grid (resumable), ``results.json``, ``report.md``, PNG plots and a sample grid;
* ``compare RESULTS... --out DIR``: side-by-side table (Markdown + JSON + PNG) of several runs;
* ``real --model [NAME=]CKPT [--data COCO_JSON] --out DIR``: real-camera renderings (LibRaw / simulator / PyNET);
* ``demo [--quick] [--out DIR]``: the end-to-end main job on the embedded data (see :mod:`evaluate.demo`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _grid_config(a):
    from .grid import GridConfig

    return GridConfig(degradations=a.degradations, severities=a.severities, seed=a.seed, batch_size=a.batch_size,
                      max_images=a.max_images, degraded_root=a.degraded_root or "", missing=a.missing,
                      score_threshold=a.score_thr, sample_images=a.sample_images, threads=a.threads,
                      roundtrip=not a.no_roundtrip)


def _real_config(a):
    from .real_camera import RealCameraConfig

    kw = dict(raw_dir=a.raw_dir or "", max_side=a.max_side, pynet=not a.no_pynet, pynet_checkpoint=a.pynet or "",
              pseudo_gt_score=a.pseudo_gt_score, gt_images=a.gt_images, seed=a.seed)
    if a.libraw:
        kw["libraw"] = [x for x in a.libraw.split(",") if x]
    if a.simulator:
        kw["simulator"] = [x for x in a.simulator.split(",") if x]
    return RealCameraConfig(**kw)


def cmd_run(a) -> int:
    from .common import setup_logging
    from .grid import run_grid
    from .real_camera import run_real_camera

    setup_logging(a.out)
    res = run_grid(a.model, a.data, a.out, _grid_config(a), a.images, restorer=a.restorer, progress=not a.no_progress)
    if a.real:
        run_real_camera(a.model, a.out, _real_config(a), a.data, a.images, progress=not a.no_progress)
    print(json.dumps({t: {"P": m["summary"]["P"].get("bbox_AP"), "mPC": m["summary"]["mPC"].get("bbox_AP"),
                          "rPC": m["summary"]["rPC"].get("bbox_AP")} for t, m in res["models"].items()}, indent=1))
    print(f"wrote {a.out}/results.json and {a.out}/report.md")
    return 0


def cmd_compare(a) -> int:
    from .report import compare

    comp = compare(a.results, a.out, a.key)
    print(open(os.path.join(a.out, "comparison.md"), encoding="utf-8").read())
    print(f"{len(comp['entries'])} models -> {a.out}/comparison.md, comparison.json")
    return 0


def cmd_real(a) -> int:
    from .common import setup_logging
    from .real_camera import run_real_camera

    setup_logging(a.out, "real_camera.log")
    run_real_camera(a.model, a.out, _real_config(a), a.data, a.images, progress=not a.no_progress)
    print(f"wrote {a.out}/real_camera.json and {a.out}/real_camera.md")
    return 0


def cmd_demo(a) -> int:
    from .demo import load_config, run_demo

    cfg = load_config(a.config, quick=a.quick)
    if a.threads is not None:
        cfg.threads = a.threads
    s = run_demo(cfg, a.out, progress=not a.no_progress)
    print(json.dumps({"timing_s": s["timing_s"], "headline": s["headline"]}, indent=1))
    print(f"report: {os.path.join(a.out or cfg.out_dir, 'report.md')}")
    return 0


def _add_real_args(p) -> None:
    p.add_argument("--raw-dir", help="folder of real RAW files (default: ../shared/data/real_raw)")
    p.add_argument("--max-side", type=int, default=512, help="centre-crop RAW frames to this many sensor pixels")
    p.add_argument("--libraw", help="comma-separated LibRaw renderings, e.g. AHD,LINEAR,VNG,AHD+autowb,DCB+fbdd")
    p.add_argument("--simulator", help="comma-separated simulator demosaics, e.g. menon,malvar,bilinear")
    p.add_argument("--pynet", help="PyNET checkpoint for the learned-ISP rendering (default: untrained PyNET)")
    p.add_argument("--no-pynet", action="store_true", help="skip the PyNET rendering")
    p.add_argument("--pseudo-gt-score", type=float, default=0.3,
                   help="score threshold of the pseudo ground truth for the consistency score (default 0.3)")
    p.add_argument("--gt-images", type=int, default=0, help="annotated images to render (0 = all)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="robustness grid of one or more detectors on a COCO-format dataset")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]CKPT",
                   help="detector checkpoint (tasks.checkpoint format); repeat for several models")
    p.add_argument("--data", required=True, metavar="COCO_JSON", help="COCO instances JSON")
    p.add_argument("--images", help="image folder (default: guessed from the JSON's location)")
    p.add_argument("--degradations", nargs="+", default=["default"],
                   help="isp_sim names, name:variant, composite, composite:unseen, or groups "
                        "(default, all, seen, unseen, composites); default: default")
    p.add_argument("--severities", default="1..5", help="e.g. 1..5, 1,3,5 or 3 (default 1..5)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-image degradation seeds")
    p.add_argument("--out", required=True, help="output folder (resumes from its prediction cache)")
    p.add_argument("--degraded-root", help="read <root>/<condition>/ images written by `python -m isp_sim degrade` "
                                           "when present (else degrade on the fly)")
    p.add_argument("--restorer", help="DiR checkpoint (dirnet.pt) for restoration PSNR/SSIM")
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--missing", choices=["error", "skip"], default="error", help="images missing on disk")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--score-thr", type=float, default=0.0, help="drop detections below this score (default 0)")
    p.add_argument("--sample-images", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-roundtrip", action="store_true",
                   help="skip the ISP round-trip reference condition (clean image -> RAW -> simulator ISP)")
    p.add_argument("--real", action="store_true", help="also evaluate real-camera renderings (see `real`)")
    p.add_argument("--no-progress", action="store_true")
    _add_real_args(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("compare", help="side-by-side table of several results.json files")
    p.add_argument("results", nargs="+", help="results.json files or folders containing one")
    p.add_argument("--out", required=True)
    p.add_argument("--key", default="bbox_AP", help="metric (bbox_AP, segm_AP, bbox_AP50, ...)")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("real", help="detectors on real-camera renderings (LibRaw, simulator ISP, PyNET)")
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]CKPT")
    p.add_argument("--data", help="annotated COCO JSON: synthetic RAWs of its images give true AP per rendering")
    p.add_argument("--images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    _add_real_args(p)
    p.set_defaults(fn=cmd_real)

    p = sub.add_parser("demo", help="the end-to-end main job on the embedded data")
    p.add_argument("--quick", action="store_true", help="a first look in a few minutes (configs/evaluate/"
                                                        "demo_quick.yaml)")
    p.add_argument("--config", help="demo YAML (default: the built-in preset = configs/evaluate/demo.yaml)")
    p.add_argument("--out", help="output folder (default: outputs/evaluate_demo[_quick])")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1; see evaluate/README.md)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_demo)

    a = ap.parse_args(argv)
    from isp_sim.errors import ISPInputError
    from tasks.checkpoint import CheckpointError

    from .common import EvaluateError

    try:
        return a.fn(a)
    except (EvaluateError, ISPInputError, CheckpointError, FileNotFoundError, ValueError) as e:
        if os.environ.get("EVALUATE_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
