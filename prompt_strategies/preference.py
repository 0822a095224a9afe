"""Dataset strategies for the preference methods: rows become text ``prompt`` / ``chosen`` / ``rejected`` for the
pairwise methods (dpo, ipo, simpo, orpo, reward_model), and ``prompt`` / ``completion`` / ``label`` for rl: kto.

================================  =========================================================================
type                              row layout
================================  =========================================================================
``chatml.intel`` / ``llama3.``    ``system`` (optional), ``question``, ``chosen``, ``rejected`` (text)
``chatml.prompt_pairs``           ``system`` (optional), ``prompt``, ``chosen``, ``rejected`` (text)
``chatml.argilla_chat``           ``chosen`` and ``rejected`` conversations [user, assistant]
``chatml.ultra``                  ``prompt`` (text), ``chosen`` / ``rejected`` conversations [user, assistant]
``chatml.argilla``                ``system`` (optional), ``instruction``, ``chosen_response``, ``rejected_response``
``chatml.icr``                    ``system`` (optional), ``input``, ``chosen``, ``rejected`` (text)
``chatml.default``                the first of ``prompt`` / ``input`` / ``question`` / ``instruction``; ``chosen`` or
                                  ``chosen_response``; ``rejected`` or ``rejected_response``
``passthrough`` (``.default``)    TRL's layout: ``prompt`` / ``chosen`` / ``rejected`` as text, or as chat
                                  messages rendered with the tokenizer's chat template; without ``prompt``
                                  (HH-RLHF) the prompt is what chosen and rejected share
``user_defined.default``          columns and format strings in the dataset entry (``field_prompt``,
                                  ``prompt_format``, ...)
``type: {field_prompt: ...}``     the same keys written as the ``type:`` mapping (Axolotl's form), strictly
                                  validated; placeholders ``{prompt}`` / ``{system}``, ``{chosen}``, ``{rejected}``
================================  =========================================================================

With rl: kto the same types read ``completion`` (text; for ``argilla_chat`` a [user, assistant] conversation)
and ``label`` (true: desirable) instead of ``chosen`` / ``rejected``; ``user_defined.default`` reads
``field_completion``, ``field_label`` and ``completion_format``. Each type is one record serving both row kinds
(its builder gives the config's method its columns and ``None`` in the others).

``chatml.*`` write ChatML (``<|im_start|>user ... <|im_end|>``), ``llama3.*`` the Llama 3 header format. A
pair with a missing or empty chosen or rejected response is passed on empty and counted as dropped by the
method; a row of the wrong shape (a conversation that is not a list of messages) is a ``RowError``.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from gym.api import DatasetStrategy, hookimpl

PAIR_METHODS = ("dpo", "ipo", "simpo", "orpo", "reward_model")
COLUMNS = ("prompt", "chosen", "rejected")
KTO_COLUMNS = ("prompt", "completion", "label")
# One name serves both row kinds (Axolotl's names are the same for DPO and KTO data): each record declares both
# sets of columns and the builder gives, for the config's method, its own columns and ``None`` in the others.
ALL_METHODS = (*PAIR_METHODS, "kto")
ALL_COLUMNS = (*COLUMNS, "completion", "label")
LAYOUTS = ("intel", "argilla_chat", "prompt_pairs", "ultra", "argilla", "icr", "default")


class UserDefinedPairOptions(BaseModel):
    """Dataset keys of the user_defined.default preference strategy."""

    model_config = ConfigDict(extra="forbid")

    field_system: str | None = Field(None, description="Column holding the system prompt (preference user_defined).")
    field_prompt: str | None = Field(None, description="Column holding the prompt (default: prompt).")
    field_chosen: str | None = Field(None, description="Column holding the chosen response (default: chosen).")
    field_rejected: str | None = Field(None, description="Column holding the rejected response (default: rejected).")
    field_completion: str | None = Field(None, description="rl: kto: column holding the completion (default: completion).")
    field_label: str | None = Field(None, description="rl: kto: column holding the label, true when the completion is "
                                    "desirable (default: label).")
    completion_format: str | None = Field(None, description="rl: kto: how the completion is written, with {completion}.")
    prompt_format: str | None = Field(None, description="How the prompt is written, with {prompt} (and {system}).")
    chosen_format: str | None = Field(None, description="How the chosen response is written, with {chosen}.")
    rejected_format: str | None = Field(None, description="How the rejected response is written, with {rejected}.")


class UserDefinedPairFormat(UserDefinedPairOptions):
    """Axolotl's preference user-defined format written as the ``type:`` mapping (``rl: dpo`` with
    ``type: {field_prompt: .., prompt_format: ..}``); the same keys as the ``user_defined.default`` entry keys."""


# The placeholders each format string may use; anything else is a validate error.
PLACEHOLDERS = {"prompt_format": ("prompt", "system"), "chosen_format": ("chosen",), "rejected_format": ("rejected",),
                "completion_format": ("completion",)}
KTO_ONLY = ("field_completion", "field_label", "completion_format")
PAIR_ONLY = ("field_chosen", "field_rejected", "chosen_format", "rejected_format")


class ChatTemplatePairOptions(BaseModel):
    """Dataset keys of the chat_template preference strategy."""

    model_config = ConfigDict(extra="forbid")

    field_messages: str | None = Field(None, description="Column holding the conversation so far (default: messages).")
    field_chosen: str | None = Field(None, description="Column holding the chosen answer (default: chosen).")
    field_rejected: str | None = Field(None, description="Column holding the rejected answer (default: rejected).")
    message_property_mappings: dict[str, str] | None = Field(None, description="Message key -> key in the data.")
    roles: dict[str, list[str]] | None = Field(None, description="Role -> the names it has in the data.")
    chat_template: str | None = Field(None, description="This dataset's chat template.")
    chat_template_jinja: str | None = Field(None, description="Jinja source when this dataset's chat_template is jinja.")


@hookimpl
def gym_dataset_strategies():
    strategies = []
    for family in ("chatml", "llama3"):
        for layout in LAYOUTS:
            strategies.append(DatasetStrategy(
                name=f"{family}.{layout}",
                builder=f"{__name__}:build_{family}_{layout}",
                columns=ALL_COLUMNS,
                methods=ALL_METHODS,
                description=f"Preference pairs, or KTO completions with a label ({layout} layout), written as "
                f"{family} turns.",
            ))
    strategies.append(DatasetStrategy(
        name="chat_template.default", aliases=("chat_template",), builder=f"{__name__}:build_chat_template_pairs",
        columns=ALL_COLUMNS, methods=PAIR_METHODS, options=ChatTemplatePairOptions,
        description="Preference pairs: the conversation so far in field_messages, the two answers in field_chosen / "
        "field_rejected, rendered with the chat template (the same names serve SFT conversations).",
    ))
    strategies.append(DatasetStrategy(
        name="passthrough", aliases=("passthrough.default",), builder=f"{__name__}:build_passthrough", columns=ALL_COLUMNS, methods=ALL_METHODS,
        description="Preference pairs already in TRL's layout: prompt / chosen / rejected as text or chat messages "
        "(rendered with the chat template).",
    ))
    strategies.append(DatasetStrategy(
        name="user_defined.default", builder=f"{__name__}:build_user_defined", columns=ALL_COLUMNS,
        methods=ALL_METHODS,
        options=UserDefinedPairOptions,
        description="Preference pairs from columns and format strings named in the dataset entry (field_prompt, "
        "prompt_format, ...).",
    ))
    # ``type:`` written as a mapping with a preference method (the SFT ``user_defined`` serves rl-less configs).
    # A record of its own: a type name may be read inline by one strategy per method.
    strategies.append(DatasetStrategy(
        name="user_defined", builder=f"{__name__}:build_user_defined", columns=ALL_COLUMNS, methods=ALL_METHODS,
        options=UserDefinedPairOptions, inline=UserDefinedPairFormat,
        description="Preference pairs (or KTO completions) from the format written as a mapping in `type:` "
        "(field_prompt, field_chosen, field_rejected, prompt_format, ...).",
    ))
    return strategies


@hookimpl
def gym_validate_config(cfg):
    """The user-defined preference format: only its method's keys, known placeholders, and written once."""
    from gym.api import ConfigProblem

    problems = []
    kto = is_kto(cfg)
    for list_key in ("datasets", "test_datasets"):
        for i, entry in enumerate(getattr(cfg, list_key, None) or ()):
            inline = isinstance(entry.type, UserDefinedPairFormat)
            if not inline and entry.type not in ("user_defined", "user_defined.default"):
                continue
            where = f"{list_key}.{i}" + (".type" if inline else "")
            spec = entry.type if inline else entry
            if inline:
                both = [k for k in UserDefinedPairOptions.model_fields if getattr(entry, k, None) is not None]
                problems += [ConfigProblem(f"{list_key}.{i}.{k}", "the user-defined format is written in `type:`; "
                                           "set this key there, not in the entry") for k in both]
            wrong = PAIR_ONLY if kto else KTO_ONLY
            for key in wrong:
                if getattr(spec, key, None) is not None:
                    problems.append(ConfigProblem(f"{where}.{key}", f"a key for {'pairs' if kto else 'rl: kto'}, "
                                                  f"not used with rl: {getattr(cfg, 'rl', None) or 'reward_model'}"))
            for key, names in PLACEHOLDERS.items():
                message = _format_problem(getattr(spec, key, None), names)
                if message:
                    problems.append(ConfigProblem(f"{where}.{key}", message))
    return problems or None


def _format_problem(text: str | None, names: tuple[str, ...]) -> str | None:
    """What is wrong with a format string whose placeholders must be among ``names`` (``None``: nothing)."""
    import difflib
    import string

    if text is None:
        return None
    try:
        used = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as exc:
        return f"not a valid format string ({exc}); write a literal brace as {{{{ or }}}}"
    known = ", ".join("{" + n + "}" for n in names)
    for field in used:
        if field not in names:
            close = difflib.get_close_matches(field, names, n=1, cutoff=0.6)
            hint = f"; did you mean {{{close[0]}}}?" if close else ""
            return f"unknown placeholder {{{field}}}{hint} (known: {known})"
    return None


# --------------------------------------------------------------------------------------------- formats


def chatml_turn(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


def llama3_turn(role: str, text: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>"


class TurnFormat:
    """How one chat family writes a prompt (system + user, then the assistant's header) and a response."""

    def __init__(self, family: str):
        self.family = family

    def prompt(self, user: str, system: str | None = None) -> str:
        if self.family == "chatml":
            head = chatml_turn("system", system) if system else ""
            return head + chatml_turn("user", user) + "<|im_start|>assistant\n"
        head = llama3_turn("system", system) if system else ""
        return head + llama3_turn("user", user) + "<|start_header_id|>assistant<|end_header_id|>\n\n"

    def response(self, text: str | None) -> str | None:
        if text is None or not str(text).strip():
            return None  # counted as a missing response by the method
        return f"{text}<|im_end|>" if self.family == "chatml" else f"{text}<|eot_id|>"


def _text(value: Any, field: str, required: bool = False) -> str | None:
    from gym.api import RowError

    if value is None:
        if required:
            raise RowError(f"no {field!r} column in this row", field=field)
        return None
    if not isinstance(value, str):
        raise RowError(f"{field!r} should be text, got {type(value).__name__}", field=field)
    return value


def _message_content(conversation: Any, index: int, field: str, role: str | None = None) -> str | None:
    """The text of message ``index`` of a conversation (list of {role, content}); ``None`` when absent."""
    from gym.api import RowError

    if conversation is None:
        return None
    if not isinstance(conversation, list):
        raise RowError(f"{field!r} should be a list of messages, got {type(conversation).__name__}", field=field)
    if len(conversation) <= index:
        return None
    message = conversation[index]
    if not isinstance(message, dict) or "content" not in message:
        raise RowError(f"{field!r} message {index} has no content", field=field)
    if role and message.get("role") not in (role, {"user": "human", "assistant": "gpt"}.get(role)):
        raise RowError(f"{field!r} message {index} should be a {role} message, not {message.get('role')!r}",
                       field=field)
    return message["content"]


def _label(value: Any, field: str) -> bool | None:
    """A KTO label: true (desirable) or false; ``None`` when absent (the method drops the row)."""
    from gym.api import RowError

    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowError(f"{field!r} should be true or false, got {value!r}", field=field)


def _complete(out: dict[str, list]) -> dict[str, list]:
    """Every column a record declares: the other method's columns are ``None``."""
    size = len(out["prompt"])
    return {name: out.get(name, [None] * size) for name in ALL_COLUMNS}


def is_kto(cfg: Any) -> bool:
    return getattr(cfg, "rl", None) == "kto"


class LayoutStrategy:
    """Applies ``convert(row)`` to each row and writes the turns: ``(system, user, chosen, rejected)`` for pairs,
    ``(system, user, completion, label)`` for KTO."""

    def __init__(self, family: str, convert: Callable[[dict[str, Any]], tuple], kto: bool = False):
        self.format = TurnFormat(family)
        self.convert = convert
        self.kto = kto

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.api import RowError

        names = KTO_COLUMNS if self.kto else COLUMNS
        out: dict[str, list] = {name: [] for name in names}
        size = len(next(iter(rows.values()))) if rows else 0
        for i in range(size):
            row = {key: values[i] for key, values in rows.items()}
            try:
                system, user, first, second = self.convert(row)
            except RowError as exc:
                exc.row = i
                raise
            out["prompt"].append(self.format.prompt(user, system) if user is not None and str(user).strip() else "")
            out[names[1]].append(self.format.response(first))
            out[names[2]].append(second if self.kto else self.format.response(second))
        return _complete(out)


def _intel(row):
    return (_text(row.get("system"), "system"), _text(row.get("question"), "question", True),
            _text(row.get("chosen"), "chosen"), _text(row.get("rejected"), "rejected"))


def _prompt_pairs(row):
    return (_text(row.get("system"), "system"), _text(row.get("prompt"), "prompt", True),
            _text(row.get("chosen"), "chosen"), _text(row.get("rejected"), "rejected"))


def _argilla_chat(row):
    user = _message_content(row.get("chosen"), 0, "chosen", "user")
    if user is None:
        user = _message_content(row.get("rejected"), 0, "rejected", "user")
    return (None, user, _message_content(row.get("chosen"), 1, "chosen", "assistant"),
            _message_content(row.get("rejected"), 1, "rejected", "assistant"))


def _ultra(row):
    return (_text(row.get("system"), "system"), _text(row.get("prompt"), "prompt", True),
            _message_content(row.get("chosen"), 1, "chosen", "assistant"),
            _message_content(row.get("rejected"), 1, "rejected", "assistant"))


def _argilla(row):
    return (_text(row.get("system"), "system"), _text(row.get("instruction"), "instruction", True),
            _text(row.get("chosen_response"), "chosen_response"), _text(row.get("rejected_response"), "rejected_response"))


def _icr(row):
    return (_text(row.get("system"), "system"), _text(row.get("input"), "input", True),
            _text(row.get("chosen"), "chosen"), _text(row.get("rejected"), "rejected"))


def _first_column(row, names: tuple[str, ...], required: bool = False) -> str:
    """The first of ``names`` the rows have (else the last, read as missing); ``required``: none of them is an
    error naming them all."""
    from gym.api import RowError

    found = next((name for name in names if name in row), None if required else names[-1])
    if found is None:
        raise RowError("none of the columns " + ", ".join(repr(n) for n in names) + " is in this row "
                       f"(it has {', '.join(repr(k) for k in row) or 'none'})", field=names[0])
    return found


def _default(row):
    """The prompt in prompt, input, question or instruction; the answers in chosen / rejected or
    chosen_response / rejected_response (the first column present)."""
    prompt = _first_column(row, ("prompt", "input", "question", "instruction"), required=True)
    chosen = _first_column(row, ("chosen", "chosen_response"))
    rejected = _first_column(row, ("rejected", "rejected_response"))
    return (_text(row.get("system"), "system"), _text(row.get(prompt), prompt, True),
            _text(row.get(chosen), chosen), _text(row.get(rejected), rejected))


_CONVERTERS = {"intel": _intel, "argilla_chat": _argilla_chat, "prompt_pairs": _prompt_pairs, "ultra": _ultra,
               "argilla": _argilla, "icr": _icr, "default": _default}


def _kto_intel(row):
    return (_text(row.get("system"), "system"), _text(row.get("question"), "question", True),
            _text(row.get("completion"), "completion"), _label(row.get("label"), "label"))


def _kto_prompt(row):
    return (_text(row.get("system"), "system"), _text(row.get("prompt"), "prompt", True),
            _text(row.get("completion"), "completion"), _label(row.get("label"), "label"))


def _kto_argilla_chat(row):
    return (None, _message_content(row.get("completion"), 0, "completion", "user"),
            _message_content(row.get("completion"), 1, "completion", "assistant"), _label(row.get("label"), "label"))


def _kto_column(name: str):
    def convert(row):
        return (_text(row.get("system"), "system"), _text(row.get(name), name, True),
                _text(row.get("completion"), "completion"), _label(row.get("label"), "label"))

    return convert


def _kto_default(row):
    prompt = _first_column(row, ("prompt", "input", "question", "instruction"), required=True)
    return _kto_column(prompt)(row)


_KTO_CONVERTERS = {"intel": _kto_intel, "argilla_chat": _kto_argilla_chat, "prompt_pairs": _kto_prompt,
                   "ultra": _kto_prompt, "argilla": _kto_column("instruction"), "icr": _kto_column("input"),
                   "default": _kto_default}


def _builder(family: str, layout: str):
    def build(tokenizer: Any, cfg: Any, dataset: Any) -> LayoutStrategy:
        if is_kto(cfg):
            return LayoutStrategy(family, _KTO_CONVERTERS[layout], kto=True)
        return LayoutStrategy(family, _CONVERTERS[layout])

    build.__name__ = f"build_{family}_{layout}"
    return build


for _family in ("chatml", "llama3"):
    for _layout in LAYOUTS:
        globals()[f"build_{_family}_{_layout}"] = _builder(_family, _layout)


# ---------------------------------------------------------------------------------------- passthrough


class Passthrough:
    """TRL's layout as it is; conversations are rendered to text with the tokenizer's chat template (the
    prompt with the assistant's generation header, each response as the text the template adds after it)."""

    def __init__(self, tokenizer: Any, cfg: Any, dataset: Any):
        self.tokenizer = tokenizer
        self.kto = is_kto(cfg)
        self.template = None
        if getattr(cfg, "chat_template", None):
            from gym.api import resolve_chat_template

            self.template = resolve_chat_template(cfg.chat_template, cfg.chat_template_jinja, tokenizer)

    def _render(self, messages: list, generation_prompt: bool) -> str:
        kwargs = {"chat_template": self.template} if self.template else {}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **kwargs)

    def _response(self, prompt_messages: list, prompt_text: str, response: Any, field: str) -> str | None:
        from gym.api import RowError

        if response is None or (isinstance(response, list) and not response):
            return None
        if isinstance(response, dict):
            response = [response]
        if not isinstance(response, list):
            raise RowError(f"{field!r} should be chat messages like the prompt, got {type(response).__name__}",
                           field=field)
        if not any(str(m.get("content") or "").strip() for m in response if isinstance(m, dict)):
            return None
        full = self._render(prompt_messages + response, False)
        if not full.startswith(prompt_text):
            raise RowError(f"the chat template does not render the prompt as a prefix of prompt + {field}",
                           field=field)
        return full[len(prompt_text):]

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.api import RowError

        if "prompt" not in rows:
            if self.kto:
                raise RowError("passthrough needs a 'prompt' column (TRL's prompt / completion / label layout)",
                               field="prompt", row=0)
            rows = implicit_prompts(rows)
        names = KTO_COLUMNS if self.kto else COLUMNS
        responses = ("completion",) if self.kto else ("chosen", "rejected")
        out: dict[str, list] = {name: [] for name in names}
        for i, prompt in enumerate(rows["prompt"]):
            try:
                if isinstance(prompt, list):
                    if self.tokenizer is None or not (self.template or getattr(self.tokenizer, "chat_template", None)):
                        raise RowError("conversational rows need a chat template; set chat_template:", field="prompt")
                    prompt_text = self._render(prompt, True) if prompt else ""
                    out["prompt"].append(prompt_text)
                    for name in responses:
                        out[name].append(self._response(prompt, prompt_text, rows.get(name, [None] * (i + 1))[i], name))
                else:
                    out["prompt"].append(_text(prompt, "prompt") or "")
                    for name in responses:
                        out[name].append(_text(rows.get(name, [None] * (i + 1))[i], name))
                if self.kto:
                    out["label"].append(_label(rows.get("label", [None] * (i + 1))[i], "label"))
            except RowError as exc:
                exc.row = i
                raise
        return _complete(out)


def _shared_prefix(a: Any, b: Any) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def implicit_prompts(rows: dict[str, list]) -> dict[str, list]:
    """Rows with no ``prompt`` (chosen and rejected each hold the whole exchange, as in HH-RLHF): the prompt is
    what they share, as messages (the common leading turns) or as text (cut back to the last whitespace, so a
    shared first word of the answers stays in the answers)."""
    out: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
    size = len(next(iter(rows.values()))) if rows else 0
    for i in range(size):
        chosen = rows.get("chosen", [None] * size)[i]
        rejected = rows.get("rejected", [None] * size)[i]
        if chosen is None or rejected is None:
            out["prompt"].append(None)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            n = _shared_prefix(chosen, rejected)
            out["prompt"].append(chosen[:n])
            chosen, rejected = chosen[n:], rejected[n:]
        elif isinstance(chosen, str) and isinstance(rejected, str):
            n = _shared_prefix(chosen, rejected)
            while n > 0 and not chosen[n - 1].isspace():
                n -= 1
            out["prompt"].append(chosen[:n])
            chosen, rejected = chosen[n:], rejected[n:]
        else:
            out["prompt"].append(None)
        out["chosen"].append(chosen)
        out["rejected"].append(rejected)
    return out


def build_passthrough(tokenizer: Any, cfg: Any, dataset: Any) -> Passthrough:
    return Passthrough(tokenizer, cfg, dataset)


# --------------------------------------------------------------------------------------- user_defined


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


class UserDefinedPairs:
    def __init__(self, dataset: Any, kto: bool = False):
        self.kto = kto
        self.field_completion = getattr(dataset, "field_completion", None) or "completion"
        self.field_label = getattr(dataset, "field_label", None) or "label"
        self.completion_format = getattr(dataset, "completion_format", None) or "{completion}"
        self.field_system = getattr(dataset, "field_system", None) or "system"
        self.field_prompt = getattr(dataset, "field_prompt", None) or "prompt"
        self.field_chosen = getattr(dataset, "field_chosen", None) or "chosen"
        self.field_rejected = getattr(dataset, "field_rejected", None) or "rejected"
        self.prompt_format = getattr(dataset, "prompt_format", None) or "{prompt}"
        self.chosen_format = getattr(dataset, "chosen_format", None) or "{chosen}"
        self.rejected_format = getattr(dataset, "rejected_format", None) or "{rejected}"

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.api import RowError

        if self.field_prompt not in rows:
            raise RowError(f"no {self.field_prompt!r} column (field_prompt)", field=self.field_prompt, row=0)
        out: dict[str, list] = {name: [] for name in (KTO_COLUMNS if self.kto else COLUMNS)}
        for i, prompt in enumerate(rows[self.field_prompt]):
            def get(name):
                values = rows.get(name)
                return values[i] if values is not None else None

            try:
                system = _text(get(self.field_system), self.field_system) or ""
                prompt = _text(prompt, self.field_prompt)
                if self.kto:
                    completion = _text(get(self.field_completion), self.field_completion)
                    label = _label(get(self.field_label), self.field_label)
                else:
                    chosen = _text(get(self.field_chosen), self.field_chosen)
                    rejected = _text(get(self.field_rejected), self.field_rejected)
            except RowError as exc:
                exc.row = i
                raise
            out["prompt"].append(self.prompt_format.format_map(_Blank(system=system, prompt=prompt or ""))
                                 if prompt and prompt.strip() else "")
            if self.kto:
                out["completion"].append(self.completion_format.format_map(_Blank(completion=completion))
                                         if completion and completion.strip() else None)
                out["label"].append(label)
                continue
            out["chosen"].append(self.chosen_format.format_map(_Blank(chosen=chosen)) if chosen and chosen.strip() else None)
            out["rejected"].append(self.rejected_format.format_map(_Blank(rejected=rejected))
                                   if rejected and rejected.strip() else None)
        return _complete(out)


def build_user_defined(tokenizer: Any, cfg: Any, dataset: Any) -> UserDefinedPairs:
    """The format from the ``type:`` mapping, or from the entry's keys with ``type: user_defined.default``."""
    spec = dataset.type if isinstance(dataset.type, UserDefinedPairFormat) else dataset
    return UserDefinedPairs(spec, kto=is_kto(cfg))


# ------------------------------------------------------------------------------ chat_template for pairs


class ChatTemplatePairs(Passthrough):
    """Axolotl's ``chat_template.default`` preference layout: the conversation so far in ``field_messages``
    (default ``messages``), the two answers in ``field_chosen`` / ``field_rejected`` (a message, a list of
    messages or a text), rendered with the chat template (the dataset's, the config's or the tokenizer's).

    Registered as ``chat_template.default`` (and ``chat_template``) for the preference methods; the same names
    serve SFT conversations through the chat_template strategy."""

    def __init__(self, tokenizer: Any, cfg: Any, dataset: Any):
        super().__init__(tokenizer, cfg, dataset)
        if getattr(dataset, "chat_template", None):
            from gym.api import resolve_chat_template

            self.template = resolve_chat_template(dataset.chat_template, getattr(dataset, "chat_template_jinja", None),
                                                  tokenizer)
        self.field_messages = getattr(dataset, "field_messages", None) or "messages"
        self.field_chosen = getattr(dataset, "field_chosen", None) or "chosen"
        self.field_rejected = getattr(dataset, "field_rejected", None) or "rejected"
        mappings = dict(getattr(dataset, "message_property_mappings", None) or {})
        self.role_key = mappings.get("role", "role")
        self.content_key = mappings.get("content", "content")
        roles = {"human": "user", "gpt": "assistant", "model": "assistant"}
        for role, names in (getattr(dataset, "roles", None) or {}).items():
            roles.update({name: role for name in names})
        self.roles = roles

    def _message(self, message: Any, field: str, default_role: str) -> dict[str, str]:
        from gym.api import RowError

        if isinstance(message, str):
            return {"role": default_role, "content": message}
        if not isinstance(message, dict) or self.content_key not in message:
            raise RowError(f"{field!r} should hold messages with {self.content_key!r}", field=field)
        role = message.get(self.role_key, default_role)
        return {"role": self.roles.get(role, role), "content": message[self.content_key]}

    def _messages(self, value: Any, field: str, default_role: str) -> list[dict[str, str]] | None:
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        return [self._message(m, field, default_role) for m in items]

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.api import RowError

        if self.field_messages not in rows:
            raise RowError(f"no {self.field_messages!r} column (field_messages)", field=self.field_messages, row=0)
        size = len(rows[self.field_messages])
        converted: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        for i in range(size):
            try:
                prompt = self._messages(rows[self.field_messages][i], self.field_messages, "user") or []
                chosen = self._messages(rows.get(self.field_chosen, [None] * size)[i], self.field_chosen, "assistant")
                rejected = self._messages(rows.get(self.field_rejected, [None] * size)[i], self.field_rejected,
                                          "assistant")
            except RowError as exc:
                exc.row = i
                raise
            converted["prompt"].append(prompt)
            converted["chosen"].append(chosen)
            converted["rejected"].append(rejected)
        return super().process_batch(converted)


def build_chat_template_pairs(tokenizer: Any, cfg: Any, dataset: Any) -> ChatTemplatePairs:
    return ChatTemplatePairs(tokenizer, cfg, dataset)
