#!/bin/bash
# STAND-IN for Kafka's bin/kafka-storage.sh (no Kafka build can be installed on the testbed).
# Does what `kafka-storage.sh format --config F --cluster-id C [--ignore-formatted]` does to a
# log directory, as far as the agent can see: refuses a directory that already holds
# meta.properties (unless --ignore-formatted), else writes meta.properties (version=1, node.id,
# cluster.id, directory.id) and bootstrap.checkpoint into each of log.dirs.
# Each call is appended to kafka-storage.calls next to the --config file, for tests to count.
set -euo pipefail
[ "${1:-}" = format ] || { echo "stand-in kafka-storage: only 'format' is modelled" >&2; exit 1; }
shift
config= cluster= ignore=false
while [ $# -gt 0 ]; do
    case "$1" in
        --config|-c) config=$2; shift 2 ;;
        --cluster-id|-t) cluster=$2; shift 2 ;;
        --ignore-formatted|-g) ignore=true; shift ;;
        --no-initial-controllers|-N|--standalone|-s) shift ;;
        --initial-controllers|-I) shift 2 ;;
        *) echo "stand-in kafka-storage: unknown argument $1" >&2; exit 1 ;;
    esac
done
[ -n "$config" ] || { echo "--config is required" >&2; exit 1; }
[ -n "$cluster" ] || { echo "--cluster-id is required" >&2; exit 1; }
echo "format --config $config --cluster-id $cluster ignore=$ignore" >> "$(dirname "$config")/kafka-storage.calls"
prop() { sed -n "s/^$1=//p" "$config" | tail -1; }
node=$(prop node.id)
dirs=$(prop log.dirs)
[ -n "$node" ] || { echo "node.id is not set in $config" >&2; exit 1; }
[ -n "$dirs" ] || { echo "log.dirs is not set in $config" >&2; exit 1; }
IFS=, read -ra list <<< "$dirs"
for dir in "${list[@]}"; do
    if [ -e "$dir/meta.properties" ] && ! $ignore; then
        echo "Log directory $dir is already formatted. Use --ignore-formatted to ignore this directory and format the others." >&2
        exit 1
    fi
done
for dir in "${list[@]}"; do
    mkdir -p "$dir"
    [ -e "$dir/meta.properties" ] && continue
    printf '#\n#%s\ncluster.id=%s\ndirectory.id=%s\nnode.id=%s\nversion=1\n' \
        "$(date)" "$cluster" "$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')" "$node" \
        > "$dir/meta.properties.tmp"
    printf 'stand-in bootstrap checkpoint\n' > "$dir/bootstrap.checkpoint"
    mv "$dir/meta.properties.tmp" "$dir/meta.properties"
    echo "Formatting $dir with metadata.version 3.9-IV0."
done
