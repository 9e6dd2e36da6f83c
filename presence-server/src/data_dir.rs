//! User state that outlives the process on a single node: an embedded
//! key-value file in `--data-dir`.
//!
//! redb, because it is pure Rust (no C toolchain, quick to build), ACID and
//! crash-safe by default (a `kill -9` loses no committed transaction), and a
//! file lock keeps a second server off the same directory. What is kept:
//!
//! | table | key | value | written |
//! |---|---|---|---|
//! | `users` | user id | a [`UserRecord`] as JSON (status, text, last seen, read markers) | every batch window, for the users that changed |
//! | `conns` | connection id | a [`ConnRecord`] as JSON | at a graceful shutdown; taken (and removed) at start |
//! | `events` | event id | the event feed's entries, `<kind>\n<json>` (the last `event_replay`) | every batch window, with the users |
//!
//! JSON values keep the file readable with any redb tool and let fields be
//! added. A row that does not decode is skipped with a warning, never fatal.

use std::path::{Path, PathBuf};

use presence_core::machine::{ConnRecord, UserRecord};
use presence_core::{ConnId, UserId};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const CONNS: TableDefinition<u64, &[u8]> = TableDefinition::new("conns");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const FILE: &str = "presence.redb";

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created.
    #[error("data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The store failed (open, locked by another process, read or write).
    #[error("data store {path}: {source}")]
    Store {
        /// The store's file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::Error>,
    },
}

/// What a start finds in the directory.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub users: Vec<(UserId, UserRecord)>,
    pub conns: Vec<ConnRecord>,
    /// The event feed's kept entries (id, kind, JSON), oldest first.
    pub events: Vec<(u64, String, String)>,
    /// Rows that did not decode (skipped).
    pub skipped: usize,
}

/// An open data directory. Cheap to clone.
#[derive(Clone)]
pub struct DataDir {
    db: std::sync::Arc<redb::Database>,
    path: PathBuf,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir").field("path", &self.path).finish()
    }
}

impl DataDir {
    /// Opens (or creates) the store in `dir`, creating the directory too.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DataDirError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| DataDirError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE);
        let db = redb::Database::create(&path).map_err(|e| DataDirError::Store {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let this = Self {
            db: std::sync::Arc::new(db),
            path,
        };
        // Every table exists from the first start on, so reads need no
        // special case.
        this.transact(|txn| {
            txn.open_table(USERS)?;
            txn.open_table(CONNS)?;
            txn.open_table(EVENTS)?;
            Ok(())
        })?;
        Ok(this)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, e: impl Into<redb::Error>) -> DataDirError {
        DataDirError::Store {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn transact(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), DataDirError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        f(&txn).map_err(|e| self.fail(e))?;
        txn.commit().map_err(|e| self.fail(e))
    }

    /// Reads every user, and takes the connections a graceful shutdown left
    /// (they are resumable once, so they are removed as they are read).
    pub(crate) fn load(&self) -> Result<Loaded, DataDirError> {
        let mut out = Loaded::default();
        let read = self.db.begin_read().map_err(|e| self.fail(e))?;
        let users = read.open_table(USERS).map_err(|e| self.fail(e))?;
        for row in users.iter().map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            let user = UserId::new(k.value()).ok();
            match (user, serde_json::from_slice::<UserRecord>(v.value())) {
                (Some(user), Ok(record)) => out.users.push((user, record)),
                _ => out.skipped += 1,
            }
        }
        let conns = read.open_table(CONNS).map_err(|e| self.fail(e))?;
        for row in conns.iter().map_err(|e| self.fail(e))? {
            let (_, v) = row.map_err(|e| self.fail(e))?;
            match serde_json::from_slice::<ConnRecord>(v.value()) {
                Ok(record) => out.conns.push(record),
                Err(_) => out.skipped += 1,
            }
        }
        let events = read.open_table(EVENTS).map_err(|e| self.fail(e))?;
        for row in events.iter().map_err(|e| self.fail(e))? {
            let (k, v) = row.map_err(|e| self.fail(e))?;
            let split = std::str::from_utf8(v.value())
                .ok()
                .and_then(|t| t.split_once('\n'));
            match split {
                Some((kind, json)) => {
                    out.events
                        .push((k.value(), kind.to_owned(), json.to_owned()))
                }
                None => out.skipped += 1,
            }
        }
        drop((users, conns, events, read));
        if !out.conns.is_empty() {
            self.transact(|txn| {
                txn.open_table(CONNS)?.retain(|_, _| false)?;
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Writes changed users (`None` deletes: forgotten) and new feed
    /// entries in one transaction, keeping the last `keep` entries.
    pub(crate) fn write_users(
        &self,
        users: &[(UserId, Option<UserRecord>)],
        events: &[(u64, &str, &str)],
        keep: usize,
    ) -> Result<(), DataDirError> {
        if users.is_empty() && events.is_empty() {
            return Ok(());
        }
        self.transact(|txn| {
            if !events.is_empty() {
                let mut table = txn.open_table(EVENTS)?;
                for (id, kind, json) in events {
                    table.insert(*id, format!("{kind}\n{json}").as_bytes())?;
                }
                let mut extra = table.len()?.saturating_sub(keep as u64);
                while extra > 0 && table.pop_first()?.is_some() {
                    extra -= 1;
                }
            }
            let mut table = txn.open_table(USERS)?;
            for (user, record) in users {
                match record {
                    Some(r) => {
                        let bytes = serde_json::to_vec(r).unwrap_or_default();
                        table.insert(user.as_str(), bytes.as_slice())?;
                    }
                    None => {
                        table.remove(user.as_str())?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Saves the connections of a graceful shutdown, replacing older ones.
    pub(crate) fn save_conns(&self, conns: &[ConnRecord]) -> Result<(), DataDirError> {
        self.transact(|txn| {
            let mut table = txn.open_table(CONNS)?;
            table.retain(|_, _| false)?;
            for c in conns {
                let bytes = serde_json::to_vec(c).unwrap_or_default();
                let ConnId(id) = c.conn;
                table.insert(id, bytes.as_slice())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::{Activity, ResumeToken, RoomId, Status};

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("presence-data-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn users_and_conns_survive_a_reopen_and_conns_are_taken_once() {
        let dir = temp_dir("reopen");
        let ana = UserId::new("ana").expect("valid");
        let record = UserRecord {
            privacy: Default::default(),
            status: Status::Busy,
            text: None,
            last_seen: None,
            gone: None,
            receipts: vec![(RoomId::new("r").expect("valid"), 7)],
        };
        let conn = ConnRecord {
            conn: ConnId(3),
            user: ana.clone(),
            token: ResumeToken::new("t").expect("valid"),
            activity: Activity::Active,
            rooms: Vec::new(),
        };
        {
            let d = DataDir::open(&dir).expect("opens");
            d.write_users(&[(ana.clone(), Some(record.clone()))], &[], 0)
                .expect("writes");
            d.save_conns(std::slice::from_ref(&conn)).expect("saves");
            assert!(DataDir::open(&dir).is_err(), "one process per directory");
        }
        let d = DataDir::open(&dir).expect("reopens");
        let loaded = d.load().expect("loads");
        assert_eq!(loaded.users, [(ana.clone(), record)]);
        assert_eq!(loaded.conns, [conn]);
        assert!(d.load().expect("loads").conns.is_empty(), "taken once");
        d.write_users(&[(ana, None)], &[], 0).expect("deletes");
        assert!(d.load().expect("loads").users.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_feed_keeps_its_last_entries_across_a_reopen() {
        let dir = temp_dir("events");
        {
            let d = DataDir::open(&dir).expect("opens");
            let events: Vec<(u64, &str, &str)> = (1..=5)
                .map(|i| (i, "status", "{\"user\":\"ana\"}"))
                .collect();
            d.write_users(&[], &events, 3).expect("writes");
        }
        let d = DataDir::open(&dir).expect("reopens");
        let loaded = d.load().expect("loads");
        let ids: Vec<u64> = loaded.events.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(ids, [3, 4, 5]);
        assert_eq!(loaded.events[0].1, "status");
        assert_eq!(loaded.events[0].2, "{\"user\":\"ana\"}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
