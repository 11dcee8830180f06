-- Sample schema for cdcinvalidate: the tables that rules.yaml maps to cache
-- keys. Used by the demo (internal/demo) and by docker-compose.yml, which
-- mounts it into /docker-entrypoint-initdb.d.
--
-- rules.yaml:
--   users  -> user:{id}, user:email:{email}
--   orders -> order:{id}, user:{user_id}:orders
--
-- Both tables use REPLICA IDENTITY FULL because templates use columns that
-- are not part of the primary key (email, user_id): on UPDATE and DELETE
-- PostgreSQL then sends the whole old row, so the keys of the old row
-- (user:email:<old address>, user:<old owner>:orders) can be computed.
-- Without it cdcinvalidate refuses to start and says so.

CREATE TABLE IF NOT EXISTS users (
    id    bigint PRIMARY KEY,
    email text,
    name  text
);
ALTER TABLE users REPLICA IDENTITY FULL;

CREATE TABLE IF NOT EXISTS orders (
    id      bigint PRIMARY KEY,
    user_id bigint,
    total   numeric
);
ALTER TABLE orders REPLICA IDENTITY FULL;
