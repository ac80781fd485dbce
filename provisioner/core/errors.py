"""One exception hierarchy for the client side; the CLI turns each into one line and an exit code."""


class DockyardError(Exception):
    """Base of every error the CLI reports as a one-line message (exit code 1)."""

    exit_code = 1


class StoreError(DockyardError):
    """The machine store on disk is unreadable, locked too long or inconsistent."""


class MachineNotExist(DockyardError):
    def __init__(self, name):
        super().__init__(
            f'Docker machine "{name}" does not exist. Use "dockyard ls" to list machines. '
            f'Use "dockyard create" to add a new one.'
        )
        self.name = name


class MachineAlreadyExists(DockyardError):
    def __init__(self, name):
        super().__init__(f'Docker machine "{name}" already exists')
        self.name = name


class InvalidHostname(DockyardError):
    def __init__(self, name=None):
        super().__init__("Invalid hostname specified. Allowed hostname chars are: 0-9a-zA-Z . -")
        self.name = name


class UsageError(DockyardError):
    """Wrong arguments (names missing, too many, conflicting flags)."""


class HostNotRunning(DockyardError):
    def __init__(self, name=None):
        super().__init__("Host is not running")
        self.name = name


class HostAlreadyInState(DockyardError):
    def __init__(self, name, state):
        super().__init__(f'Machine "{name}" is already {state.lower()}.')


class PreCreateCheckError(DockyardError):
    """A driver's pre-create check failed: exit code 3, as Docker Machine."""

    exit_code = 3

    def __init__(self, cause):
        super().__init__(f'Error with pre-create check: "{cause}"')
        self.cause = cause


class DriverError(DockyardError):
    """A driver failed to do what it was asked."""


class DriverNotFound(DriverError):
    def __init__(self, name, known=()):
        hint = f" Known drivers: {', '.join(sorted(known))}." if known else ""
        super().__init__(
            f'Driver "{name}" not found. Is a package providing it installed '
            f'(entry point group "dockyard.drivers")?{hint}'
        )


class NotSupported(DriverError):
    """The driver cannot perform this operation (e.g. `stop` on the generic driver)."""

    def __init__(self, driver, operation):
        super().__init__(f'Driver "{driver}" does not support "{operation}"')


class CertError(DockyardError):
    """Certificates are missing, invalid, expired or do not match the host."""


class SSHError(DockyardError):
    """SSH connection or command failure."""


class SSHTimeout(SSHError):
    """SSH did not become available in time."""


class SSHAuthFailed(SSHError):
    """The server refused our key (wrong key, or the key is not in the user's authorized_keys)."""


class HostKeyChanged(SSHError):
    """The host presented a key other than the pinned one."""


class SudoPasswordRequired(SSHError):
    """The SSH user is not root and sudo wants a password."""


class RemoteCommandError(SSHError):
    """A remote command exited non-zero."""

    def __init__(self, command, exit_status, stdout="", stderr=""):
        detail = (stderr or stdout or "").strip().splitlines()[-5:]
        tail = ("\n" + "\n".join(detail)) if detail else ""
        super().__init__(f"remote command failed (exit {exit_status}): {command}{tail}")
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class ProvisionError(DockyardError):
    """Provisioning a host failed (OS detection, upload, service start)."""


class UnsupportedOS(ProvisionError):
    pass


class EngineUnreachable(DockyardError):
    """The engine did not answer over mutual TLS."""
