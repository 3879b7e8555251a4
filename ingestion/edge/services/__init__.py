"""Writes of the edge nodes, one module per concern:

- ``keys``: nodes and their API keys (create, revoke, authenticate);
- ``batches``: a batch of readings, checked and stored once, durable before the answer;
- ``partitions``: the monthly partitions of the readings table;
- ``nodes``: heartbeats and the silent-node sweep.
"""
