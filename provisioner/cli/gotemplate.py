"""A subset of Go's text/template for Docker Machine style `--format` options (ls, inspect).

Supported: literal text; `{{.A.B}}` on dicts (keys) and objects (attributes); `.`, `$`, `$var`;
pipelines `|`; parentheses; string, raw string, char, number, bool and nil literals; trim markers
`{{- -}}`; comments `{{/* */}}`; `$x := ...`, `$x = ...`; if / else if / else; range (with else,
break, continue, `$i, $e :=`); with / else with; functions json, prettyjson, upper, lower, index,
join, split, printf, print, println, len, not, and, or, eq, ne, lt, le, gt, ge.
Values print as Go's fmt `%v` does. Every problem is a TemplateError (a UsageError).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from dockyard.provisioner.cli.gofuncs import FUNCS, go_quote, go_type, go_value, sorted_keys, truth
from dockyard.provisioner.core.errors import UsageError

__all__ = ["TemplateError", "Template", "compile_template", "render", "go_quote", "go_value"]


class TemplateError(UsageError):
    """A --format template that does not parse or fails while running."""


_KEYWORDS = {"if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"}

# ----------------------------------------------------------------------------- lexer

_WS = " \t\r\n"
_FIELD_RE = re.compile(r"\.[^\W\d]\w*")
_IDENT_RE = re.compile(r"[^\W\d]\w*")
_VAR_RE = re.compile(r"\$\w*")
_COMMENT_TRIM_END = re.compile(r"[ \t\r\n]+-}}")
_NUMBER_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
    r"|(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9_]+)?)"
)
_UNESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"'}


class _Tok:
    __slots__ = ("kind", "val", "pos", "end", "line")

    def __init__(self, kind, val, pos, end, line):
        self.kind, self.val, self.pos, self.end, self.line = kind, val, pos, end, line

    def describe(self) -> str:
        if self.kind == "eof":
            return "EOF"
        return f"<{self.val}>" if self.kind in ("ident", "field") else repr(self.val)


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _UNESC:
            out.append(_UNESC[e])
            i += 2
        elif e in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + n]
            if len(digits) != n or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                raise ValueError(f"invalid escape \\{e}{digits}")
            out.append(chr(int(digits, 16)))
            i += 2 + n
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(ch in "01234567" for ch in digits):
                raise ValueError(f"invalid escape \\{digits}")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise ValueError(f"unknown escape sequence \\{e}")
    return "".join(out)


def _number(text: str):
    t = text.replace("_", "")
    low = t.lstrip("+-").lower()
    if low.startswith(("0x", "0o", "0b")):
        return int(t, 0)
    if "." in low or "e" in low:
        return float(t)
    if len(low) > 1 and low.startswith("0"):
        return int(t, 8)  # Go: a leading 0 means octal
    return int(t)


class _Lexer:
    def __init__(self, src: str):
        self.src, self.line = src, 1
        self.toks: list[tuple] = []

    def error(self, msg):
        raise TemplateError(f"template: :{self.line}: {msg}")

    def emit(self, kind, val, pos, end):
        self.toks.append(_Tok(kind, val, pos, end, self.line))

    def run(self):
        src, n, i, trim_next = self.src, len(self.src), 0, False
        while i <= n:
            j = src.find("{{", i)
            j = n if j < 0 else j
            text = src[i:j]
            trim_left = src.startswith("{{-", j) and j + 3 < n and src[j + 3] in _WS
            if trim_next:
                text = text.lstrip(_WS)
            if trim_left:
                text = text.rstrip(_WS)
            if text:
                self.emit("text", text, i, j)
            self.line += src.count("\n", i, j)
            if j >= n:
                break
            if trim_left and src[j + 3] == "\n":
                self.line += 1  # the whitespace of the "{{- " marker is skipped below
            i, trim_next = self.action(j + (4 if trim_left else 2), j)
        self.emit("eof", "", n, n)
        return self.toks

    def action(self, p, start):
        src, n = self.src, len(self.src)
        if src.startswith("/*", p):  # a comment must fill the whole action
            e = src.find("*/", p + 2)
            if e < 0:
                self.error("unclosed comment")
            self.line += src.count("\n", p, e)
            q = e + 2
            if src.startswith("}}", q):
                return q + 2, False
            m = _COMMENT_TRIM_END.match(src, q)
            if m:
                return m.end(), True
            self.error("comment ends before closing delimiter")
        self.emit("{{", "{{", start, p)
        while True:
            if p >= n:
                self.error("unclosed action")
            c = src[p]
            if c in _WS:
                q = p
                while q < n and src[q] in _WS:
                    q += 1
                self.line += src.count("\n", p, q)
                if src.startswith("-}}", q):
                    self.emit("}}", "}}", q, q + 3)
                    return q + 3, True
                p = q
                continue
            if src.startswith("}}", p):
                self.emit("}}", "}}", p, p + 2)
                return p + 2, False
            if c in "\"'":
                q = p + 1
                while q < n and src[q] != c:
                    if src[q] == "\n":
                        break
                    q += 2 if src[q] == "\\" else 1
                if q >= n or src[q] != c:
                    self.error("unterminated quoted string" if c == '"' else "unterminated character constant")
                try:
                    val = _unescape(src[p + 1 : q])
                except (ValueError, IndexError) as err:
                    self.error(f"bad string {src[p : q + 1]}: {err}")
                if c == "'":
                    if len(val) != 1:
                        self.error(f"malformed character constant: {src[p : q + 1]}")
                    self.emit("number", ord(val), p, q + 1)
                else:
                    self.emit("string", val, p, q + 1)
                p = q + 1
                continue
            if c == "`":
                q = src.find("`", p + 1)
                if q < 0:
                    self.error("unterminated raw quoted string")
                self.emit("string", src[p + 1 : q], p, q + 1)
                self.line += src.count("\n", p, q)
                p = q + 1
                continue
            m = _FIELD_RE.match(src, p) if c == "." else None
            if m:
                self.emit("field", m.group()[1:], p, m.end())
                p = m.end()
                continue
            m = _NUMBER_RE.match(src, p) if (c.isdigit() or c in "+-.") else None
            if m and m.group() not in ("+", "-", "."):
                if m.end() < n and (src[m.end()].isalnum() or src[m.end()] in "._"):
                    self.error(f"bad number syntax: {src[p : m.end() + 1]!r}")
                try:
                    self.emit("number", _number(m.group()), p, m.end())
                except ValueError:
                    self.error(f"bad number syntax: {m.group()!r}")
                p = m.end()
                continue
            if c == ".":
                self.emit("dot", ".", p, p + 1)
                p += 1
                continue
            if c == "$":
                m = _VAR_RE.match(src, p)
                self.emit("var", m.group(), p, m.end())
                p = m.end()
                continue
            m = _IDENT_RE.match(src, p)
            if m:
                self.emit("ident", m.group(), p, m.end())
                p = m.end()
                continue
            if src.startswith(":=", p):
                self.emit(":=", ":=", p, p + 2)
                p += 2
                continue
            if c in "()|,=":
                self.emit(c, c, p, p + 1)
                p += 1
                continue
            self.error(f"unexpected {c!r} in command")


# ----------------------------------------------------------------------------- parser


class _Node:
    """One tree node; `kind` picks the meaning of the other slots."""

    __slots__ = ("kind", "a", "b", "c", "line", "src")

    def __init__(self, kind, a=None, b=None, c=None, line=0, src=""):
        self.kind, self.a, self.b, self.c, self.line, self.src = kind, a, b, c, line, src


class _Parser:
    def __init__(self, src, toks, funcs):
        self.src, self.toks, self.i, self.funcs = src, toks, 0, funcs
        self.vars = ["$"]
        self.range_depth = 0

    def peek(self, k=0):
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self):
        t = self.peek()
        self.i += 1
        return t

    def error(self, tok, msg):
        raise TemplateError(f"template: :{tok.line}: {msg}")

    def expect_close(self, context):
        t = self.next()
        if t.kind != "}}":
            self.error(t, f"unexpected {t.describe()} in {context}")

    def parse(self):
        nodes, term, tok = self.parse_list()
        if term:
            self.error(tok, f"unexpected {{{{{term}}}}}")
        return nodes

    def parse_list(self):
        nodes = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                return nodes, None, tok
            if tok.kind == "text":
                nodes.append(_Node("text", tok.val))
                continue
            head = self.peek()
            name = head.val if head.kind == "ident" else None
            if name in ("end", "else"):
                self.next()
                if name == "end":
                    self.expect_close("end")
                return nodes, name, head
            if name in ("if", "range", "with"):
                self.next()
                nodes.append(self.parse_control(name, head))
            elif name in ("break", "continue"):
                self.next()
                if not self.range_depth:
                    self.error(head, f"{{{{{name}}}}} outside {{{{range}}}}")
                self.expect_close(name)
                nodes.append(_Node(name, line=head.line))
            elif name in ("define", "template", "block"):
                self.error(head, f"{{{{{name}}}}} is not supported")
            else:
                nodes.append(_Node("action", self.parse_pipeline("command", "}}"), line=head.line))

    def parse_control(self, kind, head):
        mark = len(self.vars)
        pipe = self.parse_pipeline(kind, "}}")
        self.range_depth += kind == "range"
        body, term, tok = self.parse_list()
        self.range_depth -= kind == "range"
        if term is None:
            self.error(tok, f"unexpected EOF in {{{{{kind}}}}}")
        alt = None
        if term == "else":
            nxt = self.peek()
            if kind != "range" and nxt.kind == "ident" and nxt.val == kind:
                self.next()  # {{else if}} / {{else with}}: a nested control sharing our {{end}}
                alt = [self.parse_control(kind, nxt)]
            else:
                self.expect_close("else")
                alt, term, tok = self.parse_list()
                if term != "end":
                    self.error(tok, f"expected {{{{end}}}}; found {tok.describe()}")
        del self.vars[mark:]
        return _Node(kind, pipe, body, alt, line=head.line)

    def parse_pipeline(self, context, closer):
        decls, assign = [], False
        t0, t1 = self.peek(), self.peek(1)
        if t0.kind == "var" and t1.kind in (":=", "="):
            self.i += 2
            decls, assign = [t0.val], t1.kind == "="
            if assign and t0.val not in self.vars:
                self.error(t0, f'undefined variable "{t0.val}"')
        elif t0.kind == "var" and t1.kind == "," and self.peek(2).kind == "var" and self.peek(3).kind == ":=":
            if context != "range":
                self.error(t0, f"too many declarations in {context}")
            self.i += 4
            decls = [t0.val, self.peek(-2).val]
        cmds = []
        while True:
            cmds.append(self.parse_command(context, closer))
            t = self.next()
            if t.kind == "|":
                continue
            if t.kind == closer:
                break
            self.error(t, f"unexpected {t.describe()} in {context}")
        if not assign:
            self.vars.extend(decls)
        return _Node("pipe", cmds, decls, assign)

    def parse_command(self, context, closer):
        args, first = [], self.peek()
        while self.peek().kind not in ("|", closer, "}}", ")", "eof"):
            args.append(self.parse_operand(context))
        t = self.peek()
        if not args:
            self.error(t, f"missing value for {context}")
        if t.kind not in ("|", closer):
            self.error(t, "unclosed action" if t.kind == "eof" else f"unexpected {t.describe()} in {context}")
        last = self.toks[self.i - 1]
        return _Node("cmd", args, line=first.line, src=self.src[first.pos : last.end])

    def parse_operand(self, context):
        t = self.next()
        if t.kind == "field":
            node = _Node("field", [t.val])
        elif t.kind == "dot":
            node = _Node("dot")
        elif t.kind == "var":
            if t.val not in self.vars:
                self.error(t, f'undefined variable "{t.val}"')
            node = _Node("var", t.val, [])
        elif t.kind in ("string", "number"):
            node = _Node("lit", t.val)
        elif t.kind == "ident" and t.val in ("true", "false", "nil"):
            node = _Node("lit", {"true": True, "false": False, "nil": None}[t.val], c="nil" if t.val == "nil" else None)
        elif t.kind == "ident" and t.val in _KEYWORDS:
            self.error(t, f"unexpected {t.describe()} in {context}")
        elif t.kind == "ident":
            if t.val not in self.funcs:
                self.error(t, f'function "{t.val}" not defined')
            node = _Node("func", t.val)
        elif t.kind == "(":
            node = _Node("paren", self.parse_pipeline("parenthesized pipeline", ")"), [])
        else:
            self.error(t, f"unexpected {t.describe()} in {context}")
        fields = []
        while self.peek().kind == "field" and self.peek().pos == self.toks[self.i - 1].end:
            fields.append(self.next().val)
        if fields:
            if node.kind == "field":
                node.a.extend(fields)
            elif node.kind in ("var", "paren"):
                node.b.extend(fields)
            else:
                self.error(t, f"unexpected . after term {t.describe()}")
        return node


# ----------------------------------------------------------------------------- execution

_NOARG = object()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _State:
    def __init__(self, funcs, root):
        self.funcs = funcs
        self.vars = [["$", root]]

    def fail(self, node, msg):
        raise TemplateError(f"template: :{node.line}: executing at <{node.src}>: {msg}")

    def walk(self, nodes, dot, out):
        for node in nodes:
            k = node.kind
            if k == "text":
                out.append(node.a)
            elif k == "action":
                value = self.pipe(dot, node.a)
                if not node.a.b:  # an action that declares a variable prints nothing
                    out.append(go_value(value))
            elif k == "break":
                raise _Break()
            elif k == "continue":
                raise _Continue()
            else:
                self.control(node, dot, out)

    def control(self, node, dot, out):
        mark = len(self.vars)
        try:
            pipe = node.a
            value = self.pipe(dot, pipe, declare=node.kind != "range")
            if node.kind == "if":
                self.walk(node.b if truth(value) else (node.c or []), dot, out)
            elif node.kind == "with":
                if truth(value):
                    self.walk(node.b, value, out)
                else:
                    self.walk(node.c or [], dot, out)
            else:
                items = self.range_items(value, pipe)
                if not items:
                    self.walk(node.c or [], dot, out)
                for key, elem in items:
                    inner = len(self.vars)
                    names = pipe.b
                    if len(names) == 1:
                        self.vars.append([names[0], elem])
                    elif len(names) == 2:
                        self.vars += [[names[0], key], [names[1], elem]]
                    try:
                        self.walk(node.b, elem, out)
                    except _Continue:
                        pass
                    except _Break:
                        break
                    finally:
                        del self.vars[inner:]
        finally:
            del self.vars[mark:]

    def range_items(self, value, pipe):
        if value is None:
            return []
        if isinstance(value, Mapping):
            return [(k, value[k]) for k in sorted_keys(value)]
        if isinstance(value, (list, tuple)):
            return list(enumerate(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return [(i, i) for i in range(value)]
        self.fail(pipe.a[0], f"range can't iterate over {go_value(value)}")

    def pipe(self, dot, pipe, declare=True):
        value = _NOARG
        for cmd in pipe.a:
            value = self.command(dot, cmd, value)
        if declare and pipe.b:
            if pipe.c:  # $x = value: assign to the innermost existing variable
                for var in reversed(self.vars):
                    if var[0] == pipe.b[0]:
                        var[1] = value
                        break
            else:
                self.vars.extend([name, value] for name in pipe.b)
        return value

    def command(self, dot, cmd, final):
        first = cmd.a[0]
        if first.kind == "func":
            return self.call(first.a, cmd.a[1:], dot, final, cmd)
        if len(cmd.a) > 1 or final is not _NOARG:
            self.fail(cmd, f"can't give argument to non-function {cmd.src.split()[0]}")
        if first.kind == "lit" and first.c == "nil":
            self.fail(cmd, "nil is not a command")
        return self.arg(dot, first, cmd)

    def arg(self, dot, node, cmd):
        k = node.kind
        if k == "dot":
            return dot
        if k == "lit":
            return node.a
        if k == "field":
            return self.fields(dot, node.a, cmd)
        if k == "var":
            for name, value in reversed(self.vars):
                if name == node.a:
                    return self.fields(value, node.b, cmd)
            self.fail(cmd, f'undefined variable "{node.a}"')
        if k == "func":
            return self.call(node.a, [], dot, _NOARG, cmd)
        return self.fields(self.pipe(dot, node.a), node.b, cmd)  # paren

    def fields(self, receiver, names, cmd):
        for name in names:
            if receiver is None:
                return None  # Go: a missing map entry stays "no value" down the chain
            if isinstance(receiver, Mapping):
                receiver = receiver.get(name)
                continue
            if (
                isinstance(receiver, (str, int, float, bool, list, tuple, bytes))
                or name.startswith("_")
                or not hasattr(receiver, name)
            ):
                self.fail(cmd, f"can't evaluate field {name} in type {go_type(receiver)}")
            value = getattr(receiver, name)
            if callable(value) and not isinstance(value, type):
                try:  # Go calls niladic methods named in a field chain
                    value = value()
                except TypeError as err:
                    self.fail(cmd, f"can't call method {name}: {err}")
            receiver = value
        return receiver

    def call(self, name, argnodes, dot, final, cmd):
        fn, lo, hi = self.funcs[name]
        args = [self.arg(dot, a, cmd) for a in argnodes]
        if final is not _NOARG:
            args.append(final)
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            self.fail(cmd, f"wrong number of args for {name}: want {want} got {len(args)}")
        try:
            return fn(*args)
        except TemplateError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as err:
            self.fail(cmd, f"error calling {name}: {err}")


class Template:
    """A parsed template; call it with the data to get the text."""

    def __init__(self, source: str, funcs=None):
        self.source = source
        self.funcs = dict(FUNCS)
        for fname, fn in (funcs or {}).items():
            self.funcs[fname] = fn if isinstance(fn, tuple) else (fn, 0, None)
        self.tree = _Parser(source, _Lexer(source).run(), self.funcs).parse()

    def __call__(self, data) -> str:
        out: list[str] = []
        try:
            _State(self.funcs, data).walk(self.tree, data, out)
        except (_Break, _Continue):  # cannot happen: the parser rejects them outside range
            raise TemplateError("template: break or continue outside range") from None
        return "".join(out)

    render = __call__


def compile_template(template: str, funcs=None) -> Template:
    """Parse once, run many times: `compile_template(fmt)(data) -> str`. Raises TemplateError."""
    if not isinstance(template, str):
        raise TemplateError(f"template: expected a string, not {type(template).__name__}")
    return Template(template, funcs)


def render(template: str, data) -> str:
    """Run a Go-style template over `data` (dicts by key, objects by attribute)."""
    return compile_template(template)(data)
