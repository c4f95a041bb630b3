"""The science of a run: the part of its config that its numbers depend on (hashed into every
checkpoint, so that a run never resumes on other science)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from scoreda.dynamics import model_science
from scoreda.registry import LEGACY_FILTER_KEYS


def science_keys(cfg: DictConfig) -> dict:
    """The part of the config that determines the numbers (hashed into every checkpoint).

    Leaves out what may change on a resume without changing any result: cycles, platform,
    logger, progress, run_dir, and filter.ranks / filter.shard (the same analysis to rounding).
    """
    c = OmegaConf.to_container(cfg, resolve=True)
    c["model"] = model_science(c["model"])
    c["filter"] = LEGACY_FILTER_KEYS | c["filter"]  # the hash of a run made before issue 17
    c["filter"] = {k: v for k, v in c["filter"].items() if k not in ("ranks", "shard")}  # same numbers
    # keys added after runs existed, left out at their defaults so that those runs keep their hash
    if c["model"].get("state") == "pv":
        del c["model"]["state"]
    if c["observation"].get("channels", 0) is None:
        del c["observation"]["channels"]
    for key, default in (("standardise", "point"), ("cap_spread", False), ("kernel", "torch")):
        if c["filter"].get(key) == default:
            del c["filter"][key]
    keys = ["seed", "members", "model", "observation", "filter", "shocks", "forecaster"]
    if c["forecaster"]["name"] == "vit":  # the surrogate's numbers; not how many ranks train it
        keys += ["surrogate", "parallel"]
        c["parallel"] = {k: v for k, v in c["parallel"].items() if k not in ("ranks", "launcher", "backend")}
    return {k: c[k] for k in keys}
