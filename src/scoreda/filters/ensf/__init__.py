"""Ensemble Score Filter (Bao, Zhang & Zhang 2023; seed paper eqs. 6–12), training-free.

The forecast ensemble X [M, d] is standardised (``standardise``: x = x̄ + S z), and samples z run
the reverse SDE from pseudo-time t = 1 down to t_end in ``n_steps`` steps (``schedule``),

    dZ = [b(t) Z − σ²(t) s(Z, t)] dt + σ(t) dW̄,    s = s_prior + h(t) ∇_z log p(y|x),

with the prior score estimated from the members (``prior_score``: ``paired`` or ``mixture``) and
the likelihood term stepped linearly implicit (``integrator``; plain explicit stepping goes
non-finite when the likelihood is sharp, DESIGN.md). Around it, the chain shared with the LETKF
(``filters.processing``): inflation before; regression of unobserved components, spread cap and
RTPS after, in that order. Cost O(n_steps · M · d) (paired), O(n_steps · M² · d) (mixture).

Sharding over R ranks (``comm``; DESIGN.md): ``shard=members`` — rank r integrates a contiguous
block of the members (every rank holds all standardised members x̃ for the mixture score; no
communication per step); ``shard=state`` — rank r integrates a contiguous slice of the state indices
of every member, with the observation operator restricted to that slice and, for ``mixture``, one
all-reduce of the M×M matrix z·x̃ᵀ per step (‖x̃_j‖² once). Noise is a pure function of (key, step,
global member, global state index) (``scoreda.seeding.counter_normal``), and the M×M products are
accumulated in float64, so any R gives the one-rank result to rounding. Rank 0 gathers the analysis
— except in the analysis stage when ``slices_state``: there each rank reads, analyses
(``analyse_slice``) and writes only its slice of the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from scoreda.filters import CONSTRUCTED, Analysis, Capabilities, check_common, config_keys
from scoreda.filters.ensf.integrator import integrate
from scoreda.filters.ensf.prior_score import PRIOR_SCORES
from scoreda.filters.ensf.schedule import Schedule
from scoreda.filters.ensf.standardise import STANDARDISE
from scoreda.filters.processing import Processing, observed_mask
from scoreda.filters.sharding import SHARDS, Collective, block, check_sharding, global_std
from scoreda.observations import ObservationOperator
from scoreda.seeding import noise_key

if TYPE_CHECKING:
    from scoreda.dynamics.grid import Grid
    from scoreda.filters.letkf import LETKF

UNOBSERVED = ("none", "regress")
KERNELS = ("torch", "fused")


@dataclass
class EnSF:
    """``filter=ensf``. The fields are the config keys and their defaults (the schema of
    ``configs/filter/ensf.yaml``), except those marked ``CONSTRUCTED``, which ``from_config`` sets."""

    n_steps: int = 100  # Euler–Maruyama steps from t = 1 to t_end
    prior_score: str = "paired"  # "paired" (the reference code) | "mixture" (the paper's eqs. 11–12)
    eps_alpha: float = 0.05  # α_t = 1 − (1 − eps_alpha) t
    eps_beta: float = 0.5  # β_t² = eps_beta + (1 − eps_beta) t
    t_end: float = 0.0  # ε: last pseudo-time (0 integrates to the end)
    implicit: bool = True  # likelihood term linearly implicit (stable for sharp likelihoods)
    standardise: str = "point"  # x̃ per state index "point" | per wavenumber "spectral" (needs ``grid``)
    rtps: float = 0.0  # relaxation of the analysis spread to the forecast spread (1 = fully)
    inflation: float = 1.0  # multiplicative inflation of the forecast anomalies
    adaptive_inflation: bool = True  # × innovation_inflation(prior, y) (≥ 1) before the analysis
    cap_spread: bool = False  # analysis spread ≤ forecast spread per index, before RTPS
    unobserved: str = "regress"  # unobserved components: "none" (as integrated) | "regress" (from observed)
    rtps_unobserved: float = 0.5  # RTPS of the regressed components (unobserved=regress)
    cutoff: float = 2000.0  # Gaspari–Cohn cutoff of that regression (grid length units; .inf: global)
    cross_level: float = 1.0  # factor on the weight of observations on another level, in it
    shard: str = "members"  # how ranks split the work: "members" | "state"
    kernel: str = "torch"  # the integration: "torch" (any device, operator) | "fused" (compiled, CPU)
    localiser: LETKF | None = field(default=None, metadata=CONSTRUCTED)  # the regression's geometry
    grid: tuple[int, int, int] | None = field(default=None, metadata=CONSTRUCTED)  # (C, H, W), periodic
    chunk_elements: int = field(default=1 << 17, metadata=CONSTRUCTED)  # m × columns of one block

    @property
    def capabilities(self) -> Capabilities:
        """Both shardings; ``standardise=spectral`` needs whole members on each rank."""
        return Capabilities(shards=("members",) if self.standardise == "spectral" else SHARDS)

    def __post_init__(self) -> None:
        if self.prior_score not in PRIOR_SCORES:
            raise ValueError(f"filter.prior_score: expected paired or mixture, got {self.prior_score!r}")
        if self.n_steps < 1:
            raise ValueError(f"filter.n_steps: must be ≥ 1, got {self.n_steps}")
        if not 0 < self.eps_alpha < 1:
            raise ValueError(f"filter.eps_alpha: must be in (0, 1), got {self.eps_alpha}")
        if not 0 <= self.eps_beta <= 1:
            raise ValueError(f"filter.eps_beta: must be in [0, 1], got {self.eps_beta}")
        if not 0 <= self.t_end < 1:
            raise ValueError(f"filter.t_end: must be in [0, 1), got {self.t_end}")
        if self.shard not in SHARDS:
            raise ValueError(f"filter.shard: expected members or state, got {self.shard!r}")
        if self.unobserved not in UNOBSERVED:
            raise ValueError(f"filter.unobserved: expected none or regress, got {self.unobserved!r}")
        if not 0 <= self.rtps_unobserved <= 1:
            raise ValueError(f"filter.rtps_unobserved: must be in [0, 1], got {self.rtps_unobserved}")
        if self.kernel not in KERNELS:
            raise ValueError(f"filter.kernel: expected torch or fused, got {self.kernel!r}")
        if self.kernel == "fused" and self.standardise != "point":
            raise ValueError("filter.kernel=fused takes filter.standardise=point")
        if self.standardise not in STANDARDISE:
            raise ValueError(f"filter.standardise: expected point or spectral, got {self.standardise!r}")
        check_common(self)
        if not self.cutoff > 0:
            raise ValueError(f"filter.cutoff: must be positive (.inf: global), got {self.cutoff}")
        if not self.cross_level >= 0:
            raise ValueError(f"filter.cross_level: must be ≥ 0, got {self.cross_level}")

    @classmethod
    def from_config(cls, cfg, grid: Grid | None = None) -> EnSF:
        """Keys of ``cfg``; the model's ``grid`` gives the shape (C, H, W) and, with
        ``unobserved=regress``, the localiser: the LETKF's geometry with ``cfg.cutoff`` and
        ``cfg.cross_level``."""
        kw = config_keys(cls, cfg)
        if grid is not None:
            kw["grid"] = grid.shape
        if kw.get("unobserved", cls.unobserved) == "regress" and grid is not None:
            from scoreda.filters.letkf import LETKF

            loc = {k: kw.get(k, getattr(cls, k)) for k in ("cutoff", "cross_level")}
            kw["localiser"] = LETKF.from_config(loc | {"rtps": 0.0}, grid)
        return cls(**kw)

    @torch.no_grad()
    def analyse(
        self,
        prior: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None = None,
        comm: Collective | None = None,
        device: torch.device | str | None = None,
    ) -> Analysis:
        """Analysis ensemble [M, d] from the forecast ensemble ``prior`` [M, d] and obs ``y`` [p];
        diagnostics: ``inflation``, the factor the forecast anomalies were multiplied by.

        The noise key is ``generator``'s seed. With ``comm`` (R ranks) every rank passes the full
        prior and all observations; rank r integrates block r of the members or of the state indices
        (``self.shard``) on ``device`` (default: the prior's), and rank 0 returns the gathered
        analysis while the others return None.
        """
        R, rank = (1, 0) if comm is None else (comm.size, comm.rank)
        M, d = prior.shape
        check_sharding(self.shard, M, d, R)
        if R > 1 and self.slices_state(
            observed_mask(operator, d) is None
        ):  # the ranks' slices, then gathered
            cols = block(d, R, rank)
            sub, keep = operator.restrict(cols.start, cols.stop)
            post = self.analyse_slice(
                prior[:, cols], y[keep.to(y.device)], sub, generator, comm, cols, device
            )
            analysis = comm.gather(post.ensemble, dim=1)
            return Analysis(None if analysis is None else analysis.to(post.ensemble.device), post.diagnostics)
        rows = block(M, R, rank) if self.shard == "members" else slice(0, M)
        cols = block(d, R, rank) if self.shard == "state" else slice(0, d)
        device = prior.device if device is None else torch.device(device)

        # global, from the full prior that every rank holds: no communication
        prior, inflation = self.processing.before(prior, y, operator)
        full_operator = operator
        floor = 1e-6 * max(global_std(prior), 1e-30)
        local = prior[:, cols].to(device)  # [M, d'] (d' = d unless shard=state)
        mean = local.mean(0, keepdim=True)
        std = local.std(0, keepdim=True).clamp_min(floor)
        if cols != slice(0, d):
            if self.standardise == "spectral":
                raise ValueError("filter.standardise=spectral needs whole members: use filter.shard=members")
            operator, keep = operator.restrict(cols.start, cols.stop)
            y = y[keep.to(y.device)]
        allreduce = comm.allreduce if R > 1 and self.shard == "state" else None
        analysis = integrate(
            self, local, mean, std, y.to(local), operator, noise_key(generator), rows, cols, allreduce
        )  # [m, d']
        if R > 1:
            analysis = comm.gather(analysis, dim=0 if self.shard == "members" else 1)
            if analysis is None:
                return Analysis(None, {"inflation": inflation})
            analysis = analysis.to(device)
        return Analysis(
            self.processing.after(analysis, prior.to(device), full_operator), {"inflation": inflation}
        )

    def slices_state(self, observes_all: bool) -> bool:
        """Whether ``shard=state`` needs no more than each rank's slice of the state: everything but
        λ, the std floor and the mixture's z·x̃ᵀ is per state index (``analyse_slice``) — unless
        unobserved components are regressed from observed ones nearby (``unobserved=regress`` with
        an operator that leaves some unobserved: not ``observes_all``), which needs their neighbours
        (then every rank holds the whole state and rank 0 regresses after the gather)."""
        if self.shard != "state" or self.standardise != "point":
            return False
        return self.unobserved == "none" or observes_all

    @torch.no_grad()
    def analyse_slice(
        self,
        local: torch.Tensor,
        y: torch.Tensor,
        operator: ObservationOperator,
        generator: torch.Generator | None,
        comm: Collective | None,
        cols: slice,
        device: torch.device | str | None = None,
    ) -> Analysis:
        """This rank's slice [M, d'] of the analysis from its slice ``local`` [M, d'] (the global state
        indices ``cols``) of the forecast, the observations there ``y`` [p'] and the operator
        restricted to them (``PointObservation.restrict``), when ``slices_state``: no rank holds more
        than its slice. Across the ranks only sums travel (``comm.allreduce``): λ's three, the std
        floor's three and, for ``mixture``, the M×M z·x̃ᵀ of each step. Diagnostics as ``analyse``."""
        allreduce = comm.allreduce if comm is not None and comm.size > 1 else None
        device = local.device if device is None else torch.device(device)
        M = local.shape[0]
        local, inflation = self.processing.before(local, y, operator, allreduce)
        floor = 1e-6 * max(global_std(local, allreduce), 1e-30)
        local = local.to(device)
        mean = local.mean(0, keepdim=True)
        std = local.std(0, keepdim=True).clamp_min(floor)
        key = noise_key(generator)
        analysis = integrate(self, local, mean, std, y.to(local), operator, key, slice(0, M), cols, allreduce)
        return Analysis(self.processing.after(analysis, local, operator), {"inflation": inflation})

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.n_steps, self.eps_alpha, self.eps_beta, self.t_end)

    @property
    def processing(self) -> Processing:
        """Inflation (λ on the observed components only, unless the update reaches the unobserved
        ones: ``regress``, or ``spectral`` whose B carries each observation to its neighbours);
        after the analysis: ``unobserved=regress``, ``cap_spread``, ``rtps``."""
        regress = self.unobserved == "regress"
        return Processing.of(
            self,
            observed_only=not (regress or self.standardise == "spectral"),
            regress=regress,
            localiser=self.localiser,
            rtps_unobserved=self.rtps_unobserved,
            cap_spread=self.cap_spread,
        )


REGISTER = {"ensf": EnSF}
