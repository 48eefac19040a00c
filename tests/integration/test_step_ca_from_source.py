"""`invoke step-ca-from-source` builds a step-ca that runs, and the path it prints is a valid
artifacts.step_ca.path for an offline Debian build (cached after the first build, ~40 s)."""
import os
import subprocess
from pathlib import Path

import yaml

from image.artifacts import fetch_artifacts
from image.config import PROJECT_ROOT, load_config
from image.files import sha256_file


def test_built_step_ca_runs_and_is_a_debian_path_artifact(tmp_path):
    result = subprocess.run([str(PROJECT_ROOT / ".venv/bin/invoke"), "step-ca-from-source"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    binary = Path(result.stdout.splitlines()[0])
    assert binary.is_absolute() and os.access(binary, os.X_OK)

    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("step-ca version 0.")

    # the config line the task suggests, used as the user would: a file given to --config
    suggestion = result.stdout.splitlines()[1].split("use it with:", 1)[1]
    config_file = tmp_path / "offline.yaml"
    config_file.write_text(yaml.safe_dump({"image": {"base": "debian"}, "artifacts": yaml.safe_load(
        suggestion.split("artifacts:", 1)[1])}))
    artifacts = fetch_artifacts(load_config(config_file), progress=False)
    assert [(a.name, a.kind, a.path) for a in artifacts] == [("step-ca", "binary", binary)]
    assert artifacts[0].sha256 == sha256_file(binary)

    # and the offline fetch through the CLI needs no network at all
    fetch = subprocess.run([str(PROJECT_ROOT / ".venv/bin/invoke"), "fetch", "--config", str(config_file)],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, CA_APPLIANCE_CACHE=str(tmp_path / "cache")))
    assert fetch.returncode == 0, fetch.stderr
    assert f"step-ca: using {binary} (binary)" in fetch.stderr
    assert not (tmp_path / "cache").exists()
