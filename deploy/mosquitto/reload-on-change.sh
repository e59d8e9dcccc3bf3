#!/bin/sh
# Runs Mosquitto and makes it reload its password files and ACLs (SIGHUP) whenever they change.
#
#   reload-on-change.sh AUTH_DIR COMMAND [ARG...]
#
# Mosquitto 2.0 reads password_file and acl_file only at start and on SIGHUP, and the platform
# rewrites them (`replenish mosquitto-files --every 5`) in another container, which cannot signal
# this one. So this script, the container's entrypoint, waits until the files exist, starts
# COMMAND (Mosquitto, through the image's own /docker-entrypoint.sh), checks the files every
# RELOAD_CHECK_SECONDS (default 2) and sends SIGHUP when their content changed. It forwards SIGTERM
# and SIGINT to Mosquitto and exits with Mosquitto's status. POSIX sh: runs on the image's
# BusyBox and on Debian's dash (tests/test_mosquitto_auth.py).
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 AUTH_DIR COMMAND [ARG...]" >&2
    exit 2
fi
auth_dir=$1
shift
interval=${RELOAD_CHECK_SECONDS:-2}
files="$auth_dir/devices.passwd $auth_dir/devices.acl $auth_dir/platform.passwd"

fingerprint() {
    # shellcheck disable=SC2086 # word splitting of $files is intended
    cat $files 2>/dev/null | cksum
}

# Until Mosquitto has installed its signal handlers (after the image's entrypoint has exec'd it and it
# has loaded its persistence file and opened its listeners), SIGHUP would end it. SigCgt in
# /proc/PID/status is the mask of caught signals, in hex; SIGHUP is bit 0, so the last digit is odd.
handles_sighup() {
    [ -d /proc/self ] || return 0      # no procfs: cannot tell, assume it does
    [ -r "/proc/$1/status" ] || return 1 # it has exited
    caught=$(awk '/^SigCgt:/ { print $2 }' "/proc/$1/status")
    case $caught in
        *[13579bdfBDF]) return 0 ;;
        *) return 1 ;;
    esac
}

child=
stop() {
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
    else
        exit 143
    fi
}
trap stop TERM INT

for file in $files; do
    while [ ! -f "$file" ]; do
        echo "reload-on-change: waiting for $file (written by replenish mosquitto-files)"
        sleep 1
    done
done

last=$(fingerprint)
"$@" &
child=$!

while kill -0 "$child" 2>/dev/null; do
    # Sleep in the background and wait for it, so that a SIGTERM is handled at once, not after the sleep.
    sleep "$interval" &
    wait $! || true
    now=$(fingerprint)
    # A change while Mosquitto is still starting waits for a later pass (it may have read the old files).
    if [ "$now" != "$last" ] && handles_sighup "$child"; then
        echo "reload-on-change: $auth_dir changed, reloading"
        kill -HUP "$child" 2>/dev/null || true
        last=$now
    fi
done

status=0
wait "$child" || status=$?
exit "$status"
