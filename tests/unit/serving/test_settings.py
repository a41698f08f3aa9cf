from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from stageflow.core.storage import LocalStore
from stageflow.serving.settings import CommonSettings, StageSettings, load_settings

REQUIRED = ["--model-family", "tiny-sd", "--model-path", "/models/tiny"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [f"STAGEFLOW_{f.upper()}" for f in StageSettings.model_fields]:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("flag", "env", "default", "expected"),
    [
        (None, None, None, 1024),  # field default
        (None, None, "512", 512),  # service default beats the field default
        (None, "256", "512", 256),  # env beats the service default
        ("128", "256", "512", 128),  # flag beats everything
    ],
)
def test_precedence_flag_env_defaults_field(
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    default: str | None,
    expected: int,
) -> None:
    argv = [*REQUIRED, *(["--max-side", flag] if flag else [])]
    if env:
        monkeypatch.setenv("STAGEFLOW_MAX_SIDE", env)
    defaults = {"max_side": default} if default else {}
    assert load_settings(StageSettings, argv, **defaults).max_side == expected


def test_service_defaults_fill_required_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEFLOW_MODEL_PATH", "/from/env")
    settings = load_settings(StageSettings, [], model_family="tiny-sd", model_path="/default")
    assert settings.model_family == "tiny-sd"
    assert settings.model_path == Path("/from/env")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),
        (["--log-json"], True),
        (["--log-json", "true"], True),
        (["--log-json", "false"], False),
        (["--log-json=false"], False),
        (["--no-log-json"], False),
        (["--log-json", "--port", "7"], True),
    ],
)
def test_bool_flag_forms(argv: list[str], expected: bool) -> None:
    assert load_settings(CommonSettings, argv).log_json is expected


def test_flag_equals_form_and_paths(tmp_path: Path) -> None:
    settings = load_settings(CommonSettings, [f"--port-file={tmp_path}/p", "--port", "0"])
    assert settings.port_file == tmp_path / "p"
    assert settings.port == 0


def test_unknown_flag_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        load_settings(CommonSettings, ["--stor-url", "x"])
    assert err.value.code == 2
    assert "unknown option '--stor-url'" in capsys.readouterr().err


def test_bad_and_missing_values_name_flag_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        load_settings(StageSettings, ["--port", "eighty", "--model-family", "x"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "--port / STAGEFLOW_PORT" in message
    assert "--model-path / STAGEFLOW_MODEL_PATH: Field required" in message


def test_flag_without_value_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(CommonSettings, ["--store-url"])
    assert "--store-url needs a value" in capsys.readouterr().err


def test_help_lists_every_flag_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        load_settings(StageSettings, ["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    for name in StageSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in out and f"STAGEFLOW_{name.upper()}" in out


@pytest.mark.parametrize("cls", [CommonSettings, StageSettings])
def test_every_field_is_documented(cls: type[BaseSettings]) -> None:
    undocumented = [name for name, f in cls.model_fields.items() if not f.description]
    assert undocumented == []


def test_secret_stays_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEFLOW_S3_SECRET_KEY", "hunter2")
    settings = load_settings(CommonSettings, [])
    assert settings.s3_secret_key.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


def test_open_store_uses_store_url(tmp_path: Path) -> None:
    store = load_settings(CommonSettings, ["--store-url", str(tmp_path / "s")]).open_store()
    assert isinstance(store.inner, LocalStore) and store.inner.root == tmp_path / "s"


def test_a_bad_store_url_is_a_settings_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(CommonSettings, ["--store-url", "s3://Bad_Bucket?endpoint=http://h:1"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--store-url / STAGEFLOW_STORE_URL" in err and "Bad_Bucket" in err
    assert "Traceback" not in err


def test_log_level_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_settings(CommonSettings, ["--log-level", "debug"]).log_level == "DEBUG"
    with pytest.raises(SystemExit):
        load_settings(CommonSettings, ["--log-level", "loud"])
    assert "--log-level" in capsys.readouterr().err


def test_compile_and_channels_last_reach_every_model_constructor() -> None:
    from stageflow.stage.main import model_options

    default = load_settings(StageSettings, REQUIRED)
    assert (default.compile, default.channels_last) == ("off", "auto")
    settings = load_settings(
        StageSettings, [*REQUIRED, "--compile", "inductor", "--channels-last", "on"]
    )
    options = model_options(settings)
    assert (options["compile"], options["channels_last"]) == ("inductor", "on")


@pytest.mark.parametrize(("value", "layout"), [("true", "on"), ("0", "off"), ("auto", "auto")])
def test_channels_last_takes_a_boolean_as_on_or_off(
    monkeypatch: pytest.MonkeyPatch, value: str, layout: str
) -> None:
    monkeypatch.setenv("STAGEFLOW_CHANNELS_LAST", value)
    assert load_settings(StageSettings, REQUIRED).channels_last == layout


def test_an_unknown_channels_last_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(StageSettings, [*REQUIRED, "--channels-last", "sometimes"])
    assert "--channels-last" in capsys.readouterr().err


def test_an_unknown_compile_mode_is_refused_at_start_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        load_settings(StageSettings, [*REQUIRED, "--compile", "cudagraphs"])
    assert "--compile / STAGEFLOW_COMPILE: Input should be 'off' or 'inductor'" in (
        capsys.readouterr().err
    )
