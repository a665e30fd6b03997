#!/bin/sh
# Run once by the postgres image, on an empty data volume, after it has created POSTGRES_DB
# (the study store): create MLflow's database beside it. The two cannot share a database, as
# both Optuna and MLflow keep their schema version in a table named alembic_version.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=db="${MLFLOW_DB:?MLFLOW_DB is not set}" <<'SQL'
CREATE DATABASE :"db";
SQL
