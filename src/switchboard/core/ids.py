"""LiveKit-style identifiers: a type prefix and 12 characters of the base57 shortuuid alphabet."""

import secrets

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

ROOM = "RM_"
PARTICIPANT = "PA_"
TRACK = "TR_"
DISPATCH = "AD_"
JOB = "AJ_"
WORKER = "AW_"


def new_id(prefix: str) -> str:
    """A fresh random id such as ``AD_x7Fq2k9PzLmN``."""
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(12))
