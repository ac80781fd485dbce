#!/usr/bin/env python3
"""A stand-in VBoxManage for tests: the subcommands the virtualbox driver uses, with VBoxManage's documented
argument grammar (unknown options, bad values and wrong states are rejected with VBoxManage-style errors
and exit codes), and VM / host-only / DHCP state kept in the JSON file $FAKE_VBOX_STATE.

Environment: FAKE_VBOX_STATE (required), FAKE_VBOX_VERSION (default 7.0.14r161095),
FAKE_VBOX_IGNORE_ACPI=1 (the guest ignores the power button), FAKE_VBOX_NETWORKS_CONF (extra allowed
host-only CIDRs, comma separated, like /etc/vbox/networks.conf).
"""

import fcntl
import ipaddress
import json
import os
import re
import shutil
import sys
import uuid

SYNTAX = 2  # RTEXITCODE_SYNTAX
FAILURE = 1
ON_OFF = ("on", "off")


class Fail(Exception):
    def __init__(self, lines, code=FAILURE):
        super().__init__(lines)
        self.lines = [lines] if isinstance(lines, str) else lines
        self.code = code


def syntax(msg):
    return Fail([f"VBoxManage: error: {msg}", "Usage: see VBoxManage --help"], SYNTAX)


def not_found(name):
    return Fail(
        [
            f"VBoxManage: error: Could not find a registered machine named '{name}'",
            "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component VirtualBoxWrap, "
            "interface IVirtualBox, callee nsISupports",
            'VBoxManage: error: Context: "FindMachine(Bstr(a->argv[0]).raw(), machine.asOutParam())"',
        ]
    )


# -- state ------------------------------------------------------------------------------------------------


def load(f):
    f.seek(0)
    text = f.read()
    return json.loads(text) if text.strip() else {"vms": {}, "hostonlyifs": [], "dhcpservers": []}


def save(f, state):
    f.seek(0)
    f.truncate()
    f.write(json.dumps(state, indent=1))


def find_vm(state, key):
    for name, vm in state["vms"].items():
        if key in (name, vm["uuid"]):
            return name, vm
    raise not_found(key)


def require_unlocked(name, vm):
    if vm["state"] in ("running", "paused"):
        raise Fail(
            [
                f"VBoxManage: error: The machine '{name}' is already locked for a session (or being unlocked)",
                "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), component MachineWrap",
            ]
        )


# -- option parsing (RTGetOpt: "--opt value" and "--opt=value") -------------------------------------------


def options(args, spec):
    """spec: {option: number of values}; returns [(option, [values])] in order. Unknown -> syntax error."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        opt, eq, inline = a.partition("=")
        if not opt.startswith("-") or opt not in spec:
            raise syntax(f"Unknown option: {a}" if a.startswith("-") else f"Invalid parameter '{a}'")
        n = spec[opt]
        if eq:
            if n != 1:
                raise syntax(f"Invalid option value: {a}")
            values, i = [inline], i + 1
        else:
            values = args[i + 1 : i + 1 + n]
            if len(values) < n:
                raise syntax(f"Missing value for option {opt}")
            i += 1 + n
        out.append((opt, values))
    return out


def choice(opt, value, allowed):
    if value not in allowed:
        raise Fail(f"VBoxManage: error: Invalid {opt} argument '{value}'", SYNTAX)
    return value


def integer(opt, value, low=None, high=None):
    if not re.fullmatch(r"-?\d+", value):
        raise syntax(f"Invalid {opt} value '{value}': not a number")
    n = int(value)
    if (low is not None and n < low) or (high is not None and n > high):
        raise Fail(f"VBoxManage: error: Invalid {opt} value {n}")
    return n


# -- commands -----------------------------------------------------------------------------------------------


def cmd_version(state, args):
    print(os.environ.get("FAKE_VBOX_VERSION", "7.0.14r161095"))


def cmd_list(state, args):
    if len(args) != 1 or args[0] not in ("vms", "runningvms", "hostonlyifs", "dhcpservers", "ostypes"):
        raise syntax(f"Unknown subcommand: {' '.join(args)}")
    what = args[0]
    if what in ("vms", "runningvms"):
        for name, vm in state["vms"].items():
            if what == "vms" or vm["state"] == "running":
                print(f'"{name}" {{{vm["uuid"]}}}')
    elif what == "hostonlyifs":
        for h in state["hostonlyifs"]:
            print(
                f"Name:            {h['name']}\nGUID:            {h['guid']}\nDHCP:            Disabled\n"
                f"IPAddress:       {h['ip']}\nNetworkMask:     {h['mask']}\nIPV6Address:     \n"
                f"IPV6NetworkMaskPrefixLength: 0\nHardwareAddress: 0a:00:27:00:00:0{h['name'][-1]}\n"
                f"MediumType:      Ethernet\nWireless:        No\nStatus:          Up\n"
                f"VBoxNetworkName: HostInterfaceNetworking-{h['name']}\n"
            )
    elif what == "dhcpservers":
        for d in state["dhcpservers"]:
            print(
                f"NetworkName:    {d['network']}\nDhcpd IP:       {d['server']}\nLowerIPAddress: {d['lower']}\n"
                f"UpperIPAddress: {d['upper']}\nNetworkMask:    {d['mask']}\n"
                f"Enabled:        {'Yes' if d['enabled'] else 'No'}\nGlobal Configuration:\n"
                f"    minLeaseTime:     default\n    defaultLeaseTime: default\n    maxLeaseTime:     default\n"
                f"    Forced options:   None\n    Suppressed opts.: None\n        1/legacy: {d['mask']}\n"
                f"Groups:               None\nIndividual Configs:   None\n"
            )
    else:
        print("ID:          Debian_64\nDescription: Debian (64-bit)\nFamily ID:   Linux\n")


def cmd_createvm(state, args):
    opts = dict(
        (o, v)
        for o, v in options(
            args,
            {
                "--name": 1,
                "--groups": 1,
                "--ostype": 1,
                "--register": 0,
                "--basefolder": 1,
                "--uuid": 1,
                "--default": 0,
            },
        )
    )
    if "--name" not in opts:
        raise syntax("Missing --name")
    name = opts["--name"][0]
    if name in state["vms"]:
        raise Fail(
            [
                f"VBoxManage: error: Machine settings file '.../{name}.vbox' already exists",
                "VBoxManage: error: Details: code VBOX_E_FILE_ERROR (0x80bb0004), component MachineWrap",
            ]
        )
    if "--ostype" in opts and opts["--ostype"][0] not in ("Debian_64", "Linux26_64", "Ubuntu_64", "Linux_64"):
        raise Fail(f"VBoxManage: error: Guest OS type '{opts['--ostype'][0]}' is invalid")
    base = opts.get("--basefolder", [os.path.expanduser("~/VirtualBox VMs")])[0]
    folder = os.path.join(base, name)
    os.makedirs(os.path.join(folder, "Logs"), exist_ok=True)
    cfg = os.path.join(folder, f"{name}.vbox")
    with open(cfg, "w") as f:
        f.write("<VirtualBox/>\n")
    vm_uuid = str(uuid.uuid4())
    print(f"Virtual machine '{name}' is created" + (" and registered." if "--register" in opts else "."))
    print(f"UUID: {vm_uuid}\nSettings file: '{cfg}'")
    if "--register" not in opts:
        return  # an unregistered VM is invisible to every other command (registervm would add it)
    state["vms"][name] = {
        "uuid": vm_uuid,
        "folder": folder,
        "cfg": cfg,
        "state": "poweroff",
        "memory": 128,
        "cpus": 1,
        "ostype": opts.get("--ostype", ["Other"])[0],
        "settings": {},
        "nics": {},
        "natpf": {},
        "controllers": {},
        "media": {},
        "shares": {},
        "extradata": {},
        "boot": {},
    }


MODIFYVM = {
    "--name": 1,
    "--ostype": 1,
    "--memory": 1,
    "--cpus": 1,
    "--firmware": 1,
    "--bioslogofadein": 1,
    "--bioslogofadeout": 1,
    "--bioslogodisplaytime": 1,
    "--biosbootmenu": 1,
    "--acpi": 1,
    "--ioapic": 1,
    "--rtcuseutc": 1,
    "--cpuhotplug": 1,
    "--pae": 1,
    "--hpet": 1,
    "--hwvirtex": 1,
    "--nestedpaging": 1,
    "--nested-paging": 1,
    "--largepages": 1,
    "--large-pages": 1,
    "--vtxvpid": 1,
    "--vtx-vpid": 1,
    "--accelerate3d": 1,
    "--accelerate-3d": 1,
    "--audio": 1,
    "--usb": 1,
    **{f"--boot{i}": 1 for i in range(1, 5)},
    **{
        f"--{k}{i}": 1
        for k in (
            "nic",
            "nictype",
            "cableconnected",
            "macaddress",
            "hostonlyadapter",
            "nicpromisc",
            "natpf",
            "bridgeadapter",
            "natdnshostresolver",
            "natdnsproxy",
        )
        for i in range(1, 9)
    },
    "--uart1": 1,
    "--uart2": 1,
    "--uartmode1": 1,
    "--uartmode2": 1,
}


def add_nat_rule(rules, v):
    """A NAT port-forwarding rule "name,tcp|udp,[hostip],hostport,[guestip],guestport", refused as INATEngine's
    AddRedirect refuses it: a name or a host port (with its host IP) that a rule of the NIC already has."""
    parts = v.split(",")
    if len(parts) != 6 or parts[1] not in ("tcp", "udp") or not parts[3].isdigit() or not parts[5].isdigit():
        raise Fail(
            f"VBoxManage: error: Invalid NAT rule '{v}' (expected name,tcp|udp,[hostip],hostport,[guestip],guestport)",
            SYNTAX,
        )
    if parts[0] in rules:
        raise Fail("VBoxManage: error: A NAT rule of this name already exists")
    for r in rules.values():
        f = r.split(",")
        if f[1] == parts[1] and f[3] == parts[3] and f[2] == parts[2]:
            raise Fail("VBoxManage: error: A NAT rule for this host port and this host IP already exists")
    rules[parts[0]] = v


def delete_nat_rule(rules, name):
    if name not in rules:
        raise Fail(
            "VBoxManage: error: Code NS_ERROR_INVALID_ARG (0x80070057) - Invalid argument value "
            f"(extended info not available): no rule named '{name}'"
        )
    del rules[name]


def cmd_modifyvm(state, args):
    if not args or args[0].startswith("-"):
        raise syntax("Missing VM name")
    name, vm = find_vm(state, args[0])
    require_unlocked(name, vm)
    rest, i, parsed = args[1:], 0, []
    # --uartN takes "off" or "<iobase> <irq>"; --uartmodeN "file <path>"; --natpfN "delete <rule>" or one rule.
    while i < len(rest):
        opt = rest[i]
        base = opt.split("=")[0]
        if re.fullmatch(r"--uart[12]", base):
            n = 1 if rest[i + 1 : i + 2] == ["off"] else 2
        elif re.fullmatch(r"--uartmode[12]", base):
            n = 1 if rest[i + 1 : i + 2] == ["disconnected"] else 2
        elif re.fullmatch(r"--natpf[1-8]", base):
            n = 2 if rest[i + 1 : i + 2] == ["delete"] else 1
        else:
            n = MODIFYVM.get(base)
            if n is None:
                raise syntax(f"Unknown option: {opt}")
        parsed += options(rest[i : i + 1 + n], {base: n})
        i += 1 + n
    for opt, values in parsed:
        v = values[0] if values else ""
        m = re.fullmatch(r"--([a-z]+?)([1-8])", opt)
        key, idx = (m.group(1), m.group(2)) if m else (opt[2:], None)
        if opt == "--memory":
            vm["memory"] = integer(opt, v, 4, 2097152)
        elif opt == "--cpus":
            vm["cpus"] = integer(opt, v, 1, 64)
        elif opt == "--ostype":
            vm["ostype"] = v
        elif opt == "--firmware":
            vm["settings"]["firmware"] = choice(opt, v, ("bios", "efi", "efi32", "efi64"))
        elif opt == "--biosbootmenu":
            vm["settings"]["biosbootmenu"] = choice(opt, v, ("disabled", "menuonly", "messageandmenu"))
        elif opt == "--bioslogodisplaytime":
            vm["settings"]["bioslogodisplaytime"] = integer(opt, v, 0, 65535)
        elif key == "boot" and idx:
            vm["boot"][idx] = choice(opt, v, ("none", "floppy", "dvd", "disk", "net"))
        elif key == "nic":
            vm["nics"].setdefault(idx, {})["type"] = choice(
                opt, v, ("none", "null", "nat", "bridged", "intnet", "hostonly", "generic", "natnetwork")
            )
        elif key == "nictype":
            vm["nics"].setdefault(idx, {})["nictype"] = choice(
                opt, v, ("Am79C970A", "Am79C973", "Am79C960", "82540EM", "82543GC", "82545EM", "virtio")
            )
        elif key == "cableconnected":
            vm["nics"].setdefault(idx, {})["cable"] = choice(opt, v, ON_OFF)
        elif key == "macaddress":
            if v != "auto" and not re.fullmatch(r"[0-9A-Fa-f]{12}", v):
                raise Fail(f"VBoxManage: error: Invalid MAC address format '{v}' (12 hex digits, no separators)")
            vm["nics"].setdefault(idx, {})["mac"] = v.upper()
        elif key == "hostonlyadapter":
            vm["nics"].setdefault(idx, {})["hostonly"] = v
        elif key == "nicpromisc":
            vm["nics"].setdefault(idx, {})["promisc"] = choice(opt, v, ("deny", "allow-vms", "allow-all"))
        elif key == "natpf":
            rules = vm["natpf"].setdefault(idx, {})
            if values[0] == "delete":
                delete_nat_rule(rules, values[1])
                continue
            add_nat_rule(rules, v)
        elif key in ("uart",):
            if values[0] != "off":
                integer(opt, str(int(values[0], 16)) if values[0].lower().startswith("0x") else values[0])
                integer(opt, values[1], 0, 15)
            vm["settings"][opt[2:]] = values
        elif key == "uartmode":
            if values[0] != "disconnected":
                choice(opt, values[0], ("server", "client", "tcpserver", "tcpclient", "file"))
            vm["settings"][opt[2:]] = values
        elif key in ("natdnshostresolver", "natdnsproxy") or opt[2:].replace("-", "") in (
            "bioslogofadein",
            "bioslogofadeout",
            "acpi",
            "ioapic",
            "rtcuseutc",
            "cpuhotplug",
            "pae",
            "hpet",
            "hwvirtex",
            "nestedpaging",
            "largepages",
            "vtxvpid",
            "accelerate3d",
            "usb",
        ):
            vm["settings"][opt[2:].replace("-", "")] = choice(opt, v, ON_OFF)
        elif opt == "--audio":
            vm["settings"]["audio"] = choice(opt, v, ("none", "null", "pulse", "alsa", "oss"))
        else:
            vm["settings"][opt[2:]] = v


def cmd_storagectl(state, args):
    if not args or args[0].startswith("-"):
        raise syntax("Missing VM name")
    name, vm = find_vm(state, args[0])
    require_unlocked(name, vm)
    opts = dict(
        options(
            args[1:],
            {
                "--name": 1,
                "--add": 1,
                "--controller": 1,
                "--portcount": 1,
                "--hostiocache": 1,
                "--bootable": 1,
                "--remove": 0,
                "--rename": 1,
            },
        )
    )
    if "--name" not in opts:
        raise syntax("Storage controller name not specified")
    ctl = opts["--name"][0]
    if "--add" in opts:
        bus = choice("--add", opts["--add"][0], ("ide", "sata", "scsi", "floppy", "sas", "usb", "pcie", "virtio"))
        if ctl in vm["controllers"]:
            raise Fail(f"VBoxManage: error: Storage controller named '{ctl}' already exists")
        vm["controllers"][ctl] = {"bus": bus, "ports": 30 if bus == "sata" else 2}
    elif ctl not in vm["controllers"]:
        raise Fail(f"VBoxManage: error: Could not find a storage controller named '{ctl}'")
    if "--portcount" in opts:
        vm["controllers"][ctl]["ports"] = integer("--portcount", opts["--portcount"][0], 1, 30)
    if "--hostiocache" in opts:
        choice("--hostiocache", opts["--hostiocache"][0], ON_OFF)


def _medium_check(path, kind):
    if not os.path.isfile(path):
        raise Fail(
            [
                f"VBoxManage: error: Could not find file for the medium '{os.path.abspath(path)}' "
                "(VERR_FILE_NOT_FOUND)",
                "VBoxManage: error: Details: code VBOX_E_FILE_ERROR (0x80bb0004), component MediumWrap",
            ]
        )
    with open(path, "rb") as f:
        head = f.read(0x8006)
    if kind == "hdd" and head[0x40:0x44] != bytes.fromhex("7f10dabe"):  # VDI signature 0xbeda107f, little endian
        raise Fail(f"VBoxManage: error: Could not get the storage format of the medium '{path}' (VERR_NOT_SUPPORTED)")
    if kind == "dvddrive" and head[0x8001:0x8006] != b"CD001":
        raise Fail(f"VBoxManage: error: Could not get the storage format of the medium '{path}' (VERR_NOT_SUPPORTED)")


def cmd_storageattach(state, args):
    if not args or args[0].startswith("-"):
        raise syntax("Missing VM name")
    name, vm = find_vm(state, args[0])
    require_unlocked(name, vm)
    opts = dict(
        options(
            args[1:],
            {
                "--storagectl": 1,
                "--port": 1,
                "--device": 1,
                "--type": 1,
                "--medium": 1,
                "--mtype": 1,
                "--nonrotational": 1,
                "--discard": 1,
                "--hotpluggable": 1,
            },
        )
    )
    if "--storagectl" not in opts:
        raise syntax("Storage controller name not specified")
    ctl = opts["--storagectl"][0]
    if ctl not in vm["controllers"]:
        raise Fail([f"VBoxManage: error: Could not find a controller named '{ctl}'"])
    port = integer("--port", opts.get("--port", ["0"])[0], 0)
    device = integer("--device", opts.get("--device", ["0"])[0], 0)
    if port >= vm["controllers"][ctl]["ports"] or device != 0:
        raise Fail(
            f"VBoxManage: error: The port and/or device parameter are out of range: port={port} "
            f"(must be in range [0, {vm['controllers'][ctl]['ports'] - 1}]), device={device} (must be 0)"
        )
    medium = opts.get("--medium", [None])[0]
    if medium is None:
        raise syntax("Missing --medium")
    slot = f"{ctl}-{port}-{device}"
    if medium == "none":
        vm["media"].pop(slot, None)
        return
    kind = choice("--type", opts.get("--type", [""])[0], ("dvddrive", "hdd", "fdd"))
    if medium != "emptydrive":
        _medium_check(medium, kind)
    vm["media"][slot] = {"type": kind, "path": os.path.abspath(medium) if medium != "emptydrive" else "emptydrive"}


def cmd_modifymedium(state, args):
    if args and args[0] in ("disk", "dvd", "floppy"):
        args = args[1:]
    if not args or args[0].startswith("-"):
        raise syntax("Missing medium")
    path = args[0]
    opts = dict(options(args[1:], {"--resize": 1, "--resizebyte": 1, "--type": 1, "--compact": 0}))
    _medium_check(path, "hdd")
    sizes = state.setdefault("medium_sizes", {})
    with open(path, "rb") as f:
        f.seek(0x170)  # VDI header v1.1: disk size in bytes at offset 0x170
        current = int.from_bytes(f.read(8), "little")
    current = sizes.get(os.path.abspath(path), current)
    if "--resize" in opts:
        new = integer("--resize", opts["--resize"][0], 1) * (1 << 20)
        if new < current:
            raise Fail(
                f"VBoxManage: error: Failed to resize medium: shrinking is not supported (current {current} bytes)"
            )
        sizes[os.path.abspath(path)] = new
    print("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%")


def cmd_sharedfolder(state, args):
    """sharedfolder add|remove VM --name N [--hostpath P] [--readonly] [--transient]: a permanent share needs the
    VM's settings (not while it runs), a transient one its running console (gone at power-off)."""
    if len(args) < 2 or args[0] not in ("add", "remove"):
        raise syntax("Invalid sharedfolder subcommand")
    name, vm = find_vm(state, args[1])
    spec = {"--name": 1, "--transient": 0}
    if args[0] == "add":
        spec.update({"--hostpath": 1, "--readonly": 0, "--automount": 0, "--auto-mount-point": 1})
    opts = dict(options(args[2:], spec))
    share = opts.get("--name", [None])[0]
    if not share:
        raise syntax("No shared folder name (--name) was given")
    if any(c in share for c in " \t\n\r"):
        raise syntax(f"Invalid shared folder name '{share}': contains space")
    transient = "--transient" in opts
    if transient and vm["state"] not in ("running", "paused"):
        raise Fail(f"VBoxManage: error: Machine '{name}' is not currently running.")
    if not transient:
        require_unlocked(name, vm)
    table = vm.setdefault("transient_shares", {}) if transient else vm["shares"]
    if args[0] == "add":
        if "--hostpath" not in opts:
            raise syntax("No host path (--hostpath) was given")
        if share in table:
            raise Fail(
                [
                    f"VBoxManage: error: Shared folder named '{share}' already exists",
                    "VBoxManage: error: Details: code VBOX_E_OBJECT_IN_USE (0x80bb000c)",
                ]
            )
        table[share] = os.path.abspath(opts["--hostpath"][0])
        vm.setdefault("readonly_shares", {})[share] = "--readonly" in opts
    else:
        if share not in table:
            raise Fail(
                [
                    f"VBoxManage: error: Could not find a shared folder named '{share}'.",
                    "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001)",
                ]
            )
        del table[share]


def cmd_setextradata(state, args):
    if len(args) not in (2, 3):
        raise syntax("Incorrect number of parameters")
    if args[0] != "global":
        _, vm = find_vm(state, args[0])
        vm["extradata"][args[1]] = args[2] if len(args) == 3 else None


def cmd_showvminfo(state, args):
    if not args or args[0].startswith("-"):
        raise syntax("Missing VM name")
    name, vm = find_vm(state, args[0])
    opts = dict(options(args[1:], {"--machinereadable": 0, "--details": 0, "--log": 1}))
    if "--machinereadable" not in opts:
        print(f"Name: {name}\nState: {vm['state']}")
        return
    lines = [
        f'name="{name}"',
        f'ostype="{vm["ostype"]}"',
        f'UUID="{vm["uuid"]}"',
        f'CfgFile="{vm["cfg"]}"',
        f"memory={vm['memory']}",
        f"cpus={vm['cpus']}",
        f'VMState="{vm["state"]}"',
        'VMStateChangeTime="2026-11-28T00:00:00.000000000"',
    ]
    for ctl, c in vm["controllers"].items():
        lines.append(f'storagecontrollername{list(vm["controllers"]).index(ctl)}="{ctl}"')
        for port in range(c["ports"]):
            m = vm["media"].get(f"{ctl}-{port}-0")
            lines.append(f'"{ctl}-{port}-0"="{m["path"] if m else "none"}"')
    for i in range(1, 9):
        nic = vm["nics"].get(str(i), {})
        lines.append(f'nic{i}="{nic.get("type", "none")}"')
        if nic.get("mac"):
            lines.append(f'macaddress{i}="{nic["mac"]}"')
        if nic.get("hostonly"):
            lines.append(f'hostonlyadapter{i}="{nic["hostonly"]}"')
        for j, rule in enumerate(vm["natpf"].get(str(i), {}).values()):
            lines.append(f'Forwarding({j})="{rule}"')
    for j, (share, path) in enumerate(vm["shares"].items(), 1):
        lines += [f'SharedFolderNameMachineMapping{j}="{share}"', f'SharedFolderPathMachineMapping{j}="{path}"']
    for j, (share, path) in enumerate(vm.get("transient_shares", {}).items(), 1):
        lines += [f'SharedFolderNameTransientMapping{j}="{share}"', f'SharedFolderPathTransientMapping{j}="{path}"']
    print("\n".join(lines))


def cmd_startvm(state, args):
    if not args or args[0].startswith("-"):
        raise syntax("Missing VM name")
    name, vm = find_vm(state, args[0])
    opts = dict(options(args[1:], {"--type": 1}))
    choice("--type", opts.get("--type", ["gui"])[0], ("gui", "headless", "sdl", "separate"))
    if vm["state"] in ("running", "paused"):
        raise Fail(
            [
                f"VBoxManage: error: The machine '{name}' is already locked by a session (or being locked or unlocked)",
                "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)",
            ]
        )
    for slot, m in vm["media"].items():
        if m["path"] != "emptydrive" and not os.path.exists(m["path"]):
            raise Fail(f"VBoxManage: error: Could not open the medium '{m['path']}' (attached at {slot})")
    names = {h["name"] for h in state["hostonlyifs"]}
    for nic in vm["nics"].values():
        if nic.get("type") == "hostonly" and nic.get("hostonly") not in names:
            raise Fail(
                f"VBoxManage: error: Nonexistent host networking interface, name '{nic.get('hostonly')}' "
                "(VERR_INTERNAL_ERROR)"
            )
    print(f'Waiting for VM "{name}" to power on...\nVM "{name}" has been successfully started.')
    vm["state"] = "running"
    with open(os.path.join(vm["folder"], "Logs", "VBox.log"), "a") as f:
        f.write("00:00:00.000000 VirtualBox VM (fake) starting\n")


def cmd_controlvm(state, args):
    if len(args) < 2:
        raise syntax("Not enough parameters")
    name, vm = find_vm(state, args[0])
    action = args[1]
    natpf = re.fullmatch(r"natpf([1-8])", action)
    if not natpf and action not in (
        "pause",
        "resume",
        "reset",
        "poweroff",
        "savestate",
        "acpipowerbutton",
        "acpisleepbutton",
    ):
        raise syntax(f"Invalid parameter '{action}'")
    if vm["state"] not in ("running", "paused"):
        raise Fail([f"VBoxManage: error: Machine '{name}' is not currently running"])
    if natpf:  # controlvm VM natpfN RULE | natpfN delete NAME: changes the running VM's NAT and its settings
        if vm["nics"].get(natpf.group(1), {}).get("type") != "nat":
            raise Fail(f"VBoxManage: error: NIC {natpf.group(1)} is not attached to NAT")
        rules = vm["natpf"].setdefault(natpf.group(1), {})
        if len(args) == 4 and args[2] == "delete":
            delete_nat_rule(rules, args[3])
        elif len(args) == 3 and len(args[2].split(",")) == 6:
            add_nat_rule(rules, args[2])
        else:
            raise syntax(f"Missing or invalid argument to '{action}'.")
        return
    if action == "pause":
        vm["state"] = "paused"
    elif action == "resume":
        if vm["state"] != "paused":
            raise Fail("VBoxManage: error: Invalid machine state: Running (must be Paused)")
        vm["state"] = "running"
    elif action in ("poweroff",):
        vm["state"] = "poweroff"
        vm.pop("transient_shares", None)
        print("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%")
    elif action == "savestate":
        vm["state"] = "saved"
    elif action == "acpipowerbutton":
        if vm["state"] == "paused":
            raise Fail("VBoxManage: error: Invalid machine state: Paused")
        if os.environ.get("FAKE_VBOX_IGNORE_ACPI") != "1":
            vm["state"] = "poweroff"
            vm.pop("transient_shares", None)


def cmd_unregistervm(state, args):
    if not args or args[0].startswith("-"):
        raise syntax("Missing VM name")
    name, vm = find_vm(state, args[0])
    opts = dict(options(args[1:], {"--delete": 0, "--delete-all": 0}))
    if vm["state"] in ("running", "paused"):
        raise Fail(
            [
                f"VBoxManage: error: Cannot unregister the machine '{name}' while it is locked",
                "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007)",
            ]
        )
    if "--delete" in opts or "--delete-all" in opts:
        for m in vm["media"].values():  # hard disks go with the VM; DVD images are only detached
            if m["type"] == "hdd" or "--delete-all" in opts:
                try:
                    os.unlink(m["path"])
                except FileNotFoundError:
                    pass
        shutil.rmtree(vm["folder"], ignore_errors=True)
    del state["vms"][name]


def _allowed(net):
    extra = [
        ipaddress.ip_network(x.strip()) for x in os.environ.get("FAKE_VBOX_NETWORKS_CONF", "").split(",") if x.strip()
    ]
    return any(net.subnet_of(a) for a in [ipaddress.ip_network("192.168.56.0/21")] + extra)


def cmd_hostonlyif(state, args):
    if not args or args[0] not in ("create", "remove", "ipconfig"):
        raise syntax("Invalid hostonlyif subcommand")
    if args[0] == "create":
        if len(args) != 1:
            raise syntax("Too many parameters")
        taken = {h["name"] for h in state["hostonlyifs"]}
        name = next(f"vboxnet{i}" for i in range(100) if f"vboxnet{i}" not in taken)
        state["hostonlyifs"].append({"name": name, "guid": str(uuid.uuid4()), "ip": "0.0.0.0", "mask": "0.0.0.0"})
        print("0%...10%...20%...30%...40%...50%...60%...70%...80%...90%...100%")
        print(f"Interface '{name}' was successfully created")
        return
    if len(args) < 2:
        raise syntax("Missing interface name")
    entry = next((h for h in state["hostonlyifs"] if h["name"] == args[1]), None)
    if entry is None:
        raise Fail(f"VBoxManage: error: Could not find interface '{args[1]}'")
    if args[0] == "remove":
        state["hostonlyifs"].remove(entry)
        return
    opts = dict(options(args[2:], {"--dhcp": 0, "--ip": 1, "--netmask": 1, "--ipv6": 1, "--netmasklengthv6": 1}))
    if "--ip" not in opts:
        raise syntax("--ip or --dhcp is required")
    try:
        ip = ipaddress.ip_address(opts["--ip"][0])
        mask = opts.get("--netmask", ["255.255.255.0"])[0]
        net = ipaddress.ip_network(f"{ip}/{mask}", strict=False)
    except ValueError:
        raise syntax(f"Invalid --ip/--netmask {opts['--ip'][0]}/{opts.get('--netmask')}") from None
    if not _allowed(net):
        raise Fail(
            [
                "VBoxManage: error: Code E_ACCESSDENIED (0x80070005) - Access denied (extended info not available)",
                'VBoxManage: error: Context: "EnableStaticIPConfig(Bstr(pszIp).raw(), '
                'Bstr(pszNetmask).raw())" at line 242 of file VBoxManageHostonly.cpp',
            ]
        )
    entry["ip"], entry["mask"] = str(ip), str(net.netmask)


def cmd_dhcpserver(state, args):
    if not args or args[0] not in ("add", "modify", "remove", "start", "stop", "restart", "findlease"):
        raise syntax("Invalid dhcpserver subcommand")
    aliases = {"--netname": "--network", "--ip": "--server-ip", "--lowerip": "--lower-ip", "--upperip": "--upper-ip"}
    raw = options(
        args[1:],
        {
            "--network": 1,
            "--netname": 1,
            "--interface": 1,
            "--server-ip": 1,
            "--ip": 1,
            "--netmask": 1,
            "--lower-ip": 1,
            "--lowerip": 1,
            "--upper-ip": 1,
            "--upperip": 1,
            "--enable": 0,
            "--disable": 0,
        },
    )
    opts = {aliases.get(o, o): v for o, v in raw}
    if "--interface" in opts:
        opts["--network"] = [f"HostInterfaceNetworking-{opts['--interface'][0]}"]
    if "--network" not in opts:
        raise syntax("You need to specify either --network or --interface to identify the DHCP server")
    network = opts["--network"][0]
    current = next((d for d in state["dhcpservers"] if d["network"] == network), None)
    if args[0] == "remove":
        if current is None:
            raise Fail(f"VBoxManage: error: DHCP server does not exist ({network})")
        state["dhcpservers"].remove(current)
        return
    if args[0] == "add" and current is not None:
        raise Fail(f"VBoxManage: error: DHCP server already exists ({network})")
    if args[0] == "modify" and current is None:
        raise Fail(f"VBoxManage: error: DHCP server does not exist ({network})")
    if "--enable" in opts and "--disable" in opts:
        raise syntax("--enable and --disable are mutually exclusive")
    entry = current or {"network": network, "enabled": False}
    for opt, key in (
        ("--server-ip", "server"),
        ("--netmask", "mask"),
        ("--lower-ip", "lower"),
        ("--upper-ip", "upper"),
    ):
        if opt in opts:
            try:
                ipaddress.ip_address(opts[opt][0])
            except ValueError:
                raise syntax(f"Invalid {opt} address '{opts[opt][0]}'") from None
            entry[key] = opts[opt][0]
        elif args[0] == "add":
            raise syntax(f"Missing {opt}")
    if "--enable" in opts:
        entry["enabled"] = True
    if "--disable" in opts:
        entry["enabled"] = False
    if current is None:
        state["dhcpservers"].append(entry)


COMMANDS = {
    "list": cmd_list,
    "createvm": cmd_createvm,
    "modifyvm": cmd_modifyvm,
    "storagectl": cmd_storagectl,
    "storageattach": cmd_storageattach,
    "modifymedium": cmd_modifymedium,
    "sharedfolder": cmd_sharedfolder,
    "setextradata": cmd_setextradata,
    "showvminfo": cmd_showvminfo,
    "startvm": cmd_startvm,
    "controlvm": cmd_controlvm,
    "unregistervm": cmd_unregistervm,
    "hostonlyif": cmd_hostonlyif,
    "dhcpserver": cmd_dhcpserver,
}


def main(argv):
    path = os.environ.get("FAKE_VBOX_STATE")
    if not path:
        print("fake VBoxManage: FAKE_VBOX_STATE is not set", file=sys.stderr)
        return 1
    if not argv:
        print("Usage: VBoxManage [<general option>] <command>", file=sys.stderr)
        return SYNTAX
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        state = load(f)
        with open(path + ".log", "a") as log:
            log.write(json.dumps(argv) + "\n")
        try:
            if argv in (["--version"], ["-v"], ["-V"]):
                cmd_version(state, [])
                return 0
            command = COMMANDS.get(argv[0])
            if command is None:
                raise syntax(f"Invalid command '{argv[0]}'")
            command(state, argv[1:])
        except Fail as e:
            print("\n".join(e.lines), file=sys.stderr)
            return e.code
        save(f, state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
