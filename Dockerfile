# stt worker image. CPU (default): docker build -t stt:cpu .
# GPU (CUDA torch from PyPI):       docker build -t stt:gpu --build-arg TORCH_INDEX= .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    STT_PROJECT_DIR=/app \
    STT_DATA_DIR=/data \
    STT_CACHE_DIR=/cache/stt \
    HF_HOME=/cache/hf \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stt stt
COPY stt_app stt_app
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch --index-url "$TORCH_INDEX"; fi \
    && pip install -e ".[s3]" && pip install "prefect-aws>=0.7,<0.8"
COPY configs configs
COPY deployments deployments
COPY scripts scripts

# Workers run flows from /app (prefect.yaml's pull step: STT_PROJECT_DIR); outputs go to the runs volume, or
# to object storage (run_dir: s3://..., the [s3] extra) where workers share no disk.
CMD ["prefect", "worker", "start", "--pool", "cpu", "--type", "process"]
