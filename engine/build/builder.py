"""The classic builder: one step per Dockerfile instruction, one image per step, a layer for each
step that changes the filesystem, and the build cache (engine/build/cache.py).

`Build(builder, context, options, emit)` parses and checks everything that can be checked before
any output (the API answers those errors as plain HTTP errors); `run()` then executes the steps and
sends moby's JSON stream messages through `emit`. A failed step raises StepFailed; nothing is
tagged unless every step succeeded.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from dataclasses import dataclass, field
from typing import Callable

from dockyard.engine import hostinfo
from dockyard.engine.build import copier, metadata, stepcontainer
from dockyard.engine.build.cache import BuildCache
from dockyard.engine.build.context import BuildContext, match_sources
from dockyard.engine.build.parser import Instruction, ParseError, name_values, parse, parse_instruction, parse_words
from dockyard.engine.build.shellwords import Lexer, env_map
from dockyard.engine.build.stage import DEFAULT_PATH, Stage
from dockyard.engine.errors import EngineError, InvalidParameter, NotFound, Unsupported
from dockyard.engine.images.store import Image, ImageStore
from dockyard.engine.runtime.manager import ContainerManager

DEFAULT_SHELL = ["/bin/sh", "-c"]
MAX_DOCKERFILE = 4 << 20
MAX_IMAGE_CONFIG = 8 << 20  # as the limit for pulled configs
BUILDKIT_ONLY = "the %s option requires BuildKit; this engine has the classic builder only"
Emit = Callable[[dict], None]
Puller = Callable[[str, Emit], None]


class StepFailed(EngineError):
    """A build step failed; `code` is RUN's exit code (the CLI exits with it)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class BuildOptions:
    tags: list[str] = field(default_factory=list)
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str | None] = field(default_factory=dict)
    no_cache: bool = False
    rm: bool = True
    force_rm: bool = False
    pull: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    target: str = ""
    network: str = ""
    cache_from: list[str] = field(default_factory=list)
    platform: str = ""
    run_host_config: dict = field(default_factory=dict)  # memory, CPU, ulimits... of RUN's containers


class Builder:
    """Shared by every build of an engine: the parts a build uses, its work dir and the cache."""

    def __init__(self, images: ImageStore, containers: ContainerManager, root: str) -> None:
        self.images = images
        self.containers = containers
        self.root = root
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.tmp, mode=0o700, exist_ok=True)
        for name in os.listdir(self.tmp):  # left by an engine that died mid-build
            shutil.rmtree(os.path.join(self.tmp, name), ignore_errors=True)
        self.cache = BuildCache(root)

    def new_context(self) -> BuildContext:
        return BuildContext(self.tmp)


class Build:
    """One `POST /build`."""

    def __init__(
        self, builder: Builder, context: BuildContext, options: BuildOptions, emit: Emit, pull: Puller
    ) -> None:
        self.b = builder
        self.images = builder.images
        self.containers = builder.containers
        self.context = context
        self.opts = options
        self.emit = emit
        self.pull = pull
        self._check_platform(options.platform)
        data = context.dockerfile(options.dockerfile, MAX_DOCKERFILE)
        context.apply_dockerignore()
        df = parse(data)
        self.lex = Lexer(df.escape)
        self.escape = df.escape
        self.meta_args: dict[str, str | None] = {}
        self.used_args: set[str] = set()
        self.plan = self._plan(df.instructions)
        self.total = sum(1 + len(body) for _, body in self.plan)
        self.stages: list[Stage] = []

    # -- planning (errors here are plain HTTP 400s) ----------------------------------------------
    def _plan(self, instructions):
        plan: list[tuple[Instruction, list[Instruction]]] = []
        for inst in instructions:
            if inst.cmd == "from":
                plan.append((inst, []))
            elif not plan:
                if inst.cmd != "arg":
                    raise ParseError("no build stage in current context")
                for name, value in self._arg_words(inst):
                    given = self.opts.build_args.get(name)
                    self.meta_args[name] = (
                        given
                        if given is not None
                        else (self.lex.word(value, self._meta_env()) if value is not None else None)
                    )
            else:
                plan[-1][1].append(inst)
        if not plan:
            raise ParseError("no build stage in current context")
        if self.opts.target:
            names = [self._stage_alias(f) for f, _ in plan]
            target = self.opts.target.lower()
            if target not in names:
                raise InvalidParameter("failed to reach build target %s in Dockerfile" % self.opts.target)
            plan = plan[: names.index(target) + 1]
        if self.opts.labels:
            text = "LABEL " + " ".join(
                "%s=%s" % (json.dumps(k), json.dumps(v)) for k, v in sorted(self.opts.labels.items())
            )
            plan[-1][1].append(parse_instruction(0, text, self.escape))
        return plan

    def _stage_alias(self, inst):
        words = inst.rest.split()
        return words[2].lower() if len(words) == 3 and words[1].lower() == "as" else ""

    def _arg_words(self, inst):
        out = []
        for word in parse_words(inst.rest, self.escape):
            name, eq, value = word.partition("=")
            if not name:
                raise ParseError("ARG names can not be blank")
            out.append((name, value if eq else None))
        return out

    def _meta_env(self):
        return {k: v for k, v in self.meta_args.items() if v is not None}

    @staticmethod
    def _check_platform(platform):
        if not platform:
            return
        bits = platform.lower().split("/")
        arch = hostinfo.go_arch()
        if bits[0] != "linux" or (len(bits) > 1 and bits[1] != arch):
            raise InvalidParameter(
                'platform "%s" is not supported by this engine: it builds for linux/%s only' % (platform, arch)
            )

    # -- running ---------------------------------------------------------------------------------
    def out(self, text: str) -> None:
        self.emit({"stream": text})

    def run(self) -> Image:
        step = 0
        for index, (from_inst, body) in enumerate(self.plan):
            step += 1
            self.out("Step %d/%d : %s\n" % (step, self.total, from_inst.original))
            stage = self._from(from_inst, index)
            self.stages.append(stage)
            if stage.image_id:
                self.out(" ---> %s\n" % stage.image_id[7:19])
            self._triggers(stage)
            for inst in body:
                step += 1
                self.out("Step %d/%d : %s\n" % (step, self.total, inst.original))
                self._dispatch(stage, inst)
                self._ensure_image(stage)
                self.out(" ---> %s\n" % stage.image_id[7:19])
        final = self.stages[-1]
        if not final.image_id:
            raise StepFailed("No image was generated. Is your Dockerfile empty?")
        unused = sorted(k for k in self.opts.build_args if k not in self.used_args and k not in metadata.PROXY_ARGS)
        if unused:
            self.out("[Warning] One or more build-args [%s] were not consumed\n" % " ".join(unused))
        return self.images.by_id(final.image_id)

    # -- FROM --------------------------------------------------------------------------------------
    def _from(self, inst, index):
        words = self.lex.words(inst.rest, self._meta_env())
        name = ""
        if len(words) == 3 and words[1].lower() == "as":
            name = metadata.stage_name(words[2].lower())
        elif len(words) != 1:
            raise InvalidParameter("FROM requires either one or three arguments")
        platform = inst.flag("platform")
        if platform:
            self._check_platform(self.lex.word(platform, self._meta_env()))
        base = words[0]
        stage = Stage(index, name)
        for arg in self.meta_args:
            self.used_args.add(arg)
        previous = {s.name: s for s in self.stages if s.name}
        if base.lower() in previous:
            stage.copy_from(previous[base.lower()])
        elif base == "scratch":
            stage.config = {"Env": [DEFAULT_PATH]}
        else:
            stage.load(self._image(base))
        return stage

    def _image(self, ref):
        if self.opts.pull:
            self.pull(ref, self.emit)
        try:
            return self.images.get(ref)
        except NotFound:
            if self.opts.pull:
                raise
        self.pull(ref, self.emit)
        return self.images.get(ref)

    def _triggers(self, stage):
        triggers = stage.config.get("OnBuild") or []
        if not triggers:
            return
        stage.config["OnBuild"] = None
        self.out("# Executing %d build trigger%s\n" % (len(triggers), "" if len(triggers) == 1 else "s"))
        for text in triggers:
            inst = parse_instruction(0, str(text), self.escape, nested=True)
            self._dispatch(stage, inst)

    # -- the instructions ------------------------------------------------------------------------
    def _env(self, stage):
        env = {k: v for k, v in stage.args.items() if v is not None}
        env.update(env_map(stage.config.get("Env") or []))
        return env

    def _dispatch(self, stage, inst):
        handler = getattr(self, "_do_" + inst.cmd)
        handler(stage, inst)

    def _set_env(self, stage, name, value):
        env = list(stage.config.get("Env") or [])
        for i, item in enumerate(env):
            if item.partition("=")[0] == name:
                env[i] = "%s=%s" % (name, value)
                break
        else:
            env.append("%s=%s" % (name, value))
        stage.config["Env"] = env

    def _do_env(self, stage, inst):
        env = self._env(stage)
        pairs = [(name, self.lex.word(raw, env)) for name, raw in name_values(inst, self.escape)]
        for name, value in pairs:
            self._set_env(stage, name, value)
        self._meta(stage, "ENV " + " ".join("%s=%s" % p for p in pairs))

    def _do_label(self, stage, inst):
        env = self._env(stage)
        pairs = [(self.lex.word(n, env), self.lex.word(raw, env)) for n, raw in name_values(inst, self.escape)]
        labels = dict(stage.config.get("Labels") or {})
        labels.update(pairs)
        stage.config["Labels"] = labels
        self._meta(stage, "LABEL " + " ".join("%s=%s" % p for p in pairs))

    def _do_maintainer(self, stage, inst):
        stage.author = inst.rest.strip()
        self._meta(stage, "MAINTAINER " + stage.author)

    def _do_arg(self, stage, inst):
        texts = []
        for name, default in self._arg_words(inst):
            given = self.opts.build_args.get(name)
            if given is not None:
                value: str | None = given
            elif default is not None:
                value = self.lex.word(default, self._env(stage))
            else:
                value = self.meta_args.get(name)
            stage.args[name] = value
            self.used_args.add(name)
            texts.append(name if default is None else "%s=%s" % (name, default))
        self._meta(stage, "ARG " + " ".join(texts))

    def _command(self, stage, inst):
        if inst.json_args is not None:
            return list(inst.json_args)
        shell = stage.config.get("Shell") or DEFAULT_SHELL
        return list(shell) + [inst.rest]

    def _do_cmd(self, stage, inst):
        stage.config["Cmd"] = self._command(stage, inst)
        stage.cmd_set = True
        self._meta(stage, "CMD " + _go_list(stage.config["Cmd"]))

    def _do_entrypoint(self, stage, inst):
        stage.config["Entrypoint"] = self._command(stage, inst) if inst.rest.strip() else None
        if not stage.cmd_set:
            stage.config["Cmd"] = None
        self._meta(stage, "ENTRYPOINT " + _go_list(stage.config["Entrypoint"] or []))

    def _do_expose(self, stage, inst):
        ports = metadata.exposed_ports(self.lex.words(inst.rest, self._env(stage)))
        exposed = dict(stage.config.get("ExposedPorts") or {})
        exposed.update(ports)
        stage.config["ExposedPorts"] = exposed
        self._meta(stage, "EXPOSE " + " ".join(sorted(ports)))

    def _do_volume(self, stage, inst):
        env = self._env(stage)
        if inst.json_args is not None:
            paths = [self.lex.word(p, env) for p in inst.json_args]
        else:
            paths = self.lex.words(inst.rest, env)
        volumes = dict(stage.config.get("Volumes") or {})
        for path in paths:
            if not path.strip():
                raise InvalidParameter("VOLUME specified can not be an empty string")
            volumes[path] = {}
        stage.config["Volumes"] = volumes
        self._meta(stage, "VOLUME [%s]" % " ".join(paths))

    def _do_user(self, stage, inst):
        stage.config["User"] = self.lex.word(inst.rest.strip(), self._env(stage))
        self._meta(stage, "USER " + stage.config["User"])

    def _do_stopsignal(self, stage, inst):
        stage.config["StopSignal"] = metadata.stop_signal(self.lex.word(inst.rest.strip(), self._env(stage)))
        self._meta(stage, "STOPSIGNAL " + stage.config["StopSignal"])

    def _do_healthcheck(self, stage, inst):
        stage.config["Healthcheck"] = metadata.healthcheck(inst.flags, inst.rest, None)
        self._meta(stage, "HEALTHCHECK " + inst.rest.strip())

    def _do_shell(self, stage, inst):
        if not inst.json_args:
            raise InvalidParameter("SHELL requires at least one argument")
        stage.config["Shell"] = list(inst.json_args)
        self._meta(stage, "SHELL " + _go_list(inst.json_args))

    def _do_onbuild(self, stage, inst):
        trigger = inst.rest.strip()
        word, _, rest = trigger.partition(" ")
        trigger = word.upper() + (" " + rest if rest else "")
        stage.config["OnBuild"] = list(stage.config.get("OnBuild") or []) + [trigger]
        self._meta(stage, "ONBUILD " + trigger)

    def _do_workdir(self, stage, inst):
        path = self.lex.word(inst.rest.strip(), self._env(stage))
        if not path.startswith("/"):
            path = posixpath.join(stage.config.get("WorkingDir") or "/", path)
        path = posixpath.normpath(path)
        stage.config["WorkingDir"] = path

        def make(root, writer):
            writer.make_dir(path)

        self._fs_step(stage, "/bin/sh -c #(nop) WORKDIR " + path, "", make, (0, 0), None)

    def _do_run(self, stage, inst):
        for flag in ("mount", "network", "security"):
            if flag in inst.flags:
                raise Unsupported(BUILDKIT_ONLY % ("RUN --" + flag))
        cmd = self._command(stage, inst)
        env_cfg = env_map(stage.config.get("Env") or [])
        declared = sorted("%s=%s" % (k, v) for k, v in stage.args.items() if v is not None and k not in env_cfg)
        proxies = [
            "%s=%s" % (k, v)
            for k, v in sorted(self.opts.build_args.items())
            if k in metadata.PROXY_ARGS and v is not None and k not in stage.args and k not in env_cfg
        ]
        created_by = " ".join(cmd)
        if declared:
            created_by = "|%d %s %s" % (len(declared), " ".join(declared), created_by)
        self._ensure_image(stage)
        if self._cached(stage, created_by, ""):
            return
        run_cfg = dict(stage.config)
        run_cfg["Env"] = list(stage.config.get("Env") or []) + declared + proxies
        c = stepcontainer.create(
            self.containers, stage.image_id, cmd, run_cfg, self.opts.network, self.opts.run_host_config
        )
        try:
            self.out(" ---> Running in %s\n" % c.id[:12])
            code = stepcontainer.run(self.containers, c, self.out)
        except EngineError:
            self._drop(c, failed=True)
            raise
        except BaseException:
            stepcontainer.remove(self.containers, c)  # the client went away: the step stops with it
            raise
        if code != 0:
            self._drop(c, failed=True)
            raise StepFailed("The command '%s' returned a non-zero code: %d" % (" ".join(cmd), code), code)
        diff_id = stepcontainer.commit(self.images, c, self.b.tmp)
        self._drop(c, failed=False)
        self._commit(stage, created_by, diff_id, cache_key=self.b.cache.key(stage.image_id, created_by, ""))

    def _drop(self, c, failed):
        if self.opts.force_rm or (self.opts.rm and not failed):
            stepcontainer.remove(self.containers, c)
            if not failed:
                self.out(" ---> Removed intermediate container %s\n" % c.id[:12])

    def _do_copy(self, stage, inst):
        self._copy(stage, inst, add=False)

    def _do_add(self, stage, inst):
        self._copy(stage, inst, add=True)

    def _copy(self, stage, inst, add):
        what = "ADD" if add else "COPY"
        for flag in ("link", "parents", "exclude", "checksum", "keep-git-dir"):
            if flag in inst.flags:
                raise Unsupported(BUILDKIT_ONLY % ("%s --%s" % (what, flag)))
        env = self._env(stage)
        if inst.json_args is not None:
            args = [self.lex.word(a, env) for a in inst.json_args]
        else:
            args = self.lex.words(inst.rest, env)
        if len(args) < 2:
            raise InvalidParameter("%s requires at least two arguments" % what)
        sources, dest = args[:-1], args[-1]
        if not dest.startswith("/"):
            dest = posixpath.join(stage.config.get("WorkingDir") or "/", dest)
        chown = self.lex.word(inst.flag("chown") or "", env)
        chmod_text = self.lex.word(inst.flag("chmod") or "", env)
        chmod = copier.parse_chmod(chmod_text)
        from_ref = self.lex.word(inst.flag("from") or "", env)
        if not from_ref and self._copy_cached(stage, what, sources, dest, chown, chmod_text, add):
            return
        tmp_c = None
        try:
            if from_ref:
                tmp_c = self._source_container(from_ref)
                root, where = stepcontainer.rootfs(tmp_c), "stage " + from_ref
            else:
                root, where = self.context.root, "build context"
            items: list[tuple[str, str, bool]] = []  # (name, host path, is_url)
            for src in sources:
                if add and copier.is_url(src):
                    path, name, _ = copier.download(src, self.context.dir, lambda t: None)
                    items.append((name or posixpath.basename(dest), path, True))
                else:
                    items.extend((rel, path, False) for rel, path in match_sources(root, src, where))
            if len(items) > 1 and not dest.endswith("/"):
                raise InvalidParameter(
                    "When using %s with more than one source file, the destination must be a directory "
                    "and end with a /" % what
                )
            content = copier.checksum([(name, path) for name, path, _ in items])
            created_by = _copy_created_by(what, chown, chmod_text, content, dest)

            def write(rootfs, writer):
                dest_dir_like = dest.endswith("/") or writer.is_dir(dest)
                for name, path, is_url in items:
                    if add and not is_url and copier.is_archive(path):
                        writer.extract_archive(path, dest, keep_owner=not chown)
                    elif os.path.isdir(path) and not os.path.islink(path):
                        writer.copy(path, dest, None)
                    elif dest_dir_like:
                        writer.copy(path, dest, posixpath.basename(name))
                    else:
                        writer.copy(path, posixpath.dirname(dest) or "/", posixpath.basename(dest))

            self._fs_step(stage, created_by, content, write, None, chmod, chown=chown)
        finally:
            if tmp_c is not None:
                stepcontainer.remove(self.containers, tmp_c)

    def _copy_cached(self, stage, what, sources, dest, chown, chmod_text, add):
        """A COPY/ADD from the context answered by the cache from the context's index alone (no file of the
        context extracted); False when it misses or the index cannot tell (the step then runs as always)."""
        if self.opts.no_cache or (add and any(copier.is_url(s) for s in sources)):
            return False
        if len(sources) > 1 and not dest.endswith("/"):
            return False  # an error, reported by the full path
        content = self.context.indexed_checksum(sources)
        if content is None:
            return False
        self._ensure_image(stage)
        return self._cached(stage, _copy_created_by(what, chown, chmod_text, content, dest), content)

    def _source_container(self, ref):
        """A never-started container on the image COPY --from names (a stage, its index or an image)."""
        by_name = {s.name: s for s in self.stages if s.name}
        stage = by_name.get(ref.lower())
        if stage is None and ref.isdigit():
            index = int(ref)
            if index >= len(self.stages):
                raise InvalidParameter("invalid from flag value %s: refers to current build stage or later" % ref)
            stage = self.stages[index]
        if stage is not None:
            self._ensure_image(stage)
            image_id = stage.image_id
        else:
            image_id = self._image(ref).id
        return stepcontainer.create(self.containers, image_id, ["/bin/sh"], {}, "none")

    # -- steps that write the filesystem ---------------------------------------------------------
    def _fs_step(self, stage, created_by, content, write, owner, chmod, chown=""):
        self._ensure_image(stage)
        if self._cached(stage, created_by, content):
            return
        c = stepcontainer.create(self.containers, stage.image_id, ["/bin/sh"], {}, "none")
        try:
            root = stepcontainer.rootfs(c)
            own = owner if owner is not None else (copier.resolve_chown(chown, root) if chown else (0, 0))
            writer = copier.Writer(root, self.b.tmp, own, chmod, self.images.layers.shift)
            try:
                write(root, writer)
            finally:
                writer.close()
            diff_id = stepcontainer.commit(self.images, c, self.b.tmp)
        finally:
            stepcontainer.remove(self.containers, c)
        self._commit(stage, created_by, diff_id, cache_key=self.b.cache.key(stage.image_id, created_by, content))

    # -- images and the cache --------------------------------------------------------------------
    def _meta(self, stage, text):
        created_by = "/bin/sh -c #(nop)  " + text
        key = self.b.cache.key(stage.image_id, created_by, _config_key(stage))
        if self._cached(stage, created_by, _config_key(stage), key=key):
            return
        self._commit(stage, created_by, None, cache_key=key)

    def _cached(self, stage, created_by, content, key=None):
        if self.opts.no_cache:
            return False
        key = key or self.b.cache.key(stage.image_id, created_by, content)
        hit = self.b.cache.get(key)
        if hit is None or not self.images.exists(hit):
            hit = self._cache_from(stage, created_by)
            if hit is None:
                return False
            self.b.cache.put(key, hit)
        img = self.images.by_id(hit)
        cmd_set = stage.cmd_set
        stage.load(img)
        stage.cmd_set = cmd_set
        self.out(" ---> Using cache\n")
        return True

    def _cache_from(self, stage, created_by):
        """--cache-from: an image given there whose history continues this stage's with this very step.

        As moby: the image itself when this is its last step, else an image restored from its
        history and layers up to this step (with the stage's config).
        """
        n = len(stage.history)
        mine = [h.get("created_by") for h in stage.history]
        for ref in self.opts.cache_from:
            try:
                img = self.images.get(ref)
            except EngineError:
                continue
            history = (img.config or {}).get("history") or []
            if len(history) <= n or history[n].get("created_by") != created_by:
                continue
            if [h.get("created_by") for h in history[:n]] != mine:
                continue
            layers = sum(1 for h in history[: n + 1] if not h.get("empty_layer"))
            diff_ids = list(img.diff_ids)
            if layers > len(diff_ids) or diff_ids[: len(stage.diff_ids)] != stage.diff_ids:
                continue
            if len(history) == n + 1:
                return img.id
            entry = history[n]
            diff_id = None if entry.get("empty_layer") else diff_ids[layers - 1]
            probe = Stage(stage.index, stage.name)
            probe.copy_from(stage)
            restored = self.images.add_config(probe.record_step(created_by, diff_id, entry=entry))
            if stage.image_id:
                self.images.set_parent(restored.id, stage.image_id)
            return restored.id
        return None

    def _ensure_image(self, stage):
        if stage.image_id is None:
            self._commit(stage, None, None, cache_key=None)

    def _commit(self, stage, created_by, diff_id, cache_key):
        parent = stage.image_id
        raw = stage.record_step(created_by, diff_id)
        if len(raw) > MAX_IMAGE_CONFIG:
            raise StepFailed("the image config would be larger than %d bytes" % MAX_IMAGE_CONFIG)
        img = self.images.add_config(raw)
        if parent:
            self.images.set_parent(img.id, parent)
        stage.image_id = img.id
        if cache_key is not None:
            self.b.cache.put(cache_key, img.id)


def _copy_created_by(what, chown, chmod_text, content, dest):
    """The history text (and cache key part) of a COPY/ADD step."""
    flags = "".join("--%s=%s " % (k, v) for k, v in (("chown", chown), ("chmod", chmod_text)) if v)
    return "/bin/sh -c #(nop) %s %s%s in %s " % (what, flags, content, dest)


def _config_key(stage):
    return json.dumps(stage.config, sort_keys=True)


def _go_list(items):
    """Go's %q of a []string, as moby writes CMD/ENTRYPOINT in the history: ["a" "b"]."""
    return "[" + " ".join(json.dumps(i) for i in items) + "]"
