"""Degradation pipelines through the full RAW ISP.

``sRGB --unprocess--> linear RAW --raw degradations--> ISP (with possibly wrong settings) --> sRGB --sRGB
degradations--> degraded sRGB``. Every image gets its own seed; its parameters are drawn from
``numpy.random.default_rng(seed)`` and its noise from a torch generator seeded from that, so the output is
bit-identical whatever the batch size, batch order or number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .color import gamma_decode, gamma_encode
from .degradations import (DEGRADATIONS, STAGE_ORDER, Degradation, DegradationRecord, build_degradation,
                           degradation_names)
from .errors import ISPInputError
from .isp import apply_tone, process
from .seeding import numpy_rng, torch_generator
from .unprocess import UnprocessParams, sample_unprocess_params, unprocess

__all__ = ["Pipeline", "CompositeISP", "make_pipeline", "degradation_names", "ImageRecord", "SPLITS",
           "degrade_np"]

LearnedISP = Callable[[torch.Tensor, str], torch.Tensor]


@dataclass
class ImageRecord:
    """Everything sampled for one image: its seed, the unprocessing camera and the degradations applied."""

    seed: int
    camera: UnprocessParams
    degradations: list[DegradationRecord] = field(default_factory=list)
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return {"seed": self.seed, "noise_seed": self.noise_seed, "camera": self.camera.to_dict(),
                "degradations": [d.to_dict() for d in self.degradations]}

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.degradations]


@dataclass
class _Plan:
    record: ImageRecord
    steps: list[tuple[Degradation, dict]]


def _check_images(srgb: torch.Tensor, seeds: Sequence[int]) -> None:
    if not isinstance(srgb, torch.Tensor) or srgb.ndim != 4 or srgb.shape[1] != 3:
        raise ISPInputError(f"pipeline expects sRGB tensor (B, 3, H, W), got "
                            f"{tuple(srgb.shape) if isinstance(srgb, torch.Tensor) else type(srgb).__name__}")
    if not srgb.is_floating_point():
        raise ISPInputError(f"pipeline expects float sRGB in [0, 1], got {srgb.dtype} (divide uint8 by 255)")
    if srgb.shape[-1] % 2 or srgb.shape[-2] % 2 or min(srgb.shape[-2:]) < 8:
        raise ISPInputError(f"pipeline needs even image sizes of at least 8x8, got {tuple(srgb.shape[-2:])}")
    if not torch.isfinite(srgb).all():
        raise ISPInputError("pipeline input contains NaN or Inf")
    if srgb.min() < -1e-3 or srgb.max() > 1 + 1e-3:
        raise ISPInputError(f"pipeline expects sRGB in [0, 1], got range [{float(srgb.min()):.3g}, "
                            f"{float(srgb.max()):.3g}]")
    if len(seeds) != srgb.shape[0]:
        raise ISPInputError(f"{len(seeds)} seeds for a batch of {srgb.shape[0]} images")


class Pipeline:
    """A fixed list of degradations applied through the RAW pipeline.

    ``demosaic``: the reference ISP's demosaic (replaced by a :class:`DemosaicArtifacts` degradation when present).
    ``differentiable``: use the differentiable JPEG approximation instead of the real codec, so gradients flow
    from the output to the input. ``isp``: an optional learned ISP ``f(raw (B,1,H,W), pattern) -> sRGB`` (e.g.
    :class:`pynet.isp_stage.PyNETStage`) used instead of the hand-crafted one; ISP-setting errors are then
    emulated around it (WB error as per-site RAW gains, gamma/tone error re-encoding its output).
    ``chunk_pixels``: on CPU, images per internal chunk = max(1, chunk_pixels // (H * W)); 0 = whole batch.
    """

    def __init__(self, degradations: Sequence[Degradation] = (), pattern: str = "RGGB", demosaic: str = "menon",
                 differentiable: bool = False, isp: Optional[LearnedISP] = None, chunk_pixels: int = 2 ** 21):
        self.degradations = list(degradations)
        self.chunk_pixels = chunk_pixels
        for d in self.degradations:
            if not isinstance(d, Degradation):
                raise ISPInputError(f"pipeline entries must be Degradation instances, got {d!r}")
        self.pattern, self.demosaic, self.differentiable, self.isp = pattern, demosaic, differentiable, isp

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.degradations!r})"

    # -- sampling
    def select(self, rng: np.random.Generator) -> list[Degradation]:
        """The degradations applied to one image (all of them for a fixed pipeline)."""
        return list(self.degradations)

    def plan(self, seed: int) -> _Plan:
        rng = numpy_rng(seed)
        camera = sample_unprocess_params(rng)
        chosen = sorted(self.select(rng), key=lambda d: STAGE_ORDER[d.stage])
        steps = [(d, d.sample(rng)) for d in chosen]
        noise_seed = int(rng.integers(0, 2 ** 62))
        rec = ImageRecord(int(seed), camera, [d.record(p) for d, p in steps], noise_seed)
        return _Plan(rec, steps)

    # -- application
    def __call__(self, srgb: torch.Tensor, seeds: Sequence[int]):
        """Degrade a batch: ``srgb`` (B, 3, H, W) gamma-encoded in [0, 1] -> (degraded (B, 3, H, W), records)."""
        _check_images(srgb, seeds)
        plans = [self.plan(int(s)) for s in seeds]
        return self.run(srgb, plans), [p.record for p in plans]

    def run(self, srgb: torch.Tensor, plans: Sequence[_Plan]) -> torch.Tensor:
        """Apply planned degradations to ``srgb`` (B, 3, H, W). On CPU the batch is processed in chunks of about
        ``chunk_pixels`` pixels: the chain is memory-bound, and tensors above glibc's mmap threshold (32 MB) are
        page-faulted afresh by every operation. Results do not depend on the chunking (each image has its own
        seeded plan)."""
        n = srgb.shape[0]
        step = n if srgb.device.type != "cpu" or not self.chunk_pixels else \
            max(1, int(self.chunk_pixels) // (srgb.shape[-1] * srgb.shape[-2]))
        outs = []
        for i in range(0, n, step):
            part, pp = srgb[i:i + step], plans[i:i + step]
            raw, _ = unprocess(part, [p.record.camera for p in pp], self.pattern)
            cameras = [(p.record.camera.wb_gains, p.record.camera.cam_to_rgb) for p in pp]
            outs.append(self.run_raw(raw, cameras, pp))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def run_raw(self, raw: torch.Tensor, cameras: Sequence[tuple], plans: Sequence[_Plan],
                pattern: Optional[str] = None) -> torch.Tensor:
        """Degrade linear RAW ``(B, 1, H, W)`` in [0, 1] and render it; ``cameras``: per-image (wb_gains (3,),
        cam_to_rgb (3, 3)) of the correct ISP settings; ``pattern``: the mosaic's Bayer pattern (default: the
        pipeline's)."""
        raws, settings = [], []
        for i, p in enumerate(plans):
            x = raw[i:i + 1]
            gen = torch_generator(p.record.noise_seed, x.device)
            s = {"wb_gains": np.asarray(cameras[i][0], dtype=np.float64), "cam_to_rgb": np.asarray(cameras[i][1]),
                 "demosaic": self.demosaic, "gamma": 2.2, "tone": 1.0, "wb_error": np.ones(3)}
            for d, params in p.steps:
                if d.stage == "raw":
                    x = d.apply(x, params, gen)
                elif d.stage == "isp":
                    s = d.configure(s, params)
            raws.append(x)
            settings.append(s)
        out = self._render(torch.cat(raws), settings, pattern or self.pattern)
        final = []
        for i, p in enumerate(plans):
            y = out[i:i + 1]
            for d, params in p.steps:
                if d.stage == "srgb":
                    y = d.apply(y, params, None, differentiable=self.differentiable)
            final.append(y)
        return torch.cat(final)

    def degrade_raw_image(self, raw_image, seed: int) -> tuple[torch.Tensor, ImageRecord]:
        """Degrade a real :class:`~isp_sim.raw.RawImage` (its own WB and colour matrix are the correct settings)
        -> (sRGB (1, 3, H, W), record). The frame's own Bayer pattern is used, whatever the pipeline's."""
        plan = self.plan(int(seed))
        x = raw_image.tensor()
        cam = (raw_image.gains_or_gray_world(), raw_image.cam_to_srgb())
        return self.run_raw(x, [cam], [plan], raw_image.pattern), plan.record

    def _render(self, raw: torch.Tensor, settings: list[dict], pattern: str) -> torch.Tensor:
        dev, dt = raw.device, raw.dtype
        gamma = torch.tensor([s["gamma"] for s in settings], device=dev, dtype=dt)
        tone = torch.tensor([s["tone"] for s in settings], device=dev, dtype=dt)
        if self.isp is not None:
            return self._render_learned(raw, settings, gamma, tone, pattern)
        wb = torch.tensor(np.stack([s["wb_gains"] for s in settings]), device=dev, dtype=dt)
        ccm = torch.tensor(np.stack([s["cam_to_rgb"] for s in settings]), device=dev, dtype=dt)
        out = torch.empty(raw.shape[0], 3, *raw.shape[-2:], device=dev, dtype=dt)
        methods = [s["demosaic"] for s in settings]
        for m in dict.fromkeys(methods):  # one batched ISP call per demosaic method
            idx = [i for i, mm in enumerate(methods) if mm == m]
            sel = torch.tensor(idx, device=dev)
            out[sel] = process(raw[sel], wb[sel], ccm[sel], pattern, m, gamma[sel], tone[sel])
        return out

    def _render_learned(self, raw, settings, gamma, tone, pattern):
        from .bayer import cfa_masks

        if any(s["demosaic"] != self.demosaic for s in settings):
            raise ISPInputError("the demosaic degradation cannot be combined with a learned ISP (it demosaics itself)")
        factors = torch.tensor(np.stack([s["wb_error"] for s in settings]), device=raw.device, dtype=raw.dtype)
        m = cfa_masks(pattern, raw.shape[-2], raw.shape[-1], raw.device, raw.dtype)
        x = (raw * torch.einsum("bc,chw->bhw", factors, m)[:, None]).clamp(0, 1)
        y = self.isp(x, pattern).clamp(0, 1)
        y = gamma_encode(gamma_decode(y, 2.2), gamma)
        return apply_tone(y, tone - 1.0)


class CompositeISP(Pipeline):
    """A random chain of degradations per image (DiR's training distribution).

    Each image draws ``min_ops..max_ops`` distinct degradations from the split's table, each at a random allowed
    severity. ``split="seen"`` is the training distribution; ``split="unseen"`` holds out other settings (ELD-style
    row noise and ADC quantisation, green-magenta WB tint, tone-curve errors, nearest-neighbour demosaicing) and
    always includes at least one of them.
    """

    def __init__(self, split: str = "seen", min_ops: int = 1, max_ops: int = 3,
                 severities: Sequence[int] = (1, 2, 3, 4, 5), **kw):
        if split not in SPLITS:
            raise ISPInputError(f"unknown split {split!r}; choose from {list(SPLITS)}")
        if not 1 <= min_ops <= max_ops:
            raise ISPInputError(f"need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
        super().__init__((), **kw)
        self.split, self.min_ops, self.max_ops, self.severities = split, min_ops, max_ops, tuple(severities)
        self.table = SPLITS[split]

    def __repr__(self) -> str:
        return f"CompositeISP(split={self.split!r}, ops={self.min_ops}..{self.max_ops}, severities={self.severities})"

    def select(self, rng):
        n = int(rng.integers(self.min_ops, min(self.max_ops, len(self.table)) + 1))
        idx = list(rng.choice(len(self.table), size=n, replace=False))
        if self.split == "unseen" and not any(self.table[i][3] for i in idx):
            novel = [i for i, e in enumerate(self.table) if e[3]]
            idx[0] = int(rng.choice(novel)) if novel[0] not in idx else idx[0]
            idx = list(dict.fromkeys(idx))
        out = []
        for i in idx:
            name, variant, allowed, _ = self.table[i]
            sev = [s for s in allowed if s in self.severities] or list(allowed)
            out.append(build_degradation(name, int(rng.choice(sev)), variant))
        return out


#: split -> entries (name, variant, allowed severities, is_held_out_setting)
SPLITS: dict[str, list[tuple[str, Optional[str], tuple[int, ...], bool]]] = {
    "seen": [
        ("noise", "brooks", (1, 2, 3, 4, 5), False),
        ("exposure", "both", (1, 2, 3, 4, 5), False),
        ("white_balance", "temperature", (1, 2, 3, 4, 5), False),
        ("gamma", "gamma", (1, 2, 3, 4, 5), False),
        ("demosaic", None, (1, 2, 3, 4), False),
        ("jpeg", "any", (1, 2, 3, 4, 5), False),
    ],
    "unseen": [
        ("noise", "eld", (1, 2, 3, 4, 5), True),
        ("white_balance", "tint", (1, 2, 3, 4, 5), True),
        ("gamma", "tone", (1, 2, 3, 4, 5), True),
        ("demosaic", None, (5,), True),
        ("exposure", "both", (1, 2, 3, 4, 5), False),
        ("jpeg", "any", (1, 2, 3, 4, 5), False),
    ],
}


def make_pipeline(names: str | Sequence[str], severity: int = 3, variants: Optional[dict] = None,
                  **kw) -> Pipeline:
    """A fixed pipeline from degradation names, e.g. ``make_pipeline(["noise", "jpeg"], 4)``.

    ``names`` may be a comma-separated string; ``"clean"`` (or an empty list) renders through the ISP only;
    ``"composite"`` / ``"composite:unseen"`` return a :class:`CompositeISP` restricted to ``severity``.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = [n for n in names if n != "clean"]
    if len(names) == 1 and names[0].startswith("composite"):
        split = names[0].split(":", 1)[1] if ":" in names[0] else "seen"
        return CompositeISP(split, severities=(severity,), **kw)
    variants = variants or {}
    for n in names:
        if n not in DEGRADATIONS:
            raise ISPInputError(f"unknown degradation {n!r}; choose from {', '.join(DEGRADATIONS)}, clean, "
                                "composite, composite:unseen")
    return Pipeline([build_degradation(n, severity, variants.get(n)) for n in names], **kw)


def degrade_np(image: np.ndarray, pipeline: Pipeline, seed: int) -> tuple[np.ndarray, ImageRecord]:
    """numpy single-image path: uint8 or float (H, W, 3) sRGB -> (uint8 (H, W, 3), record).

    Odd sizes are handled by edge-padding to even and cropping back.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ISPInputError(f"degrade_np expects an (H, W, 3) array, got "
                            f"{getattr(image, 'shape', type(image).__name__)}")
    x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    h, w = x.shape[:2]
    xp = np.pad(x, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    t = torch.from_numpy(np.ascontiguousarray(xp)).permute(2, 0, 1)[None]
    with torch.no_grad():
        out, recs = pipeline(t, [seed])
    y = out[0, :, :h, :w].permute(1, 2, 0).numpy()
    return (np.clip(y, 0, 1) * 255 + 0.5).astype(np.uint8), recs[0]
