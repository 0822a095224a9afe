"""Built-in gym plugins. Each module is one plugin, registered through the ``gym.plugins`` entry points."""
