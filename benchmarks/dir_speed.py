"""Latency of DiRNet.forward_features / restore and of the plain encoder-decoder.

    python benchmarks/dir_speed.py --config configs/dir/small.yaml --size 256 --batch 1 --repeats 5 [--device cuda]

Uses the trained weights in the config's out_dir when present (``dirnet.pt``), else a freshly initialised model
of the same architecture (latency does not depend on the weights). Prints a JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dir.checkpoint import load_dirnet
from dir.config import load_config
from dir.model import PlainEncDec, build_dirnet, count_parameters, init_weights


def _time(fn, x, repeats: int, device: torch.device) -> list[float]:
    out = []
    with torch.no_grad():
        fn(x)  # warm-up
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/dir/small.yaml")
    ap.add_argument("--size", type=int, default=256, help="square image side in pixels")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    dev = torch.device(a.device)
    path = Path(cfg.run.out_dir) / "dirnet.pt"
    net = (load_dirnet(path) if path.is_file() else build_dirnet(cfg)).to(dev).eval()
    plain = init_weights(PlainEncDec(cfg.model), 0).to(dev).eval()
    x = torch.rand(a.batch, 3, a.size, a.size, generator=torch.Generator().manual_seed(0)).to(dev)
    for name, fn, params in (("dir.forward_features", net.forward_features, count_parameters(net)),
                             ("dir.restore", net.restore, count_parameters(net)),
                             ("plain.restore", plain.restore, count_parameters(plain))):
        ts = _time(fn, x, a.repeats, dev)
        print(json.dumps({"what": name, "size": a.size, "batch": a.batch, "device": str(dev),
                          "median_ms": round(1000 * statistics.median(ts), 2), "params": params}))


if __name__ == "__main__":
    main()
