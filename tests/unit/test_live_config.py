"""Config reload: a valid new file is swapped in whole, an invalid one is refused."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aupmilter.config import load_config
from aupmilter.live_config import ConfigWatcher, LiveRuntime, file_signature
from aupmilter.metrics import METRICS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    path = tmp_path / "aup-milter.toml"
    path.write_text('[policy]\nunknown_sender = "reject"\n')
    return path


def test_reload_swaps_in_a_valid_file(config_path: Path) -> None:
    live = LiveRuntime(load_config(config_path))
    store_before = live.current.store
    config_path.write_text('[policy]\nunknown_sender = "accept"\n')
    assert live.reload()
    assert live.current.sender_policy.unknown_sender == "accept"
    assert live.current.store is store_before, "same Redis settings keep the same client"


def test_reload_builds_a_new_store_when_redis_changes(config_path: Path) -> None:
    live = LiveRuntime(load_config(config_path))
    store_before = live.current.store
    config_path.write_text('[redis]\nurl = "redis://127.0.0.1:6400/1"\n')
    assert live.reload()
    assert live.current.store is not store_before
    assert live.current.store.settings.url == "redis://127.0.0.1:6400/1"


def test_invalid_file_keeps_the_running_config(
    config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = LiveRuntime(load_config(config_path))
    before = live.current
    config_path.write_text('[policy]\nunknown_sender = "maybe"\n')
    with caplog.at_level(logging.ERROR):
        assert not live.reload()
    assert live.current is before
    message = caplog.records[-1].getMessage()
    assert "config reload refused" in message
    assert "key 'policy.unknown_sender'" in message


def test_plan_file_edits_change_the_signature(config_path: Path) -> None:
    config = load_config(config_path)
    before = file_signature(config)
    (config_path.parent / "policies" / "extra.toml").write_text("[plan.gold]\n")
    assert file_signature(config) != before


def test_watcher_applies_an_edit_without_being_asked(config_path: Path) -> None:
    live = LiveRuntime(load_config(config_path))
    watcher = ConfigWatcher(live, interval=0.05)
    watcher.start()
    try:
        (config_path.parent / "policies" / "gold.toml").write_text("[plan.gold]\n")
        deadline = time.monotonic() + 5
        while "gold" not in live.current.config.plans and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "gold" in live.current.config.plans
    finally:
        watcher.stop()
        watcher.join(timeout=5)
    assert not watcher.is_alive()


def test_reloads_are_counted_by_result(config_path: Path) -> None:
    def reloads() -> dict[str, float]:
        text = METRICS.exposition(["aup_config_reloads_total"]).decode()
        return {
            s.labels["result"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "aup_config_reloads_total"
        }

    live = LiveRuntime(load_config(config_path))
    before = reloads()
    assert live.reload()
    config_path.write_text("[policy]\nunknown_sender = 1\n")
    assert not live.reload()
    assert not live.reload()
    after = reloads()
    assert after["ok"] - before.get("ok", 0) == 1
    assert after["failed"] - before.get("failed", 0) == 2
