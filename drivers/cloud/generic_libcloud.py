"""The `libcloud` driver: any libcloud compute provider by name, configured with key=value options.

It does what every libcloud provider can: pick size, image and location by id or name, pass the SSH key
(imported as a key pair where the provider supports that, else as create-time auth), create, reboot and
destroy the node; start/stop where the provider has them. Firewalls are the provider's business here.
"""

import dataclasses

from dockyard.drivers.base import Flag, Settings, setting
from dockyard.drivers.cloud.base import CloudDriver, common_flags
from dockyard.drivers.cloud.errors import CloudNotFound
from dockyard.provisioner.core.credentials import Field
from dockyard.provisioner.core.errors import DriverError

# Options that hold secrets: kept in the keyring like any other provider's credentials.
SECRET_OPTIONS = ("key", "secret", "password", "token", "api_key", "apikey", "access_token", "client_secret")


def parse_options(values):
    opts = {}
    for v in values or ():
        k, sep, val = str(v).partition("=")
        if not sep or not k:
            raise DriverError(f'invalid --libcloud-option "{v}": expected KEY=VALUE')
        opts[k.strip()] = val
    return opts


def _parameters(fn):
    import inspect

    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params} | ({"**"} if any(p.kind == p.VAR_KEYWORD for p in params) else set())


def _value(text):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if text.isdigit():
        return int(text)
    return text


@dataclasses.dataclass
class LibcloudSettings(Settings):
    """The node's settings (flag keys without the `libcloud_` prefix); --libcloud-option is kept apart."""

    provider: str = setting("LibcloudProvider", flag="provider")
    size: str = setting("Size", flag="size")
    image: str = setting("Image", flag="image")
    location: str = setting("Location", flag="location")

    def __post_init__(self) -> None:
        if not self.provider:
            raise DriverError("libcloud driver requires --libcloud-provider NAME")
        self.size, self.image, self.location = self.size or "", self.image or "", self.location or ""
        if not self.size or not self.image:
            raise DriverError("libcloud driver requires --libcloud-size and --libcloud-image")


class LibcloudDriver(CloudDriver):
    name = "libcloud"
    credential_fields = []  # set per provider below: the secret options given
    flags = [
        Flag(
            "libcloud-provider",
            "libcloud compute provider name (e.g. scaleway, upcloud, ovh)",
            envvar="LIBCLOUD_PROVIDER",
        ),
        Flag(
            "libcloud-option",
            "Driver constructor option KEY=VALUE (repeatable; key/secret/token/password go to the keyring)",
            multiple=True,
            envvar="LIBCLOUD_OPTION",
        ),
        Flag("libcloud-size", "Size id or name", envvar="LIBCLOUD_SIZE"),
        Flag("libcloud-image", "Image id or name", envvar="LIBCLOUD_IMAGE"),
        Flag("libcloud-location", "Location id or name", envvar="LIBCLOUD_LOCATION"),
    ] + common_flags("libcloud", "LIBCLOUD_", ssh_user="root", userdata=False, tags=False)

    def __init__(self, machine_name, machine_dir, config=None, progress=None):
        super().__init__(machine_name, machine_dir, config, progress)
        self.credential_fields = [Field(k) for k in self.config.get("SecretOptions", [])]

    def set_config_from_flags(self, options):
        options = dict(options)  # shared by the machines of a batch: add the secret keys to a copy
        opts = parse_options(options.get("libcloud_option"))
        secret_names = sorted(k for k in opts if k.lower() in SECRET_OPTIONS)
        self.credential_fields = [Field(k, None, f"__secret_{k}") for k in secret_names]
        for k in secret_names:
            options[f"__secret_{k}"] = opts.pop(k)
        super().set_config_from_flags(options)
        self.config["Options"] = opts
        self.config["SecretOptions"] = secret_names

    def configure(self, options):
        self.config.update(LibcloudSettings.from_flags(self.flag_values(options), prefix="libcloud_").to_config())

    @property
    def credential_provider(self):
        # Keyed "libcloud-<provider>:<account>" so two providers never share an entry.
        return f"libcloud-{self.config.get('LibcloudProvider', '')}"

    def connect(self, secrets, endpoint):
        from libcloud.compute.providers import get_driver

        try:
            cls = get_driver(self.config["LibcloudProvider"])
        except AttributeError:
            raise CloudNotFound(f'libcloud has no compute provider "{self.config["LibcloudProvider"]}"') from None
        kwargs = {k: _value(v) for k, v in self.config.get("Options", {}).items()}
        kwargs.update(secrets)
        kwargs.update(self.endpoint_kwargs(endpoint))
        args = [kwargs.pop("key")] if "key" in kwargs else []
        return cls(*args, **kwargs)

    def check_access(self, conn):
        conn.list_sizes()

    def _find(self, items, want, what):
        for item in items:
            if str(item.id) == want or getattr(item, "name", None) == want:
                return item
        raise CloudNotFound(f'{self.name}: {what} "{want}" not found at {self.config["LibcloudProvider"]}')

    def resolve(self, conn):
        location = None
        if self.config["Location"]:
            with self.api("finding the location"):
                location = self._find(conn.list_locations(), self.config["Location"], "location")
        with self.api("finding the size"):
            size = self._find(conn.list_sizes(), self.config["Size"], "size")
        with self.api("finding the image"):
            image = self._find(conn.list_images(), self.config["Image"], "image")
        return {"size": size, "image": image, "location": location}

    def import_key(self, conn, name, public_key):
        try:
            with self.api("importing the SSH key pair"):
                try:
                    kp = conn.import_key_pair_from_string(name, public_key)
                except NotImplementedError:
                    return ""  # no key pairs at this provider: the key goes in as create-time auth
        except CloudNotFound:
            return ""
        return getattr(kp, "extra", {}).get("id") or kp.name

    def delete_key(self, conn):
        if self.config.get("KeyPairId"):
            super().delete_key(conn)

    def create_node(self, conn, resolved, user_data):
        from libcloud.compute.base import NodeAuthSSHKey

        kwargs = {"name": self.node_name(), "size": resolved["size"], "image": resolved["image"]}
        if resolved["location"] is not None:
            kwargs["location"] = resolved["location"]
        accepts = _parameters(conn.create_node)
        if self.config.get("KeyPairId") and ("ex_keyname" in accepts or "**" in accepts):
            kwargs["ex_keyname"] = self.config["KeyPairName"]
        elif "auth" in accepts or "**" in accepts:
            kwargs["auth"] = NodeAuthSSHKey(self.public_key)
        else:
            raise DriverError(
                f'{self.name}: provider "{self.config["LibcloudProvider"]}" cannot put an SSH key on '
                "a new node, which dockyard needs to provision it"
            )
        if "location" in kwargs and "location" not in accepts and "**" not in accepts:
            del kwargs["location"]
        with self.api("creating the node"):
            node = conn.create_node(**kwargs)
        self.record(NodeId=str(node.id))
        return node
