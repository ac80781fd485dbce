"""Test helper: a network namespace with only loopback, moto's EC2 server inside it, and ways to run the
real dockyard CLI (or driver code in a thread) inside it. Addresses the cloud API hands out are then
unreachable at once (no route), so nothing ever leaves the machine."""

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from tests.integration.conftest import ROOT, clean_env

CLONE_NEWNET = 0x40000000


def _die_with_parent():
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def available():
    """None when namespaces can be used here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = [t for t in ("unshare", "nsenter", "ip") if not shutil.which(t)]
    if missing:
        return "needs " + ", ".join(missing)
    return None


class LoopbackNetns:
    """A network namespace held open by a sleeping process; it vanishes with that process."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && echo up && exec sleep 86400"],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        line = self.holder.stdout.readline().strip()
        if line != "up":
            self.close()
            raise RuntimeError("could not set up the test network namespace")
        self.path = f"/proc/{self.holder.pid}/ns/net"

    def argv(self, *cmd):
        return ["nsenter", f"--net={self.path}", "--", *cmd]

    def routes(self):
        return subprocess.run(self.argv("ip", "-4", "route", "show"), capture_output=True, text=True).stdout

    def call_in(self, fn, *args, **kwargs):
        """Run fn in a thread that has entered the namespace (sockets it makes live there)."""
        result = {}

        def target():
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                result["value"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the caller
                result["error"] = e

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def close(self):
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()


class MotoEC2:
    """moto's server on 127.0.0.1 inside the namespace, with one IAM user allowed ec2:*."""

    def __init__(self, ns, workdir):
        self.ns = ns
        ready = os.path.join(workdir, "moto-ready.json")
        self.log = open(os.path.join(workdir, "moto.log"), "w")
        self.proc = subprocess.Popen(
            ns.argv(sys.executable, "-m", "tests.drivers.moto_ec2", "serve", "--ready", ready),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=clean_env(),
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 120  # importing moto is slow on a cold cache
        while not os.path.exists(ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                with open(self.log.name) as f:
                    raise RuntimeError("moto server did not start:\n" + f.read()[-3000:])
            time.sleep(0.1)
        with open(ready) as f:
            info = json.load(f)
        self.port, self.access_key, self.secret_key = info["port"], info["access_key"], info["secret_key"]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def env(self, **extra):
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key, **extra}

    def describe(self, region="eu-west-1"):
        p = subprocess.run(
            self.ns.argv(
                sys.executable,
                "-m",
                "tests.drivers.moto_ec2",
                "describe",
                "--port",
                str(self.port),
                "--key",
                self.access_key,
                "--secret",
                self.secret_key,
                "--region",
                region,
            ),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=clean_env(),
            timeout=120,
        )
        if p.returncode != 0:
            raise AssertionError("describe failed:\n" + p.stderr)
        return json.loads(p.stdout)

    def close(self):
        with contextlib.suppress(ProcessLookupError):
            if self.proc.poll() is None:
                self.proc.kill()
        self.proc.wait()
        self.log.close()


class NetnsDockyard:
    """The real CLI (python3 -m provisioner) with its own store, run inside the namespace."""

    def __init__(self, ns, store, env=None):
        self.ns = ns
        self.store = str(store)
        self.base_env = dict(env or {})

    def argv(self, *args):
        return self.ns.argv(sys.executable, "-m", "dockyard", "--storage-path", self.store, *args)

    def __call__(self, *args, env=None, timeout=300, input=None):
        return subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=clean_env({**self.base_env, **(env or {})}),
            cwd=ROOT,
        )

    def popen(self, *args, env=None):
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env({**self.base_env, **(env or {})}),
            cwd=ROOT,
        )
