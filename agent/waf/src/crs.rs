//! The OWASP Core Rule Set as Debian installs it (`modsecurity-crs`), and the rule text the agent
//! loads it with: one place, used by the agent's `waf` policy, the differential tests and the
//! cost example, so that all of them measure and compare the same rules.

use std::path::Path;

/// Debian's CRS setup file (a conffile the operator may edit).
pub const SETUP: &str = "/etc/modsecurity/crs/crs-setup.conf";
/// The operator's rule exclusions run before the CRS, if the file exists.
pub const EXCLUSIONS_BEFORE: &str =
    "/etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf";
/// The operator's rule exclusions applied after the CRS (`SecRuleRemoveById` and the like).
pub const EXCLUSIONS_AFTER: &str =
    "/etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf";
/// The CRS rule files where Debian and Ubuntu install them.
pub const RULES: &str = "/usr/share/modsecurity-crs/rules";
/// Names another directory of CRS rule files (other distributions install them elsewhere).
pub const RULES_ENV: &str = "FLEETGATE_CRS_RULES_DIR";

/// Methods the CRS lets through. Its default (`GET HEAD POST OPTIONS`) blocks REST APIs; the
/// operator's crs-setup.conf (rule 900200) still overrides this, since it is set before it.
pub const ALLOWED_METHODS: &str = "GET HEAD POST OPTIONS PUT PATCH DELETE";

/// The CRS rule directory: [`RULES_ENV`] if set, else [`RULES`]. Read once.
pub fn rules_dir() -> &'static str {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| std::env::var(RULES_ENV).unwrap_or_else(|_| RULES.to_owned()))
}

/// What a rule text depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The CRS paranoia level, 1 to 4.
    pub paranoia: u8,
    /// Request body bytes inspected (`SecRequestBodyLimit`, also the no-files limit); a longer
    /// body is inspected up to here (`ProcessPartial`).
    pub body_limit: u64,
    /// Rule ids removed after the CRS is loaded.
    pub disabled: Vec<u32>,
}

impl Settings {
    /// The rule text with every `REQUEST-*.conf` file of the CRS.
    pub fn rules_text(&self) -> String {
        self.rules_text_with(&["REQUEST-*.conf"])
    }

    /// The rule text with only the named CRS files (a `*` in a name matches any run of
    /// characters). Our engine settings (rule engine on, bodies inspected up to `body_limit` and
    /// cut there, JSON and XML body parsers by Content-Type, a body that does not parse refused
    /// unless it was cut), the CRS defaults an API gateway needs ([`ALLOWED_METHODS`], unless the
    /// operator's crs-setup.conf says otherwise), Debian's crs-setup.conf, the paranoia level (set
    /// after the setup file, so these settings win), the operator's exclusion files, the rule
    /// files and `SecRuleRemoveById` for `disabled`. Rule ids 10001–10009 are ours
    /// (ModSecurity's range for local rules); exclusion files must not reuse them.
    pub fn rules_text_with(&self, files: &[&str]) -> String {
        let Settings {
            paranoia: pl,
            body_limit: limit,
            disabled,
        } = self;
        let mut text = format!(
            r#"SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit {limit}
SecRequestBodyNoFilesLimit {limit}
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess Off
SecAuditEngine Off
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:[a-z0-9.-]+\+)?json" "id:10001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application/(?:[a-z0-9.-]+\+)?|text/)xml" "id:10002,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQBODY_ERROR "!@eq 0" "id:10003,phase:2,t:none,log,deny,status:400,msg:'Request body does not parse as its Content-Type',chain"
    SecRule INBOUND_DATA_ERROR "@eq 0" "t:none"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:10004,phase:2,t:none,log,deny,status:400,msg:'Multipart request body failed strict validation',chain"
    SecRule INBOUND_DATA_ERROR "@eq 0" "t:none"
SecAction "id:10005,phase:1,pass,nolog,t:none,setvar:'tx.allowed_methods={ALLOWED_METHODS}'"
Include {SETUP}
SecAction "id:10006,phase:1,pass,nolog,t:none,setvar:tx.paranoia_level={pl},setvar:tx.executing_paranoia_level={pl},setvar:tx.blocking_paranoia_level={pl},setvar:tx.detection_paranoia_level={pl}"
"#
        );
        if Path::new(EXCLUSIONS_BEFORE).is_file() {
            text.push_str(&format!("Include {EXCLUSIONS_BEFORE}\n"));
        }
        for file in files {
            text.push_str(&format!("Include {}/{file}\n", rules_dir()));
        }
        if Path::new(EXCLUSIONS_AFTER).is_file() {
            text.push_str(&format!("Include {EXCLUSIONS_AFTER}\n"));
        }
        if !disabled.is_empty() {
            let ids: Vec<String> = disabled.iter().map(u32::to_string).collect();
            text.push_str(&format!("SecRuleRemoveById {}\n", ids.join(" ")));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_text_sets_the_paranoia_level_after_the_setup_and_removes_disabled_rules_last() {
        let settings = Settings {
            paranoia: 3,
            body_limit: 1024,
            disabled: vec![920350, 942100],
        };
        let text = settings.rules_text();
        let setup = text.find(&format!("Include {SETUP}")).unwrap();
        let level = text.find("setvar:tx.paranoia_level=3").unwrap();
        let rules = text.find("REQUEST-*.conf").unwrap();
        assert!(setup < level && level < rules, "{text}");
        assert!(text.contains("SecRequestBodyLimit 1024\n"));
        assert!(
            text.ends_with("SecRuleRemoveById 920350 942100\n"),
            "{text}"
        );
    }
}
