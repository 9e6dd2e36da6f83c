//! Commands out: pipelines (split per slot on a cluster), scripts (loaded
//! where missing) and subscriptions.

use std::collections::HashMap;

use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::cluster_routing::Slot;
use redis::{Cmd, ErrorKind, RedisError, Script, Value};

use super::link::{Conn, Failure, MAX_PIPELINE};

/// Subscriptions on a cluster go out this many at a time (one slot each).
const SUBSCRIBE_AT_ONCE: usize = 64;
/// A cluster batch runs at most this many one-slot pipelines at a time.
const PIPELINES_AT_ONCE: usize = 64;

/// Runs commands as pipelines of at most [`MAX_PIPELINE`]; one result per
/// command, in order (a server's error reply for one command is its `Err`).
///
/// A cluster pipeline must stay in one slot (redis-rs refuses a pipeline
/// that crosses slots), so there the commands are grouped by slot, each
/// group in order, and the groups run concurrently, at most
/// [`PIPELINES_AT_ONCE`] at a time. Commands of one key or channel share a
/// slot, so their order holds.
pub(super) async fn pipeline(
    conn: &mut Conn,
    cmds: &[Cmd],
) -> Result<Vec<redis::RedisResult<Value>>, RedisError> {
    if let Conn::Single(_) = conn {
        let mut out = Vec::with_capacity(cmds.len());
        for chunk in cmds.chunks(MAX_PIPELINE) {
            out.extend(one_pipeline(conn, chunk.iter()).await?);
        }
        return Ok(out);
    }
    let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
    for (i, c) in cmds.iter().enumerate() {
        by_slot.entry(slot_of(c)).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = by_slot
        .into_values()
        .flat_map(|idx| {
            idx.chunks(MAX_PIPELINE)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let runs = futures_util::stream::iter(groups.into_iter().map(|idx| {
        let mut conn = conn.clone();
        async move {
            let replies = one_pipeline(&mut conn, idx.iter().map(|&i| &cmds[i])).await;
            replies.map(|r| (idx, r))
        }
    }))
    .buffer_unordered(PIPELINES_AT_ONCE)
    .collect::<Vec<_>>()
    .await;
    let mut out: Vec<Option<redis::RedisResult<Value>>> = (0..cmds.len()).map(|_| None).collect();
    for run in runs {
        let (idx, replies) = run?;
        for (i, r) in idx.into_iter().zip(replies) {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| {
            r.ok_or_else(|| {
                RedisError::from((ErrorKind::UnexpectedReturnType, "pipeline reply missing"))
            })
        })
        .collect()
}

/// One pipeline (one slot, on a cluster).
///
/// After a failover the replies may be `MOVED` (or `ASK`): those commands did
/// not run. redis-rs follows a redirect only for an error it sees itself, and
/// a pipeline's per-command errors are ours, so one plain command on the slot
/// lets it learn the new owner (it refreshes its slot map), and the
/// redirected commands run once more; what is still redirected is returned.
async fn one_pipeline<'c>(
    conn: &mut Conn,
    cmds: impl ExactSizeIterator<Item = &'c Cmd> + Clone,
) -> Result<Vec<redis::RedisResult<Value>>, RedisError> {
    let mut replies = run_pipeline(conn, cmds.clone()).await?;
    let redirected: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(e) if redirect(e)))
        .map(|(i, _)| i)
        .collect();
    let Some(&first) = redirected.first() else {
        return Ok(replies);
    };
    let cmds: Vec<&Cmd> = cmds.collect();
    let key = key_of(cmds[first]).unwrap_or_default().to_vec();
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<Value>(conn)
        .await?;
    let again = run_pipeline(conn, redirected.iter().map(|&i| cmds[i])).await?;
    for (i, r) in redirected.into_iter().zip(again) {
        replies[i] = r;
    }
    Ok(replies)
}

fn redirect(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(redis::ServerErrorKind::Moved | redis::ServerErrorKind::Ask)
    )
}

async fn run_pipeline<'c>(
    conn: &mut Conn,
    cmds: impl ExactSizeIterator<Item = &'c Cmd>,
) -> Result<Vec<redis::RedisResult<Value>>, RedisError> {
    let n = cmds.len();
    let mut pipe = redis::pipe();
    for c in cmds {
        pipe.add_command(c.clone());
    }
    let replies: Vec<redis::RedisResult<Value>> = pipe.ignore_errors().query_async(conn).await?;
    if replies.len() != n {
        return Err(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "pipeline answered a different number of replies",
        )));
    }
    Ok(replies)
}

/// The key of one of our commands: the first argument, or the first key of
/// an `EVALSHA`.
fn key_of(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(b) => b,
        _ => &[][..],
    });
    let name = args.next().unwrap_or_default();
    if name.eq_ignore_ascii_case(b"EVALSHA") {
        args.nth(2)
    } else {
        args.next()
    }
}

/// The slot of one of our commands (see [`key_of`]).
fn slot_of(cmd: &Cmd) -> Slot {
    Slot::for_key(key_of(cmd).unwrap_or_default())
}

/// [`pipeline`] of `EVALSHA`s of one script, loading it where Redis does not
/// have it (a new or restarted node) and running again only the commands
/// that did not run.
pub(super) async fn evals(
    conn: &mut Conn,
    script: &Script,
    cmds: &[Cmd],
) -> Result<Vec<Value>, RedisError> {
    let mut out = pipeline(conn, cmds).await?;
    let missing: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript)))
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        // On a cluster `SCRIPT LOAD` goes to every node.
        script.load_async(conn).await?;
        let again: Vec<Cmd> = missing.iter().map(|&i| cmds[i].clone()).collect();
        for (i, r) in missing.into_iter().zip(pipeline(conn, &again).await?) {
            out[i] = r;
        }
    }
    out.into_iter().collect()
}

/// A command's reply, or its error.
pub(super) fn each(replies: Vec<redis::RedisResult<Value>>) -> Result<Vec<Value>, RedisError> {
    replies.into_iter().collect()
}

/// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) one channel per command, so each goes
/// to its own slot; returns once every confirmation arrived.
pub(super) async fn subscriptions(
    conn: Conn,
    channels: Vec<String>,
    on: bool,
) -> Result<(), Failure> {
    match conn {
        Conn::Single(_) => {
            let name = if on { "SSUBSCRIBE" } else { "SUNSUBSCRIBE" };
            let cmds: Vec<Cmd> = channels
                .iter()
                .map(|ch| redis::cmd(name).arg(ch).clone())
                .collect();
            let mut conn = conn;
            each(pipeline(&mut conn, &cmds).await?)?;
        }
        Conn::Cluster(c) => {
            for chunk in channels.chunks(SUBSCRIBE_AT_ONCE) {
                let calls = chunk.iter().map(|ch| {
                    let mut c = c.clone();
                    async move {
                        if on {
                            c.ssubscribe(ch).await
                        } else {
                            c.sunsubscribe(ch).await
                        }
                    }
                });
                for r in join_all(calls).await {
                    r?;
                }
            }
        }
    }
    Ok(())
}
