# MountainID training job (Cloud Run Job). Build from the repository root:
#   docker build -f infra/docker/training.Dockerfile -t training .                     # CPU (default)
#   docker build -f infra/docker/training.Dockerfile --build-arg VARIANT=gpu -t training .   # NVIDIA GPU
# The GPU variant swaps tensorflow-cpu for tensorflow[and-cuda] at the same version (CUDA and cuDNN
# come as pip wheels, pinned exactly by TensorFlow's and-cuda extra; the GPU driver comes from the
# Cloud Run GPU host). Cloud Run's NVIDIA L4 hosts run driver 535 (CUDA 12.2). NVIDIA documents that
# an application built with any CUDA 12.x toolkit runs on a driver from 525 on (CUDA minor version
# compatibility) and that cuDNN 9 for CUDA 12 needs driver 525.60.13 or later; so the build stops unless
# this TensorFlow is a CUDA 12 / cuDNN 9 build. (TensorFlow's tested configurations pair CUDA 12.2 only
# with TensorFlow 2.15, which predates the Keras 3 and NumPy 2 this code needs.)
FROM python:3.11-slim

ARG VARIANT=cpu
ARG GPU_CUDA_MAJOR=12
ARG GPU_CUDNN_MAJOR=9
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
    && rm /tmp/requirements.txt \
    && if [ "$VARIANT" = gpu ]; then python -c "import sys, tensorflow as tf; b = tf.sysconfig.get_build_info(); \
cuda, cudnn = str(b.get('cuda_version', '')), str(b.get('cudnn_version', '')); print('CUDA', cuda, 'cuDNN', cudnn); \
sys.exit(0 if cuda.split('.')[0] == '$GPU_CUDA_MAJOR' and cudnn.split('.')[0] == '$GPU_CUDNN_MAJOR' \
else 'TensorFlow is not a CUDA $GPU_CUDA_MAJOR / cuDNN $GPU_CUDNN_MAJOR build: it would not run on driver 535')"; fi

COPY pyproject.toml ./
COPY mountainid ./mountainid
# Install the library into site-packages (with its catalogs), then drop the source copy.
RUN pip install --no-deps . && rm -rf build ./*.egg-info mountainid pyproject.toml
COPY training_job ./training_job

USER app
RUN python -c "import keras; keras.applications.MobileNetV2(weights='imagenet', include_top=True)"

CMD ["python", "-m", "training_job.main"]
