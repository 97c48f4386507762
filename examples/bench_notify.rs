//! What a `NOTIFY` in every write transaction would cost (not a test): 8
//! concurrent connections commit small step-state updates to PostgreSQL, each
//! transaction either plain or with a `pg_notify`, and the commits per second
//! are printed. PostgreSQL takes a global lock at commit for a transaction that
//! notified, so notifying transactions commit one at a time; myrmex therefore
//! notifies only when work appears for other processes, never on step writes.
//!
//!     BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432/test cargo run --release --example bench_notify

use std::time::Instant;

#[tokio::main]
async fn main() {
    let base = std::env::var("BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let per_conn: usize = std::env::var("BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let conns = 8usize;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(conns as u32 + 1)
        .connect(&base)
        .await
        .expect("PostgreSQL");
    let table = format!("bench_notify_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, status TEXT NOT NULL, n BIGINT NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} SELECT g, 'pending', 0 FROM generate_series(0, {}) g",
        conns - 1
    )))
    .execute(&pool)
    .await
    .unwrap();
    // A listener, as every myrmex process has one.
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("bench_notify").await.unwrap();
    let drain = tokio::spawn(async move { while listener.recv().await.is_ok() {} });
    println!("{conns} connections x {per_conn} commits each");
    println!("{:<22} {:>12}", "transaction", "commits_s");
    for notify in [false, true] {
        let t = Instant::now();
        let mut jobs = Vec::new();
        for c in 0..conns {
            let (pool, table) = (pool.clone(), table.clone());
            jobs.push(tokio::spawn(async move {
                for i in 0..per_conn {
                    let mut tx = pool.begin().await.unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE {table} SET status = 'running', n = $2 WHERE id = $1"
                    )))
                    .bind(c as i64)
                    .bind(i as i64)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    if notify {
                        sqlx::query("SELECT pg_notify('bench_notify', $1)")
                            .bind(format!("{c}/{i}"))
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                    }
                    tx.commit().await.unwrap();
                }
            }));
        }
        for j in jobs {
            j.await.unwrap();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:<22} {:>12.0}",
            if notify {
                "update + pg_notify"
            } else {
                "update"
            },
            (conns * per_conn) as f64 / secs
        );
    }
    drain.abort();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}
