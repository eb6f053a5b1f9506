"""Operator commands on the control socket: status, link faults, leadership
transfer, membership changes, compaction, digest, a Paxos decree, shutdown. Requests and
replies are msgpack maps; the runner implements `Controlled`. No socket I/O
here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

import msgspec

from node.config import NodeSpec
from node.transport.links import LinkRule


class _Ctl(msgspec.Struct, frozen=True, kw_only=True, tag_field="op"):
    id: int = 0


class StatusRequest(_Ctl, tag="status", frozen=True):
    pass


class SetLinksRequest(_Ctl, tag="set_links", frozen=True):
    """Replace every link rule of this node (an empty map heals all links)."""

    rules: dict[str, LinkRule]


class TransferRequest(_Ctl, tag="transfer_leader", frozen=True):
    to: str


class MemberChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One member's part of a membership change: `add_learner` (with its
    addresses in `spec`), `promote` (a learner to voter) or `remove`."""

    type: Literal["add_learner", "promote", "remove"]
    node: str
    spec: NodeSpec | None = None


class ChangeMembersRequest(_Ctl, tag="change_members", frozen=True):
    """Start a membership change (all of `changes` at once, through joint
    consensus); only the leader takes it."""

    changes: list[MemberChange]


class CompactRequest(_Ctl, tag="compact", frozen=True):
    pass


class DigestRequest(_Ctl, tag="digest", frozen=True):
    pass


class ShutdownRequest(_Ctl, tag="shutdown", frozen=True):
    pass


# A decree is read in the logs, value and all: a line's worth.
DECREE_MAX_CHARS = 100


class DecreeRequest(_Ctl, tag="decree", frozen=True):
    """Paxos only: run one instance of the Synod protocol (a fresh phase 1,
    then `value` in the next free slot), for the logs to show."""

    value: Annotated[str, msgspec.Meta(min_length=1, max_length=DECREE_MAX_CHARS)]


ControlRequest = (
    StatusRequest | SetLinksRequest | TransferRequest | ChangeMembersRequest | CompactRequest
    | DigestRequest | DecreeRequest | ShutdownRequest
)


class ControlResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: int = 0
    ok: bool
    error: str | None = None
    message: str | None = None
    data: dict[str, Any] | None = None


class Controlled(Protocol):
    def status(self) -> dict[str, Any]: ...
    def set_links(self, rules: dict[str, LinkRule]) -> None: ...
    def transfer_leader(self, to: str) -> None: ...
    def change_members(self, changes: list[MemberChange]) -> dict[str, Any]: ...
    def compact(self) -> dict[str, Any]: ...
    def digest(self) -> dict[str, Any]: ...
    def decree(self, value: str) -> dict[str, Any]: ...
    def shutdown(self) -> None: ...


_decoder: msgspec.msgpack.Decoder[ControlRequest] = msgspec.msgpack.Decoder(ControlRequest)
_encoder = msgspec.msgpack.Encoder()


def handle_control(node: Controlled, data: bytes) -> tuple[bytes, str | None]:
    """Run one control request; returns the encoded reply and, for bad input,
    the reason (for the `bad_request` log event)."""
    try:
        req = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        reply = ControlResponse(ok=False, error="bad_request", message=str(e))
        return _encoder.encode(reply), str(e)
    except Exception as e:  # anything else unparseable is still bad input
        msg = f"{type(e).__name__}: {e}"
        return _encoder.encode(ControlResponse(ok=False, error="bad_request", message=msg)), msg
    try:
        result: dict[str, Any] | None = None
        if isinstance(req, StatusRequest):
            result = node.status()
        elif isinstance(req, SetLinksRequest):
            node.set_links(req.rules)
        elif isinstance(req, TransferRequest):
            node.transfer_leader(req.to)
        elif isinstance(req, ChangeMembersRequest):
            result = node.change_members(req.changes)
        elif isinstance(req, CompactRequest):
            result = node.compact()
        elif isinstance(req, DigestRequest):
            result = node.digest()
        elif isinstance(req, DecreeRequest):
            result = node.decree(req.value)
        else:
            node.shutdown()
    except ControlError as e:
        return _encoder.encode(ControlResponse(
            id=req.id, ok=False, error=e.code, message=str(e))), None
    return _encoder.encode(ControlResponse(id=req.id, ok=True, data=result)), None


class ControlError(Exception):
    """A control request that cannot be done now; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_response(data: bytes) -> ControlResponse:
    return msgspec.msgpack.decode(data, type=ControlResponse)


def encode_request(req: ControlRequest) -> bytes:
    return _encoder.encode(req)
