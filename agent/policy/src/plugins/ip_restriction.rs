use std::net::IpAddr;

use fleetgate_shared::model::{ClientIpSource, IpRestriction as Config, Phase};
use http::{HeaderMap, StatusCode};
use ipnet::IpNet;

use crate::context::{RequestCtx, Verdict, reject};
use crate::plugin::AnswersAtOnce;

/// Allow and deny lists of networks, checked against the client IP.
#[derive(Debug)]
pub struct IpRestriction {
    name: String,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    source: ClientIpSource,
}

fn parse(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{text}` is not an IP network"))
        })
        .collect()
}

impl IpRestriction {
    pub fn build(name: &str, config: &Config) -> Result<Self, String> {
        Ok(Self {
            name: name.to_owned(),
            allow: parse(&config.allow)?,
            deny: parse(&config.deny)?,
            source: config.client_ip.clone(),
        })
    }

    fn permits(&self, ip: IpAddr) -> bool {
        // A forwarding header may carry ::ffff:a.b.c.d too; the peer already comes canonical.
        let ip = crate::context::canonical_ip(ip);
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// The client IP per `source`: the TCP peer, or the address `trusted_hops` from the right of
/// a forwarding header (1 = the rightmost entry, added by the proxy just in front of us). A
/// header with fewer entries than that, or an unparsable entry, falls back to the peer: a
/// client cannot pick its own address by sending a short header.
pub fn client_ip(source: &ClientIpSource, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    let ClientIpSource::Header { name, trusted_hops } = source else {
        return peer;
    };
    let entries: Vec<&str> = headers
        .get_all(name.as_str())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let hops = usize::from(*trusted_hops);
    if hops == 0 || entries.len() < hops {
        return peer;
    }
    entries[entries.len() - hops].parse().unwrap_or(peer)
}

impl AnswersAtOnce for IpRestriction {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Authz
    }

    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let ip = client_ip(&self.source, &ctx.headers, ctx.peer_ip());
        if self.permits(ip) {
            Verdict::Continue
        } else {
            Verdict::Respond(reject(
                StatusCode::FORBIDDEN,
                "ip_denied",
                &format!("client address {ip} is not allowed"),
                &self.name,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(allow: &[&str], deny: &[&str]) -> IpRestriction {
        let config = Config {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            client_ip: ClientIpSource::Peer,
        };
        IpRestriction::build("ip", &config).unwrap()
    }

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_list_allows_the_rest() {
        let p = plugin(&["10.0.0.0/8"], &["10.0.0.66"]);
        assert!(p.permits("10.1.2.3".parse().unwrap()));
        assert!(!p.permits("10.0.0.66".parse().unwrap()));
        assert!(!p.permits("192.0.2.1".parse().unwrap()));
        let deny_only = plugin(&[], &["192.0.2.0/24"]);
        assert!(deny_only.permits("198.51.100.1".parse().unwrap()));
        assert!(
            !deny_only.permits("::ffff:192.0.2.9".parse().unwrap()),
            "IPv4-mapped IPv6 is matched as IPv4"
        );
    }

    #[test]
    fn the_client_ip_counts_trusted_hops_from_the_right() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
        let peer: IpAddr = "10.0.0.3".parse().unwrap();
        let source = |hops| ClientIpSource::Header {
            name: "x-forwarded-for".into(),
            trusted_hops: hops,
        };
        assert_eq!(
            client_ip(&source(1), &headers, peer),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&source(2), &headers, peer),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&source(3), &headers, peer),
            peer,
            "a short header cannot pick the address"
        );
        assert_eq!(client_ip(&ClientIpSource::Peer, &headers, peer), peer);
    }
}
