#!/usr/bin/env bash
# Baseline of bench_commands.py row (b): the steps of a cold `site.yml` as a
# bare shell script, with the same image and server settings, but its own
# container, volume, network and port, so it never touches the real ones.
#
#   bench/baseline_cold.sh up IMAGE     network, volume, docker run, wait,
#                                       roles, database, extensions, grants,
#                                       the initial migration, select 1
#   bench/baseline_cold.sh down         remove the container and the volume
#   bench/baseline_cold.sh purge        and the network
#
# Names: BENCH_COLD_NAME (default bench_cold_postgres; also the volume
# <name>_pgdata and the network <name>_net), BENCH_COLD_PORT (55499).
# Passwords are random per run, passed to Docker in 0600 files, never on a
# command line. Exit status 0 only when every step worked.
set -euo pipefail

name=${BENCH_COLD_NAME:-bench_cold_postgres}
port=${BENCH_COLD_PORT:-55499}
volume=${name}_pgdata
network=${name}_net
root=$(cd "$(dirname "$0")/.." && pwd)
migration=$root/migrations/1710000000001_initial-schema.sql

case "$name" in
  social_selling*|t11*) echo "refusing the name $name: it belongs to the real deployment" >&2; exit 1 ;;
esac

down() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker volume rm -f "$volume" >/dev/null 2>&1 || true
}

case "${1:-}" in
  down) down; exit 0 ;;
  purge) down; docker network rm "$network" >/dev/null 2>&1 || true; exit 0 ;;
esac
[ "${1:-}" = up ] && [ -n "${2:-}" ] || { echo "usage: $0 up IMAGE | down | purge" >&2; exit 2; }
image=$2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0700 "$work"
secret() { head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }
admin_pw=$(secret); owner_pw=$(secret); app_pw=$(secret)
mkdir -p "$work/secrets"
printf '%s' "$admin_pw" > "$work/secrets/admin_password"
# The entrypoint reads the file as root, then drops to postgres (uid 999).
chmod 0644 "$work/secrets/admin_password"
printf 'PGPASSWORD=%s\n' "$app_pw" > "$work/app.env"
chmod 0600 "$work/app.env"

# Like the role: the network is created when missing (a cold run keeps it).
docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null
docker volume create "$volume" >/dev/null
docker run -d --name "$name" --network "$network" --network-alias postgres \
  -p "127.0.0.1:$port:5432" --shm-size 256m --stop-signal SIGINT \
  -e POSTGRES_USER=postgres -e POSTGRES_DB=social_selling \
  -e POSTGRES_PASSWORD_FILE=/run/secrets/postgres/admin_password \
  -e PGDATA=/var/lib/postgresql/data \
  --mount "type=volume,source=$volume,target=/var/lib/postgresql/data" \
  --mount "type=bind,source=$work/secrets,target=/run/secrets/postgres,readonly" \
  "$image" postgres -c shared_preload_libraries=pg_stat_statements \
  -c password_encryption=scram-sha-256 -c max_connections=60 \
  -c log_connections=on -c log_disconnections=on >/dev/null

# Ready: the entrypoint's temporary server does not listen on TCP, so
# pg_isready on 127.0.0.1 answers only once the real server is up.
for _ in $(seq 1 600); do
  docker exec "$name" pg_isready --quiet --host=127.0.0.1 --port=5432 && break
  sleep 0.2
done
docker exec "$name" pg_isready --quiet --host=127.0.0.1 --port=5432

psql_in() {  # psql as the superuser over the local socket, SQL on stdin
  docker exec -i "$name" psql -X -q -v ON_ERROR_STOP=1 -U postgres "$@"
}

# Roles (passwords through psql variables on stdin, not the command line).
psql_in -d postgres <<SQL
\set owner_pw '$owner_pw'
\set app_pw '$app_pw'
CREATE ROLE social_selling_owner LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD :'owner_pw';
CREATE ROLE social_selling_user LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 40 PASSWORD :'app_pw';
ALTER DATABASE social_selling OWNER TO social_selling_owner;
REVOKE CONNECT ON DATABASE social_selling FROM PUBLIC;
SQL

# Extensions and grants (least privilege: DML on tables, sequences, functions).
psql_in -d social_selling >/dev/null <<'SQL'
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
SELECT count(*) >= 0 FROM pg_stat_statements;
GRANT CONNECT, TEMPORARY ON DATABASE social_selling TO social_selling_user;
GRANT USAGE ON SCHEMA public TO social_selling_user;
GRANT CREATE, USAGE ON SCHEMA public TO social_selling_owner;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO social_selling_user;
ALTER DEFAULT PRIVILEGES FOR ROLE social_selling_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO social_selling_user;
ALTER DEFAULT PRIVILEGES FOR ROLE social_selling_owner IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO social_selling_user;
ALTER DEFAULT PRIVILEGES FOR ROLE social_selling_owner IN SCHEMA public
  GRANT EXECUTE ON FUNCTIONS TO social_selling_user;
SQL

# The initial migration's up section as the owner, with node-pg-migrate's
# tracking row, in one transaction.
{
  echo 'SET ROLE social_selling_owner;'
  echo 'CREATE TABLE IF NOT EXISTS pgmigrations (id SERIAL PRIMARY KEY, name varchar(255) NOT NULL, run_on timestamp NOT NULL);'
  sed '/^-- Down Migration/,$d' "$migration"
  echo ";INSERT INTO pgmigrations (name, run_on) VALUES ('1710000000001_initial-schema', NOW());"
} | psql_in -1 -d social_selling

# The application can connect over TCP with its password and query.
docker exec --env-file "$work/app.env" "$name" \
  psql -X -q -At -h 127.0.0.1 -U social_selling_user -d social_selling -c 'SELECT 1' >/dev/null
