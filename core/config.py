"""Reading, composing and validating the YAML config.

The flow: YAML (with line numbers remembered) -> omegaconf (``${...}`` interpolation, command-line
overrides) -> plain dict -> checks for keys gym knows but does not support, or that were renamed ->
the Pydantic model composed from the core's fields and every plugin's fragment -> each plugin's
cross-field rules. Every problem is collected and reported at once, each naming its dotted field path and,
where known, the YAML line.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Union

import yaml
from pydantic import BaseModel, ValidationError, create_model

from gym import compat
from gym.errors import ConfigError
from gym.schema import CoreConfig, DatasetConfig


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: the dotted field path and what is wrong with it."""

    field: str
    message: str
    line: int | None = None
    plugin: str | None = None

    def render(self, source: str | None = None, override: str | None = None) -> str:
        where = self.field or "<config>"
        if override is not None:
            where += f" (override {override})"
        elif self.line is not None:
            where += f" ({source or 'config'}:{self.line})"
        owner = f" [{self.plugin}]" if self.plugin else ""
        return f"{where}: {self.message}{owner}"


# ----------------------------------------------------------------------------------- reading the YAML


MAX_VALUES = 100_000  # values a config may expand to (YAML aliases can nest into billions)


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds with every alias expanded, counted without expanding them."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            if isinstance(node, yaml.MappingNode):
                sizes[id(node)] = 1 + sum(size(k) + size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                sizes[id(node)] = 1 + sum(size(item) for item in node.value)
            else:
                sizes[id(node)] = 1
        return sizes[id(node)]

    return size(root)


def _line_index(text: str, source: str = "config") -> dict[str, int]:
    """Map dotted paths (``datasets.0.type``) to the 1-based line where they are written. A key written twice in
    one mapping is an error naming both lines (YAML would silently keep the last); a document whose aliases
    expand to more than :data:`MAX_VALUES` values is refused before anything expands it."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None and _expanded_size(root) > MAX_VALUES:
        raise ConfigError(
            f"{source}: the config expands to more than {MAX_VALUES:,} values (YAML aliases nested in aliases?); "
            "write it out plainly"
        )
    index: dict[str, int] = {}
    duplicates: list[str] = []

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                line = key_node.start_mark.line + 1
                if path in index:
                    duplicates.append(f"{path}: written twice, on lines {index[path]} and {line}; keep one")
                index[path] = line
                walk(value_node, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                path = f"{prefix}.{i}"
                index[path] = item.start_mark.line + 1
                walk(item, path)

    if root is not None:
        walk(root, "")
    if duplicates:
        raise ConfigError(f"{source}: {len(duplicates)} key(s) written twice", problems=duplicates)
    return index


@dataclass
class RawConfig:
    """The config as read and resolved, before validation, with where each key was written."""

    data: dict[str, Any]
    source: str
    lines: dict[str, int]
    overrides: dict[str, str] = field(default_factory=dict)  # dotted key -> the KEY=VALUE given for it

    def override_of(self, path: str) -> str | None:
        """The command-line override that set ``path`` (or a mapping holding it), if one did."""
        while path:
            if path in self.overrides:
                return self.overrides[path]
            path = path.rpartition(".")[0]
        return None

    def line_of(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return None


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: write KEY=VALUE, for example learning_rate=1e-4 or datasets.0.path=data.jsonl")
    key, _, value = item.partition("=")
    key = key.strip().removeprefix("--")
    if not key:
        raise ConfigError(f"override {item!r}: the key before '=' is empty")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (dict, list)) and not value.lstrip().startswith(("{", "[")):
        parsed = value  # "Answer:" is text, not a mapping; structures need flow style: key={a: 1}
    if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
        parsed = value.strip()  # save_strategy=no is the word "no"; only true / false are booleans here
    return key, parsed


def read_config(path: str | Path, overrides: Iterable[str] = ()) -> RawConfig:
    """Read YAML, apply ``KEY=VALUE`` overrides and resolve ``${...}`` interpolation (with omegaconf)."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        lines = _line_index(text, source)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys to values, not {type(data).__name__}")

    overrides = list(overrides)
    if not overrides and "${" not in text:
        return RawConfig(data=data, source=source, lines=lines)  # nothing for omegaconf to do; skip its import
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    given: dict[str, str] = {}
    try:
        conf = OmegaConf.create(data)
        for item in overrides:
            key, value = _parse_override(item)
            given[key] = item
            try:
                OmegaConf.update(conf, key, value, merge=True, force_add=True)
            except (ValueError, TypeError, IndexError, KeyError, AssertionError) as exc:  # e.g. datasets.x: a list
                raise ConfigError(f"override {item!r}: {key} cannot be set here ({type(exc).__name__}: {exc}); "
                                  "a list takes numbers (datasets.0.path=...)") from None
        resolved = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        message = str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{message}") from None
    if not isinstance(resolved, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys to values")
    return RawConfig(data=resolved, source=source, lines=lines, overrides=given)


# ------------------------------------------------------------------------------ composing the model


@dataclass(frozen=True)
class ComposedSchema:
    model: type[BaseModel]
    dataset_model: type[BaseModel]
    key_owner: dict[str, str]  # top-level key -> plugin that contributed it ("core" for the core)
    dataset_key_owner: dict[str, str]  # dataset-entry key -> strategy that contributed it


def compose_schema(manager) -> ComposedSchema:
    """Build the config model from the core's fields and every loaded plugin's fragment."""
    from gym.errors import PluginError

    key_owner = {name: "core" for name in CoreConfig.model_fields}
    fragments: list[type[BaseModel]] = []
    for plugin_name, fragment in manager.config_fragments():
        for key in fragment.model_fields:
            if key in key_owner:
                other = key_owner[key]
                raise PluginError(
                    f"config key {key!r} is declared twice: by {manager.describe(plugin_name)} and by "
                    f"{'the gym core' if other == 'core' else manager.describe(other)}"
                )
            key_owner[key] = plugin_name
        fragments.append(fragment)

    dataset_fields: dict[str, Any] = {}
    dataset_key_owner: dict[str, str] = {name: "core" for name in DatasetConfig.model_fields}
    for strategy, plugin_name in manager.all_strategies():
        if strategy.options is None:
            continue
        for key, info in strategy.options.model_fields.items():
            if key in dataset_key_owner and dataset_key_owner[key] == "core":
                raise PluginError(
                    f"dataset key {key!r} of strategy {strategy.name!r} ({manager.describe(plugin_name)}) "
                    "is a core dataset key"
                )
            if key in dataset_fields:
                continue  # several strategies may share an option (chat_template variants)
            dataset_fields[key] = (info.annotation, info)
            dataset_key_owner[key] = strategy.name
    inline_models = list(dict.fromkeys(s.inline for s, _ in manager.all_strategies() if s.inline is not None))
    if inline_models:  # ``type:`` is a strategy name, or a mapping read by the inline strategy of the config's
        # method: which one is known only once the config is read, so dataset_problems validates the mapping
        dataset_fields["type"] = (Union[(str, *inline_models, dict[str, Any])], DatasetConfig.model_fields["type"])
    else:
        dataset_fields["type"] = (str, DatasetConfig.model_fields["type"])
    dataset_model = create_model("DatasetEntry", __base__=DatasetConfig, **dataset_fields)

    bases = (CoreConfig, *fragments)
    model = create_model(
        "GymConfig",
        __base__=bases if len(bases) > 1 else CoreConfig,
        datasets=(list[dataset_model], CoreConfig.model_fields["datasets"]),
        test_datasets=(list[dataset_model] | None, CoreConfig.model_fields["test_datasets"]),
    )
    model.__doc__ = "The whole gym config: the core's keys and every loaded plugin's keys."
    return ComposedSchema(model, dataset_model, key_owner, dataset_key_owner)


# -------------------------------------------------------------------------------------- validation


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed at the mapping that holds ``loc[-1]`` (for "did you mean")."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
        if current is None:
            return []
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _clean_loc(model: type[BaseModel], loc: tuple) -> tuple:
    """Drop the union-member tags pydantic puts in error locations (``type.str``, ``type.UserDefinedFormat``)."""
    cleaned = []
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            cleaned.append(part)
            continue
        fields = current.model_fields if isinstance(current, type) and issubclass(current, BaseModel) else None
        if fields is not None and part in fields:
            cleaned.append(part)
            current = _model_in(fields[part].annotation)
        elif fields is None or not cleaned:
            cleaned.append(part)  # a key inside a free-form mapping, or an unknown top-level key
        elif part not in _TAG_LIKE and not part[:1].isupper() and "[" not in part:
            cleaned.append(part)  # an unknown key: reported as such
    return tuple(cleaned)


_TAG_LIKE = {"str", "int", "float", "bool", "list", "dict", "none", "literal", "function-after", "union", "constrained-str"}


def _pydantic_problems(exc: ValidationError, schema: ComposedSchema, raw: RawConfig) -> list[ConfigProblem]:
    by_path: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = _clean_loc(schema.model, tuple(err["loc"]))
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            message = "unknown key" + _suggest(key, _allowed_keys(schema.model, loc))
            if len(loc) == 3 and loc[0] in ("datasets", "test_datasets"):
                owner = schema.dataset_key_owner.get(key)
                if owner:
                    message = f"key of the {owner!r} dataset type, not accepted here"
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], (dict, list)):
                message += f" (got {err['input']!r})"
        messages = by_path.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    # A union reports each member's complaint; where one member got as far as a nested key, that one is the
    # user's real mistake and the others ("should be a valid string") are noise.
    deeper = {path for path in by_path if any(other.startswith(path + ".") for other in by_path)}
    return [
        ConfigProblem(path, "; or ".join(msgs), raw.line_of(path)) for path, msgs in by_path.items() if path not in deeper
    ]


def _drop_empty(data: dict[str, Any]) -> None:
    """An empty key (``debug:``) means "unset": the default applies, as users of YAML configs expect."""
    for key in [k for k, v in data.items() if v is None]:
        del data[key]
    for list_key in ("datasets", "test_datasets"):
        entries = data.get(list_key)
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict):
                for key in [k for k, v in entry.items() if v is None and k != "type"]:
                    del entry[key]


def validate_config(raw: RawConfig, manager, notes: list[str] | None = None) -> BaseModel:
    """Validate a read config against the composed schema and every plugin's rules.

    Raises :class:`ConfigError` listing every problem found. Keys that gym does not support but that
    ask for nothing (``wandb_project:`` left empty, ``xformers_attention: false``) are removed and
    described in ``notes``, so the caller can show them; everything else must validate.
    """
    from gym.plugin_manager import using_plugin_manager

    with using_plugin_manager(manager):  # hooks that ask for the manager get the one validating
        return _validate(raw, manager, notes)


def config_folder(cfg: BaseModel) -> Path:
    """The folder of the file ``cfg`` was read from (the working directory for a config made in code): where
    plugins resolve the config's own relative files, such as a module of reward functions."""
    source = getattr(cfg, "_source_path", None)
    return Path(source).resolve().parent if source else Path.cwd()


def _validate(raw: RawConfig, manager, notes: list[str] | None) -> BaseModel:
    schema = manager.schema()
    data = dict(raw.data)
    problems = compat.check_keys(data, schema, raw, notes if notes is not None else [])
    _drop_empty(data)
    cfg = None
    try:
        cfg = schema.model.model_validate(data)
        cfg._source_path = raw.source
    except ValidationError as exc:
        already = {p.field for p in problems}  # a key reported as renamed / unsupported is not also "missing"
        problems.extend(p for p in _pydantic_problems(exc, schema, raw) if p.field not in already)
    if cfg is not None and not problems:
        problems.extend(replace(p, line=raw.line_of(p.field)) for p in core_problems(cfg, manager))
        problems.extend(replace(p, line=raw.line_of(p.field))
                        for p in plugin_list_problems(cfg, manager, notes if notes is not None else []))
        for plugin_name, result in manager.validate_config(cfg):
            for problem in result or ():
                problems.append(
                    ConfigProblem(problem.field, problem.message, raw.line_of(problem.field), problem.plugin or plugin_name)
                )
        if not problems and manager.call("gym_training_method", cfg=cfg) is None:
            problems.append(ConfigProblem("", "no installed plugin offers a training method for this config"))
    if problems:
        problems.sort(key=lambda p: (p.line if p.line is not None else 10**9, p.field))
        raise ConfigError(
            f"{raw.source}: {len(problems)} problem{'s' if len(problems) != 1 else ''} in the config",
            problems=[p.render(raw.source, raw.override_of(p.field)) for p in problems],
        )
    return cfg


def core_problems(cfg: BaseModel, manager) -> list[ConfigProblem]:
    """The core's own rules across fields: precision, warm-up, evaluation data, the training loop, chat
    templates, dataset types (known, fitting the training method, options of their own type)."""
    from gym.training_options import training_problems

    problems = [ConfigProblem(name, message) for name, message in training_problems(cfg)]
    if cfg.bf16 is True and cfg.fp16 is True:
        problems.append(ConfigProblem("fp16", "bf16 and fp16 are both true; choose one"))
    if cfg.warmup_ratio is not None and cfg.warmup_steps is not None:
        problems.append(ConfigProblem("warmup_steps", "set warmup_ratio or warmup_steps, not both"))
    if cfg.test_datasets and cfg.val_set_size:
        problems.append(ConfigProblem("val_set_size", "set val_set_size or test_datasets, not both"))
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        problems.append(ConfigProblem("max_steps", "must be a positive number of steps (or unset to use num_epochs)"))
    if cfg.val_set_size >= 1 and cfg.val_set_size != int(cfg.val_set_size):
        problems.append(ConfigProblem("val_set_size", "a fraction below 1 or a whole number of rows"))
    if cfg.chat_template is not None:
        from gym.chat_templates import CHAT_TEMPLATE_NAMES, is_known_chat_template

        if not is_known_chat_template(cfg.chat_template):
            problems.append(
                ConfigProblem(
                    "chat_template",
                    f"chat template {cfg.chat_template!r} is not built into gym yet"
                    f"{_suggest(cfg.chat_template, CHAT_TEMPLATE_NAMES)}; write tokenizer_default to use the "
                    f"model's own template (known: {', '.join(sorted(CHAT_TEMPLATE_NAMES))})",
                )
            )
        elif cfg.chat_template == "jinja" and not cfg.chat_template_jinja:
            problems.append(ConfigProblem("chat_template_jinja", "required when chat_template is 'jinja'"))
    attention = cfg.attn_implementation
    if attention is not None and attention not in ATTENTION_IMPLEMENTATIONS and "/" not in attention:
        problems.append(
            ConfigProblem(
                "attn_implementation",
                f"{attention!r} is not an attention implementation{_suggest(attention, ATTENTION_IMPLEMENTATIONS)} "
                f"(known: {', '.join(ATTENTION_IMPLEMENTATIONS)}, or a hub kernel such as kernels-community/...)",
            )
        )
    problems.extend(dataset_problems(cfg, manager))
    return problems


# Axolotl integrations gym has no plugin for, with what they do (said in the error).
NO_GYM_EQUIVALENT = {
    "kernels": "Axolotl's mixture-of-experts kernels (use_kernels, use_scattermoe, use_sonicmoe)",
    "diffusion": "diffusion language-model training",
    "expert_parallel": "expert parallelism",
    "llm_compressor": "LLM Compressor sparsity / quantization",
    "kd": "knowledge distillation",
    "lm_eval": "lm-eval-harness evaluation",
    "grokfast": "the Grokfast gradient filter",
    "densemixer": "DenseMixer mixture-of-experts routing",
    "mora": "MoRA adapters",
    "hatchery": "Hatchery",
    "nemo_gym": "NeMo Gym environments",
}


def plugin_list_problems(cfg: BaseModel, manager, notes: list[str]) -> list[ConfigProblem]:
    """``plugins:``. gym finds its plugins by entry point, so the list is optional: each name must be a plugin gym
    has (checked, so a config that needs one fails early where it is missing). Axolotl's import paths
    (``axolotl.integrations.<name>.<Class>``) name the gym plugin providing the same feature, with a note;
    an Axolotl integration gym has no plugin for is an error naming it."""
    problems = []
    for i, name in enumerate(cfg.plugins or ()):
        wanted = _plugin_name_of(name)
        axolotl = name.startswith("axolotl.")
        if wanted in manager.infos:
            if axolotl:
                notes.append(f"plugins: {name} is provided by gym's {wanted!r} plugin (gym loads installed plugins by "
                             "entry point; the list is optional)")
            continue
        if axolotl and wanted in NO_GYM_EQUIVALENT:
            message = (f"{name!r} ({NO_GYM_EQUIVALENT[wanted]}) has no gym equivalent (not supported by gym yet); "
                       "remove it and the keys that configure it")
        elif axolotl:
            message = (f"{name!r} has no gym equivalent (not supported by gym yet: no gym plugin named {wanted!r} is "
                       "installed); remove it")
        else:
            message = (f"plugin {name!r} is not installed in gym (looked for a gym plugin named {wanted!r}; "
                       f"installed: {', '.join(sorted(manager.infos))})")
        problems.append(ConfigProblem(f"plugins.{i}", message))
    return problems


# transformers' names (``AttentionInterface`` and the built-in eager path); a name with "/" is a hub kernel.
ATTENTION_IMPLEMENTATIONS = (
    "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention", "paged|eager",
)


def dataset_problems(cfg: BaseModel, manager) -> list[ConfigProblem]:
    """Each dataset entry: a known type that serves the training method and gives the columns its rows need,
    only the options of its own type, and a ``builtin:`` path that exists."""
    from gym.builtin_data import builtin_problem

    strategies = manager.dataset_strategies()
    method = manager.call("gym_training_method", cfg=cfg)  # None: the plugin whose key asked for one says so
    problems = []
    for list_key in ("datasets", "test_datasets"):
        for i, entry in enumerate(getattr(cfg, list_key) or ()):
            where = f"{list_key}.{i}"
            if not isinstance(entry.type, str):
                inline_problems = _parse_inline_type(entry, where, manager, method.name if method else None)
                if inline_problems:
                    problems.extend(inline_problems)
                    continue
            found = strategy_of(entry, manager, method.name if method else None)
            if found is None:
                base = entry.type.split(":")[0].split(".")[0]
                hint = _suggest(entry.type, strategies) or (f"; did you mean {base!r}?" if base in strategies else "")
                problems.append(
                    ConfigProblem(
                        f"{where}.type",
                        f"unknown dataset type {entry.type!r}{hint} (available: {', '.join(sorted(strategies))})",
                    )
                )
                continue
            strategy, type_name = found
            if method is not None and strategy.methods is not None and method.name not in strategy.methods:
                problems.append(
                    ConfigProblem(
                        f"{where}.type",
                        f"dataset type {type_name!r} makes rows for {', '.join(strategy.methods)}, not for the "
                        f"training method of this config ({method.name})",
                    )
                )
            missing = [c for c in method.data_shape.columns if c not in strategy.columns] if method else []
            if missing and (strategy.methods is None or method.name in strategy.methods):
                problems.append(
                    ConfigProblem(f"{where}.type", f"dataset type {type_name!r} gives no {', '.join(missing)} column")
                )
            allowed = set(DatasetConfig.model_fields) | set(strategy.options.model_fields if strategy.options else ())
            kind = "user-defined format" if not isinstance(entry.type, str) else repr(type_name)
            for key in sorted(entry.model_fields_set - allowed):
                if getattr(entry, key, None) is not None:
                    problems.append(ConfigProblem(f"{where}.{key}", f"not used by dataset type {kind}; remove it"))
            message = builtin_problem(entry.path, manager)
            if message:
                problems.append(ConfigProblem(f"{where}.path", message))
            if entry.shards_idx is not None and entry.shards_idx >= (entry.shards or 1):
                problems.append(
                    ConfigProblem(f"{where}.shards_idx", f"must be below shards ({entry.shards or 'unset: 1'})")
                )
    return problems


def strategy_of(entry: Any, manager, method: str | None) -> tuple[Any, str] | None:
    """(strategy, type name) of a dataset entry for the training method ``method`` (the config's, from
    ``manager.training_method(cfg).name``), or ``None`` when its type is not registered. A name several strategies
    share (one per method) resolves to the one serving ``method``; with ``method`` None, to the first registered."""
    if not isinstance(entry.type, str):
        inline = inline_strategy_for(manager, method, entry.type)
        return (inline[0], inline[0].name) if inline else None
    found = manager.strategy_for_method(entry.type, method)
    return (found[0], entry.type) if found else None


def inline_strategy_for(manager, method: str | None, value: Any = None) -> tuple[Any, str] | None:
    """The strategy that reads a ``type:`` written as a mapping for the training method ``method`` (each method's
    strategies may declare their own inline model, e.g. one for single answers and one for answer pairs); with
    ``method`` None, the one whose model ``value`` is or validates, else the first registered."""
    inline = [(s, p) for s, p in manager.all_strategies() if s.inline is not None]
    if method is not None:
        return next(((s, p) for s, p in inline if s.methods is None or method in s.methods), None)
    for s, p in inline:
        if isinstance(value, s.inline):
            return s, p
    for s, p in inline:
        try:
            s.inline.model_validate(value)
            return s, p
        except ValidationError:
            continue
    return manager.inline_strategy()


def _parse_inline_type(entry: Any, where: str, manager, method: str | None) -> list[ConfigProblem]:
    """Validate a ``type:`` mapping against the inline model of the method's strategy and set it on the entry."""
    found = inline_strategy_for(manager, method, entry.type)
    if found is None:
        served = sorted({m for s, _ in manager.all_strategies() if s.inline is not None for m in s.methods or ()})
        return [ConfigProblem(f"{where}.type", f"a type written as a mapping (a user-defined format) is not available "
                              f"for the training method {method}, only for {', '.join(served)}; name a dataset type")]
    model = found[0].inline
    if isinstance(entry.type, model):
        return []
    data = entry.type.model_dump(exclude_unset=True) if isinstance(entry.type, BaseModel) else entry.type
    try:
        entry.type = model.model_validate(data)
        return []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    others = [(s, m) for s, _ in manager.all_strategies() if s.inline is not None and s.inline is not model
              for m in [s.inline]]
    problems = []
    for err in errors:
        path = ".".join(str(p) for p in err["loc"])
        key = str(err["loc"][-1]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            message = "unknown key" + _suggest(key, model.model_fields)
            owner = next((s for s, m in others if key in m.model_fields), None)
            if owner is not None and "did you mean" not in message:
                message = (f"key of the user-defined format for {', '.join(owner.methods or ('every method',))}, "
                           f"not for {method or 'this config'} (its keys: {', '.join(model.model_fields)})")
        elif err["type"] == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
        problems.append(ConfigProblem(f"{where}.type{'.' + path if path else ''}", message))
    return problems


NO_EFFECT = {
    "strict": "gym always validates strictly",
    "local_rank": "launchers set LOCAL_RANK in the environment; the config value is not used",
    "remove_unused_columns": "the training method decides which columns its trainer reads",
    "skip_prepare_dataset": "gym always prepares the text and caches it; what must wait for the batch (images, "
    "for one) is done by the training method's collator",
}


def no_effect_notes(cfg: BaseModel) -> list[str]:
    """Keys accepted for compatibility that change nothing: said, never silent."""
    return [
        f"{key}: accepted for compatibility, has no effect ({why})"
        for key, why in NO_EFFECT.items()
        if key in cfg.model_fields_set
    ]


def _plugin_name_of(name: str) -> str:
    """``axolotl.integrations.<name>.<Class>`` -> ``<name>``; a plain gym name stays as it is."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-1][:1].isupper():
        return parts[-2]
    return parts[-1]


def load_config(
    path: str | Path, overrides: Iterable[str] = (), manager=None, notes: list[str] | None = None
) -> BaseModel:
    """Read and validate a config file; the one entry point the commands use."""
    from gym.plugin_manager import get_plugin_manager

    manager = manager or get_plugin_manager()
    raw = read_config(path, overrides)
    cfg = validate_config(raw, manager, notes)
    if notes is not None:
        notes.extend(no_effect_notes(cfg))
    return cfg


def redacted(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain data, with every secret field written as ``**********``.

    A secret is a field its schema types ``pydantic.SecretStr`` (a hub token, a tracker's API key): plugins
    mark their own, read them with ``.get_secret_value()``, and gym never prints or writes them. Nothing is
    guessed from key names, so ``tokenizer_config`` stays as written and a saved config runs again. A secret
    interpolated into another key (``wandb_name: run-${comet_api_key}``) is redacted there too.
    """
    data = cfg.model_dump(mode="json", exclude_none=True)
    secrets = sorted(secret_values(cfg), key=len, reverse=True)
    return _without(data, secrets) if secrets else data


REDACTED = "**********"


def secret_values(value: Any) -> set[str]:
    """Every non-empty ``SecretStr`` value inside a config (nested models, lists and dicts included)."""
    from pydantic import SecretStr

    found: set[str] = set()
    if isinstance(value, SecretStr):
        if value.get_secret_value():
            found.add(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found |= secret_values(getattr(value, name, None))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found |= secret_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            found |= secret_values(item)
    return found


def secret_fields(cfg: BaseModel) -> list[str]:
    """The top-level keys of ``cfg`` that hold a secret (left out of a saved config)."""
    from pydantic import SecretStr

    return [name for name in type(cfg).model_fields if isinstance(getattr(cfg, name, None), SecretStr)]


def _without(data: Any, secrets: list[str]) -> Any:
    if isinstance(data, str):
        for secret in secrets:
            data = data.replace(secret, REDACTED)
        return data
    if isinstance(data, list):
        return [_without(item, secrets) for item in data]
    if isinstance(data, dict):
        return {key: _without(item, secrets) for key, item in data.items()}
    return data
