"""Spark SQL that registers an idxlake table in a metastore or Unity Catalog.

The statement is ``CREATE TABLE IF NOT EXISTS name USING DELTA LOCATION '...'`` with the
table description as ``COMMENT`` and *no column list*: over an existing Delta location
Spark/Delta require a given column list to match the log exactly, field metadata
included, and DDL cannot express the ``image`` column's ``idxlake`` metadata (only a
``COMMENT``), so a column list would fail with ``DELTA_CREATE_TABLE_SCHEME_MISMATCH``.
Spark takes the schema, partitioning and column comments (field metadata ``comment``,
written by ingest) from the log; the generated text lists them in SQL comments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa

from idxlake.schemas import META_KEY, QueryError, TableSnapshot, snapshot

_SPARK_TYPES: dict[str, str] = {
    "string": "STRING", "large_string": "STRING", "string_view": "STRING", "int8": "TINYINT",
    "int16": "SMALLINT", "int32": "INT", "int64": "BIGINT", "float": "FLOAT", "double": "DOUBLE",
    "binary": "BINARY", "large_binary": "BINARY", "binary_view": "BINARY", "bool": "BOOLEAN",
}
_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|`(?:[^`]|``)+`")


def spark_type(t: pa.DataType) -> str:
    """Spark SQL type name of an Arrow type used by idxlake tables."""
    return _SPARK_TYPES.get(str(t), str(t).upper())


def spark_string(text: str) -> str:
    """A Spark SQL string literal (backslash escapes, as Spark's parser reads them)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def comment_text(text: str) -> str:
    """``text`` safe on a ``--`` comment line: control characters (a newline would end the comment and
    start a statement: column names and comments come from the log, anyone's) written as escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def table_location(uri: str) -> str:
    """The location Spark should see: URIs as given, local paths as absolute ``file:`` URIs."""
    if urlparse(uri).scheme and len(urlparse(uri).scheme) > 1:
        return uri.rstrip("/")
    return Path(uri).resolve().as_uri()


def check_table_name(name: str) -> str:
    """Validate ``[catalog.][schema.]table`` (parts plain or backtick-quoted identifiers).

    Raises:
        QueryError: if ``name`` is not such a name.
    """
    parts = re.findall(r"`(?:[^`]|``)+`|[^.]+", name)
    if not 1 <= len(parts) <= 3 or ".".join(parts) != name or not all(_PART.fullmatch(p) for p in parts):
        raise QueryError(f"--name {name!r} is not [CATALOG.][SCHEMA.]TABLE with identifiers made of letters, "
                         "digits and _ (quote others with backticks)")
    return name


def spark_ddl_of(snap: TableSnapshot, *, name: str | None = None) -> str:
    """The registration DDL for a pinned table (see :func:`spark_ddl`)."""
    from idxlake.pipeline.inspect.identifiers import table_identifier

    name = check_table_name(name) if name else table_identifier(snap.name or snap.uri)
    meta = snap.meta
    rows = []
    for f in snap.schema:
        comment = (f.metadata or {}).get(b"comment", b"").decode()
        extra = []
        if f.name == "split":
            extra.append("PARTITIONED BY")
        if f.metadata and META_KEY.encode() in f.metadata:
            extra.append(f'metadata "{META_KEY}": shape {list(meta.shape)}, dtype {meta.dtype}, class names, stats')
        rows.append((f.name, spark_type(f.type) + ("" if f.nullable else " NOT NULL"), comment, "; ".join(extra)))
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    columns = [comment_text(f"--   {n.ljust(w0)}  {t.ljust(w1)}  {c}" + (f"  [{x}]" if x else ""))
               for n, t, c, x in rows]
    description = snap.description or meta.describe()
    return "\n".join([
        comment_text(f"-- Registers the Delta table {snap.uri} (written by idxlake's ingest, now at version "
                     f"{snap.version})"),
        "-- in a Spark metastore or Unity Catalog. Schema, partitioning and column comments come from the log:",
        *columns,
        "-- No column list on purpose: over an existing Delta location it must match the log exactly,",
        f'-- field metadata included, and DDL cannot carry the image column\'s "{META_KEY}" metadata.',
        f"CREATE TABLE IF NOT EXISTS {name}",
        "USING DELTA",
        f"LOCATION {spark_string(table_location(snap.uri))}",
        f"COMMENT {spark_string(description)};",
        "",
        "-- Then, for example:",
        f"-- SELECT split, label, count(*) AS n FROM {name} GROUP BY split, label ORDER BY split, label;",
        f"-- SELECT split, id, label, length(image) AS bytes FROM {name} WHERE id < 10;",
        "",
    ])


def spark_ddl(table: str, *, name: str | None = None, storage_options: Mapping[str, str] | None = None) -> str:
    """Spark SQL registering ``table`` (latest version) as ``name``.

    Args:
        table: Table path or URI (local paths become ``file:`` URIs; use the cloud URI,
            e.g. ``s3://``/``abfss://``, for a Databricks workspace).
        name: ``[catalog.][schema.]table``; default: the table's Delta name (or the last
            path component) as an identifier, in the session's current catalog and schema.
        storage_options: Object-store options (to read the log).

    Returns:
        The SQL text, with comments.
    """
    return spark_ddl_of(snapshot(table, storage_options=storage_options), name=name)
