"""Command line: ``python -m isp_sim {degrade,render,demo} --help``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .errors import ISPInputError


def _to_u8(t) -> np.ndarray:
    return (t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def cmd_degrade(a) -> int:
    from .dataset import degrade_dataset, parse_severities

    names = [n for item in a.degradations for n in item.split(",") if n]
    summary = degrade_dataset(a.input, a.output, names, parse_severities(a.severity), a.seed, a.workers, a.chain,
                              a.image_root, progress=not a.no_progress)
    print(json.dumps(summary, indent=2))
    failed = max((s["failed"] for s in summary.values()), default=0)  # the same inputs fail in every condition
    if failed:
        print(f"{failed} input(s) could not be processed (skipped in {len(summary)} condition folder(s)); see "
              "errors.jsonl in each condition folder", file=sys.stderr)
        return 1  # everything readable was written; the exit code tells scripts that the set is incomplete
    return 0


def cmd_render(a) -> int:
    """Render a real RAW through LibRaw, the simulator's clean ISP and each degradation: one side-by-side PNG."""
    import torch

    from .degradations import degradation_names
    from .io import atomic_write_json, camera_render, read_raw
    from .isp import render_raw_image
    from .pipeline import make_pipeline
    from .sheet import contact_sheet

    kw = {k: getattr(a, k) for k in ("width", "height", "bit_depth", "pattern") if getattr(a, k) is not None}
    raw = read_raw(a.raw_file, on_overflow="clip" if a.clip_overflow else "auto", **kw)
    if a.max_side and max(raw.shape) > a.max_side:  # centre crop keeps sensor detail (and the CFA phase)
        h, w = min(raw.shape[0], a.max_side), min(raw.shape[1], a.max_side)
        raw = raw.crop((raw.shape[0] - h) // 2, (raw.shape[1] - w) // 2, h, w)
    cells = [("LibRaw AHD (camera ref.)", camera_render(raw, "AHD")), ("simulator ISP (clean)", render_raw_image(raw))]
    records = {}
    names = a.degradations.split(",") if a.degradations else degradation_names()
    with torch.no_grad():
        for n in names:
            out, rec = make_pipeline([n], a.severity).degrade_raw_image(raw, a.seed)
            cells.append((f"{n} s{a.severity}", _to_u8(out)))
            records[n] = rec.to_dict()["degradations"]
    out = Path(a.out or Path(a.raw_file).with_suffix(".render.png").name)
    rows = [cells[i:i + 4] for i in range(0, len(cells), 4)]
    contact_sheet(rows, out, tile=a.tile)
    atomic_write_json(out.with_suffix(".json"), {"raw_file": str(a.raw_file), "severity": a.severity,
                                                 "seed": a.seed, "records": records})
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def cmd_demo(a) -> int:
    """Degrade the built-in sample photos at every degradation and severity into a folder + contact sheet."""
    import torch

    from .degradations import degradation_names
    from .io import atomic_write_json, write_image
    from .pipeline import degrade_np, make_pipeline
    from .samples import sample_images
    from .seeding import image_seed
    from .sheet import contact_sheet

    out = Path(a.out)
    imgs = sample_images(max_side=a.max_side)
    rows, manifest = [], []
    with torch.no_grad():
        for name, img in imgs.items():
            row = [(f"{name} (input)", img)]
            write_image(out / "clean" / f"{name}.png", img)
            for deg in degradation_names() + ["composite"]:
                for sev in (1, 3, 5):
                    seed = image_seed(a.seed, f"{deg}/{sev}/{name}")
                    y, rec = degrade_np(img, make_pipeline([deg], sev), seed)
                    write_image(out / f"{deg}-{sev}" / f"{name}.png", y)
                    manifest.append({"image": name, "condition": f"{deg}-{sev}", **rec.to_dict()})
                    if sev in (1, 5) and len(row) < 12:
                        row.append((f"{deg} s{sev}", y))
            rows.append(row)
    atomic_write_json(out / "manifest.json", manifest)
    sheet = contact_sheet(rows, out / "contact_sheet.png", tile=a.tile)
    print(f"wrote {len(manifest)} degraded images under {out} and {sheet}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m isp_sim", description="Camera-ISP degradation simulator")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("degrade", help="write degraded copies of an image folder or COCO dataset")
    d.add_argument("--input", required=True, help="image folder or COCO annotation JSON")
    d.add_argument("--output", required=True, help="output folder")
    d.add_argument("--degradations", nargs="+", required=True,
                   help="names (noise demosaic exposure gamma white_balance jpeg composite composite:unseen clean)")
    d.add_argument("--severity", default="3", help="3, 1,3,5 or 1..5")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workers", type=int, default=1)
    d.add_argument("--chain", action="store_true", help="apply the degradations together instead of one by one")
    d.add_argument("--image-root", help="image folder of a COCO JSON (guessed when omitted)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=cmd_degrade)
    r = sub.add_parser("render", help="render a real RAW through LibRaw, the simulator and each degradation")
    r.add_argument("raw_file")
    r.add_argument("--out", help="output PNG (default: <name>.render.png in the current folder)")
    r.add_argument("--severity", type=int, default=3)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--degradations", help="comma-separated subset (default: all)")
    r.add_argument("--max-side", type=int, default=1024, help="centre-crop larger frames to this size (0: no crop)")
    r.add_argument("--tile", type=int, default=320)
    r.add_argument("--clip-overflow", action="store_true", help="clip counts above the white level")
    for k, t in (("width", int), ("height", int), ("bit-depth", int), ("pattern", str)):
        r.add_argument(f"--{k}", type=t, help="for headerless RAW without a JSON sidecar")
    r.set_defaults(fn=cmd_render)
    m = sub.add_parser("demo", help="degrade the built-in sample photos and write a contact sheet")
    m.add_argument("--out", default="outputs/isp_sim_demo")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--max-side", type=int, default=384)
    m.add_argument("--tile", type=int, default=160)
    m.set_defaults(fn=cmd_demo)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except ISPInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
