//! `bot-detect`: flags automated clients by their User-Agent and, optionally, by the shape of
//! their headers, then denies, challenges or marks them.
//!
//! A request is checked in this order:
//! 1. `allow` regexes on the User-Agent: a match lets the request through unflagged, whatever
//!    else it looks like (monitoring probes, partners' crawlers).
//! 2. `deny` regexes on the User-Agent.
//! 3. With `builtin_list`, [`BUILTIN`]: search and SEO crawlers, AI crawlers, link previewers,
//!    archivers, uptime monitors, headless browsers, HTTP libraries and scanners, as one
//!    case-insensitive `RegexSet` compiled once per process. [`BUILTIN_EXCEPTIONS`] lists
//!    User-Agents that look like bots and are not (a phone brand).
//! 4. With `header_signals`, each [`Signal`]: headers every browser sends, missing.
//!
//! A flagged request gets the policy's `action`:
//! - `deny`: 403 `bot_denied`, naming the reason.
//! - `challenge`: a 503 HTML page whose script sets a signed cookie and reloads. A client that
//!   runs JavaScript comes back with the cookie and passes; one that does not (curl, most
//!   scrapers) sees the page again. The cookie is `expiry.HMAC-SHA256(policy, client IP, expiry)`
//!   under a random secret this agent keeps in [`PolicyState`] for its whole life, so a cookie
//!   cannot be forged, replayed from another address, or kept past [`CHALLENGE_TTL`]. Unlike
//!   cc-protection's challenge (a `Set-Cookie` header, which proves only a cookie jar), the
//!   cookie exists only if the page's script ran. It proves JavaScript, not a human: a headless
//!   browser passes, which is why the built-in list flags those by name.
//! - `allow`: the request goes on with `x-fleetgate-bot: <reasons>` for the upstream to decide.
//!
//! Whatever the outcome, an `x-fleetgate-bot` header sent by the client is removed, so the
//! upstream can trust the one it sees.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::challenge::CookieSigner;
use bytes::Bytes;
use fleetgate_shared::model::{BotDetect as Config, Phase, Verdict as Action};
use fleetgate_shared::validate::REGEX_SIZE_LIMIT;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use regex::{RegexBuilder, RegexSet, RegexSetBuilder};

use crate::context::{RequestCtx, Verdict, reject};
use crate::plugin::AnswersAtOnce;
use crate::state::PolicyState;

/// The [`PolicyState`] kind of this plugin's challenge secret.
pub const KIND: &str = "bot-detect";

/// The request header that tells the upstream why a request was flagged (`allow` action).
pub const BOT_HEADER: HeaderName = HeaderName::from_static("x-fleetgate-bot");

/// How long a passed challenge holds: about a browsing session, so a person is challenged
/// rarely, while a cookie lifted from a browser is soon useless (and only from its address).
pub const CHALLENGE_TTL: Duration = Duration::from_secs(60 * 60);

/// The built-in list: a label (used in reasons) and a pattern, matched case-insensitively
/// against the User-Agent. Written for this project from the tokens these clients put in their
/// User-Agents; broad families share a label.
pub const BUILTIN: &[(&str, &str)] = &[
    // Search engines.
    (
        "googlebot",
        r"googlebot|google-inspectiontool|googleother|adsbot-google|mediapartners-google|apis-google|feedfetcher-google|storebot-google",
    ),
    ("bingbot", r"bingbot|bingpreview|msnbot|adidxbot"),
    (
        "yandex",
        r"yandex\w*bot|yandex(?:images|metrika|accessibility)",
    ),
    ("baiduspider", r"baiduspider"),
    ("duckduckbot", r"duckduckbot|duckassistbot"),
    ("yahoo-slurp", r"yahoo! ?slurp"),
    ("applebot", r"applebot"),
    ("sogou", r"sogou \w+ spider|sogou web"),
    ("seznambot", r"seznambot"),
    ("naver", r"\byeti/"),
    ("petalbot", r"petalbot|aspiegelbot"),
    ("qwant", r"qwantify|qwantbot"),
    ("mojeek", r"mojeekbot"),
    ("360spider", r"360spider|haosouspider"),
    ("coccoc", r"coccocbot"),
    // SEO and marketing crawlers.
    ("ahrefs", r"ahrefsbot|ahrefssiteaudit"),
    ("semrush", r"semrushbot|siteauditbot"),
    ("majestic", r"mj12bot"),
    ("moz", r"dotbot|rogerbot"),
    (
        "seo-crawler",
        r"blexbot|dataforseobot|serpstatbot|megaindex|screaming frog|sistrix|seokicks|barkrowler|linkdexbot|sitebulb",
    ),
    // AI and data-set crawlers.
    ("openai", r"gptbot|chatgpt-user|oai-searchbot"),
    ("commoncrawl", r"\bccbot"),
    ("anthropic", r"claudebot|claude-web|anthropic-ai"),
    ("perplexity", r"perplexitybot|perplexity-user"),
    ("bytespider", r"bytespider"),
    ("amazonbot", r"amazonbot"),
    (
        "ai-crawler",
        r"cohere-ai|diffbot|imagesiftbot|omgili|youbot|meta-externalagent|timpibot|ai2bot",
    ),
    // Link previews and social networks.
    (
        "facebook",
        r"facebookexternalhit|facebookcatalog|facebookbot",
    ),
    ("twitterbot", r"twitterbot"),
    ("linkedinbot", r"linkedinbot"),
    ("slackbot", r"slackbot|slack-imgproxy"),
    ("discordbot", r"discordbot"),
    ("telegrambot", r"telegrambot"),
    ("whatsapp", r"whatsapp/"),
    ("pinterest", r"pinterestbot|pinterest/"),
    ("redditbot", r"redditbot"),
    ("link-preview", r"skypeuripreview|embedly|iframely|vkshare"),
    // Archivers and generic crawler frameworks.
    (
        "archiver",
        r"ia_archiver|archive\.org_bot|heritrix|httrack|\bnutch",
    ),
    // Uptime and synthetic monitoring.
    (
        "monitor",
        r"uptimerobot|pingdom|statuscake|site24x7|newrelicpinger|datadog agent|datadog-synthetics",
    ),
    // Headless browsers and automation.
    (
        "headless-browser",
        r"headlesschrome|phantomjs|slimerjs|puppeteer|playwright|selenium|webdriver|cypress/",
    ),
    // HTTP libraries and command-line clients.
    ("curl", r"\bcurl/|libcurl"),
    ("wget", r"\bwget/"),
    (
        "python",
        r"python-requests|python-urllib|python-httpx|\bpython/\d|aiohttp|\bhttpx/|urllib3",
    ),
    ("go-http-client", r"go-http-client|\bgo-resty"),
    (
        "java",
        r"^java/|\bjava/\d|apache-httpclient|commons-httpclient|okhttp|\bjersey/",
    ),
    (
        "node",
        r"node-fetch|\baxios/|\bundici\b|\bgot/|\bnode\.js|superagent|\bneedle/",
    ),
    ("ruby", r"^ruby|\bfaraday|httparty|\brest-client/"),
    (
        "php",
        r"guzzlehttp|\bphp/\d|zend_http_client|symfony httpclient",
    ),
    ("perl", r"libwww-perl|lwp::simple|\blwp-"),
    (
        "dotnet",
        r"\bwinhttp|restsharp|windowspowershell|\bpowershell/",
    ),
    ("rust", r"\breqwest/|\bhyper/|\bisahc/"),
    ("dart", r"dart:io|\bdart/\d"),
    ("api-client", r"\bhttpie/|postmanruntime|insomnia/"),
    ("scraper", r"scrapy|\bcolly\b|mechanize|crawler4j|nokogiri"),
    // Vulnerability scanners.
    (
        "scanner",
        r"sqlmap|nikto|\bnmap\b|nmap scripting|masscan|zgrab|nuclei|wpscan|dirbuster|gobuster|\bffuf|acunetix|netsparker|nessus|openvas|\bw3af|arachni|zmeu|jorgee|fimap",
    ),
    // Anything else that calls itself a bot, crawler or spider.
    ("bot-token", r"bot\b|crawler|spider|scraper"),
];

/// User-Agents the built-in list would flag and must not: Cubot is an Android phone brand whose
/// model names end up in its browsers' User-Agents.
pub const BUILTIN_EXCEPTIONS: &[&str] = &[r"\bcubot\b"];

/// The built-in sets, compiled once per process.
static BUILTIN_SETS: LazyLock<Result<(RegexSet, RegexSet), String>> = LazyLock::new(|| {
    let compile = |patterns: Vec<&str>| {
        RegexSetBuilder::new(patterns)
            .case_insensitive(true)
            .size_limit(REGEX_SIZE_LIMIT * 4)
            .build()
            .map_err(|e| format!("the built-in bot list does not compile: {e}"))
    };
    Ok((
        compile(BUILTIN.iter().map(|(_, p)| *p).collect())?,
        compile(BUILTIN_EXCEPTIONS.to_vec())?,
    ))
});

/// One header-shape check. Each flags something browsers always do and simple clients skip;
/// none is decisive alone against a careful client, which is why the policy opts into them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// No `User-Agent`, or an empty one. Every browser sends one; bare HTTP libraries and
    /// hand-written scripts often do not.
    NoUserAgent,
    /// No `Accept`. Browsers send it on navigations and on every sub-resource and `fetch()`
    /// request (`*/*` at least).
    NoAccept,
    /// The User-Agent claims a browser (`Mozilla/…`) but there is no `Accept-Language`.
    /// Browsers send the user's languages on every request; scripts that borrow a browser's
    /// User-Agent rarely borrow the rest of its headers.
    BrowserWithoutAcceptLanguage,
    /// The User-Agent claims a browser but there is no `Accept-Encoding`: every browser offers
    /// gzip (and br) on every request.
    BrowserWithoutAcceptEncoding,
    /// The User-Agent claims Chrome 80 or later (Chrome, Edge, Opera, Brave, …) over TLS, yet no
    /// `Sec-Fetch-Mode` or `Sec-Fetch-Site` came: those browsers attach fetch metadata to every
    /// request to a secure origin. Not checked on plain HTTP, where browsers omit it.
    ChromiumWithoutFetchMetadata,
}

impl Signal {
    /// The token used in reasons and in `x-fleetgate-bot`.
    pub fn token(self) -> &'static str {
        match self {
            Signal::NoUserAgent => "no-user-agent",
            Signal::NoAccept => "no-accept",
            Signal::BrowserWithoutAcceptLanguage => "browser-without-accept-language",
            Signal::BrowserWithoutAcceptEncoding => "browser-without-accept-encoding",
            Signal::ChromiumWithoutFetchMetadata => "chromium-without-fetch-metadata",
        }
    }

    /// Every signal `headers` (sent over TLS or not) shows.
    pub fn detect(headers: &HeaderMap, tls: bool) -> Vec<Signal> {
        let ua = user_agent(headers);
        let has = |name: &str| headers.get(name).is_some_and(|v| !v.is_empty());
        let browser = ua.contains("Mozilla/");
        let mut signals = Vec::new();
        if ua.trim().is_empty() {
            signals.push(Signal::NoUserAgent);
        }
        if !has("accept") {
            signals.push(Signal::NoAccept);
        }
        if browser && !has("accept-language") {
            signals.push(Signal::BrowserWithoutAcceptLanguage);
        }
        if browser && !has("accept-encoding") {
            signals.push(Signal::BrowserWithoutAcceptEncoding);
        }
        if tls
            && chrome_major(&ua).is_some_and(|v| v >= 80)
            && !has("sec-fetch-mode")
            && !has("sec-fetch-site")
        {
            signals.push(Signal::ChromiumWithoutFetchMetadata);
        }
        signals
    }
}

/// The User-Agent, or "" when absent (lossy for non-UTF-8 bytes).
fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// The major version after `Chrome/` in a User-Agent.
fn chrome_major(ua: &str) -> Option<u32> {
    let rest = &ua[ua.find("Chrome/")? + "Chrome/".len()..];
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// The secret this agent signs challenge cookies with, kept across config versions.
#[derive(Debug)]
pub struct BotState {
    signer: CookieSigner,
}

/// A compiled bot-detect policy.
#[derive(Debug)]
pub struct BotDetect {
    name: String,
    allow: Option<RegexSet>,
    deny: Option<RegexSet>,
    builtin: Option<(RegexSet, RegexSet)>,
    header_signals: bool,
    action: Action,
    /// The challenge cookie's name: per policy, since each policy has its own secret.
    cookie: String,
    state: Arc<BotState>,
}

/// Compiles a list of User-Agent regexes into one set, each within the validation size limit.
/// Errors name the field and index.
fn compile(field: &str, patterns: &[String]) -> Result<Option<RegexSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for (i, pattern) in patterns.iter().enumerate() {
        RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|e| format!("{field}[{i}]: {e}"))?;
    }
    RegexSetBuilder::new(patterns)
        .size_limit(REGEX_SIZE_LIMIT.saturating_mul(patterns.len()))
        .build()
        .map(Some)
        .map_err(|e| format!("{field}: {e}"))
}

impl BotDetect {
    /// Compiles the policy's regexes and reuses (or creates) its challenge secret in `state`.
    pub fn build(name: &str, config: &Config, state: &PolicyState) -> Result<Self, String> {
        let builtin = if config.builtin_list {
            Some(BUILTIN_SETS.as_ref().map_err(Clone::clone)?.clone())
        } else {
            None
        };
        let signer = CookieSigner::generate()?;
        let cookie_suffix: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            allow: compile("allow", &config.allow)?,
            deny: compile("deny", &config.deny)?,
            builtin,
            header_signals: config.header_signals,
            action: config.action,
            cookie: format!("fleetgate_bot_{cookie_suffix}"),
            state: state.get_or_insert(name, KIND, || BotState { signer }),
        })
    }

    /// Why a request looks automated: nothing when it does not, or when an `allow` rule matches.
    pub fn reasons(&self, headers: &HeaderMap, tls: bool) -> Vec<String> {
        let ua = user_agent(headers);
        if self.allow.as_ref().is_some_and(|set| set.is_match(&ua)) {
            return Vec::new();
        }
        let mut reasons = Vec::new();
        if let Some(i) = self
            .deny
            .as_ref()
            .and_then(|set| set.matches(&ua).iter().next())
        {
            reasons.push(format!("deny-rule:{i}"));
        }
        if let Some((list, exceptions)) = &self.builtin
            && !exceptions.is_match(&ua)
            && let Some(i) = list.matches(&ua).iter().next()
            && let Some((label, _)) = BUILTIN.get(i)
        {
            reasons.push(format!("builtin:{label}"));
        }
        if self.header_signals {
            for signal in Signal::detect(headers, tls) {
                reasons.push(format!("signal:{}", signal.token()));
            }
        }
        reasons
    }

    fn challenge_page(&self, ctx: &RequestCtx<'_>) -> Response<Bytes> {
        let ip = ctx.peer_ip();
        let expiry = ctx.unix_secs() + CHALLENGE_TTL.as_secs();
        // Name and value are [A-Za-z0-9_.-]: safe inside the script's string and the page.
        let value = self.state.signer.token(&self.name, &ip.to_string(), expiry);
        let secure = if ctx.tls { "; Secure" } else { "" };
        let page = format!(
            r#"<!doctype html>
<html><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Checking your browser</title></head>
<body><p>Checking your browser&hellip; this page reloads by itself.</p>
<noscript><p>This site needs JavaScript to let your browser in. Enable it and reload.</p></noscript>
<script>document.cookie = "{name}={value}; Path=/; Max-Age={ttl}; SameSite=Lax{secure}";
location.replace(location.href);</script></body></html>
"#,
            name = self.cookie,
            ttl = CHALLENGE_TTL.as_secs(),
        );
        let mut response = Response::new(Bytes::from(page));
        // 503 rather than 403: a crawler that hits the challenge retries later instead of
        // indexing or dropping the page.
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn passed_challenge(&self, ctx: &RequestCtx<'_>) -> bool {
        ctx.cookie(&self.cookie).is_some_and(|cookie| {
            self.state.signer.verify(
                &self.name,
                &ctx.peer_ip().to_string(),
                cookie,
                ctx.unix_secs(),
            )
        })
    }

    fn decide(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        ctx.headers.remove(&BOT_HEADER);
        let reasons = self.reasons(&ctx.headers, ctx.tls);
        if reasons.is_empty() {
            return Verdict::Continue;
        }
        let reasons = reasons.join(", ");
        match self.action {
            Action::Deny => Verdict::Respond(reject(
                StatusCode::FORBIDDEN,
                "bot_denied",
                &format!("automated clients are not allowed here ({reasons})"),
                &self.name,
            )),
            Action::Challenge if self.passed_challenge(ctx) => Verdict::Continue,
            Action::Challenge => Verdict::Respond(self.challenge_page(ctx)),
            Action::Allow => {
                if let Ok(value) = HeaderValue::from_str(&reasons) {
                    ctx.headers.insert(BOT_HEADER, value);
                }
                Verdict::Continue
            }
        }
    }
}

impl AnswersAtOnce for BotDetect {
    fn name(&self) -> &str {
        &self.name
    }

    fn phase(&self) -> Phase {
        Phase::Security
    }

    fn verdict(&self, ctx: &mut RequestCtx<'_>) -> Verdict {
        self.decide(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::UNIX_EPOCH;

    use http::{Method, Uri};

    use super::*;

    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    fn config(action: Action) -> Config {
        Config {
            allow: vec![],
            deny: vec![],
            builtin_list: true,
            header_signals: false,
            action,
        }
    }

    fn plugin(config: &Config) -> BotDetect {
        BotDetect::build("bots", config, &PolicyState::default()).unwrap()
    }

    /// A browser-shaped request from `peer` with `ua` (none when empty) and extra headers.
    fn request(peer: &str, ua: &str, extra: &[(&str, &str)]) -> RequestCtx<'static> {
        let mut headers = HeaderMap::new();
        if !ua.is_empty() {
            headers.insert(header::USER_AGENT, ua.parse().unwrap());
        }
        for (name, value) in [
            ("accept", "text/html,*/*;q=0.8"),
            ("accept-language", "en-GB,en;q=0.9"),
            ("accept-encoding", "gzip, deflate, br"),
        ] {
            headers.insert(name, value.parse().unwrap());
        }
        for (name, value) in extra {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            if value.is_empty() {
                headers.remove(&name);
            } else {
                headers.insert(name, value.parse().unwrap());
            }
        }
        let peer: SocketAddr = peer.parse().unwrap();
        RequestCtx::new(Method::GET, Uri::from_static("/page"), headers, peer, false)
    }

    fn run(p: &BotDetect, ctx: &mut RequestCtx<'_>) -> Option<Response<Bytes>> {
        match p.decide(ctx) {
            Verdict::Continue => None,
            Verdict::Respond(r) => Some(r),
        }
    }

    #[test]
    fn the_builtin_list_compiles_and_every_pattern_stands_alone() {
        assert!(BUILTIN_SETS.is_ok(), "{:?}", BUILTIN_SETS.as_ref().err());
        for (label, pattern) in BUILTIN {
            regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{label}: {e}"));
        }
    }

    #[test]
    fn builtin_crawlers_and_clients_are_flagged_and_browsers_are_not() {
        let p = plugin(&config(Action::Deny));
        let flagged = [
            (
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
                "builtin:googlebot",
            ),
            (
                "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
                "builtin:bingbot",
            ),
            (
                "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
                "builtin:ahrefs",
            ),
            (
                "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
                "builtin:openai",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
                "builtin:headless-browser",
            ),
            ("curl/8.5.0", "builtin:curl"),
            ("Wget/1.21.3", "builtin:wget"),
            ("python-requests/2.31.0", "builtin:python"),
            ("Go-http-client/1.1", "builtin:go-http-client"),
            ("Java/17.0.2", "builtin:java"),
            ("okhttp/4.12.0", "builtin:java"),
            ("Scrapy/2.11.0 (+https://scrapy.org)", "builtin:scraper"),
            (
                "sqlmap/1.7.2#stable (https://sqlmap.org)",
                "builtin:scanner",
            ),
            ("SomeNewCrawler/0.1", "builtin:bot-token"),
            ("acme-monitor-bot", "builtin:bot-token"),
        ];
        for (ua, reason) in flagged {
            assert_eq!(
                p.reasons(&request("192.0.2.1:1", ua, &[]).headers, false),
                vec![reason.to_owned()],
                "{ua}"
            );
        }
        let browsers = [
            FIREFOX,
            CHROME,
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (Linux; Android 10; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
        ];
        for ua in browsers {
            let headers = request("192.0.2.1:1", ua, &[]).headers;
            assert!(p.reasons(&headers, false).is_empty(), "{ua}");
        }
        let off = plugin(&Config {
            builtin_list: false,
            ..config(Action::Deny)
        });
        assert!(
            off.reasons(&request("192.0.2.1:1", "curl/8.5.0", &[]).headers, false)
                .is_empty()
        );
    }

    #[test]
    fn allow_beats_deny_and_the_builtin_list() {
        let p = plugin(&Config {
            allow: vec!["^PartnerCrawler/".into(), "(?i)googlebot".into()],
            deny: vec!["(?i)crawler".into(), "Firefox".into()],
            header_signals: true,
            ..config(Action::Deny)
        });
        let reasons = |ua: &str| p.reasons(&request("192.0.2.1:1", ua, &[]).headers, false);
        assert!(reasons("PartnerCrawler/2.0").is_empty(), "allow beats deny");
        assert!(
            reasons("Mozilla/5.0 (compatible; Googlebot/2.1)").is_empty(),
            "allow beats the built-in list"
        );
        assert_eq!(
            reasons("OtherCrawler/1.0"),
            vec!["deny-rule:0", "builtin:bot-token"]
        );
        assert_eq!(reasons(FIREFOX), vec!["deny-rule:1"]);
        // An allowed User-Agent also skips the header signals.
        let bare = request("192.0.2.1:1", "PartnerCrawler/2.0", &[("accept", "")]);
        assert!(p.reasons(&bare.headers, false).is_empty());
    }

    #[test]
    fn header_signals_flag_what_browsers_always_send() {
        let p = plugin(&Config {
            builtin_list: false,
            header_signals: true,
            ..config(Action::Deny)
        });
        let reasons = |ua: &str, extra: &[(&str, &str)], tls: bool| {
            p.reasons(&request("192.0.2.1:1", ua, extra).headers, tls)
        };
        assert!(
            reasons(FIREFOX, &[], false).is_empty(),
            "a full browser request"
        );
        assert!(
            reasons(FIREFOX, &[], true).is_empty(),
            "Firefox is not asked for fetch metadata"
        );
        assert_eq!(reasons("", &[], false), vec!["signal:no-user-agent"]);
        assert_eq!(
            reasons("tool/1", &[("accept", "")], false),
            vec!["signal:no-accept"]
        );
        assert_eq!(
            reasons(FIREFOX, &[("accept-language", "")], false),
            vec!["signal:browser-without-accept-language"]
        );
        assert_eq!(
            reasons(FIREFOX, &[("accept-encoding", "")], false),
            vec!["signal:browser-without-accept-encoding"]
        );
        assert!(
            reasons(
                "tool/1",
                &[("accept-language", ""), ("accept-encoding", "")],
                false
            )
            .is_empty(),
            "a non-browser User-Agent is not held to browser headers"
        );
        assert!(
            reasons(CHROME, &[], false).is_empty(),
            "no fetch metadata over plain HTTP"
        );
        assert_eq!(
            reasons(CHROME, &[], true),
            vec!["signal:chromium-without-fetch-metadata"]
        );
        assert!(reasons(CHROME, &[("sec-fetch-mode", "navigate")], true).is_empty());
        assert_eq!(chrome_major(CHROME), Some(131));
        assert_eq!(chrome_major("Chrome/"), None);
    }

    #[test]
    fn deny_answers_403_naming_the_reason() {
        let p = plugin(&config(Action::Deny));
        let response = run(&p, &mut request("192.0.2.1:1", "curl/8.5.0", &[])).unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["error"], "bot_denied");
        assert_eq!(body["policy"], "bots");
        assert!(body["message"].as_str().unwrap().contains("builtin:curl"));
        assert!(run(&p, &mut request("192.0.2.1:1", FIREFOX, &[])).is_none());
    }

    #[test]
    fn allow_marks_the_request_and_a_forged_mark_is_removed() {
        let p = plugin(&config(Action::Allow));
        let mut bot = request("192.0.2.1:1", "curl/8.5.0", &[]);
        assert!(run(&p, &mut bot).is_none());
        assert_eq!(bot.headers[&BOT_HEADER], "builtin:curl");
        let mut forged = request("192.0.2.1:1", FIREFOX, &[("x-fleetgate-bot", "none")]);
        assert!(run(&p, &mut forged).is_none());
        assert!(!forged.headers.contains_key(&BOT_HEADER));
    }

    /// The cookie the challenge page's script sets, as `name=value`.
    fn cookie_from(page: &Response<Bytes>) -> String {
        let html = std::str::from_utf8(page.body()).unwrap();
        let start = html.find("document.cookie = \"").unwrap() + "document.cookie = \"".len();
        html[start..].split(';').next().unwrap().to_owned()
    }

    #[test]
    fn the_challenge_round_trip_lets_a_script_running_client_in() {
        let state = PolicyState::default();
        let p = BotDetect::build("bots", &config(Action::Challenge), &state).unwrap();
        let page = run(&p, &mut request("192.0.2.1:1", "curl/8.5.0", &[])).unwrap();
        assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
        assert!(
            page.headers().get(header::SET_COOKIE).is_none(),
            "only the script sets it"
        );
        let cookie = cookie_from(&page);
        assert!(cookie.starts_with("fleetgate_bot_bots="), "{cookie}");

        let with = |peer: &str, cookie: &str| request(peer, "curl/8.5.0", &[("cookie", cookie)]);
        assert!(
            run(&p, &mut with("192.0.2.1:2", &cookie)).is_none(),
            "the cookie passes"
        );
        assert!(
            run(&p, &mut with("198.51.100.9:1", &cookie)).is_some(),
            "bound to the address"
        );
        assert!(
            run(&p, &mut with("[::ffff:192.0.2.1]:3", &cookie)).is_none(),
            "IPv4-mapped is the same address"
        );

        // Expiry: the same cookie after its lifetime is challenged again.
        let mut late = with("192.0.2.1:2", &cookie);
        let later = UNIX_EPOCH + late.since_epoch() + CHALLENGE_TTL + Duration::from_secs(1);
        late.set_now(later);
        assert!(run(&p, &mut late).is_some());

        // Tampering with the expiry breaks the signature.
        let (name, value) = cookie.split_once('=').unwrap();
        let (expiry, signature) = value.split_once('.').unwrap();
        let forged = format!(
            "{name}={}.{signature}",
            expiry.parse::<u64>().unwrap() + 3600
        );
        assert!(run(&p, &mut with("192.0.2.1:2", &forged)).is_some());
        assert!(run(&p, &mut with("192.0.2.1:2", &format!("{name}=garbage"))).is_some());

        // The secret outlives config versions; another agent (state) has another one.
        let rebuilt = BotDetect::build("bots", &config(Action::Challenge), &state).unwrap();
        assert!(run(&rebuilt, &mut with("192.0.2.1:2", &cookie)).is_none());
        let elsewhere = plugin(&config(Action::Challenge));
        assert!(run(&elsewhere, &mut with("192.0.2.1:2", &cookie)).is_some());

        // Unflagged clients are never challenged.
        assert!(run(&p, &mut request("192.0.2.1:1", FIREFOX, &[])).is_none());
    }

    #[test]
    fn a_bad_regex_names_its_field_and_index() {
        let err = BotDetect::build(
            "bots",
            &Config {
                deny: vec!["ok".into(), "(".into()],
                ..config(Action::Deny)
            },
            &PolicyState::default(),
        )
        .unwrap_err();
        assert!(err.starts_with("deny[1]:"), "{err}");
    }
}
