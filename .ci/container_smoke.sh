#!/usr/bin/env bash
# Container smoke test: builds the unchanged Dockerfile with Podman (no Docker daemon, no image registry),
# runs it on the test model, waits for /health (and runs the image's HEALTHCHECK), streams a completion,
# then sends SIGTERM while a second stream is in flight: once /health says draining, /metrics must still
# count that request in the engine, the stream must still end with `data: [DONE]`, and the container must
# exit with status 0. Bounded: every wait has a timeout.
#
# Needs root on Debian bookworm with the Debian mirror and the npm registry reachable. The base image
# debian:bookworm-slim is made locally with debootstrap, since no registry can be pulled from.
# Env: MODEL_DIR (default ../shared/models/stories260K), MODEL_FILE (stories260K.gguf),
#      KEEP_IMAGES=1 to keep the images afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODEL_DIR=${MODEL_DIR:-$ROOT/../shared/models/stories260K}
MODEL_FILE=${MODEL_FILE:-stories260K.gguf}
IMAGE=localhost/ragtime:ci
BASE=docker.io/library/debian:bookworm-slim
NAME=ragtime-ci-$$
HEALTH_TIMEOUT_S=300

log() { printf '[container %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
  log "FAILED: $*"
  exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (podman with overlay storage, debootstrap)"
[ -f "$MODEL_DIR/$MODEL_FILE" ] || die "model not found: $MODEL_DIR/$MODEL_FILE"
MODEL_DIR=$(cd "$MODEL_DIR" && pwd -P)

WORK=$(mktemp -d /tmp/ragtime-ctr.XXXXXX)
RUN_PID=
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && [ -s "$WORK/ctr.log" ]; then
    log "container log (last 80 lines):"
    grep -v 'systemd connection' "$WORK/ctr.log" | tail -n 80 | sed 's/^/    /'
  fi
  if podman container exists "$NAME" 2>/dev/null; then podman rm -f -t 5 "$NAME" >/dev/null 2>&1; fi
  if [ -n "${RUN_PID:-}" ]; then kill "$RUN_PID" 2>/dev/null; fi
  if [ "${KEEP_IMAGES:-0}" != 1 ] && command -v podman >/dev/null; then
    podman rmi -f "$IMAGE" >/dev/null 2>&1
    # Stage images of the multi-stage build are left dangling; on a CI machine nothing else is there.
    if [ "${CI:-}" = true ]; then podman image prune -f >/dev/null 2>&1; fi
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# --- Tools ---------------------------------------------------------------------------------------
need=()
for p in podman buildah runc debootstrap curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || echo "warning: apt-get update failed for some sources (unreachable third-party lists?); installing anyway"
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
podman --version

# crun fails on these hosts ("cgroups in hybrid mode not supported"): use runc for builds and runs.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$WORK/containers.conf

# --- Base image ----------------------------------------------------------------------------------
if podman image exists "$BASE"; then
  log "base image $BASE already present"
else
  # The mirror apt already uses: a source whose suites include plain "bookworm" (deb822 files first,
  # then one-line sources.list entries).
  MIRROR=$(awk '
    function flush() { if (uri != "" && suites ~ /(^|[[:space:]])bookworm([[:space:]]|$)/ && out == "") out = uri; uri = ""; suites = "" }
    /^[[:space:]]*$/ { flush(); next }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { $1 = ""; suites = $0 }
    END { flush(); if (out != "") print out }
  ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$MIRROR" ]; then
    MIRROR=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { if ($(i + 1) == "bookworm") { print $i; exit } } }' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  fi
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  log "debootstrap bookworm (minbase) from $MIRROR"
  t0=$SECONDS
  timeout 900 debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    {
      tail -n 30 "$WORK/debootstrap.log"
      die "debootstrap"
    }
  # Keep the image close to the official one: no apt lists, no caches.
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
  tar -C "$WORK/rootfs" -c . | podman import -q - localhost/debian-local:bookworm >/dev/null
  podman tag localhost/debian-local:bookworm "$BASE"
  rm -rf "$WORK/rootfs"
  log "base image ready in $((SECONDS - t0)) s"
fi

# --- Build ---------------------------------------------------------------------------------------
log "podman build --format docker -t $IMAGE ."
t0=$SECONDS
# The host's CA bundle goes in as a build secret: where egress passes a TLS-intercepting proxy, the
# base image's CAs do not trust it (the Dockerfile uses the secret only when it is given).
SECRET=()
for ca in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$ca" ] && [ -s "$ca" ]; then
    SECRET=(--secret "id=ca_bundle,src=$ca")
    break
  fi
done
timeout 1800 podman build --pull=never --format docker "${SECRET[@]}" -t "$IMAGE" . || die "podman build"
log "built in $((SECONDS - t0)) s; image size: $(podman image inspect --format '{{.Size}}' "$IMAGE" |
  awk '{printf "%.0f MB", $1/1e6}')"
[ -n "$(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE")" ] || die "HEALTHCHECK missing from the image"

# --- Run -----------------------------------------------------------------------------------------
PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})' 2>/dev/null ||
  echo $((20000 + RANDOM % 20000)))
log "podman run (port $PORT, model /models/$MODEL_FILE)"
# Attached in the background rather than `-d`: here `podman logs` loses what the container writes to
# stderr (conmon 2.1.6), and the server logs there. Without systemd, podman cannot schedule the image's
# HEALTHCHECK and says so (harmless); the check is run by hand below.
podman run --name "$NAME" --runtime runc \
  --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  --network=host \
  -v "$MODEL_DIR":/models:ro \
  -e RAGTIME_MODEL="/models/$MODEL_FILE" -e PORT="$PORT" -e RAGTIME_SHUTDOWN_TIMEOUT=120 \
  "$IMAGE" </dev/null >"$WORK/ctr.log" 2>&1 &
RUN_PID=$!
ctr_log() { grep -v 'systemd connection' "$WORK/ctr.log" || true; }
URL=http://127.0.0.1:$PORT
# wait_healthy SUFFIX: until /health answers 200 from the container started as $RUN_PID.
wait_healthy() {
  local t0=$SECONDS
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL/health" || true)" = 200 ]; do
    kill -0 "$RUN_PID" 2>/dev/null || die "container exited during startup$1"
    [ $((SECONDS - t0)) -lt "$HEALTH_TIMEOUT_S" ] || die "/health not 200 after $HEALTH_TIMEOUT_S s$1"
    sleep 1
  done
  log "/health 200 after $((SECONDS - t0)) s"
}


wait_healthy ""
podman healthcheck run "$NAME" 2>/dev/null || die "the image's HEALTHCHECK command failed"
log "image HEALTHCHECK: healthy"
log "adapter lines from the container log:"
ctr_log | grep -iE 'adapter|llvmpipe|lavapipe|vulkan|webgpu' | head -n 5 | sed 's/^/    /' || true

MODEL_ID=$(curl -fsS --max-time 10 "$URL/v1/models" |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).data[0].id))') ||
  die "GET /v1/models"
log "served model: $MODEL_ID"
# The playground's files are read from the image at startup (http/ui/): the page must be there.
curl -fsS --max-time 10 "$URL/" | grep -q 'src="/ui/app.js"' || die "GET / (chat playground)"
curl -fsS --max-time 10 -o /dev/null "$URL/ui/app.js" || die "GET /ui/app.js"
log "chat playground served at /"

# --- Streamed completions -------------------------------------------------------------------------
stream() { # BODY OUT: POST /v1/completions with stream=true, raw SSE into OUT
  curl -sS -N --max-time 120 "$URL/v1/completions" -H 'content-type: application/json' -d "$1" >"$2"
}
check_stream() { # FILE: prints the streamed text; fails without text or without a final data: [DONE]
  node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n");
    const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
    if (data[data.length - 1] !== "[DONE]") { console.error("no data: [DONE] at the end"); process.exit(1); }
    const text = data.slice(0, -1).map((d) => JSON.parse(d)).map((c) => c.choices?.[0]?.text ?? "").join("");
    if (!text.trim()) { console.error("no text in the stream"); process.exit(1); }
    console.log(JSON.stringify(text.length > 120 ? text.slice(0, 120) + "..." : text));
  ' "$1" || {
    sed 's/^/    /' "$1" | head -n 40
    return 1
  }
}
stream "{\"model\":\"$MODEL_ID\",\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0,\"stream\":true}" \
  "$WORK/stream.txt" || die "streamed completion (curl)"
TEXT=$(check_stream "$WORK/stream.txt") || die "streamed completion"
log "streamed text: $TEXT"

# --- Graceful stop: SIGTERM while a stream is running; it must still end with [DONE] ---------------
stream "{\"prompt\":\"Once upon a time\",\"max_tokens\":160,\"ignore_eos\":true,\"stream\":true}" \
  "$WORK/drain.txt" &
CURL_PID=$!
t0=$SECONDS
until grep -q '^data: ' "$WORK/drain.txt" 2>/dev/null; do
  kill -0 "$CURL_PID" 2>/dev/null || break
  [ $((SECONDS - t0)) -lt 60 ] || die "no first chunk within 60 s"
  sleep 0.1
done
kill -0 "$CURL_PID" 2>/dev/null || die "the long stream ended before SIGTERM: no drain to test"
log "SIGTERM (one stream in flight)"
t0=$SECONDS
podman kill --signal TERM "$NAME" >/dev/null
# Once /health says draining, nothing new gets in: a request the engine still holds then was in flight
# when the signal came. Fails if the stream had already finished.
while :; do
  HEALTH=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL/health" || true)
  [ "$HEALTH" != 503 ] || break
  [ "$HEALTH" != 000 ] || die "/health gone after SIGTERM: the server stopped at once (nothing in flight)"
  [ $((SECONDS - t0)) -lt 10 ] || die "/health did not turn 503 within 10 s of SIGTERM"
  sleep 0.1
done
IN_ENGINE=$(curl -fsS --max-time 5 "$URL/metrics" | awk '
  $1 == "ragtime_requests_running" || $1 == "ragtime_requests_waiting" { n += $2 }
  END { print n + 0 }') || die "GET /metrics while draining"
[ "$IN_ENGINE" = 1 ] || die "$IN_ENGINE requests in the engine once draining (expected the stream in flight)"
log "draining with the stream still in the engine"
# The drain may take up to RAGTIME_SHUTDOWN_TIMEOUT (120 s here: a slow CPU must not cut the stream).
CODE=$(timeout 150 podman wait "$NAME") || die "container did not stop within 150 s of SIGTERM"
log "exited with status $CODE after $((SECONDS - t0)) s"
wait "$CURL_PID" || die "the stream in flight failed during the drain"
TEXT=$(check_stream "$WORK/drain.txt") || die "the stream in flight did not finish cleanly"
log "stream in flight finished: $(grep -c '^data: ' "$WORK/drain.txt") events, text $TEXT"
[ "$CODE" = 0 ] || die "exit status $CODE (expected 0)"
wait "$RUN_PID" || true
log "container log (last 5 lines):"
ctr_log | tail -n 5 | sed 's/^/    /'

# --- The built-in default model, when the checkout has one: no RAGTIME_MODEL, one chat completion ----
if [ -f models/ragtime-mini/config.json ]; then
  podman rm -f "$NAME" >/dev/null 2>&1
  log "podman run without RAGTIME_MODEL (built-in models/ragtime-mini)"
  podman run --name "$NAME" --runtime runc \
    --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
    --network=host -e PORT="$PORT" \
    "$IMAGE" </dev/null >"$WORK/ctr.log" 2>&1 &
  RUN_PID=$!
  wait_healthy " (default model)"
  curl -fsS --max-time 120 "$URL/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":16,"temperature":0}' >"$WORK/chat.json" ||
    die "chat completion (default model)"
  TEXT=$(node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const t = r.choices?.[0]?.message?.content ?? "";
    if (!t.trim()) process.exit(1);
    console.log(r.model + ": " + JSON.stringify(t));
  ' "$WORK/chat.json") || {
    sed 's/^/    /' "$WORK/chat.json"
    die "chat completion without text (default model)"
  }
  log "chat: $TEXT"
  podman kill --signal TERM "$NAME" >/dev/null
  CODE=$(timeout 90 podman wait "$NAME") || die "container did not stop within 90 s of SIGTERM (default model)"
  [ "$CODE" = 0 ] || die "exit status $CODE (expected 0, default model)"
  wait "$RUN_PID" || true
  log "exited with status 0"
fi
log "OK"
