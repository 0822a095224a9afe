"""Property: whatever rows a data file holds, preparation gives counted rows or an error naming file and place.

Rows are generated per strategy with wrong types, missing and extra columns, empty strings and conversations,
unknown roles, huge values and unicode, written as JSON lines, a JSON array, CSV or Parquet, sometimes with a
line of invalid UTF-8 or of broken JSON in the middle. Every outcome must be either prepared data whose counts
add up (rows read = rows written; per source, samples = kept + dropped) or a :class:`DataError` that names the
file (and, for a bad row, the row; for a line-based file, the line). Profiles as in ``test_fuzz_config.py``.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gym.data.prepare import prepare_data
from gym.errors import DataError

FUZZ = settings(
    max_examples=max(4, settings.default.max_examples // 4),  # each example prepares a dataset: ~0.3 s
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each example costs a preparation
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
good_text = st.text(st.sampled_from("abcdefghij 0123456789+="), min_size=1, max_size=20)
odd_value = st.one_of(
    st.just(""), st.none(), st.integers(-5, 10**12), st.floats(allow_nan=True), st.booleans(), _text,
    st.just("x " * 3000), st.lists(_text, max_size=2), st.dictionaries(st.sampled_from("ab"), _text, max_size=2),
)
value = st.one_of(*[good_text] * 12, odd_value)  # mostly good rows, so a bad one sits among them


def message(roles):
    return st.fixed_dictionaries(
        {"role": st.one_of(st.sampled_from(roles), odd_value)},
        optional={"content": value},
    ) | odd_value


COLUMNS = {
    "alpaca": ["instruction", "input", "output"],
    "completion": ["text"],
    "pretrain": ["text"],
    "input_output": ["segments"],
    "chat_template": ["messages"],
}


@st.composite
def rows_for(draw, strategy: str):
    count = draw(st.integers(1, 12))
    rows = []
    for _ in range(count):
        row = {}
        for column in COLUMNS[strategy]:
            if draw(st.integers(0, 19)) == 0:
                continue  # a missing column
            if column == "messages":
                good = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                       "content": good_text}), min_size=2, max_size=4)
                row[column] = draw(st.one_of(*[good] * 8, st.lists(message(["system", "user", "assistant"]),
                                                                   max_size=4), odd_value))
            elif column == "segments":
                row[column] = draw(st.one_of(
                    st.lists(st.fixed_dictionaries({"text": value}, optional={"label": odd_value | st.booleans()}),
                             max_size=3),
                    odd_value,
                ))
            else:
                row[column] = draw(value)
        if draw(st.integers(0, 5)) == 0:
            row[draw(st.sampled_from(["extra", "id", "meta"]))] = draw(odd_value)
        rows.append(row)
    return rows


def write(path_stem, rows, file_format: str, corrupt: str | None):
    """Write ``rows``; returns the path, or None when the format cannot hold them (e.g. mixed column types)."""
    import pandas as pd

    if file_format == "jsonl":
        lines = [json.dumps(row).encode() for row in rows]
        if corrupt == "utf8":
            lines.insert(len(lines) // 2, b'{"text": "bad \xff byte"}')
        elif corrupt == "json":
            lines.insert(len(lines) // 2, b'{"text": "no end')
        path = path_stem.with_suffix(".jsonl")
        path.write_bytes(b"\n".join(lines) + b"\n")
    elif file_format == "json":
        path = path_stem.with_suffix(".json")
        path.write_text(json.dumps(rows))
    elif file_format == "csv":
        if any(isinstance(v, (list, dict)) for row in rows for v in row.values()):
            return None  # CSV holds flat text only
        path = path_stem.with_suffix(".csv")
        pd.DataFrame(rows).to_csv(path, index=False)
        if corrupt == "utf8":
            data = path.read_bytes().split(b"\n")
            data.insert(max(1, len(data) // 2), b"\xff\xfe,,")
            path.write_bytes(b"\n".join(data))
    else:
        path = path_stem.with_suffix(".parquet")
        try:
            pd.DataFrame(rows).to_parquet(path)
        except Exception:  # pyarrow cannot store mixed types in one column: not a file a user can have
            return None
    return path


OUTCOMES: dict[str, int] = {}


@pytest.mark.parametrize("strategy", sorted(COLUMNS))
@FUZZ
@given(data=st.data())
def test_every_data_file_prepares_with_counts_or_names_the_place(strategy, data, manager, tok, tmp_path_factory):
    rows = data.draw(rows_for(strategy), label="rows")
    file_format = data.draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]), label="format")
    corrupt = data.draw(st.sampled_from([None, None, None, "utf8", "json"]), label="corrupt")
    folder = tmp_path_factory.mktemp("fuzzdata")
    path = write(folder / "rows", rows, file_format, corrupt if file_format in ("jsonl", "csv") else None)
    if path is None:
        return
    bad_line = (file_format == "jsonl" and corrupt is not None) or (file_format == "csv" and corrupt == "utf8")
    cfg = manager.schema().model.model_validate({
        "base_model": "tiny", "sequence_len": 64,
        "datasets": [{"path": str(path), "type": strategy}],
    })
    try:
        prepared = prepare_data(cfg, tok, manager=manager)
    except DataError as exc:
        message = str(exc)
        assert path.name in message, message  # the file is named
        if bad_line:
            assert re.search(r"line \d+, column \d+", message), message
        if re.search(r"\brow \d+", message) and file_format == "jsonl":
            assert re.search(r"\(line \d+\)", message), message  # a line-based file names the line too
        key = f"{strategy}/{file_format}/error"
    else:
        assert not bad_line, "a file with a broken line was accepted"
        report = prepared.report
        assert report.rows_read == len(rows)
        for source in report.sources:
            assert source.kept + sum(source.dropped.values()) == source.samples, source
        assert report.train.samples + (report.eval.samples if report.eval else 0) == sum(s.kept for s in report.sources)
        key = f"{strategy}/{file_format}/prepared"
    OUTCOMES[key] = OUTCOMES.get(key, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _record_outcomes():
    """With GYM_FUZZ_REPORT=FILE, append this module's outcome counts to FILE (for docs/testing.md)."""
    yield
    import os

    if os.environ.get("GYM_FUZZ_REPORT"):
        with open(os.environ["GYM_FUZZ_REPORT"], "a") as handle:
            handle.write(json.dumps({"module": __name__, "outcomes": OUTCOMES}) + "\n")
