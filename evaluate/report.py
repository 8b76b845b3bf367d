"""Reports: Markdown tables, PNG plots (AP vs. severity), the sample grid with predicted boxes, and the side-by-side
comparison of several ``results.json`` files. Every file is written atomically.

``results.json`` layout (``format: evaluate-results-v1``)::

    {"data": {...}, "config": {...GridConfig...}, "conditions": [{"label", "spec", "severity", "split", ...}],
     "models": {tag: {"checkpoint", "kind", "backbone", "per_condition": {label: {"bbox_AP", ...}},
                      "summary": {"P", "mPC", "rPC", "per_degradation", "per_severity", "splits"}}},
     "restoration": {"per_condition": {label: {"psnr_degraded", "psnr_restored", ...}}} | null,
     "timing": {...}}
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import EvaluateError, atomic_write_json, atomic_write_text, read_json, save_figure
from .conditions import Condition

log = logging.getLogger("evaluate.report")

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def fmt(v: Any, digits: int = 3, pct: bool = False) -> str:
    """A table cell: None -> "n/a", COCO's -1 -> "-", floats rounded (``pct`` -> percent)."""
    if v is None:
        return "n/a"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and v != v:
            return "n/a"
        if float(v) < 0:
            return "-"
        return f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"
    return str(v)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _conditions(results: dict) -> list[Condition]:
    return [Condition(c["spec"], int(c["severity"])) for c in results["conditions"]]


def _has_segm(results: dict) -> bool:
    return any("segm" in m.get("iou_types", []) for m in results["models"].values())


# --------------------------------------------------------------------------------------------------- Markdown
def headline_rows(results: dict, prefix: str = "bbox") -> list[list[str]]:
    rows = []
    for tag, m in results["models"].items():
        s = m["summary"]
        k = f"{prefix}_AP"
        if k not in s["P"]:
            continue
        sp = s.get("splits", {})
        rows.append([tag, m.get("backbone", ""), fmt(s["P"][k]), fmt(s.get("roundtrip", {}).get(k)),
                     fmt(s["mPC"][k]), fmt(s["rPC"][k], pct=True),
                     fmt(sp.get("seen", {}).get("mPC", {}).get(k)), fmt(sp.get("unseen", {}).get("mPC", {}).get(k)),
                     fmt(s.get("composites", {}).get("mean", {}).get(k)), str(s["n_conditions"])])
    return rows


HEADLINE_HEADER = ["model", "backbone", "clean AP (P)", "ISP round trip", "mPC", "rPC", "mPC seen", "mPC unseen",
                   "composite mean", "# conditions in mPC"]


def grid_markdown(results: dict, title: str = "Robustness to camera-ISP degradations",
                  plots: Sequence[str] = (), sample_png: str | None = None, level: int = 1) -> str:
    h = "#" * level
    conds = _conditions(results)
    sev = sorted(set(c.severity for c in conds if c.kind in ("single", "composite")))
    specs = list(dict.fromkeys(c.spec for c in conds if not c.is_clean))
    d = results["data"]
    out = [f"{h} {title}\n",
           f"Data: `{d['annotations']}` ({d['n_images']} images"
           + (f", {len(d['missing_images'])} missing on disk and skipped" if d.get("missing_images") else "")
           + f"). Degradations through the isp_sim RAW pipeline, per-image seeds from base seed "
             f"{results['config']['seed']}; severities {', '.join(map(str, sev))}. "
             "AP = COCO AP@[.5:.95] (pycocotools). P = clean AP; mPC = mean AP over every single degradation x "
             "severity below; rPC = mPC / P (Michaelis et al. 2019). Seen/unseen: isp_sim.pipeline.SPLITS "
             "(unseen = held-out variants: ELD noise, WB tint, tone curve, nearest-neighbour demosaic = demosaic "
             "severity 5). Composite chains are listed separately and are not part of mPC. 'ISP round trip' = the "
             "clean images unprocessed to RAW and rendered back by the simulator's reference ISP without any "
             "degradation (what the simulation itself costs; not part of mPC).\n"]
    for w in results.get("warnings") or []:
        out.append(f"\n**Warning:** {w}.\n")
    out.append(f"\n{h}# Models\n")
    out.append(md_table(["model", "kind", "backbone", "checkpoint", "training steps"],
                        [[t, m["kind"], m["backbone"], f"`{m['checkpoint']}`", m.get("step", "")]
                         for t, m in results["models"].items()]))
    out.append(f"\n{h}# Headline: box AP\n")
    out.append(md_table(HEADLINE_HEADER, headline_rows(results, "bbox")))
    if _has_segm(results):
        out.append(f"\n{h}# Headline: mask AP\n")
        out.append(md_table(HEADLINE_HEADER, headline_rows(results, "segm")))
    for prefix, what in (("bbox", "box"), ("segm", "mask")):
        if prefix == "segm" and not _has_segm(results):
            continue
        out.append(f"\n{h}# {what.capitalize()} AP per degradation and severity\n")
        header = ["degradation", "split(s)", "model"] + [f"s{s}" for s in sev] + ["mean", "rPC"]
        rows = []
        for spec in specs:
            for tag, m in results["models"].items():
                pd = m["summary"]["per_degradation"].get(spec)
                if pd is None or f"{prefix}_AP" not in pd["mean"]:
                    continue
                k = f"{prefix}_AP"
                rows.append([spec, "/".join(pd["splits"]), tag]
                            + [fmt(pd["by_severity"].get(str(s), {}).get(k)) for s in sev]
                            + [fmt(pd["mean"][k]), fmt(pd["rPC"][k], pct=True)])
        out.append(md_table(header, rows))
        out.append(f"\nClean {what} AP: " + ", ".join(
            f"{t} {fmt(m['summary']['P'].get(f'{prefix}_AP'))}" for t, m in results["models"].items()) + ".\n")
    out.append(f"\n{h}# AP50 / AP75 summary (box)\n")
    rows = []
    for tag, m in results["models"].items():
        s = m["summary"]
        rows.append([tag] + [fmt(s[x].get(k)) if x != "rPC" else fmt(s[x].get(k), pct=True)
                             for k in ("bbox_AP50", "bbox_AP75") for x in ("P", "mPC", "rPC")])
    out.append(md_table(["model", "AP50 clean", "AP50 mPC", "AP50 rPC", "AP75 clean", "AP75 mPC", "AP75 rPC"],
                        rows))
    rest = results.get("restoration")
    if rest:
        out.append(f"\n{h}# Restoration (DiR decoder), PSNR dB / SSIM against the clean image\n")
        out.append(f"Model `{rest['model']}`. Cells: degraded input -> restored.\n\n")
        rows = []
        for c in conds:
            r = rest["per_condition"].get(c.label) or {}
            if not r:
                continue
            rows.append([c.label, c.split, f"{fmt(r.get('psnr_degraded'), 2)} -> {fmt(r.get('psnr_restored'), 2)}",
                         f"{fmt(r.get('ssim_degraded'))} -> {fmt(r.get('ssim_restored'))}"])
        out.append(md_table(["condition", "split", "PSNR", "SSIM"], rows))
    for p in plots:
        out.append(f"\n![{Path(p).stem}]({p})\n")
    if sample_png:
        out.append(f"\n{h}# Sample predictions\n\nRows: conditions; columns: ground truth, then each model's "
                   f"detections with score >= {results['config']['sample_score']} (class and score).\n\n"
                   f"![samples]({sample_png})\n")
    out.append(f"\n{h}# All metrics per condition\n")
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    for tag, m in results["models"].items():
        out.append(f"\n**{tag}**\n\n")
        header = ["condition", "split", "source"] + [f"box {k}" for k in keys]
        if "segm" in m.get("iou_types", []):
            header += [f"mask {k}" for k in ("AP", "AP50", "AP75")]
        header += ["# det", "predict s"]
        rows = []
        for c in conds:
            pc = m["per_condition"].get(c.label)
            if pc is None:
                continue
            row = [c.label, c.split, d.get("sources", {}).get(c.label, "").split(":")[0]]
            row += [fmt(pc.get(f"bbox_{k}")) for k in keys]
            if "segm" in m.get("iou_types", []):
                row += [fmt(pc.get(f"segm_{k}")) for k in ("AP", "AP50", "AP75")]
            sec = m.get("predict_seconds", {}).get(c.label)
            row += [pc.get("n_detections", ""), "cached" if sec is None else f"{sec:.1f}"]
            rows.append(row)
        out.append(md_table(header, rows))
    t = results.get("timing", {})
    if t:
        out.append(f"\n{h}# Timing\n\n" + ", ".join(f"{k}: {v}" for k, v in t.items()) + "\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------------- plots
def plot_ap_vs_severity(results_list: Sequence[dict], path: str | Path, key: str = "bbox_AP",
                        labels: Sequence[str] | None = None) -> Path | None:
    """One subplot per degradation: ``key`` vs. severity (0 = clean) for every model of every results dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []  # (label, spec, xs, ys)
    specs: list[str] = []
    for i, res in enumerate(results_list):
        for tag, m in res["models"].items():
            s = m["summary"]
            if key not in s["P"]:
                continue
            name = tag if labels is None else f"{labels[i]}:{tag}"
            for spec, pd in s["per_degradation"].items():
                if spec not in specs:
                    specs.append(spec)
                xs = [0] + [int(k) for k in pd["by_severity"]]
                ys = [s["P"][key]] + [v.get(key) for v in pd["by_severity"].values()]
                ys = [np.nan if (y is None or y < 0) else y for y in ys]
                series.append((name, spec, xs, ys))
    if not series:
        return None
    n = len(specs)
    ncol = min(3, n)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False, sharey=True)
    names = list(dict.fromkeys(s[0] for s in series))
    for ax, spec in zip(axes.ravel(), specs):
        for name, sp, xs, ys in series:
            if sp == spec:
                ax.plot(xs, ys, marker="o", label=name, color=f"C{names.index(name) % 10}")
        ax.set_title(spec)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_xticks(range(0, 6))
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(key.replace("bbox_", "box ").replace("segm_", "mask "))
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(f"{key} vs. severity")
    fig.tight_layout()
    return save_figure(fig, path)


def draw_detections(image: np.ndarray, dets: Sequence[dict], names: dict[int, str], score_thr: float = 0.5,
                    size: int = 192, gt: bool = False) -> np.ndarray:
    """Upscale ``image`` to ``size`` (longer side) and draw boxes with ``class score`` labels."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    s = size / max(h, w)
    im = Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST if s >= 1
                                       else Image.BILINEAR)
    draw = ImageDraw.Draw(im)
    for d in sorted(dets, key=lambda d: d.get("score", 1.0)):
        if not gt and d["score"] < score_thr:
            continue
        x, y, bw, bh = (v * s for v in d["bbox"])
        col = PALETTE[int(d["category_id"]) % len(PALETTE)]
        draw.rectangle([x, y, x + bw, y + bh], outline=col, width=2)
        txt = names.get(int(d["category_id"]), str(d["category_id"]))
        if not gt:
            txt += f" {d['score']:.2f}"
        draw.text((x + 2, max(0, y - 11)), txt, fill=col)
    return np.asarray(im)


def sample_grid(data, loaded, conditions: Sequence[Condition], dets_all: dict, path: str | Path,
                cfg) -> str | None:
    """Rows: clean + each degradation at its highest evaluated severity; columns: per sample image, the ground
    truth and each model's detections (score >= ``cfg.sample_score``)."""
    from isp_sim.sheet import contact_sheet

    k = min(int(cfg.sample_images), len(data.ids))
    if k <= 0:
        return None
    top = {}
    for c in conditions:
        if not c.is_clean and (c.spec not in top or c.severity > top[c.spec].severity):
            top[c.spec] = c
    rows_c = [c for c in conditions if c.is_clean] + list(top.values())
    names = {int(cid): data.coco.cats[cid]["name"] for cid in data.coco.cats}
    rows = []
    for c in rows_c:
        row = []
        for i in range(k):
            img = data.image(c, i)
            iid = data.ids[i]
            gt = [a for a in data.coco.imgToAnns.get(iid, []) if not a.get("iscrowd", 0)]
            row.append((f"{c.label} #{iid} GT", draw_detections(img, gt, names, gt=True)))
            for lm in loaded:
                dets = [d for d in dets_all[lm.spec.tag].get(c.label, []) if d["image_id"] == iid]
                row.append((f"{c.label} {lm.spec.tag}", draw_detections(img, dets, names, cfg.sample_score)))
        rows.append(row)
    contact_sheet(rows, path, tile=192)
    return Path(path).name


def write_report(results: dict, out_dir: str | Path, sample_png: str | None = None,
                 title: str = "Robustness to camera-ISP degradations") -> Path:
    """Plots + ``report.md`` for one results dict; returns the report path."""
    out_dir = Path(out_dir)
    plots = []
    for key in ("bbox_AP", "segm_AP"):
        p = plot_ap_vs_severity([results], out_dir / f"ap_vs_severity_{key}.png", key)
        if p is not None:
            plots.append(p.name)
    text = grid_markdown(results, title, plots, sample_png)
    return atomic_write_text(out_dir / "report.md", text)


# --------------------------------------------------------------------------------------------------- compare
def load_results(path: str | Path) -> dict:
    """Read a ``results.json`` (a file or a folder containing one) and check its format."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    obj = read_json(p, "results file")
    if not isinstance(obj, dict) or obj.get("format") != "evaluate-results-v1":
        raise EvaluateError(f"{p} is not an evaluate results file (format "
                            f"{obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
    return obj


def compare(paths: Sequence[str | Path], out_dir: str | Path, key: str = "bbox_AP") -> dict:
    """Side-by-side table of every model in several results files -> ``comparison.md``, ``comparison.json`` and
    ``comparison_<key>.png`` in ``out_dir``. Returns the comparison dict."""
    if not paths:
        raise EvaluateError("compare needs at least one results file")
    res = [load_results(p) for p in paths]
    known = sorted({k for r in res for m in r["models"].values() for k in m["summary"]["P"]})
    if key not in known:
        raise EvaluateError(f"metric {key!r} is in none of the results; choose from {', '.join(known)}")
    labels = []
    for p in paths:
        q = Path(p)
        labels.append(q.name if q.is_dir() else q.parent.name or q.stem)
    if len(set(labels)) != len(labels):
        labels = [f"{i}:{lab}" for i, lab in enumerate(labels)]
    rows, entries = [], []
    all_specs: list[str] = []
    for r in res:
        for m in r["models"].values():
            for spec in m["summary"]["per_degradation"]:
                if spec not in all_specs:
                    all_specs.append(spec)
    for lab, r, p in zip(labels, res, paths):
        for tag, m in r["models"].items():
            s = m["summary"]
            e = {"results": str(p), "run": lab, "model": tag, "backbone": m.get("backbone"),
                 "n_images": r["data"]["n_images"], "annotations": r["data"]["annotations"],
                 "severities": r["config"]["severities"], "P": s["P"].get(key), "mPC": s["mPC"].get(key),
                 "rPC": s["rPC"].get(key), "n_conditions": s["n_conditions"],
                 "mPC_seen": s.get("splits", {}).get("seen", {}).get("mPC", {}).get(key),
                 "mPC_unseen": s.get("splits", {}).get("unseen", {}).get("mPC", {}).get(key),
                 "per_degradation": {sp: s["per_degradation"][sp]["mean"].get(key)
                                     for sp in all_specs if sp in s["per_degradation"]}}
            entries.append(e)
            rows.append([lab, tag, e["backbone"], e["n_images"], fmt(e["P"]), fmt(e["mPC"]), fmt(e["rPC"], pct=True),
                         fmt(e["mPC_seen"]), fmt(e["mPC_unseen"])]
                        + [fmt(e["per_degradation"].get(sp)) for sp in all_specs])
    datasets = sorted(set(e["annotations"] for e in entries))
    sev = sorted(set(e["severities"] for e in entries))
    text = [f"# Comparison ({key})\n\n",
            "P = clean, mPC = mean over degradation x severity, rPC = mPC / P; per-degradation columns: mean "
            "over that degradation's severities.\n"]
    if len(datasets) > 1 or len(sev) > 1:
        text.append(f"\n**Warning:** the runs differ in data ({datasets}) or severities ({sev}); their numbers "
                    "are not directly comparable.\n")
    text.append("\n" + md_table(["run", "model", "backbone", "images", "P", "mPC", "rPC", "mPC seen",
                                 "mPC unseen"] + all_specs, rows))
    out_dir = Path(out_dir)
    png = plot_ap_vs_severity(res, out_dir / f"comparison_{key}.png", key, labels)
    if png is not None:
        text.append(f"\n![comparison]({png.name})\n")
    comp = {"format": "evaluate-comparison-v1", "key": key, "entries": entries, "warning_mixed_data":
            len(datasets) > 1 or len(sev) > 1}
    atomic_write_json(out_dir / "comparison.json", comp)
    atomic_write_text(out_dir / "comparison.md", "".join(text))
    return comp
