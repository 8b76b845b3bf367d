"""Shared helpers of the ``evaluate`` package: errors, atomic writes, logging, file fingerprints, timing."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger("evaluate")


class EvaluateError(ValueError):
    """Bad input to the evaluation (unknown degradation, missing file, mismatched data); the message names it."""


# --------------------------------------------------------------------------------------------------- JSON / atomic
def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def clean_json(v: Any) -> Any:
    """Replace NaN/Inf floats by None (strict JSON), recursively."""
    if isinstance(v, dict):
        return {str(k): clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_json(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    return v


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto it on success and removed on error (never a partial file)."""
    from isp_sim.io import atomic_path as _atomic_path

    with _atomic_path(path, suffix=suffix) as tmp:
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Serialise first (so a serialisation error cannot leave anything behind), then write atomically."""
    text = json.dumps(clean_json(obj), indent=indent, default=_json_default, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    p = Path(path)
    if not p.is_file():
        raise EvaluateError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluateError(f"{p} is not valid JSON ({e})") from e


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------------------------------- fingerprints
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------- logging
def setup_logging(out_dir: str | os.PathLike | None = None, name: str = "evaluate.log",
                  level: int = logging.INFO) -> logging.Logger:
    """Log ``evaluate.*`` to stderr and (when ``out_dir`` is given) to ``out_dir/name``."""
    logger = logging.getLogger("evaluate")
    logger.setLevel(level)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(type(h) is logging.StreamHandler for h in logger.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(fmt)
        logger.addHandler(sh)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        target = os.path.abspath(Path(out_dir) / name)
        for h in list(logger.handlers):  # one log file at a time
            if isinstance(h, logging.FileHandler) and h.baseFilename != target:
                logger.removeHandler(h)
                h.close()
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in logger.handlers):
            fh = logging.FileHandler(target)
            fh.setFormatter(fmt)
            logger.addHandler(fh)
    return logger


class Timer:
    """Named wall-clock sections: ``with timer("train"): ...``; ``timer.sections`` in seconds."""

    def __init__(self) -> None:
        self.sections: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.sections[name] = self.sections.get(name, 0.0) + time.perf_counter() - t
            log.info("[time] %s: %.1f s", name, time.perf_counter() - t)

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0


def load_average() -> list[float] | None:
    """The 1/5/15-minute load average (None where unavailable), recorded with timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None
