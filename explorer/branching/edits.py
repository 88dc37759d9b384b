"""A branch's edits as a person writes them, and their resolution against a model's vocabulary.

`Force(position, token)`: put a token at a generated position; `token` is the token's text
("girl"; the tokenizer of the run's model) or its id (an int, or "#123" on the command line).
`Remask(position)`: turn a committed position back into a mask. Positions count from the first
generated token (0..G-1): the prompt cannot be edited.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from explorer.decoding.protocols import Denoiser


class EditError(ValueError):
    """An edit that cannot be made; the one-line message names the valid range or close words."""


@dataclass(frozen=True)
class Force:
    position: int
    token: int | str  # an id, or the token's text


@dataclass(frozen=True)
class Remask:
    position: int


EditSpec = Force | Remask


def parse_force(text: str) -> Force:
    """'POS=WORD' or 'POS=#ID' (the command line's --force)."""
    position, sep, token = text.partition("=")
    if not sep or not token:
        raise EditError(f"--force {text!r}: write POSITION=WORD or POSITION=#ID, e.g. --force 7=girl")
    return Force(parse_position(position, "--force"), parse_token(token))


def parse_token(text: str) -> int | str:
    """'#123' -> the id 123; anything else is the token's text."""
    return int(text[1:]) if text.startswith("#") and text[1:].isdigit() else text


def parse_position(text: str, flag: str = "--remask") -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise EditError(f"{flag} {text!r}: a position is a whole number (0 = the first generated token)") from None


def resolve_token(denoiser: Denoiser, token: int | str) -> int:
    """The id of a token given by id or text; EditError naming close words if it is unknown, or
    if it is the mask or a special token (an edit writes ordinary tokens only)."""
    special = special_ids(denoiser)
    if isinstance(token, bool) or not isinstance(token, (int, str)):
        raise EditError(f"a token is given as its text or its id, got {token!r}")
    if isinstance(token, int):
        vocab_size = getattr(denoiser, "vocab_size", None)
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise EditError(f"token id {token} is out of range; valid: 0..{(vocab_size or 1) - 1}")
        token_id = token
    else:
        vocabulary = _vocabulary(denoiser)
        token_id = vocabulary.get(token, vocabulary.get(token.strip()))
        if token_id is None:
            if any(denoiser.token_text(i) == token for i in special):
                raise EditError(f"{token!r} is a special token of model {denoiser.name!r}: an edit cannot write it")
            close = difflib.get_close_matches(token.strip(), list(vocabulary), n=5, cutoff=0.6)
            hint = f"; close words: {', '.join(close)}" if close else ""
            raise EditError(f"{token!r} is not a token of model {denoiser.name!r}{hint}")
    if token_id == denoiser.mask_id:
        raise EditError("an edit cannot force the mask token; use a re-mask to mask a position")
    if token_id in special:
        raise EditError(
            f"token {token_id} ({denoiser.token_text(token_id)!r}) is a special token of model "
            f"{denoiser.name!r}: an edit cannot write it"
        )
    return token_id


def _vocabulary(denoiser: Denoiser) -> dict[str, int]:
    if not hasattr(denoiser, "vocabulary"):
        raise EditError(f"model {denoiser.name!r} does not list its vocabulary: give the token as an id (#123)")
    return denoiser.vocabulary()


def special_ids(denoiser: Denoiser) -> frozenset[int]:
    """The ids no edit (nor the alternatives analysis) writes: the model's, else its mask."""
    return denoiser.special_ids() if hasattr(denoiser, "special_ids") else frozenset({denoiser.mask_id})
