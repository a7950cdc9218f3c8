"""MyTPE's masked secret (the legacy API shows a secret so after its creation): what it says of a secret held."""

from __future__ import annotations


def masked_matches(masked: str | None, secret: str) -> bool:
    """Whether MyTPE's masked secret (`****…sec_a1b2c3`) can be `secret`: its visible part ends it, or is found in
    it holding at least MASK_RANDOM characters past a piece of `whsec_` (MyTPE's docs show 36 asterisks, then
    `sec_a1b2c3`: the tail of a short example secret, or characters 2 to 11 of a whole one; either is read)."""
    if masked is None or not mask_readable(masked):
        return False
    visible = masked.lstrip("*")
    prefix = next((len(piece) for piece in _PREFIX_PIECES if visible.startswith(piece)), 0)
    return secret.endswith(visible) or (len(visible) - prefix >= MASK_RANDOM and visible in secret)


MASK_RANDOM = 6
"""Random characters (24 bits) a visible part found inside a secret must hold to say it is that secret."""
_PREFIX_PIECES = ("whsec_", "hsec_", "sec_", "ec_", "c_", "_")


def mask_readable(masked: str | None) -> bool:
    """Whether `masked` has the shape MyTPE documents (asterisks, then a visible tail), so that a secret it does
    not match is another secret. Another shape (`whsec_****a1b2`, all asterisks) says nothing either way."""
    visible = (masked or "").lstrip("*")
    return bool(visible) and len(visible) < len(masked or "") and "*" not in visible
