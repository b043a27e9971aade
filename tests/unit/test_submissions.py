from pathlib import Path

import pytest
from pydantic import ValidationError

from crucible.api.schemas import EvaluationCreate, EvaluationFields, EvaluationRequest
from crucible.core.config import Settings
from crucible.core.errors import InvalidSubmission, PayloadTooLarge
from crucible.core.lifecycle import Verdict
from crucible.engine.models import Events, Result, RuntimeInfo, Termination
from crucible.environments.store import EnvironmentStore
from crucible.services.submissions import (
    merge,
    prepare,
    request_hash,
    resolve_environment,
    run_request,
    verdict,
)


@pytest.fixture
def cfg() -> Settings:
    return Settings(max_code_bytes=100)


def request(cfg: Settings, **fields: object) -> EvaluationRequest:
    new = prepare(EvaluationCreate.model_validate({"code": "print(1)", **fields}), cfg)
    return EvaluationRequest.model_validate(new.request)


def result(stdout: str = "", exit_code: int = 0, **kw: object) -> Result:
    limits = request(Settings()).limits
    values: dict[str, object] = {
        "termination": Termination.exited,
        "exit_code": exit_code,
        "signal": None,
        "stdout": stdout,
        "stderr": "",
        "stdout_truncated": False,
        "stderr_truncated": False,
        "wall_ms": 1,
        "cpu_ms": 1,
        "peak_memory_bytes": 1,
        "files": [],
        "runtime": RuntimeInfo(name="runc", version="x"),
        "limits": limits,
        "events": Events(),
    }
    values.update(kw)
    return Result.model_validate(values)


def test_defaults_resolved(cfg: Settings) -> None:
    r = request(cfg)
    assert (
        r.language == "python"
        and r.runtime == cfg.default_runtime == "crun"
        and r.priority == "normal"
    )
    assert r.limits.timeout_s == cfg.limits.timeout_s[0]


def test_unknown_language_lists_supported(cfg: Settings) -> None:
    with pytest.raises(InvalidSubmission, match=r"supported: .*python") as info:
        request(cfg, language="cobol")
    assert info.value.field == "language"


def test_limit_out_of_range_names_field(cfg: Settings) -> None:
    with pytest.raises(InvalidSubmission, match="between") as info:
        request(cfg, limits={"memory_mb": 1 << 20})
    assert info.value.field == "limits.memory_mb"


def test_code_too_large(cfg: Settings) -> None:
    with pytest.raises(PayloadTooLarge):
        request(cfg, code="x" * 101)


def test_test_code_only_for_python(cfg: Settings) -> None:
    with pytest.raises(InvalidSubmission) as info:
        request(cfg, language="bash", test_code="true")
    assert info.value.field == "test_code"


def test_files_need_a_listed_entrypoint(cfg: Settings) -> None:
    body = EvaluationCreate(files={"a.py": "x"}, entrypoint="b.py")
    with pytest.raises(InvalidSubmission) as info:
        prepare(body, cfg)
    assert info.value.field == "entrypoint"
    with pytest.raises(InvalidSubmission):
        prepare(EvaluationCreate(files={"../x.py": "x"}, entrypoint="../x.py"), cfg)


def test_code_or_files() -> None:
    with pytest.raises(ValidationError):
        EvaluationCreate(code="x", files={"a": "b"})
    with pytest.raises(ValidationError):
        EvaluationCreate()


def test_merge_item_over_defaults_limits_key_by_key() -> None:
    merged = merge(
        EvaluationFields(code="x", limits={"timeout_s": 2}, labels={"b": "2"}),  # type: ignore[arg-type]
        EvaluationFields(language="bash", limits={"memory_mb": 64}, labels={"a": "1"}),  # type: ignore[arg-type]
    )
    assert merged.language == "bash"
    assert merged.limits is not None
    assert (merged.limits.timeout_s, merged.limits.memory_mb) == (2, 64)
    assert merged.labels == {"a": "1", "b": "2"}


def test_request_hash_ignores_key_order() -> None:
    a = EvaluationCreate.model_validate({"code": "x", "stdin": "y"})
    b = EvaluationCreate.model_validate({"stdin": "y", "code": "x"})
    c = EvaluationCreate.model_validate({"stdin": "z", "code": "x"})
    assert request_hash(a) == request_hash(b) != request_hash(c)


def test_test_code_appended(cfg: Settings) -> None:
    run = run_request(request(cfg, test_code="assert f() == 1"))
    assert run.code is not None and run.code.startswith("print(1)") and run.code.endswith("== 1\n")


def test_verdict(cfg: Settings) -> None:
    assert verdict(request(cfg), result("1\n")) is None
    judged = request(cfg, expected_output="1")
    assert verdict(judged, result("1  \n\n")) is Verdict.passed
    assert verdict(judged, result("2\n")) is Verdict.failed
    assert verdict(judged, result("1\n", exit_code=1)) is Verdict.failed
    assert verdict(judged, result("1\n", stdout_truncated=True)) is Verdict.failed
    tested = request(cfg, test_code="assert True")
    assert verdict(tested, result("")) is Verdict.passed
    assert verdict(tested, result("", termination=Termination.timeout, exit_code=None)) is (
        Verdict.failed
    )


def test_an_empty_default_environment_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRUCIBLE_DEFAULT_ENVIRONMENT", "")
    assert Settings().default_environment is None
    monkeypatch.setenv("CRUCIBLE_DEFAULT_ENVIRONMENT", "python:3.12")
    assert Settings().default_environment == "python:3.12"


def test_an_unnamed_environment_takes_the_default(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path / "envs")  # empty: no environment at all
    assert resolve_environment(None, store) is None  # host
    assert resolve_environment(None, store, default="host") is None
    assert resolve_environment("host", store, default="gone") is None  # named: the host
    with pytest.raises(InvalidSubmission, match=r"CRUCIBLE_DEFAULT_ENVIRONMENT.*'gone'"):
        resolve_environment(None, store, default="gone")
    with pytest.raises(InvalidSubmission, match="no environment 'other'") as named:
        resolve_environment("other", store, default="gone")
    assert "CRUCIBLE_DEFAULT_ENVIRONMENT" not in str(named.value)
