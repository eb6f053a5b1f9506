"""The replicated state machine that committed entries are applied to: the
key-value store and its commands (kv.py) and the client sessions that make
writes exactly-once (sessions.py). Deterministic: no clocks, I/O or
randomness, so every replica reaches the same state byte for byte. Imports
nothing of the core, storage, transports or runner.
"""
