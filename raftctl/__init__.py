"""The supervisor and the command line: starting, stopping and signalling
node processes, kernel-level faults, the click CLI, and the benchmarks."""
