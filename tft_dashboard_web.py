"""Fleet dashboard: what will go wrong, where, and when - from the daemon's forecasts.

    TFT_DAEMON_URL=http://127.0.0.1:8000 TFT_API_KEY=<a read key> streamlit run tft_dashboard_web.py

Everything it needs comes from its process's environment, never from a visitor, and its key never
leaves the server (no widget, no page text; Docs/DASHBOARD.md, "Keys, daemons and exposure"):
``TFT_DAEMON_URL`` (or an allowlist in ``TFT_DAEMON_URLS``, a selectbox; or the shards of one fleet in
``TFT_DAEMON_SHARDS``, shown as one fleet), ``TFT_API_KEY`` or the read
key of ``TFT_API_KEY_FILE``, ``TFT_DASHBOARD_REFRESH`` (the refresh slider's start value), and
``TFT_DASHBOARD_DEMO=1`` for demo mode (``main.py demo``), the only place an admin key is used.

The page talks to the inference daemon over REST only and shows nothing it did not get from
it: when the daemon is unreachable or has no model, the page says so and stops. CPU is
always shown as "% CPU used" (100 - idle); servers by name, with their profile.

Top to bottom: sidebar (daemon, whether a key is set, refresh, demo mode) -> status bar -> six panels:
Overview, Heatmap, Top Servers, Historical, Model health, Advanced. One :class:`daemon_client.DaemonClient`
per daemon URL and key (``st.cache_resource``) does every request; the panels get it as an
argument, and what it fetched is cached for a moment (``st.cache_data``) so the panels of one
refresh share one round of requests. For the shards of one fleet a :class:`daemon_client.FleetClient`
takes its place: the same reads, each asked of every shard at once and merged, plus a line per shard.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from api_keys import KeyFileError
from common_utils import parse_utc, resolve_api_key, utc_now
from config import (
    ACCURACY_SERVER_WINDOW,
    ALERT_QUALITY,
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    BAND_ADAPT_MAX_SCALE,
    BAND_ADAPT_MIN_SCALE,
    BAND_ADAPT_TARGET_MISS,
    DASHBOARD,
    DASHBOARD_DAEMON_URL_ENV,
    DASHBOARD_DEMO_ADMIN_KEY_ENV,
    DASHBOARD_DEMO_ENV,
    DASHBOARD_TIMEOUT_SECONDS,
    DEFAULT_DAEMON_URL,
    DEMO_SCENARIOS,
    DISPLAY_CPU,
    DRIFT_COVERAGE_BAND,
    DRIFT_MIN_MATURED,
    DRIFT_SKILL_FLOOR,
    DRIFT_SKILL_HOURS,
    DRIFT_WINDOW,
    HORIZON_TEXT,
    HORIZONS,
    LIVE_SELECTION,
    METRIC_LABELS,
    QUANTILE_LEVELS,
    QUANTILES,
    RISK_RED_ABOVE,
    RISK_YELLOW_AT,
    SAMPLING_INTERVAL_MINUTES,
    VALID_PROFILES,
)
from daemon_client import DaemonClient, DaemonError, FleetClient, RetryPolicy
from risk_scoring import tiers_for

logger = logging.getLogger(__name__)

COLORS = {"green": "#2e7d32", "yellow": "#f9a825", "red": "#c62828", "warming_up": "#9e9e9e", "offline": "#616161",
          "not_ready": "#6d4c41"}
KEY_METRICS = [DISPLAY_CPU, "cpu_iowait_pct", "mem_used_pct", "swap_used_pct", "disk_usage_pct"]
HORIZON_SHOWN = {"now": "now", **{label: f"+{text}" for label, text in HORIZON_TEXT.items()}}  # "+1 h"
# Plotly's mode bar would sit on the legends and the heatmap's first row: charts go without it, except the
# Historical one, which keeps only its PNG download (the mode bar shows on hover, above the plot area).
PLAIN_CHART = {"displayModeBar": False}
DOWNLOADABLE_CHART = {"modeBarButtons": [["toImage"]], "displaylogo": False}
PANELS = ["Overview", "Heatmap", "Top Servers", "Historical", "Model health", "Advanced"]
MODEL_DEGRADED = "model_degraded"  # the kind of alert about the model itself (server_name "fleet")
FLEET_GROUP = "all"  # the /accuracy group of the whole fleet (the others are profiles)


def label(metric: str) -> str:
    """'CPU used (%)' - how a metric is named on the page."""
    name, unit = METRIC_LABELS.get(metric, (metric, ""))
    return f"{name} ({unit})" if unit else name


# ============================================================================ data access
@st.cache_resource(show_spinner=False)
def connect(base_url: str, api_key: str) -> DaemonClient:
    """The client of one daemon URL and key, shared by every session and rerun.

    A failed read is not retried (DASHBOARD.request_attempts): the next refresh is the retry.
    """
    return DaemonClient(base_url, api_key or None, timeout=DASHBOARD_TIMEOUT_SECONDS,
                        retry=RetryPolicy(attempts=DASHBOARD.request_attempts))


@st.cache_resource(show_spinner=False)
def connect_fleet(urls: tuple[str, ...], api_key: str) -> FleetClient:
    """The client of the shards of one fleet (``$TFT_DAEMON_SHARDS``) and a key, shared like :func:`connect`."""
    return FleetClient(urls, api_key or None, timeout=DASHBOARD_TIMEOUT_SECONDS,
                       retry=RetryPolicy(attempts=DASHBOARD.request_attempts))


Reader = DaemonClient | FleetClient  # what the panels read through: one daemon, or the shards of one fleet


@dataclass
class Reply:
    """One daemon response: data, or why there is none."""

    data: Any = None
    error: str | None = None
    status: int | None = None


# connect() returns one object per URL and key and keeps it, so its id() names the daemon and key.
@st.cache_data(ttl=DASHBOARD.cache_seconds, show_spinner=False, hash_funcs={DaemonClient: id, FleetClient: id})
def _call(client: Reader, method: str, args: tuple[Any, ...]) -> tuple[Any, str | None, int | None]:
    """``client.<method>(*args)``, cached briefly so the panels share one round of requests.

    Returns plain values (data, error, status): the cache stores them serialised.
    """
    try:
        return getattr(client, method)(*args), None, 200
    except DaemonError as exc:
        return None, exc.summary, exc.status


def fetch(client: Reader, method: str, *args: Any) -> Reply:
    """A read of the daemon (a :class:`DaemonClient` or :class:`FleetClient` method and its arguments) as a
    :class:`Reply`."""
    return Reply(*_call(client, method, args))


# ============================================================================ charts
def fan_chart(metric: str, steps: list[str], band: dict[str, list[float]], history: dict[str, Any] | None,
              profile: str, height: int = 260) -> go.Figure:
    """Actuals before now, p10-p90 band and p50 after, with the metric's warning/critical lines."""
    fig = go.Figure()
    if history:
        fig.add_trace(go.Scatter(x=history["timestamps"], y=history["actuals"].get(metric), mode="lines",
                                 name="actual", line={"color": "#37474f", "width": 1.5}))
    fig.add_trace(go.Scatter(x=steps + steps[::-1], y=band["p90"] + band["p10"][::-1], fill="toself",
                             fillcolor="rgba(33,150,243,0.2)", line={"width": 0}, name="p10-p90", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=steps, y=band["p50"], mode="lines", name="p50 forecast",
                             line={"color": "#1565c0", "width": 2}))
    if steps:
        fig.add_vline(x=steps[0], line={"dash": "dot", "color": "#757575"})
    for threshold, level in tiers_for(metric, profile):
        if level in ("warning", "critical"):
            color = COLORS["red" if level == "critical" else "yellow"]
            fig.add_hline(y=threshold, line={"dash": "dash", "color": color, "width": 1}, annotation_text=level,
                          annotation_position="top left")
    fig.update_layout(title=label(metric), height=height, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.25}, showlegend=False)
    return fig


def source_text(by_horizon: dict[str, dict[str, Any]] | None) -> str:
    """Where a metric's p50 comes from at each horizon (the API's ``sources``), as one caption line."""
    if not by_horizon:
        return "p50: the model"
    if all(s["source"] == "model" for s in by_horizon.values()):
        return "p50: the model at every horizon"
    words = {"model": "the model", "last_value": "the last value"}
    return "p50: " + " · ".join(
        f"{HORIZON_TEXT.get(label, label)} " + words.get(
            s["source"], f"{round(100 * s['model_share'])} % of the model's change from the last value")
        for label, s in by_horizon.items())


# ============================================================================ model health in words
def when(iso: str | None) -> str:
    """'2026-03-02 02:30 UTC' for an ISO 8601 time from the daemon; '-' when there is none."""
    return parse_utc(iso).strftime("%Y-%m-%d %H:%M UTC") if iso else "-"


def model_age(trained_at: str | None, now: datetime | None = None) -> str:
    """How old a model is, in words: 'less than 1 h old', '5 h old', '3 days old'.

    In hours up to DASHBOARD.model_age_days_after_hours, in days beyond; ``now`` defaults to the wall clock.
    """
    if not trained_at:
        return "age unknown"
    hours = ((now or utc_now()) - parse_utc(trained_at)).total_seconds() / 3600
    if hours < 1:
        return "less than 1 h old"
    if hours <= DASHBOARD.model_age_days_after_hours:
        return f"{hours:.0f} h old"
    return f"{hours / 24:.0f} days old"


def window_text(hours: int) -> str:
    """'24 h', '7 d': a rolling window of /accuracy as people say it."""
    return f"{hours // 24} d" if hours > 24 and hours % 24 == 0 else f"{hours} h"


def degraded_summary(alerts: list[dict[str, Any]]) -> list[str]:
    """``model_degraded`` alerts in a few lines: one per cause, each metric with its horizons and figures.

    An alert's ``predicted_value`` is the figure (coverage or skill) and ``threshold`` the bound it
    crossed: a bound of DRIFT_COVERAGE_BAND means coverage, anything else skill against persistence.
    """
    low, high = DRIFT_COVERAGE_BAND
    causes = {"coverage": f"p10-p90 coverage outside {low:.2f}-{high:.2f}",
              "skill": f"worse than the last value (skill against persistence below {DRIFT_SKILL_FLOOR:g} "
                       f"for {DRIFT_SKILL_HOURS:g} h)"}
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {cause: {} for cause in causes}
    for alert in alerts:
        cause = "coverage" if alert["threshold"] in DRIFT_COVERAGE_BAND else "skill"
        grouped[cause].setdefault(alert["metric"], []).append(alert)
    order = list(HORIZON_SHOWN)
    lines = []
    for cause, by_metric in grouped.items():
        parts = []
        for metric, items in by_metric.items():
            items.sort(key=lambda a: order.index(a["horizon"]) if a["horizon"] in order else len(order))
            figures = [f"{HORIZON_SHOWN.get(a['horizon'], a['horizon'])} "
                       + (f"{a['predicted_value']:.2f}" if cause == "coverage" else f"{a['predicted_value']:+.2f}")
                       for a in items]
            parts.append(f"{label(metric)} {', '.join(figures)}")
        if parts:
            lines.append(f"**{causes[cause]}**: " + " · ".join(parts))
    return lines


def show_degraded(alerts: list[dict[str, Any]], where_more: str) -> None:
    """The ``model_degraded`` warnings (server "fleet": about every forecast, not one server) in one box.

    A line per cause, then their full reasons and the suggested action in an expander below the box.
    """
    if not alerts:
        return
    count = f"{len(alerts)} model_degraded warning{'s' if len(alerts) != 1 else ''}"
    st.warning(f"**Model degraded: {count}** (the whole fleet's forecasts, not a server). {where_more}\n\n"
               + "\n".join(f"- {line}" for line in degraded_summary(alerts)))
    with st.expander(f"Why, and what to do ({count})"):
        for alert in alerts:
            st.markdown(f"- {alert['reason']}")


def first_scored_at(scored_since: str, horizon: str) -> str:
    """When the first forecasts of a horizon are scored: the model's first forecast plus the horizon."""
    return when((parse_utc(scored_since) + timedelta(minutes=HORIZONS[horizon] * SAMPLING_INTERVAL_MINUTES))
                .isoformat())


def not_matured_text(scored_since: str | None) -> str:
    """Why the Model health panel has no figures yet, and when the first ones come."""
    first, *later = HORIZONS
    text = (f"Nothing has been scored yet. Forecasts are scored once their target time arrives: "
            f"{HORIZON_TEXT[first]} after the first forecast for the {HORIZON_SHOWN[first]} horizon, "
            + ", ".join(f"{HORIZON_TEXT[h]} after it for {HORIZON_SHOWN[h]}" for h in later)
            + " (data time: the time of the metrics fed, not the wall clock).")
    if not scored_since:
        return text + (" This model has not made a forecast yet: it forecasts a server once the server has sent "
                       "enough history (POST /feed).")
    due = ", ".join(f"{HORIZON_SHOWN[h]} at {first_scored_at(scored_since, h)}" for h in HORIZONS)
    return text + f" This model's first forecast is from {when(scored_since)}; the first ones are scored: {due}."


def _accuracy_grid(rows: list[dict[str, Any]]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    """Metrics (top to bottom), horizons (left to right) and each metric x horizon's row."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    horizons = [h for h in HORIZONS if any(r["horizon"] == h for r in rows)]
    return metrics, horizons, {(r["metric"], r["horizon"]): r for r in rows}


def _scored(row: dict[str, Any] | None, key: str) -> float | None:
    """``row[key]`` when the row has matured forecasts and the figure is defined, else None."""
    return row[key] if row and row["n"] and row.get(key) is not None else None


def _rounded(value: float | None, digits: int = 2) -> float | None:
    """A figure as the tables show it (None stays None: no matured forecast)."""
    return None if value is None else round(value, digits)


def _grid_figure(z: list[list[float]], text: list[list[str]], hover: list[list[str]], metrics: list[str],
                 horizons: list[str], title: str, colorbar: dict[str, Any], **scale: Any) -> go.Figure:
    """A metric x horizon heatmap: values written in the cells, details on hover, empty cells 'not yet'."""
    fig = go.Figure(go.Heatmap(
        z=z, x=[HORIZON_SHOWN[h] for h in horizons], y=[label(m) for m in metrics], text=text, customdata=hover,
        texttemplate="%{text}", textfont={"size": 11}, hovertemplate="%{customdata}<extra></extra>", xgap=2, ygap=2,
        colorbar=colorbar, **scale))
    fig.update_layout(title=title, height=max(240, 34 * len(metrics) + 90), margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      yaxis={"autorange": "reversed"}, plot_bgcolor="#eeeeee")
    return fig


def coverage_heatmap(rows: list[dict[str, Any]]) -> go.Figure:
    """p10-p90 coverage per metric x horizon: as served (coloured) and the model's own band (written under it).

    Green inside DASHBOARD.coverage_target, yellow elsewhere inside DRIFT_COVERAGE_BAND, red outside it.
    """
    metrics, horizons, by_key = _accuracy_grid(rows)
    (drift_low, drift_high), (low, high), edge = DRIFT_COVERAGE_BAND, DASHBOARD.coverage_target, 1e-6
    z, text, hover = [], [], []
    for metric in metrics:
        z.append([])  # (one statement each: Streamlit's magic would draw a bare tuple)
        text.append([])
        hover.append([])
        for horizon in horizons:
            row = by_key.get((metric, horizon))
            served, own = _scored(row, "coverage_p10_p90"), _scored(row, "coverage_unadjusted")
            z[-1].append(np.nan if served is None else served)
            text[-1].append("not yet" if served is None else f"<b>{served:.2f}</b>" +
                            (f"  (own {own:.2f})" if own is not None else ""))
            if served is None:
                hover[-1].append(f"<b>{label(metric)}</b> at {HORIZON_SHOWN[horizon]}: no matured forecast yet")
                continue
            below, above = row.get("below_p10_ratio"), row.get("above_p90_ratio")
            hover[-1].append("<br>".join([
                f"<b>{label(metric)}</b> at {HORIZON_SHOWN[horizon]}",
                f"inside p10-p90 as served: {served:.0%}",
                *([f"below p10 {below:.0%} · above p90 {above:.0%}"] if below is not None and above is not None
                  else []),
                *([f"the model's own band: {own:.0%}"] if own is not None else []),
                f"band x{row['band_scale_low']:.2f} below / x{row['band_scale_high']:.2f} above p50",
                f"{row['n']} matured forecasts"]))
    colors = [[0.0, COLORS["red"]], [drift_low - edge, COLORS["red"]], [drift_low, COLORS["yellow"]],
              [low - edge, COLORS["yellow"]], [low, COLORS["green"]], [high, COLORS["green"]],
              [high + edge, COLORS["yellow"]], [drift_high, COLORS["yellow"]], [drift_high + edge, COLORS["red"]],
              [1.0, COLORS["red"]]]
    return _grid_figure(z, text, hover, metrics, horizons, "p10-p90 coverage as served (own band)",
                        {"title": "coverage", "tickvals": [0, drift_low, low, high, drift_high, 1]},
                        zmin=0, zmax=1, colorscale=colors)


def skill_heatmap(rows: list[dict[str, Any]]) -> go.Figure:
    """Skill against persistence per metric x horizon: above 0 the model beats 'the last value'."""
    metrics, horizons, by_key = _accuracy_grid(rows)
    limit = DASHBOARD.skill_color_limit
    z, text, hover = [], [], []
    for metric in metrics:
        z.append([])  # (one statement each: Streamlit's magic would draw a bare tuple)
        text.append([])
        hover.append([])
        unit = METRIC_LABELS.get(metric, (metric, ""))[1]
        for horizon in horizons:
            row = by_key.get((metric, horizon))
            skill = _scored(row, "skill_vs_persistence")
            z[-1].append(np.nan if skill is None else float(np.clip(skill, -limit, limit)))
            text[-1].append("not yet" if skill is None else f"{skill:+.2f}")
            if skill is None:
                hover[-1].append(f"<b>{label(metric)}</b> at {HORIZON_SHOWN[horizon]}: no matured forecast yet")
                continue
            mae = row.get("mae_p50")
            hover[-1].append("<br>".join([
                f"<b>{label(metric)}</b> at {HORIZON_SHOWN[horizon]}",
                f"skill {skill:+.2f} against persistence "
                f"({'better' if skill > 0 else 'no better'} than the last value)",
                *([f"q-risk at 0.5: {row['qrisk_50']:.3f}"] if row.get("qrisk_50") is not None else []),
                *([f"MAE of p50: {mae:.2f} {unit}".rstrip()] if mae is not None else []),
                f"{row['n']} matured forecasts"]))
    colors = [[0.0, COLORS["red"]], [0.5, "#f5f5f5"], [1.0, COLORS["green"]]]
    return _grid_figure(z, text, hover, metrics, horizons, "Skill against persistence",
                        {"title": "skill", "tickvals": [-limit, 0, limit]}, zmin=-limit, zmax=limit, colorscale=colors)


def risk_heatmap(servers: list[dict[str, Any]], columns: int = 20) -> go.Figure:
    """Every server as a cell: grouped by profile (worst first), sorted by risk, named."""
    z, text, hover, ylabels = [], [], [], []
    by_profile: dict[str, list[dict[str, Any]]] = {}
    for server in servers:
        by_profile.setdefault(server["profile"], []).append(server)
    def worst(items: list[dict[str, Any]]) -> float:
        return max((s["risk_score"] or 0.0) for s in items)
    for profile in sorted(by_profile, key=lambda p: (-worst(by_profile[p]), p)):
        items = sorted(by_profile[profile], key=lambda s: (-(s["risk_score"] if s["risk_score"] is not None else -1),
                                                            s["server_name"]))
        for row_start in range(0, len(items), columns):
            row = items[row_start:row_start + columns]
            pad = columns - len(row)
            z.append([s["risk_score"] if s["risk_score"] is not None else np.nan for s in row] + [np.nan] * pad)
            text.append([s["server_name"] for s in row] + [""] * pad)
            hover.append([_hover(s) for s in row] + [""] * pad)
            ylabels.append(f"{profile} ({len(items)})" if row_start == 0 else f"{profile} ")
    fig = go.Figure(go.Heatmap(
        z=z, text=text, customdata=hover, texttemplate="%{text}", textfont={"size": 9},
        hovertemplate="%{customdata}<extra></extra>", zmin=0, zmax=1, xgap=2, ygap=2, showscale=True,
        colorscale=[[0.0, COLORS["green"]], [RISK_YELLOW_AT - 1e-6, COLORS["green"]],
                    [RISK_YELLOW_AT, COLORS["yellow"]],
                    [RISK_RED_ABOVE, COLORS["yellow"]], [RISK_RED_ABOVE + 1e-6, COLORS["red"]], [1.0, COLORS["red"]]],
        colorbar={"title": "risk", "tickvals": [0, RISK_YELLOW_AT, RISK_RED_ABOVE, 1]}))
    fig.update_layout(height=max(240, 30 * len(z) + 80), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      xaxis={"visible": False}, yaxis={"autorange": "reversed", "tickmode": "array",
                                                       "tickvals": list(range(len(ylabels))), "ticktext": ylabels})
    return fig


def _hover(server: dict[str, Any]) -> str:
    lines = [f"<b>{server['server_name']}</b> ({server['profile']})"
             + (f" · shard {server['shard']}" if server.get("shard") else "")]
    if server["status"] != "ok":
        lines.append(server["status"].replace("_", " ") + (f", needs {server['buckets_needed']} more buckets"
                                                            if server["status"] == "warming_up" else "")
                     + (f": {server['reason']}" if server.get("reason") else ""))
        return "<br>".join(lines)
    lines.append(f"risk {server['risk_score']:.2f} ({server['risk_level']})")
    current = server.get("current", {})
    for metric in (DISPLAY_CPU, "cpu_iowait_pct", "mem_used_pct", "disk_usage_pct"):
        if metric in current:
            lines.append(f"{METRIC_LABELS[metric][0]}: {current[metric]:.1f}%")
    for alert in server.get("alerts", [])[:2]:
        lines.append(f"{alert['level']}: {alert['reason']}")
    return "<br>".join(lines)


# ============================================================================ settings: the environment
def _default_refresh() -> int:
    """The refresh slider's start value: ``TFT_DASHBOARD_REFRESH`` (seconds, 0-60) or the config default."""
    raw = os.environ.get(DASHBOARD.refresh_env, "")
    try:
        return min(DASHBOARD.max_refresh_seconds, max(0, int(raw))) if raw else DASHBOARD.default_refresh_seconds
    except ValueError:
        logger.warning("%s=%r is not a whole number of seconds; using %d", DASHBOARD.refresh_env, raw,
                       DASHBOARD.default_refresh_seconds)
        return DASHBOARD.default_refresh_seconds


def daemon_urls() -> list[str]:
    """The daemons this dashboard may read, its default first: ``$TFT_DAEMON_URL``, then the comma-separated
    allowlist ``$TFT_DAEMON_URLS``; DEFAULT_DAEMON_URL when neither is set.

    Configuration only: the dashboard sends its key to these URLs and to no URL a visitor types.
    """
    listed = [url.strip().rstrip("/") for url in os.environ.get(DASHBOARD.daemon_urls_env, "").split(",")]
    default = os.environ.get(DASHBOARD_DAEMON_URL_ENV, "").strip().rstrip("/")
    urls = list(dict.fromkeys(url for url in (default, *listed) if url))
    return urls or [DEFAULT_DAEMON_URL]


def shard_urls() -> list[str]:
    """The daemons that are the shards of one fleet (``$TFT_DAEMON_SHARDS``, comma-separated), read as one.

    Two or more: the page shows one fleet (and ``$TFT_DAEMON_URL`` / ``$TFT_DAEMON_URLS`` are not used); one
    is the plain daemon URL; none (the default): as before. Configuration only, like :func:`daemon_urls`.
    """
    listed = [url.strip().rstrip("/") for url in os.environ.get(DASHBOARD.shard_urls_env, "").split(",")]
    return list(dict.fromkeys(url for url in listed if url))


def read_key() -> tuple[str | None, str]:
    """The key the dashboard reads with, and where it came from in words (for the sidebar; never the key).

    The read key of the key file in ``$TFT_API_KEY_FILE``, else ``$TFT_API_KEY``
    (:func:`common_utils.resolve_api_key`). Why a key file cannot be used goes to the dashboard's log,
    not to the page: the error may quote a line of the file.
    """
    try:
        key = resolve_api_key(scope="read")
    except KeyFileError as exc:
        logger.error("%s", exc)
        return None, f"not set: the key file in {API_KEY_FILE_ENV} cannot be used (the dashboard's log says why)"
    if not key:
        return None, f"not set ({API_KEY_ENV} or {API_KEY_FILE_ENV}; a daemon without keys needs none)"
    return key, (f"set (read key from {API_KEY_FILE_ENV})" if os.environ.get(API_KEY_FILE_ENV)
                 else f"set (from {API_KEY_ENV})")


def demo_mode_on() -> bool:
    """Whether ``$TFT_DASHBOARD_DEMO`` opts in to demo mode (its buttons and its admin key): off unless set."""
    raw = os.environ.get(DASHBOARD_DEMO_ENV, "").strip().lower()
    if raw and raw not in DASHBOARD.demo_on and raw not in ("0", "false", "no", "off"):
        logger.warning("%s=%r is not one of %s: demo mode stays off (Docs/DASHBOARD.md, Demo mode)",
                       DASHBOARD_DEMO_ENV, raw, "/".join(DASHBOARD.demo_on))
    return raw in DASHBOARD.demo_on


def demo_admin_key() -> tuple[str | None, str]:
    """Demo mode's admin key and the variable it came from: ``$TFT_DEMO_ADMIN_KEY``, else ``$TFT_API_KEY``
    (``main.py demo``'s one key, which holds every scope).

    Never a key file's admin line: an admin key reaches the dashboard only when it is put in its
    environment for a demo.
    """
    for name in (DASHBOARD_DEMO_ADMIN_KEY_ENV, API_KEY_ENV):
        if os.environ.get(name):
            return os.environ[name], name
    return None, ""


# ============================================================================ the page
st.set_page_config(page_title="Fleet trouble forecaster", layout="wide")


def _switch_demo(admin: DaemonClient, scenario: str) -> None:
    """A demo button's callback: switch the stream through the daemon (admin key), before the sidebar is redrawn."""
    try:
        admin.set_demo_scenario(scenario)
        st.session_state.pop("demo_error", None)
    except DaemonError as exc:
        st.session_state["demo_error"] = f"Could not switch the demo: {exc.summary}"
    _call.clear()


api_key, key_text = read_key()  # server-side only: the page shows key_text, never the key
with st.sidebar:
    st.header("Daemon")
    urls, shards = daemon_urls(), shard_urls()
    if len(shards) == 1:
        urls = shards
    if len(shards) > 1:
        st.markdown(f"**One fleet, {len(shards)} shards** ({DASHBOARD.shard_urls_env})\n\n"
                    + "\n".join(f"- `{url}`" for url in shards))
        base_url = shards[0]  # demo mode's daemon (its stream feeds one)
    elif len(urls) > 1:
        picked = st.selectbox("Daemon URL", urls, key="daemon_url", help=f"the daemons in {DASHBOARD.daemon_urls_env}")
        # Streamlit returns whatever string a browser sends for a selectbox: only a listed URL gets the key.
        base_url = picked if picked in urls else urls[0]
    else:
        base_url = urls[0]
        st.markdown(f"`{base_url}`")
    st.caption(f"API key: {key_text}")
    client = connect_fleet(tuple(shards), api_key or "") if len(shards) > 1 else connect(base_url, api_key or "")
    refresh = st.slider("Refresh every (s, 0 = off)", 0, DASHBOARD.max_refresh_seconds, _default_refresh())


# Its own fragment on the page's refresh timer: what the stream plays is re-read from the daemon on
# every refresh, so a switch made elsewhere (another browser, a script) shows within one refresh.
@st.fragment(run_every=refresh if refresh else None)
def demo_mode(client: DaemonClient, admin: DaemonClient | None) -> None:
    """Demo mode: the Healthy / Degrading / Critical buttons (the playing one highlighted) and what the stream plays.

    ``client`` reads; ``admin`` (the admin key's client) switches, or is None when demo mode has no admin
    key: then the buttons are disabled and the sidebar says which variable to set.
    """
    st.header("Demo mode")
    demo = fetch(client, "demo_scenario")
    playing = demo.data["scenario"] if demo.data else None
    for scenario in DEMO_SCENARIOS:  # stacked: each label whole at the default sidebar width
        st.button(scenario.capitalize(), key=f"demo_{scenario}", width="stretch",
                  type="primary" if scenario == playing else "secondary", disabled=admin is None,
                  on_click=_switch_demo, args=(admin, scenario))
    if admin is None:
        st.caption(f"No admin key: set {DASHBOARD_DEMO_ADMIN_KEY_ENV} (Docs/DASHBOARD.md, Demo mode).")
    if st.session_state.get("demo_error"):
        st.error(st.session_state["demo_error"])
    if playing:
        st.caption(f"Demo stream plays: **{playing}**")


if demo_mode_on():  # an explicit opt-in: outside a demo the page holds no admin key and shows no button
    admin_key, _ = demo_admin_key()
    with st.sidebar:
        demo_mode(connect(base_url, api_key or ""), connect(base_url, admin_key) if admin_key else None)

st.title("Fleet trouble forecaster")


@st.fragment(run_every=refresh if refresh else None)
def page(client: Reader, refresh: int, key_text: str) -> None:
    """Everything that refreshes: status bar and the six panels (``key_text``: whether a key is set, in words)."""
    status = fetch(client, "status")
    if status.error:
        st.error(f"Not connected. {status.error}. Start the daemon (python main.py infer --daemon), or restart the "
                 f"dashboard with the right {DASHBOARD_DAEMON_URL_ENV} and a read key in {API_KEY_ENV} or "
                 f"{API_KEY_FILE_ENV} (Docs/DASHBOARD.md). Nothing is shown without it.")
        return
    info = status.data
    bar = st.columns(4)
    if isinstance(client, FleetClient):
        answered, of = info["shards_answered"], len(info["shards"])
        bar[0].markdown(f"{':green[●]' if answered == of else ':orange[●]'} **Connected to {answered} of {of} "
                        f"shards**")
    else:
        bar[0].markdown(f":green[●] **Connected** to `{client.base_url}`")
    bar[1].markdown(f"**Model** `{info['model_version'] or 'none'}`")
    bar[2].markdown(f"**Last forecast** {info['last_forecast_time'] or '-'}")
    bar[3].markdown(f"**Cycle** {info['last_cycle_ms'] or '-'} ms · {info['servers_tracked']} servers")
    current = fetch(client, "predictions_current")
    if current.error:
        st.warning(f"No forecasts: {current.error}")
        return
    fleet = current.data
    servers = fleet["servers"]
    alerts = fetch(client, "alerts").data or {"alerts": []}
    if isinstance(client, FleetClient):
        shard_lines(info, fleet, alerts)
    anomalies = fetch(client, "anomalies", DASHBOARD.anomaly_outside_above)  # on the band's edge or outside it
    tabs = st.tabs(PANELS)
    with tabs[0]:
        overview(fleet, servers, alerts["alerts"], alerts.get("suppressed", []), anomalies)
    with tabs[1]:
        heatmap(servers)
    with tabs[2]:
        top_servers(client, servers)
    with tabs[3]:
        historical(client, servers)
    with tabs[4]:
        model_health(client, info)
    with tabs[5]:
        advanced(client, info, fleet, alerts, refresh, key_text)


def shard_lines(info: dict[str, Any], fleet: dict[str, Any], alerts: dict[str, Any]) -> None:
    """The fleet's shards, one line each (servers, model, last forecast, or why it is not shown), then what
    makes them not one fleet: shards that disagree on N or share a slice, and servers two shards report."""
    failed = {row["url"]: row["line"] for doc in (fleet, alerts) for row in doc.get("shards", []) if not row["ok"]}
    for row in info["shards"]:
        line = row["line"] if not row["ok"] else failed.get(row["url"], row["line"])
        (st.markdown if row["ok"] and row["url"] not in failed else st.error)(
            f"{':green[●]' if row['ok'] and row['url'] not in failed else ':red[●]'} {line}")
    for problem in info["problems"]:
        st.warning(f"Not one fleet: {problem}.")
    for name, where in fleet.get("duplicates", {}).items():
        st.warning(f"Server **{name}** is reported by {' and '.join(where)}: misrouted (its records reach more than "
                   f"one shard). Shown once, from the first.")


def overview(fleet: dict[str, Any], servers: list[dict[str, Any]], alerts: list[dict[str, Any]],
             suppressed: list[dict[str, Any]] | None = None, anomalies: Reply | None = None) -> None:
    """Fleet health at a glance; ``suppressed``: open alerts held back (servers in maintenance);
    ``anomalies``: the daemon's GET /anomalies answer (what already left its band)."""
    summary = fleet["summary"]
    # The model's own warnings (server "fleet") are about every forecast, not one server: counted and shown apart.
    model_alerts = [a for a in alerts if a.get("kind") == MODEL_DEGRADED]
    server_alerts = [a for a in alerts if a.get("kind") != MODEL_DEGRADED]
    kpis = st.columns(7)
    kpis[0].metric("Servers", len(servers))
    kpis[1].metric(":red[●] Red", summary["red"])
    kpis[2].metric(":orange[●] Yellow", summary["yellow"])
    kpis[3].metric(":green[●] Green", summary["green"])
    kpis[4].metric("Warming up", summary["warming_up"])
    kpis[5].metric("Offline", summary["offline"])
    kpis[6].metric("Active alerts", len(server_alerts),
                   help=f"Server alerts; plus {len(model_alerts)} model_degraded warnings about the model itself"
                   if model_alerts else None)
    if not servers:
        st.info("No servers have reported yet. Feed metrics to POST /feed (or start the demo stream).")
        return
    left, right = st.columns([1, 1])
    with left:
        st.subheader("Servers by risk level and profile")
        frame = pd.DataFrame([{"profile": s["profile"],
                               "level": s["risk_level"] if s["status"] == "ok" else s["status"]} for s in servers])
        counts = frame.value_counts().rename("servers").reset_index()
        fig = go.Figure()
        for level in ["red", "yellow", "green", "warming_up", "offline", "not_ready"]:
            part = counts[counts["level"] == level]
            if len(part):
                fig.add_trace(go.Bar(x=part["profile"], y=part["servers"], name=level.replace("_", " "),
                                     marker_color=COLORS[level]))
        fig.update_layout(barmode="stack", height=300, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                          xaxis={"categoryorder": "array", "categoryarray": VALID_PROFILES})
        st.plotly_chart(fig, width="stretch", config=PLAIN_CHART)
    with right:
        st.subheader("Fleet-wide forecast")
        ready = [s for s in servers if s["status"] == "ok"]
        rows = []
        for metric in KEY_METRICS:
            for horizon in ["now", *HORIZONS]:
                if horizon == "now":
                    values = [s["current"][metric] for s in ready if metric in s["current"]]
                    worst = values
                else:
                    values = [s["predictions"][horizon][metric]["p50"] for s in ready]
                    worst = [s["predictions"][horizon][metric]["p90"] for s in ready]
                if values:
                    rows.append({"metric": label(metric), "horizon": HORIZON_SHOWN[horizon],
                                 "fleet median (p50)": float(np.median(values)),
                                 "worst server (p90)": float(max(worst))})
        table = pd.DataFrame(rows)
        if len(table):
            fig = go.Figure()
            for metric, part in table.groupby("metric", sort=False):
                fig.add_trace(go.Scatter(x=part["horizon"], y=part["fleet median (p50)"], name=f"{metric} median",
                                         mode="lines+markers"))
                fig.add_trace(go.Scatter(x=part["horizon"], y=part["worst server (p90)"], name=f"{metric} worst p90",
                                         mode="lines", line={"dash": "dot"}))
            fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title="%",
                              legend={"orientation": "h", "y": -0.2, "font": {"size": 10}})
            st.plotly_chart(fig, width="stretch", config=PLAIN_CHART)
    st.subheader("Active alerts")
    show_degraded(model_alerts, "Details on the Model health tab.")
    if server_alerts:
        st.dataframe(pd.DataFrame([{
            "server": a["server_name"], "profile": a["profile"], "level": a["level"], "metric": label(a["metric"]),
            "when": HORIZON_SHOWN.get(a["horizon"], a["horizon"]),
            "in (min)": a["minutes_to_breach"],
            "chance": None if a.get("probability") is None else f"{a['probability']:.0%}",
            "value": round(a["predicted_value"], 1), "threshold": a["threshold"],
            "since": a.get("starts_at"), "why": a["reason"],
            **({"shard": a["shard"]} if "shard" in a else {})} for a in server_alerts[:50]]),
            hide_index=True, width="stretch")
    else:
        st.success("No server alerts." if model_alerts else "No active alerts.")
    if suppressed:
        held = sorted({a["server_name"] for a in suppressed})
        st.caption(f"{len(suppressed)} alert{'s' if len(suppressed) != 1 else ''} suppressed while in maintenance: "
                   f"{', '.join(held)}.")
    anomalous_now(anomalies)


def anomalous_now(reply: Reply | None) -> None:
    """The metrics that already left the p10-p90 band the model drew for now 30 min / 1 h ago, highest score first.

    A model surprise, not a tier breach: the alerts look ahead at the thresholds, this looks at the present.
    """
    st.subheader("Anomalous now")
    if reply is None or reply.error:
        st.caption(f"No anomaly scores from the daemon: {reply.error if reply else 'not asked'}.")
        return
    data = reply.data
    ago = " and ".join(HORIZON_TEXT.get(h, h) for h in data["horizons"])
    if not data["servers_scored"]:
        st.caption(f"No anomaly scores yet: a server gets one once the forecasts made {ago} before the latest bucket "
                   f"have come due (for servers the daemon has held long enough, --established-hours).")
        return
    outside = [r for r in data["anomalies"] if r["score"] > DASHBOARD.anomaly_outside_above]
    if not outside:
        st.caption(f"Nothing anomalous now: at {when(data['at'])} every scored metric of the "
                   f"{data['servers_scored']} servers scored lies inside the p10-p90 band forecast for it {ago} "
                   f"earlier.")
        return
    st.dataframe(pd.DataFrame([{
        "server": r["server_name"], "profile": r["profile"], "metric": label(r["metric"]),
        "band made": f"{HORIZON_TEXT.get(r['horizon'], r['horizon'])} ago", "score": round(r["score"], 1),
        "now": round(r["actual"], 2), "p50": round(r["p50"], 2), "p10-p90": f"{r['p10']:.2f}-{r['p90']:.2f}"}
        for r in outside[:DASHBOARD.anomaly_rows]]), hide_index=True, width="stretch")
    outside_share = 1 - (QUANTILE_LEVELS["p90"] - QUANTILE_LEVELS["p10"])  # what a calibrated band leaves out
    st.caption(f"At {when(data['at'])}: {len(outside)} metric{'s' if len(outside) != 1 else ''} outside the band "
               f"forecast for now {ago} earlier (score = distance from p50 in half-widths of the band; 1 = on its "
               f"edge). A calibrated band leaves about {outside_share:.0%} of actuals outside "
               f"it, so a score just above 1 is common; a large one, or one that lasts, is the surprise. A model "
               f"surprise, not a threshold: the alerts above look ahead at the tiers, this says the present already "
               f"left what the model expected.")


def heatmap(servers: list[dict[str, Any]]) -> None:
    """Every server as a cell coloured by risk, grouped by profile."""
    st.caption(f"Risk: green < {RISK_YELLOW_AT} ≤ yellow ≤ {RISK_RED_ABOVE} < red; grey = no forecast yet. "
               f"Hover a cell for details, click to select.")
    if not servers:
        st.info("No servers yet.")
        return
    event = st.plotly_chart(risk_heatmap(servers), width="stretch", config=PLAIN_CHART,
                            on_select="rerun",
                            selection_mode="points", key="heatmap")
    names = [s["server_name"] for s in servers]
    picked = None
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", [])
    if points:
        picked = points[0].get("text")
    choice = st.selectbox("Server details", names, index=names.index(picked) if picked in names else 0)
    server = next(s for s in servers if s["server_name"] == choice)
    server_details(server)


def server_details(server: dict[str, Any]) -> None:
    """Current values, forecast summary and alerts of one server."""
    risk = f" · risk **{server['risk_score']:.2f} ({server['risk_level']})**" if server["status"] == "ok" else ""
    st.markdown(f"**{server['server_name']}** · profile `{server['profile']}` · status {server['status']}{risk}")
    if server["status"] != "ok":
        if server.get("reason"):
            st.caption(server["reason"])
        return
    rows = []
    for metric in KEY_METRICS + ["load_average", "net_in_mb_s", "net_out_mb_s", "back_close_wait"]:
        row = {"metric": label(metric), "now": server["current"].get(metric)}
        for horizon, values in server["predictions"].items():
            band = values.get(metric)
            if band:
                row[HORIZON_SHOWN[horizon]] = f"{band['p50']:.1f} ({band['p10']:.1f}-{band['p90']:.1f})"
        rows.append(row)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    for alert in server["alerts"]:
        (st.error if alert["level"] == "critical" else st.warning)(alert["reason"])


def top_servers(client: Reader, servers: list[dict[str, Any]]) -> None:
    """The most at-risk servers, their forecast fans and why."""
    ranked = [s for s in servers if s["status"] == "ok"][:DASHBOARD.top_servers]
    if not ranked:
        st.info("No forecasts yet.")
        return
    for server in ranked:
        st.markdown(f"### {server['server_name']} · `{server['profile']}` · risk {server['risk_score']:.2f} "
                    f"({server['risk_level']})")
        for alert in server["alerts"]:
            (st.error if alert["level"] == "critical" else st.warning)(alert["reason"])
        if not server["alerts"]:
            st.caption("No alerts: among the most at risk, but within normal bounds.")
        fan = fetch(client, "server_fan", server["server_name"])
        history = fetch(client, "history", server["server_name"], DASHBOARD.fan_history_hours)
        if fan.error:
            st.warning(fan.error)
            continue
        metrics = list(dict.fromkeys([a["metric"] for a in server["alerts"]] + [DISPLAY_CPU, "mem_used_pct"]))[:3]
        columns = st.columns(len(metrics))
        for column, metric in zip(columns, metrics, strict=True):
            band = fan.data["fan"].get(metric)
            if band:
                column.plotly_chart(fan_chart(metric, fan.data["steps"], band, history.data, server["profile"]),
                                    width="stretch", config=PLAIN_CHART,
                                    key=f"fan_{server['server_name']}_{metric}")
                column.caption(source_text(fan.data.get("sources", {}).get(metric)))


def historical(client: Reader, servers: list[dict[str, Any]]) -> None:
    """Actuals against what was forecast for them: should you trust the model?"""
    if not servers:
        st.info("No servers yet.")
        return
    names = [f"{s['server_name']} ({s['profile']})" for s in servers]
    col = st.columns(3)
    choice = col[0].selectbox("Server", names, key="hist_server")
    metric = col[1].selectbox("Metric", KEY_METRICS + ["load_average", "net_in_mb_s", "net_out_mb_s",
                                                       "back_close_wait", "front_close_wait"],
                              format_func=label, key="hist_metric")
    hours = col[2].slider("Window (hours)", 1, 72, DASHBOARD.history_hours, key="hist_hours")
    name = choice.split(" ")[0]
    history = fetch(client, "history", name, hours)
    if history.error:
        st.warning(history.error)
        return
    data = history.data
    profile = next((s["profile"] for s in servers if s["server_name"] == name), "?")
    st.markdown(f"**{name}** · profile `{profile}` · {label(metric)}, last {hours} h: "
                "actuals against the forecasts made for them")
    fig = go.Figure(go.Scatter(x=data["timestamps"], y=data["actuals"].get(metric), name="actual",
                               line={"color": "#37474f"}))
    stats = []
    palette = {"30min": "#1565c0", "1hr": "#6a1b9a", "8hr": "#ef6c00"}
    actual = dict(zip(data["timestamps"], data["actuals"].get(metric, []), strict=False))
    for horizon, block in data["forecasts"].items():
        band = block["bands"].get(metric)
        if not band or not block["target_times"]:
            continue
        fig.add_trace(go.Scatter(x=block["target_times"], y=band["p50"],
                                 name=f"forecast made {HORIZON_SHOWN[horizon][1:]} earlier (p50)",
                                 line={"color": palette[horizon], "dash": "dot"}))
        pairs = [(actual.get(t), lo, mid, hi)
                 for t, lo, mid, hi in zip(block["target_times"], band["p10"], band["p50"], band["p90"], strict=False)
                 if actual.get(t) is not None]
        if pairs:
            y = np.array([p[0] for p in pairs])
            stats.append({"horizon": HORIZON_SHOWN[horizon], "forecasts": len(pairs),
                          "MAE of p50": float(np.mean(np.abs(y - np.array([p[2] for p in pairs])))),
                          "inside p10-p90": float(np.mean((y >= [p[1] for p in pairs])
                                                          & (y <= [p[3] for p in pairs])))})
    # The top margin leaves the mode bar's one button (PNG download) room above the legend.
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10}, yaxis_title=label(metric))
    st.plotly_chart(fig, width="stretch",
                    config={**DOWNLOADABLE_CHART, "toImageButtonOptions": {"filename": f"{name}_{metric}"}})
    if stats:
        st.dataframe(pd.DataFrame(stats), hide_index=True)
        st.caption("A calibrated model has about 80% of actuals inside its p10-p90 band.")
    else:
        st.caption("No past forecasts for this window yet: they accumulate with every cycle.")


def model_health(client: Reader, info: dict[str, Any]) -> None:
    """Should you trust today's forecasts? How the served ones fared once their target time arrived.

    Model version and age, when scoring started, any ``model_degraded`` warning, then for a window and
    the fleet or one profile: p10-p90 coverage (served and the model's own band) and skill against
    persistence per metric x horizon, the live band multipliers, the worst servers and every figure.
    """
    bar = st.columns(4)
    bar[0].markdown(f"**Model** `{info['model_version'] or 'none'}`")
    bar[1].markdown(f"**Trained** {when(info.get('trained_at'))} · **{model_age(info.get('trained_at'))}**")
    reply = fetch(client, "accuracy")
    if reply.error:
        st.warning(f"No live accuracy from the daemon: {reply.error}")
        return
    accuracy = reply.data
    if "shards" in accuracy:  # a FleetClient's: each shard's own figures (q-risks of shards do not average)
        accuracy = pick_shard_accuracy(accuracy["shards"])
        if accuracy is None:
            return
    bar[2].markdown(f"**Scored since** {when(accuracy['scored_since'])} (data time)")
    bar[3].markdown(f"**Last scored target** {when(accuracy['last_scored_target'])}")
    show_degraded(accuracy["model_degraded"], "Coverage and skill per metric and horizon below.")
    rows = accuracy["rows"]
    if not any(r["n"] for r in rows):
        st.info(not_matured_text(accuracy["scored_since"]))
        alert_quality(accuracy)
        return
    low, high = DRIFT_COVERAGE_BAND
    windows = accuracy["windows"]
    if not accuracy["model_degraded"]:
        st.success(f"No model_degraded warning. One is raised for a metric at a horizon when its p10-p90 coverage "
                   f"over the last {window_text(windows.get(DRIFT_WINDOW, 0))} leaves {low:.2f}-{high:.2f}, or its "
                   f"skill against persistence stays below {DRIFT_SKILL_FLOOR:g} for {DRIFT_SKILL_HOURS:g} h (from "
                   f"{DRIFT_MIN_MATURED} matured forecasts on).")
    groups = [FLEET_GROUP, *sorted({r["group"] for r in rows} - {FLEET_GROUP})]
    pick = st.columns([1, 1, 2])
    window = pick[0].radio("Window", list(windows), format_func=lambda w: f"last {window_text(windows[w])}",
                           horizontal=True, key="health_window")
    group = pick[1].selectbox("Servers", groups, key="health_group",
                              format_func=lambda g: "whole fleet" if g == FLEET_GROUP else f"profile {g}")
    shown = [r for r in rows if r["window"] == window and r["group"] == group]
    pending = [h for h in HORIZONS if not any(r["n"] for r in shown if r["horizon"] == h)]
    if pending and accuracy["scored_since"]:
        pick[2].caption("Not scored yet: " + ", ".join(
            f"{HORIZON_SHOWN[h]} (first at {first_scored_at(accuracy['scored_since'], h)})" for h in pending)
            + ". Forecasts are scored once their target time arrives.")
    left, right = st.columns(2)
    left.plotly_chart(coverage_heatmap(shown), width="stretch", config=PLAIN_CHART, key="health_coverage")
    right.plotly_chart(skill_heatmap(shown), width="stretch", config=PLAIN_CHART, key="health_skill")
    target_low, target_high = DASHBOARD.coverage_target
    st.caption(f"Coverage: the share of actuals that fell inside the p10-p90 band as served (after live "
               f"calibration); 'own' is the model's band before it. About {QUANTILES[-1] - QUANTILES[0]:.2f} is "
               f"calibrated: green {target_low:.2f}-{target_high:.2f}, yellow up to the drift band "
               f"{low:.2f}-{high:.2f}, red outside it. Skill against persistence: 1 - q-risk(model) / q-risk(the "
               f"last value); above 0 the model beats 'nothing changes'. Hover a cell for MAE, q-risk and the number "
               f"of matured forecasts.")
    left, right = st.columns(2)
    with left:
        st.subheader("Band calibration")
        if accuracy["band_adaptation"]:
            metrics, horizons, by_key = _accuracy_grid([r for r in rows if r["window"] == window
                                                        and r["group"] == FLEET_GROUP])
            st.dataframe(pd.DataFrame([{"metric": label(m), **{
                HORIZON_SHOWN[h]: f"x{by_key[(m, h)]['band_scale_low']:.2f} / x{by_key[(m, h)]['band_scale_high']:.2f}"
                for h in horizons if (m, h) in by_key}} for m in metrics]), hide_index=True, width="stretch")
            st.caption(f"Live multipliers of each band's lower (p50-p10) / upper (p90-p50) half, fleet-wide, so "
                       f"that about {BAND_ADAPT_TARGET_MISS:.0%} of actuals fall on each side; x1.00 = as the model "
                       f"made it (bounded x{BAND_ADAPT_MIN_SCALE:g}-x{BAND_ADAPT_MAX_SCALE:g}, reset for a new "
                       f"model).")
        else:
            st.info("Live band calibration is off: the bands are served as the model made them.")
    with right:
        st.subheader(f"Worst servers (last {window_text(windows.get(ACCURACY_SERVER_WINDOW, 0))})")
        worst = [w for w in accuracy["worst_servers"] if group == FLEET_GROUP or w["profile"] == group]
        worst.sort(key=lambda w: (w["skill_vs_persistence"] if w["skill_vs_persistence"] is not None
                                  else float("inf"), w["server_name"]))
        if worst:
            st.dataframe(pd.DataFrame([{
                "server": w["server_name"], "profile": w["profile"],
                "forecast of": f"{label(w['metric'])} at {HORIZON_SHOWN.get(w['horizon'], w['horizon'])}",
                "forecasts": w["n"],
                "skill": _rounded(w["skill_vs_persistence"]), "coverage": _rounded(w["coverage_p10_p90"]),
                "q-risk": _rounded(w["qrisk_50"], 3)} for w in worst[:DASHBOARD.worst_servers]]),
                hide_index=True, width="stretch")
            st.caption("Lowest skill against persistence first, per metric and horizon; few forecasts make "
                       "noisy figures.")
        else:
            st.info("No server has matured forecasts in this group yet.")
    with st.expander(f"Every figure, {' and '.join(window_text(h) for h in windows.values())} "
                     f"({'whole fleet' if group == FLEET_GROUP else 'profile ' + group})"):
        st.dataframe(pd.DataFrame([{
            "window": window_text(windows[r["window"]]), "metric": label(r["metric"]),
            "horizon": HORIZON_SHOWN.get(r["horizon"], r["horizon"]), "forecasts": r["n"],
            **{name: _rounded(r[key]) for name, key in (
                ("coverage", "coverage_p10_p90"), ("own band", "coverage_unadjusted"), ("below p10", "below_p10_ratio"),
                ("above p90", "above_p90_ratio"), ("skill", "skill_vs_persistence"), ("MAE p50", "mae_p50"))},
            "q-risk 0.5": _rounded(r["qrisk_50"], 3), "q-risk 0.9": _rounded(r["qrisk_90"], 3)}
            for r in rows if r["group"] == group and r["n"]]), hide_index=True, width="stretch")
        st.caption("Metric x horizon pairs with matured forecasts only.")
    live_selection(accuracy)
    alert_quality(accuracy)


def pick_shard_accuracy(shards: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one shard whose /accuracy the panel shows (a radio over the shards that answered)."""
    answered = [row for row in shards if row["ok"]]
    for row in shards:
        if not row["ok"]:
            st.warning(f"No live accuracy: {row['line']}")
    if not answered:
        return None
    names = [f"shard {row['shard'] or '?'} ({row['url']})" for row in answered]
    picked = st.radio("Shard", names, horizontal=True, key="health_shard",
                      help="Each shard scores its own servers' forecasts and calibrates its own bands: its q-risk "
                           "and skill are ratios over its forecasts, so the shards' figures are shown one shard at "
                           "a time, not averaged.")
    return answered[names.index(picked) if picked in names else 0]["accuracy"]


def live_selection(accuracy: dict[str, Any]) -> None:
    """Where the daemon serves the last value instead of the model (GET /accuracy ``live_selection``)."""
    selection = accuracy.get("live_selection")
    st.subheader("Served the last value")
    if not selection:
        st.caption("This daemon does not report live selection (no model loaded, or a daemon before 0.17.0).")
        return
    if not selection["enabled"]:
        st.info("Live selection is off (--no-live-selection): the model's forecast is served everywhere.")
        return
    rows = selection["rows"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    by_key = {(r["metric"], r["horizon"]): r for r in rows}
    st.dataframe(pd.DataFrame([{"metric": label(m), **{
        HORIZON_SHOWN.get(h, h): f"{by_key[(m, h)]['servers']} of {by_key[(m, h)]['of']}"
        for h in HORIZONS if (m, h) in by_key}} for m in metrics]), hide_index=True, width="stretch")
    servers = selection["servers"]
    if servers:
        st.dataframe(pd.DataFrame([{
            "server": s["server_name"], "profile": s["profile"],
            "model trained on it": "yes" if s["known_to_model"] else "no",
            "last value served for": "; ".join(f"{label(m)} at " + ", ".join(HORIZON_SHOWN.get(h, h) for h in hs)
                                               for m, hs in s["last_value_served"].items())} for s in servers]),
            hide_index=True, width="stretch")
    switches = selection["switches"]
    st.caption(f"Per server, metric and horizon the daemon serves the last value (the model's band moved onto it) "
               f"while the model's matured forecasts there lose to it significantly over the last "
               f"{LIVE_SELECTION.window_hours} h, and the model again once they beat it; a server the model was not "
               f"trained on starts on the last value. Flips since this model was loaded: "
               f"{switches.get('last_value', 0)} to the last value, {switches.get('model', 0)} back to the model.")


def alert_quality(accuracy: dict[str, Any]) -> None:
    """How the daemon's own risk alerts fared, per metric (GET /accuracy ``alert_quality``, fleet-wide).

    Precision, recall (breaches warned of), the breaches warned in time and the median lead; a daemon
    that has not judged an alert yet (or predates the field) says when it will.
    """
    hold = ALERT_QUALITY.breach_hold_buckets * SAMPLING_INTERVAL_MINUTES
    quality = accuracy.get("alert_quality") or []
    window = quality[0]["window"] if quality else f"{ALERT_QUALITY.live_window_days}d"
    hours = accuracy.get("windows", {}).get(window)
    st.subheader(f"Alert quality, last {window_text(hours) if hours else window}")
    if not quality:
        st.caption(f"No alert judged yet: an alert is judged once it has closed; a breach once it has held {hold} "
                   f"min.")
        return
    st.dataframe(pd.DataFrame([{
        "metric": label(q["metric"]), "precision": _rounded(q["precision"]), "recall": _rounded(q["recall"]),
        "median lead (min)": None if q["median_lead_minutes"] is None else round(q["median_lead_minutes"]),
        "breaches": q["breaches"], "warned": q["warned"], "in time": q["timely"], "alert episodes": q["episodes"],
        "false": q["false_episodes"]} for q in quality if q["window"] == window]), hide_index=True, width="stretch")
    early, late = ALERT_QUALITY.timely_lead_minutes
    st.caption(f"Precision: the share of closed alert episodes a breach started in (or right after). Recall: the "
               f"share of breaches an alert was open for (a breach nobody warned of counts too). In time: warned "
               f"{early} min to {late // 60} h ahead. Lead: from the alert's start to the breach's. The daemon "
               f"judges an alert once it has closed, a breach once it has held {hold} min (Docs/RISK_SCORING.md).")


def advanced(client: Reader, info: dict[str, Any], fleet: dict[str, Any], alerts: dict[str, Any],
             refresh: int, key_text: str) -> None:
    """Model info, daemon counters, raw responses (``key_text``: whether a key is set, in words)."""
    left, right = st.columns(2)
    with left:
        st.subheader("Model")
        st.table(pd.DataFrame({"": ["version", "trained at", "contract (model / daemon)", "encoder length",
                                    "model dir"],
                               "value": [info["model_version"], info["trained_at"],
                                         f"{info['model_contract_version']} / {info['contract_version']}",
                                         str(info["model_encoder_length"]), info["model_dir"]]}))
        backtest = info.get("backtest_summary")
        if backtest:
            st.markdown("**Backtest on held-out data** (q-risk at 0.5, lower is better)")
            st.dataframe(pd.DataFrame([{
                "horizon": horizon, "TFT": row["qrisk_50_mean"]["tft"],
                "persistence": row["qrisk_50_mean"]["persistence"],
                "seasonal naive": row["qrisk_50_mean"]["seasonal_naive"],
                "vs best baseline": f"{row['improvement_vs_best_baseline']:+.1%}",
                "p10-p90 coverage": row["coverage_p10_p90_mean"]} for horizon, row in backtest.items()]),
                hide_index=True)
        st.subheader("Connection")
        st.table(pd.DataFrame({"": ["daemon URL", "refresh", "API key", "demo mode"],
                               "value": [client.base_url, f"every {refresh} s" if refresh else "off", key_text,
                                         "on" if demo_mode_on() else "off"]}))
        st.caption(f"The daemon and the key come from the dashboard's environment ({DASHBOARD_DAEMON_URL_ENV}, "
                   f"{DASHBOARD.shard_urls_env}, {API_KEY_ENV}, {API_KEY_FILE_ENV}; Docs/DASHBOARD.md), never from "
                   f"the page.")
    with right:
        st.subheader("Daemon")
        keys = ["uptime_seconds", "servers_tracked", "servers_ready", "servers_warming_up", "servers_offline",
                "unknown_servers", "cycles", "forecasts_per_second", "average_cycle_ms", "last_cycle_ms",
                "feed_records_stored", "feed_records_rejected", "feed_records_duplicate", "requests_total",
                "error_rate"]
        st.table(pd.DataFrame({"counter": keys, "value": [str(info.get(k)) for k in keys]}))
    with st.expander("Raw /status"):
        st.json(info)
    with st.expander("Raw /predictions/current (first 3 servers)"):
        st.json({**fleet, "servers": fleet["servers"][:3]})
    with st.expander("Raw /alerts/active"):
        st.json(alerts)


page(client, refresh, key_text)
