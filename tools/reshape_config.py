"""One-off codemod: config.py grouped by owner (issue "the maintainer's house", item 3).

Every top-level constant of config.py that exactly one library module (a *.py at the repo root) uses,
and that no other config statement needs (except knobs of the same owner), moves into a frozen
settings dataclass for that module, with one instance (``GENERATOR = GeneratorSettings()``); its use
sites become ``GENERATOR.field``. The shared vocabulary (paths, the contract, the time grid and
horizons, state thresholds, risk tiers; see KEEP_PLAIN_*) and every name two or more library modules
use stay plain constants. config.py stays the single source of every number.

    python tools/reshape_config.py            # rewrite the tree in place, then print a summary
    python tools/reshape_config.py --dry-run  # only print what would move

Run it from anywhere on a clean checkout (it works on the repository that holds it). It refuses an
already reshaped config.py (one that holds the owner section's header) and changes nothing then.
Deterministic: the same tree gives the same output.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import io
import keyword
import re
import subprocess
import sys
import tokenize
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.py"
OWNER_HEADER = "12. Settings owned by one module"
SKIP_DIRS = {".venv", ".git", "node_modules", "__pycache__", ".ci", "deploy", "mappings"}
SUB_TREES = ("tests", "bench", "tools")

# module -> (class name, instance name, prefixes stripped from field names)
OWNERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "metrics_generator": ("GeneratorSettings", "GENERATOR", ("GENERATE_",)),
    "tft_features": ("FeatureSettings", "FEATURES", ()),
    "tft_trainer": ("TrainerSettings", "TRAINER", ("TRAIN_",)),
    "tft_model": ("ModelSettings", "MODEL", ("MODEL_",)),
    "tft_evaluate": ("EvaluationSettings", "EVALUATION", ()),
    "baselines": ("BaselineSettings", "BASELINES", ("STAT_",)),
    "daemon_state": ("DaemonStateSettings", "DAEMON_STATE", ()),
    "tft_inference": ("DaemonSettings", "DAEMON", ()),
    "forecast_engine": ("EngineSettings", "ENGINE", ()),
    "metrics_store": ("StoreSettings", "STORE", ("STORE_",)),
    "store_export": ("ExportSettings", "EXPORT", ("EXPORT_",)),
    "api_models": ("ApiSettings", "API", ()),
    "api_keys": ("ApiKeySettings", "API_KEYS", ("API_KEY_",)),
    "remote_write": ("RemoteWriteSettings", "REMOTE_WRITE", ("REMOTE_WRITE_",)),
    "otlp_receiver": ("OtlpSettings", "OTLP", ("OTLP_",)),
    "alertmanager_push": ("AlertmanagerSettings", "ALERTMANAGER", ("ALERTMANAGER_",)),
    "alert_lifecycle": ("AlertLifecycleSettings", "ALERT_LIFECYCLE", ("ALERT_",)),
    "live_accuracy": ("AccuracySettings", "ACCURACY", ("ACCURACY_",)),
    "live_anomaly": ("AnomalySettings", "ANOMALY", ("ANOMALY_",)),
    "model_retrain": ("RetrainSettings", "RETRAIN", ("RETRAIN_",)),
    "retrain_scheduler": ("SchedulerSettings", "SCHEDULER", ()),
    "model_registry": ("RegistrySettings", "REGISTRY", ()),
    "daemon_client": ("ClientSettings", "CLIENT", ("DAEMON_",)),
    "feed_client": ("FeedSettings", "FEED", ("FEED_",)),
    "host_collector": ("CollectorSettings", "COLLECTOR", ("COLLECT_",)),
    "prometheus_adapter": ("PrometheusSettings", "PROMETHEUS", ("PROMETHEUS_",)),
    "trace_importer": ("ImportSettings", "IMPORTER", ("IMPORT_",)),
    "data_validator": ("ValidatorSettings", "VALIDATOR", ("VALIDATOR_", "VALIDATE_")),
    "demo": ("DemoSettings", "DEMO", ("DEMO_",)),
    "tft_dashboard_web": ("DashboardSettings", "DASHBOARD", ("DASHBOARD_",)),
    "server_encoder": ("ServerEncoderSettings", "SERVER_ENCODER", ()),
    "scoring": ("ScoringSettings", "SCORING", ()),
    "cli_options": ("CliSettings", "CLI", ("CLI_",)),
    "main": ("MainSettings", "MAIN", ()),
    "state_rules": ("StateRulesSettings", "STATE_RULES", ("STATE_",)),
    "calibration_fit": ("CalibrationSettings", "CALIBRATION", ("CALIBRATION_", "CALIBRATE_")),
    "profile_study": ("ProfileStudySettings", "PROFILE_STUDY", ("PROFILE_STUDY_", "PROFILE_VALUE_", "STUDY_")),
    "errors": ("ErrorSettings", "ERRORS", ("ERROR_",)),
}
# A module not in the table: FooBarSettings / FOO_BAR, the prefix FOO_BAR_ stripped (every owner also strips its
# own instance name: DASHBOARD_TOP_SERVERS -> DASHBOARD.top_servers).

# Field names that read better than the stripped constant name (TRAINER.compile would read as a method), by NAME
# or by "module:NAME" (CALIBRATION.band_max_shift, where EVALUATION.band_calibration_max_shift reads well).
FIELD_OVERRIDES = {"DEMO_DIR": "work_dir", "TRAIN_COMPILE": "torch_compile",
                   "TRAIN_COMPILE_MIN_STEPS": "torch_compile_min_steps",
                   "calibration_fit:BAND_CALIBRATION_MAX_WINDOWS": "band_max_windows",
                   "calibration_fit:BAND_CALIBRATION_MAX_SHIFT": "band_max_shift"}

# The shared vocabulary: kept plain even where one module reads it.
KEEP_PLAIN_SECTIONS = {1, 2, 3}  # paths, versions, docs, network; the data contract; time grid and horizons
KEEP_PLAIN_PATTERNS = [
    # state labelling (Docs/DATA_CONTRACT.md, "Deriving state"): the contract's thresholds
    r"^CRITICAL_", r"^HEAVY_", r"^IDLE_", r"^MORNING_SPIKE_", r"^RECOVERY_BUCKETS$", r"^SOFT_STATE_MIN_BUCKETS$",
    r"^CARRIED_METRICS$", r"^OFFLINE_IDLE_PCT$", r"^OFFLINE_ZERO_METRICS$",
    # risk scoring's thresholds, tiers and weights (Docs/RISK_SCORING.md)
    r"^RISK_", r"^PROFILE_RISK_TIERS$", r"^LOAD_TIERS_BY_PROFILE$", r"^LEVEL_WEIGHT$", r"^METRIC_WEIGHT_MULTIPLIER$",
    r"^HORIZON_WEIGHT$", r"^ALERT_MIN_LEVEL$", r"^DISPLAY_CPU$",
    # the model's inputs and outputs, saved in every model's spec
    r"^TARGET_METRICS$", r"^QUANTILES$", r"^QUANTILE_LABELS$", r"^QUANTILE_LEVELS$",
    # docs that errors cite
    r"_DOC$",
]
# Existing frozen settings (and instances of config's own classes) are left where they are.
CONFIG_CLASS_CALL_KEEPS = True


# ---------------------------------------------------------------------------
# reading config.py
# ---------------------------------------------------------------------------
@dataclass
class Const:
    name: str
    node: ast.stmt
    index: int  # position among config's top-level statements
    section: int
    first_line: int  # 1-based, the statement's first line incl. its leading comments
    last_line: int  # 1-based, last line of the statement
    leading: list[str] = field(default_factory=list)  # comment lines above it
    group: int = 0  # the comment block (and the statements under it) this statement belongs to
    stmt_line: int = 0  # 1-based, the statement's own first line
    refs: set[str] = field(default_factory=set)  # config names its value reads
    nested_refs: set[str] = field(default_factory=set)  # ... of them, read inside a nested scope


def section_of_lines(lines: list[str]) -> list[int]:
    """Section number (from the '# N. Title' headers) of every line, 1-based lines at index i-1."""
    out, current = [], 0
    for i, line in enumerate(lines):
        m = re.match(r"#\s+(\d+)\.\s", line)
        if m and i > 0 and lines[i - 1].startswith("# ----"):
            current = int(m.group(1))
        out.append(current)
    return out


GROUPS: dict[int, list[str | None]] = defaultdict(list)  # comment group -> its statements (read_config fills it)
GROUP_LEAD: dict[int, list[str]] = {}  # comment group -> the comment block over its first statement
_STOP_WORDS = {"this", "that", "with", "from", "when", "than", "then", "they", "them", "each", "every", "once",
               "only", "more", "most", "less", "also", "into", "over", "after", "before", "there", "here"}


def header_names(lead: list[str], node: ast.stmt) -> bool:
    """Whether a comment block names a statement: one of its words (4+ letters) begins a word of the statement's
    name (Incidents -> IncidentSpec, INCIDENTS)."""
    if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
        name = node.name
    elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        name = node.targets[0].id
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        name = node.target.id
    else:
        return False
    name_words = [w.lower() for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", name)]
    words = {w.lower().rstrip("s") for w in re.findall(r"[A-Za-z]{4,}", " ".join(lead))} - _STOP_WORDS
    return any(nw.startswith(w) for w in words for nw in name_words if len(w) >= 4)


def names_read(node: ast.AST) -> tuple[set[str], set[str]]:
    """Names a statement reads, and those it reads inside a nested scope (a class body cannot lend them)."""
    direct, nested = set(), set()

    def visit(n: ast.AST, inside: bool) -> None:
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            (nested if inside else direct).add(n.id)
        scope = isinstance(n, (ast.Lambda, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.DictComp,
                               ast.FunctionDef, ast.ClassDef))
        for child in ast.iter_child_nodes(n):
            visit(child, inside or scope)

    visit(node, False)
    return direct | nested, nested


def read_config(src: str) -> tuple[ast.Module, list[Const], dict[str, ast.stmt], set[str]]:
    """config's top-level constants, what it defines, its classes. Statements are grouped by comment block: a
    group is the statements under one block up to the next blank line or comment. A blank line does not end it
    where the block names the statement after it ("# Incidents: ..." over INCIDENT_TYPES heads IncidentSpec and
    INCIDENTS too; "# Disk: log rotation ..." over DISK_ROTATION_DAYS does not head NoiseSpec)."""
    tree = ast.parse(src)
    lines = src.splitlines()
    sections = section_of_lines(lines)
    consts: list[Const] = []
    defined: dict[str, ast.stmt] = {}
    classes: set[str] = set()
    prev_end = 0
    group = 0
    GROUPS.clear()
    GROUP_LEAD.clear()
    for i, node in enumerate(tree.body):
        start = node.lineno
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            start = min([start] + [d.lineno for d in node.decorator_list])
        gap = lines[prev_end:start - 1]
        if i == 0 or any(line.lstrip().startswith("#") for line in gap):
            group += 1
        elif any(not line.strip() for line in gap) and not header_names(GROUP_LEAD.get(group, []), node):
            group += 1  # a blank line ends a group, unless the group's header names the statement after it
        targets = []
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            targets = [node.targets[0].id]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            targets = [node.target.id]
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            defined[node.name] = node
            classes.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                defined[(a.asname or a.name).split(".")[0]] = node
        for t in targets:
            defined[t] = node
        # leading comments: the comment lines directly above (no blank line, no section rule)
        lead, j = [], start - 1
        while j - 1 >= prev_end and lines[j - 1].lstrip().startswith("#") and not lines[j - 1].startswith("# ---"):
            if j - 2 >= 0 and lines[j - 2].startswith("# ---"):
                break  # a section's title line
            lead.insert(0, lines[j - 1])
            j -= 1
        if not GROUPS[group]:
            GROUP_LEAD[group] = lead
        if targets:
            c = Const(targets[0], node, i, sections[node.lineno - 1], j + 1, node.end_lineno, lead, group=group,
                      stmt_line=start)
            c.refs, c.nested_refs = names_read(node.value)
            consts.append(c)
        GROUPS[group].append(targets[0] if targets else None)  # None: a class, a function, an import
        prev_end = node.end_lineno
    return tree, consts, defined, classes


# ---------------------------------------------------------------------------
# who uses what
# ---------------------------------------------------------------------------
def repo_py_files() -> tuple[list[Path], list[Path]]:
    lib = sorted(p for p in ROOT.glob("*.py") if p.name != "config.py")
    other = []
    for sub in SUB_TREES:
        other += sorted(p for p in (ROOT / sub).rglob("*.py")
                        if not SKIP_DIRS & set(p.parts) and p.resolve() != Path(__file__).resolve())
    return lib, other


def config_names_used(tree: ast.Module, config_names: set[str], lib_modules: set[str]) -> set[str]:
    """Config names a file reads: imported from config (or re-imported from a library module), config.X."""
    used: set[str] = set()
    config_aliases = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level == 0 and (n.module == "config" or n.module in lib_modules):
            used |= {a.name for a in n.names if a.name in config_names}
        elif isinstance(n, ast.Import):
            config_aliases |= {a.asname or a.name for a in n.names if a.name == "config"}
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in config_aliases:
            if n.attr in config_names:
                used.add(n.attr)
    return used


@dataclass
class Plan:
    owner: dict[str, str]  # moved name -> owner module
    field_name: dict[str, str]  # moved name -> field
    consts: dict[str, Const]
    kind: dict[str, str]  # moved name -> "plain" | "tuple" | "frozenset" | "readonly" | "list" | "dict" | "set"
    kept_reason: dict[str, str]
    notes: list[str] = field(default_factory=list)  # instance renames, field names that stutter


def owner_table(module: str) -> tuple[str, str, tuple[str, ...]]:
    """(class, instance, prefixes stripped from field names) of an owner module; see OWNERS."""
    if module in OWNERS:
        cls, inst, prefixes = OWNERS[module]
    else:
        cls, inst, prefixes = "".join(p.capitalize() for p in module.split("_")) + "Settings", module.upper(), ()
    inst = _INSTANCE_RENAMES.get(module, inst)
    if inst != OWNERS.get(module, (None, inst))[1]:
        cls = "".join(p.capitalize() for p in inst.lower().split("_")) + "Settings"
    if inst + "_" not in prefixes:
        prefixes = (*prefixes, inst + "_")
    return cls, inst, prefixes


_INSTANCE_RENAMES: dict[str, str] = {}  # filled by settle_instance_names


def settle_instance_names(modules: set[str], config_names: set[str]) -> list[str]:
    """One instance name per owner, none equal to a name config.py already defines: a clash gets the module's
    own name (or NAME_SETTINGS). Returns a note per rename."""
    _INSTANCE_RENAMES.clear()
    notes, taken = [], set(config_names)
    for mod in sorted(modules, key=lambda m: (m not in OWNERS, m)):  # the table's names first
        inst = owner_table(mod)[1]
        if inst in taken:
            for alt in (mod.upper(), inst + "_SETTINGS", mod.upper() + "_SETTINGS"):
                if alt not in taken:
                    notes.append(f"{mod}: instance {inst} is taken (a config name or another owner); {alt} instead")
                    _INSTANCE_RENAMES[mod] = inst = alt
                    break
            else:
                raise SystemExit(f"no free instance name for {mod}")
        taken.add(inst)
    return notes


def plan_moves(src: str, parsed: dict[Path, ast.Module], lib: list[Path]) -> Plan:
    _, consts, defined, classes = read_config(src)
    config_names = set(defined)
    lib_modules = {p.stem for p in lib}
    users: dict[str, set[str]] = defaultdict(set)
    for p in lib:
        for n in config_names_used(parsed[p], config_names, lib_modules - {p.stem}):
            users[n].add(p.stem)
    by_name = {c.name: c for c in consts}
    referenced_by: dict[str, set[str]] = defaultdict(set)
    nested_by: dict[str, set[str]] = defaultdict(set)
    for node in ast.parse(src).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            refs, _ = names_read(node)
            for r in refs:
                referenced_by[r].add(node.name)
    for c in consts:
        for r in c.refs:
            referenced_by[r].add(c.name)
        for r in c.nested_refs:
            nested_by[r].add(c.name)

    kept: dict[str, str] = {}
    owner: dict[str, str] = {}
    for c in consts:
        u = users.get(c.name, set())
        if len(u) != 1:
            kept[c.name] = f"{len(u)} library users"
        elif c.section in KEEP_PLAIN_SECTIONS or any(re.search(p, c.name) for p in KEEP_PLAIN_PATTERNS):
            kept[c.name] = "shared vocabulary"
        elif any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in classes
                 for n in ast.walk(c.node.value)):
            kept[c.name] = "an instance of config's own settings class"
        else:
            owner[c.name] = next(iter(u))
    # fixpoint: a knob read elsewhere in config stays plain, unless only a later knob of the same owner
    # reads it directly in its class body (not inside a comprehension or lambda)
    changed = True
    while changed:
        changed = False
        for name in sorted(owner):
            bad = [r for r in referenced_by[name]
                   if owner.get(r) != owner[name] or r in nested_by[name] or by_name[r].index < by_name[name].index]
            if bad:
                kept[name] = f"read by config's {sorted(bad)[0]}"
                del owner[name]
                changed = True
    notes = settle_instance_names(set(owner.values()), config_names)
    for mod in sorted(set(owner.values())):
        cls = owner_table(mod)[0]
        if cls in config_names:
            raise SystemExit(f"{mod}: its settings class {cls} is a name config.py defines already")
    field_name: dict[str, str] = {}
    for mod in sorted(set(owner.values())):
        _, _, prefixes = owner_table(mod)
        names = sorted(n for n in owner if owner[n] == mod)
        chosen: dict[str, str] = {}
        for n in names:
            f = n.lower()
            for pre in prefixes:
                if n.startswith(pre):
                    cand = n[len(pre):].lower()
                    if cand and cand.isidentifier() and not keyword.iskeyword(cand) and not cand[0].isdigit():
                        f = cand
                    break
            chosen[n] = FIELD_OVERRIDES.get(f"{mod}:{n}", FIELD_OVERRIDES.get(n, f))
        # two names that strip to one field keep their full names
        counts = defaultdict(int)
        for f in chosen.values():
            counts[f] += 1
        for n, f in chosen.items():
            field_name[n] = n.lower() if counts[f] > 1 else f
        inst = owner_table(mod)[1].lower()
        for n in names:  # a field that repeats its owner's name reads badly: say so (FIELD_OVERRIDES fixes it)
            if field_name[n].startswith((inst + "_", mod + "_")) or field_name[n] in (inst, mod):
                notes.append(f"{n} -> {owner_table(mod)[1]}.{field_name[n]} repeats the owner's name")
    return Plan(owner, field_name, by_name, {}, kept, notes)


# ---------------------------------------------------------------------------
# how a moved container is used: immutable where every use allows it
# ---------------------------------------------------------------------------
SAFE_CALLS = {"len", "tuple", "list", "set", "frozenset", "sorted", "enumerate", "zip", "any", "all", "max", "min",
              "sum", "reversed", "dict", "iter", "next", "map", "filter"}
READ_METHODS = {"get", "items", "keys", "values", "index", "count"}
MUTATORS = {"append", "extend", "insert", "remove", "pop", "clear", "update", "setdefault", "add", "discard",
            "sort", "reverse", "popitem"}


def use_is_safe(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[bool, bool]:
    """(safe as an immutable container, is a mutation) for one Load of a moved name (or its attribute)."""
    p = parents.get(node)
    if isinstance(p, (ast.For, ast.comprehension)) and p.iter is node:
        return True, False
    if isinstance(p, ast.Compare) and node in p.comparators and all(isinstance(o, (ast.In, ast.NotIn)) for o in p.ops):
        return True, False
    if isinstance(p, ast.Call) and node in p.args and isinstance(p.func, ast.Name) and p.func.id in SAFE_CALLS:
        return True, False
    if isinstance(p, ast.Starred):
        return True, False
    if isinstance(p, ast.Subscript) and p.value is node:
        if isinstance(p.ctx, (ast.Store, ast.Del)):
            return False, True
        return not isinstance(p.slice, ast.Slice), False
    if isinstance(p, ast.Attribute) and p.value is node:
        if p.attr in MUTATORS:
            return False, True
        return p.attr in READ_METHODS, False
    if isinstance(p, ast.Dict) and node in p.values and p.keys[p.values.index(node)] is None:
        return True, False  # {**X}
    return False, False


# ---------------------------------------------------------------------------
# rewriting a file
# ---------------------------------------------------------------------------
def offsets(src: str) -> list[int]:
    out, total = [0], 0
    for line in src.splitlines(keepends=True):
        total += len(line)
        out.append(total)
    return out


def pos(line_starts: list[int], lineno: int, col: int, src_line: str) -> int:
    # ast columns are UTF-8 byte offsets
    return line_starts[lineno - 1] + len(src_line.encode("utf-8")[:col].decode("utf-8"))


class FileRewrite:
    def __init__(self, path: Path, src: str, tree: ast.Module, plan: Plan, lib_modules: set[str]):
        self.path, self.src, self.tree, self.plan = path, src, tree, plan
        self.lines = src.splitlines(keepends=True)
        self.starts = offsets(src)
        self.edits: list[tuple[int, int, str]] = []
        self.lib_modules = lib_modules
        self.notes: list[str] = []
        self.need_dataclasses = False

    def span(self, node: ast.AST) -> tuple[int, int]:
        a = pos(self.starts, node.lineno, node.col_offset, self.lines[node.lineno - 1])
        b = pos(self.starts, node.end_lineno, node.end_col_offset, self.lines[node.end_lineno - 1])
        return a, b

    def instance(self, name: str) -> str:
        return owner_table(self.plan.owner[name])[1]

    def dotted(self, name: str) -> str:
        return f"{self.instance(name)}.{self.plan.field_name[name]}"

    def run(self) -> bool:
        plan = self.plan
        moved = plan.owner
        parents = {c: p for p in ast.walk(self.tree) for c in ast.iter_child_nodes(p)}
        config_aliases: set[str] = set()
        module_aliases: dict[str, str] = {}  # local name -> library module
        bound_from: dict[str, str] = {}  # moved name imported into this file -> module it came from
        stores = {n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        stores |= {a.arg for a in ast.walk(self.tree) if isinstance(a, ast.arg)}
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Import):
                for a in n.names:
                    if a.name == "config":
                        config_aliases.add(a.asname or a.name)
                    elif a.name in self.lib_modules:
                        module_aliases[a.asname or a.name] = a.name
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module in self.lib_modules | {"config"}:
                keep, add = [], []
                for a in n.names:
                    if a.name in moved and (n.module == "config" or moved[a.name] == n.module):
                        local = a.asname or a.name
                        if local in stores:
                            raise SystemExit(f"{self.path}: {local} is also assigned here; not handled")
                        bound_from[local] = a.name
                        inst = self.instance(a.name)
                        if inst not in add:
                            add.append(inst)
                    else:
                        keep.append(a.name if not a.asname else f"{a.name} as {a.asname}")
                if add:
                    for inst in add:
                        if inst in stores or (inst in {x for x in keep}):
                            if inst in stores:
                                raise SystemExit(f"{self.path}: the instance name {inst} is bound here already")
                    names = keep + [i for i in add if i not in keep]
                    self.edits.append((*self.span(n), self.import_text(n, names)))
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in bound_from:
                self.replace(n, n.id, self.dotted(bound_from[n.id]), parents)
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.attr in moved:
                base = n.value.id
                if base in config_aliases or module_aliases.get(base) == moved[n.attr]:
                    self.replace(n, f"{base}.{n.attr}", f"{base}.{self.dotted(n.attr)}", parents)
            elif isinstance(n, ast.Call) and self.is_setattr(n):
                self.rewrite_setattr(n, config_aliases, module_aliases)
            elif isinstance(n, ast.Call) and self.is_getattr(n):
                self.rewrite_getattr(n, config_aliases, module_aliases)
        return bool(self.edits)

    def replace(self, node: ast.AST, old: str, new: str, parents) -> None:
        a, b = self.span(node)
        if self.src[a:b] != old:
            raise SystemExit(f"{self.path}:{node.lineno}: expected {old!r} at its position, found {self.src[a:b]!r}")
        self.edits.append((a, b, new))

    def import_text(self, node: ast.ImportFrom, names: list[str]) -> str:
        indent = " " * node.col_offset
        one = f"from {node.module} import {', '.join(names)}"
        if len(indent) + len(one) <= 120:
            return one
        body = "".join(f"{indent}    {n},\n" for n in names)
        return f"from {node.module} import (\n{body}{indent})"

    @staticmethod
    def is_setattr(n: ast.Call) -> bool:
        f = n.func
        return (isinstance(f, ast.Attribute) and f.attr == "setattr" and len(n.args) >= 3
                and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str))

    def is_getattr(self, n: ast.Call) -> bool:
        """getattr(config, "NAME"[, default]) / hasattr(config, "NAME") of a moved name."""
        return (isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr") and len(n.args) >= 2
                and isinstance(n.args[0], ast.Name) and isinstance(n.args[1], ast.Constant)
                and n.args[1].value in self.plan.owner)

    def rewrite_getattr(self, n: ast.Call, config_aliases: set[str], module_aliases: dict[str, str]) -> None:
        base, attr = n.args[0].id, n.args[1].value
        if not (base in config_aliases or module_aliases.get(base) == self.plan.owner[attr]):
            return
        self.edits.append((*self.span(n.args[0]), f"{base}.{self.instance(attr)}"))
        self.edits.append((*self.span(n.args[1]), f'"{self.plan.field_name[attr]}"'))

    def rewrite_setattr(self, n: ast.Call, config_aliases: set[str], module_aliases: dict[str, str]) -> None:
        target, attr, value = n.args[0], n.args[1].value, n.args[2]
        if attr not in self.plan.owner or not isinstance(target, ast.Name):
            return
        base = target.id
        if not (base in config_aliases or base in module_aliases):
            return
        inst, fld = self.instance(attr), self.plan.field_name[attr]
        a, _ = self.span(n.args[1])
        _, b = self.span(value)
        vtext = self.src[slice(*self.span(value))]
        self.edits.append((a, b, f'"{inst}", dataclasses.replace({base}.{inst}, {fld}={vtext})'))
        self.need_dataclasses = True

    def apply(self) -> str:
        out = self.src
        for a, b, new in sorted(self.edits, key=lambda e: (e[0], -e[1]), reverse=True):
            out = out[:a] + new + out[b:]
        if self.need_dataclasses and not re.search(r"^import dataclasses$", out, re.M):
            # after the __future__ import / docstring: ruff's isort puts it in its place
            m = re.search(r"^(import |from (?!__future__))", out, re.M)
            out = out[: m.start()] + "import dataclasses\n" + out[m.start():]
        return out


# ---------------------------------------------------------------------------
# writing the owner sections
# ---------------------------------------------------------------------------
def type_of(v) -> str:
    from pathlib import PurePath
    if v is None:
        return "None"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, PurePath):
        return "Path"
    if isinstance(v, (int, float, str, bytes)):
        return type(v).__name__
    if isinstance(v, (tuple, list, frozenset, set)):
        inner = union([type_of(x) for x in v]) if v else "str"
        if isinstance(v, tuple) and v and len({type_of(x) for x in v}) > 1 and len(v) <= 4:
            return "tuple[" + ", ".join(type_of(x) for x in v) + "]"
        return {tuple: "tuple", list: "list", frozenset: "frozenset", set: "set"}[type(v)] + (
            f"[{inner}, ...]" if isinstance(v, tuple) else f"[{inner}]")
    if isinstance(v, dict):
        return f"dict[{union([type_of(k) for k in v])}, {union([type_of(x) for x in v.values()])}]"
    return type(v).__name__


def union(types: list[str]) -> str:
    u = sorted(set(types))
    if set(u) == {"int", "float"}:
        return "float"
    return " | ".join(u) if u else "str"


def annotation(c: Const, value, kind: str) -> str:
    t = ast.unparse(c.node.annotation) if isinstance(c.node, ast.AnnAssign) else type_of(value)
    if kind == "tuple":
        t = re.sub(r"^list\[(.*)\]$", r"tuple[\1, ...]", t)
    elif kind == "frozenset":
        t = re.sub(r"^set\[", "frozenset[", t)
    elif kind == "readonly":
        t = re.sub(r"^dict\[", "Mapping[", t)
    return t


def settle_group_comments(plan: Plan) -> list[str]:
    """Where each comment block goes. A block moves with its group only if every statement of the group moves to
    one owner. Otherwise it stays in config.py over the statements that stay (it is dropped there only when none
    stays). A copy goes above the moved statement right under the block (it explains that one first) and, when
    nothing stays in config.py, above the first moved statement of each owner: no block is lost, few are doubled.
    Sets Const.leading / first_line of the moved statements; returns one note per split group."""
    notes = []
    for g, members in sorted(GROUPS.items()):
        lead = GROUP_LEAD.get(g, [])
        owners = [plan.owner.get(m) if m else None for m in members]
        if not any(owners) or not lead:
            continue
        if None not in owners and len(set(owners)) == 1:
            continue  # the whole group moves: its first statement carries the block (read_config's default)
        stays = None in owners
        first = plan.consts[members[0]] if members[0] else None
        for m, o in zip(members, owners, strict=True):
            if o:
                c = plan.consts[m]
                c.leading, c.first_line = [], c.stmt_line
        if first is not None and not stays and first.name in plan.owner:
            first.first_line = first.stmt_line - len(lead)  # nothing stays under the block: it goes from config
        # a copy: to the owner of the statement right under the block (the block explains it first); to every
        # owner when no statement stays in config.py (the block would be lost otherwise)
        seen = set()
        for k, (m, o) in enumerate(zip(members, owners, strict=True)):
            if o and o not in seen and (k == 0 or not stays):
                seen.add(o)
                plan.consts[m].leading = list(lead)
        where = ", ".join(sorted(owner_table(o)[1] for o in seen)) or "no owner"
        notes.append(f"{lead[0].strip()[:60]}... {'stays in config.py, ' if stays else ''}copied to {where}")
    return notes


def value_text(src: str, c: Const, renames: dict[str, str]) -> str:
    """The value's source, with reads of same-owner knobs renamed to their fields."""
    node = c.node.value
    lines = src.splitlines(keepends=True)
    starts = offsets(src)
    a = pos(starts, node.lineno, node.col_offset, lines[node.lineno - 1])
    b = pos(starts, node.end_lineno, node.end_col_offset, lines[node.end_lineno - 1])
    edits = []
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id in renames:
            x = pos(starts, n.lineno, n.col_offset, lines[n.lineno - 1])
            y = pos(starts, n.end_lineno, n.end_col_offset, lines[n.end_lineno - 1])
            edits.append((x - a, y - a, renames[n.id]))
    text = src[a:b]
    for x, y, new in sorted(edits, reverse=True):
        text = text[:x] + new + text[y:]
    return text


def comment_after(src_lines: list[str], lineno: int, col: int) -> str:
    """A comment on line lineno after column col (a character offset), or ''."""
    rest = src_lines[lineno - 1][col:]
    try:
        for tok in tokenize.generate_tokens(io.StringIO(rest).readline):
            if tok.type == tokenize.COMMENT:
                return tok.string
    except (tokenize.TokenError, IndentationError):
        pass
    return ""


def render_value(text: str, kind: str) -> str:
    t = text.strip()
    if kind == "tuple":
        if t.startswith("[") and t.endswith("]"):
            inner = t[1:-1]
            if inner.rstrip().endswith(","):
                return "(" + inner + ")"
            return "(" + inner + ("," if "," not in inner and inner.strip() else "") + ")"
        return f"tuple({t})"
    if kind == "frozenset":
        return f"frozenset({t})"
    if kind == "readonly":
        return f"_read_only({t})"
    if kind in ("list", "dict", "set"):
        return f"_fresh({t})"
    return t


def reindent(text: str, shift: int) -> str:
    """A multi-line value's continuation lines, moved right by shift columns (left if negative)."""
    lines = text.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        if not line.strip():
            out.append(line)
        elif shift >= 0:
            out.append(" " * shift + line)
        else:
            out.append(line[min(-shift, len(line) - len(line.lstrip())):])
    return "\n".join(out)


def owner_section(src: str, plan: Plan, module: str, names: list[str], kinds: dict[str, str], values: dict) -> str:
    cls, inst, _ = owner_table(module)
    src_lines = src.splitlines(keepends=True)
    renames = {n: plan.field_name[n] for n in names}
    body = [f'    """What only {module}.py reads (``{inst}.<field>``; each field was ``config.<NAME>``)."""']
    for n in names:
        c = plan.consts[n]
        kind, fld, v = kinds[n], plan.field_name[n], c.node.value
        body += ["    " + line.strip() for line in c.leading]
        raw = value_text(src, c, {k: f for k, f in renames.items() if k != n})
        val = render_value(raw, kind)
        prefix = f"    {fld}: {annotation(c, values[n], kind)} = "
        if "\n" in val:
            wrapper = val.index(raw.strip()) if raw.strip() in val else 0
            first = src_lines[v.lineno - 1].rstrip("\n")
            hanging = re.search(r"[\[({]\s*(#.*)?$", first) is not None
            col = len(first.encode()[: v.col_offset].decode())
            shift = 4 if hanging else len(prefix) + wrapper - col
            val = reindent(val, shift)
        line = prefix + val
        end_line = src_lines[v.end_lineno - 1]
        tail = comment_after(src_lines, v.end_lineno, len(end_line.encode()[: v.end_col_offset].decode()))
        if tail:
            line += "  " + tail
        body.append(line)
    return "\n".join(["", "", "@dataclass(frozen=True)", f"class {cls}:", *body, "", "", f"{inst} = {cls}()"])


CONFIG_SRC_BEFORE = ""
ORIGINAL: dict[Path, str] = {}  # each rewritten file's text before the run
HELPERS = '''

def _read_only(mapping):
    """A settings field whose default is a mapping: a read-only view of it (MappingProxyType)."""
    return field(default_factory=lambda: MappingProxyType(mapping))


def _fresh(value):
    """A settings field whose users need a real list / dict / set (pandas column lists): a copy per instance."""
    return field(default_factory=lambda: type(value)(value))
'''


# ---------------------------------------------------------------------------
# docs
# ---------------------------------------------------------------------------
def old_name_pattern(dotted: dict[str, str], after_dot: bool = False) -> re.Pattern:
    """A moved name as a whole identifier token, not a call (NAME(...)); not after a dot (module.NAME is code, and
    config.NAME has its own rewrite) unless after_dot (the final check for leftovers)."""
    alt = "|".join(sorted(map(re.escape, dotted), key=len, reverse=True))
    before = r"(?<!\w)" if after_dot else r"(?<![\w.])"
    return re.compile(rf"{before}({alt})(?![\w(])")


def expand_suffixes(text: str, dotted: dict[str, str]) -> str:
    """Prose shorthand after a moved name, "REMOTE_WRITE_MAX_INSTANCES / _SERIES / _SERIES_PER_INSTANCE": each
    _SUFFIX that completes a shorter stem of the name to another moved name is written out in full (then rewritten
    like any mention). A suffix that completes to no moved name stays as it is."""
    alt = "|".join(sorted(map(re.escape, dotted), key=len, reverse=True))
    chain = re.compile(rf"(?<![\w.])({alt})(`?(?:\s*(?:/|,|and|or)\s*`?_[A-Z0-9_]+`?)+)")

    def one(m: re.Match) -> str:
        parts = m.group(1).split("_")
        stems = ["_".join(parts[:k]) for k in range(len(parts), 0, -1)]

        def full(mm: re.Match) -> str:
            for stem in stems:
                if stem + mm.group(0) in dotted:
                    return stem + mm.group(0)
            return mm.group(0)

        return m.group(1) + re.sub(r"(?<![\w])_[A-Z0-9_]+", full, m.group(2))

    return chain.sub(one, text)


def rewrite_doc(text: str, dotted: dict[str, str]) -> tuple[str, int, list[str]]:
    """A Markdown file: every whole-token mention of a moved name (``config.NAME`` too), in backticks or not,
    becomes INSTANCE.field. Returns the text, the count and the rewritten lines (for review)."""
    if not dotted:
        return text, 0, []
    alt = "|".join(sorted(map(re.escape, dotted), key=len, reverse=True))
    pat = re.compile(rf"(?<![\w.])(config\.)?({alt})(?![\w(])")
    count, shown = 0, []

    def one(m: re.Match) -> str:
        nonlocal count
        count += 1
        return (m.group(1) or "") + dotted[m.group(2)]

    out_lines = []
    for n, line in enumerate(text.split("\n"), 1):
        new = pat.sub(one, expand_suffixes(line, dotted))
        if new != line:
            shown.append(f"{n}: {new.strip()[:110]}")
        out_lines.append(new)
    return "\n".join(out_lines), count, shown


def literal_regions(text: str) -> list[tuple[int, int]]:
    """Spans of a string token's text that are literal text: all of it, but an f-string's {fields} (code, which the
    ast rewrite already handled) left out."""
    prefix = re.match(r"[rRbBfFuU]*", text).group(0)
    if "f" not in prefix.lower():
        return [(0, len(text))]
    regions, depth, start, i = [], 0, 0, len(prefix)
    while i < len(text):
        if depth == 0 and text[i:i + 2] in ("{{", "}}"):
            i += 2
            continue
        if text[i] == "{":
            if depth == 0:
                regions.append((start, i))
            depth += 1
        elif text[i] == "}" and depth:
            depth -= 1
            if depth == 0:
                start = i + 1
        i += 1
    regions.append((start, len(text)))
    return regions


def prose_tokens(src: str):
    """(kind, start offset, end offset) of every comment and string literal of a module (an f-string whole, on
    Python 3.12+ too, where it is several tokens)."""
    starts = offsets(src)
    fstart, fend = getattr(tokenize, "FSTRING_START", None), getattr(tokenize, "FSTRING_END", None)
    fdepth, begin = 0, 0
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        a = starts[t.start[0] - 1] + t.start[1]
        b = starts[t.end[0] - 1] + t.end[1]
        if fstart is not None and t.type == fstart:
            if fdepth == 0:
                begin = a
            fdepth += 1
        elif fend is not None and t.type == fend:
            fdepth -= 1
            if fdepth == 0:
                yield "string", begin, b
        elif fdepth == 0 and t.type in (tokenize.COMMENT, tokenize.STRING):
            yield ("comment" if t.type == tokenize.COMMENT else "string"), a, b


def message_checks(tree: ast.Module) -> set[int]:
    """Lines of string literals a test looks for in a message ("NAME" in caplog.text, match="NAME"): they follow
    the messages, which the prose rewrite changes too."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare) and isinstance(n.left, ast.Constant) and all(
                isinstance(o, (ast.In, ast.NotIn)) for o in n.ops):
            out.add(n.left.lineno)
        elif isinstance(n, ast.keyword) and n.arg == "match" and isinstance(n.value, ast.Constant):
            out.add(n.value.lineno)
    return out


def code_cell_lines(tree: ast.Module) -> set[int]:
    """First lines of string literals that are notebook code cells (new_code_cell("...")): code, not prose."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "new_code_cell":
            for arg in n.args[:1]:
                out |= {s.lineno for s in ast.walk(arg) if isinstance(s, (ast.Constant, ast.JoinedStr))}
    return out


def string_body(text: str) -> str:
    """A string literal's text without its prefix and quotes."""
    m = re.match(r"[rRbBfFuU]*('''|\"\"\"|'|\")", text)
    q = m.group(1)
    return text[m.end():len(text) - len(q)]


def rewrite_prose(src: str, dotted: dict[str, str]) -> tuple[str, int, list[str], list[str]]:
    """Comments, docstrings and string literals (error messages, f-strings' literal text) of a .py file: a moved
    NAME as a whole token becomes INSTANCE.field. A string that is nothing but the name (an identifier used as
    data: getattr, a key) and a notebook code cell are left alone; the first is reported. Returns the text, the
    count, the rewritten lines and the strings left alone."""
    if not dotted:
        return src, 0, [], []
    pat = old_name_pattern(dotted)
    try:
        tree = ast.parse(src)
        skip, checks = code_cell_lines(tree), message_checks(tree)
    except SyntaxError:
        skip, checks = set(), set()
    starts = offsets(src)
    edits, count, shown, refused = [], 0, [], []
    for kind, a, b in prose_tokens(src):
        text = src[a:b]
        if not pat.search(text):
            continue
        ln = bisect.bisect_right(starts, a)
        if kind == "string":
            if ln in skip:
                continue
            if string_body(text).strip() in dotted and ln not in checks:
                refused.append(f"{ln}: {text[:80]}")
                continue
        new, last = [], 0
        for x, y in literal_regions(text) if kind == "string" else [(0, len(text))]:
            part, k = pat.subn(lambda m: dotted[m.group(1)], expand_suffixes(text[x:y], dotted))
            count += k
            new += [text[last:x], part]
            last = y
        new.append(text[last:])
        new_text = "".join(new)
        if new_text != text:
            edits.append((a, b, new_text))
            shown += [f"{ln + i}: {line.strip()[:110]}" for i, (line, old) in
                      enumerate(zip(new_text.split("\n"), text.split("\n"), strict=False)) if line != old]
    for a, b, new in sorted(edits, reverse=True):
        src = src[:a] + new + src[b:]
    return src, count, shown, refused


def rewrite_py_text(src: str, dotted: dict[str, str]) -> tuple[str, int]:
    """``config.NAME`` inside comments and strings (docstrings) of a .py file: the qualified form only."""
    if not dotted:
        return src, 0
    alt = "|".join(sorted(map(re.escape, dotted), key=len, reverse=True))
    pat = re.compile(rf"(?<![\w.])config\.({alt})(?!\w)")
    count = 0
    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    lines = src.splitlines(keepends=True)
    starts = offsets(src)
    edits = []
    for t in toks:
        if t.type in (tokenize.COMMENT, tokenize.STRING) and pat.search(t.string):
            new = pat.sub(lambda m: "config." + dotted[m.group(1)], t.string)
            count += len(pat.findall(t.string))
            a = starts[t.start[0] - 1] + t.start[1]
            b = starts[t.end[0] - 1] + t.end[1]
            edits.append((a, b, new))
    del lines
    for a, b, new in sorted(edits, reverse=True):
        src = src[:a] + new + src[b:]
    return src, count



# ---------------------------------------------------------------------------
# wrapping the lines the rewrite made longer than the line length
# ---------------------------------------------------------------------------
LINE_LENGTH = 120


def _line_tokens(src: str):
    """Per line: (tokens on it, bracket depth at its start). Tokens as (type, string, start col, end col)."""
    per_line: dict[int, list] = defaultdict(list)
    depth_at: dict[int, int] = {}
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            for ln in range(tok.start[0], tok.end[0] + 1):
                depth_at.setdefault(ln, depth)
            if tok.start[0] == tok.end[0]:
                per_line[tok.start[0]].append((tok.type, tok.string, tok.start[1], tok.end[1]))
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
    except (tokenize.TokenError, IndentationError):
        pass  # a single line of a longer statement
    return per_line, depth_at


BREAK_BEFORE = {"and", "or", "+", "-", "*", "/", "//", "%", "**", "==", "!=", ">=", "<=", ">", "<", "if", "else", "for"}


def _split_string(text: str, room: int) -> tuple[str, str] | None:
    """A one-line (f-)string literal cut in two at a space outside any {field}, the first part at most room long."""
    m = re.match(r"([rRbBfFuU]{0,2})(['\"])", text)
    if not m or text.startswith(m.group(0) * 3) or not text.endswith(m.group(2)):
        return None
    prefix, q = m.group(1), m.group(2)
    body = text[len(m.group(0)):-1]
    depth, cut, i = 0, None, 0
    while i < len(body):
        ch = body[i]
        if ch in "{}" and body[i:i + 2] == ch * 2 and depth == 0 and "f" in prefix.lower():
            i += 2
            continue
        if "f" in prefix.lower() and ch == "{":
            depth += 1
        elif "f" in prefix.lower() and ch == "}":
            depth -= 1
        elif ch == " " and depth == 0 and len(prefix) + 2 + i + 1 <= room and not body[:i + 1].endswith("\\ "):
            cut = i + 1
        i += 1
    if not cut or cut >= len(body):
        return None
    return f"{prefix}{q}{body[:cut]}{q}", f"{prefix}{q}{body[cut:]}{q}"


def _break_once(line: str, toks: list, continued: bool) -> tuple[str, str] | None:
    """Split one physical line inside its brackets: at a comma (the outermost that keeps the first part within the
    limit), else before an operator, else inside a string literal."""
    stack: list[int] = []
    commas, ops, strings = [], [], []
    if not continued:  # never inside an annotated target: breaks come after a top-level '='
        depth, eq = 0, None
        for typ, text, a, _ in toks:
            depth += (text in "([{") - (text in ")]}") if typ == tokenize.OP else 0
            if typ == tokenize.OP and text == "=" and depth == 0:
                eq = a
                break
        if eq is not None:
            toks = [t for t in toks if t[2] > eq or t[1] in "([{)]}"]
    for typ, text, a, b in toks:
        if typ == tokenize.OP and text in "([{":
            stack.append(a)
        elif typ == tokenize.OP and text in ")]}":
            if stack:
                stack.pop()
        elif not (stack or continued):
            continue
        elif typ == tokenize.OP and text == "," and b <= LINE_LENGTH:
            rest = line[b:].lstrip()
            if rest and not rest.startswith("#") and rest[0] not in ")]}":
                indent = stack[-1] + 1 if stack else len(line) - len(line.lstrip())
                commas.append((len(stack), b, line[:b].rstrip(), " " * indent + rest))
        elif (typ == tokenize.OP or typ == tokenize.NAME) and text in BREAK_BEFORE and 0 < a <= LINE_LENGTH:
            if line[:a].strip() and line[a - 1] == " ":
                indent = stack[-1] + 1 if stack else len(line) - len(line.lstrip())
                ops.append((len(stack), a, line[:a].rstrip(), " " * indent + line[a:]))
        elif typ == tokenize.STRING and a < LINE_LENGTH < b:
            cut = _split_string(text, LINE_LENGTH - a)
            if cut:
                indent = a
                strings.append((len(stack), a, line[:a] + cut[0], " " * indent + cut[1] + line[b:]))
    ranked = [(0, *o) for o in commas] + [(OP_RANK.get(o[3].lstrip().split(" ")[0], 4), *o) for o in ops]
    ranked += [(9, *o) for o in strings]
    if not ranked:
        return None
    # both parts within the limit first, then the outermost bracket, the loosest operator, the latest break
    best = min(ranked, key=lambda r: (len(r[4]) > LINE_LENGTH, r[1], r[0], -r[2]))
    return best[3], best[4]


OP_RANK = {"if": 1, "else": 1, "for": 1, "or": 1, "and": 2, "==": 3, "!=": 3, ">=": 3, "<=": 3, ">": 3, "<": 3,
           "+": 4, "-": 4, "*": 5, "/": 5, "//": 5, "%": 5, "**": 6}


def _depth_of_break(line: str, first: str) -> int:
    """Bracket depth at the end of the first part of a split line."""
    depth = 0
    for typ, text, _, _ in _line_tokens(first + "\n")[0].get(1, []):
        if typ == tokenize.OP:
            depth += (text in "([{") - (text in ")]}")
    return depth


def _parenthesize(line: str, toks: list) -> str | None:
    """A statement line with no bracket to break in: its expression wrapped in parentheses (then broken)."""
    code = [t for t in toks if t[0] not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                            tokenize.DEDENT)]
    if not code:
        return None
    start = None
    depth = 0
    for typ, text, _, b in code:
        if typ == tokenize.OP:
            depth += (text in "([{") - (text in ")]}")
        if depth == 0 and typ == tokenize.OP and text in ("=", "+=", "-=", "*=", "/=") and start is None:
            start = b
    if depth != 0:
        return None  # the statement goes on over more lines
    if code[0][1] in ("assert", "return", "if", "elif", "while") and start is None:
        start = code[0][3]
    if start is None:
        return None
    end = code[-1][3]
    if code[-1][1] == ":" and code[0][1] in ("if", "elif", "while"):
        end = code[-1][2]
    if code[0][1] == "assert":  # the condition only, not the message
        depth = 0
        for typ, text, a, _ in code:
            if typ == tokenize.OP:
                depth += (text in "([{") - (text in ")]}")
                if text == "," and depth == 0:
                    end = a
                    break
    inner = line[start:end].strip()
    if inner.startswith("(") and inner.endswith(")"):
        return None
    lead = line[:start].rstrip() + " "
    return lead + "(" + inner + ")" + line[end:]


def wrap_docstrings(src: str, old_long: set[str]) -> str:
    """Docstring lines the rewrite made too long, re-flowed: cut at the last space within the limit (outside a
    ``literal`` where one can), the rest on a new line at the docstring's indentation."""
    tree = ast.parse(src)
    docs = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body:
            d = n.body[0]
            if isinstance(d, ast.Expr) and isinstance(d.value, ast.Constant) and isinstance(d.value.value, str):
                docs.append(d.value)
    lines = src.split("\n")
    for d in sorted(docs, key=lambda d: -d.lineno):
        for i in range(d.end_lineno - 1, d.lineno - 2, -1):
            out, line = [], lines[i]
            while len(line) > LINE_LENGTH and line not in old_long:
                own = len(line) - len(line.lstrip())
                spaces = [k for k in range(own + 1, LINE_LENGTH + 1) if line[k] == " "]
                even = [k for k in spaces if line[:k].count("``") % 2 == 0]
                if not spaces:
                    break
                cut = (even or spaces)[-1]
                indent = " " * (d.col_offset if i == d.lineno - 1 else own)
                out.append(line[:cut].rstrip())
                line = indent + line[cut:].lstrip()
            lines[i:i + 1] = [*out, line]
    return "\n".join(lines)


def wrap_long_lines(src: str, before: str) -> tuple[str, list[str]]:
    """Lines over LINE_LENGTH that were not over it before: broken at commas inside brackets (the AST unchanged),
    a long comment moved above its line or re-flowed. Returns the text and the lines left too long."""
    old_long = {line for line in before.splitlines() if len(line) > LINE_LENGTH}
    src = wrap_docstrings(src, old_long)
    reference = ast.dump(ast.parse(src))
    for _ in range(8):
        lines = src.split("\n")
        per_line, depth_at = _line_tokens(src)
        changed = False
        for i in range(len(lines) - 1, -1, -1):
            line = lines[i]
            if len(line) <= LINE_LENGTH or line in old_long:
                continue
            toks = per_line.get(i + 1, [])
            indent = " " * (len(line) - len(line.lstrip()))
            comment = next((t for t in toks if t[0] == tokenize.COMMENT), None)
            if line.lstrip().startswith("#"):  # a comment line: re-flow it
                import textwrap
                body = line.lstrip()[1:].strip()
                lines[i:i + 1] = textwrap.wrap(body, LINE_LENGTH - len(indent) - 2, initial_indent=indent + "# ",
                                               subsequent_indent=indent + "# ")
                changed = True
                continue
            if comment and len(line[: comment[2]].rstrip()) <= LINE_LENGTH and depth_at.get(i + 1, 0) == 0:
                # code fits, its comment does not: the comment goes above the statement
                code = line[: comment[2]].rstrip()
                lines[i:i + 1] = [indent + comment[1], code]
                changed = True
                continue
            continued = depth_at.get(i + 1, 0) > 0
            split = _break_once(line, toks, continued)
            wrapped = None if continued else _parenthesize(line, toks)
            wsplit = None
            if wrapped:  # a break at the statement's own level reads better than one deep inside it
                wsplit = _break_once(wrapped, _line_tokens(wrapped + "\n")[0].get(1, []), False)
                if wsplit and len(wsplit[1]) <= LINE_LENGTH and (
                        not split or len(split[1]) > LINE_LENGTH
                        or _depth_of_break(wrapped, wsplit[0]) - 1 < _depth_of_break(line, split[0])):
                    split, wsplit = wsplit, split
                else:
                    wsplit = None
            for option in (split, wsplit):
                if not option:
                    continue
                trial = lines[:i] + list(option) + lines[i + 1:]
                try:
                    same = ast.dump(ast.parse("\n".join(trial))) == reference
                except SyntaxError:
                    same = False
                if same:  # never change what the code means
                    lines = trial
                    changed = True
                    break
        new = "\n".join(lines)
        if not changed:
            break
        src = new
    left = [f"{n}: {line.strip()[:80]}" for n, line in enumerate(src.split("\n"), 1)
            if len(line) > LINE_LENGTH and line not in old_long]
    return src, left


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------
def config_import_lines(files: list[Path]) -> int:
    total = 0
    for p in files:
        try:
            tree = ast.parse(p.read_text(encoding="utf-8"))
        except SyntaxError:
            continue
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module == "config" and n.level == 0:
                total += n.end_lineno - n.lineno + 1
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    ap.add_argument("--no-ruff", action="store_true", help="skip ruff's import fix-up")
    ap.add_argument("--verbose", action="store_true", help="list every rewritten line of prose, for review")
    args = ap.parse_args()

    global CONFIG_SRC_BEFORE
    src = CONFIG_SRC_BEFORE = CONFIG.read_text(encoding="utf-8")
    if OWNER_HEADER in src:
        print(f"config.py already holds '{OWNER_HEADER}': the tree is reshaped, nothing to do.")
        return 0
    lib, other = repo_py_files()
    all_py = lib + other
    parsed = {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in all_py}
    plan = plan_moves(src, parsed, lib)
    lib_modules = {p.stem for p in lib}
    sys.path.insert(0, str(ROOT))
    import config as live_config  # the values, for the annotations

    # container kinds: immutable unless a use needs the real thing
    by_owner: dict[str, list[str]] = defaultdict(list)
    for n in sorted(plan.owner, key=lambda n: plan.consts[n].index):
        by_owner[plan.owner[n]].append(n)
    unsafe: dict[str, str] = {}
    mutated: list[str] = []
    for p in all_py:
        tree = parsed[p]
        parents = {c: q for q in ast.walk(tree) for c in ast.iter_child_nodes(q)}
        for n in ast.walk(tree):
            name = None
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in plan.owner:
                name = n.id
            elif isinstance(n, ast.Attribute) and n.attr in plan.owner and isinstance(n.value, ast.Name):
                name = n.attr
            if name:
                safe, mut = use_is_safe(n, parents)
                if mut:
                    mutated.append(f"{p.relative_to(ROOT)}:{n.lineno} {name}")
                if not safe and name not in unsafe:
                    unsafe[name] = f"{p.relative_to(ROOT)}:{n.lineno}"
    kinds: dict[str, str] = {}
    values = {n: getattr(live_config, n) for n in plan.owner}
    for n, v in values.items():
        if isinstance(v, list):
            kinds[n] = "list" if n in unsafe else "tuple"
        elif isinstance(v, dict):
            kinds[n] = "dict" if n in unsafe else "readonly"
        elif isinstance(v, set):
            kinds[n] = "set" if n in unsafe else "frozenset"
        else:
            kinds[n] = "plain"

    import_lines_before = config_import_lines(all_py)
    config_lines_before = len(src.splitlines())

    print("== names moved, per owner ==")
    for mod, names in sorted(by_owner.items(), key=lambda kv: plan.consts[kv[1][0]].index):
        cls, inst, _ = owner_table(mod)
        print(f"{mod}.py -> {inst} ({cls}), {len(names)}:")
        for n in names:
            extra = "" if kinds[n] == "plain" else f"  [{kinds[n]}" + (f", used as such at {unsafe[n]}]" if
                                                                       kinds[n] in ("list", "dict", "set") else "]")
            print(f"    {n} -> {inst}.{plan.field_name[n]}{extra}")
    if mutated:
        print("!! moved containers mutated at:", *mutated, sep="\n   ")
    print(f"== kept plain: {len(plan.kept_reason)} ==")
    reasons = defaultdict(list)
    for n, r in plan.kept_reason.items():
        reasons[re.sub(r"'s .*", "", r) if r.startswith("read by") else r].append(n)
    for r, ns in sorted(reasons.items()):
        print(f"  {r} ({len(ns)}): {', '.join(sorted(ns))}")
    if args.dry_run:
        return 0

    # 1. config.py: remove the moved statements, append the owner sections
    lines = src.splitlines(keepends=True)
    drop = set()
    header_notes = settle_group_comments(plan)
    for n in plan.owner:
        c = plan.consts[n]
        drop |= set(range(c.first_line, c.last_line + 1))
    kept_lines = [line for i, line in enumerate(lines, 1) if i not in drop]
    new = "".join(kept_lines)
    new = re.sub(r"\n{4,}", "\n\n\n", new)
    # a section rule followed directly by another section's rule: that section emptied, its header goes
    rule = "# " + "-" * 75 + "\n"
    r = re.escape(rule)
    new = re.sub(rf"{r}# \d+\.[^\n]*\n(?:#[^\n]*\n)*?{r}(\n*)(?={r})", "", new)
    new = re.sub(r"\n{3,}(?=# ---)", "\n\n", new)
    new = new.replace("from dataclasses import dataclass\n", "from dataclasses import dataclass, field\n", 1)
    if "from types import MappingProxyType" not in new and "readonly" in kinds.values():
        new = new.replace("from pathlib import Path\n",
                          "from pathlib import Path\nfrom types import MappingProxyType\n", 1)
    if "Mapping[" in "".join(annotation(plan.consts[n], values[n], kinds[n]) for n in plan.owner):
        if "from collections.abc import Mapping" not in new:
            new = new.replace("import os\n", "import os\nfrom collections.abc import Mapping\n")
    # the docstring's list of sections
    new = re.sub(r"(\n \d+\. [^\n]*\n(?:    [^\n]*\n)*)(\nMeasured)",
                 r"\1 12. settings owned by one module each: one frozen dataclass and one instance per module\n\2",
                 new, count=1)
    sections = [
        "\n" + rule
        + f"# {OWNER_HEADER} each: a use site names its owner (GENERATOR.default_seed, DASHBOARD.top_servers).\n"
        + "#     Each class holds the knobs only its module reads; the shared vocabulary above stays plain.\n"
        + "#     A test changes one with dataclasses.replace on the module's instance (monkeypatch.setattr).\n"
        + rule.rstrip("\n"),
        HELPERS.rstrip("\n"),
    ]
    for mod, names in sorted(by_owner.items(), key=lambda kv: plan.consts[kv[1][0]].index):
        sections.append(owner_section(src, plan, mod, names, kinds, values))
    new = new.rstrip("\n") + "\n" + "\n".join(sections) + "\n"
    dotted = {n: f"{owner_table(plan.owner[n])[1]}.{plan.field_name[n]}" for n in plan.owner}
    prose_shown: dict[str, list[str]] = {}
    prose_refused: list[str] = []
    new, prose_count, shown, refused = rewrite_prose(new, dotted)
    prose_shown["config.py"] = shown
    prose_refused += [f"config.py:{x}" for x in refused]
    outputs: dict[Path, str] = {CONFIG: new}

    # 2. use sites
    changed: list[Path] = [CONFIG]
    dotted = {n: f"{owner_table(plan.owner[n])[1]}.{plan.field_name[n]}" for n in plan.owner}
    py_text_count = 0
    for p in all_py:
        text = p.read_text(encoding="utf-8")
        fr = FileRewrite(p, text, parsed[p], plan, lib_modules)
        out = fr.apply() if fr.run() else text
        out, k = rewrite_py_text(out, dotted)
        py_text_count += k
        if p.name == "build_notebook.py":
            out = rewrite_notebook_cells(out, plan, dotted)
        out, k, shown, refused = rewrite_prose(out, dotted)
        prose_count += k
        rel = str(p.relative_to(ROOT))
        prose_shown[rel] = shown
        prose_refused += [f"{rel}:{x}" for x in refused]
        if out != text:
            outputs[p] = out
            changed.append(p)
    # 3. docs
    doc_count = 0
    for p in markdown_files():
        text = p.read_text(encoding="utf-8")
        out, k, shown = rewrite_doc(text, dotted)
        if k:
            doc_count += k
            prose_shown[str(p.relative_to(ROOT))] = shown
            outputs[p] = out
            changed.append(p)
    long_left: list[str] = []
    for p, out in outputs.items():
        if p.suffix == ".py":
            before = CONFIG_SRC_BEFORE if p == CONFIG else p.read_text(encoding="utf-8")
            outputs[p], left = wrap_long_lines(out, before)
            long_left += [f"{p.relative_to(ROOT)}:{x}" for x in left]
    for p, out in outputs.items():  # nothing is written before every file was rewritten in memory
        ORIGINAL[p] = p.read_text(encoding="utf-8")
        p.write_text(out, encoding="utf-8")
    # 4. imports sorted and trimmed, then the whole tree checked
    py_changed = [str(p) for p in changed if p.suffix == ".py"]
    ruff = [sys.executable, "-m", "ruff"]
    venv_ruff = Path(sys.executable).with_name("ruff")
    if venv_ruff.exists():
        ruff = [str(venv_ruff)]
    if not args.no_ruff:
        subprocess.run([*ruff, "check", "--select", "I,F401", "--fix", "--quiet", *py_changed], cwd=ROOT, check=False)
    nb_builder = ROOT / "tools" / "build_notebook.py"
    if nb_builder in changed:
        subprocess.run([sys.executable, str(nb_builder)], cwd=ROOT, check=True)
        changed.append(ROOT / "_StartHere.ipynb")
    import_lines_after = config_import_lines(all_py)
    config_lines_after = len(CONFIG.read_text(encoding="utf-8").splitlines())
    if args.verbose:
        print("== prose rewritten (comments, docstrings, strings, Markdown) ==")
        for f, shown in sorted(prose_shown.items()):
            if shown:
                print(f"  {f}:", *shown, sep="\n      ")
    print("== summary ==")
    print(f"moved: {len(plan.owner)} names into {len(by_owner)} owner instances; kept plain: {len(plan.kept_reason)}")
    print("  per owner: " + ", ".join(f"{owner_table(m)[1]} {len(ns)}" for m, ns in
                                      sorted(by_owner.items(), key=lambda kv: plan.consts[kv[1][0]].index)))
    print("  kept plain: " + ", ".join(f"{r} {len(ns)}" for r, ns in sorted(reasons.items(), key=lambda kv: kv[0])))
    print(f"'from config import' lines: {import_lines_before} -> {import_lines_after}")
    print(f"config.py lines: {config_lines_before} -> {config_lines_after}")
    print(f"files changed: {len(changed)}; config.X in .py text: {py_text_count}; bare names in .py prose: "
          f"{prose_count}; Markdown mentions: {doc_count}")
    if header_notes:
        print(f"-- comment blocks over a split group ({len(header_notes)}): kept in config.py where a statement "
              "stays; copied to the owner of the statement under it (to every owner when none stays):",
              *header_notes, sep="\n   ")
    if plan.notes:
        print("-- naming notes:", *plan.notes, sep="\n   ")
    if prose_refused:
        print("-- strings that are only a moved name (identifiers as data, left alone: check by hand):",
              *prose_refused, sep="\n   ")
    mentions = []
    late = old_name_pattern(dotted, after_dot=True)
    for p in [CONFIG, *all_py, *markdown_files()]:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".py":
            starts = offsets(text)
            spans = [(bisect.bisect_right(starts, a), text[a:b]) for _, a, b in prose_tokens(text)]
        else:
            spans = list(enumerate(text.split("\n"), 1))
        for ln, t in spans:
            found = sorted(set(late.findall(t)))
            if found:
                mentions.append(f"{p.relative_to(ROOT)}:{ln} {found}")
    print(f"-- old names still in comments/strings/Markdown: {len(mentions)}", *mentions, sep="\n   ")
    deploy = []
    for p in sorted((ROOT / "deploy").rglob("*")) if (ROOT / "deploy").is_dir() else []:
        if p.is_file() and p.suffix not in (".png", ".gz", ".ico"):
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            for ln, line in enumerate(text.split("\n"), 1):
                if late.search(line):
                    deploy.append(f"{p.relative_to(ROOT)}:{ln} {sorted(set(late.findall(line)))}")
    if deploy:
        print(f"-- deploy/ files naming moved names (not rewritten: check by hand): {len(deploy)}", *deploy,
              sep="\n   ")
    long_now = []
    for p in changed:
        if p.suffix in (".py",):
            before = {ln for ln in (CONFIG_SRC_BEFORE if p == CONFIG else ORIGINAL.get(p, "")).splitlines()}
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if len(line) > LINE_LENGTH:
                    long_now.append(f"{p.relative_to(ROOT)}:{n} ({len(line)}{', as before' if line in before else ''})"
                                    f" {line.strip()[:70]}")
    print(f"-- lines over {LINE_LENGTH} characters in the changed files: {len(long_now)}", *long_now, sep="\n   ")
    if not args.no_ruff:
        r = subprocess.run([*ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
        print("ruff check .:", "clean" if r.returncode == 0 else "NOT clean (fix by hand):\n" + r.stdout[-4000:])
    return 0


def markdown_files() -> list[Path]:
    """The prose the rewrite keeps true: README.md and Docs/**/*.md (CHANGELOG.md is history: never rewritten)."""
    return sorted([ROOT / "README.md", *(ROOT / "Docs").rglob("*.md")])


def rewrite_notebook_cells(src: str, plan: Plan, dotted: dict[str, str]) -> str:
    """The notebook's code cells are strings in build_notebook.py: config.NAME and bare NAME (imported from config
    in a cell) of moved names are rewritten textually; an import from config inside a cell is fixed up too."""
    alt = "|".join(sorted(map(re.escape, dotted), key=len, reverse=True))
    if not re.search(rf"(?<![\w.])({alt})(?!\w)", src):
        return src
    return re.sub(rf"(?<![\w.])config\.({alt})(?!\w)", lambda m: "config." + dotted[m.group(1)], src)


if __name__ == "__main__":
    sys.exit(main())
