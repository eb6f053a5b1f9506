"""Installing the project on a host: a wheel built here (or given), copied
over SFTP with any wheelhouse, and installed with pip into a virtualenv on
the host that sees the host's own site-packages, so hosts need no package
registry. Building runs pip locally; installing runs commands over SSH."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from raftctl.cluster import ClusterError
from raftctl.remote.inventory import MIN_PYTHON
from raftctl.remote.ssh import HostCommandFailed, SshPool, SshTarget, sh

# pip on a small host takes its time; a wheel build here too.
PIP_TIMEOUT_S = 300.0
WHEEL_BUILD_TIMEOUT_S = 300.0
# The file on a host that says which build is installed there.
INSTALLED_MARK = "installed"
_PACKAGES = ("raftctl", "node", "chaos")


@dataclass(frozen=True)
class Wheel:
    """A wheel of the project and what identifies its contents."""

    path: Path
    fingerprint: str
    wheelhouse: tuple[Path, ...] = ()


def source_root() -> Path | None:
    """The project's source checkout this raftctl runs from, if it does."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and all((root / p).is_dir() for p in _PACKAGES):
        return root
    return None


def source_fingerprint(root: Path) -> str:
    """A digest of everything that goes into the wheel: a change to any
    module means a new install on the hosts."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml", *sorted(
        p for pkg in _PACKAGES for p in (root / pkg).rglob("*.py"))]
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def build_wheel(cache: Path, given: Path | None = None,
                wheelhouse: Path | None = None) -> Wheel:
    """The wheel to install: `given`, else one built from the source
    checkout (offline, no build isolation), kept in `cache` until the
    source changes."""
    house = _wheelhouse(wheelhouse)
    if given is not None:
        if not given.is_file() or given.suffix != ".whl":
            raise ClusterError(f"--wheel {given}: not a wheel file (.whl)")
        return Wheel(given, hashlib.sha256(given.read_bytes()).hexdigest(), house)
    root = source_root()
    if root is None:
        raise ClusterError("raftctl does not run from a source checkout, so it cannot build "
                           "the wheel the hosts install; give one with --wheel FILE "
                           "(`pip wheel raftctl --no-deps` makes it)")
    fp = source_fingerprint(root)
    done = cache / fp
    found = sorted(done.glob("raftctl-*.whl")) if done.is_dir() else []
    if found:
        return Wheel(found[0], fp, house)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, ignore_cleanup_errors=True) as tmp:
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps",
                            "--no-build-isolation", "--no-index", "-q", "-w", tmp],
                           capture_output=True, text=True, timeout=WHEEL_BUILD_TIMEOUT_S)
        built = sorted(Path(tmp).glob("raftctl-*.whl"))
        if p.returncode != 0 or not built:
            out = p.stderr + p.stdout
            if "invalid command 'bdist_wheel'" in out:
                raise ClusterError(f"building the wheel of {root} needs the `wheel` package "
                                   "or setuptools 70.1 or newer here: `pip install wheel`")
            why = [line for line in out.splitlines() if "error" in line.lower()]
            raise ClusterError(f"building the wheel of {root} failed: "
                               f"{why[-1].strip() if why else 'no wheel made'}")
        Path(tmp).rename(done)
    for old in cache.iterdir():  # one build is enough to keep
        if old != done:
            shutil.rmtree(old, ignore_errors=True)
    return Wheel(done / built[0].name, fp, house)


def _wheelhouse(d: Path | None) -> tuple[Path, ...]:
    if d is None:
        return ()
    wheels = tuple(sorted(d.glob("*.whl"))) if d.is_dir() else ()
    if not wheels:
        raise ClusterError(f"--wheelhouse {d}: no wheel files (.whl) there")
    return wheels


def venv_python(install_dir: str) -> str:
    return f"{install_dir}/venv/bin/python"


async def install(pool: SshPool, t: SshTarget, python: str, install_dir: str,
                  wheel: Wheel) -> bool:
    """Install `wheel` into INSTALL_DIR/venv on `t` unless that build is
    there already; True if it installed. Raises HostCommandFailed with the
    step that failed and what to do."""
    mark = f"{install_dir}/{INSTALLED_MARK}"
    if (await pool.read(t, mark)) == wheel.fingerprint.encode():
        return False
    d, q = shlex.quote(install_dir), shlex.quote
    want = ".".join(map(str, MIN_PYTHON))
    check = (f"{q(python)} -c 'import sys; sys.exit(sys.version_info < {MIN_PYTHON!r})' "
             f"2>/dev/null || {{ echo 'needs Python {want} or newer as `{python}`; set "
             "python in its [hosts] table' >&2; exit 1; }")
    await pool.run(t, sh(f"{check}; mkdir -p {d}/wheels && rm -f {d}/wheels/*.whl"))
    for f in (wheel.path, *wheel.wheelhouse):
        await pool.put(t, f, f"{install_dir}/wheels/{f.name}")
    vpy = q(venv_python(install_dir))
    # --system-site-packages: what the host has installed already is used;
    # pip comes from there too, else from ensurepip.
    await pool.run(t, sh(
        f"[ -x {vpy} ] || {q(python)} -m venv --without-pip --system-site-packages {d}/venv; "
        f"{vpy} -m pip --version >/dev/null 2>&1 || {vpy} -m ensurepip -q >/dev/null 2>&1 || "
        "{ echo 'has no pip for its Python: install python3-pip (or python3-venv)' >&2; "
        "exit 1; }"), timeout_s=PIP_TIMEOUT_S)
    whl = q(f"{install_dir}/wheels/{wheel.path.name}")
    pip = f"{vpy} -m pip install -q --disable-pip-version-check --no-index --find-links {d}/wheels"
    try:
        # First the dependencies (found on the host or in the wheelhouse),
        # then this build over whatever version is there.
        await pool.run(t, sh(f"{pip} {whl} && {pip} --no-deps --force-reinstall {whl}"),
                       timeout_s=PIP_TIMEOUT_S)
    except HostCommandFailed as e:
        raise HostCommandFailed(f"{e}; the host needs the project's dependencies installed "
                                "for its Python, or give their wheels with --wheelhouse DIR"
                                ) from None
    await pool.write(t, mark, wheel.fingerprint.encode(), mode=0o644)
    return True
