# MountainID training job (Cloud Run Job). Build from the repository root:
#   docker build -f infra/docker/training.Dockerfile -t training .                     # CPU (default)
#   docker build -f infra/docker/training.Dockerfile --build-arg VARIANT=gpu -t training .   # NVIDIA GPU
# The GPU variant swaps tensorflow-cpu for tensorflow[and-cuda] at the same version (CUDA and cuDNN
# come as pip wheels; the GPU driver comes from the Cloud Run GPU host).
FROM python:3.11-slim

ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/home/app/.keras \
    MOUNTAINID_WEIGHTS=imagenet

RUN useradd --create-home --uid 10001 app
WORKDIR /app

COPY requirements.lock ./
RUN tf="$(sed -n 's/^tensorflow_cpu==//p' requirements.lock)" \
    && case "$VARIANT" in \
         cpu) tf_package="tensorflow-cpu==$tf" ;; \
         gpu) tf_package="tensorflow[and-cuda]==$tf" ;; \
         *) echo "VARIANT must be cpu or gpu, got $VARIANT" >&2; exit 1 ;; \
       esac \
    && grep -v '^tensorflow_cpu==' requirements.lock > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "$tf_package" \
    && rm /tmp/requirements.txt

COPY pyproject.toml ./
COPY mountainid ./mountainid
# Install the library into site-packages (with its catalogs), then drop the source copy.
RUN pip install --no-deps . && rm -rf build ./*.egg-info mountainid pyproject.toml
COPY training_job ./training_job

USER app
RUN python -c "import keras; keras.applications.MobileNetV2(weights='imagenet', include_top=True)"

CMD ["python", "-m", "training_job.main"]
