# Self-hosted prediction API: birdclf[serve] only (onnxruntime, FastAPI, uvicorn; no torch), as a non-root user.
#   docker build -t birdclf-api .
#   docker run -p 7071:7071 -v "$PWD/runs/RUN/model.onnx:/models/model.onnx:ro" birdclf-api
# The model: mount one at /models/model.onnx (the default BIRDCLF_MODEL) or set BIRDCLF_MODEL to an http(s) URL.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY birdclf ./birdclf
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    BIRDCLF_HOME=/home/birdclf/.cache/birdclf BIRDCLF_MODEL=/models/model.onnx
COPY --from=build /wheels /wheels
RUN pip install --no-compile "$(ls /wheels/birdclf-*.whl)[serve]" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 birdclf && mkdir -p /models
USER birdclf
EXPOSE 7071
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:7071/api/health', timeout=4)"
CMD ["birdclf", "serve", "--host", "0.0.0.0", "--port", "7071"]
