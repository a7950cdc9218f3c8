"""`python -m relay.settings [--write]`: print docs/configuration.md as the settings declare it, or rewrite it."""

from __future__ import annotations

import sys

from relay.settings.docs import DOCUMENT, NAME, render


def main(argv: list[str]) -> int:
    if argv not in ([], ["--write"]):
        sys.stderr.write("usage: python -m relay.settings [--write]  (in a checkout of the repository)\n")
        return 2
    try:
        current = DOCUMENT.read_text(encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"{NAME}: cannot read it ({exc.strerror}); run from a checkout of the repository\n")
        return 2
    wanted = render(current)
    if argv:
        DOCUMENT.write_text(wanted, encoding="utf-8")
        sys.stdout.write(f"{NAME}: {'rewritten' if wanted != current else 'already up to date'}\n")
    else:
        sys.stdout.write(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
