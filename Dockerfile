# syntax=docker/dockerfile:1
# resolver: a caching DNS forwarder that keeps answering from its cache when upstreams fail.
#
# Build:  docker build -t resolver .
# Run as a sidecar of an application container (shares its network namespace, so the
# application reaches the forwarder on 127.0.0.1:53 — the default config listens on loopback only):
#           docker run -d --name resolver --network container:myapp \
#             -v resolver-state:/var/lib/resolver \
#             -v "$PWD/my.yaml:/etc/resolver/resolver.yaml:ro" resolver
# Check a config:  docker run --rm -v "$PWD/my.yaml:/etc/resolver/resolver.yaml:ro" resolver \
#                    --config /etc/resolver/resolver.yaml --check-config
# Published ports (-p 53:53/udp) reach the container's own address, not its loopback: that needs
# a config listening on 0.0.0.0:53, restricted to your clients.
#
# Port 53 without root: the process runs as the unprivileged user "resolver" (uid 10053) and
# binds port 53 thanks to the network namespace's sysctl net.ipv4.ip_unprivileged_port_start,
# not a capability.  Docker >= 20.10 sets it to 0 in every container it gives its own network
# namespace; elsewhere pass `--sysctl net.ipv4.ip_unprivileged_port_start=53` (Kubernetes: pod
# securityContext.sysctls, a "safe" sysctl).  CAP_NET_BIND_SERVICE is *not* relied on: a non-root
# process only keeps a capability as an ambient or file capability, which `docker run --cap-add`
# and Kubernetes `capabilities.add` do not give it, and file capabilities on the Python
# interpreter would hand the privilege to every Python program in the image.
#
# Files: /etc/resolver/resolver.yaml (config; the default is config/container.yaml),
# /var/lib/resolver (state volume for the host cache tier; writable by the resolver user).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a wheel of this package, installed with its dependencies into a venv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# A C compiler for the native UDP hit loop (resolver/serve/_hitloop.c; the image has the Python
# headers).  This stage only: the runtime image gets the built wheel, never the compiler.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md ./
COPY resolver ./resolver
RUN python -m venv /opt/resolver \
 && python -m pip wheel --no-deps --wheel-dir /tmp/wheels . \
 && /opt/resolver/bin/pip install /tmp/wheels/resolver-*.whl \
 && /opt/resolver/bin/resolver --version \
 && /opt/resolver/bin/python -c "from resolver.serve import _hitloop"

# --- runtime: the venv and the config only; no compiler, no pip cache, no source tree -------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="resolver" \
      org.opencontainers.image.description="Caching DNS forwarder that serves stale answers when upstreams fail (RFC 8767)" \
      org.opencontainers.image.licenses="MIT"
# RESOLVER_ADMIN_SOCKET: where the server binds its admin socket and where
# `docker exec <c> resolver ctl ...` looks for it (the state volume, writable by the user).
ENV PATH=/opt/resolver/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RESOLVER_ADMIN_SOCKET=/var/lib/resolver/admin.sock
RUN groupadd --system --gid 10053 resolver \
 && useradd --system --uid 10053 --gid resolver --no-create-home \
      --home-dir /var/lib/resolver --shell /usr/sbin/nologin resolver \
 && mkdir -p /etc/resolver /var/lib/resolver \
 && chown resolver:resolver /var/lib/resolver \
 && chmod 0750 /var/lib/resolver
COPY --from=build /opt/resolver /opt/resolver
COPY config/container.yaml /etc/resolver/resolver.yaml
COPY deploy/docker/healthcheck.py /opt/resolver/bin/resolver-healthcheck
# Numeric, so Kubernetes' runAsNonRoot can verify it without a runAsUser.
USER 10053:10053
WORKDIR /var/lib/resolver
VOLUME ["/var/lib/resolver"]
# 53: DNS over UDP and TCP; 9153: /metrics, /healthz, /readyz (metrics.listen in the config).
EXPOSE 53/udp 53/tcp 9153/tcp
# Reads metrics.listen from the config, so it follows a changed metrics port.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "/opt/resolver/bin/resolver-healthcheck", "/etc/resolver/resolver.yaml"]
# The process handles SIGTERM itself (finish in-flight queries, exit 0), so no init is needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["resolver"]
CMD ["--config", "/etc/resolver/resolver.yaml"]
