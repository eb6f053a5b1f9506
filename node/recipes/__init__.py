"""Coordination recipes built on leases, transactions and watches: a lock
with fencing tokens, leader election and service discovery. Client-side
only: nothing here runs in a node."""
