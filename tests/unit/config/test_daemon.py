"""Every config option: accepted forms, defaults, and the error text for bad values."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aupmilter.config import ConfigError, ListenAddress, load_config
from aupmilter.config.daemon import AUTO_WORKERS
from tests.unit.configfiles import ROOT, problems, write


def test_empty_file_gives_documented_defaults(confdir: Path) -> None:
    config = load_config(write(confdir, ""))
    assert config.milter.listen == ListenAddress(
        "unix", path=Path("/run/aup-milter/aup-milter.sock")
    )
    assert config.milter.socket_mode == 0o660
    assert config.milter.socket_group is None
    assert config.milter.timeout == 600
    assert config.milter.shutdown_grace == 20
    assert config.milter.workers == AUTO_WORKERS
    assert config.milter.worker_count() == len(os.sched_getaffinity(0))
    assert config.milter.engine == "libmilter"
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.redis.connect_timeout == 0.5
    assert config.redis.timeout == 0.5
    assert config.policy.on_store_error == "tempfail"
    assert config.policy.unknown_sender == "reject"
    assert config.policy.plans_dir == (confdir / "policies").resolve()
    assert config.log.format == "json"
    assert config.log.level == "info"
    assert config.plan_names == {"standard", "business", "bulk", "newsletter"}


def test_shipped_sample_config_is_valid(tmp_path: Path) -> None:
    """The sample as installed: /etc/aup-milter/aup-milter.toml beside policies/."""
    shutil.copy(ROOT / "etc" / "aup-milter.toml", tmp_path / "aup-milter.toml")
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    config = load_config(tmp_path / "aup-milter.toml")
    assert config.milter.socket_group == "postfix"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"unix:/run/a.sock"', ListenAddress("unix", path=Path("/run/a.sock"))),
        ('"local:/run/a.sock"', ListenAddress("unix", path=Path("/run/a.sock"))),
        ('"inet:8891@127.0.0.1"', ListenAddress("inet", host="127.0.0.1", port=8891)),
        ('"inet:8891"', ListenAddress("inet", port=8891)),
        ('"inet6:8891@::1"', ListenAddress("inet6", host="::1", port=8891)),
        ('"systemd"', ListenAddress("systemd")),
    ],
)
def test_listen_forms(confdir: Path, value: str, expected: ListenAddress) -> None:
    config = load_config(write(confdir, f"[milter]\nlisten = {value}\n"))
    assert config.milter.listen == expected


def test_listen_spec_for_libmilter() -> None:
    assert ListenAddress("inet", host="127.0.0.1", port=1).libmilter_spec == "inet:1@127.0.0.1"
    assert ListenAddress("unix", path=Path("/x")).libmilter_spec == "unix:/x"


# (section, key, bad TOML value, words the message must contain)
BAD_VALUES = [
    ("milter", "listen", '"unix:relative.sock"', "unix:/absolute/path"),
    ("milter", "listen", '"inet:0@127.0.0.1"', "inet:PORT@HOST"),
    ("milter", "listen", '"inet:99999"', "inet:PORT@HOST"),
    ("milter", "listen", '"inet:25@"', "inet:PORT@HOST"),
    ("milter", "listen", '"tcp:25"', "inet:PORT@HOST"),
    ("milter", "listen", "25", "inet:PORT@HOST"),
    ("milter", "socket_mode", '"rw-rw----"', "octal mode string"),
    ("milter", "socket_mode", "660", "octal mode string"),
    ("milter", "socket_group", '""', "group name"),
    ("milter", "timeout", "0", "whole seconds"),
    ("milter", "timeout", "1.5", "whole seconds"),
    ("milter", "shutdown_grace", "-1", "seconds from 0 to 600"),
    ("milter", "shutdown_grace", "true", "seconds from 0 to 600"),
    ("milter", "workers", "0", "'auto' or a whole number of processes from 1 to 256"),
    ("milter", "workers", "257", "'auto' or a whole number of processes from 1 to 256"),
    ("milter", "workers", '"2"', "'auto' or a whole number of processes from 1 to 256"),
    ("milter", "workers", "true", "'auto' or a whole number of processes from 1 to 256"),
    ("milter", "workers", "1.5", "'auto' or a whole number of processes from 1 to 256"),
    ("milter", "engine", '"threads"', "'event-loop' or 'libmilter'"),
    ("milter", "engine", "1", "'event-loop' or 'libmilter'"),
    ("redis", "url", '"http://127.0.0.1:6379"', "redis://"),
    ("redis", "url", '"redis://"', "redis://"),
    ("redis", "url", '"unix://relative"', "unix:///path"),
    ("redis", "connect_timeout", "0", "seconds from 0.01 to 30"),
    ("redis", "timeout", '"1s"', "seconds from 0.01 to 30"),
    ("policy", "on_store_error", '"retry"', "'tempfail' or 'accept'"),
    ("policy", "unknown_sender", '"bounce"', "'reject' or 'accept'"),
    ("policy", "plans_dir", "3", "directory path"),
    ("log", "format", '"xml"', "'json' or 'text'"),
    ("log", "level", '"verbose"', "'debug' or 'info' or 'warning' or 'error'"),
]


@pytest.mark.parametrize(("section", "key", "value", "expected"), BAD_VALUES)
def test_bad_value_names_file_key_and_expected_form(
    confdir: Path, section: str, key: str, value: str, expected: str
) -> None:
    found = problems(confdir, f"[{section}]\n{key} = {value}\n")
    assert len(found) == 1, found
    message = found[0]
    assert message.startswith(str(confdir / "aup-milter.toml") + ": ")
    assert f"key '{section}.{key}'" in message
    assert expected in message


@pytest.mark.parametrize(
    ("url"),
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@10.0.0.1:6380/2",
        "redis://milter:secret@redis.internal/0",
        "rediss://milter:secret@redis.internal:6380/0",
        "unix:///run/redis/redis.sock?db=1",
    ],
)
def test_redis_url_forms(confdir: Path, url: str) -> None:
    assert load_config(write(confdir, f'[redis]\nurl = "{url}"\n')).redis.url == url


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("lisen = 1\n", "lisen"),
        ("[milter]\nlisten_mode = 1\n", "milter.listen_mode"),
        ("[redis]\nhost = 'x'\n", "redis.host"),
        ("[policy]\nunknown_senders = 'accept'\n", "policy.unknown_senders"),
        ("[log]\nfile = 'x'\n", "log.file"),
        ("[metrics]\nport = 1\n", "metrics.port"),
        ("[metric]\nlisten = ''\n", "metric"),
    ],
)
def test_unknown_keys_are_errors(confdir: Path, text: str, key: str) -> None:
    found = problems(confdir, text)
    assert any(f"key '{key}': unknown key" in p for p in found), found


def test_section_must_be_a_table(confdir: Path) -> None:
    found = problems(confdir, 'milter = "inet:1"\n')
    assert found == [f"{confdir / 'aup-milter.toml'}: key 'milter': expected a table, got 'inet:1'"]


def test_all_problems_are_reported_at_once(confdir: Path) -> None:
    found = problems(
        confdir, "[policy]\non_store_error = 'x'\nunknown_sender = 'y'\n[log]\nlevel = 'z'\n"
    )
    assert len(found) == 3


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.problems == [f"{tmp_path / 'nope.toml'}: file not found"]


def test_invalid_toml_names_the_line(confdir: Path) -> None:
    found = problems(confdir, "[milter\n")
    assert "not valid TOML" in found[0] and "line 1" in found[0]


def test_missing_plans_dir(confdir: Path) -> None:
    found = problems(confdir, "[policy]\nplans_dir = 'elsewhere'\n")
    assert "key 'policy.plans_dir': expected an existing directory" in found[0]


def test_plans_dir_without_plan_files(confdir: Path) -> None:
    (confdir / "policies" / "plans.toml").unlink()
    found = problems(confdir, "")
    assert found == [
        f"{(confdir / 'policies').resolve()}: expected at least one plan file '*.toml', found none"
    ]


@pytest.mark.parametrize(
    ("plan_text", "expected"),
    [
        ("[plan.Gold]\ndescription = 'x'\n", "key 'plan.Gold': expected a plan name"),
        ("[plan.gold]\ncap = 5\n", "key 'plan.gold.cap': unknown key"),
        ("[plan.gold]\ndescription = 5\n", "key 'plan.gold.description': expected a text"),
        ("[plans.gold]\n", "key 'plans': unknown key"),
        ("plan = 'gold'\n", "key 'plan': expected a table of plans"),
        ("[plan.standard]\n", "plan already defined in"),
    ],
)
def test_plan_file_errors(confdir: Path, plan_text: str, expected: str) -> None:
    (confdir / "policies" / "extra.toml").write_text(plan_text)
    found = problems(confdir, "")
    assert any(expected in p for p in found), found
    assert all(str(confdir / "policies") in p for p in found)


def test_plans_from_several_files(confdir: Path) -> None:
    (confdir / "policies" / "gold.toml").write_text("[plan.gold]\ndescription = 'Gold'\n")
    config = load_config(write(confdir, ""))
    assert config.plans["gold"].description == "Gold"
    assert config.plans["gold"].source.name == "gold.toml"


def test_shipped_plans_have_caps_and_windows(confdir: Path) -> None:
    plans = load_config(write(confdir, "")).plans
    caps = {name: plan.limits.max_recipients for name, plan in plans.items()}
    assert caps == {"standard": 100, "business": 200, "bulk": 1000, "newsletter": 1000}
    for plan in plans.values():
        scopes = {(w.scope.value, w.unit.value) for w in plan.limits.windows}
        assert {("sender", "recipients"), ("tenant", "messages")} <= scopes, plan.name


def test_window_table_is_parsed(confdir: Path) -> None:
    (confdir / "policies" / "gold.toml").write_text(
        "[plan.gold]\nmax_recipients_per_message = 7\n"
        "[plan.gold.windows.burst]\nper = 'sender'\ncount = 'recipients'\nlimit = 5\n"
        "period = '10m'\n"
        "[plan.gold.windows.daily]\nper = 'tenant'\ncount = 'messages'\nlimit = 0\n"
        "period = 86400\n"
    )
    limits = load_config(write(confdir, "")).plans["gold"].limits
    assert limits.max_recipients == 7
    assert [(w.name, w.scope, w.unit, w.limit, w.period_ms) for w in limits.windows] == [
        ("burst", "sender", "recipients", 5, 600_000),
        ("daily", "tenant", "messages", 0, 86_400_000),
    ]


GOOD_WINDOW = "per = 'sender'\ncount = 'recipients'\nlimit = 5\nperiod = '1h'\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "max_recipients_per_message = 0\n",
            "key 'plan.gold.max_recipients_per_message': expected a whole number from 1 to 100000",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW.replace("'sender'", "'login'"),
            "key 'plan.gold.windows.w.per': expected 'sender' or 'tenant', got 'login'",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW.replace("'recipients'", "'bytes'"),
            "key 'plan.gold.windows.w.count': expected 'recipients' or 'messages'",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW.replace("5", "-1"),
            "key 'plan.gold.windows.w.limit': expected a whole number from 0 to 10^9",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW.replace("'1h'", "'1 hour'"),
            "key 'plan.gold.windows.w.period': expected seconds, or a text such as '30s'",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW.replace("'1h'", "'32d'"),
            "key 'plan.gold.windows.w.period': expected seconds",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW.replace("'1h'", "0"),
            "key 'plan.gold.windows.w.period': expected seconds",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW.replace("limit = 5\n", ""),
            "key 'plan.gold.windows.w.limit': required",
        ),
        (
            "[plan.gold.windows.w]\n" + GOOD_WINDOW + "burst = 3\n",
            "key 'plan.gold.windows.w.burst': unknown key",
        ),
        (
            "[plan.gold.windows.Bad]\n" + GOOD_WINDOW,
            "key 'plan.gold.windows.Bad': expected a window name",
        ),
        (
            "[plan.gold.windows.a]\n" + GOOD_WINDOW + "[plan.gold.windows.b]\n" + GOOD_WINDOW,
            "key 'plan.gold.windows.b': another window of this plan counts the same",
        ),
        ("windows = 3\n", "key 'plan.gold.windows': expected a table"),
    ],
)
def test_window_errors_name_file_key_and_form(confdir: Path, body: str, expected: str) -> None:
    gold = confdir / "policies" / "gold.toml"
    gold.write_text("[plan.gold]\n" + body)
    found = problems(confdir, "")
    assert any(expected in p and p.startswith(str(gold)) for p in found), found


@pytest.mark.parametrize("engine", ["event-loop", "libmilter"])
def test_engine_names_either_protocol_engine(confdir: Path, engine: str) -> None:
    assert load_config(write(confdir, f'[milter]\nengine = "{engine}"\n')).milter.engine == engine


@pytest.mark.parametrize(("value", "count"), [("1", 1), ("3", 3), ('"auto"', None)])
def test_workers_is_a_count_or_auto(confdir: Path, value: str, count: int | None) -> None:
    config = load_config(write(confdir, f"[milter]\nworkers = {value}\n"))
    expected = count if count is not None else len(os.sched_getaffinity(0))
    assert config.milter.worker_count() == expected
