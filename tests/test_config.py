"""Server settings: defaults < YAML file < TIFFIN_* variables < CLI flags; unknown keys fail."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tiffin.cli import main
from tiffin.config import _NOT_SETTINGS, ServeSettings, load_settings
from tiffin.exceptions import InvalidArgument

SRC = Path(__file__).resolve().parents[1] / "src" / "tiffin"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiffin.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == ServeSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 3000)
    assert settings.api_timeout_s == 60
    assert settings.max_body_size == 64 * 1024 * 1024
    assert settings.log_level == "info" and settings.log_format == "text"
    assert settings.access_log is True
    assert settings.runners == {} and settings.apis == {}


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = write(tmp_path, """
host: 0.0.0.0
port: 4000
api_timeout_s: 5
max_body_size: 1024
log_level: debug
access_log: false
runners:
  iris_clf: {max_batch_size: 64, max_latency_ms: 250}
apis:
  predict: {timeout_s: 2}
""")
    settings = load_settings(config, environ={})
    assert settings.host == "0.0.0.0" and settings.port == 4000
    assert settings.api_timeout_s == 5 and settings.max_body_size == 1024
    assert settings.log_level == "debug" and settings.access_log is False
    assert settings.runners["iris_clf"].max_batch_size == 64
    assert settings.runners["iris_clf"].max_latency_ms == 250
    assert settings.apis["predict"].timeout_s == 2

    environ = {
        "TIFFIN_PORT": "5000",
        "TIFFIN_ACCESS_LOG": "true",
        "TIFFIN_RUNNERS__IRIS_CLF__MAX_LATENCY_MS": "50",
        "TIFFIN_APIS__PREDICT__TIMEOUT_S": "0.5",
        "TIFFIN_HOME": "/somewhere",  # not a server setting: ignored
        "TIFFIN_RUNNER_THREADS": "2",
    }
    settings = load_settings(config, environ=environ)
    assert settings.port == 5000 and settings.access_log is True
    assert settings.runners["iris_clf"].max_batch_size == 64  # from the file, merged
    assert settings.runners["iris_clf"].max_latency_ms == 50
    assert settings.apis["predict"].timeout_s == 0.5

    settings = load_settings(config, {"port": 6000, "host": None}, environ=environ)
    assert settings.port == 6000  # the flag wins
    assert settings.host == "0.0.0.0"  # a flag left out (None) does not


def test_config_file_from_tiffin_config(tmp_path: Path) -> None:
    config = write(tmp_path, "port: 4321\n")
    assert load_settings(environ={"TIFFIN_CONFIG": str(config)}).port == 4321


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("prot: 80\n", "unknown key 'prot'"),
        ("runners:\n  iris: {max_batch: 3}\n", "unknown key 'runners.iris.max_batch'"),
        ("apis:\n  predict: {timeout: 3}\n", "unknown key 'apis.predict.timeout'"),
    ],
)
def test_unknown_keys_in_the_file_are_errors_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(named)) as info:
        load_settings(write(tmp_path, text), environ={})
    assert str(tmp_path / "tiffin.yaml") in str(info.value)


def test_an_unknown_environment_variable_is_a_one_line_warning_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tiffin.config"):
        settings = load_settings(environ={"TIFFIN_PROT": "80", "TIFFIN_PORT": "3001"})
    assert settings.port == 3001
    [record] = [r for r in caplog.records if r.name == "tiffin.config"]
    message = record.getMessage()
    assert "TIFFIN_PROT" in message and "did you mean TIFFIN_PORT?" in message
    assert "\n" not in message


def test_malformed_runner_and_api_variables_are_still_errors() -> None:
    with pytest.raises(InvalidArgument, match="TIFFIN_RUNNERS__IRIS"):
        load_settings(environ={"TIFFIN_RUNNERS__IRIS": "3"})
    with pytest.raises(InvalidArgument, match=re.escape("runners.iris.batch")):
        load_settings(environ={"TIFFIN_RUNNERS__IRIS__BATCH": "3"})


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"TIFFIN_PORT": "eighty"}, "port"),
        ({"TIFFIN_PORT": "70000"}, "port"),
        ({"TIFFIN_API_TIMEOUT_S": "0"}, "api_timeout_s"),
        ({"TIFFIN_MAX_BODY_SIZE": "-1"}, "max_body_size"),
        ({"TIFFIN_LOG_LEVEL": "loud"}, "log_level"),
        ({"TIFFIN_LOG_FORMAT": "xml"}, "log_format"),
        ({"TIFFIN_RUNNERS__IRIS__MAX_BATCH_SIZE": "0"}, "runners.iris.max_batch_size"),
        ({"TIFFIN_APIS__PREDICT__TIMEOUT_S": "-2"}, "apis.predict.timeout_s"),
    ],
)
def test_invalid_values_name_the_setting(environ: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(named)):
        load_settings(environ=environ)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", environ={})
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        load_settings(write(tmp_path, "port: [1,\n"), environ={})
    with pytest.raises(InvalidArgument, match="mapping"):
        load_settings(write(tmp_path, "- port\n"), environ={})
    assert load_settings(write(tmp_path, ""), environ={}) == ServeSettings()


def test_every_tiffin_variable_in_the_source_is_a_setting_or_known_to_be_none() -> None:
    """Another module's TIFFIN_* variable must not make the server refuse to start."""
    settings = {f"TIFFIN_{name.upper()}" for name in ServeSettings.model_fields}
    found = set()
    for path in SRC.rglob("*.py"):
        found |= set(re.findall(r"\bTIFFIN_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    nested = {name for name in found if name.startswith(("TIFFIN_RUNNERS__", "TIFFIN_APIS__"))}
    assert found - settings - nested - _NOT_SETTINGS == set()
    for name in _NOT_SETTINGS - {"TIFFIN_CONFIG"}:
        load_settings(environ={name: "x"})  # ignored, not an error


def test_serve_with_an_unknown_key_exits_2_naming_it(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text("import tiffin\nsvc = tiffin.Service('x')\n")
    config = write(tmp_path, "runners: {}\nwokers: 4\n")
    result = CliRunner().invoke(
        main, ["serve", str(tmp_path / "svc.py") + ":svc", "--config", str(config)]
    )
    assert result.exit_code == 2, result.output
    assert "unknown key 'wokers'" in result.output


def test_serve_model_reads_tiffin_config_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIFFIN_CONFIG", str(write(tmp_path, "port: none-such\n")))
    result = CliRunner().invoke(main, ["serve-model", "iris:latest"])
    assert result.exit_code == 2, result.output
    assert "port" in result.output


def test_a_runner_is_embedded_or_has_processes_not_both(tmp_path: Path) -> None:
    settings = load_settings(environ={"TIFFIN_RUNNERS__IRIS__EMBEDDED": "true"})
    assert settings.runners["iris"].embedded is True
    config = tmp_path / "c.yaml"
    config.write_text("runners:\n  iris:\n    embedded: true\n    workers: 2\n")
    with pytest.raises(InvalidArgument, match="set workers or embedded, not both"):
        load_settings(config, environ={})


def test_embedded_comes_from_to_runner_and_the_settings_override_it() -> None:
    import tiffin

    class Echo(tiffin.Runnable):
        @tiffin.Runnable.method
        def echo(self, x):
            return x

    default, embedded = tiffin.Runner(Echo, name="a"), tiffin.Runner(Echo, name="b", embedded=True)
    assert (default.embedded, embedded.embedded) == (False, True)
    service = tiffin.Service("s", runners=[default, embedded])
    service.apply_settings(load_settings(environ={"TIFFIN_RUNNERS__A__EMBEDDED": "1",
                                                       "TIFFIN_RUNNERS__B__EMBEDDED": "0"}))
    assert (default.embedded, embedded.embedded) == (True, False)
    # embedded in code, processes asked for in the settings: a clear error, not ignored
    service = tiffin.Service("s2", runners=[tiffin.Runner(Echo, name="c", embedded=True)])
    with pytest.raises(InvalidArgument, match="runner 'c' is embedded"):
        service.apply_settings(load_settings(environ={"TIFFIN_RUNNERS__C__WORKERS": "2"}))


def test_serve_is_not_stopped_by_an_unrelated_tiffin_variable(tmp_path: Path) -> None:
    """``TIFFIN_FOO=1 tiffin serve ...`` used to exit 2 on the variable; now it goes on (here to
    the missing service, which is what the user gets told about)."""
    result = CliRunner().invoke(
        main, ["serve", str(tmp_path / "missing.py") + ":svc"], env={"TIFFIN_FOO": "1"}
    )
    assert result.exit_code == 1, result.output
    assert "does not exist" in result.output
    assert "unknown setting" not in result.output
