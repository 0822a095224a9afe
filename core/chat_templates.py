"""Named chat templates and how ``chat_template`` / ``chat_template_jinja`` pick one (no torch imports).

``chat_template:`` in a config is one of:

- ``tokenizer_default``: the template the tokenizer ships with;
- ``tokenizer_default_fallback_<name>``: the tokenizer's own, or the built-in ``<name>`` when it has none;
- ``jinja``: the Jinja source given in ``chat_template_jinja``;
- a built-in name from :data:`BUILTIN_CHAT_TEMPLATES` (chatml, llama3, mistral, ...);
- the name of a family whose tokenizer ships its template (:data:`MODEL_OWN_TEMPLATES`: llava, qwen2_vl, ...):
  the tokenizer's own template, as ``tokenizer_default``.

The templates below are written for gym. They render the usual turn markers of each model family; the
model's own special tokens (``<|eot_id|>``, ``<end_of_turn>`` ...) must exist in the tokenizer to be
encoded as single tokens.
"""

from __future__ import annotations

from typing import Any

from gym.errors import ConfigError

# Turns are `<|im_start|>ROLE\nCONTENT<|im_end|>\n`.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ChatML with Qwen 2.5's default system prompt when the conversation has none.
QWEN_25 = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}" + CHATML
)

# Llama 3 headers; contents are trimmed as Meta's template does.
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + (message['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

_SPLIT_SYSTEM = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_text = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system_text = '' %}{% set turns = messages %}{% endif %}"
)

# Llama 2 chat: `<s>[INST] <<SYS>>..<</SYS>> user [/INST] answer </s>` per exchange.
LLAMA2 = (
    _SPLIT_SYSTEM + "{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' }}"
    "{% if loop.first and system_text %}{{ '<<SYS>>\\n' + system_text + '\\n<</SYS>>\\n\\n' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% else %}{{ raise_exception('the llama2 chat template knows the roles system, user and assistant, not '"
    " + message['role']) }}{% endif %}"
    "{% endfor %}"
)

# Mistral instruct (v1 style): `<s>[INST] user [/INST]answer</s>`; a system prompt opens the first user turn.
MISTRAL = (
    _SPLIT_SYSTEM + "{{ bos_token }}{% for message in turns %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' }}{% if loop.first and system_text %}{{ system_text + '\\n\\n' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('the mistral chat template knows the roles system, user and assistant, not '"
    " + message['role']) }}{% endif %}"
    "{% endfor %}"
)

# Phi-3: `<|user|>\ncontent<|end|>\n`.
PHI_3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Gemma: the assistant is `model`; a system prompt opens the first user turn (as Gemma 3 does).
GEMMA = (
    "{{ bos_token }}" + _SPLIT_SYSTEM + "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{% if loop.first and system_text %}{{ system_text + '\\n\\n' }}{% endif %}"
    "{{ (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Alpaca's instruction / response headings as a chat; each answer ends with the EOS token.
ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% else %}{{ raise_exception('the alpaca chat template knows the roles system, user and assistant, not '"
    " + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)

BUILTIN_CHAT_TEMPLATES: dict[str, str] = {
    "alpaca": ALPACA,
    "chatml": CHATML,
    "gemma": GEMMA,
    "gemma3": GEMMA,
    "llama2": LLAMA2,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
    "phi_3": PHI_3,
    "phi3": PHI_3,
    "qwen_25": QWEN_25,
}

# Template names of model families whose tokenizer (or processor) ships the family's template: gym uses that
# template, so configs that name the family run unchanged. A tokenizer without a template is an error then.
MODEL_OWN_TEMPLATES: tuple[str, ...] = (
    "falcon_h1", "gemma3n", "gemma4", "jamba", "llama4", "llava", "pixtral", "qwen2_vl", "qwen3", "qwen3_5",
)

TOKENIZER_DEFAULT = "tokenizer_default"
FALLBACK_PREFIX = "tokenizer_default_fallback_"
JINJA = "jinja"

# Every value `chat_template:` accepts (plus `tokenizer_default_fallback_<built-in name>`).
CHAT_TEMPLATE_NAMES: tuple[str, ...] = (
    TOKENIZER_DEFAULT, JINJA, *sorted(BUILTIN_CHAT_TEMPLATES), *MODEL_OWN_TEMPLATES
)


def is_known_chat_template(name: str) -> bool:
    """Whether ``name`` is a value ``chat_template:`` accepts."""
    if name in CHAT_TEMPLATE_NAMES:
        return True
    return name.startswith(FALLBACK_PREFIX) and name[len(FALLBACK_PREFIX):] in BUILTIN_CHAT_TEMPLATES


def resolve_chat_template(
    cfg_chat_template: str | None, cfg_chat_template_jinja: str | None, tokenizer: Any = None
) -> str | None:
    """The Jinja source that ``chat_template`` / ``chat_template_jinja`` ask for.

    ``None`` means "nothing asked": leave the tokenizer's template as it is. ``tokenizer_default``
    returns the tokenizer's own template (``None`` if it has none). Raises :class:`ConfigError` for an
    unknown name, or ``jinja`` without ``chat_template_jinja``.
    """
    own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if isinstance(own, dict):  # tokenizers with several named templates keep the main one as "default"
        own = own.get("default")
    if cfg_chat_template is None:
        return cfg_chat_template_jinja or None
    if cfg_chat_template == JINJA:
        if not cfg_chat_template_jinja:
            raise ConfigError("chat_template: `jinja` needs the template source in `chat_template_jinja`")
        return cfg_chat_template_jinja
    if cfg_chat_template == TOKENIZER_DEFAULT:
        return own
    if cfg_chat_template.startswith(FALLBACK_PREFIX):
        fallback = cfg_chat_template[len(FALLBACK_PREFIX):]
        if fallback not in BUILTIN_CHAT_TEMPLATES:
            raise ConfigError(
                f"chat_template: {cfg_chat_template!r} falls back to the unknown template {fallback!r} "
                f"(built-in: {', '.join(sorted(BUILTIN_CHAT_TEMPLATES))})"
            )
        return own or BUILTIN_CHAT_TEMPLATES[fallback]
    if cfg_chat_template in BUILTIN_CHAT_TEMPLATES:
        return BUILTIN_CHAT_TEMPLATES[cfg_chat_template]
    if cfg_chat_template in MODEL_OWN_TEMPLATES:
        if tokenizer is not None and not own:
            raise ConfigError(
                f"chat_template: {cfg_chat_template!r} means the model's own template, and this tokenizer has none; "
                "give the template in chat_template_jinja (with chat_template: jinja) or name a built-in one"
            )
        return own
    raise ConfigError(
        f"chat_template: unknown template {cfg_chat_template!r}; use one of {', '.join(CHAT_TEMPLATE_NAMES)}, "
        f"or {FALLBACK_PREFIX}<name>"
    )
