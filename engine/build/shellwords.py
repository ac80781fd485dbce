"""Dockerfile variable substitution and word splitting, as moby's shell lexer does it.

`$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`, `${VAR:?msg}`,
`${VAR?msg}`; single quotes are literal, double quotes allow substitution, the escape character
(`\\` or the `# escape=` directive's) makes the next character literal. Quotes are removed.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from dockyard.engine.errors import InvalidParameter

# A value may refer to itself (ENV A=$A$A): without a bound, a few lines would exhaust memory.
MAX_EXPANSION = 1 << 20
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class SubstitutionError(InvalidParameter):
    """A `${VAR:?message}` on an unset variable, or a malformed `${...}`."""


def env_map(env: Iterable[str]) -> dict[str, str]:
    """['A=1', 'B=2'] -> {'A': '1', 'B': '2'} (later entries win)."""
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch


class Lexer:
    """Substitutes variables in Dockerfile words; `escape` is the Dockerfile's escape character."""

    def __init__(self, escape: str = "\\") -> None:
        self.escape = escape

    def word(self, text: str, env: Mapping[str, str]) -> str:
        """One word: substitutions done, quotes removed (ENV/LABEL values, WORKDIR, USER ...)."""
        words = self._process(text, env, split=False)
        return words[0] if words else ""

    def words(self, text: str, env: Mapping[str, str]) -> list[str]:
        """Split on unquoted whitespace, then substitute (EXPOSE, VOLUME, COPY sources ...)."""
        return self._process(text, env, split=True)

    # -- the scanner ---------------------------------------------------------------------------
    def _process(self, text, env, split):
        words = self._scan(text, env, split)
        if sum(len(w) for w in words) > MAX_EXPANSION:
            raise SubstitutionError("variable substitution makes a word longer than %d bytes" % MAX_EXPANSION)
        return words

    def _scan(self, text, env, split):
        sc = _Scanner(text)
        words: list[str] = []
        cur: list[str] = []
        started = False
        while True:
            ch = sc.peek()
            if not ch:
                break
            if split and ch in " \t\r\n":
                sc.next()
                if started:
                    words.append("".join(cur))
                    cur, started = [], False
                continue
            started = True
            if ch == self.escape:
                sc.next()
                nxt = sc.next()
                if nxt:
                    cur.append(nxt)
            elif ch == "'":
                sc.next()
                cur.append(self._single(sc))
            elif ch == '"':
                sc.next()
                cur.append(self._double(sc, env))
            elif ch == "$":
                sc.next()
                value = self._dollar(sc, env)
                if split:
                    # An unquoted expansion is split on whitespace like the shell does.
                    pieces = value.split()
                    if not pieces and value:
                        if cur:
                            words.append("".join(cur))
                        cur, started = [], False
                        continue
                    if pieces and value[:1].isspace() and cur:
                        words.append("".join(cur))
                        cur = []
                    for i, piece in enumerate(pieces):
                        if i:
                            words.append("".join(cur))
                            cur = []
                        cur.append(piece)
                    if pieces and value[-1:].isspace():
                        words.append("".join(cur))
                        cur, started = [], False
                else:
                    cur.append(value)
            else:
                sc.next()
                cur.append(ch)
        if started or not split:
            words.append("".join(cur))
        return words

    def _single(self, sc):
        out = []
        while True:
            ch = sc.next()
            if not ch:
                raise SubstitutionError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def _double(self, sc, env):
        out = []
        while True:
            ch = sc.next()
            if not ch:
                raise SubstitutionError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                return "".join(out)
            if ch == "$":
                out.append(self._dollar(sc, env))
                continue
            if ch == self.escape and sc.peek() in ('"', "$", self.escape):
                ch = sc.next()
            out.append(ch)

    def _name(self, sc):
        out = []
        while sc.peek() and sc.peek() in _NAME_CHARS:
            out.append(sc.next())
        return "".join(out)

    def _dollar(self, sc, env):
        value = self._dollar_value(sc, env)
        if len(value) > MAX_EXPANSION:
            raise SubstitutionError("variable substitution makes a word longer than %d bytes" % MAX_EXPANSION)
        return value

    def _dollar_value(self, sc, env):
        if sc.peek() != "{":
            name = self._name(sc)
            if not name:
                return "$"
            return env.get(name, "")
        sc.next()
        name = self._name(sc)
        if not name:
            raise SubstitutionError("bad substitution: missing variable name in ${}")
        ch = sc.next()
        if ch == "}":
            return env.get(name, "")
        colon = ch == ":"
        if colon:
            ch = sc.next()
        if ch not in ("-", "+", "?"):
            raise SubstitutionError("unsupported modifier (%s%s) in substitution" % (":" if colon else "", ch))
        word = self._until_brace(sc, env)
        is_set = name in env
        value = env.get(name, "")
        present = bool(value) if colon else is_set
        if ch == "-":
            return value if present else word
        if ch == "+":
            return word if present else ""
        if not present:
            raise SubstitutionError("%s: %s" % (name, word or "is not allowed to be unset"))
        return value

    def _until_brace(self, sc, env):
        out = []
        while True:
            ch = sc.next()
            if not ch:
                raise SubstitutionError("syntax error: missing '}'")
            if ch == "}":
                return "".join(out)
            if ch == self.escape:
                nxt = sc.next()
                if nxt:
                    out.append(nxt)
            elif ch == "'":
                out.append(self._single(sc))
            elif ch == '"':
                out.append(self._double(sc, env))
            elif ch == "$":
                out.append(self._dollar(sc, env))
            else:
                out.append(ch)
