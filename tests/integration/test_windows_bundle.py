"""`make windows-bundle`: the offline zip holds a wheel for every dependency the agent has
on Windows, and pip resolves an install of it from the zip alone.

The bundle is built once for the module (it downloads win_amd64 wheels from PyPI). pip
judges environment markers by the machine it runs on, even with --platform, so the
wheel check reads every wheel's requirements itself with Windows' marker values; the
dry-run install then proves the versions fit together with no index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "3.11"
WINDOWS = {
    "implementation_name": "cpython",
    "os_name": "nt",
    "platform_machine": "AMD64",
    "platform_python_implementation": "CPython",
    "platform_system": "Windows",
    "python_full_version": f"{PYTHON}.0",
    "python_version": PYTHON,
    "sys_platform": "win32",
    "extra": "",
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "scripts/windows_bundle.py", "--out", str(out), "--python", PYTHON],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    return Path(summary["bundle"])


@pytest.fixture(scope="module")
def unpacked(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("bundle")
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(where)
    return where


def requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    found = [Requirement(line) for line in metadata.get_all("Requires-Dist") or []]
    return [r for r in found if r.marker is None or r.marker.evaluate(WINDOWS)]


def test_the_bundle_is_named_for_its_python_and_holds_the_installer(bundle: Path) -> None:
    assert bundle.name == "setevnt-windows-0.1.0-cp311-win_amd64.zip"
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
    assert {"install.ps1", "agent.example.toml", "README.txt"} <= names
    assert "wheels/setevnt-0.1.0-py3-none-any.whl" in names


def test_every_dependency_on_windows_has_a_win_amd64_wheel_in_the_bundle(unpacked: Path) -> None:
    wheels = sorted((unpacked / "wheels").glob("*.whl"))
    names = {parse_wheel_filename(w.name)[0] for w in wheels}
    for wheel in wheels:
        for tag in parse_wheel_filename(wheel.name)[3]:
            assert tag.platform in ("any", "win_amd64"), wheel.name
            assert tag.interpreter in ("py3", "cp311") or tag.abi == "abi3", wheel.name
    unmet = {
        (wheel.name, str(r)) for wheel in wheels for r in requires(wheel)
        if canonicalize_name(r.name) not in names
    }  # fmt: skip
    assert unmet == set()
    project = next(w for w in wheels if w.name.startswith("setevnt-"))
    direct = {canonicalize_name(r.name) for r in requires(project)}
    assert {"psutil", "portalocker", "pywin32", "pika", "pynacl"} <= direct


def test_pip_installs_it_from_the_bundle_alone_for_windows(unpacked: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Only the bundle: no index, no find-links or config of this machine's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            str(venv / "bin" / "pip"), "install", "--dry-run", "--quiet", "--no-index",
            "--find-links", str(unpacked / "wheels"), "--only-binary=:all:",
            "--platform", "win_amd64", "--python-version", PYTHON, "--implementation", "cp",
            "--abi", "cp311", "--target", str(tmp_path / "target"), "--report", str(report),
            "setevnt", "pywin32",  # pywin32 named: pip would judge its marker by Linux
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    installed = {
        canonicalize_name(item["metadata"]["name"])
        for item in json.loads(report.read_text())["install"]
    }
    bundled = {parse_wheel_filename(w.name)[0] for w in (unpacked / "wheels").glob("*.whl")}
    assert installed == bundled
    assert not (tmp_path / "target").exists()  # a dry run
