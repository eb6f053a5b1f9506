"""Power loss as a fault, as Jepsen's LazyFS makes it: a filesystem that keeps
what was not fsynced in memory and drops it on a power cut (`lazyfs`; its
docstring says which losses it models and which it does not)."""
