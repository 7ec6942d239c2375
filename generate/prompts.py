"""Parse weighted prompts: ``"a red fish:1|trending on artstation:0.5|blurry:-0.3"``.

Parts are separated by ``|``; a part may end in ``:WEIGHT`` (default 1). A literal colon or bar
is written ``\\:`` or ``\\|``. Negative weights push away from a text.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gallery.errors import BadRequest

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
MAX_PROMPT_CHARS = 2000


@dataclass(frozen=True)
class WeightedText:
    """One prompt part and its weight."""

    text: str
    weight: float


def split_unescaped(s: str, sep: str, braces: bool = False) -> list[str]:
    """Split at unescaped ``sep``; with ``braces``, not inside a variation template's ``{...}``."""
    parts, cur, i, depth = [], [], 0, 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] in "|:\\":
            cur.append(s[i:i + 2])
            i += 2
            continue
        if braces and s[i] in "{}":
            depth = max(0, depth + (1 if s[i] == "{" else -1))
        if s[i] == sep and not depth:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(s[i])
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(s: str) -> str:
    return re.sub(r"\\([|:\\])", r"\1", s)


def parse_weight(raw: str, where: str) -> float:
    """A finite float weight, or a BadRequest naming the offending part."""
    raw = raw.strip()
    if not _NUMBER.match(raw):
        raise BadRequest(f"malformed weight {raw!r} in {where!r} (write a number after the colon, "
                         "or \\: for a literal colon)")
    w = float(raw)
    if not math.isfinite(w) or abs(w) > 1e4:
        raise BadRequest(f"weight {raw!r} in {where!r} is out of range")
    return w


def parse_prompt(prompt: str) -> list[WeightedText]:
    """Split a weighted multi-prompt into its parts; errors name the bad part."""
    if prompt is None or not prompt.strip():
        raise BadRequest("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"the prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    out = []
    for part in split_unescaped(prompt, "|"):
        pieces = split_unescaped(part, ":")
        if len(pieces) > 2:
            raise BadRequest(f"prompt part {part.strip()!r} has more than one weight")
        text = _unescape(pieces[0]).strip()
        weight = parse_weight(pieces[1], part.strip()) if len(pieces) == 2 else 1.0
        if not text:
            raise BadRequest(f"empty prompt part in {prompt!r}")
        out.append(WeightedText(text, weight))
    check_weights([p.weight for p in out])
    return out


def check_weights(weights: list[float]) -> None:
    """Guidance divides by the sum of weights, so it must not be zero."""
    if weights and abs(sum(weights)) < 1e-6:
        raise BadRequest("the prompt weights add up to zero; make at least one part outweigh the others")


@dataclass(frozen=True)
class ImagePromptRef:
    """An image used as a CLIP target: a file path or a gallery image id, with a weight."""

    ref: str
    weight: float = 1.0

    @property
    def image_id(self) -> int | None:
        """The gallery image id when the reference is one."""
        return int(self.ref) if self.ref.isdigit() else None


def parse_image_prompt(spec: str) -> ImagePromptRef:
    """``path/to/file.png``, ``path:0.5``, ``42`` (gallery image 42) or ``42:0.5``."""
    if not spec or not spec.strip():
        raise BadRequest("an image prompt is empty")
    spec = spec.strip()
    ref, weight = spec, 1.0
    if ":" in spec:
        head, tail = spec.rsplit(":", 1)
        if _NUMBER.match(tail.strip()):
            ref, weight = head, parse_weight(tail, spec)
    return ImagePromptRef(ref, weight)
