"""The deployment files in deploy/ (Docs/DEPLOYMENT.md): systemd units, the container image, the compose
stack and its Prometheus and Alertmanager configuration.

Static checks run everywhere: systemd's own verifier and security scorer on the real unit files, every
command line in them parsed by the real argument parsers, promtool and amtool on the configs, the compose
file's wiring against the files and ports it names. Where podman can run containers, the image is built
and serves /health, and the units boot under a real systemd (DynamicUser, the shared state directory, the
hardening) with a model, the collector and a retrain.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

import config
from config import DAEMON_PORT, DASHBOARD_PORT
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
DEPLOYMENT_DOC = ROOT / "Docs" / "DEPLOYMENT.md"
UNIT_FILES = ("tft-daemon.service", "tft-collector@.service", "tft-retrain.service", "tft-retrain.timer")
# The template is verified as an instance: the instance name is the host's profile.
VERIFY_NAMES = ("tft-daemon.service", "tft-collector@database.service", "tft-retrain.service",
                "tft-retrain.timer")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# systemd-analyze security's exposure scale is 0-100 (printed as 0.0-10.0); 2.5 is "OK" with margin.
MAX_EXPOSURE = 25
# What the resource limits are sized for: the daemon's tracked-server cap (10,000 where config.py does not
# name it yet), ~75 KiB of windows and state and ~90 /metrics series per tracked server.
TRACKED_SERVERS = getattr(config.DAEMON_STATE, "max_tracked_servers", 10_000)
BYTES_PER_SERVER = 75 * 1024
SERIES_PER_SERVER = 90


# ============================================================================ helpers
def unit_directives(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists, in order; continuation lines joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{path.name}: '{line}' outside a section"
        current.append((key.strip(), value.strip()))
    return sections


def values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit_directives(path).get(section, []) if k == key]


def one(path: Path, key: str, section: str = "Service") -> str:
    found = values(path, key, section)
    assert len(found) == 1, f"{path.name}: expected one {key}= in [{section}], found {found}"
    return found[0]


def exec_argv(path: Path, environment: dict[str, str] | None = None) -> list[str]:
    """ExecStart's argv as the service gets it: %i is the instance, $VAR/${VAR} from ``environment``."""
    env = environment or {}
    argv = []
    for word in shlex.split(one(path, "ExecStart").replace("%i", "database")):
        match = re.fullmatch(r"\$\{?(\w+)\}?", word)
        if match:
            argv.extend(shlex.split(env.get(match.group(1), "")))  # systemd: unset expands to nothing
        else:
            argv.append(word)
    return argv


def parse_main_command(argv: list[str]):  # noqa: ANN201 - argparse.Namespace
    """Parse ``main.py <command> ...`` with that command's own parser (unknown flags fail)."""
    import importlib

    from main import SUBCOMMANDS

    command, rest = argv[0], argv[1:]
    module = importlib.import_module(SUBCOMMANDS[command][0])
    import argparse

    parser = module.build_arg_parser(argparse.ArgumentParser(prog=f"main.py {command}", exit_on_error=False))
    try:
        return parser.parse_args(rest)
    except SystemExit as exc:  # argparse exits on an unknown flag even with exit_on_error=False
        raise AssertionError(f"main.py {command} refuses {rest}") from exc


def main_py_args(path: Path, environment: dict[str, str] | None = None) -> list[str]:
    argv = exec_argv(path, environment)
    assert argv[:2] == ["/opt/tft/.venv/bin/python", "/opt/tft/main.py"], argv[:2]
    return argv[2:]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def size_bytes(size: str | int) -> int:
    """A systemd or compose size ("4G", "384M", "20g", "256MB", 1024) in bytes (powers of 1024)."""
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)i?b?", str(size).strip(), re.IGNORECASE)
    assert match, f"not a size: {size!r}"
    return int(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")


def flag_value(argv: list[str], flag: str) -> str:
    for i, word in enumerate(argv):
        if word == flag:
            return argv[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {argv}")


# ============================================================================ systemd units
def _verify_root(tmp: Path, extra_units: dict[str, str] | None = None) -> Path:
    """A root for ``systemd-analyze --root``: systemd's own units, ours, and a stub for each program
    our units run (verify checks that ExecStart's program exists and is executable)."""
    root = tmp / "root"
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    target = root / "etc/systemd/system"
    target.mkdir(parents=True)
    for name in UNIT_FILES:
        shutil.copy(UNITS / name, target / name)
    for name, text in (extra_units or {}).items():
        (target / name).write_text(text, encoding="utf-8")
    for unit in target.iterdir():
        for line in values(unit, "ExecStart"):
            program = root / shlex.split(line)[0].lstrip("-@:+!").lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
            program.chmod(0o755)
    return root


def _verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}", *names], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_units_pass_systemd_analyze_verify_without_a_single_warning(tmp_path):
    # A typo'd directive is only a warning with exit code 0, so the output must be empty too. The
    # canary (the daemon's unit with one misspelt key) proves this check sees such a typo.
    canary = (UNITS / "tft-daemon.service").read_text(encoding="utf-8").replace(
        "ProtectSystem=strict", "ProtectSytem=strict")
    root = _verify_root(tmp_path, {"tft-canary.service": canary})
    result = _verify(root, *VERIFY_NAMES)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    caught = _verify(root, "tft-canary.service")
    assert "Unknown key" in caught.stderr and "ProtectSytem" in caught.stderr, caught.stderr
    # ... and a missing program fails outright.
    (root / "opt/tft/.venv/bin/python").unlink()
    missing = _verify(root, "tft-daemon.service")
    assert missing.returncode != 0 and "not executable" in missing.stderr, missing.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_units_score_ok_in_systemd_analyze_security(tmp_path):
    root = _verify_root(tmp_path)
    for name in ("tft-daemon.service", "tft-collector@database.service", "tft-retrain.service"):
        result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", f"--root={root}",
                                 f"--threshold={MAX_EXPOSURE}", "--no-pager", name],
                                capture_output=True, text=True, timeout=60, check=False)
        level = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
        assert level, result.stdout[-2000:] + result.stderr
        assert result.returncode == 0, f"{name}: exposure {level.group(1)} above {MAX_EXPOSURE / 10}"


def test_every_service_is_hardened_the_same_way():
    for name in ("tft-daemon.service", "tft-collector@.service", "tft-retrain.service"):
        unit = UNITS / name
        for key, want in [("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                          ("PrivateTmp", "yes"), ("PrivateDevices", "yes"), ("CapabilityBoundingSet", ""),
                          ("RestrictNamespaces", "yes"), ("SystemCallArchitectures", "native")]:
            assert one(unit, key) == want, f"{name}: {key}={one(unit, key)!r}, want {want!r}"
        assert one(unit, "ProtectHome") in ("yes", "read-only"), name
        assert "@system-service" in values(unit, "SystemCallFilter"), name
        assert set(one(unit, "RestrictAddressFamilies").split()) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
        # torch's oneDNN generates code at run time: W^X would kill the daemon and the retrain.
        if name != "tft-collector@.service":
            assert not values(unit, "MemoryDenyWriteExecute"), name
    for name in ("tft-daemon.service", "tft-collector@.service"):
        assert one(UNITS / name, "Restart") == "on-failure", name
        assert one(UNITS / name, "WantedBy", "Install") == "multi-user.target", name


def test_daemon_and_retrain_share_user_state_and_paths():
    daemon, retrain = UNITS / "tft-daemon.service", UNITS / "tft-retrain.service"
    # One dynamic UID for both (same User= name) and one state directory: the retrain reads the
    # daemon's store and writes the models directory the daemon follows.
    assert one(daemon, "User") == one(retrain, "User") == "tft"
    assert one(daemon, "StateDirectory") == one(retrain, "StateDirectory") == "tft"
    state = Path("/var/lib") / one(daemon, "StateDirectory")
    d_args = parse_main_command(main_py_args(daemon))
    r_args = parse_main_command(main_py_args(retrain))
    assert d_args.daemon and d_args.host == "127.0.0.1" and d_args.port == DAEMON_PORT
    assert d_args.allow_no_model and d_args.retrain_every_seconds is None  # the timer retrains, not the daemon
    assert [d_args.store_path] == r_args.store and d_args.store_path.parent == state
    assert d_args.model_dir == r_args.models_dir / "latest" and r_args.models_dir.parent == state
    assert d_args.api_key_file == Path("/etc/tft/api-keys")
    assert "tft-keys" in values(daemon, "SupplementaryGroups")
    assert one(daemon, "WorkingDirectory") == one(retrain, "WorkingDirectory") == str(state)
    # A retrain only reads and writes files, at the lowest priority, and is bounded in time.
    assert one(retrain, "Type") == "oneshot" and one(retrain, "PrivateNetwork") == "yes"
    assert one(retrain, "Nice") == "19" and one(retrain, "IOSchedulingClass") == "idle"
    assert one(retrain, "TimeoutStartSec") != "infinity"
    # Extra flags from the option files still parse.
    extra = parse_main_command(main_py_args(daemon, {"TFT_DAEMON_ARGS": "--alertmanager-url http://127.0.0.1:9093"}))
    assert extra.alertmanager_urls == ["http://127.0.0.1:9093"]
    assert parse_main_command(main_py_args(retrain, {"TFT_RETRAIN_ARGS": "--epochs 4"})).epochs == 4
    # Sharded daemons: the timer's one retrain reads every shard's store (Docs/RETRAINING.md, Several shards).
    other = "/var/lib/tft/shard1/metrics_store.sqlite3"
    assert parse_main_command(main_py_args(retrain, {"TFT_RETRAIN_ARGS": f"--store {other}"})).store == [
        d_args.store_path, Path(other)]


def test_retrain_timer_starts_the_retrain_nightly():
    timer = UNITS / "tft-retrain.timer"
    assert one(timer, "OnCalendar", "Timer") and one(timer, "Persistent", "Timer") == "true"
    assert values(timer, "Unit", "Timer") in ([], ["tft-retrain.service"])  # default: the same name
    assert one(timer, "WantedBy", "Install") == "timers.target"
    assert not unit_directives(UNITS / "tft-retrain.service").get("Install"), "started by the timer only"


def test_collector_template_takes_the_profile_from_the_instance_name():
    unit = UNITS / "tft-collector@.service"
    argv = main_py_args(unit, {"TFT_DAEMON_URL": "http://127.0.0.1:8000"})
    assert "--profile" in argv and "%i" in one(unit, "ExecStart")
    args = parse_main_command(argv)  # %i -> "database"; an unknown profile would be refused
    assert args.profile == "database" and args.daemon_url == ["http://127.0.0.1:8000"]  # repeatable: one per shard
    assert "TFT_DAEMON_URL=http://127.0.0.1:8000" in values(unit, "Environment")
    assert values(unit, "EnvironmentFile") == ["/etc/tft/collector.env"]  # required: it holds the key
    # It must see the host: other processes, the host's network, real mounts under /home.
    assert not values(unit, "ProtectProc") and not values(unit, "PrivateNetwork") and not values(unit, "ProcSubset")
    assert one(unit, "ProtectHome") == "read-only"
    assert parse_main_command(argv + ["--data-path", "/data"]).data_path


def test_daemon_and_collector_bound_their_memory_and_tasks(tmp_path):
    """MemoryHigh < MemoryMax and TasksMax on both long-running services, sized for what they hold; systemd
    parses the values (the verify test above passes on them, and a copy with bad ones is caught)."""
    for name in ("tft-daemon.service", "tft-collector@.service"):
        unit = UNITS / name
        high, top = size_bytes(one(unit, "MemoryHigh")), size_bytes(one(unit, "MemoryMax"))
        assert 0 < high < top, f"{name}: MemoryHigh={high} must be below MemoryMax={top}"
        assert 0 < int(one(unit, "TasksMax")) <= 4096, name
    daemon, collector = UNITS / "tft-daemon.service", UNITS / "tft-collector@.service"
    # Every tracked server's windows, plus the runtime, the model and a cycle (~2 GiB), before throttling.
    assert size_bytes(one(daemon, "MemoryHigh")) >= TRACKED_SERVERS * BYTES_PER_SERVER + 2 * 1024**3
    # The collector shares its host with the real work: a full buffer fits, and it stays small.
    assert 128 * 1024**2 < size_bytes(one(collector, "MemoryHigh")) and size_bytes(
        one(collector, "MemoryMax")) <= 512 * 1024**2
    if SYSTEMD_ANALYZE is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd): the values were not parsed")
    canary = (UNITS / "tft-daemon.service").read_text(encoding="utf-8")
    canary = re.sub(r"^MemoryMax=.*$", "MemoryMax=4 gigs", canary, flags=re.M)
    canary = re.sub(r"^TasksMax=.*$", "TasksMax=lots", canary, flags=re.M)
    root = _verify_root(tmp_path, {"tft-canary.service": canary})
    caught = _verify(root, "tft-canary.service")
    assert "Invalid memory limit" in caught.stderr and "Invalid maximum tasks" in caught.stderr, caught.stderr
    clean = _verify(root, "tft-daemon.service", "tft-collector@database.service")
    assert clean.returncode == 0 and not (clean.stdout + clean.stderr).strip(), clean.stdout + clean.stderr


# ============================================================================ container image
def containerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Containerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_containerfile_copies_what_exists_and_runs_the_daemon_unprivileged():
    instructions = containerfile_instructions()
    import json

    copied = []
    for op, rest in instructions:
        if op == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert glob.glob(str(ROOT / source)), f"COPY {source}: nothing in the checkout matches"
                copied.append(source)
    # Everything main.py can import lives in root modules, which COPY *.py carries.
    assert "*.py" in copied and "mappings/" in copied and "VERSION" in copied
    assert any(op == "RUN" and "^torch==" in rest and "TORCH_PIP_ARGS" in rest for op, rest in instructions)
    assert re.search(r"^torch==\S+$", (ROOT / "requirements.txt").read_text(encoding="utf-8"), re.M)
    ops = [op for op, _ in instructions]
    user = dict(instructions)["USER"]
    assert user != "root" and ops.index("USER") < ops.index("ENTRYPOINT")
    assert dict(instructions)["EXPOSE"] == str(DAEMON_PORT)
    entry = json.loads(dict(instructions)["ENTRYPOINT"])
    cmd = json.loads(dict(instructions)["CMD"])
    assert entry == ["/opt/tft/.venv/bin/python", "/opt/tft/main.py"]
    args = parse_main_command(cmd)
    assert args.daemon and args.host == "0.0.0.0" and str(args.store_path).startswith("/var/lib/tft/")


def _lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A pip lock's requirements: normalised name -> (version, hashes); continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    entries = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert match, f"{path.name}: not a pinned, hashed requirement: {line[:120]}"
        entries[re.sub(r"[-_.]+", "-", match.group(1).lower())] = (match.group(2), match.group(3).split())
    return entries


def test_image_installs_hashed_locks_each_from_one_index():
    """No index mixing, every file pinned by its hash, torch's CPU build taken by name, and the locks in step
    with requirements.txt (deploy/lock-requirements.sh regenerates them)."""
    instructions = containerfile_instructions()
    assert not any("--extra-index-url" in rest for _, rest in instructions), "an index is mixed in"
    args = dict(rest.split("=", 1) for op, rest in instructions if op == "ARG" and "=" in rest)
    torch_args = shlex.split(shlex.split(args["TORCH_PIP_ARGS"])[0])  # the ARG's quoted default, then its words
    assert torch_args == ["--index-url", "https://download.pytorch.org/whl/cpu"], torch_args
    installs = [rest for op, rest in instructions if op == "RUN" and "pip install" in rest]
    commands = [c for rest in installs for c in rest.split("&&") if "pip install" in c]
    assert len(commands) == 2, commands
    for command in commands:
        words = shlex.split(command.replace("$TORCH_PIP_ARGS", "--index-url TORCH"))
        assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(words), command
        assert words.count("--index-url") == 1 and "--extra-index-url" not in words, command
        assert words[words.index("-r") + 1] in ("requirements-torch.lock", "requirements.lock"), command
    assert any("pip check" in rest for _, rest in instructions if _ == "RUN")
    torch_lock = _lock_entries(DEPLOY / "requirements-torch.lock")
    rest_lock = _lock_entries(DEPLOY / "requirements.lock")
    assert list(torch_lock) == ["torch"] and torch_lock["torch"][0].endswith("+cpu"), torch_lock
    assert not any(name.startswith(("nvidia-", "triton", "cuda")) for name in rest_lock), "a CUDA build crept in"
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^]]*\])?==(\S+)", line)
        if match:
            pinned[re.sub(r"[-_.]+", "-", match.group(1).lower())] = match.group(2)
    locked = {**{n: v for n, (v, _) in rest_lock.items()}, "torch": torch_lock["torch"][0].removesuffix("+cpu")}
    stale = {n: (v, locked.get(n)) for n, v in pinned.items() if locked.get(n) != v}
    assert not stale, f"requirements.txt and the locks differ {stale}: run deploy/lock-requirements.sh"
    assert all(hashes for _, hashes in rest_lock.values())


# ============================================================================ compose stack
def test_compose_services_ports_and_files_are_wired():
    spec = compose()
    services = spec["services"]
    assert {"daemon", "prometheus", "node-exporter", "alertmanager", "dashboard"} <= set(services)
    daemon = services["daemon"]
    build = daemon["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT and (ROOT / build["dockerfile"]).is_file()
    args = parse_main_command(daemon["command"])
    assert args.daemon and args.host == "0.0.0.0" and args.port == DAEMON_PORT
    assert args.alertmanager_urls == ["http://alertmanager:9093"]
    assert args.retrain_every_seconds  # no timer in a container: the daemon's own schedule
    mounts = {}
    declared_volumes = set(spec.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[(name, target)] = source
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                if Path(source).parts[0] == "secrets":
                    assert path.name in DEPLOYMENT_DOC.read_text(encoding="utf-8"), f"{source} not explained"
                else:
                    assert path.exists(), f"{name}: {source} does not exist"
            elif not source.startswith("/"):
                assert source in declared_volumes, f"{name}: volume {source} not declared"
    assert mounts[("daemon", str(args.api_key_file))] == "./secrets/api-keys"
    assert mounts[("daemon", str(args.store_path.parent))] in declared_volumes
    # Published on the host's loopback only, on the project's ports.
    want = {"daemon": DAEMON_PORT, "prometheus": 9090, "alertmanager": 9093, "dashboard": DASHBOARD_PORT}
    for name, port in want.items():
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"], name
    dash = services["dashboard"]
    assert dash["environment"]["TFT_DAEMON_URL"] == f"http://daemon:{DAEMON_PORT}"
    assert f"--server.port={DASHBOARD_PORT}" in dash["entrypoint"]
    node = services["node-exporter"]
    assert node["network_mode"] == "host" and node["pid"] == "host"
    # Prometheus reaches node_exporter through the network's gateway, on its listen port.
    gateway = spec["networks"]["default"]["ipam"]["config"][0]["gateway"]
    node_port = flag_value(node["command"], "--web.listen-address").rsplit(":", 1)[1]
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["node"]["static_configs"][0]["targets"] == [f"{gateway}:{node_port}"]
    # Every file prometheus.yml names is mounted into the Prometheus container.
    named = [*prom["rule_files"], jobs["tft"]["authorization"]["credentials_file"],
             *(w["authorization"]["credentials_file"] for w in prom["remote_write"])]
    for path in named:
        assert ("prometheus", path) in mounts, f"prometheus.yml names {path}, compose.yaml does not mount it"
    assert mounts[("prometheus", "/etc/prometheus/prometheus.yml")] == "./prometheus.yml"
    assert mounts[("alertmanager", "/etc/alertmanager/alertmanager.yml")] == "./alertmanager.yml"


def test_prometheus_config_scrapes_and_writes_to_the_daemon():
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    assert prom["rule_files"] == ["/etc/prometheus/tft_rules.yml"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["tft"]["static_configs"][0]["targets"] == [f"daemon:{DAEMON_PORT}"]
    assert jobs["tft"]["metrics_path"] == "/metrics"
    (write,) = prom["remote_write"]
    assert write["url"] == f"http://daemon:{DAEMON_PORT}/api/v1/write"
    assert write["authorization"]["credentials_file"] != jobs["tft"]["authorization"]["credentials_file"]
    from remote_write import load_remote_write_mapping, series_regex

    assert write["write_relabel_configs"] == [  # node_exporter's series only, and only those the mapping reads
        {"source_labels": ["job"], "regex": "node", "action": "keep"},
        {"source_labels": ["__name__"], "regex": series_regex(load_remote_write_mapping()), "action": "keep"}]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian package prometheus)")
def test_promtool_accepts_the_prometheus_config(tmp_path):
    # Prometheus's own checker, on a copy whose absolute paths point into tmp_path (the real rules file,
    # stand-in key files); a broken copy proves the check can fail.
    text = (DEPLOY / "prometheus.yml").read_text(encoding="utf-8")
    (tmp_path / "secrets").mkdir()
    for name in ("read.key", "ingest.key"):
        (tmp_path / "secrets" / name).write_text("k" * 32 + "\n", encoding="utf-8")
    shutil.copy(DEPLOY / "prometheus" / "tft_rules.yml", tmp_path / "tft_rules.yml")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/", f"{tmp_path}/"), encoding="utf-8")
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    config.write_text(text.replace("/etc/prometheus/", f"{tmp_path}/").replace("action: keep", "action: kept"),
                      encoding="utf-8")
    broken = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert broken.returncode != 0, broken.stdout


def test_compose_services_have_memory_and_process_limits():
    services = compose()["services"]
    for name, service in services.items():
        assert size_bytes(service.get("mem_limit", "0")) > 0, f"{name}: no mem_limit"
        assert int(service.get("pids_limit", 0)) > 0, f"{name}: no pids_limit"
    # The daemon's container also holds its --retrain-every child: room for both units' memory.
    daemon = services["daemon"]
    both = size_bytes(one(UNITS / "tft-daemon.service", "MemoryMax")) + size_bytes(
        one(UNITS / "tft-retrain.service", "MemoryMax"))
    assert parse_main_command(daemon["command"]).retrain_every_seconds and size_bytes(daemon["mem_limit"]) >= both


def test_prometheus_scrape_jobs_are_bounded(tmp_path):
    """Every scrape job refuses a target that sends too much (the whole scrape fails), sized for real targets;
    promtool reads the keys (a copy with a bad value fails)."""
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    for name, job in jobs.items():
        for key in ("sample_limit", "label_limit", "label_name_length_limit", "label_value_length_limit",
                    "body_size_limit"):
            assert job.get(key), f"job {name}: no {key}"
        # No stricter than what a real series carries: our labels, node_uname_info's, mount points.
        assert job["label_limit"] >= 16 and job["label_value_length_limit"] >= 1024, name
    # The daemon at the tracked-server cap, and a 256-core host's node_exporter (8 CPU modes per core).
    assert jobs["tft"]["sample_limit"] >= TRACKED_SERVERS * SERIES_PER_SERVER
    assert jobs["node"]["sample_limit"] >= 256 * 8 + 2_000
    # ... but bounded: not the unlimited 0, and a body cap that holds the samples (~120 bytes each).
    for name, job in jobs.items():
        assert size_bytes(job["body_size_limit"]) >= job["sample_limit"] * 120 * 0.8, name
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package prometheus): the keys were not parsed")
    (tmp_path / "secrets").mkdir()
    for name in ("read.key", "ingest.key"):
        (tmp_path / "secrets" / name).write_text("k" * 32 + "\n", encoding="utf-8")
    shutil.copy(DEPLOY / "prometheus" / "tft_rules.yml", tmp_path / "tft_rules.yml")
    text = (DEPLOY / "prometheus.yml").read_text(encoding="utf-8").replace("/etc/prometheus/", f"{tmp_path}/")
    config_file = tmp_path / "prometheus.yml"
    # promtool knows the keys by name (a misspelt one fails, so the real ones were read) and checks values.
    for bad, said in (("label_value_length_limit:", "field label_valeu_length_limit not found"),
                      ("sample_limit: 1000000", "`lots` into uint")):
        config_file.write_text(text.replace(bad, bad.replace("value", "valeu").replace("1000000", "lots"), 1),
                               encoding="utf-8")
        broken = subprocess.run(["promtool", "check", "config", str(config_file)], capture_output=True, text=True,
                                timeout=60, check=False)
        assert broken.returncode != 0 and said in broken.stdout + broken.stderr, broken.stdout + broken.stderr


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool is not installed (Debian package "
                                                            "prometheus-alertmanager)")
def test_amtool_accepts_the_alertmanager_config(tmp_path):
    config = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text(encoding="utf-8"))
    assert config["route"]["receiver"] in {r["name"] for r in config["receivers"]}
    assert {"server", "metric"} <= set(config["route"]["group_by"])  # the daemon's alert labels
    result = subprocess.run(["amtool", "check-config", str(DEPLOY / "alertmanager.yml")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "alertmanager.yml"
    broken.write_text((DEPLOY / "alertmanager.yml").read_text(encoding="utf-8").replace(
        "receiver: ops-webhook", "receiver: nobody"), encoding="utf-8")
    assert subprocess.run(["amtool", "check-config", str(broken)], capture_output=True, text=True, timeout=60,
                          check=False).returncode != 0


def test_deployment_doc_names_every_file_port_and_unit():
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    for word in [*UNIT_FILES, "Containerfile", "compose.yaml", "prometheus.yml", "alertmanager.yml",
                 "tft_rules.yml", "/etc/tft/api-keys", "/etc/tft/collector.env", "/var/lib/tft", "journalctl",
                 "--retrain-every", "tft-keys", "/opt/tft/.venv", str(DAEMON_PORT), str(DASHBOARD_PORT),
                 "9090", "9093", "9100"]:
        assert word in doc, f"Docs/DEPLOYMENT.md does not mention {word}"
    assert "DEPLOYMENT.md" in (ROOT / "Docs" / "INDEX.md").read_text(encoding="utf-8")


# ============================================================================ containers (podman)
PODMAN = shutil.which("podman")
BASE_TAG = "localhost/tft-test-base:bookworm"
IMAGE_TAG = "localhost/tft:test"
SYSTEMD_TAG = "localhost/tft-systemd:test"
READ_KEY, INGEST_KEY, ADMIN_KEY = "read-key-0123456789abcdef", "ingest-key-0123456789abcdef", "admin-0123456789abcdef"
KEY_FILE = f"ingest={INGEST_KEY}\nread={READ_KEY}\nread,admin={ADMIN_KEY}\n"


def podman(env: dict[str, str], *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([PODMAN, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}: {result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def _has_image(env: dict[str, str], tag: str) -> bool:
    return podman(env, "image", "exists", tag, check=False).returncode == 0


def _build(env: dict[str, str], tag: str, *args: str, timeout: float) -> None:
    """podman build -t tag; the image the tag named before is removed when the build replaced it (each
    code change would otherwise leave an untagged image of ~100 MB behind)."""
    before = podman(env, "image", "inspect", "-f", "{{.Id}}", tag, check=False).stdout.strip()
    podman(env, "build", "-q", "-t", tag, *args, timeout=timeout)
    after = podman(env, "image", "inspect", "-f", "{{.Id}}", tag, check=False).stdout.strip()
    if before and before != after:
        podman(env, "rmi", before, check=False)


def _base_image(env: dict[str, str], work: Path) -> str:
    """Debian bookworm for the image's FROM: pulled if a registry answers, else built from Debian's
    mirror with debootstrap. It trusts the host's CA bundle (a TLS-inspecting proxy's CA included), so
    pip inside the build reaches PyPI exactly as the host does."""
    if _has_image(env, BASE_TAG):
        return BASE_TAG
    rootfs_tag = "docker.io/library/debian:bookworm-slim"
    if podman(env, "pull", "-q", rootfs_tag, timeout=60, check=False).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip("no Debian base image: the registry is unreachable and debootstrap is not installed")
        rootfs = work / "rootfs"
        strap = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                                "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                               capture_output=True, text=True, timeout=600, check=False)
        if strap.returncode != 0:
            pytest.skip(f"no Debian base image: registry unreachable, debootstrap failed: {strap.stderr[-500:]}")
        rootfs_tag = "localhost/tft-test-rootfs:bookworm"
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([PODMAN, "import", "-", rootfs_tag], stdin=tar.stdout, env=env, capture_output=True,
                       timeout=300, check=True)
        tar.wait()
    context = work / "base"
    context.mkdir()
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", context / "host-ca.crt")
    (context / "Containerfile").write_text(
        f"FROM {rootfs_tag}\nCOPY host-ca.crt /usr/local/share/ca-certificates/host-ca.crt\n"
        "COPY host-ca.crt /etc/ssl/certs/ca-certificates.crt\n"
        "RUN printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > /etc/pip.conf\n", encoding="utf-8")
    podman(env, "build", "-q", "-t", BASE_TAG, str(context), timeout=300)
    return BASE_TAG


@pytest.fixture(scope="module")
def container_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """podman's environment, once it has run a container here; else the test is skipped with podman's
    own words. runc (where installed) and explicit ulimits: crun refuses hybrid cgroups, and podman's
    default open-files limit is above what an unprivileged VM/container may set."""
    if PODMAN is None:
        pytest.skip("podman is not installed (apt-get install podman): the image and boot tests need it")
    work = tmp_path_factory.mktemp("podman")
    conf = work / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
                    + ('[engine]\nruntime = "runc"\n' if shutil.which("runc") else ""), encoding="utf-8")
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    base = _base_image(env, work)
    probe = podman(env, "run", "--rm", base, "true", check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run a container here: {probe.stderr.strip()[-500:]}")
    return env


@pytest.fixture(scope="module")
def tft_image(container_env: dict[str, str]) -> str:
    """deploy/Containerfile built from this checkout (minutes the first time; cached layers later)."""
    args = ["-f", str(DEPLOY / "Containerfile"), "--build-arg", f"BASE_IMAGE={BASE_TAG}"]
    wheels = os.environ.get("PIP_FIND_LINKS", "")
    if wheels and glob.glob(f"{wheels}/torch-*+cpu-*.whl"):  # this host's CPU torch wheel, as bootstrap.sh uses it
        args += ["-v", f"{wheels}:/wheels:ro", "--build-arg", "TORCH_PIP_ARGS=--find-links /wheels"]
    _build(container_env, IMAGE_TAG, *args, str(ROOT), timeout=1500)
    return IMAGE_TAG


def _wait_health(env: dict[str, str], name: str, url: str, timeout: float) -> httpx.Response:
    """GET url once it answers; fails with the container's log when the container stops or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=3)
        except httpx.HTTPError:
            running = podman(env, "inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
            if running != "true" or time.monotonic() > deadline:
                logs = podman(env, "logs", name, check=False)
                raise AssertionError(f"{name} never answered {url} (running: {running}):\n"
                                     f"{(logs.stdout + logs.stderr)[-3000:]}") from None
            time.sleep(0.5)


@pytest.mark.slow
def test_image_runs_the_compose_daemon_command_and_serves_health(container_env, tft_image, tmp_path):
    from common_utils import free_loopback_port

    keys = tmp_path / "api-keys"
    keys.write_text(KEY_FILE, encoding="utf-8")
    os.chown(keys, 10001, -1)  # the image's tft user, as Docs/DEPLOYMENT.md says
    keys.chmod(0o400)
    port = free_loopback_port()
    command = compose()["services"]["daemon"]["command"]
    name = f"tft-test-{port}"
    podman(container_env, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:{DAEMON_PORT}", "--read-only",
           "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "-v", f"{keys}:/run/secrets/api-keys:ro", tft_image, *command)
    try:
        health = _wait_health(container_env, name, f"http://127.0.0.1:{port}/health", 90)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        url = f"http://127.0.0.1:{port}/status"
        assert httpx.get(url, timeout=5).status_code == 401
        assert httpx.get(url, headers={"X-API-Key": INGEST_KEY}, timeout=5).status_code == 403
        status = httpx.get(url, headers={"X-API-Key": READ_KEY}, timeout=5)
        assert status.status_code == 200 and status.json()["model_loaded"] is False
        whoami = podman(container_env, "exec", name, "id", "-u").stdout.strip()
        assert whoami == "10001"
    finally:
        logs = podman(container_env, "logs", name, check=False)
        podman(container_env, "rm", "-f", name, check=False)
    assert "Traceback" not in logs.stdout + logs.stderr, logs.stderr[-3000:]


BOOT_SCRIPT = r"""
set -eu
cp /units/* /etc/systemd/system/
groupadd --system tft-keys
install -d -m 0755 /etc/tft
umask 077
cp /work/api-keys /etc/tft/api-keys && chgrp tft-keys /etc/tft/api-keys && chmod 0640 /etc/tft/api-keys
printf 'TFT_API_KEY=%s\nTFT_COLLECT_ARGS="--interval 1"\n' "$INGEST_KEY" > /etc/tft/collector.env
# The image's /var/lib/tft (its VOLUME, ignored here) goes: systemd makes the private one.
rmdir /var/lib/tft
# A model in the state directory before the first start, root-owned: systemd hands it to the UID.
install -d -m 0700 /var/lib/private
mkdir -p /var/lib/private/tft/models && cp -r /work/model "/var/lib/private/tft/models/$MODEL"
ln -s "$MODEL" /var/lib/private/tft/models/latest
systemctl daemon-reload
systemctl start tft-daemon.service
for i in $(seq 1 120); do curl -sf -m 2 http://127.0.0.1:8000/health >/dev/null && break; sleep 1; done
curl -sf http://127.0.0.1:8000/health; echo
systemctl start tft-collector@database.service
for i in $(seq 1 60); do
  curl -sf -H "X-API-Key: $READ_KEY" http://127.0.0.1:8000/status | grep -q '"servers_tracked":1' && break; sleep 1
done
curl -sf -H "X-API-Key: $READ_KEY" http://127.0.0.1:8000/status; echo
systemctl start tft-retrain.service || true
echo "retrain: $(systemctl show -P Result tft-retrain.service) $(systemctl show -P ExecMainStatus tft-retrain.service)"
echo "active: $(systemctl is-active tft-daemon.service tft-collector@database.service | tr '\n' ' ')"
echo "owners: $(stat -c %u /var/lib/private/tft /var/lib/private/tft/metrics_store.sqlite3 \
  /var/lib/private/tft/models/$MODEL/config.json | sort -u | wc -l)"
echo "uids: $(ps -o uid= -p "$(systemctl show -P MainPID tft-daemon.service)") \
  $(ps -o uid= -p "$(systemctl show -P MainPID tft-collector@database.service)")"
"""


@pytest.mark.slow
def test_units_boot_under_systemd_with_a_model_the_collector_and_a_retrain(container_env, tft_image,
                                                                           tiny_training, tmp_path):
    """The real unit files under systemd 252 as PID 1 (a privileged container of the image, without
    its static user, so DynamicUser allocates one): the daemon loads a model under the hardening,
    the collector feeds it, the retrain runs as the daemon's UID on its store and fails only for
    want of history."""
    context = tmp_path / "systemd"
    context.mkdir()
    (context / "Containerfile").write_text(
        f"FROM {tft_image}\nUSER root\n"
        "RUN userdel tft && apt-get update && DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y --no-install-recommends systemd systemd-sysv procps curl && rm -rf /var/lib/apt/lists/*\n"
        'ENTRYPOINT []\nCMD ["/sbin/init"]\n', encoding="utf-8")
    _build(container_env, SYSTEMD_TAG, str(context), timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    (work / "api-keys").write_text(KEY_FILE, encoding="utf-8")
    shutil.copytree(tiny_training.model_dir, work / "model")
    (work / "boot.sh").write_text(BOOT_SCRIPT, encoding="utf-8")
    name = f"tft-boot-{os.getpid()}"
    podman(container_env, "run", "-d", "--name", name, "--privileged", "--systemd=always",
           "--image-volume=ignore", "-v", f"{UNITS}:/units:ro", "-v", f"{work}:/work:ro", SYSTEMD_TAG)
    try:
        state = ""
        for _ in range(60):
            state = podman(container_env, "exec", name, "systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"systemd does not boot in a podman container here (state {state!r})")
        out = podman(container_env, "exec", "-e", f"INGEST_KEY={INGEST_KEY}", "-e", f"READ_KEY={READ_KEY}",
                     "-e", f"MODEL={tiny_training.model_dir.name}", name, "bash", "/work/boot.sh", timeout=400)
        report = out.stdout
        journal = podman(container_env, "exec", name, "journalctl", "--no-pager", "-o", "cat", "-u", "tft-*",
                         check=False).stdout
        assert '"model_loaded":true' in report, report + journal[-4000:]
        assert '"servers_tracked":1' in report, report + journal[-4000:]
        assert "active: active active" in report, report + journal[-4000:]
        # One owner for the state directory, the store and the model; daemon and collector differ.
        assert "owners: 1" in report, report
        daemon_uid, collector_uid = report.split("uids:")[1].split()[:2]
        assert daemon_uid != collector_uid and int(daemon_uid) >= 61184, report  # systemd's dynamic range
        assert "retrain: exit-code 1" in report and "Not enough history" in journal, report + journal[-4000:]
        assert "Permission denied" not in journal and "Traceback" not in journal, journal[-4000:]
    finally:
        podman(container_env, "rm", "-f", name, check=False, timeout=120)
