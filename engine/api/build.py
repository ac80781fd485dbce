"""Build resource: POST /build (the classic builder), /build/prune, and BuildKit's /session and /grpc
(answered with how to build here: this engine has no BuildKit)."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading

from dockyard.engine.build.builder import Build, Builder, BuildOptions, StepFailed
from dockyard.engine.config import registry_certs_dirs
from dockyard.engine.errors import EngineError, InvalidParameter, Unsupported
from dockyard.engine.images import reference, registry

log = logging.getLogger("dockyard.engine.build")

NO_BUILDKIT = (
    "BuildKit is not supported by this engine: build with the classic builder, DOCKER_BUILDKIT=0 docker build ..."
)
# Resource options of `docker build` -> the HostConfig of RUN's containers.
_RUN_LIMITS = (
    ("memory", "Memory"),
    ("memswap", "MemorySwap"),
    ("cpushares", "CpuShares"),
    ("cpuperiod", "CpuPeriod"),
    ("cpuquota", "CpuQuota"),
    ("shmsize", "ShmSize"),
)


def register(router, engine):
    state: dict[str, Builder] = {}
    lock = threading.Lock()

    def builder() -> Builder:
        # One Builder per engine (its cache and work dir, cleaned when made), made on the first build.
        with lock:
            if "b" not in state:
                root = os.path.join(engine.config.data_root, "build")
                state["b"] = Builder(engine.images, engine.containers, root)
            return state["b"]

    router.add("POST", "/build", lambda req: build(req, builder()))
    router.add("POST", "/build/prune", lambda req: prune(req, builder()))
    router.add("POST", "/session", no_buildkit)
    router.add("POST", "/grpc", no_buildkit)
    router.add("GET", "/grpc", no_buildkit)


def no_buildkit(req):
    raise Unsupported(NO_BUILDKIT)


def _json_query(req, name, kind, default):
    text = req.query_value(name)
    if not text:
        return default
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidParameter("invalid %s: not JSON" % name) from None
    if not isinstance(value, kind):
        raise InvalidParameter("invalid %s: expected a JSON %s" % (name, kind.__name__))
    return value


def parse_options(req) -> BuildOptions:
    if req.query_value("remote"):
        raise InvalidParameter("remote build contexts (URLs, git) are not supported: send the context as a tar")
    version = req.query_value("version") or "1"
    if version != "1":
        raise InvalidParameter(
            "BuildKit (version=%s) is not supported by this engine: build with DOCKER_BUILDKIT=0" % version
        )
    if req.query_bool("squash"):
        raise Unsupported("squash is not supported by this engine")
    build_args = _json_query(req, "buildargs", dict, {})
    labels = _json_query(req, "labels", dict, {})
    cache_from = _json_query(req, "cachefrom", list, [])
    for key, value in list(build_args.items()) + list(labels.items()):
        if not isinstance(key, str) or not (value is None or isinstance(value, str)):
            raise InvalidParameter("build args and labels must map strings to strings")
    tags = []
    for tag in (t for t in req.query.get("t", []) if t):
        parsed = reference.parse(tag, default_tag=True)
        if parsed.digest:
            raise InvalidParameter("invalid reference format: a build tag cannot be a digest: %s" % tag)
        reference.check_repo_name(parsed.repo)
        tags.append(parsed.tagged)
    run_host_config: dict = {}
    for name, key in _RUN_LIMITS:
        value = req.query_int(name)
        if value:
            run_host_config[key] = value
    if req.query_value("cpusetcpus"):
        run_host_config["CpusetCpus"] = req.query_value("cpusetcpus")
    ulimits = _json_query(req, "ulimits", list, [])
    if ulimits:
        run_host_config["Ulimits"] = ulimits
    extra_hosts = [h for value in req.query.get("extrahosts", []) for h in value.split(",") if h]
    if extra_hosts:
        run_host_config["ExtraHosts"] = extra_hosts
    network = req.query_value("networkmode") or ""
    if network == "default":
        network = ""
    return BuildOptions(
        tags=tags,
        dockerfile=req.query_value("dockerfile") or "Dockerfile",
        build_args=build_args,
        no_cache=req.query_bool("nocache"),
        rm=req.query_bool("rm", default=True),
        force_rm=req.query_bool("forcerm"),
        pull=req.query_bool("pull"),
        labels={k: v or "" for k, v in labels.items()},
        target=req.query_value("target") or "",
        network=network,
        cache_from=[c for c in cache_from if isinstance(c, str)],
        platform=req.query_value("platform") or "",
        run_host_config=run_host_config,
    )


def _auth_for(registry_config, ref):
    """X-Registry-Config holds {registry: AuthConfig}; pull wants one AuthConfig as X-Registry-Auth."""
    if not registry_config:
        return None
    try:
        configs = json.loads(base64.urlsafe_b64decode(registry_config + "=" * (-len(registry_config) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(configs, dict):
        return None
    host, _ = registry.split_repository(reference.parse(ref, default_tag=True).repo)
    for key in (host, "https://%s/v1/" % host, "https://index.docker.io/v1/" if host == "docker.io" else None):
        if key and isinstance(configs.get(key), dict):
            return base64.urlsafe_b64encode(json.dumps(configs[key]).encode()).decode()
    return None


class _Output:
    """The JSON message stream; opened on the first message so that early errors stay HTTP errors.

    In quiet mode (q=1) messages are held back: success sends only the image ID, a failure
    sends what was held back and then the error, as moby does.
    """

    def __init__(self, req, quiet):
        self.req = req
        self.quiet = quiet
        self.held: list[dict] = []
        self.stream = None

    def _open(self):
        if self.stream is None:
            self.stream = self.req.stream(200, "application/json")
        return self.stream

    def emit(self, msg):
        if self.quiet and "aux" not in msg:
            self.held.append(msg)
            return
        self._open().write_json(msg)

    def final(self, msg):
        """Sent also in quiet mode (the image ID)."""
        self._open().write_json(msg)

    def finish(self):
        self._open()

    def fail(self, message, code=None):
        stream = self._open()
        for msg in self.held:
            stream.write_json(msg)
        detail = {"message": message}
        if code is not None:
            detail["code"] = code
        stream.write_json({"errorDetail": detail, "error": message})


def build(req, builder: Builder):
    options = parse_options(req)
    quiet = req.query_bool("q")
    out = _Output(req, quiet)
    policy = (req.engine.config.opts or {}).get("registry-pull", "local")
    registry_config = req.headers.get("X-Registry-Config")

    def pull(ref, emit):
        registry.pull(
            builder.images,
            ref,
            "",
            emit,
            _auth_for(registry_config, ref),
            req.engine.config.insecure_registries,
            policy,
            mirrors=req.engine.config.registry_mirrors,
            certs_dirs=registry_certs_dirs(req.engine.config),
            max_concurrent=req.engine.config.max_concurrent_downloads,
        )

    context = builder.new_context()
    try:
        context.receive(req.body)
        job = Build(builder, context, options, out.emit, pull)  # Dockerfile errors: plain HTTP 400s
        try:
            image = job.run()
            out.emit({"aux": {"ID": image.id}})
            if quiet:
                out.final({"stream": image.id + "\n"})
            else:
                out.emit({"stream": "Successfully built %s\n" % image.id[7:19]})
            for tag in options.tags:
                builder.images.tag(image.id, tag)
                out.emit({"stream": "Successfully tagged %s\n" % tag})
        except (BrokenPipeError, ConnectionResetError):
            raise  # the client went away: nobody to tell
        except StepFailed as exc:
            out.fail(exc.message, exc.code)
        except EngineError as exc:
            out.fail(exc.message)
        except Exception as exc:
            log.exception("build failed")
            out.fail("build failed: %s" % exc)
    finally:
        context.close()
    out.finish()
    return None


def prune(req, builder: Builder):
    removed = builder.cache.clear()
    return {"CachesDeleted": removed, "SpaceReclaimed": 0}
