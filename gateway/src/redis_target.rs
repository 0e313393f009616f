//! Reaching Redis, for the store and the bus alike: one server, or a Cluster found from
//! seed nodes.
//!
//! Commands go through [`RedisConnection`], which reconnects by itself (a connection
//! manager on one server; a cluster connection following the slot map on a Cluster).
//! Pub/sub uses a [`PushConnection`] whose messages arrive on a channel: plain pub/sub on
//! one server, sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`) on a Cluster, so a group's
//! channel lives on the shard that holds the group's keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    RedisFuture, RedisResult, Value,
};
use tokio::sync::mpsc::UnboundedSender;

/// A command waits this long for Redis before failing, so a send is refused as
/// `unavailable` (which clients retry) instead of hanging while Redis is down.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection attempts per failed command before it reports the failure.
const RETRIES: usize = 2;

/// Commands this process sent to Redis for the store and publishing (a script call counts
/// once, a pipeline as its commands), for benchmarks and metrics.
pub static COMMANDS_SENT: AtomicU64 = AtomicU64::new(0);

/// Where the shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, `redis://HOST:PORT`.
    Server(String),
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<String>),
}

/// A connection for commands; clones share it.
#[derive(Clone)]
pub enum RedisConnection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A RESP3 connection that delivers pub/sub messages as pushes on a channel, plus a
/// `Disconnection` push when it is lost.
pub enum PushConnection {
    Server(redis::aio::MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisTarget {
    /// A connection for commands.
    pub async fn connect(&self) -> RedisResult<RedisConnection> {
        match self {
            RedisTarget::Server(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(RETRIES);
                let manager = redis::Client::open(url.as_str())?
                    .get_connection_manager_with_config(config)
                    .await?;
                Ok(RedisConnection::Server(manager))
            }
            RedisTarget::Cluster(seeds) => Ok(RedisConnection::Cluster(
                cluster_builder(seeds)
                    .build()?
                    .get_async_connection()
                    .await?,
            )),
        }
    }

    /// A connection whose subscriptions' messages arrive on `pushes`.
    pub async fn connect_pushes(
        &self,
        pushes: UnboundedSender<PushInfo>,
    ) -> RedisResult<PushConnection> {
        match self {
            RedisTarget::Server(url) => {
                let info = url.as_str().into_connection_info()?;
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_push_sender(pushes);
                let connection = redis::Client::open(info.set_redis_settings(resp3))?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(PushConnection::Server(connection))
            }
            RedisTarget::Cluster(seeds) => Ok(PushConnection::Cluster(
                cluster_builder(seeds)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .build()?
                    .get_async_connection()
                    .await?,
            )),
        }
    }
}

fn cluster_builder(seeds: &[String]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(RETRIES as u32)
}

impl RedisConnection {
    /// Publishes on a channel: `PUBLISH`, or `SPUBLISH` on a Cluster.
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> RedisResult<()> {
        let command = match self {
            RedisConnection::Server(_) => "PUBLISH",
            RedisConnection::Cluster(_) => "SPUBLISH",
        };
        redis::cmd(command)
            .arg(channel)
            .arg(payload)
            .query_async(self)
            .await
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        COMMANDS_SENT.fetch_add(1, Ordering::Relaxed);
        match self {
            RedisConnection::Server(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        COMMANDS_SENT.fetch_add(count as u64, Ordering::Relaxed);
        match self {
            RedisConnection::Server(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Server(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

impl PushConnection {
    /// `SUBSCRIBE`, or `SSUBSCRIBE` on a Cluster.
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            PushConnection::Server(c) => c.subscribe(channel).await,
            PushConnection::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    /// `UNSUBSCRIBE`, or `SUNSUBSCRIBE` on a Cluster.
    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            PushConnection::Server(c) => c.unsubscribe(channel).await,
            PushConnection::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// A round trip, to notice a silently dead connection.
    pub async fn ping(&mut self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        match self {
            PushConnection::Server(c) => ping.query_async(c).await,
            PushConnection::Cluster(c) => ping.query_async(c).await,
        }
    }
}
