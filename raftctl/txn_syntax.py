"""The text of `raftctl txn`: a small line syntax, or JSON, parsed into the
compares and operations of a transaction request (node/api_range.py).
Parsing only: the command sends and renders.

    if value(config/mode) = "blue"      # every `if` must hold
    if version(config/lock) = 0         # value, version, create, mod; = != < >
    then put config/mode green          # then: run if all hold
    then put config/owner me --lease 7  # goes with lease 7 (`raftctl lease grant`)
    then del --prefix cache/
    else get config/mode                # else: run otherwise

Values are UTF-8 text (quote them with spaces); `nil` in a value compare
means "absent". JSON: {"compare": [{"key", "target", "cmp", "value"}],
"success": [{"op": "put", "key", "value", "lease"}, ...], "failure": [...]}.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import msgspec

from node.api_range import TxnCompare, TxnDelete, TxnItem, TxnPut, TxnRange

_COMPARE = re.compile(r"^(value|version|create|mod)\((.+)\)$")
_CMPS = ("=", "!=", "<", ">")


class TxnSyntaxError(ValueError):
    """The text is not a transaction; the message names the line."""


def parse_txn(text: str) -> tuple[list[TxnCompare], list[TxnItem], list[TxnItem]]:
    """The compares, `then` and `else` operations that `text` (lines or JSON) holds."""
    if text.lstrip().startswith("{"):
        return _parse_json(text)
    compares: list[TxnCompare] = []
    success: list[TxnItem] = []
    failure: list[TxnItem] = []
    for n, raw in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as e:
            raise TxnSyntaxError(f"line {n}: {e}") from None
        if not words:
            continue
        head, rest = words[0], words[1:]
        try:
            if head == "if":
                compares.append(_compare(rest))
            elif head == "then":
                success.append(_item(rest))
            elif head == "else":
                failure.append(_item(rest))
            else:
                raise ValueError(f"a line starts with if, then or else, not {head!r}")
        except ValueError as e:
            raise TxnSyntaxError(f"line {n}: {e}") from None
    if not (compares or success or failure):
        raise TxnSyntaxError("the transaction is empty: give if, then and else lines")
    return compares, success, failure


def _compare(words: list[str]) -> TxnCompare:
    if len(words) != 3 or words[1] not in _CMPS:
        raise ValueError("a compare reads TARGET(KEY) CMP VALUE, e.g. version(k) > 2, "
                         f"with CMP one of {' '.join(_CMPS)}")
    m = _COMPARE.match(words[0])
    if m is None:
        raise ValueError(f"{words[0]!r} is not value(KEY), version(KEY), create(KEY) or mod(KEY)")
    target, key = m.group(1), m.group(2)
    operand: bytes | int | None
    if target == "value":
        operand = None if words[2] == "nil" else words[2].encode()
    else:
        try:
            operand = int(words[2])
        except ValueError:
            raise ValueError(f"{target}({key}) compares with an integer, not {words[2]!r}") \
                from None
    return msgspec.convert({"key": key, "target": target, "cmp": words[1], "value": operand},
                           TxnCompare)


def _item(words: list[str]) -> TxnItem:
    if not words:
        raise ValueError("an operation is put KEY VALUE, del KEY, del --prefix P, get KEY or "
                         "get --prefix P")
    op, args = words[0], words[1:]
    flags = {a for a in args if a.startswith("--")}
    plain = [a for a in args if not a.startswith("--")]
    if op == "put":
        lease = 0
        if "--lease" in args:
            i = args.index("--lease")
            try:
                lease = int(args[i + 1])
            except (IndexError, ValueError):
                raise ValueError("--lease takes a lease ID (`raftctl lease grant`)") from None
            if lease < 1:
                raise ValueError("--lease takes a lease ID (`raftctl lease grant`)")
            plain.remove(args[i + 1])
            flags.discard("--lease")
        if len(plain) != 2 or flags:
            raise ValueError("put takes KEY VALUE, and --lease ID")
        return TxnPut(plain[0], plain[1].encode(), lease=lease)
    if op in ("del", "delete"):
        if len(plain) != 1 or flags - {"--prefix"}:
            raise ValueError("del takes KEY, or --prefix P")
        return TxnDelete(plain[0], prefix="--prefix" in flags)
    if op in ("get", "range"):
        limit = 0
        if "--limit" in args:
            i = args.index("--limit")
            try:
                limit = int(args[i + 1])
            except (IndexError, ValueError):
                raise ValueError("--limit takes a number") from None
            plain.remove(args[i + 1])
            flags.discard("--limit")
        if len(plain) != 1 or flags - {"--prefix", "--keys-only", "--count-only"}:
            raise ValueError("get takes KEY, or --prefix P, and --limit N, --keys-only, "
                             "--count-only")
        return TxnRange(plain[0], prefix="--prefix" in flags, limit=limit,
                        keys_only="--keys-only" in flags, count_only="--count-only" in flags)
    raise ValueError(f"unknown operation {op!r}: put, del or get")


def _parse_json(text: str) -> tuple[list[TxnCompare], list[TxnItem], list[TxnItem]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TxnSyntaxError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or set(doc) - {"compare", "success", "failure"}:
        raise TxnSyntaxError("JSON input is an object of compare, success and failure lists")
    try:
        compares = [msgspec.convert(_bytes_value(c, value_only=True), TxnCompare)
                    for c in doc.get("compare", [])]
        success: list[TxnItem] = [msgspec.convert(_bytes_value(i), TxnItem)
                                  for i in doc.get("success", [])]
        failure: list[TxnItem] = [msgspec.convert(_bytes_value(i), TxnItem)
                                  for i in doc.get("failure", [])]
    except (msgspec.ValidationError, TypeError, AttributeError) as e:
        raise TxnSyntaxError(f"JSON input: {e}") from None
    return compares, success, failure


def _bytes_value(item: Any, value_only: bool = False) -> Any:
    """JSON has no bytes: a string `value` is UTF-8 text (for a compare,
    only when its target is the value)."""
    if isinstance(item, dict) and isinstance(item.get("value"), str) and (
            not value_only or item.get("target") == "value"):
        return {**item, "value": item["value"].encode()}
    return item
