# MountainID web service (Cloud Run). Build from the repository root:
#   docker build -f infra/docker/web.Dockerfile -t web .
FROM python:3.11-slim

# MALLOC_ARENA_MAX=2: glibc gives each of the 32 request threads its own malloc arena by default, and
# freed photo buffers stay in them; with two arenas a flood of 40 Mpx uploads peaks at 1.77 GB instead of
# 2.14 GB (benchmarks/web.py, fine-tuned model with its keypoint gallery), within the 2 GiB deployed.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/home/app/.keras \
    MOUNTAINID_WEIGHTS=imagenet \
    PORT=8080

RUN useradd --create-home --uid 10001 app
WORKDIR /app

# Dependencies first: this layer is reused until requirements.lock changes.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY pyproject.toml ./
COPY mountainid ./mountainid
# Install the library into site-packages (with its catalogs), then drop the source copy.
RUN pip install --no-deps . && rm -rf build ./*.egg-info mountainid pyproject.toml
COPY web ./web

USER app
# Bake Keras' ImageNet MobileNetV2 weights into the image (~14 MB): no download at each cold start.
RUN python -c "import keras; keras.applications.MobileNetV2(weights='imagenet', include_top=True)"

EXPOSE 8080
# web/gunicorn_conf.py: bind 0.0.0.0:$PORT, one worker with 8 threads (the model is loaded once and
# shared; Cloud Run's --concurrency=8 matches), the same choices as `mountainid serve`.
CMD ["gunicorn", "--config", "python:web.gunicorn_conf", "web:create_app()"]
