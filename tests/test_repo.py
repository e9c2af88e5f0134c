"""What users read and deploy matches the code: README tables, the quick start, CI, docker/."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from omnicanal.config import env_documentation
from schemas.deadletter import REASONS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_configuration_table_matches_the_settings() -> None:
    rows = re.findall(r"^\| `(OMNICANAL_[A-Z_]+)` \| `(.*?)` \| (.*) \|$", README, re.M)
    assert rows == [(n, d, doc) for n, d, doc in env_documentation()]


def test_readme_lists_every_dead_letter_reason() -> None:
    rows = dict(re.findall(r"^\| `([a-z_0-9]+)` \| (.*) \|$", README, re.M))
    assert {k: rows.get(k) for k in REASONS} == REASONS


def test_quick_start_has_two_commands_and_ci_runs_the_test_one() -> None:
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["./quickstart demo", "./quickstart test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert [ln for ln in ci.splitlines() if ln.startswith("exec")] == ["exec ./quickstart test"]
    assert (ROOT / "quickstart").stat().st_mode & 0o111


def test_readme_metrics_are_the_catalog() -> None:
    from monitoring.metrics import CATALOG

    names = set(re.findall(r"^- `(omnicanal_[a-z_]+)", README, re.M))
    declared = set()
    for metric in CATALOG:
        name = metric._name
        declared.add(name + "_total" if metric._type == "counter" else name)
    assert names == declared


def test_compose_file_runs_the_pipeline_against_kafka_and_persistent_redis() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
    services = compose["services"]
    assert {"redpanda", "redis", "topics", "omnicanal", "prometheus"} <= set(services)
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    env = services["omnicanal"]["environment"]
    known = {n for n, _, _ in env_documentation()}
    assert set(env) <= known
    assert env["OMNICANAL_KAFKA_BOOTSTRAP"] == "redpanda:9092"
    assert "OMNICANAL_PII_KEY" in env and ":?" in env["OMNICANAL_PII_KEY"]
    assert services["omnicanal"]["command"][0] == "run"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for pkg in ("omnicanal", "flows", "operators", "state", "schemas", "monitoring"):
        assert f"COPY {pkg} ./{pkg}" in dockerfile
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    ports = {p.split(":")[0] for p in services["omnicanal"]["ports"]}
    assert {t.split(":")[1] for t in targets} == ports
