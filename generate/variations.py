"""Prompt variations: one job's template expanded into a prompt per image (the dynamicprompts syntax).

``{castle|cathedral} at dusk, {oil painting|watercolor}`` names variants; ``__colours__`` draws
from ``colours.txt`` in the instance's ``wildcards`` folder. Combinatorial jobs go through every
combination in turn (image i gets combination i modulo their number), random ones draw each image's
variant from its own seed, so both are reproducible. Each image's recipe carries its expansion as
its prompt and the template beside it, so search, filters and ``reproduce`` see what was used.
"""
from __future__ import annotations

import dataclasses
import logging
import re

from gallery.errors import BadRequest
from gallery.instance import Instance
from gallery.recipe import Recipe

from .prompts import parse_prompt

_LEFT_WILDCARD = re.compile(r"__([\w/.-]+)__")
CHECKED = 64  # expansions checked before a job is recorded


def has_variants(prompt: str) -> bool:
    """Whether a prompt uses the variation syntax at all."""
    return "{" in prompt or _LEFT_WILDCARD.search(prompt) is not None


def resolve_mode(mode: str, prompt: str) -> str:
    """``auto`` is combinatorial for a prompt with variation syntax, none for a plain one."""
    if mode == "auto":
        return "combinatorial" if has_variants(prompt) else "none"
    return mode


def _manager(instance: Instance):
    from dynamicprompts.wildcards import WildcardManager

    return WildcardManager(instance.wildcards_dir if instance.wildcards_dir.is_dir() else None)


def _checked(template: str, prompts: list[str], instance: Instance) -> list[str]:
    for p in prompts:
        left = _LEFT_WILDCARD.search(p)
        if left:
            raise BadRequest(f"wildcard __{left.group(1)}__ has no values: write them one per line in "
                             f"{instance.wildcards_dir / (left.group(1) + '.txt')}")
        if "{" in p or "}" in p:
            raise BadRequest(f"unbalanced braces in the template {template!r}")
    return prompts


def _expand(template: str, generate) -> list[str]:
    from pyparsing import ParseBaseException

    quiet = logging.getLogger("dynamicprompts")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a missing wildcard is reported as a BadRequest instead
    try:
        return [str(p) for p in generate()]
    except ParseBaseException as e:
        raise BadRequest(f"malformed template {template!r}: {e.msg} at character {e.loc + 1}") from None
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"malformed template {template!r}: {e}") from None
    finally:
        quiet.setLevel(level)


class Expander:
    """The prompts of one job's images, from its template."""

    def __init__(self, recipe: Recipe, n: int, instance: Instance):
        self.recipe, self.n, self.instance = recipe, n, instance
        self._combinations: list[str] | None = None

    @property
    def active(self) -> bool:
        """Whether this job's prompt is a template to expand (an image's recipe never is)."""
        return self.recipe.variations != "none" and self.recipe.template is None

    def combinations(self) -> list[str]:
        """A combinatorial job's prompts, one per combination (at most n)."""
        if self._combinations is None:
            from dynamicprompts.generators import CombinatorialPromptGenerator

            gen = CombinatorialPromptGenerator(_manager(self.instance))
            found = _expand(self.recipe.prompt, lambda: gen.generate(self.recipe.prompt, max_prompts=self.n))
            if not found:
                raise BadRequest(f"the template {self.recipe.prompt!r} expands to no prompt")
            self._combinations = _checked(self.recipe.prompt, found, self.instance)
        return self._combinations

    def prompt(self, index: int, seed: int) -> str:
        """The prompt of image ``index`` (seeded ``seed``)."""
        if self.recipe.variations == "combinatorial":
            found = self.combinations()
            return found[index % len(found)]
        from dynamicprompts.generators import RandomPromptGenerator

        gen = RandomPromptGenerator(_manager(self.instance), seed=seed)
        return _checked(self.recipe.prompt, _expand(self.recipe.prompt, lambda: gen.generate(self.recipe.prompt, 1)),
                        self.instance)[0]

    def image_recipe(self, recipe: Recipe, index: int, seed: int) -> Recipe:
        """``recipe`` (image ``index``'s so far) with its own prompt and the template recorded."""
        if not self.active:
            return recipe
        return dataclasses.replace(recipe, prompt=self.prompt(index, seed), template=self.recipe.prompt)

    def check(self, first_seed: int) -> None:
        """Expand the first images' prompts and check their syntax (BadRequest names the problem)."""
        if not self.active:
            return
        for i in range(min(self.n, CHECKED)):
            parse_prompt(self.prompt(i, first_seed + i))
