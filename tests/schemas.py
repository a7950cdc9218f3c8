"""Validate relay output against the shipped JSON Schemas with `jsonschema`, refs resolved from relay/schemas."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from relay import schemas
from relay.envelope import TYPE_PREFIX


@cache
def registry() -> Registry[Any]:
    resources = [
        (name, Resource.from_contents(schemas.load(name), default_specification=DRAFT7)) for name in schemas.names()
    ]
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft7Validator:
    schema = schemas.load(name)
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema, registry=registry())


def errors(name: str, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator(name).iter_errors(instance)
    ]


def record_errors(value: bytes) -> list[str]:
    """Problems of one family-topic record value: the envelope, then `data` against its event's schema."""
    event = json.loads(value)
    problems = errors(schemas.ENVELOPE, event)
    data_schema = schemas.data_schema(str(event.get("type", "")).removeprefix(TYPE_PREFIX))
    if data_schema is not None:
        problems += [f"data/{p}" for p in errors(data_schema, event.get("data"))]
    return problems
