//! One module per plugin type, and the factory that builds them.

mod basic_auth;
pub mod bot_detect;
pub mod cc_protection;
mod challenge;
mod cors;
mod credentials;
pub mod hmac_auth;
mod hmac_sha256;
mod ip_restriction;
mod jwt_auth;
mod key_auth;
mod key_rate_limit;
mod request_size_limit;
pub mod waf;

use std::sync::Arc;

use fleetgate_shared::model::PolicyConfig;

use crate::plugin::Plugin;
use crate::set::Consumers;
use crate::state::PolicyState;

pub use ip_restriction::client_ip;

/// Builds the plugin for policy `name`. `consumers` is the config version's consumer index;
/// `state` holds what must survive config versions.
pub fn build(
    name: &str,
    config: &PolicyConfig,
    consumers: &Arc<Consumers>,
    state: &PolicyState,
) -> Result<Arc<dyn Plugin>, String> {
    Ok(match config {
        PolicyConfig::IpRestriction(c) => Arc::new(ip_restriction::IpRestriction::build(name, c)?),
        PolicyConfig::Cors(c) => Arc::new(cors::Cors::build(name, c)),
        PolicyConfig::RequestSizeLimit(c) => {
            Arc::new(request_size_limit::RequestSizeLimit::build(name, c))
        }
        PolicyConfig::JwtAuth(c) => Arc::new(jwt_auth::JwtAuth::build(name, c, consumers, state)?),
        PolicyConfig::KeyAuth(c) => Arc::new(key_auth::KeyAuth::build(name, c, consumers)),
        PolicyConfig::BasicAuth(c) => {
            Arc::new(basic_auth::BasicAuth::build(name, c, consumers, state))
        }
        PolicyConfig::HmacAuth(c) => {
            Arc::new(hmac_auth::HmacAuth::build(name, c, consumers, state)?)
        }
        PolicyConfig::KeyRateLimit(c) => {
            Arc::new(key_rate_limit::KeyRateLimit::build(name, c, state)?)
        }
        PolicyConfig::CcProtection(c) => {
            Arc::new(cc_protection::CcProtection::build(name, c, state)?)
        }
        PolicyConfig::BotDetect(c) => Arc::new(bot_detect::BotDetect::build(name, c, state)?),
        PolicyConfig::Waf(c) => Arc::new(waf::Waf::build(name, c, state)?),
    })
}
