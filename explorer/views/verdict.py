"""The story checker's verdict on a run, in the one position system the app uses everywhere:
positions in the generated part (0 = the first generated token), as the token view, the
heatmaps and the CLI's step lines count them.

The checker (`models.checker`) numbers the words of the whole text, prompt included; the
embedded models' tokens are words, so a checked word is a generated token exactly when its
index is at or past the prompt's word count. Pure: words in, marks out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from explorer.store.arrays import RunArrays
from models.checker import CheckResult, Violation, check


@dataclass(frozen=True)
class TokenMark:
    """One violation as it touches one generated token."""

    kind: str  # the checker's kind, e.g. "a_an"
    message: str
    culprit: bool  # the token the checker blames first (other positions are what it disagrees with)


@dataclass(frozen=True)
class Verdict:
    """The checker's result with positions moved into the generated part."""

    result: CheckResult
    n_prompt_words: int

    @property
    def valid(self) -> bool:
        return self.result.valid

    def generated(self, violation: Violation) -> tuple[int, ...]:
        """The violation's positions in the generated part (prompt words left out)."""
        return tuple(p - self.n_prompt_words for p in violation.positions if p >= self.n_prompt_words)

    def marks(self) -> dict[int, list[TokenMark]]:
        """generated position -> the violations touching that token, in the checker's order."""
        out: dict[int, list[TokenMark]] = {}
        for violation in self.result.violations:
            positions = violation.positions
            for p in positions:
                if p >= self.n_prompt_words:
                    mark = TokenMark(violation.kind, violation.message, p == positions[0])
                    out.setdefault(p - self.n_prompt_words, []).append(mark)
        return out

    def line(self) -> str:
        """'valid', or 'a_an@4: 'a' before 'owl' (should be 'an'); ...' at the culprit's generated
        position ('prompt' where the checker blames a prompt word)."""
        if self.valid:
            return "valid"
        parts = []
        for v in self.result.violations:
            where = self.generated(v)
            at = str(where[0]) if where and v.positions[0] >= self.n_prompt_words else "prompt"
            parts.append(f"{v.kind}@{at}: {v.message}")
        return "; ".join(parts)

    def short(self) -> str:
        """'valid' or '3 violation(s): a_an, syntax' (the run summary's form)."""
        if self.valid:
            return "valid"
        kinds = ", ".join(sorted({v.kind for v in self.result.violations}))
        return f"{len(self.result.violations)} violation(s): {kinds}"


def verdict_of(prompt: str | Sequence[str], generated: Sequence[str]) -> Verdict:
    """Check the prompt's words followed by the generated tokens' texts (one word each). `prompt`:
    its tokens' texts (exact), or a string split at white space (a prompt such as "time." that the
    tokenizer splits into two words is then miscounted: pass the tokens where they are known)."""
    prompt_words = prompt.split() if isinstance(prompt, str) else list(prompt)
    return Verdict(check([*prompt_words, *generated]), len(prompt_words))


def final_verdict(arrays: RunArrays, token_text: Callable[[int], str]) -> Verdict | None:
    """The verdict on a run's final tokens (its prompt read from its token ids where stored, so a
    prompt the tokenizer splits unlike white space is counted right); None while masks are left.
    Whether the checker applies to the run's model is the caller's question."""
    if arrays.n_steps == 0:
        return None
    final = arrays.tokens[:, -1].tolist()
    if any(t == int(arrays.run["mask_id"]) for t in final):
        return None
    prompt_ids = arrays.run.get("prompt_ids")
    prompt = [token_text(int(t)) for t in prompt_ids] if prompt_ids else str(arrays.run.get("prompt") or "")
    return verdict_of(prompt, [token_text(int(t)) for t in final])
