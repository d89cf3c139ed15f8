#!/bin/bash
# Point-in-time restore, run by roles/pgbackrest in a one-off container of the
# server's image, with the data volume at $PGDATA, the repository and
# /etc/pgbackrest mounted, and the server's container stopped.
#
# Environment: TARGET ('latest' or a UTC time pgBackRest takes), TIMEOUT (seconds
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

if [ "$TARGET" = latest ]; then
	pgbackrest --delta --type=default --log-level-console=info restore
else
	pgbackrest --delta --type=time "--target=$TARGET" --target-action=promote --log-level-console=info restore
fi

log=/tmp/recovery.log
# hot_standby=off: no connection until the recovery ends, so `pg_ctl -w`
# returns once the server is promoted, or fails if the target is never reached.
if ! pg_ctl -D "$PGDATA" -l "$log" -w -t "$TIMEOUT" start -o "-c listen_addresses='' -c hot_standby=off \
	-c archive_mode=on -c archive_command='pgbackrest archive-push %p'"; then
	echo "the recovery did not finish; the server's log:" >&2
	tail -n 30 "$log" >&2
	exit 1
fi
grep -E 'recovery stopping|redo done|selected new timeline|archive recovery complete' "$log" || true
history=$(ls "$PGDATA"/pg_wal/*.history 2>/dev/null | sort | tail -n 1)
echo "RECOVERY_END=$(tail -n 1 "$history" | tr '\t' ' ')"
pg_ctl -D "$PGDATA" -m fast -w stop
