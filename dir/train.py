"""Training of the DiR stages (``python -m dir train --stage ...``) and of the plain encoder-decoder baseline.

Stages (each resumable from ``<out_dir>/<stage>/last.pt``; logs in ``<out_dir>/<stage>/log.jsonl``):

* ``mmi``     - encoder E + projection heads, multi-view MI maximisation on degraded views only -> ``mmi.pt``.
* ``dfr``     - degradation-free reference autoencoder (E*, D*) on clean patches, L1 -> ``dfr.pt``.
* ``align``   - pilot P + alignment A (E, E*, D* frozen): feature-, distribution-, pixel-, pilot- and MI terms
  -> ``dirnet_align.pt`` (a DiRNet with the DfR channel statistics stored and R
  initialised from D* - still the identity y = x, see ``RestorationDecoder.init_from_dfr``).
* ``restore`` - restoration decoder ``y = R(r+, x) = x + head(...)`` (representation path initialised from D*,
  input branch fresh, zero head so it starts as the identity) trained on degraded -> clean, optionally with P and A
  (lr x ``finetune_lr_mult``, plus the distribution regulariser) -> ``dirnet.pt``.
* ``plain``   - baseline: the same encoder + decoder (with the same input branch and residual) trained directly degraded -> clean with L1, for as many steps as
  the four DiR stages together (same data, batch size and patch size) -> ``plain.pt``.

Everything random is a function of ``run.seed``: weights come from :func:`dir.model.init_weights`, batches from
:class:`dir.data.PatchDataset`, local MI locations from a per-step ``torch.Generator``; so two runs with the same
config give identical loss logs on CPU, and a resumed run continues the exact same curve.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from isp_sim.seeding import image_seed

from .checkpoint import (DIRNET_FORMAT, atomic_save, atomic_write_text, load_file, load_model_file,
                         load_state_strict, save_model)
from .config import STAGES, DiRConfig, LossConfig, ModelConfig, StageConfig
from .data import PatchDataset, batch_stream, load_images, make_degrader
from .losses import build_critic, local_embeddings, moment_loss, multiview_mi_loss, pixel_l1, relative_l1
from .model import SCALES, DfRAutoencoder, DiREncoder, DiRNet, MIHeads, PlainEncDec, init_weights

# dfr stays v1 (D* is unchanged); plain v2 / dirnet v2: decoder with the input branch and global residual
FORMATS = {"mmi": "dir-mmi-v1", "dfr": "dir-dfr-v1", "plain": "dir-plain-v2"}
TRAIN_FORMAT = "dir-train-v2"  # training checkpoints (last.pt); v1 ones hold the old decoder
OUTPUTS = {"mmi": "mmi.pt", "dfr": "dfr.pt", "align": "dirnet_align.pt", "restore": "dirnet.pt", "plain": "plain.pt"}


# ----------------------------------------------------------------------------------------------------------------
# MI terms shared by stages mmi and align
# ----------------------------------------------------------------------------------------------------------------
def mi_terms(feats: dict, batch: int, views: int, heads: MIHeads, critic_g: nn.Module, critic_l: nn.Module,
             lcfg: LossConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Multi-view MI loss on features of ``batch * views`` images ordered image-major (``b*K + k``).

    ``L_MI = w_g * L(global embeddings) + w_l * mean_s L(local embeddings at scale s)``, where ``L`` is the negative
    MI lower bound (InfoNCE or JSD) averaged over all view pairs. Returns the loss and the bound estimates."""
    logs = {}
    loss = feats["s4"].new_zeros(())
    if lcfg.mi_global > 0:
        g = heads.global_embed(feats).view(batch, views, -1)
        lg, mig = multiview_mi_loss([g[:, k] for k in range(views)], critic_g, lcfg.estimator)
        loss = loss + lcfg.mi_global * lg
        logs["mi_global"] = _f(mig)
    if lcfg.mi_local > 0:
        total, bounds = 0.0, []
        for s in SCALES:
            e = heads.local_embed(feats, s)
            e = e.view(batch, views, *e.shape[1:])
            embs = local_embeddings([e[:, k] for k in range(views)], lcfg.local_samples, gen)
            ls, mis = multiview_mi_loss(embs, critic_l, lcfg.estimator)
            total = total + ls
            bounds.append(_f(mis))
        loss = loss + lcfg.mi_local * total / len(SCALES)
        logs["mi_local"] = sum(bounds) / len(bounds)
    return loss, logs


def _f(t) -> float:
    """A logged scalar (detached)."""
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def _freeze(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


# ----------------------------------------------------------------------------------------------------------------
# Stage modules: forward(batch, gen) -> (loss, logs)
# ----------------------------------------------------------------------------------------------------------------
class MMIStage(nn.Module):
    """E + MI heads + critics; loss = L_MI on K degraded views (no clean image is used)."""

    def __init__(self, m: ModelConfig, lc: LossConfig):
        super().__init__()
        self.lc = lc
        self.encoder = DiREncoder(m.channels, m.blocks, m.gn_groups, m.norm)
        self.heads = MIHeads(m.channels, m.proj_dim)
        self.critic_g = build_critic(lc.critic, m.proj_dim, lc.temperature)
        self.critic_l = build_critic(lc.critic, m.proj_dim, lc.temperature)

    def forward(self, batch: dict, gen: torch.Generator):
        v = batch["views"]
        b, k = v.shape[:2]
        loss, logs = mi_terms(self.encoder(v.flatten(0, 1)), b, k, self.heads, self.critic_g, self.critic_l,
                              self.lc, gen)
        return loss, logs


class DfRStage(nn.Module):
    """DfR autoencoder; loss = mean |D*(E*(x)) - x| on clean patches."""

    def __init__(self, m: ModelConfig, lc: LossConfig):
        super().__init__()
        self.ae = DfRAutoencoder(m)

    def forward(self, batch: dict, gen: torch.Generator):
        x = batch["clean"]
        rec, _ = self.ae(x)
        loss = pixel_l1(rec, x)
        return loss, {"l1": _f(loss)}


def _rep(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.repeat_interleave(k, dim=0)


class AlignStage(nn.Module):
    """Pilot + alignment (+ MI heads on r+); E (from mmi) and E*, D* (from dfr) frozen.

    loss = w_feat L_feat(r+, r*) + w_dist L_dist(r+, r*) + w_pilot L_feat(r->, r*) + w_pix |D*(r+) - x| + w_mi L_MI(r+)
    with every term averaged over the scales s4..s32 and over the K views."""

    def __init__(self, m: ModelConfig, lc: LossConfig):
        super().__init__()
        self.lc = lc
        self.net = DiRNet(m)
        self.net.check_inputs = False
        self.dfr = DfRAutoencoder(m)
        self.heads = MIHeads(m.channels, m.proj_dim)
        self.critic_g = build_critic(lc.critic, m.proj_dim, lc.temperature)
        self.critic_l = build_critic(lc.critic, m.proj_dim, lc.temperature)

    def freeze_pretrained(self) -> None:
        _freeze(self.net.encoder)
        _freeze(self.net.decoder)
        _freeze(self.dfr)

    def forward(self, batch: dict, gen: torch.Generator):
        lc = self.lc
        clean, v = batch["clean"], batch["views"]
        b, k = v.shape[:2]
        with torch.no_grad():
            rstar = {s: _rep(f, k) for s, f in self.dfr.encoder(clean).items()}
        _, rp, rplus = self.net.representations(v.flatten(0, 1))
        n = len(SCALES)
        feat = sum(relative_l1(rplus[s], rstar[s]) for s in SCALES) / n
        dist_ = sum(moment_loss(rplus[s], rstar[s]) for s in SCALES) / n
        pilot = sum(relative_l1(rp[s], rstar[s]) for s in SCALES) / n
        loss = lc.feat * feat + lc.dist * dist_ + lc.pilot * pilot
        logs = {"feat": _f(feat), "dist": _f(dist_), "pilot": _f(pilot)}
        if lc.pix > 0:
            pix = pixel_l1(self.dfr.decoder(rplus, clean.shape[-2:]), _rep(clean, k))
            loss = loss + lc.pix * pix
            logs["pix"] = _f(pix)
        if lc.mi_align > 0:
            lmi, mlogs = mi_terms(rplus, b, k, self.heads, self.critic_g, self.critic_l, lc, gen)
            loss = loss + lc.mi_align * lmi
            logs.update(mlogs)
        return loss, logs


class RestoreStage(nn.Module):
    """R trained on degraded -> clean, ``L = mean |R(r+(x), x) - clean|`` with ``R(r+, x) = x + head(...)``; E frozen; P and A frozen or fine-tuned with the distribution
    regulariser ``w_dist * L_dist(r+, stored DfR statistics)``."""

    def __init__(self, m: ModelConfig, lc: LossConfig, finetune_alignment: bool):
        super().__init__()
        self.lc = lc
        self.finetune = finetune_alignment
        self.net = DiRNet(m)
        self.net.check_inputs = False

    def freeze_pretrained(self) -> None:
        _freeze(self.net.encoder)
        if not self.finetune:
            _freeze(self.net.pilot)
            _freeze(self.net.align)

    def forward(self, batch: dict, gen: torch.Generator):
        clean, v = batch["clean"], batch["views"]
        k = v.shape[1]
        x = v.flatten(0, 1)
        rplus = self.net.forward_features(x)
        pix = pixel_l1(self.net.decode(rplus, x), _rep(clean, k))
        loss, logs = pix, {"pix": _f(pix)}
        if self.finetune and self.lc.dist > 0:
            reg = self.net.distribution_regularizer(rplus)
            loss = loss + self.lc.dist * reg
            logs["dist"] = _f(reg)
        return loss, logs


class PlainStage(nn.Module):
    """Plain encoder-decoder baseline; loss = mean |Dec(E(x), x) - x_clean| (x degraded; same decoder as R)."""

    def __init__(self, m: ModelConfig, lc: LossConfig):
        super().__init__()
        self.model = PlainEncDec(m)

    def forward(self, batch: dict, gen: torch.Generator):
        clean, v = batch["clean"], batch["views"]
        k = v.shape[1]
        x = v.flatten(0, 1)
        pix = pixel_l1(self.model(x)[0], _rep(clean, k))
        return pix, {"pix": _f(pix)}


# ----------------------------------------------------------------------------------------------------------------
# Runtime helpers
# ----------------------------------------------------------------------------------------------------------------
def dist_info(device_pref: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises torch.distributed (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_pref not in ("auto", "cpu", "cuda"):
        raise ValueError(f"run.device must be auto|cpu|cuda, got {device_pref!r}")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but CUDA is not available")
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _comparable(cfg: DiRConfig, stage: str) -> dict:
    """Config parts that must not change when resuming ``stage`` (steps may grow; logging/workers may change)."""
    d = cfg.to_dict()
    st = dict(d["plain" if stage == "plain" else stage])
    for k in ("steps", "ckpt_every", "log_every"):
        st.pop(k, None)
    # decoder_init only concerns stage restore; "dfr" (R from D*) was the only behaviour before the option existed,
    # so it is left out and such checkpoints stay comparable
    if stage != "restore" or st.get("decoder_init") == "dfr":
        st.pop("decoder_init", None)
    data = dict(d["data"])
    data.pop("num_workers", None)
    return {"model": d["model"], "data": data, "loss": d["loss"], "stage": st, "seed": d["run"]["seed"]}


def _read_log(path: Path, upto: int) -> list[str]:
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and json.loads(line).get("step", -1) <= upto:
            lines.append(line)
    return lines


def stage_dir(cfg: DiRConfig, stage: str) -> Path:
    return Path(cfg.run.out_dir) / stage


def output_path(cfg: DiRConfig, stage: str) -> Path:
    """The model file a stage exports."""
    return Path(cfg.run.out_dir) / OUTPUTS[stage]


def _need(cfg: DiRConfig, stage: str, for_stage: str) -> Path:
    p = output_path(cfg, stage)
    if not p.is_file():
        raise FileNotFoundError(f"stage '{for_stage}' needs {p}; run `python -m dir train --stage {stage} "
                                f"--config ...` first")
    return p


def build_stage(cfg: DiRConfig, stage: str) -> nn.Module:
    """The stage module, initialised from the seed and loaded with the outputs of the previous stages."""
    m, lc, seed = cfg.model, cfg.loss, cfg.run.seed
    if stage == "mmi":
        mod = init_weights(MMIStage(m, lc), image_seed(seed, "init/mmi"))
    elif stage == "dfr":
        mod = init_weights(DfRStage(m, lc), image_seed(seed, "init/dfr"))
    elif stage == "plain":
        mod = init_weights(PlainStage(m, lc), image_seed(seed, "init/plain"))
    elif stage == "align":
        mod = init_weights(AlignStage(m, lc), image_seed(seed, "init/align"))
        _, st, _ = load_model_file(_need(cfg, "mmi", stage), FORMATS["mmi"])
        load_state_strict(mod.net.encoder, {k[len("encoder."):]: v for k, v in st.items()
                                            if k.startswith("encoder.")}, "mmi.pt (encoder)")
        _, st, _ = load_model_file(_need(cfg, "dfr", stage), FORMATS["dfr"])
        load_state_strict(mod.dfr, st, "dfr.pt")
        # R's representation path starts as D*'s; its input branch/mixers are fresh and its head zero (R = identity)
        mod.net.decoder.init_from_dfr(mod.dfr.decoder)
        mod.freeze_pretrained()
    elif stage == "restore":
        mod = RestoreStage(m, lc, cfg.restore.finetune_alignment)
        _, st, _ = load_model_file(_need(cfg, "align", stage), DIRNET_FORMAT)
        load_state_strict(mod.net, st, "dirnet_align.pt")
        if cfg.restore.decoder_init == "scratch":
            # R from its own seeded initialisation, replacing the D* layers copied in stage align (zero head: still
            # y = x at step 0)
            init_weights(mod.net.decoder, image_seed(seed, "init/restore_decoder"))
        mod.freeze_pretrained()
    else:
        raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
    return mod


def stage_settings(cfg: DiRConfig, stage: str) -> tuple[StageConfig, int]:
    """(stage config, number of steps)."""
    if stage == "plain":
        return cfg.plain, cfg.plain_steps()
    sc = getattr(cfg, stage)
    return sc, sc.steps


def _param_groups(mod: nn.Module, stage: str, sc: StageConfig) -> list[dict]:
    if stage == "restore":
        slow = [p for n, p in mod.named_parameters() if p.requires_grad and not n.startswith("net.decoder.")]
        fast = [p for n, p in mod.named_parameters() if p.requires_grad and n.startswith("net.decoder.")]
        groups = [{"params": fast, "lr": sc.lr}]
        if slow:
            groups.append({"params": slow, "lr": sc.lr * sc.finetune_lr_mult})
        return groups
    return [{"params": [p for p in mod.parameters() if p.requires_grad], "lr": sc.lr}]


def _lr_at(base: float, step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 5% of ``base``."""
    import math
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ----------------------------------------------------------------------------------------------------------------
# Exports
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def feature_statistics(fn: Callable, images: list, cfg: DiRConfig, device: torch.device, key: str,
                       degrade: Callable | None = None, batches: int = 8) -> tuple[dict, dict]:
    """Per-channel mean/std of ``fn(x)`` (a dict ``s4..s32``) over ``batches`` batches of training patches - clean
    patches, or one degraded view of each when ``degrade`` is given. Deterministic (seeded by ``key``)."""
    bs = cfg.align.batch_size
    ds = PatchDataset(images, cfg.data.patch_size, batches * bs, 1 if degrade else 0, degrade, cfg.run.seed, key)
    sums, sq = {}, {}
    for i in range(batches):
        items = [ds.item(0, i * bs + j) for j in range(bs)]
        x = torch.stack([it["views"][0] if degrade else it["clean"] for it in items]).to(device)
        for s, f in fn(x).items():
            f = f.transpose(0, 1).flatten(1).double()
            sums[s] = sums.get(s, 0.0) + f.mean(1) / batches
            sq[s] = sq.get(s, 0.0) + (f ** 2).mean(1) / batches
    mean = {s: sums[s].float() for s in SCALES}
    std = {s: (sq[s] - sums[s] ** 2).clamp_min(1e-8).sqrt().float() for s in SCALES}
    return mean, std


def prepare_align(mod: "AlignStage", images: list, cfg: DiRConfig, device: torch.device, degrade: Callable) -> None:
    """Before stage ``align`` starts: store the channel statistics of r* (clean patches through E*) and of r0
    (degraded views through E) in the DiRNet, so P and A work in standardised units; with
    ``model.pilot_init: dfr`` start the pilot from E* (so r-> = E*(x_degraded) at step 0)."""
    mod.net.set_reference_stats(*feature_statistics(mod.dfr.encoder, images, cfg, device, "stats/ref"))
    mod.net.set_base_stats(*feature_statistics(mod.net.encoder, images, cfg, device, "stats/base", degrade))
    if cfg.model.pilot_init == "dfr":
        # the stored (floored) statistics, so that r-> = mu* + sigma* P(x) = E*(x) exactly at step 0
        mod.net.pilot.init_from_dfr(mod.dfr.encoder, *mod.net.reference_stats())


def export_stage(cfg: DiRConfig, stage: str, mod: nn.Module, images: list, device: torch.device,
                 meta: dict) -> Path:
    """Write the stage's model file (see ``OUTPUTS``)."""
    mcfg = cfg.to_dict()["model"]
    out = output_path(cfg, stage)
    if stage == "mmi":
        holder = nn.Module()
        holder.encoder, holder.heads = mod.encoder, mod.heads
        return save_model(holder, out, FORMATS["mmi"], mcfg, meta)
    if stage == "dfr":
        return save_model(mod.ae, out, FORMATS["dfr"], mcfg, meta)
    if stage == "plain":
        return save_model(mod.model, out, FORMATS["plain"], mcfg, meta)
    return save_model(mod.net, out, DIRNET_FORMAT, mcfg, meta)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------
def train_stage(cfg: DiRConfig, stage: str, degrade: Callable | None = None, progress: bool = True,
                stop_after: int | None = None) -> Path:
    """Train ``stage`` (resuming from its last checkpoint) and export its model file; returns the file's path.

    degrade: the degradation callable (default ``isp_sim`` CompositeISP on ``data.split``).
    stop_after: stop (after checkpointing) once this many steps are done - used to test resuming."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
    rank, world, device = dist_info(cfg.run.device)
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    sc, total = stage_settings(cfg, stage)
    if stage in ("mmi", "align") and sc.batch_size // world < 2:
        raise ValueError(f"stage {stage}: batch_size {sc.batch_size} over {world} process(es) leaves "
                         f"{sc.batch_size // world} image(s) per process; the MI bound needs at least 2 per process "
                         "(its negatives are the other images of the same process's batch)")
    sdir = stage_dir(cfg, stage)
    ckpt_path, log_path = sdir / "last.pt", sdir / "log.jsonl"
    images = [img for _, img in load_images(cfg.data.source, cfg.data.train_images, "train", cfg.data.max_side,
                                            cfg.data.patch_size)]

    mod = build_stage(cfg, stage).to(device)
    groups = _param_groups(mod, stage, sc)
    opt = torch.optim.AdamW(groups, lr=sc.lr, weight_decay=sc.weight_decay)
    base_lrs = [g["lr"] for g in groups]
    start, elapsed = 0, 0.0
    if ckpt_path.is_file():
        ck = load_file(ckpt_path)
        if ck.get("format") != TRAIN_FORMAT or ck.get("stage") != stage:
            raise RuntimeError(f"{ckpt_path} is not a '{stage}' training checkpoint of format {TRAIN_FORMAT!r} "
                               f"(found {ck.get('format')!r}, stage {ck.get('stage')!r}); checkpoints from before "
                               "the restoration decoder got its input branch cannot be resumed - use a new "
                               "run.out_dir")
        if ck["comparable"] != _comparable(cfg, stage):
            raise RuntimeError(f"{ckpt_path} was written with a different config; use a new run.out_dir or delete "
                               f"{sdir} to restart the stage")
        load_state_strict(mod, ck["model"], str(ckpt_path))
        opt.load_state_dict(ck["optim"])
        start, elapsed = int(ck["step"]), float(ck["elapsed"])
    out = output_path(cfg, stage)
    if start >= total and out.is_file():
        if rank == 0 and progress:
            print(f"[dir] stage {stage}: already complete ({start}/{total} steps) -> {out}")
        return out

    needs_views = stage != "dfr"
    if needs_views and degrade is None:
        degrade = make_degrader(cfg.data.split)
    if stage == "align" and start == 0:
        prepare_align(mod, images, cfg, device, degrade)

    train_mod: nn.Module = mod
    if world > 1:
        lc = cfg.loss
        unused = (stage in ("mmi", "align") and (lc.mi_global == 0 or lc.mi_local == 0)) or \
            (stage == "align" and lc.mi_align == 0)
        train_mod = nn.parallel.DistributedDataParallel(
            mod, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    train_mod.train()
    if hasattr(mod, "freeze_pretrained"):
        mod.freeze_pretrained()  # keeps frozen parts in eval mode

    if rank == 0:
        sdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), Path(cfg.run.out_dir) / "config.yaml")
        atomic_write_text("".join(line + "\n" for line in _read_log(log_path, start)), log_path)

    ds = PatchDataset(images, cfg.data.patch_size, cfg.data.epoch_size, cfg.data.views if needs_views else 0,
                      degrade if needs_views else None, cfg.run.seed, f"train/{stage}")
    end = total if stop_after is None else min(total, stop_after)

    def save(step: int) -> None:
        if rank == 0:
            atomic_save({"format": TRAIN_FORMAT, "stage": stage, "step": step, "elapsed": elapsed,
                         "model": mod.state_dict(), "optim": opt.state_dict(),
                         "comparable": _comparable(cfg, stage), "config": cfg.to_dict()}, ckpt_path)
        _barrier(world)

    bar = tqdm(total=total, initial=start, desc=f"dir {stage}", disable=(rank != 0 or not progress),
               dynamic_ncols=True)
    t_last = time.perf_counter()
    step = start
    for step, batch in batch_stream(ds, sc.batch_size, start, end, cfg.run.seed, rank, world,
                                    cfg.data.num_workers):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = _lr_at(base, step, total)
        gen = torch.Generator().manual_seed(image_seed(cfg.run.seed, f"gen/{stage}/{step}/{rank}"))
        loss, logs = train_mod(batch, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage {stage}: non-finite loss at step {step}: {logs}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if sc.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], sc.grad_clip)
        opt.step()
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        done = step + 1
        bar.update(1)
        if rank == 0 and (done % sc.log_every == 0 or done == end):
            rec = {"stage": stage, "step": done, "loss": _f(loss), **logs,
                   "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 3)}
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{_f(loss):.4f}")
        if done % sc.ckpt_every == 0 or done == end:
            save(done)
    bar.close()
    if end == start:  # nothing to train (steps = 0): still checkpoint so the stage counts as done
        save(start)
    if end < total:
        return ckpt_path
    meta = {"stage": stage, "steps": total, "train_seconds": round(elapsed, 2), "world_size": world,
            "device": str(device.type)}
    if rank == 0:
        mod.eval()
        path = export_stage(cfg, stage, mod, images, device, meta)
        if progress:
            print(f"[dir] stage {stage}: {total} steps in {elapsed:.1f}s -> {path}")
    _barrier(world)
    return output_path(cfg, stage)


def train_all(cfg: DiRConfig, degrade: Callable | None = None, progress: bool = True) -> None:
    """Run mmi, dfr, align, restore and the plain baseline in order."""
    for stage in ("mmi", "dfr", "align", "restore", "plain"):
        train_stage(cfg, stage, degrade, progress)


__all__ = ["train_stage", "train_all", "build_stage", "mi_terms", "output_path", "stage_dir", "feature_statistics"]
