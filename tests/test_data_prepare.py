"""prepare_datasets: loading files, mixing, lengths (drop / truncate, counted), splits, errors, columns."""

from __future__ import annotations

import json

import pytest

from gym.data.prepare import prepare_data
from gym.errors import ConfigError, DataError
from gym.plugin_manager import GymPluginManager

def make_cfg(manager, datasets, **top):
    return manager.schema().model.model_validate({"base_model": "tiny", "datasets": datasets, **top})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def alpaca_rows(n, start=0):
    return [{"instruction": f"Add {i} and {i + 1}", "input": "", "output": str(2 * i + 1)} for i in range(start, start + n)]


def test_two_datasets_mixed_and_counted(manager, tok, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(30))
    convs = [[{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}] for i in range(20)]
    c = tmp_path / "c.json"
    c.write_text(json.dumps([{"messages": m} for m in convs]))
    cfg = make_cfg(manager, [{"path": a, "type": "alpaca"}, {"path": str(c), "type": "chat_template"}], sequence_len=256)
    prepared = prepare_data(cfg, tok, manager=manager)
    assert prepared.train.column_names == ["input_ids", "labels"]
    assert prepared.eval is None
    assert len(prepared.train) == 50
    report = prepared.report
    assert [d.rows for d in report.sources] == [30, 20] and report.rows_read == 50
    assert report.train.samples == 50 and report.cache == "off"
    assert report.train.figures["tokens"] == sum(len(x) for x in prepared.train["input_ids"])
    texts = [tok.decode(x) for x in prepared.train["input_ids"][:20]]
    assert any("### Instruction" in t for t in texts) and any("<|im_start|>" in t for t in texts), "shuffled together"
    summary = prepared.summary()
    assert "a.jsonl" in summary and "50 samples" in summary


def test_too_long_dropped_or_truncated_and_counted(manager, tok, tmp_path):
    rows = alpaca_rows(10) + [{"instruction": "Repeat " + "words " * 200, "input": "", "output": "ok"}] * 3
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    dropped = prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}], sequence_len=160), tok, manager=manager)
    counts = dropped.report.sources[0]
    assert counts.rows == 13 and counts.dropped.get("longer than sequence_len", 0) == 3 and counts.kept == 10 and counts.changed.get("truncated", 0) == 0
    assert "dropped 3 longer than sequence_len" in dropped.summary()
    truncated = prepare_data(
        make_cfg(manager, [{"path": path, "type": "alpaca"}], sequence_len=160, excess_length_strategy="truncate"), tok, manager=manager
    )
    counts = truncated.report.sources[0]
    # cut at 160 tokens the long prompts keep no trained token: truncated, then dropped for that (both counted)
    assert counts.changed.get("truncated", 0) == 3 and counts.dropped.get("with no trained token", 0) == 3 and counts.kept == 10
    assert max(len(x) for x in truncated.train["input_ids"]) <= 160


def test_truncation_keeps_samples_with_trained_tokens(manager, tok, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "word " * 100}, {"text": "short"}])
    cfg = make_cfg(manager, [{"path": path, "type": "input_output"}], sequence_len=16)
    rows = [{"segments": [{"text": "Q ", "label": False}, {"text": "answer " * 50, "label": True}]}]
    write_jsonl(tmp_path / "t.jsonl", rows * 2)
    prepared = prepare_data(cfg.model_copy(update={"excess_length_strategy": "truncate"}), tok, manager=manager)
    assert prepared.report.sources[0].changed.get("truncated", 0) == 2 and len(prepared.train) == 2
    assert all(len(x) == 16 for x in prepared.train["input_ids"])


def test_min_sample_len_and_no_trained_tokens_are_dropped_and_counted(manager, tok, tmp_path):
    rows = [
        {"segments": [{"text": "prompt only", "label": False}]},
        {"segments": [{"text": "Q: x\n", "label": False}, {"text": "A: y", "label": True}]},
        {"segments": [{"text": "a", "label": True}]},
        {"segments": [{"text": "Question: what is it?\n", "label": False}, {"text": "Answer: it is long", "label": True}]},
    ]
    path = write_jsonl(tmp_path / "io.jsonl", rows)
    prepared = prepare_data(
        make_cfg(manager, [{"path": path, "type": "input_output"}], min_sample_len=4), tok, manager=manager
    )
    counts = prepared.report.sources[0]
    assert counts.dropped.get("with no trained token", 0) == 1  # "prompt only"
    assert counts.dropped.get("shorter than min_sample_len", 0) == 1  # "a"
    assert counts.kept == 2 and len(prepared.train) == 2
    assert "1 with no trained token" in prepared.summary() and "1 shorter than min_sample_len" in prepared.summary()


def test_val_set_size_fraction_and_count(manager, tok, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(40))
    fraction = prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}], val_set_size=0.25), tok, manager=manager)
    assert (len(fraction.train), len(fraction.eval)) == (30, 10)
    count = prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}], val_set_size=7), tok, manager=manager)
    assert (len(count.train), len(count.eval)) == (33, 7)
    train = {tuple(x) for x in count.train["input_ids"]}
    held_out = {tuple(x) for x in count.eval["input_ids"]}
    assert not train & held_out and len(train | held_out) == 40
    with pytest.raises(DataError, match="val_set_size"):
        prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}], val_set_size=40), tok, manager=manager)
    from gym.config import core_problems

    rules = core_problems(make_cfg(manager, [{"path": path, "type": "alpaca"}], val_set_size=2.5), manager)
    assert any(p.field == "val_set_size" and "whole number" in p.message for p in rules)


def test_seed_shuffles_and_no_shuffle_keeps_order(manager, tok, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca_rows(30))
    ordered = prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}], shuffle_merged_datasets=False), tok, manager=manager)
    assert "Add 0 and 1" in tok.decode(ordered.train[0]["input_ids"])
    seeded = [prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}], seed=s), tok, manager=manager) for s in (1, 1, 2)]
    assert seeded[0].train["input_ids"] == seeded[1].train["input_ids"] != seeded[2].train["input_ids"]


def test_test_datasets_become_the_eval_set(manager, tok, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(20))
    test = write_jsonl(tmp_path / "test.jsonl", alpaca_rows(5, start=100))
    prepared = prepare_data(
        make_cfg(manager, [{"path": train, "type": "alpaca"}], test_datasets=[{"path": test, "type": "alpaca"}]), tok, manager=manager
    )
    assert len(prepared.train) == 20 and len(prepared.eval) == 5
    assert [d.role for d in prepared.report.sources] == ["train", "test"]
    assert "Add 100 and 101" in tok.decode(prepared.eval[0]["input_ids"])


def test_file_formats_and_folders(manager, tok, tmp_path):
    import datasets

    rows = alpaca_rows(6)
    csv = tmp_path / "a.csv"
    datasets.Dataset.from_list(rows).to_csv(str(csv))
    parquet = tmp_path / "a.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}).save_to_disk(str(saved))
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows[:3])
    entries = [
        {"path": str(csv), "type": "alpaca"},
        {"path": str(parquet), "type": "alpaca"},
        {"path": str(saved), "split": "test", "type": "alpaca"},
        {"path": str(folder), "split": "test", "type": "alpaca"},
        {"path": str(folder), "data_files": ["train.jsonl"], "type": "alpaca"},
    ]
    prepared = prepare_data(make_cfg(manager, entries), tok, manager=manager)
    assert [d.rows for d in prepared.report.sources] == [6, 6, 2, 3, 6]


def test_missing_file_and_uncached_hub_id_are_data_errors(manager, tok, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_data(make_cfg(manager, [{"path": str(tmp_path / "nope.jsonl"), "type": "alpaca"}]), tok, manager=manager)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="cannot be downloaded") as err:
        prepare_data(make_cfg(manager, [{"path": "someone/not-cached-anywhere", "type": "alpaca"}]), tok, manager=manager)
    assert "Point `path` at a local file or folder" in str(err.value)


def test_bad_rows_name_dataset_row_and_field(manager, tok, tmp_path):
    rows = alpaca_rows(5)
    rows[3] = {"instruction": "x", "input": "", "output": None}
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}]), tok, manager=manager)
    message = str(err.value)
    assert "bad.jsonl" in message and "row 3" in message and "'output'" in message
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(DataError, match=r"other.jsonl.*row 0.*'instruction'"):
        prepare_data(make_cfg(manager, [{"path": other, "type": "alpaca"}]), tok, manager=manager)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    with pytest.raises(DataError, match="broken.jsonl"):
        prepare_data(make_cfg(manager, [{"path": str(broken), "type": "alpaca"}]), tok, manager=manager)


def test_third_party_strategy_errors_are_located(manager, tok, tmp_path):
    """A strategy that raises a plain exception: gym finds the row by retrying rows one by one."""
    from gym.api import hookimpl
    from gym.datasets_api import DatasetStrategy

    class Upper:
        def process_batch(self, rows):
            out = {"input_ids": [], "labels": []}
            for word in rows["word"]:
                ids = tok(word.upper(), add_special_tokens=False)["input_ids"]
                out["input_ids"].append(ids)
                out["labels"].append(ids)
            return out

    class Plugin:
        @hookimpl
        def gym_dataset_strategies(self):
            return [DatasetStrategy(name="upper", builder=lambda tokenizer, cfg, dataset: Upper())]

    local = GymPluginManager()
    local.load_entry_points(environ={"GYM_PLUGINS": "sft,alpaca,chat_template,completion,input_output,pretrain,user_defined"})
    local.register(Plugin(), "upper-plugin")
    path = write_jsonl(tmp_path / "w.jsonl", [{"word": "hello there"}, {"word": 7}, {"word": "fine words"}])
    with pytest.raises(DataError, match=r"w.jsonl \(upper\), row 1 \(line 2\): the strategy failed: AttributeError"):
        prepare_data(make_cfg(local, [{"path": path, "type": "upper"}]), tok, manager=local)


def test_num_proc_gives_the_same_rows(manager, tok, tmp_path):
    rows = alpaca_rows(2500)
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    single = prepare_data(make_cfg(manager, [{"path": path, "type": "alpaca"}], shuffle_merged_datasets=False), tok, manager=manager)
    double = prepare_data(
        make_cfg(manager, [{"path": path, "type": "alpaca"}], shuffle_merged_datasets=False, dataset_processes=2), tok, manager=manager
    )
    assert single.train["input_ids"] == double.train["input_ids"]
    assert single.train["labels"] == double.train["labels"]


def test_options_of_other_strategies_are_config_problems(manager):
    from gym.config import RawConfig, validate_config

    def problems_of(entries):
        raw = RawConfig(data={"base_model": "tiny", "datasets": entries}, source="cfg.yml", lines={})
        with pytest.raises(ConfigError) as err:
            validate_config(raw, manager)
        return "\n".join(err.value.problems)

    problems = problems_of(
        [
            {"path": "a.jsonl", "type": "alpaca", "field_messages": "conversations"},
            {"path": "b.jsonl", "type": "chat_template", "field_messages": "conversations", "chat_template": "llama3"},
            {"path": "c.jsonl", "type": {"field_instruction": "q", "format": "Q: {instruction}\nA: "}},
            {"path": "d.jsonl", "type": {"field_instruction": "q"}, "field": "text"},
        ]
    )
    assert "datasets.0.field_messages" in problems and "not used by dataset type 'alpaca'" in problems
    assert "datasets.1" not in problems and "datasets.2" not in problems
    assert "datasets.3.field: not used by dataset type user-defined format" in problems
    problems = problems_of([{"path": "c.jsonl", "type": "chat_template", "chat_template": "nope"}])
    assert "datasets.0.chat_template" in problems and "unknown chat template 'nope'" in problems
    problems = problems_of([{"path": "c.jsonl", "type": "chat_template", "train_on_eos": "sometimes"}])
    assert "datasets.0.train_on_eos" in problems


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_or_blank_file_says_so(manager, tok, tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty.jsonl: the file is empty"):
        prepare_data(make_cfg(manager, [{"path": str(path), "type": "alpaca"}]), tok, manager=manager)


def test_a_folder_of_several_file_formats_is_an_error_naming_them(manager, tok, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", alpaca_rows(4))
    (folder / "b.csv").write_text("instruction,input,output\nx,,y\n")
    with pytest.raises(DataError, match=r"several formats \(csv: b.csv; json: a.jsonl\).*data_files"):
        prepare_data(make_cfg(manager, [{"path": str(folder), "type": "alpaca"}]), tok, manager=manager)


def test_a_bad_row_in_a_jsonl_file_names_the_line_an_editor_shows(manager, tok, tmp_path):
    path = tmp_path / "lines.jsonl"
    rows = [json.dumps(r) for r in alpaca_rows(4)] + [json.dumps({"instruction": None, "input": "", "output": "y"})]
    path.write_text(rows[0] + "\n\n" + "\n".join(rows[1:]) + "\n")  # a blank line after the first row
    with pytest.raises(DataError, match=r"lines.jsonl \(alpaca\), row 4 \(line 6\), field 'instruction'"):
        prepare_data(make_cfg(manager, [{"path": str(path), "type": "alpaca"}]), tok, manager=manager)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_invalid_utf8_names_the_line_and_column_not_the_batch(manager, tok, tmp_path, suffix):
    path = tmp_path / f"bytes.{suffix}"
    if suffix == "jsonl":
        lines = [json.dumps(r).encode() for r in alpaca_rows(40)]
        lines[29] = b'{"instruction": "caf\xc3\xa9 \xff", "input": "", "output": "y"}'  # valid é, then a bad byte
    else:
        lines = [b"instruction,input,output"] + [f"q{i},,a{i}".encode() for i in range(40)]
        lines[30] = b"caf\xc3\xa9 \xff,,y"
    path.write_bytes(b"\n".join(lines) + b"\n")
    line, column = (30, 23) if suffix == "jsonl" else (31, 6)  # as an editor counts: lines and characters from 1
    with pytest.raises(DataError, match=rf"bytes.{suffix}, line {line}, column {column}: the bytes are not valid UTF-8"):
        prepare_data(make_cfg(manager, [{"path": str(path), "type": "alpaca"}]), tok, manager=manager)


def test_the_utf8_check_finds_a_bad_byte_after_a_character_split_across_chunks(tmp_path):
    from gym.data.loading import check_utf8

    path = tmp_path / "split.txt"
    path.write_bytes(b"ab\xc3\xa9cd\n" * 3 + b"x\xffy\n")  # with 3-byte chunks, each é is cut in two
    with pytest.raises(DataError, match=r"dataset d, line 4, column 2"):
        check_utf8(path, "dataset d", chunk_size=3)
    path.write_bytes(b"ab\xc3\xa9cd\n" * 3)
    check_utf8(path, "dataset d", chunk_size=3)  # valid: no error although every chunk cuts a character
