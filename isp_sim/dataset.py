"""``python -m isp_sim degrade``: write degraded copies of an image folder or a COCO dataset.

Layout: ``OUT/<condition>/<relative path of each image>`` plus ``OUT/<condition>/manifest.jsonl`` (one JSON line per
image: file, seed, sampled parameters) and, for COCO input, ``OUT/<condition>/<annotation file name>`` copied
unchanged. A condition is one degradation at one severity (``noise-3``), a chain (``noise+jpeg-3``) or the
composite (``composite-seen-3``). Re-running skips images already in the manifest whose output exists; outputs are
written atomically; unreadable inputs are reported in ``OUT/<condition>/errors.jsonl`` and skipped.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .errors import ISPInputError
from .io import IMAGE_SUFFIXES, atomic_path, read_image, write_image
from .pipeline import degrade_np, make_pipeline
from .seeding import image_seed

log = logging.getLogger("isp_sim.degrade")


@dataclass(frozen=True)
class Condition:
    names: tuple[str, ...]
    severity: int

    @property
    def label(self) -> str:
        return f"{'+'.join(n.replace(':', '-') for n in self.names)}-{self.severity}"


def parse_severities(text: str) -> list[int]:
    """``"3"``, ``"1,3,5"`` or ``"1..5"`` -> list of ints in 1..5."""
    text = str(text).strip()
    try:
        if ".." in text:
            a, b = text.split("..", 1)
            sev = list(range(int(a), int(b) + 1))
        else:
            sev = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        sev = []
    if not sev or any(s not in range(1, 6) for s in sev):
        raise ISPInputError(f"severity must be within 1..5 (e.g. 3, 1,3,5 or 1..5), got {text!r}")
    return sev


def list_inputs(input_path: Path, image_root: Optional[Path] = None) -> tuple[list[tuple[str, Path]], Optional[Path]]:
    """(relative name, absolute path) pairs, and the COCO JSON path when the input is one."""
    if input_path.is_dir():
        files = sorted(p for p in input_path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ISPInputError(f"{input_path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        return [(str(p.relative_to(input_path)), p) for p in files], None
    if input_path.suffix.lower() == ".json":
        try:
            coco = json.loads(input_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ISPInputError(f"{input_path}: unreadable COCO JSON ({e})") from e
        if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
            raise ISPInputError(f"{input_path}: not a COCO annotation file (no 'images' list)")
        for i, im in enumerate(coco["images"]):
            if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise ISPInputError(f"{input_path}: images[{i}] is not an image entry with a 'file_name' string: "
                                    f"{str(im)[:200]}")
        root = image_root or guess_coco_image_root(input_path, coco)
        return [(im["file_name"], root / im["file_name"]) for im in coco["images"]], input_path
    raise ISPInputError(f"{input_path}: input must be an image folder or a COCO JSON file")


def guess_coco_image_root(json_path: Path, coco: dict) -> Path:
    """Find the image folder of a COCO JSON: ``../<split>`` for ``annotations/instances_<split>.json``, or the
    JSON's folder, or its parent."""
    stem = json_path.stem.split("_", 1)[-1]
    candidates = [json_path.parent.parent / stem, json_path.parent / stem, json_path.parent, json_path.parent.parent,
                  json_path.parent / "images", json_path.parent.parent / "images"]
    first = coco["images"][0]["file_name"] if coco.get("images") else None
    for c in candidates:
        if first is None or (c / first).exists():
            return c
    raise ISPInputError(f"{json_path}: cannot find the image folder (tried {', '.join(map(str, candidates))}); "
                        "pass --image-root")


def _output_name(rel: str) -> str:
    return rel


def _work(args) -> dict:
    rel, src, dst, names, severity, seed = args
    import torch

    torch.set_num_threads(1)
    try:
        img = read_image(src)
        out, rec = degrade_np(img, make_pipeline(list(names), severity), seed)
        write_image(dst, out, quality=100, subsampling="4:4:4")  # .jpg keeps COCO names: no extra chroma loss
        return {"file": rel, "seed": seed, "ok": True, "record": rec.to_dict()}
    except ISPInputError as e:
        return {"file": rel, "ok": False, "error": str(e)}
    except Exception as e:  # a corrupt file must not stop the batch
        return {"file": rel, "ok": False, "error": f"{src}: {type(e).__name__}: {e}"}


def _read_manifest(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["file"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a kill: redo that image
    return done


def degrade_dataset(input_path: str | Path, output: str | Path, degradations: Sequence[str],
                    severities: Iterable[int], seed: int = 0, workers: int = 1, chain: bool = False,
                    image_root: Optional[str | Path] = None, progress: bool = True) -> dict:
    """Run the dataset tool; returns a summary {condition: {"written", "skipped", "failed"}}."""
    from tqdm import tqdm

    input_path, output = Path(input_path), Path(output)
    if not input_path.exists():
        raise ISPInputError(f"{input_path}: input not found")
    for n in degradations:
        make_pipeline([n], 1)  # validates names early, before any work
    items, coco_json = list_inputs(input_path, Path(image_root) if image_root else None)
    groups = [tuple(degradations)] if chain else [(n,) for n in degradations]
    conditions = [Condition(g, s) for g in groups for s in severities]
    summary = {}
    for cond in conditions:
        cdir = output / cond.label
        cdir.mkdir(parents=True, exist_ok=True)
        manifest = cdir / "manifest.jsonl"
        done = _read_manifest(manifest)
        todo = []
        for rel, src in items:
            dst = cdir / _output_name(rel)
            if rel in done and dst.exists():
                continue
            todo.append((rel, str(src), str(dst), cond.names, cond.severity, image_seed(seed, f"{cond.label}/{rel}")))
        stats = {"written": 0, "skipped": len(items) - len(todo), "failed": 0}
        with open(manifest, "a") as mf, open(cdir / "errors.jsonl", "a") as ef:
            mapper = map
            pool = None
            if workers > 1 and len(todo) > 1:
                pool = ProcessPoolExecutor(max_workers=workers)
                mapper = lambda f, xs: pool.map(f, xs, chunksize=4)  # noqa: E731
            try:
                for res in tqdm(mapper(_work, todo), total=len(todo), desc=cond.label, disable=not progress):
                    if res["ok"]:
                        mf.write(json.dumps({k: res[k] for k in ("file", "seed", "record")}) + "\n")
                        mf.flush()
                        stats["written"] += 1
                    else:
                        ef.write(json.dumps(res) + "\n")
                        ef.flush()
                        stats["failed"] += 1
                        log.warning("skipped %s", res["error"])
            finally:
                if pool is not None:
                    pool.shutdown()
        if coco_json is not None:
            dst = cdir / coco_json.name
            with atomic_path(dst) as tmp:
                shutil.copyfile(coco_json, tmp)
        summary[cond.label] = stats
    return summary
