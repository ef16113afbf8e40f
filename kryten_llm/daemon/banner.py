"""The start-up banner: what this process is about to run, before it waits for anything.

Logged at INFO as the first thing `start()` does, so the journal says which config, channels,
providers (in the order a reply tries them, with model and key status), bus, metrics and
dry-run setting a run used, even when it then waits for NATS or fails. Key status names the
variable, never a value; a provider whose `api_key_env` names an unset variable is also a
WARNING, as `--validate-config` warns.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kryten_llm import __version__
from kryten_llm.config import (
    MetricsSettings,
    Settings,
    describe_provider,
    missing_key_warnings,
    provider_order,
)
from kryten_llm.daemon.connect import credentials, display_url

log = logging.getLogger(__name__)


def metrics_url(metrics: MetricsSettings) -> str:
    """Where /metrics and /health are served, as configured."""
    if not metrics.enabled:
        return "off"
    host = f"[{metrics.host}]" if ":" in metrics.host else metrics.host
    if metrics.port == 0:
        return f"http://{host} on a free port chosen at start (/metrics, /health)"
    return f"http://{host}:{metrics.port}/metrics (and /health)"


def banner_lines(settings: Settings, config_path: Path | None, dry_run: bool) -> list[str]:
    """The banner, one log line each (a text log writes one record per physical line)."""
    source = str(config_path) if config_path else "(embedded defaults)"
    servers = settings.nats.server_list()
    bus = ", ".join(display_url(url) for url in servers)
    order = provider_order(settings.llm_providers)
    lines = [
        f"kryten-llm {__version__} starting: config {source}; dry run {'on' if dry_run else 'off'}",
        "  channels: " + ", ".join(f"{c.domain}/{c.channel}" for c in settings.channels),
        "  providers, in the order a reply tries them: "
        + "; ".join(
            f"{n}. {describe_provider(name, settings.llm_providers[name])}"
            for n, name in enumerate(order, 1)
        ),
        f"  bus: {bus} as {credentials(settings.nats, servers[0])}",
        f"  metrics: {metrics_url(settings.metrics)}",
    ]
    return lines


def log_banner(settings: Settings, config_path: Path | None, dry_run: bool) -> None:
    for line in banner_lines(settings, config_path, dry_run):
        log.info("%s", line)
    for warning in missing_key_warnings(settings.llm_providers):
        log.warning("%s", warning)
