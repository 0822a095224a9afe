"""Finding, loading and calling plugins.

Every plugin, built-in or third-party, is an entry point in the ``gym.plugins`` group whose value is
an importable module (or object) with :data:`gym.hookimpl` functions. Two environment variables change
which ones load:

- ``GYM_DISABLE_PLUGIN_AUTOLOAD=1``: load only the plugins that ship with gym itself.
- ``GYM_PLUGINS=name,name``: load only the plugins with these entry-point names.
"""

from __future__ import annotations

import os
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


class GymPluginManager:
    """pluggy's manager plus what gym needs: where each plugin came from, and attributed results."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._schema = None
        self._strategies: dict[str, tuple[Any, str]] | None = None

    # ------------------------------------------------------------------------------------- loading

    @property
    def hook(self):
        return self.pm.hook

    def load_entry_points(self, environ: dict[str, str] | None = None) -> None:
        """Load every plugin of the ``gym.plugins`` group, as the environment variables allow."""
        env = os.environ if environ is None else environ
        only = {n.strip() for n in env.get(ENV_ONLY, "").split(",") if n.strip()}
        builtin_only = _truthy(env.get(ENV_DISABLE_AUTOLOAD))
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "(unknown distribution)"
            version = dist.version if dist is not None else ""
            builtin = _normal(dist_name) == _normal(OWN_DISTRIBUTION)
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
                    f" (installed: {', '.join(sorted(e.name for e in metadata.entry_points(group=GROUP)))})"
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
        hooks = sorted(
            caller.name for caller in self.pm.get_hookcallers(plugin) or () if caller.name.startswith("gym_")
        )
        self.infos[name] = PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            module=module or getattr(plugin, "__name__", type(plugin).__name__),
            builtin=builtin,
            hooks=hooks,
        )
        self._schema = None
        self._strategies = None

    def describe(self, name: str) -> str:
        info = self.infos.get(name)
        if info is None:
            return f"plugin {name!r}"
        version = f" {info.version}" if info.version else ""
        return f"plugin {name!r} (distribution {info.distribution!r}{version})"

    # ------------------------------------------------------------------------------------- calling

    def call_each(self, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        """Call every implementation of a hook in pluggy's order, yielding ``(plugin name, result)``.

        Used where gym must say which plugin gave which result (conflicts, problems).
        """
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            args = [kwargs[name] for name in impl.argnames]
            yield impl.plugin_name, impl.function(*args)

    def merged_dict(self, hook_name: str, base: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Merge the dicts every plugin returns over ``base``; two plugins disagreeing is an error."""
        merged = dict(base or {})
        setter: dict[str, str] = {}
        for plugin_name, result in self.call_each(hook_name, **kwargs):
            for key, value in (result or {}).items():
                if key in setter and merged[key] != value:
                    raise PluginError(
                        f"{hook_name}: {self.describe(setter[key])} sets {key}={merged[key]!r} but "
                        f"{self.describe(plugin_name)} sets {key}={value!r}"
                    )
                merged[key] = value
                setter[key] = plugin_name
        return merged

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
        """Every registered strategy by name (aliases included): ``name -> (strategy, plugin name)``."""
        if self._strategies is None:
            registry: dict[str, tuple[Any, str]] = {}
            for info in self.infos.values():
                info.dataset_types = []
            for plugin_name, strategies in self.call_each("gym_dataset_strategies"):
                for strategy in strategies or ():
                    for name in (strategy.name, *strategy.aliases):
                        if name in registry:
                            raise PluginError(
                                f"dataset type {name!r} is registered twice: by "
                                f"{self.describe(registry[name][1])} and by {self.describe(plugin_name)}"
                            )
                        registry[name] = (strategy, plugin_name)
                    self.infos[plugin_name].dataset_types.append(strategy.name)
            self._strategies = registry
        return self._strategies

    def schema(self):
        """The composed config model (cached until another plugin registers)."""
        if self._schema is None:
            from gym.config import compose_schema

            self.dataset_strategies()
            self._schema = compose_schema(self)
        return self._schema

    def validate_config(self, cfg: Any) -> list[tuple[str, Any]]:
        return list(self.call_each("gym_validate_config", cfg=cfg))


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


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests that change the environment use this)."""
    global _MANAGER
    _MANAGER = None
