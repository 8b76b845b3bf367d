"""The learned-ISP stage renders every Bayer pattern in RGGB phase and aligns the output with the input."""
import math

import pytest
import torch
import torch.nn as nn

from isp_sim.bayer import PATTERNS, mosaic, pack, unpack
from isp_sim.demosaic import demosaic_bilinear
from pynet.data import PYNET_ORDER, ZRR_BLACK, ZRR_NORM, ZRR_WHITE
from pynet.infer import psnr_db
from pynet.isp_stage import TO_RGGB, PyNETISP, from_rggb_phase, to_rggb_phase
from pynet.model import PyNET


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def smooth_scene(h=64, w=96):
    """Spatially asymmetric, smooth RGB scene in [0.1, 0.9]: oblique sinusoids of 9-13 px period per channel."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    chans = [0.5 + 0.4 * torch.sin(2 * math.pi * (xx / px + yy / py) + ph)
             for px, py, ph in ((11.0, 23.0, 0.3), (13.0, -9.0, 1.1), (-9.5, 17.0, 2.0))]
    return torch.stack(chans)[None]


class BilinearRGGB(nn.Module):
    """Test double with PyNET's interface that demosaics its packed input assuming RGGB phase, i.e. exactly the
    assumption a network trained on Zurich data makes; output = the linear scene (no colour processing)."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x, level=0):
        lin = (x * ZRR_NORM - ZRR_BLACK) / (ZRR_WHITE - ZRR_BLACK)
        return demosaic_bilinear(unpack(lin, "RGGB", order=PYNET_ORDER), "RGGB") * self.gain


def test_each_pattern_is_flipped_to_rggb():
    scene = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    for p in PATTERNS:
        flipped = torch.flip(scene, TO_RGGB[p]) if TO_RGGB[p] else scene
        assert torch.equal(to_rggb_phase(mosaic(scene, p), p), mosaic(flipped, "RGGB")), p
        assert torch.equal(from_rggb_phase(to_rggb_phase(scene, p), p), scene)
    with pytest.raises(ValueError, match="even"):
        to_rggb_phase(torch.zeros(1, 1, 7, 8), "BGGR")


@pytest.mark.parametrize("pattern", ["BGGR", "GRBG", "GBRG"])
def test_output_equals_rggb_render_of_the_transformed_scene(pattern):
    """With a real (seeded, untrained) PyNET: rendering pattern P equals rendering the flipped scene as RGGB and
    flipping the result back - the network always sees RGGB-phase data."""
    model = PyNET("pytorch", width=0.125, seed=3).eval()
    stage = PyNETISP(model=model)
    scene = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    dims = TO_RGGB[pattern]
    with torch.no_grad():
        out = stage(mosaic(scene, pattern), pattern)
        ref = torch.flip(stage(mosaic(torch.flip(scene, dims), "RGGB"), "RGGB"), dims)
    assert torch.equal(out, ref)
    tiled = PyNETISP(model=model, tile=32, overlap=16, mode="exact")(mosaic(scene, pattern), pattern)
    assert float((tiled - out).abs().max()) < 1e-4


def test_patterns_render_aligned():
    """A renderer that assumes RGGB phase reproduces a smooth scene equally well from every pattern's mosaic
    (measured 27.16-27.19 dB for all four); regrouping the 2x2 sites by colour instead (the previous behaviour)
    misplaces samples by one pixel (measured 13.8-18.5 dB for BGGR, GRBG, GBRG)."""
    stage = PyNETISP(model=BilinearRGGB())
    scene = smooth_scene()
    fixed, regrouped = {}, {}
    with torch.no_grad():
        for p in PATTERNS:
            raw = mosaic(scene, p)
            fixed[p] = psnr_db(stage(raw, p), scene)
            counts = ZRR_BLACK + raw * (ZRR_WHITE - ZRR_BLACK)
            old = stage.model(pack(counts / ZRR_NORM, p, order=PYNET_ORDER))
            regrouped[p] = psnr_db(old, scene)
    assert fixed["RGGB"] > 25 and regrouped["RGGB"] == pytest.approx(fixed["RGGB"])
    for p in ("BGGR", "GRBG", "GBRG"):
        assert abs(fixed[p] - fixed["RGGB"]) < 0.5, (p, fixed)
        assert regrouped[p] < fixed[p] - 6, (p, regrouped, fixed)


def test_cli_infer_aligns_non_rggb_frames(tmp_path, capsys):
    """``python -m pynet infer`` flips a GBRG frame to RGGB phase and back: its image equals the stage's render."""
    import json

    import numpy as np
    from PIL import Image

    from isp_sim.io import read_raw
    from pynet.__main__ import main
    from pynet.train import save_atomic

    model = PyNET("pytorch", width=0.125, seed=4).eval()
    ck = tmp_path / "ck.pth"
    save_atomic({"model": model.state_dict(), "meta": {"variant": "pytorch", "width": 0.125}}, ck)
    counts = (smooth_scene(64, 96)[0].permute(1, 2, 0).numpy() * 1000).astype(np.uint16)
    mos = np.zeros((64, 96), np.uint16)
    for (dy, dx), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), "GBRG"):
        mos[dy::2, dx::2] = counts[dy::2, dx::2, "RGB".index(c)]
    np.save(tmp_path / "f.npy", mos)
    (tmp_path / "f.json").write_text(json.dumps({"bayer_pattern": "GBRG", "black_level": 0, "bit_depth": 10}))
    assert main(["infer", str(tmp_path / "f.npy"), "--checkpoint", str(ck), "--out", str(tmp_path / "o"),
                 "--mode", "whole", "--threads", "1"]) == 0
    got = np.asarray(Image.open(tmp_path / "o" / "f.png"))
    want = PyNETISP(model=model).render(read_raw(tmp_path / "f.npy"))
    assert got.shape == (64, 96, 3) and np.array_equal(got, want)
