"""Finding, loading and calling plugins.

Every plugin, built-in or third-party, is an entry point in the ``gym.plugins`` group whose value is an
importable module (or object) with :data:`gym.api.hookimpl` functions. gym's own plugins are registered
first, sorted by entry-point name; third-party plugins come after, sorted by entry-point name too. pluggy asks the plugins registered last first, so for "first result" hooks a third party's
answer wins over a built-in one whatever the names.

Two environment variables change which plugins load:

- ``GYM_DISABLE_PLUGIN_AUTOLOAD=1``: load only the plugins that ship with gym itself.
- ``GYM_PLUGINS=name,name``: load only the plugins with these entry-point names.

Hooks are called through pluggy. gym also records which plugin returned which result (each plain hook
implementation is traced as it runs), so that conflicts and problems name their plugin.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterator

import pluggy

from gym import hookspecs
from gym.errors import PluginError

GROUP = "gym.plugins"
OWN_DISTRIBUTION = "gym-llm"
ENV_DISABLE_AUTOLOAD = "GYM_DISABLE_PLUGIN_AUTOLOAD"
ENV_ONLY = "GYM_PLUGINS"


@dataclass
class PluginInfo:
    """What ``gym plugins list`` shows about one plugin."""

    name: str
    distribution: str
    version: str
    module: str
    builtin: bool
    config_keys: list[str] = field(default_factory=list)
    dataset_types: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class _Trace(threading.local):
    """Per-thread record of ``(plugin name, result)`` for the attributed hook calls in progress, innermost last."""

    def __init__(self) -> None:
        self.stack: list[tuple[str, list[tuple[str, Any]]]] = []  # (hook name, its results so far)


def combine(merged: dict[str, Any], key: str, value: Any) -> tuple[Any, bool]:
    """(the combined value, whether it agrees): lists concatenate (without repeats), dicts merge, equal
    values agree, anything else disagrees."""
    if key not in merged:
        return value, True
    current = merged[key]
    if isinstance(current, list) and isinstance(value, list):
        return current + [v for v in value if v not in current], True
    if isinstance(current, dict) and isinstance(value, dict):
        both = dict(current)
        for inner_key, inner in value.items():
            both[inner_key], agrees = combine(both, inner_key, inner)
            if not agrees:
                return current, False
        return both, True
    return current, current == value


class GymPluginManager:
    """pluggy's manager plus what gym needs: where each plugin came from, and attributed results."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._trace = _Trace()
        self._schema = None
        self._strategies: dict[str, tuple[Any, str]] | None = None
        self._variants: dict[str, list[tuple[Any, str]]] = {}
        self._builtin_datasets: dict[str, tuple[Any, str]] | None = None

    # ------------------------------------------------------------------------------------- loading

    @property
    def hook(self):
        return self.pm.hook

    def load_entry_points(self, environ: dict[str, str] | None = None) -> None:
        """Load the plugins of the ``gym.plugins`` group (gym's own first, then third-party ones, each group by
        name), as the environment variables allow."""
        env = os.environ if environ is None else environ
        only = {n.strip() for n in env.get(ENV_ONLY, "").split(",") if n.strip()}
        builtin_only = _truthy(env.get(ENV_DISABLE_AUTOLOAD))
        found = list(metadata.entry_points(group=GROUP))
        origin = _origins(found)
        own = sorted((ep for ep in found if origin[id(ep)][2]), key=lambda e: e.name)
        others = sorted((ep for ep in found if not origin[id(ep)][2]), key=lambda e: e.name)
        for ep in own + others:
            dist_name, version, builtin = origin[id(ep)]
            if only and ep.name not in only:
                continue
            if builtin_only and not builtin:
                continue
            if ep.name in self.infos:
                if self.infos[ep.name].module == ep.value:
                    continue  # the same distribution seen twice on sys.path (editable + build dir)
                raise PluginError(
                    f"two plugins are named {ep.name!r}: {self.describe(ep.name)} and "
                    f"{ep.value} from distribution {dist_name!r}"
                )
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must say who it is
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist_name!r} {version} failed to import "
                    f"({ep.value}): {type(exc).__name__}: {exc}"
                ) from exc
            self.register(plugin, ep.name, dist_name, version, builtin=builtin, module=ep.value)
        if only:
            missing = only - set(self.infos)
            if missing:
                raise PluginError(
                    f"{ENV_ONLY} names plugins that are not installed: {', '.join(sorted(missing))}"
                    f" (installed: {', '.join(sorted(e.name for e in found))})"
                )

    def register(
        self,
        plugin: Any,
        name: str,
        distribution: str = "(registered in code)",
        version: str = "",
        builtin: bool = False,
        module: str | None = None,
    ) -> None:
        """Register one plugin object under ``name`` (what entry points do; tests may call it too)."""
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except (pluggy.PluginValidationError, ValueError) as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(
                f"plugin {name!r} from distribution {distribution!r} is not a valid gym plugin: {exc}"
            ) from exc
        callers = [c for c in self.pm.get_hookcallers(plugin) or () if c.name.startswith("gym_")]
        for caller in callers:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                    impl.function = self._traced(name, caller.name, impl.function)
        self.infos[name] = PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            module=module or getattr(plugin, "__name__", type(plugin).__name__),
            builtin=builtin,
            hooks=sorted(c.name for c in callers),
        )
        self._schema = None
        self._strategies = None
        self._builtin_datasets = None

    def _traced(self, plugin_name: str, hook_name: str, function: Any) -> Any:
        """``function`` that also records its result when an attributed call of its hook is in progress (pluggy
        calls it with positional arguments in the order of the original's parameters). A hook called from inside
        another hook's implementation records nothing into the outer call."""
        trace = self._trace

        def traced(*args: Any) -> Any:
            result = function(*args)
            if trace.stack and trace.stack[-1][0] == hook_name:
                trace.stack[-1][1].append((plugin_name, result))
            return result

        traced.__wrapped__ = function  # type: ignore[attr-defined]
        traced.__name__ = getattr(function, "__name__", "hook")
        return traced

    def describe(self, name: str) -> str:
        info = self.infos.get(name)
        if info is None:
            return f"plugin {name!r}"
        version = f" {info.version}" if info.version else ""
        return f"plugin {name!r} (distribution {info.distribution!r}{version})"

    # ------------------------------------------------------------------------------------- calling

    def call(self, hook_name: str, **kwargs: Any) -> Any:
        """Call a hook through pluggy (what ``manager.hook.<name>(**kwargs)`` does)."""
        return getattr(self.pm.hook, hook_name)(**kwargs)

    def call_each(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a hook through pluggy; ``(plugin name, result)`` of every plain implementation that ran, in
        call order (``None`` results included). Used where gym must say which plugin gave which result."""
        self._trace.stack.append((hook_name, []))
        try:
            getattr(self.pm.hook, hook_name)(**kwargs)
        finally:
            _, record = self._trace.stack.pop()
        return record

    def merged_dict(self, hook_name: str, base: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Merge the dicts every plugin returns over ``base``: lists concatenate, dicts merge, and two
        plugins giving one key different values is an error naming both."""
        merged = dict(base or {})
        setter: dict[str, str] = {}
        for plugin_name, result in self.call_each(hook_name, **kwargs):
            for key, value in (result or {}).items():
                combined, agrees = combine(merged, key, value) if key in setter else (value, True)
                if not agrees:
                    raise PluginError(
                        f"{hook_name}: {self.describe(setter[key])} sets {key}={merged[key]!r} but "
                        f"{self.describe(plugin_name)} sets {key}={value!r}"
                    )
                merged[key] = combined
                setter[key] = plugin_name
        return merged

    def collected(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Every item of every list the plugins return, in call order."""
        return [item for result in self.call(hook_name, **kwargs) for item in (result or ())]

    # ---------------------------------------------------------------------------------- what they add

    def config_fragments(self) -> list[tuple[str, type]]:
        fragments = []
        for plugin_name, fragment in self.call_each("gym_config_schema"):
            if fragment is None:
                continue
            self.infos[plugin_name].config_keys = list(fragment.model_fields)
            fragments.append((plugin_name, fragment))
        return fragments

    def dataset_strategies(self) -> dict[str, tuple[Any, str]]:
        """Every registered strategy by name (aliases included): ``name -> (strategy, plugin name)``.

        One name may be registered by several strategies when each serves other training methods (one layout
        name for supervised conversations and for preference pairs): the first is listed here, all are in
        :meth:`strategy_for_method`. Otherwise a name registered twice is an error naming both plugins.
        """
        if self._strategies is None:
            registry: dict[str, tuple[Any, str]] = {}
            variants: dict[str, list[tuple[Any, str]]] = {}
            for info in self.infos.values():
                info.dataset_types = []
            # in registration order (pluggy calls the last registered first): the first registered is listed
            for plugin_name, strategies in reversed(self.call_each("gym_dataset_strategies")):
                for strategy in strategies or ():
                    for name in (strategy.name, *strategy.aliases):
                        for other, other_plugin in variants.get(name, ()):
                            if strategy.methods is None or other.methods is None or set(strategy.methods) & set(other.methods):
                                raise PluginError(
                                    f"dataset type {name!r} is registered twice for the same training method: by "
                                    f"{self.describe(other_plugin)} and by {self.describe(plugin_name)}"
                                )
                        variants.setdefault(name, []).append((strategy, plugin_name))
                        registry.setdefault(name, (strategy, plugin_name))
                    self.infos[plugin_name].dataset_types.append(strategy.name)
            self._variants = variants
            inline = [(s.name, p) for s, p in {id(s): (s, p) for s, p in registry.values()}.values() if s.inline]
            if len(inline) > 1:
                raise PluginError(
                    "dataset types given as a mapping are claimed by several strategies: "
                    + ", ".join(f"{name!r} of {self.describe(p)}" for name, p in inline)
                )
            self._strategies = registry
        return self._strategies

    def all_strategies(self) -> list[tuple[Any, str]]:
        """Every registered strategy once, with its plugin, those sharing a name with another included."""
        self.dataset_strategies()
        seen: dict[int, tuple[Any, str]] = {}
        for variants in self._variants.values():
            for strategy, plugin_name in variants:
                seen.setdefault(id(strategy), (strategy, plugin_name))
        return list(seen.values())

    def strategy_for_method(self, name: str, method: str | None) -> tuple[Any, str] | None:
        """The strategy registered as ``name`` that serves ``method`` (the first one when ``method`` is None);
        a name no strategy registers is offered to :func:`gym_dataset_type`."""
        found = self.dataset_strategies().get(name)
        if found is None:
            return self._unregistered_type(name, method)
        if method is None:
            return found
        for strategy, plugin_name in self._variants.get(name, ()):
            if strategy.methods is None or method in strategy.methods:
                return strategy, plugin_name
        return found

    def _unregistered_type(self, name: str, method: str | None) -> tuple[Any, str] | None:
        for plugin_name, strategy in self.call_each("gym_dataset_type", type_name=name, method=method):
            if strategy is not None:
                return strategy, plugin_name
        return None

    def inline_strategy(self) -> tuple[Any, str] | None:
        """The strategy that reads a ``type:`` given as a mapping, if one is registered."""
        return next(((s, p) for s, p in self.dataset_strategies().values() if s.inline is not None), None)

    def builtin_datasets(self) -> dict[str, tuple[Any, str]]:
        """Every ``builtin:`` dataset by name: ``name -> (BuiltinDataset, plugin name)``."""
        if self._builtin_datasets is None:
            registry: dict[str, tuple[Any, str]] = {}
            for plugin_name, found in self.call_each("gym_builtin_datasets"):
                for dataset in found or ():
                    if dataset.name in registry:
                        raise PluginError(
                            f"built-in dataset {dataset.name!r} is registered twice: by "
                            f"{self.describe(registry[dataset.name][1])} and by {self.describe(plugin_name)}"
                        )
                    registry[dataset.name] = (dataset, plugin_name)
            self._builtin_datasets = registry
        return self._builtin_datasets

    def training_method(self, cfg: Any) -> Any:
        """The :class:`gym.methods.TrainingMethod` the config asks for."""
        method = self.call("gym_training_method", cfg=cfg)
        if method is None:
            raise PluginError(
                "no plugin offers a training method for this config (is the plugin that offers the default one disabled? "
                f"loaded plugins: {', '.join(self.infos) or 'none'})"
            )
        return method

    def schema(self):
        """The composed config model (cached until another plugin registers)."""
        if self._schema is None:
            from gym.config import compose_schema

            self.dataset_strategies()
            self._schema = compose_schema(self)
        return self._schema

    def validate_config(self, cfg: Any) -> list[tuple[str, Any]]:
        return self.call_each("gym_validate_config", cfg=cfg)


def _origins(entry_points: list[Any]) -> dict[int, tuple[str, str, bool]]:
    """``id(entry point) -> (distribution name, version, is gym's own)``, reading each distribution's metadata once
    (parsing it is most of the cost of listing plugins)."""
    by_dist: dict[Any, tuple[str, str, bool]] = {}
    origins = {}
    for ep in entry_points:
        dist = getattr(ep, "dist", None)
        key = getattr(dist, "_path", None) or id(dist)
        if key not in by_dist:
            if dist is None:
                by_dist[key] = ("(unknown distribution)", "", False)
            else:
                meta = dist.metadata
                name = meta["Name"]
                by_dist[key] = (name, meta["Version"], _normal(name) == _normal(OWN_DISTRIBUTION))
        origins[id(ep)] = by_dist[key]
    return origins


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


_MANAGER: GymPluginManager | None = None


def get_plugin_manager() -> GymPluginManager:
    """The process-wide manager, with every entry-point plugin loaded on first use."""
    global _MANAGER
    if _MANAGER is None:
        manager = GymPluginManager()
        manager.load_entry_points()
        _MANAGER = manager
    return _MANAGER


def set_plugin_manager(manager: GymPluginManager | None) -> None:
    """Make ``manager`` the process-wide one (``None``: load from entry points again on next use)."""
    global _MANAGER
    _MANAGER = manager


@contextlib.contextmanager
def using_plugin_manager(manager: GymPluginManager) -> Iterator[GymPluginManager]:
    """Within the block, ``get_plugin_manager()`` returns ``manager`` (tests, :mod:`gym.testing`)."""
    global _MANAGER
    previous = _MANAGER
    _MANAGER = manager
    try:
        yield manager
    finally:
        _MANAGER = previous


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests that change the environment use this)."""
    set_plugin_manager(None)
