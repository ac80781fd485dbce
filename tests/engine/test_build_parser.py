"""Dockerfile parsing, variable substitution and .dockerignore patterns (engine/build), without an engine."""

from __future__ import annotations

import time

import pytest

from dockyard.engine.build import dockerignore, parser
from dockyard.engine.build.shellwords import Lexer, SubstitutionError
from dockyard.engine.errors import InvalidParameter

ENV = {"A": "x y", "E": "", "N": "1"}


@pytest.mark.parametrize(
    "word, one, many",
    [
        ("$A", "x y", ["x", "y"]),
        ("${A}", "x y", ["x", "y"]),
        ("${B:-def}", "def", ["def"]),
        ("${E:-d}", "d", ["d"]),
        ("${E-d}", "", []),
        ("${B-d}", "d", ["d"]),
        ("${A:+alt}", "alt", ["alt"]),
        ("${E:+alt}", "", []),
        ("${E+alt}", "alt", ["alt"]),
        ("'$A'", "$A", ["$A"]),
        ('"$A"', "x y", ["x y"]),
        ("\\$A", "$A", ["$A"]),
        ("a${N}b", "a1b", ["a1b"]),
        ("$", "$", ["$"]),
        ("a\\ b", "a b", ["a b"]),
        ('"q \\"w\\""', 'q "w"', ['q "w"']),
    ],
)
def test_substitution(word, one, many):
    lex = Lexer()
    assert lex.word(word, ENV) == one
    assert [w for w in lex.words(word, ENV) if w] == many


def test_substitution_errors_and_backtick_escape():
    with pytest.raises(SubstitutionError, match="B: must be set"):
        Lexer().word("${B:?must be set}", ENV)
    with pytest.raises(SubstitutionError):
        Lexer().word("${A", ENV)
    assert Lexer("`").word("`$A \\n", ENV) == "$A \\n"


def test_directives_continuations_comments_and_forms():
    df = parser.parse(
        b"# escape=`\n"
        b"# syntax=docker/dockerfile:1\n"
        b"FROM busybox AS b\n"
        b"# a comment\n"
        b"RUN echo a `\n"
        b"  # inside the continuation\n"
        b"\n"
        b"    && echo b\n"
        b'COPY --chown=1:2 --chmod=600 ["a b", "c"]\n'
        b"cmd echo not json [\n"
    )
    assert df.escape == "`"
    cmds = [(i.cmd, i.line) for i in df.instructions]
    assert cmds == [("from", 3), ("run", 5), ("copy", 9), ("cmd", 10)]
    run = df.instructions[1]
    assert run.original == "RUN echo a     && echo b" and run.json_args is None
    copy = df.instructions[2]
    assert copy.flags == {"chown": ["1:2"], "chmod": ["600"]} and copy.json_args == ["a b", "c"]
    assert df.instructions[3].json_args is None


@pytest.mark.parametrize(
    "text, message",
    [
        (b"FROM x\nFOO bar\n", "line 2: unknown instruction: FOO"),
        (b"", "cannot be empty"),
        (b"# escape=x\nFROM a\n", "invalid escape token"),
        (b"# escape=`\n# escape=`\nFROM a\n", "only one escape parser directive"),
        (b"FROM a\nCOPY a\n", "COPY requires at least two arguments"),
        (b"FROM a\nSHELL /bin/sh\n", "SHELL requires the arguments to be in JSON form"),
        (b"FROM a\nCOPY --bogus=1 a b\n", "unknown flag: bogus"),
        (b"FROM a\nONBUILD FROM b\n", "FROM isn't allowed as an ONBUILD trigger"),
        (b"FROM a\nONBUILD ONBUILD RUN x\n", "isn't allowed as an ONBUILD trigger"),
        (b"\xff\xfe", "not valid UTF-8"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(parser.ParseError, match=message):
        parser.parse(text)


def test_env_and_label_name_values():
    df = parser.parse(b'FROM a\nENV A=1 B="two words" C=three\\ four\nENV D e f\nLABEL x\n')
    assert parser.name_values(df.instructions[1], "\\") == [("A", "1"), ("B", '"two words"'), ("C", "three\\ four")]
    assert parser.name_values(df.instructions[2], "\\") == [("D", "e f")]
    with pytest.raises(parser.ParseError, match="must have two arguments"):
        parser.name_values(df.instructions[3], "\\")


@pytest.mark.parametrize(
    "path, excluded",
    [
        ("a.md", True),
        ("README.md", False),
        ("sub/a.md", False),  # `*` does not cross '/'
        ("x/y/z.tmp", True),  # `**/`
        ("z.tmp", True),  # `**/` matches no directory too
        ("build/deep/file", True),  # a parent directory matches
        ("abs/x/y", True),  # leading '/' is the context root
        ("docs/keep/a", False),  # exception below an excluded dir
        ("docs/other", True),
        ("f1", True),
        ("fa", False),
    ],
)
def test_dockerignore_semantics(path, excluded):
    patterns = dockerignore.parse(
        "# comment\n*.md\n!README.md\n**/*.tmp\nbuild\n/abs/x\n  docs  \n!docs/keep\nf[0-9]\n"
    )
    assert dockerignore.excluded(patterns, path) is excluded


def test_dockerignore_apply_keeps_exceptions(tmp_path):
    for rel in ("docs/keep/a", "docs/b", "src/c.md", "README.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    dockerignore.apply(str(tmp_path), dockerignore.parse("docs\n!docs/keep\n*.md\n"))
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["docs/keep/a", "src/c.md"]


def test_hostile_dockerfiles_are_bounded():
    # Self-referencing variables grow exponentially: refused once a word passes the bound.
    lex = Lexer()
    env = {"A": "x" * 1000}
    with pytest.raises(SubstitutionError, match="longer than"):
        for _ in range(20):
            env["A"] = lex.word("$A$A", env)
    # A deeply nested "exec form" is not JSON to us (no RecursionError): it is the shell form.
    deep = b"FROM a\nRUN " + b"[" * 100000 + b"\n"
    assert parser.parse(deep).instructions[1].json_args is None
    with pytest.raises(parser.ParseError, match="at most 1000"):
        parser.parse(b"FROM a\n" + b"ENV A=1\n" * 1000)
    with pytest.raises(parser.ParseError, match="larger than"):
        parser.parse(b"FROM a\n#" + b"x" * (4 << 20))


def test_dockerignore_patterns_cost_linear_time_and_go_syntax():
    # 40 `**` segments against a deep path that does not match: a backtracking regex never returns.
    bomb = dockerignore.parse("/".join(["**"] * 20 + ["a"] * 20) + "/zzz\n")
    path = "/".join(["a"] * 60)
    t0 = time.monotonic()
    assert not dockerignore.excluded(bomb, path)
    assert time.monotonic() - t0 < 1.0
    patterns = dockerignore.parse("\\*star\nf[^0-9]\nlast/**\n")
    assert dockerignore.excluded(patterns, "*star") and not dockerignore.excluded(patterns, "xstar")
    assert dockerignore.excluded(patterns, "fx") and not dockerignore.excluded(patterns, "f1")
    assert dockerignore.excluded(patterns, "last/a/b") and not dockerignore.excluded(patterns, "last")
    with pytest.raises(InvalidParameter, match="too many"):
        dockerignore.parse("a**b**c**d**e\n")
