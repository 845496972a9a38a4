#!/usr/bin/env bash
# Make sure a local PostgreSQL 15+ cluster is running and holds the test role and database.
# Prints the database URL the tests use. Installs the server from Debian if it is missing.
set -euo pipefail
URL="postgresql://custody:custody@127.0.0.1:5432/custody_test"
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "installing PostgreSQL from Debian packages" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$ver" main >&2
fi
read -r ver name port status _ < <(pg_lsclusters -h | head -1)
if [ "$status" != "online" ]; then
  pg_ctlcluster "$ver" "$name" start >&2
fi
for _ in $(seq 1 30); do
  as_postgres "pg_isready -q -p $port" && break
  sleep 0.5
done
as_postgres "psql -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname='custody'\"" | grep -q 1 ||
  as_postgres "psql -p $port -qc \"CREATE ROLE custody LOGIN SUPERUSER PASSWORD 'custody'\"" >&2
as_postgres "psql -p $port -tAc \"SELECT 1 FROM pg_database WHERE datname='custody_test'\"" | grep -q 1 ||
  as_postgres "createdb -p $port -O custody custody_test" >&2
echo "${URL/5432/$port}"
