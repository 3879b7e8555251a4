"""Analytics owns no tables yet: it reads places through the replica (see selectors)."""
