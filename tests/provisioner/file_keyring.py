"""A keyring backend for tests: a JSON file named by DOCKYARD_TEST_KEYRING (select it in a subprocess with
PYTHON_KEYRING_BACKEND=tests.provisioner.file_keyring.FileKeyring). Never for real secrets."""

import json
import os

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError


class FileKeyring(KeyringBackend):
    priority = 1

    @property
    def file(self):
        return os.environ["DOCKYARD_TEST_KEYRING"]

    def _load(self):
        try:
            with open(self.file) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _save(self, data):
        tmp = self.file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.file)

    def get_password(self, service, username):
        return self._load().get(service, {}).get(username)

    def set_password(self, service, username, password):
        data = self._load()
        data.setdefault(service, {})[username] = password
        self._save(data)

    def delete_password(self, service, username):
        data = self._load()
        if username not in data.get(service, {}):
            raise PasswordDeleteError(username)
        del data[service][username]
        self._save(data)
