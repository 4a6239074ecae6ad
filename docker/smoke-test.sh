#!/usr/bin/env bash
# Smoke test of the Docker image, with rootful podman (no Docker engine is
# needed): builds the image from the Dockerfile and runs it
#   (a) backend uring (the default) with --security-opt
#       seccomp=docker/seccomp-io_uring.json: serves GET /, /stats names
#       "uring", healthy, non-root without capabilities, stops cleanly;
#   (b) backend uring under Docker's default profile (moby's default.json,
#       i.e. docker/seccomp-io_uring.json minus its io_uring rule; podman's own
#       default differs): exits non-zero naming seccomp and the profile path;
#       and under podman's default profile: exits non-zero (ENOSYS);
#   (c) --backend epoll under Docker's default profile: serves GET /;
#   (d) TLS (--ssl-certfile/--ssl-keyfile, a certificate made here with
#       openssl and mounted read-only): curl --cacert gets GET / over https,
#       plain http gets the 400, the HEALTHCHECK probes over TLS;
# plus --privileged (no seccomp filter at all): uring serves.
# Containers run the image's own command, published on 127.0.0.1 only.
#
# Run as root (`make docker-test`).  Installs podman, runc, mmdebstrap,
# curl and openssl with apt when missing.  Everything podman needs goes through a
# CONTAINERS_CONF in a temporary directory; nothing under /etc is changed.
# The base image debian:bookworm-slim is made locally with mmdebstrap when
# podman's storage does not have it (no registry is needed).  The host's pip
# index and CA bundle are mounted into the build only.
#
# Every step has a time limit; containers and the temporary directory are
# removed whatever happens.  Prints PASS/FAIL lines; exits 1 on any FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${SMOKE_IMAGE:-localhost/ringserve:smoke}
BASE_IMAGE=docker.io/library/debian:bookworm-slim
PROFILE=docker/seccomp-io_uring.json
BUILD_TIMEOUT=${BUILD_TIMEOUT:-900}
START_TIMEOUT=20 # seconds for a container to serve, or to exit
IO_URING='["io_uring_enter", "io_uring_register", "io_uring_setup"]'

passed=0
failed=0
pass() {
    echo "PASS: $*"
    passed=$((passed + 1))
}
fail() {
    echo "FAIL: $*"
    failed=$((failed + 1))
}
die() {
    echo "FAIL: $*"
    echo "smoke test: aborted after $passed passed, $((failed + 1)) failed"
    exit 1
}
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

[ "$(id -u)" = 0 ] || die "run as root: the test uses rootful podman (sudo make docker-test)"

# -- tools -------------------------------------------------------------------
missing=""
for tool in podman runc mmdebstrap curl openssl; do # each is also its package's name
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    timeout 900 apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq $missing >/dev/null ||
        die "apt-get install$missing failed"
fi

tmp=$(mktemp -d /tmp/ringserve-smoke.XXXXXX)
containers=()
cleanup() {
    local c
    for c in "${containers[@]}"; do
        timeout 30 podman rm --force --time 0 "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# runc: crun rejects this kind of VM's hybrid cgroups.  The ulimits: podman's
# default raises nofile/nproc above what an unprivileged VM may grant.
export CONTAINERS_CONF=$tmp/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
EOF

timeout 60 podman info >"$tmp/podman-info.txt" 2>&1 ||
    die "podman cannot run here: $(tail -3 "$tmp/podman-info.txt")"
echo "podman $(podman version --format '{{.Client.Version}}'), runtime runc, kernel $(uname -r)"

# -- base image --------------------------------------------------------------
if podman image exists "$BASE_IMAGE"; then
    echo "base image: $BASE_IMAGE (present)"
else
    # minbase plus the apt/dpkg settings of the official slim image, so image
    # sizes are comparable (no apt caches, docs, man pages or locales).
    t0=$(now)
    if ! timeout 900 mmdebstrap --quiet --variant=minbase \
        --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""' \
        --aptopt='Acquire::Languages "none"' --aptopt='Acquire::GzipIndexes "true"' \
        --aptopt='APT::AutoRemove::SuggestsImportant "false"' \
        --aptopt='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }' \
        --dpkgopt='force-unsafe-io' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        bookworm - 2>"$tmp/mmdebstrap.log" |
        timeout 300 podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null 2>"$tmp/import.log"; then
        cat "$tmp/mmdebstrap.log" "$tmp/import.log" | tail -20
        die "could not make $BASE_IMAGE with mmdebstrap"
    fi
    echo "base image: $BASE_IMAGE made with mmdebstrap in $(elapsed "$t0") s"
fi

# -- build -------------------------------------------------------------------
# pip inside the build must reach the same index as the host's pip, through
# the same (possibly intercepting) TLS: a pip.conf for the build container
# pointing at the host's index, with the host's CA bundle mounted next to it.
python3 - "$tmp" >"$tmp/pip-cert-path" <<'EOF'
import os, shlex, subprocess, sys

tmp = sys.argv[1]
values = {}
# The project's pip first (it reads the same files plus the environment).
cmds = [[".venv/bin/pip"], [sys.executable, "-m", "pip"]]
for cmd in cmds:
    if cmd[0] == ".venv/bin/pip" and not os.path.exists(cmd[0]):
        continue
    try:
        out = subprocess.run(cmd + ["config", "list"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        continue
    env = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        section, name = key.rsplit(".", 1)
        if section not in ("global", "install", "download", "wheel", ":env:"):
            continue
        value = shlex.split(value)[0] if value.strip() else ""
        (env if section == ":env:" else values)[name.replace("_", "-")] = value
    values.update(env)
    break
else:
    for name in ("index-url", "extra-index-url", "cert", "trusted-host", "timeout"):
        value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if value:
            values[name] = value

def remote(urls):
    return [u for u in urls.split() if u.startswith(("http://", "https://"))]

lines = ["[global]", "index-url = " + (remote(values.get("index-url", "")) or ["https://pypi.org/simple"])[0]]
extra = remote(values.get("extra-index-url", ""))
if extra:
    lines.append("extra-index-url = " + " ".join(extra))
for name in ("trusted-host", "timeout", "default-timeout"):
    if values.get(name):
        lines.append(f"{name} = {values[name]}")
cert = values.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
if not cert and os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
    cert = "/etc/ssl/certs/ca-certificates.crt"
if cert and os.path.isfile(cert):
    lines.append("cert = /etc/ssl/certs/host-ca.crt")
    print(os.path.realpath(cert))
with open(os.path.join(tmp, "pip.conf"), "w") as f:
    f.write("\n".join(lines) + "\n")
EOF
mounts=(-v "$tmp/pip.conf:/etc/pip.conf:ro")
host_ca=$(cat "$tmp/pip-cert-path")
[ -z "$host_ca" ] || mounts+=(-v "$host_ca:/etc/ssl/certs/host-ca.crt:ro")
echo "build pip.conf: $(grep -v '^\[' "$tmp/pip.conf" | tr '\n' ';')${host_ca:+ CA from $host_ca}"

# Proxies, when the host uses them, as build args: http_proxy and friends
# are predefined build args, not written into the image.
build_args=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -z "${!v:-}" ] || build_args+=(--build-arg "$v=${!v}")
done
apt_proxy=$(apt-config dump 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' | head -1)
if [ -n "$apt_proxy" ] && [ -z "${http_proxy:-}" ]; then
    build_args+=(--build-arg "http_proxy=$apt_proxy")
fi

# A snapshot of the working tree, so both passes see the same context.
mkdir "$tmp/context"
tar --exclude=./.git --exclude=./.venv --exclude='./.*_cache' --exclude=./.hypothesis \
    --exclude=./build --exclude=./dist --exclude=./results -cf - . | tar -C "$tmp/context" -xf -

# Pass 1 builds the build stage (the only one that uses pip) with the mounts.
# podman leaves an empty file at every -v mount point in each stage it runs,
# so pass 2 builds the final image without them; its build stage is the
# layer cache of pass 1.  Docker users build in one `docker build`.
t0=$(now)
if ! timeout "$BUILD_TIMEOUT" podman build --format docker --target build \
    -t "$IMAGE-build" "${mounts[@]}" "${build_args[@]}" "$tmp/context" >"$tmp/build1.log" 2>&1; then
    tail -40 "$tmp/build1.log"
    die "build stage failed (log above)"
fi
if ! timeout "$BUILD_TIMEOUT" podman build --format docker \
    -t "$IMAGE" "${build_args[@]}" "$tmp/context" >"$tmp/build2.log" 2>&1; then
    tail -40 "$tmp/build2.log"
    die "image build failed (log above)"
fi
build_s=$(elapsed "$t0")
size=$(podman image inspect "$IMAGE" --format '{{.Size}}')
pass "image $IMAGE built in $build_s s ($((size / 1000000)) MB)"

# -- the image's configuration -------------------------------------------------
config=$(podman image inspect "$IMAGE")
check_config() {
    python3 - "$config" <<'EOF'
import json, sys

c = json.loads(sys.argv[1])[0]
cfg = c["Config"]
user = cfg.get("User", "")
assert user and user.split(":")[0] not in ("0", "root"), f"image user is {user!r}"
test = (c.get("Healthcheck") or {}).get("Test")
assert test, "no HEALTHCHECK (was it built with --format docker?)"
assert "8080/tcp" in (cfg.get("ExposedPorts") or {}), "port 8080 not exposed"
assert cfg.get("Entrypoint") == ["/opt/venv/bin/python", "-m", "server"], cfg.get("Entrypoint")
print(f"user {user}, EXPOSE 8080, HEALTHCHECK {' '.join(test[1:])}")
EOF
}
if out=$(check_config 2>&1); then pass "image config: $out"; else fail "image config: $out"; fi
# shellcheck disable=SC2016 # $f expands in the container's shell
if out=$(timeout 60 podman run --rm --network none --no-healthcheck --entrypoint /bin/sh "$IMAGE" -c \
    'for f in /etc/pip.conf /etc/ssl/certs/host-ca.crt /src /wheels /opt/build-venv; do
         [ ! -e "$f" ] || echo "$f"; done' 2>>"$tmp/podman.err") && [ -z "$out" ]; then
    pass "no build-time files in the image (pip.conf, CA, sources, wheels)"
else
    fail "build-time files left in the image: $out"
fi

# -- seccomp profiles ------------------------------------------------------------
# Docker's default = our profile minus the one rule the generator added.
if out=$(python3 - "$PROFILE" "$tmp/docker-default.json" "$IO_URING" 2>&1 <<'EOF'
import json, sys

profile = json.load(open(sys.argv[1]))
io_uring = json.loads(sys.argv[3])
ours = [r for r in profile["syscalls"] if sorted(r.get("names", [])) == io_uring]
assert len(ours) == 1 and ours[0]["action"] == "SCMP_ACT_ALLOW", "no single io_uring allow rule"
profile["syscalls"].remove(ours[0])
others = [r for r in profile["syscalls"] if set(r.get("names", [])) & set(io_uring)]
assert not others, f"another rule names io_uring: {others}"
assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile.get("defaultErrnoRet") == 1
json.dump(profile, open(sys.argv[2], "w"), indent=1)
print(f"{len(profile['syscalls'])} rules of Docker's default + 1 allowing io_uring")
EOF
); then
    pass "$PROFILE: $out"
else
    fail "$PROFILE: $out"
fi

# -- runs --------------------------------------------------------------------
# Containers run as `docker run` would run them: the image's own command
# (0.0.0.0:8080 inside, backend uring), or arguments replacing it; the port is
# published on 127.0.0.1 only.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start NAME PORT [podman run options...] [-- server args...]: detached,
# 127.0.0.1:PORT -> 8080.  Server args replace the image's CMD.
start() {
    local name=$1 port=$2 opts=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        opts+=("$1")
        shift
    done
    [ $# -eq 0 ] || shift
    containers+=("$name")
    timeout 60 podman run -d --name "$name" -p "127.0.0.1:$port:8080" "${opts[@]}" "$IMAGE" "$@" \
        >/dev/null 2>>"$tmp/podman.err"
}

# serves NAME PORT: waits until GET / answers; prints the body.
serves() {
    local name=$1 port=$2 deadline=$((SECONDS + START_TIMEOUT)) body
    while [ $SECONDS -lt $deadline ]; do
        if body=$(curl -fsS -m 3 "http://127.0.0.1:$port/" 2>/dev/null); then
            printf '%s' "$body"
            return 0
        fi
        [ "$(podman inspect "$name" --format '{{.State.Running}}' 2>/dev/null)" = true ] || break
        sleep 0.2
    done
    return 1
}

# check_serving NAME PORT BACKEND LABEL: GET /, /stats, the HEALTHCHECK.
check_serving() {
    local name=$1 port=$2 backend=$3 label=$4 body stats
    if ! body=$(serves "$name" "$port"); then
        fail "$label: GET / got no answer; container output:"
        timeout 30 podman logs "$name" 2>&1 | sed 's/^/    /' | tail -20
        return 0
    fi
    if [ "$body" = "Hello from ringserve" ]; then
        pass "$label: GET / -> $body"
    else
        fail "$label: GET / -> '$body'"
    fi
    stats=$(curl -fsS -m 3 "http://127.0.0.1:$port/stats" 2>&1 || true)
    if [ "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["backend"])' "$stats" 2>/dev/null)" = "$backend" ]; then
        pass "$label: /stats names backend \"$backend\""
    else
        fail "$label: /stats does not name \"$backend\": $stats"
    fi
    if out=$(timeout 30 podman healthcheck run "$name" 2>&1); then
        pass "$label: HEALTHCHECK healthy"
    else
        fail "$label: HEALTHCHECK: $out"
    fi
}

# check_user NAME LABEL: PID 1 runs as non-root without capabilities.
check_user() {
    local name=$1 label=$2 uid cap
    uid=$(timeout 30 podman exec "$name" id -u 2>&1 || true)
    cap=$(timeout 30 podman exec "$name" sed -n 's/^CapEff:[[:space:]]*//p' /proc/1/status 2>&1 || true)
    if [ "$uid" != 0 ] && [ "$uid" -eq "$uid" ] 2>/dev/null && [ "$cap" = 0000000000000000 ]; then
        pass "$label: runs as uid $uid, no effective capabilities"
    else
        fail "$label: uid '$uid', CapEff '$cap'"
    fi
}

# seccomp_mode NAME: 2 means a seccomp filter is active, 0 none.
seccomp_mode() { timeout 30 podman exec "$1" sed -n 's/^Seccomp:[[:space:]]*//p' /proc/1/status 2>/dev/null || true; }

# refuses NAME [podman run options...]: runs the image in the foreground
# (no network needed); prints its output, returns its exit status.  Called
# in $(...), a subshell: NAME must already be in `containers`.
refuses() {
    local name=$1 rc=0
    shift
    timeout "$START_TIMEOUT" podman run --rm --name "$name" --network none "$@" "$IMAGE" \
        >"$tmp/$name.out" 2>&1 || rc=$?
    # podman's complaints about systemd timers for the HEALTHCHECK are noise here.
    grep -v 'level=error msg=.*systemd' "$tmp/$name.out" || true
    return "$rc"
}

suffix=$$
t_runs=$(now)

# (a) the recommended way: io_uring allowed by the profile, nothing else.
name=ringserve-smoke-a-$suffix
port=$(free_port)
label="(a) uring, --security-opt seccomp=$PROFILE"
if start "$name" "$port" --security-opt "seccomp=$PROFILE"; then
    check_serving "$name" "$port" uring "$label"
    check_user "$name" "$label"
    if [ "$(seccomp_mode "$name")" = 2 ]; then
        pass "$label: seccomp filter active"
    else
        fail "$label: no seccomp filter"
    fi
    timeout 60 podman stop --time 15 "$name" >/dev/null 2>>"$tmp/podman.err" || true
    code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
    if [ "$code" = 0 ] && timeout 30 podman logs "$name" 2>&1 | grep -q '"event": "exit"'; then
        pass "$label: SIGTERM -> graceful stop, exit 0"
    else
        fail "$label: after podman stop: exit code $code"
    fi
else
    fail "$label: could not start the container: $(tail -3 "$tmp/podman.err")"
fi

# (b) Docker's default profile: the uring backend must refuse to start and say why.
label="(b) uring, Docker's default seccomp profile"
containers+=("ringserve-smoke-b-$suffix" "ringserve-smoke-b2-$suffix")
rc=0
out=$(refuses "ringserve-smoke-b-$suffix" --security-opt "seccomp=$tmp/docker-default.json") || rc=$?
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q seccomp <<<"$out" && grep -qF "$PROFILE" <<<"$out"; then
    pass "$label: exit $rc, names seccomp and $PROFILE"
else
    fail "$label: exit $rc; output: $out"
fi
echo "    $(grep -m1 'ringserve: error' <<<"$out" | cut -c1-150)..."

label="(b) uring, podman's default seccomp profile"
rc=0
out=$(refuses "ringserve-smoke-b2-$suffix") || rc=$?
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q ENOSYS <<<"$out" && grep -q seccomp <<<"$out" &&
    grep -qF "$PROFILE" <<<"$out"; then
    pass "$label: exit $rc, ENOSYS, names seccomp and $PROFILE"
else
    fail "$label: exit $rc; output: $out"
fi

# (c) epoll needs nothing beyond Docker's default profile.  `--backend epoll`
# replaces the CMD; the image's RINGSERVE_HOST/PORT keep it on 0.0.0.0:8080.
name=ringserve-smoke-c-$suffix
port=$(free_port)
label="(c) --backend epoll, Docker's default seccomp profile"
if start "$name" "$port" --security-opt "seccomp=$tmp/docker-default.json" -- --backend epoll; then
    check_serving "$name" "$port" epoll "$label"
else
    fail "$label: could not start the container: $(tail -3 "$tmp/podman.err")"
fi

# (d) TLS, on epoll under Docker's default profile (TLS adds no syscall).
# The key is a throwaway one, readable by the image's user through the mount.
name=ringserve-smoke-d-$suffix
port=$(free_port)
label="(d) TLS, --backend epoll"
mkdir -m 755 "$tmp/tls"
if ! timeout 60 openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$tmp/tls/server.key" -out "$tmp/tls/server.pem" >"$tmp/openssl.log" 2>&1; then
    fail "$label: openssl could not make a certificate: $(tail -3 "$tmp/openssl.log")"
elif chmod 644 "$tmp/tls/server.key" &&
    start "$name" "$port" --security-opt "seccomp=$tmp/docker-default.json" \
        -v "$tmp/tls:/tls:ro" -- --backend epoll \
        --ssl-certfile /tls/server.pem --ssl-keyfile /tls/server.key; then
    https=(curl -fsS -m 3 --cacert "$tmp/tls/server.pem" --resolve "localhost:$port:127.0.0.1")
    deadline=$((SECONDS + START_TIMEOUT))
    body=""
    while [ $SECONDS -lt $deadline ]; do
        body=$("${https[@]}" "https://localhost:$port/" 2>/dev/null) && break
        [ "$(podman inspect "$name" --format '{{.State.Running}}' 2>/dev/null)" = true ] || break
        sleep 0.2
    done
    if [ "$body" = "Hello from ringserve" ]; then
        pass "$label: curl --cacert https://localhost:$port/ -> $body"
    else
        fail "$label: GET / over TLS -> '$body'; container output:"
        timeout 30 podman logs "$name" 2>&1 | sed 's/^/    /' | tail -20
    fi
    plain=$(curl -sS -m 3 "http://127.0.0.1:$port/" 2>&1 || true)
    if [ "$plain" = "The plain HTTP request was sent to HTTPS port" ]; then
        pass "$label: plain http -> 400 \"$plain\""
    else
        fail "$label: plain http -> '$plain'"
    fi
    if out=$(timeout 30 podman healthcheck run "$name" 2>&1); then
        pass "$label: HEALTHCHECK healthy (over TLS)"
    else
        fail "$label: HEALTHCHECK: $out"
    fi
else
    fail "$label: could not start the container: $(tail -3 "$tmp/podman.err")"
fi

# --privileged: no seccomp filter at all (and every capability).
name=ringserve-smoke-p-$suffix
port=$(free_port)
label="(--privileged) uring"
if start "$name" "$port" --privileged; then
    if body=$(serves "$name" "$port") && [ "$body" = "Hello from ringserve" ]; then
        pass "$label: GET / -> $body"
    else
        fail "$label: GET / got no answer"
    fi
    if [ "$(seccomp_mode "$name")" = 0 ]; then
        pass "$label: no seccomp filter"
    else
        fail "$label: a seccomp filter is active"
    fi
else
    fail "$label: could not start the container: $(tail -3 "$tmp/podman.err")"
fi

echo "runs took $(elapsed "$t_runs") s"
echo "smoke test: $passed passed, $failed failed"
[ "$failed" = 0 ]
