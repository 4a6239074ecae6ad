# ringserve: io_uring (liburing via cffi) and epoll TCP server.
#
#   docker build -t ringserve .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     --security-opt seccomp=docker/seccomp-io_uring.json ringserve
#
# Docker's default seccomp profile (Engine 25 and later) denies the io_uring
# syscalls, so the default backend needs that profile; `--backend epoll` runs
# under the default profile.  See docker/README-section.md.
#
# Both stages use Debian's own python3 (3.11 in bookworm), so the virtualenv
# built in the first stage runs unchanged in the second (same /usr/bin/python3).

FROM debian:bookworm-slim AS build

# DL3008 (pin apt versions) is ignored: bookworm's point releases and
# security updates replace package versions in the archive, so exact pins
# break the build within weeks; the base image tag fixes the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev liburing-dev python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*

# The build environment: pip (and build isolation) from a throwaway venv.
RUN python3 -m venv /opt/build-venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY . .

# Builds ringserve's wheel (the cffi extension is compiled against
# liburing-dev here), then installs it with its dependencies (h11, httptools, cffi)
# into /opt/venv, which the runtime stage copies.  pip and setuptools are
# removed from that venv: nothing installs into it at run time.
RUN /opt/build-venv/bin/pip wheel --no-deps -w /wheels . \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install /wheels/ringserve-*.whl \
    && /opt/venv/bin/pip uninstall -y pip setuptools \
    && /opt/venv/bin/python -I -c "import uring_backend._liburing"


FROM debian:bookworm-slim AS runtime

# python3: the interpreter the venv points at; liburing2: the shared library
# the compiled binding links to (libffi is bundled in cffi's wheel).
# DL3008 is ignored for the reason given in the build stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 liburing2 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ringserve \
    && useradd --system --uid 10001 --gid ringserve --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin ringserve

COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/ringserve/healthcheck.py

# RINGSERVE_HOST/PORT: the server's defaults (127.0.0.1:8080) made right for
# a container, so `docker run ringserve --backend epoll`, which replaces CMD,
# still listens where -p can reach it.  The command line wins over both.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RINGSERVE_HOST=0.0.0.0 \
    RINGSERVE_PORT=8080

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080

# Probes the server PID 1 runs (its --host/--port/--protocol, from the
# command line or RINGSERVE_* variables): GET / for http, a round trip for
# echo.  HEALTHCHECK is Docker-format only; podman keeps it with
# `podman build --format docker`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/opt/venv/bin/python", "/opt/ringserve/healthcheck.py"]

# Exec form: python is PID 1 and receives SIGTERM itself (graceful stop
# within --timeout-graceful-shutdown, 10 s by default, as long as `docker stop`'s).
ENTRYPOINT ["/opt/venv/bin/python", "-m", "server"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
