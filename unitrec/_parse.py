"""Validating settings against the schema, with one line per wrong field.

pydantic's errors name every member of a union and repeat a field per member tried;
:func:`parse` turns them into one message per field that says where it is
(``layers[0].units``), what was given and what is allowed.
"""

from __future__ import annotations

from typing import Any, Type, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from unitrec.errors import ConfigError

__all__ = ["parse"]

T = TypeVar("T", bound=BaseModel)


def _where(loc: tuple) -> str:
    """``layers.0.units`` as ``layers[0].units``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


#: What a union field takes, said once for the field
_UNION_TAKES = {
    "normalize": "'imagenet', null or {mean: [r, g, b], std: [r, g, b]}",
    "output": "a file path or {path: ..., overwrite: ...}",
}


def _member_tags(model: Type[BaseModel], loc: tuple) -> set[int]:
    """Which parts of an error's location name a union's member (pydantic's
    `literal['imagenet']`, `OutputSpec`, `str`), found by walking the models."""
    tags: set[int] = set()
    ann: Any = model
    for i, part in enumerate(loc):
        args = [a for a in get_args(ann) if a is not type(None)] if get_origin(ann) is Union else [ann]
        fields = {k: f for a in args if isinstance(a, type) and issubclass(a, BaseModel)
                  for n, f in a.model_fields.items() for k in (n, f.alias) if k}
        if isinstance(part, str) and part in fields:
            ann = fields[part].annotation
        elif isinstance(part, int) and get_origin(args[0]) in (list, tuple) and get_args(args[0]):
            items = get_args(args[0])
            ann = items[min(part, len(items) - 1)] if get_origin(args[0]) is tuple else items[0]
        elif isinstance(part, str) and len(args) > 1:
            tags.add(i)
            ann = next((a for a in args if part == getattr(a, "__name__", None)  # a model: its class name
                        or (part.startswith("dict[") and get_origin(a) is dict)), Any)
        else:
            break
    return tags


def _per_field(errors: list[dict], model: Type[BaseModel]) -> list[dict]:
    """pydantic's errors with one per field: a union's members are not named.

    A union field that no member takes gives one error per member; the members that
    got inside the value (a mapping with a wrong key) say what is wrong there, else
    one error says what the field takes.
    """
    out: list[dict] = []
    unions: dict[tuple, list[dict]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        tags = _member_tags(model, loc)
        if not tags:
            out.append(err)
            continue
        cut = min(tags)
        if loc[:cut] not in unions:
            unions[loc[:cut]] = []
            out.append({"loc": loc[:cut], "union": unions[loc[:cut]]})
        unions[loc[:cut]].append({**err, "loc": tuple(p for i, p in enumerate(loc) if i not in tags)})
    merged: list[dict] = []
    for err in out:
        if "union" not in err:
            merged.append(err)
            continue
        members = err["union"]
        inside = [e for e in members if len(e["loc"]) > len(err["loc"]) or e["type"] in ("missing", "extra_forbidden")
                  or not e["msg"].startswith("Input should be")]
        if inside:
            merged.extend(inside)
        else:
            field = str(err["loc"][-1]) if err["loc"] else ""
            takes = _UNION_TAKES.get(field, " or ".join(e["msg"].removeprefix("Input should be ") for e in members))
            merged.append({"loc": err["loc"], "type": "union", "msg": f"must be {takes}; got {members[0].get('input')!r}"})
    return merged


def _message(exc: ValidationError, what: str, model: Type[BaseModel]) -> str:
    lines = []
    errors = _per_field([dict(e) for e in exc.errors()], model)
    for err in errors[:3]:
        where = _where(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = model
            for part in err["loc"][:-1]:
                field = parent.model_fields.get(str(part)) if isinstance(part, str) else None
                ann = getattr(field, "annotation", None)
                parent = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                               and issubclass(a, BaseModel)), parent)
            valid = ", ".join(f.alias or n for n, f in parent.model_fields.items())
            # inside a list entry, name the entry and the key within it: layers[0]: unknown key 'unit'
            cut = max((i + 1 for i, p in enumerate(err["loc"]) if isinstance(p, int)), default=0)
            entry = f"{_where(err['loc'][:cut])}: " if cut else ""
            key = ".".join(str(p) for p in err["loc"][cut:])
            lines.append(f"{entry}unknown key '{key}' (valid keys: {valid})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where else msg)
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"invalid {what}: " + "; ".join(lines) + more


def parse(model: Type[T], data: Any, what: str = "config") -> T:
    """Validate `data` against `model`, raising ConfigError with a short message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(exc, what, model)) from None
