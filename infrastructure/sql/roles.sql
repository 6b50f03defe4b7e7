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
-- * The application role (what serving instances connect as) may log in and, once
--   the migrator has run, read and write rows: nothing else. It never owns an
--   object, holds no CREATE anywhere, and so cannot CREATE, ALTER, DROP or TRUNCATE.
-- * The migrator role (what the migrator instance connects as) may create databases
--   and owns the database it creates with `manage.py create_db`, its public schema and
--   every table in it. It is not a superuser: it can change this schema and nothing
--   else in the cluster.
-- Row privileges for the application role are per database, so they cannot be given
-- here before the database exists: `manage.py migrate`, run as the migrator, grants
-- them and sets default privileges so every table it creates later is covered too.
--
-- Idempotent: running it again changes nothing but the passwords (set to the values
-- given). With db_name set and that database already present (created before these
-- roles existed, for example by an earlier deploy), the migrator is made the owner of
-- the database, its public schema and every relation in that schema, so the next
-- migration can alter them.

\set ON_ERROR_STOP on

SELECT format('DO $$BEGIN RAISE EXCEPTION %L; END$$',
              'app_user and migrator_user must be two different roles')
 WHERE :'app_user' = :'migrator_user' \gexec

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
\endif
\endif
