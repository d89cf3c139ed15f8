#!/bin/bash
# Entrypoint of the PostgreSQL 15 image built from Debian's packages.
#
# It keeps the official postgres image's contract, so the same roles run
# against either image:
#   POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE  superuser password (required)
#   POSTGRES_USER[_FILE]                        superuser name (default postgres)
#   POSTGRES_DB[_FILE]                          database created at init (default: the user)
#   POSTGRES_INITDB_ARGS[_FILE]                 extra initdb arguments
#   PGDATA                                      data directory
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz|*.sql.xz|*.sql.zst
#                                               run once, on an empty data directory
#   `postgres -c key=value ...` as the command  server options
# Beyond that contract: `patroni <config>` and `etcd ...` as the command run
# those services as the postgres and etcd users (roles/postgres_cluster).
# Stricter than the official image: every TCP connection uses scram-sha-256;
# POSTGRES_HOST_AUTH_METHOD may only name that method (no trust, no md5).
set -Eeuo pipefail

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Reads VAR or VAR_FILE (not both) into VAR, so secrets can come from files.
read_env_or_file() {
	local var="$1" default="${2:-}"
	local file_var="${var}_FILE"
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		die "both $var and $file_var are set; set only one"
	fi
	local value="$default"
	if [ -n "${!var:-}" ]; then
		value="${!var}"
	elif [ -n "${!file_var:-}" ]; then
		[ -r "${!file_var}" ] || die "$file_var=${!file_var} is not a readable file"
		value="$(< "${!file_var}")"
	fi
	export "$var"="$value"
	unset "$file_var"
}

prepare_directories() {
	mkdir -p "$PGDATA" /var/run/postgresql
	chmod 00700 "$PGDATA"
	chmod 03775 /var/run/postgresql
	if [ "$(id -u)" = 0 ]; then
		find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
		chown postgres:postgres /var/run/postgresql
		# pgBackRest's repository may be a fresh volume or a host folder.
		if [ -d /var/lib/pgbackrest ]; then
			find /var/lib/pgbackrest \! -user postgres -exec chown postgres:postgres '{}' +
		fi
	fi
}

load_settings() {
	read_env_or_file POSTGRES_PASSWORD
	read_env_or_file POSTGRES_USER postgres
	read_env_or_file POSTGRES_DB "$POSTGRES_USER"
	read_env_or_file POSTGRES_INITDB_ARGS
	POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	if [ "$POSTGRES_HOST_AUTH_METHOD" != scram-sha-256 ]; then
		die "POSTGRES_HOST_AUTH_METHOD=$POSTGRES_HOST_AUTH_METHOD is not allowed by this image: TCP connections always use scram-sha-256"
	fi
}

initialise_cluster() {
	[ -n "$POSTGRES_PASSWORD" ] || die "the data directory $PGDATA is empty and no superuser password is set: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
	log "initialising a new cluster in $PGDATA"
	# The password travels through a pipe, never through argv or a file in PGDATA.
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words by contract
	initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
		--auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 \
		$POSTGRES_INITDB_ARGS
	printf '\n# Added by the image: any other TCP client must authenticate with scram-sha-256.\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
}

run_sql() {
	psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

run_init_files() {
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then log "running $f"; "$f"; else log "sourcing $f"; . "$f"; fi ;;
			*.sql)     log "running $f"; run_sql --dbname "$POSTGRES_DB" -f "$f" ;;
			*.sql.gz)  log "running $f"; gunzip -c "$f" | run_sql --dbname "$POSTGRES_DB" ;;
			*.sql.xz)  log "running $f"; xzcat "$f" | run_sql --dbname "$POSTGRES_DB" ;;
			*.sql.zst) log "running $f"; zstd -dc "$f" | run_sql --dbname "$POSTGRES_DB" ;;
			*)         log "ignoring $f" ;;
		esac
	done
}

first_start() {
	initialise_cluster
	# A temporary server on the Unix socket only: nothing can connect over TCP
	# (and a TCP readiness probe keeps failing) until initialisation is over.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
	if [ -z "$(run_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only --no-align <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")" ]; then
		run_sql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
	fi
	run_init_files
	pg_ctl -D "$PGDATA" -m fast -w stop
	log "initialisation complete; starting the server"
}

# The cluster's services (roles/postgres_cluster): each owns its data folder,
# which may be a fresh volume, and runs as its own user, never as root.
run_service() {
	local user=$1 dir=$2
	shift 2
	if [ "$(id -u)" = 0 ]; then
		mkdir -p "$dir"
		chmod 00700 "$dir"
		find "$dir" \! -user "$user" -exec chown "$user:$user" '{}' +
		if [ "$user" = postgres ]; then
			mkdir -p /var/run/postgresql
			chmod 03775 /var/run/postgresql
			chown postgres:postgres /var/run/postgresql
			if [ -d /var/lib/pgbackrest ]; then
				find /var/lib/pgbackrest \! -user postgres -exec chown postgres:postgres '{}' +
			fi
		fi
		exec setpriv --reuid="$user" --regid="$user" --init-groups "$@"
	fi
	exec "$@"
}

main() {
	if [ "${1:0:1}" = '-' ]; then
		set -- postgres "$@"
	fi
	case "$1" in
		patroni) run_service postgres "$PGDATA" "$@" ;;
		etcd) run_service etcd "${ETCD_DATA_DIR:-/var/lib/etcd/default}" "$@" ;;
		postgres) ;;
		*) exec "$@" ;;
	esac
	# Settings are read as root: a password file may be readable by root only.
	load_settings
	prepare_directories
	if [ "$(id -u)" = 0 ]; then
		# Drop to the postgres user and run this script again, like the official image.
		exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
	fi
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		first_start
	fi
	unset POSTGRES_PASSWORD
	exec "$@"
}

main "$@"
