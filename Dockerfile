FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY streaming ./streaming
COPY interaction ./interaction
COPY recorder ./recorder
COPY pages ./pages
RUN pip install --no-cache-dir . && useradd --system tribune
USER tribune
ENV TRIBUNE_HOST=0.0.0.0 TRIBUNE_PORT=8080 TRIBUNE_DATA_DIR=/tmp/tribune
EXPOSE 8080
CMD ["tribune", "serve"]
