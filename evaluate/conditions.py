"""Evaluation conditions: the clean set and every degradation x severity, with their seen/unseen split.

A degradation *spec* is an ``isp_sim`` degradation name, optionally with a variant (``noise``, ``noise:eld``,
``white_balance:tint``), or ``composite`` / ``composite:unseen`` (``isp_sim.pipeline.CompositeISP`` restricted to one
severity). A :class:`Condition` is a spec at one severity (or the clean set, severity 0).

Labels follow ``python -m isp_sim degrade``'s folder names (``noise-3``, ``composite-unseen-3``; a variant adds
``-variant``: ``noise-eld-3``), and the per-image seed is ``isp_sim.seeding.image_seed(seed, f"{label}/{file}")``
exactly as that tool draws it, so on-the-fly degradation and a degraded copy written by the tool agree.

Split (``isp_sim.pipeline.SPLITS``): a single-degradation condition is **unseen** when it matches a held-out entry of
the ``unseen`` table (ELD noise, WB tint, tone-curve error, nearest-neighbour demosaicing = demosaic severity 5),
**seen** when it matches an entry of the ``seen`` table (DiR's training distribution), otherwise **other**
(e.g. ``exposure:under``). ``composite`` is seen, ``composite:unseen`` unseen.

``roundtrip`` (:data:`ROUNDTRIP`) is a reference condition: the clean image unprocessed to RAW and rendered back by
the simulator's reference ISP with no degradation (a random camera per image, as for every degraded condition). It
separates what the simulation itself costs from what each degradation costs; it is not part of mPC.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .common import EvaluateError

#: the six degradations at their default (seen) variants
DEFAULT_DEGRADATIONS = ("noise", "exposure", "demosaic", "white_balance", "gamma", "jpeg")
#: held-out variants of isp_sim.pipeline.SPLITS["unseen"] (demosaic severity 5 is held out as well)
UNSEEN_VARIANTS = ("noise:eld", "white_balance:tint", "gamma:tone")
COMPOSITES = ("composite", "composite:unseen")
ROUNDTRIP = "roundtrip"
#: group names accepted in place of a list of specs
GROUPS = {"all": DEFAULT_DEGRADATIONS + UNSEEN_VARIANTS, "default": DEFAULT_DEGRADATIONS,
          "seen": DEFAULT_DEGRADATIONS, "unseen": UNSEEN_VARIANTS, "composites": COMPOSITES}


def _registry():
    from isp_sim.degradations import DEGRADATIONS

    return DEGRADATIONS


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"noise:eld"`` -> ``("noise", "eld")`` after validating the name and the variant (clear errors)."""
    spec = str(spec).strip()
    if not spec:
        raise EvaluateError("empty degradation name")
    name, _, variant = spec.partition(":")
    if name == "composite":
        if variant not in ("", "seen", "unseen"):
            raise EvaluateError(f"unknown composite split {variant!r} in {spec!r}; use composite or composite:unseen")
        return name, (variant or "seen")
    reg = _registry()
    if name not in reg:
        raise EvaluateError(f"unknown degradation {name!r} (in {spec!r}); choose from {', '.join(reg)}, "
                            f"composite, composite:unseen, or a group: {', '.join(GROUPS)}")
    if variant and variant not in reg[name].VARIANTS:
        raise EvaluateError(f"unknown variant {variant!r} of degradation {name!r}; choose from "
                            f"{', '.join(reg[name].VARIANTS)}")
    return name, (variant or None)


def expand_specs(items: Iterable[str] | str | None) -> list[str]:
    """Comma/space separated specs and group names -> validated, de-duplicated list (order kept)."""
    if items is None:
        items = ["default"]
    if isinstance(items, str):
        items = [items]
    out: list[str] = []
    for item in items:
        for tok in str(item).replace(",", " ").split():
            for spec in GROUPS.get(tok, (tok,)):
                parse_spec(spec)
                if spec not in out:
                    out.append(spec)
    if not out:
        raise EvaluateError("no degradations given")
    return out


def parse_severities(text: str | int | Sequence[int]) -> list[int]:
    """``"3"``, ``"1,3,5"``, ``"1..5"`` or a list -> sorted unique ints in 1..5 (clear error otherwise)."""
    if isinstance(text, int):
        vals = [text]
    elif isinstance(text, str):
        t = text.strip()
        try:
            if ".." in t:
                a, b = t.split("..", 1)
                vals = list(range(int(a), int(b) + 1))
            else:
                vals = [int(v) for v in t.replace(",", " ").split()]
        except ValueError:
            raise EvaluateError(f"severities must look like 3, 1,3,5 or 1..5, got {text!r}") from None
    else:
        vals = [int(v) for v in text]
    if not vals or any(v not in range(1, 6) for v in vals):
        raise EvaluateError(f"severities must be within 1..5, got {text!r}")
    return sorted(set(vals))


def split_of(name: str, variant: str | None, severity: int) -> str:
    """"seen" | "unseen" | "other" for a single degradation (see the module docstring)."""
    from isp_sim.pipeline import SPLITS

    if name == "composite":
        return "unseen" if variant == "unseen" else "seen"
    if severity <= 0:
        return "clean"
    reg = _registry()
    v = variant or reg[name].VARIANTS[0]

    def match(entry) -> bool:
        n, ev, allowed, _ = entry
        return n == name and (ev is None or ev == v) and severity in allowed

    if any(match(e) and e[3] for e in SPLITS["unseen"]):
        return "unseen"
    if any(match(e) for e in SPLITS["seen"]):
        return "seen"
    return "other"


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: ``spec`` ("" for clean) at ``severity`` (0 for clean)."""

    spec: str = ""
    severity: int = 0

    @property
    def is_clean(self) -> bool:
        return not self.spec

    @property
    def is_roundtrip(self) -> bool:
        return self.spec == ROUNDTRIP

    @property
    def name(self) -> str:
        if self.is_clean or self.is_roundtrip:
            return self.spec or "clean"
        return parse_spec(self.spec)[0]

    @property
    def variant(self) -> str | None:
        return parse_spec(self.spec)[1] if self.spec and not self.is_roundtrip else None

    @property
    def kind(self) -> str:
        if self.is_clean:
            return "clean"
        if self.is_roundtrip:
            return "reference"
        return "composite" if self.name == "composite" else "single"

    @property
    def label(self) -> str:
        if self.is_clean:
            return "clean"
        if self.is_roundtrip:
            return ROUNDTRIP
        base = self.spec.replace(":", "-")
        if base == "composite-seen":
            base = "composite"
        return f"{base}-{self.severity}"

    @property
    def split(self) -> str:
        if self.is_clean or self.is_roundtrip:
            return self.kind
        return split_of(self.name, self.variant, self.severity)

    def pipeline(self):
        """The ``isp_sim`` pipeline of this condition (None for clean)."""
        if self.is_clean:
            return None
        from isp_sim.pipeline import make_pipeline

        if self.is_roundtrip:
            return make_pipeline([], 1)  # unprocess -> reference ISP, no degradation

        name, variant = parse_spec(self.spec)
        if name == "composite":
            return make_pipeline(["composite:unseen" if variant == "unseen" else "composite"], self.severity)
        return make_pipeline([name], self.severity, variants={name: variant} if variant else None)

    def seed_key(self, file_name: str) -> str:
        return f"{self.label}/{file_name}"

    def to_dict(self) -> dict:
        return {"label": self.label, "spec": self.spec, "name": self.name, "variant": self.variant,
                "severity": self.severity, "kind": self.kind, "split": self.split}


def build_grid(specs: Iterable[str] | str | None, severities: str | Sequence[int] = "1..5",
               roundtrip: bool = False) -> list[Condition]:
    """The clean condition (and the ISP round trip when asked) followed by every spec x severity."""
    specs = expand_specs(specs)
    sev = parse_severities(severities)
    ref = [Condition(ROUNDTRIP, 0)] if roundtrip else []
    return [Condition()] + ref + [Condition(s, v) for s in specs for v in sev]
