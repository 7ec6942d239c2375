"""Validation at the boundary: one pydantic schema per request body, query string and recipe.

``parse(schema, data)`` returns the validated value or raises ``BadRequest`` with one line naming
the first bad field, what it must be and what it was, e.g. ``n must be a whole number from 1 to
10000, not 0``. The wording comes from each field's ``description``, so the CLI, the site's forms
and the JSON API say exactly the same thing for the same bad input.
"""
from __future__ import annotations

import functools
import typing
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from .errors import BadRequest

T = TypeVar("T")


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


# Numbers from forms and query strings arrive as text: these accept "4" as well as 4, but never
# true/false or a float with a fraction for a whole number, nor NaN or infinity.
Whole = Annotated[int, BeforeValidator(_not_bool)]
Real = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]


@functools.cache
def _adapter(schema) -> TypeAdapter:
    return TypeAdapter(schema)


def _show(value: Any) -> str:
    # A number typed into a form arrives as text: show it as the number it is, so every boundary
    # words the same value the same way.
    text = value if isinstance(value, str) and _looks_numeric(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text and text != ""


def _description_in(hint) -> str | None:
    # A Field(description=...) anywhere inside a hint: Annotated[..., Field], Optional[Annotated[...]].
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, FieldInfo) and meta.description:
            return meta.description
    for arg in typing.get_args(hint):
        found = _description_in(arg)
        if found:
            return found
    return None


@functools.cache
def _descriptions(schema) -> dict[str, str]:
    # Models list their fields; plain dataclasses carry Field(...) inside Annotated hints.
    out = {}
    for name, hint in typing.get_type_hints(schema, include_extras=True).items():
        field = getattr(schema, "model_fields", {}).get(name)
        described = (field.description if field is not None else None) or _description_in(hint)
        if described:
            out[name] = described
    return out


def _describe(schema, field: str) -> str | None:
    return _descriptions(schema).get(field)


def one_line(schema, err: ValidationError, error: type[BadRequest] = BadRequest) -> BadRequest:
    """The first problem of a ValidationError as a one-line BadRequest (of class ``error``)."""
    first = err.errors(include_url=False)[0]
    loc = [str(p) for p in first.get("loc", ())]
    field = loc[0] if loc else "value"
    desc = _describe(schema, field)
    if first.get("type") == "missing":
        return error(f"{field} is required")
    if first.get("type") in ("extra_forbidden", "unexpected_keyword_argument"):
        return error(f"unknown setting {field!r}")
    if desc:
        return error(f"{field} must be {desc}, not {_show(first.get('input'))}")
    where = ".".join(loc) or "value"
    return error(f"{where}: {first.get('msg', 'invalid')} (got {_show(first.get('input'))})")


def parse(schema: type[T], data: Any, error: type[BadRequest] = BadRequest) -> T:
    """Validate ``data`` (a dict of fields) against ``schema``; one-line ``error`` if it does not fit."""
    try:
        return _adapter(schema).validate_python(data)
    except ValidationError as e:
        raise one_line(schema, e, error) from None


def parse_day(value: str | None, name: str) -> str | None:
    """A date (``2026-11-01``, optionally with a time) as the text rows are compared with; BadRequest if not one."""
    if value is None:
        return None
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(value, fmt).strftime("%Y-%m-%dT%H:%M:%S")
        except ValueError:
            pass
    raise BadRequest(f"{name} must be a date like 2026-11-01 (or 2026-11-01T18:30), not {value!r}")
