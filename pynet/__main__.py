"""Command line: ``python -m pynet train --config CFG``, ``python -m pynet infer RAW... --checkpoint CK --out DIR``,
``python -m pynet convert-tf SRC --out DST`` (the TF release's weights -> a paper-variant checkpoint)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def cmd_train(args) -> int:
    from .train import load_config, train

    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = _parse_value(v)
    if args.out_dir:
        overrides["out_dir"] = args.out_dir
    cfg = load_config(args.config, overrides)
    summary = train(cfg)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_infer(args) -> int:
    import numpy as np
    import torch

    from isp_sim.errors import ISPInputError
    from isp_sim.io import read_raw, write_image

    from .infer import compare_to_whole, infer_tiled
    from .isp_stage import from_rggb_phase, raw_image_to_pynet_input
    from .model import load_pynet

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(args.out)
    dsts: dict[Path, str] = {}
    for path in args.raw:
        dst = out_dir / (Path(path).stem + "." + args.format)
        if dst in dsts:
            raise ValueError(f"{path} and {dsts[dst]} would both be written to {dst}; infer them into separate "
                             "--out folders")
        dsts[dst] = path
    model = load_pynet(args.checkpoint, level=args.level).to(device).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.mode == "exact" and device.type != "cpu":
        raise SystemExit("--mode exact runs on CPU; pass --device cpu")
    failed = []
    for dst, path in dsts.items():
        t0 = time.time()
        try:
            raw = read_raw(path, on_overflow="clip")
        except (ISPInputError, OSError) as e:  # a bad file is reported and skipped; the others are still rendered
            print(f"skipped {path}: {e}", file=sys.stderr)
            failed.append(path)
            continue
        x = raw_image_to_pynet_input(raw).to(device)
        opts = dict(tile=args.tile, overlap=args.overlap, mode=args.mode, bf16=args.bf16,
                    channels_last=args.channels_last, store=args.store, progress=True)
        note = ""
        if args.compare_whole and args.mode != "whole":
            cmp = compare_to_whole(model, x, level=args.level, **opts)
            y = cmp["tiled"]
            note = f", {args.mode} vs whole frame: PSNR {cmp['psnr_db']:.2f} dB, max |diff| {cmp['max_abs_diff']:.2e}"
        else:
            y = infer_tiled(model, x, level=args.level, **opts)
        y = from_rggb_phase(y, raw.pattern)  # undo the flip/rotation that brought the frame to RGGB phase
        img = (y[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        write_image(dst, img)
        print(f"{path} -> {dst} ({img.shape[1]}x{img.shape[0]}, {time.time() - t0:.1f} s{note})")
    if failed:
        print(f"{len(failed)} of {len(args.raw)} RAW file(s) could not be read: {', '.join(map(str, failed))}",
              file=sys.stderr)
        return 1
    return 0


def cmd_convert_tf(args) -> int:
    from .convert import convert_tf_checkpoint
    from .model import load_pynet

    _, report = convert_tf_checkpoint(args.src, args.out, level=args.level)
    model = load_pynet(args.out)  # the written file loads strictly
    cfg = report["config"]
    print(f"{args.src} -> {args.out}: {report['variables']} TF variables -> "
          f"PyNET(variant='paper', width={cfg['width']}, instance_norm={cfg['instance_norm']}, "
          f"instance_norm_level_1={cfg['instance_norm_level_1']}), "
          f"{report['parameters']:,} parameters" +
          (f"; skipped {len(report['skipped'])} optimizer variables" if report["skipped"] else "") +
          f"; reloaded strictly (level {model.level})")
    return 0


CONVERT_EPILOG = """\
Without TensorFlow here, export the checkpoint to .npz where TensorFlow is installed:

    import numpy as np
    import tensorflow as tf
    reader = tf.train.load_checkpoint("models/original/pynet_level_0.ckpt")
    names = reader.get_variable_to_shape_map()
    np.savez("pynet_level_0_tf.npz", **{name: reader.get_tensor(name) for name in names})

then: python -m pynet convert-tf pynet_level_0_tf.npz --out pynet_paper.pth
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pynet", description="PyNET learned ISP (RAW -> sRGB).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="level-wise training (5 -> 0) from a YAML config; resumes automatically",
                       description="Train PyNET level by level from a YAML config (configs/pynet/*.yaml). "
                                   "Re-running with the same out_dir resumes a killed run.")
    t.add_argument("--config", required=True, help="YAML config (e.g. configs/pynet/tiny_cpu.yaml)")
    t.add_argument("--out-dir", help="override out_dir")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set data.root=/data/zrr --set vgg_weights=vgg19.pth")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("infer", help="render RAW files to sRGB with a PyNET checkpoint",
                       description="Full-resolution inference. RAW inputs: anything isp_sim.io.read_raw reads "
                                   "(camera RAW via rawpy, e.g. DNG; Bayer PNG/TIFF such as Zurich RAW-to-RGB; "
                                   "headerless .raw/.bin with a JSON sidecar; .npy). Output: 8-bit sRGB images.")
    i.add_argument("raw", nargs="+", help="RAW files")
    i.add_argument("--checkpoint", required=True,
                   help="authors' pynet_level_0.pth or a checkpoint written by 'python -m pynet train'")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--level", type=int, default=0, help="output level (0 = full resolution)")
    i.add_argument("--mode", default="seamless", choices=["whole", "seamless", "exact"],
                   help="whole frame, blended overlapping tiles (per-tile instance norm), or exact "
                        "layer-streaming tiles that match whole-frame output (default: seamless)")
    i.add_argument("--tile", type=int, default=512, help="tile size in packed pixels (multiple of 16)")
    i.add_argument("--overlap", type=int, default=64, help="tile overlap in packed pixels (multiple of 16)")
    i.add_argument("--store", default="memory", choices=["memory", "disk"],
                   help="exact mode: keep full-frame activations in RAM or in temporary files")
    i.add_argument("--compare-whole", action="store_true",
                   help="also run whole-frame inference and print the PSNR between tiled and whole-frame output "
                        "(needs memory for the whole frame)")
    i.add_argument("--bf16", action="store_true", help="bfloat16 autocast (not for --mode exact)")
    i.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    i.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    i.add_argument("--threads", type=int, help="torch CPU threads")
    i.add_argument("--format", default="png", choices=["png", "jpg", "tif"], help="output image format")
    i.set_defaults(func=cmd_infer)

    c = sub.add_parser("convert-tf", help="convert the TensorFlow release's weights to a paper-variant checkpoint",
                       description="Map the variables of the authors' TensorFlow 1.x PyNET checkpoint "
                                   "(github.com/aiff22/PyNET, e.g. models/original/pynet_level_0.ckpt) onto "
                                   "PyNET(variant='paper') and save a checkpoint that 'infer' and pynet.load_pynet "
                                   "read. SRC: a TF checkpoint prefix or its .index file (needs tensorflow), or a "
                                   ".npz of {tf_variable_name: array}.",
                       epilog=CONVERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("src", help="TF checkpoint prefix / .index file, or .npz export")
    c.add_argument("--out", required=True, help="output checkpoint (.pth)")
    c.add_argument("--level", type=int, default=0, help="default output level stored in the checkpoint")
    c.set_defaults(func=cmd_convert_tf)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
