"""Shards (``--shard K/N``, sharding.py): the hash against the routers themselves, refusals, and real routing.

The hash must be the router's: the tests read what Debian's Prometheus and vmagent computed for their
targets (``hashmod`` into a label, shown on their targets API) and compare it with ``sharding.shard_of``.
Routing end to end: Prometheus scraping several real node_exporters (distinct ports) remote-writes to three
daemon shards through the shipped ``deploy/prometheus-sharded.yml`` (hashmod + keep per block); every
instance lands on exactly one shard, the one the hash names, and the shards' /metrics together cover all.
vmagent 1.79 (Debian) has no ``-remoteWrite.shardByURL``; its per-URL relabelling with ``hashmod`` does the
same, checked with two shards and ``--shard-hash vmagent``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from common_utils import make_server_name
from config import FEATURES, LINBORG_METRICS, PROJECT_ROOT, SAMPLING_INTERVAL_SECONDS
from daemon_state import Daemon, DaemonSettings
from feed_client import ShardedFeed
from remote_write import RemoteWriteReceiver, write_request
from sharding import Shard, parse_shard, shard_of, xxhash64
from tests.helpers import API_KEY, DaemonProcess, free_port, run_cli, wait_until
from tests.test_remote_write import Capture, Node, recent_bucket

DEPLOY = PROJECT_ROOT / "deploy"
MAPPING = PROJECT_ROOT / "mappings" / "prometheus_node_exporter.json"
FAKE_TARGETS = [f"host-{i}.example:9100" for i in range(40)]  # never reachable: only their labels matter


def _record(name: str, bucket: int, profile: str = "web_api") -> dict[str, Any]:
    return {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(bucket * SAMPLING_INTERVAL_SECONDS)),
            "server_name": name, "profile": profile, "state": "healthy", **{m: 1.0 for m in LINBORG_METRICS},
            "cpu_idle_pct": 97.0, "back_close_wait": 0, "front_close_wait": 0, "uptime_days": 1}


def _owned_name(shard: int, count: int, profile: str = "web_api", hash_name: str = "prometheus") -> str:
    """A contract server name the hash puts on ``shard``."""
    return next(name for i in range(1, 500) if shard_of(name := make_server_name(profile, i), count, hash_name)
                == shard)


# ---------------------------------------------------------------------------- the function and its flag
def test_xxhash64_is_the_published_algorithm():
    """Reference values of XXH64 (seed 0) for the short and the 32-byte-stripe paths."""
    assert xxhash64(b"") == 0xEF46DB3751D8E999
    assert xxhash64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxhash64(b"abc") == 0x44BC2CF5AD770999


def test_shard_flag_parses_and_refuses_with_the_form(tmp_path):
    assert parse_shard("2/3") == Shard(2, 3) and str(Shard(2, 3)) == "2/3"
    for bad in ("-1/3", "1", "a/b", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError, match="K/N|hashmod"):
            parse_shard(bad)
    result = run_cli("main.py", "infer", "--daemon", "--shard", "3/3", "--store", str(tmp_path / "s.sqlite3"),
                     timeout=60)  # one subprocess (~6 s): the flag's message, exit 2, no traceback
    assert result.returncode == 2 and "--shard" in result.stderr and "0 <= K < N" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert Shard(0, 1).owns("anything") and not Shard(1, 2).owns(_owned_name(0, 2))


# ---------------------------------------------------------------------------- refusals, in process
def test_a_record_for_another_shard_is_refused_naming_its_owner(tmp_path):
    """POST /feed's ingest: the owner's records stored, another shard's rejected with the owning shard named,
    counted as other_shard; the instance label, where sent, is the key (as remote-write routes it)."""
    daemon = Daemon(DaemonSettings(model_dir=None, store_path=tmp_path / "s.sqlite3", allow_no_model=True,
                                   shard=Shard(1, 3)))
    try:
        mine, theirs = _owned_name(1, 3), _owned_name(2, 3)
        bucket = recent_bucket()
        answer = daemon.ingest([_record(mine, bucket), _record(theirs, bucket)])
        assert answer.stored == [0] and [r.index for r in answer.rejected] == [1]
        reason = answer.rejected[0].reason
        assert answer.rejected[0].field == "server_name" and "belongs to shard 2/3" in reason
        assert "this daemon is shard 1/3" in reason and "Docs/SCALING.md" in reason
        # With an instance label the label decides, not the name.
        instance = next(f"10.0.0.{i}:9100" for i in range(1, 200) if shard_of(f"10.0.0.{i}:9100", 3) == 1)
        answer = daemon.ingest([_record(theirs, bucket + 1)], {theirs: instance})
        assert answer.stored == [0], answer.rejected
        assert daemon.metrics.refused_counts()["other_shard"] == 1
        assert 'shard="1"' in daemon.metrics.render().decode()
        assert daemon.settings.shard == Shard(1, 3)
    finally:
        daemon.close()


def test_remote_write_drops_other_shards_instances_before_holding_state():
    """A misrouted instance costs no instance slot: its samples are counted other_shard and never assembled."""
    capture = Capture()
    ours = next(f"10.0.1.{i}:9100" for i in range(1, 200) if shard_of(f"10.0.1.{i}:9100", 2) == 0)
    other = next(f"10.0.1.{i}:9100" for i in range(1, 200) if shard_of(f"10.0.1.{i}:9100", 2) == 1)
    receiver = RemoteWriteReceiver(capture, mapping_path=MAPPING, grace_seconds=0, shard=Shard(0, 2))
    nodes = [Node(ours, "ours.example"), Node(other, "other.example")]
    t0 = recent_bucket() * SAMPLING_INTERVAL_SECONDS * 1000
    for k in range(3):
        for node in nodes:
            node.advance(15, {"user": 0.2, "idle": 0.8})
        receiver.accept(write_request([s for node in nodes for s in node.samples(t0 + k * 15_000)]))
    assert {r["server_name"] for r in capture.records} == {"ours"}  # its nodename, short
    assert set(receiver.instances) == {ours} and receiver.stats()["samples"]["other_shard"] > 0


def test_a_sharded_feed_sends_each_record_to_its_owner():
    """ShardedFeed routes by the same function (the instance where known), each shard its own buffer."""
    feed = ShardedFeed(["http://127.0.0.1:9", "http://127.0.0.1:10", "http://127.0.0.1:11"], API_KEY)
    try:
        names = [make_server_name("database", i) for i in range(1, 30)]
        feed.instances[names[0]] = "db-a.example:9100"
        feed.put([_record(name, recent_bucket(), "database") for name in names])
        for index, shard in enumerate(feed.feeds):
            got = {r["server_name"] for r in shard.buffer}
            want = {n for n in names if shard_of(feed.instances.get(n, n), 3) == index}
            assert got == want and got, index
        assert feed.pending == len(names)
    finally:
        feed.close()


# ---------------------------------------------------------------------------- the real routers
def _node_exporters(count: int, need: list[tuple[int, str]]) -> tuple[list[subprocess.Popen], list[str]]:
    """``count`` node_exporters on free loopback ports chosen so every (modulus, hash) in ``need`` gets each of
    its slices at least once."""
    assert shutil.which("prometheus-node-exporter"), "Debian package prometheus-node-exporter is needed"
    for _ in range(200):
        ports = sorted({free_port() for _ in range(count)})
        instances = [f"127.0.0.1:{p}" for p in ports]
        if len(ports) == count and all({shard_of(i, n, h) for i in instances} == set(range(n)) for n, h in need):
            break
    procs = [subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address={i}", "--no-collector.systemd"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in instances]
    return procs, instances


def _mapping_naming(instances: list[str], path: Path) -> Path:
    """The shipped mapping with a name per instance (one host runs them all, so its nodename would clash)."""
    mapping = json.loads(MAPPING.read_text())
    mapping["names"] = {inst: f"node-{inst.rsplit(':', 1)[1]}" for inst in instances}
    path.write_text(json.dumps(mapping))
    return path


def _stored_servers(store: Path) -> set[str]:
    if not store.exists():
        return set()
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT server FROM servers")}


def _stop(*procs: Any) -> None:
    for proc in procs:
        if isinstance(proc, DaemonProcess):
            proc.stop()
        elif proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def _prometheus_sharded_config(instances: list[str], daemons: list[DaemonProcess], key_file: Path) -> dict:
    """deploy/prometheus-sharded.yml pointed at this test's exporters, daemons and key, plus a job of
    never-reachable targets whose hashmod results Prometheus shows as labels."""
    config = yaml.safe_load((DEPLOY / "prometheus-sharded.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.pop("rule_files", None)
    config.pop("alerting", None)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["node"]["static_configs"] = [{"targets": instances}]
    jobs["tft"]["static_configs"] = [{"targets": [d.url.removeprefix("http://")], "labels": {}} for d in daemons]
    jobs["tft"].pop("scrape_interval")  # the test's 1 s, not the fleet's minute
    jobs["tft"].pop("scrape_timeout")
    jobs["tft"]["authorization"] = {"credentials_file": str(key_file)}
    blocks = config["remote_write"]
    assert len(blocks) == len(daemons) == 3, "the shipped file has one remote_write block per shard"
    for k, (block, daemon) in enumerate(zip(blocks, daemons, strict=True)):
        keep = [r for r in block["write_relabel_configs"] if r.get("action") == "keep"
                and r.get("source_labels") == ["__tmp_tft_shard"]]
        assert [r["regex"] for r in keep] == [str(k)], block  # block K keeps slice K
        block["url"] = f"{daemon.url}/api/v1/write"
        block["authorization"] = {"credentials_file": str(key_file)}
        block["queue_config"] = {"batch_send_deadline": "1s", "min_backoff": "100ms", "max_backoff": "1s"}
    hashed = [{"source_labels": ["__address__"], "modulus": n, "target_label": f"__tmp_h{n}", "action": "hashmod"}
              for n in (3, 7)]
    hashed += [{"source_labels": [f"__tmp_h{n}"], "target_label": f"h{n}", "action": "replace"} for n in (3, 7)]
    config["scrape_configs"].append({"job_name": "hash", "static_configs": [{"targets": FAKE_TARGETS}],
                                     "relabel_configs": hashed, "scrape_interval": "1m"})
    return config


@pytest.mark.slow
def test_prometheus_routes_real_node_exporters_to_three_shards(tiny_training, tmp_path):
    """Five real node_exporters, Prometheus with the shipped sharded config, three daemon shards.

    Every instance is stored by exactly one shard, the one ``shard_of`` names (no shard refuses a sample:
    Prometheus sent each only its slice), and once a cycle has run each shard's /metrics carries its own
    instances' series labelled with its shard; together they cover all five. Prometheus' own hashmod of
    40 more targets (mod 3 and 7) equals ``shard_of``. Cost: ~40 s (three daemons with the tiny model).
    """
    assert shutil.which("prometheus"), "Debian package prometheus is needed"
    exporters, instances = _node_exporters(5, [(3, "prometheus")])
    mapping = _mapping_naming(instances, tmp_path / "mapping.json")
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    daemons = [DaemonProcess(tiny_training.model_dir, tmp_path / f"shard{k}.sqlite3", "--shard", f"{k}/3",
                             "--remote-write-mapping", str(mapping), "--rate-per-minute", "100000")
               for k in range(3)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(_prometheus_sharded_config(instances, daemons, key_file)))
    prom_port = free_port()
    prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)
    expected = [{f"node-{i.rsplit(':', 1)[1]}" for i in instances if shard_of(i, 3) == k} for k in range(3)]
    try:
        for daemon in daemons:
            daemon.wait_ready()
        # Prometheus' hashmod, as it shows on its targets API, against ours.
        targets = wait_until(lambda: [t for t in httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/targets",
                                                           timeout=5).json()["data"]["activeTargets"]
                                      if t["labels"]["job"] == "hash"] or None, what="Prometheus' hash targets")
        assert len(targets) == len(FAKE_TARGETS)
        for target in targets:
            instance = target["labels"]["instance"]
            assert target["labels"]["h3"] == str(shard_of(instance, 3)), target["labels"]
            assert target["labels"]["h7"] == str(shard_of(instance, 7)), target["labels"]
        # Every instance on exactly the shard the hash names.
        stores = [tmp_path / f"shard{k}.sqlite3" for k in range(len(daemons))]
        wait_until(lambda: [_stored_servers(store) for store in stores] == expected, timeout=90,
                   what=f"each shard to store its instances {expected}")
        for k, daemon in enumerate(daemons):
            with daemon.client() as client:
                assert client.get("/health").json()["shard"] == f"{k}/3"
                # The hour of history a new host needs before it is forecast (as another feeder could have sent
                # it; the instance label keys it to this shard), then a record of the next bucket, for a server
                # this shard owns, completes the current bucket (rather than wait for the 5-minute boundary).
                newest = int(time.time() // SAMPLING_INTERVAL_SECONDS) + 1
                names = {f"node-{i.rsplit(':', 1)[1]}": i for i in instances if shard_of(i, 3) == k}
                history = [_record(name, newest - back, "generic") for name in names
                           for back in range(FEATURES.min_encoder_length + 2, 1, -1)]
                answer = client.post("/feed", json={"records": history, "instances": names}).json()
                assert not answer["rejected"], answer["rejected"][:3]
                assert client.post("/feed", json={"records": [_record(_owned_name(k, 3), newest)]}).json()[
                    "stored"] == [0]
        covered: set[str] = set()
        for k, daemon in enumerate(daemons):
            with daemon.client() as client:
                def shard_series(client: httpx.Client = client, k: int = k) -> set[str] | None:
                    text = client.get("/metrics").text
                    found = set(re.findall(r'tft_risk_score\{[^}]*instance="(127\.0\.0\.1:\d+)"[^}]*shard="'
                                           + str(k) + '"', text))
                    return found if len(found) == len(expected[k]) else None

                mine = wait_until(shard_series, timeout=60, what=f"shard {k}'s forecast series")
                assert mine == {i for i in instances if shard_of(i, 3) == k}
                metrics = client.get("/metrics").text
                assert f'tft_shards{{shard="{k}"}} 3.0' in metrics
                assert 'result="other_shard"' not in metrics  # Prometheus sent no other shard's series
                covered |= mine
        assert covered == set(instances)
        # Prometheus scraped every shard: its own view of the daemons carries the shard label.
        answer = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": "tft_shards"},
                           timeout=5).json()
        shards = wait_until(lambda: {r["metric"].get("shard") for r in httpx.get(
            f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": "tft_shards"}, timeout=5).json()[
            "data"]["result"]} == {"0", "1", "2"} or None, timeout=30, what="Prometheus to scrape all shards")
        assert shards and answer["status"] == "success"
    finally:
        _stop(prometheus, *daemons, *exporters)
    log = (tmp_path / "prometheus.log").read_text()
    assert "non-recoverable error" not in log, log[-2000:]


@pytest.mark.slow
def test_vmagent_routes_real_node_exporters_to_two_shards(tmp_path):
    """vmagent 1.79 with one -remoteWrite.url per shard and the shipped per-URL relabelling (hashmod + keep):
    every instance stored by exactly the shard ``shard_of(..., "vmagent")`` names; vmagent's own hashmod of
    40 more targets agrees. Daemons without a model (routing only). Cost: ~25 s."""
    assert shutil.which("vmagent"), "Debian package victoria-metrics (vmagent) is needed"
    exporters, instances = _node_exporters(4, [(2, "vmagent")])
    mapping = _mapping_naming(instances, tmp_path / "mapping.json")
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    daemons = [DaemonProcess(None, tmp_path / f"shard{k}.sqlite3", "--allow-no-model", "--shard", f"{k}/2",
                             "--shard-hash", "vmagent", "--remote-write-mapping", str(mapping)) for k in range(2)]
    scrape = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": instances}]},
                                 {"job_name": "hash", "scrape_interval": "1m",
                                  "static_configs": [{"targets": FAKE_TARGETS}],
                                  "relabel_configs": [{"source_labels": ["__address__"], "modulus": 2,
                                                       "target_label": "h2", "action": "hashmod"}]}]}
    (tmp_path / "scrape.yml").write_text(yaml.safe_dump(scrape))
    relabel = yaml.safe_load((DEPLOY / "vmagent" / "shard-relabel.yml").read_text())
    args = ["vmagent", f"-promscrape.config={tmp_path / 'scrape.yml'}", f"-remoteWrite.tmpDataPath={tmp_path / 'q'}",
            f"-httpListenAddr=127.0.0.1:{(vm_port := free_port())}", "-remoteWrite.flushInterval=1s"]
    for k, daemon in enumerate(daemons):
        rules = [dict(rule, modulus=2) if rule.get("action") == "hashmod" else
                 dict(rule, regex=str(k)) if rule.get("source_labels") == ["__tmp_tft_shard"] else rule
                 for rule in relabel]
        (tmp_path / f"shard{k}.yml").write_text(yaml.safe_dump(rules))
        args += [f"-remoteWrite.url={daemon.url}/api/v1/write",
                 f"-remoteWrite.urlRelabelConfig={tmp_path}/shard{k}.yml", f"-remoteWrite.bearerTokenFile={key_file}"]
    vmagent = subprocess.Popen(args, stdout=open(tmp_path / "vmagent.log", "w"), stderr=subprocess.STDOUT)
    expected = [{f"node-{i.rsplit(':', 1)[1]}" for i in instances if shard_of(i, 2, "vmagent") == k}
                for k in range(2)]
    try:
        for daemon in daemons:
            daemon.wait_ready()
        targets = wait_until(lambda: [t for t in httpx.get(f"http://127.0.0.1:{vm_port}/api/v1/targets",
                                                           timeout=5).json()["data"]["activeTargets"]
                                      if t["labels"].get("job") == "hash"] or None, what="vmagent's hash targets")
        assert len(targets) == len(FAKE_TARGETS)
        for target in targets:
            assert target["labels"]["h2"] == str(shard_of(target["labels"]["instance"], 2, "vmagent"))
        stores = [tmp_path / f"shard{k}.sqlite3" for k in range(len(daemons))]
        wait_until(lambda: [_stored_servers(store) for store in stores] == expected, timeout=90,
                   what=f"each shard to store its instances {expected}")
        for daemon in daemons:
            with daemon.client() as client:
                assert 'result="other_shard"' not in client.get("/metrics").text
    finally:
        _stop(vmagent, *daemons, *exporters)
