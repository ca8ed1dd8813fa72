"""Every report sample classified as its manifest says: the function, and the command.

The function runs with the test store's lookup; the command with a
configuration (the test secret) and a private Redis holding the same token
references and domains, and once without either: then only what needs no
store may differ (the tenant from a token or a domain, a complainer named
only by our recipient token).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from aupmilter.reports.classify import classify_bytes
from aupmilter.store import keys
from aupmilter.store.suppression import SuppressionStore
from tests.corpus.report_corpus import (
    DOMAINS,
    KINDS,
    REPORTS_DIR,
    CorpusStore,
    ReportEntry,
    load_manifest,
)
from tests.milter.harness import child_env
from tests.support import RedisServer
from tests.web.harness import write_config

ENTRIES = load_manifest()
NOW = time.time()


def test_the_corpus_covers_every_kind_and_every_file() -> None:
    assert len(ENTRIES) >= 25
    assert len({e.file for e in ENTRIES}) == len(ENTRIES)
    assert {p.name for p in REPORTS_DIR.glob("*.eml")} == {e.file for e in ENTRIES}
    assert {e.kind for e in ENTRIES} == set(KINDS)
    assert {"project", "IETF Trust", "testbed", "LGPL-3.0 (flufl.bounce)"} <= {
        e.licence for e in ENTRIES
    }
    for entry in ENTRIES:
        assert set(entry.suppress) <= set(entry.recipients), entry.file
        assert entry.source, entry.file


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_classify(entry: ReportEntry) -> None:
    store = CorpusStore(NOW)
    report = classify_bytes(store.fill(entry.path.read_bytes()), store.lookup())
    assert str(report.kind) == entry.kind, report.reason
    assert report.recipients == entry.recipients, report.reason
    assert report.suppress == entry.suppress, report.reason
    assert report.feedback_type == entry.feedback_type
    assert report.tenant == entry.tenant, report.reason
    assert report.reason and "\n" not in report.reason


@pytest.fixture
def filled(tmp_path: Path) -> tuple[CorpusStore, list[Path]]:
    store = CorpusStore(NOW)
    paths = []
    for entry in ENTRIES:
        path = tmp_path / entry.file
        path.write_bytes(store.fill(entry.path.read_bytes()))
        paths.append(path)
    return store, paths


def classify_command(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aupmilter", "report", "classify", *argv],
        capture_output=True, text=True, env=child_env(), timeout=120, check=False,
    )  # fmt: skip


def test_the_command_with_config_and_store(
    filled: tuple[CorpusStore, list[Path]],
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> None:
    store, paths = filled
    SuppressionStore(redis_client).store_references(store.stored(), 3600)
    for domain, tenant in DOMAINS.items():
        redis_client.set(keys.domain(domain), tenant)
    before = sorted(redis_client.keys("*"))
    (tmp_path / "config").mkdir()
    config = write_config(tmp_path / "config", redis_server.url, 8895)
    done = classify_command("-c", str(config), *map(str, paths))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["file"] for line in lines] == list(map(str, paths))
    for entry, line in zip(ENTRIES, lines, strict=True):
        assert list(line) == [
            "file", "kind", "recipients", "suppress", "tenant", "feedback_type", "reason"
        ]  # fmt: skip
        expected = {
            "kind": entry.kind,
            "recipients": list(entry.recipients),
            "suppress": list(entry.suppress),
            "feedback_type": entry.feedback_type,
            "tenant": entry.tenant,
        }
        assert {k: line[k] for k in expected} == expected, f"{entry.file}: {line['reason']}"
    assert sorted(redis_client.keys("*")) == before, "classify changes nothing"


def test_the_command_without_a_store(filled: tuple[CorpusStore, list[Path]]) -> None:
    _, paths = filled
    done = classify_command(*map(str, paths))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    for entry, line in zip(ENTRIES, lines, strict=True):
        assert (line["kind"], line["feedback_type"]) == (entry.kind, entry.feedback_type)
        assert set(line["suppress"]) <= set(entry.suppress), entry.file
        if not entry.store:
            assert line["suppress"] == list(entry.suppress), entry.file
            assert line["tenant"] == entry.tenant, f"{entry.file}: {line['reason']}"


def test_the_command_reads_every_file_it_can(
    filled: tuple[CorpusStore, list[Path]], tmp_path: Path
) -> None:
    _, paths = filled
    missing = tmp_path / "no-such-report.eml"
    done = classify_command(str(paths[0]), str(missing), str(paths[1]))
    assert done.returncode == 66, "EX_NOINPUT"
    assert [json.loads(line)["file"] for line in done.stdout.splitlines()] == [
        str(paths[0]), str(paths[1])
    ]  # fmt: skip
    assert "no-such-report.eml" in done.stderr and "Traceback" not in done.stderr


def test_the_command_refuses_a_configuration_that_does_not_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[redis\n")
    done = classify_command("-c", str(broken), str(ENTRIES[0].path))
    assert done.returncode == 78, "EX_CONFIG"
    assert done.stdout == ""


def test_the_command_goes_on_without_an_unreachable_store(
    filled: tuple[CorpusStore, list[Path]], tmp_path: Path
) -> None:
    _, paths = filled
    (tmp_path / "config").mkdir()
    config = write_config(tmp_path / "config", "redis://127.0.0.1:1/0", 8895)
    done = classify_command("-c", str(config), *map(str, paths))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("unavailable") == 1
    assert len(done.stdout.splitlines()) == len(paths)


@pytest.mark.parametrize(("relay_id", "tenant"), [("relay01", "acme"), ("other01", None)])
def test_the_command_takes_only_our_relay_ids_feedback_id(
    tmp_path: Path, relay_id: str, tenant: str | None
) -> None:
    (tmp_path / "config").mkdir()
    config = write_config(tmp_path / "config", "redis://127.0.0.1:1/0", 8895)
    config.write_text(config.read_text() + f'\n[feedback_id]\nrelay_id = "{relay_id}"\n')
    sample = REPORTS_DIR / "arf-truncated-original.eml"
    done = classify_command("-c", str(config), str(sample))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenant"] == tenant
