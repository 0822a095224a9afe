"""Vision-language data for the vision plugin: the processor, the ``chat_template`` strategy of vision runs, the
rows' shape and the collator.

A row's text is rendered with the chat template, tokenized with the assistant turns labelled (as for text chat),
and each image placeholder the template wrote is replaced by the tokens the processor gives that image (their
number depends on the image's size for some families, so the strategy reads each image's header). The prepared
row keeps ``images``: one reference per image (an absolute path, a URL or a ``data:`` URI). The collator reads
the pictures, resizes them as ``image_size`` asks and runs the processor's image processor batch by batch: image
tensors are never stored in the prepared-data cache (docs/vision.md gives the figures behind that choice).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from gym.api import DataShape, IGNORE_INDEX, SourceCounts

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("input_ids", "labels", "images")
IMAGE_KEYS = ("image", "path", "url", "base64")
# submodules holding a multimodal encoder (vision, audio) in transformers' image-text-to-text models
ENCODER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder", "audio_tower")
_MARK = re.compile("\ue000(\\d+)\ue001")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")
_WHITESPACE = re.compile(r"\s*")
_RESAMPLING = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS", "nearest": "NEAREST"}


class ImageError(ValueError):
    """An image cannot be found or read."""


# --------------------------------------------------------------------------------------------- processor


def load_processor(cfg: Any, tokenizer: Any = None) -> Any:
    """The processor ``processor_type`` names, from ``base_model``, with gym's tokenizer (special tokens, chat
    template) in place of its own."""
    import transformers

    from gym.api import ConfigError, ModelError, resolve_source

    cls = getattr(transformers, cfg.processor_type, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"processor_type: transformers has no processor class named {cfg.processor_type!r} "
                          "(for example AutoProcessor)")
    source = resolve_source(cfg.base_model, "base_model", cfg.revision_of_model)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, **(cfg.processor_kwargs or {})}
    if cfg.revision_of_model:
        kwargs["revision"] = cfg.revision_of_model
    try:
        processor = cls.from_pretrained(source, **kwargs)
    except Exception as exc:  # a missing file, an unknown kwarg, remote code: all the user's to fix
        raise ModelError(f"processor_type: cannot load {cfg.processor_type} from {source}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if tokenizer is not None and hasattr(processor, "tokenizer"):
        processor.tokenizer = tokenizer
        if getattr(tokenizer, "chat_template", None) and (cfg.chat_template == "jinja" or not processor.chat_template):
            processor.chat_template = tokenizer.chat_template
    return processor


def chat_template_for(cfg: Any, dataset: Any, processor: Any, tokenizer: Any) -> str | None:
    """The template a vision dataset is rendered with: the dataset's own, the config's jinja, else the processor's
    (gym's named templates are for text: a vision model's processor knows where its images go), else the
    tokenizer's (which carries the config's ``chat_template``)."""
    from gym.api import say
    from gym.prompt_strategies.chat_template import dataset_chat_template

    named = dataset_chat_template(dataset, tokenizer)
    if named:
        return named
    if cfg.chat_template == "jinja" and cfg.chat_template_jinja:
        return cfg.chat_template_jinja
    own = getattr(processor, "chat_template", None)
    if own and cfg.chat_template not in (None, "tokenizer_default"):
        say(f"note: chat_template {cfg.chat_template}: this vision run uses the processor's own template, which "
            "places the images (gym's named templates are for text)")
    return own or getattr(tokenizer, "chat_template", None)


def image_processor_of(processor: Any) -> Any | None:
    """The processor's image processor, or ``None`` for a text-only model's (a tokenizer)."""
    return getattr(processor, "image_processor", None)


def freeze_vision_encoder(model: Any) -> int:
    """Freeze every parameter inside a multimodal encoder (``freeze_mm_modules``); the number frozen."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and any(part in ENCODER_NAMES for part in name.split(".")):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    if frozen:
        logger.info("freeze_mm_modules: %d parameters of the vision encoder frozen", frozen)
    return frozen


# ----------------------------------------------------------------------------------------------- images


def _data_uri(data: bytes) -> str:
    return "data:image;base64," + base64.b64encode(data).decode("ascii")


def image_reference(value: Any, base: Path | None, key: str = "image") -> str:
    """What a row stores for one image: an absolute path (relative ones resolve against ``base``, the dataset's
    folder), an http(s) URL, or a ``data:`` URI (for base64 text, bytes, PIL images and datasets' Image cells)."""
    if value is None:
        raise ImageError(f"the {key} is empty")
    if isinstance(value, dict):  # a datasets Image cell: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return _data_uri(value["bytes"])
        if value.get("path"):
            return image_reference(value["path"], base, key)
        raise ImageError(f"the {key} holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        return _data_uri(bytes(value))
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return _data_uri(buffer.getvalue())
    if not isinstance(value, str):
        raise ImageError(f"the {key} is a {type(value).__name__}, not a path, URL, base64 text or image")
    text = value.strip()
    if text.startswith("data:") or text.startswith(("http://", "https://")):
        return text
    if key == "base64":
        return "data:image;base64," + text
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.is_file():
        return str(path.resolve())
    if key != "path" and len(text) > 64 and _BASE64.match(text):
        return "data:image;base64," + text
    raise ImageError(f"image file not found: {text} (looked at {path})")


def open_image(reference: str) -> Any:
    """The PIL image a stored reference points at (not decoded yet: ``.size`` is read from the header)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if reference.startswith("data:"):
            _, _, payload = reference.partition(",")
            return Image.open(io.BytesIO(base64.b64decode(payload, validate=False)))
        if reference.startswith(("http://", "https://")):
            import urllib.request

            with urllib.request.urlopen(reference, timeout=30) as response:  # noqa: S310 - the user's own URL
                return Image.open(io.BytesIO(response.read()))
        return Image.open(reference)
    except (OSError, UnidentifiedImageError, binascii.Error, ValueError) as exc:
        shown = reference if not reference.startswith("data:") else reference[:40] + "..."
        raise ImageError(f"cannot read the image {shown}: {exc}") from None


def resize_image(image: Any, size: Any, algorithm: str) -> Any:
    """``image_size``: a number fits the image into a padded square of that side; (width, height) stretches it."""
    from PIL import Image

    resample = getattr(Image.Resampling, _RESAMPLING[algorithm])
    if size is None:
        return image
    if isinstance(size, int):
        scale = size / max(image.size)
        inner = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        square = Image.new("RGB", (size, size), (0, 0, 0))
        square.paste(image.resize(inner, resample), ((size - inner[0]) // 2, (size - inner[1]) // 2))
        return square
    return image.resize((int(size[0]), int(size[1])), resample)


def final_size(size: tuple[int, int], image_size: Any) -> tuple[int, int]:
    """The (width, height) the processor will see for an image of ``size``."""
    if image_size is None:
        return size
    if isinstance(image_size, int):
        return (image_size, image_size)
    return (int(image_size[0]), int(image_size[1]))


def load_rgb(reference: str, image_size: Any, algorithm: str) -> Any:
    image = open_image(reference)
    try:
        image = image.convert("RGB")
    except OSError as exc:
        raise ImageError(f"cannot decode the image {reference[:80]}: {exc}") from None
    return resize_image(image, image_size, algorithm)


# -------------------------------------------------------------------------------------------- strategy


def build_strategy(tokenizer: Any, cfg: Any, dataset: Any) -> "VisionChatStrategy":
    return VisionChatStrategy(tokenizer, cfg, dataset)


def dataset_folder(path: str) -> Path | None:
    """The folder local image paths of a dataset resolve against: the dataset file's folder (or the folder)."""
    if path.startswith("builtin:"):
        return None
    local = Path(path).expanduser()
    if local.is_file():
        return local.resolve().parent
    if local.is_dir():
        return local.resolve()
    return None


class VisionChatStrategy:
    """``chat_template`` rows with image parts -> ``input_ids`` (image tokens in place), ``labels``, ``images``."""

    def __init__(self, tokenizer: Any, cfg: Any, dataset: Any):
        from gym.api import CompiledTemplate, DataError, SpanLabeler
        from gym.prompt_strategies.chat_template import end_of_turn_ids, read_chat_options

        self.tokenizer = tokenizer
        self.processor = load_processor(cfg, tokenizer)
        self.image_processor = image_processor_of(self.processor)
        self.processor_name = type(self.processor).__name__
        self.path = dataset.path
        self.base = dataset_folder(dataset.path)
        template = chat_template_for(cfg, dataset, self.processor, tokenizer)
        if not template:
            raise DataError(f"dataset {dataset.path}: neither the processor nor the tokenizer has a chat template; "
                            "set `chat_template:`")
        self.template = template
        self.compiled = CompiledTemplate(template)
        self.context = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        self.labeler = SpanLabeler(tokenizer, end_of_turn_ids(tokenizer, cfg.eot_tokens))
        read_chat_options(self, cfg, dataset)
        self.image_size = cfg.image_size
        self.resize = cfg.image_resize_algorithm
        self._placeholder: tuple[int, ...] | None = None
        self._expansions: dict[tuple[int, int], list[int]] = {}

    # ----------------------------------------------------------------------------------- messages

    def _messages(self, conversation: Any, images: Any, i: int) -> tuple[list[dict], list[str]]:
        """Messages with content as a list of parts, and one image reference per image part, in order."""
        from gym.api import row_error

        field = self.field_messages
        if not isinstance(conversation, list) or not conversation:
            raise row_error(f"{field!r} must be a non-empty list of messages", field, i)
        pool = list(images) if isinstance(images, (list, tuple)) else ([] if images is None else [images])
        mappings = self.mappings
        if isinstance(conversation[0], dict) and "role" not in conversation[0] and "from" in conversation[0]:
            mappings = {**mappings, "role": "from", "content": "value"}
        messages, references, used = [], [], 0
        for j, message in enumerate(conversation):
            where = f"{field}[{j}]"
            if not isinstance(message, dict) or mappings["role"] not in message:
                raise row_error(f"{where} must be a mapping with a {mappings['role']!r}", where, i)
            role = self.role_names.get(str(message[mappings["role"]]))
            if role is None:
                raise row_error(f"{where}: unknown role {message[mappings['role']]!r}; map it with `roles:`", where, i)
            if self.drop_system and role == "system":
                continue
            content = message.get(mappings["content"])
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not isinstance(content, list):
                raise row_error(f"{where}.{mappings['content']} must be text or a list of parts", where, i)
            parts = []
            for k, part in enumerate(content):
                at = f"{where}.{mappings['content']}[{k}]"
                if isinstance(part, str):
                    part = {"type": "text", "text": part}
                if not isinstance(part, dict):
                    raise row_error(f"{at} must be a mapping like {{type: text, text: ...}}", at, i)
                kind = part.get("type") or ("text" if "text" in part else "image" if any(
                    part.get(key) is not None for key in IMAGE_KEYS) else None)
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text") or "")})
                elif kind in ("image", "image_url"):
                    if self.image_processor is None:
                        raise row_error(
                            f"{at} is an image, but the processor of base_model ({self.processor_name}) has no image "
                            "processor: this is a text-only model", at, i)
                    key = next((key for key in IMAGE_KEYS if part.get(key) is not None), None)
                    value = part.get(key) if key else None
                    if kind == "image_url" and value is None:  # OpenAI's {type: image_url, image_url: {url: ...}}
                        value, key = part.get("image_url"), "url"
                        value = value.get("url") if isinstance(value, dict) else value
                    if value is None:
                        if used >= len(pool):
                            raise row_error(
                                f"{at} is an image part with no picture of its own, and the row's 'images' column has "
                                f"only {len(pool)} image(s) for more image parts", at, i)
                        value, key = pool[used], "image"
                        used += 1
                    try:
                        references.append(image_reference(value, self.base, key))
                    except ImageError as exc:
                        raise row_error(str(exc), at, i) from None
                    parts.append({"type": "image"})
                else:
                    raise row_error(f"{at}: unknown part type {part.get('type')!r} (text or image)", at, i)
            messages.append({"role": role, "content": parts})
        if used < len(pool):
            raise row_error(f"the row's 'images' column holds {len(pool)} image(s) but its messages have only {used} "
                            "image part(s) that take one", "images", i)
        return messages, references

    def _render(self, messages: list[dict]) -> str:
        return self.compiled.render(messages=messages, tools=None, documents=None, add_generation_prompt=False,
                                    **self.context)

    def render(self, messages: list[dict]) -> tuple[str, list[list[tuple[int, int]]]]:
        """The rendered text and, per message, the character spans of its text parts."""
        texts: list[str] = []
        marked = []
        for message in messages:
            parts = []
            for part in message["content"]:
                if part["type"] == "text":
                    parts.append({"type": "text", "text": f"\ue000{len(texts)}\ue001"})
                    texts.append(part["text"])
                else:
                    parts.append(part)
            marked.append({**message, "content": parts})
        rendered = self._render(marked)
        out, spans, last, length = [], [None] * len(texts), 0, 0
        for match in _MARK.finditer(rendered):
            literal = rendered[last:match.start()]
            out.append(literal)
            length += len(literal)
            index = int(match.group(1))
            out.append(texts[index])
            spans[index] = (length, length + len(texts[index]))
            length += len(texts[index])
            last = match.end()
        out.append(rendered[last:])
        text = "".join(out)
        real = self._render(messages)
        if real != text:  # the template changes the texts (trims them): find each after the previous one
            text, cursor = real, 0
            for index, content in enumerate(texts):
                spans[index] = None
                for candidate in (content, content.strip()):
                    at = real.find(candidate, cursor) if candidate else -1
                    if at >= 0:
                        spans[index] = (at, at + len(candidate))
                        cursor = at + len(candidate)
                        break
        per_message, k = [], 0
        for message in messages:
            found = []
            for part in message["content"]:
                if part["type"] == "text":
                    if spans[k] is not None and spans[k][1] > spans[k][0]:
                        found.append(spans[k])
                    k += 1
            per_message.append(found)
        return text, per_message

    # ------------------------------------------------------------------------------------ image tokens

    def _probe(self, size: tuple[int, int]) -> tuple[tuple[int, ...], list[int]]:
        """(the tokens the template writes for one image, the tokens the processor puts there for an image of
        ``size``), found by tokenizing one rendered image message with and without the processor."""
        from PIL import Image

        from gym.api import DataError

        if size in self._expansions and self._placeholder is not None:
            return self._placeholder, self._expansions[size]
        text = self._render([{"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"},
                                                          {"type": "text", "text": "now"}]}])
        plain = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        blank = Image.new("RGB", size, (127, 127, 127))
        try:
            try:
                out = self.processor(text=[text], images=[blank], add_special_tokens=False)
            except (ValueError, TypeError, IndexError):
                out = self.processor(text=[text], images=[[blank]], add_special_tokens=False)
        except Exception as exc:
            raise DataError(f"dataset {self.path}: the processor ({self.processor_name}) fails on an image of "
                            f"{size[0]}x{size[1]}: {type(exc).__name__}: {exc}") from None
        full = list(out["input_ids"][0])
        start = 0
        while start < min(len(plain), len(full)) and plain[start] == full[start]:
            start += 1
        end = 0
        while end < min(len(plain), len(full)) - start and plain[-1 - end] == full[-1 - end]:
            end += 1
        if start + end == len(plain) and start > 0:  # the expansion begins with the placeholder (<image> x N):
            start -= 1  # the placeholder is the last token the prefix took
        placeholder = tuple(plain[start:len(plain) - end])
        if not placeholder:
            raise DataError(f"dataset {self.path}: the chat template writes no image placeholder that the processor "
                            f"({self.processor_name}) expands; choose the model's own chat template")
        self._placeholder = placeholder
        self._expansions[size] = full[start:len(full) - end]
        return placeholder, self._expansions[size]

    def _expand(self, ids: list[int], labels: list[int], references: list[str], i: int) -> tuple[list, list]:
        from gym.api import row_error

        sizes = []
        for k, reference in enumerate(references):
            try:
                sizes.append(final_size(open_image(reference).size, self.image_size))
            except ImageError as exc:
                raise row_error(str(exc), f"image {k}", i) from None
        if not sizes:
            placeholder = self._placeholder
            if placeholder and _find(ids, placeholder, 0) >= 0:
                raise row_error("the text holds an image placeholder but the row has no image", "messages", i)
            return ids, labels
        new_ids: list[int] = []
        new_labels: list[int] = []
        position = 0
        for k, size in enumerate(sizes):
            placeholder, expansion = self._probe(size)
            at = _find(ids, placeholder, position)
            if at < 0:
                raise row_error(f"the row has {len(sizes)} image(s) but its rendered text holds only {k} image "
                                f"placeholder(s) for the processor ({self.processor_name}) to fill", "messages", i)
            new_ids += ids[position:at] + expansion
            new_labels += labels[position:at] + [IGNORE_INDEX] * len(expansion)
            position = at + len(placeholder)
        if _find(ids, self._placeholder, position) >= 0:
            raise row_error(f"the rendered text holds more image placeholders than the row's {len(sizes)} image(s) "
                            "(is the image token written in a text part?)", "messages", i)
        return new_ids + ids[position:], new_labels + labels[position:]

    # -------------------------------------------------------------------------------------- batches

    def process_batch(self, rows: dict[str, list]) -> dict[str, list]:
        from gym.api import column, row_error

        conversations = column(rows, self.field_messages, "messages field (set field_messages)")
        images = rows.get("images") or [None] * len(conversations)
        texts, trained, eos_after, references = [], [], [], []
        for i, conversation in enumerate(conversations):
            messages, refs = self._messages(conversation, images[i], i)
            try:
                text, spans = self.render(messages)
            except Exception as exc:  # jinja errors of every kind: the template failed on this row
                raise row_error(f"the chat template failed: {type(exc).__name__}: {exc}", self.field_messages, i) from None
            train_spans, ends = [], []
            for message, message_spans in zip(messages, spans):
                is_trained = message["role"] in self.roles_to_train
                if is_trained:
                    train_spans += message_spans
                if message_spans and (self.train_on_eos == "all" or (is_trained and self.train_on_eos != "none")):
                    ends.append(_WHITESPACE.match(text, message_spans[-1][1]).end())
            if self.train_on_eos == "last":
                ends = ends[-1:]
            texts.append(text)
            trained.append(sorted(train_spans))
            eos_after.append(sorted(ends))
            references.append(refs)
        encoded = self.labeler.encode(texts, trained, eos_after, train_all=self.train_all)
        out_ids, out_labels = [], []
        for i, (ids, labels, refs) in enumerate(zip(encoded["input_ids"], encoded["labels"], references)):
            ids, labels = self._expand(list(ids), list(labels), refs, i)
            out_ids.append(ids)
            out_labels.append(labels)
        return {"input_ids": out_ids, "labels": out_labels, "images": references}


def _find(ids: list[int], pattern: tuple[int, ...] | None, start: int) -> int:
    if not pattern:
        return -1
    first, n = pattern[0], len(pattern)
    for at in range(start, len(ids) - n + 1):
        if ids[at] == first and tuple(ids[at:at + n]) == pattern:
            return at
    return -1


# ------------------------------------------------------------------------------------------- row shape


class VisionRows(DataShape):
    """Rows of a vision run: ``input_ids``, ``labels`` and ``images`` (references), never packed; rows longer
    than ``sequence_len`` are dropped (cutting them could cut an image's tokens)."""

    columns = ("input_ids", "labels")

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.sequence_len = cfg.sequence_len
        self.min_len = getattr(cfg, "min_sample_len", None) or 0
        self.pad_to = cfg.sequence_len if getattr(cfg, "pad_to_sequence_len", False) else None

    def features(self, columns: tuple[str, ...]) -> Any:
        import datasets

        if tuple(columns) != ROW_COLUMNS:
            return None
        return datasets.Features({
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "images": datasets.List(datasets.Value("string")),
        })

    def samples(self, dataset: Any, counts: SourceCounts, work: Path, tokenizer: Any = None) -> Any:
        import numpy as np

        from gym.plugins.sft.rows import DROP_REASONS, LengthRules, SampleFate

        rules = LengthRules(self.sequence_len, False, self.min_len, f"dataset {counts.path} ({counts.type})")
        fates = []
        for start in range(0, len(dataset), 1000):
            part = dataset[start:start + 1000]
            fates += rules({"input_ids": part["input_ids"], "labels": part["labels"]})["_fate"]
        fate = np.asarray(fates, dtype=np.int64)
        for reason, text in DROP_REASONS.items():
            counts.drop(text, int((fate == reason).sum()))
        keep = np.flatnonzero(fate == SampleFate.KEEP)
        counts.kept = int(len(keep))
        return dataset.select(keep)

    def rows(self, dataset: Any, split: str, work: Path, tokenizer: Any = None) -> tuple[Any, dict[str, Any]]:
        from gym.plugins.sft.rows import token_counts

        tokens, trained = token_counts(dataset)
        images = sum(len(x) for x in dataset["images"]) if "images" in dataset.column_names else 0
        columns = [c for c in ROW_COLUMNS if c in dataset.column_names]
        return dataset.select_columns(columns), {"tokens": tokens, "trained_tokens": trained, "images": images}

    def describe(self, split: str, samples: int, rows: int, figures: dict[str, Any]) -> str:
        return (f"{split}: {samples:,} samples with {figures.get('images', 0):,} images, "
                f"{figures.get('tokens', 0):,} tokens ({figures.get('trained_tokens', 0):,} trained)")

    def collator(self, tokenizer: Any, training: bool) -> Any:
        return VisionCollator(self.cfg, tokenizer, pad_to=self.pad_to)

    def preview(self, dataset: Any, tokenizer: Any, count: int = 3) -> list[str]:
        lines = []
        for i in range(min(count, len(dataset))):
            row = dataset[i]
            pieces = [f"{tokenizer.decode([t])!r}({label})" for t, label in zip(row["input_ids"], row["labels"])]
            lines.append(f"sample {i} ({len(row.get('images') or [])} images): " + " ".join(pieces))
        return lines


# -------------------------------------------------------------------------------------------- collator


class VisionCollator:
    """Pads ``input_ids`` / ``labels`` (right, -100 for labels) and adds the image processor's tensors for the
    batch's pictures (``pixel_values`` and what the family needs with them, e.g. ``image_grid_thw``)."""

    def __init__(self, cfg: Any, tokenizer: Any, pad_to: int | None = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.pad_to = pad_to
        self.image_size = cfg.image_size
        self.resize = cfg.image_resize_algorithm
        self._processor = None
        self._token_types: int | None | bool = False  # False: not looked up yet

    @property
    def processor(self) -> Any:
        if self._processor is None:
            self._processor = load_processor(self.cfg, self.tokenizer)
        return self._processor

    def pictures(self, rows: list[dict[str, Any]]) -> list[list[Any]]:
        out = []
        for row in rows:
            try:
                out.append([load_rgb(ref, self.image_size, self.resize) for ref in row.get("images") or ()])
            except ImageError as exc:
                from gym.api import DataError

                raise DataError(f"while batching: {exc}") from None
        return out

    def image_tensors(self, pictures: list[list[Any]]) -> dict[str, Any]:
        if not any(pictures):
            return {}
        image_processor = image_processor_of(self.processor)
        nested = [p for p in pictures if p]
        try:
            out = image_processor(images=nested, return_tensors="pt")
        except (ValueError, TypeError):
            out = image_processor(images=[img for p in nested for img in p], return_tensors="pt")
        return dict(out)

    def _image_token_id(self) -> int | None:
        if self._token_types is False:
            token = getattr(self.processor, "image_token", None)
            self._token_types = self.tokenizer.convert_tokens_to_ids(token) if token else None
        return self._token_types

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(max(len(row["input_ids"]) for row in rows), self.pad_to or 0)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[r, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            attention[r, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        batch.update(self.image_tensors(self.pictures(rows)))
        if "pixel_values" in batch and type(self.processor).__name__.startswith("Gemma3"):
            image_id = self._image_token_id()  # Gemma 3 attends bidirectionally inside an image: it needs the types
            if image_id is not None:
                batch["token_type_ids"] = (input_ids == image_id).long()
        return batch
