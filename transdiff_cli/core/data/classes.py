"""`--class` values -> class indices: an integer, a name from the checkpoint's own class list, or an
ImageNet name (timm's ImageNetInfo: exact synonym first, e.g. "tiger" -> 292 "tiger, Panthera
tigris", then a unique prefix). Unknown or ambiguous names fail with the closest candidates."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from functools import lru_cache

from ..errors import TransDiffError

IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[str, ...]:
    """The 1000 ImageNet-1k descriptions ("tiger, Panthera tigris"), index order (timm, offline)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def _synonyms(description: str) -> list[str]:
    return [s.strip() for s in description.split(",") if s.strip()]


def _match(query: str, names: Sequence[str], split_synonyms: bool) -> list[int]:
    """Indices whose name (or one of its comma-separated synonyms) equals `query`; failing that,
    those with a name starting with it. Case-insensitive."""
    q = query.strip().lower()
    entries = [(i, [s.lower() for s in (_synonyms(n) if split_synonyms else [n])] + [n.lower()])
               for i, n in enumerate(names)]
    exact = [i for i, syns in entries if q in syns]
    if exact:
        return exact
    return [i for i, syns in entries if any(s.startswith(q) for s in syns)]


def _closest(query: str, names: Sequence[str], split_synonyms: bool, n: int = 5) -> list[str]:
    pool: dict[str, int] = {}
    for i, name in enumerate(names):
        for s in (_synonyms(name) if split_synonyms else [name]):
            pool.setdefault(s.lower(), i)
    close = difflib.get_close_matches(query.strip().lower(), list(pool), n=n, cutoff=0.5)
    return [f"{s!r} ({pool[s]})" for s in close]


def _describe(indices: Iterable[int], names: Sequence[str], limit: int = 6) -> str:
    idx = list(indices)
    shown = ", ".join(f"{i} {names[i]!r}" for i in idx[:limit])
    return shown + (f", ... ({len(idx)} in all)" if len(idx) > limit else "")


def _index(text: str, num_classes: int) -> int:
    try:
        index = int(text)
    except ValueError:
        raise TransDiffError(f"`class` index:{text}: not an integer") from None
    if not 0 <= index < num_classes:
        raise TransDiffError(f"class index {index} is out of range: the checkpoint has {num_classes} "
                             f"classes (0-{num_classes - 1})")
    return index


def resolve_class(value: str | int, num_classes: int, class_names: Sequence[str] | None = None,
                  warnings: list[str] | None = None) -> int:
    """One class value -> its index, checked against the checkpoint's class count. `index:N` and
    `name:X` force one reading; a bare number is an index unless only a class of that name exists,
    and `warnings` is told when the two readings differ."""
    text = str(value).strip()
    if not text:
        raise TransDiffError("empty `class` value")
    kind, sep, rest = text.partition(":")
    if sep and kind in ("index", "name"):
        if kind == "index":
            return _index(rest.strip(), num_classes)
        return _by_name(rest.strip(), num_classes, class_names)
    if text.lstrip("-").isdigit():
        named = [i for i, n in enumerate(class_names or []) if str(n).strip() == text and i < num_classes]
        if named and not 0 <= int(text) < num_classes:
            if warnings is not None:
                warnings.append(f"`class` {text} is read as the class named {text!r} (index {named[0]}): "
                                f"there is no index {text}")
            return named[0]
        index = _index(text, num_classes)
        if named and named[0] != index and warnings is not None:
            warnings.append(f"`class` {text} is read as index {index} ({class_names[index]!r}), but class "
                            f"{named[0]} is named {text!r}: pass `class` name:{text} for that one, or "
                            f"index:{text} to keep this reading")
        return index
    return _by_name(text, num_classes, class_names)


def _by_name(text: str, num_classes: int, class_names: Sequence[str] | None) -> int:
    if not text:
        raise TransDiffError("empty `class` name")
    # the checkpoint's own names first (digits, shapes, ...): they are what it was trained on
    tables: list[tuple[str, Sequence[str], bool]] = []
    if class_names:
        tables.append(("the checkpoint's class names", class_names, False))
    tables.append(("ImageNet class names", imagenet_descriptions(), True))
    for where, names, split in tables:
        hits = _match(text, names, split)
        if len(hits) > 1:
            raise TransDiffError(f"class {text!r} is ambiguous in {where}: {_describe(hits, names)}; "
                                 "pass the index or a longer name")
        if hits:
            index = hits[0]
            if index >= num_classes:
                raise TransDiffError(f"class {text!r} is ImageNet class {index} ({names[index]!r}) but the "
                                     f"checkpoint has only {num_classes} classes (0-{num_classes - 1})")
            return index
    where, names, split = tables[0]
    close = _closest(text, names, split)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise TransDiffError(f"unknown class {text!r} (not an index, not in {where}){hint}")


def resolve_classes(values: Sequence[str | int] | None, num_classes: int,
                    class_names: Sequence[str] | None = None, warnings: list[str] | None = None) -> list[int]:
    """Several `--class` values, each possibly a comma list ("207,tiger"). A value that is itself a
    whole name with commas ("tiger, Panthera tigris") is tried whole first. None/empty -> every class."""
    if not values:
        return list(range(num_classes))
    out: list[int] = []
    for value in values:
        text = str(value)
        if "," in text:
            try:
                out.append(resolve_class(text, num_classes, class_names, warnings))
                continue
            except TransDiffError:
                pass
            out.extend(resolve_class(part, num_classes, class_names, warnings)
                       for part in text.split(",") if part.strip())
        else:
            out.append(resolve_class(text, num_classes, class_names, warnings))
    return out


def class_label(index: int, num_classes: int, class_names: Sequence[str] | None = None) -> str:
    """A short human name for an index: the checkpoint's name, the first ImageNet synonym for a
    1000-class model, else the number."""
    if class_names and index < len(class_names):
        return str(class_names[index])
    if num_classes == IMAGENET_CLASSES:
        return _synonyms(imagenet_descriptions()[index])[0]
    return str(index)
