# ctrflow application image: the CLI, feature jobs, training and serving.
FROM python:3.11-slim
# CPU torch by default; docker-compose.gpu.yml builds with a CUDA wheel index instead.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    CTRFLOW_HOME=/data/home

WORKDIR /app
# torch first, from the chosen index, so the project install does not pull a build of its own choice.
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}
COPY pyproject.toml README.md ./
COPY pipelines pipelines
COPY features features
COPY training training
COPY orchestration orchestration
COPY serving_stub serving_stub
RUN pip install .

# The compose stack mounts one named volume on each of these; a new volume copies this ownership.
RUN useradd --create-home ctrflow && mkdir -p /data/home /data/warehouse /data/registry /data/runs \
    && chown -R ctrflow /data
USER ctrflow
VOLUME ["/data"]
ENTRYPOINT ["ctrflow"]
CMD ["--help"]
