"""PyNET speed benchmark: parameters, FLOPs, forward time and peak memory for a 224x224x4 patch and a tiled frame.

    python benchmarks/pynet_bench.py                 # CUDA if present, else CPU; full 12 MP frame (slow on CPU)
    python benchmarks/pynet_bench.py --device cpu --threads 16 --repeats 1 --progress   # measured 12 MP on CPU
    python benchmarks/pynet_bench.py --quick         # CPU-friendly: 1 patch run, small tiled frame + extrapolation
    python benchmarks/pynet_bench.py --json out.json --variant paper --mode exact

FLOPs are counted with ``torch.utils.flop_counter`` on the meta device (no computation); MACs = FLOPs / 2 (every
counted op is a convolution). Peak memory: CUDA ``max_memory_allocated``; CPU the process's peak resident set
(``VmHWM``, reset before each measurement via ``/proc/self/clear_refs``) minus the resident set before the call.
The 12 MP frame is the Huawei P20 full frame of the Zurich RAW-to-RGB data: 2976x3968 RAW = 1488x1984x4 packed.
With ``--quick`` the tiled run uses a smaller frame and the 12 MP time is extrapolated linearly in the number of
tiles (marked as an estimate in the output). Without ``--quick``/``--frame`` the whole 12 MP frame is run, tiled,
on any device (measured, not extrapolated); before it starts, the run time predicted from the patch throughput is
printed (``predicted_seconds``: tiles x tile area / patch area x patch time), and ``--progress`` shows the tiles.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pynet.infer import infer_tiled, tile_starts  # noqa: E402
from pynet.model import PyNET, count_parameters  # noqa: E402

FULL_FRAME_PACKED = (1488, 1984)


def count_flops(variant: str, hw=(224, 224), level: int = 0, width: float = 1.0) -> int:
    """Forward FLOPs (2 x MACs) of one (1, 4, H, W) input, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = PyNET(variant, width=width)
        x = torch.empty(1, 4, *hw)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x, level=level)
    return int(fc.get_total_flops())


def _rss_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``) so that RSS baselines are meaningful."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn, device: torch.device, repeats: int = 1, warmup: int = 1) -> dict:
    """Median wall time (s) of ``fn()`` and its peak memory (MiB) above the level before the call (warm-up runs
    included in the peak)."""
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _release_freed_memory()
        base = _rss_kib("VmRSS")
        exact_peak = _reset_peak()
    for _ in range(warmup):
        fn()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_abs = torch.cuda.max_memory_allocated() / 2**20
        peak = peak_abs - base / 2**20
        kind = "cuda max_memory_allocated above the allocation before the call"
    else:
        peak_abs = _rss_kib("VmHWM") / 1024
        peak = peak_abs - base / 1024
        kind = "peak RSS above the RSS before the call" if exact_peak else "ru_maxrss (process-wide peak) above RSS"
    times.sort()
    return {"seconds": times[len(times) // 2], "all_seconds": [round(t, 4) for t in times],
            "peak_mem_mib": round(peak, 1), "peak_total_mib": round(peak_abs, 1), "memory_measure": kind}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="pytorch", choices=["pytorch", "paper"])
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = published model)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="small tiled frame + extrapolation (CPU friendly)")
    p.add_argument("--frame", type=int, nargs=2, metavar=("H", "W"), help="packed frame size for the tiled run")
    p.add_argument("--tile", type=int, default=512, help="packed tile size")
    p.add_argument("--overlap", type=int, default=64, help="packed tile overlap")
    p.add_argument("--mode", default="seamless", choices=["seamless", "exact"])
    p.add_argument("--store", default="memory", choices=["memory", "disk"],
                   help="exact mode: full-frame activations in RAM or in temporary files")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--skip-frame", action="store_true", help="only the 224x224 patch")
    p.add_argument("--progress", action="store_true", help="progress bar over the tiles of the frame run")
    p.add_argument("--json", help="write the results to this JSON file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if a.quick:
        a.repeats = 1
        if not a.frame:
            a.frame = [256, 384]
        if a.tile == 512:
            a.tile, a.overlap = 128, 32
    frame = tuple(a.frame) if a.frame else FULL_FRAME_PACKED

    res: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cpu": platform.processor() or platform.machine(), "variant": a.variant, "width": a.width,
                 "bf16": a.bf16, "channels_last": a.channels_last}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    model = PyNET(a.variant, width=a.width, seed=0).eval().to(device)
    res["parameters"] = count_parameters(model)
    flops = count_flops(a.variant, (224, 224), 0, a.width)
    res["patch_224"] = {"input": [1, 4, 224, 224], "output": [1, 3, 448, 448], "gflops": round(flops / 1e9, 2),
                        "gmacs": round(flops / 2e9, 2)}
    res["gmacs_per_level_224"] = {lv: round(count_flops(a.variant, (224, 224), lv, a.width) / 2e9, 2)
                                  for lv in range(5, -1, -1)}
    x = torch.rand(1, 4, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def patch():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.bf16):
            model(x, level=0)

    r = measure(patch, device, repeats=a.repeats, warmup=1)
    r["gflop_per_s"] = round(flops / 1e9 / r["seconds"], 1)
    res["patch_224"].update(r)
    print(f"[{device}] PyNET-{a.variant} w={a.width}: {res['parameters']:,} params, "
          f"{res['patch_224']['gmacs']} GMAC per 224x224x4 patch; forward {r['seconds']:.3f} s, "
          f"peak +{r['peak_mem_mib']} MiB", flush=True)

    if not a.skip_frame:
        g = torch.Generator().manual_seed(1)
        xf = torch.rand(1, 4, *frame, generator=g).to(device if a.mode != "exact" else "cpu")
        if a.mode == "exact" and device.type != "cpu":
            model = model.to("cpu")

        def tiled():
            infer_tiled(model, xf, level=0, tile=a.tile, overlap=a.overlap, mode=a.mode, bf16=a.bf16,
                        channels_last=a.channels_last, store=a.store, progress=a.progress)

        n_tiles = None if a.mode == "exact" else \
            len(tile_starts(frame[0], a.tile, a.overlap)) * len(tile_starts(frame[1], a.tile, a.overlap))
        # compute scales with the area run through the network: tiles x tile area (exact mode: the frame once)
        area = frame[0] * frame[1] if a.mode == "exact" else \
            n_tiles * min(a.tile, frame[0]) * min(a.tile, frame[1])
        predicted = res["patch_224"]["seconds"] * area / (224 * 224)
        print(f"[{device}] tiled {2 * frame[0]}x{2 * frame[1]} RAW frame: predicted ~{predicted:.0f} s from the patch "
              f"throughput ({area / (224 * 224):.1f} patch areas)", flush=True)
        r = measure(tiled, device if a.mode != "exact" else torch.device("cpu"), repeats=1, warmup=0)
        out = {"packed_frame": list(frame), "raw_frame": [2 * frame[0], 2 * frame[1]],
               "megapixels": round(4 * frame[0] * frame[1] / 1e6, 2), "tile": a.tile, "overlap": a.overlap,
               "mode": a.mode, "store": a.store if a.mode == "exact" else None, "tiles": n_tiles,
               "predicted_seconds": round(predicted, 1), "measured_full_frame": frame == FULL_FRAME_PACKED, **r}
        if frame != FULL_FRAME_PACKED and a.mode != "exact":
            full_tiles = len(tile_starts(FULL_FRAME_PACKED[0], a.tile, a.overlap)) * \
                len(tile_starts(FULL_FRAME_PACKED[1], a.tile, a.overlap))
            out["estimated_12mp_seconds"] = round(r["seconds"] / n_tiles * full_tiles, 1)
            out["estimated_12mp_tiles"] = full_tiles
        res["frame_tiled"] = out
        est = f" (12 MP estimate {out['estimated_12mp_seconds']} s)" if "estimated_12mp_seconds" in out else ""
        how = (f"per-layer tiles of {a.tile} [exact, {a.store} store]" if a.mode == "exact"
               else f"{n_tiles} tiles of {a.tile} (+{a.overlap}) [{a.mode}]")
        print(f"[{device}] tiled {out['raw_frame'][0]}x{out['raw_frame'][1]} RAW ({out['megapixels']} MP), "
              f"{how}: {r['seconds']:.2f} s, peak +{r['peak_mem_mib']} MiB{est}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
