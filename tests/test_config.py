"""config: defaults, environment, TOML file, systemd directories, secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trading_daemon.config import (
    SECRET_MASK,
    ConfigError,
    Settings,
    env_name,
    load_settings,
)
from trading_daemon.priority import Priority

SECRET = "pxk-5uper-Secret-Value-0042"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trading.toml"
    path.write_text(text)
    return path


def test_load_settings_defaults() -> None:
    """An empty environment gives the documented defaults."""
    s = load_settings({})

    assert s == Settings()
    assert (s.webhook_host, s.webhook_port) == ("127.0.0.1", 8080)
    assert (s.workers, s.max_concurrent, s.max_queue) == (5, 20, 1000)
    assert s.broker == "paper"
    assert s.log_level == "INFO"
    assert s.state_dir == Path("state")
    assert s.project_x_api_key == ""


@pytest.mark.parametrize(
    ("priority", "seconds"),
    [
        (Priority.CRITICAL, 30.0),
        (Priority.HIGH, 60.0),
        (Priority.NORMAL, 120.0),
        (Priority.LOW, 300.0),
        (Priority.BACKGROUND, None),
    ],
)
def test_settings_timeout_for_defaults(
    priority: Priority, seconds: float | None
) -> None:
    """Default attempt time limits are 30/60/120/300 s and none for BACKGROUND."""
    assert load_settings({}).timeout_for(priority) == seconds


def test_settings_timeout_for_zero_means_unlimited() -> None:
    """A timeout set to 0 means no limit, whatever the priority."""
    s = load_settings({"TRADING_TIMEOUT_CRITICAL": "0", "TRADING_TIMEOUT_LOW": "7.5"})

    assert s.timeout_for(Priority.CRITICAL) is None
    assert s.timeout_for(Priority.LOW) == 7.5


@pytest.mark.parametrize(
    ("field_name", "variable"),
    [
        ("webhook_host", "WEBHOOK_HOST"),
        ("webhook_port", "WEBHOOK_PORT"),
        ("max_body_bytes", "WEBHOOK_MAX_BODY_BYTES"),
        ("project_x_api_key", "PROJECT_X_API_KEY"),
        ("project_x_username", "PROJECT_X_USERNAME"),
        ("workers", "TRADING_WORKERS"),
        ("paper_prices", "TRADING_PAPER_PRICES"),
    ],
)
def test_env_name_for_field(field_name: str, variable: str) -> None:
    """Each setting has one environment variable, named as DESIGN.md says."""
    assert env_name(field_name) == variable


def test_load_settings_env_overrides() -> None:
    """Environment variables override every kind of setting, with whitespace."""
    env = {
        "WEBHOOK_HOST": "0.0.0.0",
        "WEBHOOK_PORT": " 9443 ",
        "TRADING_WORKERS": "8",
        "TRADING_MAX_CONCURRENT": "40",
        "TRADING_MAX_QUEUE": "50",
        "TRADING_RETRY_BASE_DELAY": "0.25",
        "TRADING_TIMEOUT_NORMAL": "45",
        "TRADING_STATE_DIR": "/var/lib/td",
        "TRADING_PAPER_PRICES": "mnq=21000.5, ES=6000,",
        "TRADING_LOG_LEVEL": "debug",
        "PROJECT_X_USERNAME": "trader",
    }

    s = load_settings(env)

    assert (s.webhook_host, s.webhook_port) == ("0.0.0.0", 9443)
    assert (s.workers, s.max_concurrent, s.max_queue) == (8, 40, 50)
    assert s.retry_base_delay == 0.25
    assert s.timeout_for(Priority.NORMAL) == 45.0
    assert s.state_dir == Path("/var/lib/td")
    assert dict(s.paper_prices) == {"MNQ": 21000.5, "ES": 6000.0}
    assert s.log_level == "debug"
    assert s.project_x_username == "trader"


def test_load_settings_unrelated_env_ignored() -> None:
    """Variables that name no setting are ignored rather than refused."""
    s = load_settings({"TRADING_NOT_A_SETTING": "x", "PATH": "/usr/bin"})

    assert s == Settings()


def test_load_settings_toml_config_file(tmp_path: Path) -> None:
    """A TOML file passed as config_file supplies settings by field name."""
    path = write_toml(
        tmp_path,
        'webhook_port = 9000\nworkers = 7\nretry_base_delay = 1\nlog_level = "DEBUG"\n'
        'state_dir = "/srv/td"\n\n[paper_prices]\nMNQ = 21000\nes = 6000.5\n',
    )

    s = load_settings({}, config_file=path)

    assert s.webhook_port == 9000
    assert s.workers == 7
    assert s.retry_base_delay == 1.0
    assert s.log_level == "DEBUG"
    assert s.state_dir == Path("/srv/td")
    assert dict(s.paper_prices) == {"MNQ": 21000.0, "ES": 6000.5}


def test_load_settings_toml_from_env_variable(tmp_path: Path) -> None:
    """TRADING_CONFIG_FILE names the TOML file when config_file is not given."""
    path = write_toml(tmp_path, "workers = 9\nmax_queue = 10\n")

    s = load_settings({"TRADING_CONFIG_FILE": str(path)})

    assert (s.workers, s.max_queue) == (9, 10)


def test_load_settings_env_wins_over_toml(tmp_path: Path) -> None:
    """A variable set in the environment wins over the same setting in the file."""
    path = write_toml(tmp_path, "workers = 9\nwebhook_port = 9000\n")
    env = {"TRADING_CONFIG_FILE": str(path), "TRADING_WORKERS": "3"}

    s = load_settings(env)

    assert s.workers == 3
    assert s.webhook_port == 9000


def test_load_settings_config_file_argument_wins(tmp_path: Path) -> None:
    """An explicit config_file is read instead of TRADING_CONFIG_FILE."""
    chosen = write_toml(tmp_path, "workers = 2\n")
    other = tmp_path / "other.toml"
    other.write_text("workers = 11\n")

    s = load_settings({"TRADING_CONFIG_FILE": str(other)}, config_file=chosen)

    assert s.workers == 2


@pytest.mark.parametrize(
    ("variable", "value", "shown"),
    [
        ("WEBHOOK_PORT", "abc", "'abc'"),
        ("WEBHOOK_PORT", "70000", "70000"),
        ("WEBHOOK_PORT", "-1", "-1"),
        ("WEBHOOK_PORT", "80.5", "'80.5'"),
        ("WEBHOOK_HOST", "", "''"),
        ("TRADING_WORKERS", "0", "0"),
        ("TRADING_MAX_CONCURRENT", "-1", "-1"),
        ("TRADING_MAX_QUEUE", "0", "0"),
        ("TRADING_MAX_RETRIES", "-1", "-1"),
        ("TRADING_RETRY_BASE_DELAY", "nan", "'nan'"),
        ("TRADING_RETRY_BASE_DELAY", "-2", "-2.0"),
        ("TRADING_TIMEOUT_NORMAL", "inf", "'inf'"),
        ("TRADING_TIMEOUT_LOW", "soon", "'soon'"),
        ("TRADING_BROKER", "ibkr", "'ibkr'"),
        ("TRADING_LOG_LEVEL", "LOUD", "'LOUD'"),
        ("TRADING_PAPER_PRICES", "MNQ", "'MNQ'"),
        ("TRADING_PAPER_PRICES", "MNQ=-5", "'-5'"),
        ("TRADING_PAPER_PRICES", "MNQ=abc", "'abc'"),
        ("TRADING_PAPER_PRICES", "ES=6000,MNQ=nan", "'nan'"),
        ("TRADING_FILL_CHECK_INTERVAL", "0", "0.0"),
        ("TRADING_PAPER_DEFAULT_PRICE", "-1", "-1.0"),
        ("WEBHOOK_MAX_BODY_BYTES", "10", "10"),
    ],
)
def test_load_settings_invalid_env_value(variable: str, value: str, shown: str) -> None:
    """Every bad value stops startup with an error naming the variable and value."""
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})

    message = str(info.value)
    assert message.startswith(variable)
    assert shown in message
    assert "\n" not in message


def test_load_settings_invalid_toml_value_names_file(tmp_path: Path) -> None:
    """A bad value from the file names the file and key, and shows the value."""
    path = write_toml(tmp_path, "workers = true\n")

    with pytest.raises(ConfigError) as info:
        load_settings({}, config_file=path)

    assert f"{path}:workers" in str(info.value)
    assert "True" in str(info.value)


def test_load_settings_unknown_toml_key(tmp_path: Path) -> None:
    """A key the daemon does not know (a typo) is refused, not ignored."""
    path = write_toml(tmp_path, "workers = 2\nwokers = 3\n")

    with pytest.raises(ConfigError) as info:
        load_settings({}, config_file=path)

    assert str(path) in str(info.value)
    assert "'wokers'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("missing.toml", "cannot read"),
        (".", "cannot read"),
    ],
    ids=["missing", "directory"],
)
def test_load_settings_unreadable_toml(
    tmp_path: Path, name: str, fragment: str
) -> None:
    """A config file that cannot be read gives a ConfigError naming it."""
    path = tmp_path / name

    with pytest.raises(ConfigError) as info:
        load_settings({"TRADING_CONFIG_FILE": str(path)})

    assert str(info.value).startswith("TRADING_CONFIG_FILE")
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text", ["workers = \n", "[paper_prices\n", "workers = 1\nworkers = 2\n"]
)
def test_load_settings_invalid_toml(tmp_path: Path, text: str) -> None:
    """A file that is not valid TOML gives a ConfigError naming it."""
    path = write_toml(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_settings({}, config_file=path)

    assert "is not valid TOML" in str(info.value)
    assert str(path) in str(info.value)


def test_load_settings_systemd_state_directory() -> None:
    """systemd's STATE_DIRECTORY (first entry) is used without TRADING_STATE_DIR."""
    env = {"STATE_DIRECTORY": "/var/lib/trading-daemon:/var/lib/other"}

    s = load_settings(env)

    assert s.state_dir == Path("/var/lib/trading-daemon")


def test_load_settings_credentials_directory(tmp_path: Path) -> None:
    """The API key is read from $CREDENTIALS_DIRECTORY/PROJECT_X_API_KEY, stripped."""
    (tmp_path / "PROJECT_X_API_KEY").write_text(SECRET + "\n")

    s = load_settings({"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert s.project_x_api_key == SECRET


def test_load_settings_credentials_directory_without_file(tmp_path: Path) -> None:
    """A credentials directory without the key file leaves the key from the env."""
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "PROJECT_X_API_KEY": SECRET}

    assert load_settings(env).project_x_api_key == SECRET


def test_load_settings_empty_credential_file_keeps_env(tmp_path: Path) -> None:
    """An empty credential file (SetCredential= fallback) leaves the env's key."""
    (tmp_path / "PROJECT_X_API_KEY").write_text("\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "PROJECT_X_API_KEY": SECRET}

    assert load_settings(env).project_x_api_key == SECRET


def test_settings_masked_hides_api_key() -> None:
    """masked() and repr() never contain the API key value."""
    s = load_settings({"PROJECT_X_API_KEY": SECRET, "TRADING_PAPER_PRICES": "MNQ=1"})

    shown = s.masked()

    assert shown["project_x_api_key"] == SECRET_MASK
    assert SECRET not in json.dumps(shown)
    assert SECRET not in repr(s)
    assert shown["state_dir"] == "state"
    assert shown["paper_prices"] == {"MNQ": 1.0}


def test_settings_masked_empty_key_stays_empty() -> None:
    """An unset API key shows as empty, so check-config reveals it is missing."""
    assert load_settings({}).masked()["project_x_api_key"] == ""


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TRADING_WORKERS", "0"),
        ("WEBHOOK_PORT", "abc"),
        ("TRADING_PAPER_PRICES", "MNQ"),
        ("TRADING_BROKER", "ibkr"),
    ],
)
def test_load_settings_error_elsewhere_hides_api_key(variable: str, value: str) -> None:
    """An error in another variable, with the API key set, never carries the key."""
    env = {"PROJECT_X_API_KEY": SECRET, variable: value}

    with pytest.raises(ConfigError) as info:
        load_settings(env)

    assert str(info.value).startswith(variable)
    assert SECRET not in str(info.value)


def test_load_settings_projectx_missing_username_hides_api_key() -> None:
    """The projectx broker's missing-username error does not show the API key."""
    env = {"TRADING_BROKER": "projectx", "PROJECT_X_API_KEY": SECRET}

    with pytest.raises(ConfigError) as info:
        load_settings(env)

    assert "PROJECT_X_USERNAME" in str(info.value)
    assert SECRET not in str(info.value)


def test_load_settings_projectx_requires_api_key() -> None:
    """The projectx broker without an API key is a startup error naming it."""
    env = {"TRADING_BROKER": "projectx", "PROJECT_X_USERNAME": "trader"}

    with pytest.raises(ConfigError, match="PROJECT_X_API_KEY is required"):
        load_settings(env)


def test_load_settings_bad_credential_file_is_config_error(tmp_path: Path) -> None:
    """A credential file that is not UTF-8 gives a ConfigError without the secret."""
    (tmp_path / "PROJECT_X_API_KEY").write_bytes(b"pxk-\xff" + SECRET.encode())

    with pytest.raises(ConfigError) as info:
        load_settings({"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert "PROJECT_X_API_KEY" in str(info.value)
    assert SECRET not in str(info.value)


def test_load_settings_projectx_tuning() -> None:
    """PROJECT_X_* tuning variables parse; symbol aliases come out upper-case."""
    env = {
        "PROJECT_X_TIMEOUT": "2.5",
        "PROJECT_X_RATE_LIMIT": "100",
        "PROJECT_X_RATE_WINDOW": "30",
        "PROJECT_X_SYMBOLS": "cl=cle, SI=SIE",
    }

    settings = load_settings(env)

    assert settings.project_x_timeout == 2.5
    assert settings.project_x_rate_limit == 100
    assert settings.project_x_rate_window == 30.0
    assert settings.project_x_symbols == {"CL": "CLE", "SI": "SIE"}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PROJECT_X_RATE_LIMIT", "0", "must be at least 1, got 0"),
        ("PROJECT_X_TIMEOUT", "0", "must be greater than 0, got 0.0"),
        ("PROJECT_X_SYMBOLS", "CL", "must look like ROOT=GATEWAYROOT, got 'CL'"),
    ],
)
def test_load_settings_projectx_tuning_invalid(
    variable: str, value: str, message: str
) -> None:
    """A bad PROJECT_X_* tuning value is a startup error naming it and the value."""
    with pytest.raises(ConfigError, match=message) as info:
        load_settings({variable: value})

    assert str(info.value).startswith(variable)


# --- listener limits and webhook authentication (issue #6) -----------------

WEBHOOK_SECRET = "tv-passphrase-config-0042-marker"
SIGNING = "whsec_" + "c2lnbmluZy1rZXktZm9yLWNvbmZpZy10ZXN0cy0wMDQy"


def test_load_settings_auth_and_limits_from_env() -> None:
    """The auth and listener variables parse: lists split on commas and spaces."""
    env = {
        "TRADING_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "TRADING_WEBHOOK_TOKEN": "bearer-token-config-0042",
        "TRADING_WEBHOOK_SIGNING_SECRETS": f"{SIGNING}, {SIGNING}",
        "TRADING_ALLOWED_SOURCES": "tradingview, 10.0.0.0/8 192.0.2.1",
        "TRADING_TRUSTED_PROXIES": "127.0.0.1,::1",
        "TRADING_ADMIN_TOKEN": "admin-token-config-0042",
        "TRADING_STATUS_PUBLIC": "no",
        "TRADING_RATE_LIMIT": "30",
        "WEBHOOK_MAX_CONNECTIONS": "64",
        "WEBHOOK_READ_TIMEOUT": "5",
        "WEBHOOK_KEEP_ALIVE_TIMEOUT": "20",
        "WEBHOOK_MAX_HEADER_BYTES": "8192",
    }

    s = load_settings(env)

    assert s.webhook_signing_secrets == (SIGNING, SIGNING)
    assert s.allowed_sources == ("tradingview", "10.0.0.0/8", "192.0.2.1")
    assert s.trusted_proxies == ("127.0.0.1", "::1")
    assert s.status_public is False
    assert (s.rate_limit, s.max_connections, s.max_header_bytes) == (30, 64, 8192)
    assert (s.read_timeout, s.keep_alive_timeout) == (5.0, 20.0)


def test_load_settings_auth_from_toml(tmp_path: Path) -> None:
    """TOML arrays and booleans work for the list and bool settings."""
    path = write_toml(
        tmp_path,
        'allowed_sources = ["tradingview"]\nstatus_public = true\n'
        f'webhook_signing_secrets = ["{SIGNING}"]\n',
    )

    s = load_settings({}, config_file=path)

    assert s.allowed_sources == ("tradingview",)
    assert s.webhook_signing_secrets == (SIGNING,)
    assert s.status_public is True


@pytest.mark.parametrize(
    "name",
    [
        "TRADING_WEBHOOK_SECRET",
        "TRADING_WEBHOOK_TOKEN",
        "TRADING_WEBHOOK_SIGNING_SECRETS",
        "TRADING_ADMIN_TOKEN",
    ],
)
def test_load_settings_auth_secrets_from_credentials_directory(
    tmp_path: Path, name: str
) -> None:
    """Each auth secret may come from $CREDENTIALS_DIRECTORY, masked afterwards."""
    value = SIGNING if name.endswith("SIGNING_SECRETS") else WEBHOOK_SECRET
    (tmp_path / name).write_text(value + "\n")

    s = load_settings({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    field_name = name.removeprefix("TRADING_").lower()

    assert getattr(s, field_name) in (value, (value,))
    assert value not in json.dumps(s.masked())
    assert value not in repr(s)
    assert value in s.secret_values()


def test_load_settings_live_broker_without_webhook_auth_is_refused() -> None:
    """A live broker with no webhook credential does not start; one line says so."""
    env = {
        "TRADING_BROKER": "projectx",
        "PROJECT_X_USERNAME": "trader",
        "PROJECT_X_API_KEY": SECRET,
        "TRADING_ALLOWED_SOURCES": "tradingview",
    }

    with pytest.raises(ConfigError) as info:
        load_settings(env)

    message = str(info.value)
    assert message.startswith("TRADING_BROKER=projectx places real orders")
    assert "TRADING_WEBHOOK_SECRET" in message
    assert "\n" not in message
    assert SECRET not in message
    assert load_settings({**env, "TRADING_WEBHOOK_SECRET": WEBHOOK_SECRET})


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"TRADING_WEBHOOK_SECRET": "short"}, "at least 16 characters, got 5"),
        ({"TRADING_ADMIN_TOKEN": "x" * 15}, "at least 16 characters, got 15"),
        (
            {"TRADING_WEBHOOK_SIGNING_SECRETS": "whsec_" + "!" * 40},
            "entry 1 must be whsec_ followed by base64",
        ),
        (
            {"TRADING_WEBHOOK_SIGNING_SECRETS": f"{SIGNING} whsec_c2hvcnQ="},
            "entry 2 must hold at least 24 bytes of key, got 5",
        ),
        (
            {
                "TRADING_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "TRADING_ADMIN_TOKEN": WEBHOOK_SECRET,
            },
            "TRADING_ADMIN_TOKEN must differ",
        ),
        ({"TRADING_STATUS_PUBLIC": "false"}, "needs TRADING_ADMIN_TOKEN"),
        ({"TRADING_STATUS_PUBLIC": "maybe"}, "must be true or false, got 'maybe'"),
        ({"TRADING_ALLOWED_SOURCES": "tradingview,10.0.0.1/8"}, "got '10.0.0.1/8'"),
        ({"TRADING_TRUSTED_PROXIES": "tradingview"}, "got 'tradingview'"),
        ({"TRADING_RATE_LIMIT": "-1"}, "must be 0 (off) or more"),
        ({"WEBHOOK_MAX_CONNECTIONS": "0"}, "must be at least 1"),
        ({"WEBHOOK_READ_TIMEOUT": "0"}, "must be greater than 0"),
        ({"WEBHOOK_MAX_HEADER_BYTES": "100"}, "must be at least 1024"),
    ],
)
def test_load_settings_auth_invalid_values(env: dict[str, str], fragment: str) -> None:
    """Bad auth and limit values stop startup, naming the rule, hiding secrets."""
    with pytest.raises(ConfigError) as info:
        load_settings(env)

    message = str(info.value)
    assert fragment in message
    for value in env.values():
        if len(value) > 16:
            assert value not in message


def test_settings_secret_values_include_bare_signing_keys() -> None:
    """secret_values lists each secret, and a whsec_ key also without its prefix."""
    s = Settings(webhook_secret=WEBHOOK_SECRET, webhook_signing_secrets=(SIGNING,))

    assert set(s.secret_values()) == {
        WEBHOOK_SECRET,
        SIGNING,
        SIGNING.removeprefix("whsec_"),
    }


# -- order intent, risk limits and accounts (#5) -------------------------------


def test_load_settings_intent_and_risk_from_env() -> None:
    """Modes, pyramiding, limits, hours and accounts come from their variables."""
    s = load_settings(
        {
            "TRADING_DEFAULT_MODE": "target",
            "TRADING_PYRAMIDING": "yes",
            "TRADING_MAX_PYRAMID": "4",
            "TRADING_MAX_ORDER_SIZE": "5",
            "TRADING_MAX_POSITION": "10",
            "TRADING_MAX_DAILY_LOSS": "750.5",
            "TRADING_TRADING_HOURS": "MNQ=always,*=08:30-15:00",
            "TRADING_ACCOUNTS": "main=1.0, eval2=0.5,eval3",
        }
    )

    assert (s.default_mode, s.pyramiding, s.max_pyramid) == ("target", True, 4)
    assert (s.max_order_size, s.max_position, s.max_daily_loss) == (5, 10, 750.5)
    assert s.trading_hours == "MNQ=always,*=08:30-15:00"
    assert s.accounts == (("main", 1.0), ("eval2", 0.5), ("eval3", 1.0))


def test_load_settings_intent_defaults() -> None:
    """Signal mode, no adding, limits off, CME Globex hours, one account."""
    s = load_settings({})

    assert (s.default_mode, s.pyramiding, s.max_pyramid) == ("signal", False, 3)
    assert (s.max_order_size, s.max_position, s.max_daily_loss) == (0, 0, 0.0)
    assert (s.trading_hours, s.accounts) == ("cme-globex", ())


def test_load_settings_accounts_from_toml_table(tmp_path: Path) -> None:
    """TOML may give the accounts as a table, in order."""
    path = write_toml(tmp_path, "[accounts]\nmain = 1\nPRAC-V2-2 = 0.25\n")

    assert load_settings({}, config_file=path).accounts == (
        ("main", 1.0),
        ("PRAC-V2-2", 0.25),
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "TRADING_DEFAULT_MODE",
            "auto",
            "TRADING_DEFAULT_MODE must be one of signal, target, got 'auto'",
        ),
        ("TRADING_MAX_PYRAMID", "0", "TRADING_MAX_PYRAMID must be at least 1, got 0"),
        (
            "TRADING_MAX_ORDER_SIZE",
            "-1",
            "TRADING_MAX_ORDER_SIZE must be 0 (off) or more, got -1",
        ),
        (
            "TRADING_MAX_DAILY_LOSS",
            "-5",
            "TRADING_MAX_DAILY_LOSS must be 0 (off) or more, got -5.0",
        ),
        ("TRADING_MAX_POSITION", "two", "TRADING_MAX_POSITION must be a whole number"),
        ("TRADING_PYRAMIDING", "maybe", "TRADING_PYRAMIDING must be true or false"),
        (
            "TRADING_TRADING_HOURS",
            "nyse",
            "TRADING_TRADING_HOURS calendars are cme-globex, always or a Central-time"
            " window such as 08:30-15:00 (start before end), got 'nyse'",
        ),
        (
            "TRADING_ACCOUNTS",
            "main=0",
            "TRADING_ACCOUNTS multiplier for 'main' must be a positive number, got '0'",
        ),
        (
            "TRADING_ACCOUNTS",
            "main=x",
            "TRADING_ACCOUNTS multiplier for 'main' must be a positive number, got 'x'",
        ),
        ("TRADING_ACCOUNTS", "main,MAIN=2", "TRADING_ACCOUNTS names account 'MAIN'"),
        ("TRADING_ACCOUNTS", "=1", "TRADING_ACCOUNTS entries need an account name"),
    ],
)
def test_load_settings_intent_and_risk_invalid(
    variable: str, value: str, message: str
) -> None:
    """Every bad value is one ConfigError naming the variable and the value."""
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})

    assert str(info.value).startswith(message)
