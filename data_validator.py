"""Gate data against the LINBORG data contract (Docs/DATA_CONTRACT.md).

    python data_validator.py training/server_metrics.parquet      # exit 0 valid, 1 invalid
    python main.py validate training/server_metrics.parquet

``DataValidator(strict=True).validate_schema(df)`` returns ``(is_valid, errors, warnings)``.
Every issue says what went wrong, why it matters, how to fix it and which doc to read.

strict=True (the training gate) treats every contract violation as an error. strict=False
(exploring a foreign export) downgrades the violations that can be repaired without losing
information - whole numbers stored as floats, timestamps off the 5-minute grid, CPU parts
that do not add up - to warnings. Gaps in a server's series are always warnings: real
fleets lose samples.

A file is read within ``ReadLimits`` (``VALIDATOR.max_rows`` / ``VALIDATOR.max_bytes``, ``--max-rows`` /
``--max-bytes``): a Parquet file over them is refused from its footer, before it is decoded; a CSV stops
at the limit. The same bounded readers serve the trace importer.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import logging
import lzma
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common_utils import is_valid_server_name, name_matches_profile, setup_logging
from config import (
    CPU_COMPONENTS,
    CPU_SUM_TOLERANCE,
    DATA_CONTRACT_DOC,
    DEPRECATED_COLUMNS,
    INTEGER_METRICS,
    LINBORG_METRICS,
    METRIC_RANGES,
    PROFILE_NAME_DIGITS,
    PROFILE_PREFIXES,
    REQUIRED_COLUMNS,
    SAMPLING_INTERVAL_SECONDS,
    SERVER_PROFILES_DOC,
    VALID_PROFILES,
    VALID_STATES,
    VALIDATOR,
    VALIDATOR_MAX_EXAMPLES,
)
from contract import NS_PER_BUCKET
from errors import EXIT_NEGATIVE, EXIT_OK, ToolkitError, UsageError, render_message, run_cli

logger = logging.getLogger(__name__)
_STRING_COLUMNS = ["server_name", "profile", "state"]


@dataclass
class ValidationIssue:
    """One finding: what, why, fix and doc, plus how many rows and a few examples."""

    check: str
    column: str | None
    what: str
    why: str
    fix: str
    doc: str = DATA_CONTRACT_DOC
    count: int = 0
    examples: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        where = f"column '{self.column}': " if self.column else ""
        rows = f" ({self.count:,} rows)" if self.count else ""
        examples = f". Examples: {self.examples}" if self.examples else ""
        return render_message(f"[{self.check}] {where}{self.what}{rows}{examples}", self.why, self.fix, self.doc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"check": self.check, "column": self.column, "what": self.what, "why": self.why, "fix": self.fix,
                "doc": self.doc, "count": self.count, "examples": [str(e) for e in self.examples]}


class DataValidator:
    """Checks a LINBORG frame against the data contract."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict

    # ------------------------------------------------------------------ public API
    def validate_schema(self, df: pd.DataFrame) -> tuple[bool, list[ValidationIssue], list[ValidationIssue]]:
        """Validate ``df``; returns ``(is_valid, errors, warnings)``."""
        errors: list[ValidationIssue] = []
        warnings: list[ValidationIssue] = []
        if len(df) == 0:
            errors.append(ValidationIssue("empty", None, "the data has no rows",
                                          "there is nothing to train on or forecast from",
                                          "check the export or generator run that produced the file"))
            return False, errors, warnings
        present = self._check_columns(df, errors, warnings)
        timestamps = self._check_timestamps(df, errors) if "timestamp" in present else None
        self._check_nans(df, present, errors)
        self._check_categories(df, present, errors)
        self._check_metric_types(df, present, errors, warnings)
        self._check_ranges(df, present, errors)
        self._check_cpu_invariant(df, present, errors, warnings)
        if timestamps is not None and "server_name" in present:
            self._check_series(df, timestamps, errors, warnings)
        return not errors, errors, warnings

    def validate_file(self, path: str | Path, limits: ReadLimits | None = None
                      ) -> tuple[bool, list[ValidationIssue], list[ValidationIssue]]:
        """Read a Parquet (or small CSV) file within ``limits`` (default ``VALIDATE_LIMITS``) and validate it.

        Raises :class:`InputLimitError` for a file over the limits, before it is decoded.
        """
        return self.validate_schema(load_frame(path, limits=limits or VALIDATE_LIMITS))

    # ------------------------------------------------------------------ helpers
    def _soft(self, issue: ValidationIssue, errors: list[ValidationIssue], warnings: list[ValidationIssue]) -> None:
        """An error in strict mode, a warning otherwise."""
        (errors if self.strict else warnings).append(issue)

    @staticmethod
    def _examples(df: pd.DataFrame, mask: np.ndarray, column: str | None = None) -> list[str]:
        idx = np.flatnonzero(mask)[:VALIDATOR_MAX_EXAMPLES]
        out = []
        for i in idx:
            server = df["server_name"].iloc[i] if "server_name" in df else "?"
            value = f"={df[column].iloc[i]!r}" if column else ""
            out.append(f"row {i} ({server}){value}")
        return out

    def _check_columns(self, df: pd.DataFrame, errors: list[ValidationIssue],
                       warnings: list[ValidationIssue]) -> set[str]:
        columns = set(df.columns)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        for column in missing:
            errors.append(ValidationIssue(
                "missing_column", column, "required column is missing",
                "the model and the risk rules read all 18 contract columns",
                f"add '{column}' to the export (LINBORG v2 names, exact spelling)"))
        deprecated = [c for c in DEPRECATED_COLUMNS if c in columns]
        for column in deprecated:
            errors.append(ValidationIssue(
                "deprecated_column", column, "column from the retired pre-LINBORG schema",
                "data carrying it came from the old pipeline and mixes two schemas",
                "regenerate the data with metrics_generator.py or map the export to LINBORG v2 names"))
        extra = sorted(columns - set(REQUIRED_COLUMNS) - set(deprecated))
        if extra:
            warnings.append(ValidationIssue(
                "extra_columns", None, f"columns outside the contract are ignored: {extra[:10]}",
                "they are not used by training or inference", "drop them to keep files small"))
        return columns - set(missing)

    def _check_timestamps(self, df: pd.DataFrame, errors: list[ValidationIssue]) -> np.ndarray | None:
        column = df["timestamp"]
        if pd.api.types.is_datetime64_any_dtype(column):
            parsed = column
        else:
            parsed = pd.to_datetime(column, utc=True, errors="coerce", format="ISO8601")
            bad = parsed.isna().to_numpy() & column.notna().to_numpy()
            if bad.any():
                errors.append(ValidationIssue(
                    "unparsable_timestamp", "timestamp", "values are not ISO 8601 timestamps",
                    "rows without a valid time cannot be placed on the 5-minute grid",
                    "write timestamps as ISO 8601 UTC, e.g. 2026-01-05T09:35:00Z",
                    count=int(bad.sum()), examples=self._examples(df, bad, "timestamp")))
                return None
        if parsed.isna().any():
            return None  # reported by the NaN check
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        return parsed.dt.as_unit("ns").to_numpy().view(np.int64)

    def _check_nans(self, df: pd.DataFrame, present: set[str], errors: list[ValidationIssue]) -> None:
        for column in [c for c in REQUIRED_COLUMNS if c in present]:
            mask = df[column].isna().to_numpy()
            if mask.any():
                errors.append(ValidationIssue(
                    "missing_values", column, "missing values (NaN/null)",
                    "the contract allows no gaps inside a row; a bucket without samples is written "
                    "as an offline row, not as NaN",
                    "fill the row per the contract's offline rule (dense mode) or drop it (sparse mode)",
                    count=int(mask.sum()), examples=self._examples(df, mask)))

    def _check_categories(self, df: pd.DataFrame, present: set[str], errors: list[ValidationIssue]) -> None:
        for column in [c for c in _STRING_COLUMNS if c in present]:
            dtype = df[column].dtype
            if not (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype)
                    or pd.api.types.is_string_dtype(dtype)):
                errors.append(ValidationIssue(
                    "wrong_dtype", column, f"expected text, found {dtype}",
                    "names, profiles and states are strings in the contract",
                    f"write '{column}' as a string column"))
        for column, valid, doc in (("state", VALID_STATES, DATA_CONTRACT_DOC),
                                   ("profile", VALID_PROFILES, SERVER_PROFILES_DOC)):
            if column not in present:
                continue
            codes, uniques = pd.factorize(df[column])
            unknown = sorted(str(u) for u in uniques if str(u) not in valid)
            if unknown:
                bad_codes = [i for i, u in enumerate(uniques) if str(u) not in valid]
                mask = np.isin(codes, bad_codes)
                errors.append(ValidationIssue(
                    f"unknown_{column}", column, f"unknown values {unknown[:10]}",
                    f"the model knows exactly these {len(valid)}: {valid}",
                    f"map each value to one of {valid}", doc=doc,
                    count=int(mask.sum()), examples=self._examples(df, mask, column)))
        if {"server_name", "profile"} <= present:
            pairs = df[["server_name", "profile"]].drop_duplicates().astype(str)
            malformed = sorted({n for n in pairs["server_name"] if not is_valid_server_name(n)})
            if malformed:
                errors.append(ValidationIssue(
                    "bad_server_name", "server_name", f"{len(malformed)} server names are not host names",
                    "names are keys in the store, the API's URLs and the dashboard",
                    "use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
                    doc=DATA_CONTRACT_DOC, count=len(malformed), examples=malformed[:VALIDATOR_MAX_EXAMPLES]))
            bad = [(n, p) for n, p in pairs.itertuples(index=False)
                   if p in PROFILE_PREFIXES and not name_matches_profile(n, p)]
            if bad:
                hint = ", ".join(f"{p}: {PROFILE_PREFIXES[p]}{'#' * PROFILE_NAME_DIGITS[p]}"
                                 for p in sorted({p for _, p in bad}))
                errors.append(ValidationIssue(
                    "name_profile_mismatch", "server_name",
                    f"{len(bad)} convention names (<prefix><digits>) carry another profile's prefix",
                    "the profile is inferred from a convention name for new servers, so a mismatch sends the "
                    "model the wrong role", f"rename the hosts or fix their profile ({hint})",
                    doc=SERVER_PROFILES_DOC, count=len(bad),
                    examples=[f"{n} labelled {p}" for n, p in bad[:VALIDATOR_MAX_EXAMPLES]]))
            per_server = pairs.groupby("server_name")["profile"].nunique()
            switching = per_server[per_server > 1].index.tolist()
            if switching:
                errors.append(ValidationIssue(
                    "profile_changes", "profile", f"{len(switching)} servers carry more than one profile",
                    "profile is a static property of a server; two values confuse the model",
                    "give each server one profile for its whole history", doc=SERVER_PROFILES_DOC,
                    count=len(switching), examples=switching[:VALIDATOR_MAX_EXAMPLES]))

    def _check_metric_types(self, df: pd.DataFrame, present: set[str], errors: list[ValidationIssue],
                            warnings: list[ValidationIssue]) -> None:
        for column in [c for c in LINBORG_METRICS if c in present]:
            dtype = df[column].dtype
            if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
                errors.append(ValidationIssue(
                    "wrong_dtype", column, f"expected a number, found {dtype}",
                    "metrics are numeric in the contract", f"write '{column}' as a number (no units or text)"))
                continue
            if column in INTEGER_METRICS and not pd.api.types.is_integer_dtype(dtype):
                values = df[column].to_numpy(dtype=float)
                fractional = np.isfinite(values) & (values != np.round(values))
                if fractional.any():
                    errors.append(ValidationIssue(
                        "not_integer", column, "fractional values in an integer column",
                        "connection counts and uptime days are whole numbers",
                        f"round or recount '{column}' as integers", count=int(fractional.sum()),
                        examples=self._examples(df, fractional, column)))
                else:
                    self._soft(ValidationIssue(
                        "wrong_dtype", column, f"integer column stored as {dtype}",
                        "counts are integers in the contract", f"cast '{column}' to an integer type"),
                        errors, warnings)

    def _check_ranges(self, df: pd.DataFrame, present: set[str], errors: list[ValidationIssue]) -> None:
        for column in [c for c in LINBORG_METRICS if c in present]:
            if not pd.api.types.is_numeric_dtype(df[column].dtype):
                continue
            values = df[column].to_numpy(dtype=float)
            low, high = METRIC_RANGES[column]
            mask = values < low
            if high is not None:
                mask |= values > high
            mask &= np.isfinite(values)
            if mask.any():
                bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
                errors.append(ValidationIssue(
                    "out_of_range", column, f"values outside the contract range {bounds}",
                    "out-of-range values come from a unit or collection bug and would mislead the model",
                    f"fix the collector's units for '{column}' or drop the bad rows",
                    count=int(mask.sum()), examples=self._examples(df, mask, column)))
            inf = ~np.isfinite(values) & ~np.isnan(values)
            if inf.any():
                errors.append(ValidationIssue(
                    "not_finite", column, "infinite values", "the model cannot learn from infinities",
                    f"replace them in '{column}' with measured values", count=int(inf.sum()),
                    examples=self._examples(df, inf, column)))

    def _check_cpu_invariant(self, df: pd.DataFrame, present: set[str], errors: list[ValidationIssue],
                             warnings: list[ValidationIssue]) -> None:
        if not set(CPU_COMPONENTS) <= present:
            return
        if not all(pd.api.types.is_numeric_dtype(df[c].dtype) for c in CPU_COMPONENTS):
            return
        total = sum(df[c].to_numpy(dtype=float) for c in CPU_COMPONENTS)
        mask = np.abs(total - 100.0) > CPU_SUM_TOLERANCE
        mask &= np.isfinite(total)
        if mask.any():
            self._soft(ValidationIssue(
                "cpu_sum", "cpu_idle_pct",
                f"cpu_user + cpu_sys + cpu_iowait + cpu_idle is not 100 (+/- {CPU_SUM_TOLERANCE})",
                "the four parts describe one CPU; a bad sum means a unit or sampling bug, and 'CPU used' "
                "(100 - idle) would be wrong", "derive the four parts from the same /proc/stat sample",
                count=int(mask.sum()), examples=self._examples(df, mask)), errors, warnings)
        if "java_cpu_pct" in present and pd.api.types.is_numeric_dtype(df["java_cpu_pct"].dtype):
            busy = df["cpu_user_pct"].to_numpy(dtype=float) + df["cpu_sys_pct"].to_numpy(dtype=float)
            over = df["java_cpu_pct"].to_numpy(dtype=float) > busy + CPU_SUM_TOLERANCE
            if over.any():
                warnings.append(ValidationIssue(
                    "java_above_busy", "java_cpu_pct", "Java CPU exceeds user + sys CPU",
                    "Java processes cannot use more CPU than the whole box is busy",
                    "measure java_cpu_pct as a share of the whole host", count=int(over.sum()),
                    examples=self._examples(df, over, "java_cpu_pct")))

    def _check_series(self, df: pd.DataFrame, ts: np.ndarray, errors: list[ValidationIssue],
                      warnings: list[ValidationIssue]) -> None:
        codes, _ = pd.factorize(df["server_name"], sort=False)
        # File order within each server must be increasing.
        order = np.argsort(codes, kind="stable")
        c_sorted, t_sorted = codes[order], ts[order]
        same = c_sorted[1:] == c_sorted[:-1]
        backwards = same & (t_sorted[1:] < t_sorted[:-1])
        if backwards.any():
            rows = order[1:][backwards]
            mask = np.zeros(len(df), dtype=bool)
            mask[rows] = True
            errors.append(ValidationIssue(
                "non_monotonic_timestamps", "timestamp", "timestamps go backwards within a server",
                "the model reads each server's history in time order; out-of-order rows scramble it",
                "sort by server_name, timestamp before writing", count=int(backwards.sum()),
                examples=self._examples(df, mask, "timestamp")))
        # Duplicates (server, timestamp).
        order = np.lexsort((ts, codes))
        c_sorted, t_sorted = codes[order], ts[order]
        dup = (c_sorted[1:] == c_sorted[:-1]) & (t_sorted[1:] == t_sorted[:-1])
        if dup.any():
            mask = np.zeros(len(df), dtype=bool)
            mask[order[1:][dup]] = True
            errors.append(ValidationIssue(
                "duplicate_rows", "timestamp", "more than one row for the same server and bucket",
                "a bucket must have exactly one value per metric", "aggregate samples per 5-minute bucket "
                "(Docs/DATA_CONTRACT.md, bucketing rule) and drop duplicates", count=int(dup.sum()),
                examples=self._examples(df, mask, "timestamp")))
        off_grid = ts % NS_PER_BUCKET != 0
        if off_grid.any():
            self._soft(ValidationIssue(
                "off_grid", "timestamp", f"timestamps not on the {SAMPLING_INTERVAL_SECONDS // 60}-minute grid",
                "every row stands for one 5-minute bucket; horizons are counted in buckets",
                "floor each timestamp to its bucket start (e.g. 09:37:12 -> 09:35:00)",
                count=int(off_grid.sum()), examples=self._examples(df, off_grid, "timestamp")), errors, warnings)
        step = np.diff(t_sorted)[c_sorted[1:] == c_sorted[:-1]]
        gaps = step > NS_PER_BUCKET
        irregular = (step % NS_PER_BUCKET != 0) & (step > 0)
        if gaps.any():
            warnings.append(ValidationIssue(
                "gaps", "timestamp", f"{int(gaps.sum()):,} gaps longer than one bucket "
                f"(longest {int(step.max() // NS_PER_BUCKET)} buckets)",
                "missing buckets shorten the usable history around them",
                "use dense offline mode (an offline row per missing bucket) or accept the gaps"))
        if irregular.any():
            warnings.append(ValidationIssue(
                "irregular_intervals", "timestamp", f"{int(irregular.sum()):,} intervals are not whole buckets",
                "samples between buckets are aggregated away", "bucket samples to 5-minute boundaries"))


# ---------------------------------------------------------------------------- bounded reading
class InputLimitError(ToolkitError, ValueError):
    """An input over a configured read limit, refused before it is decoded; the message says what, why,
    how to raise the limit and which doc."""


@dataclass(frozen=True)
class ReadLimits:
    """At most how much a command decodes from the files it is given, and how an operator raises it.

    ``max_rows`` bounds rows: a Parquet file's footer says how many it holds before any data page is
    read; a CSV is read one row past the limit, no further. ``max_bytes`` bounds the uncompressed bytes
    of the Parquet columns read (also from the footer) and the bytes of CSV text read (after
    decompression). Text columns of a Parquet file are decoded as dictionaries, so a long value
    repeated on every row is held once, not once per row.
    """

    max_rows: int
    max_bytes: int
    command: str = "main.py validate"
    rows_setting: str = "--max-rows (VALIDATOR.max_rows in config.py)"
    bytes_setting: str = "--max-bytes (VALIDATOR.max_bytes in config.py)"
    doc: str = f"{DATA_CONTRACT_DOC} (Validating)"

    def too_many_rows(self, what: str) -> InputLimitError:
        """The refusal for ``what`` (e.g. "x.parquet holds 10,000,000 rows") over ``max_rows``."""
        return InputLimitError(
            f"{what}, more than the {self.max_rows:,} rows {self.command} reads at most",
            "every row costs memory once decoded, and compressed data can hold far more rows than its size "
            "suggests (a 46 KB Parquet file can decode into 10 M rows); the input is refused before it is decoded",
            f"if the data is genuine, raise the limit with {self.rows_setting} on a machine with the memory, or "
            f"split the input", self.doc)

    def too_many_bytes(self, what: str) -> InputLimitError:
        """The refusal for ``what`` (e.g. "x.csv is longer than ...") over ``max_bytes``."""
        return InputLimitError(
            f"{what}, more than the {self.max_bytes:,} bytes {self.command} decodes at most",
            "decoded data is held in memory, and a compressed file can expand to far more than its size on disk; "
            "the input is refused before (Parquet) or while (CSV) it is decoded, at the limit",
            f"if the data is genuine, raise the limit with {self.bytes_setting}, drop the columns nobody reads, or "
            f"split the input", self.doc)


VALIDATE_LIMITS = ReadLimits(max_rows=VALIDATOR.max_rows, max_bytes=VALIDATOR.max_bytes)
# Compressed CSV the bounded reader opens itself (so it can count the decompressed bytes); archives it
# refuses rather than read as text.
_CSV_DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_CSV_ARCHIVES = (".zip", ".zst", ".zstd", ".tar", ".tgz", ".7z")


def parquet_footer(path: str | Path) -> tuple[int, dict[str, int]]:
    """Rows and uncompressed bytes per top-level column, from ``path``'s footer alone (no data is read)."""
    meta = pq.read_metadata(path)
    names = set(meta.schema.to_arrow_schema().names)
    sizes: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            name = chunk.path_in_schema  # "a" for a flat column, "a.list.element" inside a nested one
            while name not in names and "." in name:
                name = name.rsplit(".", 1)[0]
            sizes[name] = sizes.get(name, 0) + int(chunk.total_uncompressed_size)
    return int(meta.num_rows), sizes


def read_parquet_bounded(path: str | Path, limits: ReadLimits, columns: list[str] | None = None,
                         rows_before: int = 0, bytes_before: int = 0) -> tuple[pd.DataFrame, int]:
    """Read ``columns`` (all when None) of a Parquet file within ``limits``; returns the frame and the
    uncompressed bytes read.

    The footer is checked first: more rows than ``limits.max_rows - rows_before`` or more uncompressed
    bytes than ``limits.max_bytes - bytes_before`` raises :class:`InputLimitError` before anything is
    decoded (``rows_before``/``bytes_before``: what earlier files of the same command already took).
    """
    path = Path(path)
    rows, sizes = parquet_footer(path)
    nbytes = sum(sizes.values()) if columns is None else sum(sizes.get(c, 0) for c in columns)
    if rows_before + rows > limits.max_rows:
        earlier = f" (after {rows_before:,} rows of earlier files)" if rows_before else ""
        raise limits.too_many_rows(f"{path.name} holds {rows:,} rows{earlier}")
    if bytes_before + nbytes > limits.max_bytes:
        earlier = f" (after {bytes_before:,} bytes of earlier files)" if bytes_before else ""
        raise limits.too_many_bytes(f"{path.name}'s columns read hold {nbytes:,} bytes uncompressed{earlier}")
    schema = pq.read_schema(path)
    wanted = set(schema.names if columns is None else columns)
    text = [f.name for f in schema if f.name in wanted and any(
        is_kind(f.type) for is_kind in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                                        pa.types.is_large_binary))]
    table = pq.read_table(path, columns=columns, read_dictionary=text or None, use_pandas_metadata=True)
    logger.debug("%s: %d rows, %d bytes uncompressed", path.name, rows, nbytes)
    return table.to_pandas(), nbytes


class _ByteBudget:
    """A binary reader that hands out at most ``budget`` bytes of ``raw``, then raises ``refusal()``."""

    def __init__(self, raw: IO[bytes], budget: int, refusal: Callable[[], Exception]) -> None:
        self.raw, self.budget, self.refusal, self.used = raw, budget, refusal, 0

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (never more than the budget plus one, which is how an overrun is seen)."""
        room = self.budget - self.used + 1
        data = self.raw.read(room if size is None or size < 0 else min(size, room))
        self.used += len(data)
        if self.used > self.budget:
            raise self.refusal()
        return data


def read_csv_bounded(path: str | Path, limits: ReadLimits, rows_before: int = 0, bytes_before: int = 0,
                     **read_csv_args: Any) -> tuple[pd.DataFrame, int]:
    """``pandas.read_csv`` within ``limits``; returns the frame and the bytes of text read.

    Reads at most one row past ``limits.max_rows - rows_before`` (fewer with a caller's ``nrows``) and at most
    ``limits.max_bytes - bytes_before`` bytes of text (``.gz``, ``.bz2`` and ``.xz`` files counted after
    decompression); either overrun raises :class:`InputLimitError`.
    """
    path = Path(path)
    if path.suffix.lower() in _CSV_ARCHIVES:
        raise UsageError(
            f"{path.name}: {path.suffix} files are not read",
            "the reader counts the bytes it decompresses, to bound memory, and does so for gzip, bzip2 and xz only",
            "decompress it, or recompress it with gzip (.csv.gz)", limits.doc)
    room = limits.max_rows - rows_before
    if room < 0:
        raise limits.too_many_rows(f"{path.name} comes after {rows_before:,} rows of earlier files")
    opener = _CSV_DECOMPRESSORS.get(path.suffix.lower(), open)
    budget = limits.max_bytes - bytes_before
    earlier = f" (after {bytes_before:,} bytes of earlier files)" if bytes_before else ""
    with opener(path, "rb") as raw:
        reader = _ByteBudget(raw, budget, lambda: limits.too_many_bytes(
            f"{path.name} holds more than {budget:,} bytes of text{earlier}"))
        wanted = read_csv_args.pop("nrows", None)  # a caller's own nrows (e.g. 0: the header only)
        frame = pd.read_csv(reader, nrows=room + 1 if wanted is None else min(wanted, room + 1), **read_csv_args)
    if len(frame) > room:
        earlier = f" (after {rows_before:,} rows of earlier files)" if rows_before else ""
        raise limits.too_many_rows(f"{path.name} holds more than {room:,} rows{earlier}")
    return frame, reader.used


def load_frame(path: str | Path, columns: list[str] | None = None,
               limits: ReadLimits | None = None) -> pd.DataFrame:
    """Read a LINBORG Parquet file (or CSV) into a DataFrame.

    ``limits``: refuse a file over them before decoding it (:class:`InputLimitError`); pass them for
    any file this process did not write itself (``validate_file`` and ``main.py validate`` use
    ``VALIDATE_LIMITS``). None reads the whole file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"Data file {path} not found. Fix: generate one with `python main.py generate` or pass the right "
            f"path. See {DATA_CONTRACT_DOC} (Files).")
    if limits is not None:
        if path.suffix == ".csv":
            return read_csv_bounded(path, limits, usecols=columns)[0]
        return read_parquet_bounded(path, limits, columns)[0]
    if path.suffix == ".csv":
        return pd.read_csv(path, usecols=columns)
    return pd.read_parquet(path, columns=columns)


def format_report(path: str | Path, n_rows: int, is_valid: bool, errors: list[ValidationIssue],
                  warnings: list[ValidationIssue], seconds: float) -> str:
    """Human-readable validation report."""
    lines = [f"{'VALID' if is_valid else 'INVALID'}: {path} ({n_rows:,} rows, checked in {seconds:.2f}s)"]
    for label, issues in (("ERROR", errors), ("WARNING", warnings)):
        for issue in issues:
            lines.append(f"  {label} {issue}")
    if not is_valid:
        lines.append(f"{len(errors)} error(s). The data does not meet contract {DATA_CONTRACT_DOC}; "
                     f"training refuses it until they are fixed.")
    return "\n".join(lines)


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the validator (shared with ``main.py validate``)."""
    parser = parser or argparse.ArgumentParser(description="Validate LINBORG data against the data contract.")
    parser.add_argument("path", type=Path, help="Parquet (or CSV) file to check")
    parser.add_argument("--lenient", action="store_true",
                        help="downgrade repairable violations to warnings (default: strict)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--max-rows", type=int, default=VALIDATOR.max_rows, metavar="N",
                        help=f"refuse, before decoding it, a file of more rows (default {VALIDATOR.max_rows:,})")
    parser.add_argument("--max-bytes", type=int, default=VALIDATOR.max_bytes, metavar="N",
                        help="refuse a file whose data is larger once decompressed (Parquet: from its footer; "
                             f"default {VALIDATOR.max_bytes:,})")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Validate the file named in ``args``; 0 when valid, 1 when not; an unreadable file or one over the limits
    raises (exit 2, ``errors.run_cli``)."""
    import json

    began = time.perf_counter()
    limits = ReadLimits(max_rows=getattr(args, "max_rows", VALIDATOR.max_rows),
                        max_bytes=getattr(args, "max_bytes", VALIDATOR.max_bytes))
    frame = load_frame(args.path, limits=limits)
    is_valid, errors, warnings = DataValidator(strict=not args.lenient).validate_schema(frame)
    seconds = time.perf_counter() - began
    if args.json:
        print(json.dumps({"path": str(args.path), "rows": len(frame), "valid": is_valid,
                          "errors": [e.to_dict() for e in errors], "warnings": [w.to_dict() for w in warnings],
                          "seconds": round(seconds, 3)}, indent=2))
    else:
        print(format_report(args.path, len(frame), is_valid, errors, warnings, seconds))
    return EXIT_OK if is_valid else EXIT_NEGATIVE


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    setup_logging()
    return run_cli(run_from_args, build_arg_parser().parse_args(argv), "validate failed")


if __name__ == "__main__":
    sys.exit(main())
