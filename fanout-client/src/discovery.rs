//! How a [`crate::Subscriber`] finds the shards of a fanout cluster.
//!
//! Each shard serves, on every stream opened to it, only the Kafka partitions it owns, so a
//! subscriber holds one stream per shard. A [`Discovery`] says where the shards are: a fixed
//! list, every address of a DNS name, or the list a fanout admin API gives.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::Deserialize;
use tonic::transport::Uri;

use crate::Error;
use crate::admin::{AdminClient, AdminError};

/// Where the shards of a fanout cluster are, as a list of gRPC endpoints.
///
/// `Dns` and `Admin` are asked again every
/// [`rediscover_interval`](crate::SubscriberConfig::rediscover_interval): the subscriber
/// opens streams to shards that appeared and closes those of shards that went away.
///
/// Parsed from a string ([`FromStr`], for command lines and environment variables):
///
/// | string | discovery |
/// |---|---|
/// | `http://a:50051` or `http://a:50051,http://b:50051` | `Static`: these endpoints |
/// | `dns://fanout-headless:50051` | `Dns`: every address of the name, on that port |
/// | `shards+http://fanout:8080` (or `shards+https://…`) | `Admin`: what `GET /v1/shards` lists |
///
/// A string never carries the admin API's token: give it with [`Discovery::with_token`].
///
/// ```
/// use fanout_client::Discovery;
///
/// let d: Discovery = "dns://fanout-headless:50051".parse()?;
/// assert_eq!(d, Discovery::Dns { host: "fanout-headless".into(), port: 50051 });
/// # Ok::<(), fanout_client::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum Discovery {
    /// These gRPC endpoints, e.g. `http://127.0.0.1:50051`; never asked again.
    Static(Vec<String>),
    /// Every A and AAAA record of `host` (a Kubernetes headless Service has one per ready
    /// pod), each reached as `http://<address>:<port>`.
    Dns {
        /// The name to resolve.
        host: String,
        /// The shards' gRPC port.
        port: u16,
    },
    /// The shards the fanout admin API at `url` lists (`GET <url>/v1/shards`), each reached
    /// as `http://<grpc_address>`; shards without a gRPC address are left out.
    Admin {
        /// The admin API's address, e.g. `http://fanout:8080`.
        url: String,
        /// Its bearer token, if it requires one.
        token: Option<String>,
    },
}

impl Discovery {
    /// Sets the admin API's bearer token of an `Admin` discovery; any other is returned as it
    /// is.
    pub fn with_token(self, token: Option<String>) -> Self {
        match self {
            Discovery::Admin { url, .. } => Discovery::Admin { url, token },
            other => other,
        }
    }

    /// True if asking again may give other shards (`Dns`, `Admin`).
    pub fn is_dynamic(&self) -> bool {
        !matches!(self, Discovery::Static(_))
    }

    /// The shards' gRPC endpoints now, without duplicates: `Static` in the order given, the
    /// others sorted. May be empty (`Admin` listing no shard with a gRPC address).
    pub async fn resolve(&self) -> Result<Vec<String>, Error> {
        match self {
            Discovery::Static(endpoints) => {
                if endpoints.is_empty() {
                    return Err(Error::BadEndpoint("no endpoint given".into()));
                }
                let mut out: Vec<String> = Vec::with_capacity(endpoints.len());
                for e in endpoints {
                    let e = check_endpoint(e)?;
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
                Ok(out)
            }
            Discovery::Dns { host, port } => {
                let addrs = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot resolve {host}: {e}")))?;
                Ok(usable(addrs.map(|a| format!("http://{a}")), self))
            }
            Discovery::Admin { url, token } => {
                let client =
                    AdminClient::new(url, token.clone()).map_err(|e| admin_error(url, e))?;
                let answer = client
                    .get("/v1/shards")
                    .await
                    .map_err(|e| admin_error(url, e))?;
                let shards: Vec<Shard> = serde_json::from_value(answer).map_err(|e| {
                    Error::Unavailable(format!("{url}/v1/shards is not a list of shards: {e}"))
                })?;
                Ok(usable(
                    shards
                        .into_iter()
                        .filter_map(|s| s.grpc_address)
                        .filter(|a| !a.is_empty())
                        .map(|a| {
                            if a.contains("://") {
                                a
                            } else {
                                format!("http://{a}")
                            }
                        }),
                    self,
                ))
            }
        }
    }
}

/// One entry of `GET /v1/shards`, as far as discovery needs it.
#[derive(Debug, Deserialize)]
struct Shard {
    /// Where subscribers reach the shard's gRPC service (`host:port`); empty or absent when
    /// the shard does not serve gRPC.
    #[serde(default)]
    grpc_address: Option<String>,
}

/// The valid endpoints among `found`, sorted, without duplicates; the others are logged.
fn usable(found: impl Iterator<Item = String>, from: &Discovery) -> Vec<String> {
    let mut out: Vec<String> = found
        .filter(|e| match check_endpoint(e) {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(discovery = %from, error = %err, "skipping a shard");
                false
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn admin_error(url: &str, e: AdminError) -> Error {
    let msg = format!("{url}/v1/shards: {e}");
    match e {
        AdminError::Refused {
            status: 401 | 403, ..
        } => Error::Unauthorized(msg),
        AdminError::Refused { status, .. } if (400..500).contains(&status) => Error::Refused(msg),
        _ => Error::Unavailable(msg),
    }
}

fn bad(input: &str, why: &str) -> Error {
    Error::BadEndpoint(format!("{input:?}: {why}"))
}

/// A gRPC endpoint: `http://` or `https://`, a host, an optional port, no path.
fn check_endpoint(e: &str) -> Result<String, Error> {
    const FORM: &str = "a gRPC endpoint looks like http://<host>:<port>";
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        return Err(bad(e, FORM));
    }
    let uri: Uri = e.parse().map_err(|_| bad(e, FORM))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad(e, "no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad(e, "a gRPC endpoint takes no user name"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(e, "a gRPC endpoint has no path"));
    }
    Ok(e.to_owned())
}

/// `host:port` of `dns://host:port` (`[v6]:port` for an IPv6 address).
fn parse_dns(input: &str, rest: &str) -> Result<Discovery, Error> {
    const FORM: &str = "a DNS discovery looks like dns://<name>:<port>";
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@', ',']) {
        return Err(bad(input, FORM));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad(input, FORM))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(bad(input, "not an IPv6 address between [ ]"));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad(input, "no port"))?;
        (host, port)
    } else {
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad(input, "no port"))?;
        if host.contains(':') {
            return Err(bad(input, "write an IPv6 address between [ ]"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad(input, "no name"));
    }
    if !host.contains(':')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(bad(input, "not a DNS name"));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(bad(input, "the port is a number from 1 to 65535")),
    };
    Ok(Discovery::Dns {
        host: host.to_owned(),
        port,
    })
}

/// The admin API's address of `shards+http(s)://…`.
fn parse_admin(input: &str, url: &str) -> Result<Discovery, Error> {
    const FORM: &str = "an admin discovery looks like shards+http://<host>:<port>";
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad(input, FORM));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(input, &format!("{FORM} ({e})")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad(input, "no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(input, "the admin API's address takes no query"));
    }
    Ok(Discovery::Admin {
        url: url.trim_end_matches('/').to_owned(),
        token: None,
    })
}

impl FromStr for Discovery {
    type Err = Error;

    /// `dns://<name>:<port>`, `shards+http(s)://<host>:<port>`, or a comma-separated list of
    /// `http(s)://<host>:<port>` endpoints.
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::BadEndpoint("no endpoint given".into()));
        }
        if let Some(rest) = s.strip_prefix("dns://") {
            return parse_dns(s, rest);
        }
        if let Some(url) = s.strip_prefix("shards+") {
            return parse_admin(s, url);
        }
        let mut endpoints: Vec<String> = Vec::new();
        for e in s.split(',').map(str::trim) {
            if e.is_empty() {
                return Err(bad(s, "an empty endpoint in the list"));
            }
            if e.starts_with("dns://") || e.starts_with("shards+") {
                return Err(bad(
                    s,
                    "dns:// and shards+http:// name all the shards: they stand alone, not in a list",
                ));
            }
            let e = check_endpoint(e)?;
            if !endpoints.contains(&e) {
                endpoints.push(e);
            }
        }
        Ok(Discovery::Static(endpoints))
    }
}

/// The string [`FromStr`] reads back (without the token).
impl fmt::Display for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discovery::Static(endpoints) => f.write_str(&endpoints.join(",")),
            Discovery::Dns { host, port } if host.contains(':') => {
                write!(f, "dns://[{host}]:{port}")
            }
            Discovery::Dns { host, port } => write!(f, "dns://{host}:{port}"),
            Discovery::Admin { url, .. } => write!(f, "shards+{url}"),
        }
    }
}

/// Like a derived `Debug`, without the token.
impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discovery::Static(endpoints) => f.debug_tuple("Static").field(endpoints).finish(),
            Discovery::Dns { host, port } => f
                .debug_struct("Dns")
                .field("host", host)
                .field("port", port)
                .finish(),
            Discovery::Admin { url, token } => f
                .debug_struct("Admin")
                .field("url", url)
                .field("token", &token.as_ref().map(|_| "…"))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests;
