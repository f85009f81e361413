"""The Feast repository works with the plain `feast` CLI and matches what ctrflow applies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from features.store import REPO_DIR, feature_store, repo_config_dict
from pipelines.settings import Settings


def _shipped(name: str, env: dict[str, str]) -> dict:
    text = (REPO_DIR / name).read_text()
    for key, value in env.items():
        text = text.replace("${" + key + "}", value)
    return yaml.safe_load(text)


def test_shipped_yaml_profiles_equal_the_config_ctrflow_builds(tmp_path: Path) -> None:
    local = Settings(home=tmp_path / "home")
    compose = Settings(home=tmp_path / "home", feast_profile="compose", redis_connection="redis:6379,db=0")
    env = {"CTRFLOW_HOME": str(local.home_dir), "CTRFLOW_REDIS_CONNECTION": "redis:6379,db=0"}
    assert _shipped("feature_store.yaml", env) == repo_config_dict(local)
    assert _shipped("feature_store.compose.yaml", env) == repo_config_dict(compose)
    redis = {"type": "redis", "connection_string": "redis:6379,db=0"}
    assert repo_config_dict(compose)["online_store"] == redis


def test_feast_cli_sees_the_same_repository_from_any_directory(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    feature_store(settings)  # ctrflow applies its definitions
    feast = Path(sys.executable).with_name("feast")
    env = {**os.environ, "CTRFLOW_HOME": str(settings.home_dir)}
    # Run from an unrelated directory: paths must not depend on the cwd.
    plan = subprocess.run([str(feast), "-c", str(REPO_DIR), "plan"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    # The CLI's objects (repo.py) equal the ones ctrflow applied, so nothing would change.
    assert "No changes to registry" in plan.stdout
    assert "Created sqlite table ctrflow_user_sequence" in plan.stdout
