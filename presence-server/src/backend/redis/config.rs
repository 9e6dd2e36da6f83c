//! Where Redis is, and how its clients are built (RESP3: the sharded
//! subscriptions arrive as pushes on the same connections as commands).

use std::time::Duration;

use redis::{IntoConnectionInfo, ProtocolVersion, RedisError};

use super::link::PushHandler;
use crate::backend::CALL_TIMEOUT;

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis: `redis://host:port[/db]`.
    Single(String),
    /// A Redis Cluster: seed nodes as `host:port` (or `redis://host:port`);
    /// the others are discovered.
    Cluster(Vec<String>),
}

/// How to reach Redis, and the namespace of one presence cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// One Redis or a Cluster.
    pub target: RedisTarget,
    /// Prefix of every key and channel; the nodes of one presence cluster
    /// share it. Non-empty, no whitespace, no braces. Default `presence`.
    pub prefix: String,
}

impl RedisConfig {
    /// One Redis at `url`, default prefix.
    pub fn single(url: impl Into<String>) -> Self {
        Self {
            target: RedisTarget::Single(url.into()),
            prefix: "presence".into(),
        }
    }

    /// A Redis Cluster reached through `seeds` (`host:port`), default prefix.
    pub fn cluster(seeds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            target: RedisTarget::Cluster(seeds.into_iter().map(Into::into).collect()),
            prefix: "presence".into(),
        }
    }
}

/// Why a Redis backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// A URL or seed does not parse.
    #[error("bad Redis address: {0}")]
    Url(#[source] RedisError),
    /// A Cluster needs at least one seed.
    #[error("a Redis Cluster needs at least one seed address")]
    NoSeeds,
    /// The prefix is empty or holds whitespace or braces.
    #[error("the Redis prefix must be non-empty and hold no whitespace or braces, got {0:?}")]
    BadPrefix(String),
}

pub(super) fn single_client(url: &str) -> Result<redis::Client, RedisError> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

pub(super) fn cluster_client(
    seeds: &[String],
    pushes: PushHandler,
) -> Result<redis::cluster::ClusterClient, RedisError> {
    let urls: Vec<String> = seeds
        .iter()
        .map(|s| {
            if s.contains("://") {
                s.clone()
            } else {
                format!("redis://{s}")
            }
        })
        .collect();
    redis::cluster::ClusterClientBuilder::new(urls)
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(pushes.into_sender())
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(CALL_TIMEOUT)
        .retries(2)
        .min_retry_wait(20)
        .max_retry_wait(500)
        .build()
}
