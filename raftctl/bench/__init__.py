"""`raftctl bench`: the benchmarks (runs.py: write, failover, up), the
pipelined load generator they drive (loadgen.py) and the storage benchmark
(storage.py). Client-side tools that no node runs; they use `node` only
through its client protocol, config and storage.
"""
