#!/usr/bin/env bash
# A local development KDS for the two-process examples: plain HTTP on 127.0.0.1, one topic with a
# policy, one enrolled producer and one enrolled consumer.
#
#   examples/kds_dev.sh [DIR]        set up the KDS in DIR (default ./.sealedbus-dev) and start it;
#                                    run again after `stop` to restart it with the same keys
#   examples/kds_dev.sh stop [DIR]   stop it (the keys stay in DIR; delete DIR to start afresh)
#
# Settings, as environment variables (examples/README.md lists them too):
#   KDS_PORT (8765)             the KDS's port on 127.0.0.1
#   TOPIC (admissions)          the topic to create; DIR/env exports it as SEALEDBUS_TOPIC
#   PRODUCER (admissions-api)   the member that may produce to it
#   CONSUMER (records-svc)      the member that may consume from it
#   SEALEDBUS (.venv's, else PATH's)  the sealedbus command
#   PYTHON (the one beside SEALEDBUS) a Python that has sealedbus
# e.g. `TOPIC=discharges PRODUCER=ward-app examples/kds_dev.sh .discharges-dev`
#
# Development only: no TLS, and the admin key and its TOTP seed sit side by side in DIR (the
# admin commands take their code from it with --totp-file). Secrets go to 0600 files, never to
# the terminal.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
umask 077  # everything this creates (database, logs too) is for its owner only
action=setup
if [[ ${1:-} == stop ]]; then action=stop; shift; fi
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0; fi
dir=${1:-./.sealedbus-dev}
dir=${dir%/}
port=${KDS_PORT:-8765}
topic=${TOPIC:-admissions}
producer=${PRODUCER:-admissions-api}
consumer=${CONSUMER:-records-svc}
if [[ -z ${SEALEDBUS:-} ]]; then
    if [[ -x $repo/.venv/bin/sealedbus ]]; then SEALEDBUS=$repo/.venv/bin/sealedbus
    else SEALEDBUS=$(command -v sealedbus) || { echo "error: sealedbus not found; set SEALEDBUS" >&2; exit 1; }
    fi
fi
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=$(dirname "$SEALEDBUS")/python
    [[ -x $PYTHON ]] || PYTHON=python3
fi
pid_file=$dir/kds.pid
log_file=$dir/kds.log

die() { echo "error: $*" >&2; exit 1; }

# The pid in the pid file, if that process is still our `sealedbus kds serve`.
running_pid() {
    [[ -f $pid_file ]] || return 1
    local pid
    pid=$(<"$pid_file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    local args
    if [[ -r /proc/$pid/cmdline ]]; then args=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    else args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
    fi
    [[ $args == *"kds serve"* ]] || return 1
    echo "$pid"
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file"
        echo "no KDS running for $dir"
        return 0
    fi
    kill "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$pid_file"; echo "stopped the KDS (pid $pid)"; return 0; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pid_file"
    echo "killed the KDS (pid $pid): it did not stop within 10 s"
}

# Run a sealedbus command quietly; show its output only when it fails.
quietly() {
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        die "failed: ${*/#$SEALEDBUS/sealedbus}"
    fi
    echo "$out" >>"$dir/setup.log"
}

# Admin commands share one admin session, opened with one TOTP code that `--totp-file` computes
# from admin.totp (development only: this puts the second factor next to the admin key).
sealedbus_admin() {
    "$SEALEDBUS" admin --url "$url" --key "$dir/admin.key" --root-fingerprint "$fingerprint" "$@"
}
admin() {
    quietly sealedbus_admin --session "$dir/admin.session" "$@"
}

# Wait until /healthz answers from the replica we started (not something else on the port).
wait_healthy() {
    "$PYTHON" - "$url/healthz" "$1" "$2" <<'EOF'
import json, os, sys, time, urllib.request

url, replica, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the KDS exited")
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - http on loopback
            if json.load(answer).get("replica") == replica:
                sys.exit(0)
            sys.exit(f"another process answers on {url}; choose another KDS_PORT")
    except OSError:
        time.sleep(0.2)
sys.exit(f"{url} did not answer within 30 s")
EOF
}

if [[ $action == stop ]]; then stop; exit 0; fi

url=http://127.0.0.1:$port
mkdir -p "$dir"
chmod 700 "$dir"
echo '*' >"$dir/.gitignore"  # keys and database: never commit them

# 1. Keys: root key (its fingerprint is what clients pin), master keyring, first admin.
if [[ ! -f $dir/root.key ]]; then
    out=$("$SEALEDBUS" kds init --data-dir "$dir") || die "sealedbus kds init failed"
    [[ $out =~ (sha256:[0-9a-f]+) ]] || die "kds init printed no root fingerprint: $out"
    echo "${BASH_REMATCH[1]}" >"$dir/root.fingerprint"  # public: safe to print and share
    echo "initialized a KDS in $dir"
fi
fingerprint=$(<"$dir/root.fingerprint")

# 2. Serve, in the background, plain HTTP on loopback.
if pid=$(running_pid); then
    url=$(<"$dir/kds.url")
    echo "the KDS is already running (pid $pid) at $url"
else
    replica=dev-$RANDOM$RANDOM
    nohup "$SEALEDBUS" kds serve --data-dir "$dir" --insecure-http --host 127.0.0.1 \
        --port "$port" --replica "$replica" </dev/null >>"$log_file" 2>&1 &
    pid=$!
    echo "$pid" >"$pid_file"
    if ! wait_healthy "$replica" "$pid"; then
        tail -n 20 "$log_file" >&2
        stop >/dev/null
        die "the KDS did not start (log: $log_file)"
    fi
    echo "$url" >"$dir/kds.url"
    echo "started the KDS (pid $pid) at $url; log: $log_file"
fi

# 3. The topic and who may use it (deny by default).
rm -f "$dir/admin.session"  # left by an interrupted run: it may have expired
quietly sealedbus_admin --totp-file "$dir/admin.totp" session open --ttl 300 \
    --out "$dir/admin.session"
if ! sealedbus_admin --session "$dir/admin.session" topic show "$topic" >/dev/null 2>&1; then
    admin topic create "$topic" --producers "$producer" --consumers "$consumer"
    echo "created topic $topic: producers [$producer], consumers [$consumer]"
fi

# 4. One-time enrollment tokens; each member makes its own keys and enrolls with its token.
for member in "$producer" "$consumer"; do
    [[ -f $dir/$member.key ]] && continue
    rm -f "$dir/$member.token"
    admin token "$member" --ttl 300 --out "$dir/$member.token"
    quietly "$SEALEDBUS" enroll --url "$url" --root-fingerprint "$fingerprint" --name "$member" \
        --token-file "$dir/$member.token" --key-out "$dir/$member.key"
    rm -f "$dir/$member.token"  # used up: enrollment consumed it
    echo "enrolled $member: key file $dir/$member.key (0600)"
done

admin session close
rm -f "$dir/admin.session"

cat >"$dir/env" <<EOF
export SEALEDBUS_KDS_URL=$url
export SEALEDBUS_KDS_ROOT_FINGERPRINT=$fingerprint
export SEALEDBUS_TOPIC=$topic
EOF

py=$PYTHON
[[ $py == "$PWD"/* ]] && py=${py#"$PWD"/}
ex=$here
[[ $ex == "$PWD"/* ]] && ex=${ex#"$PWD"/}
cat <<EOF

Next, in each terminal (or: source $dir/env):
$(cat "$dir/env")

RabbitMQ (set SEALEDBUS_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672/%2F); consumer first:
  $py $ex/rabbitmq_consumer.py --key-file $dir/$consumer.key --count 5
  $py $ex/rabbitmq_producer.py --key-file $dir/$producer.key --count 5

Kafka (set SEALEDBUS_KAFKA_BOOTSTRAP, default 127.0.0.1:9092):
  $py $ex/kafka_consumer.py --key-file $dir/$consumer.key --count 5
  $py $ex/kafka_producer.py --key-file $dir/$producer.key --count 5

Stop the KDS: $ex/kds_dev.sh stop $dir
EOF
