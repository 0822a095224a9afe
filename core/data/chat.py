"""Rendering a conversation with its chat template once, and finding where each message's content landed.

Each message's content is replaced by a marker, the conversation is rendered once, and the real
contents are put back in place of the markers: the text is exactly what the template renders, and
every content's character span is known without rendering any prefix again. Templates that change
contents (``| trim``) are detected once, with a probe; for those the conversation is rendered with its
real contents too and each content is looked up after the template text that precedes it.

Labels come from the spans: the whole text is tokenized once (one batch call for all conversations)
and the fast tokenizer's character -> token map turns each span's borders into token indices; a token is
trained when it overlaps a trained span. Tokenizers without that map tokenize the text cut at the span
borders instead.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from gym.data.tokenizing import IGNORE_INDEX

_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"
_MARKER_RE = re.compile(f"{_MARK_OPEN}(\\d+){_MARK_CLOSE}")

Span = tuple[int, int]


class TemplateError(ValueError):
    """The template failed on a conversation, or its output cannot be matched to the messages."""


def _compile(template: str):
    try:  # transformers' sandboxed environment, with the same globals and filters as apply_chat_template
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(template)
    except ImportError:  # pragma: no cover - older / newer transformers without the helper
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

        def raise_exception(message):
            raise TemplateError(message)

        env.globals["raise_exception"] = raise_exception
        return env.from_string(template)


class CompiledTemplate:
    """A chat template compiled as ``apply_chat_template`` compiles it. Compiled templates do not pickle, so it
    pickles as its source and worker processes (``dataset_processes``) compile their own."""

    def __init__(self, source: str):
        self.source = source
        self.compiled = _compile(source)

    def render(self, **variables: Any) -> str:
        return self.compiled.render(**variables)

    def __getstate__(self) -> dict:
        return {"source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["source"])


class ChatRenderer:
    """Renders conversations (lists of ``{role, content, ...}``) into text plus one span per message."""

    def __init__(self, template: str, tokenizer: Any):
        self.template = template
        self.compiled = CompiledTemplate(template)
        self.context = {k: v for k, v in dict(getattr(tokenizer, "special_tokens_map", {}) or {}).items()}
        self.verbatim = self._probe_verbatim()

    def _render(self, messages: list[dict]) -> str:
        import jinja2

        try:
            return self.compiled.render(
                messages=messages, tools=None, documents=None, add_generation_prompt=False, **self.context
            )
        except (jinja2.TemplateError, TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None

    def _probe_verbatim(self) -> bool:
        """Whether the template writes contents unchanged (then one render per conversation suffices)."""
        probe = [
            {"role": "system", "content": "  sys tem \n"},
            {"role": "user", "content": " hello there \n"},
            {"role": "assistant", "content": "\n general kenobi  "},
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": " y\n"},
        ]
        for messages in (probe, probe[1:]):
            try:
                real = self._render(messages)
                text, _ = self._render_with_markers(messages)
            except TemplateError:
                continue
            return real == text
        return False

    def _render_with_markers(self, messages: list[dict]) -> tuple[str, list[Span | None]]:
        marked = [{**m, "content": f"{_MARK_OPEN}{i}{_MARK_CLOSE}"} for i, m in enumerate(messages)]
        rendered = self._render(marked)
        spans: list[Span | None] = [None] * len(messages)
        parts: list[str] = []
        length = 0
        last = 0
        for match in _MARKER_RE.finditer(rendered):
            literal = rendered[last : match.start()]
            parts.append(literal)
            length += len(literal)
            index = int(match.group(1))
            if index >= len(messages) or spans[index] is not None:
                raise TemplateError("the chat template writes a message's content twice")
            content = messages[index]["content"]
            parts.append(content)
            spans[index] = (length, length + len(content))
            length += len(content)
            last = match.end()
        parts.append(rendered[last:])
        return "".join(parts), spans

    def render(self, messages: list[dict]) -> tuple[str, list[Span | None]]:
        """The rendered text and, per message, the character span of its content (``None`` if not rendered)."""
        if self.verbatim:
            return self._render_with_markers(messages)
        return self._render_and_search(messages)

    def _render_and_search(self, messages: list[dict]) -> tuple[str, list[Span | None]]:
        marked_text, marked_spans = self._render_with_markers(messages)
        real = self._render(messages)
        order = sorted((span[0], i) for i, span in enumerate(marked_spans) if span is not None)
        spans: list[Span | None] = [None] * len(messages)
        cursor = 0
        previous_end = 0
        for start, i in order:
            literal = marked_text[previous_end:start].strip()
            previous_end = marked_spans[i][1]
            if literal:
                at = real.find(literal, cursor)
                if at >= 0:
                    cursor = at + len(literal)
            content = messages[i]["content"]
            for candidate in (content, content.strip()):
                at = real.find(candidate, cursor)
                if at >= 0:
                    spans[i] = (at, at + len(candidate))
                    cursor = at + len(candidate)
                    break
            else:
                raise TemplateError(
                    f"message {i} ({messages[i].get('role')}): the chat template changes its content, so gym "
                    "cannot find it in the rendered text"
                )
        return real, spans


class SpanLabeler:
    """Tokenizes rendered texts in one batch call and labels the tokens inside trained spans."""

    def __init__(self, tokenizer: Any, end_of_turn_ids: set[int] | None = None):
        """``end_of_turn_ids``: the tokens that may end a turn (``eot_tokens``); by default every special token."""
        self.tokenizer = tokenizer
        if end_of_turn_ids is None:
            end_of_turn_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
            end_of_turn_ids |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self.special_ids = end_of_turn_ids
        self.use_offsets = bool(getattr(tokenizer, "is_fast", True))

    def encode(
        self, texts: list[str], trained: Sequence[Sequence[Span]], eos_after: Sequence[Sequence[int]],
        train_all: bool = False,
    ) -> dict[str, list[list[int]]]:
        """``trained[k]``: sorted, non-overlapping spans of text ``k`` to train; ``eos_after[k]``: character
        positions after which the next token is trained when it is a special token (an end-of-turn)."""
        if not texts:
            return {"input_ids": [], "labels": []}
        if train_all:
            ids = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            return {"input_ids": ids, "labels": [list(x) for x in ids]}
        if self.use_offsets:
            out = self.tokenizer(
                texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False
            )
            encodings = getattr(out, "encodings", None)
            if encodings:
                return self._label_by_encodings(out["input_ids"], encodings, trained, eos_after)
            self.use_offsets = False
        return self._encode_by_pieces(texts, trained, eos_after)

    def _label_by_encodings(self, all_ids, encodings, trained, eos_after):
        """Map span borders to tokens with the fast tokenizer's char -> token index (no per-token Python)."""
        all_labels = []
        for ids, enc, spans, eos_positions in zip(all_ids, encodings, trained, eos_after):
            n = len(ids)
            labels = [IGNORE_INDEX] * n
            for start, end in spans:
                first = _token_at_or_after(enc, start, end)
                last = _token_at_or_before(enc, end - 1, start)
                if first is None or last is None or last < first:
                    continue
                while first > 0 and enc.token_to_chars(first - 1)[1] > start:
                    first -= 1
                while last + 1 < n and enc.token_to_chars(last + 1)[0] < end:
                    last += 1
                labels[first : last + 1] = ids[first : last + 1]
            for position in eos_positions:
                t = _token_at_or_after(enc, position, position + 64)
                if t is not None and enc.token_to_chars(t)[0] < position:
                    t += 1
                if t is not None and t < n and ids[t] in self.special_ids:
                    labels[t] = ids[t]
            all_labels.append(labels)
        return {"input_ids": all_ids, "labels": all_labels}

    def _encode_by_pieces(self, texts, trained, eos_after):
        """For tokenizers without offsets: cut each text at span borders and tokenize the pieces."""
        pieces_per_text = []
        flat: list[str] = []
        for text, spans, eos_positions in zip(texts, trained, eos_after):
            cuts = sorted({0, len(text), *(p for s in spans for p in s), *eos_positions})
            pieces = []
            for a, b in zip(cuts, cuts[1:]):
                if b > a:
                    inside = any(s <= a and b <= e for s, e in spans)
                    pieces.append((a, inside))
                    flat.append(text[a:b])
            pieces_per_text.append(pieces)
        encoded = iter(
            self.tokenizer(flat, add_special_tokens=False, return_attention_mask=False)["input_ids"] if flat else []
        )
        all_ids, all_labels = [], []
        for pieces, eos_positions in zip(pieces_per_text, eos_after):
            ids: list[int] = []
            labels: list[int] = []
            eos_set = set(eos_positions)
            for start, inside in pieces:
                piece = next(encoded)
                piece_labels = list(piece) if inside else [IGNORE_INDEX] * len(piece)
                if start in eos_set and piece and piece[0] in self.special_ids:
                    piece_labels[0] = piece[0]
                ids += piece
                labels += piece_labels
            all_ids.append(ids)
            all_labels.append(labels)
        return {"input_ids": all_ids, "labels": all_labels}


def _token_at_or_after(enc: Any, position: int, limit: int) -> int | None:
    """The token holding the first character at or after ``position`` (before ``limit``) that has one."""
    for char in range(position, limit):
        token = enc.char_to_token(char)
        if token is not None:
            return token
    return None


def _token_at_or_before(enc: Any, position: int, limit: int) -> int | None:
    for char in range(position, limit - 1, -1):
        token = enc.char_to_token(char)
        if token is not None:
            return token
    return None
