"""The ``chat_template`` dataset strategy: conversations rendered with a chat template, assistant turns trained.

Each row holds a list of messages under ``field_messages``. Keys are mapped with
``message_property_mappings`` (ShareGPT's ``from`` / ``value`` are recognised on their own) and role
names with ``roles`` (``human`` -> user and ``gpt`` -> assistant by default). The conversation is
rendered once with the template; tokens of the messages whose role is in ``roles_to_train`` are
trained, and so is the end-of-turn token after them as ``train_on_eos`` says.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gym.api import DatasetStrategy, hookimpl

SFT = ("sft",)  # the training method these rows are for

NAME = "chat_template"
_WHITESPACE = re.compile(r"\s*")
ALIASES = ("chat_template.default",)

DEFAULT_ROLE_NAMES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "tool": "tool",
}


def _known_template(value: str | None) -> str | None:
    from gym.api import CHAT_TEMPLATE_NAMES, is_known_chat_template

    if value is not None and not is_known_chat_template(value):
        raise ValueError(f"unknown chat template {value!r}; use one of {', '.join(CHAT_TEMPLATE_NAMES)}")
    return value


# An annotated validator (not a field_validator): it stays with the field when gym composes dataset entries.
TemplateName = Annotated[str | None, AfterValidator(_known_template)]


class ChatTemplateOptions(BaseModel):
    """Dataset keys of the chat_template strategy."""

    model_config = ConfigDict(extra="forbid")

    field_messages: str | None = Field(None, description="Column holding the list of messages (default: messages).")
    message_property_mappings: dict[str, str] | None = Field(
        None,
        description="Message key -> key in the data, e.g. {role: from, content: value} for ShareGPT "
        "(default: {role: role, content: content}).",
    )
    roles: dict[str, list[str]] | None = Field(
        None,
        description="Role -> the names it has in the data, e.g. {user: [human], assistant: [gpt]} "
        "(added to the defaults human->user, gpt->assistant).",
    )
    roles_to_train: list[str] | None = Field(None, description="Roles whose messages are trained (default: [assistant]).")
    train_on_eos: Literal["turn", "all", "last", "none"] | None = Field(
        None,
        description="Train the end-of-turn token after: each trained turn (turn, default), every turn (all), "
        "the last trained turn (last), or none.",
    )
    drop_system_message: bool | None = Field(None, description="Remove system messages before rendering.")
    chat_template: TemplateName = Field(
        None, description="This dataset's chat template (a name, or jinja with chat_template_jinja)."
    )
    chat_template_jinja: str | None = Field(None, description="Jinja source when this dataset's chat_template is jinja.")


@hookimpl
def gym_dataset_strategies():
    return [
        DatasetStrategy(
            name=NAME,
            builder=f"{__name__}:build",
            methods=SFT,
            options=ChatTemplateOptions,
            description="Conversations (messages or ShareGPT) rendered with a chat template; assistant turns trained.",
            aliases=ALIASES,
        )
    ]


class ChatTemplateConfig(BaseModel):
    """Top-level keys of the chat_template strategy."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    eot_tokens: list[str] | None = Field(
        None,
        description="Tokens that end a turn (e.g. ['<|im_end|>']). The token right after a trained turn is trained "
        "(as train_on_eos says) only when it is one of these; unset: any special token there counts.",
    )


@hookimpl
def gym_config_schema():
    return ChatTemplateConfig


@hookimpl
def gym_data_settings(cfg):
    """``eot_tokens`` decides which end-of-turn tokens are trained: part of the prepared-data cache key."""
    return {"eot_tokens": cfg.eot_tokens} if cfg.eot_tokens else None



def end_of_turn_ids(tokenizer: Any, eot_tokens: list[str] | None) -> set[int] | None:
    """Ids of ``eot_tokens``; each must be one token of the vocabulary."""
    if not eot_tokens:
        return None
    from gym.api import ConfigError

    ids = set()
    for token in eot_tokens:
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise ConfigError(
                f"eot_tokens: {token!r} is not one token of this tokenizer (it encodes to {len(encoded)} tokens); "
                "add it with `tokens:` or `special_tokens:`, or remove it"
            )
        ids.add(encoded[0])
    return ids


def dataset_chat_template(dataset: Any, tokenizer: Any) -> str | None:
    """The template a dataset entry names itself (its ``chat_template`` / ``chat_template_jinja``), or ``None``."""
    from gym.api import resolve_chat_template

    if getattr(dataset, "chat_template", None):
        return resolve_chat_template(dataset.chat_template, dataset.chat_template_jinja, tokenizer)
    return getattr(dataset, "chat_template_jinja", None) or None


def read_chat_options(strategy: Any, cfg: Any, dataset: Any) -> None:
    """Set the dataset's chat options on ``strategy``: ``field_messages``, ``mappings`` (with
    ``explicit_mappings``: whether the dataset gave any), ``role_names``, ``roles_to_train``, ``train_on_eos``,
    ``drop_system`` and ``train_all``. Shared by every strategy that reads chat rows."""
    from gym.api import train_on_inputs_for

    strategy.field_messages = dataset.field_messages or "messages"
    strategy.mappings = dict(dataset.message_property_mappings or {})
    strategy.explicit_mappings = bool(strategy.mappings)
    strategy.mappings.setdefault("role", "role")
    strategy.mappings.setdefault("content", "content")
    strategy.role_names = dict(DEFAULT_ROLE_NAMES)
    for role, names in (dataset.roles or {}).items():
        for name in names:
            strategy.role_names[str(name)] = role
    strategy.roles_to_train = set(dataset.roles_to_train if dataset.roles_to_train is not None else ["assistant"])
    strategy.train_on_eos = dataset.train_on_eos or "turn"
    strategy.drop_system = bool(dataset.drop_system_message)
    strategy.train_all = train_on_inputs_for(cfg, dataset)


def build(tokenizer: Any, cfg: Any, dataset: Any) -> "ChatTemplateStrategy":
    return ChatTemplateStrategy(tokenizer, cfg, dataset)


class ChatTemplateStrategy:
    def __init__(self, tokenizer: Any, cfg: Any, dataset: Any):
        from gym.api import resolve_chat_template
        from gym.api import ChatRenderer, SpanLabeler
        from gym.api import DataError

        template = dataset_chat_template(dataset, tokenizer)
        if template is None and getattr(cfg, "chat_template", None):
            template = resolve_chat_template(cfg.chat_template, cfg.chat_template_jinja, tokenizer)
        if template is None:
            template = resolve_chat_template("tokenizer_default", None, tokenizer)
        if not template:
            raise DataError(
                f"dataset {dataset.path}: the tokenizer has no chat template; set `chat_template:` "
                "(chatml, llama3, ...) at the top level or on the dataset"
            )
        self.renderer = ChatRenderer(template, tokenizer)
        self.labeler = SpanLabeler(tokenizer, end_of_turn_ids(tokenizer, cfg.eot_tokens))
        read_chat_options(self, cfg, dataset)

    # ------------------------------------------------------------------------------------ messages

    def _messages(self, conversation: Any, i: int) -> list[dict]:
        from gym.api import row_error

        field = self.field_messages
        if not isinstance(conversation, list):
            raise row_error(
                f"{field!r} must be a list of messages, got {type(conversation).__name__}", field, i
            )
        mappings = self.mappings
        if not self.explicit_mappings and conversation and isinstance(conversation[0], dict):
            first = conversation[0]
            if "role" not in first and "from" in first:  # ShareGPT layout
                mappings = {"role": "from", "content": "value"}
        messages = []
        for j, message in enumerate(conversation):
            where = f"{field}[{j}]"
            if not isinstance(message, dict):
                raise row_error(f"{where} must be a mapping, got {type(message).__name__}", where, i)
            out = {}
            for key, source in mappings.items():
                if source not in message or (key in ("role", "content") and message[source] is None):
                    if key in ("role", "content"):
                        keys = ", ".join(sorted(k for k, v in message.items() if v is not None))
                        raise row_error(
                            f"{where} has no {source!r} (its keys: {keys}); set message_property_mappings "
                            f"{{{key}: <key>}}",
                            f"{where}.{source}",
                            i,
                        )
                    continue
                out[key] = message[source]
            role, content = out["role"], out["content"]
            if not isinstance(content, str):
                raise row_error(
                    f"{where}.{mappings['content']} must be text, got {type(content).__name__}",
                    f"{where}.{mappings['content']}",
                    i,
                )
            if str(role) not in self.role_names:
                known = ", ".join(sorted(set(self.role_names)))
                raise row_error(
                    f"{where}.{mappings['role']} is {role!r}, not a role gym knows ({known}); map it with "
                    f"`roles: {{user: [{role}]}}` (or assistant, system, tool) on the dataset",
                    f"{where}.{mappings['role']}",
                    i,
                )
            out["role"] = self.role_names[str(role)]
            if self.drop_system and out["role"] == "system":
                continue
            messages.append(out)
        if not messages:
            raise row_error(f"{field!r} holds no messages", field, i)
        return messages

    # ---------------------------------------------------------------------------------- tokenizing

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.api import TemplateError
        from gym.api import column, row_error

        conversations = column(rows, self.field_messages, "messages field (set field_messages)")
        texts, trained, eos_after = [], [], []
        for i, conversation in enumerate(conversations):
            messages = self._messages(conversation, i)
            try:
                text, spans = self.renderer.render(messages)
            except TemplateError as exc:
                raise row_error(str(exc), self.field_messages, i) from None
            texts.append(text)
            train_spans, ends = [], []
            for message, span in zip(messages, spans):
                if span is None:
                    continue
                is_trained = message["role"] in self.roles_to_train
                if is_trained and span[1] > span[0]:
                    train_spans.append(span)
                if self.train_on_eos == "all" or (is_trained and self.train_on_eos in ("turn", "last")):
                    ends.append(_WHITESPACE.match(text, span[1]).end())  # llama2 writes " </s>"
            if self.train_on_eos == "last":
                ends = ends[-1:]
            train_spans.sort()
            trained.append(train_spans)
            eos_after.append(sorted(ends))
        return self.labeler.encode(texts, trained, eos_after, train_all=self.train_all)
