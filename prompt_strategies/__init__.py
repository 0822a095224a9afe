"""Built-in dataset strategies, each a plugin registered through the ``gym.plugins`` entry points."""
