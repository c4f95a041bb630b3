"""The post-processing chain shared by the filters (``filters.processing``): its steps in their
order, with spreads computed by hand, and the EnSF and LETKF building it from their keys."""

import pytest
import torch

from scoreda.filters.ensf import EnSF
from scoreda.filters.letkf import LETKF
from scoreda.filters.processing import Processing, relax_perturbations, white_fit
from scoreda.observations import PointObservation


def _pair(d: int = 8, M: int = 40, seed: int = 0):
    """A forecast with unit spread and an analysis with spread 2 on the first half of the
    components, 0.5 on the second (both exactly, ddof = 1), different means."""
    g = torch.Generator().manual_seed(seed)

    def unit(n):
        x = torch.randn(M, n, generator=g, dtype=torch.float64)
        x = x - x.mean(0)
        return x / x.std(0)

    prior = 3.0 + unit(d)
    scale = torch.cat([torch.full((d // 2,), 2.0), torch.full((d - d // 2,), 0.5)]).double()
    analysis = 1.0 + unit(d) * scale
    return prior, analysis


def _op(d: int) -> PointObservation:
    return PointObservation(torch.arange(d), sigma=1.0, d=d)


def test_each_step_is_the_identity_at_its_default():
    prior, analysis = _pair()
    assert torch.equal(Processing().after(analysis, prior, _op(8)), analysis)
    before, factor = Processing().before(prior, prior.mean(0), _op(8))
    assert torch.equal(before, prior) and factor == 1.0


def test_cap_then_rtps_gives_the_spread_by_hand():
    prior, analysis = _pair()
    out = Processing(cap_spread=True, rtps=0.5).after(analysis, prior, _op(8))
    # cap: min(σa, σf) = 1 then 0.5; RTPS 0.5: 0.5·1 + 0.5·that
    want = torch.tensor([1.0] * 4 + [0.75] * 4, dtype=torch.float64)
    torch.testing.assert_close(out.std(0), want, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.mean(0), analysis.mean(0), rtol=1e-12, atol=1e-12)


def test_rtpp_comes_before_the_cap():
    """RTPP mixes in the forecast anomalies (spread not additive), then the cap acts on the mix:
    the chain equals the steps applied by hand in that order, not in the other."""
    prior, analysis = _pair()
    out = Processing(rtpp=0.5, cap_spread=True).after(analysis, prior, _op(8))
    mixed = relax_perturbations(analysis, prior - prior.mean(0, keepdim=True), 0.5)
    assert (out.std(0) <= prior.std(0) + 1e-12).all()  # the cap is last
    torch.testing.assert_close(out, Processing(cap_spread=True).after(mixed, prior, _op(8)), rtol=0, atol=0)
    other = relax_perturbations(
        Processing(cap_spread=True).after(analysis, prior, _op(8)), prior - prior.mean(0), 0.5
    )
    assert not torch.allclose(out, other)


def test_inflation_then_adaptive_factor():
    prior, _ = _pair()
    y = prior.mean(0) + 3.0  # innovations far beyond the spread: λ > 1
    got, factor = Processing(inflation=1.1, adaptive_inflation=True).before(prior, y, _op(8))
    lam = factor / 1.1
    assert lam > 1.5
    torch.testing.assert_close(got.std(0), prior.std(0) * factor, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "filt, want",
    [
        (
            LETKF(cutoff=None, rtpp=0.3, rtps=0.2, inflation=1.05),
            Processing(inflation=1.05, rtpp=0.3, rtps=0.2),
        ),
        (
            EnSF(unobserved="none", cap_spread=True, rtps=0.4, adaptive_inflation=True),
            Processing(
                adaptive_inflation=True, observed_only=True, cap_spread=True, rtps=0.4, rtps_unobserved=0.5
            ),
        ),
        (
            EnSF(standardise="spectral", unobserved="none"),
            Processing(adaptive_inflation=True, rtps_unobserved=0.5),
        ),
    ],
)
def test_filters_build_their_chain_from_their_keys(filt, want):
    assert filt.processing == want


def test_regression_without_a_localiser_names_the_key():
    prior, analysis = _pair()
    op = PointObservation(torch.arange(4), sigma=1.0, d=8)  # half the components unobserved
    with pytest.raises(ValueError, match=r"^filter\.unobserved=regress"):
        Processing(regress=True).after(analysis, prior, op)
    assert torch.equal(Processing(regress=True).after(analysis, prior, _op(8)), analysis)  # all observed


def test_white_fit_significance_keeps_noise_out_and_signal_in():
    """σ_w² from 40 observations with no white error (d_j ~ N(0, σo² + v), v = 0.08): clipped at zero
    the fit's mean is ≈ 0.09 (the bias that made the LEnSF's white part hurt on Lorenz-96); with the
    2-standard-error threshold it is nonzero in under 2 % of 2000 draws. A real σ_w² = 25 on 4096
    observations is kept within 5 %, and two groups are tested each on its own."""
    g = torch.Generator().manual_seed(0)
    d = torch.randn(2000, 40, generator=g, dtype=torch.float64) * 1.08**0.5
    slope2 = torch.ones(40, dtype=torch.float64)
    plain = torch.stack([white_fit(m**2 - 0.08, slope2, 1.0) for m in d]).squeeze(1)
    tested = torch.stack([white_fit(m**2 - 0.08, slope2, 1.0, significance=2.0) for m in d]).squeeze(1)
    assert 0.07 < float(plain.mean()) < 0.12
    assert float((tested > 0).double().mean()) < 0.02
    big = torch.randn(4096, generator=g, dtype=torch.float64) * 26.5**0.5  # σo² + v + σ_w² = 1 + 0.5 + 25
    moment = torch.cat([big**2 - 0.5, d[0] ** 2 - 0.08])
    groups = torch.cat([torch.zeros(4096, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    fit = white_fit(moment, torch.ones(4136, dtype=torch.float64), 1.0, groups, 2, significance=2.0)
    assert abs(float(fit[0]) - 25.0) < 1.25 and float(fit[1]) == 0.0
