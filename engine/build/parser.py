"""Dockerfile parsing: parser directives, comments, line continuations, instructions and their flags.

The result is a list of Instruction (one per instruction, continuations joined); arguments are
not substituted here (the builder does that with the stage's variables at the time of the step).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from dockyard.engine.errors import InvalidParameter

INSTRUCTIONS = (
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
)
# Instructions whose argument may be a JSON array (exec form).
JSON_FORMS = ("run", "cmd", "entrypoint", "copy", "add", "volume", "shell")
# Flags each instruction accepts (classic builder); anything else is refused by name.
FLAGS = {
    "from": ("platform",),
    "copy": ("from", "chown", "chmod", "link", "parents", "exclude"),
    "add": ("chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"),
    "run": ("mount", "network", "security"),
    "healthcheck": ("interval", "timeout", "start-period", "start-interval", "retries"),
}
MAX_DOCKERFILE = 4 << 20
# Every step is an image whose config carries the history so far: bound the work a Dockerfile can ask for.
MAX_INSTRUCTIONS = 1000

_DIRECTIVE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_KNOWN_DIRECTIVES = ("escape", "syntax", "check")
_FLAG = re.compile(r"^--([a-zA-Z][a-zA-Z0-9-]*)(?:=(.*))?$", re.S)


class ParseError(InvalidParameter):
    """The Dockerfile cannot be parsed; the message says where (moby's wording)."""


@dataclass
class Instruction:
    cmd: str  # lower case: "run", "copy", ...
    original: str  # the instruction as written, continuations joined (shown in "Step N/M : ...")
    line: int  # first line, 1-based
    rest: str  # everything after the flags
    flags: dict[str, list[str]] = field(default_factory=dict)
    json_args: list[str] | None = None  # exec form (JSON array), when the instruction took one

    def flag(self, name: str, default: str | None = None) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else default


@dataclass
class Dockerfile:
    escape: str
    instructions: list[Instruction]


def _logical_lines(lines, escape):
    """Yield (line_no, text) of each instruction, comments dropped and continuations joined."""
    cont = re.compile(re.escape(escape) + r"[ \t]*$")
    i = 0
    while i < len(lines):
        raw = lines[i]
        i += 1
        stripped = raw.lstrip(" \t")
        if not stripped.strip() or stripped.startswith("#"):
            continue
        start = i
        text = stripped.rstrip("\r")
        parts = []
        while True:
            m = cont.search(text)
            if not m:
                parts.append(text)
                break
            parts.append(text[: m.start()])
            # Continuation: skip comment lines and empty lines inside it (moby does).
            while i < len(lines):
                nxt = lines[i].rstrip("\r")
                if nxt.lstrip(" \t").startswith("#") or not nxt.strip():
                    i += 1
                    continue
                break
            if i >= len(lines):
                break
            text = lines[i].rstrip("\r")
            i += 1
        yield start, "".join(parts)


def split_flags(rest: str) -> tuple[dict[str, list[str]], str]:
    """Leading `--name=value` words -> ({name: [values]}, remainder)."""
    flags: dict[str, list[str]] = {}
    while True:
        rest = rest.lstrip(" \t")
        if not rest.startswith("--"):
            return flags, rest
        m = re.match(r"\S+", rest)
        word = m.group(0) if m else ""
        if word == "--":
            return flags, rest[2:].lstrip(" \t")
        fm = _FLAG.match(word)
        if not fm:
            return flags, rest
        flags.setdefault(fm.group(1).lower(), []).append(fm.group(2) if fm.group(2) is not None else "true")
        rest = rest[len(word) :]


def json_array(rest: str) -> list[str] | None:
    """The exec form: a JSON array of strings, else None (then the shell form applies)."""
    text = rest.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def parse_instruction(line_no: int, text: str, escape: str, nested: bool = False) -> Instruction:
    m = re.match(r"^[ \t]*(\S+)[ \t]*(.*)$", text, re.S)
    if not m:
        raise ParseError("dockerfile parse error on line %d: empty instruction" % line_no)
    word, rest = m.group(1), m.group(2).rstrip(" \t")
    cmd = word.lower()
    if cmd not in INSTRUCTIONS:
        raise ParseError("dockerfile parse error on line %d: unknown instruction: %s" % (line_no, word.upper()))
    flags: dict[str, list[str]] = {}
    if cmd in FLAGS:
        flags, rest = split_flags(rest)
        for name in flags:
            if name not in FLAGS[cmd]:
                raise ParseError("dockerfile parse error on line %d: unknown flag: %s" % (line_no, name))
    inst = Instruction(cmd=cmd, original=text.strip(), line=line_no, rest=rest, flags=flags)
    if cmd in JSON_FORMS:
        inst.json_args = json_array(rest)
    if cmd == "onbuild":
        inner = rest.strip()
        if not inner:
            raise ParseError("dockerfile parse error on line %d: ONBUILD requires at least one argument" % line_no)
        inner_cmd = inner.split(None, 1)[0].lower()
        if inner_cmd in ("onbuild", "from", "maintainer"):
            raise ParseError("%s isn't allowed as an ONBUILD trigger" % inner_cmd.upper())
        parse_instruction(line_no, inner, escape, nested=True)  # refuse a bad trigger now, not at use
    if nested and cmd == "onbuild":
        raise ParseError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    _check_arity(inst)
    return inst


_NEEDS_ARGS = ("add", "copy", "arg", "env", "label", "expose", "from", "user", "workdir", "volume", "stopsignal", "run")


def _check_arity(inst):
    if inst.cmd in _NEEDS_ARGS and not inst.rest.strip():
        raise ParseError(
            "dockerfile parse error on line %d: %s requires at least one argument" % (inst.line, inst.cmd.upper())
        )
    if inst.cmd in ("copy", "add"):
        n = len(inst.json_args) if inst.json_args is not None else len(inst.rest.split())
        if n < 2:
            raise ParseError(
                "dockerfile parse error on line %d: %s requires at least two arguments, but only one was provided."
                " Destination could not be determined." % (inst.line, inst.cmd.upper())
            )
    if inst.cmd == "shell" and inst.json_args is None:
        raise ParseError(
            "dockerfile parse error on line %d: SHELL requires the arguments to be in JSON form" % inst.line
        )
    if inst.cmd == "stopsignal" and len(inst.rest.split()) > 1:
        raise ParseError("dockerfile parse error on line %d: STOPSIGNAL requires exactly one argument" % inst.line)


def parse(data: bytes) -> Dockerfile:
    """Parse a Dockerfile; ParseError (400) on anything moby's parser refuses."""
    if len(data) > MAX_DOCKERFILE:
        raise ParseError("the Dockerfile is larger than %d bytes" % MAX_DOCKERFILE)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("the Dockerfile is not valid UTF-8") from None
    lines = text.split("\n")
    escape = "\\"
    seen: set[str] = set()
    first = 0
    for idx, line in enumerate(lines):
        m = _DIRECTIVE.match(line.rstrip("\r"))
        if not m or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        name, value = m.group(1).lower(), m.group(2)
        if name in seen:
            raise ParseError("only one %s parser directive can be used" % name)
        seen.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise ParseError("invalid escape token '%s' does not match ` or \\" % value)
            escape = value
        first = idx + 1
    instructions = [parse_instruction(no + first, t, escape) for no, t in _logical_lines(lines[first:], escape)]
    if not instructions:
        raise ParseError("the Dockerfile (Dockerfile) cannot be empty")
    if len(instructions) > MAX_INSTRUCTIONS:
        raise ParseError(
            "the Dockerfile has %d instructions: at most %d are built" % (len(instructions), MAX_INSTRUCTIONS)
        )
    return Dockerfile(escape=escape, instructions=instructions)


def parse_words(rest: str, escape: str) -> list[str]:
    """moby's parseWords: split on whitespace outside quotes; quotes and escapes are kept for later."""
    words: list[str] = []
    word = ""
    in_word = False
    quote = ""
    blank_ok = False
    i = 0
    n = len(rest)
    while i < n:
        ch = rest[i]
        if quote:
            word += ch
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'" and i + 1 < n:
                i += 1
                word += rest[i]
            i += 1
            continue
        if ch in " \t\r\n":
            if in_word and (blank_ok or word):
                words.append(word)
            word, in_word, blank_ok = "", False, False
            i += 1
            continue
        in_word = True
        if ch in ("'", '"'):
            quote = ch
            blank_ok = True
        if ch == escape:
            if i + 1 == n:
                i += 1
                continue
            word += ch
            i += 1
            ch = rest[i]
        word += ch
        i += 1
    if in_word and (blank_ok or word):
        words.append(word)
    return words


def name_values(inst: Instruction, escape: str) -> list[tuple[str, str]]:
    """ENV/LABEL arguments -> [(name, raw value)] (values still to be substituted and unquoted)."""
    words = parse_words(inst.rest, escape)
    what = inst.cmd.upper()
    if not words:
        raise ParseError("%s requires at least one argument" % what)
    if "=" not in words[0]:
        # Legacy form: `ENV name value with spaces`.
        parts = inst.rest.strip().split(None, 1)
        if len(parts) < 2:
            raise ParseError("%s must have two arguments" % what)
        return [(parts[0], parts[1])]
    out = []
    for word in words:
        if "=" not in word:
            raise ParseError("Syntax error - can't find = in %r. Must be of the form: name=value" % word)
        name, _, value = word.partition("=")
        if not name:
            raise ParseError("%s names can not be blank" % what)
        out.append((name, value))
    return out
