"""Builds the Grafana dashboards of the forecaster's mixin with the Grafana Foundation SDK.

    python -m tools.build_grafana            # write deploy/grafana/dashboards/*.json
    python -m tools.build_grafana --check    # exit 1 if a committed file differs from what this builds

The JSON under deploy/grafana/dashboards/ is generated: edit the panels here, never the files
(tests/test_grafana.py runs ``--check``). Why the Foundation SDK: it is Grafana Labs' own, its types
and builders are generated from Grafana's dashboard schema (so a field Grafana does not know cannot
be written), and it is released with every Grafana version (this file is built with the 11.6 one);
grafanalib, the older choice, is maintained by volunteers and last released in January 2024.

Every query reads the daemon's /metrics as Prometheus scrapes it (deploy/prometheus.yml, job "tft",
no honor_labels): ``instance`` is the daemon's own address, which the dashboards call the **shard**
(one daemon per part of the fleet), and the series' own ``instance`` label, the host's Prometheus
instance, arrives as ``exported_instance`` (the dashboards' **instance** variable). Docs/DEPLOYMENT.md
(Grafana) describes each panel.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from config import (
    ACCURACY_WINDOWS_HOURS,
    ALERT_QUALITY,
    ANOMALY_HORIZONS,
    DASHBOARD,
    DRIFT_COVERAGE_BAND,
    DRIFT_SKILL_FLOOR,
    GRAFANA_DASHBOARD_DIR,
    GRAFANA_GRID_COLUMNS,
    GRAFANA_PANEL_HEIGHT,
    GRAFANA_REFRESH,
    GRAFANA_STAT_HEIGHT,
    GRAFANA_TABLE_HEIGHT,
    GRAFANA_TIME_FROM,
    HORIZONS,
    METRIC_LABELS,
    PROM_FORECAST_SERIES,
    RISK_METRICS,
    RISK_RED_ABOVE,
    RISK_YELLOW_AT,
    SAMPLING_INTERVAL_SECONDS,
)
from observed_series import observed_name, threshold_name

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["tft", "forecast"]
HALF, THIRD, SIXTH = GRAFANA_GRID_COLUMNS // 2, GRAFANA_GRID_COLUMNS // 3, GRAFANA_GRID_COLUMNS // 6
HORIZON_SECONDS = {label: steps * SAMPLING_INTERVAL_SECONDS for label, steps in HORIZONS.items()}
HORIZON_TEXT = {"30min": "30 min", "1hr": "1 h", "8hr": "8 h"}
# Grafana units of each forecast series (their base units: ratios 0-1, bytes per second, counts).
UNITS = {"cpu_used_pct": "percentunit", "cpu_iowait_pct": "percentunit", "mem_used_pct": "percentunit",
         "swap_used_pct": "percentunit", "disk_usage_pct": "percentunit", "load_average": "short",
         "net_in_mb_s": "Bps", "net_out_mb_s": "Bps", "back_close_wait": "short", "front_close_wait": "short"}
RISK_STEPS = [model.Threshold(value=None, color="green"), model.Threshold(value=RISK_YELLOW_AT, color="yellow"),
              model.Threshold(value=RISK_RED_ABOVE, color="red")]
LEVEL_COLORS = {"critical": "red", "warning": "orange", "elevated": "yellow"}
# The daemon's own alert figures roll over one window (live_alerts.py); anomaly scores are drawn for the
# freshest band the daemon scores (the forecast made 30 min before), as the API_REFERENCE rule does.
ALERT_WINDOW = f"{ALERT_QUALITY.live_window_days}d"
ANOMALY_SECONDS = HORIZON_SECONDS[ANOMALY_HORIZONS[0]]
ANOMALY_STEPS = [model.Threshold(value=None, color="green"),
                 model.Threshold(value=DASHBOARD.anomaly_outside_above, color="red")]

# The filters every panel of a dashboard shares (Grafana substitutes the variables; "All" is ".*").
SHARD = 'job=~"$job", instance=~"$shard"'
FLEET = f'{SHARD}, profile=~"$profile", exported_instance=~"$instance", server=~"$server"'
ONE_SERVER = f'{SHARD}, server="$server"'


# ============================================================================ building blocks
def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False,
          as_table: bool = False) -> prometheus.Dataquery:
    """A Prometheus target of a panel."""
    target = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        target = target.legend_format(legend)
    if instant:
        target = target.instant()
    else:
        target = target.range()
    return target.format(PromQueryFormat.TABLE) if as_table else target


def thresholds(steps: list[model.Threshold]) -> dash.ThresholdsConfig:
    """Absolute thresholds (the first step's value None: from minus infinity)."""
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def series_panel(title: str, description: str, unit: str, width: int = HALF) -> timeseries.Panel:
    """A time-series panel with the dashboard's datasource, a table legend and its unit."""
    return (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .height(GRAFANA_PANEL_HEIGHT).span(width).fill_opacity(10).line_width(1)
            .legend(common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                    .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
            .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                     .sort(common.SortOrder.DESCENDING)))


def stat_panel(title: str, description: str, expr: str, unit: str = "short",
               steps: list[model.Threshold] | None = None, width: int = SIXTH) -> stat.Panel:
    """A single number (the last value), coloured by its thresholds."""
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .height(GRAFANA_STAT_HEIGHT).span(width).with_target(query(expr, instant=True))
            .color_mode(common.BigValueColorMode.VALUE).graph_mode(common.BigValueGraphMode.NONE)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
            .thresholds(thresholds(steps or [model.Threshold(value=None, color="text")])))


def bar_panel(title: str, description: str, expr: str, unit: str, width: int = THIRD,
              steps: list[model.Threshold] | None = None) -> bargauge.Panel:
    """One horizontal bar per metric (an instant query, each series named by its ``metric``), the last value.

    Without ``steps``: a 0-1 ratio, coloured red (0) to green (1).
    """
    panel = (bargauge.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .height(GRAFANA_PANEL_HEIGHT).span(width).with_target(query(expr, "{{metric}}", instant=True))
             .orientation(common.VizOrientation.HORIZONTAL).display_mode(common.BarGaugeDisplayMode.GRADIENT)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])))
    if steps is not None:
        return panel.thresholds(thresholds(steps))
    return panel.min(0).max(1).color_scheme(dash.FieldColor().mode(model.FieldColorModeId.CONTINUOUS_RD_YL_GR))


def table_panel(title: str, description: str, expr: str, hide: list[str], unit: str = "none",
                width: int = HALF) -> table.Panel:
    """An instant query as a table, one row per series, the named columns hidden."""
    organize = model.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {name: True for name in ["Time", "__name__", *hide]}, "renameByName": {"Value": "value"}})
    return (table.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
            .height(GRAFANA_TABLE_HEIGHT).span(width).with_target(query(expr, instant=True, as_table=True))
            .with_transformation(organize))


def dashed(color: str) -> list[model.DynamicConfigValue]:
    """Override properties: a dashed line in a fixed colour, no fill (thresholds and medians)."""
    return [model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})]


def variables(*, server: str | None = None, profile: bool = True, instance: bool = True) -> list[Any]:
    """The template variables, in Grafana's usual order: datasource, job, shard, then what narrows the fleet.

    ``server``: None (no server variable), "multi" (fleet views) or "single" (the per-server view).
    """
    def label_values(name: str, label: str, match: str, text: str, multi: bool = True) -> dash.QueryVariable:
        variable = (dash.QueryVariable(name).label(text).datasource(DATASOURCE)
                    .query(f"label_values({match}, {label})").refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                    .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC))
        if multi:
            variable = variable.multi(True).include_all(True).all_value(".*").current(
                model.VariableOption(selected=True, text="All", value="$__all"))
        return variable

    out: list[Any] = [dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
                      label_values("job", "job", "tft_model_loaded", "Job"),
                      label_values("shard", "instance", 'tft_model_loaded{job=~"$job"}', "Shard (daemon)")]
    narrowed = f"tft_risk_score{{{SHARD}"
    if profile:
        out.append(label_values("profile", "profile", narrowed + "}", "Profile"))
        narrowed += ', profile=~"$profile"'
    if instance:
        out.append(label_values("instance", "exported_instance", narrowed + "}", "Instance (host)"))
        narrowed += ', exported_instance=~"$instance"'
    if server:
        out.append(label_values("server", "server", narrowed + "}", "Server", multi=server == "multi"))
    return out


def board(uid: str, title: str, description: str, variable_list: list[Any],
          content: list[tuple[str | None, list[Any]]]) -> model.Dashboard:
    """A dashboard of rows (title None: panels above the first row)."""
    builder = (dash.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
               .refresh(GRAFANA_REFRESH).time(GRAFANA_TIME_FROM, "now").timezone("browser")
               .tooltip(model.DashboardCursorSync.CROSSHAIR).variables(variable_list)
               .link(dash.DashboardLink("Forecaster dashboards").type(model.DashboardLinkType.DASHBOARDS)
                     .tags(["tft"]).as_dropdown(True).include_vars(True).keep_time(True)))
    for row, panels in content:
        if row is not None:
            builder = builder.with_row(dash.Row(row))
        for panel in panels:
            builder = builder.with_panel(panel)
    built = builder.build()
    for number, panel in enumerate(built.panels or [], start=1):  # stable ids: the file changes only with its panels
        panel.id_val = number
    return built


# ============================================================================ the four dashboards
def fleet_overview() -> model.Dashboard:
    """Risk by profile, open alerts, servers forecast / warming up / offline."""
    status = 'sum(tft_servers{%s, status="%s"})'
    stats = [
        stat_panel("Servers forecast", "Servers with a forecast this cycle (an hour of history or more).",
                   status % (SHARD, "ok")),
        stat_panel("Warming up", "Servers tracked but not forecast yet: they have less than an hour of history "
                   "(GET /predictions/current says how many buckets each still needs).", status % (SHARD, "warming_up"),
                   steps=[model.Threshold(value=None, color="text"), model.Threshold(value=1, color="blue")]),
        stat_panel("Offline", "Servers that sent nothing for an hour: not forecast. Check their collector or "
                   "Prometheus target.", status % (SHARD, "offline"),
                   steps=[model.Threshold(value=None, color="green"), model.Threshold(value=1, color="orange")]),
        stat_panel("Critical alerts", "Open critical risk alerts (firing, not suppressed by maintenance).",
                   f'sum(tft_active_alerts{{{SHARD}, level="critical"}})',
                   steps=[model.Threshold(value=None, color="green"), model.Threshold(value=1, color="red")]),
        stat_panel("Warning alerts", "Open warning risk alerts (firing, not suppressed by maintenance).",
                   f'sum(tft_active_alerts{{{SHARD}, level="warning"}})',
                   steps=[model.Threshold(value=None, color="green"), model.Threshold(value=1, color="orange")]),
        stat_panel("Daemons without a model", "Shards whose daemon has no model loaded: they store data but "
                   "forecast nothing (GET /status says why).", f"count(tft_model_loaded{{{SHARD}}} == 0) or vector(0)",
                   steps=[model.Threshold(value=None, color="green"), model.Threshold(value=1, color="red")]),
    ]
    risk = (series_panel("Risk by profile (worst server)", "The highest risk score (0-1) of each profile's servers "
                         "per cycle. Yellow from 0.3, red above 0.7 (config.py RISK_YELLOW_AT, RISK_RED_ABOVE).",
                         "none")
            .with_target(query(f"max by (profile) (tft_risk_score{{{FLEET}}})", "{{profile}}"))
            .min(0).max(1).thresholds(thresholds(RISK_STEPS))
            .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED)))
    by_status = (series_panel("Servers by status", "Tracked servers per status each cycle: forecast (ok), warming "
                              "up, offline.", "short")
                 .with_target(query(f"sum by (status) (tft_servers{{{SHARD}}})", "{{status}}"))
                 .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)))
    alerts_over_time = (series_panel("Open alerts by profile and severity", "Firing risk alerts per profile and "
                                     "severity (suppressed ones are not counted).", "short")
                        .with_target(query(f'count by (profile, severity) (tft_alert{{{FLEET}, kind="risk", '
                                           f'state="firing"}})', "{{profile}} {{severity}}"))
                        .stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)))
    worst_p90 = (series_panel("Worst p90 within 8 h: memory and disk", "The recording rules of tft_rules.yml: the "
                              "highest p90 any horizon reaches per server, for the two resources that run out.",
                              "percentunit")
                 .with_target(query(f"server:tft_forecast_memory_used_ratio:max_p90{{{FLEET}}}",
                                    "memory {{server}}", ref="A"))
                 .with_target(query(f"server:tft_forecast_disk_used_ratio:max_p90{{{FLEET}}}", "disk {{server}}",
                                    ref="B")))
    open_alerts = table_panel("Open alerts", "Every open alert: the server, the metric, the horizon (seconds; 0 = "
                              "now), its severity and whether maintenance suppresses it.",
                              f"tft_alert{{{FLEET}}}", hide=["Value", "job", "instance"])
    riskiest = table_panel("Riskiest servers", "The 20 servers with the highest risk score this cycle (0-1).",
                           f"topk(20, tft_risk_score{{{FLEET}}})", hide=["job"], unit="none")
    riskiest = riskiest.thresholds(thresholds(RISK_STEPS))
    outside = (series_panel("Servers outside their band", f"Per metric, how many servers' last complete bucket lies "
                            f"outside the p10-p90 band forecast {ANOMALY_SECONDS // 60} min before it (anomaly score "
                            f"above {DASHBOARD.anomaly_outside_above:g}, live_anomaly.py). A calibrated band leaves "
                            f"about one "
                            f"actual in five outside, so a few servers always are: watch a metric that rises or stays "
                            f"up. No line: none outside.", "short", width=GRAFANA_GRID_COLUMNS)
               .with_target(query(f"count by (metric) (tft_anomaly_score{{{FLEET}, "
                                  f'horizon_seconds="{ANOMALY_SECONDS}"}} > {DASHBOARD.anomaly_outside_above:g})',
                                  "{{metric}}")))
    return board("tft-fleet-overview", "Forecaster / Fleet overview",
                 "Which servers are at risk in the next 8 hours, which are not forecast yet, and the open alerts.",
                 variables(server="multi"),
                 [(None, stats), ("Risk", [risk, by_status, alerts_over_time, worst_p90]),
                  ("Anomalous now", [outside]), ("Alerts and servers", [open_alerts, riskiest])])


def metric_panel(metric: str) -> timeseries.Panel:
    """One metric of one server: the actuals, the p10-p90 band and p50 made ``$horizon`` earlier, the tiers."""
    label, _ = METRIC_LABELS[metric]
    forecast = PROM_FORECAST_SERIES[metric][0]
    made = f'{forecast}{{{ONE_SERVER}, horizon_seconds="$horizon", quantile="%s"}} offset ${{horizon}}s'
    panel = (series_panel(f"{label}: actual and the forecast made for it",
                          f"{label} of the bucket each cycle forecast from (the actual), and the p10-p90 band and "
                          f"p50 of the forecast made $horizon s earlier for that same time (offset). Dashed lines: "
                          f"the profile's risk tiers, where the metric has them.", UNITS[metric])
             .with_target(query(f"max({observed_name(metric)}{{{ONE_SERVER}}})", "actual", ref="A"))
             .with_target(query("max(" + made % "0.1" + ")", "p10", ref="B"))
             .with_target(query("max(" + made % "0.5" + ")", "p50", ref="C"))
             .with_target(query("max(" + made % "0.9" + ")", "p90", ref="D"))
             .override_by_name("p90", [model.DynamicConfigValue(id_val="custom.fillBelowTo", value="p10"),
                                       model.DynamicConfigValue(id_val="custom.lineWidth", value=0),
                                       model.DynamicConfigValue(id_val="custom.fillOpacity", value=25)])
             .override_by_name("p10", [model.DynamicConfigValue(id_val="custom.lineWidth", value=0)])
             .override_by_name("p50", dashed("blue")[:1])
             .override_by_name("actual", [model.DynamicConfigValue(id_val="custom.lineWidth", value=2),
                                          model.DynamicConfigValue(id_val="color",
                                                                   value={"mode": "fixed", "fixedColor": "text"})]))
    if metric in RISK_METRICS:
        tiers = (f"max by (level) ({threshold_name(metric)}{{{SHARD}}} and on (profile) "
                 f"tft_risk_score{{{ONE_SERVER}}})")
        panel = panel.with_target(query(tiers, "{{level}}", ref="T"))
        for level, color in LEVEL_COLORS.items():
            panel = panel.override_by_name(level, dashed(color))
    if UNITS[metric] == "percentunit":
        panel = panel.min(0).max(1)
    return panel


def server_view() -> model.Dashboard:
    """Each metric's actuals with the band and median of the forecast made for that time; the tiers drawn."""
    horizon = (dash.CustomVariable("horizon").label("Forecast made")
               .values(", ".join(f"{HORIZON_TEXT[h]} before : {s}" for h, s in HORIZON_SECONDS.items()))
               .current(model.VariableOption(selected=True, text=f"{HORIZON_TEXT['30min']} before",
                                             value=str(HORIZON_SECONDS["30min"]))))
    stats = [
        stat_panel("Risk score", "This cycle's risk score (0-1): yellow from 0.3, red above 0.7.",
                   f"max(tft_risk_score{{{ONE_SERVER}}})", "none", RISK_STEPS, width=THIRD),
        stat_panel("Open alerts", "Alerts open for this server (firing or suppressed by maintenance).",
                   f"count(tft_alert{{{ONE_SERVER}}}) or vector(0)", width=THIRD,
                   steps=[model.Threshold(value=None, color="green"), model.Threshold(value=1, color="red")]),
        stat_panel("First breach in", "The soonest time an open alert's threshold may be crossed (0: crossed now).",
                   f"min(tft_alert_time_to_breach_seconds{{{ONE_SERVER}}})", "s", width=THIRD),
    ]
    anomalous = (series_panel("Anomalous now: distance from the band", f"Per metric, |actual - p50| / band "
                              f"half-width of the forecast made {ANOMALY_SECONDS // 60} min before each bucket, "
                              f"whichever 'Forecast made' is chosen (tft_anomaly_score, live_anomaly.py): 1 = on the "
                              f"band's edge (dashed line), 3 = three half-widths beyond p50. A model surprise, not a "
                              f"tier breach: the metric panels below show where.", "none", width=GRAFANA_GRID_COLUMNS)
                 .with_target(query(f'max by (metric) (tft_anomaly_score{{{ONE_SERVER}, '
                                    f'horizon_seconds="{ANOMALY_SECONDS}"}})', "{{metric}}"))
                 .min(0).thresholds(thresholds(ANOMALY_STEPS))
                 .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(
                     common.GraphThresholdsStyleMode.DASHED)))
    order = [m for m in PROM_FORECAST_SERIES]
    return board("tft-server", "Forecaster / Server",
                 "One server: every forecast metric's actuals against the p10-p90 band and p50 that were forecast "
                 "for them, $horizon earlier, with the risk tiers of its profile, and how far outside its band "
                 "each metric is now.",
                 [*variables(server="single", profile=False), horizon],
                 [(None, stats), ("Anomalous now", [anomalous]),
                  ("Forecasts against actuals", [metric_panel(m) for m in order])])


def live_accuracy() -> model.Dashboard:
    """How the served forecasts fared once their time came: coverage, skill, q-risk, calibration."""
    window = (dash.CustomVariable("window").label("Window").values(", ".join(ACCURACY_WINDOWS_HOURS))
              .current(model.VariableOption(selected=True, text=next(iter(ACCURACY_WINDOWS_HOURS)),
                                            value=next(iter(ACCURACY_WINDOWS_HOURS)))))
    metric = (dash.QueryVariable("metric").label("Metric").datasource(DATASOURCE)
              .query(f"label_values(tft_forecast_coverage_ratio{{{SHARD}}}, metric)")
              .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
              .current(model.VariableOption(selected=True, text="All", value="$__all")))
    scope = f'{SHARD}, metric=~"$metric", window="$window"'
    low, high = DRIFT_COVERAGE_BAND
    band = [model.Threshold(value=None, color="red"), model.Threshold(value=low, color="green"),
            model.Threshold(value=high, color="red")]
    coverage = (series_panel("Coverage of the p10-p90 band", f"Share of matured forecasts whose actual fell inside "
                             f"the served p10-p90 band, per metric and horizon (seconds). Between {low:g} and "
                             f"{high:g} (DRIFT_COVERAGE_BAND) the bands hold; outside, model_degraded fires.",
                             "percentunit")
                .with_target(query(f"tft_forecast_coverage_ratio{{{scope}}}", "{{metric}} {{horizon_seconds}}s"))
                .min(0).max(1).thresholds(thresholds(band))
                .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(
                    common.GraphThresholdsStyleMode.DASHED)))
    skill = (series_panel("Skill against persistence", "1 - q-risk(model) / q-risk(last value) of matured "
                          "forecasts: above 0 the model beats \"it stays as it is\".", "percentunit")
             .with_target(query(f"tft_forecast_skill_ratio{{{scope}}}", "{{metric}} {{horizon_seconds}}s"))
             .thresholds(thresholds([model.Threshold(value=None, color="red"),
                                     model.Threshold(value=DRIFT_SKILL_FLOOR, color="green")]))
             .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(
                 common.GraphThresholdsStyleMode.DASHED)))
    qrisk = (series_panel("q-risk of matured forecasts", "Quantile loss of the p50 and p90, normalised by the "
                          "actuals (lower is better).", "none")
             .with_target(query(f"tft_forecast_qrisk_ratio{{{scope}}}",
                                "{{metric}} {{horizon_seconds}}s q{{quantile}}")))
    scales = (series_panel("Live band calibration", "Multipliers the daemon applies to each band half-width (low "
                           "and high side) from matured forecasts; 1 = the model's own band.", "none")
              .with_target(query(f'tft_forecast_band_scale_ratio{{{SHARD}, metric=~"$metric"}}',
                                 "{{metric}} {{horizon_seconds}}s {{side}}")))
    last_value = (series_panel("Servers served the last value", "Per metric and horizon (seconds), how many of the "
                               "servers forecast in the last cycle are served the last value instead of the model: "
                               "the model's matured forecasts on them lose to it significantly, or the model was "
                               "never trained on them and has not yet shown it does better (live selection; "
                               "Docs/API_REFERENCE.md).", "short")
                  .with_target(query(f'tft_forecast_last_value_servers{{{SHARD}, metric=~"$metric"}}',
                                     "{{metric}} {{horizon_seconds}}s")))
    degraded = stat_panel("Degraded metric x horizon", "How many metric x horizon pairs have model_degraded active "
                          "(coverage or skill out of bounds): consider a retrain.",
                          f"sum(tft_model_degraded{{{SHARD}}})", width=HALF,
                          steps=[model.Threshold(value=None, color="green"), model.Threshold(value=1, color="red")])
    scored = stat_panel("Forecasts scored per hour", "Matured forecasts scored against their actuals in the last "
                        "hour, all shards.", f"sum(increase(tft_forecasts_scored_total{{{SHARD}}}[1h]))",
                        width=HALF)
    judged = f'{SHARD}, metric=~"$metric", window="{ALERT_WINDOW}"'
    days = ALERT_QUALITY.live_window_days
    lo, hi = (60 * m for m in ALERT_QUALITY.timely_lead_minutes)
    precision = bar_panel(f"Alert precision ({days} days)", f"Per metric, the share of the daemon's closed risk-alert "
                          f"episodes a breach followed (started while open or the bucket after), over the last {days} "
                          f"days of data time, whatever the window above (live_alerts.py; Docs/RISK_SCORING.md, "
                          f"Measuring alerts). A metric appears once one of its episodes is judged.",
                          f"tft_alert_precision_ratio{{{judged}}}", "percentunit")
    recall = bar_panel(f"Alert recall ({days} days)", f"Per metric, the share of confirmed breaches (the warning tier "
                       f"held 10 min after an hour below elevated) a risk alert was open for at their first bucket, "
                       f"over the last {days} days. A metric appears once it has breached.",
                       f"tft_alert_recall_ratio{{{judged}}}", "percentunit")
    lead = bar_panel(f"Median alert lead ({days} days)", f"Per metric, the median time from the alert's opening to "
                     f"the breach it warned of (0: it opened at the breach's first bucket). Green from "
                     f"{lo // 60:g} min to {hi // 3600:g} h (timely); shorter leaves no time to act, longer is an "
                     f"alert left open.", f"tft_alert_lead_seconds{{{judged}}}", "s",
                     steps=[model.Threshold(value=None, color="orange"), model.Threshold(value=lo, color="green"),
                            model.Threshold(value=hi, color="orange")])
    counted = f'{SHARD}, metric=~"$metric"'
    breaches = (series_panel("Breaches a day: warned and unwarned", "Breaches confirmed in the last 24 h, by "
                             "whether a risk alert was open at their first bucket (tft_breaches_total, counted since "
                             "the daemon started; the first breach of each kind after a start only creates its "
                             "series, which increase() reads as the start).", "short")
                .with_target(query(f'sum(increase(tft_breaches_total{{{counted}, warned="true"}}[1d]))', "warned",
                                   ref="A"))
                .with_target(query(f'sum(increase(tft_breaches_total{{{counted}, warned="false"}}[1d]))',
                                   "unwarned", ref="B"))
                .override_by_name("unwarned", [model.DynamicConfigValue(
                    id_val="color", value={"mode": "fixed", "fixedColor": "red"})]))
    outcomes = (series_panel("Alert episodes judged a day: true and false", "Closed risk-alert episodes judged in "
                             "the last 24 h: true when a breach followed, false when none did "
                             "(tft_alert_episodes_judged_total; as above, the first of each outcome after a daemon "
                             "start only creates its series).", "short")
                .with_target(query(f'sum(increase(tft_alert_episodes_judged_total{{{counted}, outcome="true"}}[1d]))',
                                   "true", ref="A"))
                .with_target(query(f'sum(increase(tft_alert_episodes_judged_total{{{counted}, outcome="false"}}[1d]))',
                                   "false", ref="B"))
                .override_by_name("false", [model.DynamicConfigValue(
                    id_val="color", value={"mode": "fixed", "fixedColor": "red"})]))
    return board("tft-live-accuracy", "Forecaster / Live accuracy",
                 "The daemon's own check of its served forecasts, once their target time arrived, and of its alerts, "
                 "once the breach they warned of came or did not.",
                 [*variables(profile=False, instance=False), window, metric],
                 [(None, [degraded, scored]), ("Forecast quality", [coverage, skill, qrisk, scales, last_value]),
                  ("Alerts", [precision, recall, lead, breaches, outcomes])])


def daemon_health() -> model.Dashboard:
    """The daemon's own health: cycles, feed, rejections and refusals, model age."""
    rate = "[$__rate_interval]"
    one_of = [model.Threshold(value=None, color="red"), model.Threshold(value=1, color="green")]
    stats = [
        stat_panel("Daemons up", "Shards whose /metrics Prometheus scraped at its last try.",
                   f"sum(up{{{SHARD}}})", steps=one_of),
        stat_panel("Models loaded", "Shards serving a model (the others answer 503 for forecasts).",
                   f"sum(tft_model_loaded{{{SHARD}}})", steps=one_of),
        stat_panel("Model age", "Time since the served model was trained (the oldest shard's).",
                   f"max(time() - tft_model_trained_timestamp_seconds{{{SHARD}}})", "dtdurations"),
        stat_panel("Data lag", "Time from the start of the bucket the last cycle forecast from to now (the "
                   "newest shard's): a bucket is forecast once it is complete, so 5-10 minutes is normal.",
                   f"min(time() - tft_forecast_origin_timestamp_seconds{{{SHARD}}})", "dtdurations"),
        stat_panel("Tracked servers", "Servers the daemons track, every status.",
                   f"sum(tft_servers{{{SHARD}}})"),
        stat_panel("Window memory", "Memory held by the tracked servers' in-memory rings.",
                   f"sum(tft_server_windows_bytes{{{SHARD}}})", "bytes"),
    ]
    cycles = (series_panel("Forecast cycles per minute", "Completed forecast cycles; one per complete 5-minute "
                           "bucket, so ~0.2 a minute when fed live.", "short")
              .with_target(query(f"sum by (instance) (rate(tft_forecast_cycle_seconds_count{{{SHARD}}}{rate})) * 60",
                                 "{{instance}}")))
    duration = (series_panel("Cycle duration (p50, p90)", "How long a forecast cycle takes (every tracked server in "
                             "one batched forward pass).", "s")
                .with_target(query("histogram_quantile(0.5, sum by (le, instance) (rate(tft_forecast_cycle_seconds"
                                   f"_bucket{{{SHARD}}}{rate})))", "p50 {{instance}}", ref="A"))
                .with_target(query("histogram_quantile(0.9, sum by (le, instance) (rate(tft_forecast_cycle_seconds"
                                   f"_bucket{{{SHARD}}}{rate})))", "p90 {{instance}}", ref="B")))
    feed = (series_panel("Fed records by result", "Records stored, duplicates (a retried batch) and rejected "
                         "(contract violations, a key bound elsewhere, caps) from every input: /feed, remote-write, "
                         "OTLP.", "suffix: rec/s")
            .with_target(query(f"sum by (result) (rate(tft_feed_records_total{{{SHARD}}}{rate}))", "{{result}}")))
    rejected = (series_panel("Rejected share of fed records (15 min)", "The tft_rules.yml recording rule behind "
                             "FeedRejectingRecords (fires above 5 % for 15 minutes); all shards together.",
                             "percentunit")
                .with_target(query("tft:feed_rejected:ratio_rate15m", "rejected"))
                .thresholds(thresholds([model.Threshold(value=None, color="green"),
                                        model.Threshold(value=0.05, color="red")]))
                .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(
                    common.GraphThresholdsStyleMode.DASHED)))
    refused = (series_panel("Refusals at the trust bounds", "Requests, records and subscriptions refused at a "
                            "bound (body size, keys, caps, rates), by reason (Docs/API_REFERENCE.md, Limits).",
                            "suffix: /s")
               .with_target(query(f"sum by (reason) (rate(tft_refused_total{{{SHARD}}}{rate}))", "{{reason}}")))
    requests = (series_panel("HTTP requests by route and status", "Every request the daemons answered.", "reqps")
                .with_target(query(f"sum by (path, status) (rate(tft_http_requests_total{{{SHARD}}}{rate}))",
                                   "{{path}} {{status}}")))
    remote = (series_panel("Prometheus remote-write samples", "Samples POST /api/v1/write took, by result "
                           "(accepted, ignored, stale, late, refused, invalid).", "suffix: /s")
              .with_target(query(f"sum by (result) (rate(tft_remote_write_samples_total{{{SHARD}}}{rate}))",
                                 "{{result}}")))
    otlp = (series_panel("OpenTelemetry data points", "Data points POST /v1/metrics took, by result (as "
                         "remote-write, plus unsupported: delta temporality).", "suffix: /s")
            .with_target(query(f"sum by (result) (rate(tft_otlp_data_points_total{{{SHARD}}}{rate}))",
                               "{{result}}")))
    return board("tft-daemon-health", "Forecaster / Daemon health",
                 "The forecast daemons themselves: are they up, cycling and fed, what they refuse, how old the model "
                 "is.", variables(profile=False, instance=False),
                 [(None, stats), ("Cycles", [cycles, duration]), ("Feed", [feed, rejected, remote, otlp]),
                  ("Requests", [refused, requests])])


DASHBOARDS: dict[str, Callable[[], model.Dashboard]] = {
    "tft-fleet-overview.json": fleet_overview, "tft-server.json": server_view,
    "tft-live-accuracy.json": live_accuracy, "tft-daemon-health.json": daemon_health}


def render(build: Callable[[], model.Dashboard]) -> str:
    """A dashboard as the JSON file Grafana provisions (sorted keys, two-space indent, newline at the end)."""
    return json.dumps(json.loads(json.dumps(build(), cls=JSONEncoder)), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with ``--check`` say which committed file differs from what this builds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing; exit 1 on a difference")
    parser.add_argument("--out", type=Path, default=GRAFANA_DASHBOARD_DIR, help="directory of the JSON files")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        wanted = render(build)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != wanted:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"not what tools/build_grafana.py builds: {', '.join(stale)}. Edit the panels in tools/build_grafana.py "
              f"and run: python -m tools.build_grafana", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
