"""Peer transports: ZeroMQ with CURVE (zmq.py), UDP with a keyed MAC
(udp.py), the per-link fault filter on top of either (links.py) and CURVE
authentication (auth.py). They move bytes between nodes; they know nothing
of Raft or the state machine."""
