# medml on the CPU:  docker build -t medml:cpu .   then   docker run --rm -v "$PWD:/work" medml:cpu list
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg \
    XDG_CACHE_HOME=/home/medml/.cache

# ffmpeg for video inputs and outputs; libgl/libglib for OpenCV's image codecs
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/medml
# PyTorch's CPU wheels first (a fraction of the CUDA ones), then medml, which keeps them
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.8" "torchvision>=0.23"
COPY pyproject.toml README.md ./
COPY medml medml
COPY pipelines pipelines
# editable: the recipes in /opt/medml/pipelines stay where medml looks for them
RUN pip install -e . && useradd --create-home medml

USER medml
WORKDIR /work
ENTRYPOINT ["medml"]
CMD ["--help"]
