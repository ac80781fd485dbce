"""Go fmt-style value printing (%v, %q, printf, json) and the function set of dockyard's templates.

Kept apart from the template engine (gotemplate.py) so each stays readable; both follow Go's
text/template and fmt so that Docker Machine `--format` strings print the same here.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal

__all__ = ["FUNCS", "go_value", "go_quote", "go_sprintf", "go_json", "go_type", "truth", "sorted_keys"]


def _go_float(f: float) -> str:
    """Go's %v for float64 (strconv 'g', shortest): exponent form when exp < -4 or exp >= 6."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(f)).as_tuple()
    digits = list(digit_tuple)
    exp = int(exponent)  # a finite float: never 'n', 'N' or 'F'
    while len(digits) > 1 and digits[-1] == 0:
        digits.pop()
        exp += 1
    ds = "".join(map(str, digits))
    nd, dp = len(ds), len(ds) + exp
    x = dp - 1
    neg = "-" if sign else ""
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'+' if x >= 0 else '-'}{abs(x):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return neg + ds + "0" * (dp - nd)
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def sorted_keys(m):
    # Go prints and ranges maps in key order: numbers numerically, strings lexically.
    return sorted(
        m, key=lambda k: (0, k, "") if isinstance(k, (int, float)) and not isinstance(k, bool) else (1, 0, str(k))
    )


def go_value(v, top: bool = True) -> str:
    """Format a value the way text/template prints it (fmt %v). Nested nils print as <nil>."""
    if v is None:
        return "<no value>" if top else "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, enum.Enum):
        return go_value(v.value, top)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{go_value(k, False)}:{go_value(v[k], False)}" for k in sorted_keys(v)) + "]"
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(go_value(x, False) for x in v) + "]"
    if isinstance(v, (bytes, bytearray)):
        return "[" + " ".join(str(b) for b in v) + "]"
    if type(v).__str__ is not object.__str__:  # a Python "Stringer"
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return "{" + " ".join(go_value(getattr(v, f.name), False) for f in dataclasses.fields(v)) + "}"
    return str(v)


_QUOTE_ESC = {
    "\a": r"\a",
    "\b": r"\b",
    "\f": r"\f",
    "\n": r"\n",
    "\r": r"\r",
    "\t": r"\t",
    "\v": r"\v",
    "\\": r"\\",
    '"': r"\"",
}


def go_quote(s: str) -> str:
    """Go's strconv.Quote (fmt %q): double quotes, Go escapes, printable Unicode kept as is."""
    out = ['"']
    for ch in s:
        if ch in _QUOTE_ESC:
            out.append(_QUOTE_ESC[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def go_type(v) -> str:
    if v is None:
        return "<nil>"
    for py, go in ((bool, "bool"), (int, "int"), (float, "float64"), (str, "string")):
        if isinstance(v, py):
            return go
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    return type(v).__name__


def _jsonable(v):
    """Shape a value like Go's encoding/json would see it: maps sorted, structs in field order."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"json: unsupported value: {_go_float(v)}")
        # JSON numbers arrive as floats in Go; integral ones print without a fraction.
        return int(v) if v == int(v) and abs(v) < 1e21 else v
    if isinstance(v, enum.Enum):
        return _jsonable(v.value)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(v[k]) for k in sorted_keys(v)}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(bytes(v)).decode()
    if callable(getattr(v, "to_dict", None)):
        return {str(k): _jsonable(x) for k, x in v.to_dict().items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return str(v)


_HTML_ESC = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def go_json(v, indent=None) -> str:
    if indent is None:
        text = json.dumps(_jsonable(v), ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(_jsonable(v), ensure_ascii=False, indent=indent, separators=(",", ": "))
    # Go escapes these by default; outside strings they cannot occur, so a plain translate is exact.
    return text.translate(_HTML_ESC)


# ----------------------------------------------------------------------------- printf

_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?(.)", re.S)


def _pad(s: str, width, minus: bool, zero: bool) -> str:
    if width is None or len(s) >= width:
        return s
    fill = width - len(s)
    if minus:
        return s + " " * fill
    if zero:
        if s[:1] in ("+", "-"):
            return s[0] + "0" * fill + s[1:]
        return "0" * fill + s
    return " " * fill + s


def _bad_verb(verb, arg) -> str:
    return f"%!{verb}({go_type(arg)}={go_value(arg, False)})"


def _fmt_verb(verb, flags, width, prec, arg) -> str:
    minus, plus, sharp = "-" in flags, "+" in flags, "#" in flags
    zero = "0" in flags and not minus
    num = isinstance(arg, (int, float)) and not isinstance(arg, bool)
    if verb in "vs":
        if arg is None:
            s = "<nil>" if verb == "v" else "%!s(<nil>)"
        else:
            s = go_value(arg, False)
            if verb == "s" and prec is not None:
                s = s[:prec]
        return _pad(s, width, minus, zero)
    if verb == "q" and isinstance(arg, str):
        return _pad(go_quote(arg), width, minus, False)
    if verb == "t" and isinstance(arg, bool):
        return _pad("true" if arg else "false", width, minus, False)
    if isinstance(arg, float) and verb in "dxXobc" and arg.is_integer():
        arg = int(arg)  # JSON numbers are floats; %d on 1024.0 is what the user means
    if verb in "dxXob" and isinstance(arg, int) and not isinstance(arg, bool):
        base = {"d": "d", "x": "x", "X": "X", "o": "o", "b": "b"}[verb]
        s = format(abs(arg), base)
        if sharp and verb in "xX":
            s = ("0x" if verb == "x" else "0X") + s
        elif sharp and verb == "o":
            s = "0" + s
        s = ("-" if arg < 0 else "+" if plus else "") + s
        return _pad(s, width, minus, zero)
    if verb in "xX" and isinstance(arg, str):
        s = arg.encode().hex()
        return _pad(s.upper() if verb == "X" else s, width, minus, False)
    if verb == "c" and isinstance(arg, int) and not isinstance(arg, bool):
        return _pad(chr(arg), width, minus, False)
    if verb in "eEfFgG" and num:
        x = float(arg)
        if not math.isfinite(x) or (verb in "gG" and prec is None):
            s = _go_float(x)
            s = s.upper() if verb == "G" else s
        else:
            s = format(x, f".{6 if prec is None else prec}{verb}")
        if plus and not s.startswith(("-", "+")):
            s = "+" + s
        return _pad(s, width, minus, zero and math.isfinite(x))
    return _bad_verb(verb, arg)


def go_sprintf(fmt: str, *args) -> str:
    if not isinstance(fmt, str):
        raise ValueError(f"printf format must be a string, not {go_type(fmt)}")
    out, argi, i = [], 0, 0
    while True:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        m = _VERB.match(fmt, j)
        if not m:
            out.append("%!(NOVERB)")
            break
        i = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        width = int(width) if width else None
        prec = int(prec or 0) if prec is not None else None
        out.append(_fmt_verb(verb, flags, width, prec, args[argi]))
        argi += 1
    if argi < len(args):
        extra = ", ".join(f"{go_type(a)}={go_value(a, False)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


# ----------------------------------------------------------------------------- functions


def truth(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str, Mapping, list, tuple, bytes)):
        return bool(v)
    return True  # Go: structs and non-nil pointers are true


def _text(v) -> str:
    return "" if v is None else go_value(v, False)


def _f_index(item, *keys):
    for k in keys:
        if item is None:
            raise ValueError("index of untyped nil")
        if isinstance(item, Mapping):
            item = item.get(k)
        elif isinstance(item, (list, tuple, str, bytes)):
            if isinstance(k, float) and k.is_integer():
                k = int(k)
            if isinstance(k, bool) or not isinstance(k, int):
                raise ValueError(f"cannot index slice/array with type {go_type(k)}")
            seq = item.encode() if isinstance(item, str) else item  # Go indexes strings by byte
            if not 0 <= k < len(seq):
                raise ValueError(f"index out of range: {k}")
            item = seq[k]
        else:
            raise ValueError(f"can't index item of type {go_type(item)}")
    return item


def _f_join(items, sep):
    if items is None:
        return ""
    if isinstance(items, str):
        return items
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"join needs a list, not {go_type(items)}")
    return _text(sep).join(_text(x) for x in items)


def _f_split(s, sep):
    s, sep = _text(s), _text(sep)
    return list(s) if sep == "" else s.split(sep)


def _f_len(v):
    if isinstance(v, str):
        return len(v.encode())  # Go's len of a string counts bytes
    if isinstance(v, (list, tuple, Mapping, bytes)):
        return len(v)
    raise ValueError(f"len of type {go_type(v)}")


def _kind(v) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "other"


def _f_eq(a, *bs):
    if not bs:
        raise ValueError("missing argument for comparison")
    for b in bs:
        ka, kb = _kind(a), _kind(b)
        if ka != kb and "nil" not in (ka, kb):
            raise ValueError("incompatible types for comparison")
        if a == b:
            return True
    return False


def _ordered(a, b):
    ka, kb = _kind(a), _kind(b)
    if ka not in ("number", "string") or kb not in ("number", "string"):
        raise ValueError("invalid type for comparison")
    if ka != kb:
        raise ValueError("incompatible types for comparison")
    return a, b


def _f_print(*args):
    out = []
    for i, a in enumerate(args):
        # fmt.Sprint adds a space between operands when neither is a string.
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(go_value(a, False))
    return "".join(out)


def _f_and(*args):
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def _f_or(*args):
    for a in args:
        if truth(a):
            return a
    return args[-1]


# name -> (callable, min args, max args or None)
FUNCS = {
    "json": (lambda v: go_json(v), 1, 1),
    "prettyjson": (lambda v: go_json(v, indent=4), 1, 1),
    "upper": (lambda v: _text(v).upper(), 1, 1),
    "lower": (lambda v: _text(v).lower(), 1, 1),
    "index": (_f_index, 1, None),
    "join": (_f_join, 2, 2),
    "split": (_f_split, 2, 2),
    "printf": (go_sprintf, 1, None),
    "print": (_f_print, 0, None),
    "println": (lambda *a: " ".join(go_value(x, False) for x in a) + "\n", 0, None),
    "len": (_f_len, 1, 1),
    "not": (lambda v: not truth(v), 1, 1),
    "and": (_f_and, 1, None),
    "or": (_f_or, 1, None),
    "eq": (_f_eq, 1, None),
    "ne": (lambda a, b: not _f_eq(a, b), 2, 2),
    "lt": (lambda a, b: _ordered(a, b)[0] < b, 2, 2),
    "le": (lambda a, b: _ordered(a, b)[0] <= b, 2, 2),
    "gt": (lambda a, b: _ordered(a, b)[0] > b, 2, 2),
    "ge": (lambda a, b: _ordered(a, b)[0] >= b, 2, 2),
}
