"""How containers look through the API: inspect (ContainerJSON), ps (ContainerSummary), the
human Status strings, sizes and the ps filters."""

import os
import time

from dockyard.engine.errors import EngineError, InvalidParameter
from dockyard.engine.runtime import links
from dockyard.engine.runtime.netsettings import minimal_settings

INTERNAL_KEYS = ("Rootfs", "MountPoints", "CreatedNs")
PS_FILTERS = (
    "id",
    "name",
    "label",
    "status",
    "exited",
    "ancestor",
    "before",
    "since",
    "volume",
    "network",
    "is-task",
    "health",
    "publish",
    "expose",
    "isolation",
)
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def human_duration(seconds):
    """Go's units.HumanDuration, used in `Up 5 seconds` / `Exited (0) 2 minutes ago`."""
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return "%d seconds" % int(seconds)
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return "%d minutes" % minutes
    hours = int(round(seconds / 3600))
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return "%d hours" % hours
    if hours < 24 * 7 * 2:
        return "%d days" % (hours // 24)
    if hours < 24 * 30 * 2:
        return "%d weeks" % (hours // 24 // 7)
    if hours < 24 * 365 * 2:
        return "%d months" % (hours // 24 // 30)
    return "%d years" % (hours // 24 // 365)


def api_status(c):
    st = c.state
    if c.removing:
        return "removing"
    if st.get("Paused"):
        return "paused"
    return st.get("Status") or "created"


def human_status(c, now=None):
    now = now if now is not None else time.time()
    st = c.state
    status = api_status(c)
    if status == "removing":
        return "Removal In Progress"
    if status in ("running", "paused"):
        text = "Up " + human_duration(now - st.get("StartedNs", 0) / 1e9)
        if status == "paused":
            return text + " (Paused)"
        health = (health_view(c) or {}).get("Status")
        if health:  # as moby's ps: (health: starting), (healthy), (unhealthy)
            text += " (health: starting)" if health == "starting" else " (%s)" % health
        return text
    if status == "restarting":
        return "Restarting (%d) %s ago" % (st.get("ExitCode", 0), human_duration(now - st.get("FinishedNs", 0) / 1e9))
    if status == "dead":
        return "Dead"
    if status == "exited" and st.get("FinishedNs"):
        return "Exited (%d) %s ago" % (st.get("ExitCode", 0), human_duration(now - st.get("FinishedNs", 0) / 1e9))
    return "Created"


def state_view(c):
    st = c.state
    status = api_status(c)
    return {
        "Status": status,
        "Running": status in ("running", "paused"),
        "Paused": status == "paused",
        "Restarting": status == "restarting",
        "OOMKilled": bool(st.get("OOMKilled")),
        "Dead": status == "dead",
        "Pid": st.get("Pid", 0) if status in ("running", "paused") else 0,
        "ExitCode": st.get("ExitCode", 0),
        "Error": st.get("Error", ""),
        "StartedAt": st.get("StartedAt"),
        "FinishedAt": st.get("FinishedAt"),
        **({"Health": health_view(c)} if health_view(c) else {}),
    }


def health_view(c):
    """State.Health: a running container whose check has not run since this start is "starting"."""
    st = c.state
    test = (c.config.get("Healthcheck") or {}).get("Test") or []
    if c.running and test and test[0] != "NONE" and st.get("HealthStarted") != st.get("StartedNs"):
        return {"Status": "starting", "FailingStreak": 0, "Log": []}
    return st.get("Health")


def mounts_view(c):
    out = []
    for p in c.mounts:
        if p["Type"] == "volume":
            out.append(
                {
                    "Type": "volume",
                    "Name": p.get("Name", ""),
                    "Source": p.get("Source", ""),
                    "Destination": p["Destination"],
                    "Driver": "local",
                    "Mode": p.get("Mode", ""),
                    "RW": bool(p.get("RW", True)),
                    "Propagation": "",
                }
            )
        elif p["Type"] == "tmpfs":
            out.append(
                {
                    "Type": "tmpfs",
                    "Source": "",
                    "Destination": p["Destination"],
                    "Mode": p.get("Mode", ""),
                    "RW": bool(p.get("RW", True)),
                    "Propagation": "",
                }
            )
        else:
            out.append(
                {
                    "Type": "bind",
                    "Source": p.get("Source", ""),
                    "Destination": p["Destination"],
                    "Mode": p.get("Mode", ""),
                    "RW": bool(p.get("RW", True)),
                    "Propagation": p.get("Propagation") or "rprivate",
                }
            )
    return out


def network_settings(c, manager):
    settings = c.state.get("NetworkSettings") if c.running else None
    if settings:
        return settings
    try:
        return manager.network.stopped_settings(c)
    except Exception:
        pass
    mode = c.host_config.get("NetworkMode") or "bridge"
    return minimal_settings("bridge" if mode == "default" else mode)


def _dir_size(path):
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def sizes(c, manager):
    images = manager.images
    try:
        rw = _dir_size(images.rootfs.paths(c.id)["upper"])
    except Exception:
        rw = 0
    try:
        rootfs = rw + int(images.get(c.image_id).size)
    except Exception:
        rootfs = rw
    return rw, rootfs


def links_view(c, manager):
    """HostConfig.Links as dockerd's inspect shows them: "/target:/container/alias", with the linked
    container's current name (whatever form the request gave: "db", "db:alias", "/db:/web/alias")."""
    out = []
    for entry in c.host_config.get("Links") or ():
        try:
            link = links.parse_link(entry)
        except InvalidParameter:
            continue  # checked at create; an older record's odd entry is not shown
        try:
            target = manager.get(link.name).name
        except EngineError:
            target = link.name  # removed since: shown by the name it was given
        out.append("/%s:/%s/%s" % (target.lstrip("/"), c.name.lstrip("/"), link.alias))
    return out or None


def inspect(c, manager, size=False):
    rec = c.record
    hc = dict(c.host_config)
    if hc.get("Links"):
        hc["Links"] = links_view(c, manager)
    images = manager.images
    graph = {"Name": images.rootfs.driver, "Data": None}
    try:
        graph["Data"] = images.rootfs.graph_driver_data(c.id, images.get(c.image_id).diff_ids)
    except Exception:
        pass
    out = {
        "Id": c.id,
        "Created": rec["Created"],
        "Path": rec["Path"],
        "Args": list(rec.get("Args") or []),
        "State": state_view(c),
        "Image": rec["Image"],
        "ResolvConfPath": rec.get("ResolvConfPath", ""),
        "HostnamePath": rec.get("HostnamePath", ""),
        "HostsPath": rec.get("HostsPath", ""),
        "LogPath": rec.get("LogPath", ""),
        "Name": rec["Name"],
        "RestartCount": c.state.get("RestartCount", 0),
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": list(c.exec_ids) or None,
        "HostConfig": hc,
        "GraphDriver": graph,
        "Mounts": mounts_view(c),
        "Config": dict(c.config),
        "NetworkSettings": network_settings(c, manager),
    }
    if size:
        out["SizeRw"], out["SizeRootFs"] = sizes(c, manager)
    return out


def summary(c, manager, size=False, now=None):
    cfg = c.config
    settings = network_settings(c, manager)
    ports = []
    if c.running:
        try:
            ports = manager.network.ps_ports(settings, cfg)
        except Exception:
            ports = []
    argv = [c.record["Path"]] + list(c.record.get("Args") or [])
    mode = c.host_config.get("NetworkMode") or "bridge"
    out = {
        "Id": c.id,
        "Names": ["/" + c.name],
        "Image": cfg.get("Image") or c.image_id,
        "ImageID": c.image_id,
        "Command": " ".join(argv),
        "Created": int(c.record.get("CreatedNs", 0) // 1000000000),
        "Ports": ports,
        "Labels": dict(cfg.get("Labels") or {}),
        "State": api_status(c),
        "Status": human_status(c, now),
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": settings.get("Networks") or {}},
        "Mounts": mounts_view(c),
    }
    if size:
        out["SizeRw"], out["SizeRootFs"] = sizes(c, manager)
    return out


def filter_containers(items, filters, manager, all_):
    """Apply `docker ps` filters; `items` newest first."""
    filters.validate(PS_FILTERS)
    for value in filters.get("status"):
        if value not in STATUSES:
            raise InvalidParameter("invalid filter 'status=%s'" % value)
    if filters.get("status") or filters.get("exited"):
        all_ = True
    before = _anchor(filters.get("before"), manager)
    since = _anchor(filters.get("since"), manager)
    ancestors = set()
    for ref in filters.get("ancestor"):
        try:
            ancestors.add(manager.images.get(ref).id)
        except Exception:
            ancestors.add("\0missing")
    out = []
    for c in items:
        created = c.record.get("CreatedNs", 0)
        if not all_ and not c.running:
            continue
        if before is not None and created >= before:
            continue
        if since is not None and created <= since:
            continue
        if filters.get("id") and not any(c.id.startswith(v) for v in filters.get("id")):
            continue
        if filters.get("name") and not any(v.lstrip("/") in c.name for v in filters.get("name")):
            continue
        if not filters.match_labels(c.config.get("Labels") or {}):
            continue
        if filters.get("status") and api_status(c) not in filters.get("status"):
            continue
        if filters.get("exited"):
            if c.status != "exited" or str(c.state.get("ExitCode", 0)) not in filters.get("exited"):
                continue
        if ancestors and c.image_id not in ancestors:
            continue
        if filters.get("volume"):
            names = (
                {p.get("Name") for p in c.mounts}
                | {p.get("Destination") for p in c.mounts}
                | {p.get("Source") for p in c.mounts}
            )
            if not names & set(filters.get("volume")):
                continue
        if filters.get("network"):
            mode = c.host_config.get("NetworkMode") or "bridge"
            if mode not in filters.get("network"):
                continue
        if filters.get("health"):
            health = (health_view(c) or {}).get("Status") if c.running else None
            if (health or "none") not in filters.get("health"):
                continue
        if filters.get("is-task") and "true" in filters.get("is-task"):
            continue
        out.append(c)
    return out


def _anchor(values, manager):
    if not values:
        return None
    try:
        return manager.get(values[0]).record.get("CreatedNs", 0)
    except EngineError:
        raise InvalidParameter("No such container: %s" % values[0]) from None
