#!/bin/sh
# STAND-IN for `systemctl stop kafka.service`, for the testbed only: its hosts have no systemd.
# The testbed's boot (testbed/src/cloudinit.rs) writes a long-running unit's main pid to
# <host>/run/<unit>.pid, as systemd tracks a unit's MainPID. Like `systemctl stop`, this sends
# the process SIGTERM (systemd's default KillSignal), waits until it has exited, sends SIGKILL
# once the stop timeout has passed (TimeoutStopSec, 90 s by default) and returns once the
# process is gone. A unit that does not run is stopped already (exit 0).
#
# Usage: kafka-stop.sh <pidfile> [timeout seconds]
set -eu
pidfile=$1
timeout=${2:-90}
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile" 2>/dev/null || true)
case $pid in
'') exit 0 ;; # removed as it exited
*[!0-9]*)
	echo "kafka-stop: $pidfile holds no pid: $pid" >&2
	exit 1
	;;
esac
kill -TERM "$pid" 2>/dev/null || exit 0
tenths=0
while kill -0 "$pid" 2>/dev/null; do
	if [ "$tenths" -eq $((timeout * 10)) ]; then
		echo "kafka-stop: $pid still runs after ${timeout}s: SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	if [ "$tenths" -ge $(((timeout + 10) * 10)) ]; then
		echo "kafka-stop: $pid did not exit" >&2
		exit 1
	fi
	sleep 0.1
	tenths=$((tenths + 1))
done
