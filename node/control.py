"""Operator commands on the control socket: status, link faults, leadership
transfer, membership changes, compaction, digest, a Paxos decree, shutdown. Requests and
replies are msgpack maps; the runner implements `Controlled`. No socket I/O
here; a command whose work is slow (`digest`) hands back a future, and the
runner answers when it is done.
"""

from __future__ import annotations

import concurrent.futures
from typing import Annotated, Any, Literal, Protocol

import msgspec

from node.config import MAX_MESSAGE_BYTES, MAX_REQUEST_FIELDS, NodeSpec
from node.frames import map_len
from node.transport.links import LinkRule

# More link rules than any cluster has peers is not a request to act on.
MAX_LINK_RULES = 256


class _Ctl(msgspec.Struct, frozen=True, kw_only=True, tag_field="op",
           forbid_unknown_fields=True):
    """As client requests (node/api.py): only the op's fields, so msgspec
    never descends into a value the schema does not expect."""

    id: int = 0


class StatusRequest(_Ctl, tag="status", frozen=True):
    pass


class SetLinksRequest(_Ctl, tag="set_links", frozen=True):
    """Replace every link rule of this node (an empty map heals all links)."""

    rules: Annotated[dict[str, LinkRule], msgspec.Meta(max_length=MAX_LINK_RULES)]


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
    def digest(self) -> concurrent.futures.Future[dict[str, Any]]: ...
    def decree(self, value: str) -> dict[str, Any]: ...
    def shutdown(self) -> None: ...


_decoder: msgspec.msgpack.Decoder[ControlRequest] = msgspec.msgpack.Decoder(ControlRequest)
_encoder = msgspec.msgpack.Encoder()


Reply = bytes | concurrent.futures.Future[bytes]


def _refuse(message: str, code: str = "bad_request") -> tuple[Reply, str | None]:
    return _encoder.encode(ControlResponse(ok=False, error=code, message=message)), message


def handle_control(node: Controlled, data: bytes) -> tuple[Reply, str | None]:
    """Run one control request; returns the encoded reply (or a future of
    it) and, for bad input, the reason (for the `bad_request` log event).
    Size and field count are checked before anything is decoded."""
    if len(data) > MAX_MESSAGE_BYTES:
        return _refuse(f"a frame of {len(data)} bytes exceeds the limit of "
                       f"{MAX_MESSAGE_BYTES}", "too_large")
    fields = map_len(data)
    if fields is None or fields > MAX_REQUEST_FIELDS:
        return _refuse(f"a control request is a MessagePack map of at most "
                       f"{MAX_REQUEST_FIELDS} fields")
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
            return _when_done(req.id, node.digest()), None
        elif isinstance(req, DecreeRequest):
            result = node.decree(req.value)
        else:
            node.shutdown()
    except ControlError as e:
        return _encoder.encode(ControlResponse(
            id=req.id, ok=False, error=e.code, message=str(e))), None
    return _encoder.encode(ControlResponse(id=req.id, ok=True, data=result)), None


def _when_done(req_id: int, fut: concurrent.futures.Future[dict[str, Any]]
               ) -> concurrent.futures.Future[bytes]:
    """The encoded reply to `req_id`, once `fut` is done."""
    out: concurrent.futures.Future[bytes] = concurrent.futures.Future()

    def done(f: concurrent.futures.Future[dict[str, Any]]) -> None:
        try:
            reply = ControlResponse(id=req_id, ok=True, data=f.result())
        except Exception as e:  # the work failed: say so rather than stay silent
            reply = ControlResponse(id=req_id, ok=False, error="failed",
                                    message=f"{type(e).__name__}: {e}")
        out.set_result(_encoder.encode(reply))

    fut.add_done_callback(done)
    return out


class ControlError(Exception):
    """A control request that cannot be done now; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_response(data: bytes) -> ControlResponse:
    return msgspec.msgpack.decode(data, type=ControlResponse)


def encode_request(req: ControlRequest) -> bytes:
    return _encoder.encode(req)
