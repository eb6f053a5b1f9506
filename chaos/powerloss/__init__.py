"""Power loss as a fault, as Jepsen's LazyFS makes it: a FUSE filesystem that
keeps what was not fsynced in memory and drops it on a power cut. A node
never imports this package; only its server process imports FUSE (mfusepy).

- `lazyfs`: the filesystem over a backing directory (what is durable), and
  the cut; its docstring says which losses it models and which it does not.
- `pages`: one file's unsynced pages over its copy on the disk.
- `server`: `python -m chaos.powerloss BACKING MOUNTPOINT --control SOCKET`
  mounts it and answers a Unix socket: one JSON line in (`{"op": "cut"}` or
  `{"op": "status"}`), one `ControlReply` line out, per connection. SIGTERM
  unmounts cleanly (everything is written back, as umount does).
- `mount`: `PowerLossMount` starts the server as a child process, drives
  it over the socket and always unmounts; `power_cut(cluster, mounts,
  nodes)` SIGKILLs nodes, cuts their mounts and restarts them.
"""

from chaos.powerloss.lazyfs import CacheStatus
from chaos.powerloss.mount import PowerLossError, PowerLossMount, power_cut, unavailable

__all__ = ["CacheStatus", "PowerLossError", "PowerLossMount", "power_cut", "unavailable"]
