"""One consensus node: the Raft algorithm (raft/), its storage (storage/),
the replicated state machine (state/), the peer transports (transport/),
and at this level the event loop, the client and control protocols, the
client library and the node's settings. Imports neither `chaos` nor
`raftctl` (docs/ARCHITECTURE.md)."""
