"""Text that matplotlib can draw. User text in a plot (a run folder's name, a class name, a
sampler) may hold surrogates (the undecodable bytes of a file name), characters the font lacks,
or `$` signs that start mathtext; any of them makes drawing fail. Each is replaced or escaped."""

from __future__ import annotations

import functools

REPLACEMENT = "\ufffd"


@functools.lru_cache(maxsize=1)
def _font_chars() -> frozenset[int]:
    """Code points of matplotlib's default font (DejaVu Sans unless configured otherwise)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def drawable(text: object) -> str:
    """`text` with surrogates and characters the font cannot render as U+FFFD, `$` escaped."""
    s = str(text)
    chars = _font_chars()
    out = []
    for c in s:
        cp = ord(c)
        if 0xD800 <= cp <= 0xDFFF or (chars and cp >= 0x80 and cp not in chars):
            out.append(REPLACEMENT if not chars or ord(REPLACEMENT) in chars else "?")
        elif c == "$":
            out.append(r"\$")
        else:
            out.append(c)
    return "".join(out)
