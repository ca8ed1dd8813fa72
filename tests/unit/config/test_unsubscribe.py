"""Config sections [unsubscribe], [web], [dkim] and the unsubscribe keys of plans."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aupmilter.config import WebSettings, load_config
from aupmilter.policy.plans import UnsubscribePlan
from tests.unit.configfiles import problems, write

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def confdir(confdir: Path) -> Path:
    """The shipped plans and a secrets file (two secrets, newest first)."""
    secrets = confdir / "unsubscribe.secrets"
    secrets.write_text(f"# newest first\n{SECRET}\n\n{'f' * 40}\n")
    secrets.chmod(0o600)
    return confdir


UNSUB_KEYS = {
    "url_base": '"https://unsub.relay.example"',
    "mailto_domain": '"Unsub.Relay.Example"',
    "secrets_file": '"unsubscribe.secrets"',
}


def unsub(**overrides: str) -> str:
    values = {**UNSUB_KEYS, **overrides}
    return "[unsubscribe]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


UNSUB = unsub()


def test_sections_are_optional_with_documented_defaults(confdir: Path) -> None:
    config = load_config(write(confdir, ""))
    assert config.unsubscribe is None
    assert config.web == WebSettings()
    assert config.web.listen == "127.0.0.1:8895"
    assert config.dkim.tenants == {} and config.dkim.default is None
    shipped = {name: plan.unsubscribe for name, plan in config.plans.items()}
    assert shipped["standard"] == UnsubscribePlan(25, 200, 86400, "replace", False)
    assert shipped["bulk"] == UnsubscribePlan(2, None, 86400, "replace", False)


def test_unsubscribe_section(confdir: Path) -> None:
    config = load_config(write(confdir, UNSUB))
    unsub = config.unsubscribe
    assert unsub is not None
    assert unsub.url("abc") == "https://unsub.relay.example/u/abc"
    assert unsub.mailto("abc") == "mailto:unsubscribe+abc@unsub.relay.example"
    assert unsub.secrets == (SECRET.encode(), b"f" * 40)
    assert unsub.token_lifetime_days == 60
    assert config.policy.suppression_check == "eom"
    assert SECRET not in repr(unsub), "secrets stay out of logs"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("url_base", '"http://unsub.relay.example"'),  # RFC 8058 needs HTTPS
        ("url_base", '"https://unsub.relay.example/path"'),
        ("url_base", '"https://user:pw@unsub.relay.example"'),
        ("url_base", '"ftp://unsub.relay.example"'),
        ("url_base", '"https://"'),
        ("mailto_local", '"un+sub"'),
        ("mailto_local", '"a-very-long-local-part"'),
        ("mailto_local", '"two words"'),
        ("mailto_domain", '"localhost"'),
        ("token_lifetime_days", "0"),
        ("colour", '"blue"'),
    ],
)
def test_bad_unsubscribe_values_name_the_key(confdir: Path, key: str, value: str) -> None:
    found = problems(confdir, unsub(**{key: value}))
    assert len(found) == 1 and f"'unsubscribe.{key}'" in found[0], found


def test_suppression_check_is_a_policy_key(confdir: Path) -> None:
    config = load_config(write(confdir, '[policy]\nsuppression_check = "rcpt"\n'))
    assert config.policy.suppression_check == "rcpt"
    found = problems(confdir, '[policy]\nsuppression_check = "never"\n')
    assert len(found) == 1 and "'policy.suppression_check'" in found[0]
    assert "'eom' or 'rcpt'" in found[0]


def test_http_is_allowed_for_a_loopback_demo(confdir: Path) -> None:
    config = load_config(write(confdir, unsub(url_base='"http://127.0.0.1:8895"')))
    assert config.unsubscribe is not None
    assert config.unsubscribe.url("t") == "http://127.0.0.1:8895/u/t"


def test_required_unsubscribe_keys(confdir: Path) -> None:
    found = problems(confdir, "[unsubscribe]\n")
    assert {p.split("'")[1] for p in found} == {
        "unsubscribe.url_base",
        "unsubscribe.mailto_domain",
        "unsubscribe.secrets_file",
    }


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (SECRET, 0o644, "chmod 600"),
        (SECRET, 0o640, "chmod 600"),
        ("short", 0o600, "at least 32 characters"),
        ("# only a comment\n", 0o600, "at least one secret"),
    ],
)
def test_secrets_file_must_be_private_and_strong(
    confdir: Path, content: str, mode: int, expected: str
) -> None:
    secrets = confdir / "unsubscribe.secrets"
    secrets.write_text(content)
    secrets.chmod(mode)
    found = problems(confdir, UNSUB)
    assert len(found) == 1 and "'unsubscribe.secrets_file'" in found[0] and expected in found[0]


def test_missing_secrets_file(confdir: Path) -> None:
    (confdir / "unsubscribe.secrets").unlink()
    found = problems(confdir, UNSUB)
    assert "expected an existing file" in found[0]


def test_web_section(confdir: Path) -> None:
    text = """
[web]
listen = "[::1]:9000"
max_body_bytes = 512
rate_limit_per_minute = 5
rate_limit_burst = 2
trusted_proxies = ["127.0.0.1", "::1"]
"""
    web = load_config(write(confdir, text)).web
    assert (web.host, web.port, web.listen) == ("::1", 9000, "[::1]:9000")
    assert (web.max_body_bytes, web.rate_limit_per_minute, web.rate_limit_burst) == (512, 5, 2)
    assert web.trusted_proxies == ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("listen", '"8895"'),
        ("listen", '"::1:8895"'),
        ("listen", '"127.0.0.1:0"'),
        ("max_body_bytes", "10"),
        ("rate_limit_per_minute", "0"),
        ("trusted_proxies", '["proxy.example"]'),
    ],
)
def test_bad_web_values(confdir: Path, key: str, value: str) -> None:
    found = problems(confdir, f"[web]\n{key} = {value}\n")
    assert len(found) == 1 and f"'web.{key}'" in found[0], found


def test_plan_unsubscribe_keys(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        """
[plan.lists]
bulk_recipients = 20
bulk_fingerprint_recipients = 500
bulk_fingerprint_window = 3600
on_noncompliant_unsubscribe = "reject"
bulk_one_recipient_per_message = true
"""
    )
    plan = load_config(write(confdir, "")).plans["lists"].unsubscribe
    assert plan == UnsubscribePlan(20, 500, 3600, "reject", True)


def test_bad_plan_unsubscribe_keys(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        '[plan.lists]\nbulk_recipients = 1\non_noncompliant_unsubscribe = "ignore"\n'
        'bulk_one_recipient_per_message = "yes"\n'
    )
    found = problems(confdir, "")
    assert sorted(p.split("'")[1] for p in found) == [
        "plan.lists.bulk_one_recipient_per_message",
        "plan.lists.bulk_recipients",
        "plan.lists.on_noncompliant_unsubscribe",
    ]


# --- DKIM keys ------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    openssl("genrsa", "-traditional", "-out", str(folder / "rsa2048-pkcs1.pem"), "2048")
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", str(folder / "rsa2048-pkcs8.pem"))  # fmt: skip
    openssl("genrsa", "-out", str(folder / "rsa1024.pem"), "1024")
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(folder / "ed25519.pem"))
    openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(folder / "p256.pem"))  # fmt: skip
    (folder / "ed25519.seed").write_text("nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n")
    (folder / "junk.pem").write_text("not a key\n")
    for path in folder.iterdir():
        path.chmod(0o600)
    return folder


def dkim_config(confdir: Path, keys: Path, key_name: str, mode: int = 0o600) -> str:
    target = confdir / key_name
    shutil.copy(keys / key_name, target)
    target.chmod(mode)
    return f"""
[dkim.tenant.acme]
domain = "Acme.Example"
selector = "aup2024"
key_file = "{key_name}"
"""


@pytest.mark.parametrize(
    ("key_name", "algorithm", "bits"),
    [
        ("rsa2048-pkcs1.pem", "rsa-sha256", 2048),
        ("rsa2048-pkcs8.pem", "rsa-sha256", 2048),
        ("ed25519.pem", "ed25519-sha256", 256),
        ("ed25519.seed", "ed25519-sha256", 256),
    ],
)
def test_accepted_keys(confdir: Path, keys: Path, key_name: str, algorithm: str, bits: int) -> None:
    config = load_config(write(confdir, dkim_config(confdir, keys, key_name)))
    identity = config.dkim.identity_for("acme")
    assert identity is not None
    assert (identity.domain, identity.selector) == ("acme.example", "aup2024")
    assert (identity.key.algorithm, identity.key.bits) == (algorithm, bits)
    assert config.dkim.identity_for("globex") is None
    assert "PRIVATE" not in repr(identity.key)


@pytest.mark.parametrize(
    ("key_name", "mode", "expected"),
    [
        ("rsa1024.pem", 0o600, "at least 2048"),
        ("p256.pem", 0o600, "other than RSA or Ed25519"),
        ("junk.pem", 0o600, "neither a PEM private key"),
        ("rsa2048-pkcs1.pem", 0o644, "mode 0644"),
        ("rsa2048-pkcs1.pem", 0o660, "mode 0660"),
    ],
)
def test_refused_keys(confdir: Path, keys: Path, key_name: str, mode: int, expected: str) -> None:
    found = problems(confdir, dkim_config(confdir, keys, key_name, mode))
    assert len(found) == 1 and "'dkim.tenant.acme.key_file'" in found[0], found
    assert expected in found[0]


def test_group_readable_key_is_accepted(confdir: Path, keys: Path) -> None:
    """0640 root:opendkim style: the group may read, not write."""
    config = load_config(write(confdir, dkim_config(confdir, keys, "ed25519.pem", 0o640)))
    assert config.dkim.identity_for("acme") is not None


def test_missing_key_and_default_identity(confdir: Path, keys: Path) -> None:
    found = problems(
        confdir, '[dkim.default]\ndomain = "relay.example"\nselector = "s"\nkey_file = "nope"\n'
    )
    assert len(found) == 1 and "'dkim.default.key_file'" in found[0] and "not found" in found[0]
    shutil.copy(keys / "ed25519.pem", confdir / "relay.pem")
    config = load_config(
        write(
            confdir,
            '[dkim.default]\ndomain = "relay.example"\nselector = "s"\nkey_file = "relay.pem"\n',
        )
    )
    default = config.dkim.identity_for("anyone")
    assert default is not None and default.domain == "relay.example"


def test_bad_dkim_tables(confdir: Path) -> None:
    found = problems(
        confdir,
        '[dkim.tenant.Acme]\ndomain = "a.example"\n[dkim.tenant.ok]\nselector = "bad selector"\n'
        "[dkim]\nsign = true\n",
    )
    keys_named = sorted(p.split("'")[1] for p in found)
    assert keys_named == [
        "dkim.sign",
        "dkim.tenant.Acme",
        "dkim.tenant.ok.domain",
        "dkim.tenant.ok.key_file",
        "dkim.tenant.ok.selector",
    ], found


def test_check_lists_unsubscribe_and_signing(
    confdir: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aupmilter.cli.main import main

    path = write(confdir, UNSUB + dkim_config(confdir, keys, "ed25519.pem"))
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unsubscribe: https://unsub.relay.example/u/TOKEN" in out
    assert "2 secret(s)" in out
    assert "dkim acme: d=acme.example s=aup2024 (ed25519-sha256" in out
