# resolver: a caching DNS forwarder that serves stale answers when upstreams fail.
#
# Build:  docker build -t resolver .
# Run:    docker run --sysctl net.ipv4.ip_unprivileged_port_start=53 \
#           -v resolver-state:/var/lib/resolver -v ./my.yaml:/etc/resolver/resolver.yaml:ro resolver
#
# The process runs as an unprivileged user; to serve port 53 without root the
# container needs the unprivileged-port sysctl above (or CAP_NET_BIND_SERVICE).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY resolver ./resolver
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN groupadd --system resolver \
 && useradd --system --gid resolver --home-dir /var/lib/resolver --shell /usr/sbin/nologin resolver \
 && mkdir -p /etc/resolver /var/lib/resolver \
 && chown resolver:resolver /var/lib/resolver
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/container.yaml /etc/resolver/resolver.yaml
USER resolver
VOLUME ["/var/lib/resolver"]
EXPOSE 53/udp 53/tcp 9153/tcp
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9153/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["resolver"]
CMD ["--config", "/etc/resolver/resolver.yaml"]
