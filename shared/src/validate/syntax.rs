//! Checks of single values: names, hostnames, addresses, header names, regexes, URLs.
//!
//! Each returns `Err(message)` with a message that says what was expected, so that callers only
//! add the field path.

use std::net::{IpAddr, SocketAddr};

/// Compiled regexes larger than this are refused: a pathological pattern must fail validation,
/// not exhaust an agent's memory when every agent compiles it (Cloudflare's 2019 outage).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Resource names: lower-case letters, digits, `-` and `.`, starting and ending with a letter
/// or digit, at most 253 bytes. They appear in URLs, metrics labels and file names.
pub fn resource_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "is {} bytes long; at most 253 are allowed",
            name.len()
        ));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !name.chars().all(ok_char) || !name.starts_with(alnum) || !name.ends_with(alnum) {
        return Err(format!(
            "`{name}` is not a valid name: use lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label key or value: non-empty, at most 63 bytes, letters, digits, `-`, `_`, `.` and `/`.
pub fn label(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 63 {
        return Err(format!("`{text}` must be 1 to 63 bytes long"));
    }
    if !text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(format!(
            "`{text}` may only contain letters, digits, `-`, `_`, `.` and `/`"
        ));
    }
    Ok(())
}

/// An exact hostname (lower case, RFC 1123 labels) or an IP address.
pub fn hostname(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    dns_name(host)
}

/// A DNS name, lower case, without a trailing dot.
pub fn dns_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("hostname must not be empty".into());
    }
    if host.len() > 253 {
        return Err(format!(
            "hostname is {} bytes long; at most 253 are allowed",
            host.len()
        ));
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "`{host}` must be lower case (hostnames are matched case-insensitively)"
        ));
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "`{host}` is not a valid hostname: each dot-separated label must be 1 to 63 letters, digits or inner `-`"
            ));
        }
    }
    Ok(())
}

/// An exact hostname, or `*.` followed by one: a wildcard for exactly one more label.
pub fn host_pattern(host: &str) -> Result<(), String> {
    match host.strip_prefix("*.") {
        Some(rest) => {
            if rest.contains('*') {
                return Err(format!(
                    "`{host}`: only one leading `*.` is allowed in a wildcard"
                ));
            }
            dns_name(rest).map_err(|e| format!("wildcard `{host}`: {e}"))
        }
        None if host.contains('*') => Err(format!(
            "`{host}`: a wildcard must be a leading `*.` (as in `*.example.com`)"
        )),
        None => hostname(host),
    }
}

/// Whether a certificate name (exact or `*.` wildcard) covers a host pattern.
pub fn name_covers(cert_name: &str, host: &str) -> bool {
    if cert_name.eq_ignore_ascii_case(host) {
        return true;
    }
    match cert_name.strip_prefix("*.") {
        Some(suffix) => host.split_once('.').is_some_and(|(first, rest)| {
            first != "*" && !first.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }),
        None => false,
    }
}

/// `host:port` with an IP address (`[::1]:80` for IPv6) or a hostname, and a port 1..=65535.
pub fn address(address: &str) -> Result<(), String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(format!("`{address}`: port 0 is not a usable port"))
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` is not an address: expected host:port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{address}`: `{port}` is not a port (1 to 65535)"))?;
    if port == 0 {
        return Err(format!("`{address}`: port 0 is not a usable port"));
    }
    if host.contains(':') {
        return Err(format!(
            "`{address}`: an IPv6 address must be in brackets, as in [::1]:{port}"
        ));
    }
    dns_name(host).map_err(|e| format!("`{address}`: {e}"))
}

/// An HTTP field name (RFC 9110 token).
pub fn header_name(name: &str) -> Result<(), String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("`{name}` is not a valid header name"));
    }
    Ok(())
}

/// An HTTP field value: visible characters, spaces and tabs only (no CR or LF).
pub fn header_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err("header values must not contain CR, LF or NUL".into());
    }
    Ok(())
}

/// An HTTP method token, upper case.
pub fn method(method: &str) -> Result<(), String> {
    if method.is_empty() || !method.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "`{method}` is not an upper-case HTTP method such as GET or POST"
        ));
    }
    Ok(())
}

/// A regular expression the agent can compile within [`REGEX_SIZE_LIMIT`].
pub fn regex(pattern: &str) -> Result<(), String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(|_| ())
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("regex compiles to more than {limit} bytes; simplify it")
            }
            other => {
                let text = other.to_string();
                let last = text.lines().last().unwrap_or_default().trim();
                format!(
                    "invalid regex: {}",
                    last.strip_prefix("error: ").unwrap_or(last)
                )
            }
        })
}

/// A URL path: starts with `/`, no spaces, no control characters.
pub fn url_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(format!("`{path}` contains spaces or control characters"));
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host.
pub fn http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("`{url}` must start with https:// or http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// A network in CIDR form (`10.0.0.0/8`) or a single IP address.
pub fn cidr(text: &str) -> Result<(), String> {
    if text.parse::<ipnet::IpNet>().is_ok() || text.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not an IP network (such as 10.0.0.0/8) or an IP address"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_and_wildcards() {
        assert!(host_pattern("api.example.com").is_ok());
        assert!(host_pattern("*.example.com").is_ok());
        assert!(host_pattern("127.0.0.1").is_ok());
        assert!(host_pattern("localhost").is_ok());
        assert!(
            host_pattern("API.example.com")
                .unwrap_err()
                .contains("lower case")
        );
        assert!(host_pattern("a.*.example.com").is_err());
        assert!(host_pattern("*.*.example.com").is_err());
        assert!(host_pattern("-bad.example.com").is_err());
        assert!(host_pattern("bad..example.com").is_err());
        assert!(host_pattern(&"a".repeat(64)).is_err());
    }

    #[test]
    fn certificate_names_cover_exact_hosts_and_one_wildcard_label() {
        assert!(name_covers("api.example.com", "api.example.com"));
        assert!(name_covers("*.example.com", "api.example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(name_covers("*.example.com", "*.example.com"));
        assert!(!name_covers("api.example.com", "*.example.com"));
    }

    #[test]
    fn addresses() {
        assert!(address("127.0.0.1:8080").is_ok());
        assert!(address("[::1]:8080").is_ok());
        assert!(address("backend.internal:443").is_ok());
        assert!(address("backend.internal").is_err());
        assert!(address("127.0.0.1:0").is_err());
        assert!(address("127.0.0.1:70000").is_err());
        assert!(address("::1:80").unwrap_err().contains("brackets"));
    }

    #[test]
    fn regexes_are_bounded() {
        assert!(regex("^/users/[0-9]+$").is_ok());
        assert!(regex("(unclosed").unwrap_err().contains("unclosed group"));
        assert!(regex("(a{1000}){1000}").unwrap_err().contains("simplify"));
    }

    #[test]
    fn names_labels_headers_methods() {
        assert!(resource_name("chat-ws").is_ok());
        assert!(resource_name("Chat").is_err());
        assert!(resource_name("-x").is_err());
        assert!(label("stage").is_ok());
        assert!(label("").is_err());
        assert!(header_name("x-request-id").is_ok());
        assert!(header_name("bad header").is_err());
        assert!(header_value("ok value").is_ok());
        assert!(header_value("evil\r\nx: y").is_err());
        assert!(method("GET").is_ok());
        assert!(method("get").is_err());
        assert!(cidr("10.0.0.0/8").is_ok());
        assert!(cidr("::1").is_ok());
        assert!(cidr("10.0.0.0/33").is_err());
    }
}
