"""gym: fine-tune large language models from one YAML file, with every feature a plugin."""

from gym.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
