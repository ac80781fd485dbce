"""The container runtime: namespaces, mounts, cgroups, the fork server, supervisors and the manager.

Layout (one job per module):
  libc          ctypes bindings for the syscalls Python lacks (unshare, setns, mount, pivot_root, capset)
  caps          capability names, Docker's default set, bounding/capset application
  cgroups       cgroup v1 and v2: create, limits, join, freeze, stats, OOM, remove
  mountns       the container's mount namespace: root bind, /proc, /dev, user mounts, pivot_root, masks
  rootpath      paths resolved once inside a root through descriptors; mounts made onto those descriptors
  copyup        fills a new volume from the image's content at its path (descriptor walk, nodes by mknod)
  userdb        /etc/passwd and /etc/group lookups inside the container
  userns        --userns-remap: the id map (/etc/subuid, /etc/subgid), its data-root, the container rules
  containerinit the container's first process: namespaces, rootfs, user, capabilities, execve
  supervisor    one per running container: owns the process, stdio, json-file log, attach, exit status
  execproc      `docker exec`: joins a running container's namespaces and cgroup, runs a process
  forkserver    the warm process that forks supervisors and exec helpers on request
  channel       SEQPACKET messages (JSON + file descriptors) between these processes
  spec          turns a container's stored config into what the supervisor needs (the runtime spec)
  store         containers on disk: config.json / state.json
  manager       ContainerManager: create/start/stop/kill/wait/rm/... and live restore
  logs          the json-file log: writer (supervisor side) and reader (logs API)
  events        the engine's event bus (/events)
"""
