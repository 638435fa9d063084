#!/bin/sh
# Create churn-stream's topics (README "Running against a real Kafka cluster") unless they
# exist. Runs in the apache/kafka image: docker-compose.yml's one-shot `kafka-init` service.
set -eu

BOOTSTRAP="${BOOTSTRAP:-kafka:19092}"
PARTITIONS="${CHURN_PARTITIONS:-6}"
APP_ID="${CHURN_APP_ID:-churn-stream}"
REPLICATION="${REPLICATION:-1}"
TOPICS=/opt/kafka/bin/kafka-topics.sh
DAY_MS=86400000

create() {
    name="$1"
    partitions="$2"
    shift 2
    "$TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$name" \
        --partitions "$partitions" --replication-factor "$REPLICATION" "$@"
    echo "topic $name: $partitions partitions $*"
}

create "${CHURN_INPUT_TOPIC:-customer-events}" "$PARTITIONS" \
    --config "retention.ms=$((30 * DAY_MS))"
create "${CHURN_DLQ_TOPIC:-customer-events-dlq}" "$PARTITIONS" \
    --config "retention.ms=$((90 * DAY_MS))"
create "${CHURN_OUTPUT_TOPIC:-churn-metrics}" "$PARTITIONS" --config cleanup.policy=compact
create "${CHURN_ALERT_TOPIC:-churn-alerts}" 1 --config "retention.ms=$((90 * DAY_MS))"
create "$APP_ID-customer-batches" "$PARTITIONS" --config "retention.ms=$((3 * DAY_MS))"
create "$APP_ID-segment-deltas" "$PARTITIONS" --config "retention.ms=$((3 * DAY_MS))"
# faust creates the <app_id>-*-changelog topics (compacted) itself.

"$TOPICS" --bootstrap-server "$BOOTSTRAP" --list
