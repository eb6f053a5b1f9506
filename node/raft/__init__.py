"""The Raft algorithm as a pure state machine: `RaftCore` (core.py, with its
rules in elections.py, replication.py, reads.py and snapshots.py), the log
(log.py), each follower's progress (progress.py), the messages
(messages.py), and `Ready` with the one routine that carries it out
(ready.py). No sockets, clocks, files, threads or global randomness: it
reads storage through the `node.storage.Storage` interface only, and never
imports the state machine, the transports or the runner.
"""
