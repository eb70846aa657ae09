"""Command-line interface for the whole toolkit.

    python main.py generate --servers 90 --hours 720     # simulate a fleet -> training/
    python main.py validate training/server_metrics.parquet
    python main.py import --mapping mappings/bitbrains_rnd.json --out training/server_metrics.parquet SRC...
    python main.py export --store data/metrics_store.sqlite3 --out training/live/server_metrics.parquet
    python main.py collect --daemon-url http://127.0.0.1:8000 --profile database
    python main.py prometheus --url http://127.0.0.1:9090 --hours 720 --out training/server_metrics.parquet
    python main.py train --data training/server_metrics.parquet --epochs 20
    python main.py evaluate --model models/latest --data training/server_metrics.parquet
    python main.py retrain --store data/metrics_store.sqlite3 --models-dir models
    python main.py rollback --models-dir models
    python main.py infer --daemon --model-dir models/latest
    python main.py status --daemon-url http://10.0.0.1:8000 --daemon-url http://10.0.0.2:8000
    python main.py demo

Each subcommand is a thin wrapper over the module that owns the job; the module's own
``python <module>.py`` entry point takes the same flags. Modules are imported only when
their subcommand runs, so ``--help`` stays instant. Exit codes follow one convention for every
command (``errors.py``; README.md, Exit codes): 0 done, 1 a negative verdict, 2 usage or
input, 3 the environment failed, 70 a bug (traceback), 75 retrain skipped (lock held), 128+n a signal.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from common_utils import quiet_library_noise, setup_logging
from config import PROJECT_VERSION
from errors import run_cli

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "generate": ("metrics_generator", "simulate a realistic fleet and write LINBORG Parquet"),
    "validate": ("data_validator", "check a data file against the data contract (exit 1 if invalid)"),
    "import": ("trace_importer", "turn recorded CSV/Parquet traces into contract Parquet (see Docs/IMPORTING.md)"),
    "export": ("store_export", "write the daemon store's 5-minute buckets as contract Parquet for training"),
    "collect": ("host_collector", "sample this Linux host (psutil, /proc) and feed the daemon (Docs/COLLECTING.md)"),
    "prometheus": ("prometheus_adapter", "pull node_exporter series from Prometheus: training Parquet or a live feed"),
    "train": ("tft_trainer", "train the fleet TFT and save it to models/ (safetensors + JSON)"),
    "evaluate": ("tft_evaluate", "backtest a model against persistence and seasonal-naive baselines"),
    "retrain": ("model_retrain", "train a challenger on the store's history; promote it only if it backtests better"),
    "rollback": ("model_registry", "point models/latest back at the model the serving one replaced"),
    "infer": ("tft_inference", "run the forecast daemon (--daemon) or forecast a data file once (--data)"),
    "status": ("fleet_status", "what running daemons say: one line per shard, the fleet's servers and alerts"),
    "demo": ("demo", "one command: model (trained if missing), daemon, live stream and dashboard"),
}


def build_parser() -> argparse.ArgumentParser:
    """Top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Predict server trouble before it happens: fleet simulator, contract validator, "
                    "TFT trainer, inference daemon and dashboard.",
        epilog="Run 'python main.py <command> --help' for a command's options. Docs: Docs/INDEX.md",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {PROJECT_VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    # Listed here for the overview; each command's options are declared by its own module.
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand, hand the rest of the arguments to the module that owns it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints help / version / an error for unknown commands
        parser.print_help()
        return 2
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(SUBCOMMANDS[command][0])
    sub_parser = argparse.ArgumentParser(prog=f"main.py {command}", description=SUBCOMMANDS[command][1])
    args = module.build_arg_parser(sub_parser).parse_args(rest)
    setup_logging()
    quiet_library_noise()
    return run_cli(module.run_from_args, args, getattr(module, "CLI_FAILED", f"{command} failed"))


if __name__ == "__main__":
    sys.exit(main())
