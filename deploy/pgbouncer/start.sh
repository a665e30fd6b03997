#!/bin/sh
# PgBouncer in transaction mode in front of the study store: the workers' connections to
# PostgreSQL stay at PGBOUNCER_POOL_SIZE however many workers run (docs/service.md).
#
# It logs in to PostgreSQL as the workers' role with their password, which it also checks
# when a worker connects (SCRAM); both come from the environment and are written only to a
# private directory, never to the command line.
#
#   STORE_HOST, STORE_PORT      the PostgreSQL it serves (default postgres:5432)
#   PGBOUNCER_USER              the role workers connect as (default hpo_worker)
#   HPO_WORKER_PASSWORD         that role's password (required)
#   PGBOUNCER_POOL_SIZE         PostgreSQL connections per database (default 20)
#   PGBOUNCER_MAX_CLIENTS       worker connections it accepts, about 4 a worker (default 5000)
#   PGBOUNCER_LISTEN, PGBOUNCER_PORT   where workers connect (default 0.0.0.0:6432)
#   PGBOUNCER_RUN_DIR           its generated configuration (default /tmp/pgbouncer)
set -eu
: "${HPO_WORKER_PASSWORD:?HPO_WORKER_PASSWORD is required}"
run_dir="${PGBOUNCER_RUN_DIR:-/tmp/pgbouncer}"
umask 077
mkdir -p "$run_dir"
escaped=$(printf '%s' "$HPO_WORKER_PASSWORD" | sed 's/"/""/g')
printf '"%s" "%s"\n' "${PGBOUNCER_USER:-hpo_worker}" "$escaped" > "$run_dir/userlist.txt"
cat > "$run_dir/pgbouncer.ini" <<INI
[databases]
* = host=${STORE_HOST:-postgres} port=${STORE_PORT:-5432}

[pgbouncer]
listen_addr = ${PGBOUNCER_LISTEN:-0.0.0.0}
listen_port = ${PGBOUNCER_PORT:-6432}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $run_dir/userlist.txt
; A server connection serves one transaction at a time, then the next client's: hpo turns
; psycopg's prepared statements off for this (hpo/storage.py), and uses no session state.
pool_mode = transaction
default_pool_size = ${PGBOUNCER_POOL_SIZE:-20}
max_client_conn = ${PGBOUNCER_MAX_CLIENTS:-5000}
; Sent by some PostgreSQL clients at login; meaningless to a pooled connection.
ignore_startup_parameters = extra_float_digits,options
INI
exec pgbouncer "$run_dir/pgbouncer.ini"
