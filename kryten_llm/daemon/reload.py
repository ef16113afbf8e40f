"""Hot reload: which parts of a new config can be applied live, and which need a restart.

A reload must never half-apply. The new file is validated exactly as `--validate-config`
does (an invalid one is rejected and the running config stays), then every section that can
change live is applied together, while sections bound to connections or sockets opened at
start (the NATS link, the channel subscriptions, the log file, the HTTP and control
endpoints) keep their running values and are reported as needing a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kryten_llm.config import Settings, load_settings

RESTART_SECTIONS = ("nats", "cytube", "response_log", "metrics", "control", "service", "state")
"""Bound to something opened at start; a change is reported, not applied."""


@dataclass(frozen=True)
class ReloadPlan:
    """The settings to run with now, and what changed."""

    settings: Settings
    applied: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "ok": True,
            "applied": self.applied,
            "restart_required": self.restart_required,
        }


def changed_sections(old: Settings, new: Settings) -> list[str]:
    return [name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)]


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    """Keep the running values of restart-only sections; apply everything else."""
    changed = changed_sections(old, new)
    restart = [name for name in changed if name in RESTART_SECTIONS]
    effective = new.model_copy(update={name: getattr(old, name) for name in restart})
    applied = [name for name in changed if name not in RESTART_SECTIONS]
    return ReloadPlan(effective, applied, restart)


def load_for_reload(path: Path | None, old: Settings, force_dry_run: bool) -> ReloadPlan:
    """Read and validate the file again (raises ConfigError, as `--validate-config` reports)."""
    new = load_settings(path)
    if force_dry_run:  # `--dry-run` on the command line outlives any reload
        new = new.model_copy(update={"testing": new.testing.model_copy(update={"dry_run": True})})
    return plan_reload(old, new)
