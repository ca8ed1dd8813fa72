"""The Grafana dashboard and the Prometheus alert rules in packaging/monitoring.

Both are built on the metrics the processes export (aup-milter(8), METRICS):
every metric an expression names must be one of them, every alert must
carry what Alertmanager routes on (severity) and what a person reads
(summary, description), and both packages must ship the files.

The rules file is YAML. PyYAML is no dependency of the project, so the file
keeps to a small subset (block mappings and lists, plain and quoted
scalars, `|` and `>-` blocks) that `read_yaml` below parses; where PyYAML is
importable (here or in Debian's python3) its reading must be the same, and
where promtool is installed it checks the rules as Prometheus would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import promtool_path

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "packaging" / "monitoring"
DASHBOARD = MONITORING / "grafana-aup-milter.json"
ALERTS = MONITORING / "aup-milter-alerts.yml"
METRICS_MODULE = ROOT / "milter" / "aupmilter" / "metrics.py"

COUNTERS = {
    "aup_transactions_total",
    "aup_recipients_refused_total",
    "aup_recipients_suppressed_total",
    "aup_redis_round_trips_total",
    "aup_redis_errors_total",
    "aup_dns_lookups_total",
    "aup_dns_cache_hits_total",
    "aup_automatic_actions_total",
    "aup_suppressions_total",
    "aup_config_reloads_total",
    "aup_audit_events_dropped_total",
    "aup_tenant_transactions_total",
    "aup_web_requests_total",
    "aup_intake_reports_total",
}
GAUGES = {
    "aup_open_connections",
    "aup_open_transactions",
    "aup_audit_events_pending",
    "aup_build_info",
}
HISTOGRAMS = {"aup_callback_seconds", "aup_redis_seconds"}
METRICS = COUNTERS | GAUGES | HISTOGRAMS
SERIES = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
"""The series names an expression may use: Prometheus's own `up`, and these."""

NAME = re.compile(r"(?<![\w\"'.-])(aup_\w+)")
SELECTED = re.compile(r"(?<![\w\"'.$-])([a-zA-Z_:][\w:]*)\s*\{")
SEVERITIES = {"critical", "warning", "info"}


def names_in(expr: str) -> set[str]:
    """The series an expression reads: aup_* names, and whatever carries a {selector}."""
    return set(NAME.findall(expr)) | set(SELECTED.findall(expr))


def unknown_names(expr: str) -> set[str]:
    return {name for name in names_in(expr) if name not in SERIES and name != "up"}


# --- a reader for the YAML subset of the rules file ------------------------------------------


class YamlSubsetError(ValueError):
    pass


class _Reader:
    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def peek(self) -> tuple[int, str] | None:
        while self.i < len(self.lines):
            line = self.lines[self.i]
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                if "\t" in line[: len(line) - len(line.lstrip())]:
                    raise YamlSubsetError(f"line {self.i + 1}: tab in indentation")
                return len(line) - len(line.lstrip(" ")), stripped
            self.i += 1
        return None

    def node(self, indent: int) -> Any:
        at = self.peek()
        assert at is not None
        return self.sequence(indent) if at[1].startswith("- ") else self.mapping(indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (at := self.peek()) is not None and at[0] == indent and at[1].startswith("- "):
            line = self.lines[self.i]
            self.lines[self.i] = line[:indent] + "  " + line[indent + 2 :]  # the item's mapping
            items.append(self.node(indent + 2))
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (at := self.peek()) is not None and at[0] == indent and not at[1].startswith("- "):
            key, sep, rest = at[1].partition(":")
            if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*", key) or rest[:1] not in ("", " "):
                raise YamlSubsetError(f"line {self.i + 1}: not 'key: value': {at[1]!r}")
            if key in out:
                raise YamlSubsetError(f"line {self.i + 1}: duplicate key {key!r}")
            rest = rest.strip()
            self.i += 1
            if not rest:
                nested = self.peek()
                if nested is None or nested[0] <= indent:
                    raise YamlSubsetError(f"line {self.i}: {key!r} has no value")
                out[key] = self.node(nested[0])
            elif rest in ("|", "|-", ">-"):
                out[key] = self.block(indent, rest)
            else:
                out[key] = scalar(rest, self.i)
        at = self.peek()
        if at is not None and at[0] > indent:
            raise YamlSubsetError(f"line {self.i + 1}: unexpected indentation")
        return out

    def block(self, indent: int, style: str) -> str:
        lines: list[str] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
                break
            lines.append(line)
            self.i += 1
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise YamlSubsetError(f"line {self.i}: empty block scalar")
        margin = len(lines[0]) - len(lines[0].lstrip(" "))
        if style == ">-":
            if any(line.strip() and not line[:margin].isspace() for line in lines) or any(
                line.strip() and line[margin] == " " for line in lines
            ):
                raise YamlSubsetError(f"line {self.i}: a folded block keeps one indentation")
            if any(not line.strip() for line in lines):
                raise YamlSubsetError(f"line {self.i}: no blank lines in a folded block")
            return " ".join(line.strip() for line in lines)
        if any(line.strip() and not line[:margin].isspace() for line in lines):
            raise YamlSubsetError(f"line {self.i}: a literal block line is indented less")
        text = "\n".join(line[margin:] for line in lines)
        return text if style == "|-" else text + "\n"


def scalar(text: str, line: int) -> Any:
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"line {line}: unterminated string")
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"line {line}: unterminated string")
        return text[1:-1].replace("''", "'")
    if text[0] in "{[&*!|>%@`#,?:-" or ": " in text or " #" in text:
        raise YamlSubsetError(f"line {line}: quote this scalar: {text!r}")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text in ("true", "false", "null", "~", "yes", "no", "on", "off"):
        raise YamlSubsetError(f"line {line}: quote or avoid YAML's special words: {text!r}")
    return text


def read_yaml(text: str) -> Any:
    reader = _Reader(text)
    first = reader.peek()
    if first is None or first[0] != 0:
        raise YamlSubsetError("the document must start at column 0")
    document = reader.node(0)
    if reader.peek() is not None:
        raise YamlSubsetError(f"line {reader.i + 1}: left over")
    return document


def reference_yaml(path: Path) -> Any | None:
    """PyYAML's reading of the file, here or through Debian's python3; None without it."""
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        pass
    else:
        return yaml.safe_load(path.read_text("utf-8"))
    system = Path("/usr/bin/python3")
    if not system.exists() or Path(sys.executable).resolve() == system.resolve():
        return None
    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    done = subprocess.run(
        [str(system), "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


# --- the alert rules ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = read_yaml(ALERTS.read_text("utf-8"))
    assert isinstance(document, dict) and list(document) == ["groups"]
    found: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["name"]
        found.extend(group["rules"])
    return found


def test_the_subset_reader_reads_what_yaml_reads() -> None:
    sample = (
        "a:\n  - b: 1\n    c: 'x ''y'''\n    d: |\n      one\n        two\n"
        '    e: >-\n      three\n      four\n  - f: "g: h"\n'
    )
    assert read_yaml(sample) == {
        "a": [{"b": 1, "c": "x 'y'", "d": "one\n  two\n", "e": "three four"}, {"f": "g: h"}]
    }
    for bad in ("a: b: c\n", "a: {x}\n", "a:\n b: 1\n  c: 2\n", "a: yes\n", "a: 1\na: 2\n"):
        with pytest.raises(YamlSubsetError):
            read_yaml(bad)


def test_pyyaml_reads_the_rules_file_the_same() -> None:
    reference = reference_yaml(ALERTS)
    assert reference is not None, "no PyYAML (the bootstrap installs python3-yaml)"
    assert reference == read_yaml(ALERTS.read_text("utf-8"))


def test_promtool_accepts_the_rules() -> None:
    """promtool from Debian's prometheus, unpacked by the bootstrap (or one on PATH)."""
    promtool = promtool_path()
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_expr_for_severity_and_annotations(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"AupMilter[A-Z]\w+", name), name
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        assert all(isinstance(v, str) and len(v) > 10 for v in annotations.values()), name


def test_alert_expressions_use_only_the_exported_metrics(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        assert unknown_names(rule["expr"]) == set(), rule["alert"]
        assert names_in(rule["expr"]), rule["alert"]


def test_the_alerts_ops_asked_for_are_there(rules: list[dict[str, Any]]) -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in rules}
    assert exprs["AupMilterDown"] == 'up{job="aup-milter"} == 0'
    assert "aup_redis_errors_total" in exprs["AupMilterRedisErrors"]
    assert 'verdict="tempfail"' in exprs["AupMilterTempfailRateHigh"]
    suspended = exprs["AupMilterTenantSuspendedAutomatically"]
    assert "increase(aup_automatic_actions_total" in suspended
    assert 'action="auto-suspend"' in suspended
    assert "aup_audit_events_dropped_total" in exprs["AupMilterAuditEventsDropped"]
    assert 'result="failed"' in exprs["AupMilterConfigReloadFailed"]
    severity = {rule["alert"]: rule["labels"]["severity"] for rule in rules}
    assert severity["AupMilterDown"] == severity["AupMilterRedisErrors"] == "critical"


def test_shared_counters_are_taken_with_max_not_sum(rules: list[dict[str, Any]]) -> None:
    """Every relay on one Redis exports the same shared counts: a sum would multiply them."""
    shared = ("aup_automatic_actions_total", "aup_suppressions_total", "aup_intake_reports_total")
    for rule in rules:
        expr = " ".join(rule["expr"].split())
        if any(name in expr for name in shared):
            assert expr.startswith("max"), rule["alert"]


# --- the dashboard -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text("utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_the_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "aup-milter" and dashboard["uid"] == "aup-milter"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    ids = [panel["id"] for panel in panels_of(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels_of(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_every_panel_queries_only_the_exported_metrics(dashboard: dict[str, Any]) -> None:
    for panel in panels_of(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert unknown_names(target["expr"]) == set(), (panel["title"], target["expr"])
            assert names_in(target["expr"]), panel["title"]


def test_the_dashboard_shows_every_metric(dashboard: dict[str, Any]) -> None:
    shown: set[str] = set()
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            shown |= names_in(target["expr"])
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in shown}
    assert METRICS - families == set()


def test_the_metric_names_are_the_ones_the_code_exports() -> None:
    """Once metrics.py names them: each family here is spelled there (without `_total`)."""
    source = METRICS_MODULE.read_text("utf-8")
    for name in sorted(METRICS):
        base = name.removesuffix("_total")
        assert f'"{base}"' in source or f'"{name}"' in source, name


# --- packaging ---------------------------------------------------------------------------------


def test_both_packages_ship_the_monitoring_files() -> None:
    install = (ROOT / "packaging" / "debian" / "aup-milter.install").read_text("utf-8")
    assert "packaging/monitoring/* usr/share/aup-milter/monitoring/" in install.splitlines()
    spec = (ROOT / "packaging" / "rpm" / "aup-milter.spec").read_text("utf-8")
    assert "packaging/monitoring/*" in spec and "%{_datadir}/%{name}/monitoring/" in spec
    assert sorted(p.name for p in MONITORING.iterdir()) == [ALERTS.name, DASHBOARD.name]
