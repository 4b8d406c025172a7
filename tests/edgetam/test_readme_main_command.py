"""The README's first command, exactly as written, in a fresh clone.

The line after the `# main job` comment of README.md's first bash block (today
`bash scripts/setup.sh && python3 -m edgetam track --out out/demo --frames 8 --image-size 512`)
runs in a `git clone` of this repository's HEAD, so it tests committed files only: uncommitted
changes in the checkout running the test are not part of the clone.

The machine's environment is left alone:
- `python3` and its pip are those of a temporary virtual environment made with
  `--system-site-packages --without-pip` and put first on PATH: setup.sh's pip installs find
  everything already installed (a venv with its own bundled pip and setuptools would shadow the
  installed setuptools and download a newer one), and its `pip install -e .` lands in the venv,
  not over the machine's editable install;
- `apt-get` and `sudo` are stand-ins that fail the test: setup.sh must find its system packages
  present (as after CI's own setup.sh) and install none.
It takes a few minutes (setup.sh builds the C++ extension in the clone), once per test run.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1800


def main_command() -> str:
    """The first command line after `# main job` in README.md's first bash block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no ```bash block"
    lines = block.group(1).splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# main job")), None)
    assert start is not None, "README.md's first bash block has no '# main job' comment"
    command = next((line.strip() for line in lines[start + 1:]
                    if line.strip() and not line.lstrip().startswith("#")), None)
    assert command, "no command after README.md's '# main job' comment"
    return command


def _option(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def _stand_in(folder: Path, name: str) -> None:
    path = folder / name
    path.write_text(
        "#!/bin/sh\n"
        f'echo "README test: setup.sh ran \'{name} $*\': a system package it needs is missing '
        "here; run 'bash scripts/setup.sh' once first (this test installs no system "
        'packages)" >&2\nexit 97\n')
    path.chmod(0o755)


def _installed_here():
    """Where this interpreter's install of the package points (None: not installed)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("edgetam-kernels")
    except metadata.PackageNotFoundError:
        return None
    return str(dist.locate_file("")), dist.read_text("direct_url.json")


def test_readme_main_command_in_a_fresh_clone(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: the test clones the repository it runs in")
    command = main_command()
    argv = shlex.split(command.split("&&")[-1])
    assert argv[:4] == ["python3", "-m", "edgetam", "track"], command
    out_dir, frames = _option(argv, "--out"), int(_option(argv, "--frames", 8))

    clone = tmp_path / "clone"
    # safe.directory: CI may run as another user than the checkout's owner
    subprocess.run(["git", "-c", "safe.directory=*", "clone", "--quiet", str(ROOT), str(clone)],
                   check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    fake_bin = tmp_path / "no-system-installs"
    fake_bin.mkdir()
    if shutil.which("apt-get"):
        for name in ("apt-get", "sudo"):
            _stand_in(fake_bin, name)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), str(fake_bin), env.get("PATH", "")]),
               VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    installed = _installed_here()
    r = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                       text=True, timeout=TIMEOUT_S)
    assert r.returncode == 0, (
        f"README's main command failed ({r.returncode}) in a fresh clone:\n{command}\n"
        f"--- stdout ---\n{r.stdout[-4000:]}\n--- stderr ---\n{r.stderr[-4000:]}")

    # the package that ran is the clone's, installed into the venv only
    assert _installed_here() == installed, "the machine's own install of the package changed"
    show = subprocess.run([str(venv / "bin" / "python3"), "-c",
                           "import edgetam, edgetam_kernels; print(edgetam.__file__); "
                           "print(edgetam_kernels.__file__)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(clone)) for line in show.stdout.split()), show.stdout

    fps = re.search(r"\(([0-9.]+) FPS\)", r.stdout)
    assert fps and float(fps.group(1)) > 0, r.stdout
    out = clone / out_dir
    from PIL import Image

    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks] == [f"{i:05d}.png" for i in range(frames)]
    for m in masks:
        pixels = np.asarray(Image.open(m))
        assert pixels.ndim == 2 and set(np.unique(pixels)) <= {0, 255}
    with Image.open(out / "overlay.gif") as gif:
        assert gif.n_frames == frames
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == frames and summary["fps"] > 0
