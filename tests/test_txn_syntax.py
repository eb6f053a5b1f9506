"""`raftctl txn`'s text (raftctl/txn_syntax.py): the line syntax and JSON
both become the same request, and a mistake names its line."""

from __future__ import annotations

import json

import pytest

from node.api_range import TxnCompare, TxnDelete, TxnPut, TxnRange
from raftctl.txn_syntax import TxnSyntaxError, parse_txn


def test_lines_become_compares_and_branches() -> None:
    """if/then/else lines, with quoting and comments, parse in order."""
    got = parse_txn('''
        # take the lock if nobody holds it
        if version(locks/a) = 0
        if value(mode) != nil
        then put locks/a "held by me"
        then del --prefix cache/
        else get locks/a
        else get --prefix locks/ --limit 3 --keys-only
    ''')
    assert got == (
        [TxnCompare("locks/a", "version", "=", 0), TxnCompare("mode", "value", "!=", None)],
        [TxnPut("locks/a", b"held by me"), TxnDelete("cache/", prefix=True)],
        [TxnRange("locks/a"), TxnRange("locks/", prefix=True, limit=3, keys_only=True)])


def test_json_gives_the_same_transaction() -> None:
    """The JSON form reads values as UTF-8 text and ops by name."""
    doc = {"compare": [{"key": "k", "target": "value", "cmp": "=", "value": "v"},
                       {"key": "k", "target": "mod", "cmp": "<", "value": 9}],
           "success": [{"op": "put", "key": "k", "value": "w"}],
           "failure": [{"op": "delete", "key": "p/", "prefix": True}]}
    assert parse_txn(json.dumps(doc)) == (
        [TxnCompare("k", "value", "=", b"v"), TxnCompare("k", "mod", "<", 9)],
        [TxnPut("k", b"w")], [TxnDelete("p/", prefix=True)])


def test_a_put_may_go_with_a_lease() -> None:
    """`put KEY VALUE --lease ID` attaches the key to the lease, in the text
    as in JSON."""
    assert parse_txn("if version(lock) = 0\nthen put lock me --lease 42") == (
        [TxnCompare("lock", "version", "=", 0)], [TxnPut("lock", b"me", lease=42)], [])
    doc = {"success": [{"op": "put", "key": "lock", "value": "me", "lease": 42}]}
    assert parse_txn(json.dumps(doc))[1] == [TxnPut("lock", b"me", lease=42)]


@pytest.mark.parametrize(("text", "says"), [
    ("then put k v --lease", "--lease takes a lease ID"),
    ("then put k v --lease 0", "--lease takes a lease ID"),
    ("if version(k) = x", "line 1: version(k) compares with an integer"),
    ("then put k", "line 1: put takes KEY VALUE"),
    ("\nwhen x", "line 2: a line starts with if, then or else"),
    ("if size(k) > 1", "is not value(KEY)"),
    ("then get k --limit", "--limit takes a number"),
    ("", "the transaction is empty"),
    ('{"compare": [{"key": "k"}]}', "JSON input"),
])
def test_mistakes_name_their_line(text: str, says: str) -> None:
    """A text that is not a transaction is refused with a sentence that says where."""
    with pytest.raises(TxnSyntaxError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_txn(text)
