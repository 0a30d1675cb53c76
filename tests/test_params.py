"""Declared command parameters (device_agent/params.py) and the dispatcher that checks them."""

from __future__ import annotations

from typing import Any

import pytest

from device_agent.params import Param, ParamError, validate
from device_agent.registry import CommandError, CommandRegistry

DECLARED = [
    Param("path", "string", required=True, max_len=8),
    Param("size", "integer", low=1, high=10),
    Param("ratio", "number", default=0.5),
    Param("on", "boolean"),
    Param("tags", "array", min_len=1),
    Param("when", ("string", "number")),
]


@pytest.mark.parametrize(
    "params,message",
    [
        ({}, "path: required (string)"),
        ({"path": None}, "path: required (string)"),
        ({"path": 1}, "path: must be string, got integer"),
        ({"path": "123456789"}, "path: must have at most 8 characters, got 9"),
        ({"path": "a", "size": True}, "size: must be integer, got boolean"),  # a bool is not a number
        ({"path": "a", "size": 1.0}, "size: must be integer, got number"),
        ({"path": "a", "size": 0}, "size: must be >= 1, got 0"),
        ({"path": "a", "size": 11}, "size: must be <= 10, got 11"),
        ({"path": "a", "ratio": float("nan")}, "ratio: must be number, got a non-finite number"),
        ({"path": "a", "ratio": "1"}, "ratio: must be number, got string"),
        ({"path": "a", "on": 1}, "on: must be boolean, got integer"),
        ({"path": "a", "tags": []}, "tags: must have at least 1 items, got 0"),
        ({"path": "a", "when": [1]}, "when: must be string or number, got array"),
        ({"path": "a", "extra": 1}, "extra: unknown parameter"),
        ([1], "parameters must be a JSON object, got array"),
    ],
)
def test_refusals_name_the_field(params: Any, message: str) -> None:
    with pytest.raises(ParamError) as err:
        validate(params, DECLARED)
    assert str(err.value).startswith(message)


def test_accepted_values_and_defaults() -> None:
    given = {"path": "a", "size": 3, "ratio": 2, "on": False, "tags": ["x"], "when": 1.5}
    assert validate(given, DECLARED) == given
    assert validate({"path": "a", "on": None}, DECLARED) == {"path": "a", "ratio": 0.5}  # null = not given


def test_unknown_json_type_is_a_declaration_error() -> None:
    with pytest.raises(ValueError):
        Param("x", "float")  # type: ignore[arg-type]


async def test_dispatcher_checks_before_the_handler_runs() -> None:
    ran: list[dict[str, Any]] = []

    async def handler(params: dict[str, Any]) -> str:
        ran.append(params)
        return "ok"

    reg = CommandRegistry()
    reg.register("typed", handler, params=DECLARED)
    reg.register("bare", handler)
    reg.register("diag.like", handler, params=[Param("n", "integer")], param_error="bad_request")
    for name, params, code in (
        ("typed", {"path": 7}, "bad_params"),
        ("bare", {"x": 1}, "bad_params"),
        ("diag.like", {"n": "1"}, "bad_request"),
    ):
        with pytest.raises(CommandError) as err:
            await reg.dispatch(name, params)
        assert err.value.code == code and err.value.message.startswith(f"{name}: ")
    assert ran == []
    assert await reg.dispatch("typed", {"path": "p"}) == "ok" and ran == [{"path": "p", "ratio": 0.5}]
