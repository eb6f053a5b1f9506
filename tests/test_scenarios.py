"""Runs the scenario scripts in tests/scenarios/*.txt (after etcd's raft
testdata) and compares what the cluster does with the expected output.

A script is a list of blocks: an optional `#` comment, one command, a line
`----`, and the expected output up to a blank line. Commands:

  cluster N [prevote=0|1] [check_quorum=0|1] [election=T] [heartbeat=T]
            [max_entries=N] [max_bytes=N] [max_inflight=N] [chunk=N] [seed=S]
  campaign N          tick N|all T          heartbeat N
  deliver-msgs [drop=N,..] [to=N]           stabilize
  run T [verbose]     (T ticks of the whole cluster; events only unless verbose)
  propose N DATA..    read N CTX            transfer N TO
  compact N INDEX     crash N               restart N
  isolate N  cut A B  drop A B [PROB]       partition A,B C,D,E    recover
  status              log N..               applied N..

Output lines are what nodes did (`n1 became_leader term=2 ...`; the term is
the node's term when it handled that Ready), what they sent (`n1->n2 ae
term=2 prev=(3,1) entries=[4..6] commit=3`; pairs are (index,term), entry
runs of another term than the message carry `@term`), what they applied and
which reads were served. Run
`pytest tests/test_scenarios.py --rewrite-scenarios` to regenerate the
expected output, then review the diff.
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from node.errors import NotLeader, ProposalDropped
from node.raft.messages import Beat, Hup
from tests.harness import Network, small_config

SCENARIOS = Path(__file__).parent / "scenarios"


@dataclass
class Block:
    comments: list[str]
    command: str
    expected: list[str] = field(default_factory=list)


def parse(text: str) -> tuple[list[Block], list[str]]:
    """Blocks of a script, and the comment lines after the last block."""
    blocks: list[Block] = []
    comments: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            comments.append(line)
            i += 1
        else:
            if i + 1 >= len(lines) or lines[i + 1] != "----":
                raise ValueError(f"line {i + 2}: expected ---- after command {line!r}")
            block = Block(comments, line)
            comments = []
            i += 2
            while i < len(lines) and lines[i].strip():
                block.expected.append(lines[i])
                i += 1
            blocks.append(block)
    return blocks, comments


def render(blocks: list[Block], outputs: list[list[str]], trailer: list[str]) -> str:
    parts: list[str] = []
    for block, out in zip(blocks, outputs, strict=True):
        parts.append("\n".join([*block.comments, block.command, "----", *out]) + "\n")
    if trailer:
        parts.append("\n".join(trailer) + "\n")
    return "\n".join(parts)


class Interpreter:
    """Executes scenario commands against a `Network`."""

    def __init__(self) -> None:
        self.net: Network | None = None

    def run(self, command: str) -> list[str]:
        words = shlex.split(command)
        verb, args = words[0], words[1:]
        if verb == "cluster":
            self._cluster(args)
            return ["ok"]
        net = self._network()
        mark = len(net.lines)
        extra = self._dispatch(net, verb, args)
        out = net.lines[mark:] + extra
        return out or ["ok"]

    def _network(self) -> Network:
        if self.net is None:
            raise ValueError("the script must start with `cluster`")
        return self.net

    def _cluster(self, args: list[str]) -> None:
        keys = {"prevote": "prevote", "check_quorum": "check_quorum",
                "election": "election_ticks", "heartbeat": "heartbeat_ticks",
                "max_entries": "max_append_entries", "max_bytes": "max_append_bytes",
                "max_inflight": "max_inflight_appends", "chunk": "snapshot_chunk_bytes"}
        kw: dict[str, Any] = {}
        seed = 0
        for arg in args[1:]:
            k, v = arg.split("=", 1)
            if k == "seed":
                seed = int(v)
            elif k in ("prevote", "check_quorum"):
                kw[keys[k]] = v == "1"
            else:
                kw[keys[k]] = int(v)
        self.net = Network(int(args[0]), small_config(**kw), seed=seed)

    def _dispatch(self, net: Network, verb: str, args: list[str]) -> list[str]:
        if verb == "campaign":
            net.step(args[0], Hup())
        elif verb == "heartbeat":
            net.step(args[0], Beat())
        elif verb == "tick":
            nodes = None if args[0] == "all" else [args[0]]
            net.tick(int(args[1]), nodes)
        elif verb == "deliver-msgs":
            opts = dict(a.split("=", 1) for a in args)
            to = opts.get("to")
            net.deliver(only=(lambda m: m.dst == to) if to else None,
                        drop_to=opts["drop"].split(",") if "drop" in opts else ())
            net.process_all()
        elif verb == "stabilize":
            net.stabilize()
        elif verb == "run":
            mark = len(net.lines)
            net.run(int(args[0]))
            if "verbose" not in args[1:]:
                net.lines[mark:] = [ln for ln in net.lines[mark:] if "->" not in ln]
        elif verb in ("propose", "read", "transfer"):
            return self._client(net, verb, args)
        elif verb == "compact":
            meta = net.compact(args[0], int(args[1]))
            return [f"{args[0]} compacted snap=({meta.index},{meta.term})"]
        elif verb == "crash":
            net.crash(args[0])
        elif verb == "restart":
            net.restart(args[0])
        elif verb == "isolate":
            net.isolate(args[0])
        elif verb == "cut":
            net.cut(args[0], args[1])
        elif verb == "drop":
            net.drop(args[0], args[1], float(args[2]) if len(args) > 2 else 1.0)
        elif verb == "partition":
            groups = [g.split(",") for g in args]
            for k, ga in enumerate(groups):
                for gb in groups[k + 1 :]:
                    for a in ga:
                        for b in gb:
                            net.cut(a, b)
        elif verb == "recover":
            net.recover()
        elif verb == "status":
            return net.status_lines()
        elif verb == "log":
            return [net.log_line(n) for n in args]
        elif verb == "applied":
            return [f"{n} applied=[{','.join(d.decode() for d in net.applied(n))}]"
                    for n in args]
        else:
            raise ValueError(f"unknown command {verb!r}")
        return []

    def _client(self, net: Network, verb: str, args: list[str]) -> list[str]:
        nid = args[0]
        core = net.core(nid)
        out: list[str] = []
        mark = len(net.lines)
        try:
            if verb == "propose":
                for data in args[1:]:
                    index = core.propose(data.encode())
                    out.append(f"{nid} proposed index={index} data={data}")
            elif verb == "read":
                core.read_index(args[1].encode())
            else:
                core.transfer_leader(args[1])
        except (NotLeader, ProposalDropped) as e:
            out.append(f"{nid} refused {verb}: {e}")
        net.process(nid)
        # Show the outcome of the request before what the Ready did.
        net.lines[mark:mark] = out
        return []


def run_script(path: Path) -> tuple[list[Block], list[list[str]], list[str]]:
    blocks, trailer = parse(path.read_text())
    interp = Interpreter()
    return blocks, [interp.run(b.command) for b in blocks], trailer


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario(path: Path, request: pytest.FixtureRequest) -> None:
    """The cluster does exactly what the scenario script expects."""
    blocks, outputs, trailer = run_script(path)
    if request.config.getoption("--rewrite-scenarios"):
        path.write_text(render(blocks, outputs, trailer))
        return
    for block, out in zip(blocks, outputs, strict=True):
        if out != block.expected:
            diff = "\n".join(difflib.unified_diff(
                block.expected, out, "expected", "actual", lineterm=""))
            pytest.fail(f"{path.name}: `{block.command}` differs:\n{diff}")


def test_every_named_scenario_exists() -> None:
    """The protocol's scenario scripts are all present."""
    names = {p.stem for p in SCENARIOS.glob("*.txt")}
    assert {"election", "prevote", "check_quorum", "log_repair", "snapshot", "read_index",
            "transfer", "figure8"} <= names


def test_parse_and_render_round_trip() -> None:
    """A script written back without changes is byte-for-byte the same."""
    text = "# a\ncluster 3\n----\nok\n\n# b\nstatus\n----\nx\ny\n\n# end\n"
    blocks, trailer = parse(text)
    assert render(blocks, [b.expected for b in blocks], trailer) == text
