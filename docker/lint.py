#!/usr/bin/env python3
"""Static checks of tern's Dockerfiles (hadolint is not in Debian).

What it checks, per file (it does not build anything; scripts/image.sh and the
container tests build and run docker/Dockerfile for real, while
docker/Dockerfile.cuda can only be checked here, since the build machines
reach no registry):
  - the file parses: continuation lines joined, every instruction is a
    Dockerfile instruction, JSON-form arguments are valid JSON string lists;
  - FROM: every ${ARG} is declared before the first FROM with a default, each
    resolved base names an explicit tag other than `latest` (or an earlier
    stage); stage names are unique; COPY --from names an earlier stage;
  - RUN --mount options are type=cache|bind|secret|tmpfs with known keys;
  - apt-get: `install` with -y and --no-install-recommends, no `upgrade`, and
    in the stage that is shipped (the last one), the package lists removed in
    the same RUN as `apt-get update`;
  - COPY/ADD sources from the context exist in the repository and are not
    excluded by the Dockerfile's own .dockerignore (<Dockerfile>.dockerignore);
    no ADD of URLs;
  - the shipped stage: a USER that is neither root nor 0 (numeric, so that
    Kubernetes' runAsNonRoot can verify it), ENTRYPOINT and CMD in JSON form,
    and the OCI labels org.opencontainers.image.{source,version,revision};
  - WORKDIR paths are absolute.
usage: lint.py [--root REPO] DOCKERFILE...   (exit 1 listing every finding)
       lint.py --self-test                   (checks that broken files fail)
"""
import fnmatch
import json
import os
import re
import sys
import tempfile

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
                "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
                "HEALTHCHECK", "SHELL"}
MOUNT_KEYS = {
    "cache": {"type", "id", "target", "dst", "destination", "ro", "readonly", "sharing", "from",
              "source", "src", "mode", "uid", "gid"},
    "bind": {"type", "target", "dst", "destination", "source", "src", "from", "ro", "readonly",
             "rw", "readwrite"},
    "secret": {"type", "id", "target", "dst", "required", "mode", "uid", "gid"},
    "tmpfs": {"type", "target", "dst", "destination", "size"},
}
OCI_LABELS = ["org.opencontainers.image.source", "org.opencontainers.image.version",
              "org.opencontainers.image.revision"]


def instructions(text):
    """Yields (line number, keyword, arguments) with continuations joined."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        start = i
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line]
        while parts[-1].rstrip().endswith("\\") and i < len(lines):
            parts[-1] = parts[-1].rstrip()[:-1]
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):  # comments inside a continuation are dropped
                parts.append("\\")
                continue
            parts.append(nxt)
        joined = " ".join(parts).strip()
        keyword, _, rest = joined.partition(" ")
        yield start + 1, keyword, rest.strip()


def json_list(args):
    try:
        value = json.loads(args)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def substitute(text, args):
    def repl(m):
        name = m.group(1) or m.group(2)
        return args.get(name, m.group(0))
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def ignore_patterns(path):
    try:
        with open(path) as f:
            return [l.strip() for l in f if l.strip() and not l.startswith("#")]
    except OSError:
        return []


def ignored(rel, patterns):
    result = False
    for p in patterns:
        negate = p.startswith("!")
        p = p[1:] if negate else p
        p = p.rstrip("/")
        hit = (fnmatch.fnmatch(rel, p) or rel.startswith(p + "/") or
               fnmatch.fnmatch(rel, p.replace("**/", "")) or
               any(fnmatch.fnmatch(part, p.replace("**/", "")) for part in rel.split("/")
                   if p.startswith("**/")))
        if hit:
            result = not negate
    return result


def lint(path, root):
    findings = []
    def bad(line, message):
        findings.append("%s:%d: %s" % (os.path.relpath(path, root), line, message))
    with open(path) as f:
        text = f.read()
    patterns = ignore_patterns(path + ".dockerignore")
    global_args = {}
    stages = []  # dicts: name, line, base, user, labels, entrypoint, cmd, apt runs
    seen_from = False
    for line, keyword, args in instructions(text):
        upper = keyword.upper()
        if upper not in INSTRUCTIONS:
            bad(line, "unknown instruction %r" % keyword)
            continue
        if upper != keyword:
            bad(line, "instruction %r not in upper case" % keyword)
        if upper == "ARG" and not seen_from:
            name, eq, default = args.partition("=")
            if not eq or not default:
                bad(line, "ARG %s before FROM has no default" % name)
            global_args[name] = default
            continue
        if upper == "FROM":
            seen_from = True
            words = [w for w in args.split() if not w.startswith("--")]
            if not words:
                bad(line, "FROM without an image")
                continue
            image = substitute(words[0], global_args)
            if "$" in image:
                bad(line, "FROM %s: undeclared build argument" % words[0])
            name = None
            if len(words) >= 3 and words[1].upper() == "AS":
                name = words[2]
                if any(s["name"] == name for s in stages):
                    bad(line, "stage name %s used twice" % name)
            if not any(s["name"] == image for s in stages):
                tag = image.rsplit("/", 1)[-1]
                if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
                    bad(line, "base image %s has no explicit tag (or is :latest)" % image)
            stages.append({"name": name, "line": line, "base": image, "user": None, "labels": set(),
                           "entrypoint": None, "cmd": None, "runs": []})
            continue
        if not stages:
            bad(line, "%s before the first FROM" % upper)
            continue
        stage = stages[-1]
        if upper == "RUN":
            rest = args
            while rest.startswith("--"):
                option, _, rest = rest.partition(" ")
                rest = rest.lstrip()
                if option.startswith("--mount="):
                    fields = dict(kv.partition("=")[::2] for kv in option[len("--mount="):].split(","))
                    kind = fields.get("type", "bind")
                    if kind not in MOUNT_KEYS:
                        bad(line, "RUN --mount type %r" % kind)
                    else:
                        unknown = set(fields) - MOUNT_KEYS[kind]
                        if unknown:
                            bad(line, "RUN --mount=type=%s: unknown keys %s" % (kind, sorted(unknown)))
                        if not (fields.get("target") or fields.get("dst") or fields.get("destination")):
                            bad(line, "RUN --mount without a target")
                elif not option.startswith(("--network=", "--security=")):
                    bad(line, "unknown RUN option %s" % option)
            if rest.startswith("[") and json_list(rest) is None:
                bad(line, "RUN in JSON form is not a JSON list of strings")
            stage["runs"].append((line, rest))
            for m in re.finditer(r"apt-get\s+([^;&|]*)", rest):
                words = m.group(1).split()
                verb = next((w for w in words if not w.startswith("-")), "")
                if verb in ("upgrade", "dist-upgrade"):
                    bad(line, "apt-get %s in an image build" % verb)
                if verb == "install":
                    if "-y" not in words and "--yes" not in words and "-qy" not in words:
                        bad(line, "apt-get install without -y")
                    if "--no-install-recommends" not in words:
                        bad(line, "apt-get install without --no-install-recommends")
        elif upper in ("COPY", "ADD"):
            words = args.split()
            options = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            if json_list(args) is not None:
                paths = json_list(args)
            if len(paths) < 2:
                bad(line, "%s needs a source and a destination" % upper)
                continue
            source_stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
            if source_stage is not None:
                if not any(s["name"] == source_stage for s in stages[:-1]):
                    bad(line, "COPY --from=%s names no earlier stage" % source_stage)
                continue
            for src in paths[:-1]:
                if re.match(r"^[a-z]+://", src):
                    bad(line, "%s of a URL (%s)" % (upper, src))
                    continue
                rel = os.path.normpath(src).lstrip("/")
                if rel == ".":
                    continue
                if not os.path.exists(os.path.join(root, rel)):
                    bad(line, "%s source %s does not exist in the context" % (upper, src))
                elif ignored(rel, patterns):
                    bad(line, "%s source %s is excluded by %s" % (upper, src,
                                                                  os.path.basename(path) + ".dockerignore"))
        elif upper == "USER":
            stage["user"] = (line, args)
        elif upper == "LABEL":
            for m in re.finditer(r'([A-Za-z0-9_.\-]+)=', args):
                stage["labels"].add(m.group(1))
        elif upper in ("ENTRYPOINT", "CMD"):
            if json_list(args) is None:
                bad(line, "%s is not in JSON form (signals would go to a shell)" % upper)
            stage[upper.lower()] = line
        elif upper == "WORKDIR":
            if not args.startswith("/") and not args.startswith("$"):
                bad(line, "WORKDIR %s is not absolute" % args)
    if not stages:
        bad(1, "no FROM")
        return findings
    final = stages[-1]
    for run_line, run in final["runs"]:
        if "apt-get update" in run and "/var/lib/apt/lists" not in run:
            bad(run_line, "the shipped stage runs apt-get update without removing /var/lib/apt/lists")
    if final["user"] is None:
        bad(final["line"], "the shipped stage runs as root (no USER)")
    else:
        user_line, user = final["user"]
        name = user.split(":")[0]
        if name in ("root", "0"):
            bad(user_line, "the shipped stage runs as root")
        elif not name.isdigit():
            bad(user_line, "USER %s is not numeric (runAsNonRoot cannot verify a name)" % user)
    if final["entrypoint"] is None:
        bad(final["line"], "the shipped stage has no ENTRYPOINT")
    for label in OCI_LABELS:
        if label not in final["labels"] and os.path.basename(path).startswith("Dockerfile"):
            bad(final["line"], "the shipped stage lacks the label %s" % label)
    return findings


def self_test():
    broken = """ARG BASE
FROM ${BASE} AS one
FROM debian AS one
RUN apt-get update && apt-get install curl
RUN --mount=type=cache,taget=/x true
COPY no-such-file /x
COPY --from=nowhere /a /b
WORKDIR relative
FORM x
CMD ternd --listen 0.0.0.0:7070
"""
    expected = ["has no default", "used twice", "no explicit tag", "without -y",
                "--no-install-recommends", "unknown keys", "without a target", "does not exist",
                "names no earlier stage", "not absolute", "unknown instruction", "not in JSON form",
                "without removing /var/lib/apt/lists", "runs as root", "no ENTRYPOINT",
                "org.opencontainers.image.source"]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "Dockerfile")
        with open(path, "w") as f:
            f.write(broken)
        findings = "\n".join(lint(path, d))
    missing = [e for e in expected if e not in findings]
    if missing:
        print("lint.py self-test: not reported: %s\nfindings:\n%s" % (missing, findings))
        return 1
    print("lint.py self-test: all %d kinds of error reported" % len(expected))
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = argv[1:]
    if files[:1] == ["--root"]:
        root, files = files[1], files[2:]
    if not files:
        print(__doc__)
        return 2
    status = 0
    for path in files:
        findings = lint(path, root)
        for finding in findings:
            print(finding)
        if findings:
            status = 1
        else:
            print("%s: ok" % os.path.relpath(path, root))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
