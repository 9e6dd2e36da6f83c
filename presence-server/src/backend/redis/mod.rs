//! The Redis backend: one Redis (7.0 or later) or a Redis Cluster.
//!
//! Storage and compare-and-set only; presence is decided in Rust. Key layout
//! in [`keys`]: every call touches one hash slot, so a cluster shards users,
//! rooms and topics over its masters, and only the registry (`{reg}`: leases,
//! node claims, saved connections, O(nodes)) lives in one slot. Scripts
//! (`scripts/*.lua`, run with `EVALSHA` and their keys declared) keep the
//! few steps that must be atomic on one key: a write answering the user's
//! records as of that write, the compare-and-set of a dead record,
//! forward-only read markers. Topics are sharded pub/sub channels
//! (`SPUBLISH`/`SSUBSCRIBE`), so a node receives only what it subscribed to.
//!
//! Batches (writes and reads of many users, publications, marks of many
//! rooms) go out as pipelines of at most [`MAX_PIPELINE`] commands, one per
//! slot on a cluster ([`batch`]). A call that fails may have applied part
//! of its batch: the caller repeats it, which stores the same records again.
//!
//! Bad replies: see [`reply`]. Connections and `Reset`: see [`link`].

mod batch;
mod config;
mod keys;
mod link;
mod reply;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use presence_core::{RoomId, UserId};
use redis::{Cmd, Script, Value};
use tokio::sync::mpsc;

use self::batch::{each, evals, pipeline, subscriptions};
pub use self::config::{RedisConfig, RedisSetupError, RedisTarget};
use self::config::{cluster_client, single_client};
use self::keys::{Keys, valid_prefix};
use self::link::{Link, MAX_PIPELINE, Target};
use self::reply::{bad, bytes, decode, encode, int, items, opt_bytes, opt_string, pairs};
use super::inbox::{INCOMING_CAPACITY, Inbox};
use super::stream::{Append, Keep, ShardRead, StreamEntry, StreamId};
use super::{
    Backend, BackendError, BackendResult, Bus, EventLog, Incarnation, Incoming, Leases, MAX_OWED,
    Owed, Registry, Replaced, Store, Stored, Topic, UserRecords, Written,
};

/// At most this many users are taken from a dead incarnation per call.
const MAX_TAKE: usize = 1024;

/// A node's link to Redis: the [`Backend`] over one Redis or a Cluster.
/// Connects lazily and repairs itself: a node starts and serves locally while
/// Redis is down, its calls fail until Redis is up, and it gets
/// [`Incoming::Reset`] whenever the link comes back.
pub struct RedisBackend {
    link: Arc<Link>,
    keys: Keys,
    inbox: Inbox,
    scripts: Scripts,
}

struct Scripts {
    write: Script,
    replace: Script,
    mark_read: Script,
    unregister: Script,
    lease: Script,
    append: Script,
    read: Script,
    hold: Script,
    settle: Script,
}

impl Scripts {
    fn new() -> Self {
        let retain = include_str!("scripts/retain.lua");
        let owe = include_str!("scripts/owe.lua");
        Self {
            write: Script::new(&format!(
                "{retain}{owe}{}",
                include_str!("scripts/write.lua")
            )),
            replace: Script::new(&format!(
                "{retain}{owe}{}",
                include_str!("scripts/replace.lua")
            )),
            settle: Script::new(include_str!("scripts/settle.lua")),
            mark_read: Script::new(include_str!("scripts/mark_read.lua")),
            unregister: Script::new(include_str!("scripts/unregister.lua")),
            lease: Script::new(include_str!("scripts/lease.lua")),
            append: Script::new(include_str!("scripts/append.lua")),
            read: Script::new(include_str!("scripts/read.lua")),
            hold: Script::new(include_str!("scripts/hold.lua")),
        }
    }
}

impl RedisBackend {
    /// Checks the config and prepares the client; connects nothing yet.
    pub fn new(config: RedisConfig) -> Result<Self, RedisSetupError> {
        if !valid_prefix(&config.prefix) {
            return Err(RedisSetupError::BadPrefix(config.prefix));
        }
        if matches!(&config.target, RedisTarget::Cluster(s) if s.is_empty()) {
            return Err(RedisSetupError::NoSeeds);
        }
        let keys = Keys::new(&config.prefix);
        let inbox = Inbox::new(INCOMING_CAPACITY);
        let target = config.target;
        let link = Link::new(keys.clone(), inbox.clone(), |pushes| match target {
            RedisTarget::Single(url) => single_client(&url).map(Target::Single),
            RedisTarget::Cluster(seeds) => {
                cluster_client(&seeds, pushes).map(|c| Target::Cluster(Box::new(c)))
            }
        })
        .map_err(RedisSetupError::Url)?;
        Ok(Self {
            link,
            keys,
            inbox,
            scripts: Scripts::new(),
        })
    }

    /// `EVALSHA` of `script` with its keys and arguments.
    fn eval(script: &Script, keys: &[String], args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}

/// A duration as PX/PEXPIRE milliseconds (at least 1: 0 would delete).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `SET key value PX ttl`.
async fn set_px(
    c: &mut link::Conn,
    key: String,
    value: impl redis::ToRedisArgs + Send,
    ttl: Duration,
) -> Result<(), link::Failure> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("PX")
        .arg(millis(ttl))
        .query_async::<Value>(c)
        .await?;
    Ok(())
}

/// One `{old, all, owed, wrote}` reply of `write.lua`.
fn written(user: UserId, v: Value) -> Result<Written, BackendError> {
    let mut parts = items(v)?.into_iter();
    let (Some(old), Some(all), Some(owed), Some(wrote), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad("write: expected {old, all, owed, wrote}"));
    };
    let owed = reply::owed_list(&user, owed)?;
    let wrote = int(&wrote)? == 1;
    let previous = match opt_bytes(&old)?.map(decode) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            tracing::warn!(%user, "backend: previous record was corrupted: {e}");
            None
        }
    };
    let all = reply::user_records(&user, all)?;
    Ok(Written {
        user,
        previous,
        all,
        owed,
        wrote,
    })
}

impl Backend for RedisBackend {
    fn label(&self) -> String {
        self.keys.prefix().to_owned()
    }
}

impl Store for RedisBackend {
    fn write<'a>(
        &'a self,
        inc: &'a str,
        writes: Vec<(UserId, Stored)>,
        retention: Duration,
    ) -> BoxFuture<'a, BackendResult<Vec<Written>>> {
        self.link
            .run(move |mut c| async move {
                if writes.is_empty() {
                    return Ok(Vec::new());
                }
                // Every written user joins the index before the write (a
                // crash between leaves a harmless extra entry); a released
                // one leaves by `unindex`, once its change is announced.
                let mut users: Vec<&UserId> = writes.iter().map(|(u, _)| u).collect();
                users.sort();
                users.dedup();
                let index = self.keys.index(inc);
                let mut sadd = redis::cmd("SADD");
                sadd.arg(&index);
                for u in &users {
                    sadd.arg(u.as_str());
                }
                sadd.query_async::<Value>(&mut c).await?;
                let ms = millis(retention).to_string();
                let max = MAX_OWED.to_string();
                let cmds = writes
                    .iter()
                    .map(|(u, s)| {
                        let value = encode(s)?;
                        let seq = s.seq.to_string();
                        Ok(Self::eval(
                            &self.scripts.write,
                            &[self.keys.user(u), self.keys.owed(u)],
                            &[
                                inc.as_bytes(),
                                value.as_bytes(),
                                ms.as_bytes(),
                                seq.as_bytes(),
                                max.as_bytes(),
                            ],
                        ))
                    })
                    .collect::<Result<Vec<_>, BackendError>>()?;
                let replies = evals(&mut c, &self.scripts.write, &cmds).await?;
                let out = writes
                    .into_iter()
                    .zip(replies)
                    .map(|((u, _), v)| written(u, v))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(out)
            })
            .boxed()
    }

    fn replace<'a>(
        &'a self,
        user: &'a UserId,
        inc: &'a str,
        expected: u64,
        new: Stored,
        retention: Duration,
    ) -> BoxFuture<'a, BackendResult<Option<Replaced>>> {
        self.link
            .run(move |mut c| async move {
                let key = self.keys.user(user);
                // Read the value, check its sequence here, then set it only
                // if it is still exactly that string (the script never reads
                // the JSON).
                let current: Value = redis::cmd("HGET").arg(&key).arg(inc).query_async(&mut c).await?;
                let Some(raw) = opt_bytes(&current)? else {
                    return Ok(None);
                };
                match decode(raw) {
                    Ok(s) if s.seq == expected => {}
                    Ok(_) => return Ok(None),
                    Err(e) => {
                        tracing::warn!(%user, inc, "backend: not replacing a corrupted record: {e}");
                        return Ok(None);
                    }
                }
                let value = encode(&new)?;
                let ms = millis(retention).to_string();
                let (seq, max) = (new.seq.to_string(), MAX_OWED.to_string());
                let cmd = Self::eval(
                    &self.scripts.replace,
                    &[key, self.keys.owed(user)],
                    &[
                        inc.as_bytes(),
                        raw,
                        value.as_bytes(),
                        ms.as_bytes(),
                        seq.as_bytes(),
                        max.as_bytes(),
                    ],
                );
                let mut replies = evals(&mut c, &self.scripts.replace, &[cmd]).await?;
                match replies.pop() {
                    Some(Value::Nil) => Ok(None),
                    Some(v) => {
                        let mut parts = items(v)?.into_iter();
                        let (Some(all), Some(owed), None) = (parts.next(), parts.next(), parts.next())
                        else {
                            return Err(bad("replace: expected {all, owed}").into());
                        };
                        Ok(Some((
                            reply::user_records(user, all)?,
                            reply::owed_list(user, owed)?,
                        )))
                    }
                    None => Err(bad("replace: no reply").into()),
                }
            })
            .boxed()
    }

    fn read<'a>(&'a self, users: &'a [UserId]) -> BoxFuture<'a, BackendResult<Vec<UserRecords>>> {
        self.link
            .run(move |mut c| async move {
                let cmds: Vec<Cmd> = users
                    .iter()
                    .map(|u| redis::cmd("HGETALL").arg(self.keys.user(u)).clone())
                    .collect();
                let replies = each(pipeline(&mut c, &cmds).await?)?;
                let mut out = Vec::with_capacity(users.len());
                for (u, v) in users.iter().zip(replies) {
                    out.push(reply::user_records(u, v)?);
                }
                Ok(out)
            })
            .boxed()
    }

    fn memberships<'a>(
        &'a self,
        inc: &'a str,
        changes: Vec<(RoomId, UserId, bool)>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |mut c| async move {
                // The last change of a (room, user) wins, as if applied in order.
                let mut last: BTreeMap<(RoomId, UserId), bool> = BTreeMap::new();
                for (r, u, add) in changes {
                    last.insert((r, u), add);
                }
                let mut by_room: BTreeMap<&RoomId, (Vec<String>, Vec<String>)> = BTreeMap::new();
                for ((r, u), add) in &last {
                    let (adds, removes) = by_room.entry(r).or_default();
                    let member = format!("{u} {inc}");
                    if *add {
                        adds.push(member)
                    } else {
                        removes.push(member)
                    }
                }
                let mut cmds = Vec::new();
                for (room, (adds, removes)) in by_room {
                    let key = self.keys.members(room);
                    if !adds.is_empty() {
                        cmds.push(redis::cmd("SADD").arg(&key).arg(adds).clone());
                    }
                    if !removes.is_empty() {
                        cmds.push(redis::cmd("SREM").arg(&key).arg(removes).clone());
                    }
                }
                each(pipeline(&mut c, &cmds).await?)?;
                Ok(())
            })
            .boxed()
    }

    fn members<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, BackendResult<Vec<(UserId, Incarnation)>>> {
        self.link
            .run(move |mut c| async move {
                let v: Value = redis::cmd("SMEMBERS")
                    .arg(self.keys.members(room))
                    .query_async(&mut c)
                    .await?;
                let mut out = Vec::new();
                for m in items(v)? {
                    let parsed = bytes(&m)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|s| s.split_once(' '))
                        .and_then(|(u, i)| {
                            Some((UserId::new(u).ok()?, Incarnation::parse(i).ok()?))
                        });
                    match parsed {
                        Some(member) => out.push(member),
                        None => tracing::warn!(%room, "backend: skipping a bad room member"),
                    }
                }
                Ok(out)
            })
            .boxed()
    }

    fn mark_read<'a>(
        &'a self,
        marks: Vec<(RoomId, UserId, u64)>,
    ) -> BoxFuture<'a, BackendResult<Vec<(RoomId, UserId, u64)>>> {
        self.link
            .run(move |mut c| async move {
                // One script call per room (and per MAX_PIPELINE marks of
                // it), keeping the marks' order within a room.
                let mut by_room: BTreeMap<&RoomId, Vec<usize>> = BTreeMap::new();
                for (i, (r, _, _)) in marks.iter().enumerate() {
                    by_room.entry(r).or_default().push(i);
                }
                let mut calls: Vec<Vec<usize>> = Vec::new();
                let mut cmds = Vec::new();
                for (room, idx) in &by_room {
                    for chunk in idx.chunks(MAX_PIPELINE) {
                        let mut args: Vec<Vec<u8>> = Vec::with_capacity(chunk.len() * 2);
                        for &i in chunk {
                            args.push(marks[i].1.as_str().as_bytes().to_vec());
                            args.push(marks[i].2.to_string().into_bytes());
                        }
                        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                        cmds.push(Self::eval(
                            &self.scripts.mark_read,
                            &[self.keys.markers(room)],
                            &args,
                        ));
                        calls.push(chunk.to_vec());
                    }
                }
                let replies = evals(&mut c, &self.scripts.mark_read, &cmds).await?;
                let mut moved = Vec::new();
                for (chunk, v) in calls.iter().zip(replies) {
                    for pos in items(v)? {
                        let i = usize::try_from(int(&pos)?)
                            .ok()
                            .and_then(|p| chunk.get(p.checked_sub(1)?))
                            .ok_or_else(|| bad("mark_read: position out of range"))?;
                        moved.push(*i);
                    }
                }
                moved.sort_unstable();
                Ok(moved.into_iter().map(|i| marks[i].clone()).collect())
            })
            .boxed()
    }

    fn receipts<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, BackendResult<Vec<(UserId, u64)>>> {
        self.link
            .run(move |mut c| async move {
                let v: Value = redis::cmd("HGETALL")
                    .arg(self.keys.markers(room))
                    .query_async(&mut c)
                    .await?;
                let mut out = Vec::new();
                for (k, m) in pairs(v)? {
                    let user = bytes(&k)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|s| UserId::new(s).ok());
                    let marker = bytes(&m)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|s| s.parse::<u64>().ok());
                    match (user, marker) {
                        (Some(u), Some(m)) => out.push((u, m)),
                        _ => tracing::warn!(%room, "backend: skipping a bad read marker"),
                    }
                }
                Ok(out)
            })
            .boxed()
    }

    fn take_users_of<'a>(
        &'a self,
        dead: &'a str,
        n: usize,
    ) -> BoxFuture<'a, BackendResult<Vec<UserId>>> {
        self.link
            .run(move |mut c| async move {
                if n == 0 {
                    return Ok(Vec::new());
                }
                let index = self.keys.index(dead);
                // SPOP is atomic: two cleaners never get the same user. An
                // entry that is not a user id is dropped; pop again then, so
                // an empty answer always means an empty index.
                for _ in 0..4 {
                    let v: Value = redis::cmd("SPOP")
                        .arg(&index)
                        .arg(n.min(MAX_TAKE))
                        .query_async(&mut c)
                        .await?;
                    let popped = items(v)?;
                    if popped.is_empty() {
                        break;
                    }
                    let users: Vec<UserId> = popped
                        .iter()
                        .filter_map(|v| {
                            let u = bytes(v)
                                .and_then(|b| std::str::from_utf8(b).ok())
                                .and_then(|s| UserId::new(s).ok());
                            if u.is_none() {
                                tracing::warn!(dead, "backend: dropping a bad index entry");
                            }
                            u
                        })
                        .collect();
                    if !users.is_empty() {
                        return Ok(users);
                    }
                }
                // Empty: unregister (a second call, in the registry's slot).
                let cmd = Self::eval(
                    &self.scripts.unregister,
                    &[self.keys.registry(), self.keys.lease(dead)],
                    &[dead.as_bytes()],
                );
                evals(&mut c, &self.scripts.unregister, &[cmd]).await?;
                Ok(Vec::new())
            })
            .boxed()
    }

    fn unindex<'a>(&'a self, inc: &'a str, users: Vec<UserId>) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |mut c| async move {
                if users.is_empty() {
                    return Ok(());
                }
                let mut srem = redis::cmd("SREM");
                srem.arg(self.keys.index(inc));
                for u in &users {
                    srem.arg(u.as_str());
                }
                srem.query_async::<Value>(&mut c).await?;
                Ok(())
            })
            .boxed()
    }

    fn owed<'a>(&'a self, users: &'a [UserId]) -> BoxFuture<'a, BackendResult<Vec<Vec<Owed>>>> {
        self.link
            .run(move |mut c| async move {
                let cmds: Vec<Cmd> = users
                    .iter()
                    .map(|u| {
                        redis::cmd("LRANGE")
                            .arg(self.keys.owed(u))
                            .arg(0)
                            .arg(-1)
                            .clone()
                    })
                    .collect();
                let replies = each(pipeline(&mut c, &cmds).await?)?;
                Ok(users
                    .iter()
                    .zip(replies)
                    .map(|(u, v)| reply::owed_list(u, v))
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .boxed()
    }

    fn settle<'a>(
        &'a self,
        settled: Vec<(UserId, Vec<String>)>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |mut c| async move {
                let cmds: Vec<Cmd> = settled
                    .iter()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(u, ids)| {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(self.scripts.settle.get_hash())
                            .arg(1)
                            .arg(self.keys.owed(u));
                        for id in ids {
                            cmd.arg(id);
                        }
                        cmd
                    })
                    .collect();
                if !cmds.is_empty() {
                    evals(&mut c, &self.scripts.settle, &cmds).await?;
                }
                Ok(())
            })
            .boxed()
    }
}

impl Registry for RedisBackend {
    fn lease<'a>(
        &'a self,
        inc: &'a str,
        ttl: Duration,
        renew: bool,
    ) -> BoxFuture<'a, BackendResult<Leases>> {
        self.link
            .run(move |mut c| async move {
                let registry = self.keys.registry();
                let renew = Self::eval(
                    &self.scripts.lease,
                    &[self.keys.lease(inc), registry.clone()],
                    &[
                        inc.as_bytes(),
                        millis(ttl).to_string().as_bytes(),
                        if renew { b"1" } else { b"0" },
                    ],
                );
                let outcome = evals(&mut c, &self.scripts.lease, &[renew])
                    .await?
                    .pop()
                    .ok_or_else(|| bad("lease: no reply"))?;
                let lapsed = match int(&outcome)? {
                    0 => true,
                    1 | 2 => false,
                    n => return Err(bad(format!("lease: unexpected outcome {n}")).into()),
                };
                let members: Value = redis::cmd("SMEMBERS")
                    .arg(&registry)
                    .query_async(&mut c)
                    .await?;
                let mut incs = Vec::new();
                for m in items(members)? {
                    match bytes(&m)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|i| Incarnation::parse(i).ok())
                    {
                        Some(i) => incs.push(i),
                        None => tracing::warn!("backend: skipping a bad registry entry"),
                    }
                }
                let mut leases = Leases {
                    lapsed,
                    ..Leases::default()
                };
                // All in the registry's slot (`pipeline` cuts them in
                // pipelines of MAX_PIPELINE).
                let cmds: Vec<Cmd> = incs
                    .iter()
                    .map(|i| redis::cmd("PTTL").arg(self.keys.lease(i)).clone())
                    .collect();
                let found = each(pipeline(&mut c, &cmds).await?)?;
                if found.len() != incs.len() {
                    return Err(bad("lease: PTTL answered a different count").into());
                }
                for (i, v) in incs.into_iter().zip(found) {
                    // -2: no lease; -1: one without expiry (not ours, but
                    // alive); else what is left of it, in ms.
                    match int(&v)? {
                        -2 => leases.dead.push(i),
                        -1 => leases.live.push(i),
                        ms => {
                            let left = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                            leases.left.insert(i.clone(), left);
                            leases.live.push(i);
                        }
                    }
                }
                Ok(leases)
            })
            .boxed()
    }

    fn end_lease<'a>(&'a self, inc: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |mut c| async move {
                redis::cmd("DEL")
                    .arg(self.keys.lease(inc))
                    .query_async::<Value>(&mut c)
                    .await?;
                Ok(())
            })
            .boxed()
    }

    fn claim<'a>(
        &'a self,
        node: &'a str,
        inc: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<Incarnation>>> {
        self.link
            .run(move |mut c| async move {
                let v: Value = redis::cmd("SET")
                    .arg(self.keys.node(node))
                    .arg(inc)
                    .arg("GET")
                    .query_async(&mut c)
                    .await?;
                let previous = opt_string(&v)?.map(Incarnation::try_from).transpose();
                Ok(previous.map_err(BackendError::from)?)
            })
            .boxed()
    }

    fn save_resume<'a>(
        &'a self,
        node: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |mut c| async move {
                set_px(&mut c, self.keys.resume(node), payload, ttl).await
            })
            .boxed()
    }

    fn take_resume<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<Option<String>>> {
        self.link
            .run(move |mut c| async move {
                let v: Value = redis::cmd("GETDEL")
                    .arg(self.keys.resume(node))
                    .query_async(&mut c)
                    .await?;
                Ok(opt_string(&v)?)
            })
            .boxed()
    }

    fn revoke<'a>(
        &'a self,
        user: &'a UserId,
        before: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |mut c| async move {
                set_px(&mut c, self.keys.revoked(user), before, ttl).await
            })
            .boxed()
    }

    fn revoked<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, BackendResult<Option<u64>>> {
        self.link
            .run(move |mut c| async move {
                let v: Value = redis::cmd("GET")
                    .arg(self.keys.revoked(user))
                    .query_async(&mut c)
                    .await?;
                match opt_string(&v)? {
                    None => Ok(None),
                    Some(s) => s
                        .parse()
                        .map(Some)
                        .map_err(|_| bad("revoked: not a number").into()),
                }
            })
            .boxed()
    }

    fn hold<'a>(
        &'a self,
        role: &'a str,
        holder: &'a str,
        ttl: Duration,
        save: Option<String>,
    ) -> BoxFuture<'a, BackendResult<(bool, Option<String>)>> {
        self.link
            .run(move |mut c| async move {
                let ms = millis(ttl).to_string();
                let state = save.unwrap_or_default();
                let cmd = Self::eval(
                    &self.scripts.hold,
                    &[self.keys.role_holder(role), self.keys.role_state(role)],
                    &[holder.as_bytes(), ms.as_bytes(), state.as_bytes()],
                );
                let reply = evals(&mut c, &self.scripts.hold, &[cmd])
                    .await?
                    .pop()
                    .ok_or_else(|| bad("hold: no reply"))?;
                let mut parts = items(reply)?.into_iter();
                let (Some(held), Some(state), None) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad("hold: expected {held, state}").into());
                };
                let state = match state {
                    Value::Boolean(false) | Value::Nil => None,
                    v => opt_string(&v)?,
                };
                Ok((int(&held)? == 1, state))
            })
            .boxed()
    }
}

impl Bus for RedisBackend {
    fn publish<'a>(&'a self, messages: Vec<(Topic, Vec<u8>)>) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |mut c| async move {
                let cmds: Vec<Cmd> = messages
                    .iter()
                    .map(|(t, p)| {
                        redis::cmd("SPUBLISH")
                            .arg(self.keys.channel(t))
                            .arg(p)
                            .clone()
                    })
                    .collect();
                each(pipeline(&mut c, &cmds).await?)?;
                Ok(())
            })
            .boxed()
    }

    fn subscribe<'a>(&'a self, topics: Vec<Topic>) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |c| subscriptions(c, self.channels(&topics), true))
            .boxed()
    }

    fn unsubscribe<'a>(&'a self, topics: Vec<Topic>) -> BoxFuture<'a, BackendResult<()>> {
        self.link
            .run(move |c| subscriptions(c, self.channels(&topics), false))
            .boxed()
    }

    fn incoming(&self) -> mpsc::Receiver<Incoming> {
        self.inbox.take_receiver()
    }
}

impl EventLog for RedisBackend {
    fn append<'a>(
        &'a self,
        entries: Vec<Append>,
        keep: Keep,
    ) -> BoxFuture<'a, Result<u64, (BackendError, Vec<Append>)>> {
        async move {
            let mut by_shard: BTreeMap<u16, Vec<Append>> = BTreeMap::new();
            for a in entries {
                by_shard.entry(a.shard).or_default().push(a);
            }
            // One call per shard, so each is appended all or none and a
            // failed shard does not repeat the others.
            let calls = by_shard.into_iter().map(|(shard, batch)| async move {
                let b = &batch;
                let r = self
                    .link
                    .run(|mut c| async move {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(self.scripts.append.get_hash())
                            .arg(2)
                            .arg(self.keys.stream(shard))
                            .arg(self.keys.stream_last(shard))
                            .arg(keep.per_shard)
                            .arg(millis(keep.max_age));
                        for a in b {
                            cmd.arg(&a.kind).arg(&a.user).arg(&a.data);
                        }
                        let reply = evals(&mut c, &self.scripts.append, &[cmd])
                            .await?
                            .pop()
                            .ok_or_else(|| bad("append: no reply"))?;
                        let trimmed = items(reply)?.get(1).map(int).transpose()?.unwrap_or(0);
                        Ok(u64::try_from(trimmed).unwrap_or(0))
                    })
                    .await;
                r.map_err(|e| (e, batch))
            });
            let mut failed = Vec::new();
            let mut error = None;
            let mut trimmed = 0;
            for r in futures_util::future::join_all(calls).await {
                match r {
                    Ok(t) => trimmed += t,
                    Err((e, batch)) => {
                        failed.extend(batch);
                        error.get_or_insert(e);
                    }
                }
            }
            match error {
                None => Ok(trimmed),
                Some(e) => Err((e, failed)),
            }
        }
        .boxed()
    }

    fn read_stream<'a>(
        &'a self,
        after: Vec<(u16, StreamId)>,
        count: usize,
    ) -> BoxFuture<'a, BackendResult<Vec<ShardRead>>> {
        self.link
            .run(move |mut c| async move {
                let count = count.to_string();
                let cmds: Vec<Cmd> = after
                    .iter()
                    .map(|(shard, pos)| {
                        Self::eval(
                            &self.scripts.read,
                            &[self.keys.stream(*shard), self.keys.stream_last(*shard)],
                            &[pos.to_string().as_bytes(), count.as_bytes()],
                        )
                    })
                    .collect();
                let replies = evals(&mut c, &self.scripts.read, &cmds).await?;
                Ok(after
                    .iter()
                    .zip(replies)
                    .map(|((shard, _), v)| shard_read(*shard, v))
                    .collect::<Result<Vec<_>, _>>()?)
            })
            .boxed()
    }
}

/// One `{last, entries}` reply of `read.lua`. An entry that does
/// not parse is skipped (and logged), like a bad record.
fn shard_read(shard: u16, v: Value) -> Result<ShardRead, BackendError> {
    let id = |v: &Value| -> Result<StreamId, BackendError> {
        std::str::from_utf8(bytes(v).ok_or_else(|| bad("stream id: expected a string"))?)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("stream id: not <ms>-<seq>"))
    };
    let mut parts = items(v)?.into_iter();
    let (Some(last), Some(entries), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("read: expected {last, entries}"));
    };
    let mut out = ShardRead {
        shard,
        last: id(&last)?,
        entries: Vec::new(),
    };
    for entry in items(entries)? {
        let mut e = items(entry)?.into_iter();
        let (Some(eid), Some(fields)) = (e.next(), e.next()) else {
            return Err(bad("read: expected {id, fields}"));
        };
        let eid = id(&eid)?;
        let mut kind = None;
        let mut user = None;
        let mut data = None;
        for (f, v) in pairs(fields)? {
            let v = opt_string(&v)?;
            match bytes(&f) {
                Some(b"k") => kind = v,
                Some(b"u") => user = v,
                Some(b"d") => data = v,
                _ => {}
            }
        }
        match (kind, user, data) {
            (Some(kind), Some(user), Some(data)) => out.entries.push(StreamEntry {
                id: eid,
                kind,
                user,
                data,
            }),
            _ => {
                tracing::warn!(shard, id = %eid, "backend: skipping a stream entry without k, u and d")
            }
        }
    }
    Ok(out)
}

impl RedisBackend {
    fn channels(&self, topics: &[Topic]) -> Vec<String> {
        topics.iter().map(|t| self.keys.channel(t)).collect()
    }
}
