# mtproxy in a container: docker build -t mtproxy . && docker run -p 127.0.0.1:8088:8088 mtproxy
# The default config (deploy/mtproxy.yaml) reaches runtimes on the host at host.docker.internal;
# mount your own at /etc/mtproxy/config.yaml. deploy/compose.yaml adds Prometheus and Grafana.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mtproxy ./mtproxy
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin mtproxy

COPY deploy/mtproxy.yaml /etc/mtproxy/config.yaml

USER 10001:10001
WORKDIR /
EXPOSE 8088
STOPSIGNAL SIGTERM

# Liveness: /health answers 200 while the process serves (readiness is /ready).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8088/health', timeout=2)"]

ENTRYPOINT ["mtproxy"]
CMD ["serve", "--config", "/etc/mtproxy/config.yaml", "--host", "0.0.0.0"]
