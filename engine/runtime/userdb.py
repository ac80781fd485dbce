"""Resolve Docker's User ("uid", "uid:gid", "name", "name:group") against a container's
/etc/passwd and /etc/group, the way runc does (read inside the container, after pivot_root)."""


class UserError(ValueError):
    """The user or group does not exist in the container."""


def _entries(path, minfields):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) >= minfields:
            out.append(fields)
    return out


def resolve(user, extra_groups=(), passwd="/etc/passwd", group="/etc/group"):
    """-> (uid, gid, [supplementary gids], home). Defaults: root, gid 0, HOME '/'."""
    user = (user or "").strip()
    name_part, _, group_part = user.partition(":")
    users = _entries(passwd, 7)
    groups = _entries(group, 4)
    uid, gid, home, username = 0, 0, "/", "root"
    matched = None
    if name_part:
        for fields in users:
            if fields[0] == name_part or (name_part.isdigit() and fields[2] == name_part):
                matched = fields
                break
        if matched is None:
            if not name_part.isdigit():
                raise UserError("unable to find user %s: no matching entries in passwd file" % name_part)
            uid, username = int(name_part), None
        else:
            uid, username = int(matched[2]), matched[0]
            gid = int(matched[3]) if matched[3].isdigit() else 0
            home = matched[5] or "/"
    else:
        for fields in users:
            if fields[2] == "0":
                home = fields[5] or "/"
                break
    if group_part:
        found = None
        for fields in groups:
            if fields[0] == group_part or (group_part.isdigit() and fields[2] == group_part):
                found = fields
                break
        if found is None:
            if not group_part.isdigit():
                raise UserError("unable to find group %s: no matching entries in group file" % group_part)
            gid = int(group_part)
        else:
            gid = int(found[2])
    supplementary = []
    if username is not None and not group_part:
        for fields in groups:
            members = [m for m in fields[3].split(",") if m]
            if username in members and fields[2].isdigit():
                supplementary.append(int(fields[2]))
    for extra in extra_groups or ():
        extra = str(extra)
        if extra.isdigit():
            supplementary.append(int(extra))
            continue
        for fields in groups:
            if fields[0] == extra:
                supplementary.append(int(fields[2]))
                break
        else:
            raise UserError("unable to find group %s: no matching entries in group file" % extra)
    seen, sup = set(), []
    for g in supplementary:
        if g not in seen:
            seen.add(g)
            sup.append(g)
    return uid, gid, sup, home
