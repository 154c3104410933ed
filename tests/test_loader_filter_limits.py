"""Hostile loader arguments: limits checked before pyarrow sees anything; only LoaderConfigError comes out."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idxlake.loaders import DeltaIterableDataset
from idxlake.loaders.filters import (
    MAX_FILTER_CHARS,
    MAX_FILTER_DEPTH,
    MAX_FILTER_TERMS,
    MAX_IN_VALUES,
    as_expression,
)
from idxlake.schemas import LoaderConfigError

SCHEMA = pa.schema([("id", pa.int64()), ("label", pa.uint8()), ("split", pa.string())])
ROWS = pa.table({"id": list(range(10)), "label": [i % 3 for i in range(10)], "split": ["train"] * 5 + ["test"] * 5},
                schema=SCHEMA)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(filter="label = 1" + " AND label = 1" * 20000), r"longer than 4096 characters \(MAX_FILTER_CHARS\)"),
    (dict(filter="(" * 1000 + "label = 1" + ")" * 1000), r"nested deeper than 32 levels .*\(MAX_FILTER_DEPTH\)"),
    (dict(filter="NOT " * 40 + "label = 1"), r"\(MAX_FILTER_DEPTH\)"),
    (dict(filter=" OR ".join(["label = 1"] * (MAX_FILTER_TERMS + 1))), r"more than 128 comparisons"),
    (dict(filter="label IN (" + ", ".join(["1"] * (MAX_IN_VALUES + 1)) + ")"), r"\(MAX_IN_VALUES\)"),
    (dict(filter="id > 99999999999999999999"), r"int64 range .*\(INT64_MIN/INT64_MAX\)"),
    (dict(filter="id > 1e999"), r"not a finite number"),
    (dict(filter="id > " + "9" * 3000), r"has 3000 characters"),
    (dict(filter="split = '" + "x" * 300 + "'"), r"\(MAX_STRING_CHARS\)"),
    (dict(batch_size=2**63), r"batch_size must be an integer >= 1 and <= 16777216 \(MAX_BATCH_SIZE\)"),
    (dict(version=-1), r"version must be an integer >= 0"),
    (dict(version=2**64), r"version must be an integer >= 0 and <= 9223372036854775807"),
    (dict(seed=2**70), r"seed must be an integer"),
    (dict(shuffle_buffer=2**63), r"shuffle_buffer must be an integer >= 0 and <= \d+ \(rows\)"),
    (dict(cache_bytes=2**64), r"cache_bytes must be"),
    (dict(rank=0, world_size=2**63), r"world_size must be an integer >= 1 and <= 65536 \(MAX_WORLD_SIZE\)"),
    (dict(rank=2**63, world_size=2), r"rank must be in \[0, world_size\)"),
])
def test_hostile_arguments_raise_loader_config_error_naming_the_limit(synthetic_table, kwargs, match) -> None:
    table, _ = synthetic_table
    with pytest.raises(LoaderConfigError, match=match):
        DeltaIterableDataset(table, **kwargs)


def test_filters_within_the_limits_still_work(synthetic_table) -> None:
    table, _ = synthetic_table
    deep = "(" * (MAX_FILTER_DEPTH - 1) + "label = 1" + ")" * (MAX_FILTER_DEPTH - 1)
    assert DeltaIterableDataset(table, split="train", filter=deep).num_rows == 30
    many = " OR ".join(f"id = {i}" for i in range(MAX_FILTER_TERMS))
    assert len(many) < MAX_FILTER_CHARS and DeltaIterableDataset(table, split="train", filter=many).num_rows == 128
    assert DeltaIterableDataset(table, split="train", filter="id >= -9223372036854775808").num_rows == 300


_WORDS = ["id", "label", "split", "image", "AND", "OR", "NOT", "IN", "BETWEEN", "and", "not", "(", ")", ",",
          "=", "==", "!=", "<>", "<", "<=", ">", ">=", "'train'", "'it''s'", '"test"', "'", '"', "1.5", "-0",
          "1e308", "1e309", "-1e-400", "nan", "inf", ";", "--", "/*", "\x00", "é", "id(", "label=1"]
_TOKENS = st.one_of(st.sampled_from(_WORDS), st.integers(-(2**70), 2**70).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.text(max_size=4))
_FILTERS = st.one_of(st.lists(_TOKENS, max_size=40).map(" ".join), st.text(max_size=200),
                     st.integers(0, 2000).map(lambda n: "(" * n + "label = 1" + ")" * n),
                     st.integers(0, 3000).map(lambda n: "label = 1" + " AND label = 1" * n))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FILTERS)
def test_fuzzed_filters_give_an_expression_or_loader_config_error(text: str) -> None:
    try:
        expr = as_expression(text, SCHEMA)
    except LoaderConfigError:
        return
    assert isinstance(expr, pads.Expression)
    ROWS.filter(expr)  # an accepted filter evaluates on real rows without any other error


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.integers(-(2**80), 2**80), st.booleans(), st.floats(), st.none(), st.text(max_size=3)))
def test_fuzzed_integer_arguments_only_raise_loader_config_error(value: object) -> None:
    from idxlake.loaders.filters import check_int

    try:
        out = check_int("batch_size", value, low=1, high=1 << 24)
    except LoaderConfigError:
        return
    assert isinstance(out, int) and 1 <= out <= 1 << 24


def test_numpy_integers_are_integers(synthetic_table) -> None:
    import numpy as np

    table, _ = synthetic_table
    ds = DeltaIterableDataset(table, batch_size=np.int64(32), seed=np.uint32(7), version=np.int64(0))
    assert ds.batch_size == 32 and ds.seed == 7
