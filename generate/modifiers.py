"""Style modifiers: a shipped library of the phrases the community appends to prompts, by kind.

``modifiers.json`` beside this module is the library (medium, site, artist, quality); the user's
``modifiers.json`` in the instance folder adds to it and overrides it, by the same shape, and a
modifier given an empty text there is taken out. A job names modifiers (``--modifiers
artstation,oil``): their texts are appended to the prompt's first part the way people write
them ("a castle, oil painting, trending on artstation"), and the recipe keeps their names so the
keep-rate report can say which ones make keepers.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from importlib import resources

from gallery.errors import BadRequest
from gallery.files import write_bytes
from gallery.instance import Instance
from gallery.recipe import Recipe

from .prompts import split_unescaped

KINDS = ("medium", "site", "artist", "quality")
_NAME = re.compile(r"^[#0-9A-Za-z_'-]{1,40}$")


@dataclass(frozen=True)
class Modifier:
    """One modifier: its short name, its kind and the text it appends."""

    name: str
    kind: str
    text: str


def _shipped() -> dict:
    return json.loads(resources.files(__package__).joinpath("modifiers.json").read_text())


def _own(instance: Instance) -> dict:
    path = instance.modifiers_path
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadRequest(f"{path} is not a modifiers file ({e}); fix it or delete it") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise BadRequest(f"{path} must map kinds to {{name: text}} objects")
    return data


def library(instance: Instance) -> dict[str, Modifier]:
    """Every modifier by name: the shipped ones with the user's added and overriding."""
    out: dict[str, Modifier] = {}
    for source in (_shipped(), _own(instance)):
        for kind, names in source.items():
            for name, text in names.items():
                out.pop(name, None)
                if isinstance(text, str) and text.strip():
                    out[name] = Modifier(name, kind, text.strip())
    return out


def by_kind(instance: Instance) -> dict[str, list[Modifier]]:
    """The library grouped by kind, the shipped kinds first."""
    groups: dict[str, list[Modifier]] = {k: [] for k in KINDS}
    for m in library(instance).values():
        groups.setdefault(m.kind, []).append(m)
    return {k: v for k, v in groups.items() if v}


def parse_names(text: str | None) -> tuple[str, ...]:
    """``"artstation, oil"`` as a tuple of names (repeats dropped)."""
    return tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))


def append(prompt: str, texts: list[str]) -> str:
    """The prompt with texts appended to its first part (before that part's weight, if it has one)."""
    if not texts:
        return prompt
    parts = split_unescaped(prompt, "|", braces=True)
    pieces = split_unescaped(parts[0], ":", braces=True)
    pieces[0] = ", ".join([pieces[0].rstrip(" ,"), *[t.replace(":", "\\:").replace("|", "\\|") for t in texts]])
    parts[0] = ":".join(pieces)
    return "|".join(parts)


def with_modifiers(recipe: Recipe, names, instance: Instance) -> Recipe:
    """The recipe with these modifiers' texts appended to its prompt and their names recorded."""
    names = parse_names(names) if isinstance(names, str) or names is None else tuple(dict.fromkeys(names))
    if not names:
        return recipe
    lib = library(instance)
    unknown = [n for n in names if n not in lib]
    if unknown:
        raise BadRequest(f"unknown modifier {unknown[0]!r}; `clip-curator modifiers` lists them")
    fresh = [n for n in names if n not in recipe.modifiers]
    return dataclasses.replace(recipe, prompt=append(recipe.prompt, [lib[n].text for n in fresh]),
                               modifiers=(*recipe.modifiers, *fresh))


def save_own(instance: Instance, kind: str, name: str, text: str) -> None:
    """Add, change or (with empty text) take out a modifier in the user's own file."""
    if not _NAME.match(name):
        raise BadRequest(f"a modifier name is 1-40 letters, digits, #, ', _ or -, not {name!r}")
    if kind not in KINDS and not re.match(r"^[a-z]{1,20}$", kind):
        raise BadRequest(f"a modifier kind is one of {', '.join(KINDS)} or a short lower-case word")
    if len(text) > 200 or any(ord(c) < 32 for c in text):
        raise BadRequest("a modifier's text is at most 200 characters on one line")
    own = _own(instance)
    for names in own.values():
        names.pop(name, None)
    own.setdefault(kind, {})[name] = text.strip()
    write_bytes(instance.modifiers_path, (json.dumps(own, indent=2, sort_keys=True) + "\n").encode())
