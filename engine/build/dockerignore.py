""".dockerignore patterns with Docker's semantics (moby/patternmatcher).

Each line is a pattern in Go filepath.Match syntax (`*`, `?`, `[...]`, `\\` escapes) plus `**`
(any number of directories); `!` makes an exception; `#` lines are comments. A path is excluded
when the last pattern that matches it, or one of its parent directories, is not an exception.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil

from dockyard.engine.errors import InvalidParameter

# `**` inside a segment needs a backtracking regular expression: bound how many it may hold.
MAX_INNER_DOUBLE_STARS = 3


class Pattern:
    """One pattern. Matching works segment by segment (`**` is zero or more whole segments, each
    other segment is a Go filepath.Match pattern): linear in the path, whatever the pattern. Only a
    `**` inside a segment (`a**b`, rare) is matched by the regular expression moby builds."""

    def __init__(self, text: str, exclusion: bool) -> None:
        self.text = text
        self.exclusion = exclusion
        segments = text.split("/")
        self.segments: list[str] | None = None
        self.regex = None
        if all(seg == "**" or "**" not in seg for seg in segments):
            collapsed: list[str] = []
            for seg in segments:
                if not (seg == "**" and collapsed and collapsed[-1] == "**"):
                    collapsed.append(seg)
            self.segments = [seg if seg == "**" else _fnmatch_form(seg) for seg in collapsed]
        else:
            if text.count("**") > MAX_INNER_DOUBLE_STARS:
                raise InvalidParameter("invalid .dockerignore pattern %r: too many '**'" % text)
            self.regex = re.compile(_to_regex(text), re.S)

    def match(self, path: str) -> bool:
        if self.regex is not None:
            return self.regex.match(path) is not None
        assert self.segments is not None
        return _match_segments(self.segments, path.split("/"))


def _fnmatch_form(seg):
    """A Go filepath.Match segment in fnmatch's syntax: `\\x` escapes and `[^...]` negation."""
    out = []
    i = 0
    while i < len(seg):
        ch = seg[i]
        if ch == "\\" and i + 1 < len(seg):
            out.append("[%s]" % seg[i + 1] if seg[i + 1] != "!" else "!")
            i += 2
            continue
        if ch == "[" and seg[i + 1 : i + 2] == "^":
            out.append("[!")
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _match_segments(segments, parts):
    """Does the pattern (segments, `**` = zero or more segments; a last `**`: one or more) match?"""
    n = len(parts)
    nxt = [False] * (n + 1)
    nxt[n] = True
    last = len(segments) - 1
    for i in range(last, -1, -1):
        seg = segments[i]
        cur = [False] * (n + 1)
        if seg == "**":
            if i == last:
                cur = [j < n for j in range(n + 1)]
            else:
                seen = False
                for j in range(n, -1, -1):
                    seen = seen or nxt[j]
                    cur[j] = seen
        else:
            for j in range(n):
                cur[j] = nxt[j + 1] and fnmatch.fnmatchcase(parts[j], seg)
        nxt = cur
    return nxt[0]


def _to_regex(pattern):
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                if i >= n:
                    out.append(".*")
                else:
                    out.append("(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i < n:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append("\\\\")
        elif ch == "[":
            end = pattern.find("]", i + 1 if i < n and pattern[i] in "^!" else i)
            if end < 0:
                out.append("\\[")
                continue
            body = pattern[i:end]
            i = end + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
        else:
            out.append(re.escape(ch))
    out.append("$")
    return "".join(out)


def parse(text: str) -> list[Pattern]:
    """The patterns of a .dockerignore file, in order."""
    patterns = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        if line:
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line.lstrip("/") or "/"
        patterns.append(Pattern(line, exclusion))
    return patterns


def excluded(patterns: list[Pattern], path: str) -> bool:
    """True if `path` (relative, '/'-separated) is excluded by the patterns."""
    matched = False
    parent = posixpath.dirname(path)
    parent_dirs = parent.split("/") if parent else []
    for pat in patterns:
        if pat.exclusion != matched:
            continue
        hit = pat.match(path)
        if not hit and parent_dirs:
            for i in range(len(parent_dirs)):
                if pat.match("/".join(parent_dirs[: i + 1])):
                    hit = True
                    break
        if hit:
            matched = not pat.exclusion
    return matched


def apply(root: str, patterns: list[Pattern], keep: tuple[str, ...] = ()) -> int:
    """Delete what the patterns exclude from the directory tree at root (never `keep`); -> count removed."""
    if not patterns:
        return 0
    removed = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for name in list(dirnames) + list(filenames):
            rel = posixpath.join(rel_dir, name) if rel_dir else name
            if rel in keep:
                continue
            if excluded(patterns, rel):
                full = os.path.join(dirpath, name)
                if name in dirnames and not os.path.islink(full):
                    # A later exception may re-include something below: only drop the files then.
                    if any(p.exclusion for p in patterns):
                        continue
                    shutil.rmtree(full, ignore_errors=True)
                    dirnames.remove(name)
                else:
                    os.unlink(full)
                removed += 1
    return removed
