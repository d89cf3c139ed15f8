#!/bin/bash
# Point-in-time restore, run by roles/pgbackrest in a one-off container of the
# server's image, with the data volume at $PGDATA, the repository and
# /etc/pgbackrest mounted, and the server's container stopped.
#
# Environment: PGUSER (superuser), TARGET ('latest' or a UTC time pgBackRest takes), TIMEOUT (seconds
# the recovery may take), PGDATA, PGBACKREST_CONFIG, PGBACKREST_STANZA.
#
# Restores the files with `pgbackrest restore --delta` (only what differs is
# copied, so a rerun after a crash continues), then runs the recovery to the
# target on the socket only, with archiving on so the new timeline is archived,
# waits for the promotion and stops the server cleanly. Prints the recovery's
# end as RECOVERY_END=<timeline history line>. Rerunnable at any point.
set -Eeuo pipefail
: "${TARGET:?}" "${TIMEOUT:?}" "${PGDATA:?}"

if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 0700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

# The role has checked that no running container uses the data volume: a
# postmaster.pid left there is from a restore killed midway (a server in this
# fresh container cannot be running yet).
rm -f "$PGDATA/postmaster.pid"

if [ "$TARGET" = latest ]; then
	pgbackrest --delta --type=default --log-level-console=info restore
else
	pgbackrest --delta --type=time "--target=$TARGET" --target-action=promote --log-level-console=info restore
fi

log=/tmp/recovery.log
fail() {
	echo "$1; the server's log:" >&2
	tail -n 30 "$log" >&2
	exit 1
}
# hot_standby=off: no connection is accepted until the recovery has ended and
# the server is promoted; if the target is never reached, the server stops.
# `pg_ctl -w` returns once the recovery is consistent, not when it has ended.
pg_ctl -D "$PGDATA" -l "$log" -w -t "$TIMEOUT" start -o "-c listen_addresses='' -c hot_standby=off \
	-c archive_mode=on -c archive_command='pgbackrest archive-push %p'" \
	|| fail "the server did not start on the restored files"
deadline=$((SECONDS + TIMEOUT))
until [ "$(psql -X -q -t -A -h /var/run/postgresql -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
	pg_ctl -D "$PGDATA" status > /dev/null || fail "the recovery stopped before the server was promoted"
	[ "$SECONDS" -lt "$deadline" ] || fail "the recovery did not finish within $TIMEOUT s"
	sleep 0.5
done
grep -E 'recovery stopping|redo done|selected new timeline|archive recovery complete' "$log" || true
history=$(find "$PGDATA/pg_wal" -maxdepth 1 -name "*.history" | sort | tail -n 1)
# PostgreSQL ends a history file with an empty line: the last line with text is the new timeline's.
echo "RECOVERY_END=$(grep -v '^[[:space:]]*$' "$history" | tail -n 1 | tr '\t' ' ')"
pg_ctl -D "$PGDATA" -m fast -w stop
# pgBackRest writes what it restores and fetches (WAL, history files) with mode
# 0640: the data directory stays the postgres user's alone, as initdb made it.
chmod -R go-rwx "$PGDATA"
