"""Writes _StartHere.ipynb (the guided tour). Edit the cells here, then run:

    python tools/build_notebook.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell("""# Start here: predict server trouble before it happens

This notebook walks the whole toolkit once, end to end, on your machine:

1. check the environment,
2. **generate** a realistic fleet (LINBORG metrics every 5 minutes),
3. **validate** it against the data contract,
4. **train** a small profile-conditioned Temporal Fusion Transformer,
5. **evaluate** it against persistence and seasonal-naive baselines, and look at its forecasts,
6. **start the inference daemon**, feed it live metrics and query forecasts, risk and alerts,
7. open the **dashboard**.

The parameters below keep everything small (minutes on a laptop CPU). For a real model use
`python main.py generate --hours 720` and `python main.py train` (see `Docs/TRAINING_GUIDE.md`)."""),
    new_code_cell("""# Parameters: small enough for a quick tour (the test suite makes them smaller still).
SERVERS = 30          # fleet size
HOURS = 24 * 8        # days of history to simulate
EPOCHS = 3            # training epochs
WINDOWS = 4096        # training windows per epoch
HIDDEN = 16           # model width
ENCODER = 48          # history the model reads (5-minute buckets)
WORKDIR = "demo_data/notebook"
PORT = 8123           # daemon port for step 6""", metadata={"tags": ["parameters"]}),
    new_markdown_cell("## 1. Environment check"),
    new_code_cell("""import os
import platform
import sys
import time
from pathlib import Path

import lightning
import pandas as pd
import pytorch_forecasting
import torch

import config

print(f"Python {platform.python_version()} | torch {torch.__version__} | lightning {lightning.__version__} | "
      f"pytorch-forecasting {pytorch_forecasting.__version__} | pandas {pd.__version__}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU training)")
print(f"project {config.PROJECT_VERSION}, data contract {config.CONTRACT_VERSION}, "
      f"horizons {config.HORIZONS} (5-minute steps)")
work = Path(WORKDIR)
work.mkdir(parents=True, exist_ok=True)"""),
    new_markdown_cell("""## 2. Generate a fleet
Seven server profiles (web/API, ML compute, databases, ETL, risk analytics, schedulers, generic) with daily
and weekly rhythm, and incidents that build up for tens of minutes to hours before they turn critical."""),
    new_code_cell("""from metrics_generator import fleet_from_total, generate_dataset

meta = generate_dataset(work / "training", hours=HOURS, fleet=fleet_from_total(SERVERS), seed=42, progress=False)
data_path = work / "training" / config.TRAINING_DATA_FILE
print(f"{meta['rows']:,} rows, {meta['n_servers']} servers, {meta['start']} .. {meta['end']}")
pd.Series(meta["state_shares"]).sort_values(ascending=False).round(3)"""),
    new_code_cell("""%matplotlib inline
import matplotlib.pyplot as plt

from contract import cpu_used

df = pd.read_parquet(data_path)
fig, ax = plt.subplots(figsize=(11, 3.5))
for profile, part in df.groupby("profile", observed=True):
    one = part[part["server_name"] == part["server_name"].iloc[0]]
    ax.plot(one["timestamp"], cpu_used(one["cpu_idle_pct"]), label=f"{one['server_name'].iloc[0]} ({profile})",
            lw=0.8)
ax.set_ylabel("% CPU used")
ax.legend(fontsize=7, ncol=4)
ax.set_title("One server per profile")
plt.show()"""),
    new_markdown_cell("## 3. Validate against the data contract (`Docs/DATA_CONTRACT.md`)"),
    new_code_cell("""from data_validator import DataValidator

is_valid, errors, warnings = DataValidator(strict=True).validate_schema(df)
print("valid:", is_valid, "| errors:", len(errors), "| warnings:", len(warnings))
for issue in errors + warnings:
    print(" -", issue)
assert is_valid"""),
    new_markdown_cell("""## 4. Train
The trainer validates the data, splits it by time (training, validation, a held-out day), fits the
model, and saves `model.safetensors` + JSON metadata + `server_mapping.json` (no pickles)."""),
    new_code_cell("""from tft_trainer import build_arg_parser, settings_from_args, train

args = build_arg_parser().parse_args([
    "--data", str(data_path), "--models-dir", str(work / "models"), "--epochs", str(EPOCHS),
    "--windows-per-epoch", str(WINDOWS), "--val-windows", "1024", "--hidden-size", str(HIDDEN),
    "--hidden-continuous-size", str(max(4, HIDDEN // 2)), "--encoder-length", str(ENCODER), "--batch-size", "64",
    "--no-statistical"])  # statistical baselines: main.py evaluate (section 5) or bench.bench_real_data
result = train(settings_from_args(args))
model_dir = result.model_dir
print("saved:", model_dir, sorted(p.name for p in model_dir.iterdir()))
history = pd.DataFrame(result.training_info["history"]).set_index("epoch")
history[["train_loss", "val_loss"]].plot(figsize=(6, 3), title="loss per epoch")
plt.show()"""),
    new_markdown_cell("""## 5. Evaluate
The backtest forecasts the held-out day from many origins and compares the TFT with two baselines
measured in the same run: *persistence* (last value) and *seasonal naive* (same time yesterday).
q-risk is the normalised quantile loss (lower is better); coverage is the share of actuals inside
the p10-p90 band (about 0.8 when calibrated)."""),
    new_code_cell("""from tft_evaluate import format_table

print(format_table(result.training_info["backtest"]))"""),
    new_code_cell("""import numpy as np

from tft_evaluate import predict_windows

store, spec = result.data.store, result.data.spec
servers, starts = store.window_starts(first_decoder_tidx=result.data.val_end_tidx + 1, stride=48)
pick = int(np.argmax([store.profiles[s] == "database" for s in servers]))
quantiles = predict_windows(result.model, store, servers[pick:pick + 1], starts[pick:pick + 1])[0]
rows = store.offsets[servers[pick]] + starts[pick] + np.arange(spec.encoder_length + spec.prediction_length)
fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
ahead = np.arange(spec.prediction_length)
for ax, target in zip(axes, ["cpu_iowait_pct", "mem_used_pct", "disk_usage_pct"], strict=True):
    j = spec.targets.index(target)
    steps = np.arange(-spec.encoder_length, spec.prediction_length)
    ax.plot(steps, store.targets[rows, j], color="black", lw=0.8, label="actual")
    ax.fill_between(ahead, quantiles[j, :, 0], quantiles[j, :, 2], alpha=0.3, label="p10-p90")
    ax.plot(ahead, quantiles[j, :, 1], label="p50")
    ax.axvline(0, ls=":", color="grey")
    ax.set_title(f"{store.server_names[servers[pick]]}: {target}")
    ax.set_xlabel("5-minute steps from now")
axes[0].legend(fontsize=7)
plt.tight_layout()
plt.show()"""),
    new_markdown_cell("""## 6. Start the daemon and feed it
The daemon stores every record durably (SQLite), forecasts the fleet whenever a 5-minute bucket
completes, and serves forecasts, risk scores and alerts. Here we feed it the last hours of the
generated fleet, as a collector would."""),
    new_code_cell("""import subprocess

from daemon_client import DaemonClient

API_KEY = "notebook-demo-key"
store_file = work / "store.sqlite3"
store_file.unlink(missing_ok=True)
daemon = subprocess.Popen([sys.executable, "tft_inference.py", "--daemon", "--port", str(PORT), "--model-dir",
                           str(model_dir), "--store", str(store_file)], env={**os.environ, "TFT_API_KEY": API_KEY})
client = DaemonClient(f"http://127.0.0.1:{PORT}", API_KEY)  # the client the dashboard and collectors use
print(client.wait_until_healthy(120, still_starting=lambda: daemon.poll() is None))"""),
    new_code_cell("""last_hours = pd.Timedelta(minutes=5 * (ENCODER + 12))
recent = df[df["timestamp"] >= df["timestamp"].max() - last_hours].copy()
recent["timestamp"] = recent["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
for column in ("server_name", "profile", "state"):
    recent[column] = recent[column].astype(str)
records = recent.to_dict(orient="records")
reply = client.feed(records)
print(f"stored {len(reply.stored)} of {reply.received} records, rejected {len(reply.rejected)}")
for _ in range(120):
    if client.status()["cycles"] >= 1:
        break
    time.sleep(0.5)
current = client.predictions_current()
print("forecast made at", current["prediction_time"], "| summary:", current["summary"])
pd.DataFrame([{"server": s["server_name"], "profile": s["profile"], "risk": s["risk_score"], "level": s["risk_level"],
               "CPU used now": s["current"].get("cpu_used_pct"),
               "CPU used +1 h (p50)": s["predictions"]["1hr"]["cpu_used_pct"]["p50"] if s["predictions"] else None}
              for s in current["servers"][:8]])"""),
    new_code_cell("""alerts = client.alerts()["alerts"]
print(f"{len(alerts)} active alerts")
for alert in alerts[:5]:
    print(f"- {alert['server_name']} [{alert['level']}] {alert['reason']}")
status = client.status()
print({k: status[k] for k in ("servers_tracked", "servers_ready", "last_cycle_ms", "forecasts_per_second")})"""),
    new_markdown_cell("""## 7. The dashboard
In a terminal, with the daemon running:

```bash
TFT_DAEMON_URL=http://127.0.0.1:8123 TFT_API_KEY=notebook-demo-key streamlit run tft_dashboard_web.py
```

or run everything at once, with a live simulated fleet and demo buttons: `python main.py demo`."""),
    new_code_cell("""client.close()
daemon.terminate()
daemon.wait(10)
print("daemon stopped")"""),
]


def build() -> nbformat.NotebookNode:
    """The notebook object."""
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "_StartHere.ipynb"
    nbformat.write(build(), target)
    print(f"wrote {target}")
