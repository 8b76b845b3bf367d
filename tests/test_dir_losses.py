"""MI bounds and alignment losses behave as their definitions say."""
import math

import pytest
import torch

from dir.losses import (BilinearCritic, CosineCritic, local_embeddings, mi_lower_bound, moment_loss,
                        moment_loss_to_stats, multiview_mi_loss, relative_l1)


def _views(n, d, noise, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    b = a + noise * torch.randn(n, d, generator=g)
    return a, b


@pytest.mark.parametrize("critic", [CosineCritic(0.1), BilinearCritic(32, 0.1)])
@pytest.mark.parametrize("estimator", ["infonce", "jsd"])
def test_mi_bound_higher_for_correlated_views(critic, estimator):
    a, b = _views(128, 32, 0.3, 0)
    ind = torch.randn(128, 32, generator=torch.Generator().manual_seed(1))
    correlated = mi_lower_bound(a, b, critic, estimator).item()
    independent = mi_lower_bound(a, ind, critic, estimator).item()
    assert correlated > independent + 0.5
    if estimator == "infonce":
        assert correlated <= math.log(128) + 1e-6  # InfoNCE can never exceed log N
        assert independent < 0.5  # no shared information found (the estimate may be negative)
        assert correlated > 4.0  # close to its ceiling log 128 = 4.85


def test_infonce_monotone_in_noise():
    vals = [float(mi_lower_bound(*_views(256, 16, s, 2), CosineCritic(0.1))) for s in (0.1, 0.5, 1.0, 3.0)]
    assert vals == sorted(vals, reverse=True)


def test_multiview_loss_and_errors():
    a, b = _views(16, 8, 0.1, 3)
    loss, mi = multiview_mi_loss([a, b, a + 0.05], CosineCritic(0.1))
    assert torch.isclose(loss, -mi)
    with pytest.raises(ValueError, match="two views"):
        multiview_mi_loss([a], CosineCritic(0.1))
    with pytest.raises(ValueError, match="equal shapes"):
        mi_lower_bound(a, b[:, :4], CosineCritic(0.1))
    with pytest.raises(ValueError, match="N >= 2"):
        mi_lower_bound(a[:1], b[:1], CosineCritic(0.1))


def test_local_embeddings_align_positions():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 5, 4, 6, generator=g)
    e1, e2 = local_embeddings([m, m.clone()], 7, torch.Generator().manual_seed(1))
    assert e1.shape == (21, 5) and torch.equal(e1, e2)
    # every row is one (image, location) feature vector of the map
    flat = m.permute(0, 2, 3, 1).reshape(-1, 5)
    assert all(any(torch.equal(r, f) for f in flat) for r in e1)


def test_alignment_losses():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(4, 8, 5, 5, generator=g)
    assert float(relative_l1(t, t)) == 0 and float(moment_loss(t, t)) < 1e-6
    shifted = t * 2 + 1
    assert float(moment_loss(shifted, t)) > 1.0
    assert float(relative_l1(shifted, t)) > 1.0
    mu = t.transpose(0, 1).flatten(1).mean(1)
    sd = t.transpose(0, 1).flatten(1).std(1, unbiased=False)
    assert float(moment_loss_to_stats(t, mu, sd)) < 1e-6
