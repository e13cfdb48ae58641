"""Model text made visible: what the HTML pages and the plot labels show for a prompt's characters.

Dreamed text is data. A newline is shown as ⏎ (the line does not break), a tab as →, and every other
control or invisible formatting character as a Python-style escape (`\\x07`, `\\u200b`), so that nothing a
model writes is hidden or reflows the page. Everything else is shown as it is.
"""

from __future__ import annotations

import unicodedata

NEWLINE, TAB = "⏎", "→"


def escape(char: str) -> str:
    """One character as a Python-style escape: \\x07, \\u4e2d, \\U0001f600."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text) -> str:
    """`text` with newlines as ⏎, tabs as → and other control or format characters escaped."""
    out = []
    for char in str(text):
        if char == "\n":
            out.append(NEWLINE)
        elif char == "\t":
            out.append(TAB)
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(escape(char))
        else:
            out.append(char)
    return "".join(out)
