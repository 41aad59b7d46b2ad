//! Validation of a whole set of resources, reporting every problem at once.
//!
//! Each problem is a [`ValidationError`] naming the resource and the field path, and printing as
//! `route/chat-ws: spec.matches[0].path.regex: invalid regex: unclosed group`. Validation is
//! pure (no clock, no network), so the manager, the agent and the CLI reach the same verdict.

mod certificate;
mod placement;
mod syntax;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

pub use certificate::{CertificateInfo, certificate_info};
pub use syntax::REGEX_SIZE_LIMIT;

use crate::Duration;
use crate::model::*;

/// One problem with one resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ValidationError {
    /// `route/chat-ws`.
    pub resource: String,
    /// `spec.matches[0].path.regex`; empty when the problem is the resource as a whole.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.resource, self.message)
        } else {
            write!(f, "{}: {}: {}", self.resource, self.path, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

/// Validates `resources` as one complete config. Returns every problem found, in resource order.
pub fn validate(resources: &[Resource]) -> Result<(), Vec<ValidationError>> {
    let refs: Vec<&Resource> = resources.iter().collect();
    validate_refs(&refs)
}

/// [`validate`] over borrowed resources, so that a caller holding them elsewhere (a
/// [`crate::Snapshot`]) validates without copying them.
pub fn validate_refs(resources: &[&Resource]) -> Result<(), Vec<ValidationError>> {
    let index = Index::listed(resources);
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for resource in resources {
        if !seen.insert(resource.key()) {
            errors.push(ValidationError {
                resource: resource.key().to_string(),
                path: "name".into(),
                message: format!("duplicate: {} is defined more than once", resource.key()),
            });
        }
        resource_checks(resource, &index, &mut errors);
    }
    conclude(resources, resources, &index, errors)
}

/// Validates `next` as one complete config, given that `base` is a config that passed
/// validation: only what the change from `base` to `next` can have broken is checked, so the
/// cost follows the change, not the config. The verdict is [`validate`]'s on `next`.
///
/// Checked again: every added or changed resource; every resource that refers by name to one
/// that was added, changed or removed (its references and placement); host claims when a
/// domain changed, credentials when a consumer changed; and route ambiguity between each
/// changed route and the routes with its priority and one of its hosts. A change to more than
/// an eighth of the resources is validated whole.
pub fn validate_change(
    base: &crate::Snapshot,
    next: &crate::Snapshot,
) -> Result<(), Vec<ValidationError>> {
    use std::collections::HashSet;
    let changes = crate::snapshot::changes(base, next);
    if changes.is_empty() {
        return Ok(());
    }
    if changes.len() * 8 > next.len() {
        return next.validate();
    }
    let changed: HashSet<&ResourceKey> = changes.iter().map(|c| c.key()).collect();
    let changed_kinds: BTreeSet<Kind> = changed.iter().map(|k| k.kind).collect();
    let mut affected: BTreeSet<&ResourceKey> = changes
        .iter()
        .filter_map(|c| match c {
            crate::Change::Added(key, _) | crate::Change::Changed(key, _) => Some(*key),
            crate::Change::Removed(_) => None,
        })
        .collect();
    let referring: BTreeSet<Kind> = changed_kinds
        .iter()
        .flat_map(|kind| placement::referring_kinds(*kind))
        .copied()
        .collect();
    for kind in referring {
        for (key, resource) in next.of_kind(kind) {
            if !affected.contains(key)
                && placement::references(resource)
                    .iter()
                    .any(|r| changed.contains(&ResourceKey::new(r.kind, r.name)))
            {
                affected.insert(key);
            }
        }
    }
    let checked: Vec<&Resource> = affected.iter().filter_map(|key| next.get(key)).collect();

    let index = Index::Snapshot(next);
    let mut errors = Vec::new();
    for resource in &checked {
        resource_checks(resource, &index, &mut errors);
    }

    // Cross-resource rules, over the resources a changed one can collide with, in key order:
    // every domain when a domain changed, every consumer when a consumer changed, and the
    // routes that share a claim (host, priority, path) with a changed route.
    let mut colliding: BTreeSet<&ResourceKey> = BTreeSet::new();
    for kind in [Kind::Domain, Kind::Consumer] {
        if changed_kinds.contains(&kind) {
            colliding.extend(next.of_kind(kind).map(|(key, _)| key));
        }
    }
    let claims = next.route_claims();
    for key in &affected {
        if let Some(Spec::Route(route)) = next.get(key).map(|r| &r.spec) {
            colliding.insert(key);
            for claim in crate::claims::claims_of(route) {
                for name in claims.claiming(&claim) {
                    if let Some((key, _)) = next.get_entry(&ResourceKey::new(Kind::Route, name)) {
                        colliding.insert(key);
                    }
                }
            }
        }
    }
    let cross: Vec<&Resource> = colliding.iter().filter_map(|key| next.get(key)).collect();
    conclude(&cross, &checked, &index, errors)
}

/// The checks across resources, then the verdict: claims and route ambiguity among `cross`,
/// placement consistency of the references `placed` make, added to the `errors` found so far.
fn conclude(
    cross: &[&Resource],
    placed: &[&Resource],
    index: &Index<'_>,
    mut errors: Vec<ValidationError>,
) -> Result<(), Vec<ValidationError>> {
    cross_resource_checks(cross, &mut errors);
    placement::check(
        placed,
        index,
        &mut Check {
            resource: String::new(),
            errors: &mut errors,
        },
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Every check of one resource on its own and against what it refers to.
fn resource_checks(resource: &Resource, index: &Index<'_>, errors: &mut Vec<ValidationError>) {
    let mut check = Check {
        resource: resource.key().to_string(),
        errors,
    };
    check.result("name", syntax::resource_name(&resource.name));
    for (key, value) in &resource.labels {
        check.result(
            &format!("labels.{key}"),
            syntax::label(key).and_then(|()| syntax::label(value)),
        );
    }
    if let Some(placement) = &resource.placement {
        placement_checks(&mut check, placement);
    }
    match &resource.spec {
        Spec::Certificate(spec) => {
            if let Err(found) = certificate_info(spec) {
                for (path, message) in found {
                    check.fail(&path, message);
                }
            }
        }
        Spec::Domain(spec) => domain_checks(&mut check, index, spec),
        Spec::Service(spec) => service_checks(&mut check, spec),
        Spec::Consumer(spec) => consumer_checks(&mut check, index, spec),
        Spec::Policy(spec) => policy_checks(&mut check, index, spec),
        Spec::Route(spec) => route_checks(&mut check, index, spec),
    }
}

/// The resources cross-reference checks look names up in.
enum Index<'a> {
    /// A list being validated whole; on duplicate keys the first counts.
    Listed(HashMap<ResourceKey, &'a Resource>),
    /// A snapshot, looked up in place.
    Snapshot(&'a crate::Snapshot),
}

impl<'a> Index<'a> {
    fn listed(resources: &[&'a Resource]) -> Self {
        let mut by_key = HashMap::new();
        for r in resources {
            by_key.entry(r.key()).or_insert(*r);
        }
        Index::Listed(by_key)
    }

    fn get(&self, kind: Kind, name: &str) -> Option<&'a Resource> {
        let key = ResourceKey::new(kind, name);
        match self {
            Index::Listed(by_key) => by_key.get(&key).copied(),
            Index::Snapshot(snapshot) => snapshot.get(&key),
        }
    }

    fn service(&self, name: &str) -> Option<&'a ServiceSpec> {
        match self.get(Kind::Service, name).map(|r| &r.spec) {
            Some(Spec::Service(s)) => Some(s),
            _ => None,
        }
    }

    fn policy(&self, name: &str) -> Option<&'a PolicySpec> {
        match self.get(Kind::Policy, name).map(|r| &r.spec) {
            Some(Spec::Policy(p)) => Some(p),
            _ => None,
        }
    }

    fn certificate(&self, name: &str) -> Option<&'a CertificateSpec> {
        match self.get(Kind::Certificate, name).map(|r| &r.spec) {
            Some(Spec::Certificate(c)) => Some(c),
            _ => None,
        }
    }
}

/// Collects errors for one resource.
struct Check<'e> {
    resource: String,
    errors: &'e mut Vec<ValidationError>,
}

impl Check<'_> {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ValidationError {
            resource: self.resource.clone(),
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn result(&mut self, path: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.fail(path, message);
        }
    }

    fn reference(&mut self, index: &Index<'_>, path: &str, kind: Kind, name: &str) {
        if index.get(kind, name).is_none() {
            self.fail(
                path,
                format!("refers to {}/{name}, which does not exist", kind.slug()),
            );
        }
    }

    fn range<T: PartialOrd + fmt::Display>(&mut self, path: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            self.fail(
                path,
                format!("{value} is out of range; expected {min} to {max}"),
            );
        }
    }

    fn duration(&mut self, path: &str, value: Duration, min: Duration, max: Duration) {
        if value < min || value > max {
            self.fail(
                path,
                format!("{value} is out of range; expected {min} to {max}"),
            );
        }
    }

    fn policies(&mut self, index: &Index<'_>, path: &str, names: &[String]) {
        for (i, name) in names.iter().enumerate() {
            self.reference(index, &format!("{path}[{i}]"), Kind::Policy, name);
        }
    }
}

fn placement_checks(check: &mut Check<'_>, placement: &Placement) {
    for (key, value) in &placement.match_labels {
        check.result(
            &format!("placement.match_labels.{key}"),
            syntax::label(key).and_then(|()| syntax::label(value)),
        );
    }
    for (i, req) in placement.match_expressions.iter().enumerate() {
        let path = format!("placement.match_expressions[{i}]");
        check.result(&format!("{path}.key"), syntax::label(&req.key));
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn if req.values.is_empty() => {
                check.fail(
                    &format!("{path}.values"),
                    "In and NotIn need at least one value",
                );
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !req.values.is_empty() => {
                check.fail(
                    &format!("{path}.values"),
                    "Exists and DoesNotExist take no values",
                );
            }
            _ => {}
        }
    }
}

fn domain_checks(check: &mut Check<'_>, index: &Index<'_>, spec: &DomainSpec) {
    if spec.hosts.is_empty() {
        check.fail("spec.hosts", "a domain needs at least one host");
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        check.result(&format!("spec.hosts[{i}]"), syntax::host_pattern(host));
    }
    match &spec.certificate {
        Some(name) => match index.certificate(name) {
            None => check.reference(index, "spec.certificate", Kind::Certificate, name),
            Some(cert) => {
                if let Ok(info) = certificate_info(cert) {
                    for (i, host) in spec.hosts.iter().enumerate() {
                        if !info.names.iter().any(|n| syntax::name_covers(n, host)) {
                            check.fail(
                                &format!("spec.hosts[{i}]"),
                                format!(
                                    "`{host}` is not covered by certificate/{name} (names: {})",
                                    info.names.join(", ")
                                ),
                            );
                        }
                    }
                }
            }
        },
        None if spec.https_redirect => {
            check.fail(
                "spec.https_redirect",
                "redirecting to HTTPS needs a certificate for the domain",
            );
        }
        None => {}
    }
    check.policies(index, "spec.policies", &spec.policies);
}

fn service_checks(check: &mut Check<'_>, spec: &ServiceSpec) {
    match (&spec.dns, spec.endpoints.is_empty()) {
        (None, true) => check.fail("spec.endpoints", "a service needs endpoints or dns"),
        (Some(_), false) => check.fail(
            "spec.dns",
            "a service has either static endpoints or dns, not both",
        ),
        _ => {}
    }
    let mut addresses = BTreeSet::new();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let path = format!("spec.endpoints[{i}]");
        check.result(&format!("{path}.address"), syntax::address(&ep.address));
        if !addresses.insert(ep.address.as_str()) {
            check.fail(
                &format!("{path}.address"),
                format!("`{}` is listed more than once", ep.address),
            );
        }
        check.range(
            &format!("{path}.weight"),
            ep.weight,
            1,
            Endpoint::MAX_WEIGHT,
        );
        for (k, v) in &ep.labels {
            check.result(
                &format!("{path}.labels.{k}"),
                syntax::label(k).and_then(|()| syntax::label(v)),
            );
        }
    }
    if let Some(dns) = &spec.dns {
        check.result("spec.dns.name", syntax::dns_name(&dns.name));
        check.range("spec.dns.port", dns.port, 1, u16::MAX);
        check.duration(
            "spec.dns.refresh",
            dns.refresh,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        );
    }
    if let Some(tls) = &spec.tls {
        if let Some(name) = &tls.server_name {
            check.result("spec.tls.server_name", syntax::hostname(name));
        }
        if let Some(ca) = &tls.ca_pem {
            check.result("spec.tls.ca_pem", certificate::ca_bundle(ca));
        }
    }
    if let LoadBalancing::ConsistentHash {
        hash_on: HashOn::Header(name) | HashOn::Cookie(name),
    } = &spec.load_balancing
    {
        check.result("spec.load_balancing.hash_on", syntax::header_name(name));
    }
    if let Some(hc) = &spec.health_check {
        check.result("spec.health_check.path", syntax::url_path(&hc.path));
        check.duration(
            "spec.health_check.interval",
            hc.interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        check.duration(
            "spec.health_check.timeout",
            hc.timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        if hc.timeout > hc.interval {
            check.fail(
                "spec.health_check.timeout",
                format!("{} is longer than the interval {}", hc.timeout, hc.interval),
            );
        }
        check.range(
            "spec.health_check.healthy_threshold",
            hc.healthy_threshold,
            1,
            100,
        );
        check.range(
            "spec.health_check.unhealthy_threshold",
            hc.unhealthy_threshold,
            1,
            100,
        );
        for (i, status) in hc.expected_statuses.iter().enumerate() {
            check.range(
                &format!("spec.health_check.expected_statuses[{i}]"),
                *status,
                100,
                599,
            );
        }
    }
    if let Some(od) = &spec.outlier_detection {
        check.range(
            "spec.outlier_detection.consecutive_failures",
            od.consecutive_failures,
            1,
            1000,
        );
        check.duration(
            "spec.outlier_detection.base_ejection",
            od.base_ejection,
            Duration::from_millis(100),
            Duration::from_secs(86_400),
        );
        if od.max_ejection < od.base_ejection {
            check.fail(
                "spec.outlier_detection.max_ejection",
                format!(
                    "{} is shorter than base_ejection {}",
                    od.max_ejection, od.base_ejection
                ),
            );
        }
        check.range(
            "spec.outlier_detection.max_ejected_percent",
            od.max_ejected_percent,
            0,
            100,
        );
    }
    if let Some(t) = spec.limits.connect_timeout {
        check.duration(
            "spec.limits.connect_timeout",
            t,
            Duration::from_millis(1),
            Duration::from_secs(300),
        );
    }
    if let Some(t) = spec.limits.idle_timeout {
        check.duration(
            "spec.limits.idle_timeout",
            t,
            Duration::from_millis(1),
            Duration::from_secs(86_400),
        );
    }
    if let Some(n) = spec.limits.max_connections_per_endpoint {
        check.range("spec.limits.max_connections_per_endpoint", n, 1, 1_000_000);
    }
}

fn rate_checks(check: &mut Check<'_>, path: &str, rate: &Rate) {
    check.range(&format!("{path}.requests"), rate.requests, 1, 1_000_000_000);
    check.duration(
        &format!("{path}.per"),
        rate.per,
        Duration::from_millis(1),
        Duration::from_secs(86_400),
    );
}

fn consumer_checks(check: &mut Check<'_>, index: &Index<'_>, spec: &ConsumerSpec) {
    let creds = &spec.credentials;
    for (i, key) in creds.keys.iter().enumerate() {
        if key.len() < 16 {
            check.fail(
                &format!("spec.credentials.keys[{i}]"),
                "API keys must be at least 16 characters long",
            );
        }
    }
    if let Some(jwt) = &creds.jwt
        && jwt.subject.is_empty()
    {
        check.fail("spec.credentials.jwt.subject", "must not be empty");
    }
    for (i, hmac) in creds.hmac.iter().enumerate() {
        if hmac.key_id.is_empty() {
            check.fail(
                &format!("spec.credentials.hmac[{i}].key_id"),
                "must not be empty",
            );
        }
        if hmac.secret.len() < 32 {
            check.fail(
                &format!("spec.credentials.hmac[{i}].secret"),
                "HMAC secrets must be at least 32 bytes long",
            );
        }
    }
    if let Some(basic) = &creds.basic {
        if basic.username.is_empty() || basic.username.contains(':') {
            check.fail(
                "spec.credentials.basic.username",
                "must be non-empty and must not contain `:`",
            );
        }
        check.result(
            "spec.credentials.basic.password_hash",
            password_hash(&basic.password_hash),
        );
    }
    for (policy, rate) in &spec.rate_limits {
        let path = format!("spec.rate_limits.{policy}");
        match index.policy(policy).map(|p| &p.config) {
            None => check.reference(index, &path, Kind::Policy, policy),
            Some(PolicyConfig::KeyRateLimit(limit)) => {
                // The policy looks overrides up by the consumer only when it counts by
                // consumer; counting by anything else, this entry would silently do nothing.
                if limit.key != LimitKey::Consumer {
                    check.fail(
                        &path,
                        format!(
                            "policy/{policy} counts by {}, not by consumer; a consumer override would never apply",
                            describe_limit_key(&limit.key)
                        ),
                    );
                }
                rate_checks(check, &path, rate);
            }
            Some(other) => {
                check.fail(
                    &path,
                    format!(
                        "policy/{policy} is a {} policy, not key-rate-limit",
                        other.type_name()
                    ),
                );
            }
        }
    }
    for (name, value) in &spec.headers {
        check.result(
            &format!("spec.headers.{name}"),
            syntax::header_name(name).and_then(|()| syntax::header_value(value)),
        );
    }
}

/// `pbkdf2-sha256$<iterations>$<salt hex>$<derived key hex>`.
fn password_hash(hash: &str) -> Result<(), String> {
    let expected = "expected pbkdf2-sha256$<iterations>$<salt hex>$<key hex> (make one with `fleetgate hash-password`)";
    let parts: Vec<&str> = hash.split('$').collect();
    let [scheme, iterations, salt, key] = parts.as_slice() else {
        return Err(expected.into());
    };
    let iterations: u32 = iterations.parse().map_err(|_| expected.to_owned())?;
    if *scheme != "pbkdf2-sha256"
        || hex::decode(salt).is_err()
        || hex::decode(key).map(|k| k.len()).unwrap_or(0) != 32
    {
        return Err(expected.into());
    }
    if salt.len() < 16 {
        return Err("the salt must be at least 8 bytes".into());
    }
    if !(10_000..=10_000_000).contains(&iterations) {
        return Err(format!(
            "{iterations} iterations is out of range; expected 10000 to 10000000"
        ));
    }
    Ok(())
}

fn token_sources(check: &mut Check<'_>, path: &str, sources: &[TokenSource]) {
    if sources.is_empty() {
        check.fail(path, "at least one source is needed");
    }
    for (i, source) in sources.iter().enumerate() {
        let (name, is_header) = match source {
            TokenSource::Header { name, .. } => (name, true),
            TokenSource::Query { name } | TokenSource::Cookie { name } => (name, false),
        };
        let result = if is_header {
            syntax::header_name(name)
        } else if name.is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(())
        };
        check.result(&format!("{path}[{i}]"), result);
    }
}

/// "header x-tenant", "client IP", ...: what a limit counts by, for messages.
fn describe_limit_key(key: &LimitKey) -> String {
    match key {
        LimitKey::Header(name) => format!("header {name}"),
        LimitKey::Query(name) => format!("query parameter {name}"),
        LimitKey::Cookie(name) => format!("cookie {name}"),
        LimitKey::Consumer => "consumer".into(),
        LimitKey::ClientIp => "client IP".into(),
    }
}

fn limit_key(check: &mut Check<'_>, path: &str, key: &LimitKey) {
    match key {
        LimitKey::Header(name) => check.result(path, syntax::header_name(name)),
        LimitKey::Query(name) | LimitKey::Cookie(name) if name.is_empty() => {
            check.fail(path, "must not be empty")
        }
        _ => {}
    }
}

fn policy_checks(check: &mut Check<'_>, index: &Index<'_>, spec: &PolicySpec) {
    for (path, name) in spec.config.consumer_refs() {
        check.reference(index, &path, Kind::Consumer, name);
    }
    for (i, domain) in spec.scope.domains.iter().enumerate() {
        check.reference(
            index,
            &format!("spec.scope.domains[{i}]"),
            Kind::Domain,
            domain,
        );
    }
    for (i, route) in spec.scope.routes.iter().enumerate() {
        check.reference(
            index,
            &format!("spec.scope.routes[{i}]"),
            Kind::Route,
            route,
        );
    }
    match &spec.config {
        PolicyConfig::JwtAuth(c) => jwt_checks(check, c),
        PolicyConfig::KeyAuth(c) => token_sources(check, "spec.config.key_from", &c.key_from),
        PolicyConfig::BasicAuth(c) => {
            if c.realm.is_empty()
                || c.realm.contains('"')
                || syntax::header_value(&c.realm).is_err()
            {
                check.fail(
                    "spec.config.realm",
                    "must be non-empty, without quotes or line breaks",
                );
            }
        }
        PolicyConfig::HmacAuth(c) => {
            if c.algorithms.is_empty() {
                check.fail("spec.config.algorithms", "at least one algorithm is needed");
            }
            for (i, h) in c.signed_headers.iter().enumerate() {
                check.result(
                    &format!("spec.config.signed_headers[{i}]"),
                    syntax::header_name(h),
                );
            }
            check.duration(
                "spec.config.clock_skew",
                c.clock_skew,
                Duration::from_secs(1),
                Duration::from_secs(3600),
            );
        }
        PolicyConfig::KeyRateLimit(c) => {
            limit_key(check, "spec.config.key", &c.key);
            rate_checks(check, "spec.config.rate", &c.rate);
            for (key, rate) in &c.overrides {
                rate_checks(check, &format!("spec.config.overrides.{key}"), rate);
            }
            if let LimitBackend::Redis { url, timeout, .. } = &c.backend {
                if !(url.starts_with("redis://") || url.starts_with("rediss://"))
                    || url.len() <= "redis://".len()
                {
                    check.fail(
                        "spec.config.backend.url",
                        format!("`{url}` must be a redis:// or rediss:// URL"),
                    );
                }
                check.duration(
                    "spec.config.backend.timeout",
                    *timeout,
                    Duration::from_millis(1),
                    Duration::from_secs(5),
                );
            }
        }
        PolicyConfig::IpRestriction(c) => {
            if c.allow.is_empty() && c.deny.is_empty() {
                check.fail("spec.config", "give at least one network in allow or deny");
            }
            for (i, net) in c.allow.iter().enumerate() {
                check.result(&format!("spec.config.allow[{i}]"), syntax::cidr(net));
            }
            for (i, net) in c.deny.iter().enumerate() {
                check.result(&format!("spec.config.deny[{i}]"), syntax::cidr(net));
            }
            if let ClientIpSource::Header { name, trusted_hops } = &c.client_ip {
                check.result(
                    "spec.config.client_ip.header.name",
                    syntax::header_name(name),
                );
                check.range(
                    "spec.config.client_ip.header.trusted_hops",
                    *trusted_hops,
                    1,
                    16,
                );
            }
        }
        PolicyConfig::Cors(c) => {
            if c.allow_origins.is_empty() {
                check.fail(
                    "spec.config.allow_origins",
                    "at least one origin (or `*`) is needed",
                );
            }
            for (i, origin) in c.allow_origins.iter().enumerate() {
                let path = format!("spec.config.allow_origins[{i}]");
                if origin == "*" {
                    if c.allow_credentials {
                        check.fail(&path, "`*` cannot be combined with allow_credentials (browsers refuse it); list the origins");
                    }
                } else {
                    check.result(
                        &path,
                        syntax::http_url(origin).and_then(|()| {
                            if origin
                                .trim_start_matches("https://")
                                .trim_start_matches("http://")
                                .contains('/')
                            {
                                Err(format!("`{origin}` is not an origin: no path is allowed"))
                            } else {
                                Ok(())
                            }
                        }),
                    );
                }
            }
            for (i, m) in c.allow_methods.iter().enumerate() {
                check.result(
                    &format!("spec.config.allow_methods[{i}]"),
                    syntax::method(m),
                );
            }
            for (i, h) in c.allow_headers.iter().chain(&c.expose_headers).enumerate() {
                let field = if i < c.allow_headers.len() {
                    format!("allow_headers[{i}]")
                } else {
                    format!("expose_headers[{}]", i - c.allow_headers.len())
                };
                if h != "*" {
                    check.result(&format!("spec.config.{field}"), syntax::header_name(h));
                }
            }
            if let Some(age) = c.max_age {
                check.duration(
                    "spec.config.max_age",
                    age,
                    Duration::from_secs(0),
                    Duration::from_secs(86_400),
                );
            }
        }
        PolicyConfig::BotDetect(c) => {
            for (i, r) in c.allow.iter().enumerate() {
                check.result(&format!("spec.config.allow[{i}]"), syntax::regex(r));
            }
            for (i, r) in c.deny.iter().enumerate() {
                check.result(&format!("spec.config.deny[{i}]"), syntax::regex(r));
            }
        }
        PolicyConfig::Waf(c) => {
            check.range("spec.config.paranoia_level", c.paranoia_level, 1, 4);
            check.range(
                "spec.config.request_body_limit",
                c.request_body_limit,
                1,
                64 * 1024 * 1024,
            );
        }
        PolicyConfig::CcProtection(c) => {
            limit_key(check, "spec.config.key", &c.key);
            rate_checks(check, "spec.config.threshold", &c.threshold);
            check.duration(
                "spec.config.ban",
                c.ban,
                Duration::from_secs(1),
                Duration::from_secs(7 * 86_400),
            );
        }
        PolicyConfig::RequestSizeLimit(c) => {
            check.range("spec.config.max_body_bytes", c.max_body_bytes, 1, 1 << 40);
        }
    }
}

fn jwt_checks(check: &mut Check<'_>, c: &JwtAuth) {
    if c.algorithms.is_empty() {
        check.fail("spec.config.algorithms", "at least one algorithm is needed");
    }
    let symmetric = c.algorithms.iter().any(|a| a.is_symmetric());
    let asymmetric = c.algorithms.iter().any(|a| !a.is_symmetric());
    if symmetric && asymmetric {
        check.fail(
            "spec.config.algorithms",
            "mixing HS (shared secret) and public-key algorithms in one policy invites key confusion; use two policies",
        );
    }
    if c.keys.is_empty() && c.jwks.is_none() {
        check.fail("spec.config", "give inline keys or a jwks URL");
    }
    for (i, key) in c.keys.iter().enumerate() {
        let path = format!("spec.config.keys[{i}]");
        if !c.algorithms.contains(&key.algorithm) {
            check.fail(
                &format!("{path}.algorithm"),
                format!("{:?} is not in the policy's algorithms", key.algorithm),
            );
        }
        match (
            key.algorithm.is_symmetric(),
            &key.secret,
            &key.public_key_pem,
        ) {
            (true, Some(secret), None) => {
                if secret.len() < 32 {
                    check.fail(
                        &format!("{path}.secret"),
                        "HS secrets must be at least 32 bytes long",
                    );
                }
            }
            (true, _, _) => check.fail(&path, "an HS key needs `secret` and no `public_key_pem`"),
            (false, None, Some(pem)) => check.result(
                &format!("{path}.public_key_pem"),
                certificate::jwt_public_key(key.algorithm, pem),
            ),
            (false, _, _) => check.fail(
                &path,
                "a public-key algorithm needs `public_key_pem` and no `secret`",
            ),
        }
    }
    if let Some(jwks) = &c.jwks {
        check.result("spec.config.jwks.url", syntax::http_url(&jwks.url));
        check.duration(
            "spec.config.jwks.refresh",
            jwks.refresh,
            Duration::from_secs(10),
            Duration::from_secs(86_400),
        );
    }
    check.duration(
        "spec.config.clock_skew",
        c.clock_skew,
        Duration::from_secs(0),
        JwtAuth::MAX_SKEW,
    );
    token_sources(check, "spec.config.token_from", &c.token_from);
    for (claim, header) in &c.claims_to_headers {
        check.result(
            &format!("spec.config.claims_to_headers.{claim}"),
            syntax::header_name(header),
        );
    }
}

fn route_checks(check: &mut Check<'_>, index: &Index<'_>, spec: &RouteSpec) {
    for (i, host) in spec.hosts.iter().enumerate() {
        check.result(&format!("spec.hosts[{i}]"), syntax::host_pattern(host));
    }
    for (i, m) in spec.matches.iter().enumerate() {
        let path = format!("spec.matches[{i}]");
        match &m.path {
            Some(PathMatch::Exact(p)) => {
                check.result(&format!("{path}.path.exact"), syntax::url_path(p))
            }
            Some(PathMatch::Prefix(p)) => {
                check.result(&format!("{path}.path.prefix"), syntax::url_path(p))
            }
            Some(PathMatch::Regex(r)) => {
                check.result(&format!("{path}.path.regex"), syntax::regex(r))
            }
            None => {}
        }
        for (j, method) in m.methods.iter().enumerate() {
            check.result(&format!("{path}.methods[{j}]"), syntax::method(method));
        }
        for (j, h) in m.headers.iter().enumerate() {
            value_match(check, &format!("{path}.headers[{j}]"), h, true);
        }
        for (j, q) in m.query.iter().enumerate() {
            value_match(check, &format!("{path}.query[{j}]"), q, false);
        }
    }
    let actions = [
        spec.forward.is_some(),
        spec.redirect.is_some(),
        spec.direct_response.is_some(),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        check.fail(
            "spec",
            "a route needs exactly one of forward, redirect and direct_response",
        );
    }
    if let Some(fwd) = &spec.forward {
        backends(check, index, "spec.forward.backends", &fwd.backends);
        for (i, rule) in fwd.canary.iter().enumerate() {
            let path = format!("spec.forward.canary[{i}]");
            match (&rule.header, &rule.cookie) {
                (Some(h), None) => value_match(check, &format!("{path}.header"), h, true),
                (None, Some(c)) => value_match(check, &format!("{path}.cookie"), c, false),
                _ => check.fail(
                    &path,
                    "a canary rule needs exactly one of header and cookie",
                ),
            }
            backends(check, index, &format!("{path}.backends"), &rule.backends);
        }
        if let Some(t) = fwd.timeouts.request {
            check.duration(
                "spec.forward.timeouts.request",
                t,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            );
        }
        if let Some(t) = fwd.timeouts.idle {
            check.duration(
                "spec.forward.timeouts.idle",
                t,
                Duration::from_millis(1),
                Duration::from_secs(7 * 86_400),
            );
        }
        if let Some(r) = &fwd.retries {
            check.range("spec.forward.retries.attempts", r.attempts, 1, 10);
            check.range(
                "spec.forward.retries.budget_percent",
                r.budget_percent,
                1,
                100,
            );
        }
        if let Some(m) = &fwd.mirror {
            check.reference(
                index,
                "spec.forward.mirror.service",
                Kind::Service,
                &m.service,
            );
            check.range("spec.forward.mirror.percent", m.percent, 1, 100);
        }
    }
    if let Some(r) = &spec.redirect {
        if !matches!(r.status, 301 | 302 | 303 | 307 | 308) {
            check.fail(
                "spec.redirect.status",
                format!(
                    "{} is not a redirect status; use 301, 302, 303, 307 or 308",
                    r.status
                ),
            );
        }
        if let Some(s) = &r.scheme
            && s != "http"
            && s != "https"
        {
            check.fail(
                "spec.redirect.scheme",
                format!("`{s}` must be http or https"),
            );
        }
        if let Some(h) = &r.host {
            check.result("spec.redirect.host", syntax::hostname(h));
        }
        if let Some(p) = &r.path {
            check.result("spec.redirect.path", syntax::url_path(p));
        }
        if r.port == Some(0) {
            check.fail("spec.redirect.port", "port 0 is not a usable port");
        }
    }
    if let Some(d) = &spec.direct_response {
        check.range("spec.direct_response.status", d.status, 200, 599);
        if let Some(ct) = &d.content_type {
            check.result(
                "spec.direct_response.content_type",
                syntax::header_value(ct),
            );
        }
    }
    if let Some(rw) = &spec.filters.rewrite {
        let ways = [
            rw.path.is_some(),
            rw.path_prefix.is_some(),
            rw.path_regex.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            check.fail(
                "spec.filters.rewrite",
                "give at most one of path, path_prefix and path_regex",
            );
        }
        if let Some(p) = &rw.path {
            check.result("spec.filters.rewrite.path", syntax::url_path(p));
        }
        if let Some(p) = &rw.path_prefix {
            check.result("spec.filters.rewrite.path_prefix", syntax::url_path(p));
            let all_prefix = !spec.matches.is_empty()
                && spec
                    .matches
                    .iter()
                    .all(|m| matches!(m.path, Some(PathMatch::Prefix(_))));
            if !all_prefix {
                check.fail(
                    "spec.filters.rewrite.path_prefix",
                    "needs every match to be a path prefix match",
                );
            }
        }
        if let Some(r) = &rw.path_regex {
            check.result(
                "spec.filters.rewrite.path_regex.pattern",
                syntax::regex(&r.pattern),
            );
        }
        if let Some(h) = &rw.host {
            check.result("spec.filters.rewrite.host", syntax::hostname(h));
        }
    }
    header_edits(
        check,
        "spec.filters.request_headers",
        &spec.filters.request_headers,
    );
    header_edits(
        check,
        "spec.filters.response_headers",
        &spec.filters.response_headers,
    );
    check.policies(index, "spec.policies", &spec.policies);
}

fn value_match(check: &mut Check<'_>, path: &str, m: &ValueMatch, header: bool) {
    let name_ok = if header {
        syntax::header_name(&m.name)
    } else if m.name.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    };
    check.result(&format!("{path}.name"), name_ok);
    let given = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        check.fail(path, "give at most one of exact, prefix and regex");
    }
    if let Some(r) = &m.regex {
        check.result(&format!("{path}.regex"), syntax::regex(r));
    }
}

fn backends(check: &mut Check<'_>, index: &Index<'_>, path: &str, list: &[Backend]) {
    if list.is_empty() {
        check.fail(path, "at least one backend is needed");
    }
    let mut total = 0u64;
    for (i, b) in list.iter().enumerate() {
        let bpath = format!("{path}[{i}]");
        check.range(&format!("{bpath}.weight"), b.weight, 0, Backend::MAX_WEIGHT);
        total += u64::from(b.weight);
        match index.service(&b.service) {
            None => check.reference(
                index,
                &format!("{bpath}.service"),
                Kind::Service,
                &b.service,
            ),
            Some(svc) if !b.subset.is_empty() && svc.dns.is_none() => {
                let selects = svc
                    .endpoints
                    .iter()
                    .any(|ep| b.subset.iter().all(|(k, v)| ep.labels.get(k) == Some(v)));
                if !selects {
                    let wanted: Vec<String> =
                        b.subset.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    check.fail(
                        &format!("{bpath}.subset"),
                        format!(
                            "selects no endpoint of service/{} ({})",
                            b.service,
                            wanted.join(", ")
                        ),
                    );
                }
            }
            Some(_) => {}
        }
    }
    if !list.is_empty() && total == 0 {
        check.fail(
            path,
            "the backends' weights add up to 0: no request could be served",
        );
    }
}

fn header_edits(check: &mut Check<'_>, path: &str, edits: &HeaderEdits) {
    for (name, value) in edits.add.iter().chain(&edits.set) {
        let field = if edits.add.contains_key(name) {
            "add"
        } else {
            "set"
        };
        check.result(
            &format!("{path}.{field}.{name}"),
            syntax::header_name(name).and_then(|()| syntax::header_value(value)),
        );
    }
    for (i, name) in edits.remove.iter().enumerate() {
        check.result(&format!("{path}.remove[{i}]"), syntax::header_name(name));
    }
}

/// Checks that look at several resources together: hosts claimed by two domains, credentials
/// shared by two consumers, and routes that could never be told apart.
fn cross_resource_checks(resources: &[&Resource], errors: &mut Vec<ValidationError>) {
    let mut push = |r: &Resource, path: String, message: String| {
        errors.push(ValidationError {
            resource: r.key().to_string(),
            path,
            message,
        });
    };
    let mut domain_hosts: BTreeMap<&str, &str> = BTreeMap::new();
    let mut credentials: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    let mut route_keys: BTreeMap<(String, String, i32), &str> = BTreeMap::new();
    for r in resources {
        match &r.spec {
            Spec::Domain(d) => {
                for (i, host) in d.hosts.iter().enumerate() {
                    if let Some(owner) = domain_hosts.insert(host, &r.name)
                        && owner != r.name
                    {
                        push(
                            r,
                            format!("spec.hosts[{i}]"),
                            format!("`{host}` is also claimed by domain/{owner}"),
                        );
                    }
                }
            }
            Spec::Consumer(c) => {
                let creds = &c.credentials;
                let mut owned: Vec<(&str, &str, String)> = Vec::new();
                owned.extend(
                    creds.keys.iter().enumerate().map(|(i, k)| {
                        ("API key", k.as_str(), format!("spec.credentials.keys[{i}]"))
                    }),
                );
                owned.extend(creds.hmac.iter().enumerate().map(|(i, h)| {
                    (
                        "HMAC key id",
                        h.key_id.as_str(),
                        format!("spec.credentials.hmac[{i}].key_id"),
                    )
                }));
                owned.extend(creds.jwt.iter().map(|j| {
                    (
                        "JWT subject",
                        j.subject.as_str(),
                        "spec.credentials.jwt.subject".to_owned(),
                    )
                }));
                owned.extend(creds.basic.iter().map(|b| {
                    (
                        "basic-auth username",
                        b.username.as_str(),
                        "spec.credentials.basic.username".to_owned(),
                    )
                }));
                for (what, value, path) in owned {
                    if let Some(owner) = credentials.insert((what, value), &r.name)
                        && owner != r.name
                    {
                        push(
                            r,
                            path,
                            format!(
                                "this {what} also belongs to consumer/{owner}: it would identify two consumers"
                            ),
                        );
                    }
                }
            }
            Spec::Route(route) => {
                let hosts: Vec<&str> = if route.hosts.is_empty() {
                    vec!["*"]
                } else {
                    route.hosts.iter().map(String::as_str).collect()
                };
                let default_match = [RouteMatch::default()];
                let matches = if route.matches.is_empty() {
                    &default_match[..]
                } else {
                    &route.matches[..]
                };
                for (i, m) in matches.iter().enumerate() {
                    let mut normal = m.clone();
                    normal.methods.sort();
                    normal.headers.sort();
                    normal.query.sort();
                    let shape = serde_json::to_string(&normal).unwrap_or_default();
                    for host in &hosts {
                        let key = (host.to_string(), shape.clone(), route.priority);
                        if let Some(owner) = route_keys.insert(key, &r.name)
                            && owner != r.name
                        {
                            let path = if route.matches.is_empty() {
                                "spec.matches".to_owned()
                            } else {
                                format!("spec.matches[{i}]")
                            };
                            push(
                                r,
                                path,
                                format!(
                                    "ambiguous with route/{owner}: same host `{host}`, same match and same priority {}; give one a different priority",
                                    route.priority
                                ),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
