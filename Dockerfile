# distill on CPU: the package installed the way README.md's first command installs it, running the
# embedded default job (distill-train: stdlib corpus, teacher pretrained once, KD, summary).
#   docker build -t distill .
#   docker run --rm -v distill-cache:/root/.cache/distill -v "$PWD/outputs:/app/outputs" distill
#   docker run --rm -v "$PWD/outputs:/app/outputs" distill distill-export outputs/train/<run> --onnx
# tests/deploy/test_dockerfile.py checks these install lines against the README's.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    TOKENIZERS_PARALLELISM=false

COPY pyproject.toml README.md ./
COPY distill ./distill
COPY conf ./conf

RUN python3 -m venv .venv
# What `. .venv/bin/activate` does, for every later RUN and for the container's command.
ENV PATH=/app/.venv/bin:$PATH
# torch first, from the CPU index the README names for machines without the local CPU wheel, so
# pip never pulls a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
RUN pip install -e .

CMD ["distill-train"]
