-- The two database roles of the messenger system, created or brought up to date.
--
-- Run by messenger-db-deploy.sh as the cluster's superuser, through psql (the same
-- file serves both runtimes: `docker exec -i <db container> psql ...` or a local psql):
--
--   psql -v ON_ERROR_STOP=1 \
--        -v app_user=messenger -v app_password=... \
--        -v migrator_user=messenger_migrator -v migrator_password=... \
--        [-v db_name=messenger] -f infrastructure/sql/roles.sql
--
-- * The application role (what serving instances connect as) may log in and read
--   and write rows: nothing else. It never owns an object and holds no CREATE
--   anywhere, so it cannot CREATE, ALTER, DROP or TRUNCATE.
-- * The migrator role (what the migrator instance connects as) may create databases
--   and owns the database it creates with `manage.py create_db`, its public schema and
--   every table in it. It is not a superuser: it can change this schema and nothing
--   else in the cluster.
--
-- Row privileges are per database. A database the migrator creates later gets them
-- from `manage.py migrate` (core/db/privileges.py), which it runs as the
-- migrator. With db_name set and that database already present (made before these
-- roles existed, or by an earlier deploy), this file gives them itself, the same
-- statements as db_privileges.py, after making the migrator the owner of the
-- database, its public schema and every relation in it (so the next migration can
-- alter them).
--
-- Idempotent: running it again changes nothing but the passwords (set to the values
-- given). Two runs at once take turns (an advisory lock), so neither fails on the
-- other's half-made role.

\set ON_ERROR_STOP on

SELECT format('DO $$BEGIN RAISE EXCEPTION %L; END$$',
              'app_user and migrator_user must be two different roles')
 WHERE :'app_user' = :'migrator_user' \gexec

SELECT pg_advisory_lock(hashtext('messenger infrastructure/sql/roles.sql')) AS roles_lock \gset

SELECT format('CREATE ROLE %I', :'migrator_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'migrator_user') \gexec
ALTER ROLE :"migrator_user" WITH LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD :'migrator_password';

SELECT format('CREATE ROLE %I', :'app_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') \gexec
ALTER ROLE :"app_user" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD :'app_password';

-- A role that is a member of the migrator would inherit its ownership.
SELECT format('REVOKE %I FROM %I', :'migrator_user', :'app_user')
 WHERE pg_has_role(:'app_user', :'migrator_user', 'MEMBER') \gexec

\if :{?db_name}
SELECT EXISTS (SELECT FROM pg_database WHERE datname = :'db_name') AS db_exists \gset
\if :db_exists
SELECT format('ALTER DATABASE %I OWNER TO %I', :'db_name', :'migrator_user')
 WHERE (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :'db_name') <> :'migrator_user' \gexec
\connect :"db_name"
SELECT pg_advisory_lock(hashtext('messenger infrastructure/sql/roles.sql')) AS roles_lock \gset
SELECT format('ALTER SCHEMA public OWNER TO %I', :'migrator_user')
 WHERE (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public') <> :'migrator_user' \gexec
-- Tables, views and free-standing sequences; indexes and the sequences of identity
-- and serial columns follow their table.
SELECT format('ALTER %s %I.%I OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                             WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
              n.nspname, c.relname, :'migrator_user')
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public'
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND pg_get_userbyid(c.relowner) <> :'migrator_user'
   AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d
                                         WHERE d.objid = c.oid AND d.classid = 'pg_class'::regclass
                                           AND d.deptype IN ('a', 'i')))
 ORDER BY c.relname \gexec

-- As the migrator, so the grants and default privileges are exactly those its
-- `migrate` gives (keep in step with STATEMENTS in core/db/privileges.py).
SET ROLE :"migrator_user";
REVOKE TEMPORARY ON DATABASE :"db_name" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db_name" TO :"app_user";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_user";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_user";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO :"app_user";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"app_user";
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO :"app_user";
RESET ROLE;
\endif
\endif
