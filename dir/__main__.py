"""Command line: ``python -m dir train --stage mmi|dfr|align|restore|plain|all --config cfg.yaml`` and
``python -m dir evaluate --config cfg.yaml``. Use ``torchrun --nproc_per_node N -m dir train ...`` for DDP."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dir", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train one stage (resumes from its last checkpoint)")
    tr.add_argument("--stage", required=True, choices=["mmi", "dfr", "align", "restore", "plain", "all"])
    tr.add_argument("--config", required=True, help="YAML config (see configs/dir/)")
    tr.add_argument("--out-dir", help="override run.out_dir")
    tr.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bar")
    ev = sub.add_parser("evaluate", help="restoration PSNR/SSIM and representation check on held-out images")
    ev.add_argument("--config", required=True)
    ev.add_argument("--out-dir", help="override run.out_dir")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--tag", default="eval", help="report sub-directory of out_dir (default: eval)")
    ev.add_argument("--eval-images", help="comma-separated image names to evaluate on instead of the held-out set")
    args = ap.parse_args(argv)

    from .config import load_config
    cfg = load_config(args.config)
    if args.out_dir:
        cfg.run.out_dir = args.out_dir
    if cfg.run.threads > 0:
        import torch
        torch.set_num_threads(cfg.run.threads)
    if args.cmd == "train":
        from .train import train_all, train_stage
        try:
            if args.stage == "all":
                train_all(cfg, progress=not args.no_progress)
            else:
                train_stage(cfg, args.stage, progress=not args.no_progress)
        finally:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        return 0
    from .evaluate import evaluate
    if args.eval_images:
        cfg.data.eval_images = [n.strip() for n in args.eval_images.split(",") if n.strip()]
    report = evaluate(cfg, device=args.device, tag=args.tag)
    from .evaluate import markdown_report
    print(markdown_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
