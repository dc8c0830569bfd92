#!/usr/bin/env bash
# The project's own benchmark: sign-in and GET /api/auth/me under 32 concurrent clients,
# on SQLite and on PostgreSQL side by side, then on SQLite over HTTPS (TLS_CERT_PATH, a
# self-signed certificate made here) beside plain HTTP, with the machine's limits beside
# them (argon2id hashes per second per core; indexed reads per second with pgbench).
# Usage: bench/run.sh [seconds-per-run]   (needs wrk and pgbench; installs wrk if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
PG_ADMIN="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet
BIN=target/release/authflow
ROOT="$PWD"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat > "$WORK/signin.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"username":"bench.user","password":"correct-horse-battery-staple-42"}'
LUA

# A self-signed certificate for 127.0.0.1, for the HTTPS run: openssl's command if there
# is one, else the project's dev example (rcgen); never a dependency of the service.
make_certificate() { # dir
  if command -v openssl >/dev/null; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
      -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
      -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
  else
    cargo run --quiet --release --example self_signed_cert -- "$1"
  fi
}

run_backend() { # name database_url port [https]
  local name=$1 url=$2 port=$3 scheme=http
  local -a tls=()
  mkdir -p "$WORK/$name"
  if [ "${4:-}" = https ]; then
    scheme=https
    make_certificate "$WORK/$name"
    tls=(TLS_CERT_PATH="$WORK/$name/cert.pem" TLS_KEY_PATH="$WORK/$name/key.pem")
  fi
  local base="$scheme://127.0.0.1:$port"
  # The server's own pid, to stop this one and no other process.
  (cd "$WORK/$name" && exec env APP_HOST=127.0.0.1 APP_PORT="$port" DATABASE_URL="$url" \
    RUST_LOG=warn RATE_LIMITS=off "${tls[@]}" "$ROOT/$BIN") >"$WORK/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -skf "$base/health" >/dev/null && break; sleep 0.1; done
  curl -skf "$base/api/users/create-account" -H 'content-type: application/json' \
    -d '{"name":"Bench User","username":"bench.user","email":"bench@example.com","password":"correct-horse-battery-staple-42"}' >/dev/null
  local token
  token=$(curl -skf "$base/api/auth/signin" -H 'content-type: application/json' \
    -d '{"username":"bench.user","password":"correct-horse-battery-staple-42"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  local signin me
  signin=$(wrk -t2 -c32 -d"${DURATION}s" -s "$WORK/signin.lua" "$base/api/auth/signin" | awk '/Requests\/sec/ {print $2}')
  me=$(wrk -t2 -c32 -d"${DURATION}s" -H "Authorization: Bearer $token" "$base/api/auth/me" | awk '/Requests\/sec/ {print $2}')
  local rss
  rss=$(ps -o rss= -p "$pid")
  printf '%-14s sign-in %8s req/s   GET /api/auth/me %9s req/s   RSS %s KiB\n' "$name" "$signin" "$me" "$rss"
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

echo "== machine: $(nproc) cores; ${DURATION}s per run; 32 connections"
"$BIN" hash-benchmark
DB="authflow_bench_$$"
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
run_backend sqlite "sqlite://$WORK/sqlite/authflow.db" 18081
run_backend postgres "${PG_ADMIN%/*}/$DB" 18082
psql "$PG_ADMIN" -qc "DROP DATABASE $DB WITH (FORCE)" >/dev/null
# HTTPS (TLS 1.3, HTTP/1.1 as wrk speaks it, connections kept alive) beside plain HTTP.
run_backend sqlite-https "sqlite://$WORK/sqlite-https/authflow.db" 18083 https

if command -v pgbench >/dev/null; then
  PGB="authflow_pgbench_$$"
  psql "$PG_ADMIN" -qc "CREATE DATABASE $PGB" >/dev/null
  pgbench -q -i -s 1 "${PG_ADMIN%/*}/$PGB" >/dev/null 2>&1
  tps=$(pgbench -S -c 32 -j 2 -T "$DURATION" "${PG_ADMIN%/*}/$PGB" 2>/dev/null | awk '/^tps/ {print $3}')
  printf 'limit: pgbench -S (indexed reads, 32 clients): %s tps\n' "$tps"
  psql "$PG_ADMIN" -qc "DROP DATABASE $PGB WITH (FORCE)" >/dev/null
fi
