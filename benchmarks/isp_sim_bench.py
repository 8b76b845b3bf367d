"""Throughput of isp_sim's stages and full chain (Mpix/s), each beside a reference measured in the same run.

References: colour-demosaicing (Malvar 2004, Menon 2007), LibRaw via rawpy (demosaic + render of the same frame),
Pillow (JPEG), and a reference chain built from them (numpy noise + colour-demosaicing Menon + numpy colour/gamma +
Pillow JPEG). Run: ``python benchmarks/isp_sim_bench.py [--size 1080x1920] [--batch 4] [--repeat 3]``.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="1080x1920", help="HxW of the test frame")
    ap.add_argument("--batch", type=int, default=4, help="images per batched torch call")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.lower().split("x"))
    if a.threads:
        torch.set_num_threads(a.threads)

    import colour_demosaicing as cd
    import rawpy
    from PIL import Image
    from skimage import data

    from isp_sim.bayer import mosaic
    from isp_sim.demosaic import demosaic_malvar, demosaic_menon
    from isp_sim.io import write_dng
    from isp_sim.isp import process
    from isp_sim.pipeline import make_pipeline
    from isp_sim.raw import RawImage

    img = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC)).astype(np.float32) / 255
    x1 = torch.from_numpy(img).permute(2, 0, 1)[None]
    xb = x1.repeat(a.batch, 1, 1, 1)
    cfa = mosaic(x1, "RGGB")[0, 0].numpy().astype(np.float64)
    rawb = mosaic(xb, "RGGB")
    mp1, mpb = h * w / 1e6, a.batch * h * w / 1e6
    wb = torch.tensor([[2.0, 1.0, 1.6]] * a.batch)
    ccm = torch.eye(3).expand(a.batch, 3, 3)
    rows = []

    def row(stage, ours_t, ours_mp, ref_name, ref_t, ref_mp):
        o, r = ours_mp / ours_t, ref_mp / ref_t
        rows.append((stage, o, ref_name, r, o / r))

    with torch.no_grad():
        row("demosaic Malvar", timeit(lambda: demosaic_malvar(rawb), a.repeat), mpb, "colour-demosaicing",
            timeit(lambda: cd.demosaicing_CFA_Bayer_Malvar2004(cfa, "RGGB"), a.repeat), mp1)
        row("demosaic Menon", timeit(lambda: demosaic_menon(rawb), a.repeat), mpb, "colour-demosaicing",
            timeit(lambda: cd.demosaicing_CFA_Bayer_Menon2007(cfa, "RGGB"), a.repeat), mp1)
        counts = (cfa * 1023).round().astype(np.uint16)
        with tempfile.TemporaryDirectory() as d:
            dng = write_dng(RawImage(counts, "RGGB", 0, 1023, 10, wb_gains=(2.0, 1.0, 1.6)), Path(d) / "f.dng")

            def libraw(algo):
                with rawpy.imread(str(dng)) as r:
                    return r.postprocess(demosaic_algorithm=rawpy.DemosaicAlgorithm[algo], use_camera_wb=True,
                                         no_auto_bright=True, output_bps=8)

            t_ahd = timeit(lambda: libraw("AHD"), a.repeat)
            t_lin = timeit(lambda: libraw("LINEAR"), a.repeat)
        ours_isp = timeit(lambda: process(rawb, wb, ccm, "RGGB", "menon", bits=8), a.repeat)
        row("ISP render (Menon)", ours_isp, mpb, "LibRaw AHD", t_ahd, mp1)
        ours_isp_m = timeit(lambda: process(rawb, wb, ccm, "RGGB", "malvar", bits=8), a.repeat)
        row("ISP render (Malvar)", ours_isp_m, mpb, "LibRaw LINEAR", t_lin, mp1)

        u8 = (img * 255).astype(np.uint8)

        def pil_jpeg():
            buf = io.BytesIO()
            Image.fromarray(u8).save(buf, format="JPEG", quality=30)
            buf.seek(0)
            return np.asarray(Image.open(buf))

        from isp_sim.jpeg import jpeg_differentiable, jpeg_real

        row("JPEG real codec", timeit(lambda: jpeg_real(x1[0], 30), a.repeat), mp1, "Pillow",
            timeit(pil_jpeg, a.repeat), mp1)
        row("JPEG differentiable", timeit(lambda: jpeg_differentiable(xb, 30), a.repeat), mpb, "Pillow",
            timeit(pil_jpeg, a.repeat), mp1)

        chain = make_pipeline(["noise", "white_balance", "jpeg"], 3)
        seeds = list(range(a.batch))
        t_ours = timeit(lambda: chain(xb, seeds), a.repeat)

        def ref_chain():
            rng = np.random.default_rng(0)
            lin = (img.astype(np.float64)) ** 2.2
            raw = cd.mosaicing_CFA_Bayer(lin, "RGGB") / 2.0
            raw = np.clip(raw + rng.normal(size=raw.shape) * np.sqrt(raw * 4e-3 + 1e-4), 0, 1)
            rgb = cd.demosaicing_CFA_Bayer_Menon2007(raw * 2.0, "RGGB")
            out = np.clip(rgb @ np.eye(3).T, 0, 1) ** (1 / 2.2)
            buf = io.BytesIO()
            Image.fromarray((out * 255).astype(np.uint8)).save(buf, format="JPEG", quality=30)
            buf.seek(0)
            return np.asarray(Image.open(buf))

        row("full chain (unprocess+noise+ISP+JPEG)", t_ours, mpb, "colour-demosaicing+numpy+Pillow",
            timeit(ref_chain, a.repeat), mp1)

        if torch.cuda.is_available():
            xg = xb.cuda()
            rg = rawb.cuda()
            row("demosaic Menon CUDA", timeit(lambda: demosaic_menon(rg), a.repeat), mpb, "colour-demosaicing",
                timeit(lambda: cd.demosaicing_CFA_Bayer_Menon2007(cfa, "RGGB"), a.repeat), mp1)
            chain_nojpeg = make_pipeline(["noise", "white_balance"], 3)
            row("chain w/o JPEG CUDA", timeit(lambda: chain_nojpeg(xg, seeds), a.repeat), mpb,
                "colour-demosaicing+numpy+Pillow", timeit(ref_chain, a.repeat), mp1)

    print(f"frame {h}x{w}, torch batch {a.batch}, threads {torch.get_num_threads()}, best of {a.repeat}")
    print(f"| stage | ours Mpix/s | reference | ref Mpix/s | ratio |\n|---|---|---|---|---|")
    for stage, o, ref, r, ratio in rows:
        print(f"| {stage} | {o:.2f} | {ref} | {r:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
