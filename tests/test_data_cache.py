"""The prepared-data cache: reused when nothing changed, rebuilt on any change, safe with two processes."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
import textwrap


from gym.data.prepare import prepare_data

def write_rows(path, n, answer="{}"):
    rows = [{"instruction": f"Add {i} and {i}", "input": "", "output": answer.format(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_cfg(manager, data, cache, **top):
    base = {"base_model": "tiny", "datasets": [{"path": str(data), "type": "alpaca"}], "dataset_prepared_path": str(cache)}
    return manager.schema().model.model_validate({**base, **top})


def test_unchanged_config_hits_and_every_change_rebuilds(manager, tok, tmp_path):
    data, cache = tmp_path / "a.jsonl", tmp_path / "prepared"
    write_rows(data, 40)
    first = prepare_data(make_cfg(manager, data, cache, sample_packing=True, sequence_len=512), tok, manager=manager)
    assert first.report.cache == "miss" and first.report.cache_path
    again = prepare_data(make_cfg(manager, data, cache, sample_packing=True, sequence_len=512), tok, manager=manager)
    assert again.report.cache_hit and again.report.cache_path == first.report.cache_path
    assert again.train["input_ids"] == first.train["input_ids"]
    assert again.train["position_ids"] == first.train["position_ids"]
    assert again.report.train.rows == first.report.train.rows and "cache: hit" in again.summary()

    def fingerprint_after(cfg, tokenizer=tok):
        prepared = prepare_data(cfg, tokenizer, manager=manager)
        assert prepared.report.cache == "miss"
        return prepared.report.fingerprint

    seen = {first.report.fingerprint}
    seen.add(fingerprint_after(make_cfg(manager, data, cache, sample_packing=True, sequence_len=256)))
    seen.add(fingerprint_after(make_cfg(manager, data, cache, sample_packing=False, sequence_len=512)))
    seen.add(fingerprint_after(make_cfg(manager, data, cache, sample_packing=True, sequence_len=512, train_on_inputs=True)))
    seen.add(fingerprint_after(make_cfg(manager, data, cache, sample_packing=True, sequence_len=512, val_set_size=0.1)))
    changed_tok = tok.__class__.from_pretrained(_save(tok, tmp_path / "tok"))
    changed_tok.add_tokens(["<|new|>"])
    seen.add(fingerprint_after(make_cfg(manager, data, cache, sample_packing=True, sequence_len=512), changed_tok))
    templated = tok.__class__.from_pretrained(_save(tok, tmp_path / "tok2"))
    templated.chat_template = "{{ messages }}"
    seen.add(fingerprint_after(make_cfg(manager, data, cache, sample_packing=True, sequence_len=512), templated))
    write_rows(data, 40, answer="the answer is {}")
    seen.add(fingerprint_after(make_cfg(manager, data, cache, sample_packing=True, sequence_len=512)))
    assert len(seen) == 8
    folders = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    assert len(folders) == 8 and not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def _save(tok, path):
    tok.save_pretrained(path)
    return path


CHILD = textwrap.dedent(
    """
    import json, sys
    from gym.plugin_manager import GymPluginManager
    from gym.data.prepare import prepare_data
    from gym.tiny import build_tokenizer

    manager = GymPluginManager()
    manager.load_entry_points(environ={"GYM_PLUGINS": "sft,alpaca"})
    cfg = manager.schema().model.model_validate({
        "base_model": "tiny", "sample_packing": True, "sequence_len": 256, "val_set_size": 0.1,
        "datasets": [{"path": sys.argv[1], "type": "alpaca"}], "dataset_prepared_path": sys.argv[2],
    })
    prepared = prepare_data(cfg, build_tokenizer(), manager=manager)
    print(json.dumps({"cache": prepared.report.cache, "fingerprint": prepared.report.fingerprint,
                      "rows": len(prepared.train), "first": prepared.train[0]["input_ids"]}))
    """
)


@pytest.mark.slow
def test_two_processes_preparing_at_once_leave_one_valid_cache(tmp_path):
    data, cache = tmp_path / "a.jsonl", tmp_path / "prepared"
    write_rows(data, 3000)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    children = [
        subprocess.Popen([sys.executable, str(script), str(data), str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for child in children:
        out, err = child.communicate(timeout=240)
        assert child.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["cache"] for r in results) == ["hit", "miss"]
    assert results[0]["fingerprint"] == results[1]["fingerprint"]
    assert results[0]["rows"] == results[1]["rows"] and results[0]["first"] == results[1]["first"]
    entries = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert entries == [results[0]["fingerprint"]]
    import datasets

    reloaded = datasets.load_from_disk(str(cache / entries[0] / "train"))
    assert len(reloaded) == results[0]["rows"] and reloaded.column_names == ["input_ids", "labels", "position_ids"]


def test_publish_keeps_the_first_complete_build(tmp_path):
    from gym.data.cache import new_build_dir, publish

    final = tmp_path / "fp"
    first, second = new_build_dir(tmp_path, "fp"), new_build_dir(tmp_path, "fp")
    (first / "report.json").write_text("first")
    (second / "report.json").write_text("second")
    assert publish(first, final) is True
    assert publish(second, final) is False
    assert (final / "report.json").read_text() == "first" and not second.exists()


def test_a_strategy_key_that_changes_rows_changes_the_cache_key(manager, tok, tmp_path):
    """``eot_tokens`` (the chat_template strategy's key) decides which end-of-turn tokens are trained: two configs
    that differ only in it must not share a cache entry (they once did)."""
    data, cache = tmp_path / "chat.jsonl", tmp_path / "prepared"
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"yo {i}"}]}
            for i in range(12)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cfg(**top):
        base = {"base_model": "tiny", "datasets": [{"path": str(data), "type": "chat_template"}],
                "dataset_prepared_path": str(cache), "chat_template": "chatml"}
        return manager.schema().model.model_validate({**base, **top})

    plain = prepare_data(cfg(), tok, manager=manager)
    with_eot = prepare_data(cfg(eot_tokens=["<|endoftext|>"]), tok, manager=manager)
    assert with_eot.report.cache == "miss" and with_eot.report.fingerprint != plain.report.fingerprint
    assert with_eot.train["labels"] != plain.train["labels"]  # the rows differ, so a shared entry was wrong


def test_a_warm_cache_is_read_without_importing_torch_or_loading_the_tokenizer(tmp_path):
    """``gym preprocess`` on a cache hit needs neither torch nor the tokenizer: the key hashes the tokenizer's files."""
    config = tmp_path / "c.yml"
    config.write_text(
        "base_model: builtin:tiny-llama-micro\ndatasets:\n  - path: builtin:addition?rows=200\n    type: alpaca\n"
        f"dataset_prepared_path: {tmp_path / 'prepared'}\n"
    )
    check = (
        "import sys\nfrom gym.cli import main\nsys.argv = ['gym', 'preprocess', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', 'DATASETS' if 'datasets' in sys.modules else '')\n"
    )
    runs = [subprocess.run([sys.executable, "-c", check, str(config)], capture_output=True, text=True) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-2000:]
    assert "cache: miss" in runs[0].stdout and "cache: hit" in runs[1].stdout
    assert runs[1].stdout.strip().splitlines()[-1].strip() == "NO-TORCH"


def test_build_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    """A run killed with kill -9 leaves its temporary build folder; the next start removes it."""
    from gym.data.cache import new_build_dir, owner_tag, remove_stale_builds

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = owner_tag().split("~")[0]
    stale = tmp_path / f".tmp-abc-{host}~{int(dead.stdout)}-1234abcd"
    stale.mkdir()
    other_host = tmp_path / f".tmp-abc-elsewhere~{int(dead.stdout)}-1234abcd"
    other_host.mkdir()
    live = new_build_dir(tmp_path, "abc")  # this process: alive
    assert remove_stale_builds(tmp_path, ".tmp-") == [stale.name]
    assert live.exists() and other_host.exists() and not stale.exists()
