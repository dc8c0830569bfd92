//! IP geolocation through an ipinfo-compatible API, with a bounded 24-hour cache per IP.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use lru::LruCache;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::config::Secret;

/// A lookup that takes longer is recorded as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Locations are kept this long per IP.
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// At most this many IPs are kept (least recently used go first).
const CACHE_CAPACITY: usize = 10_000;

/// Ranges that are not on the public internet: no lookup, the location is "Local".
const NON_PUBLIC: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "2001:db8::/32",
];

pub fn is_public(ip: IpAddr) -> bool {
    let ip = super::canonical(ip);
    !NON_PUBLIC
        .iter()
        .filter_map(|net| net.parse::<IpNet>().ok())
        .any(|net| net.contains(&ip))
}

/// What is stored for an address that is not on the public internet.
pub fn local_location(ip: IpAddr) -> Value {
    json!({"ip": ip.to_string(), "bogon": true, "city": "Local", "region": "Local", "country": "Local", "loc": "0,0"})
}

type Entry = (Instant, Arc<OnceCell<Value>>);

pub struct GeoLocator {
    client: reqwest::Client,
    base_url: String,
    token: Option<Secret>,
    cache: Mutex<LruCache<IpAddr, Entry>>,
}

/// Where an address is, as far as can be said without waiting.
pub enum Located {
    /// Final: private address, no token, or cached.
    Known(Value),
    /// A lookup is needed; record this for now and complete it with `lookup`.
    Pending(Value),
}

impl GeoLocator {
    pub fn new(base_url: &str, token: Option<Secret>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(LOOKUP_TIMEOUT)
            .user_agent(concat!("authflow/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// Without a network call: the final location, or a placeholder to complete later.
    pub fn locate_now(&self, ip: IpAddr) -> Located {
        let ip = super::canonical(ip);
        if !is_public(ip) {
            return Located::Known(local_location(ip));
        }
        if self.token.is_none() {
            return Located::Known(json!({"ip": ip.to_string()}));
        }
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .and_then(|(_, cell)| cell.get().cloned());
        match cached {
            Some(location) => {
                metrics::counter!("authflow_geo_cache_hits_total").increment(1);
                Located::Known(location)
            }
            None => Located::Pending(json!({"ip": ip.to_string()})),
        }
    }

    /// The location of a public address: one request per IP however many sign-ins ask at
    /// once, then the cached answer for 24 hours. A failure is `{"ip", "error"}` and is not
    /// cached.
    pub async fn lookup(&self, ip: IpAddr) -> Value {
        let ip = super::canonical(ip);
        let cell = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            match cache.get(&ip) {
                Some((at, cell)) if at.elapsed() < CACHE_TTL => Arc::clone(cell),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    cache.put(ip, (Instant::now(), Arc::clone(&cell)));
                    cell
                }
            }
        };
        if cell.get().is_some() {
            metrics::counter!("authflow_geo_cache_hits_total").increment(1);
        }
        let location = cell.get_or_init(|| self.fetch(ip)).await.clone();
        if location.get("error").is_some() {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.peek(&ip).is_some_and(|(_, c)| Arc::ptr_eq(c, &cell)) {
                cache.pop(&ip);
            }
        }
        location
    }

    async fn fetch(&self, ip: IpAddr) -> Value {
        let Some(token) = &self.token else {
            return json!({"ip": ip.to_string()});
        };
        let location = self.fetch_with(ip, token).await;
        let result = if location.get("error").is_some() {
            "error"
        } else {
            "ok"
        };
        metrics::counter!("authflow_geo_lookups_total", "result" => result).increment(1);
        location
    }

    async fn fetch_with(&self, ip: IpAddr, token: &Secret) -> Value {
        let failed = |reason: String| json!({"ip": ip.to_string(), "error": reason});
        let response = self
            .client
            .get(format!("{}/{ip}", self.base_url))
            .query(&[("token", token.expose())])
            .send()
            .await;
        let response = match response {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return failed(format!("lookup answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => return failed("lookup timed out".into()),
            Err(_) => return failed("lookup failed".into()),
        };
        match response.json::<Value>().await {
            Ok(Value::Object(mut map)) => {
                map.insert("ip".into(), Value::String(ip.to_string()));
                Value::Object(map)
            }
            Ok(_) | Err(_) => failed("lookup answered something other than a JSON object".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn local_addresses_are_known_without_a_call_and_no_token_means_no_lookup() {
        let geo = GeoLocator::new("http://127.0.0.1:9", None).unwrap();
        let Located::Known(local) = geo.locate_now("10.0.0.7".parse().unwrap()) else {
            panic!("a private address needs no lookup");
        };
        assert_eq!(local["city"], "Local");
        assert_eq!(local["bogon"], true);
        let Located::Known(public) = geo.locate_now("8.8.8.8".parse().unwrap()) else {
            panic!("without a token there is no lookup");
        };
        assert_eq!(public, json!({"ip": "8.8.8.8"}));
    }
}
