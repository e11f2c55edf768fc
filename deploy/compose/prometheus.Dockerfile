# Prometheus for the Compose cluster (deploy/compose/compose.yaml), from
# Debian's own package: no registry is needed to build it (scripts/image.sh
# --prometheus builds it as localhost/tern-prometheus:dev from the same
# locally made debian:bookworm-slim base as tern's image).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* /var/log/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
 && install -d -o 65534 -g 65534 /prometheus
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=0.0.0.0:9090", "--storage.tsdb.retention.time=7d"]
