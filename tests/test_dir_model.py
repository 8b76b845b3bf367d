"""DiRNet model: shapes, input validation, task-refinement hook, seeded initialisation."""
import pytest
import torch

from dir.config import ModelConfig
from dir.model import SCALES, DiRInputError, DiRNet, PlainEncDec, build_dirnet, init_weights

TINY = ModelConfig(channels=(8, 16, 32, 64), proj_dim=16)


@pytest.fixture(scope="module")
def net():
    return build_dirnet(TINY, seed=3).eval()


@pytest.mark.parametrize("hw", [(64, 96), (45, 77), (32, 32)])
def test_forward_features_shapes(net, hw):
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    f = net.forward_features(x)
    assert list(f) == list(SCALES)
    for k in SCALES:
        s = net.strides[k]
        assert f[k].shape == (2, net.out_channels[k], -(-hw[0] // s), -(-hw[1] // s))
    with torch.no_grad():
        y = net.restore(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert net.out_channels == {"s4": 8, "s8": 16, "s16": 32, "s32": 64}
    assert net.strides == {"s4": 4, "s8": 8, "s16": 16, "s32": 32}


@pytest.mark.parametrize("bad, msg", [
    (torch.rand(3, 64, 64), "4 dims"),
    (torch.rand(1, 4, 64, 64), "3 channels"),
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "floating"),
    (torch.rand(1, 3, 64, 64) * 255, r"\[0, 1\]"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    (torch.rand(1, 3, 16, 64), "H, W >= 32"),
    (torch.rand(1, 3, 64, 64).numpy(), "torch.Tensor"),
])
def test_bad_input_errors(net, bad, msg):
    with pytest.raises(DiRInputError, match=msg):
        net.forward_features(bad)
    with pytest.raises(DiRInputError):
        net.restore(bad)


def test_task_refinement_hook_only_updates_alignment():
    net = build_dirnet(TINY, seed=0)
    params = net.enable_task_refinement()
    assert {id(p) for p in params} == {id(p) for p in net.align.parameters()}
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="reference statistics"):
        net.distribution_regularizer(net.forward_features(x))
    net.set_reference_stats({k: torch.full((c,), 0.5) for k, c in net.out_channels.items()},
                            {k: torch.full((c,), 2.0) for k, c in net.out_channels.items()})
    feats = net.forward_features(x)
    loss = sum(f.square().mean() for f in feats.values()) + net.distribution_regularizer(feats)
    loss.backward()
    assert all(p.grad is not None for p in net.align.parameters())
    frozen = list(net.encoder.parameters()) + list(net.pilot.parameters()) + list(net.decoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    with_pilot = net.enable_task_refinement(include_pilot=True)
    assert len(with_pilot) == len(params) + len(list(net.pilot.parameters()))


def test_seeded_init_is_reproducible_and_independent_of_global_rng():
    a = build_dirnet(TINY, seed=5)
    torch.manual_seed(999)
    torch.rand(10)
    b = build_dirnet(TINY, seed=5)
    c = build_dirnet(TINY, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].dtype.is_floating_point and sa[k].numel() > 64)


def test_plain_baseline_same_encoder_decoder():
    plain = init_weights(PlainEncDec(TINY), 0)
    net = DiRNet(TINY)
    assert sum(p.numel() for p in plain.encoder.parameters()) == sum(p.numel() for p in net.encoder.parameters())
    assert sum(p.numel() for p in plain.decoder.parameters()) == sum(p.numel() for p in net.decoder.parameters())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    y, feats = plain(x)
    assert y.shape == x.shape and list(feats) == list(SCALES)


def test_restoration_decoder_starts_as_identity():
    """R(r+, x) = x + head(...) with a zero head: at initialisation restore(x) == x (DiR and the plain baseline),
    also after the align stage has copied D*'s representation path into R."""
    from dir.model import DfRAutoencoder
    x = torch.rand(2, 3, 45, 77, generator=torch.Generator().manual_seed(4)) * 0.9 + 0.05
    net = build_dirnet(TINY, seed=1).eval()
    plain = init_weights(PlainEncDec(TINY), 2).eval()
    dfr = init_weights(DfRAutoencoder(TINY), 3)
    torch.nn.init.normal_(dfr.decoder.head.weight, std=0.1)  # a D* that is not the identity
    net.decoder.init_from_dfr(dfr.decoder)
    assert torch.equal(net.decoder.up2.conv.weight, dfr.decoder.up2.conv.weight)
    assert not torch.equal(net.decoder.head.weight, dfr.decoder.head.weight)  # R keeps its own zero head
    with torch.no_grad():
        for y in (net.restore(x, clamp=False), net.restore(x), plain(x)[0], plain.restore(x)):
            assert y.shape == x.shape
            torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
        # the output does depend on the representation once the head is non-zero
        torch.nn.init.normal_(net.decoder.head.weight, std=0.1)
        f = net.forward_features(x)
        g = {k: v * 1.5 for k, v in f.items()}
        assert not torch.allclose(net.decode(f, x), net.decode(g, x))


def test_dfr_decoder_has_no_input_path():
    """D* decodes from the features alone: no input-branch layers, and for fixed features the output is the same
    whatever image is passed alongside (it cannot copy its input through)."""
    from dir.model import DfRAutoencoder, RestorationDecoder
    dfr = init_weights(DfRAutoencoder(TINY), 0)
    torch.nn.init.normal_(dfr.decoder.head.weight, std=0.1)
    assert dfr.decoder.input_skip is False
    names = {n.split(".")[0] for n, _ in dfr.decoder.named_parameters()}
    assert names == {"top", "fuse", "up1", "up2", "head"}
    r = DiRNet(TINY).decoder
    assert r.input_skip and {"skip1", "skip2", "mix1", "mix2"} <= {n.split(".")[0] for n, _ in r.named_parameters()}
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        f = dfr.encoder(x1)
        y_size, y1, y2 = dfr.decoder(f, (64, 64)), dfr.decoder(f, x1), dfr.decoder(f, x2)
    assert torch.equal(y_size, y1) and torch.equal(y1, y2)
    with pytest.raises(ValueError, match="no input path|must not have"):
        DiRNet(TINY).decoder.init_from_dfr(RestorationDecoder(TINY.channels, input_skip=True))
    with pytest.raises(TypeError, match="input image"):
        r(f, (64, 64))


def test_old_decoder_option_and_task_records():
    """``restore_skip: false`` is the old feature-only decoder (starts from all of D*, head included); a detector's
    DiR record written before the option existed is rebuilt with it, so old task checkpoints still fit."""
    import dataclasses

    from dir.model import DfRAutoencoder
    from tasks.backbones import DetectorConfig, load_dir_body
    old = ModelConfig(channels=(8, 16, 32, 64), proj_dim=16, restore_skip=False)
    net = build_dirnet(old, seed=0)
    assert not net.decoder.input_skip
    dfr = init_weights(DfRAutoencoder(old), 1)
    net.decoder.init_from_dfr(dfr.decoder)
    assert all(torch.equal(a, b) for a, b in zip(net.decoder.state_dict().values(),
                                                  dfr.decoder.state_dict().values()))
    record = {k: v for k, v in dataclasses.asdict(old).items() if k != "restore_skip"}
    cfg = DetectorConfig(backbone="dir", dir_model=dict(record))
    body = load_dir_body(cfg, weights=False)
    assert body.cfg.restore_skip is False and cfg.dir_model["restore_skip"] is False
    cfg_new = DetectorConfig(backbone="dir", dir_model={"channels": [8, 16, 32, 64], "proj_dim": 16})
    assert load_dir_body(cfg_new, weights=False).cfg.restore_skip is True


def test_dtype_and_device_errors():
    """A float tensor of another dtype than the weights is a clear DiRInputError (not a conv error deep inside);
    inside torch.autocast the mixed dtypes are accepted."""
    net = build_dirnet(TINY, seed=0).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for dt in (torch.float64, torch.float16):
        with pytest.raises(DiRInputError, match="dtype"):
            net.forward_features(x.to(dt))
        with pytest.raises(DiRInputError, match="dtype"):
            net.restore(x.to(dt))
    with pytest.raises(DiRInputError, match="dtype"):
        PlainEncDec(TINY).restore(x.double())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        f = net.forward_features(x.to(torch.bfloat16))
    assert f["s32"].shape == (1, 64, 2, 2)


def test_std_floor_keeps_dead_channels_bounded():
    """A channel that was dead (std 0) where the statistics were measured must not blow up in standardised units
    when it is active on another image; the pilot started from E* still reproduces r-> = E*(x) exactly."""
    from dir.model import STD_FLOOR_REL, DfRAutoencoder, floor_std
    dfr = init_weights(DfRAutoencoder(TINY), 0).eval()
    net = build_dirnet(TINY, seed=1).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 64, 64, generator=g)
    with torch.no_grad():
        f = dfr.encoder(x)
    mean = {k: v.mean(dim=(0, 2, 3)) for k, v in f.items()}
    std = {k: v.std(dim=(0, 2, 3)) for k, v in f.items()}
    for k in SCALES:  # channel 0 "dead" on the measurement patches, but active on x
        std[k][0] = 0.0
        mean[k][0] = 0.0
    net.set_reference_stats(mean, std)
    net.set_base_stats(mean, std)
    for k in SCALES:
        for what in ("ref", "base"):
            s = getattr(net, f"{what}_std_{k}")
            assert float(s[0]) >= STD_FLOOR_REL * float(std[k].mean()) * 0.999
            assert torch.equal(s[1:], floor_std(std[k])[1:])
    net.pilot.init_from_dfr(dfr.encoder, *net.reference_stats())
    with torch.no_grad():
        torch.testing.assert_close(net.pilot_features(x)["s32"], f["s32"], atol=1e-4, rtol=1e-4)
        z = net.pilot(x)  # standardised units
    for k in SCALES:
        live = z[k][:, 1:].abs().max()
        assert float(z[k][:, 0].abs().max()) < max(100.0, 20 * float(live))  # 1e-4 floor: ~1e4 x the activation
