"""Presentation for the inspect commands: result tables as text/CSV/JSON, info and history for people.

Imports pyarrow only (already loaded by every command); no deltalake, duckdb or PIL.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

MAX_CELL = 120
"""Longest line of a cell in text tables; longer lines end with an ellipsis."""


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def text_table(table: pa.Table, *, max_cell: int = MAX_CELL) -> str:
    """An aligned text table (multi-line cells kept, long lines cut); numbers right-aligned."""
    names = table.column_names
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
               for t in table.schema.types]
    columns = [c.to_pylist() for c in table.columns]  # by position: two columns may share a name (a self-join)
    rows = [[[(line if len(line) <= max_cell else line[:max_cell - 1] + "…") for line in _cell(v).split("\n")]
             for v in values] for values in zip(*columns, strict=True)] if columns else []
    widths = [max([len(n)] + [max(len(x) for x in r[i]) for r in rows]) for i, n in enumerate(names)]
    out = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for row in rows:
        for k in range(max(len(c) for c in row) if row else 0):
            parts = []
            for i, lines in enumerate(row):
                text = lines[k] if k < len(lines) else ""
                parts.append(text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i]))
            out.append("  ".join(parts).rstrip())
    return "\n".join(out) + "\n"


def csv_text(table: pa.Table) -> str:
    """The table as CSV with a header row (pyarrow's writer)."""
    import pyarrow.csv as pacsv

    for i, field in enumerate(table.schema):  # lists, structs and maps: as JSON text (CSV has no nesting)
        if pa.types.is_nested(field.type):
            text = [None if v is None else json.dumps(_clean(v), default=_json_default, allow_nan=False)
                    for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(text, pa.string()))
    sink = io.BytesIO()
    pacsv.write_csv(table, sink)
    return sink.getvalue().decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def json_rows(table: pa.Table) -> str:
    """A JSON array of row objects, one row per line (NaN/inf become null).

    Raises:
        QueryError: two columns share a name (one would silently replace the other in each object).
    """
    from idxlake.schemas.errors import QueryError

    shared = sorted({n for n in table.column_names if table.column_names.count(n) > 1})
    if shared:
        raise QueryError(f"columns {', '.join(map(repr, shared))} appear more than once; JSON rows need distinct "
                         "names: alias them with AS (SELECT a.id AS a_id, b.id AS b_id ...)")
    rows = [json.dumps(_clean(r), default=_json_default, allow_nan=False) for r in table.to_pylist()]
    return "[\n" + ",\n".join(rows) + ("\n" if rows else "") + "]\n"


def json_document(doc: Any) -> str:
    """A JSON document, indented, keys in insertion order (NaN/inf become null)."""
    return json.dumps(_clean(doc), indent=2, default=_json_default, allow_nan=False) + "\n"


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _grid(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return text_table(pa.table({h: [r[i] for r in rows] for i, h in enumerate(header)})).rstrip("\n").split("\n")


def lineage_summary(lineage: dict[str, Any] | None) -> str:
    """One line for a commit's lineage."""
    if not lineage:
        return ""
    if lineage.get("operation") == "optimize":
        files = ", ".join(f"{s} {v['before']}->{v['after']} files" for s, v in lineage.get("files", {}).items())
        return f"idxlake optimize: {files}"
    if "sources" in lineage:
        rows = ", ".join(f"{s} {n:,}" for s, n in (lineage.get("rows") or {}).items())
        names = sorted({f["name"] for fs in lineage["sources"].values() for f in fs})
        verified = "sources verified" if lineage.get("verified") else "sources not verified"
        return (f"idxlake ingest --mode {lineage.get('mode')}: {lineage.get('dataset')} ({verified}), rows {rows}; "
                f"from {', '.join(names)}")
    return json.dumps(lineage, sort_keys=True)[:200]


def verification(splits: dict[str, Any]) -> str:
    """Which splits of a version are verified official data: ``verified official data: train; not verified: test``.

    A split is verified when it holds exactly the published files (hashes compared at ingest); appending to
    it, or unrecognised sources, make it unverified even when each ingest's own sources were verified.
    """
    yes = [s for s, v in splits.items() if v["verified"]]
    no = [s for s, v in splits.items() if not v["verified"]]
    if not no and yes:
        return f"verified official data: {', '.join(yes)}"
    if not yes:
        return "not verified against published hashes"
    return f"verified official data: {', '.join(yes)}; not verified: {', '.join(no)}"


def info_text(info: dict[str, Any]) -> str:
    """``idxlake info`` for people."""
    image = info["image"]
    proto = info["protocol"]
    lines = [
        f"table:      {info['table']}" + (f"  (name {info['name']})" if info.get("name") else ""),
        f"version:    {info['version']}  committed {info['timestamp']}  "
        f"(protocol reader {proto['min_reader_version']}, writer {proto['min_writer_version']}"
        + (f", features {proto['reader_features'] + proto['writer_features']}"
           if proto["reader_features"] or proto["writer_features"] else "") + ")",
        f"dataset:    {info['dataset']} ({verification(info['splits'])})",
        f"describes:  {info['description'] or '-'}",
        f"image:      {'x'.join(map(str, image['shape']))} {image['dtype']}, {image['record_bytes']} bytes per "
        f"record{', stored transposed in the source' if image['transposed'] else ''}",
        "columns:    " + ", ".join(f"{c['name']} {c['type']}" + (" (partition)" if c["name"] in
                                                                  info["partition_columns"] else "")
                                   for c in info["columns"]),
        f"classes:    {' '.join(info['class_names']) if info['class_names'] else '(unnamed)'}",
        f"rows:       {info['rows']:,}",
        f"pixels:     normalise with mean {_fmt(info['normalization']['mean'])}, "
        f"std {_fmt(info['normalization']['std'])}",
        "",
    ]
    splits = info["splits"]
    lines += _grid(["split", "rows", "files", "bytes", "row_groups", "mean", "std", "verified"],
                   [[s, v["rows"], v["files"], human_bytes(v["bytes"]), v["row_groups"], _fmt(v["mean"]),
                     _fmt(v["std"]), "yes" if v["verified"] else "no"] for s, v in splits.items()])
    files = info["files"]
    lines += ["", f"files:      {files['count']} files, {human_bytes(files['bytes'])}, {files['row_groups']} row "
                  f"groups of up to {files['max_row_group_rows']:,} rows, codec {', '.join(files['codecs']) or '-'}",
              ""]
    labels = sorted({lab["label"] for v in splits.values() for lab in v["labels"]}, key=lambda x: (x is None, x))
    names = {lab["label"]: lab["name"] for v in splits.values() for lab in v["labels"]}
    counts = {(s, lab["label"]): lab["rows"] for s, v in splits.items() for lab in v["labels"]}
    lines += _grid(["label", "name", *splits], [[lab, names.get(lab) or "", *(counts.get((s, lab), 0)
                                                                               for s in splits)] for lab in labels])
    last = info.get("last_commit") or {}
    lines += ["", f"last commit: version {last.get('version')} {last.get('operation')} at {last.get('timestamp')}"]
    if last.get("lineage"):
        lines.append(f"  {lineage_summary(last['lineage'])}")
    ingest = info.get("last_ingest")
    if ingest:
        lines.append(f"last ingest: version {ingest['version']} at {ingest['timestamp']}, its sources "
                     + ("matched the published hashes" if ingest["lineage"].get("verified") else "not verified"))
        for split, sources in (ingest["lineage"].get("sources") or {}).items():
            for f in sources:
                lines.append(f"  {split:<6} {f['role']:<6} {f['name']}  sha256 {f['sha256']}  "
                             f"({f['nbytes']:,} bytes)")
    for warning in info.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines) + "\n"


def history_text(entries: Sequence[dict[str, Any]]) -> str:
    """``idxlake history`` for people."""
    rows = []
    for e in entries:
        params = e.get("parameters") or {}
        what = e.get("operation") or ""
        if params.get("mode"):
            what += f" ({params['mode']})"
        rows.append([e.get("version"), e.get("timestamp") or "", what, lineage_summary(e.get("lineage"))])
    return "\n".join(_grid(["version", "timestamp", "operation", "lineage"], rows)) + "\n"
