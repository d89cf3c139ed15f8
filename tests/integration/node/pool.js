'use strict';
// The seed's database client (pg-promise 12) with the seed's pool, driven by
// tests/integration/test_pool_pg_promise.py. Configuration comes as JSON on
// the POOL_TEST_CONFIG environment variable (never on the command line):
//   {host, port, database, user, password, min, max, idleTimeoutMillis,
//    connectionTimeoutMillis, application_name, scratch_table, hold_release_ms}
// Each step prints one JSON line on stdout; the test answers "next" on stdin
// when it has checked the server side.
const readline = require('readline');
const pgp = require('pg-promise')();

const config = JSON.parse(process.env.POOL_TEST_CONFIG);
const db = pgp({
  host: config.host,
  port: config.port,
  database: config.database,
  user: config.user,
  password: config.password,
  application_name: config.application_name,
  min: config.min,
  max: config.max,
  idleTimeoutMillis: config.idleTimeoutMillis,
  connectionTimeoutMillis: config.connectionTimeoutMillis,
});

const input = readline.createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();
const say = (step, data) => process.stdout.write(JSON.stringify({ step, ...data }) + '\n');
async function waitForNext() {
  const line = await lines.next();
  if (line.done || line.value.trim() !== 'next') throw new Error('the test stopped the script');
}

async function main() {
  const pool = db.$pool;
  say('options', {
    min: pool.options.min, max: pool.options.max,
    idleTimeoutMillis: pool.options.idleTimeoutMillis,
    connectionTimeoutMillis: pool.options.connectionTimeoutMillis,
  });

  // The pool at its maximum: every connection held at once.
  const held = await Promise.all(Array.from({ length: config.max }, () => db.connect()));
  const pids = await Promise.all(held.map((c) => c.one('SELECT pg_backend_pid() AS pid', [], (r) => r.pid)));
  say('holding', { pids, total: pool.totalCount, idle: pool.idleCount });
  await waitForNext();

  // One more concurrent request: it must wait for a free connection, and be served by the one released.
  const started = process.hrtime.bigint();
  const extra = db.one('SELECT pg_backend_pid() AS pid', [], (r) => r.pid)
    .then((pid) => ({ pid, ms: Number(process.hrtime.bigint() - started) / 1e6 }));
  await new Promise((resolve) => setTimeout(resolve, config.hold_release_ms));
  const waitingAtRelease = pool.waitingCount;
  const releasedAfterMs = Number(process.hrtime.bigint() - started) / 1e6;
  held[0].done();
  const served = await extra;
  say('extra', { waiting_at_release: waitingAtRelease, released_after_ms: releasedAfterMs,
                 served_after_ms: served.ms, served_by: served.pid, released_pid: pids[0] });
  held.slice(1).forEach((c) => c.done());

  // CRUD through the pool on a table the owner role made (as a migration would).
  const table = new pgp.helpers.TableName({ table: config.scratch_table });
  const row = await db.one('INSERT INTO $1 (note) VALUES ($2) RETURNING id, note', [table, 'created']);
  await db.none('UPDATE $1 SET note = $2 WHERE id = $3', [table, 'updated', row.id]);
  const read = await db.one('SELECT note FROM $1 WHERE id = $2', [table, row.id], (r) => r.note);
  const deleted = await db.result('DELETE FROM $1 WHERE id = $2', [table, row.id], (r) => r.rowCount);
  say('crud', { inserted: row.note, read, deleted });

  // The users table's updated_at trigger, seen by the application.
  const email = `pool-${process.pid}-${Date.now()}@example.test`;
  const user = await db.one('INSERT INTO users (email, password_hash, name) VALUES ($1, $2, $3) '
                            + 'RETURNING id, created_at, updated_at', [email, 'hash', 'Pool']);
  await new Promise((resolve) => setTimeout(resolve, 20));
  const after = await db.one("UPDATE users SET name = 'Pool updated' WHERE id = $1 "
                             + 'RETURNING updated_at, updated_at > created_at AS moved', [user.id]);
  await db.none('DELETE FROM users WHERE id = $1', [user.id]);
  say('trigger', { moved: after.moved, equal_at_insert: user.created_at.getTime() === user.updated_at.getTime() });
}

main()
  .finally(() => input.close())
  .then(() => pgp.end())
  .catch((error) => {
    say('error', { message: String(error && error.message), code: error && error.code });
    pgp.end();
    process.exitCode = 1;
  });
