"""The data phase: reading datasets, running strategies, mixing, splitting, caching; and the strategy toolkit."""
