//! PCRE2 through its C API, for the native engine's regular expressions.
//!
//! Patterns are compiled as libmodsecurity compiles them (the same options, JIT-compiled when
//! the JIT is available) and matched through `pcre2_jit_match`, PCRE2's documented fast path to
//! JIT code, which skips the argument checks and option handling of `pcre2_match`: with the CRS
//! a benign request runs ~65 patterns, and those checks (through the pcre2 crate, with its
//! wrapper and our per-pattern match-data cache) cost more than most of the matches themselves.
//! A match that exhausts the JIT stack is re-run by PCRE2's interpreter on the same compiled
//! code (`PCRE2_NO_JIT`), as libmodsecurity does.
//!
//! Safety rests on three facts of PCRE2's API: compiled code is read-only after
//! `pcre2_jit_compile` and may be matched from any number of threads at once; a match data
//! block belongs to one thread at a time (here: one per thread, in a thread-local); the ovector
//! holds `pcre2_get_ovector_count` pairs of offsets into the subject.

use std::cell::RefCell;
use std::ptr::{self, NonNull};

use pcre2_sys::{
    PCRE2_CASELESS, PCRE2_DOTALL, PCRE2_ERROR_JIT_STACKLIMIT, PCRE2_ERROR_NOMATCH,
    PCRE2_ERROR_NOMEMORY, PCRE2_INFO_CAPTURECOUNT, PCRE2_INFO_FIRSTBITMAP,
    PCRE2_INFO_FIRSTCODETYPE, PCRE2_INFO_FIRSTCODEUNIT, PCRE2_INFO_LASTCODETYPE,
    PCRE2_INFO_LASTCODEUNIT, PCRE2_INFO_MINLENGTH, PCRE2_JIT_COMPLETE, PCRE2_MULTILINE,
    PCRE2_NO_JIT, PCRE2_UNSET, pcre2_code_8, pcre2_code_free_8, pcre2_compile_8,
    pcre2_get_error_message_8, pcre2_get_ovector_count_8, pcre2_get_ovector_pointer_8,
    pcre2_jit_compile_8, pcre2_jit_match_8, pcre2_match_8, pcre2_match_data_8,
    pcre2_match_data_create_8, pcre2_match_data_free_8, pcre2_pattern_info_8,
};

/// A compiled pattern.
pub(crate) struct Pattern {
    code: NonNull<pcre2_code_8>,
    /// JIT compilation succeeded: matches go through `pcre2_jit_match`.
    jit: bool,
    /// Offset pairs a match can fill: the capture groups and the whole match.
    pairs: u32,
    /// What every subject a match is found in has, by PCRE2's own analysis of the pattern.
    needs: Needs,
    source: String,
}

/// PCRE2's start-up checks, done before calling it: what `pcre2_pattern_info` says every
/// subject with a match has. PCRE2 makes the same checks first thing and answers "no match";
/// here they spare the call, its match-data setup and the JIT's entry, which on the short
/// values of a benign request cost more than the checks themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Needs {
    /// `PCRE2_INFO_MINLENGTH`: no shorter subject matches.
    min_length: usize,
    /// The fixed first code unit and the rightmost literal one (`FIRSTCODEUNIT`,
    /// `LASTCODEUNIT`) when ASCII, each with its other case: PCRE2 does not report whether the
    /// pattern matches it caselessly (`(?i)` inside the pattern), so either case counts.
    units: [Option<(u8, u8)>; 2],
    /// `PCRE2_INFO_FIRSTBITMAP`, when the pattern has no fixed first unit: the code units a
    /// match can start with (both cases of a caseless letter), a bit each.
    starts: Option<[u8; 32]>,
}

impl Needs {
    /// Asks PCRE2 about `code`; anything it cannot say leaves that check out.
    fn of(code: NonNull<pcre2_code_8>) -> Needs {
        let info = |what: u32| {
            let mut value: u32 = 0;
            // SAFETY: these four items each write one uint32_t to the pointer given; `code`
            // is a valid compiled pattern.
            let rc = unsafe { pcre2_pattern_info_8(code.as_ptr(), what, (&raw mut value).cast()) };
            (rc == 0).then_some(value)
        };
        let unit = |kind: u32, unit: u32| {
            let fixed = info(kind)? == 1;
            // ASCII only: under `(*UCP)` PCRE2 folds the case of Latin-1 units too.
            let byte = u8::try_from(info(unit)?)
                .ok()
                .filter(|b| fixed && b.is_ascii())?;
            let other = if byte.is_ascii_alphabetic() {
                byte ^ 0x20
            } else {
                byte
            };
            Some((byte, other))
        };
        let mut bitmap: *const u8 = ptr::null();
        // SAFETY: FIRSTBITMAP writes one pointer, to a 32-byte table inside the compiled code
        // or null; the table is copied here, while `code` is alive.
        let starts = unsafe {
            let rc = pcre2_pattern_info_8(
                code.as_ptr(),
                PCRE2_INFO_FIRSTBITMAP,
                (&raw mut bitmap).cast(),
            );
            (rc == 0 && !bitmap.is_null()).then(|| *bitmap.cast::<[u8; 32]>())
        };
        Needs {
            min_length: info(PCRE2_INFO_MINLENGTH).map_or(0, |n| n as usize),
            units: [
                unit(PCRE2_INFO_FIRSTCODETYPE, PCRE2_INFO_FIRSTCODEUNIT),
                unit(PCRE2_INFO_LASTCODETYPE, PCRE2_INFO_LASTCODEUNIT),
            ],
            starts,
        }
    }

    fn met_by(&self, subject: &[u8]) -> bool {
        subject.len() >= self.min_length
            && self
                .units
                .iter()
                .flatten()
                .all(|&(a, b)| memchr::memchr2(a, b, subject).is_some())
            && self.starts.as_ref().is_none_or(|starts| {
                subject
                    .iter()
                    .any(|&b| starts[usize::from(b >> 3)] & (1 << (b & 7)) != 0)
            })
    }
}

// SAFETY: compiled (and JIT-compiled) code is immutable and PCRE2 documents it as safe to share
// between threads for matching; nothing here changes it after `compile` returns.
unsafe impl Send for Pattern {}
// SAFETY: as for `Send`: every use after compilation is a read.
unsafe impl Sync for Pattern {}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pattern")
            .field("source", &self.source)
            .field("jit", &self.jit)
            .finish()
    }
}

impl Drop for Pattern {
    fn drop(&mut self) {
        // SAFETY: `code` came from `pcre2_compile_8` and is freed once, here.
        unsafe { pcre2_code_free_8(self.code.as_ptr()) }
    }
}

/// What one match attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Match,
    NoMatch,
    /// The JIT stack ran out (libmodsecurity then asks the interpreter).
    JitStackLimit,
    /// Any other error: a PCRE2 error code (the match limit ran out, say).
    Error(i32),
}

impl Pattern {
    /// Compiles `source` with DOTALL and MULTILINE (and CASELESS on request), then JIT-compiles
    /// it if the JIT is available.
    pub fn compile(source: &str, caseless: bool) -> Result<Pattern, String> {
        let mut options = PCRE2_DOTALL | PCRE2_MULTILINE;
        if caseless {
            options |= PCRE2_CASELESS;
        }
        let (mut error, mut offset) = (0, 0usize);
        // SAFETY: the pattern pointer and length describe `source`; the error outputs are
        // locals; a null compile context means PCRE2's defaults.
        let code = unsafe {
            pcre2_compile_8(
                source.as_ptr(),
                source.len(),
                options,
                &mut error,
                &mut offset,
                ptr::null_mut(),
            )
        };
        let Some(code) = NonNull::new(code) else {
            return Err(format!("{} (at offset {offset})", error_message(error)));
        };
        // SAFETY: `code` is a valid compiled pattern, not yet shared.
        let jit = unsafe { pcre2_jit_compile_8(code.as_ptr(), PCRE2_JIT_COMPLETE) } == 0;
        let mut groups: u32 = 0;
        // SAFETY: CAPTURECOUNT writes one uint32_t to the pointer given.
        let info = unsafe {
            pcre2_pattern_info_8(
                code.as_ptr(),
                PCRE2_INFO_CAPTURECOUNT,
                (&raw mut groups).cast(),
            )
        };
        let pattern = Pattern {
            code,
            jit,
            pairs: groups.saturating_add(1),
            needs: Needs::of(code),
            source: source.to_owned(),
        };
        if info != 0 {
            return Err(error_message(info));
        }
        Ok(pattern)
    }

    /// Runs the pattern over `subject` (through the JIT unless `interpreter`); on a match,
    /// `groups` sees each capture group that took part, as (group, start, end).
    pub fn find(
        &self,
        subject: &[u8],
        interpreter: bool,
        groups: impl FnOnce(&mut dyn Iterator<Item = (usize, usize, usize)>),
    ) -> Found {
        if !self.needs.met_by(subject) {
            return Found::NoMatch;
        }
        MATCH_DATA.with(|cell| match cell.try_borrow_mut() {
            Ok(mut data) => self.find_with(&mut data, subject, interpreter, groups),
            // Re-entered from `groups` (nothing does so today): a block of its own.
            Err(_) => self.find_with(&mut MatchData::default(), subject, interpreter, groups),
        })
    }

    fn find_with(
        &self,
        data: &mut MatchData,
        subject: &[u8],
        interpreter: bool,
        groups: impl FnOnce(&mut dyn Iterator<Item = (usize, usize, usize)>),
    ) -> Found {
        let Some(block) = data.with_pairs(self.pairs) else {
            return Found::Error(PCRE2_ERROR_NOMEMORY);
        };
        // PCRE2 reads no byte of an empty subject, but older versions dereferenced the
        // pointer anyway: give it a valid one.
        const ONE_BYTE: &[u8] = &[0];
        let pointer = if subject.is_empty() {
            ONE_BYTE.as_ptr()
        } else {
            subject.as_ptr()
        };
        // SAFETY: `code` is valid and shared read-only; `pointer` and the length describe the
        // subject (or a valid byte for an empty one); `block` is this thread's match data with
        // room for the pattern's groups; a null match context means PCRE2's defaults (those
        // libmodsecurity runs with: a 32 KiB JIT stack on the machine stack).
        let rc = unsafe {
            if self.jit && !interpreter {
                pcre2_jit_match_8(
                    self.code.as_ptr(),
                    pointer,
                    subject.len(),
                    0,
                    0,
                    block.as_ptr(),
                    ptr::null_mut(),
                )
            } else {
                pcre2_match_8(
                    self.code.as_ptr(),
                    pointer,
                    subject.len(),
                    0,
                    PCRE2_NO_JIT,
                    block.as_ptr(),
                    ptr::null_mut(),
                )
            }
        };
        if rc == PCRE2_ERROR_NOMATCH {
            return Found::NoMatch;
        }
        if rc == PCRE2_ERROR_JIT_STACKLIMIT {
            return Found::JitStackLimit;
        }
        if rc < 0 {
            return Found::Error(rc);
        }
        // SAFETY: the ovector of `block` holds `pcre2_get_ovector_count` pairs; a positive `rc`
        // is the number of pairs set (0: all of them, the block being too small).
        let ovector = unsafe {
            let count = pcre2_get_ovector_count_8(block.as_ptr()) as usize;
            std::slice::from_raw_parts(pcre2_get_ovector_pointer_8(block.as_ptr()), count * 2)
        };
        let set = if rc == 0 {
            ovector.len() / 2
        } else {
            (rc as usize).min(ovector.len() / 2)
        };
        let mut spans = (0..set).filter_map(|group| {
            let (start, end) = (ovector[group * 2], ovector[group * 2 + 1]);
            (start != PCRE2_UNSET && start <= end && end <= subject.len())
                .then_some((group, start, end))
        });
        groups(&mut spans);
        Found::Match
    }
}

/// This thread's match data, grown to the largest pattern it ran.
#[derive(Default)]
struct MatchData {
    block: Option<(NonNull<pcre2_match_data_8>, u32)>,
}

impl MatchData {
    fn with_pairs(&mut self, pairs: u32) -> Option<NonNull<pcre2_match_data_8>> {
        match self.block {
            Some((block, room)) if room >= pairs => Some(block),
            _ => {
                let room = pairs.max(32);
                // SAFETY: creates a block with `room` pairs; a null general context means
                // malloc.
                let block =
                    NonNull::new(unsafe { pcre2_match_data_create_8(room, ptr::null_mut()) })?;
                if let Some((old, _)) = self.block.replace((block, room)) {
                    // SAFETY: the old block came from `pcre2_match_data_create_8` and no
                    // match is using it (this thread holds the only reference).
                    unsafe { pcre2_match_data_free_8(old.as_ptr()) }
                }
                Some(block)
            }
        }
    }
}

impl Drop for MatchData {
    fn drop(&mut self) {
        if let Some((block, _)) = self.block.take() {
            // SAFETY: the block came from `pcre2_match_data_create_8` and is freed once.
            unsafe { pcre2_match_data_free_8(block.as_ptr()) }
        }
    }
}

thread_local! {
    static MATCH_DATA: RefCell<MatchData> = RefCell::new(MatchData::default());
}

/// PCRE2's text for an error code.
fn error_message(code: i32) -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: PCRE2 writes at most `buffer.len()` bytes, NUL-terminated, and returns the length
    // (or a negative code).
    let len = unsafe { pcre2_get_error_message_8(code, buffer.as_mut_ptr(), buffer.len()) };
    match usize::try_from(len) {
        Ok(len) => String::from_utf8_lossy(&buffer[..len.min(buffer.len())]).into_owned(),
        Err(_) => format!("PCRE2 error {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(
        pattern: &Pattern,
        subject: &[u8],
        interpreter: bool,
    ) -> Option<Vec<(usize, usize, usize)>> {
        let mut out = None;
        let found = pattern.find(subject, interpreter, |groups| out = Some(groups.collect()));
        match found {
            Found::Match => out,
            Found::NoMatch => None,
            Found::JitStackLimit | Found::Error(_) => panic!("PCRE2 failed: {found:?}"),
        }
    }

    #[test]
    fn groups_that_take_part_are_reported_with_their_spans() {
        let p = Pattern::compile(r"(a)(x)?(b+)", false).expect("compiles");
        assert_eq!(
            spans(&p, b"zzabbz", false),
            Some(vec![(0, 2, 5), (1, 2, 3), (3, 3, 5)]),
            "group 2 did not take part"
        );
        assert_eq!(spans(&p, b"zzabbz", true), spans(&p, b"zzabbz", false));
        assert_eq!(spans(&p, b"nothing", false), None);
    }

    #[test]
    fn options_are_libmodsecurity_s() {
        let dotall = Pattern::compile("a.b", false).expect("compiles");
        assert!(spans(&dotall, b"a\nb", false).is_some(), "DOTALL");
        let multiline = Pattern::compile("^b$", false).expect("compiles");
        assert!(spans(&multiline, b"a\nb\nc", false).is_some(), "MULTILINE");
        let caseless = Pattern::compile("abc", true).expect("compiles");
        assert!(spans(&caseless, b"xABC", false).is_some(), "CASELESS");
        assert!(
            spans(
                &Pattern::compile("abc", false).expect("compiles"),
                b"ABC",
                false
            )
            .is_none()
        );
    }

    #[test]
    fn pcre2_s_own_analysis_says_what_a_matching_subject_needs() {
        let needs = |source: &str| Pattern::compile(source, false).expect("compiles").needs;
        assert_eq!(
            needs("abc"),
            Needs {
                min_length: 3,
                units: [Some((b'a', b'A')), Some((b'c', b'C'))],
                starts: None,
            }
        );
        // No single first unit, a set of them: both cases of a caseless letter.
        let set = needs("(?i)(?:runtime|processbuilder)");
        assert_eq!(set.units[0], None);
        assert!(set.starts.is_some());
        assert!(!set.met_by(b"127.0.0.1:8080"));
        assert!(set.met_by(b"xPROCESSBUILDER"));
        assert!(
            set.met_by(b"x r 1234567"),
            "a start unit is enough for the check"
        );
        assert!(!needs("[\\n\\r]").met_by(b"/index.html"));
        assert_eq!(needs("(?i)select.+from").min_length, 11);
        assert_eq!(needs("x|y").units, [None, None], "no single first unit");
        assert_eq!(needs("^.*$").min_length, 0);
        assert_eq!(needs("^.*$").units, [None, None]);
        assert!(!needs("<script").met_by(b"/index.html"));
        assert!(needs("<script").met_by(b"a=<SCRIPT>"), "either case");
    }

    /// The checks made before calling PCRE2 never turn a match into "no match": random
    /// subjects, half of them with a match planted inside.
    #[test]
    fn a_subject_the_checks_refuse_never_matches() {
        let patterns: [(&str, bool, &[u8]); 12] = [
            ("abc", false, b"abc"),
            // Start-unit sets (no fixed first unit).
            ("(?:union|select)", true, b"SeLeCt"),
            ("[\\n\\x80]a", false, b"\na"),
            ("(?:ab|xc)z|\\.\\d", false, b"x.1"),
            ("abc", true, b"aBc"),
            ("(?i)union\\s+select", false, b"UNION\tSelect"),
            ("a\\d+z", false, b"a019z"),
            ("^[\\d.:]+$", false, b"\n10.0.0.1:80\n"),
            ("(?:^|[\\/])\\.\\.(?:[\\/]|$)", false, b"/../"),
            ("\\x80[\\xc0-\\xff]", false, b"\x80\xc3"),
            ("b{3,}c?", false, b"bbbc"),
            ("(a)\\1x", false, b"aax"),
        ];
        const ALPHABET: &[u8] = b"abcxzABCXZ019./\\ \n\x80\xc3\xffuniosetlcUNIOSELECT";
        let mut rng = crate::test_rng::Rng(0x2545_f491_4f6c_dd1d);
        let mut random = |len: usize| -> Vec<u8> {
            let n = rng.below(len);
            (0..n).map(|_| rng.pick(ALPHABET)).collect()
        };
        for (source, caseless, planted) in patterns {
            let pattern = Pattern::compile(source, caseless).expect("compiles");
            let mut matches = 0;
            for round in 0..4000 {
                let mut subject = random(14);
                if round % 2 == 0 {
                    subject.extend_from_slice(planted);
                    subject.extend(random(6));
                }
                let found = pattern.find_with(&mut MatchData::default(), &subject, false, |_| {});
                if found == Found::Match {
                    matches += 1;
                    assert!(pattern.needs.met_by(&subject), "{source} on {subject:?}");
                }
            }
            assert!(matches >= 500, "{source}: {matches} matches");
        }
    }

    #[test]
    fn an_empty_subject_and_a_pattern_with_many_groups_are_fine() {
        let empty = Pattern::compile("^$", false).expect("compiles");
        assert_eq!(spans(&empty, b"", false), Some(vec![(0, 0, 0)]));
        // More groups than the thread's block holds at first: it grows.
        let many: String = (0..40).map(|_| "(a)").collect();
        let p = Pattern::compile(&many, false).expect("compiles");
        let found = spans(&p, &[b'a'; 40], false).expect("matches");
        assert_eq!(found.len(), 41);
        assert_eq!(found[40], (40, 39, 40));
    }

    #[test]
    fn a_pattern_that_does_not_compile_says_why() {
        let e = Pattern::compile("a(b", false).expect_err("unbalanced");
        assert!(
            e.contains("missing closing parenthesis") && e.contains("offset 3"),
            "{e}"
        );
    }
}
