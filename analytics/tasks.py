"""Analytics tasks run on the ``analytics`` queue against the replica (none scheduled yet)."""

# The downloads' tasks live beside their service; autodiscovery imports this module only.
from analytics import download_tasks  # noqa: F401
