# ragtime: OpenAI-compatible LLM server on WebGPU (Deno + onnxruntime-web).
#
#   docker build -t ragtime .
#   docker run --rm -p 8080:8080 ragtime                  # the built-in models/ragtime-mini
#   docker run --rm -p 8080:8080 -v /path/to/models:/models:ro \
#     -e RAGTIME_MODEL=/models/stories260K.gguf ragtime   # a model of your own
#
# Arguments after the image name are passed to the server as flags (`ragtime --dtype f32`).
# On NVIDIA hosts see docs/deploy.md (--gpus all, NVIDIA_DRIVER_CAPABILITIES, VK_DRIVER_FILES).
# Works with Buildah 1.28 (no RUN heredocs); build with `--format docker` so HEALTHCHECK is kept.

# --- Deno, taken from the npm package @deno/linux-<arch>-glibc (the registry is all a build needs) ---
FROM debian:bookworm-slim AS deno
ARG DENO_VERSION=2.9.6
# sha512 of the registry tarballs of DENO_VERSION (the npm "integrity" field, in hex); change together.
ARG DENO_SHA512_AMD64=de67784ca2c2bb3b0b0e67cea02e4a37b34065ac525643209bae2f83a7e80f4d090400c2a584b6ff942a5dfce09cfe59433de22cff6f05026d120735d7a380a1
ARG DENO_SHA512_ARM64=a68aa1a07f41de7625a2280430f4f9b7c1d8fb005e8ae79ad409f943b7ea809ccfd126265aca12fe852758efe9122038a1fcc8072d4496dfe29f9f312adc44a1
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret (optional; docs/deploy.md):
#   --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
RUN --mount=type=secret,id=ca_bundle,required=false \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then export CURL_CA_BUNDLE=/run/secrets/ca_bundle; fi; \
    case "$(dpkg --print-architecture)" in \
      amd64) pkg=linux-x64-glibc; sum="$DENO_SHA512_AMD64" ;; \
      arm64) pkg=linux-arm64-glibc; sum="$DENO_SHA512_ARM64" ;; \
      *) echo "unsupported architecture: $(dpkg --print-architecture)" >&2; exit 1 ;; \
    esac; \
    curl -fsSL --retry 5 -o /tmp/deno.tgz "https://registry.npmjs.org/@deno/$pkg/-/$pkg-$DENO_VERSION.tgz"; \
    echo "$sum  /tmp/deno.tgz" | sha512sum -c -; \
    tar -xzf /tmp/deno.tgz -C /tmp package/deno; \
    install -m 0755 /tmp/package/deno /usr/local/bin/deno; \
    rm -rf /tmp/deno.tgz /tmp/package; \
    deno --version

# --- The app with its npm modules vendored into node_modules/, so the container starts offline ---
FROM deno AS build
ENV DENO_DIR=/opt/deno-dir DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
WORKDIR /app
# Dependencies first: this layer is reused while only the sources change.
COPY deno.json deno.lock ./
RUN --mount=type=secret,id=ca_bundle,required=false \
    if [ -s /run/secrets/ca_bundle ]; then export DENO_CERT=/run/secrets/ca_bundle; fi; \
    deno install --frozen
COPY . .
RUN --mount=type=secret,id=ca_bundle,required=false \
    if [ -s /run/secrets/ca_bundle ]; then export DENO_CERT=/run/secrets/ca_bundle; fi; \
    deno install --frozen && deno cache main.ts
# The server loads only onnxruntime-web's WebGPU bundle and its wasm (engine/model_runner.ts imports
# "onnxruntime-web/webgpu"); the other builds and source maps are dropped (about 120 MB). Packages that
# only tests use (playwright-core) stay: `deno run --cached-only` wants every package of deno.lock present.
# Of Dawn (npm webgpu, --webgpu dawn) only this architecture's native addon stays (about 110 MB less).
RUN find node_modules/ -name '*.map' -type f -delete \
 && find node_modules/.deno/onnxruntime-web@*/node_modules/onnxruntime-web/dist -type f \
      ! -name 'ort.webgpu.bundle.min.mjs' ! -name 'ort-wasm-simd-threaded.asyncify.*' -delete \
 && case "$(uname -m)" in x86_64) keep=linux-x64 ;; aarch64) keep=linux-arm64 ;; *) keep=none ;; esac \
 && find node_modules/.deno/webgpu@*/node_modules/webgpu/dist -mindepth 1 -maxdepth 1 ! -name "$keep" \
      -exec rm -rf {} +

# --- Runtime ---
FROM debian:bookworm-slim
# mesa-vulkan-drivers is the software fallback (llvmpipe) used where no GPU driver is mounted in;
# build with --build-arg SOFTWARE_VULKAN=0 for a smaller GPU-only image. libglvnd0 is needed by
# NVIDIA's Vulkan driver (libGLX_nvidia), which the NVIDIA container runtime mounts from the host.
ARG SOFTWARE_VULKAN=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl libvulkan1 libglvnd0 \
      $(if [ "$SOFTWARE_VULKAN" = 1 ]; then echo mesa-vulkan-drivers; fi) \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN useradd --uid 10001 --user-group --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin ragtime \
 && install -d -o ragtime -g ragtime -m 0700 /run/user/10001 \
 && install -d -m 0755 /models
COPY --from=deno /usr/local/bin/deno /usr/local/bin/deno
# Sources and node_modules (all the npm code the server needs) stay owned by root, read-only to the
# server. Writable: the graph cache and DENO_DIR (Deno's transpile cache; it starts empty).
COPY --from=build /app /app
RUN install -d -o ragtime -g ragtime -m 0755 /app/.cache /app/.cache/graphs /opt/deno-dir

ENV DENO_DIR=/opt/deno-dir \
    DENO_NO_UPDATE_CHECK=1 \
    DENO_NO_PROMPT=1 \
    XDG_RUNTIME_DIR=/run/user/10001 \
    RAGTIME_HOST=0.0.0.0 \
    PORT=8080 \
    RAGTIME_GRAPH_CACHE=/app/.cache/graphs
# The model: mount it read-only at /models and set RAGTIME_MODEL=/models/<file or folder>. A checkout
# that holds the built-in default model (models/ragtime-mini) has it copied to /app/models, and main.ts
# serves it when no model is given.
USER ragtime
WORKDIR /app
EXPOSE 8080
# /health answers 503 while the model loads; the start period covers loading and graph compilation.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${PORT}/health" || exit 1
# SIGTERM drains: requests in flight get --shutdown-timeout (default 30 s) to finish, then exit 0.
# Give the container a longer stop timeout than that (docker run --stop-timeout 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["deno", "run", "--allow-all", "--cached-only", "main.ts"]
CMD []
