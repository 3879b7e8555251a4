"""Analytics tasks run on the ``analytics`` queue against the replica (none scheduled yet)."""
