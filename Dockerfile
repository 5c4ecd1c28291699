# The pharma-controltower image: one image, several services (`controltower run`, `simulate`, ...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY collector ./collector
COPY analytics ./analytics
COPY controltower ./controltower
COPY simulators ./simulators
COPY config ./config
RUN pip install . && useradd --system --uid 10001 controltower && mkdir -p /data && chown controltower /data
USER controltower

ENV CONTROLTOWER_DATA_DIR=/data
EXPOSE 8050
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8050/api/health', timeout=4).status == 200 else 1)"
ENTRYPOINT ["controltower"]
CMD ["run", "--config", "/app/config/compose-site.yaml"]
