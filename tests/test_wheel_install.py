"""A built wheel (not an editable install) in a fresh virtualenv works on its own: migrations,
shipped label configs and a team's spec from a folder outside the package (LABELLOOP_SPECS__DIRS).

Runs every command from a folder outside the checkout, so nothing can be found through the
source tree by accident. Dependencies come from requirements/lock.txt (uv's cache makes that fast).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _uv() -> str:
    """uv as scripts/bootstrap.sh finds it: on PATH, else beside the interpreter that made .venv."""
    import sysconfig

    for candidate in (shutil.which("uv"), Path(sysconfig.get_path("scripts", vars={"base": sys.base_prefix})) / "uv"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("uv not found (scripts/bootstrap.sh installs it)")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_wheel_install_prelabels_with_a_spec_from_outside(tmp_path: Path, sample_data: Path) -> None:
    uv = _uv()
    src = tmp_path / "src"  # build from a clean copy of the tracked files, as CI or a release would
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for rel in filter(None, archive.decode().split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    _run([uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist"), str(src)], cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("labelloop-*.whl")
    venv = tmp_path / "venv"
    _run([uv, "venv", "-q", "-p", "3.11", str(venv)], cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELLOOP_", "PYTHONPATH", "VIRTUAL_ENV"))}
    _run(
        [uv, "pip", "install", "-q", "-r", str(REPO / "requirements/lock.txt"), str(wheel)],
        cwd=tmp_path,
        env={**env, "VIRTUAL_ENV": str(venv)},
    )
    shutil.rmtree(src)  # nothing of the checkout left to lean on

    work = tmp_path / "work"
    work.mkdir()
    py, cli = str(venv / "bin" / "python"), str(venv / "bin" / "labelloop")
    where = _run([py, "-c", "import labelloop.specs, labelloop_airflow; print(labelloop.specs.__file__)"], cwd=work)
    assert "site-packages" in where
    specs = tmp_path / "team-specs"
    env = {
        **env,
        "LABELLOOP_HOME": str(work / ".labelloop"),
        "LABELLOOP_DB__URL": f"sqlite:///{work / 'wheel.db'}",
        "LABELLOOP_STORAGE__ROOT": str(work / "objects"),
        "LABELLOOP_SPECS__DIRS": str(specs),
    }
    _run([cli, "spec", "new", "receipt_lines", "--media", "image"], cwd=work, env=env)
    listed = json.loads(_run([cli, "spec", "list", "--json"], cwd=work, env=env))
    origins = {s["name"]: s["origin"] for s in listed["specs"]}
    assert origins["receipt_lines"] == "user" and origins["ocr_lines"] == "shipped"
    images = work / "in"
    images.mkdir()
    shutil.copy(sample_data / "images" / "qwen-ocr_example4.jpg", images)
    out = json.loads(
        _run(
            [cli, "prelabel", "--spec", "receipt_lines", "--backend", "cpu", "--source", str(images), "--json"],
            cwd=work,
            env=env,
        )
    )
    assert out["ingest"]["new_items"] == 1
    assert (out["prelabel"]["spec"], out["prelabel"]["ok"], out["prelabel"]["failed"]) == ("receipt_lines", 1, 0)
    st = json.loads(_run([cli, "status", "--json"], cwd=work, env=env))
    assert st["predictions"] == {"receipt_lines/ok": 1}
    assert "labelloop_airflow" in _run(
        [
            py,
            "-c",
            "import labelloop_airflow.get_provider_info as g; "
            "print(g.get_provider_info()['hooks'][0]['python-modules'][0])",
        ],
        cwd=work,
    )
