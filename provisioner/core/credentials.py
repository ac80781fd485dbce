"""Cloud credentials: kept in the OS keyring (service "dockyard", keyed "provider:account"), or in an
opt-in 0600 file, or read from environment variables at every call; config.json only holds a reference."""

import contextlib
import json
import os
import stat
import threading

from dockyard.provisioner.core.errors import DockyardError
from dockyard.provisioner.core.files import atomic_write, file_lock

SERVICE = "dockyard"
FILE_ENV = "DOCKYARD_CREDENTIALS_FILE"
_INDEX = "__index__"  # keyring cannot list its entries, so the refs are kept in one more (non-secret) entry
_index_lock = threading.Lock()


class CredentialsError(DockyardError):
    """Credentials are missing, or cannot be stored or read."""


class NoKeyringBackend(CredentialsError):
    """No working keyring backend: says what the alternatives are."""

    def __init__(self, backend_name, provider=None, env_names=()):
        envs = "/".join(env_names) if env_names else "the provider's environment variables"
        what = f" to keep the {provider} credentials" if provider else ""
        super().__init__(
            f"No working keyring backend{what} (found {backend_name}). Either export {envs} "
            f"(read at every command, nothing stored), or opt in to a file: set {FILE_ENV}=PATH "
            "(or pass --creds-file PATH to dockyard creds); the file is created with mode 0600."
        )


def make_ref(provider, account="default"):
    return f"{provider}:{account or 'default'}"


def split_ref(ref):
    provider, _, account = ref.partition(":")
    return provider, account or "default"


# ------------------------------------------------------------------------------------------ backends


def keyring_status():
    """(works, description) of the keyring backend this process would use."""
    try:
        import keyring  # lazy: keyring loads its backends on import; only credential lookups need it
        from keyring.backends import chainer, fail
    except Exception as e:  # keyring missing or broken on import
        return False, f"keyring unavailable ({e})"
    kr = keyring.get_keyring()
    name = f"{type(kr).__module__}.{type(kr).__name__}"
    if isinstance(kr, fail.Keyring) or type(kr).__module__ == "keyring.backends.null":
        return False, name
    if isinstance(kr, chainer.ChainerBackend) and not list(kr.backends):
        return False, name + " with no backends"
    return True, name


class KeyringStore:
    """Secrets as JSON strings in the OS keyring."""

    kind = "keyring"

    def __init__(self):
        import keyring  # lazy: keyring loads its backends on import; only credential lookups need it

        self._kr = keyring
        self.description = keyring_status()[1]

    def _call(self, fn, *args):
        try:
            return fn(SERVICE, *args)
        except self._kr.errors.PasswordDeleteError:
            return None
        except self._kr.errors.KeyringError as e:
            raise CredentialsError(f"keyring ({self.description}) failed: {e}") from None

    def get(self, ref):
        raw = self._call(self._kr.get_password, ref)
        return json.loads(raw) if raw else None

    def set(self, ref, fields):
        self._call(self._kr.set_password, ref, json.dumps(fields))
        with _index_lock:
            refs = self.refs()
            if ref not in refs:
                self._call(self._kr.set_password, _INDEX, json.dumps(sorted(refs + [ref])))

    def delete(self, ref):
        existed = self.get(ref) is not None
        if existed:
            self._call(self._kr.delete_password, ref)
        with _index_lock:
            refs = self.refs()
            if ref in refs:
                self._call(self._kr.set_password, _INDEX, json.dumps([r for r in refs if r != ref]))
        return existed

    def refs(self):
        raw = self._call(self._kr.get_password, _INDEX)
        try:
            return list(json.loads(raw)) if raw else []
        except ValueError:
            return []


class FileStore:
    """The explicit opt-in: one JSON file, mode 0600, refused when others can read it."""

    kind = "file"

    def __init__(self, path):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.description = f"file {self.path}"

    def _read(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise CredentialsError(
                f"credentials file {self.path} is accessible by others (mode {stat.S_IMODE(st.st_mode):#o}); "
                f"run: chmod 600 {self.path}"
            )
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise CredentialsError(f"credentials file {self.path} is unreadable: {e}") from None
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        with _index_lock, file_lock(self.path + ".lock", what=f"credentials file {self.path}"):
            yield

    def _write(self, data):
        atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=0o600, durable=True)

    def get(self, ref):
        return self._read().get(ref)

    def set(self, ref, fields):
        with self._locked():
            data = self._read()
            data[ref] = dict(fields)
            self._write(data)

    def delete(self, ref):
        with self._locked():
            data = self._read()
            existed = data.pop(ref, None) is not None
            if existed:
                self._write(data)
        return existed

    def refs(self):
        return sorted(self._read())


def file_path_from_env(environ=os.environ):
    return environ.get(FILE_ENV) or None


def open_store(file_path=None, provider=None, env_names=()):
    """The store in use: an explicit file (argument or DOCKYARD_CREDENTIALS_FILE), else a working keyring."""
    file_path = file_path or file_path_from_env()
    if file_path:
        return FileStore(file_path)
    ok, name = keyring_status()
    if not ok:
        raise NoKeyringBackend(name, provider, env_names)
    return KeyringStore()


# ---------------------------------------------------------------------------- references in configs


class Field:
    """One credential field of a provider: its name in the stored entry, env var and create flag key."""

    def __init__(self, name, envvar=None, flag_key=None, required=True):
        self.name = name
        self.envvar = envvar
        self.flag_key = flag_key
        self.required = required


def reference(source, provider, account, file_path=None):
    """What config.json keeps: never a secret."""
    ref = {"CredentialRef": make_ref(provider, account), "CredentialSource": source}
    if source == "file":
        ref["CredentialFile"] = os.path.abspath(file_path)
    return ref


def from_env(fields, environ=os.environ):
    return {f.name: environ[f.envvar] for f in fields if f.envvar and environ.get(f.envvar)}


def missing(fields, values):
    return [f for f in fields if f.required and not values.get(f.name)]


def resolve(config, provider, fields, environ=os.environ):
    """The secret fields for a machine's stored reference; read fresh at every call."""
    source = config.get("CredentialSource") or "keyring"
    ref = config.get("CredentialRef") or make_ref(provider)
    envs = [f.envvar for f in fields if f.envvar]
    if source == "env":
        values = from_env(fields, environ)
        lacking = missing(fields, values)
        if lacking:
            raise CredentialsError(
                f"{provider} credentials are taken from the environment for this machine: export "
                + ", ".join(f.envvar or f.name for f in lacking)
            )
        return values
    if source == "file":
        store = FileStore(config["CredentialFile"])
    else:
        ok, name = keyring_status()
        if not ok:
            raise NoKeyringBackend(name, provider, envs)
        store = KeyringStore()
    values = store.get(ref)
    if not values:
        raise CredentialsError(
            f'credentials "{ref}" not found in the {store.description}; run: dockyard creds set {ref}'
        )
    return values


def choose(provider, account, fields, given, environ=os.environ, file_path=None):
    """Decide where the credentials for a new machine come from.
    given: field values from flags (click fills them from env vars too). Returns (source, values, store)
    where store is where values are to be saved once they are known to work (None: nothing to save)."""
    file_path = file_path or file_path_from_env(environ)
    given = {k: v for k, v in given.items() if v}
    envs = [f.envvar for f in fields if f.envvar]
    by_name = {f.name: f for f in fields}
    if given:
        # Values that equal the env var came from the environment: keep reading it, store nothing.
        all_env = all(by_name[k].envvar and environ.get(by_name[k].envvar) == v for k, v in given.items())
        if all_env:
            values = from_env(fields, environ)
            if not missing(fields, values):
                return "env", values, None
        store = open_store(file_path, provider, envs)
        ref = make_ref(provider, account)
        stored = store.get(ref) or {}
        values = {**stored, **given}
        lacking = missing(fields, values)
        if lacking:
            raise CredentialsError(
                f"{provider}: missing credential(s): " + ", ".join(f.envvar or f.name for f in lacking)
            )
        return store.kind, values, store
    store = open_store(file_path, provider, envs)
    ref = make_ref(provider, account)
    values = store.get(ref)
    if not values:
        hint = "/".join(envs)
        raise CredentialsError(
            f'no {provider} credentials: "{ref}" is not in the {store.description}. '
            f"Pass them as flags once (they are then kept there), export {hint}, "
            f"or run: dockyard creds set {ref}"
        )
    return store.kind, values, None
