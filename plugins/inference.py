"""Loading a run's trained model for generation, and generating from it (shared by ``gym chat``, ``gym generate``
and ``gym serve``; not a plugin: it registers nothing).

:func:`load_trained` reads the config's ``output_dir`` (or another folder): a full model (``config.json`` and
weights) or an adapter (``adapter_config.json``), applied to the config's ``base_model``, merged into it or not.
The tokenizer and chat template are the ones the run saved with the model. A QLoRA / 8-bit run loads its base
quantized on a GPU; bitsandbytes' quantized layers are slow or missing on a CPU, so there the base is loaded in
full precision and gym says so.

torch, transformers and peft are imported inside the functions only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from gym.api import GymError, ModelError, say

ADAPTER_FILE = "adapter_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


# ------------------------------------------------------------------------------------------- settings


@dataclass
class Settings:
    """How to generate: the options of every command that generates."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    greedy: bool = False

    @property
    def sampling(self) -> bool:
        return not self.greedy and self.temperature > 0

    def check(self, name_of: Callable[[str], str] = lambda key: key) -> None:
        """Refuse values ``generate`` cannot use; ``name_of`` turns a field into the name the user typed."""
        if self.max_new_tokens < 1:
            raise GymError(f"{name_of('max_new_tokens')}: must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            raise GymError(f"{name_of('temperature')}: must be 0 or more (got {self.temperature}); 0 is greedy")
        if not 0 < self.top_p <= 1:
            raise GymError(f"{name_of('top_p')}: must be above 0 and at most 1 (got {self.top_p})")


@dataclass
class Generated:
    """One answer: its text, token counts and why it ended (``stop``: a stop token or string; ``length``)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


# -------------------------------------------------------------------------------------------- loading


def has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


def find_model_dir(cfg: Any, model_dir: str | None = None, config_path: str | None = None) -> tuple[Path, str]:
    """The folder holding the trained model and what it holds (``model`` or ``adapter``), or a GymError
    saying that nothing was trained there yet."""
    folder = Path(model_dir or cfg.output_dir).expanduser()
    where = f"--model-dir {folder}" if model_dir else f"output_dir {folder}"
    if (folder / ADAPTER_FILE).is_file():
        return folder, "adapter"
    if has_weights(folder):
        return folder, "model"
    if not folder.is_dir():
        found = "does not exist"
    else:
        found = f"holds no trained model (no {ADAPTER_FILE}, no config.json with weights)"
    hint = f"run `gym run {config_path or 'CONFIG'}` first" if not model_dir else "point it at a trained model's folder"
    checkpoints = sorted((int(p.name[len("checkpoint-"):]), p) for p in folder.glob("checkpoint-*")
                         if p.name[len("checkpoint-"):].isdigit() and (has_weights(p) or (p / ADAPTER_FILE).is_file()))
    if checkpoints:
        hint += f", or use a checkpoint: --model-dir {checkpoints[-1][1]}"
    raise ModelError(f"{where} {found}: {hint}")


def _device(cfg: Any) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not getattr(cfg, "use_cpu", False) else "cpu"


def _tokenizer(cfg: Any, folder: Path) -> Any:
    """The tokenizer saved with the model (its chat template included); the config's when none was saved."""
    from gym.api import load_tokenizer

    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        saved = cfg.model_copy(update={"tokenizer_config": str(folder), "tokens": None, "special_tokens": None,
                                       "revision_of_model": None})
        return load_tokenizer(saved)
    return load_tokenizer(cfg)


def _quantized(cfg: Any) -> str | None:
    if getattr(cfg, "load_in_4bit", False):
        return "4-bit"
    if getattr(cfg, "load_in_8bit", False):
        return "8-bit"
    return None


def load_trained(cfg: Any, model_dir: str | None = None, merge: bool | None = None, config_path: str | None = None,
                 tell: Callable[[str], None] = say) -> "TrainedModel":
    """The run's trained model, ready to generate (eval mode, on the GPU when there is one).

    ``merge``: fold an adapter into its base (faster generation); ``None`` merges unless the base is quantized.
    ``tell`` prints what was loaded and any choice made for the user (``say`` by default)."""
    from transformers.utils import logging as hf_logging

    from gym.api import load_model

    folder, kind = find_model_dir(cfg, model_dir, config_path)
    hf_logging.disable_progress_bar()  # the weights of one model: no bar
    device = _device(cfg)
    tokenizer = _tokenizer(cfg, folder)
    plain = {"load_in_4bit": False, "load_in_8bit": False}
    plain = {key: value for key, value in plain.items() if hasattr(cfg, key)}
    if kind == "model":
        if merge:
            tell("--merge: the folder holds a full model, not an adapter; there is nothing to merge")
        model_cfg = cfg.model_copy(update={"base_model": str(folder), "base_model_config": None,
                                           "revision_of_model": None, "model_config_overrides": None, **plain})
        model = load_model(model_cfg, tokenizer)
        merged = None
        what = "full model"
    else:
        quantized = _quantized(cfg)
        if quantized and device == "cpu":
            tell(f"no GPU: the {quantized} base of this run is loaded in full precision on the CPU instead (bitsandbytes "
                 "quantized layers need a GPU to be fast); answers can differ slightly from the quantized model's")
            quantized = None
            base_cfg = cfg.model_copy(update=plain)
        else:
            base_cfg = cfg
        if merge is None:
            merge = quantized is None
        elif merge and quantized:
            raise GymError(f"--merge: the base of this run is loaded {quantized}; merging would round the adapter into "
                           f"{quantized} weights. Serve it unmerged (leave out --merge), or run `gym merge-lora` and "
                           f"point --model-dir at {Path(cfg.output_dir) / 'merged'}")
        base = load_model(base_cfg, tokenizer)
        model = _apply_adapter(base, folder, cfg.base_model, merge)
        merged = merge
        what = f"adapter on {cfg.base_model}, " + ("merged" if merge else "unmerged") + (f", base {quantized}" if quantized else "")
    can_generate = getattr(model, "can_generate", None)
    if can_generate is not None and not can_generate():
        raise ModelError(f"{folder}: the model ({type(model).__name__}, from model_type "
                         f"{getattr(cfg, 'model_type', None) or 'AutoModelForCausalLM'}) does not generate text")
    if getattr(model, "hf_device_map", None) is None:
        model.to(device)
    model.eval()
    trained = TrainedModel(model=model, tokenizer=tokenizer, folder=folder, kind=kind, merged=merged, device=device)
    template = "chat template" if trained.has_chat_template else "no chat template: plain completion"
    tell(f"loaded {folder} ({what}; {template}) on {device}, {str(model.dtype).removeprefix('torch.')}")
    return trained


def _apply_adapter(base: Any, folder: Path, base_name: str, merge: bool) -> Any:
    import warnings

    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            model = PeftModel.from_pretrained(base, str(folder))
    except Exception as exc:
        raise ModelError(f"cannot apply the adapter in {folder} to base_model {base_name}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return model.merge_and_unload() if merge else model


# ----------------------------------------------------------------------------------------- generating


class _Cancel:
    """A stopping criterion that ends generation when set (a client went away, Ctrl-C)."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class TrainedModel:
    """A loaded model and tokenizer, and the ways gym's commands generate with them."""

    model: Any
    tokenizer: Any
    folder: Path
    kind: str  # "model" or "adapter"
    merged: bool | None
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.folder.resolve().name or "model"

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def stop_ids(self) -> list[int]:
        """End-of-sequence ids: the model's EOS ids and every special token (turn ends such as ``<|im_end|>``)."""
        ids = set(self.tokenizer.all_special_ids)
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.bos_token_id is not None and self.tokenizer.bos_token_id != self.tokenizer.eos_token_id:
            ids.discard(self.tokenizer.bos_token_id)
        return sorted(ids)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_ids[0]

    # --- prompts

    def encode_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a conversation rendered with the chat template, ready for the assistant's turn."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a plain prompt to complete (the tokenizer's BOS included, as in training)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_prompt(self, prompt: str, system: str | None = None, raw: bool = False) -> list[int]:
        """What ``gym chat --prompt`` sends: one user turn with the chat template, else the plain text."""
        if raw or not self.has_chat_template:
            return self.encode_text(prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.encode_messages(messages)

    def room(self, prompt_length: int, wanted: int) -> int:
        """How many new tokens fit after a prompt of ``prompt_length`` (at most ``wanted``); 0 when none."""
        limit = self.context_length
        return wanted if limit is None else max(0, min(wanted, limit - prompt_length))

    # --- generating

    def _kwargs(self, settings: Settings, max_new_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": self.stop_ids,
                                  "pad_token_id": self.pad_id, "use_cache": True}
        if settings.sampling:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _answer(self, prompt_length: int, new_ids: list[int], max_new_tokens: int) -> Generated:
        stops = set(self.stop_ids)
        cut = next((i for i, token in enumerate(new_ids) if token in stops), None)
        kept = new_ids if cut is None else new_ids[:cut]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        reason = "stop" if cut is not None or len(new_ids) < max_new_tokens else "length"
        return Generated(text, prompt_length, len(kept) + (cut is not None), reason)

    def generate(self, prompts: list[list[int]], settings: Settings) -> list[Generated]:
        """Answers to a batch of prompts (token ids), left-padded so every prompt ends where generation starts."""
        import torch

        width = max(len(p) for p in prompts)
        max_new = self.room(width, settings.max_new_tokens)
        if max_new == 0:
            raise GymError(f"a prompt of {width} tokens leaves no room in the model's context of "
                           f"{self.context_length} tokens")
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        with self.lock, torch.inference_mode():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      **self._kwargs(settings, max_new))
        return [self._answer(len(p), row, max_new) for p, row in zip(prompts, out[:, width:].tolist())]

    def stream(self, prompt: list[int], settings: Settings, stop: list[str] | tuple[str, ...] = (),
               seed: int | None = None) -> "Stream":
        """Text pieces of one answer as they are generated (see :class:`Stream`); ``seed`` seeds this answer."""
        return Stream(self, prompt, settings, list(stop), seed)


class Stream:
    """Iterate for the answer's text pieces as they are generated; ``result`` holds the whole answer after.

    Generation runs in a thread while this one reads a ``TextIteratorStreamer``. ``stop`` strings end the
    answer (they are not part of it); :meth:`cancel` ends it early. Holds the model's lock while it runs, so
    streams and batches from several threads take turns."""

    def __init__(self, trained: TrainedModel, prompt: list[int], settings: Settings, stop: list[str],
                 seed: int | None = None):
        self.trained, self.prompt, self.settings, self.stop = trained, prompt, settings, [s for s in stop if s]
        self.seed = seed
        self.max_new = trained.room(len(prompt), settings.max_new_tokens)
        if self.max_new == 0:
            raise GymError(f"the prompt is {len(prompt)} tokens: no room left in the model's context of "
                           f"{trained.context_length} tokens")
        self.result: Generated | None = None
        self._cancel = _Cancel()
        self._stopped_by_string = False
        self._streamer_done = False

    def cancel(self) -> None:
        self._cancel.event.set()

    def __iter__(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        trained = self.trained
        streamer = TextIteratorStreamer(trained.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
        outcome: dict[str, Any] = {}
        ids = torch.tensor([self.prompt], dtype=torch.long, device=trained.device)

        def work() -> None:
            try:
                with torch.inference_mode():
                    outcome["ids"] = trained.model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([self._cancel]),
                        **trained._kwargs(self.settings, self.max_new))
            except BaseException as exc:  # handed to the reading thread
                outcome["error"] = exc
                streamer.end()

        with trained.lock:
            if self.seed is not None:
                from transformers import set_seed

                set_seed(self.seed)
            worker = threading.Thread(target=work, name="gym-generate", daemon=True)
            worker.start()
            try:
                yield from self._pieces(streamer)
            finally:
                if not self._streamer_done:
                    self.cancel()
                    for _ in streamer:  # let the worker finish its current step and end the streamer
                        pass
                worker.join()
        if "error" in outcome:
            raise outcome["error"]
        new_ids = outcome["ids"][0, len(self.prompt):].tolist()
        result = trained._answer(len(self.prompt), new_ids, self.max_new)
        if self._stopped_by_string:
            result.text, result.finish_reason = self._text, "stop"
        self.result = result

    def _pieces(self, streamer: Any) -> Iterator[str]:
        """The streamer's text, held back just enough to cut the answer at the first stop string."""
        hold = max((len(s) for s in self.stop), default=1) - 1
        text, sent = "", 0
        for piece in streamer:
            text += piece
            found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
            if found:
                end = min(found)
                if end > sent:
                    yield text[sent:end]
                self._text, self._stopped_by_string = text[:end], True
                self.cancel()
                return
            safe = len(text) - hold
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        self._streamer_done = True
        if len(text) > sent:
            yield text[sent:]
