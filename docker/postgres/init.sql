-- Runs once, when the postgres container initialises an empty data volume
-- (mounted into /docker-entrypoint-initdb.d by docker-compose.yaml).
--
-- One PostgreSQL server, three separate databases, each owned by its own role:
--   airflow      Airflow metadata DB (and the Celery result backend)
--   labelloop    the curation database (labelloop.db, migrations in sql/migrations)
--   labelstudio  Label Studio's Django database
--
-- Passwords come from the container environment (see docker-compose.yaml / .env).
-- \getenv needs psql >= 15 (the postgres:16 image has psql 16). An unset variable leaves
-- :'name' unexpanded, which is a syntax error, and ON_ERROR_STOP (set by the image's
-- entrypoint) then fails the initialisation loudly instead of creating a passwordless role.

\getenv airflow_pw AIRFLOW_DB_PASSWORD
\getenv labelloop_pw CURATION_DB_PASSWORD
\getenv labelstudio_pw LABEL_STUDIO_DB_PASSWORD

CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE ROLE labelloop LOGIN PASSWORD :'labelloop_pw';
CREATE ROLE labelstudio LOGIN PASSWORD :'labelstudio_pw';

CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
CREATE DATABASE labelloop OWNER labelloop ENCODING 'UTF8';
CREATE DATABASE labelstudio OWNER labelstudio ENCODING 'UTF8';

-- Keep the applications out of each other's databases.
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE labelloop FROM PUBLIC;
REVOKE ALL ON DATABASE labelstudio FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE airflow TO airflow;
GRANT CONNECT, TEMPORARY ON DATABASE labelloop TO labelloop;
GRANT CONNECT, TEMPORARY ON DATABASE labelstudio TO labelstudio;
