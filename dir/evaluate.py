"""Evaluation of DiR (``python -m dir evaluate --config ...``).

1. Blind restoration on held-out images, degraded by isp_sim's ``CompositeISP`` on the ``seen`` and ``unseen``
   splits (and by each single degradation at a fixed severity): PSNR / SSIM (``skimage.metrics``, data range 1,
   against the clean sRGB crop) of the degraded input, of the plain encoder-decoder, of DiR, and of two ablations:
   ``DiR w/o restore stage`` (D*(r+): alignment only, decoder frozen from the DfR) and ``pilot only`` (D*(r->)),
   plus two diagnostics of DiR's trained R with other inputs in place of r+ (no retraining): ``R(r->, x)`` (the
   pilot estimate, i.e. the alignment network bypassed) and ``R(mu*, x)`` (the stored, spatially constant channel
   means of r*, so only R's input branch carries image information).
2. Representation check: for each clean crop, V differently degraded views; the mean cosine similarity between
   the flattened feature maps of two views of the *same* crop (over all view pairs), per scale, for DiR's r+,
   r0 (MMI encoder), r-> (pilot) and the plain encoder's features; plus the same for views of *different* crops as a
   reference (features that are merely all-positive are similar for any two images).
3. Alignment: distance of r+ and r-> (after the align stage and after the restore stage) and of E*(x_degraded) to
   the clean reference r* = E*(x_clean): relative L1 (feature level) and channel-moment distance (distribution level).

Writes ``<out_dir>/<tag>/report.json`` and ``report.md`` (tag defaults to ``eval``) (atomically) and returns the report dict.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from isp_sim.seeding import image_seed

from .checkpoint import atomic_write_text, load_dirnet, load_model_file, load_state_strict
from .config import DiRConfig, model_config_from_dict
from .data import apply_degrader, load_images, make_degrader, make_single_degrader, random_patch
from .losses import moment_loss, relative_l1
from .model import SCALES, DfRAutoencoder, PlainEncDec
from .train import FORMATS, output_path

METHODS = ("input", "plain", "dir", "dir_pilot_rep", "dir_const_rep", "dir_no_restore", "pilot_only")
LABELS = {"input": "degraded input", "plain": "plain enc-dec", "dir": "DiR (full)",
          "dir_pilot_rep": "DiR's R on the pilot estimate, R(r->, x)",
          "dir_const_rep": "DiR's R with r+ replaced by its mean, R(mu*, x)",
          "dir_no_restore": "DiR w/o restore stage (D*(r+))", "pilot_only": "pilot only (D*(r->))"}


def load_plain(path: str | Path) -> PlainEncDec:
    """Rebuild the plain encoder-decoder baseline from ``plain.pt``."""
    mcfg, state, _ = load_model_file(path, FORMATS["plain"])
    m = PlainEncDec(model_config_from_dict(mcfg))
    load_state_strict(m, state, str(path))
    return m.eval()


def load_dfr(path: str | Path) -> DfRAutoencoder:
    """Rebuild the DfR autoencoder (E*, D*) from ``dfr.pt``."""
    mcfg, state, _ = load_model_file(path, FORMATS["dfr"])
    m = DfRAutoencoder(model_config_from_dict(mcfg))
    load_state_strict(m, state, str(path))
    return m.eval()


def eval_crops(cfg: DiRConfig) -> list[tuple[str, torch.Tensor]]:
    """Deterministic ``eval.crop``-sized crops ``(3, c, c)`` of the held-out images (no flips)."""
    crops = []
    for name, img in load_images(cfg.data.source, cfg.data.eval_images, "eval", cfg.data.max_side, cfg.eval.crop):
        for j in range(cfg.eval.crops_per_image):
            rng = np.random.default_rng(image_seed(cfg.eval.seed, f"crop/{name}/{j}"))
            p = random_patch(img, cfg.eval.crop, rng, augment=False)
            crops.append((f"{name}#{j}", torch.from_numpy(p.transpose(2, 0, 1).copy())))
    return crops


def _metrics(pred: torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    a = pred.clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float64)
    b = clean.permute(1, 2, 0).cpu().numpy().astype(np.float64)
    return (float(peak_signal_noise_ratio(b, a, data_range=1.0)),
            float(structural_similarity(b, a, channel_axis=2, data_range=1.0)))


def _pair_cos(feats: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of rows of ``feats (N, D)``."""
    f = F.normalize(feats.double(), dim=1)
    sims = [float((f[i] * f[j]).sum()) for i, j in itertools.combinations(range(f.shape[0]), 2)]
    return float(np.mean(sims))


def _paired(a: list[float], b: list[float]) -> dict:
    """Paired PSNR difference a - b over the same crops and seeds: mean, standard error, share of a > b."""
    d = np.asarray(a) - np.asarray(b)
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0,
            "win_rate": float((d > 0).mean()), "n": int(len(d))}


def _summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


@torch.no_grad()
def evaluate(cfg: DiRConfig, device: str = "cpu", progress: bool = True, tag: str = "eval") -> dict:
    """Run the restoration and representation evaluation for the models in ``cfg.run.out_dir``; the report goes
    to ``<out_dir>/<tag>/``."""
    out_dir = Path(cfg.run.out_dir)
    dirnet = load_dirnet(output_path(cfg, "restore"), device)
    dir_align = load_dirnet(output_path(cfg, "align"), device)
    dfr = load_dfr(output_path(cfg, "dfr")).to(device)
    plain = load_plain(output_path(cfg, "plain")).to(device)
    crops = eval_crops(cfg)
    ev = cfg.eval

    def restore_all(x: torch.Tensor) -> dict[str, torch.Tensor]:
        # the two ablations decode with the frozen DfR decoder D* (features only, no input path); the DiRNet in
        # dirnet_align.pt has a fresh R that is still the identity, so its restore() would just return x
        size = x.shape[-2:]
        _, rpilot, rplus = dirnet.representations(x)
        # diagnostic: how much of R's output comes through r+ (vs. its input branch): r+ replaced by the stored
        # channel means of r* (spatially constant, no image information)
        mu = dirnet.reference_stats()[0]
        const = {k: mu[k].view(1, -1, 1, 1).expand_as(f) for k, f in rplus.items()}
        return {"input": x, "plain": plain.restore(x), "dir": dirnet.decode(rplus, x).clamp(0, 1),
                "dir_pilot_rep": dirnet.decode(rpilot, x).clamp(0, 1),
                "dir_const_rep": dirnet.decode(const, x).clamp(0, 1),
                "dir_no_restore": dfr.decoder(dir_align.forward_features(x), size).clamp(0, 1),
                "pilot_only": dfr.decoder(dir_align.pilot_features(x), size).clamp(0, 1)}

    conditions = [(f"composite:{s}", make_degrader(s)) for s in ev.splits]
    conditions += [(f"{n}@{ev.severity}", make_single_degrader(n, ev.severity)) for n in ev.single]
    restoration, representation, align_err, paired = {}, {}, {}, {}
    for cond, degrade in conditions:
        scores = {m: {"psnr": [], "ssim": []} for m in METHODS}
        feats = {k: [] for k in ("dir_rplus", "dir_r0", "dir_pilot", "plain_encoder")}
        for name, clean in crops:
            seeds = [image_seed(ev.seed, f"{cond}/{name}/{v}") for v in range(ev.views)]
            x = apply_degrader(degrade, clean[None].expand(ev.views, -1, -1, -1).contiguous(), seeds).to(device)
            outs = restore_all(x)
            for m, y in outs.items():
                for v in range(ev.views):
                    p, s = _metrics(y[v], clean)
                    scores[m]["psnr"].append(p)
                    scores[m]["ssim"].append(s)
            if cond.startswith("composite:"):
                r0, rp, rplus = dirnet.representations(x)
                pf = plain.encoder(x)
                for key, f in (("dir_rplus", rplus), ("dir_r0", r0), ("dir_pilot", rp), ("plain_encoder", pf)):
                    feats[key].append({s: f[s].flatten(1).cpu() for s in SCALES})
                # alignment to the clean reference r* = E*(x_clean), per view
                rstar = {s: f.expand(ev.views, -1, -1, -1) for s, f in dfr.encoder(clean[None].to(device)).items()}
                _, rp_a, rplus_a = dir_align.representations(x)
                cands = {"r+ (DiR)": rplus, "r+ (after align stage)": rplus_a, "r-> (pilot)": rp,
                         "r-> (pilot, after align stage)": rp_a, "E*(x_degraded)": dfr.encoder(x)}
                for key, f in cands.items():
                    align_err.setdefault(cond, {}).setdefault(key, {"feat": [], "dist": []})
                    align_err[cond][key]["feat"].append(
                        float(np.mean([float(relative_l1(f[s], rstar[s])) for s in SCALES])))
                    align_err[cond][key]["dist"].append(
                        float(np.mean([float(moment_loss(f[s], rstar[s])) for s in SCALES])))
        restoration[cond] = {m: {k: _summary(v) for k, v in d.items()} for m, d in scores.items()}
        paired[cond] = {f"{a}-{b}": _paired(scores[a]["psnr"], scores[b]["psnr"])
                        for a, b in (("dir", "plain"), ("dir", "input"), ("plain", "input"),
                                     ("pilot_only", "plain"), ("dir", "dir_const_rep"))}
        if progress:
            print(f"[dir eval] {cond}: " + ", ".join(
                f"{m} {restoration[cond][m]['psnr']['mean']:.2f} dB" for m in METHODS))
        if cond.startswith("composite:"):
            representation[cond] = _representation_scores(feats, ev.views)
    alignment = {c: {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in per.items()}
                 for c, per in align_err.items()}
    report = {"restoration": restoration, "paired_psnr": paired, "representation": representation,
              "alignment": alignment,
              "settings": {"crops": [n for n, _ in crops], "crop": ev.crop, "views": ev.views,
                           "severity_single": ev.severity, "seed": ev.seed},
              "train_meta": {"dir": getattr(dirnet, "train_meta", {}), "plain": _meta(output_path(cfg, "plain"))},
              "parameters": {"dir_inference": sum(p.numel() for p in dirnet.parameters()),
                             "dir_encoder": sum(p.numel() for p in dirnet.encoder.parameters()),
                             "dir_pilot": sum(p.numel() for p in dirnet.pilot.parameters()),
                             "dir_alignment": sum(p.numel() for p in dirnet.align.parameters()),
                             "dir_decoder": sum(p.numel() for p in dirnet.decoder.parameters()),
                             "plain": sum(p.numel() for p in plain.parameters())}}
    report["train_seconds"] = _train_seconds(cfg)
    edir = out_dir / tag
    atomic_write_text(json.dumps(report, indent=2), edir / "report.json")
    atomic_write_text(markdown_report(report), edir / "report.md")
    return report


def _representation_scores(feats: dict, views: int) -> dict:
    out = {}
    for key, per_crop in feats.items():
        res = {}
        for s in SCALES:
            same = [_pair_cos(c[s]) for c in per_crop]
            # different crops, same degradation index: the reference level
            diff = [_pair_cos(torch.stack([c[s][v] for c in per_crop])) for v in range(views)]
            res[s] = {"same_image": float(np.mean(same)), "different_images": float(np.mean(diff))}
        res["mean"] = {k: float(np.mean([res[s][k] for s in SCALES])) for k in ("same_image", "different_images")}
        out[key] = res
    return out


def _meta(path: Path) -> dict:
    try:
        return load_model_file(path, FORMATS["plain"])[2]
    except Exception:  # noqa: BLE001 - metadata is informative only
        return {}


def _train_seconds(cfg: DiRConfig) -> dict:
    out = {}
    for stage in ("mmi", "dfr", "align", "restore", "plain"):
        log = Path(cfg.run.out_dir) / stage / "log.jsonl"
        if log.is_file():
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            if lines:
                out[stage] = lines[-1].get("elapsed_s")
    out["dir_total"] = round(sum(v for k, v in out.items() if k != "plain" and v), 2)
    return out


def markdown_report(r: dict) -> str:
    """Markdown tables of a report dict from :func:`evaluate`."""
    lines = ["# DiR evaluation", "",
             f"Held-out crops: {', '.join(r['settings']['crops'])} ({r['settings']['crop']} px), "
             f"{r['settings']['views']} degradation seeds per crop and condition.", "",
             "## Blind restoration (PSNR dB / SSIM, mean over crops x seeds)", ""]
    conds = list(r["restoration"])
    lines.append("| method | " + " | ".join(conds) + " |")
    lines.append("|---" * (len(conds) + 1) + "|")
    for m in METHODS:
        cells = [f"{r['restoration'][c][m]['psnr']['mean']:.2f} / {r['restoration'][c][m]['ssim']['mean']:.3f}"
                 for c in conds]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    if r.get("paired_psnr"):
        pairs = list(next(iter(r["paired_psnr"].values())))
        lines += ["", "Paired PSNR differences (dB, mean ± standard error over the same crops and seeds; "
                  "share of samples where the first is better):", ""]
        lines.append("| difference | " + " | ".join(conds) + " |")
        lines.append("|---" * (len(conds) + 1) + "|")
        for pname in pairs:
            cells = [f"{r['paired_psnr'][c][pname]['mean']:+.2f} ± {r['paired_psnr'][c][pname]['se']:.2f} "
                     f"({100 * r['paired_psnr'][c][pname]['win_rate']:.0f}%)" for c in conds]
            lines.append(f"| {pname} | " + " | ".join(cells) + " |")
    lines += ["", "## Representation: mean cosine similarity across degradations", "",
              "same = two degraded views of the same crop; diff = views of different crops (reference).", ""]
    for cond, rep in r["representation"].items():
        lines.append(f"### {cond}")
        lines.append("")
        lines.append("| features | " + " | ".join(f"{s} same / diff" for s in SCALES) + " | mean same / diff |")
        lines.append("|---" * (len(SCALES) + 2) + "|")
        for key, res in rep.items():
            cells = [f"{res[s]['same_image']:.3f} / {res[s]['different_images']:.3f}" for s in SCALES]
            cells.append(f"{res['mean']['same_image']:.3f} / {res['mean']['different_images']:.3f}")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Alignment to the clean reference r* = E*(x_clean)", "",
              "feature: mean_s |f_s - r*_s|_1 / |r*_s|_1; distribution: channel-moment distance L_dist "
              "(lower is better for both).", ""]
    conds = list(r.get("alignment", {}))
    if conds:
        lines.append("| features | " + " | ".join(f"{c} feature / distribution" for c in conds) + " |")
        lines.append("|---" * (len(conds) + 1) + "|")
        for key in r["alignment"][conds[0]]:
            cells = [f"{r['alignment'][c][key]['feat']:.3f} / {r['alignment'][c][key]['dist']:.3f}" for c in conds]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    p = r["parameters"]
    lines += ["## Size and training time", "",
              f"Parameters: DiR inference {p['dir_inference']:,} (encoder {p['dir_encoder']:,}, pilot "
              f"{p['dir_pilot']:,}, alignment {p['dir_alignment']:,}, decoder {p['dir_decoder']:,}); "
              f"plain enc-dec {p['plain']:,}.", "",
              "Training seconds: " + ", ".join(f"{k} {v}" for k, v in r["train_seconds"].items()), ""]
    return "\n".join(lines)
