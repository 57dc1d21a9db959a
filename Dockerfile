# Production image of the kdcvg server. Build: docker build -t kdcvg .   Run: see deploy/README.md
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 \
    KDCVG_HOST=0.0.0.0 KDCVG_PORT=50051 KDCVG_METRICS_PORT=9464 KDCVG_DATA_DIR=/var/lib/kdcvg

WORKDIR /app
# The CPU build of torch first: an unpinned resolve would pull GBs of CUDA wheels.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
RUN pip install . && pip install --no-deps rapidocr-onnxruntime==1.4.4

# Export and quantise the text encoder at build time so the container starts without doing it.
RUN python -c "from pathlib import Path; from kdcvg.text.encoder import TextEncoder; TextEncoder.load(Path('/opt/kdcvg/models'))"
ENV KDCVG_ENCODER_CACHE_DIR=/opt/kdcvg/models

RUN useradd --system --uid 10001 kdcvg && mkdir -p /var/lib/kdcvg && chown kdcvg /var/lib/kdcvg
USER kdcvg
VOLUME ["/var/lib/kdcvg"]
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
c=grpc.insecure_channel('127.0.0.1:50051'); \
r=g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=2); exit(r.status != 1)"
# SIGTERM drains in-flight calls for KDCVG_SHUTDOWN_GRACE_S before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kdcvg", "serve"]
