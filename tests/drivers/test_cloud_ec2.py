"""The amazonec2 driver against moto's EC2 server, with dockyard and moto inside a loopback-only network
namespace: the instance addresses moto hands out are unreachable, so create stops at "waiting for SSH"."""

import json
import os
import signal
import time

import pytest

from tests.drivers import moto_netns

pytest.importorskip("libcloud")
pytest.importorskip("moto")

REGION = "eu-west-1"
NEWEST_UBUNTU = "ami-0a0b0c0d0e0f00002"


@pytest.fixture(scope="module")
def ns():
    why = moto_netns.available()
    if why:
        pytest.skip(why)
    ns = moto_netns.LoopbackNetns()
    yield ns
    ns.close()


@pytest.fixture
def moto(ns, tmp_path):
    server = moto_netns.MotoEC2(ns, str(tmp_path))
    yield server
    server.close()


@pytest.fixture
def dy(ns, moto, tmp_path):
    return moto_netns.NetnsDockyard(ns, tmp_path / "store", env=moto.env())


def ec2_args(moto, *extra):
    return [
        "-d",
        "amazonec2",
        "--amazonec2-region",
        REGION,
        "--amazonec2-endpoint",
        moto.endpoint,
        "--amazonec2-ssh-timeout",
        "2",
        *extra,
    ]


def store_text(store):
    out = []
    for root, _dirs, files in os.walk(store):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out.append(f.read().decode(errors="replace"))
    return "\n".join(out)


def live(instances):
    return [i for i in instances if i["state"] != "terminated"]


def test_namespace_has_only_loopback(ns):
    assert ns.routes().strip() == "" or "dev lo" in ns.routes()
    assert "default" not in ns.routes()


def test_create_fails_waiting_for_ssh_then_rm_deletes_everything(dy, moto, tmp_path):
    userdata = tmp_path / "user-data.yaml"
    userdata.write_text("#cloud-config\nruncmd:\n  - echo hello\n")
    p = dy(
        "create",
        *ec2_args(
            moto,
            "--amazonec2-tags",
            "team,blue,env,test",
            "--amazonec2-userdata",
            str(userdata),
            "--amazonec2-open-port",
            "8080",
            "--amazonec2-root-size",
            "20",
        ),
        "web1",
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "waiting for SSH" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1

    state = moto.describe()
    [inst] = live(state["instances"])
    assert inst["state"] == "running"
    assert inst["image"] == NEWEST_UBUNTU  # the newest Canonical Ubuntu 24.04 AMI, found by name
    assert inst["type"] == "t3.micro"
    assert inst["tags"] == {"Name": "web1", "dockyard-machine": "web1", "team": "blue", "env": "test"}
    assert inst["user_data"] == userdata.read_text()
    assert inst["public_ip"] and p.stderr.count(inst["public_ip"]) == 1
    [key] = [k for k in state["key_pairs"] if k["name"].startswith("dockyard-web1-")]
    assert inst["key"] == key["name"]
    [group] = [g for g in state["security_groups"] if g["name"] == "dockyard"]
    assert inst["groups"] == [group["id"]]
    assert group["ingress"] == [
        ["tcp", 22, 22, "0.0.0.0/0"],
        ["tcp", 2376, 2376, "0.0.0.0/0"],
        ["tcp", 8080, 8080, "0.0.0.0/0"],
    ]
    assert any(v["size"] == 20 for v in state["volumes"])

    # The machine is recorded, in state Error, with the instance id (also beside config.json).
    cfg = json.loads((tmp_path / "store/machines/web1/config.json").read_text())
    assert cfg["Status"]["State"] == "Error" and cfg["Driver"]["NodeId"] == inst["id"]
    assert dy("status", "web1").stdout.strip() == "Error"

    p = dy("rm", "-f", "web1")
    assert p.returncode == 0, p.stdout + p.stderr
    state = moto.describe()
    assert live(state["instances"]) == []
    assert not [k for k in state["key_pairs"] if k["name"].startswith("dockyard-web1-")]
    assert not [g for g in state["security_groups"] if g["name"] == "dockyard"]  # no one uses it any more
    assert not (tmp_path / "store/machines/web1").exists()


def test_source_cidr_narrows_the_rules_and_a_group_is_reused(dy, moto):
    p = dy(
        "create",
        *ec2_args(moto, "--amazonec2-source-cidr", "198.51.100.0/24", "--amazonec2-security-group", "narrow"),
        "a",
    )
    assert "waiting for SSH" in p.stderr
    p = dy(
        "create",
        *ec2_args(
            moto,
            "--amazonec2-source-cidr",
            "198.51.100.0/24",
            "--amazonec2-security-group",
            "narrow",
            "--amazonec2-open-port",
            "53/udp",
        ),
        "b",
    )
    assert "waiting for SSH" in p.stderr
    state = moto.describe()
    [group] = [g for g in state["security_groups"] if g["name"] == "narrow"]
    assert group["ingress"] == [
        ["tcp", 22, 22, "198.51.100.0/24"],
        ["tcp", 2376, 2376, "198.51.100.0/24"],
        ["udp", 53, 53, "198.51.100.0/24"],
    ]
    assert {i["groups"][0] for i in live(state["instances"])} == {group["id"]}
    # rm of one machine keeps the group the other still uses.
    assert dy("rm", "-f", "a").returncode == 0
    assert [g for g in moto.describe()["security_groups"] if g["name"] == "narrow"]
    assert dy("rm", "-f", "b").returncode == 0
    assert not [g for g in moto.describe()["security_groups"] if g["name"] == "narrow"]


def test_state_changes_stop_start_kill_restart(ns, dy, moto, tmp_path):
    p = dy("create", *ec2_args(moto), "life")
    assert "waiting for SSH" in p.stderr
    p = dy("stop", "life")
    assert p.returncode == 0, p.stderr
    [inst] = live(moto.describe()["instances"])
    assert inst["state"] == "stopped"

    from dockyard.drivers.base import State
    from dockyard.drivers.cloud.amazonec2 import AmazonEC2Driver
    from dockyard.provisioner.core.store import Store

    store = Store(str(tmp_path / "store"))
    cfg = store.load("life")
    os.environ.update(moto.env())
    try:

        def lifecycle():
            d = AmazonEC2Driver("life", store.machine_dir("life"), cfg["Driver"])
            seen = [d.state()]
            d.start()
            seen.append(d.state())
            d.kill()
            seen.append(d.state())
            d.start()
            d.restart()
            seen.append(d.state())
            return seen, d.ip()

        seen, ip = ns.call_in(lifecycle)
    finally:
        for k in moto.env():
            os.environ.pop(k, None)
    assert seen == [State.STOPPED, State.RUNNING, State.STOPPED, State.RUNNING]
    assert ip == live(moto.describe()["instances"])[0]["public_ip"]
    assert dy("rm", "-f", "life").returncode == 0
    assert live(moto.describe()["instances"]) == []


def test_bad_credentials_one_line_and_nothing_created(dy, moto):
    p = dy("create", *ec2_args(moto), "bad", env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert p.returncode == 3, p.stdout + p.stderr
    assert "refused the credentials" in p.stderr and "AuthFailure" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    state = moto.describe()
    assert state["instances"] == [] and state["key_pairs"] == []


def test_unknown_region_and_image_are_one_line(dy, moto):
    p = dy(
        "create", "-d", "amazonec2", "--amazonec2-region", "mars-north-1", "--amazonec2-endpoint", moto.endpoint, "x"
    )
    assert p.returncode == 3
    assert 'unknown region "mars-north-1"' in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = dy("create", *ec2_args(moto, "--amazonec2-ami", "ami-00000000000000bad"), "y")
    assert p.returncode == 3
    assert "ami-00000000000000bad" in p.stderr and "Traceback" not in p.stderr
    p = dy("create", *ec2_args(moto, "--amazonec2-instance-type", "t3.enormous"), "z")
    assert p.returncode == 3 and "t3.enormous" in p.stderr and "Traceback" not in p.stderr
    assert moto.describe()["instances"] == []


def test_parallel_creates_share_one_group(dy, moto, tmp_path):
    # Three in one process (-n) and two more in two processes at the same time.
    procs = [dy.popen("create", *ec2_args(moto), name) for name in ("solo-a", "solo-b")]
    p = dy("create", *ec2_args(moto), "-n", "3", "worker")
    outs = [pr.communicate(timeout=300) for pr in procs]
    assert p.returncode == 1
    for i in (1, 2, 3):
        assert f"(worker-{i}) Running pre-create checks..." in p.stdout
        assert f"worker-{i}: " in p.stderr
    assert "Created 0 of 3 machines" in p.stderr and p.stderr.count("waiting for SSH") == 3
    assert all("waiting for SSH" in err for _out, err in outs)

    state = moto.describe()
    groups = [g for g in state["security_groups"] if g["name"] == "dockyard"]
    assert len(groups) == 1
    instances = live(state["instances"])
    assert sorted(i["tags"]["Name"] for i in instances) == ["solo-a", "solo-b", "worker-1", "worker-2", "worker-3"]
    assert {tuple(i["groups"]) for i in instances} == {(groups[0]["id"],)}
    assert len({i["key"] for i in instances}) == 5
    # Each rule once, although five creates raced to add them.
    assert len(groups[0]["ingress"]) == 2

    p = dy("rm", "-f", "worker-1", "worker-2", "worker-3", "solo-a", "solo-b")
    assert p.returncode == 0, p.stderr
    state = moto.describe()
    assert live(state["instances"]) == [] and state["key_pairs"] == []


def test_half_created_node_is_found_by_rm_f(dy, moto, tmp_path):
    """dockyard killed while waiting (config.json has no instance id yet): rm -f still deletes the instance."""
    pr = dy.popen(
        "create",
        "-d",
        "amazonec2",
        "--amazonec2-region",
        REGION,
        "--amazonec2-endpoint",
        moto.endpoint,
        "--amazonec2-ssh-timeout",
        "600",
        "half",
    )
    for _ in range(600):
        if live(moto.describe()["instances"]):
            break
        time.sleep(0.2)
    pr.send_signal(signal.SIGKILL)
    pr.communicate()
    assert len(live(moto.describe()["instances"])) == 1
    cfg = json.loads((tmp_path / "store/machines/half/config.json").read_text())
    assert not cfg["Driver"].get("NodeId")
    assert dy("status", "half").stdout.strip() == "Error"
    p = dy("rm", "-f", "half")
    assert p.returncode == 0, p.stderr
    assert live(moto.describe()["instances"]) == []


def test_secrets_stay_in_the_keyring(dy, moto, tmp_path):
    env = {
        "PYTHON_KEYRING_BACKEND": "tests.provisioner.file_keyring.FileKeyring",
        "DOCKYARD_TEST_KEYRING": str(tmp_path / "keyring.json"),
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
    }
    p = dy(
        "create",
        *ec2_args(moto, "--amazonec2-access-key", moto.access_key, "--amazonec2-secret-key", moto.secret_key),
        "kr",
        env=env,
    )
    assert "waiting for SSH" in p.stderr, p.stderr
    kr = json.loads((tmp_path / "keyring.json").read_text())
    assert json.loads(kr["dockyard"]["amazonec2:default"])["secret_key"] == moto.secret_key
    cfg = json.loads((tmp_path / "store/machines/kr/config.json").read_text())
    assert cfg["Driver"]["CredentialRef"] == "amazonec2:default"
    assert cfg["Driver"]["CredentialSource"] == "keyring"
    text = store_text(tmp_path / "store")
    assert moto.secret_key not in text and moto.access_key not in text
    inspect = dy("inspect", "kr", env=env)
    assert inspect.returncode == 0 and moto.secret_key not in inspect.stdout
    assert moto.access_key not in inspect.stdout
    # Later commands read the keyring (no env vars, no flags).
    assert dy("stop", "kr", env=env).returncode == 0
    p = dy("rm", "-f", "kr", env=env)
    assert p.returncode == 0 and "Error removing" not in p.stdout
    assert live(moto.describe()["instances"]) == []
