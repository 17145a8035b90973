#!/usr/bin/env python3
"""`make windows-bundle`: an offline install of the agent for Windows clients, as one zip.

dist/setevnt-windows-<version>-cp<XY>-win_amd64.zip holds the project's wheel, every
dependency as a wheel for 64-bit CPython <X.Y> on Windows, deploy/windows/install.ps1
(venv, install from the bundle, config, service), the example agent config and a README.
The wheels come from PyPI (`pip download --platform win_amd64 --only-binary=:all:`), so
this needs the network once; the client needs none. pip judges environment markers by
the machine it runs on, not by --platform, so requirements only Windows needs
(``sys_platform == "win32"``: pywin32) are found here from the wheels' metadata and
downloaded by name until nothing is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
PYTHON = "3.11"  # the CPython the bundle is for (the project's oldest supported)
INSTALLER = ROOT / "deploy" / "windows" / "install.ps1"
EXAMPLE = ROOT / "deploy" / "agent.example.toml"
ROUNDS = 5  # of looking for Windows-only requirements: each round adds a level of them


def windows_environment(python: str) -> dict[str, str]:
    """The marker environment of 64-bit CPython ``python`` on Windows."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "os_name": "nt",
        "platform_machine": "AMD64",
        "platform_python_implementation": "CPython",
        "platform_release": "10",
        "platform_system": "Windows",
        "platform_version": "10.0.19045",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": "win32",
        "extra": "",
    }


def requirements(wheel: Path, environment: dict[str, str]) -> list[Requirement]:
    """What a wheel requires on that platform (its METADATA's Requires-Dist, markers judged)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    found = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            found.append(requirement)
    return found


def wheel_names(wheels: Iterable[Path]) -> set[str]:
    return {parse_wheel_filename(w.name)[0] for w in wheels}


def missing(wheels: list[Path], environment: dict[str, str]) -> list[Requirement]:
    """Requirements of the wheels (on Windows) that no wheel in the list satisfies by name."""
    have = wheel_names(wheels)
    wanted: dict[str, Requirement] = {}
    for wheel in wheels:
        for requirement in requirements(wheel, environment):
            if canonicalize_name(requirement.name) not in have:
                wanted.setdefault(canonicalize_name(requirement.name), requirement)
    return list(wanted.values())


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def download(targets: list[str], into: Path, python: str) -> None:
    abi = "cp" + python.replace(".", "")
    pip(
        "download", "--quiet", "--only-binary=:all:", "--platform", "win_amd64",
        "--python-version", python, "--implementation", "cp", "--abi", abi,
        "--dest", str(into), *targets,
    )  # fmt: skip


def collect(into: Path, python: str) -> list[Path]:
    """The project wheel and every wheel it needs on Windows, in ``into``."""
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(into), str(ROOT))
    (project,) = into.glob("setevnt-*.whl")
    download([str(project)], into, python)
    environment = windows_environment(python)
    for _ in range(ROUNDS):
        wheels = sorted(into.glob("*.whl"))
        needed = missing(wheels, environment)
        if not needed:
            return wheels
        download([str(r).split(";")[0] for r in needed], into, python)
    raise SystemExit(f"still missing after {ROUNDS} rounds: {missing(wheels, environment)}")


README = """setevnt agent for Windows: offline bundle (CPython {python}, 64-bit)

In an elevated PowerShell, with CPython {python} (64-bit) installed:

    powershell -ExecutionPolicy Bypass -File install.ps1 -Config C:\\path\\to\\pc042-agent.toml

wheels\\      the agent and its dependencies (no network needed)
install.ps1  venv in %ProgramFiles%\\setevnt, install, config into %ProgramData%\\setevnt, service
agent.example.toml  every setting, commented

docs/windows.md in the project says the rest, and what was not tried on real Windows.
"""


def build(out: Path, python: str) -> Path:
    with tempfile.TemporaryDirectory(prefix="setevnt-bundle-") as tmp:
        wheels_dir = Path(tmp) / "wheels"
        wheels = collect(wheels_dir, python)
        (project,) = (w for w in wheels if w.name.startswith("setevnt-"))
        version = parse_wheel_filename(project.name)[1]
        out.mkdir(parents=True, exist_ok=True)
        bundle = out / f"setevnt-windows-{version}-cp{python.replace('.', '')}-win_amd64.zip"
        staged = bundle.with_suffix(".part")
        with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as archive:
            for wheel in wheels:
                archive.write(wheel, f"wheels/{wheel.name}")
            archive.write(INSTALLER, "install.ps1")
            archive.write(EXAMPLE, "agent.example.toml")
            archive.writestr("README.txt", README.format(python=python))
        shutil.move(staged, bundle)
    return bundle


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="directory of the zip")
    parser.add_argument("--python", default=PYTHON, help=f"CPython X.Y (default {PYTHON})")
    args = parser.parse_args()
    bundle = build(Path(args.out), args.python)
    with zipfile.ZipFile(bundle) as archive:
        listed = sorted(n.removeprefix("wheels/") for n in archive.namelist() if "wheels/" in n)
    summary = {"bundle": str(bundle), "bytes": bundle.stat().st_size, "wheels": listed}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
