#!/usr/bin/env bash
# bench/run.sh [--quick]: measure relay46 against HAProxy, nginx stream,
# sniproxy (passthrough) and nginx, Caddy (termination) on loopback, in one
# interleaved run, and write bench/results/latest.md and latest.json.
#
# It installs what is missing (Debian packages, Caddy from the Go module
# proxy), builds relay46 with `make build`, makes one ECDSA P-256
# certificate, writes every peer's config under bench/.work/run, and hands
# over to bench/cmd/relaybench, which starts the processes, drives the load
# and prints the table. Everything it starts is stopped on exit.
#
#   --quick   2 repetitions with short windows (about 3 minutes)
#   default   5 repetitions (about 11 minutes)
#
# Environment: RELAY46=/path/to/binary skips `make build`;
# RELAYBENCH_ARGS="-reps 1 -dur 1s" appends relaybench flags.
set -euo pipefail

usage() { sed -n '2,/^set -e/{/^set -e/d;p;}' "$0" | sed 's/^# \{0,1\}//'; }

QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $a" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
WORK=$BENCH/.work
RUN=$WORK/run
BIN=$WORK/bin
WWW=$WORK/www
OUT=$BENCH/results

# The Caddy release measured; `go list -m -versions github.com/caddyserver/caddy/v2`
# shows what the module proxy serves.
CADDY_VERSION=v2.11.9
SNI=bench.example
BULK_BYTES=100000000 # 100 MB

# Loopback ports: the origin on [::1], the peers on 127.0.0.1.
ORIGIN_TLS=18443
ORIGIN_HTTP=18080
P_RELAY_PT=19101 P_HAPROXY=19102 P_NGX_STREAM=19103 P_SNIPROXY=19104
P_RELAY_TERM=19201 P_NGX_TERM=19202 P_CADDY=19203
ADMIN_PT=19146 ADMIN_TERM=19147

export DEBIAN_FRONTEND=noninteractive
log() { printf '== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- cleanup
BENCH_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  # Backstop: every process group relaybench started, by its id.
  if [ -f "$RUN/pgids" ]; then
    while read -r pg; do
      [ -n "$pg" ] && kill -TERM -- "-$pg" 2>/dev/null || true
    done <"$RUN/pgids"
    sleep 0.5
    while read -r pg; do
      [ -n "$pg" ] && kill -KILL -- "-$pg" 2>/dev/null || true
    done <"$RUN/pgids"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- install
NOTES=()
SNIPROXY_OK=1
install_packages() {
  local need=()
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
  [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v make >/dev/null 2>&1 || need+=(make)
  local want_sniproxy=0
  [ -x /usr/sbin/sniproxy ] || want_sniproxy=1
  if [ ${#need[@]} -eq 0 ] && [ $want_sniproxy -eq 0 ]; then return; fi
  log "installing: ${need[*]} $([ $want_sniproxy -eq 1 ] && echo sniproxy)"
  apt-get update -qq
  if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if [ $want_sniproxy -eq 1 ]; then
    local cand
    cand=$(apt-cache policy sniproxy 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
      SNIPROXY_OK=0
      NOTES+=("sniproxy: this Debian release has no sniproxy package (apt-cache policy sniproxy: no candidate), so its column is left out.")
    elif ! apt-get install -y -qq --no-install-recommends sniproxy >/dev/null; then
      SNIPROXY_OK=0
      NOTES+=("sniproxy: apt-get install sniproxy failed, so its column is left out.")
    fi
  fi
}

install_caddy() {
  CADDY=$BIN/caddy-$CADDY_VERSION
  [ -x "$CADDY" ] && return
  log "go install github.com/caddyserver/caddy/v2/cmd/caddy@$CADDY_VERSION (a few minutes, once)"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && GOBIN="$tmp" go install "github.com/caddyserver/caddy/v2/cmd/caddy@$CADDY_VERSION")
  mv "$tmp/caddy" "$CADDY"
  rm -rf "$tmp"
}

mkdir -p "$BIN" "$WWW" "$OUT"
install_packages
install_caddy
# RELAY46=/path/to/relay46 measures that binary instead of building one.
if [ -n "${RELAY46:-}" ]; then
  RELAY=$RELAY46
else
  log "make build"
  if ! make -s build; then
    echo "bench/run.sh: make build failed; fix the build (or set RELAY46=/path/to/relay46)" >&2
    exit 1
  fi
  RELAY=$ROOT/relay46
fi
log "building bench/cmd/relaybench"
go build -o "$BIN/relaybench" ./bench/cmd/relaybench

# ---------------------------------------------------------------- limits
# 10,000 idle connections through a passthrough peer need 20,000+ open
# files. Raise the limit as far as allowed; an unprivileged container may
# cap the hard limit, and then the idle test uses what fits.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
IDLE=$(( (FDS - 200) / 2 / 100 * 100 ))
[ "$IDLE" -gt 10000 ] && IDLE=10000
[ "$IDLE" -lt 100 ] && IDLE=100
if [ "$IDLE" -lt 10000 ]; then
  NOTES+=("The open-file limit here is $FDS and cannot be raised (no CAP_SYS_RESOURCE), so the idle test can hold at most $IDLE connections, not 10,000: a passthrough peer needs at least two descriptors for each.")
fi
# HAProxy refuses to start when maxconn needs more descriptors than the
# limit (two per connection plus a few).
MAXCONN=$(( (FDS - 120) / 2 ))
[ "$MAXCONN" -gt 20000 ] && MAXCONN=20000

# ---------------------------------------------------------------- files
# A port already taken (a previous run killed hard, another service) would
# make a peer fail to start; say which instead.
busy=()
for p in $P_RELAY_PT $P_HAPROXY $P_NGX_STREAM $P_SNIPROXY $P_RELAY_TERM $P_NGX_TERM $P_CADDY $ADMIN_PT $ADMIN_TERM; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then busy+=("127.0.0.1:$p"); fi
done
for p in $ORIGIN_TLS $ORIGIN_HTTP; do
  if (exec 3<>"/dev/tcp/::1/$p") 2>/dev/null; then busy+=("[::1]:$p"); fi
done
if [ ${#busy[@]} -gt 0 ]; then
  echo "bench/run.sh: ports in use: ${busy[*]} (see: ss -ltnp); stop what holds them and rerun" >&2
  exit 1
fi
rm -rf "$RUN"
mkdir -p "$RUN"
: >"$RUN/pgids"
log "certificate: ECDSA P-256 for $SNI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" -days 30 -subj "/CN=$SNI" \
  -addext "subjectAltName=DNS:$SNI" 2>/dev/null
head -c 128 /dev/zero | tr '\0' 'x' >"$WWW/small"
if [ "$(stat -c %s "$WWW/big.bin" 2>/dev/null || echo 0)" != "$BULK_BYTES" ]; then
  log "writing the $BULK_BYTES-byte bulk file"
  head -c "$BULK_BYTES" /dev/urandom >"$WWW/big.bin"
fi

STREAM_MOD=/usr/lib/nginx/modules/ngx_stream_module.so

# nginx_conf NAME BODY: a config for one nginx instance with its own
# prefix, pid file and temp paths; one worker unless said otherwise.
nginx_conf() {
  local name=$1 workers=$2 body=$3 dir=$RUN/$1
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes $workers;
worker_rlimit_nofile $FDS;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
$body
EOF
}

# The origin: HTTPS and HTTP on [::1], the small body and the bulk file.
# nginx 1.22 leaves TLS 1.3 out of its default ssl_protocols, so both
# nginx servers name it. Two workers (it is not under test and must not be the bottleneck of a
# one-worker peer); keep-alive limits raised so no test reconnects.
nginx_conf origin 2 "
events { worker_connections $FDS; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $RUN/origin/tmp;
  proxy_temp_path $RUN/origin/tmp;
  default_type application/octet-stream;
  server {
    listen [::1]:$ORIGIN_TLS ssl;
    listen [::1]:$ORIGIN_HTTP;
    server_name $SNI;
    ssl_certificate $RUN/cert.pem;
    ssl_certificate_key $RUN/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $WWW;
  }
}"

# nginx stream with ssl_preread: SNI routing, one worker.
nginx_conf nginx-stream 1 "
load_module $STREAM_MOD;
events { worker_connections $FDS; }
stream {
  map \$ssl_preread_server_name \$backend {
    $SNI origin;
    default reject;
  }
  upstream origin { server [::1]:$ORIGIN_TLS; }
  upstream reject { server 127.0.0.1:1; }
  server {
    listen 127.0.0.1:$P_NGX_STREAM;
    ssl_preread on;
    proxy_pass \$backend;
  }
}"

# nginx as a TLS-terminating reverse proxy, one worker, keep-alive to the
# origin, the forwarding headers Caddy and relay46 also send, and no
# spooling of large responses to disk.
nginx_conf nginx-term 1 "
events { worker_connections $FDS; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path $RUN/nginx-term/tmp;
  proxy_temp_path $RUN/nginx-term/tmp;
  upstream origin {
    server [::1]:$ORIGIN_HTTP;
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$P_NGX_TERM ssl;
    server_name $SNI;
    ssl_certificate $RUN/cert.pem;
    ssl_certificate_key $RUN/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto https;
      proxy_max_temp_file_size 0;
    }
  }
}"

# HAProxy, mode tcp, SNI routing, one thread.
cat >"$RUN/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $MAXCONN
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  maxconn $MAXCONN
frontend tls
  bind 127.0.0.1:$P_HAPROXY
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend origin if { req.ssl_sni -i $SNI }
backend origin
  server origin [::1]:$ORIGIN_TLS
EOF

# sniproxy: one process (it has no worker setting).
cat >"$RUN/sniproxy.conf" <<EOF
user root
pidfile $RUN/sniproxy.pid
error_log {
  filename $RUN/sniproxy-error.log
  priority notice
}
listener 127.0.0.1:$P_SNIPROXY {
  protocol tls
  table bench
}
table bench {
  ^bench\.example\$ [::1]:$ORIGIN_TLS
}
EOF

# Caddy: reverse_proxy with the certificate from files, HTTP/1.1 and 2
# (no HTTP/3 listener), keep-alive to the origin, no admin endpoint.
mkdir -p "$RUN/caddy-home"
cat >"$RUN/Caddyfile" <<EOF
{
  admin off
  auto_https off
  persist_config off
  storage file_system $RUN/caddy-home/data
  servers {
    protocols h1 h2
  }
}
https://$SNI:$P_CADDY {
  bind 127.0.0.1
  tls $RUN/cert.pem $RUN/key.pem
  reverse_proxy http://[::1]:$ORIGIN_HTTP {
    transport http {
      keepalive 300s
      keepalive_idle_conns 64
      keepalive_idle_conns_per_host 64
    }
  }
}
EOF

# relay46: the same route in both modes; warn-level logs and no access
# log, as no peer here writes one. All the load comes from one address
# (127.0.0.1), so relay46's per-source flood limits are turned off: no peer
# here has any, and they would cap every test at one client's share. Builds
# older than those keys get the same config without them.
relay_conf() { # relay_conf FILE PORT ADMIN WITH-LIMITS(yes|no) ROUTE-LINES
  local extras=""
  if [ "$4" = yes ]; then
    extras="limits:
  max_conns_per_source: 0
  source_rate: 0"
  fi
  cat >"$1" <<EOF
listen:
  https: "127.0.0.1:$2"
  http: ""
admin: "127.0.0.1:$3"
shutdown_grace: 2s
log:
  level: warn
$extras
routes:
  - name: bench
    hosts: [$SNI]
$5
EOF
  if [ "$4" = yes ]; then echo "    access_log: false" >>"$1"; fi
}
PT_ROUTE="    upstream: \"[::1]:$ORIGIN_TLS\""
TERM_ROUTE="    mode: terminate
    upstream: \"http://[::1]:$ORIGIN_HTTP\"
    cert_file: $RUN/cert.pem
    key_file: $RUN/key.pem"
relay_conf "$RUN/relay46-pt.yaml" "$P_RELAY_PT" "$ADMIN_PT" yes "$PT_ROUTE"
if ! "$RELAY" check -config "$RUN/relay46-pt.yaml" >/dev/null 2>&1; then
  relay_conf "$RUN/relay46-pt.yaml" "$P_RELAY_PT" "$ADMIN_PT" no "$PT_ROUTE"
  relay_conf "$RUN/relay46-term.yaml" "$P_RELAY_TERM" "$ADMIN_TERM" no "$TERM_ROUTE"
  NOTES+=("This relay46 build does not know the limits and access_log keys; it ran with its defaults for both.")
else
  relay_conf "$RUN/relay46-term.yaml" "$P_RELAY_TERM" "$ADMIN_TERM" yes "$TERM_ROUTE"
fi

if ! out=$("$RELAY" check -config "$RUN/relay46-pt.yaml" 2>&1); then
  echo "$out" >&2
  echo "bench/run.sh: relay46 rejects the passthrough config" >&2
  exit 1
fi
# Termination may not have landed in this build. `relay46 check` rejecting
# the route, or (in relaybench) the relay refusing the handshake, leaves
# the column out with a note instead of failing the run.
TERM_UNAVAILABLE=""
if ! out=$("$RELAY" check -config "$RUN/relay46-term.yaml" 2>&1); then
  TERM_UNAVAILABLE="not available in this build: relay46 check rejects mode: terminate with cert_file/key_file ($(echo "$out" | head -1))."
fi

# ---------------------------------------------------------------- spec
js() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
jarr() { local first=1; printf '['; for x in "$@"; do [ $first -eq 1 ] || printf ','; first=0; js "$x"; done; printf ']'; }
# peer NAME LABEL GROUP ADDR VERSION UNAVAILABLE OPTIONAL ENV-ARRAY CMD...
peer() {
  local name=$1 label=$2 group=$3 addr=$4 version=$5 unavail=$6 optional=$7 env=$8
  shift 8
  printf '{"name":%s,"label":%s,"group":%s,"addr":%s,"version":%s,"log":%s,"unavailable":%s,"optional":%s,"env":%s,"cmd":%s}' \
    "$(js "$name")" "$(js "$label")" "$(js "$group")" "$(js "$addr")" "$(js "$version")" \
    "$(js "$RUN/$name.log")" "$(js "$unavail")" "$optional" "$env" "$(jarr "$@")"
}

NGINX_V=$(nginx -v 2>&1 | sed 's/.*nginx\///')
HAPROXY_V=$(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}')
SNIPROXY_V=$( [ $SNIPROXY_OK -eq 1 ] && sniproxy -V 2>/dev/null | awk '{print $2}' || echo "")
RELAY_V=$("$RELAY" version 2>/dev/null | head -1)
GO1=$(jarr GOMAXPROCS=1)
CADDY_ENV=$(jarr GOMAXPROCS=1 "HOME=$RUN/caddy-home" "XDG_DATA_HOME=$RUN/caddy-home/data" "XDG_CONFIG_HOME=$RUN/caddy-home/config")
SNIPROXY_UNAVAIL=""
[ $SNIPROXY_OK -eq 1 ] || SNIPROXY_UNAVAIL="not installed (see the note above)."
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)

NOTES_JSON=$(jarr ${NOTES[@]+"${NOTES[@]}"})
{
  printf '{"server_name":%s,"ca_file":%s,"small_path":"/small","bulk_path":"/big.bin","bulk_bytes":%s,"pgid_file":%s,\n' \
    "$(js "$SNI")" "$(js "$RUN/cert.pem")" "$BULK_BYTES" "$(js "$RUN/pgids")"
  printf '"origin":%s,\n"peers":[\n' \
    "$(peer origin "origin" origin "[::1]:$ORIGIN_TLS" "nginx $NGINX_V" "" false '[]' nginx -p "$RUN/origin" -e "$RUN/origin/error.log" -c "$RUN/origin/nginx.conf")"
  peer relay46-pt "relay46" passthrough "127.0.0.1:$P_RELAY_PT" "$RELAY_V" "" false "$GO1" "$RELAY" run -config "$RUN/relay46-pt.yaml"; printf ',\n'
  peer haproxy "HAProxy" passthrough "127.0.0.1:$P_HAPROXY" "haproxy $HAPROXY_V" "" false '[]' haproxy -db -f "$RUN/haproxy.cfg"; printf ',\n'
  peer nginx-stream "nginx stream" passthrough "127.0.0.1:$P_NGX_STREAM" "nginx $NGINX_V" "" false '[]' nginx -p "$RUN/nginx-stream" -e "$RUN/nginx-stream/error.log" -c "$RUN/nginx-stream/nginx.conf"; printf ',\n'
  peer sniproxy "sniproxy" passthrough "127.0.0.1:$P_SNIPROXY" "sniproxy $SNIPROXY_V" "$SNIPROXY_UNAVAIL" false '[]' sniproxy -f -n "$FDS" -c "$RUN/sniproxy.conf"; printf ',\n'
  peer relay46-term "relay46" terminate "127.0.0.1:$P_RELAY_TERM" "$RELAY_V" "$TERM_UNAVAILABLE" true "$GO1" "$RELAY" run -config "$RUN/relay46-term.yaml"; printf ',\n'
  peer nginx-term "nginx" terminate "127.0.0.1:$P_NGX_TERM" "nginx $NGINX_V" "" false '[]' nginx -p "$RUN/nginx-term" -e "$RUN/nginx-term/error.log" -c "$RUN/nginx-term/nginx.conf"; printf ',\n'
  peer caddy "Caddy" terminate "127.0.0.1:$P_CADDY" "caddy $CADDY_VERSION" "" false "$CADDY_ENV" "$CADDY" run --adapter caddyfile --config "$RUN/Caddyfile"; printf '\n'
  printf '],\n"notes":%s,\n' "$NOTES_JSON"
  printf '"machine":{"nproc":%s,"cpu":%s,"kernel":%s,"go":%s,"relay46":%s,"nginx":%s,"haproxy":%s,"sniproxy":%s,"caddy":%s,"fd_limit":%s}}\n' \
    "$(js "$(nproc)")" "$(js "$CPU_MODEL")" "$(js "$(uname -r)")" "$(js "$(go env GOVERSION)")" "$(js "$RELAY_V")" \
    "$(js "$NGINX_V")" "$(js "$HAPROXY_V")" "$(js "$SNIPROXY_V")" "$(js "$CADDY_VERSION")" "$(js "$FDS")"
} >"$RUN/spec.json"

# ---------------------------------------------------------------- run
if [ $QUICK -eq 1 ]; then
  ARGS=(-reps 2 -warm 500ms -dur 2s -bulk-runs 2 -lat-reqs 500)
else
  ARGS=(-reps 5 -warm 1s -dur 5s -bulk-runs 3 -lat-reqs 2000)
fi
log "relaybench ${ARGS[*]} -idle-conns $IDLE (progress below, table at the end)"
# RELAYBENCH_ARGS appends flags, for trying the harness out (-reps 1 -dur 1s).
# shellcheck disable=SC2086
"$BIN/relaybench" -spec "$RUN/spec.json" -out "$OUT" -idle-conns "$IDLE" "${ARGS[@]}" ${RELAYBENCH_ARGS:-} &
BENCH_PID=$!
rc=0
wait "$BENCH_PID" || rc=$?
BENCH_PID=""
[ $rc -eq 0 ] && log "wrote $OUT/latest.md and $OUT/latest.json"
exit $rc
