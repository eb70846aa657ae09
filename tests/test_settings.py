"""Settings declared once: the CLI flags of train, retrain, evaluate and infer are generated from the settings
dataclasses (cli_options.py), with their defaults from config.py. All in-process (argparse), < 1 s."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import fleet_status
import model_retrain
import tft_evaluate
import tft_inference
import tft_trainer
from cli_options import flagged_fields, option_string, settings_from
from config import PROJECT_ROOT, RETRAIN
from daemon_state import DaemonSettings
from fleet_status import StatusSettings
from model_retrain import RetrainSettings
from tft_evaluate import BacktestSettings
from tft_inference import InferMode
from tft_trainer import TrainSettings

# command -> (its parser builder, the settings classes its flags come from)
COMMANDS = {
    "train": (tft_trainer.build_arg_parser, (TrainSettings,)),
    "retrain": (model_retrain.build_arg_parser, (TrainSettings, RetrainSettings)),
    "evaluate": (tft_evaluate.build_arg_parser, (BacktestSettings,)),
    "infer": (tft_inference.build_arg_parser, (InferMode, DaemonSettings)),
    "status": (fleet_status.build_arg_parser, (StatusSettings,)),
}
SETTINGS_MODULES = ("tft_trainer.py", "model_retrain.py", "tft_evaluate.py", "tft_inference.py", "daemon_state.py",
                    "baselines.py", "fleet_status.py")


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_is_a_declared_setting_and_every_setting_a_flag(command):
    """Each flagged field appears once under its flag with its declared default and a help text; the parser has
    no flag that no settings field declares (besides -h)."""
    build, types = COMMANDS[command]
    parser = build(argparse.ArgumentParser())
    flags = _flags(parser)
    declared = set()
    for settings_type in types:
        for f in flagged_fields(settings_type):
            flag = option_string(f)
            declared.add(flag)
            assert flag in flags, f"{command}: {settings_type.__name__}.{f.name} has no flag {flag}"
            action = flags[flag]
            assert action.dest == f.name and action.help, (command, flag)
            off = f.metadata["cli"].off
            if off is not None:
                declared.add(off[0])
    assert set(flags) - {"-h", "--help"} == declared, command


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_flags_give_the_declared_defaults(command):
    """Parsing nothing builds each settings class exactly as its defaults (the retrainer's three overrides aside)."""
    build, types = COMMANDS[command]
    args = build(argparse.ArgumentParser()).parse_args([])
    for settings_type in types:
        built = settings_from(settings_type, args)
        expected = settings_type()
        if command == "retrain" and settings_type is TrainSettings:  # its data: RetrainSettings' --store / --data
            built = model_retrain.settings_from_args(args)[1]
            expected = dataclasses.replace(expected, data=None, epochs=RETRAIN.epochs, statistical=())
        assert built == expected, (command, settings_type.__name__)


def test_each_train_flag_reaches_its_setting():
    """A non-default value on the command line lands in the field of the same name (no hand copy to forget)."""
    argv = ["--data", "d.parquet", "--models-dir", "m", "--epochs", "3", "--batch-size", "7", "--encoder-length", "9",
            "--hidden-size", "5", "--attention-heads", "3", "--hidden-continuous-size", "2", "--dropout", "0.3",
            "--learning-rate", "0.5", "--windows-per-epoch", "11", "--val-windows", "13", "--val-hours", "6",
            "--holdout-hours", "4", "--unseen-per-profile", "0", "--seed", "42", "--accelerator", "cpu",
            "--devices", "2", "--num-nodes", "3", "--strategy", "ddp", "--precision", "16-mixed", "--resume", "ck",
            "--keep-checkpoints", "--checkpoint-every", "2", "--no-backtest", "--no-calibration", "--no-alert-fit",
            "--statistical", "autotheta", "--max-minutes", "1.5", "--max-memory-gb", "2", "--compile", "off"]
    got = tft_trainer.settings_from_args(tft_trainer.build_arg_parser().parse_args(argv))
    default = TrainSettings()
    for f in flagged_fields(TrainSettings):
        assert getattr(got, f.name) != getattr(default, f.name), f"--{f.name} did not reach TrainSettings.{f.name}"
    assert (got.devices, got.statistical, got.data) == (2, ("autotheta",), Path("d.parquet"))
    assert tft_trainer.settings_from_args(tft_trainer.build_arg_parser().parse_args(["--no-statistical"])).statistical \
        == ()


def test_bad_values_are_usage_errors(capsys):
    """A value a setting cannot take stops argparse (exit 2) with the setting's own explanation."""
    for build, argv, said in ((tft_trainer.build_arg_parser, ["--statistical", "prophet"], "unknown model"),
                              (model_retrain.build_arg_parser, ["--coverage-band", "0.9,0.1"], "LOW < HIGH"),
                              (tft_inference.build_arg_parser, ["--retrain-every", "soon"], "retrain-every"),
                              (tft_trainer.build_arg_parser, ["--compile", "maybe"], "invalid choice")):
        with pytest.raises(SystemExit) as stop:
            build().parse_args(argv)
        assert stop.value.code == 2
        assert said in capsys.readouterr().err


def test_setting_defaults_are_config_names_not_literals():
    """No number is written as a flag's default in the modules that declare settings: each comes from config.py."""
    found = []
    for name in SETTINGS_MODULES:
        tree = ast.parse((PROJECT_ROOT / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "option" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, int | float) \
                        and not isinstance(first.value, bool):
                    found.append(f"{name}:{node.lineno}: {first.value!r}")
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Settings", "Mode")):
                for item in node.body:  # plain fields without a flag: defaults from config too
                    if isinstance(item, ast.AnnAssign) and isinstance(item.value, ast.Constant) \
                            and isinstance(item.value.value, int | float) and not isinstance(item.value.value, bool):
                        found.append(f"{name}:{item.lineno}: {item.value.value!r}")
    assert not found, found
