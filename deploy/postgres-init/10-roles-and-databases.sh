#!/bin/sh
# Run once by the postgres image, on an empty data volume, after it has created POSTGRES_DB
# (the study store): one role per service, MLflow's database, and the grants. The superuser
# (POSTGRES_USER) is for this script and the healthcheck only.
#
#   hpo            owns the study store: creates Optuna's tables (init-store)
#   hpo_worker     rows of the study store only (SELECT/INSERT/UPDATE/DELETE, sequences):
#                  no CREATE, ALTER, DROP or TRUNCATE, no temporary tables
#   hpo_dashboard  reads the study store (SELECT only)
#   mlflow         owns MLflow's database (its migrations need DDL); nothing in the store
#
# MLflow's database is separate: Optuna and MLflow both keep their schema version in a table
# named alembic_version. Passwords come from the environment (\getenv), never a command line.
# The role names can be changed for tests only (HPO_*_ROLE, MLFLOW_ROLE); docker-compose.yml
# uses these defaults.
set -eu
: "${HPO_OWNER_ROLE:=hpo}" "${HPO_WORKER_ROLE:=hpo_worker}"
: "${HPO_DASHBOARD_ROLE:=hpo_dashboard}" "${MLFLOW_ROLE:=mlflow}"
: "${MLFLOW_DB:?MLFLOW_DB is not set}"
: "${HPO_OWNER_PASSWORD:?HPO_OWNER_PASSWORD is not set}"
: "${HPO_WORKER_PASSWORD:?HPO_WORKER_PASSWORD is not set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
: "${DASHBOARD_DB_PASSWORD:?DASHBOARD_DB_PASSWORD is not set}"
for role in "$HPO_OWNER_ROLE" "$HPO_WORKER_ROLE" "$HPO_DASHBOARD_ROLE" "$MLFLOW_ROLE"; do
  if [ "$role" = "$POSTGRES_USER" ]; then
    echo "POSTGRES_USER must not be $role: that is a service's role" >&2
    exit 1
  fi
done
export HPO_OWNER_ROLE HPO_WORKER_ROLE HPO_DASHBOARD_ROLE MLFLOW_ROLE

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv hpo_db POSTGRES_DB
\getenv mlflow_db MLFLOW_DB
\getenv owner HPO_OWNER_ROLE
\getenv worker HPO_WORKER_ROLE
\getenv dashboard HPO_DASHBOARD_ROLE
\getenv mlflow MLFLOW_ROLE
\getenv owner_password HPO_OWNER_PASSWORD
\getenv worker_password HPO_WORKER_PASSWORD
\getenv dashboard_password DASHBOARD_DB_PASSWORD
\getenv mlflow_password MLFLOW_DB_PASSWORD

CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password';
CREATE ROLE :"worker" LOGIN PASSWORD :'worker_password';
CREATE ROLE :"dashboard" LOGIN PASSWORD :'dashboard_password';
CREATE ROLE :"mlflow" LOGIN PASSWORD :'mlflow_password';

-- The study store: owned by hpo; the other two may connect, nobody else (no TEMP either).
ALTER DATABASE :"hpo_db" OWNER TO :"owner";
REVOKE ALL ON DATABASE :"hpo_db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"hpo_db" TO :"worker", :"dashboard";

-- MLflow's database: its owner only.
CREATE DATABASE :"mlflow_db" OWNER :"mlflow";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;

\connect :"hpo_db"
ALTER SCHEMA public OWNER TO :"owner";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"worker", :"dashboard";
-- The tables do not exist yet: init-store creates them as hpo, and these grants apply to them.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO :"worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
  GRANT SELECT ON TABLES TO :"dashboard";

\connect :"mlflow_db"
ALTER SCHEMA public OWNER TO :"mlflow";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
