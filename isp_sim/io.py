"""Reading RAW frames and images, writing outputs atomically, and the LibRaw camera reference.

Supported RAW inputs:
- camera RAW files that LibRaw reads (DNG, NEF, CR2, ARW, RAF, ...) through rawpy;
- headerless Bayer dumps (``.raw``/``.bin``) given width/height/bit depth/pattern, either as arguments or in a
  JSON sidecar (``<name>.json``, or a JSON in the same folder whose ``file``/``files`` names the dump);
- single-channel Bayer PNG/TIFF, e.g. the Zurich RAW-to-RGB dataset (RGGB, 10-bit counts, black level 64).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .bayer import validate_pattern
from .errors import ISPInputError
from .raw import RawImage

RAWPY_SUFFIXES = {".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
                  ".pef", ".srw", ".3fr", ".iiq", ".erf", ".mef", ".mos", ".x3f", ".kdc", ".dcr"}
HEADERLESS_SUFFIXES = {".raw", ".bin", ".bayer"}
BAYER_IMAGE_SUFFIXES = {".png", ".tif", ".tiff"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

ZURICH_BLACK_LEVEL = 64
ZURICH_WHITE_LEVEL = 1023


# ----------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: Optional[str] = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` (atomic on POSIX).

    On error the temporary file is removed and any existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o)}")


# ----------------------------------------------------------------------------------------------- images
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit sRGB image as uint8 (H, W, 3); grayscale is expanded, alpha dropped."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ISPInputError(f"{path}: cannot decode image ({e})") from e
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ISPInputError(f"{path}: image too small ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def write_image(path: str | os.PathLike, image: np.ndarray, quality: int = 95,
                subsampling: Optional[str] = None) -> None:
    """Write uint8 (H, W, 3) atomically; the format follows the suffix (JPEG/WebP at ``quality``).

    ``subsampling``: JPEG chroma subsampling ``"4:4:4"``, ``"4:2:2"`` or ``"4:2:0"``; None keeps the encoder's
    default (4:2:0 in libjpeg, whatever the quality).
    """
    from PIL import Image

    path = Path(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ISPInputError(f"{path}: write_image expects uint8 (H, W, 3), got {image.dtype} {image.shape}")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
           ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ISPInputError(f"{path}: unsupported output image suffix {path.suffix!r}")
    kw = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    if subsampling is not None and fmt == "JPEG":
        codes = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
        if subsampling not in codes:
            raise ISPInputError(f"{path}: JPEG chroma subsampling must be one of {list(codes)}, got {subsampling!r}")
        kw["subsampling"] = codes[subsampling]
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt, **kw)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ISPInputError(f"{path}: file not found")
    if path.is_dir():
        raise ISPInputError(f"{path}: is a directory, expected a file")
    if path.stat().st_size == 0:
        raise ISPInputError(f"{path}: file is empty")


# ----------------------------------------------------------------------------------------------- RAW
def find_sidecar(path: Path) -> Optional[dict]:
    """Metadata JSON for a headerless/PNG Bayer file: ``<stem>.json`` or a JSON naming it in its folder."""
    direct = path.with_suffix(".json")
    candidates = [direct] if direct.exists() else []
    candidates += sorted(p for p in path.parent.glob("*.json") if p != direct)
    for c in candidates:
        try:
            meta = json.loads(c.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON
            if c == direct:
                raise ISPInputError(f"{c}: sidecar JSON for {path.name} is not valid JSON")
            continue
        if not isinstance(meta, dict):
            continue
        names = [meta.get("file")] + list(meta.get("files") or [])
        if c == direct or path.name in names:
            return meta
    return None


def read_raw(
    path: str | os.PathLike,
    *,
    width: Optional[int] = None,
    height: Optional[int] = None,
    bit_depth: Optional[int] = None,
    pattern: Optional[str] = None,
    black_level: Optional[Sequence[float] | float] = None,
    white_level: Optional[float] = None,
    dtype: Optional[str] = None,
    on_overflow: str = "auto",
) -> RawImage:
    """Read a RAW frame into a :class:`RawImage` (see the module docstring for formats).

    Explicit keyword arguments override sidecar metadata. ``on_overflow`` decides what happens to counts above
    the white level: ``"auto"`` (default) clips those that fit the bit depth (sensor saturation, counted in
    ``extra["clipped_overflow"]``) and raises, naming the file, for values the bit depth cannot hold (wrong
    metadata); ``"error"`` raises for any; ``"clip"`` clips all. Without a declared bit depth (LibRaw files,
    headerless dumps given only a white level) it is the smallest that holds the white level (4095 -> 12 bits).
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    overrides = dict(width=width, height=height, bit_depth=bit_depth, pattern=pattern, black_level=black_level,
                     white_level=white_level, dtype=dtype)
    if suffix in HEADERLESS_SUFFIXES or suffix == ".npy":
        raw = _read_headerless(path, overrides)
    elif suffix in BAYER_IMAGE_SUFFIXES:
        raw = _read_bayer_image(path, overrides)
    else:
        raw = _read_rawpy(path, overrides)
    return _handle_overflow(raw, on_overflow)


def _merge_meta(path: Path, overrides: dict) -> dict:
    meta = dict(find_sidecar(path) or {})
    if "white_balance_gains_rggb" in meta and "wb_gains" not in meta:
        meta["wb_gains"] = meta["white_balance_gains_rggb"]
    if "black_level_approx" in meta and "black_level" not in meta:
        meta["black_level"] = meta["black_level_approx"]
    if "bayer_pattern" in meta and "pattern" not in meta:
        meta["pattern"] = meta["bayer_pattern"]
    if "color_matrix_xyz_to_cam" in meta and "xyz_to_cam" not in meta:
        meta["xyz_to_cam"] = meta["color_matrix_xyz_to_cam"]
    for k, v in overrides.items():
        if v is not None:
            meta[k] = v
    return meta


def _raw_from_meta(path: Path, counts: np.ndarray, meta: dict, default_pattern=None) -> RawImage:
    if "pattern" not in meta and default_pattern is None:
        raise ISPInputError(f"{path}: Bayer pattern unknown: pass pattern= or add a JSON sidecar with 'bayer_pattern'")
    bit_depth = meta.get("bit_depth")
    white = meta.get("white_level", (2 ** int(bit_depth) - 1) if bit_depth else None)
    if white is None:
        raise ISPInputError(f"{path}: white level unknown: pass white_level= or bit_depth=")
    try:
        return RawImage(counts=counts, pattern=meta.get("pattern", default_pattern),
                        black_level=meta.get("black_level", 0), white_level=white,
                        bit_depth=int(bit_depth) if bit_depth else None, wb_gains=meta.get("wb_gains"),
                        xyz_to_cam=np.asarray(meta["xyz_to_cam"]) if meta.get("xyz_to_cam") is not None else None,
                        iso=meta.get("iso"), exposure_time=meta.get("exposure_time"), path=str(path))
    except ISPInputError as e:
        msg = str(e)
        raise ISPInputError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _read_headerless(path: Path, overrides: dict) -> RawImage:
    meta = _merge_meta(path, overrides)
    if path.suffix.lower() == ".npy":
        try:
            counts = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ISPInputError(f"{path}: cannot read .npy Bayer array ({e})") from e
        return _raw_from_meta(path, counts, meta)
    w, h = meta.get("width"), meta.get("height")
    if not w or not h:
        raise ISPInputError(f"{path}: headerless RAW needs width and height (arguments or a JSON sidecar)")
    w, h = int(w), int(h)
    dt = str(meta.get("dtype") or "")
    bit_depth = meta.get("bit_depth")
    if "8" in dt.split()[0:1] or dt.startswith("uint8") or (not dt and bit_depth and int(bit_depth) <= 8):
        np_dtype = np.dtype(np.uint8)
    else:
        np_dtype = np.dtype(">u2" if "big" in dt else "<u2")
    expected = w * h * np_dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "larger than expected"
        raise ISPInputError(f"{path}: file is {state}: {size} bytes, expected {expected} for {w}x{h} {np_dtype}")
    counts = np.fromfile(path, dtype=np_dtype).reshape(h, w)
    if bit_depth is None and meta.get("white_level") is None:  # the container's range is all we know
        meta["bit_depth"] = 8 * np_dtype.itemsize
    return _raw_from_meta(path, counts, meta)


def read_zurich_png(path: str | os.PathLike) -> RawImage:
    """A Zurich RAW-to-RGB Bayer PNG: RGGB, 10-bit counts stored as-is (8- or 16-bit PNG), black level 64."""
    return read_raw(path, pattern="RGGB", bit_depth=10, black_level=ZURICH_BLACK_LEVEL, white_level=ZURICH_WHITE_LEVEL,
                    on_overflow="clip")


def read_bayer_png_counts(path: Path) -> np.ndarray:
    """Stored integer values of a single-channel 8/16-bit PNG or TIFF, never rescaled by the container depth."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                im.load()
                arr = np.array(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ISPInputError(f"{path}: cannot decode Bayer image ({e})") from e
    if arr.ndim != 2:
        raise ISPInputError(f"{path}: a Bayer PNG/TIFF must have one channel, got shape {arr.shape}")
    return arr


def _read_bayer_image(path: Path, overrides: dict) -> RawImage:
    meta = _merge_meta(path, overrides)
    counts = read_bayer_png_counts(path)
    if "bit_depth" not in meta and "white_level" not in meta:  # Zurich RAW-to-RGB conventions
        meta.setdefault("bit_depth", 10)
        meta.setdefault("black_level", ZURICH_BLACK_LEVEL)
    return _raw_from_meta(path, counts, meta, default_pattern="RGGB")


def _read_rawpy(path: Path, overrides: dict) -> RawImage:
    import rawpy

    try:
        with rawpy.imread(str(path)) as r:
            counts = np.array(r.raw_image_visible, copy=True)
            if r.raw_pattern is None or np.asarray(r.raw_pattern).shape != (2, 2):
                raise ISPInputError(f"{path}: not a 2x2 Bayer sensor (LibRaw pattern {r.raw_pattern}); "
                                    "X-Trans/Foveon/linear DNGs are not supported")
            desc = r.color_desc.decode()
            pat = "".join(desc[i] for i in np.asarray(r.raw_pattern).ravel())
            pat = pat.replace("g", "G")  # LibRaw may call the second green 'G' or use index 3
            black = list(r.black_level_per_channel)
            black_tile = [black[i] for i in np.asarray(r.raw_pattern).ravel()]
            # raw_image_visible may start at an odd offset: the pattern above is for the visible area's origin
            wb = np.asarray(r.camera_whitebalance, dtype=np.float64)
            wb_gains = None
            if np.all(np.isfinite(wb[:3])) and wb[0] > 0 and wb[1] > 0 and wb[2] > 0:
                wb_gains = [wb[0] / wb[1], 1.0, wb[2] / wb[1]]
            xyz_to_cam = np.asarray(r.rgb_xyz_matrix, dtype=np.float64)[:3]
            iso = exposure = None
            with contextlib.suppress(Exception):
                other = r.other  # rawpy >= 0.26
                iso, exposure = float(other.iso_speed) or None, float(other.shutter_speed) or None
            white = float(r.white_level)
    except ISPInputError:
        raise
    except Exception as e:  # rawpy raises LibRawError subclasses and OSError
        raise ISPInputError(f"{path}: LibRaw cannot read this file ({type(e).__name__}: {e})") from e
    meta = dict(pattern=pat, black_level=black_tile, white_level=white, wb_gains=wb_gains, xyz_to_cam=xyz_to_cam,
                iso=iso, exposure_time=exposure)
    meta.update({k: v for k, v in overrides.items() if v is not None})
    return _raw_from_meta(path, counts, meta)


def _handle_overflow(raw: RawImage, on_overflow: str) -> RawImage:
    if on_overflow not in ("auto", "error", "clip"):
        raise ISPInputError(f"on_overflow must be 'auto', 'error' or 'clip', got {on_overflow!r}")
    n = int((raw.counts > raw.white_level).sum())
    if not n:
        return raw
    bits = raw.bit_depth or max(1, math.ceil(math.log2(raw.white_level + 1)))
    container_max = 2 ** bits - 1
    vmax = raw.counts.max()
    if on_overflow == "error" or (on_overflow == "auto" and vmax > container_max):
        raise ISPInputError(
            f"{raw.path}: {n} values exceed the white level {raw.white_level:g} (max {vmax}"
            + (f", above the {bits}-bit range" if vmax > container_max else "")
            + "); the metadata (bit depth / white level) is wrong: pass the right white_level, or "
            "on_overflow='clip' (CLI --clip-overflow) to clip them")
    raw.counts = np.minimum(raw.counts, np.asarray(raw.white_level).astype(raw.counts.dtype))
    raw.extra["clipped_overflow"] = n
    return raw


# ----------------------------------------------------------------------------------------------- DNG + LibRaw
_CFA_CODE = {"R": 0, "G": 1, "B": 2}


def write_dng(raw: RawImage, path: str | os.PathLike) -> Path:
    """Write a :class:`RawImage` as a minimal uncompressed DNG (so LibRaw/rawpy can render any Bayer data)."""
    import tifffile

    path = Path(path)
    counts = np.ascontiguousarray(raw.counts)
    if counts.dtype.kind == "f":
        counts = np.clip(np.round(counts), 0, 65535)
    counts = counts.astype(np.uint16)
    xyz_to_cam = raw.xyz_to_cam
    if xyz_to_cam is None:  # unknown camera: declare sRGB primaries so LibRaw's CCM is the identity
        from .color import RGB_TO_XYZ

        xyz_to_cam = np.linalg.inv(RGB_TO_XYZ)
    gains = raw.gains_or_gray_world()
    neutral = [1.0 / gains[0], 1.0, 1.0 / gains[2]]

    def srational(vals):
        out = []
        for v in np.asarray(vals, dtype=np.float64).ravel():
            out += [int(round(v * 10000)), 10000]
        return out

    tags = [
        (50706, 1, 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, 1, 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, 2, 0, "isp_sim", True),  # UniqueCameraModel
        (33421, 3, 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, 1, 4, tuple(_CFA_CODE[c] for c in raw.pattern), True),  # CFAPattern
        (50713, 3, 2, (2, 2), True),  # BlackLevelRepeatDim
        (50714, 11, 4, tuple(float(v) for v in raw.black_level), True),  # BlackLevel (FLOAT)
        (50717, 4, 1, int(raw.white_level), True),  # WhiteLevel
        (50721, 10, 9, tuple(srational(xyz_to_cam)), True),  # ColorMatrix1
        (50728, 5, 3, tuple(srational(neutral)), True),  # AsShotNeutral
        (50778, 3, 1, 21, True),  # CalibrationIlluminant1 = D65
        (271, 2, 0, "isp_sim", True),  # Make
        (272, 2, 0, "isp_sim", True),  # Model
    ]
    with atomic_path(path, suffix=".dng") as tmp:
        tifffile.imwrite(tmp, counts, photometric=32803, planarconfig=None, subfiletype=0, extratags=tags,
                         metadata=None)
    return path


def camera_render(
    src: str | os.PathLike | RawImage,
    demosaic: str = "AHD",
    use_camera_wb: bool = True,
    output_bps: int = 8,
    **params,
) -> np.ndarray:
    """The "real camera output" reference: LibRaw's rendering (``rawpy.postprocess``) to sRGB.

    ``src`` is a file LibRaw reads or a :class:`RawImage` (written to a temporary DNG first).
    ``demosaic``: a ``rawpy.DemosaicAlgorithm`` name (LINEAR, VNG, PPG, AHD, DCB, DHT, AAHD in the PyPI wheel).
    Returns uint8 (H, W, 3) (uint16 for ``output_bps=16``).
    """
    import rawpy

    try:
        algo = rawpy.DemosaicAlgorithm[demosaic.upper()]
    except KeyError:
        raise ISPInputError(f"unknown LibRaw demosaic algorithm {demosaic!r}; "
                            f"choose from {[a.name for a in rawpy.DemosaicAlgorithm]}") from None
    kw = dict(demosaic_algorithm=algo, use_camera_wb=use_camera_wb, output_bps=output_bps, no_auto_bright=True,
              output_color=rawpy.ColorSpace.sRGB, user_flip=0)
    kw.update(params)
    with contextlib.ExitStack() as stack:
        if isinstance(src, RawImage):
            d = stack.enter_context(tempfile.TemporaryDirectory())
            path = write_dng(src, Path(d) / "frame.dng")
            label = src.path or "RawImage"
        else:
            path = Path(src)
            _check_file(path)
            label = str(path)
            if path.suffix.lower() in HEADERLESS_SUFFIXES | BAYER_IMAGE_SUFFIXES | {".npy"}:
                raw = read_raw(path, on_overflow="clip")
                d = stack.enter_context(tempfile.TemporaryDirectory())
                path = write_dng(raw, Path(d) / "frame.dng")
        try:
            with rawpy.imread(str(path)) as r:
                if not r.color_desc or not algo_supported(algo):
                    raise ISPInputError(f"{label}: demosaic {demosaic} is not available in this LibRaw build")
                return r.postprocess(**kw)
        except ISPInputError:
            raise
        except Exception as e:
            raise ISPInputError(f"{label}: LibRaw rendering failed ({type(e).__name__}: {e})") from e


def algo_supported(algo) -> bool:
    return bool(getattr(algo, "isSupported", True))
