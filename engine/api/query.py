"""Query-string parsing the way moby does it: booleans, integers and JSON `filters`."""

import json

from dockyard.engine.errors import InvalidParameter

# moby's httputils.BoolValue: these spellings (case-insensitive, trimmed) are false.
_FALSE_WORDS = frozenset(("", "0", "no", "false", "none"))


def first(query, name, default=None):
    """The first value of `name` in a parse_qs-style dict, or `default` if absent."""
    values = query.get(name)
    if not values:
        return default
    return values[0]


def parse_bool(text):
    """moby semantics: "", 0, no, false, none (any case) are false; anything else true."""
    return text.strip().lower() not in _FALSE_WORDS


def boolean(query, name, default=False):
    """Boolean query parameter; absent means `default`, present-but-empty means False."""
    value = first(query, name)
    if value is None:
        return default
    return parse_bool(value)


def integer(query, name, default=None):
    """Integer query parameter; a malformed value is a 400 like moby's strconv errors."""
    value = first(query, name)
    if value is None or value == "":
        return default
    try:
        return int(value, 10)
    except ValueError:
        raise InvalidParameter('invalid value for %s: "%s"' % (name, value)) from None


def unsigned(query, name, maximum):
    """A required unsigned integer query parameter up to `maximum` (resize h/w); 400 in strconv's words."""
    value = first(query, name, "")
    text = value
    if not text.isdigit() or not text.isascii():
        raise InvalidParameter('strconv.ParseUint: parsing "%s": invalid syntax' % value)
    number = int(text, 10)
    if number > maximum:
        raise InvalidParameter('strconv.ParseUint: parsing "%s": value out of range' % value)
    return number


class Filters:
    """Parsed `filters` JSON: key -> list of values, in the order they were given.

    Both wire shapes are accepted: {"key": {"val": true}} (docker CLI) and
    {"key": ["val"]} (docker-py, old CLIs).
    """

    def __init__(self, mapping=None):
        self._items = {}
        for key, values in (mapping or {}).items():
            for value in values:
                self.add(key, value)

    @classmethod
    def from_json(cls, text):
        if text is None or text.strip() == "":
            return cls()
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise InvalidParameter("invalid filter: %s" % exc) from None
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidParameter("invalid filter: expected a JSON object")
        out = cls()
        for key, values in raw.items():
            if isinstance(values, dict):
                # The map-of-bool shape: every key listed is a value (the bool is always true).
                items = list(values.keys())
            elif isinstance(values, list):
                items = values
            elif isinstance(values, str):
                items = [values]
            else:
                raise InvalidParameter("invalid filter: bad value for %r" % key)
            for value in items:
                if not isinstance(value, str):
                    raise InvalidParameter("invalid filter: bad value for %r" % key)
                out.add(key, value)
        return out

    @classmethod
    def from_query(cls, query, name="filters"):
        return cls.from_json(first(query, name))

    def add(self, key, value):
        values = self._items.setdefault(key, [])
        if value not in values:
            values.append(value)

    def keys(self):
        return list(self._items.keys())

    def get(self, key):
        """Values given for `key` (empty list if none)."""
        return list(self._items.get(key, ()))

    def has(self, key):
        return key in self._items

    def __len__(self):
        return len(self._items)

    def __bool__(self):
        return bool(self._items)

    def __contains__(self, key):
        return key in self._items

    def as_dict(self):
        return {key: list(values) for key, values in self._items.items()}

    def validate(self, accepted):
        """400 `invalid filter 'KEY'` for a key outside `accepted`, as moby."""
        for key in self._items:
            if key not in accepted:
                raise InvalidParameter("invalid filter '%s'" % key)

    def exact_match(self, key, value):
        """True when `key` was not filtered on, or `value` is one of its values."""
        values = self._items.get(key)
        return not values or value in values

    def match_labels(self, labels, key="label", negate_key=None):
        """True when every `key` filter ("k" or "k=v") holds for the dict `labels` and no `negate_key` one does."""
        return labels_match(labels, self._items.get(key, ()), self._items.get(negate_key, ()) if negate_key else ())

    def label_matcher(self, key="label", negate_key=None):
        """match_labels as fn(labels) for a store's prune/list, or None when there are no label filters."""
        if not self._items.get(key) and not (negate_key and self._items.get(negate_key)):
            return None
        return lambda labels: self.match_labels(labels, key, negate_key)


def labels_match(labels, required=(), refused=()):
    """moby's label filters: each of `required` ("k" or "k=v") holds for `labels`, none of `refused` does."""
    for expr in required:
        name, sep, want = expr.partition("=")
        if name not in labels or (sep and labels[name] != want):
            return False
    for expr in refused:
        name, sep, want = expr.partition("=")
        if name in labels and (not sep or labels[name] == want):
            return False
    return True


def filters(query, name="filters"):
    """Shortcut for Filters.from_query."""
    return Filters.from_query(query, name)
