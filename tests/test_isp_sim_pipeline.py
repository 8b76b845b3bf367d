"""Degradations, pipelines, reproducibility, RAW I/O, the dataset tool and the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import COCO_TINY, REAL_RAW, REPO, need_shared, psnr

from isp_sim.bayer import mosaic
from isp_sim.degradations import DEGRADATIONS, build_degradation, degradation_names
from isp_sim.errors import ISPInputError
from isp_sim.io import camera_render, read_raw, read_zurich_png, write_dng
from isp_sim.isp import render_raw_image
from isp_sim.pipeline import SPLITS, CompositeISP, Pipeline, degrade_np, make_pipeline
from isp_sim.raw import RawImage


@pytest.mark.parametrize("name,variant", [(n, None) for n in degradation_names()]
                         + [("noise", "eld"), ("white_balance", "tint"), ("gamma", "tone")])  # + held-out variants
def test_severity_is_monotone_and_recorded(name, variant, photos):
    """Higher severity -> lower PSNR against the clean input (mean over 4 real photos and 2 seeds)."""
    x = photos[:, :, :96, :96]
    scores = []
    for sev in range(1, 6):
        p = make_pipeline([name], sev, variants={name: variant} if variant else None)
        assert p.degradations[0].variant == (variant or p.degradations[0].VARIANTS[0])
        vals = [psnr(p(x, [s * 10 + i for i in range(4)])[0], x) for s in (1, 2)]
        scores.append(np.mean(vals))
    assert all(a > b for a, b in zip(scores, scores[1:])), (name, scores)
    _, recs = make_pipeline([name], 2)(x[:1], [7])
    (rec,) = recs[0].degradations
    assert rec.name == name and rec.severity == 2 and rec.params
    json.dumps(recs[0].to_dict())  # records are JSON-serialisable


def test_same_seed_same_bits_independent_of_batch(photos):
    p = CompositeISP("seen", max_ops=4)
    seeds = [11, 12, 13, 14]
    y1, r1 = p(photos, seeds)
    y2, _ = p(photos, seeds)
    assert torch.equal(y1, y2)
    single = torch.cat([p(photos[i:i + 1], [s])[0] for i, s in enumerate(seeds)])
    assert torch.equal(single, y1)
    rev, _ = p(photos.flip(0), seeds[::-1])
    assert torch.equal(rev.flip(0), y1)
    y3, _ = p(photos, [21, 22, 23, 24])
    assert not torch.equal(y1, y3)


def test_cpu_chunking_does_not_change_results(photos):
    h, w = photos.shape[-2:]
    whole = CompositeISP("seen", max_ops=4, chunk_pixels=0)
    chunked = CompositeISP("seen", max_ops=4, chunk_pixels=2 * h * w + 1)  # chunks of 2 images
    seeds = [5, 6, 7, 8]
    assert torch.equal(whole(photos, seeds)[0], chunked(photos, seeds)[0])


def test_composite_splits_differ(photos):
    seen = CompositeISP("seen", max_ops=3)
    unseen = CompositeISP("unseen", max_ops=3)
    novel = {(n, v) for n, v, _, held in SPLITS["unseen"] if held}
    for s in range(20):
        rs = seen.plan(s).record.degradations
        ru = unseen.plan(s).record.degradations
        assert 1 <= len(rs) <= 3
        assert not any((d.name, d.variant or None) in novel for d in rs if d.name != "demosaic")
        assert all(d.params["method"] != "nearest" for d in rs if d.name == "demosaic")
        assert any((d.name, d.variant) in novel or (d.name == "demosaic" and d.params["method"] == "nearest")
                   for d in ru)


def test_differentiable_pipeline_passes_gradients(photos):
    x = photos[:2].clone().requires_grad_()
    p = make_pipeline(["noise", "white_balance", "gamma", "jpeg"], 3, differentiable=True)
    y, _ = p(x, [1, 2])
    y.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_numpy_path_matches_torch_path(photos):
    img = (photos[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    p = make_pipeline("noise,jpeg", 3)
    out, rec = degrade_np(img, p, 99)
    t, _ = p(torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None], [99])
    assert np.array_equal(out, (t[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    odd, _ = degrade_np(img[:95, :77], p, 99)  # odd sizes are padded and cropped back
    assert odd.shape == (95, 77, 3)


def test_pipeline_bad_input(photos):
    p = make_pipeline("noise", 2)
    with pytest.raises(ISPInputError, match="NaN"):
        p(torch.full((1, 3, 16, 16), float("nan")), [0])
    with pytest.raises(ISPInputError, match=r"\(B, 3, H, W\)"):
        p(torch.rand(1, 4, 16, 16), [0])
    with pytest.raises(ISPInputError, match="even"):
        p(torch.rand(1, 3, 15, 16), [0])
    with pytest.raises(ISPInputError, match=r"\[0, 1\]"):
        p(torch.rand(1, 3, 16, 16) * 255, [0])
    with pytest.raises(ISPInputError, match="seeds"):
        p(photos, [0])
    with pytest.raises(ISPInputError, match="unknown degradation"):
        make_pipeline("blur", 2)
    with pytest.raises(ISPInputError, match="severity"):
        build_degradation("noise", 6)


def test_learned_isp_stage_plugs_in(photos):
    """Any callable RAW -> sRGB can replace the hand-crafted ISP (PyNET's stage uses this hook)."""
    from isp_sim.demosaic import demosaic

    calls = []

    def toy_isp(raw, pattern):
        calls.append(raw.shape)
        return demosaic(raw, pattern, "bilinear").clamp(0, 1) ** (1 / 2.2)

    p = Pipeline([build_degradation("white_balance", 3), build_degradation("gamma", 3)], isp=toy_isp)
    y, rec = p(photos[:2], [1, 2])
    assert calls and y.shape == photos[:2].shape and torch.isfinite(y).all()
    with pytest.raises(ISPInputError, match="learned ISP"):
        Pipeline([build_degradation("demosaic", 2)], isp=toy_isp)(photos[:1], [0])


# ------------------------------------------------------------------------------------------------ RAW I/O
@need_shared(REAL_RAW)
def test_read_real_raw_frames_and_render():
    r = read_raw(REAL_RAW / "rggb10_1920x1080.raw")
    assert r.shape == (1080, 1920) and r.pattern == "RGGB" and r.white_level == 1023
    assert r.wb_gains == pytest.approx((1.8164, 1.0, 1.25))
    lin = r.linear()
    assert lin.dtype == np.float32 and 0 <= lin.min() and lin.max() <= 1
    rose = read_raw(REAL_RAW / "rggb14_768x512.raw")
    assert rose.black_level == (600.0,) * 4 and rose.xyz_to_cam is not None
    assert rose.extra.get("clipped_overflow", 0) > 0  # saturated sites above the white level were clipped
    grbg = read_raw(REAL_RAW / "grbg8_2592x1536_outdoor1.raw")
    assert grbg.pattern == "GRBG" and grbg.counts.dtype == np.uint8
    with pytest.raises(ISPInputError, match="10-bit range"):
        read_raw(REAL_RAW / "grbg10_344x256.png")  # values above the 10-bit range are reported ...
    small = read_raw(REAL_RAW / "grbg10_344x256.png", on_overflow="clip")  # ... or clipped on request
    assert small.shape == (344, 256) and small.black_level == (25.0,) * 4
    sim = render_raw_image(rose)
    ref = camera_render(rose, "AHD")
    assert sim.shape == ref.shape == (512, 768, 3)
    # same scene, same colour science family: the simulator's render is close to LibRaw's in mean colour
    assert np.abs(sim.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).max() < 40


@pytest.mark.parametrize("pattern", ["GRBG", "GBRG", "BGGR"])
def test_degrade_raw_image_uses_the_frames_bayer_pattern(pattern, photos):
    """``render`` degrades real frames of any pattern (the shared GRBG ones too) with the pipeline's default
    (RGGB) pattern: the clean chain must equal the simulator's own render of that frame."""
    lin = photos[:1] ** 2.2
    counts = (mosaic(lin, pattern)[0, 0].numpy() * 1023).round().astype(np.uint16)
    raw = RawImage(counts, pattern, black_level=0, white_level=1023, bit_depth=10, wb_gains=(1.0, 1.0, 1.0))
    ref = render_raw_image(raw).astype(int)
    y, rec = make_pipeline("clean", 3).degrade_raw_image(raw, 0)
    assert rec.degradations == []
    ours = (y[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(int)
    assert np.abs(ours - ref).max() <= 1
    y, _ = make_pipeline("exposure", 1).degrade_raw_image(raw, 0)  # a degradation keeps the colours (same mean hue)
    assert psnr(y, torch.from_numpy(ref / 255).permute(2, 0, 1)[None]) > 15


def test_dng_roundtrip_through_libraw(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(64, 1023, size=(64, 96)).astype(np.uint16)
    raw = RawImage(counts, "GBRG", black_level=64, white_level=1023, bit_depth=10, wb_gains=(2.0, 1.0, 1.5))
    dng = write_dng(raw, tmp_path / "x.dng")
    back = read_raw(dng)  # the rawpy path
    assert back.pattern == "GBRG" and np.array_equal(back.counts, counts)
    assert back.black_level == (64.0,) * 4 and back.white_level == 1023
    assert back.wb_gains == pytest.approx((2.0, 1.0, 1.5), rel=1e-3)
    img = camera_render(dng, "LINEAR")
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    # LibRaw files carry no bit depth: saturated sites a little above the white level (within the 10 bits it
    # implies) are clipped and counted; values no 10-bit sensor can produce are reported, naming the file
    counts = np.minimum(counts, 1000)
    counts[:2, :3] = 1020
    sat = read_raw(write_dng(RawImage(counts, "RGGB", 0, 1000, 10), tmp_path / "sat.dng"))
    assert sat.extra["clipped_overflow"] == 6 and sat.counts.max() == 1000
    counts[0, 0] = 1500
    with pytest.raises(ISPInputError, match=r"bad.dng: 6 values exceed the white level 1000 .*10-bit range"):
        read_raw(write_dng(RawImage(counts, "RGGB", 0, 1000, 10), tmp_path / "bad.dng"))


def test_zurich_png_values_read_as_stored(tmp_path):
    from PIL import Image

    a16 = np.full((8, 8), 900, dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "0.png")
    a8 = np.full((8, 8), 200, dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / "1.png")
    r16, r8 = read_zurich_png(tmp_path / "0.png"), read_zurich_png(tmp_path / "1.png")
    assert r16.counts.max() == 900 and r8.counts.max() == 200  # never rescaled by the container depth
    assert r16.pattern == "RGGB" and r16.black_level == (64.0,) * 4
    assert r8.linear()[0, 0] == pytest.approx((200 - 64) / (1023 - 64))


def test_raw_bad_input_messages_name_the_file(tmp_path):
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(ISPInputError, match="empty.raw: file is empty"):
        read_raw(empty)
    trunc = tmp_path / "t.raw"
    trunc.write_bytes(b"\0" * 100)
    with pytest.raises(ISPInputError, match=r"t.raw: file is truncated: 100 bytes, expected 128"):
        read_raw(trunc, width=8, height=8, bit_depth=10, pattern="RGGB")
    (tmp_path / "other.json").write_bytes(b"\xff\xfe binary, not a sidecar")  # other JSONs in the folder: ignored
    with pytest.raises(ISPInputError, match="t.raw: file is truncated"):
        read_raw(trunc, width=8, height=8, bit_depth=10, pattern="RGGB")
    (tmp_path / "t.json").write_bytes(b"\xff\xfe")  # the file's own sidecar: reported
    with pytest.raises(ISPInputError, match="t.json: sidecar JSON for t.raw is not valid JSON"):
        read_raw(trunc, width=8, height=8, bit_depth=10, pattern="RGGB")
    (tmp_path / "t.json").unlink()
    with pytest.raises(ISPInputError, match="t.raw: .*unknown Bayer pattern"):
        trunc.write_bytes(b"\0" * 128)
        read_raw(trunc, width=8, height=8, bit_depth=10, pattern="RGBX")
    odd = _write(tmp_path / "odd.raw", 7 * 8 * 2)
    with pytest.raises(ISPInputError, match="odd.raw: Bayer mosaic size 7x8 must be even"):
        read_raw(odd, width=8, height=7, bit_depth=10, pattern="RGGB")
    nan = tmp_path / "n.npy"
    arr = np.zeros((4, 4), np.float32)
    arr[0, 0] = np.nan
    np.save(nan, arr)
    with pytest.raises(ISPInputError, match="n.npy: .*NaN"):
        read_raw(nan, pattern="RGGB", white_level=1.0)
    over = tmp_path / "o.raw"
    np.full((4, 4), 5000, dtype="<u2").tofile(over)
    with pytest.raises(ISPInputError, match="o.raw: 16 values exceed the white level"):
        read_raw(over, width=4, height=4, bit_depth=10, pattern="RGGB")
    # 16-bit values above the white level and no bit depth: the white level (4095) implies 12 bits, not 16
    np.full((4, 4), 65535, dtype="<u2").tofile(over)
    with pytest.raises(ISPInputError, match=r"o.raw: 16 values exceed the white level 4095 .*12-bit range"):
        read_raw(over, width=4, height=4, white_level=4095, pattern="RGGB")
    with pytest.raises(ISPInputError, match="o.raw: .*white level nan must be finite"):
        read_raw(over, width=4, height=4, white_level=float("nan"), pattern="RGGB")
    junk = tmp_path / "x.dng"
    junk.write_bytes(b"not a raw file at all" * 10)
    with pytest.raises(ISPInputError, match="x.dng: LibRaw cannot read"):
        read_raw(junk)
    with pytest.raises(ISPInputError, match="missing.raw: file not found"):
        read_raw(tmp_path / "missing.raw")


def _write(path, nbytes):
    path.write_bytes(b"\0" * nbytes)
    return path


# ------------------------------------------------------------------------------------------------ dataset tool
def _make_folder(tmp_path, photos):
    from PIL import Image

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        im = (photos[i, :, :64, :64].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(im).save(src / ("sub" if i == 2 else "") / f"img{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return src


def test_degrade_tool_resumes_skips_bad_files_and_is_worker_independent(tmp_path, photos):
    from isp_sim.dataset import degrade_dataset

    src = _make_folder(tmp_path, photos)
    s1 = degrade_dataset(src, tmp_path / "o1", ["noise", "jpeg"], [2], seed=3, workers=1, progress=False)
    assert s1["noise-2"] == {"written": 3, "skipped": 0, "failed": 1}
    errors = (tmp_path / "o1" / "noise-2" / "errors.jsonl").read_text()
    assert "broken.jpg" in errors
    lines = (tmp_path / "o1" / "jpeg-2" / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert rec["record"]["degradations"][0]["name"] == "jpeg" and "quality" in rec["record"]["degradations"][0]["params"]
    again = degrade_dataset(src, tmp_path / "o1", ["noise", "jpeg"], [2], seed=3, workers=1, progress=False)
    assert again["noise-2"]["written"] == 0 and again["noise-2"]["skipped"] == 3
    (tmp_path / "o1" / "noise-2" / "sub" / "img2.png").unlink()  # a lost output is redone
    assert degrade_dataset(src, tmp_path / "o1", ["noise"], [2], seed=3, progress=False)["noise-2"]["written"] == 1
    degrade_dataset(src, tmp_path / "o2", ["noise", "jpeg"], [2], seed=3, workers=2, progress=False)
    for rel in ("noise-2/img0.png", "noise-2/sub/img2.png", "jpeg-2/img1.png"):
        assert (tmp_path / "o1" / rel).read_bytes() == (tmp_path / "o2" / rel).read_bytes()


def test_degrade_tool_bad_coco_json_names_file_and_problem(tmp_path):
    from isp_sim.dataset import degrade_dataset, parse_severities

    assert parse_severities("1..3") == [1, 2, 3] and parse_severities("2,5") == [2, 5]
    for bad in ("abc", "1..x", "0", "5..1", "6"):
        with pytest.raises(ISPInputError, match="severity must be within 1..5"):
            parse_severities(bad)

    cases = {"syntax.json": b'{"images": [', "binary.json": b"\xff\xfe\x00 not utf-8",
             "strings.json": b'{"images": ["a.jpg"], "annotations": []}',
             "noname.json": b'{"images": [{"id": 1}], "annotations": []}'}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ISPInputError, match="syntax.json: unreadable COCO JSON"):
        degrade_dataset(tmp_path / "syntax.json", tmp_path / "o", ["noise"], [1], progress=False)
    with pytest.raises(ISPInputError, match="binary.json: unreadable COCO JSON .*utf-8"):
        degrade_dataset(tmp_path / "binary.json", tmp_path / "o", ["noise"], [1], progress=False)
    for name in ("strings.json", "noname.json"):
        with pytest.raises(ISPInputError, match=name + r": images\[0\] is not an image entry with a 'file_name'"):
            degrade_dataset(tmp_path / name, tmp_path / "o", ["noise"], [1], progress=False)


def test_degrade_tool_jpeg_outputs_keep_full_chroma(tmp_path, photos):
    """.jpg inputs keep their names (COCO annotations refer to them), so outputs are JPEG too: written at quality
    100 with 4:4:4 chroma, not libjpeg's default 4:2:0, which would add an unrecorded chroma blur to every image."""
    from PIL import Image, JpegImagePlugin

    from isp_sim.dataset import degrade_dataset

    (tmp_path / "in").mkdir()
    im = (photos[0, :, :64, :64].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(im).save(tmp_path / "in" / "a.jpg", quality=95)
    assert degrade_dataset(tmp_path / "in", tmp_path / "o", ["exposure"], [1], progress=False)["exposure-1"][
        "written"] == 1
    with Image.open(tmp_path / "o" / "exposure-1" / "a.jpg") as out:
        assert out.format == "JPEG" and JpegImagePlugin.get_sampling(out) == 0  # 0 = 4:4:4


@need_shared(COCO_TINY)
def test_degrade_tool_on_coco_copies_annotations(tmp_path):
    import shutil

    from isp_sim.dataset import degrade_dataset

    coco = json.loads((COCO_TINY / "annotations" / "instances_val2017.json").read_text())
    keep = coco["images"][:2]
    small = {**coco, "images": keep, "annotations": [a for a in coco["annotations"]
                                                     if a["image_id"] in {k["id"] for k in keep}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    for k in keep:
        shutil.copy(COCO_TINY / "val2017" / k["file_name"], tmp_path / "val2017")
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.write_text(json.dumps(small))
    s = degrade_dataset(ann, tmp_path / "out", ["composite"], [3], seed=0, progress=False)
    assert s["composite-3"]["written"] == 2
    assert (tmp_path / "out" / "composite-3" / "instances_val2017.json").read_bytes() == ann.read_bytes()
    for k in keep:
        assert (tmp_path / "out" / "composite-3" / k["file_name"]).exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(ISPInputError, match="bad.json: unreadable COCO JSON"):
        degrade_dataset(bad, tmp_path / "x", ["noise"], [1], progress=False)


def test_cli_degrade_and_render(tmp_path, photos):
    src = _make_folder(tmp_path, photos)
    cmd = [sys.executable, "-m", "isp_sim", "degrade", "--input", str(src), "--output", str(tmp_path / "o"),
           "--degradations", "exposure,white_balance", "--severity", "1,5", "--chain", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    # the folder holds one unreadable file: the others are written, the failure is reported, exit code 1
    assert out.returncode == 1, out.stderr
    assert "1 input(s) could not be processed (skipped in 2 condition folder(s))" in out.stderr
    summary = json.loads(out.stdout)
    assert set(summary) == {"exposure+white_balance-1", "exposure+white_balance-5"}
    assert all(v["written"] == 3 and v["failed"] == 1 for v in summary.values())
    bad = subprocess.run([sys.executable, "-m", "isp_sim", "degrade", "--input", str(src), "--output",
                          str(tmp_path / "o"), "--degradations", "blur"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert bad.returncode == 2 and "unknown degradation 'blur'" in bad.stderr
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"\xff\xd8 a JPEG renamed to .json")
    bad = subprocess.run([sys.executable, "-m", "isp_sim", "degrade", "--input", str(broken), "--output",
                          str(tmp_path / "o"), "--degradations", "noise"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert bad.returncode == 2 and "broken.json: unreadable COCO JSON" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    if REAL_RAW.exists():
        png = tmp_path / "render.png"
        r = subprocess.run([sys.executable, "-m", "isp_sim", "render", str(REAL_RAW / "grbg10_344x256.png"),
                            "--clip-overflow", "--out", str(png), "--degradations", "noise,jpeg", "--tile", "96"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr
        assert png.stat().st_size > 1000
        meta = json.loads(png.with_suffix(".json").read_text())
        assert set(meta["records"]) == {"noise", "jpeg"}
