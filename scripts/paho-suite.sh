#!/usr/bin/env bash
# The Eclipse Paho MQTT interoperability suite against a fresh shardmq (release build).
#
#   scripts/paho-suite.sh SUITE_DIR [--shards N]
#
# SUITE_DIR is a local checkout of eclipse/paho.mqtt.testing (its `interoperability/`
# folder is used; nothing of it is copied into this repository). The broker runs with
# the configuration the suite expects: subscribing to `test/nosubscribe` is denied and
# keep-alive is capped at 60 s (3.1.1 clamped, since the suite connects with keep-alive
# 0). Runs client_test.py (3.1.1) and client_test5.py (5.0) and exits non-zero unless
# every test passes, except:
#   test_flow_control2     skipped: it hangs against every broker, the suite's own included;
#   test_subscribe_failure reported, not required: the suite's MQTT 5 client accepts only
#                          0, 1, 2 and 0x80 in SUBACK (its MQTTV5.py), while a refused
#                          subscription is answered 0x87 Not authorized, one of the codes
#                          MQTT 5 §3.9.3 lists;
#   test_request_response  reported, not required: it publishes right after the second
#                          client's SUBSCRIBE without waiting for that SUBACK (it waits on
#                          the first client's twice), so with the clients on different
#                          shards the publish may be routed before the subscription is.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
help_if_asked "$@"

[[ $# -ge 1 ]] || die "usage: scripts/paho-suite.sh SUITE_DIR [--shards N]"
suite=$(cd "$1" && pwd)/interoperability
shift
shards=
while [[ $# -gt 0 ]]; do
    case $1 in
        --shards) shards=$2; shift ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
[[ -f $suite/client_test5.py ]] || die "$suite/client_test5.py not found: is $1 a paho.mqtt.testing checkout?"

cargo build --release --bin shardmq 2>&1 | tail -1
work=$(mktemp -d)
trap 'stop_broker; rm -rf "$work"' EXIT
cat >"$work/paho.toml" <<'EOF'
max_keepalive_secs = 60
max_keepalive_v3 = "clamp"
acl_default = "allow"

[[acl]]
topic = "test/nosubscribe"
access = "deny"
EOF
export SHARDMQ_CONFIG=$work/paho.toml
start_shardmq "$shards"
echo "== shardmq on 127.0.0.1:$BROKER_PORT (${shards:-default} shards), suite $suite"

# client_test.py hands its own options to unittest as well: a copy that does not.
sed 's/    unittest.main()/    unittest.main(argv=[sys.argv[0]])/' "$suite/client_test.py" \
    >"$suite/.client_test_shardmq.py"
trap 'stop_broker; rm -rf "$work" "$suite/.client_test_shardmq.py"' EXIT

failed=0
echo "== MQTT 3.1.1 (client_test.py)"
if ! (cd "$suite" && timeout 600 python3 .client_test_shardmq.py -p "$BROKER_PORT") \
    >"$work/v311.log" 2>&1; then
    failed=1
fi
grep -E '^(FAIL|ERROR):|^Ran |^OK|^FAILED' "$work/v311.log" || true

echo "== MQTT 5.0 (client_test5.py)"
required=()
for t in $(grep -o 'def test_[a-z0-9_]*' "$suite/client_test5.py" | sed 's/def //'); do
    case $t in
        test_flow_control2|test_subscribe_failure|test_request_response) ;;
        *) required+=("Test.$t") ;;
    esac
done
if ! (cd "$suite" && timeout 900 python3 client_test5.py -p "$BROKER_PORT" "${required[@]}") \
    >"$work/v5.log" 2>&1; then
    failed=1
fi
grep -E '^(FAIL|ERROR):|^Ran |^OK|^FAILED' "$work/v5.log" || true

echo "== 5.0, reported only (see the header)"
for t in test_subscribe_failure test_request_response; do
    if (cd "$suite" && timeout 120 python3 client_test5.py -p "$BROKER_PORT" "Test.$t") \
        >"$work/$t.log" 2>&1; then
        echo "$t: passed"
    else
        echo "$t: failed (not required)"
    fi
done

if [[ $failed -ne 0 ]]; then
    echo "paho-suite: FAILED (logs kept in target/paho-suite-logs)" >&2
    mkdir -p target/paho-suite-logs && cp "$work"/*.log target/paho-suite-logs/
    exit 1
fi
echo "paho-suite: every required test passed (3.1.1: all; 5.0: all but the three above)"
