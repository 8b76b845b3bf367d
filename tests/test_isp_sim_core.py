"""Bayer geometry, demosaicing, forward ISP, unprocessing, noise, JPEG."""
import math

import numpy as np
import pytest
import torch
from conftest import COCO_TINY, need_shared, psnr

from isp_sim.bayer import PATTERNS, mosaic, mosaic_np, pack, pack_np, unpack, unpack_np
from isp_sim.demosaic import DEMOSAICERS, demosaic
from isp_sim.errors import ISPInputError
from isp_sim.isp import process
from isp_sim.jpeg import jpeg_differentiable, jpeg_real
from isp_sim.noise import add_sensor_noise, read_from_shot, shot_from_iso
from isp_sim.unprocess import sample_unprocess_params, unprocess


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pack_unpack_roundtrip_and_numpy_twins(pattern):
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 8, 10, generator=g)
    m = mosaic(rgb, pattern)
    assert m.shape == (2, 1, 8, 10)
    for order in (("R", "Gr", "Gb", "B"), ("B", "Gr", "R", "Gb")):
        p = pack(m, pattern, order)
        assert p.shape == (2, 4, 4, 5)
        assert torch.equal(unpack(p, pattern, order), m)
        pn = pack_np(m[0, 0].numpy(), pattern, order)
        assert np.array_equal(pn, p[0].permute(1, 2, 0).numpy())
        assert np.array_equal(unpack_np(pn, pattern, order), m[0, 0].numpy())
    assert np.array_equal(mosaic_np(rgb[0].permute(1, 2, 0).numpy(), pattern), m[0, 0].numpy())
    # the red site holds red: R channel of the canonical packing equals the red plane at the R positions
    r_plane = pack(mosaic(rgb, pattern), pattern)[:, 0]
    pos = {"RGGB": (0, 0), "BGGR": (1, 1), "GRBG": (0, 1), "GBRG": (1, 0)}[pattern]
    assert torch.equal(r_plane, rgb[:, 0, pos[0]::2, pos[1]::2])


def test_pynet_packing_order_matches_zurich_layout():
    raw = torch.arange(16.0).view(1, 1, 4, 4)
    p = pack(raw, "RGGB", ("B", "Gr", "R", "Gb"))
    assert p[0, :, 0, 0].tolist() == [raw[0, 0, 1, 1], raw[0, 0, 0, 1], raw[0, 0, 0, 0], raw[0, 0, 1, 0]]


def test_bayer_bad_input():
    with pytest.raises(ISPInputError, match="unknown Bayer pattern"):
        mosaic(torch.rand(1, 3, 4, 4), "RGBG")
    with pytest.raises(ISPInputError, match="even"):
        pack(torch.rand(1, 1, 5, 4))
    with pytest.raises(ISPInputError, match=r"\(B, 3, H, W\)"):
        mosaic(torch.rand(1, 4, 4, 4))


def test_demosaic_quality_matches_colour_demosaicing(photos):
    """Malvar and Menon within 0.1 dB of colour-demosaicing on real photos (interior; borders differ only because
    we mirror-pad in CFA phase)."""
    cd = pytest.importorskip("colour_demosaicing", reason="colour-demosaicing (test extra) not installed")
    refs = {"malvar": cd.demosaicing_CFA_Bayer_Malvar2004, "menon": cd.demosaicing_CFA_Bayer_Menon2007,
            "bilinear": cd.demosaicing_CFA_Bayer_bilinear}
    for pattern in ("RGGB", "GBRG"):
        x = photos.double()
        m = mosaic(x, pattern)
        for name, ref in refs.items():
            ours = demosaic(m, pattern, name)
            for i in range(x.shape[0]):
                theirs = torch.from_numpy(ref(m[i, 0].numpy(), pattern)).permute(2, 0, 1)
                gt, o = x[i, :, 4:-4, 4:-4], ours[i, :, 4:-4, 4:-4]
                t = theirs[:, 4:-4, 4:-4]
                assert abs(psnr(o.clamp(0, 1), gt) - psnr(t.clamp(0, 1), gt)) < 0.1, (name, pattern, i)
    # whole-image quality ordering on real photos: menon > malvar > bilinear > superpixel > nearest
    m = mosaic(photos, "RGGB")
    q = {n: psnr(demosaic(m, "RGGB", n).clamp(0, 1), photos) for n in DEMOSAICERS}
    assert q["menon"] > q["malvar"] > q["bilinear"] > q["superpixel"] > q["nearest"]


def test_demosaic_differentiable_and_errors():
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    for n in DEMOSAICERS:
        demosaic(x, "GRBG", n).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ISPInputError, match="unknown demosaic"):
        demosaic(x, "RGGB", "ahd")
    with pytest.raises(ISPInputError, match="float"):
        demosaic(torch.zeros(1, 1, 8, 8, dtype=torch.int32), "RGGB")


def _coco_photo():
    from PIL import Image

    files = sorted((COCO_TINY / "val2017").glob("*.jpg"))[:2]
    out = []
    for f in files:
        im = np.asarray(Image.open(f).convert("RGB"))[:256, :256]
        out.append(torch.from_numpy(im.astype(np.float32) / 255).permute(2, 0, 1))
    return out


def test_unprocess_process_roundtrip_on_real_photos(photos):
    """Without noise, unprocess -> process reproduces the input (>= 40 dB) when no information is removed
    (camera-RGB path); with the mosaic, the loss is demosaicing's alone (Menon: > 27 dB on these crops)."""
    rng = np.random.default_rng(0)
    imgs = list(photos) + (_coco_photo() if COCO_TINY.exists() else [])
    for img in imgs:
        p = [sample_unprocess_params(rng)]
        cam, meta = unprocess(img[None], p, mosaic=False)
        assert psnr(process(cam, meta["wb_gains"], meta["cam_to_rgb"]), img[None]) >= 40
        raw, meta = unprocess(img[None], p, "GBRG")
        assert raw.shape == (1, 1, *img.shape[-2:]) and 0 <= raw.min() and raw.max() <= 1
        assert psnr(process(raw, meta["wb_gains"], meta["cam_to_rgb"], "GBRG"), img[None]) > 27


def test_unprocess_sampling_is_seeded_and_recorded():
    a = sample_unprocess_params(np.random.default_rng(5)).to_dict()
    b = sample_unprocess_params(np.random.default_rng(5)).to_dict()
    c = sample_unprocess_params(np.random.default_rng(6)).to_dict()
    assert a == b and a != c
    assert 1.9 <= a["red_gain"] <= 2.4 and 1.5 <= a["blue_gain"] <= 1.9
    assert math.isclose(sum(a["ccm_weights"]), 1.0, rel_tol=1e-9)


def test_noise_model_follows_iso_and_variance_law():
    assert math.isclose(shot_from_iso(100), 1e-4, rel_tol=1e-9)
    assert math.isclose(shot_from_iso(12800), 0.012, rel_tol=1e-9)
    assert shot_from_iso(800) < shot_from_iso(1600)
    # mean read line: ln read = 2.18 ln shot + 1.2
    assert math.isclose(math.log(read_from_shot(1e-3)), 2.18 * math.log(1e-3) + 1.2, rel_tol=1e-9)
    g = torch.Generator().manual_seed(0)
    shot, read = 4e-3, 1e-4
    for level in (0.1, 0.5):
        x = torch.full((1, 1, 256, 256), level)
        y = add_sensor_noise(x, shot, read, g)
        assert abs(float((y - x).var()) / (shot * level + read) - 1) < 0.05
    # row noise adds per-row offsets; quantisation lands on 10-bit levels
    y = add_sensor_noise(torch.full((1, 1, 64, 64), 0.3), 1e-5, 1e-8, torch.Generator().manual_seed(1), 0.02, 10)
    assert float(y.mean(dim=-1).std()) > 0.01
    assert torch.allclose(y * 1023, torch.round(y * 1023), atol=1e-4)


def test_jpeg_real_codec_and_differentiable_approximation(photos):
    x = photos[0]
    prev = 0
    for q in (10, 40, 90):
        r = jpeg_real(x, q, "4:2:0")
        assert r.shape == x.shape and r.dtype == x.dtype
        assert psnr(r, x) > prev
        prev = psnr(r, x)
        d = jpeg_differentiable(x[None], q, "4:2:0")[0]
        assert psnr(d, r) > 35  # the approximation tracks the real codec
    xg = photos[:2].clone().requires_grad_()
    jpeg_differentiable(xg, [20, 80], "4:4:4").mean().backward()
    assert xg.grad.abs().sum() > 0
    with pytest.raises(ISPInputError, match="quality"):
        jpeg_real(x, 0)
    with pytest.raises(ISPInputError, match="subsampling"):
        jpeg_real(x, 50, "4:1:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(photos):
    from isp_sim.pipeline import CompositeISP

    p = CompositeISP("seen")
    y_cpu, r_cpu = p(photos, [1, 2, 3, 4])
    y_gpu, r_gpu = p(photos.cuda(), [1, 2, 3, 4])
    assert [r.to_dict()["degradations"] for r in r_cpu] == [r.to_dict()["degradations"] for r in r_gpu]
    assert y_gpu.is_cuda
    # the per-pixel noise comes from a CUDA generator, so compare only noise-free images exactly
    for i, r in enumerate(r_cpu):
        if "noise" not in r.names and "jpeg" not in r.names:
            assert torch.allclose(y_cpu[i], y_gpu[i].cpu(), atol=1e-4)
