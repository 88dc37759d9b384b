# Diffusion-LM Trajectory Explorer: the web app on the CPU (embedded model, no network needed).
#
#   docker build -t diffusion-explorer .
#   docker run --rm -p 7860:7860 -v explorer-data:/data diffusion-explorer
#   docker run --rm -p 7860:7860 -v explorer-data:/data -e EXPLORER_REPLAY_ONLY=1 diffusion-explorer
#
# Runs are stored in /data/trajectories.db (a volume: keep it with -v NAME:/data, or bind a host
# directory writable by uid 1000). A CUDA build of PyTorch instead of the CPU one:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t diffusion-explorer:cuda .
#   docker run --gpus all ...
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    EXPLORER_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    HOME=/home/user

# The user Hugging Face Docker Spaces run as (uid 1000); owns the app's data directory.
RUN useradd --create-home --uid 1000 --shell /bin/bash user \
    && mkdir -p /data /app \
    && chown user:user /data /app

WORKDIR /app

# PyTorch first, from its CPU index (a plain `pip install torch` on Linux pulls the CUDA build,
# several GB); then the rest, which finds torch already satisfied.
COPY requirements.txt ./
RUN pip install --index-url "${TORCH_INDEX_URL}" torch \
    && pip install -r requirements.txt

COPY --chown=user:user . .

USER user
# Declared after /data is created and owned by `user`, so a new named volume starts writable.
VOLUME ["/data"]
EXPOSE 7860

HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]

CMD ["python", "app.py"]
