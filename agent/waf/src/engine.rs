//! The C API of libmodsecurity 3.0.x (`modsecurity/modsecurity.h`, `rules_set.h`,
//! `transaction.h`, `intervention.h`), declared by hand for the dozen functions used, and the
//! safe types over it.
//!
//! Three facts about the library shape this module:
//! - `msc_cleanup` (the `ModSecurity` destructor) calls `curl_global_cleanup`,
//!   `xmlCleanupParser` and the GeoIP singleton's cleanup: process-wide state another thread may
//!   be using. So there is exactly one `ModSecurity` per process, created on first use and never
//!   destroyed; rule sets come and go with config versions.
//! - The rule parser (bison + flex) is not reentrant: loads are serialised by [`LOAD`].
//! - A loaded `RulesSet` is only read by transactions, which is how the multi-threaded servers
//!   that embed the library share one; in-memory collections (`ip`, `global`) take their own lock.
//!   Each transaction is created, used and destroyed on one thread inside [`Engine::evaluate`].

use std::ffi::{CStr, CString, c_char, c_int, c_uchar, c_void};
use std::ptr::{self, NonNull};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::{EvaluateError, Intervention, LoadError, MAX_MATCHES, Outcome, Request, RuleMatch};

/// `ModSecurity`, `RulesSet` and `Transaction` are C++ classes the C API hands out as opaque
/// pointers.
#[repr(C)]
struct ModSecurity {
    _opaque: [u8; 0],
}
#[repr(C)]
struct RulesSet {
    _opaque: [u8; 0],
}
#[repr(C)]
struct Transaction {
    _opaque: [u8; 0],
}

/// `ModSecurityIntervention` (intervention.h). `url` and `log` are `strdup`ed copies the caller
/// frees.
#[repr(C)]
struct MscIntervention {
    status: c_int,
    pause: c_int,
    url: *mut c_char,
    log: *mut c_char,
    disruptive: c_int,
}

/// `ModSecLogCb`: called with the transaction's `logCbData` and, under the default
/// `TextLogProperty`, a NUL-terminated log line.
type LogCallback = unsafe extern "C" fn(data: *mut c_void, message: *const c_void);

/// The shared object loaded at run time. The agent does not link libmodsecurity: a binary built
/// anywhere starts without it (and without the ~40 libraries it pulls in: curl, libxml2, ICU,
/// GnuTLS, Lua ...), and only an agent serving a `waf` policy loads it, on first use.
const LIBRARY: &str = "libmodsecurity.so.3";

/// The C functions used, resolved once from [`LIBRARY`].
struct Api {
    /// Kept loaded for the life of the process (the `ModSecurity` instance is never freed).
    _library: libloading::Library,
    msc_init: unsafe extern "C" fn() -> *mut ModSecurity,
    msc_set_connector_info: unsafe extern "C" fn(*mut ModSecurity, *const c_char),
    msc_set_log_cb: unsafe extern "C" fn(*mut ModSecurity, Option<LogCallback>),
    msc_create_rules_set: unsafe extern "C" fn() -> *mut RulesSet,
    msc_rules_add: unsafe extern "C" fn(*mut RulesSet, *const c_char, *mut *const c_char) -> c_int,
    msc_rules_cleanup: unsafe extern "C" fn(*mut RulesSet) -> c_int,
    msc_new_transaction_with_id: unsafe extern "C" fn(
        *mut ModSecurity,
        *mut RulesSet,
        *mut c_char,
        *mut c_void,
    ) -> *mut Transaction,
    msc_process_connection:
        unsafe extern "C" fn(*mut Transaction, *const c_char, c_int, *const c_char, c_int) -> c_int,
    msc_process_uri: unsafe extern "C" fn(
        *mut Transaction,
        *const c_char,
        *const c_char,
        *const c_char,
    ) -> c_int,
    msc_add_n_request_header: unsafe extern "C" fn(
        *mut Transaction,
        *const c_uchar,
        usize,
        *const c_uchar,
        usize,
    ) -> c_int,
    msc_process_request_headers: unsafe extern "C" fn(*mut Transaction) -> c_int,
    msc_append_request_body: unsafe extern "C" fn(*mut Transaction, *const c_uchar, usize) -> c_int,
    msc_process_request_body: unsafe extern "C" fn(*mut Transaction) -> c_int,
    msc_intervention: unsafe extern "C" fn(*mut Transaction, *mut MscIntervention) -> c_int,
    msc_transaction_cleanup: unsafe extern "C" fn(*mut Transaction),
    /// libinjection, which libmodsecurity links in statically and exports: the detectors behind
    /// `@detectSQLi` and `@detectXSS`. `fingerprint` receives at most 8 bytes and a NUL.
    libinjection_sqli: unsafe extern "C" fn(*const c_char, usize, *mut c_char) -> c_int,
    libinjection_xss: unsafe extern "C" fn(*const c_char, usize) -> c_int,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The loaded API, or why it could not be loaded (the library is missing, or lacks a symbol).
fn api() -> Result<&'static Api, &'static str> {
    API.get_or_init(|| {
        // SAFETY: loading a shared object runs its initialisers; libmodsecurity's only set up
        // its own statics. It is loaded once and never unloaded.
        let library = unsafe { libloading::Library::new(LIBRARY) }
            .map_err(|e| format!("cannot load {LIBRARY} ({e}); install libmodsecurity3 (Debian: apt-get install libmodsecurity3 modsecurity-crs) to serve waf policies"))?;
        macro_rules! symbol {
            ($name:ident) => {
                // SAFETY: the symbol has the C signature declared in `Api` (modsecurity 3.0.x
                // headers); the pointer is copied out and the library stays loaded.
                *unsafe { library.get(concat!(stringify!($name), "\0").as_bytes()) }
                    .map_err(|e| format!("{LIBRARY} lacks {}: {e}", stringify!($name)))?
            };
        }
        Ok(Api {
            msc_init: symbol!(msc_init),
            msc_set_connector_info: symbol!(msc_set_connector_info),
            msc_set_log_cb: symbol!(msc_set_log_cb),
            msc_create_rules_set: symbol!(msc_create_rules_set),
            msc_rules_add: symbol!(msc_rules_add),
            msc_rules_cleanup: symbol!(msc_rules_cleanup),
            msc_new_transaction_with_id: symbol!(msc_new_transaction_with_id),
            msc_process_connection: symbol!(msc_process_connection),
            msc_process_uri: symbol!(msc_process_uri),
            msc_add_n_request_header: symbol!(msc_add_n_request_header),
            msc_process_request_headers: symbol!(msc_process_request_headers),
            msc_append_request_body: symbol!(msc_append_request_body),
            msc_process_request_body: symbol!(msc_process_request_body),
            msc_intervention: symbol!(msc_intervention),
            msc_transaction_cleanup: symbol!(msc_transaction_cleanup),
            libinjection_sqli: symbol!(libinjection_sqli),
            libinjection_xss: symbol!(libinjection_xss),
            _library: library,
        })
    })
    .as_ref()
    .map_err(String::as_str)
}

/// The loaded API. Rule sets and transactions exist only after [`global`] loaded it, so the
/// wrappers below always find it; if not, they fail the call the way the C function would.
fn loaded() -> Option<&'static Api> {
    API.get().and_then(|r| r.as_ref().ok())
}

macro_rules! forward {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $missing:expr;)*) => {$(
        /// Calls the C function of the same name through the loaded library.
        ///
        /// # Safety
        /// As the C function's contract: live pointers of the right kind.
        unsafe fn $name($($arg: $ty),*) -> $ret {
            match loaded() {
                // SAFETY: forwarded unchanged; the caller upholds the C contract.
                Some(api) => unsafe { (api.$name)($($arg),*) },
                None => $missing,
            }
        }
    )*};
}

forward! {
    fn msc_create_rules_set() -> *mut RulesSet = ptr::null_mut();
    fn msc_rules_add(rules: *mut RulesSet, text: *const c_char, error: *mut *const c_char) -> c_int = -1;
    fn msc_rules_cleanup(rules: *mut RulesSet) -> c_int = -1;
    fn msc_new_transaction_with_id(msc: *mut ModSecurity, rules: *mut RulesSet, id: *mut c_char, data: *mut c_void) -> *mut Transaction = ptr::null_mut();
    fn msc_process_connection(tx: *mut Transaction, client: *const c_char, client_port: c_int, server: *const c_char, server_port: c_int) -> c_int = 0;
    fn msc_process_uri(tx: *mut Transaction, uri: *const c_char, method: *const c_char, version: *const c_char) -> c_int = 0;
    fn msc_add_n_request_header(tx: *mut Transaction, key: *const c_uchar, key_len: usize, value: *const c_uchar, value_len: usize) -> c_int = 0;
    fn msc_process_request_headers(tx: *mut Transaction) -> c_int = 0;
    fn msc_append_request_body(tx: *mut Transaction, body: *const c_uchar, size: usize) -> c_int = 0;
    fn msc_process_request_body(tx: *mut Transaction) -> c_int = 0;
    fn msc_intervention(tx: *mut Transaction, it: *mut MscIntervention) -> c_int = 0;
    fn msc_transaction_cleanup(tx: *mut Transaction) -> () = ();
}

/// libinjection's SQL injection detector over `input`: the token fingerprint if it found one.
/// `None` also when libmodsecurity cannot be loaded (callers load an [`Engine`] or
/// [`crate::native::Engine`] first, which fails then).
pub(crate) fn detect_sqli(input: &[u8]) -> Option<[u8; 8]> {
    let api = api().ok()?;
    let mut fingerprint = [0 as c_char; 9];
    // SAFETY: libinjection reads exactly `input.len()` bytes (it does not need a terminator) and
    // writes at most 8 fingerprint bytes plus a NUL into the 9-byte buffer.
    let found = unsafe {
        (api.libinjection_sqli)(
            input.as_ptr().cast::<c_char>(),
            input.len(),
            fingerprint.as_mut_ptr(),
        )
    };
    (found != 0).then(|| {
        let mut out = [0u8; 8];
        for (o, f) in out.iter_mut().zip(fingerprint) {
            *o = f as u8;
        }
        out
    })
}

/// libinjection's XSS detector over `input`. `false` also when libmodsecurity cannot be loaded.
pub(crate) fn detect_xss(input: &[u8]) -> bool {
    let Ok(api) = api() else { return false };
    // SAFETY: libinjection reads exactly `input.len()` bytes and keeps no pointer.
    unsafe { (api.libinjection_xss)(input.as_ptr().cast::<c_char>(), input.len()) != 0 }
}

/// Loads libmodsecurity (for libinjection) or says why it cannot be.
pub(crate) fn ensure_loaded() -> Result<(), LoadError> {
    api()
        .map(|_| ())
        .map_err(|e| LoadError::Unavailable(e.to_owned()))
}

unsafe extern "C" {
    /// libc's `free`, for the strings libmodsecurity `strdup`s for the caller.
    fn free(ptr: *mut c_void);
}

/// The process's one `ModSecurity` instance (see the module doc for why it is never freed).
struct Global(NonNull<ModSecurity>);

// SAFETY: the instance is created once, configured before it is published, and afterwards only
// passed to `msc_new_transaction_with_id`, which reads it; its collections lock internally.
unsafe impl Send for Global {}
// SAFETY: as above: shared use is read-only apart from internally locked collections.
unsafe impl Sync for Global {}

static GLOBAL: OnceLock<Option<Global>> = OnceLock::new();

/// Serialises rule loading: the parser keeps global state.
static LOAD: Mutex<()> = Mutex::new(());

fn global() -> Option<&'static Global> {
    GLOBAL
        .get_or_init(|| {
            let api = api().ok()?;
            // SAFETY: plain constructor call; a null result is handled below.
            let msc = NonNull::new(unsafe { (api.msc_init)() })?;
            let connector = c"fleetgate-agent";
            // SAFETY: `msc` is a live instance no other thread has seen yet; the connector name
            // is a NUL-terminated static string the library copies.
            unsafe { (api.msc_set_connector_info)(msc.as_ptr(), connector.as_ptr()) };
            // Without a callback the library writes every match to stderr; with one, matches
            // reach the transaction's `Sink`.
            // SAFETY: as above; `on_log` has the `ModSecLogCb` signature.
            unsafe { (api.msc_set_log_cb)(msc.as_ptr(), Some(on_log)) };
            Some(Global(msc))
        })
        .as_ref()
}

/// Where one transaction's log lines go: `evaluate` owns it, the library reaches it through the
/// transaction's `logCbData`.
#[derive(Default)]
struct Sink {
    matches: Vec<RuleMatch>,
}

/// The log callback. Runs synchronously inside a `msc_process_*` call of the thread that owns the
/// transaction. Must not unwind (it cannot: nothing here panics short of an allocation failure,
/// which aborts).
unsafe extern "C" fn on_log(data: *mut c_void, message: *const c_void) {
    if data.is_null() || message.is_null() {
        return;
    }
    // SAFETY: `data` is the `*mut Sink` `evaluate` gave this transaction; the `Sink` outlives the
    // transaction and `evaluate` does not touch it while a library call is running.
    let sink = unsafe { &mut *data.cast::<Sink>() };
    // SAFETY: under `TextLogProperty` (what `msc_set_log_cb` selects) `message` is a
    // NUL-terminated string valid for the duration of the call.
    let line = unsafe { CStr::from_ptr(message.cast::<c_char>()) };
    if sink.matches.len() < MAX_MATCHES {
        sink.matches.push(RuleMatch::parse(&line.to_string_lossy()));
    }
}

/// Copies and frees a string the library `strdup`ed for us.
fn take_c_string(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-null strings from `msc_rules_add` errors and `msc_intervention` are
    // NUL-terminated heap copies owned by the caller.
    let text = unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by the library with `strdup` (malloc), freed exactly once here.
    unsafe { free(ptr.cast_mut().cast::<c_void>()) };
    Some(text)
}

/// A loaded rule set. Cheap to share (`Arc<Engine>`); dropping it frees the rules.
pub struct Engine {
    rules: NonNull<RulesSet>,
    count: usize,
}

// SAFETY: after `load` returns, the rule set is never mutated through this handle; transactions
// on any thread only read it (see the module doc). Dropping it requires ownership, so no
// transaction can be using it then.
unsafe impl Send for Engine {}
// SAFETY: as above.
unsafe impl Sync for Engine {}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.count)
            .finish()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `msc_create_rules_set` and is freed once; `&mut self`
        // proves no evaluation is running.
        unsafe { msc_rules_cleanup(self.rules.as_ptr()) };
    }
}

impl Engine {
    /// Parses `config` (ModSecurity directives; `Include` reads files) into a rule set. Takes a
    /// process-wide lock: the parser is not reentrant. Loading the whole CRS takes about 0.1 s.
    pub fn load(config: &str) -> Result<Engine, LoadError> {
        api().map_err(|reason| LoadError::Unavailable(reason.to_owned()))?;
        global().ok_or(LoadError::Allocation)?;
        let text = CString::new(config).map_err(|_| LoadError::Nul)?;
        let _parser = LOAD.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: plain constructor call; null is handled.
        let rules = NonNull::new(unsafe { msc_create_rules_set() }).ok_or(LoadError::Allocation)?;
        let mut engine = Engine { rules, count: 0 };
        let mut error: *const c_char = ptr::null();
        // SAFETY: `rules` is live and unshared; `text` is NUL-terminated and outlives the call;
        // `error` is a valid out-pointer the library sets only on failure.
        let added = unsafe { msc_rules_add(rules.as_ptr(), text.as_ptr(), &mut error) };
        if added < 0 {
            let message = take_c_string(error).unwrap_or_else(|| "unknown parser error".into());
            return Err(LoadError::Rules(message.trim().to_owned()));
        }
        engine.count = usize::try_from(added).unwrap_or_default();
        Ok(engine)
    }

    /// How many rules the load added.
    pub fn rule_count(&self) -> usize {
        self.count
    }

    /// Runs `request` through the rule set: connection, URI, headers (phase 1), body (phase 2).
    /// Stops at the first intervention. Blocks the calling thread for the whole evaluation.
    pub fn evaluate(&self, request: &Request<'_>) -> Result<Outcome, EvaluateError> {
        let msc = global().ok_or(EvaluateError::Allocation)?;
        let c = |text: &str, what| CString::new(text).map_err(|_| EvaluateError::Nul(what));
        let id = c(request.id, "transaction id")?;
        let client = c(&request.client.ip().to_string(), "client address")?;
        let server = c(&request.server.ip().to_string(), "server address")?;
        let uri = c(request.uri, "target")?;
        let method = c(request.method, "method")?;
        let version = c(request.http_version, "version")?;

        let mut sink = Sink::default();
        let sink_ptr: *mut Sink = &raw mut sink;
        // SAFETY: `msc` and `self.rules` are live; the library copies `id`; `sink_ptr` stays
        // valid until the transaction is freed, which `Tx::drop` does before `sink` is read.
        let raw = unsafe {
            msc_new_transaction_with_id(
                msc.0.as_ptr(),
                self.rules.as_ptr(),
                id.as_ptr().cast_mut(),
                sink_ptr.cast::<c_void>(),
            )
        };
        let tx = Tx(NonNull::new(raw).ok_or(EvaluateError::Allocation)?);
        let intervention = tx.run(request, &client, &server, &uri, &method, &version);
        drop(tx);
        Ok(Outcome {
            intervention,
            matches: sink.matches,
        })
    }
}

/// One live transaction, freed on drop.
struct Tx(NonNull<Transaction>);

impl Drop for Tx {
    fn drop(&mut self) {
        // SAFETY: created by `msc_new_transaction_with_id`, freed once, on the thread that used
        // it.
        unsafe { msc_transaction_cleanup(self.0.as_ptr()) };
    }
}

/// Ports as the C API wants them.
fn port(addr: std::net::SocketAddr) -> c_int {
    c_int::from(addr.port())
}

impl Tx {
    fn run(
        &self,
        request: &Request<'_>,
        client: &CStr,
        server: &CStr,
        uri: &CStr,
        method: &CStr,
        version: &CStr,
    ) -> Option<Intervention> {
        let tx = self.0.as_ptr();
        // Return codes are ignored: they report "processed" (1) or that a phase was skipped,
        // and what matters is read from the intervention afterwards.
        // SAFETY: `tx` is live; the strings are NUL-terminated and outlive the call (copied).
        unsafe {
            msc_process_connection(
                tx,
                client.as_ptr(),
                port(request.client),
                server.as_ptr(),
                port(request.server),
            )
        };
        if let Some(it) = self.intervention() {
            return Some(it);
        }
        // SAFETY: as above.
        unsafe { msc_process_uri(tx, uri.as_ptr(), method.as_ptr(), version.as_ptr()) };
        for (name, value) in request.headers {
            // SAFETY: pointer and length pairs describe live slices; the library copies them.
            unsafe {
                msc_add_n_request_header(tx, name.as_ptr(), name.len(), value.as_ptr(), value.len())
            };
        }
        // SAFETY: `tx` is live.
        unsafe { msc_process_request_headers(tx) };
        if let Some(it) = self.intervention() {
            return Some(it);
        }
        if !request.body.is_empty() {
            // Returns false when the body is over SecRequestBodyLimit; with ProcessPartial the
            // library keeps the first part and sets INBOUND_DATA_ERROR, which rules can test.
            // SAFETY: pointer and length describe a live slice; the library copies it.
            unsafe { msc_append_request_body(tx, request.body.as_ptr(), request.body.len()) };
        }
        // SAFETY: `tx` is live.
        unsafe { msc_process_request_body(tx) };
        self.intervention()
    }

    fn intervention(&self) -> Option<Intervention> {
        let mut it = MscIntervention {
            status: 200,
            pause: 0,
            url: ptr::null_mut(),
            log: ptr::null_mut(),
            disruptive: 0,
        };
        // SAFETY: `tx` is live and `it` is a valid, zeroed out-parameter; the library only sets
        // `url` and `log` to fresh copies, which are taken (and freed) right below.
        let fired = unsafe { msc_intervention(self.0.as_ptr(), &mut it) };
        let url = take_c_string(it.url);
        let log = take_c_string(it.log);
        if fired == 0 && it.disruptive == 0 {
            return None;
        }
        Some(Intervention {
            status: u16::try_from(it.status)
                .ok()
                .filter(|s| (300..600).contains(s))
                .unwrap_or(403),
            rule: log.as_deref().map(RuleMatch::parse).unwrap_or_default(),
            redirect: url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const RULES: &str = r#"
SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 64
SecRequestBodyLimitAction ProcessPartial
SecRule ARGS "@contains evil" "id:1001,phase:2,deny,status:403,log,msg:'evil argument'"
SecRule REQUEST_HEADERS:X-Mark "@streq 1" "id:1002,phase:1,pass,log,msg:'marked'"
SecRule INBOUND_DATA_ERROR "@eq 1" "id:1003,phase:2,pass,log,msg:'body over the limit'"
"#;

    fn request<'a>(
        uri: &'a str,
        headers: &'a [(&'a [u8], &'a [u8])],
        body: &'a [u8],
    ) -> Request<'a> {
        Request {
            id: "t1",
            client: "192.0.2.7:40000".parse().unwrap(),
            server: "0.0.0.0:0".parse().unwrap(),
            method: "POST",
            uri,
            http_version: "1.1",
            headers,
            body,
        }
    }

    const FORM: &[(&[u8], &[u8])] = &[
        (b"Host", b"api.test"),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
    ];

    #[test]
    fn a_matching_argument_intervenes_and_names_the_rule() {
        let engine = Engine::load(RULES).unwrap();
        assert_eq!(engine.rule_count(), 3);
        let outcome = engine.evaluate(&request("/a?q=evil", FORM, b"")).unwrap();
        let it = outcome.intervention.unwrap();
        assert_eq!(it.status, 403);
        assert_eq!(it.rule.id, Some(1001));
        assert_eq!(it.rule.message.as_deref(), Some("evil argument"));

        let body = engine.evaluate(&request("/a", FORM, b"x=evil")).unwrap();
        assert_eq!(
            body.intervention.unwrap().rule.id,
            Some(1001),
            "body args are inspected"
        );

        let clean = engine
            .evaluate(&request("/a?q=fine", FORM, b"x=1"))
            .unwrap();
        assert_eq!(clean, Outcome::default());
    }

    #[test]
    fn non_disruptive_matches_are_reported_without_an_intervention() {
        let engine = Engine::load(RULES).unwrap();
        let headers: &[(&[u8], &[u8])] = &[(b"Host", b"api.test"), (b"X-Mark", b"1")];
        let outcome = engine.evaluate(&request("/a", headers, b"")).unwrap();
        assert!(outcome.intervention.is_none());
        assert_eq!(outcome.rule_ids(), vec![1002]);
    }

    #[test]
    fn a_body_over_the_limit_is_cut_and_flagged() {
        let engine = Engine::load(RULES).unwrap();
        // `evil` sits past the 64-byte limit: not inspected, but the overflow is visible.
        let mut body = b"x=".to_vec();
        body.extend(std::iter::repeat_n(b'a', 70));
        body.extend_from_slice(b"&y=evil");
        let outcome = engine.evaluate(&request("/a", FORM, &body)).unwrap();
        assert!(outcome.intervention.is_none(), "{outcome:?}");
        assert_eq!(outcome.rule_ids(), vec![1003]);
    }

    #[test]
    fn a_bad_rule_is_a_load_error_with_the_parsers_message() {
        let err = Engine::load("SecRuleEngine On\nSecNoSuchDirective On\n").unwrap_err();
        assert!(
            matches!(err, LoadError::Rules(ref m) if !m.is_empty()),
            "{err}"
        );
        let missing = Engine::load("Include /nonexistent/fleetgate/rules.conf").unwrap_err();
        assert!(missing.to_string().contains("nonexistent"), "{missing}");
        assert!(matches!(
            Engine::load("SecRuleEngine On\0"),
            Err(LoadError::Nul)
        ));
    }

    #[test]
    fn nul_bytes_in_c_strings_are_errors_not_truncations() {
        let engine = Engine::load(RULES).unwrap();
        let err = engine
            .evaluate(&request("/a\0?q=evil", FORM, b""))
            .unwrap_err();
        assert!(matches!(err, EvaluateError::Nul("target")));
        // Headers and bodies go by length, so a NUL there is just a byte.
        let headers: &[(&[u8], &[u8])] = &[(b"X-Odd", b"a\0b")];
        engine.evaluate(&request("/a", headers, b"a\0b")).unwrap();
    }

    #[test]
    fn one_rule_set_serves_many_threads_and_loads_run_concurrently() {
        let engine = Arc::new(Engine::load(RULES).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let engine = engine.clone();
                std::thread::spawn(move || {
                    // Another load on the side: the parser lock keeps them apart.
                    let _other = Engine::load(RULES).unwrap();
                    for i in 0..200 {
                        let evil = (i + t) % 2 == 0;
                        let uri = if evil { "/a?q=evil" } else { "/a?q=ok" };
                        let outcome = engine.evaluate(&request(uri, FORM, b"")).unwrap();
                        assert_eq!(outcome.intervention.is_some(), evil);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
