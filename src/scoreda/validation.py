"""Config checks shared by every section: ``require`` (the one check of a parameter dataclass, a
one-line ``ValueError`` naming the key), ``ConfigError`` and ``merge_schema`` (a section onto its
dataclass schema, with "did you mean" for a misspelled key)."""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is ``"<key>: <what is wrong>"``."""


def require(ok: bool, key: str, msg: str) -> None:
    """Raise ``ValueError("<key>: <msg>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key}: {msg}")


def merge_schema(schema, section, key: str) -> DictConfig:
    """``section`` merged onto the dataclass ``schema`` (types, unknown keys): a ``ConfigError`` naming
    the key (under ``key``, the section's place in the config) on the first problem."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), section)
    except OmegaConfBaseException as e:
        full = ".".join(k for k in (key, getattr(e, "full_key", None)) if k)
        msg = str(e).splitlines()[0]
        if "not in struct" in msg or "Key '" in msg and "not" in msg:
            msg = "not a valid key" + _did_you_mean(schema, key, full)
        raise ConfigError(f"{full}: {msg}") from None


def _did_you_mean(schema: type, section: str, full_key: str) -> str:
    """``"; did you mean filter.n_steps?"`` for a misspelled key of the dataclass ``schema`` (the
    section ``section`` of the config: "" for the root, "model"), else ``""``."""
    parent, _, leaf = full_key.rpartition(".")
    node = schema
    for part in parent.removeprefix(section).strip(".").split("."):
        if part:
            node = get_type_hints(node).get(part) if hasattr(node, "__dataclass_fields__") else None
    if not hasattr(node, "__dataclass_fields__"):
        return ""
    close = difflib.get_close_matches(leaf, [f.name for f in fields(node)], n=3, cutoff=0.6)
    prefix = f"{parent}." if parent else ""
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else ""
