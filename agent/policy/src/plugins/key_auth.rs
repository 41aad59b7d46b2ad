use std::sync::Arc;

use fleetgate_shared::model::{KeyAuth as Config, Phase};
use http::header::HeaderValue;

use super::credentials;
use crate::context::{RequestCtx, Verdict};
use crate::plugin::AnswersAtOnce;
use crate::set::Consumers;

/// API keys: the key is read from the configured sources (first present wins) and looked up
/// in the consumers' keys. The lookup is a hash-map probe (SipHash with a per-process random
/// key), so response time does not depend on how much of a guessed key is right; there is no
/// loop of comparisons over keys to leak it.
#[derive(Debug)]
pub struct KeyAuth {
    name: String,
    sources: credentials::Sources,
    hide: bool,
    allow: Vec<String>,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
}

impl KeyAuth {
    pub fn build(name: &str, config: &Config, consumers: &Arc<Consumers>) -> Self {
        Self {
            name: name.to_owned(),
            sources: credentials::Sources::new(&config.key_from),
            hide: config.hide_credentials,
            allow: config.consumers.clone(),
            consumers: consumers.clone(),
            challenge: credentials::challenge("ApiKey", name),
        }
    }

    fn check(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        let Some(key) = credentials::find(&self.sources, ctx) else {
            return Verdict::Respond(credentials::unauthorized(
                &self.name,
                "missing_key",
                "an API key is required",
                &self.challenge,
            ));
        };
        let Some(consumer) = self.consumers.by_key.get(key.as_ref()).cloned() else {
            return Verdict::Respond(credentials::unauthorized(
                &self.name,
                "invalid_key",
                "the API key is not valid",
                &self.challenge,
            ));
        };
        if !credentials::allowed(&self.allow, Some(&consumer)) {
            return Verdict::Respond(credentials::forbidden(&self.name, Some(&consumer)));
        }
        if self.hide {
            credentials::strip(&self.sources, ctx);
        }
        ctx.consumer = Some(consumer);
        Verdict::Continue
    }
}

impl AnswersAtOnce for KeyAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Authn
    }

    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        self.check(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use http::{HeaderMap, Method, StatusCode};

    use super::*;
    use crate::context::ConsumerEntry;
    use crate::plugin::Plugin;
    use fleetgate_shared::model::TokenSource;

    fn consumers() -> Arc<Consumers> {
        let mut consumers = Consumers::default();
        for (name, key) in [("alice", "alice-key-1"), ("bob", "bob-key-1")] {
            let entry = Arc::new(ConsumerEntry::new(
                name.into(),
                &BTreeMap::new(),
                BTreeMap::new(),
            ));
            consumers.by_key.insert(key.into(), entry.clone());
            consumers.by_name.insert(name.into(), entry);
        }
        Arc::new(consumers)
    }

    fn plugin(hide: bool, allow: &[&str]) -> KeyAuth {
        let config = Config {
            key_from: vec![
                TokenSource::Header {
                    name: "x-api-key".into(),
                    prefix: None,
                },
                TokenSource::Query {
                    name: "api_key".into(),
                },
            ],
            hide_credentials: hide,
            consumers: allow.iter().map(|s| s.to_string()).collect(),
        };
        KeyAuth::build("keys", &config, &consumers())
    }

    fn ctx(uri: &str, key_header: Option<&str>) -> RequestCtx<'static> {
        let mut headers = HeaderMap::new();
        if let Some(key) = key_header {
            headers.insert("x-api-key", key.parse().unwrap());
        }
        headers.insert("x-other", "kept".parse().unwrap());
        RequestCtx::new(
            Method::GET,
            uri.parse().unwrap(),
            headers,
            "127.0.0.1:9".parse().unwrap(),
            false,
        )
    }

    fn status(verdict: &Verdict) -> StatusCode {
        match verdict {
            Verdict::Continue => StatusCode::OK,
            Verdict::Respond(r) => r.status(),
        }
    }

    #[tokio::test]
    async fn a_header_key_names_the_consumer_and_is_hidden() {
        let p = plugin(true, &[]);
        let mut c = ctx("/x?a=1", Some("alice-key-1"));
        assert!(matches!(p.on_request(&mut c).await, Verdict::Continue));
        assert_eq!(c.consumer.as_ref().unwrap().name, "alice");
        assert!(c.headers.get("x-api-key").is_none());
        assert_eq!(c.headers.get("x-other").unwrap(), "kept");
        assert_eq!(*c.uri, "/x?a=1");
    }

    #[tokio::test]
    async fn a_query_key_is_removed_from_the_forwarded_uri() {
        let p = plugin(true, &[]);
        let mut c = ctx("/x?a=1&api_key=bob-key-1&b=2", None);
        assert!(matches!(p.on_request(&mut c).await, Verdict::Continue));
        assert_eq!(c.consumer.as_ref().unwrap().name, "bob");
        assert_eq!(*c.uri, "/x?a=1&b=2");
    }

    #[tokio::test]
    async fn without_hiding_the_key_is_forwarded() {
        let p = plugin(false, &[]);
        let mut c = ctx("/x?api_key=bob-key-1", Some("alice-key-1"));
        assert!(matches!(p.on_request(&mut c).await, Verdict::Continue));
        assert_eq!(c.consumer.as_ref().unwrap().name, "alice", "header first");
        assert_eq!(c.headers.get("x-api-key").unwrap(), "alice-key-1");
        assert_eq!(*c.uri, "/x?api_key=bob-key-1");
    }

    #[tokio::test]
    async fn missing_and_wrong_keys_are_401_with_a_challenge() {
        let p = plugin(true, &[]);
        for (uri, key) in [("/x", None), ("/x", Some("nope")), ("/x?api_key=", None)] {
            let mut c = ctx(uri, key);
            let verdict = p.on_request(&mut c).await;
            let Verdict::Respond(response) = verdict else {
                panic!("{uri} {key:?} passed");
            };
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                response.headers().get("www-authenticate").unwrap(),
                "ApiKey realm=\"keys\""
            );
            assert!(c.consumer.is_none());
        }
    }

    #[tokio::test]
    async fn a_consumer_off_the_allow_list_is_403_and_keeps_nothing() {
        let p = plugin(true, &["alice"]);
        let mut c = ctx("/x", Some("bob-key-1"));
        assert_eq!(status(&p.on_request(&mut c).await), StatusCode::FORBIDDEN);
        assert!(c.consumer.is_none());
        let mut c = ctx("/x", Some("alice-key-1"));
        assert_eq!(status(&p.on_request(&mut c).await), StatusCode::OK);
    }
}
