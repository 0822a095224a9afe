"""chat_template: several turns, roles_to_train, train_on_eos, ShareGPT layout, system messages, templates."""

from __future__ import annotations

import pytest

from gym.chat_templates import BUILTIN_CHAT_TEMPLATES, CHAT_TEMPLATE_NAMES, resolve_chat_template
from gym.datasets_api import RowError
from gym.errors import ConfigError, DataError

@pytest.fixture(scope="module")
def tok():
    from gym.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    return tokenizer


def strategy_for(manager, tok, dataset: dict, **top):
    cfg = manager.schema().model.model_validate(
        {"base_model": "tiny", "datasets": [{"path": "d.json", "type": "chat_template", **dataset}], **top}
    )
    record, _ = manager.dataset_strategies()[cfg.datasets[0].type]
    return record.load_builder()(tokenizer=tok, cfg=cfg, dataset=cfg.datasets[0])


def trained_pieces(tok, ids, labels) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "6, of course"},
]


def test_assistant_turns_and_their_end_of_turn_are_trained(manager, tok):
    out = strategy_for(manager, tok, {}).process_batch({"messages": [CONVERSATION]})
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert ids == tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert trained_pieces(tok, ids, labels) == ["4<|im_end|>", "6, of course<|im_end|>"]


def test_a_strategy_survives_the_trip_to_a_worker_process(manager, tok):
    """With dataset_processes the strategy is pickled into each worker, which compiles the template again."""
    import pickle

    strategy = strategy_for(manager, tok, {})
    copy = pickle.loads(pickle.dumps(strategy))
    batch = {"messages": [CONVERSATION]}
    assert copy.process_batch(batch) == strategy.process_batch(batch)


def test_roles_to_train_and_train_on_eos(manager, tok):
    batch = {"messages": [CONVERSATION]}
    both = strategy_for(manager, tok, {"roles_to_train": ["user", "assistant"], "train_on_eos": "none"})
    out = both.process_batch(batch)
    assert trained_pieces(tok, out["input_ids"][0], out["labels"][0]) == ["What is 2 + 2?", "4", "And 3 + 3?", "6, of course"]
    last = strategy_for(manager, tok, {"train_on_eos": "last"}).process_batch(batch)
    assert trained_pieces(tok, last["input_ids"][0], last["labels"][0]) == ["4", "6, of course<|im_end|>"]
    every = strategy_for(manager, tok, {"train_on_eos": "all"}).process_batch(batch)
    pieces = trained_pieces(tok, every["input_ids"][0], every["labels"][0])
    assert pieces == ["<|im_end|>", "<|im_end|>", "4<|im_end|>", "<|im_end|>", "6, of course<|im_end|>"]


def test_train_on_inputs_trains_everything(manager, tok):
    out = strategy_for(manager, tok, {}, train_on_inputs=True).process_batch({"messages": [CONVERSATION]})
    assert out["labels"][0] == out["input_ids"][0]


def test_sharegpt_layout_with_mappings_and_default_roles(manager, tok):
    sharegpt = [
        {"from": "system", "value": "Be kind."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
    ]
    explicit = strategy_for(
        manager,
        tok,
        {"field_messages": "conversations", "message_property_mappings": {"role": "from", "content": "value"}},
    )
    out = explicit.process_batch({"conversations": [sharegpt]})
    text = tok.decode(out["input_ids"][0])
    assert text == "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert trained_pieces(tok, out["input_ids"][0], out["labels"][0]) == ["Hello!<|im_end|>"]
    detected = strategy_for(manager, tok, {"field_messages": "conversations"}).process_batch({"conversations": [sharegpt]})
    assert detected == out
    dropped = strategy_for(manager, tok, {"field_messages": "conversations", "drop_system_message": True})
    text = tok.decode(dropped.process_batch({"conversations": [sharegpt]})["input_ids"][0])
    assert "system" not in text and text.startswith("<|im_start|>user\nHi")


def test_custom_roles_mapping(manager, tok):
    strategy = strategy_for(manager, tok, {"roles": {"user": ["customer"], "assistant": ["agent"]}})
    rows = {"messages": [[{"role": "customer", "content": "Refund?"}, {"role": "agent", "content": "Done."}]]}
    out = strategy.process_batch(rows)
    assert tok.decode(out["input_ids"][0]).startswith("<|im_start|>user\nRefund?")
    assert trained_pieces(tok, out["input_ids"][0], out["labels"][0]) == ["Done.<|im_end|>"]


def test_an_unknown_role_is_a_row_error_not_a_new_role(manager, tok):
    strategy = strategy_for(manager, tok, {})
    rows = {"messages": [[{"role": "wizard", "content": "Hm."}, {"role": "assistant", "content": "Yes."}]]}
    with pytest.raises(RowError, match=r"messages\[0\]\.role is 'wizard'.*roles: \{user: \[wizard\]\}") as info:
        strategy.process_batch(rows)
    assert info.value.row == 0


def test_per_dataset_template_and_a_trimming_template(manager, tok):
    """llama3 trims contents, so spans are found by searching the real render; labels still exact."""
    strategy = strategy_for(manager, tok, {"chat_template": "llama3"})
    conversation = [{"role": "user", "content": "  padded question \n"}, {"role": "assistant", "content": " answer \n"}]
    out = strategy.process_batch({"messages": [conversation]})
    ids = out["input_ids"][0]
    assert ids == tok.apply_chat_template(
        conversation, tokenize=True, return_dict=False, chat_template=BUILTIN_CHAT_TEMPLATES["llama3"]
    )
    assert trained_pieces(tok, ids, out["labels"][0]) == ["answer<|eot_id|>"]
    jinja = strategy_for(
        manager, tok, {"chat_template": "jinja", "chat_template_jinja": "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"}
    )
    out = jinja.process_batch({"messages": [conversation]})
    assert tok.decode(out["input_ids"][0]) == "[user]   padded question \n\n[assistant]  answer \n\n"
    assert trained_pieces(tok, out["input_ids"][0], out["labels"][0]) == [" answer \n"]


def test_top_level_template_is_used_when_the_dataset_sets_none(manager, tok):
    out = strategy_for(manager, tok, {}, chat_template="phi_3").process_batch({"messages": [CONVERSATION[1:3]]})
    assert tok.decode(out["input_ids"][0]) == "<|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\n4<|end|>\n"


def test_rendering_is_once_per_conversation(manager, tok, monkeypatch):
    strategy = strategy_for(manager, tok, {})
    calls = []
    original = strategy.renderer.compiled.render
    monkeypatch.setattr(strategy.renderer, "compiled", type("C", (), {"render": lambda self, **kw: calls.append(1) or original(**kw)})())
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(40)]
    out = strategy.process_batch({"messages": [turns, turns[:10]]})
    assert len(calls) == 2
    assert len(trained_pieces(tok, out["input_ids"][0], out["labels"][0])) == 20


def test_bad_rows_name_the_row_and_field(manager, tok):
    strategy = strategy_for(manager, tok, {})
    with pytest.raises(RowError) as err:
        strategy.process_batch({"messages": [CONVERSATION, "not a list"]})
    assert err.value.row == 1 and err.value.field == "messages"
    with pytest.raises(RowError) as err:
        strategy.process_batch({"messages": [[{"role": "user", "text": "hi"}]]})
    assert "content" in str(err.value) and "text" in str(err.value)
    with pytest.raises(RowError) as err:
        strategy.process_batch({"conversation": [CONVERSATION]})
    assert err.value.field == "messages" and "conversation" in str(err.value)


def test_no_template_anywhere_is_a_data_error(manager):
    from gym.tiny import build_tokenizer

    bare = build_tokenizer(chat_template=None)
    bare.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        strategy_for(manager, bare, {})


def test_resolve_chat_template():
    class Tok:
        chat_template = "OWN"

    assert resolve_chat_template(None, None, Tok()) is None
    assert resolve_chat_template("tokenizer_default", None, Tok()) == "OWN"
    assert resolve_chat_template("chatml", None, Tok()) == BUILTIN_CHAT_TEMPLATES["chatml"]
    assert resolve_chat_template("jinja", "{{ x }}", Tok()) == "{{ x }}"
    assert resolve_chat_template("tokenizer_default_fallback_chatml", None, None) == BUILTIN_CHAT_TEMPLATES["chatml"]
    assert {"chatml", "llama3", "mistral", "llama2", "phi_3", "gemma", "qwen_25", "alpaca"} <= set(CHAT_TEMPLATE_NAMES)
    with pytest.raises(ConfigError, match="chatml"):
        resolve_chat_template("chatmlx", None, Tok())
    with pytest.raises(ConfigError, match="chat_template_jinja"):
        resolve_chat_template("jinja", None, Tok())
    # a family whose tokenizer ships its template (Axolotl's names for them): that template, or an error without one
    assert resolve_chat_template("qwen2_vl", None, Tok()) == "OWN"
    assert resolve_chat_template("llava", None, Tok()) == "OWN"

    class Bare:
        chat_template = None

    with pytest.raises(ConfigError, match="'llava' means the model's own template, and this tokenizer has none"):
        resolve_chat_template("llava", None, Bare())


def test_every_builtin_template_renders_like_transformers(tok):
    from gym.data.chat import ChatRenderer

    for name, template in BUILTIN_CHAT_TEMPLATES.items():
        text, spans = ChatRenderer(template, tok).render(CONVERSATION)
        assert text == tok.apply_chat_template(CONVERSATION, tokenize=False, chat_template=template), name
        assert [text[s:e] for s, e in spans] == [m["content"] for m in CONVERSATION], name


def test_tokenizers_without_char_maps_label_the_same(manager, tok):
    fast = strategy_for(manager, tok, {"train_on_eos": "all"})
    slow = strategy_for(manager, tok, {"train_on_eos": "all"})
    slow.labeler.use_offsets = False
    batch = {"messages": [CONVERSATION, CONVERSATION[1:3]]}
    assert slow.process_batch(batch) == fast.process_batch(batch)


def test_template_errors_are_row_errors(manager, tok):
    strategy = strategy_for(manager, tok, {"chat_template": "llama2"})
    with pytest.raises(RowError, match="knows the roles") as err:
        strategy.process_batch({"messages": [CONVERSATION, [{"role": "tool", "content": "42"}]]})
    assert err.value.row == 1


def test_end_of_turn_after_a_space_is_trained(manager, tok):
    """llama2 writes `[/INST] answer </s>`: the EOS after the space is the end of the turn.

    (The byte-level BPE merges the space before the answer into its first token, which is trained.)"""
    strategy = strategy_for(manager, tok, {"chat_template": "llama2"})
    out = strategy.process_batch({"messages": [CONVERSATION]})
    pieces = trained_pieces(tok, out["input_ids"][0], out["labels"][0])
    assert pieces == [" 4", tok.eos_token, " 6, of course", tok.eos_token]


def test_eot_tokens_choose_which_token_ends_a_turn(manager, tok):
    batch = {"messages": [CONVERSATION]}
    named = strategy_for(manager, tok, {}, eot_tokens=["<|im_end|>"]).process_batch(batch)
    assert trained_pieces(tok, named["input_ids"][0], named["labels"][0]) == ["4<|im_end|>", "6, of course<|im_end|>"]
    other = strategy_for(manager, tok, {}, eot_tokens=["<|eot_id|>"]).process_batch(batch)
    assert trained_pieces(tok, other["input_ids"][0], other["labels"][0]) == ["4", "6, of course"]
    with pytest.raises(ConfigError, match="eot_tokens: 'not one token'"):
        strategy_for(manager, tok, {}, eot_tokens=["not one token"])
