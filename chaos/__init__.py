"""Breaking clusters on purpose and judging what happened: fault schedules,
workloads, checkers, the report, and the deterministic simulator with the
invariants it shares with live runs. Imports `node`, never `raftctl`: a run
is handed a cluster object and a client factory (docs/ARCHITECTURE.md)."""
