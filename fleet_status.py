"""``main.py status``: what running daemons say, one line per shard, then the fleet they make together.

    python main.py status                                              # the daemon at DEFAULT_DAEMON_URL
    python main.py status --daemon-url http://10.0.0.1:8000 --daemon-url http://10.0.0.2:8000   # shards

Each ``--daemon-url`` is one daemon; several are the shards of one fleet (``main.py infer --daemon
--shard K/N`` each) and are read together through :class:`daemon_client.FleetClient`. The output is
one line per shard (its servers, model and last forecast, or "shard 1/3 at http://... unreachable:
<why>"), the fleet's servers by risk level and its active alerts, most urgent first; ``--json`` prints
the same as one JSON document.

Exit codes (errors.py; README.md, Exit codes): 0 every shard answered and they make one fleet; 1 they
answered but do not make one fleet (a server reported by two shards, shards that disagree on N, a slice
given twice or missing, an unsharded daemon among shards); 3 a shard is unreachable or refused a read
(the others are still shown).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from cli_options import add_options, option, settings_from
from common_utils import resolve_api_key, setup_logging
from config import API_KEY_ENV, API_KEY_FILE_ENV, CLIENT, DEFAULT_DAEMON_URL, FLEET_STATUS, HORIZON_TEXT
from daemon_client import NO_RETRY, FleetClient, FleetError
from errors import EXIT_NEGATIVE, EXIT_OK, EXIT_RUNTIME, run_cli

CLI_FAILED = "status failed"


@dataclass(frozen=True)
class StatusSettings:
    """``main.py status``: which daemons to read, and how."""

    daemon_urls: list[str] = option(
        help=f"a daemon to read; repeat it for each shard of one fleet (default {DEFAULT_DAEMON_URL})",
        factory=list, flag="--daemon-url", repeat=True, metavar="URL")
    api_key: str | None = option(None, f"a key with the read scope (default: the first read key in the file "
                                       f"${API_KEY_FILE_ENV}, else ${API_KEY_ENV})")
    timeout: float = option(CLIENT.timeout_seconds, "seconds each daemon has to answer one request (all are asked "
                                                    "at once)", parse=float, metavar="SECONDS")
    json: bool = option(False, "print the fleet as one JSON document instead of lines")


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``main.py status`` (StatusSettings' fields)."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_options(parser, StatusSettings)


def read_fleet(fleet: FleetClient) -> dict[str, Any]:
    """Status, forecasts and alerts of every shard, merged (a read no shard answered: None and its error lines)."""
    view: dict[str, Any] = {"failed": {}}
    for key, method in (("status", "status"), ("predictions", "predictions_current"), ("alerts", "alerts")):
        try:
            view[key] = getattr(fleet, method)(retry=NO_RETRY)  # a snapshot: a shard restarting is shown as down
        except FleetError as exc:
            view[key] = None
            rows = exc.shards
        else:
            rows = view[key]["shards"]
        for row in rows:
            if not row["ok"]:
                view["failed"].setdefault(row["url"], row["line"])
    return view


def _alert_line(alert: dict[str, Any]) -> str:
    horizon = HORIZON_TEXT.get(alert.get("horizon"), alert.get("horizon"))
    shard = f" (shard {alert['shard']})" if alert.get("shard") else ""
    return f"  {alert.get('level')}: {alert.get('server_name')}{shard} {alert.get('metric')} +{horizon}: " \
           f"{alert.get('reason')}"


def render(view: dict[str, Any], urls: list[str]) -> list[str]:
    """The lines ``main.py status`` prints for ``view`` (:func:`read_fleet`)."""
    status, predictions, alerts = view["status"], view["predictions"], view["alerts"]
    lines = []
    rows = status["shards"] if status else [{"url": url, "ok": False, "line": view["failed"].get(url, url)}
                                            for url in urls]
    for row in rows:
        lines.append(view["failed"].get(row["url"], row["line"]) if row["ok"] else row["line"])
    answered = status["shards_answered"] if status else 0
    fleet = f"fleet: {answered} of {len(urls)} shard{'s' if len(urls) != 1 else ''} answered"
    if predictions:
        summary = predictions["summary"]
        fleet += (f"; {len(predictions['servers'])} servers: "
                  + ", ".join(f"{count} {level.replace('_', ' ')}" for level, count in summary.items()))
    if alerts:
        firing = alerts["alerts"]
        critical = sum(1 for a in firing if a.get("level") == "critical")
        fleet += f"; {len(firing)} active alerts ({critical} critical, {len(firing) - critical} warning)"
    lines.append(fleet)
    if alerts:
        lines += [_alert_line(a) for a in alerts["alerts"][:FLEET_STATUS.alerts_shown]]
    for problem in status["problems"] if status else []:
        lines.append(f"problem: {problem}")
    for name, where in (predictions or {}).get("duplicates", {}).items():
        lines.append(f"problem: server {name} is reported by {' and '.join(where)} (misrouted: its records reached "
                     f"more than one shard)")
    return lines


def as_document(view: dict[str, Any], urls: list[str]) -> dict[str, Any]:
    """``--json``: the shards' lines, the fleet's servers (name, shard, status, risk) and its active alerts."""
    status, predictions, alerts = view["status"] or {}, view["predictions"] or {}, view["alerts"] or {}
    return {"shards": status.get("shards") or [{"url": url, "ok": False, "line": view["failed"].get(url)}
                                                for url in urls],
            "failed": view["failed"], "problems": status.get("problems", []),
            "duplicates": predictions.get("duplicates", {}), "summary": predictions.get("summary"),
            "servers": [{k: s.get(k) for k in ("server_name", "shard", "profile", "status", "risk_level", "risk_score")}
                        for s in predictions.get("servers", [])],
            "alerts": alerts.get("alerts", [])}


def exit_code(view: dict[str, Any]) -> int:
    """3 when a shard failed a read; 1 when the shards answered but are not one fleet; else 0."""
    if view["failed"]:
        return EXIT_RUNTIME
    problems = (view["status"] or {}).get("problems") or (view["predictions"] or {}).get("duplicates")
    return EXIT_NEGATIVE if problems else EXIT_OK


def run_from_args(args: argparse.Namespace) -> int:
    """Read the daemons and print their status; the exit code of :func:`exit_code`."""
    settings = settings_from(StatusSettings, args)
    urls = settings.daemon_urls or [DEFAULT_DAEMON_URL]
    key = resolve_api_key(settings.api_key, scope="read")
    with FleetClient(urls, key, timeout=settings.timeout, retry=NO_RETRY) as fleet:
        view = read_fleet(fleet)
        print(json.dumps(as_document(view, fleet.urls), indent=2) if settings.json
              else "\n".join(render(view, fleet.urls)))
    return exit_code(view)


if __name__ == "__main__":
    setup_logging()
    sys.exit(run_cli(run_from_args, build_arg_parser().parse_args(), CLI_FAILED))
