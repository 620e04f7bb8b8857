//! How the relay sets up its SQLite connections: the registry's and the file catalogue's.
//!
//! - WAL, so that readers do not wait for a writer;
//! - foreign keys enforced;
//! - a writer waits up to five seconds for another's lock before it gives up;
//! - query plans that do not depend on the values bound to a statement (SQLite's query planner
//!   stability guarantee). The relay's queries are point lookups whose plan never changes with
//!   the values. Without it, SQLite marks some statements for a new plan whenever their values
//!   change, and a statement cache that clears its values after each use then parses and plans
//!   the statement again on every use: a served chunk's lookup spent more time being planned than
//!   being run;
//! - room for every statement the relay keeps prepared (rusqlite keeps 16 by default, and drops
//!   the least used beyond that).

use std::time::Duration;

use rusqlite::Connection;
use rusqlite::config::DbConfig;

/// Statements kept prepared per connection: more than either the registry or the catalogue has.
const PREPARED: usize = 64;

/// How much a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A commit survives a crash of the process; the last ones may be lost in a power loss.
    Normal,
    /// A commit survives a power loss.
    Full,
}

/// Sets up a connection just opened, as the module says.
pub fn configure(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(PREPARED);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A join looked up by its key: a plan SQLite would otherwise mark to be made again whenever
    /// the values change.
    const QUERY: &str = "SELECT v FROM t JOIN u ON u.k = t.k WHERE t.k = ?1 AND t.n = ?2";

    fn reprepares(conn: &Connection) -> i32 {
        for n in 2..6 {
            let v: Option<String> = conn
                .prepare_cached(QUERY)
                .unwrap()
                .query_row(rusqlite::params!["a", n], |r| r.get(0))
                .ok();
            assert_eq!(v.as_deref(), (n == 3).then_some("three"));
        }
        conn.prepare_cached(QUERY)
            .unwrap()
            .get_status(StatementStatus::RePrepare)
    }

    fn table(conn: &Connection) {
        conn.execute_batch(
            "CREATE TABLE t (k TEXT, n INTEGER, v TEXT, PRIMARY KEY (k, n));
             CREATE TABLE u (k TEXT PRIMARY KEY);
             INSERT INTO t VALUES ('a', 3, 'three');
             INSERT INTO u VALUES ('a');",
        )
        .unwrap();
    }

    #[test]
    fn cached_statements_keep_their_plan() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        configure(&conn, Durability::Full).unwrap();
        table(&conn);
        assert_eq!(reprepares(&conn), 0);

        // The same statements on a connection set up otherwise are planned again on every use,
        // so the check above can tell.
        let plain = Connection::open_in_memory().unwrap();
        table(&plain);
        assert!(reprepares(&plain) >= 3);
    }

    #[test]
    fn durability_and_journal_are_set() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        configure(&conn, Durability::Normal).unwrap();
        let get = |p: &str| -> String {
            conn.query_row(&format!("PRAGMA {p}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
        };
        assert_eq!(get("journal_mode"), "Text(\"wal\")");
        assert_eq!(get("synchronous"), "Integer(1)");
        assert_eq!(get("foreign_keys"), "Integer(1)");
        configure(&conn, Durability::Full).unwrap();
        assert_eq!(get("synchronous"), "Integer(2)");
    }
}
