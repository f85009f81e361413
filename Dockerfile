# ctrflow application image: the CLI, feature jobs, training and (later) serving.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    CTRFLOW_HOME=/data/ctrflow

WORKDIR /app
# CPU torch first, from the CPU index, so the project install does not pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY pipelines pipelines
COPY features features
COPY training training
COPY orchestration orchestration
COPY serving_stub serving_stub
RUN pip install .

RUN useradd --create-home ctrflow && mkdir -p /data/ctrflow && chown -R ctrflow /data
USER ctrflow
VOLUME ["/data"]
ENTRYPOINT ["ctrflow"]
CMD ["--help"]
